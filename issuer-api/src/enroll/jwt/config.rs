//! The `[[workload.jwt]]` configuration and everything about it that can be checked without I/O.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::jwks::JwksSource;
use super::template::Template;
use super::token::ClaimRules;
use super::{humantime, secs};

/// Largest accepted `leeway`: more would make `exp` meaningless.
const MAX_LEEWAY: Duration = Duration::from_secs(600);

pub(super) fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

pub(super) fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

/// One `[[workload.jwt]]` entry of the server configuration: one token issuer we trust, e.g. one
/// Kubernetes cluster.
///
/// ```toml
/// [[workload.jwt]]
/// issuer = "https://kubernetes.default.svc.cluster.local"
/// audience = "lanyard"
/// jwks_file = "/etc/lanyard/cluster-a-jwks.json"
/// spiffe_id_template = "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}"
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAttestorConfig {
    /// The exact `iss` of the tokens. It also selects this attestor, so it must be unique.
    pub issuer: String,
    /// A value that must appear in the token's `aud` (a string or an array). Issuers mint tokens
    /// for many relying parties; requiring our own audience stops a token meant for another
    /// service from being replayed here.
    pub audience: String,
    /// Local JWKS file (e.g. from `kubectl get --raw /openid/v1/jwks`). Re-read when it changes.
    /// Exactly one of `jwks_file` and `jwks_url` must be set.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL. `https://` only: the keys decide who gets certificates, so they must not travel
    /// unauthenticated. `http://` is allowed for loopback hosts only (tests, local sidecars).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM file with the roots that authenticate `jwks_url` (e.g. the cluster's CA); default:
    /// the system's roots. Read at every fetch, so it can be rotated without a restart.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// How claims become a SPIFFE ID. `{name}` is a top-level claim, `{/a/b}` a JSON pointer
    /// (RFC 6901, so `{/kubernetes.io/namespace}` reaches a key with a dot in it). Each value
    /// fills one path segment. The template must start with `spiffe://<trust domain>/`.
    pub spiffe_id_template: String,
    /// Allowed clock skew for `exp`, `nbf` and `iat` (at most 10 minutes).
    #[serde(with = "humantime_serde", default = "default_leeway")]
    pub leeway: Duration,
    /// Tokens whose `exp - iat` (or `exp - now` without `iat`) exceeds this are refused, so that
    /// a long-lived token that leaks cannot be used to enroll for long.
    #[serde(with = "humantime_serde", default = "default_max_token_lifetime")]
    pub max_token_lifetime: Duration,
    /// The JWKS is reloaded at least this often, so that removed (compromised) keys stop
    /// working. A token signed with a key we do not know also triggers a reload (at most once
    /// every 10 seconds), so a rotation by the issuer is picked up immediately.
    #[serde(with = "humantime_serde", default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
}

/// An invalid `[[workload.jwt]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry {index} (issuer {issuer:?}): {reason}")]
pub struct JwtConfigError {
    /// 1-based position of the entry in the configuration.
    pub index: usize,
    /// Its `issuer`.
    pub issuer: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A configuration entry that passed every check, in the parts the attestor is built from.
#[derive(Debug)]
pub(super) struct Checked {
    pub(super) rules: ClaimRules,
    pub(super) template: Template,
    pub(super) source: JwksSource,
    pub(super) refresh: Duration,
}

impl JwtAttestorConfig {
    /// Checks the entry (issuer, audience, JWKS source, durations, template).
    pub(super) fn check(self, trust_domain: &str) -> Result<Checked, String> {
        let cfg = self;
        if cfg.issuer.is_empty() {
            return Err("issuer may not be empty".into());
        }
        if cfg.audience.is_empty() {
            return Err("audience may not be empty: it is what keeps tokens for other services out".into());
        }
        let source = match (cfg.jwks_file, cfg.jwks_url) {
            (Some(_), Some(_)) => return Err("set only one of jwks_file and jwks_url".into()),
            (None, None) => return Err("set one of jwks_file and jwks_url".into()),
            (Some(path), None) => {
                if cfg.jwks_ca_file.is_some() {
                    return Err("jwks_ca_file only applies to jwks_url".into());
                }
                JwksSource::File(path)
            }
            (None, Some(url)) => JwksSource::Url { uri: check_jwks_url(&url)?, ca_file: cfg.jwks_ca_file },
        };
        if cfg.leeway > MAX_LEEWAY {
            return Err(format!("leeway may be at most {}", humantime(MAX_LEEWAY)));
        }
        if cfg.max_token_lifetime < Duration::from_secs(1) {
            return Err("max_token_lifetime must be at least 1s".into());
        }
        if cfg.jwks_refresh < Duration::from_secs(1) {
            return Err("jwks_refresh must be at least 1s".into());
        }
        let template = Template::parse(&cfg.spiffe_id_template, trust_domain)
            .map_err(|e| format!("spiffe_id_template {:?} {e}", cfg.spiffe_id_template))?;
        Ok(Checked {
            rules: ClaimRules {
                issuer: cfg.issuer,
                audience: cfg.audience,
                leeway: secs(cfg.leeway),
                max_lifetime: secs(cfg.max_token_lifetime),
            },
            template,
            source,
            refresh: cfg.jwks_refresh,
        })
    }
}

/// `jwks_url` must be https, or http to a loopback address (nothing on the wire to tamper with).
fn check_jwks_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("jwks_url {url:?} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("jwks_url {url:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback =
                bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(uri)
            } else {
                Err(format!("jwks_url {url:?} must use https (http is allowed only for loopback hosts)"))
            }
        }
        _ => Err(format!("jwks_url {url:?} must be an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::JwtAttestors;
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn bad_configurations_are_refused_at_construction() {
        let p = Path::new("/nonexistent/jwks.json");
        let bad = |cfg: JwtAttestorConfig, needle: &str| {
            let e = JwtAttestors::new(vec![cfg], TD).expect_err("must be refused");
            assert!(e.to_string().contains(needle), "{e} should contain {needle:?}");
        };
        for t in [
            "spiffe://other.org/sub/{sub}",
            "spiffe://example.org.evil.com/{sub}",
            "spiffe://example.org{sub}",
            "{sub}",
            "spiffe://{iss}/x",
            "https://example.org/{sub}",
        ] {
            bad(config(p, t), "must start with spiffe://example.org/");
        }
        bad(config(p, "spiffe://example.org/{sub"), "without a matching '}'");
        bad(config(p, "spiffe://example.org/sub}"), "without a matching '{'");
        bad(config(p, "spiffe://example.org/{}"), "empty placeholder");
        bad(config(p, "spiffe://example.org/{/a~2b}"), "invalid JSON pointer");
        bad(config(p, "spiffe://example.org/a//{sub}"), "does not make a valid SPIFFE ID");
        bad(config(p, "spiffe://example.org/a b/{sub}"), "does not make a valid SPIFFE ID");
        bad(config(p, "spiffe://example.org/"), "does not make a valid SPIFFE ID");
        // A fixed ID (no placeholder) is allowed: every token of the issuer gets it.
        assert!(JwtAttestors::new(vec![config(p, "spiffe://example.org/ci")], TD).is_ok());

        let mut c = config(p, SUB_TEMPLATE);
        c.jwks_url = Some("https://issuer.example/jwks".into());
        bad(c.clone(), "only one of jwks_file and jwks_url");
        c.jwks_file = None;
        c.jwks_url = None;
        bad(c.clone(), "set one of jwks_file and jwks_url");
        for url in ["http://issuer.example/jwks", "ftp://127.0.0.1/jwks", "/jwks"] {
            c.jwks_url = Some(url.into());
            bad(c.clone(), "jwks_url");
        }
        for url in ["http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:1/jwks", "https://x.example/k"]
        {
            c.jwks_url = Some(url.into());
            assert!(JwtAttestors::new(vec![c.clone()], TD).is_ok(), "{url}");
        }
        let mut d = config(p, SUB_TEMPLATE);
        d.jwks_ca_file = Some("/ca.pem".into());
        bad(d, "jwks_ca_file only applies to jwks_url");
        let mut e = config(p, SUB_TEMPLATE);
        e.audience.clear();
        bad(e, "audience may not be empty");
        let mut l = config(p, SUB_TEMPLATE);
        l.leeway = Duration::from_secs(3600);
        bad(l, "leeway may be at most 10m");
        let err = JwtAttestors::new(vec![config(p, SUB_TEMPLATE), config(p, K8S_TEMPLATE)], TD).expect_err("duplicate");
        assert!(err.to_string().starts_with("entry 2 (issuer \"https://kubernetes"), "{err}");
        assert!(JwtAttestors::new(vec![], TD).expect("empty").is_empty());
    }

    #[test]
    fn configuration_parses_from_toml_with_defaults() {
        let cfg: JwtAttestorConfig = toml::from_str(
            r#"
            issuer = "https://kubernetes.default.svc.cluster.local"
            audience = "lanyard"
            jwks_file = "/etc/lanyard/jwks.json"
            spiffe_id_template = "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}"
            "#,
        )
        .expect("valid");
        assert_eq!(cfg.leeway, Duration::from_secs(30));
        assert_eq!(cfg.max_token_lifetime, Duration::from_secs(86400));
        assert_eq!(cfg.jwks_refresh, Duration::from_secs(300));
        let a = JwtAttestors::new(vec![cfg], TD).expect("valid");
        assert_eq!(a.issuers().collect::<Vec<_>>(), [ISS]);
        let with = |extra: &str| {
            toml::from_str::<JwtAttestorConfig>(&format!(
                "issuer = \"i\"\naudience = \"a\"\njwks_url = \"https://i/k\"\nspiffe_id_template = \"spiffe://example.org/x\"\n{extra}"
            ))
        };
        let c = with("leeway = \"1m\"\nmax_token_lifetime = \"1h\"\njwks_refresh = \"30s\"").expect("valid");
        assert_eq!((c.leeway.as_secs(), c.max_token_lifetime.as_secs(), c.jwks_refresh.as_secs()), (60, 3600, 30));
        assert!(with("audiences = \"typo\"").is_err());
        assert!(with("leeway = \"soon\"").is_err());
    }
}
