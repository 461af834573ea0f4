//! The registration authority's finalize (issue 14): one call that checks the CSR against the
//! order, issues, and commits the certificate's record together with the order's move to
//! `valid`. Refusals change nothing; a failed issuance makes the order invalid with the problem
//! the edge rendered; of two finalizes racing (in one process, or two replicas) exactly one
//! records a certificate.

mod common;

use std::sync::{Arc, Barrier};

use ca::ra::{FinalizeError, FinalizeRequest, OrderStatus, Registration};
use ca::store::CertificateStatus;
use ca::store::acme::{AcmeAccount, AcmeAuthz, AcmeOrder};
use ca::{CaError, IssuanceStep, Policy, Store};
use common::{San, csr, databases, p256};

/// The audit event that commits with an account's creation.
fn created(a: &AcmeAccount) -> ca::AuditEvent {
    ca::AuditEvent::now("test", "account.create", &a.id, ca::Outcome::Success, "")
}

fn account(id: &str) -> AcmeAccount {
    AcmeAccount {
        id: id.to_owned(),
        thumbprint: format!("thumb-{id}"),
        jwk: format!(r#"{{"kty":"EC","crv":"P-256","x":"{id}","y":"y"}}"#),
        status: "valid".into(),
        contact: vec![],
        eab_kid: None,
        created_at: 1_700_000_000,
        allowed_suffixes: vec![],
    }
}

/// An order for `name` whose one authorization is valid, so the order is `ready`.
async fn order(store: &Store, id: &str, acct: &str, name: &str, status: OrderStatus) {
    let expires_at = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let o = AcmeOrder {
        id: id.to_owned(),
        account_id: acct.to_owned(),
        status: status.as_str().into(),
        identifiers: format!(r#"[{{"type":"dns","value":"{name}"}}]"#),
        expires_at,
        error: None,
        cert_serial: None,
        created_at: 1_700_000_000,
        replaces: None,
    };
    let a = AcmeAuthz {
        id: format!("authz-{id}"),
        order_id: id.to_owned(),
        account_id: acct.to_owned(),
        id_type: "dns".into(),
        id_value: name.to_owned(),
        wildcard: false,
        status: if status == OrderStatus::Ready { "valid" } else { "pending" }.into(),
        expires_at,
    };
    store.acme_create_order(&o, &[a], &[]).await.expect("order");
}

fn render(e: &CaError) -> String {
    serde_json::json!({ "detail": e.to_string(), "rendered": "by the test" }).to_string()
}

fn request<'a>(order_id: &'a str, acct: &'a AcmeAccount, name: &str) -> FinalizeRequest<'a> {
    let der = csr(&p256(), &[San::Dns(name)], None);
    FinalizeRequest {
        order_id,
        account: acct,
        csr: ca::parse_and_verify_csr(&der).expect("csr"),
        render_problem: &render,
    }
}

/// Certificates recorded (issued) for `acct`.
async fn issued_for(store: &Store, acct: &str) -> Vec<ca::store::CertificateRecord> {
    let all = store.certificates(1000).await.expect("list");
    all.into_iter().filter(|r| r.requester == format!("acme:{acct}") && r.status == CertificateStatus::Issued).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_commits_the_certificate_with_the_order_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (authority, _) = common::authority(&url, Policy::default()).await;
        let ra = Registration::open(Arc::new(authority)).await.expect("ra");
        let store = ra.authority().store().clone();
        let (alice, bob) = (account("alice"), account("bob"));
        store.acme_create_account(&alice, &created(&alice)).await.expect("alice");
        store.acme_create_account(&bob, &created(&bob)).await.expect("bob");
        order(&store, "o1", "alice", "a.example.test", OrderStatus::Ready).await;
        order(&store, "pending", "alice", "p.example.test", OrderStatus::Pending).await;

        // Refusals: a CSR for other names, another account, a pending order, no such order.
        let r = ra.finalize(request("o1", &alice, "b.example.test")).await;
        assert!(matches!(r, Err(FinalizeError::BadCsr(_))), "{url}: {r:?}");
        let r = ra.finalize(request("o1", &bob, "a.example.test")).await;
        assert!(matches!(r, Err(FinalizeError::NotFound)), "{url}: {r:?}");
        let r = ra.finalize(request("pending", &alice, "p.example.test")).await;
        assert!(matches!(r, Err(FinalizeError::NotReady(_))), "{url}: {r:?}");
        let r = ra.finalize(request("nope", &alice, "a.example.test")).await;
        assert!(matches!(r, Err(FinalizeError::NotFound)), "{url}: {r:?}");
        let o = store.acme_order("o1").await.expect("read").expect("o1");
        assert_eq!((o.status.as_str(), o.cert_serial.as_deref()), ("ready", None), "{url}");
        assert!(store.certificates(100).await.expect("list").is_empty(), "a refusal wrote a row: {url}");

        // The good CSR: the order is valid and points at the recorded certificate.
        let done = ra.finalize(request("o1", &alice, "a.example.test")).await.expect("finalize");
        let serial = done.certificate.serial.to_hex();
        assert_eq!(done.order.status, "valid");
        assert_eq!(done.order.cert_serial.as_deref(), Some(serial.as_str()));
        let o = store.acme_order("o1").await.expect("read").expect("o1");
        assert_eq!((o.status.as_str(), o.cert_serial.as_deref()), ("valid", Some(serial.as_str())), "{url}");
        let rec = store.certificate(&serial).await.expect("read").expect("record");
        assert_eq!(rec.status, CertificateStatus::Issued);
        assert_eq!(rec.requester, "acme:alice");
        assert!(rec.cert_pem.is_some());
        assert_eq!(store.acme_order_for_cert(&serial).await.expect("read").map(|o| o.id).as_deref(), Some("o1"));

        // Finalized once: a second finalize is refused and issues nothing.
        let r = ra.finalize(request("o1", &alice, "a.example.test")).await;
        assert!(matches!(r, Err(FinalizeError::NotReady(_))), "{url}: {r:?}");
        assert_eq!(issued_for(&store, "alice").await.len(), 1, "{url}");
        store.close().await;
    }
}

/// A failure that is not the store being unavailable ends the order: `invalid`, with the problem
/// the edge's renderer produced stored as its error, and no certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_issuance_makes_the_order_invalid_with_the_rendered_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (authority, _) = common::authority(&url, Policy::default()).await;
        let ra = Registration::open(Arc::new(authority)).await.expect("ra");
        let store = ra.authority().store().clone();
        let alice = account("alice");
        store.acme_create_account(&alice, &created(&alice)).await.expect("alice");
        order(&store, "o1", "alice", "a.example.test", OrderStatus::Ready).await;
        // Every new certificate row is refused by the database (not an availability error).
        break_intents(&url).await;
        let r = ra.finalize(request("o1", &alice, "a.example.test")).await;
        let Err(FinalizeError::Failed(e)) = r else { panic!("{url}: {r:?}") };
        let o = store.acme_order("o1").await.expect("read").expect("o1");
        assert_eq!(o.status, "invalid", "{url}");
        assert_eq!(o.error, Some(render(&e)), "{url}");
        assert_eq!(o.cert_serial, None);
        store.close().await;
    }
}

/// Installs a trigger that refuses inserts into `certificates`.
async fn break_intents(url: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(url).await.expect("connect");
    let statements: &[&str] = if url.starts_with("sqlite:") {
        &["CREATE TRIGGER refuse BEFORE INSERT ON certificates BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"]
    } else {
        &[
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$ \
             LANGUAGE plpgsql",
            "CREATE TRIGGER refuse BEFORE INSERT ON certificates FOR EACH ROW EXECUTE FUNCTION refuse()",
        ]
    };
    for s in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*s)).execute(&mut c).await.expect("trigger");
    }
    c.close().await.expect("close");
}

/// Two finalizes of one order: in one process the second is refused before it signs; on two
/// replicas (two stores on one database) both sign, and the record's guard on `ready` lets
/// exactly one certificate be recorded, the one the order points at.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_finalizes_of_one_order_record_exactly_one_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (authority, _) = common::authority(&url, Policy::default()).await;
        let ra = Registration::open(Arc::new(authority)).await.expect("ra");
        let store = ra.authority().store().clone();
        let alice = account("alice");
        store.acme_create_account(&alice, &created(&alice)).await.expect("alice");

        // One process.
        order(&store, "o1", "alice", "a.example.test", OrderStatus::Ready).await;
        let (a, b) = tokio::join!(
            ra.finalize(request("o1", &alice, "a.example.test")),
            ra.finalize(request("o1", &alice, "a.example.test"))
        );
        let (won, lost) = one_of_each(a, b, &url);
        assert_one_certificate(&store, "o1", &won, &lost, "alice", &url).await;

        // Two replicas, both past signing before either records.
        let bob = account("bob");
        store.acme_create_account(&bob, &created(&bob)).await.expect("bob");
        order(&store, "o2", "bob", "b.example.test", OrderStatus::Ready).await;
        let both_signed = Arc::new(Barrier::new(2));
        let replica = |barrier: Arc<Barrier>| {
            let url = url.clone();
            async move {
                let store = Store::open(&url).await.expect("open");
                let mut auth = ca::Authority::load(store, Policy::default(), &common::pass()).await.expect("load");
                auth.set_step_hook(Arc::new(move |step| {
                    if step == IssuanceStep::Signed {
                        barrier.wait();
                    }
                }));
                Registration::open(Arc::new(auth)).await.expect("ra")
            }
        };
        let (r1, r2) = (replica(both_signed.clone()).await, replica(both_signed).await);
        let (t1, t2) = {
            let bob1 = bob.clone();
            let bob2 = bob.clone();
            (
                tokio::spawn(async move { r1.finalize(request("o2", &bob1, "b.example.test")).await }),
                tokio::spawn(async move { r2.finalize(request("o2", &bob2, "b.example.test")).await }),
            )
        };
        let (a, b) = (t1.await.expect("task"), t2.await.expect("task"));
        let (won, lost) = one_of_each(a, b, &url);
        assert_one_certificate(&store, "o2", &won, &lost, "bob", &url).await;
        // The loser signed too: its serial is an intent that was never recorded, so never returned.
        let intents: Vec<_> = store
            .certificates(100)
            .await
            .expect("list")
            .into_iter()
            .filter(|r| r.requester == "acme:bob" && r.status == CertificateStatus::Intent)
            .collect();
        assert_eq!(intents.len(), 1, "{url}: {intents:?}");
        assert!(intents[0].cert_pem.is_none());
        store.close().await;
    }
}

type Outcome = Result<ca::ra::Finalized, FinalizeError>;

fn one_of_each(a: Outcome, b: Outcome, url: &str) -> (ca::ra::Finalized, FinalizeError) {
    match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (a, b) => panic!("{url}: expected one finalize and one refusal, got {a:?} and {b:?}"),
    }
}

async fn assert_one_certificate(
    store: &Store,
    order_id: &str,
    won: &ca::ra::Finalized,
    lost: &FinalizeError,
    acct: &str,
    url: &str,
) {
    assert!(matches!(lost, FinalizeError::NotReady(_)), "{url}: {lost:?}");
    let serial = won.certificate.serial.to_hex();
    let o = store.acme_order(order_id).await.expect("read").expect("order");
    assert_eq!((o.status.as_str(), o.cert_serial.as_deref()), ("valid", Some(serial.as_str())), "{url}");
    let issued = issued_for(store, acct).await;
    assert_eq!(issued.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), [serial.as_str()], "{url}");
}
