//! Fuzz check `agent_config`: `lanyard-agent`'s TOML configuration
//! (`workload-agent/src/config.rs`): `AgentConfig::from_toml_str` (what `load` does with the
//! file's text), `validate`, and `Agent::new`. A configuration that validates must be usable:
//! the agent's timing functions and its `Instant + d`, `wait + request_timeout`, `d * 1.2`
//! computations must not overflow. Shared by `fuzz/fuzz_targets/agent_config.rs` and
//! `workload-agent/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

use std::time::Duration;

use workload_agent::agent::schedule;
use workload_agent::config::AgentConfig;

pub(crate) fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = AgentConfig::from_toml_str(text) else { return };
    if cfg.validate().is_err() {
        return;
    }
    let r = cfg.renewal.clone();
    assert_eq!(cfg.pin().len(), 64);
    for attempt in [0, 1, 5, 20, 64, u32::MAX] {
        for unit in [0.0, 0.5, 0.999] {
            let d = schedule::backoff(attempt, r.retry_initial, r.retry_max, Duration::from_secs(3600), unit);
            assert!(d >= Duration::from_millis(100));
        }
    }
    for (nb, na) in [(0, 3600), (1_700_000_000, 1_700_086_400), (0, i64::from(u32::MAX))] {
        let t = schedule::renewal_time(nb, na, r.fraction, r.jitter, 0.5);
        assert!((nb..=na).contains(&t), "renewal planned outside the validity");
    }
    let now = std::time::Instant::now();
    assert!(now.checked_add(r.max_refresh).is_some(), "Instant + max_refresh overflows");
    assert!(now.checked_add(r.retry_max).is_some(), "Instant + retry_max overflows");
    // The notices long poll waits up to an hour plus the request timeout; a 404 pauses 0.8 to 1.2
    // times notices_unsupported_retry.
    assert!(Duration::from_secs(3600).checked_add(r.request_timeout).is_some());
    assert!(Duration::try_from_secs_f64(r.notices_unsupported_retry.as_secs_f64() * 1.2).is_ok());
    let _outcome = r.notices_unsupported_retry.mul_f64(1.2); // only that it returns (no panic) matters
    workload_agent::Agent::new(cfg).expect("a validated configuration builds an agent");
}

pub(crate) fn seeds() -> Vec<Vec<u8>> {
    let full = r#"ca_url = "https://ca.internal:8443"
root_fingerprint = "3f:a1:0b:4c:9d:2e:11:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab"
spiffe_id = "spiffe://lanyard.internal/web"
workload_api_socket = "/run/lanyard/agent.sock"
metrics_listen = "127.0.0.1:9101"
[attestation]
join_token_file = "/run/secrets/lanyard-join-token"
[output]
key_file = "/run/web-identity/key.pem"
cert_file = "/run/web-identity/cert.pem"
bundle_file = "/run/web-identity/bundle.pem"
crl_file = "/run/web-identity/crls.pem"
[reload]
signal = "HUP"
pid_file = "/run/web.pid"
[renewal]
fraction = 0.6667
jitter = 0.05
retry_initial = "1s"
retry_max = "1m"
request_timeout = "10s"
max_refresh = "5m"
notices = true
notices_unsupported_retry = "5m"
"#;
    let minimal = "ca_url = \"https://ca:8443\"\nroot_fingerprint = \"\
0000000000000000000000000000000000000000000000000000000000000000\"\nspiffe_id = \"spiffe://example.org/a\"\n";
    vec![
        full.as_bytes().to_vec(),
        minimal.as_bytes().to_vec(),
        format!(
            "{minimal}[reload]\ncommand = [\"systemctl\", \"reload\", \"web\"]\n[attestation]\njwt_file = \"/t\"\n"
        )
        .into_bytes(),
        format!("{minimal}[renewal]\nmax_refresh = \"18446744073709551615s\"\n").into_bytes(),
        format!("{minimal}[renewal]\nnotices_unsupported_retry = \"500000000y\"\nrequest_timeout = \"500000000y\"\n")
            .into_bytes(),
    ]
}
