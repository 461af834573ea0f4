//! Fuzz check `server_config`: `lanyard-ca`'s TOML configuration (`issuer-api/src/config.rs`):
//! `Config::from_toml_str` (what `Config::load` does with the file's text), `Config::validate`,
//! and the JWT attestor entries (`JwtAttestors::new`, checked at startup). A configuration that
//! validates must be usable: every duration must fit the time arithmetic the server does with it.
//! Shared by `fuzz/fuzz_targets/server_config.rs` and `issuer-api/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

use std::time::Duration;

use issuer_api::config::Config;

fn fits(name: &str, d: Duration) {
    let now = time::OffsetDateTime::now_utc();
    assert!(now.checked_add(time::Duration::try_from(d).expect(name)).is_some(), "now + {name} overflows");
    assert!(std::time::Instant::now().checked_add(d).is_some(), "Instant + {name} overflows");
    assert!(i64::try_from(d.as_secs()).is_ok_and(|s| s.checked_add(now.unix_timestamp()).is_some()), "{name}");
}

pub(crate) fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = Config::from_toml_str(text) else { return };
    if cfg.validate().is_err() {
        return;
    }
    let _outcome = issuer_api::enroll::jwt::JwtAttestors::new(cfg.workload.jwt.clone(), &cfg.policy.trust_domain); // only that it returns (no panic) matters
    let _outcome = cfg.database_url(); // only that it returns (no panic) matters
    // The validity computation of issuance, with the policy's own lifetimes.
    let now = time::OffsetDateTime::now_utc();
    let issuer_not_after = now + time::Duration::days(3650);
    for profile in [ca::Profile::Workload, ca::Profile::TlsServer] {
        let lp = if profile == ca::Profile::Workload { cfg.policy.workload } else { cfg.policy.tls_server };
        for requested in [None, Some(lp.max), Some(lp.default)] {
            if let Ok((nb, na)) = cfg.policy.validity(profile, requested, now, issuer_not_after) {
                assert!(nb <= na, "validity starts after it ends");
            }
        }
    }
    let p = &cfg.policy;
    let rl = &cfg.acme.rate_limits;
    for (name, d) in [
        ("policy.workload.max", p.workload.max),
        ("policy.tls_server.max", p.tls_server.max),
        ("policy.backdate", p.backdate),
        ("policy.crl_validity", p.crl_validity),
        ("policy.min_issuer_remaining", p.min_issuer_remaining),
        ("policy.renewal_retry_window", p.renewal_retry_window),
        ("init.root_lifetime", cfg.init.root_lifetime),
        ("init.intermediate_lifetime", cfg.init.intermediate_lifetime),
        ("rotation.check_interval", cfg.rotation.check_interval),
        ("rotation.root_overlap", cfg.rotation.root_overlap),
        ("acme.order_lifetime", cfg.acme.order_lifetime),
        ("acme.retention", cfg.acme.retention),
        ("acme.validation.timeout", cfg.acme.validation.timeout),
        ("acme.validation.slot_wait", cfg.acme.validation.slot_wait),
        ("acme.rate_limits.requests_per_ip.period", rl.requests_per_ip.period),
        ("workload.bundle_refresh_hint", cfg.workload.bundle_refresh_hint),
        ("workload.join_token_ttl", cfg.workload.join_token_ttl),
        ("workload.join_token_max_ttl", cfg.workload.join_token_max_ttl),
        ("listener.idle_timeout", cfg.listener.idle_timeout),
    ] {
        fits(name, d);
    }
    for j in &cfg.workload.jwt {
        fits("jwt.leeway", j.leeway);
        fits("jwt.max_token_lifetime", j.max_token_lifetime);
        fits("jwt.jwks_refresh", j.jwks_refresh);
    }
}

/// The README's configuration examples, the defaults and a few hand-written ones.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    let readme = include_str!("../../README.md");
    let mut out: Vec<Vec<u8>> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(|b| b.as_bytes().to_vec())
        .collect();
    out.push(b"".to_vec());
    out.push(
        br#"data_dir = "/var/lib/lanyard"
listen = "[::1]:8443"
server_names = ["ca.internal", "10.0.0.1"]
[policy]
trust_domain = "example.org"
crl_url = "https://ca.internal:8443/crl"
[policy.workload]
default = "1h"
max = "24h"
[policy.tls_server]
default = "7d"
max = "30d"
[init]
key_algorithm = "ed25519"
root_lifetime = "20y"
intermediate_lifetime = "1y"
[acme]
enabled = true
order_lifetime = "1d"
[acme.rate_limits.requests_per_ip]
burst = 100
period = "10s"
[rotation]
enabled = true
check_interval = "1m"
root_overlap = "30d"
[[workload.jwt]]
issuer = "https://kubernetes.default.svc"
audience = "lanyard"
jwks_url = "https://127.0.0.1:6443/openid/v1/jwks"
spiffe_id_template = "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{sub}"
max_token_lifetime = "1h"
"#
        .to_vec(),
    );
    out.push(b"[init]\nroot_lifetime = \"18446744073709551615s\"\nintermediate_lifetime = \"1y\"\n".to_vec());
    out.push(b"[policy.workload]\ndefault = \"1h\"\nmax = \"500000000y\"\n".to_vec());
    out
}
