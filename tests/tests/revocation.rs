//! Revocation enforced by the agent's rustls seam, end to end: the real `lanyard-ca`, real agents
//! learning CRLs at the bundle refresh hint, real mTLS handshakes.
//!
//! - an emergency intermediate rotation while two seam-based services talk: the revocation is
//!   fleet-gated (published once the renewal window and the settle margin have passed), so the
//!   honest pair renews onto the new intermediate first and fails no handshake at all, while a
//!   peer presenting a still-unexpired leaf of the revoked intermediate is refused (as client and
//!   as server) within the refresh hint of the publication; the agent's `crl_file` then makes
//!   `openssl verify -crl_check_all` refuse it too;
//! - a leaf revoked with `lanyard-ca revoke`: refused within the refresh hint, `openssl verify`
//!   refuses it with the agent's `crl_file`, and with the CA down the last known CRLs stay in
//!   force while the revocation state's age and the failure counter grow.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ca::{IssuerKind, IssuerState};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tests::workload::{TD, WorkloadCa, authority_key_id, leaf_serial};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use workload_agent::Agent;
use workload_agent::agent::enroll::{self, Proof};
use workload_agent::agent::{cert, http};
use workload_agent::tls::Authorizer;

/// The CA's `bundle_refresh_hint` in these tests: agents refresh bundle and CRLs this often.
const HINT: Duration = Duration::from_secs(2);

fn id(name: &str) -> String {
    format!("spiffe://{TD}/{name}")
}

/// A leaf and its key, enrolled directly (no agent): what a holder of a stolen or revoked
/// certificate would present.
struct Held {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

async fn enroll_direct(ca: &WorkloadCa, name: &str) -> Held {
    let client = workload_agent::agent::ca_client::CaClient::new(
        &ca.url(),
        &ca.fingerprint().expect("fp"),
        TD,
        Duration::from_secs(10),
    );
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let tls = http::tls_config(&bundle.roots, None).expect("tls");
    let token = ca.token(&id(name), &[]).expect("token");
    let (key, csr) = enroll::new_key_and_csr(&id(name)).expect("csr");
    let pem = enroll::enroll(tls, &ca.url(), &id(name), &Proof::JoinToken(token), &csr, Duration::from_secs(10))
        .await
        .expect("enrollment");
    Held { chain: cert::chain_from_pem(&pem).expect("chain"), key }
}

/// An agent for `name` (its `[output] crl_file` at `crl_file`), running, enrolled on return.
async fn start_agent(ca: &WorkloadCa, name: &str, crl_file: Option<PathBuf>) -> Agent {
    let mut cfg = ca.agent_config(&id(name), &ca.token(&id(name), &[]).expect("token"), 0.5).expect("config");
    cfg.output.crl_file = crl_file;
    let agent = Agent::new(cfg).expect("agent");
    let runner = agent.clone();
    tokio::spawn(async move { runner.run(std::future::pending()).await });
    let mut rx = agent.seam().svid_updates();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some()))
        .await
        .expect("enrolled within 30 s")
        .expect("watch");
    agent
}

/// A ping/pong TLS server with `config`; its address.
async fn serve(config: rustls::ServerConfig) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let (r, mut w) = tokio::io::split(tls);
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    if w.write_all(b"pong\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One handshake and one ping/pong with `config`: Ok when the peer answered. With TLS 1.3 a
/// client's handshake completes before the server has judged its certificate, so only the answer
/// proves acceptance.
async fn ping(config: Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> Result<(), String> {
    let r = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls =
            tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from("service.internal")?, tcp).await?;
        let (r, mut w) = tokio::io::split(tls);
        w.write_all(b"ping\n").await?;
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await?;
        if line != "pong\n" {
            return Err(format!("no answer ({line:?})").into());
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), r).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client presenting `held`, accepting any server: only the server's verdict on it matters.
fn client_presenting(held: &Held) -> Arc<rustls::ClientConfig> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_client_auth_cert(held.chain.clone(), PrivateKeyDer::Pkcs8(held.key.clone().into()))
        .expect("client cert");
    Arc::new(cfg)
}

/// A server presenting `held`, asking no client certificate.
fn server_presenting(held: &Held) -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(held.chain.clone(), PrivateKeyDer::Pkcs8(held.key.clone().into()))
        .expect("server cert")
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Tries `attempt` every 100 ms until it fails; the time that took. Then checks it keeps failing.
async fn time_to_refuse<F, Fut>(within: Duration, attempt: F) -> (Duration, String)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let t0 = Instant::now();
    loop {
        if let Err(e) = attempt().await {
            let took = t0.elapsed();
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(attempt().await.is_err(), "accepted again after being refused");
            }
            return (took, e);
        }
        assert!(t0.elapsed() < within, "still accepted after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Honest handshakes, B's seam client to A's seam server, in a loop until `stop`: each
/// attempt's start time and outcome.
fn honest_loop(
    client: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, Result<(), String>)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let r = ping(client.clone(), addr).await;
            out.push((started, r));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
}

/// `openssl verify <check> -CRLfile crls -CAfile root -untrusted intermediate leaf` in `dir`.
fn openssl_verify(dir: &Path, check: &str, crls: &Path, intermediate: &str, leaf: &str) -> (bool, String) {
    let crls = crls.to_str().expect("path");
    let out = Command::new("openssl")
        .args(["verify", check, "-CRLfile", crls, "-CAfile", "root.pem", "-untrusted", intermediate, leaf])
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Waits until `path` holds at least `n` CRLs.
async fn wait_for_crls(path: &Path, n: usize, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches("-----BEGIN X509 CRL-----").count() >= n {
            return text;
        }
        assert!(Instant::now() < deadline, "{} did not get {n} CRLs within {within:?}:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric's value in the agent's exposition text.
fn metric(agent: &Agent, name: &str) -> f64 {
    let text = agent.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn active_intermediate(j: &[ca::IssuerRecord]) -> ca::IssuerRecord {
    j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("active").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_revokes_the_intermediate_for_seam_peers() {
    let ca =
        WorkloadCa::start_with_hint("", "[rotation]\nenabled = false\ncheck_interval = \"1s\"\n", "2s").expect("CA");
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path();
    std::fs::copy(ca.dir.path().join("data/root.pem"), dir.join("root.pem")).expect("root");
    let old = active_intermediate(&ca.journal().await.expect("journal"));

    let a = start_agent(&ca, "svc-a", Some(dir.join("a-crls.pem"))).await;
    let b = start_agent(&ca, "svc-b", None).await;
    let server_a = serve(a.seam().server_config(Authorizer::exact([id("svc-b")]).expect("authz")).expect("cfg")).await;
    let client_b = Arc::new(b.seam().client_config(Authorizer::exact([id("svc-a")]).expect("authz")).expect("cfg"));

    // Leaves minted under the (soon suspect) intermediate for the very IDs the services admit.
    let stolen_b = enroll_direct(&ca, "svc-b").await;
    let stolen_a = enroll_direct(&ca, "svc-a").await;
    assert_eq!(authority_key_id(stolen_b.chain[0].as_ref()), old.ski);
    let evil_server = serve(server_presenting(&stolen_a)).await;
    let as_client = client_presenting(&stolen_b);
    // Before the emergency they are accepted: only revocation can refuse them.
    ping(as_client.clone(), server_a).await.expect("stolen client leaf accepted before the emergency");
    ping(client_b.clone(), evil_server).await.expect("stolen server leaf accepted before the emergency");
    ping(client_b.clone(), server_a).await.expect("honest pair");

    let stop = Arc::new(AtomicBool::new(false));
    let honest = honest_loop(client_b.clone(), server_a, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t0 = Instant::now();
    let out = ca.cli(&["rotate", "intermediate", "--emergency", "--window", "1s"]).expect("emergency rotation");
    let command_took = t0.elapsed();
    let new = active_intermediate(&ca.journal().await.expect("journal"));
    assert_ne!(new.id, old.id, "{out}");
    // Fleet-gated: the revocation is published after the window (1 s, starting 2 s from now) and
    // the settle margin (3 s), because the stolen leaves are recorded and never renewed.
    let publish_in = out
        .lines()
        .find_map(|l| l.split_once(" s from now").and_then(|(a, _)| a.rsplit('(').next()?.parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("no publication time in: {out}"));
    assert!((5..=7).contains(&publish_in), "{out}");
    let status = ca.cli(&["status"]).expect("status");
    assert!(status.contains("revocation pending: published in"), "{status}");

    // The honest pair renews onto the new intermediate (push notice) before anyone refuses the
    // old one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_new = |agent: &Agent| {
        agent.seam().svid_updates().borrow().as_ref().is_some_and(|s| authority_key_id(s.chain[0].as_ref()) == new.ski)
    };
    while !(on_new(&a) && on_new(&b)) {
        assert!(Instant::now() < deadline, "the honest services did not renew onto the new intermediate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed = Instant::now();

    // The stolen leaves are refused, as client by A's server and as server by B's client, within
    // the refresh hint (plus a loop tick) of the publication.
    let bound = Duration::from_secs(publish_in) + HINT * 3 + Duration::from_secs(5);
    let (as_client_s, why_client) = time_to_refuse(bound, || ping(as_client.clone(), server_a)).await;
    let refused_client = Instant::now();
    let (_, why_server) = time_to_refuse(bound, || ping(client_b.clone(), evil_server)).await;
    let refused_server = Instant::now();
    let since = |t: Instant| (t - t0).as_secs_f64();
    println!(
        "emergency: command took {:.2} s; revocation published {publish_in} s after it (window 1 s + settle 3 s); \
         honest pair renewed after {:.2} s; stolen leaf refused as client after {:.2} s, as server after {:.2} s \
         (refresh hint {} s)",
        command_took.as_secs_f64(),
        since(renewed),
        since(refused_client),
        since(refused_server),
        HINT.as_secs()
    );
    assert!(why_server.contains("revoked") || why_server.contains("Revoked"), "{why_server}");
    eprintln!("as client: {why_client} (first refused {as_client_s:?} into the wait)");
    assert!(
        refused_client - t0 <= Duration::from_secs(publish_in + 1) + HINT * 2 + Duration::from_secs(2),
        "refused later than the refresh hint after publication"
    );

    let status = ca.cli(&["status"]).expect("status");
    assert!(status.contains(&format!("{} revoked", old.id)) && status.contains("revocation in force"), "{status}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let results = honest.await.expect("loop");
    let failed: Vec<_> = results.iter().filter(|(t, r)| *t >= t0 && r.is_err()).collect();
    let (transition, after): (Vec<_>, Vec<_>) =
        results.iter().filter(|(t, _)| *t >= t0).partition(|(t, _)| *t < refused_client);
    println!(
        "emergency: honest handshakes from the command until the stolen leaf was refused: {} ({} failed); \
         after that: {} ({} failed)",
        transition.len(),
        transition.iter().filter(|(_, r)| r.is_err()).count(),
        after.len(),
        after.iter().filter(|(_, r)| r.is_err()).count()
    );
    assert!(failed.is_empty(), "honest handshakes failed during the emergency: {failed:?}");
    assert!(transition.len() >= 50 && after.len() >= 50, "too few honest handshakes measured");

    // A's crl_file now has the root's CRL (the old intermediate, keyCompromise) and both
    // intermediates' CRLs: openssl, checking every level, refuses the stolen leaf and accepts the
    // honest renewed one.
    let crl_file = dir.join("a-crls.pem");
    wait_for_crls(&crl_file, 3, Duration::from_secs(10)).await;
    std::fs::write(dir.join("old-int.pem"), &old.cert_pem).expect("write");
    std::fs::write(dir.join("new-int.pem"), &new.cert_pem).expect("write");
    std::fs::write(dir.join("stolen.pem"), pem("CERTIFICATE", stolen_b.chain[0].as_ref())).expect("write");
    let honest_leaf = b.seam().svid_updates().borrow().as_ref().expect("svid").chain[0].clone();
    std::fs::write(dir.join("honest.pem"), pem("CERTIFICATE", honest_leaf.as_ref())).expect("write");
    let (ok, text) = openssl_verify(dir, "-crl_check_all", &crl_file, "old-int.pem", "stolen.pem");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = openssl_verify(dir, "-crl_check_all", &crl_file, "new-int.pem", "honest.pem");
    assert!(ok && text.contains("honest.pem: OK"), "{text}");
    assert!(metric(&a, "lanyard_agent_revocation_crls") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_leaf_is_refused_and_stays_refused_while_the_ca_is_down() {
    let mut ca =
        WorkloadCa::start_with_hint("", "[rotation]\nenabled = false\ncheck_interval = \"1s\"\n", "2s").expect("CA");
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path();
    std::fs::copy(ca.dir.path().join("data/root.pem"), dir.join("root.pem")).expect("root");
    let int = active_intermediate(&ca.journal().await.expect("journal"));
    std::fs::write(dir.join("int.pem"), &int.cert_pem).expect("write");

    let crl_file = dir.join("a-crls.pem");
    let a = start_agent(&ca, "svc-a", Some(crl_file.clone())).await;
    let b = start_agent(&ca, "svc-b", None).await;
    let server_a = serve(a.seam().server_config(Authorizer::exact([id("svc-b")]).expect("authz")).expect("cfg")).await;
    let client_b = Arc::new(b.seam().client_config(Authorizer::exact([id("svc-a")]).expect("authz")).expect("cfg"));

    // A second svc-b leaf, held elsewhere: accepted until revoked.
    let held = enroll_direct(&ca, "svc-b").await;
    let as_client = client_presenting(&held);
    ping(as_client.clone(), server_a).await.expect("accepted before revocation");
    // The agent wrote its CRL file at its first refresh: the intermediate's (empty) CRL.
    wait_for_crls(&crl_file, 1, Duration::from_secs(10)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let honest = honest_loop(client_b.clone(), server_a, stop.clone());

    let serial = leaf_serial(held.chain[0].as_ref());
    ca.cli(&["revoke", &serial, "--reason", "1"]).expect("revoke");
    let (refused_after, why) =
        time_to_refuse(HINT * 3 + Duration::from_secs(5), || ping(as_client.clone(), server_a)).await;
    println!(
        "revoke: leaf {serial} refused {:.2} s after `lanyard-ca revoke` (refresh hint {} s): {why}",
        refused_after.as_secs_f64(),
        HINT.as_secs()
    );

    // The CRL file lists it: openssl refuses the leaf, checking the leaf alone and every level
    // (the leaf is checked first), and accepts the honest one with the leaf's CRL.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leaf_pem = pem("CERTIFICATE", held.chain[0].as_ref());
    std::fs::write(dir.join("revoked.pem"), &leaf_pem).expect("write");
    let honest_leaf = b.seam().svid_updates().borrow().as_ref().expect("svid").chain[0].clone();
    std::fs::write(dir.join("honest.pem"), pem("CERTIFICATE", honest_leaf.as_ref())).expect("write");
    loop {
        let (ok, text) = openssl_verify(dir, "-crl_check", &crl_file, "int.pem", "revoked.pem");
        if !ok {
            assert!(text.contains("certificate revoked"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "the CRL file never listed the revoked leaf");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, text) = openssl_verify(dir, "-crl_check_all", &crl_file, "int.pem", "revoked.pem");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = openssl_verify(dir, "-crl_check", &crl_file, "int.pem", "honest.pem");
    assert!(ok && text.contains("honest.pem: OK"), "{text}");

    // The CA goes away. The revoked leaf stays refused on the last known CRLs; the state's age
    // and the failure counter grow.
    let failures0 = metric(&a, "lanyard_agent_revocation_refresh_failures_total");
    assert!(metric(&a, "lanyard_agent_revocation_state_age_seconds") <= HINT.as_secs_f64() + 2.0);
    ca.stop();
    let down = Instant::now();
    let deadline = down + Duration::from_secs(30);
    while metric(&a, "lanyard_agent_revocation_refresh_failures_total") < failures0 + 2.0 {
        assert!(Instant::now() < deadline, "no failed CRL refresh counted with the CA down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let age = metric(&a, "lanyard_agent_revocation_state_age_seconds");
    let failures = metric(&a, "lanyard_agent_revocation_refresh_failures_total");
    assert!(age >= 4.0, "the revocation state's age grows while the CA is down: {age}");
    assert!(metric(&a, "lanyard_agent_revocation_crls") >= 1.0, "the last known CRLs are kept");
    let still = ping(as_client.clone(), server_a).await;
    assert!(still.is_err(), "the revoked leaf is accepted again with the CA down");
    println!(
        "CA down {:.1} s: revoked leaf still refused; revocation state age {age} s, {} failed CRL refreshes",
        down.elapsed().as_secs_f64(),
        failures - failures0
    );

    stop.store(true, Ordering::Relaxed);
    let results = honest.await.expect("loop");
    let failed: Vec<_> = results.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    println!("revoke: honest handshakes {} ok, {} failed", results.len() - failed.len(), failed.len());
    assert!(failed.is_empty(), "{failed:?}");
}
