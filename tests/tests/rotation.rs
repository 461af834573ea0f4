//! Intermediate rotation: automatic rotation under an mTLS load with 0 failed handshakes, and a
//! manual rotation killed at every point of its steps without ever breaking the journal.

use std::process::Command;
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
    let agents = ca.enrolled_agents(&[&a_id, &b_id], 0.5).await.expect("agents");
    let (a, b) = (agents[0].clone(), agents[1].clone());

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
    assert!(a.metrics().renewals_failed.get() == 0, "no renewal failed across rotations");

    // Published trust material and metrics follow the journal.
    let ints = tests::https_get(ca.addr, "localhost", "/intermediates.pem", None).await.expect("intermediates");
    assert!(
        String::from_utf8_lossy(&ints.body).contains(active.cert_pem.trim()),
        "the active intermediate is published"
    );
    let m = ca.metrics().await.expect("metrics");
    let rotations: usize = m
        .lines()
        .find_map(|l| l.strip_prefix("lanyard_rotations_total{kind=\"intermediate\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rotation metric");
    assert!(rotations >= 3, "{m}");
    assert!(
        tests::process::metric(&m, "lanyard_rotation_steps_total{step=\"activate\",result=\"success\"}") >= 1.0,
        "{m}"
    );
    assert!(m.contains("lanyard_issuer_not_after_timestamp_seconds{"), "{m}");

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
        child.kill().ok();
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

    // The same for `rotate root`: killed at staggered moments, never two prepared or active roots;
    // a prepared root left behind is in the plan (activated after the overlap), never orphaned.
    let roots = |j: &[ca::IssuerRecord], st: IssuerState| {
        j.iter().filter(|r| r.kind == IssuerKind::Root && r.state == st).count()
    };
    for i in 0..8u64 {
        let mut child = Command::new(tests::bin("lanyard-ca"))
            .args(["--config", cfg.to_str().expect("path"), "rotate", "root"])
            .env("LANYARD_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        tokio::time::sleep(Duration::from_millis(i * 70 % 500)).await;
        child.kill().ok();
        child.wait().ok();
        let j = ca.journal().await.expect("journal");
        assert_eq!(roots(&j, IssuerState::Active), 1, "one active root after kill {i}");
        assert!(roots(&j, IssuerState::Prepared) <= 1, "at most one prepared root after kill {i}");
        assert_eq!(count(&j, IssuerState::Active), 1);
        assert!(count(&j, IssuerState::Prepared) <= 1);
    }
    let j = ca.journal().await.expect("journal");
    if let Some(p) = j.iter().find(|r| r.kind == IssuerKind::Root && r.state == IssuerState::Prepared) {
        let status = ca.cli(&["status"]).expect("status");
        assert!(status.contains(&format!("activate root {}", p.id)), "the prepared root is planned: {status}");
        assert!(ca.cli(&["rotate", "root"]).is_err(), "a second root rotation is refused while one is in progress");
    }
    let active =
        j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("a").clone();
    // With a prepared root left behind, the chain also carries the current root as certified by it.
    let cross = active.cross_chain(&j);
    assert_eq!(cross.len(), roots(&j, IssuerState::Prepared), "a cross certificate exactly while a root is prepared");
    let want = format!("{}{}", active.cert_pem, cross.concat());

    // The running server picks the new active intermediate up and serves it.
    let url = ca.addr;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = tests::https_get(url, "localhost", "/chain.pem", None).await.expect("chain");
        let pem = String::from_utf8_lossy(&r.body).to_string();
        if pem.trim() == want.trim() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server did not follow the rotation: {pem}");
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
        "[init]\nintermediate_lifetime = \"60s\"\n[rotation]\ncheck_interval = \"1s\"\nroot_overlap = \"8s\"\n[policy.fleet]\nwarmup = \"1s\"\n",
    )
    .expect("CA");
    let old_root = ca.fingerprint().expect("fp");
    let a_id = format!("spiffe://{TD}/svc-a");
    let b_id = format!("spiffe://{TD}/svc-b");
    let agents = ca.enrolled_agents(&[&a_id, &b_id], 0.5).await.expect("agents");
    let (a, b) = (agents[0].clone(), agents[1].clone());
    let first_sequence = a.seam().bundle_updates().borrow().as_ref().expect("bundle").sequence;

    // The root rotation starts once an intermediate rotation has happened.
    let cfg = ca.config();
    let db = ca.dir.path().join("data/lanyard.db");
    let rotate = tokio::spawn(async move {
        let store = ca::Store::open(&format!("sqlite://{}", db.display())).await.expect("store");
        loop {
            let j = store.issuers().await.expect("journal");
            if j.iter().filter(|r| r.kind == IssuerKind::Intermediate && r.state != IssuerState::Prepared).count() >= 3
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

/// Two replicas on one PostgreSQL database, both holding the root key: rotations happen once
/// (the lease), and both replicas serve the new intermediate promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_rotate_once_and_follow() {
    let Some(db) = tests::throwaway_postgres("lanyard_rotation").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = ("LANYARD_CA_PASSPHRASE", "replica rotation passphrase");
    let cfg = dir.path().join("replica.toml");
    std::fs::write(
        &cfg,
        format!(
            "database_url = \"{db}\"\nmetrics_listen = \"127.0.0.1:0\"\n[policy]\nmin_issuer_remaining = \"3s\"\n\
             [init]\nintermediate_lifetime = \"40s\"\n[rotation]\ncheck_interval = \"1s\"\n"
        ),
    )
    .expect("config");
    let data = |n: &str| dir.path().join(n);
    let (ok, _, err) = tests::run_ca(
        &["--config", cfg.to_str().expect("utf8"), "--data-dir", data("a").to_str().expect("utf8"), "init"],
        &[pass],
    )
    .expect("init");
    assert!(ok, "{err}");
    // The CA refuses a data directory others can enter; create_dir_all would make it 0755.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(data("b")).expect("mkdir");
    for f in ["root.pem", "root.key.pem"] {
        std::fs::copy(data("a").join(f), data("b").join(f)).expect("copy");
    }
    let start = |n: &str| {
        tests::start_ca(
            &["--config", cfg.to_str().expect("utf8"), "--data-dir", data(n).to_str().expect("utf8")],
            &[pass],
        )
        .expect("replica")
    };
    let (a, b) = (start("a"), start("b"));
    let store = ca::Store::open(&db).await.expect("store");

    // Wait for two rotations.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let journal = loop {
        let j = store.issuers().await.expect("journal");
        let seen = j.iter().filter(|r| r.kind == IssuerKind::Intermediate && r.state != IssuerState::Prepared).count();
        if seen >= 3 {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rotations: {j:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(count(&journal, IssuerState::Active), 1);

    // Each intermediate was prepared exactly once, by one replica or the other.
    let events = store.audit_events(10_000).await.expect("audit");
    let prepares = events.iter().filter(|e| e.action == "issuer.prepare").count();
    let made = journal.iter().filter(|r| r.kind == IssuerKind::Intermediate).count() - 1;
    assert_eq!(prepares, made, "one prepare per successor");

    // Both replicas serve the active intermediate within a few seconds of its activation.
    let active = |j: &[ca::IssuerRecord]| {
        j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("a").clone()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    'follow: loop {
        let now_active = active(&store.issuers().await.expect("journal"));
        let mut both = true;
        for r in [&a, &b] {
            let chain = tests::https_get(r.addr, "localhost", "/chain.pem", None).await.expect("chain");
            both &= String::from_utf8_lossy(&chain.body).trim() == now_active.cert_pem.trim();
        }
        if both {
            break 'follow;
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas did not converge on {}", now_active.id);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    store.close().await;
}

fn openssl_verify(root_pem: &str, untrusted_pem: &str, leaf_pem: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let w = |n: &str, s: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, s).expect("write");
        p
    };
    let (root, untrusted, leaf) = (w("root.pem", root_pem), w("untrusted.pem", untrusted_pem), w("leaf.pem", leaf_pem));
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&leaf)
        .output()
        .expect("openssl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

fn pem_blocks(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----\n").filter(|b| b.contains("BEGIN")).map(str::to_owned).collect()
}

/// After `rotate root` with a root made by OpenSSL: ACME downloads carry a default chain through
/// the new root as certified by the old one, which `openssl verify -x509_strict` accepts from
/// either root alone, and a `Link: rel="alternate"` chain that stops at the new root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_signed_chains_verify_from_either_root() {
    let ca = WorkloadCa::start_with(
        "",
        "[rotation]\ncheck_interval = \"1s\"\nroot_overlap = \"1s\"\n[policy.fleet]\nwarmup = \"1s\"\n",
    )
    .expect("CA");
    let data = ca.dir.path().join("data");
    let old_root = std::fs::read_to_string(data.join("root.pem")).expect("root");
    // The new root is made by OpenSSL and imported, as a separate team's offline root would be.
    let (key, cert) = (ca.dir.path().join("new-root.key"), ca.dir.path().join("new-root.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "3650"])
        .args(["-subj", "/O=Lanyard test/CN=Imported Root", "-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let out = ca
        .cli(&[
            "rotate",
            "root",
            "--import-root",
            cert.to_str().expect("p"),
            "--import-root-key",
            key.to_str().expect("p"),
        ])
        .expect("rotate root");
    let new_id = out.split_whitespace().nth(1).expect("root id").to_owned();
    let new_root = std::fs::read_to_string(data.join(format!("root-{new_id}.pem"))).expect("new root");
    assert_eq!(
        tests::pem_fingerprint(&new_root).expect("fp"),
        tests::pem_fingerprint(&std::fs::read_to_string(&cert).expect("cert")).expect("fp"),
        "the imported root is the new root"
    );
    // Wait for the new root to take over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ca.journal().await.expect("j").iter().any(|r| r.id == new_id && r.state == IssuerState::Active) {
        assert!(tokio::time::Instant::now() < deadline, "the new root never became active");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // An ACME enrollment (join token) with the raw client, to see the Link headers. The client
    // trusts only the old root, as one configured before the rotation would.
    let id = format!("spiffe://{TD}/chains");
    let token = ca.token(&id, &[]).expect("token");
    let got = tests::acme::RawClient::new(ca.addr, &old_root).enroll_with_token(&id, &token).await;
    assert_eq!(got.alternates.len(), 1, "one alternate chain");
    let d = pem_blocks(&got.default_chain);
    let a = pem_blocks(&got.alternates[0]);
    assert_eq!(d[0], a[0], "same leaf");
    assert_eq!(d.len(), 3, "default chain: leaf, intermediate, new root certified by the old root");
    assert_eq!(a.len(), 2, "alternate chain: leaf, intermediate");
    for root in [&old_root, &new_root] {
        let (ok, msg) = openssl_verify(root, &d[1..].concat(), &d[0]);
        assert!(ok, "the default chain verifies from either root alone: {msg}");
    }
    let (ok, msg) = openssl_verify(&new_root, &a[1..].concat(), &a[0]);
    assert!(ok, "alternate chain with the new root: {msg}");
    let (ok, _) = openssl_verify(&old_root, &a[1..].concat(), &a[0]);
    assert!(!ok, "the alternate chain stops at the new root");
    // The cross certificate is the imported root's name and key (so its subject is OpenSSL's
    // encoding re-written by us: verification above proves the names still match).
    let cross = x509_parser::pem::parse_x509_pem(d[2].as_bytes()).expect("pem").1;
    let cross = cross.parse_x509().expect("cross");
    let imported = x509_parser::pem::parse_x509_pem(new_root.as_bytes()).expect("pem").1;
    let imported = imported.parse_x509().expect("root");
    assert_eq!(cross.public_key().raw, imported.public_key().raw, "same key as the imported root");
    assert_eq!(cross.subject().to_string(), imported.subject().to_string(), "same name as the imported root");
}

fn crl_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n", lines.join("\n"))
}

/// An emergency rotation revokes the suspect intermediate for real: the root's CRL lists it
/// (keyCompromise), so `openssl verify -crl_check_all` rejects a leaf under it and accepts one
/// under the new intermediate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_revokes_the_intermediate_in_the_root_crl() {
    let ca = WorkloadCa::start_with("", "[rotation]\ncheck_interval = \"1s\"\n").expect("CA");
    let root_pem = std::fs::read_to_string(ca.dir.path().join("data/root.pem")).expect("root");
    let client = workload_agent::agent::ca_client::CaClient::new(
        &ca.url(),
        &ca.fingerprint().expect("fp"),
        TD,
        Duration::from_secs(10),
    );
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let enroll = |name: &'static str| {
        let tls = workload_agent::agent::http::tls_config(&bundle.roots, None).expect("tls");
        let ca = &ca;
        async move {
            let id = format!("spiffe://{TD}/{name}");
            let token = ca.token(&id, &[]).expect("token");
            let (_, csr) = workload_agent::agent::enroll::new_key_and_csr(&id).expect("csr");
            let pem = workload_agent::agent::enroll::enroll(
                tls,
                &ca.url(),
                &id,
                &workload_agent::agent::enroll::Proof::JoinToken(token),
                &csr,
                Duration::from_secs(10),
            )
            .await
            .expect("enroll");
            pem_blocks(&String::from_utf8(pem).expect("utf8"))
        }
    };
    let before = enroll("before").await;
    let out = ca.cli(&["rotate", "intermediate", "--emergency", "--window", "5s", "--revoke-now"]).expect("emergency");
    assert!(out.contains("is revoked"), "{out}");
    let j = ca.journal().await.expect("journal");
    let root = j.iter().find(|r| r.kind == IssuerKind::Root && r.state == IssuerState::Active).expect("root");
    let crl = |id: String| async move {
        let r = tests::https_get(ca.addr, "localhost", &format!("/crl/{id}.crl"), None).await.expect("crl");
        assert_eq!(r.status, 200, "CRL of {id}");
        crl_pem(&r.body)
    };
    let old = j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Retired).expect("old");
    let root_crl = crl(root.id.clone()).await;
    let (ok, msg) = openssl_verify_crls(
        &root_pem,
        &before[1..].concat(),
        &before[0],
        &(root_crl.clone() + &crl(old.id.clone()).await),
    );
    assert!(!ok && msg.contains("revoked"), "a leaf under the revoked intermediate: {msg}");

    // Certificates from the new intermediate pass the same full-chain check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = enroll("after").await;
    let new = j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("new");
    assert_eq!(authority_key_id_of_pem(&after[0]), new.ski);
    let (ok, msg) =
        openssl_verify_crls(&root_pem, &after[1..].concat(), &after[0], &(root_crl + &crl(new.id.clone()).await));
    assert!(ok, "a leaf under the new intermediate: {msg}");
}

fn authority_key_id_of_pem(pem: &str) -> String {
    let der = workload_agent::agent::cert::chain_from_pem(pem.as_bytes()).expect("pem");
    authority_key_id(der[0].as_ref())
}

fn openssl_verify_crls(root_pem: &str, untrusted_pem: &str, leaf_pem: &str, crls: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let w = |n: &str, s: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, s).expect("write");
        p
    };
    let (root, untrusted, leaf, crl) =
        (w("root.pem", root_pem), w("untrusted.pem", untrusted_pem), w("leaf.pem", leaf_pem), w("crls.pem", crls));
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-crl_check_all", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg("-CRLfile")
        .arg(&crl)
        .arg(&leaf)
        .output()
        .expect("openssl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}
