//! Intermediate rotation: automatic rotation under an mTLS load with 0 failed handshakes, and a
//! manual rotation killed at every point of its steps without ever breaking the journal.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ca::{IssuerKind, IssuerState};
use tests::workload::{TD, WorkloadCa, authority_key_id, mtls_loop};

fn count(j: &[ca::IssuerRecord], state: IssuerState) -> usize {
    j.iter().filter(|r| r.kind == IssuerKind::Intermediate && r.state == state).count()
}

/// One-minute intermediates rotated automatically (prepare at half life, activate with a sixth
/// left, expire after the last leaf) while two services keep an mTLS request loop running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_intermediate_rotation_under_mtls_load() {
    let ca = WorkloadCa::start_with(
        "min_issuer_remaining = \"3s\"",
        "[init]\nintermediate_lifetime = \"60s\"\n[rotation]\ncheck_interval = \"1s\"\n",
    )
    .expect("CA");
    let a_id = format!("spiffe://{TD}/svc-a");
    let b_id = format!("spiffe://{TD}/svc-b");
    let mk = |id: &str| {
        let cfg = ca.agent_config(id, &ca.token(id, &[]).expect("token"), 0.5).expect("cfg");
        workload_agent::Agent::new(cfg).expect("agent")
    };
    let (a, b) = (mk(&a_id), mk(&b_id));
    for agent in [a.clone(), b.clone()] {
        tokio::spawn(async move { agent.run(std::future::pending()).await });
    }
    for agent in [&a, &b] {
        let mut rx = agent.seam().svid_updates();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some()))
            .await
            .expect("enrolled")
            .expect("w");
    }

    // Until four intermediates have been active (three rotations) and one retired has expired.
    let journal = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let j2 = journal.clone();
    let dir = ca.dir.path().join("data/lanyard.db");
    let poller = tokio::spawn(async move {
        let store = ca::Store::open(&format!("sqlite://{}", dir.display())).await.expect("store");
        loop {
            if let Ok(j) = store.issuers().await {
                *j2.lock().expect("lock") = j;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let done = || {
        let j = journal.lock().expect("lock");
        let seen = j.iter().filter(|r| r.kind == IssuerKind::Intermediate && r.state != IssuerState::Prepared).count();
        seen >= 4 && count(&j, IssuerState::Expired) >= 1
    };
    let rep = mtls_loop(&a, &b, &a_id, &b_id, Duration::from_secs(200), done).await.expect("mTLS loop");
    poller.abort();
    println!(
        "{} handshakes, {} failures, {} server / {} client certificates across the rotations",
        rep.handshakes,
        rep.failures.len(),
        rep.server_serials.len(),
        rep.client_serials.len()
    );
    assert!(rep.failures.is_empty(), "failed handshakes: {:?}", &rep.failures[..rep.failures.len().min(5)]);
    assert!(rep.handshakes >= 200);

    // The journal never had two active intermediates (the database refuses it) and ended sane.
    let j = ca.journal().await.expect("journal");
    assert_eq!(count(&j, IssuerState::Active), 1);
    assert!(count(&j, IssuerState::Prepared) <= 1);
    let active = j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("a");

    // Every agent converges on the newest issuer.
    for agent in [&a, &b] {
        let mut rx = agent.seam().svid_updates();
        let want = active.ski.clone();
        tokio::time::timeout(
            Duration::from_secs(60),
            rx.wait_for(|s| s.as_ref().is_some_and(|s| authority_key_id(s.chain[0].as_ref()) == want)),
        )
        .await
        .expect("the agent renewed under the new intermediate")
        .expect("watch");
    }
    assert!(a.metrics().renewals_failed.load(Ordering::Relaxed) == 0, "no renewal failed across rotations");

    // Each rotation is in the audit log with its id.
    let status = ca.cli(&["status"]).expect("status");
    assert!(status.contains("rotation (automatic)"), "{status}");
    assert!(status.contains("activate") || status.contains("prepare"), "{status}");
}

/// `lanyard-ca rotate intermediate` killed (SIGKILL) at staggered moments, again and again: the
/// journal never has two active or two prepared intermediates, a prepared one left behind is used
/// by the next run instead of being orphaned, and the running server follows the final rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_manual_rotations_resume_cleanly() {
    let ca = WorkloadCa::start_with("", "[rotation]\nenabled = false\ncheck_interval = \"1s\"\n").expect("CA");
    let cfg = ca.config();
    let mut interrupted = 0;
    for i in 0..14u64 {
        let mut child = Command::new(tests::bin("lanyard-ca"))
            .args(["--config", cfg.to_str().expect("path"), "rotate", "intermediate"])
            .env("LANYARD_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        // Staggered kill points from "before it opened the database" to "after it finished".
        tokio::time::sleep(Duration::from_millis(i * 45 % 600)).await;
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if !status.success() {
            interrupted += 1;
        }
        let j = ca.journal().await.expect("journal");
        assert_eq!(count(&j, IssuerState::Active), 1, "exactly one active intermediate after kill {i}");
        assert!(count(&j, IssuerState::Prepared) <= 1, "at most one prepared intermediate after kill {i}");
    }
    assert!(interrupted > 0, "some runs were interrupted");

    // A complete run: any prepared successor left by a killed run is the one activated.
    let before = ca.journal().await.expect("journal");
    let leftover = before.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Prepared);
    let out = ca.cli(&["rotate", "intermediate"]).expect("rotate");
    let j = ca.journal().await.expect("journal");
    let active = j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("a");
    if let Some(p) = leftover {
        assert_eq!(p.id, active.id, "the prepared successor was used, not orphaned: {out}");
    }
    assert_eq!(count(&j, IssuerState::Prepared), 0);
    assert!(j.iter().all(|r| r.state != IssuerState::Prepared));

    // The running server picks the new active intermediate up and serves it.
    let url = ca.addr;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = tests::https_get(url, "localhost", "/chain.pem", None).await.expect("chain");
        let pem = String::from_utf8_lossy(&r.body).to_string();
        if pem.trim() == active.cert_pem.trim() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server did not follow the rotation");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // And issues under it.
    let id = format!("spiffe://{TD}/after-rotation");
    let cfg = ca.agent_config(&id, &ca.token(&id, &[]).expect("token"), 0.5).expect("cfg");
    let agent = workload_agent::Agent::new(cfg).expect("agent");
    let runner = agent.clone();
    tokio::spawn(async move { runner.run(std::future::pending()).await });
    let mut rx = agent.seam().svid_updates();
    let svid = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some()))
        .await
        .expect("enrolled")
        .expect("w")
        .clone()
        .expect("svid");
    assert_eq!(authority_key_id(svid.chain[0].as_ref()), active.ski);
}

/// Intermediates rotating every half minute, then `lanyard-ca rotate root`: both roots in the
/// bundle for the overlap, the new intermediate cross-signed, the new root taking over, the old
/// root leaving the bundle once nothing it anchors is valid; two services keep doing mTLS
/// throughout with 0 failed handshakes, and both agents converge on the new root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_mtls_load() {
    let ca = WorkloadCa::start_with(
        "min_issuer_remaining = \"3s\"",
        "[init]\nintermediate_lifetime = \"60s\"\n[rotation]\ncheck_interval = \"1s\"\nroot_overlap = \"8s\"\n",
    )
    .expect("CA");
    let old_root = ca.fingerprint().expect("fp");
    let a_id = format!("spiffe://{TD}/svc-a");
    let b_id = format!("spiffe://{TD}/svc-b");
    let mk = |id: &str| {
        let cfg = ca.agent_config(id, &ca.token(id, &[]).expect("token"), 0.5).expect("cfg");
        workload_agent::Agent::new(cfg).expect("agent")
    };
    let (a, b) = (mk(&a_id), mk(&b_id));
    for agent in [a.clone(), b.clone()] {
        tokio::spawn(async move { agent.run(std::future::pending()).await });
    }
    for agent in [&a, &b] {
        let mut rx = agent.seam().svid_updates();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some()))
            .await
            .expect("enrolled")
            .expect("w");
    }
    let first_sequence = a.seam().bundle_updates().borrow().as_ref().expect("bundle").sequence;

    // The root rotation starts once an intermediate rotation has happened.
    let cfg = ca.config();
    let db = ca.dir.path().join("data/lanyard.db");
    let rotate = tokio::spawn(async move {
        let store = ca::Store::open(&format!("sqlite://{}", db.display())).await.expect("store");
        loop {
            let j = store.issuers().await.expect("journal");
            if j.iter().filter(|r| r.kind == IssuerKind::Intermediate && r.state != IssuerState::Prepared).count() >= 2
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let out = tokio::task::spawn_blocking(move || {
            Command::new(tests::bin("lanyard-ca"))
                .args(["--config", cfg.to_str().expect("path"), "rotate", "root"])
                .env("LANYARD_LOG", "warn")
                .output()
                .expect("rotate root")
        })
        .await
        .expect("join");
        assert!(out.status.success(), "rotate root: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    });

    let only_new_root = |agent: &workload_agent::Agent| {
        agent
            .seam()
            .bundle_updates()
            .borrow()
            .as_ref()
            .is_some_and(|b| b.roots.len() == 1 && ca::sha256_fingerprint(b.roots[0].as_ref()) != old_root)
    };
    let rep = mtls_loop(&a, &b, &a_id, &b_id, Duration::from_secs(240), || {
        rotate.is_finished() && only_new_root(&a) && only_new_root(&b)
    })
    .await
    .expect("mTLS loop through the root rotation");
    let out = rotate.await.expect("rotation task");
    println!(
        "{} handshakes, {} failures across the root rotation ({} server / {} client certificates); {}",
        rep.handshakes,
        rep.failures.len(),
        rep.server_serials.len(),
        rep.client_serials.len(),
        out.trim()
    );
    assert!(rep.failures.is_empty(), "failed handshakes: {:?}", &rep.failures[..rep.failures.len().min(5)]);

    // The journal: the new root active, the old one expired, one active intermediate under the new root.
    let j = ca.journal().await.expect("journal");
    let roots: Vec<_> = j.iter().filter(|r| r.kind == IssuerKind::Root).collect();
    assert_eq!(roots.len(), 2);
    let new_root = roots.iter().find(|r| r.state == IssuerState::Active).expect("active root");
    assert!(roots.iter().any(|r| r.state == IssuerState::Expired && r.fingerprint == old_root));
    let active = j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("a");
    assert_eq!(active.parent_id.as_deref(), Some(new_root.id.as_str()));

    // Bundle sequence went up at least twice (new root in, old root out), and both agents hold
    // certificates chaining to the new root.
    for agent in [&a, &b] {
        let seq = agent.seam().bundle_updates().borrow().as_ref().expect("bundle").sequence;
        assert!(seq >= first_sequence + 2, "bundle sequence {first_sequence} -> {seq}");
        let svid = agent.seam().svid_updates().borrow().clone().expect("svid");
        let issuer_ski = authority_key_id(svid.chain[0].as_ref());
        let issuer = j.iter().find(|r| r.ski == issuer_ski).expect("issuer of the current SVID");
        assert_eq!(issuer.parent_id.as_deref(), Some(new_root.id.as_str()));
    }
}
