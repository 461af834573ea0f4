//! `lanyard-ca` configuration: a TOML file, overridden by command-line flags. Unknown keys are
//! errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ca::{InitOptions, Policy};

/// The whole configuration file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the CA keeps its database (SQLite default), root certificate and offline root key.
    pub data_dir: PathBuf,
    /// Database URL; default `sqlite://<data_dir>/lanyard.db`. `postgres://...` for replicas.
    pub database_url: Option<String>,
    /// HTTPS listen address. Loopback by default.
    pub listen: SocketAddr,
    /// Limits of the HTTPS listener (connections, handshake and header deadlines, idleness); the
    /// metrics listener shares its timeouts.
    pub listener: crate::listener::ListenerConfig,
    /// Prometheus metrics (plain HTTP, `/metrics`); none: off. Keep it on loopback or a private
    /// network: it lists issuers and fleet counts.
    pub metrics_listen: Option<SocketAddr>,
    /// Names in the server's own TLS certificate.
    pub server_names: Vec<String>,
    /// File holding the CA passphrase (else `LANYARD_CA_PASSPHRASE`).
    pub passphrase_file: Option<PathBuf>,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// Issuance policy.
    pub policy: Policy,
    /// How `init` (and the development auto-init) creates the CA.
    pub init: InitOptions,
    /// The ACME server (RFC 8555) under `/acme`.
    pub acme: crate::acme::AcmeConfig,
    /// Workload identity: bundle refresh hint, join tokens, JWT attestors.
    pub workload: crate::enroll::WorkloadConfig,
    /// Automatic intermediate rotation.
    pub rotation: ca::rotation::RotationPolicy,
    /// The operator page on the metrics listener.
    pub admin: AdminConfig,
}

/// `[admin]`: the operator page (`/ops` on the metrics listener): the issuer journal on a
/// timeline, rotations in progress with fleet convergence, the SLIs and recent audit events. It
/// shows no secrets, but names every issuer and rotation: off by default, and served on loopback
/// only unless `allow_non_loopback` says otherwise.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/ops` and `/ops/state.json` on `metrics_listen`.
    pub page: bool,
    /// Allow the page on a metrics listener that is not a loopback address.
    pub allow_non_loopback: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("lanyard-data"),
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            listener: crate::listener::ListenerConfig::default(),
            metrics_listen: None,
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            passphrase_file: None,
            log_format: LogFormat::Text,
            policy: Policy::default(),
            init: InitOptions::default(),
            acme: crate::acme::AcmeConfig::default(),
            workload: crate::enroll::WorkloadConfig::default(),
            rotation: ca::rotation::RotationPolicy::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl Config {
    /// Reads a config file; a missing file named explicitly is an error.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let cfg = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("reading config file {}", p.display()))?;
                Config::from_toml_str(&text).with_context(|| format!("invalid config file {}", p.display()))?
            }
            None => Config::default(),
        };
        Ok(cfg)
    }

    /// Parses the text of a config file (what [`Config::load`] does after reading it).
    pub fn from_toml_str(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Checks the settings that can be checked without touching anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.policy.validate().context("invalid [policy]")?;
        self.rotation.validate().context("invalid [rotation]")?;
        self.listener.validate().context("invalid [listener]")?;
        self.acme.rate_limits.validate().map_err(anyhow::Error::msg).context("invalid [acme.rate_limits]")?;
        if self.server_names.is_empty() {
            bail!("server_names must name at least one DNS name or IP address for the server certificate");
        }
        if self.init.intermediate_lifetime > self.init.root_lifetime {
            bail!("[init] intermediate_lifetime may not exceed root_lifetime");
        }
        self.init.validate().context("invalid [init]")?;
        // Each of these ends up in `now + d` (timestamps, tokio instants) somewhere; a value near
        // `Duration::MAX` passed every other check and then panicked there.
        let rl = &self.acme.rate_limits;
        let w = &self.workload;
        let mut durations = vec![
            ("rotation.check_interval", self.rotation.check_interval),
            ("rotation.root_overlap", self.rotation.root_overlap),
            ("acme.order_lifetime", self.acme.order_lifetime),
            ("acme.retention", self.acme.retention),
            ("acme.validation.timeout", self.acme.validation.timeout),
            ("acme.validation.slot_wait", self.acme.validation.slot_wait),
            ("acme.rate_limits.new_orders_per_account.period", rl.new_orders_per_account.period),
            ("acme.rate_limits.new_accounts_per_ip.period", rl.new_accounts_per_ip.period),
            ("acme.rate_limits.requests_per_ip.period", rl.requests_per_ip.period),
            ("workload.bundle_refresh_hint", w.bundle_refresh_hint),
            ("workload.join_token_ttl", w.join_token_ttl),
            ("workload.join_token_max_ttl", w.join_token_max_ttl),
        ];
        for j in &w.jwt {
            durations.push(("workload.jwt.max_token_lifetime", j.max_token_lifetime));
            durations.push(("workload.jwt.jwks_refresh", j.jwks_refresh));
        }
        durations.extend([
            ("rotation.fleet_deadline", self.rotation.fleet_deadline),
            ("rotation.converge_deadline", self.rotation.converge_deadline),
            ("policy.fleet.horizon", self.policy.fleet.horizon),
            ("policy.fleet.warmup", self.policy.fleet.warmup),
        ]);
        for (name, d) in durations {
            ca::check_duration(name, d)?;
        }
        if self.admin.page {
            match self.metrics_listen {
                None => bail!("[admin] page needs metrics_listen: the page is served on the metrics listener"),
                Some(a) if !a.ip().is_loopback() && !self.admin.allow_non_loopback => bail!(
                    "[admin] page on the non-loopback metrics listener {a}: set [admin] allow_non_loopback = true \
                     if that network is private"
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> anyhow::Result<String> {
        if let Some(u) = &self.database_url {
            return Ok(u.clone());
        }
        let dir = std::path::absolute(&self.data_dir)
            .with_context(|| format!("resolving data directory {}", self.data_dir.display()))?;
        Ok(format!("sqlite://{}", dir.join("lanyard.db").display()))
    }

    /// Path of the root certificate file.
    pub fn root_cert_path(&self) -> PathBuf {
        self.data_dir.join("root.pem")
    }

    /// Path of the (encrypted) root key file, to be moved offline.
    pub fn root_key_path(&self) -> PathBuf {
        self.data_dir.join("root.key.pem")
    }

    /// Path of the generated passphrase of a development CA.
    pub fn dev_passphrase_path(&self) -> PathBuf {
        self.data_dir.join("dev-passphrase")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_examples_are_valid_configs() {
        let readme = include_str!("../../README.md");
        let blocks: Vec<&str> =
            readme.split("```toml\n").skip(1).map(|b| b.split("```").next().expect("end of block")).collect();
        assert!(blocks.len() >= 2, "README has its config examples");
        for block in &blocks {
            let cfg: Config = toml::from_str(block).unwrap_or_else(|e| panic!("README config does not parse: {e}"));
            cfg.validate().expect("README config is valid");
        }
        let first: Config = toml::from_str(blocks[0]).expect("parses");
        assert_eq!(first.policy.tls_server.max.as_secs(), 30 * 24 * 3600);
    }

    #[test]
    fn the_operator_page_needs_a_loopback_metrics_listener_unless_allowed() {
        let parse = |t: &str| toml::from_str::<Config>(t).expect("parses");
        let e = parse("[admin]\npage = true\n").validate().expect_err("no metrics listener");
        assert!(e.to_string().contains("metrics_listen"), "{e}");
        let e = parse("metrics_listen = \"0.0.0.0:9102\"\n[admin]\npage = true\n").validate().expect_err("public");
        assert!(e.to_string().contains("allow_non_loopback"), "{e}");
        parse("metrics_listen = \"0.0.0.0:9102\"\n[admin]\npage = true\nallow_non_loopback = true\n")
            .validate()
            .expect("allowed");
        parse("metrics_listen = \"[::1]:9102\"\n[admin]\npage = true\n").validate().expect("loopback");
        assert!(toml::from_str::<Config>("[admin]\npages = true\n").is_err(), "unknown keys");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<Config>("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").is_err());
        assert!(toml::from_str::<Config>("listen = \"not an address\"\n").is_err());
        assert!(toml::from_str::<Config>("[policy.workload]\ndefault = \"1h\"\nmax = \"eventually\"\n").is_err());
        let cfg: Config = toml::from_str(
            "data_dir = \"/tmp/x\"\n[policy]\ntrust_domain = \"example.org\"\n[policy.workload]\ndefault = \"5m\"\nmax = \"1h\"\n",
        )
        .expect("valid");
        assert_eq!(cfg.policy.workload.default.as_secs(), 300);
        cfg.validate().expect("valid");
        let mut bad = cfg.clone();
        bad.policy.trust_domain = "UPPER".into();
        assert!(bad.validate().is_err());
    }
}
