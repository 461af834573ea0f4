//! Renewal lineage: a renewed workload certificate is superseded, renewing it again is refused
//! outside the lost-response retry window, a retry inside it replaces (revokes) the previous
//! successor, and revoking a certificate revokes everything renewed from it, in its issuer's CRL
//! too. On SQLite, and on PostgreSQL when the test command provides one.

mod common;

use std::time::Duration;

use ca::{Authority, CaError, IssueRequest, IssuedCertificate, Policy, Profile};
use common::*;
use x509_parser::prelude::FromDer;

const ID: &str = "spiffe://example.org/svc/lineage";

fn policy(window: Duration) -> Policy {
    let mut p = Policy::default();
    p.trust_domain = "example.org".into();
    p.renewal_retry_window = window;
    p
}

fn new_csr() -> Vec<u8> {
    csr(&p256(), &[San::Uri(ID)], None)
}

async fn enroll(auth: &Authority) -> IssuedCertificate {
    let c = new_csr();
    auth.issue(IssueRequest {
        csr: &c,
        profile: Profile::Workload,
        requester: "test",
        lifetime: None,
        authorized: None,
    })
    .await
    .expect("first certificate")
}

async fn renew(auth: &Authority, from: &IssuedCertificate) -> Result<IssuedCertificate, CaError> {
    auth.renew(&from.der, &new_csr()).await
}

fn superseded(r: Result<IssuedCertificate, CaError>) -> String {
    match r {
        Err(e @ CaError::Superseded { .. }) => e.to_string(),
        other => panic!("expected a superseded refusal, got {other:?}"),
    }
}

async fn revoked(auth: &Authority, c: &IssuedCertificate) -> Option<i32> {
    let rec = auth.store().certificate(&c.serial.to_hex()).await.expect("lookup").expect("recorded");
    let reason = auth
        .store()
        .revoked_certificates(&rec.issuer_id, time::OffsetDateTime::now_utc() - Duration::from_secs(3600))
        .await
        .expect("revoked list")
        .into_iter()
        .find(|r| r.serial == rec.serial)
        .map(|r| r.reason.unwrap_or(0));
    assert_eq!(reason.is_some(), rec.revoked_at.is_some());
    reason
}

/// Serials the issuer's signed CRL lists.
async fn crl_serials(auth: &Authority) -> Vec<String> {
    let issuer = auth.active_issuer().expect("active").record.id.clone();
    let crl = auth.crl(&issuer).await.expect("crl").expect("the active intermediate has a CRL");
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.der).expect("parse CRL");
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial().iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_superseded_and_refused_after_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        // No retry window: any second renewal of A is refused.
        let (auth, _) = authority(&url, policy(Duration::ZERO)).await;
        let a = enroll(&auth).await;
        let b = renew(&auth, &a).await.expect("A -> B");
        let rec_a = auth.store().certificate(&a.serial.to_hex()).await.expect("lookup").expect("A");
        assert_eq!(rec_a.superseded_by.as_deref(), Some(b.serial.to_hex().as_str()));
        assert!(rec_a.superseded_at.is_some());
        let rec_b = auth.store().certificate(&b.serial.to_hex()).await.expect("lookup").expect("B");
        assert_eq!(rec_b.renewed_from.as_deref(), Some(a.serial.to_hex().as_str()));
        assert_eq!(rec_b.superseded_by, None);

        let issued_before = auth.store().certificate_counts().await.expect("counts").1;
        let msg = superseded(renew(&auth, &a).await);
        assert!(msg.contains(&b.serial.to_hex()), "the refusal names the successor: {msg}");
        assert_eq!(auth.store().certificate_counts().await.expect("counts").1, issued_before, "nothing issued");
        assert_eq!(revoked(&auth, &b).await, None, "a refused repeat leaves the successor alone");
        let audit = auth.store().audit_events(20).await.expect("audit");
        assert!(
            audit.iter().any(|e| e.action == "certificate.renew" && e.target == a.serial.to_hex()),
            "the refused repeat is audited: {audit:?}"
        );

        // B renews on normally, and then B is superseded too.
        let c = renew(&auth, &b).await.expect("B -> C");
        superseded(renew(&auth, &b).await);
        renew(&auth, &c).await.expect("C -> D");
        auth.store().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_inside_the_window_replaces_the_previous_successor() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, _) = authority(&url, policy(Duration::from_secs(120))).await;
        let a = enroll(&auth).await;
        let b1 = renew(&auth, &a).await.expect("A -> B1");
        // The answer was lost: the agent retries with A.
        let b2 = renew(&auth, &a).await.expect("retry inside the window");
        assert_eq!(revoked(&auth, &b1).await, Some(4), "the previous successor is revoked as superseded");
        assert_eq!(revoked(&auth, &b2).await, None);
        let rec_a = auth.store().certificate(&a.serial.to_hex()).await.expect("lookup").expect("A");
        assert_eq!(rec_a.superseded_by.as_deref(), Some(b2.serial.to_hex().as_str()), "one live successor");
        let err = auth.renew(&b1.der, &new_csr()).await.expect_err("the replaced successor cannot renew");
        assert!(err.to_string().contains("revoked"), "{err}");
        assert!(crl_serials(&auth).await.contains(&b1.serial.to_hex()), "B1 is in the CRL");

        // Once the live successor was renewed itself, the first answer evidently arrived: a
        // repeat with A is refused even inside the window, and nothing is revoked.
        let c = renew(&auth, &b2).await.expect("B2 -> C");
        let msg = superseded(renew(&auth, &a).await);
        assert!(msg.contains("renewed itself"), "{msg}");
        assert_eq!(revoked(&auth, &b2).await, None);
        assert_eq!(revoked(&auth, &c).await, None);

        // A successor an operator revoked is not replaced by retrying its predecessor.
        let x = enroll(&auth).await;
        let y = renew(&auth, &x).await.expect("X -> Y");
        auth.store().revoke(&y.serial.to_hex(), 1, time::OffsetDateTime::now_utc(), "operator").await.expect("revoke");
        let msg = superseded(renew(&auth, &x).await);
        assert!(msg.contains("revoked"), "{msg}");

        // Racing retries of one certificate: whatever the interleaving, at most one successor of
        // P stays live, and it is the one P points at.
        let p = enroll(&auth).await;
        renew(&auth, &p).await.expect("P -> Q");
        let auth = std::sync::Arc::new(auth);
        let mut racing = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (auth, der) = (auth.clone(), p.der.clone());
            racing.spawn(async move { auth.renew(&der, &new_csr()).await });
        }
        let mut won = Vec::new();
        while let Some(r) = racing.join_next().await {
            match r.expect("task") {
                Ok(c) => won.push(c),
                Err(CaError::Superseded { .. }) => {}
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert!(!won.is_empty(), "at least one retry succeeds");
        let rec_p = auth.store().certificate(&p.serial.to_hex()).await.expect("lookup").expect("P");
        let mut live = Vec::new();
        for c in &won {
            if revoked(&auth, c).await.is_none() {
                live.push(c.serial.to_hex());
            }
        }
        assert_eq!(live.len(), 1, "exactly one live successor: {live:?}");
        assert_eq!(rec_p.superseded_by.as_deref(), Some(live[0].as_str()));
        auth.store().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_certificate_revokes_its_successors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, _) = authority(&url, policy(Duration::from_secs(120))).await;
        let a = enroll(&auth).await;
        let b = renew(&auth, &a).await.expect("A -> B");
        let c = renew(&auth, &b).await.expect("B -> C");
        let other = enroll(&auth).await;
        let _ = crl_serials(&auth).await; // a CRL exists before, so the revocation must change it

        // Revoked through a second store on the same database, as `lanyard-ca revoke` does.
        let second = ca::Store::open(&url).await.expect("second store");
        let done =
            second.revoke(&a.serial.to_hex(), 1, time::OffsetDateTime::now_utc(), "operator").await.expect("revoke");
        assert!(done.revoked);
        let mut got = done.successors.clone();
        got.sort();
        let mut want = vec![b.serial.to_hex(), c.serial.to_hex()];
        want.sort();
        assert_eq!(got, want, "B and C revoked with A");
        for cert in [&a, &b, &c] {
            assert_eq!(revoked(&auth, cert).await, Some(1), "same reason as the operator gave");
        }
        assert_eq!(revoked(&auth, &other).await, None, "an unrelated certificate is untouched");
        for cert in [&b, &c] {
            let err = renew(&auth, cert).await.expect_err("a revoked successor cannot renew");
            assert!(matches!(err, CaError::Unauthenticated(_)) && err.to_string().contains("revoked"), "{err}");
        }
        let listed = crl_serials(&auth).await;
        for cert in [&a, &b, &c] {
            assert!(listed.contains(&cert.serial.to_hex()), "{} in the CRL {listed:?}", cert.serial.to_hex());
        }
        assert!(!listed.contains(&other.serial.to_hex()));
        let audit = auth.store().audit_events(50).await.expect("audit");
        for cert in [&a, &b, &c] {
            assert!(
                audit.iter().any(|e| e.action == "certificate.revoke"
                    && e.target == cert.serial.to_hex()
                    && e.actor == "operator"),
                "revocation of {} audited",
                cert.serial.to_hex()
            );
        }

        // Revoking again changes nothing and says so; revoking B alone (a middle link) leaves
        // its predecessor alone.
        let again =
            second.revoke(&a.serial.to_hex(), 1, time::OffsetDateTime::now_utc(), "operator").await.expect("again");
        assert_eq!(again, ca::store::lineage::Revocation { revoked: false, successors: vec![] });
        let x = enroll(&auth).await;
        let y = renew(&auth, &x).await.expect("X -> Y");
        let z = renew(&auth, &y).await.expect("Y -> Z");
        let done = second.revoke(&y.serial.to_hex(), 4, time::OffsetDateTime::now_utc(), "operator").await.expect("Y");
        assert_eq!(done.successors, vec![z.serial.to_hex()]);
        assert_eq!(revoked(&auth, &x).await, None, "predecessors stay valid");
        second.close().await;
        auth.store().close().await;
    }
}
