//! Helpers for workload-identity scenarios: a CA issuing short workload certificates, join tokens,
//! JWTs signed by a test issuer, and agent configurations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use tempfile::TempDir;

use crate::{CaProcess, run_ca, start_ca_at};

/// Trust domain of every workload test.
pub const TD: &str = "lanyard.test";
/// `iss` of the test JWT issuer.
pub const JWT_ISSUER: &str = "https://issuer.lanyard.test";
/// Audience the CA requires.
pub const JWT_AUDIENCE: &str = "lanyard";

/// A JWT issuer with one ES256 key.
#[derive(Debug)]
pub struct JwtIssuer {
    key: EcdsaKeyPair,
    /// Key id.
    pub kid: String,
}

impl JwtIssuer {
    /// A fresh issuer key.
    pub fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key");
        JwtIssuer { key, kid: kid.to_owned() }
    }

    /// The JWKS document with this key.
    pub fn jwks(&self) -> serde_json::Value {
        let p = self.key.public_key().as_ref();
        serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65]),
        }]})
    }

    /// A compact JWS over `claims`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid });
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).expect("json")),
            B64.encode(serde_json::to_vec(claims).expect("json"))
        );
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).expect("sign");
        format!("{input}.{}", B64.encode(sig))
    }

    /// Kubernetes-shaped claims for namespace/service account, valid for 10 minutes.
    pub fn k8s_claims(&self, iss: &str, aud: &str, ns: &str, sa: &str) -> serde_json::Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        serde_json::json!({
            "iss": iss, "aud": [aud], "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "iat": now, "nbf": now, "exp": now + 600,
            "kubernetes.io": { "namespace": ns, "serviceaccount": { "name": sa, "uid": "1" } },
        })
    }
}

/// A `lanyard-ca` issuing 60-second workload certificates, with a join-token and a JWT attestor.
#[derive(Debug)]
pub struct WorkloadCa {
    /// The running server (None while stopped).
    pub process: Option<CaProcess>,
    /// Data directory and config.
    pub dir: TempDir,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The JWT issuer the CA trusts.
    pub jwt: JwtIssuer,
}

impl WorkloadCa {
    /// Starts a CA on a free port.
    pub fn start() -> anyhow::Result<WorkloadCa> {
        Self::start_with("", "")
    }

    /// Starts a CA with extra `[policy]` keys and extra sections appended to its config.
    pub fn start_with(policy_extra: &str, extra: &str) -> anyhow::Result<WorkloadCa> {
        Self::start_with_hint(policy_extra, extra, "2s")
    }

    /// [`WorkloadCa::start_with`] with `[workload] bundle_refresh_hint` (how often agents check
    /// the bundle and renewalInfo) set to `hint`, e.g. `"10m"`.
    pub fn start_with_hint(policy_extra: &str, extra: &str, hint: &str) -> anyhow::Result<WorkloadCa> {
        Self::start_on("", None, policy_extra, extra, hint)
    }

    /// A replica on the database `db_url` (PostgreSQL), sharing it with the replica whose data
    /// directory is `seed` (its root certificate and key are copied), or the first one (None).
    pub fn start_replica(
        db_url: &str,
        seed: Option<&Path>,
        policy_extra: &str,
        extra: &str,
    ) -> anyhow::Result<WorkloadCa> {
        Self::start_on(&format!("database_url = \"{db_url}\"\n"), seed, policy_extra, extra, "2s")
    }

    fn start_on(
        top: &str,
        seed: Option<&Path>,
        policy_extra: &str,
        extra: &str,
        hint: &str,
    ) -> anyhow::Result<WorkloadCa> {
        let dir = tempfile::tempdir()?;
        let jwt = JwtIssuer::new("k1");
        std::fs::write(dir.path().join("jwks.json"), serde_json::to_vec(&jwt.jwks())?)?;
        let data = dir.path().join("data");
        if let Some(seed) = seed {
            // The CA refuses a data directory others can enter.
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&data)?;
            // The development CA's passphrase file too: the replicas share one CA.
            for f in ["root.pem", "root.key.pem", "dev-passphrase"] {
                std::fs::copy(seed.join(f), data.join(f))?;
            }
        }
        let cfg = format!(
            r#"{top}data_dir = "{data}"
metrics_listen = "127.0.0.1:0"
[policy]
trust_domain = "{TD}"
backdate = "5s"
{policy_extra}
[policy.workload]
default = "60s"
max = "60s"
[workload]
bundle_refresh_hint = "{hint}"
[[workload.jwt]]
issuer = "{JWT_ISSUER}"
audience = "{JWT_AUDIENCE}"
jwks_file = "{jwks}"
spiffe_id_template = "spiffe://{TD}/ns/{{/kubernetes.io/namespace}}/sa/{{/kubernetes.io/serviceaccount/name}}"
{extra}
"#,
            data = data.display(),
            jwks = dir.path().join("jwks.json").display(),
        );
        std::fs::write(dir.path().join("ca.toml"), cfg)?;
        let mut ca = WorkloadCa { process: None, dir, addr: "127.0.0.1:0".parse()?, jwt };
        ca.restart()?;
        Ok(ca)
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("ca.toml")
    }

    /// (Re)starts the server; on the same address once it has one.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let cfg = self.config();
        let listen = self.addr.to_string();
        let p = start_ca_at(&["--config", cfg.to_str().context("path")?], &[], &listen)?;
        self.addr = p.addr;
        self.process = Some(p);
        Ok(())
    }

    /// Stops the server (kill, as an outage would).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// The metrics listener's address (`127.0.0.1:port`), from the server's banner.
    pub fn metrics_addr(&self) -> anyhow::Result<String> {
        let banner = &self.process.as_ref().context("CA stopped")?.banner;
        banner
            .lines()
            .find_map(|l| l.strip_prefix("lanyard-ca: metrics on http://"))
            .and_then(|a| a.strip_suffix("/metrics"))
            .map(str::to_owned)
            .context("no metrics address in the banner")
    }

    /// The metrics page (plain HTTP).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let addr = self.metrics_addr()?;
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        Ok(buf)
    }

    /// `https://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SHA-256 of the root certificate, the value agents pin.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        crate::pem_fingerprint(&std::fs::read_to_string(self.dir.path().join("data/root.pem"))?)
    }

    /// Runs `lanyard-ca --config <cfg> <args>`; stdout on success.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let cfg = self.config();
        let mut all = vec!["--config", cfg.to_str().context("path")?];
        all.extend_from_slice(args);
        let (ok, out, err) = run_ca(&all, &[])?;
        if !ok {
            bail!("lanyard-ca {args:?} failed: {err}");
        }
        Ok(out)
    }

    /// A join token for `id` (with `extra` flags such as `--ttl 1s`).
    pub fn token(&self, id: &str, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["token", "create", "--spiffe-id", id];
        args.extend_from_slice(extra);
        Ok(self.cli(&args)?.trim().to_owned())
    }

    /// Number of certificates recorded as issued.
    pub async fn issued_count(&self) -> anyhow::Result<i64> {
        let url = format!("sqlite://{}", self.dir.path().join("data/lanyard.db").display());
        let store = ca::Store::open(&url).await?;
        let (_, issued, _) = store.certificate_counts().await?;
        store.close().await;
        Ok(issued)
    }

    /// An agent configuration for `id` with a join token, renewing at `fraction` of the lifetime.
    pub fn agent_config(&self, id: &str, token: &str, fraction: f64) -> anyhow::Result<workload_agent::AgentConfig> {
        let mut cfg = workload_agent::AgentConfig::default();
        cfg.ca_url = self.url();
        cfg.root_fingerprint = self.fingerprint()?;
        cfg.spiffe_id = id.to_owned();
        cfg.attestation.join_token = Some(token.to_owned());
        cfg.renewal.fraction = fraction;
        cfg.renewal.jitter = 0.02;
        cfg.renewal.retry_initial = Duration::from_millis(500);
        cfg.renewal.retry_max = Duration::from_secs(5);
        cfg.renewal.request_timeout = Duration::from_secs(5);
        Ok(cfg)
    }

    /// Agents for `ids` (join tokens, renewing at `fraction`), running in the background and
    /// enrolled (each holds its first SVID) when this returns.
    pub async fn enrolled_agents(&self, ids: &[&str], fraction: f64) -> anyhow::Result<Vec<workload_agent::Agent>> {
        self.enrolled_agents_with(ids, fraction, |_| {}).await
    }

    /// [`WorkloadCa::enrolled_agents`], with `tweak` applied to each agent's configuration.
    pub async fn enrolled_agents_with(
        &self,
        ids: &[&str],
        fraction: f64,
        tweak: impl Fn(&mut workload_agent::AgentConfig),
    ) -> anyhow::Result<Vec<workload_agent::Agent>> {
        let mut agents = Vec::new();
        for id in ids {
            let mut cfg = self.agent_config(id, &self.token(id, &[])?, fraction)?;
            tweak(&mut cfg);
            let agent = workload_agent::Agent::new(cfg)?;
            let runner = agent.clone();
            tokio::spawn(async move { runner.run(std::future::pending()).await });
            agents.push(agent);
        }
        for agent in &agents {
            let mut rx = agent.seam().svid_updates();
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some()))
                .await
                .context("an agent did not enroll within 30 s")??;
        }
        Ok(agents)
    }
}

/// Serial (hex) and SPIFFE ID of a PEM or DER leaf.
pub fn leaf_serial(der: &[u8]) -> String {
    workload_agent::agent::cert::leaf_info(der).map(|i| i.serial).unwrap_or_default()
}

/// Waits until `path` exists.
pub async fn wait_for_file(path: &Path, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !path.exists() {
        if tokio::time::Instant::now() > deadline {
            bail!("{} did not appear within {within:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl WorkloadCa {
    /// The issuer journal, read from the database.
    pub async fn journal(&self) -> anyhow::Result<Vec<ca::IssuerRecord>> {
        let url = format!("sqlite://{}", self.dir.path().join("data/lanyard.db").display());
        let store = ca::Store::open(&url).await?;
        let j = store.issuers().await?;
        store.close().await;
        Ok(j)
    }
}

/// Hex of a certificate's AKI keyIdentifier (which issuer signed it).
pub fn authority_key_id(der: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    let Ok((_, c)) = x509_parser::parse_x509_certificate(der) else { return String::new() };
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| hex::encode(k.0)),
            _ => None,
        })
        .unwrap_or_default()
}

/// What an mTLS request loop between two services observed.
#[derive(Debug, Default)]
pub struct LoopReport {
    /// Handshakes attempted (one per request).
    pub handshakes: u64,
    /// Failures, with their errors.
    pub failures: Vec<String>,
    /// Serials of the server certificates the client saw.
    pub server_serials: std::collections::BTreeSet<String>,
    /// Serials of the client certificates the server saw.
    pub client_serials: std::collections::BTreeSet<String>,
}

/// Runs an mTLS request loop: `server` (built on seam `a`) authorizes only `b_id`, the client
/// (seam `b`) only `a_id`; every request is a new handshake, four at a time, plus one long-lived
/// connection pinged throughout. Runs until `done()` has been true for ten rounds.
pub async fn mtls_loop(
    a: &workload_agent::Agent,
    b: &workload_agent::Agent,
    a_id: &str,
    b_id: &str,
    deadline: Duration,
    done: impl Fn() -> bool,
) -> anyhow::Result<LoopReport> {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use workload_agent::tls::Authorizer;

    let server_cfg = Arc::new(a.seam().server_config(Authorizer::exact([b_id])?)?);
    let client_cfg = Arc::new(b.seam().client_config(Authorizer::exact([a_id])?)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let report = Arc::new(Mutex::new(LoopReport::default()));
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let r2 = report.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let r2 = r2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    r2.lock().expect("lock").client_serials.insert(leaf_serial(c.as_ref()));
                }
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
    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let name = rustls::pki_types::ServerName::try_from("service.internal")?;
    let long = connector.connect(name.clone(), tokio::net::TcpStream::connect(addr).await?).await?;
    let (lr, mut lw) = tokio::io::split(long);
    let mut long_lines = BufReader::new(lr).lines();
    let end = tokio::time::Instant::now() + deadline;
    let mut extra_rounds = 0;
    let mut round = 0u64;
    loop {
        if done() {
            extra_rounds += 1;
            if extra_rounds > 10 {
                break;
            }
        }
        if tokio::time::Instant::now() > end {
            bail!("the condition was not reached within {deadline:?}");
        }
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (connector, name, report) = (connector.clone(), name.clone(), report.clone());
            tasks.push(tokio::spawn(async move {
                let r = async {
                    let tls = connector.connect(name, tokio::net::TcpStream::connect(addr).await?).await?;
                    if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        report.lock().expect("lock").server_serials.insert(leaf_serial(c.as_ref()));
                    }
                    let (r, mut w) = tokio::io::split(tls);
                    w.write_all(b"ping\n").await?;
                    let mut l = String::new();
                    BufReader::new(r).read_line(&mut l).await?;
                    if l != "pong\n" {
                        return Err(std::io::Error::other(format!("bad answer {l:?}")));
                    }
                    Ok::<_, std::io::Error>(())
                }
                .await;
                let mut rep = report.lock().expect("lock");
                rep.handshakes += 1;
                if let Err(e) = r {
                    rep.failures.push(e.to_string());
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        round += 1;
        if round.is_multiple_of(20) {
            lw.write_all(b"ping\n").await.context("long-lived connection")?;
            if long_lines.next_line().await?.as_deref() != Some("pong") {
                bail!("the long-lived connection stopped answering");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lw.write_all(b"ping\n").await.context("long-lived connection at the end")?;
    if long_lines.next_line().await?.as_deref() != Some("pong") {
        bail!("the long-lived connection stopped answering");
    }
    server.abort();
    let mut rep = report.lock().expect("lock");
    Ok(std::mem::take(&mut *rep))
}

/// Trust reports sent on behalf of a workload whose agent sends none (`[renewal] trust_reports =
/// false`): the test decides what the workload claims to have installed and to serve, so it can
/// hold a workload on an old bundle. Every 300 ms, a notices poll authenticated with the agent's
/// current certificate carries the report. Stops when dropped.
#[derive(Debug)]
pub struct HeldReports {
    /// The bundle sequence reported.
    pub sequence: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Refused handshakes (reason `unknown_issuer`) to report once, with the next report.
    pub refuse_once: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The serving issuer reported (SHA-256 hex); `None`: the agent's real one.
    pub frozen_serving: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HeldReports {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts reporting for `agent` (enrolled) against the CA at `ca_url`, claiming bundle `sequence`.
pub fn held_reports(ca_url: &str, agent: &workload_agent::Agent, sequence: u64) -> HeldReports {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use workload_agent::agent::http;
    let seq = Arc::new(AtomicU64::new(sequence));
    let refuse_once = Arc::new(AtomicU64::new(0));
    let frozen_serving: Arc<Mutex<Option<String>>> = Arc::default();
    let (url, s, r, f) =
        (format!("{ca_url}/workload/v1/notices?wait=1"), seq.clone(), refuse_once.clone(), frozen_serving.clone());
    let held = agent.clone();
    let task = tokio::spawn(async move {
        loop {
            let svid = held.seam().svid_updates().borrow().clone();
            let roots = held.seam().bundle_updates().borrow().as_ref().map(|b| b.roots.clone());
            if let (Some(svid), Some(roots)) = (svid, roots)
                && let Ok(tls) = http::tls_config(&roots, Some((svid.chain.clone(), svid.key.clone_key())))
            {
                let real = svid.chain.get(1).map(|c| ca::sha256_fingerprint(c.as_ref())).unwrap_or_default();
                let serving = f.lock().map(|g| g.clone()).ok().flatten().unwrap_or(real);
                let report = format!(
                    r#"{{"bundle_sequence":{},"serving_issuer":"{serving}","refused":{{"unknown_issuer":{}}}}}"#,
                    s.load(Ordering::SeqCst),
                    r.swap(0, Ordering::SeqCst)
                );
                let headers = [("lanyard-trust-report", report)];
                match http::request_with(tls, hyper::Method::GET, &url, &headers, Vec::new(), Duration::from_secs(10))
                    .await
                {
                    Ok(resp) if resp.status.is_success() => {}
                    Ok(resp) => println!("held report refused (retrying): {} {}", resp.status, resp.error_detail()),
                    Err(e) => println!("held report failed (retrying): {e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    HeldReports { sequence: seq, refuse_once, frozen_serving, task }
}

/// A running agent for `id` that sends no trust reports of its own (see [`held_reports`]) and
/// does not long-poll notices, enrolled when this returns.
pub async fn silent_agent(ca: &WorkloadCa, id: &str, fraction: f64) -> anyhow::Result<workload_agent::Agent> {
    let mut cfg = ca.agent_config(id, &ca.token(id, &[])?, fraction)?;
    cfg.renewal.notices = false;
    cfg.renewal.trust_reports = false;
    let agent = workload_agent::Agent::new(cfg)?;
    let runner = agent.clone();
    tokio::spawn(async move { runner.run(std::future::pending()).await });
    let mut rx = agent.seam().svid_updates();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some()))
        .await
        .context("the silent agent did not enroll within 30 s")??;
    Ok(agent)
}

impl WorkloadCa {
    /// Every canary, newest first, read from the database.
    pub async fn canaries(&self) -> anyhow::Result<Vec<ca::store::canary::Canary>> {
        let url = format!("sqlite://{}", self.dir.path().join("data/lanyard.db").display());
        let store = ca::Store::open(&url).await?;
        let c = store.canaries().await?;
        store.close().await;
        Ok(c)
    }

    /// Issued certificates, newest first: (issuer id, SANs).
    pub async fn issued_by(&self) -> anyhow::Result<Vec<(String, String)>> {
        let url = format!("sqlite://{}", self.dir.path().join("data/lanyard.db").display());
        let store = ca::Store::open(&url).await?;
        let list = store.certificates(100_000).await?;
        store.close().await;
        Ok(list
            .into_iter()
            .filter(|c| c.status == ca::store::CertificateStatus::Issued)
            .map(|c| (c.issuer_id, c.sans))
            .collect())
    }
}

/// The canary workload's and a non-canary workload's SPIFFE IDs in the canary tests, and the
/// canaries' prefix.
pub fn canary_ids() -> (String, String, String) {
    (
        format!("spiffe://{TD}/ns/canary/sa/api"),
        format!("spiffe://{TD}/ns/web/sa/front"),
        format!("spiffe://{TD}/ns/canary/"),
    )
}

impl WorkloadCa {
    /// Agents for [`canary_ids`] (canary first), polling notices every second.
    pub async fn canary_and_web_agents(&self) -> anyhow::Result<Vec<workload_agent::Agent>> {
        let (canary, web, _) = canary_ids();
        self.enrolled_agents_with(&[&canary, &web], 0.5, |cfg| cfg.renewal.notices_wait = Duration::from_secs(1)).await
    }

    /// `rotate intermediate --canary-prefix <canary prefix> --soak <soak>`; the rotation id.
    pub fn start_canary(&self, soak: &str) -> anyhow::Result<String> {
        let out = self.cli(&["rotate", "intermediate", "--canary-prefix", &canary_ids().2, "--soak", soak])?;
        Ok(out.split_whitespace().nth(1).context("rotation id")?.trim_end_matches(':').to_owned())
    }
}
