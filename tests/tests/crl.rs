//! CRLs end to end: the real `lanyard-ca` serving one CRL per intermediate at the distribution
//! point its leaves name, `openssl verify -crl_check` accepting a leaf until `lanyard-ca revoke`
//! and refusing it after, and, across a manual intermediate rotation, the retired intermediate
//! still serving a CRL signed with its own key next to the new one's.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ca::{IssuerKind, IssuerState};
use rustls::pki_types::CertificateDer;
use tests::workload::{TD, WorkloadCa, authority_key_id, leaf_serial};
use workload_agent::agent::ca_client::CaClient;
use workload_agent::agent::enroll::{self, Proof};
use workload_agent::agent::http;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// The base URL put in the config; the port is unknown before start, so only the path is fetched.
const CRL_BASE: &str = "https://ca.lanyard.test/crl";

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
}

/// Runs openssl in `dir`: (success, stdout + stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (apt-get install openssl)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Enrolls `name` with a join token; the chain (leaf, intermediate).
async fn enroll(ca: &WorkloadCa, tls: Arc<rustls::ClientConfig>, name: &str) -> Vec<CertificateDer<'static>> {
    let id = format!("spiffe://{TD}/{name}");
    let token = ca.token(&id, &[]).expect("token");
    let (_, csr) = enroll::new_key_and_csr(&id).expect("csr");
    let pem = enroll::enroll(tls, &ca.url(), &id, &Proof::JoinToken(token), &csr, Duration::from_secs(10))
        .await
        .expect("enrollment");
    let chain = workload_agent::agent::cert::chain_from_pem(&pem).expect("chain");
    assert!(chain.len() >= 2, "leaf and intermediate (and a cross-signed copy during a root rotation)");
    chain
}

/// The URIs of a certificate's CRL distribution points.
fn crl_distribution_points(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    let mut out = Vec::new();
    for e in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(dps) = e.parsed_extension() {
            for dp in dps.iter() {
                if let Some(DistributionPointName::FullName(names)) = &dp.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n {
                            out.push((*u).to_owned());
                        }
                    }
                }
            }
        }
    }
    out
}

/// A fetched CRL: number, (serial, reason) entries; written as `<name>.pem` into `dir`.
struct Fetched {
    number: u64,
    entries: Vec<(String, Option<u8>)>,
    file: String,
}

async fn fetch_crl(ca: &WorkloadCa, root_pem: &str, issuer_id: &str, dir: &Path, name: &str) -> Fetched {
    let r =
        tests::https_get(ca.addr, "localhost", &format!("/crl/{issuer_id}.crl"), Some(root_pem)).await.expect("GET");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type, "application/pkix-crl");
    let (rest, crl) = CertificateRevocationList::from_der(&r.body).expect("a DER CRL");
    assert!(rest.is_empty());
    assert_eq!(crl.version().map(|v| v.0), Some(1), "v2 CRL");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(crl.last_update().timestamp() <= now + 1);
    assert!(crl.next_update().expect("nextUpdate").timestamp() > now);
    let number = crl.crl_number().expect("CRL number").to_string().parse().expect("number");
    let entries = crl
        .iter_revoked_certificates()
        .map(|e| (hex::encode(e.raw_serial()), e.reason_code().map(|(_, c)| c.0)))
        .collect();
    let file = format!("{name}.pem");
    std::fs::write(dir.join(&file), pem("X509 CRL", &r.body)).expect("write CRL");
    Fetched { number, entries, file }
}

/// `openssl verify -crl_check` of `leaf` against the root, the intermediate and the CRL.
fn verify(dir: &Path, crl: &str, intermediate: &str, leaf: &str) -> (bool, String) {
    verify_from(dir, "root.pem", crl, intermediate, leaf)
}

/// [`verify`] with the trust anchor `root`.
fn verify_from(dir: &Path, root: &str, crl: &str, intermediate: &str, leaf: &str) -> (bool, String) {
    openssl(
        dir,
        &["verify", "-x509_strict", "-crl_check", "-CRLfile", crl, "-CAfile", root, "-untrusted", intermediate, leaf],
    )
}

/// `openssl crl -verify` of the CRL with `issuer` as the only candidate signer.
fn crl_signed_by(dir: &Path, crl: &str, issuer: &str) -> bool {
    let (ok, out) = openssl(dir, &["crl", "-in", crl, "-noout", "-CAfile", issuer]);
    ok && out.contains("verify OK")
}

fn active_intermediate(j: &[ca::IssuerRecord]) -> ca::IssuerRecord {
    j.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("active").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_are_served_revoke_leaves_and_survive_rotation() {
    let mut ca = WorkloadCa::start_with(
        &format!("crl_url = \"{CRL_BASE}\""),
        "[rotation]\nenabled = false\ncheck_interval = \"1s\"\n",
    )
    .expect("CA");
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path();
    let root_pem = std::fs::read_to_string(ca.dir.path().join("data/root.pem")).expect("root");
    std::fs::write(dir.join("root.pem"), &root_pem).expect("root");
    let client = CaClient::new(&ca.url(), &ca.fingerprint().expect("fp"), TD, Duration::from_secs(10));
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let tls = http::tls_config(&bundle.roots, None).expect("tls");

    let journal = ca.journal().await.expect("journal");
    let old = active_intermediate(&journal);
    let root_id = journal.iter().find(|r| r.kind == IssuerKind::Root).expect("root").id.clone();
    std::fs::write(dir.join("old-int.pem"), &old.cert_pem).expect("write");

    // Two leaves under the first intermediate, naming its CRL.
    let a = enroll(&ca, tls.clone(), "crl-a").await;
    let b = enroll(&ca, tls.clone(), "crl-b").await;
    for (name, chain) in [("a", &a), ("b", &b)] {
        assert_eq!(crl_distribution_points(chain[0].as_ref()), vec![format!("{CRL_BASE}/{}.crl", old.id)]);
        assert_eq!(pem("CERTIFICATE", chain[1].as_ref()).trim(), old.cert_pem.trim());
        std::fs::write(dir.join(format!("{name}.pem")), pem("CERTIFICATE", chain[0].as_ref())).expect("write");
    }

    // Before revocation: an empty CRL, and openssl accepts the leaf with CRL checking on.
    let before = fetch_crl(&ca, &root_pem, &old.id, dir, "crl0").await;
    assert!(before.entries.is_empty(), "{:?}", before.entries);
    assert!(crl_signed_by(dir, &before.file, "old-int.pem"));
    let (ok, out) = verify(dir, &before.file, "old-int.pem", "a.pem");
    assert!(ok && out.contains("a.pem: OK"), "{out}");
    // Fetched again with nothing changed: the same CRL.
    assert_eq!(fetch_crl(&ca, &root_pem, &old.id, dir, "crl0b").await.number, before.number);

    // `lanyard-ca revoke` (another process, straight into the database): the next fetch lists it.
    let serial_a = leaf_serial(a[0].as_ref());
    let out = ca.cli(&["revoke", &serial_a, "--reason", "1"]).expect("revoke");
    assert!(out.contains("revoked"), "{out}");
    let after = fetch_crl(&ca, &root_pem, &old.id, dir, "crl1").await;
    assert!(after.number > before.number, "CRL number {} after {}", after.number, before.number);
    assert_eq!(after.entries, vec![(serial_a.clone(), Some(1))], "keyCompromise");
    assert!(crl_signed_by(dir, &after.file, "old-int.pem"));
    let (ok, out) = verify(dir, &after.file, "old-int.pem", "a.pem");
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify(dir, &after.file, "old-int.pem", "b.pem");
    assert!(ok, "the other leaf is still good: {out}");

    // A restarted server serves the stored CRL: same number, nothing lost, never a lower number.
    ca.stop();
    ca.restart().expect("restart");
    let restarted = fetch_crl(&ca, &root_pem, &old.id, dir, "crl1r").await;
    assert_eq!((restarted.number, &restarted.entries), (after.number, &after.entries));

    // No CRL for roots, unknown issuers or names that are no issuer id.
    for path in [format!("/crl/{root_id}.crl"), "/crl/0123456789abcdef.crl".into(), "/crl/../roots.pem".into()] {
        let r = tests::https_get(ca.addr, "localhost", &path, Some(&root_pem)).await.expect("GET");
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.content_type, "application/problem+json", "{path}");
    }

    // Rotate the intermediate by hand; the server follows within a second or so.
    let out = ca.cli(&["rotate", "intermediate"]).expect("rotate");
    let journal = ca.journal().await.expect("journal");
    let new = active_intermediate(&journal);
    assert_ne!(new.id, old.id, "{out}");
    let retired = journal.iter().find(|r| r.id == old.id).expect("old");
    assert_eq!(retired.state, IssuerState::Retired);
    std::fs::write(dir.join("new-int.pem"), &new.cert_pem).expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let c = loop {
        let c = enroll(&ca, tls.clone(), "crl-c").await;
        if authority_key_id(c[0].as_ref()) == new.ski {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server did not follow the rotation");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(crl_distribution_points(c[0].as_ref()), vec![format!("{CRL_BASE}/{}.crl", new.id)]);
    std::fs::write(dir.join("c.pem"), pem("CERTIFICATE", c[0].as_ref())).expect("write");

    // The retired intermediate's CRL is still served, and a revocation under it is signed by the
    // retired intermediate's own key (decrypted from the journal), not the new one's.
    let serial_b = leaf_serial(b[0].as_ref());
    ca.cli(&["revoke", &serial_b, "--reason", "4"]).expect("revoke");
    let old_crl = fetch_crl(&ca, &root_pem, &old.id, dir, "crl-old").await;
    assert!(old_crl.number > after.number);
    let mut entries = old_crl.entries.clone();
    entries.sort();
    let mut want = vec![(serial_a.clone(), Some(1)), (serial_b.clone(), Some(4))];
    want.sort();
    assert_eq!(entries, want);
    assert!(crl_signed_by(dir, &old_crl.file, "old-int.pem"), "signed by the retired intermediate");
    assert!(!crl_signed_by(dir, &old_crl.file, "new-int.pem"), "not by the new one");
    let (ok, out) = verify(dir, &old_crl.file, "old-int.pem", "b.pem");
    assert!(!ok && out.contains("certificate revoked"), "{out}");

    // The new intermediate has its own CRL, signed by it, under which its leaf verifies.
    let new_crl = fetch_crl(&ca, &root_pem, &new.id, dir, "crl-new").await;
    assert!(new_crl.entries.is_empty());
    assert!(crl_signed_by(dir, &new_crl.file, "new-int.pem"));
    assert!(!crl_signed_by(dir, &new_crl.file, "old-int.pem"));
    let (ok, out) = verify(dir, &new_crl.file, "new-int.pem", "c.pem");
    assert!(ok && out.contains("c.pem: OK"), "{out}");
    // A CRL for the wrong issuer does not vouch for a leaf.
    let (ok, _) = verify(dir, &old_crl.file, "new-int.pem", "c.pem");
    assert!(!ok, "the retired intermediate's CRL is not the new leaf's CRL");
}

/// Root rotation: the new intermediate is certified by the new root, and the new root by the old
/// one. The intermediate's one CRL verifies along both paths (`new-int -> new root` and
/// `new-int -> new root certified by the old root -> old root`), before and after a revocation, and
/// the old root's intermediate keeps serving its own CRL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_verify_along_old_and_new_root_chains() {
    let ca = WorkloadCa::start_with(
        &format!("crl_url = \"{CRL_BASE}\""),
        "[rotation]\ncheck_interval = \"1s\"\nroot_overlap = \"2s\"\n[policy.fleet]\nwarmup = \"1s\"\n",
    )
    .expect("CA");
    let work = tempfile::tempdir().expect("tmp");
    let dir = work.path();
    let old_root_pem = std::fs::read_to_string(ca.dir.path().join("data/root.pem")).expect("root");
    std::fs::write(dir.join("old-root.pem"), &old_root_pem).expect("root");
    let client = CaClient::new(&ca.url(), &ca.fingerprint().expect("fp"), TD, Duration::from_secs(10));
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let tls = http::tls_config(&bundle.roots, None).expect("tls");
    let old = active_intermediate(&ca.journal().await.expect("journal"));
    std::fs::write(dir.join("old-int.pem"), &old.cert_pem).expect("write");
    let a = enroll(&ca, tls.clone(), "root-a").await;
    std::fs::write(dir.join("a.pem"), pem("CERTIFICATE", a[0].as_ref())).expect("write");

    // Rotate the root; the running server activates the new pair after root_overlap.
    let out = ca.cli(&["rotate", "root"]).expect("rotate root");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (c, new) = loop {
        let journal = ca.journal().await.expect("journal");
        let new = active_intermediate(&journal);
        if new.id != old.id {
            let c = enroll(&ca, tls.clone(), "root-c").await;
            if authority_key_id(c[0].as_ref()) == new.ski {
                break (c, new);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the root rotation did not take over: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let journal = ca.journal().await.expect("journal");
    let new_root = journal.iter().find(|r| Some(&r.id) == new.parent_id.as_ref()).expect("new root");
    assert_eq!(new_root.kind, IssuerKind::Root);
    assert_ne!(new_root.cert_pem.trim(), old_root_pem.trim());
    let cross = new_root.cross_cert_pem.as_deref().expect("the new root certified by the old root");
    std::fs::write(dir.join("new-root.pem"), &new_root.cert_pem).expect("write");
    std::fs::write(dir.join("new-int.pem"), &new.cert_pem).expect("write");
    std::fs::write(dir.join("cross-chain.pem"), format!("{}{cross}", new.cert_pem)).expect("write");
    std::fs::write(dir.join("c.pem"), pem("CERTIFICATE", c[0].as_ref())).expect("write");
    assert_eq!(crl_distribution_points(c[0].as_ref()), vec![format!("{CRL_BASE}/{}.crl", new.id)]);

    // One CRL for the new intermediate, good along both chains.
    let first = fetch_crl(&ca, &old_root_pem, &new.id, dir, "new0").await;
    assert!(first.entries.is_empty());
    assert!(crl_signed_by(dir, &first.file, "new-int.pem"));
    for (root, int) in [("new-root.pem", "new-int.pem"), ("old-root.pem", "cross-chain.pem")] {
        let (ok, out) = verify_from(dir, root, &first.file, int, "c.pem");
        assert!(ok && out.contains("c.pem: OK"), "{root} / {int}: {out}");
    }

    // Revoked: refused along both chains.
    let serial_c = leaf_serial(c[0].as_ref());
    ca.cli(&["revoke", &serial_c, "--reason", "5"]).expect("revoke");
    let revoked = fetch_crl(&ca, &old_root_pem, &new.id, dir, "new1").await;
    assert!(revoked.number > first.number);
    assert_eq!(revoked.entries, vec![(serial_c, Some(5))]);
    for (root, int) in [("new-root.pem", "new-int.pem"), ("old-root.pem", "cross-chain.pem")] {
        let (ok, out) = verify_from(dir, root, &revoked.file, int, "c.pem");
        assert!(!ok && out.contains("certificate revoked"), "{root} / {int}: {out}");
    }

    // The old root's intermediate, retired, still serves its own CRL for its leaves.
    assert_eq!(journal.iter().find(|r| r.id == old.id).expect("old").state, IssuerState::Retired);
    let old_crl = fetch_crl(&ca, &old_root_pem, &old.id, dir, "old0").await;
    assert!(crl_signed_by(dir, &old_crl.file, "old-int.pem"));
    assert!(!crl_signed_by(dir, &old_crl.file, "new-int.pem"));
    let (ok, out) = verify_from(dir, "old-root.pem", &old_crl.file, "old-int.pem", "a.pem");
    assert!(ok && out.contains("a.pem: OK"), "{out}");
}
