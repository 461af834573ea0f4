//! Canary activation of a successor intermediate, judged by the fleet's trust reports.
//!
//! `lanyard-ca rotate intermediate --canary-prefix` makes the successor sign for the canaries
//! only (real agents, moved over by a renewal notice); the rest of the fleet stays on the previous
//! intermediate. A bad canary — its peers report handshakes refused for a trust reason — is rolled
//! back by the CA's rotation loop by itself: the canaries renew under the previous intermediate
//! again and the successor signs nothing more. A good canary becomes the active intermediate when
//! its soak ends. `lanyard-ca rotate rollback` undoes an activation by hand.

use std::time::Duration;

use ca::store::canary::CanaryState;
use tests::workload::{TD, WorkloadCa, canary_ids, held_reports, silent_agent};

const CONFIG: &str = "[rotation]\ncheck_interval = \"1s\"\n[rotation.canary]\nmin_refused = 3\nrenew_spread = \"2s\"\nrollout = \"3s\"\n";

/// The intermediate (journal id) that signed the agent's current certificate.
async fn issuer_of(ca: &WorkloadCa, agent: &workload_agent::Agent) -> String {
    let svid = agent.seam().svid_updates().borrow().clone().expect("an SVID");
    let fp = ca::sha256_fingerprint(svid.chain[1].as_ref());
    let journal = ca.journal().await.expect("journal");
    journal.into_iter().find(|r| r.fingerprint == fp).map(|r| r.id).unwrap_or(fp)
}

/// Waits until `agent` serves a certificate of `issuer`.
async fn wait_on(ca: &WorkloadCa, agent: &workload_agent::Agent, issuer: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now_on = issuer_of(ca, agent).await;
        if now_on == issuer {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: still on {now_on}, not {issuer}, after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_canary(ca: &WorkloadCa, rotation: &str, state: CanaryState) -> ca::store::canary::Canary {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let list = ca.canaries().await.expect("canaries");
        let c = list.into_iter().find(|c| c.rotation == rotation).expect("the canary is recorded");
        if c.state == state {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "canary {rotation} still {:?}, not {state:?}", c.state);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the canary; returns (rotation id, successor, previous).
async fn start_canary(ca: &WorkloadCa, soak: &str) -> (String, String, String) {
    let rotation = ca.start_canary(soak).expect("rotate");
    let c = ca.canaries().await.expect("canaries").into_iter().next().expect("a canary");
    assert_eq!(c.rotation, rotation);
    assert_eq!(c.state, CanaryState::Soaking);
    (rotation, c.successor, c.previous)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canary_rolls_back_by_itself() {
    let ca = WorkloadCa::start_with("[policy.fleet]\nwarmup = \"1s\"\n", CONFIG).expect("CA");
    let (canary_id, web_id, _) = canary_ids();
    let agents = ca.canary_and_web_agents().await.expect("agents");
    let (canary, web) = (&agents[0], &agents[1]);
    // A peer of the canary whose handshakes the test reports: it will refuse the new chain.
    let peer = silent_agent(&ca, &format!("spiffe://{TD}/ns/web/sa/peer"), 0.5).await.expect("peer");
    let peer_reports = held_reports(&ca.url(), &peer, 1);

    let (rotation, successor, previous) = start_canary(&ca, "10m").await;
    // The canary moves to the successor at once (a renewal notice); the others stay where they are.
    wait_on(&ca, canary, &successor, "the canary workload").await;
    assert_eq!(issuer_of(&ca, web).await, previous, "a non-canary workload left the previous intermediate");
    let journal = ca.journal().await.expect("journal");
    let state_of = |j: &[ca::IssuerRecord], id: &str| j.iter().find(|r| r.id == id).map(|r| r.state);
    assert_eq!(state_of(&journal, &successor), Some(ca::IssuerState::Prepared), "the successor is not active");
    assert_eq!(state_of(&journal, &previous), Some(ca::IssuerState::Active));

    // The canary and a non-canary serve each other over mTLS through their seams (one root, two
    // intermediates: both accept), and report those handshakes.
    let report = tests::workload::mtls_loop(web, canary, &web_id, &canary_id, Duration::from_secs(30), || true)
        .await
        .expect("mTLS");
    assert!(report.failures.is_empty(), "failed handshakes: {:?}", report.failures);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = ca.canaries().await.expect("canaries");
    assert_eq!(list[0].state, CanaryState::Soaking, "accepted handshakes alone do not end the canary");
    // Another peer refuses the successor's chain: ten refusals in its next report.
    peer_reports.refuse_once.store(10, std::sync::atomic::Ordering::SeqCst);
    let decided = wait_for_canary(&ca, &rotation, CanaryState::RolledBack).await;
    let reason = decided.reason.clone().unwrap_or_default();
    assert!(reason.contains("refused for a trust reason"), "rollback reason: {reason}");
    assert!(!reason.starts_with("10 of 10 "), "the accepted handshakes were not counted: {reason}");
    println!("rolled back: {reason}");

    // The canary is back on the previous intermediate; the successor is retired and signs nothing.
    wait_on(&ca, canary, &previous, "the canary after the rollback").await;
    let journal = ca.journal().await.expect("journal");
    assert_eq!(state_of(&journal, &successor), Some(ca::IssuerState::Retired));
    assert_eq!(state_of(&journal, &previous), Some(ca::IssuerState::Active));
    let by_successor =
        |list: &[(String, String)]| list.iter().filter(|(i, _)| *i == successor).cloned().collect::<Vec<_>>();
    let signed = by_successor(&ca.issued_by().await.expect("records"));
    assert!(!signed.is_empty(), "the successor signed the canary's certificate");
    for (_, sans) in &signed {
        assert!(sans.contains("/ns/canary/"), "the successor signed for a non-canary: {sans}");
    }
    // Renewals keep coming (60 s certificates renewed at half life); none under the successor.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_on(&ca, web, &previous, "the web workload").await;
    assert_eq!(by_successor(&ca.issued_by().await.expect("records")).len(), signed.len());

    // Every decision is audited with the rotation id, in the hash chain.
    let audit = ca.cli(&["audit", "list", "--rotation", &rotation]).expect("audit");
    for kind in ["rotation.canary_start", "rotation.rollback", "issuer.discard"] {
        assert!(audit.contains(kind), "no {kind} event for rotation {rotation}:\n{audit}");
    }
    let page = ca.metrics().await.expect("metrics");
    assert!(
        page.contains("lanyard_rotation_canaries_total{step=\"canary\",result=\"rolled_back\"} 1"),
        "{}",
        page.lines().filter(|l| l.contains("canar")).collect::<Vec<_>>().join("\n")
    );
    assert!(page.contains("lanyard_rotation_canary_soaking 0"));
    // M5: the refusals counted under the canary's rotation id.
    assert!(page.contains(&format!("lanyard_rotation_refused_handshakes_total{{rotation=\"{rotation}\"}} 10")), "M5");
    let status = ca.cli(&["status"]).expect("status");
    assert!(status.contains(&format!("{rotation}: {successor} rolled_back")), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_canary_completes_then_rollback_by_hand() {
    let ca = WorkloadCa::start_with("[policy.fleet]\nwarmup = \"1s\"\n", CONFIG).expect("CA");
    let (canary_id, web_id, _) = canary_ids();
    let agents = ca.canary_and_web_agents().await.expect("agents");
    let (canary, web) = (&agents[0], &agents[1]);
    let (rotation, successor, previous) = start_canary(&ca, "8s").await;
    wait_on(&ca, canary, &successor, "the canary workload").await;
    // The two serve each other over mTLS through their seams while the canary soaks: different
    // intermediates, one root, no refusal.
    let report = tests::workload::mtls_loop(web, canary, &web_id, &canary_id, Duration::from_secs(30), || true)
        .await
        .expect("mTLS");
    assert!(report.failures.is_empty(), "failed handshakes: {:?}", report.failures);

    let decided = wait_for_canary(&ca, &rotation, CanaryState::Completed).await;
    println!("completed: {}", decided.reason.clone().unwrap_or_default());
    let journal = ca.journal().await.expect("journal");
    let state_of = |j: &[ca::IssuerRecord], id: &str| j.iter().find(|r| r.id == id).map(|r| r.state);
    assert_eq!(state_of(&journal, &successor), Some(ca::IssuerState::Active));
    assert_eq!(state_of(&journal, &previous), Some(ca::IssuerState::Retired));
    // The rest of the fleet is asked to move across the rollout (3 s).
    wait_on(&ca, web, &successor, "the web workload after completion").await;
    let audit = ca.cli(&["audit", "list", "--rotation", &rotation]).expect("audit");
    for kind in ["rotation.canary_start", "rotation.canary_complete", "issuer.activate"] {
        assert!(audit.contains(kind), "no {kind} event for rotation {rotation}:\n{audit}");
    }
    let page = ca.metrics().await.expect("metrics");
    assert!(page.contains("lanyard_rotation_canaries_total{step=\"canary\",result=\"completed\"} 1"));

    // By hand: the previous intermediate (unexpired, unrevoked) takes over again and every holder
    // of a certificate of the discarded one renews under it.
    // Canary flags belong to `rotate intermediate`: elsewhere they are refused, not ignored.
    let e = ca.cli(&["rotate", "root", "--canary-prefix", &canary_ids().2]).expect_err("flags on rotate root");
    assert!(e.to_string().contains("apply to `rotate intermediate`"), "{e:#}");
    assert_eq!(ca.journal().await.expect("journal").len(), journal.len(), "nothing changed");
    let out = ca.cli(&["rotate", "rollback", "--reason", "test"]).expect("rollback");
    assert!(out.contains(&format!("{previous} signs for everyone")), "{out}");
    wait_on(&ca, canary, &previous, "the canary after the manual rollback").await;
    wait_on(&ca, web, &previous, "the web workload after the manual rollback").await;
    let journal = ca.journal().await.expect("journal");
    assert_eq!(state_of(&journal, &previous), Some(ca::IssuerState::Active));
    assert_eq!(state_of(&journal, &successor), Some(ca::IssuerState::Retired));
    let audit = ca.cli(&["audit", "list", "--kind", "rotation.rollback"]).expect("audit");
    assert!(audit.contains("by the operator: test"), "{audit}");
    // A second rollback would bring back the intermediate just discarded: refused.
    let again = ca.cli(&["rotate", "rollback"]).expect_err("a rollback to a discarded intermediate");
    assert!(again.to_string().contains("discarded it"), "{again:#}");
}

/// Two replicas on one PostgreSQL database. Every agent talks to replica B only; replica A holds
/// the rotation lease and so judges the canary. A sees B's workloads live (the fleet view is
/// shared through the database), and rolls the canary back on the refusals reported to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_judges_on_reports_sent_to_another_replica() {
    let Some(db) = tests::throwaway_postgres("lanyard_canary_share").await else { return };
    let policy = "[policy.fleet]\nwarmup = \"1s\"\nshare_interval = \"500ms\"\n";
    let a = WorkloadCa::start_replica(&db, None, policy, CONFIG).expect("replica A");
    // A takes the rotation lease at its first check and keeps it while it runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = WorkloadCa::start_replica(&db, Some(&a.dir.path().join("data")), policy, CONFIG).expect("replica B");
    let agents = b.canary_and_web_agents().await.expect("agents on B");
    let peer = silent_agent(&b, &format!("spiffe://{TD}/ns/web/sa/peer"), 0.5).await.expect("peer");
    let peer_reports = held_reports(&b.url(), &peer, 1);

    // A never heard from these workloads itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = a.metrics().await.expect("metrics");
        if page.contains("lanyard_fleet_workloads{state=\"live\"} 3") {
            assert!(page.contains("lanyard_fleet_reports_total{tracked=\"true\"} 0"), "A received reports itself");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "A does not see B's workloads:\n{page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let rotation = a.start_canary("10m").expect("rotate");
    let store = ca::Store::open(&db).await.expect("store");
    let successor = store.canaries().await.expect("canaries")[0].successor.clone();
    let successor_fp =
        store.issuers().await.expect("journal").into_iter().find(|r| r.id == successor).expect("successor").fingerprint;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while agents[0].seam().svid_updates().borrow().as_ref().map(|s| ca::sha256_fingerprint(s.chain[1].as_ref()))
        != Some(successor_fp.clone())
    {
        assert!(tokio::time::Instant::now() < deadline, "the canary did not move to the successor through B");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    peer_reports.refuse_once.store(10, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = store.canaries().await.expect("canaries").into_iter().find(|c| c.rotation == rotation).expect("c");
        if c.state == CanaryState::RolledBack {
            println!("rolled back by A: {}", c.reason.unwrap_or_default());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not rolled back: {c:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rolled = "lanyard_rotation_canaries_total{step=\"canary\",result=\"rolled_back\"}";
    assert!(a.metrics().await.expect("metrics").contains(&format!("{rolled} 1")), "A decided the rollback");
    assert!(b.metrics().await.expect("metrics").contains(&format!("{rolled} 0")), "B did not decide it");
    store.close().await;
}
