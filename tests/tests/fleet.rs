//! Agents report their trust state to the CA with every notices poll and renewal: the bundle
//! sequence they installed, the issuer of the certificate they serve, and the handshakes their
//! seam verifiers accepted and refused (by reason). The CA's metrics show the live fleet, its
//! convergence on the current bundle, and the handshake counts; a malformed report is refused
//! with a problem document and records nothing.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use tests::process::metric;
use tests::workload::{TD, WorkloadCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use workload_agent::agent::ca_client::CaClient;
use workload_agent::agent::http;
use workload_agent::tls::{Authorizer, Refusal};

/// Polls the CA's metrics until `ok` holds for the page, or fails with the last page.
async fn wait_for_metrics(ca: &WorkloadCa, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = ca.metrics().await.expect("metrics");
        if ok(&page) {
            return page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} not seen within 30 s:\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fleet_lines(page: &str) -> String {
    page.lines()
        .filter(|l| l.starts_with("lanyard_fleet") || l.starts_with("lanyard_bundle_sequence"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_bundle_issuer_and_handshakes() {
    let ca = WorkloadCa::start_with_hint("", "[rotation]\nenabled = false\n", "10m").expect("CA");
    let ids: Vec<String> = ["a", "b", "c"].iter().map(|n| format!("spiffe://{TD}/fleet/{n}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    // A short poll, so the next report (with the handshake counts) comes within a second.
    let agents = ca
        .enrolled_agents_with(&refs, 0.9, |cfg| cfg.renewal.notices_wait = Duration::from_secs(1))
        .await
        .expect("agents");
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);

    // Every agent is live and has installed the current bundle.
    let page = wait_for_metrics(&ca, "three live agents on the current bundle", |p| {
        p.contains("lanyard_fleet_workloads{state=\"live\"} 3")
            && p.lines().any(|l| l.starts_with("lanyard_fleet_bundle_confirmed_workloads{") && l.ends_with(" 3"))
    })
    .await;
    let seq: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("lanyard_bundle_sequence "))
        .and_then(|v| v.trim().parse().ok())
        .expect("lanyard_bundle_sequence");
    assert!(seq >= 1, "{}", fleet_lines(&page));
    assert_eq!(metric(&page, &format!("lanyard_fleet_bundle_confirmed_workloads{{sequence=\"{seq}\"}}")), 3.0);
    // They all serve certificates of the one active intermediate, named by its SHA-256.
    let chain = a.seam().svid_updates().borrow().clone().expect("svid").chain.clone();
    let issuer = hex::encode(ring::digest::digest(&ring::digest::SHA256, chain[1].as_ref()));
    assert_eq!(metric(&page, &format!("lanyard_fleet_serving_workloads{{issuer=\"{issuer}\"}}")), 3.0);
    assert_eq!(metric(&page, "lanyard_fleet_workloads{state=\"gone\"}"), 0.0);

    // Service a accepts only b. b connects five times (both sides accept), c three times (c accepts
    // a's certificate, a refuses c's identity).
    let server = Arc::new(a.seam().server_config(Authorizer::exact([ids[1].as_str()]).expect("authz")).expect("cfg"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        tls.write_all(b"pong").await.ok(); // the client may be gone already
                    }
                }
            });
        }
    });
    let name = rustls::pki_types::ServerName::try_from("svc-a.internal").expect("name");
    let connect = |agent: &workload_agent::Agent| {
        let cfg =
            Arc::new(agent.seam().client_config(Authorizer::exact([ids[0].as_str()]).expect("authz")).expect("cfg"));
        let name = name.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
            tls.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(())
        }
    };
    for _ in 0..5 {
        connect(b).await.expect("b is welcome");
    }
    for _ in 0..3 {
        assert!(connect(c).await.is_err(), "c is refused by a");
    }
    let a_counts = a.seam().handshake_counts();
    assert_eq!((a_counts.accepted, a_counts.refused_for(Refusal::Identity)), (5, 3), "{a_counts:?}");
    // The agent's own metrics say the same.
    let page = a.render_metrics();
    assert!(page.contains("lanyard_agent_handshakes_total{outcome=\"accepted\",reason=\"\"} 5"), "{page}");
    assert!(page.contains("lanyard_agent_handshakes_total{outcome=\"refused\",reason=\"identity\"} 3"), "{page}");
    assert!(page.contains("lanyard_agent_handshakes_total{outcome=\"refused\",reason=\"unknown_issuer\"} 0"), "{page}");

    // The next polls carry the counts: 5 (a) + 5 (b) + 3 (c) accepted, 3 refused for identity.
    let page = wait_for_metrics(&ca, "the handshake counts", |p| {
        p.contains("lanyard_fleet_handshakes_total{outcome=\"refused\",reason=\"identity\"} 3")
            && p.contains("lanyard_fleet_handshakes_total{outcome=\"accepted\",reason=\"\"} 13")
    })
    .await;
    println!("{}", fleet_lines(&page));
    for reason in ["unknown_issuer", "expired", "revoked", "no_bundle", "other"] {
        assert_eq!(
            metric(&page, &format!("lanyard_fleet_handshakes_total{{outcome=\"refused\",reason=\"{reason}\"}}")),
            0.0
        );
    }
    // Reported once each: a few more polls later the totals are the same.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = ca.metrics().await.expect("metrics");
    assert_eq!(metric(&later, "lanyard_fleet_handshakes_total{outcome=\"accepted\",reason=\"\"}"), 13.0);
    assert!(
        metric(&later, "lanyard_fleet_reports_total{tracked=\"true\"}")
            > metric(&page, "lanyard_fleet_reports_total{tracked=\"true\"}")
    );

    // A malformed report: 400 with a problem document, and nothing recorded.
    let client = CaClient::new(&ca.url(), &ca.fingerprint().expect("fp"), TD, Duration::from_secs(10));
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let svid = b.seam().svid_updates().borrow().clone().expect("svid");
    let tls = http::tls_config(&bundle.roots, Some((svid.chain.clone(), svid.key.clone_key()))).expect("tls");
    let before = ca.metrics().await.expect("metrics");
    let url = format!("{}/workload/v1/notices?wait=1", ca.url());
    let headers = [("lanyard-trust-report", r#"{"bundle_sequence":"seven"}"#.to_owned())];
    let r = http::request_with(tls, Method::GET, &url, &headers, Vec::new(), Duration::from_secs(10))
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r.error_detail().contains("lanyard-trust-report"), "{}", r.error_detail());
    let after = ca.metrics().await.expect("metrics");
    assert_eq!(
        metric(&after, "lanyard_fleet_handshakes_total{outcome=\"accepted\",reason=\"\"}"),
        metric(&before, "lanyard_fleet_handshakes_total{outcome=\"accepted\",reason=\"\"}")
    );
}

/// A root rotation gated on the fleet: two services do mTLS through it on real agents, and a third
/// workload is deliberately held on the old bundle (its reports keep naming the old sequence).
/// The new root does not take over, and nothing is signed under it, until the held workload
/// confirms; then it proceeds, with 0 failed handshakes between the two services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_activation_waits_for_a_held_workload() {
    use ca::{IssuerKind, IssuerState};
    use std::sync::atomic::{AtomicBool, Ordering};
    use tests::workload::{authority_key_id, held_reports, mtls_loop, silent_agent};

    let ca = WorkloadCa::start_with(
        "",
        "[rotation]\ncheck_interval = \"1s\"\nroot_overlap = \"2s\"\nfleet_deadline = \"8s\"\nconverge_deadline = \"40s\"\n[policy.fleet]\nwarmup = \"1s\"\nhorizon = \"30s\"\n",
    )
    .expect("CA");
    let a_id = format!("spiffe://{TD}/svc-a");
    let b_id = format!("spiffe://{TD}/svc-b");
    let h_id = format!("spiffe://{TD}/held");
    let agents = ca.enrolled_agents(&[&a_id, &b_id], 0.3).await.expect("agents");
    let (a, b) = (agents[0].clone(), agents[1].clone());
    // The held workload: a real agent that keeps its certificate fresh but sends no reports of
    // its own; this test reports for it, naming the bundle it is held on.
    let h = silent_agent(&ca, &h_id, 0.3).await.expect("held agent");
    let old_seq = h.seam().bundle_updates().borrow().as_ref().expect("bundle").sequence;
    let held = held_reports(&ca.url(), &h, old_seq);
    wait_for_metrics(&ca, "three live workloads", |p| p.contains("lanyard_fleet_workloads{state=\"live\"} 3")).await;

    // Two services keep doing mTLS for the whole test.
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    let (la, lb, lai, lbi) = (a.clone(), b.clone(), a_id.clone(), b_id.clone());
    let load = tokio::spawn(async move {
        mtls_loop(&la, &lb, &lai, &lbi, Duration::from_secs(240), move || done.load(Ordering::SeqCst)).await
    });

    let audited_before = metric(&ca.metrics().await.expect("metrics"), "lanyard_audit_events{chain=\"in\"}");
    let before = ca.journal().await.expect("journal");
    let old_int = before
        .iter()
        .find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active)
        .expect("active")
        .clone();
    println!("{}", ca.cli(&["rotate", "root"]).expect("rotate root").trim());
    let journal = ca.journal().await.expect("journal");
    let new_root = journal
        .iter()
        .find(|r| r.kind == IssuerKind::Root && r.state == IssuerState::Prepared)
        .expect("new root")
        .clone();
    let new_int = journal
        .iter()
        .find(|r| r.kind == IssuerKind::Intermediate && r.parent_id.as_deref() == Some(new_root.id.as_str()))
        .expect("new intermediate")
        .clone();

    // The overlap (2 s) passes; a and b install the new bundle, the held workload does not: the
    // gate holds the new root, and says why.
    let page = wait_for_metrics(&ca, "the gate waiting on 2 of 3", |p| {
        p.lines().any(|l| l.starts_with("lanyard_rotation_gate_waiting{step=\"activate_root\"") && l.ends_with(" 1"))
            && p.lines().any(|l| l.starts_with("lanyard_rotation_gate_confirmed_workloads{") && l.ends_with(" 2"))
    })
    .await;
    println!("{}", fleet_lines(&page));
    let new_seq = a.seam().bundle_updates().borrow().as_ref().expect("bundle").sequence;
    assert!(new_seq > old_seq, "a installed the bundle with both roots: {old_seq} -> {new_seq}");
    assert!(page.contains(&format!(
        "lanyard_rotation_gate_required_workloads{{step=\"activate_root\",issuer=\"{}\"}} 3",
        new_root.id
    )));
    // It stays held, past its deadline: the rotation alerts (metric, audit event) and still waits.
    wait_for_metrics(&ca, "the gate overdue", |p| {
        p.lines().any(|l| l.starts_with("lanyard_rotation_gate_overdue{step=\"activate_root\"") && l.ends_with(" 1"))
    })
    .await;
    let overdue = ca.cli(&["audit", "list", "--kind", "rotation.gate_overdue", "--format", "jsonl"]).expect("audit");
    assert_eq!(overdue.lines().count(), 1, "one overdue alert: {overdue}");
    assert!(overdue.contains("svc") || overdue.contains("held"), "the alert names who is behind: {overdue}");
    let journal = ca.journal().await.expect("journal");
    let state = |j: &[ca::IssuerRecord], id: &str| j.iter().find(|r| r.id == id).map(|r| r.state);
    assert_eq!(state(&journal, &new_root.id), Some(IssuerState::Prepared));
    assert_eq!(state(&journal, &new_int.id), Some(IssuerState::Prepared));
    assert_eq!(state(&journal, &old_int.id), Some(IssuerState::Active));
    for agent in [&a, &b, &h] {
        let svid = agent.seam().svid_updates().borrow().clone().expect("svid");
        assert_ne!(authority_key_id(svid.chain[0].as_ref()), new_int.ski, "nothing is signed under the new root yet");
    }

    // Release: the held workload installs the new bundle and says so. The rotation proceeds.
    held.refuse_once.store(1, Ordering::SeqCst);
    held.sequence.store(new_seq, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let j = ca.journal().await.expect("journal");
        if state(&j, &new_root.id) == Some(IssuerState::Active) {
            assert_eq!(state(&j, &new_int.id), Some(IssuerState::Active));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the root did not activate after the held workload confirmed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = ca.cli(&["audit", "list", "--kind", "root.activate", "--format", "jsonl"]).expect("audit");
    assert!(audit.contains(&format!("fleet confirmed bundle {new_seq}: 3 of 3 live workloads")), "{audit}");
    let page = ca.metrics().await.expect("metrics");
    assert!(!page.lines().any(|l| l.starts_with("lanyard_rotation_gate_waiting{")), "{}", fleet_lines(&page));

    // Every workload renews under the new root while the load runs.
    for agent in [&a, &b, &h] {
        let mut rx = agent.seam().svid_updates();
        tokio::time::timeout(
            Duration::from_secs(60),
            rx.wait_for(|s| s.as_ref().is_some_and(|s| authority_key_id(s.chain[0].as_ref()) == new_int.ski)),
        )
        .await
        .expect("renewed under the new root")
        .expect("watch");
    }

    // The SLIs moved as defined (README "Rotation SLIs").
    let page = wait_for_metrics(&ca, "the root rotation converged", |p| {
        p.contains("lanyard_rotations_finished_total{step=\"root\",result=\"converged\"} 1")
    })
    .await;
    let sli = |name: &str| {
        page.lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(0.0))
            .sum::<f64>()
    };
    assert_eq!(metric(&page, "lanyard_rotation_steps_total{step=\"activate_root\",result=\"success\"}"), 1.0, "M1");
    assert_eq!(metric(&page, "lanyard_rotation_converge_seconds_count{kind=\"root\"}"), 1.0, "M2");
    assert!(metric(&page, "lanyard_rotation_converge_seconds_sum{kind=\"root\"}") >= 8.0, "M2 counts from the trigger");
    assert!(sli("lanyard_fleet_reported_fetches_total") >= 2.0, "M4: a and b reported their renewals");
    assert!(sli("lanyard_issuance_duration_seconds_count") >= 2.0, "M4: as the CA serves it");
    assert!(sli("lanyard_rotation_refused_handshakes_total{") >= 1.0, "M5");
    assert!(
        metric(&page, &format!("lanyard_certificates_valid_under_retired_issuer{{issuer=\"{}\"}}", old_int.id)) >= 1.0,
        "M6"
    );
    assert_eq!(metric(&page, "lanyard_audit_events{chain=\"outside\"}"), 0.0, "M8");
    assert!(metric(&page, "lanyard_audit_events{chain=\"in\"}") > audited_before, "M8");
    ca.cli(&["audit", "verify"]).expect("the audit chain verifies");
    println!("{}", page.lines().filter(|l| l.starts_with("lanyard_rotation")).collect::<Vec<_>>().join("\n"));

    // M3: an intermediate rotation that the held workload never follows (it keeps saying it
    // serves the previous intermediate) ends partial at converge_deadline (40 s).
    *held.frozen_serving.lock().expect("lock") = Some(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        h.seam().svid_updates().borrow().clone().expect("svid").chain[1].as_ref(),
    )));
    println!("{}", ca.cli(&["rotate", "intermediate"]).expect("rotate intermediate").trim());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let p = ca.metrics().await.expect("metrics");
        if p.contains("lanyard_rotations_finished_total{step=\"intermediate\",result=\"partial\"} 1") {
            assert!(p.contains("lanyard_fleet_workloads{state=\"live\"} 3"), "the held workload is live, not gone");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no partial intermediate rotation:\n{p}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    finished.store(true, Ordering::SeqCst);

    let rep = load.await.expect("load task").expect("mTLS loop");
    drop(held);
    println!("{} handshakes, {} failures through the gated root rotation", rep.handshakes, rep.failures.len());
    assert!(rep.handshakes > 50, "{}", rep.handshakes);
    assert!(rep.failures.is_empty(), "failed handshakes: {:?}", &rep.failures[..rep.failures.len().min(5)]);
}
