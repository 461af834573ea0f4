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
        let dir = tempfile::tempdir()?;
        let jwt = JwtIssuer::new("k1");
        std::fs::write(dir.path().join("jwks.json"), serde_json::to_vec(&jwt.jwks())?)?;
        let data = dir.path().join("data");
        let cfg = format!(
            r#"data_dir = "{data}"
[policy]
trust_domain = "{TD}"
backdate = "5s"
[policy.workload]
default = "60s"
max = "60s"
[workload]
bundle_refresh_hint = "2s"
[[workload.jwt]]
issuer = "{JWT_ISSUER}"
audience = "{JWT_AUDIENCE}"
jwks_file = "{jwks}"
spiffe_id_template = "spiffe://{TD}/ns/{{/kubernetes.io/namespace}}/sa/{{/kubernetes.io/serviceaccount/name}}"
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
