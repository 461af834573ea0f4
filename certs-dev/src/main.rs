//! `cargo run -p certs-dev -- <dir>`: a throwaway development PKI, made with the `ca` crate's real
//! issuance path (so what you test against is what Lanyard issues).
//!
//! Writes into `<dir>`:
//! - `root.pem`, `intermediate.pem`, `chain.pem` (intermediate + root)
//! - `server.pem` (leaf + intermediate), `server.key.pem`: `tls-server` for localhost, 127.0.0.1, ::1
//! - `client.pem` (leaf + intermediate), `client.key.pem`: `workload` X509-SVID
//!   `spiffe://<trust-domain>/dev/client`
//! - `server-svid.pem`, `server-svid.key.pem`: `workload` X509-SVID `spiffe://<trust-domain>/dev/server`
//!   with DNS `localhost`, for mTLS by SPIFFE ID
//!
//! Leaf keys are plaintext PKCS#8 (0600) because test servers must load them; CA keys are not
//! written at all. None of this is ever committed: the output directory is yours to throw away.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ca::rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use ca::{AuditEvent, Authority, InitOptions, IssueRequest, Outcome, Passphrase, Policy, Profile, Store};
use clap::Parser;

/// Write a throwaway development PKI.
#[derive(Debug, Parser)]
#[command(name = "certs-dev", version)]
struct Cli {
    /// Output directory (created if missing).
    dir: PathBuf,
    /// SPIFFE trust domain of the workload certificates.
    #[arg(long, default_value = "lanyard.internal")]
    trust_domain: String,
    /// Leaf lifetime.
    #[arg(long, default_value = "24h", value_parser = humantime_duration)]
    lifetime: Duration,
    /// Overwrite an existing PKI in the directory.
    #[arg(long)]
    force: bool,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}: use e.g. 90s, 30m, 24h, 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("bad duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn write(dir: &Path, name: &str, content: &str, mode: u32) -> anyhow::Result<()> {
    ca::write_atomic(&dir.join(name), content.as_bytes(), mode)?;
    println!("wrote {}", dir.join(name).display());
    Ok(())
}

async fn leaf(
    auth: &Authority,
    profile: Profile,
    sans: Vec<SanType>,
    lifetime: Duration,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = sans;
    let csr = p.serialize_request(&key)?;
    let issued = auth
        .issue(IssueRequest {
            csr: csr.der(),
            profile,
            requester: "certs-dev",
            lifetime: Some(lifetime),
            authorized: None,
        })
        .await?;
    Ok((issued.pem_chain(), key.serialize_pem()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = &cli.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join("root.pem").exists() && !cli.force {
        anyhow::bail!("{} already holds a PKI; pass --force to replace it", dir.display());
    }
    // The CA itself lives in a temporary database and disappears with this process: a dev PKI
    // needs its certificates, not a CA to keep.
    let scratch = tempfile::tempdir()?;
    let pass = Passphrase::random()?;
    let store = Store::open(&format!("sqlite://{}", scratch.path().join("ca.db").display())).await?;
    let material = ca::create_ca(&InitOptions::default(), &pass)?;
    store
        .insert_issuers(
            &[&material.root, &material.intermediate],
            &[AuditEvent::now("certs-dev", "ca.init", &material.root.id, Outcome::Success, "throwaway dev PKI")],
        )
        .await?;
    let mut policy = Policy::default();
    policy.trust_domain = cli.trust_domain.clone();
    policy.workload.max = policy.workload.max.max(cli.lifetime);
    policy.tls_server.max = policy.tls_server.max.max(cli.lifetime);
    let auth = Authority::load(store, policy, &pass).await?;

    let td = &cli.trust_domain;
    let uri = |path: &str| -> anyhow::Result<SanType> { Ok(SanType::URI(format!("spiffe://{td}{path}").try_into()?)) };
    let localhost = || -> anyhow::Result<Vec<SanType>> {
        Ok(vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ])
    };
    let (server, server_key) = leaf(&auth, Profile::TlsServer, localhost()?, cli.lifetime).await?;
    let (client, client_key) = leaf(&auth, Profile::Workload, vec![uri("/dev/client")?], cli.lifetime).await?;
    let (svid, svid_key) = leaf(
        &auth,
        Profile::Workload,
        vec![uri("/dev/server")?, SanType::DnsName("localhost".try_into()?)],
        cli.lifetime,
    )
    .await?;

    write(dir, "root.pem", &material.root.cert_pem, 0o644)?;
    write(dir, "intermediate.pem", &material.intermediate.cert_pem, 0o644)?;
    write(dir, "chain.pem", &format!("{}{}", material.intermediate.cert_pem, material.root.cert_pem), 0o644)?;
    write(dir, "server.pem", &server, 0o644)?;
    write(dir, "server.key.pem", &server_key, 0o600)?;
    write(dir, "client.pem", &client, 0o644)?;
    write(dir, "client.key.pem", &client_key, 0o600)?;
    write(dir, "server-svid.pem", &svid, 0o644)?;
    write(dir, "server-svid.key.pem", &svid_key, 0o600)?;
    println!("root fingerprint: sha256:{}", material.root.fingerprint);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certs-dev: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
