//! `lanyard-agent`: obtains and renews a workload identity from lanyard-ca.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use workload_agent::{Agent, AgentConfig};

/// Keeps a workload's SPIFFE identity fresh: files plus reload, the SPIFFE Workload API, metrics.
#[derive(Debug, Parser)]
#[command(name = "lanyard-agent", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "LANYARD_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// CA base URL (overrides `ca_url`).
    #[arg(long)]
    ca_url: Option<String>,
    /// SHA-256 of the CA root (overrides `root_fingerprint`).
    #[arg(long)]
    root_fingerprint: Option<String>,
    /// SPIFFE ID to obtain (overrides `spiffe_id`).
    #[arg(long)]
    spiffe_id: Option<String>,
    /// One-time join token (prefer the environment variable: flags show up in `ps`).
    #[arg(long, env = "LANYARD_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// JWT file used for attestation (re-read at each enrollment).
    #[arg(long)]
    jwt_file: Option<PathBuf>,
    /// Directory for key.pem, cert.pem and bundle.pem (overrides unset `[output]` paths).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Workload API socket (overrides `workload_api_socket`).
    #[arg(long)]
    workload_api_socket: Option<PathBuf>,
    /// Metrics listen address (overrides `metrics_listen`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn apply(cli: Cli, cfg: &mut AgentConfig) {
    if let Some(v) = cli.ca_url {
        cfg.ca_url = v;
    }
    if let Some(v) = cli.root_fingerprint {
        cfg.root_fingerprint = v;
    }
    if let Some(v) = cli.spiffe_id {
        cfg.spiffe_id = v;
    }
    if let Some(v) = cli.join_token {
        cfg.attestation = workload_agent::config::Attestation { join_token: Some(v), ..Default::default() };
    }
    if let Some(v) = cli.jwt_file {
        cfg.attestation = workload_agent::config::Attestation { jwt_file: Some(v), ..Default::default() };
    }
    if let Some(d) = cli.out_dir {
        let o = &mut cfg.output;
        o.key_file.get_or_insert_with(|| d.join("key.pem"));
        o.cert_file.get_or_insert_with(|| d.join("cert.pem"));
        o.bundle_file.get_or_insert_with(|| d.join("bundle.pem"));
    }
    if let Some(v) = cli.workload_api_socket {
        cfg.workload_api_socket = Some(v);
    }
    if let Some(v) = cli.metrics_listen {
        cfg.metrics_listen = Some(v);
    }
}

async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let agent = Agent::new(cfg.clone())?;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    // Background tasks are supervised: one that ends turns /health red and is logged.
    let tasks = agent.metrics().tasks.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let listener = workload_agent::agent::metrics::bind(addr).await?;
            println!("lanyard-agent: metrics on http://{}/metrics", listener.local_addr()?);
            let (registry, m) = (agent.registry(), agent.metrics());
            Some(tasks.spawn("metrics", async move {
                workload_agent::agent::metrics::serve(listener, registry, m).await;
                Err(anyhow::anyhow!("the metrics listener stopped"))
            }))
        }
        None => None,
    };
    let api = cfg.workload_api_socket.clone().map(|socket| {
        let seam = agent.seam().clone();
        let mut stop = stop_rx.clone();
        tasks.spawn("workload_api", async move {
            let done = async move {
                // An error means the sender is gone, which also means: stop.
                stop.wait_for(|s| *s).await.map(|_| ()).unwrap_or(());
            };
            workload_agent::workload_api::serve(&socket, seam.svid_updates(), seam.bundle_updates(), done).await
        })
    });
    let result = agent.run(shutdown).await;
    tasks.shutting_down();
    stop_tx.send_replace(true);
    if let Some(api) = api {
        api.join().await;
    }
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_json {
        b.json().init();
    } else {
        b.init();
    }
    let mut cfg = match AgentConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lanyard-agent: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    apply(cli, &mut cfg);
    // One thread is plenty for an agent and keeps its memory small.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lanyard-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanyard-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
