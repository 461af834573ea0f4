//! The fuzz targets of `issuer-api` (`fuzz/fuzz_targets/{jws,acme_payloads,jwt,server_config}.rs`)
//! replayed as ordinary tests: every input in `fuzz/regressions/<target>/` and the checks' seeds.

#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[path = "../../fuzz/checks/acme_payloads.rs"]
mod acme_payloads;
#[path = "../../fuzz/checks/jws.rs"]
mod jws;
#[path = "../../fuzz/checks/jwt.rs"]
mod jwt;
#[path = "../../fuzz/checks/server_config.rs"]
mod server_config;

#[test]
fn jws_regressions() {
    replay::replay("jws", jws::check, jws::seeds());
}

#[test]
fn acme_payloads_regressions() {
    replay::replay("acme_payloads", acme_payloads::check, acme_payloads::seeds());
}

#[test]
fn jwt_regressions() {
    replay::replay("jwt", jwt::check, jwt::seeds());
}

#[test]
fn server_config_regressions() {
    replay::replay("server_config", server_config::check, server_config::seeds());
}
