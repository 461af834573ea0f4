//! Lanyard's web edge: the HTTPS server and operator commands of `lanyard-ca`.
//!
//! This crate never touches a CA key or SQL: it asks the `ca` crate, which owns both.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acme;
pub mod config;
pub mod crl_routes;
pub mod enroll;
pub mod identity;
pub mod jose;
pub mod listener;
pub mod metrics;
pub mod notices;
pub mod operator_page;
pub mod ops;
pub mod problem;
pub mod rotation;
pub mod routes;
pub mod server;
pub mod supervise;

use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::config::Config;
use crate::ops::PassphraseSource;

/// Opens (auto-initializing a development CA on an empty store), loads the authority and serves
/// HTTPS until `shutdown` resolves. `on_listen` gets the bound address (tests use port 0).
pub async fn run_server(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    cfg.validate()?;
    let admin = ops::open_admin(&cfg).await?;
    let mut pass = ops::passphrase(&cfg)?;
    if admin.issuers().await?.is_empty() {
        let p = match pass.take() {
            Some(p) => p,
            None => {
                let p = ca::Passphrase::random()?;
                ca::write_atomic(&cfg.dev_passphrase_path(), p.expose().as_bytes(), 0o600)?;
                (p, PassphraseSource::DevFile)
            }
        };
        println!("lanyard-ca: empty data directory; initializing a development CA");
        let material = ops::init(&cfg, &admin, &p.0, None).await?;
        ops::announce(&cfg, &material);
        pass = Some(p);
    }
    let (pass, source) = pass.ok_or(ca::CaError::MissingPassphrase { env: ca::PASSPHRASE_ENV.into() })?;
    if source == PassphraseSource::DevFile {
        ops::warn_dev_passphrase(&cfg);
    }
    let authority = Arc::new(admin.load_authority(cfg.policy.clone(), &pass).await?);
    authority.set_passphrase(pass.clone()); // CRLs of retired intermediates are signed with their keys
    let root_key_path = cfg.root_key_path();
    let keys = root_key_path.exists().then(|| ca::rotation::RotationKeys {
        pass: pass.clone(),
        root_key_path,
        init: cfg.init.clone(),
    });
    // Every background task is supervised: one that ends turns /health red.
    let tasks = supervise::Tasks::default();
    // The one registry of this process; the handles in `metrics` are passed to what bumps them.
    let (registry, metrics) = metrics::registry(authority.clone(), tasks.clone());
    let registry = Arc::new(registry);
    let notices = notices::NoticeBoard::counting(metrics.notice_waiters.clone());
    rotation::spawn_fleet_share(&tasks, authority.clone());
    rotation::spawn(&tasks, authority.clone(), cfg.rotation.clone(), keys, pass, notices.clone(), metrics.clone());
    let identity = identity::ServerIdentity::start(&tasks, authority.clone(), cfg.server_names.clone())
        .await
        .context("issuing the server's own TLS certificate")?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        info!(address = %addr, "listening on a non-loopback address");
    }
    if let Some(m) = cfg.metrics_listen {
        let ml = tokio::net::TcpListener::bind(m).await.with_context(|| format!("binding metrics {m}"))?;
        println!("lanyard-ca: metrics on http://{}/metrics", ml.local_addr()?);
        let limits = cfg.listener.with_max_connections(listener::METRICS_MAX_CONNECTIONS);
        let (authority, registry, stats) = (authority.clone(), registry.clone(), metrics.metrics_listener.clone());
        let page = cfg.admin.page;
        if page {
            println!("lanyard-ca: operator page on http://{}/ops", ml.local_addr()?);
        }
        tasks.spawn("metrics", async move {
            metrics::serve(ml, registry, authority, limits, stats, page).await;
            Err(anyhow::anyhow!("the metrics listener stopped"))
        });
    }
    on_listen(addr);
    let mut app = routes::router(Arc::new(routes::AppState { authority: authority.clone(), tasks: tasks.clone() }));
    let workload = enroll::routes::WorkloadState::new(
        authority.clone(),
        cfg.workload.bundle_refresh_hint,
        notices,
        metrics.clone(),
    );
    app = app.merge(enroll::routes::router(Arc::new(workload)));
    app = app.merge(crl_routes::router(authority.clone()));
    crl_routes::spawn_refresh(&tasks, authority.clone());
    let enrollment =
        Arc::new(enroll::Enrollment::new(&cfg.workload, &cfg.policy.trust_domain, ca::ra::Workload::new(&authority))?);
    enrollment.warm_up().await;
    if cfg.acme.enabled {
        let base = cfg.acme.public_url.clone().unwrap_or_else(|| format!("https://localhost:{}", addr.port()));
        let acme = acme::Acme::new(authority, cfg.acme.clone(), base, enrollment, metrics.clone()).await?;
        info!(directory = %acme.url("/directory"), "ACME enabled");
        acme::spawn_cleanup(&tasks, acme.clone());
        app = app.merge(acme::router(acme));
    }
    let app = app.layer(axum::middleware::from_fn(routes::limit_uri));
    let served =
        server::serve_tls(listener, identity, app, cfg.listener, metrics.https_listener.clone(), shutdown).await;
    tasks.shutting_down();
    served
}
