//! CRLs from the CA core against real stores (SQLite and PostgreSQL): numbers that only increase,
//! reissue on revocation, one CRL shared by replicas, retired intermediates signing their own CRL
//! with the passphrase, and no CRL for roots, unknown or expired issuers.

mod common;

use ca::{Authority, CaError, IssueRequest, IssuerState, Policy, Profile};
use common::*;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

fn policy() -> Policy {
    let mut p = Policy::default();
    p.trust_domain = "example.org".into();
    p.crl_url = Some("https://ca.example.org:8443/crl".into());
    p
}

async fn issue(auth: &Authority, n: u32) -> String {
    let csr = csr(&p256(), &[San::Uri(&format!("spiffe://example.org/w{n}"))], None);
    let req =
        IssueRequest { csr: &csr, profile: Profile::Workload, requester: "test", lifetime: None, authorized: None };
    auth.issue(req).await.expect("issue").serial.to_hex()
}

/// (serial hex, reason) of each entry, and the CRL number; checks the signature with `cert_pem`.
fn read(der: &[u8], cert_pem: &str) -> (u64, Vec<(String, Option<u8>)>) {
    let (_, crl) = CertificateRevocationList::from_der(der).expect("parse CRL");
    let cert_der = <rustls::pki_types::CertificateDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(
        cert_pem.as_bytes(),
    )
    .expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("cert");
    crl.verify_signature(cert.public_key()).expect("signed by the issuer");
    assert_eq!(crl.issuer(), cert.subject());
    let number = crl.crl_number().expect("CRL number").to_string().parse().expect("u64");
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| (hex::encode(r.raw_serial()), r.reason_code().map(|(_, c)| c.0)))
        .collect();
    (number, entries)
}

#[tokio::test]
async fn crls_follow_revocations_replicas_and_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, material) = authority(&url, policy()).await;
        let store = auth.store().clone();
        let int = material.intermediate.clone();
        let serials = [issue(&auth, 1).await, issue(&auth, 2).await, issue(&auth, 3).await];

        // Empty at first; asked again, the same CRL.
        let first = auth.crl(&int.id).await.expect("crl").expect("has a CRL");
        assert_eq!(read(&first.der, &int.cert_pem), (1, vec![]));
        assert_eq!(first.next_update - first.this_update, time::Duration::hours(1));
        assert_eq!(auth.crl(&int.id).await.expect("crl").expect("crl"), first);

        // A revocation (made behind the authority's back, as `lanyard-ca revoke` does) shows at once.
        let now = time::OffsetDateTime::now_utc();
        assert!(store.revoke_certificate(&serials[0], 1, now).await.expect("revoke"));
        let second = auth.crl(&int.id).await.expect("crl").expect("crl");
        assert_eq!(read(&second.der, &int.cert_pem), (2, vec![(serials[0].clone(), Some(1))]));
        // Reason 0 (unspecified) is left out of the entry.
        assert!(store.revoke_certificate(&serials[1], 0, now).await.expect("revoke"));
        let third = auth.crl(&int.id).await.expect("crl").expect("crl");
        let (n, mut entries) = read(&third.der, &int.cert_pem);
        entries.sort();
        let mut want = vec![(serials[0].clone(), Some(1)), (serials[1].clone(), None)];
        want.sort();
        assert_eq!((n, entries), (3, want));

        // A second replica on the same database serves the very same CRL, and so does a restart.
        let replica = Authority::load(store.clone(), policy(), &pass()).await.expect("replica");
        assert_eq!(replica.crl(&int.id).await.expect("crl").expect("crl").der, third.der);

        // Roots and unknown issuers have none.
        assert_eq!(auth.crl(&material.root.id).await.expect("root"), None);
        assert_eq!(auth.crl("0123456789abcdef").await.expect("unknown"), None);

        // Rotate: the retired intermediate's CRL is signed with its own key, which needs the
        // passphrase once anything changes; the new one has its own CRL from number 1.
        let key_file = dir.path().join(format!("root-{}.key.pem", &int.id));
        std::fs::write(&key_file, material.root_key_pem_enc.as_deref().expect("root key")).expect("write");
        let keys = ca::rotation::RotationKeys { pass: pass(), root_key_path: key_file, init: Default::default() };
        let (new_id, retired_id) = ca::rotation::rotate_intermediate_now(&store, &keys).await.expect("rotate");
        assert_eq!(retired_id, int.id);
        assert!(auth.refresh_active(&pass()).await.expect("refresh"));
        let journal = store.issuers().await.expect("journal");
        let new = journal.iter().find(|r| r.id == new_id).expect("new").clone();
        assert_eq!(auth.crl(&int.id).await.expect("crl").expect("crl").der, third.der, "unchanged: cached");
        assert!(store.revoke_certificate(&serials[2], 4, now).await.expect("revoke"));
        assert!(matches!(auth.crl(&int.id).await, Err(CaError::MissingPassphrase { .. })));
        auth.set_passphrase(pass());
        let retired = auth.crl(&int.id).await.expect("crl").expect("crl");
        let (n, entries) = read(&retired.der, &int.cert_pem);
        assert_eq!((n, entries.len()), (4, 3));
        let fresh = auth.crl(&new.id).await.expect("crl").expect("crl");
        assert_eq!(read(&fresh.der, &new.cert_pem), (1, vec![]));
        assert_eq!(auth.refresh_crls().await.expect("refresh"), 2);

        // Expired: no CRL any more.
        let ev = ca::AuditEvent::now("test", "issuer.expire", &int.id, ca::Outcome::Success, "test");
        let at = time::OffsetDateTime::now_utc();
        assert!(
            store.transition_issuer(&int.id, IssuerState::Retired, IssuerState::Expired, at, &ev).await.expect("t")
        );
        assert_eq!(auth.crl(&int.id).await.expect("expired"), None);
        assert_eq!(auth.refresh_crls().await.expect("refresh"), 1);
        store.close().await;
    }
}

/// Two replicas on one database, asked concurrently after each revocation: every CRL they hand
/// out lists every revocation made before the question, and one number always means one CRL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_replicas_never_reuse_a_number_or_drop_a_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (a, material) = authority(&url, policy()).await;
        let store = a.store().clone();
        let b = Authority::load(store.clone(), policy(), &pass()).await.expect("replica");
        let mut serials = Vec::new();
        for n in 0..6 {
            serials.push(issue(&a, n).await);
        }
        let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
        let mut seen = std::collections::BTreeMap::<u64, Vec<u8>>::new();
        let mut last = 0;
        for (round, serial) in serials.iter().enumerate() {
            assert!(store.revoke_certificate(serial, 1, time::OffsetDateTime::now_utc()).await.expect("revoke"));
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let auth = if i % 2 == 0 { a.clone() } else { b.clone() };
                    let id = material.intermediate.id.clone();
                    tokio::spawn(async move { auth.crl(&id).await.expect("crl").expect("has one") })
                })
                .collect();
            for t in tasks {
                let crl = t.await.expect("task");
                let (number, entries) = read(&crl.der, &material.intermediate.cert_pem);
                assert_eq!(entries.len(), round + 1, "CRL {number} after {} revocations", round + 1);
                assert!(number > last, "a new revoked set, a new number");
                assert_eq!(seen.entry(number).or_insert_with(|| crl.der.clone()), &crl.der, "number {number}");
            }
            last = *seen.keys().next_back().expect("some");
        }
        store.close().await;
    }
}
