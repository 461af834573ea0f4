//! The fuzz targets of `workload-agent` (`fuzz/fuzz_targets/{agent_config,ca_responses}.rs`)
//! replayed as ordinary tests: every input in `fuzz/regressions/<target>/` and the checks' seeds.

#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[path = "../../fuzz/checks/agent_config.rs"]
mod agent_config;
#[path = "../../fuzz/checks/ca_responses.rs"]
mod ca_responses;

#[test]
fn agent_config_regressions() {
    replay::replay("agent_config", agent_config::check, agent_config::seeds());
}

#[test]
fn ca_responses_regressions() {
    replay::replay("ca_responses", ca_responses::check, ca_responses::seeds());
}
