//! Root rotation as clients that keep the root they were given see it.
//!
//! ACME clients, cert-manager's `caBundle`, curl scripts and probes never refresh their trust
//! store. While the old root is in the trust bundle, every chain Lanyard serves must validate for
//! a client holding only the old root *and* for one holding only the new root: the server's own
//! TLS chain on every endpoint, ACME downloads, workload certificates. This test asks that of
//! clients we did not write (curl, `openssl s_client -x509_strict`, `openssl verify -x509_strict`)
//! and of rustls, before, during and after the overlap, until the old root leaves the bundle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ca::{IssuerKind, IssuerRecord, IssuerState};
use tests::workload::{TD, WorkloadCa};

/// Every CA endpoint a client without credentials fetches (the CRL of the active intermediate is
/// added per probe).
const ENDPOINTS: &[&str] = &[
    "/health",
    "/roots.pem",
    "/chain.pem",
    "/intermediates.pem",
    "/root-fingerprint",
    "/bundle.spiffe",
    "/acme/directory",
];

/// Where in the rotation the journal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// One root.
    Before,
    /// Both roots in the bundle, the old one signing.
    Overlap,
    /// The new root signing, the old one retired but trusted.
    After,
    /// The old root has left the bundle.
    OldRootGone,
}

fn phase(journal: &[IssuerRecord], old_root_id: &str) -> Phase {
    let roots: Vec<_> = journal.iter().filter(|r| r.kind == IssuerKind::Root).collect();
    let old = roots.iter().find(|r| r.id == old_root_id).expect("old root in the journal");
    match old.state {
        IssuerState::Expired => Phase::OldRootGone,
        IssuerState::Retired => Phase::After,
        _ if roots.len() > 1 => Phase::Overlap,
        _ => Phase::Before,
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `curl --cacert <root>` of one path; the error text on failure.
fn curl(port: u16, root: &Path, path: &str) -> Result<(), String> {
    let url = format!("https://127.0.0.1:{port}{path}");
    let (ok, out) = run(Command::new("curl")
        .args(["-sS", "--fail", "-o", "/dev/null", "--max-time", "10", "--cacert"])
        .arg(root)
        .arg(&url));
    if ok { Ok(()) } else { Err(format!("curl {path}: {}", out.trim())) }
}

/// `openssl s_client -x509_strict` with only `root`; the chain the server sent on success.
fn s_client(port: u16, root: &Path) -> Result<String, String> {
    let child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .args(["-verify_return_error", "-x509_strict", "-showcerts", "-CAfile"])
        .arg(root)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let out = String::from_utf8_lossy(&child.stdout).to_string();
    let err = String::from_utf8_lossy(&child.stderr).to_string();
    if child.status.success() && out.contains("Verify return code: 0 (ok)") {
        Ok(pem_blocks(&out).concat())
    } else {
        let reason = out.lines().find(|l| l.contains("Verify return code")).unwrap_or_default().to_owned();
        Err(format!("s_client: {reason} {}", err.lines().take(3).collect::<Vec<_>>().join(" ")))
    }
}

/// `openssl verify -x509_strict` of the first certificate of `chain` with the rest as untrusted.
fn verify_chain(dir: &Path, root: &Path, chain: &str, what: &str) -> Result<(), String> {
    let blocks = pem_blocks(chain);
    let leaf = dir.join("leaf.pem");
    let rest = dir.join("untrusted.pem");
    std::fs::write(&leaf, &blocks[0]).expect("write");
    std::fs::write(&rest, blocks[1..].concat()).expect("write");
    let (ok, out) = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(root)
        .arg("-untrusted")
        .arg(&rest)
        .arg(&leaf));
    if ok { Ok(()) } else { Err(format!("openssl verify {what}: {}", out.trim())) }
}

fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let end = rest[start..].find(end_marker).expect("PEM end") + start + end_marker.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// What one probe of the CA with one root found: failures by check.
async fn probe(ca: &WorkloadCa, root: &Path, crl_path: &str, scratch: &Path) -> Vec<String> {
    let port = ca.addr.port();
    let mut failures = Vec::new();
    for path in ENDPOINTS.iter().copied().chain([crl_path]) {
        if let Err(e) = curl(port, root, path) {
            failures.push(e);
        }
    }
    match s_client(port, root) {
        Ok(chain) => {
            if let Err(e) = verify_chain(scratch, root, &chain, "server chain") {
                failures.push(e);
            }
        }
        Err(e) => failures.push(e),
    }
    let root_pem = std::fs::read_to_string(root).expect("root");
    match tests::https_get(ca.addr, "localhost", "/chain.pem", Some(&root_pem)).await {
        Ok(r) if r.status == 200 => {}
        Ok(r) => failures.push(format!("rustls /chain.pem: status {}", r.status)),
        Err(e) => failures.push(format!("rustls: {e:#}")),
    }
    failures
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// One-minute intermediates, `rotate root` with a ten-second overlap: curl, `openssl s_client
/// -x509_strict` and a rustls client, each with only the old root and each with only the new
/// root, reach every endpoint in every phase until the old root leaves the bundle; ACME
/// downloads (default and alternate chains) and the served chains pass `openssl verify
/// -x509_strict` from both roots; every CA generation has its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_holding_either_root_alone_reach_the_ca_through_a_root_rotation() {
    let ca = WorkloadCa::start_with(
        "min_issuer_remaining = \"3s\"",
        "[init]\nintermediate_lifetime = \"60s\"\n[rotation]\ncheck_interval = \"1s\"\nroot_overlap = \"10s\"\n[policy.fleet]\nwarmup = \"1s\"\n",
    )
    .expect("CA");
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path();
    let data = ca.dir.path().join("data");
    let old_root_pem = std::fs::read_to_string(data.join("root.pem")).expect("root");
    let old_root = write(dir, "old-root.pem", &old_root_pem);
    let journal = ca.journal().await.expect("journal");
    let old_root_id = journal.iter().find(|r| r.kind == IssuerKind::Root).expect("root").id.clone();
    let crl_of_active = |j: &[IssuerRecord]| {
        let id =
            &j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("a").id;
        format!("/crl/{id}.crl")
    };

    // Before: the old root alone.
    let failures = probe(&ca, &old_root, &crl_of_active(&journal), dir).await;
    assert!(failures.is_empty(), "before the rotation: {failures:?}");

    let out = ca.cli(&["rotate", "root"]).expect("rotate root");
    let rotated_at = Instant::now();
    let new_root_id = out.split_whitespace().nth(1).expect("root id").to_owned();
    let new_root_pem = std::fs::read_to_string(data.join(format!("root-{new_root_id}.pem"))).expect("new root");
    let new_root = write(dir, "new-root.pem", &new_root_pem);

    // The server picks the cross certificate up within a few seconds; from then on both roots work.
    let propagation = loop {
        let j = ca.journal().await.expect("journal");
        if probe(&ca, &new_root, &crl_of_active(&j), dir).await.is_empty() {
            break rotated_at.elapsed();
        }
        assert!(rotated_at.elapsed() < Duration::from_secs(10), "the new root never reached the served chain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut probes: BTreeMap<Phase, (u32, Vec<String>)> = BTreeMap::new();
    let mut downloads: BTreeMap<Phase, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let gone_at = loop {
        let j = ca.journal().await.expect("journal");
        let now = phase(&j, &old_root_id);
        if now == Phase::OldRootGone {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "the old root never left the bundle (phase {now:?})");
        let crl = crl_of_active(&j);
        for (name, root) in [("old root", &old_root), ("new root", &new_root)] {
            let failed = probe(&ca, root, &crl, dir).await;
            let entry = probes.entry(now).or_default();
            entry.0 += 1;
            entry.1.extend(failed.into_iter().map(|f| format!("{name}: {f}")));
        }
        // Once per phase: an ACME download by a client that trusts only the old root (a workload
        // enrollment), every chain checked from both roots.
        if matches!(now, Phase::Overlap | Phase::After) && !downloads.contains_key(&now) {
            let id = format!("spiffe://{TD}/continuity-{}", downloads.len());
            let token = ca.token(&id, &[]).expect("token");
            let got = tests::acme::RawClient::new(ca.addr, &old_root_pem).enroll_with_token(&id, &token).await;
            let mut checked = 0;
            for root in [&old_root, &new_root] {
                let r = verify_chain(dir, root, &got.default_chain, "ACME default chain");
                assert!(r.is_ok(), "{now:?}: {r:?}");
                checked += 1;
            }
            assert_eq!(got.alternates.len(), 1, "{now:?}: one alternate chain while two roots are trusted");
            // The alternate stops at the signing intermediate's own root.
            let own = if now == Phase::Overlap { &old_root } else { &new_root };
            let r = verify_chain(dir, own, &got.alternates[0], "ACME alternate chain");
            assert!(r.is_ok(), "{now:?}: {r:?}");
            downloads.insert(now, checked + 1);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    for (p, (count, failures)) in &probes {
        println!(
            "{p:?}: {count} probes of {} endpoints + s_client + rustls, {} failures",
            ENDPOINTS.len() + 1,
            failures.len()
        );
    }
    println!(
        "new root served {:.1}s after `rotate root`; old root left the bundle {:.0}s after it; ACME chains verified: {downloads:?}",
        propagation.as_secs_f64(),
        (gone_at - rotated_at).as_secs_f64()
    );
    for p in [Phase::Overlap, Phase::After] {
        let (count, failures) = probes.get(&p).unwrap_or_else(|| panic!("no probe during {p:?}"));
        assert!(*count >= 2, "{p:?}: only {count} probes");
        assert!(failures.is_empty(), "{p:?}: {:?}", &failures[..failures.len().min(6)]);
        assert!(downloads.contains_key(&p), "no ACME download checked during {p:?}");
    }

    // Once the old root has left the bundle the chain drops the cross certificate: a client with
    // only the old root is then cut off (as it should be), one with the new root is not. This also
    // shows the probe above can fail.
    let cut_off = loop {
        let j = ca.journal().await.expect("journal");
        let crl = crl_of_active(&j);
        if !probe(&ca, &old_root, &crl, dir).await.is_empty() {
            break gone_at.elapsed();
        }
        assert!(
            gone_at.elapsed() < Duration::from_secs(10),
            "the served chain still leads to a root no longer trusted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let j = ca.journal().await.expect("journal");
    let failures = probe(&ca, &new_root, &crl_of_active(&j), dir).await;
    assert!(failures.is_empty(), "after the old root left: {failures:?}");
    println!("old-root-only clients cut off {:.1}s after the old root left the bundle", cut_off.as_secs_f64());

    // Every root and intermediate generation has a name of its own; a cross certificate has the
    // name and key of its twin.
    let j = ca.journal().await.expect("journal");
    for kind in [IssuerKind::Root, IssuerKind::Intermediate] {
        let names: Vec<_> = j.iter().filter(|r| r.kind == kind).map(|r| r.subject.clone()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{kind:?} names repeat: {names:?}");
        assert!(names.len() >= 2, "{kind:?}: {names:?}");
    }
    for root in j.iter().filter(|r| r.kind == IssuerKind::Root) {
        let twin = x509_parser::pem::parse_x509_pem(root.cert_pem.as_bytes()).expect("pem").1;
        let twin = twin.parse_x509().expect("root");
        let crosses = pem_blocks(root.cross_cert_pem.as_deref().expect("each root was cross-certified"));
        assert_eq!(crosses.len(), 1, "one cross certificate per root");
        let cross = x509_parser::pem::parse_x509_pem(crosses[0].as_bytes()).expect("pem").1;
        let cross = cross.parse_x509().expect("cross");
        assert_eq!(cross.subject().as_raw(), twin.subject().as_raw(), "same name as its twin");
        assert_eq!(cross.public_key().raw, twin.public_key().raw, "same key as its twin");
        assert_ne!(cross.issuer().as_raw(), twin.subject().as_raw(), "signed by the other root");
    }
}
