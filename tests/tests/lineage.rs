//! Renewal lineage end to end: the real `lanyard-ca`, renewals over the real mTLS endpoint, the
//! real `lanyard-ca revoke`, and the CRL as served at `/crl/<issuer id>.crl`. A renewed
//! certificate is superseded: a repeat inside the retry window replaces the previous successor
//! (the lost-response rule), a repeat after it is refused, and revoking the first certificate
//! revokes every certificate renewed from it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ca::{IssuerKind, IssuerState};
use tests::workload::{TD, WorkloadCa, leaf_serial};
use workload_agent::Svid;
use workload_agent::agent::ca_client::{CaClient, RenewError};
use workload_agent::agent::cert;
use workload_agent::agent::enroll::{self, Proof};
use workload_agent::agent::http;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// The lost-response retry window configured for the CA under test.
const WINDOW: Duration = Duration::from_secs(8);

fn svid(id: &str, chain: Vec<rustls::pki_types::CertificateDer<'static>>, key: Vec<u8>) -> Svid {
    let info = cert::leaf_info(chain[0].as_ref()).expect("leaf");
    Svid {
        spiffe_id: id.to_owned(),
        chain,
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        not_after: info.not_after,
        not_before: info.not_before,
    }
}

fn serial(s: &Svid) -> String {
    leaf_serial(s.chain[0].as_ref())
}

/// Renews `from` over mTLS; the new identity.
async fn renew(client: &CaClient, bundle: &workload_agent::TrustBundle, from: &Svid) -> Result<Svid, RenewError> {
    let (key, csr) = enroll::new_key_and_csr(&from.spiffe_id).expect("csr");
    let chain = client.renew(bundle, from, csr).await?;
    Ok(svid(&from.spiffe_id, chain, key))
}

fn refused(r: Result<Svid, RenewError>, want: &str) -> String {
    match r {
        Err(RenewError::Refused(msg)) => {
            assert!(msg.contains(want), "{msg:?} should mention {want:?}");
            msg
        }
        Err(e) => panic!("expected a refusal mentioning {want:?}, got {e}"),
        Ok(s) => panic!("expected a refusal mentioning {want:?}, got certificate {}", serial(&s)),
    }
}

/// Serials (hex) the CRL lists, parsed with x509-parser; also checks that `openssl crl` reads it
/// and lists the same serials.
fn crl_serials(der: &[u8], dir: &Path) -> Vec<String> {
    let (rest, crl) = CertificateRevocationList::from_der(der).expect("a DER CRL");
    assert!(rest.is_empty());
    let serials: Vec<String> = crl.iter_revoked_certificates().map(|e| hex::encode(e.raw_serial())).collect();
    let file = dir.join("lineage.crl");
    std::fs::write(&file, der).expect("write CRL");
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&file)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    for s in &serials {
        assert!(text.contains(&format!("serial number: {s}")), "openssl lists {s}:\n{text}");
    }
    serials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_superseded_and_revoked_with_their_lineage() {
    let ca = WorkloadCa::start_with(
        &format!("renewal_retry_window = \"{}s\"\ncrl_url = \"https://ca.lanyard.test/crl\"", WINDOW.as_secs()),
        "",
    )
    .expect("CA");
    let work = tempfile::tempdir().expect("tmp");
    let client = CaClient::new(&ca.url(), &ca.fingerprint().expect("fp"), TD, Duration::from_secs(10));
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let tls = http::tls_config(&bundle.roots, None).expect("tls");
    let id = format!("spiffe://{TD}/lineage");
    let token = ca.token(&id, &[]).expect("token");
    let (key, csr) = enroll::new_key_and_csr(&id).expect("csr");
    let pem = enroll::enroll(tls, &ca.url(), &id, &Proof::JoinToken(token), &csr, Duration::from_secs(10))
        .await
        .expect("enrollment");
    let a = svid(&id, cert::chain_from_pem(&pem).expect("chain"), key);

    // A -> B over mTLS; the answer is "lost", so the agent retries with A inside the window: a
    // new successor B2, and B (never received) is revoked as superseded.
    let t0 = Instant::now();
    let b = renew(&client, &bundle, &a).await.expect("A -> B");
    let b2 = renew(&client, &bundle, &a).await.expect("retry with A inside the window");
    assert!(t0.elapsed() < WINDOW, "the retry ran inside the window ({:?})", t0.elapsed());
    assert_ne!(serial(&b), serial(&b2));
    refused(renew(&client, &bundle, &b).await, "revoked");

    // After the window, A is refused, with a problem naming the live successor.
    tokio::time::sleep(WINDOW.saturating_sub(t0.elapsed()) + Duration::from_secs(1)).await;
    let count = ca.issued_count().await.expect("count");
    let asked = Instant::now();
    let msg = refused(renew(&client, &bundle, &a).await, "already renewed");
    let refused_in = asked.elapsed();
    assert!(msg.contains(&serial(&b2)), "{msg}");
    assert_eq!(ca.issued_count().await.expect("count"), count, "a refused repeat issues nothing");

    // B2 renews on: B2 -> C.
    let c = renew(&client, &bundle, &b2).await.expect("B2 -> C");

    // The operator revokes A: B2 and C go with it, B stays revoked as it was.
    let out = ca.cli(&["revoke", &serial(&a), "--reason", "1"]).expect("lanyard-ca revoke");
    assert!(out.contains(&format!("revoked {}", serial(&a))), "{out}");
    for s in [&b2, &c] {
        assert!(out.contains(&format!("revoked {} (renewed from {})", serial(s), serial(&a))), "{out}");
    }
    assert!(!out.contains(&format!("revoked {} ", serial(&b))), "B was already revoked: {out}");
    refused(renew(&client, &bundle, &c).await, "revoked");
    refused(renew(&client, &bundle, &b2).await, "revoked");

    // Every one of them is in its issuer's CRL, as served.
    let journal = ca.journal().await.expect("journal");
    let int = journal
        .iter()
        .find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active)
        .expect("active intermediate");
    let root_pem = std::fs::read_to_string(ca.dir.path().join("data/root.pem")).expect("root");
    let r = tests::https_get(ca.addr, "localhost", &format!("/crl/{}.crl", int.id), Some(&root_pem))
        .await
        .expect("GET CRL");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let listed = crl_serials(&r.body, work.path());
    for s in [&a, &b, &b2, &c] {
        assert!(listed.contains(&serial(s)), "{} in the CRL {listed:?}", serial(s));
    }
    println!(
        "lineage: repeat after the window refused in {refused_in:?}; revoking A revoked B2 and C; CRL lists {} serials",
        listed.len()
    );
}
