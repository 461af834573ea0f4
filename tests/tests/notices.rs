//! Push notices: an emergency intermediate rotation reaches running agents through the
//! `/workload/v1/notices` long poll, not through renewalInfo polling (which is set to ten minutes
//! here, so it cannot be what moves them), and the agents renew under the new intermediate within
//! the window. A second emergency shows that they poll again with their new certificates.

use std::time::{Duration, Instant};

use ca::{IssuerKind, IssuerState};
use hyper::{Method, StatusCode};
use tests::workload::{TD, WorkloadCa, authority_key_id};
use workload_agent::agent::ca_client::CaClient;
use workload_agent::agent::http;

const AGENTS: usize = 3;

fn active_ski(journal: &[ca::IssuerRecord]) -> String {
    journal
        .iter()
        .find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active)
        .map(|r| r.ski.clone())
        .expect("an active intermediate")
}

async fn waiters(ca: &WorkloadCa) -> Option<i64> {
    let m = ca.metrics().await.ok()?;
    m.lines().find_map(|l| l.strip_prefix("lanyard_notice_waiters ")).and_then(|v| v.trim().parse().ok())
}

/// Waits until the CA counts exactly `n` agents waiting for notices (a poll an agent abandons for
/// a newer certificate ends with its connection).
async fn wait_for_waiters(ca: &WorkloadCa, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if waiters(ca).await == Some(n) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "agents never waited for notices: {:?}", waiters(ca).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs an emergency rotation with a 5 s window and waits until every agent holds a certificate
/// of the new intermediate; returns how long each took after the command started.
async fn emergency_reaches_agents(ca: &WorkloadCa, agents: &[workload_agent::Agent]) -> Vec<Duration> {
    let before = active_ski(&ca.journal().await.expect("journal"));
    let t0 = Instant::now();
    let out = ca.cli(&["rotate", "intermediate", "--emergency", "--window", "5s"]).expect("emergency rotation");
    println!("{}", out.trim());
    let want = active_ski(&ca.journal().await.expect("journal"));
    assert_ne!(want, before, "a new intermediate is active");
    let watchers: Vec<_> = agents
        .iter()
        .map(|agent| {
            let (mut rx, want) = (agent.seam().svid_updates(), want.clone());
            let id = agent.seam().spiffe_id().to_owned();
            let left = Duration::from_secs(15).saturating_sub(t0.elapsed());
            tokio::spawn(async move {
                tokio::time::timeout(
                    left,
                    rx.wait_for(|s| s.as_ref().is_some_and(|s| authority_key_id(s.chain[0].as_ref()) == want)),
                )
                .await
                .unwrap_or_else(|_| panic!("{id} did not renew under the new intermediate within 15 s"))
                .expect("watch");
                t0.elapsed()
            })
        })
        .collect();
    let mut took = Vec::new();
    for w in watchers {
        took.push(w.await.expect("watcher"));
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_is_pushed_to_agents() {
    let ca =
        WorkloadCa::start_with_hint("", "[rotation]\nenabled = false\ncheck_interval = \"1s\"\n", "10m").expect("CA");

    // The endpoint authenticates like renewal: no client certificate, no notices.
    let client = CaClient::new(&ca.url(), &ca.fingerprint().expect("fp"), TD, Duration::from_secs(10));
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let tls = http::tls_config(&bundle.roots, None).expect("tls");
    let url = format!("{}/workload/v1/notices", ca.url());
    let r = http::request(tls, Method::GET, &url, None, Vec::new(), Duration::from_secs(10)).await.expect("request");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));

    // Three agents that would look at renewalInfo only every ten minutes and renew on their own
    // only after 90 % of the 60 s lifetime.
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let id = format!("spiffe://{TD}/push/a{i}");
        let mut cfg = ca.agent_config(&id, &ca.token(&id, &[]).expect("token"), 0.9).expect("cfg");
        cfg.renewal.max_refresh = Duration::from_secs(600);
        let agent = workload_agent::Agent::new(cfg).expect("agent");
        let runner = agent.clone();
        tokio::spawn(async move { runner.run(std::future::pending()).await });
        agents.push(agent);
    }
    let mut first = Vec::new();
    for agent in &agents {
        let mut rx = agent.seam().svid_updates();
        let s = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some()))
            .await
            .expect("enrolled")
            .expect("watch")
            .clone()
            .expect("svid");
        first.push(s);
    }
    wait_for_waiters(&ca, i64::try_from(AGENTS).expect("few agents")).await;

    // A certificate nobody asked to replace: the poll holds, then answers 204.
    let held = Instant::now();
    assert_eq!(client.notices(&bundle, &first[0], Duration::from_secs(1)).await.expect("poll"), None);
    assert!(held.elapsed() >= Duration::from_millis(900), "{:?}", held.elapsed());

    let took = emergency_reaches_agents(&ca, &agents).await;
    println!("first emergency: agents renewed {took:?} after the command");
    // On their own they would renew after 90 % of the lifetime, or at the earliest inside the
    // ordinary renewalInfo window (two thirds, minus a thirtieth): well after half of it.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for s in &first {
        assert!(now < s.not_before + (s.not_after - s.not_before) / 2, "renewed long before their own schedule");
    }
    assert!(took.iter().all(|t| *t >= Duration::from_secs(1)), "inside the window, not before it: {took:?}");

    // The old certificate's notice is answered at once, with the window.
    let started = Instant::now();
    let (start, end) =
        client.notices(&bundle, &first[0], Duration::from_secs(30)).await.expect("poll").expect("a notice");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(end - start >= 5, "[{start}, {end}]");

    // The agents poll again with their new certificates: a second emergency reaches them too.
    wait_for_waiters(&ca, i64::try_from(AGENTS).expect("few agents")).await;
    let took = emergency_reaches_agents(&ca, &agents).await;
    println!("second emergency: agents renewed {took:?} after the command");
    for agent in &agents {
        assert_eq!(agent.metrics().renewals_failed.get(), 0);
    }
}
