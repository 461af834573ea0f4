//! `lanyard-agent` configuration: a TOML file, overridden by flags. Unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Longest accepted `[renewal]` interval (`retry_max`, `max_refresh`, `notices_unsupported_retry`).
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest accepted `[renewal] request_timeout`.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of `lanyard-ca` (`https://ca.internal:8443`).
    pub ca_url: String,
    /// SHA-256 (hex) of the CA root certificate, from `lanyard-ca status` or `/root-fingerprint`.
    /// The only trust the agent starts with.
    pub root_fingerprint: String,
    /// The SPIFFE ID this workload asks for.
    pub spiffe_id: String,
    /// How the workload proves who it is at first enrollment.
    pub attestation: Attestation,
    /// Where credentials are written.
    pub output: Output,
    /// How the service is told to reload after new files are written.
    pub reload: Reload,
    /// Renewal timing.
    pub renewal: Renewal,
    /// Unix socket of the SPIFFE Workload API; none disables it.
    pub workload_api_socket: Option<PathBuf>,
    /// Prometheus metrics listen address (loopback recommended); none disables it.
    pub metrics_listen: Option<SocketAddr>,
}

/// Attestation for the first certificate (and for re-enrollment when the certificate was lost or
/// expired). Exactly one of the sources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Attestation {
    /// A one-time join token (prefer `join_token_file` or `LANYARD_JOIN_TOKEN`: flags and configs
    /// are often readable by others).
    pub join_token: Option<String>,
    /// File holding a join token.
    pub join_token_file: Option<PathBuf>,
    /// File holding a JWT (e.g. a Kubernetes projected service-account token). Re-read at every
    /// enrollment, since such tokens are rotated on disk.
    pub jwt_file: Option<PathBuf>,
}

/// Output files. Each is written atomically (temporary file, fsync, rename); the key with 0600.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Output {
    /// Private key (PKCS#8 PEM).
    pub key_file: Option<PathBuf>,
    /// Certificate chain (leaf first, PEM).
    pub cert_file: Option<PathBuf>,
    /// Trust bundle (PEM roots).
    pub bundle_file: Option<PathBuf>,
    /// Every CRL in force (PEM `X509 CRL` blocks), for OpenSSL-style consumers
    /// (`openssl verify -crl_check_all -CRLfile`). Rewritten when the set changes.
    pub crl_file: Option<PathBuf>,
}

/// Reload action after new files are written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reload {
    /// Signal name (`HUP`, `USR1`, ...) sent to `pid` or the pid in `pid_file`.
    pub signal: Option<String>,
    /// Process to signal.
    pub pid: Option<i32>,
    /// File holding the pid to signal (re-read each time, so service restarts are followed).
    pub pid_file: Option<PathBuf>,
    /// Command to run instead, as an argv list (no shell).
    pub command: Vec<String>,
}

/// Renewal timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Renewal {
    /// Fraction of the lifetime after which to renew (default 2/3).
    pub fraction: f64,
    /// Random spread, as a fraction of the lifetime, subtracted from the renewal time so a fleet
    /// issued together does not renew together.
    pub jitter: f64,
    /// First retry delay after a failed renewal.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay (the backoff doubles up to it, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Timeout of one request to the CA.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Upper bound on how long the agent waits between trust-bundle and renewalInfo checks (the
    /// CA's `spiffe_refresh_hint` applies when shorter).
    #[serde(with = "humantime_serde")]
    pub max_refresh: Duration,
    /// Long-poll the CA's push channel (`/workload/v1/notices`), so an emergency rotation reaches
    /// the agent at once instead of at the next renewalInfo check.
    pub notices: bool,
    /// After the CA answers the push channel with 404, ask again after about this long (±20 %).
    #[serde(with = "humantime_serde")]
    pub notices_unsupported_retry: Duration,
    /// How long each notices long poll is held open. Each poll also carries the agent's trust
    /// report (bundle sequence, handshake counts), so this is how often the CA hears from an
    /// idle agent: keep it well under the CA's `[policy.fleet] horizon`. At most 300 s.
    #[serde(with = "humantime_serde")]
    pub notices_wait: Duration,
    /// Send the trust report (`Lanyard-Trust-Report`: bundle sequence, serving issuer, handshake
    /// counts) with renewals and notices polls. Off, the CA's rotation gate cannot count this
    /// workload as confirmed, and it counts as gone once the CA's fleet horizon passes.
    pub trust_reports: bool,
}

impl Default for Renewal {
    fn default() -> Self {
        Renewal {
            fraction: 2.0 / 3.0,
            jitter: 0.05,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_refresh: Duration::from_secs(300),
            notices: true,
            notices_unsupported_retry: Duration::from_secs(300),
            notices_wait: Duration::from_secs(55),
            trust_reports: true,
        }
    }
}

impl AgentConfig {
    /// Reads a config file (none: defaults, to be completed by flags).
    pub fn load(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                AgentConfig::from_toml_str(&text).with_context(|| format!("invalid config file {}", p.display()))
            }
            None => Ok(AgentConfig::default()),
        }
    }

    /// Parses the text of a config file (what [`AgentConfig::load`] does after reading it).
    pub fn from_toml_str(text: &str) -> anyhow::Result<AgentConfig> {
        Ok(toml::from_str(text)?)
    }

    /// Checks everything that can be checked before running.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.ca_url.starts_with("https://") {
            bail!("ca_url must be an https:// URL (got {:?})", self.ca_url);
        }
        let fp = self.root_fingerprint.to_ascii_lowercase().replace(':', "");
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("root_fingerprint must be the SHA-256 of the root certificate, 64 hex digits");
        }
        if !self.spiffe_id.starts_with("spiffe://") {
            bail!("spiffe_id must be a spiffe:// URI (got {:?})", self.spiffe_id);
        }
        // The seam's own parser, so that what passes here is what the agent accepts at start.
        crate::tls::CredentialSeam::new(&self.spiffe_id).map_err(|e| anyhow::anyhow!("spiffe_id: {e}"))?;
        let a = &self.attestation;
        let n =
            [a.join_token.is_some(), a.join_token_file.is_some(), a.jwt_file.is_some()].iter().filter(|x| **x).count();
        if n > 1 {
            bail!("[attestation]: give one of join_token, join_token_file, jwt_file");
        }
        let r = &self.renewal;
        if !(r.fraction > 0.0 && r.fraction < 1.0) {
            bail!("[renewal] fraction must be between 0 and 1 (exclusive)");
        }
        if !(0.0..0.5).contains(&r.jitter) || r.jitter >= r.fraction {
            bail!("[renewal] jitter must be at least 0, below 0.5 and below fraction");
        }
        if r.notices_wait < Duration::from_secs(1) || r.notices_wait > Duration::from_secs(300) {
            bail!("[renewal] notices_wait must be between 1s and 300s");
        }
        if r.retry_initial.is_zero() || r.retry_max < r.retry_initial {
            bail!("[renewal] retry_initial must be > 0 and <= retry_max");
        }
        // These end up in `Instant::now() + d`, `wait + request_timeout` and `d.mul_f64(1.2)`,
        // which panic near `Duration::MAX`; no sensible setting comes close to the bounds.
        for (name, value, max) in [
            ("retry_max", r.retry_max, MAX_INTERVAL),
            ("request_timeout", r.request_timeout, MAX_REQUEST_TIMEOUT),
            ("max_refresh", r.max_refresh, MAX_INTERVAL),
            ("notices_unsupported_retry", r.notices_unsupported_retry, MAX_INTERVAL),
        ] {
            if value > max {
                bail!(
                    "[renewal] {name} may be at most {} (got {})",
                    humantime::format_duration(max),
                    humantime::format_duration(value)
                );
            }
        }
        if r.request_timeout.is_zero() {
            bail!("[renewal] request_timeout must be > 0");
        }
        if self.reload.signal.is_some() && self.reload.pid.is_none() && self.reload.pid_file.is_none() {
            bail!("[reload] signal needs pid or pid_file");
        }
        if self.reload.signal.is_some() && !self.reload.command.is_empty() {
            bail!("[reload]: give signal or command, not both");
        }
        if let Some(s) = &self.reload.signal {
            crate::agent::files::parse_signal(s)?;
        }
        Ok(())
    }

    /// The pinned fingerprint, normalised (lower-case hex, no colons).
    pub fn pin(&self) -> String {
        self.root_fingerprint.to_ascii_lowercase().replace(':', "")
    }
}
