//! A process killed between issuance steps never leaves a certificate returned without a record,
//! and never reuses a serial. The child is the real issuance path (`crash-issue`), aborted with
//! `abort()` right after each step.

use std::process::Command;

use ca::ra::OrderStatus;
use ca::rcgen::{CertificateParams, KeyPair};
use ca::store::acme::{AcmeAccount, AcmeAuthz, AcmeOrder};
use ca::store::{CertificateIntent, CertificateStatus};
use ca::{AuditEvent, InitOptions, Outcome, Passphrase, Store};
use tests::bin;

const PASS: &str = "crash test passphrase";

async fn databases(dir: &std::path::Path) -> Vec<String> {
    let mut v = vec![format!("sqlite://{}", dir.join("crash.db").display())];
    v.extend(tests::throwaway_postgres("lanyard_crash").await);
    v
}

fn run_child(url: &str, crash_at: Option<&str>) -> (bool, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["crash.example.test".to_owned()]).expect("params");
    p.distinguished_name = ca::rcgen::DistinguishedName::new();
    let csr = p.serialize_request(&key).expect("csr");
    let mut cmd = Command::new(bin("crash-issue"));
    cmd.arg(url).arg(hex::encode(csr.der())).env("LANYARD_CA_PASSPHRASE", PASS).env("RUST_BACKTRACE", "0");
    match crash_at {
        Some(s) => cmd.env("LANYARD_CRASH_AT", s),
        None => cmd.env_remove("LANYARD_CRASH_AT"),
    };
    let out = cmd.output().expect("spawn crash-issue");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn killed_between_steps_never_returns_unrecorded_and_never_reuses_serials() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let pass = Passphrase::new(PASS).expect("pass");
        {
            let store = Store::open(&url).await.expect("open");
            let m = ca::create_ca(&InitOptions::default(), &pass).expect("ca");
            store
                .insert_issuers(
                    &[&m.root, &m.intermediate],
                    &[AuditEvent::now("operator", "ca.init", &m.root.id, Outcome::Success, "")],
                )
                .await
                .expect("insert");
            store.close().await;
        }

        // A clean run: what it prints is recorded as issued.
        let (ok, out) = run_child(&url, None);
        assert!(ok, "clean run failed: {out}");
        let clean_serial = out.lines().next().expect("serial").to_owned();

        let mut crashed = Vec::new();
        for step in ["intent", "signed", "recorded"] {
            let (ok, out) = run_child(&url, Some(step));
            assert!(!ok, "the child survived its crash point {step}");
            assert!(out.is_empty(), "a crashed child returned a certificate at {step}: {out}");
            crashed.push(step);
        }

        let store = Store::open(&url).await.expect("reopen");
        let rec = store.certificate(&clean_serial).await.expect("read").expect("clean certificate recorded");
        assert_eq!(rec.status, CertificateStatus::Issued);
        assert!(out_matches(&rec.cert_pem, &clean_serial));

        let all = store.certificates(100).await.expect("list");
        assert_eq!(all.len(), 4, "one row per attempt: {all:?}");
        let intents: Vec<_> = all.iter().filter(|r| r.status == CertificateStatus::Intent).collect();
        let issued: Vec<_> = all.iter().filter(|r| r.status == CertificateStatus::Issued).collect();
        // Crashes after "intent" and after "signed" leave an intent without a certificate; a crash
        // after "recorded" leaves a recorded certificate that was never handed out.
        assert_eq!(intents.len(), 2, "{all:?}");
        assert_eq!(issued.len(), 2, "{all:?}");
        assert!(intents.iter().all(|r| r.cert_pem.is_none()));

        // Recovery marks stale intents abandoned; their serials stay reserved forever.
        assert_eq!(store.abandon_stale_intents(std::time::Duration::ZERO).await.expect("abandon"), 2);
        for r in &intents {
            let again = store.certificate(&r.serial).await.expect("read").expect("row");
            assert_eq!(again.status, CertificateStatus::Abandoned);
            let reuse = store
                .record_intent(CertificateIntent {
                    serial: r.serial.clone(),
                    issuer_id: r.issuer_id.clone(),
                    profile: "tls-server".into(),
                    requester: "reuse".into(),
                    subject: String::new(),
                    sans: "[]".into(),
                    key_fingerprint: "00".into(),
                    not_before: time::OffsetDateTime::now_utc(),
                    not_after: time::OffsetDateTime::now_utc(),
                    renewed_from: None,
                })
                .await;
            assert!(reuse.is_err(), "serial {} could be reserved twice", r.serial);
        }
        let serials: std::collections::HashSet<_> = all.iter().map(|r| r.serial.clone()).collect();
        assert_eq!(serials.len(), all.len());

        // And the CA keeps issuing after the crashes.
        let (ok, out) = run_child(&url, None);
        assert!(ok, "{out}");
        assert_eq!(store.certificates(100).await.expect("list").len(), 5);
        let _ = crashed;
    }
}

fn finalize_child(url: &str, order_id: &str, account_id: &str, crash_at: Option<&str>) -> (bool, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec![format!("{order_id}.example.test")]).expect("params");
    p.distinguished_name = ca::rcgen::DistinguishedName::new();
    let csr = p.serialize_request(&key).expect("csr");
    let mut cmd = Command::new(bin("crash-issue"));
    cmd.arg("--finalize")
        .arg(url)
        .arg(hex::encode(csr.der()))
        .arg(order_id)
        .arg(account_id)
        .env("LANYARD_CA_PASSPHRASE", PASS)
        .env("RUST_BACKTRACE", "0");
    match crash_at {
        Some(s) => cmd.env("LANYARD_CRASH_AT", s),
        None => cmd.env_remove("LANYARD_CRASH_AT"),
    };
    let out = cmd.output().expect("spawn crash-issue");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), log)
}

/// An account (`acct-<order>`) and an order for `<order>.example.test` whose one authorization is
/// valid, so the order is `ready`; written directly to the store, as the challenge flow would.
async fn ready_order(store: &Store, order_id: &str) -> String {
    let account_id = format!("acct-{order_id}");
    let account = AcmeAccount {
        id: account_id.clone(),
        thumbprint: format!("thumb-{order_id}"),
        jwk: "{}".into(),
        status: "valid".into(),
        contact: vec![],
        eab_kid: None,
        created_at: 1_700_000_000,
        allowed_suffixes: vec![],
    };
    store
        .acme_create_account(&account, &AuditEvent::now("test", "account.create", &account_id, Outcome::Success, ""))
        .await
        .expect("account");
    let name = format!("{order_id}.example.test");
    let expires_at = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let order = AcmeOrder {
        id: order_id.to_owned(),
        account_id: account_id.clone(),
        status: OrderStatus::Ready.as_str().into(),
        identifiers: format!(r#"[{{"type":"dns","value":"{name}"}}]"#),
        expires_at,
        error: None,
        cert_serial: None,
        created_at: 1_700_000_000,
        replaces: None,
    };
    let authz = AcmeAuthz {
        id: format!("authz-{order_id}"),
        order_id: order_id.to_owned(),
        account_id: account_id.clone(),
        id_type: "dns".into(),
        id_value: name,
        wildcard: false,
        status: "valid".into(),
        expires_at,
    };
    store.acme_create_order(&order, &[authz], &[]).await.expect("order");
    account_id
}

/// What a finalize killed at `step` may leave: the order `ready` with no certificate recorded
/// for its account, or `valid` pointing at its recorded certificate. Never a recorded certificate
/// the order does not point at, never `processing`. Returns the order's status.
async fn assert_consistent(store: &Store, order_id: &str, account_id: &str, step: &str) -> OrderStatus {
    let o = store.acme_order(order_id).await.expect("read").expect("order");
    let status = o.order_status().expect("status");
    let recorded: Vec<_> = store
        .certificates(1000)
        .await
        .expect("list")
        .into_iter()
        .filter(|r| r.requester == format!("acme:{account_id}") && r.status == CertificateStatus::Issued)
        .collect();
    match status {
        OrderStatus::Ready => {
            assert_eq!(o.cert_serial, None, "{step}");
            assert!(recorded.is_empty(), "{step}: a certificate recorded that the ready order does not point at");
        }
        OrderStatus::Valid => {
            let serial = o.cert_serial.clone().expect("a valid order points at its certificate");
            assert_eq!(recorded.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), [serial.as_str()], "{step}");
            let rec = store.certificate(&serial).await.expect("read").expect("the certificate exists");
            assert!(out_matches(&rec.cert_pem, &serial), "{step}");
        }
        other => panic!("{step}: a crashed finalize left the order {other}"),
    }
    status
}

#[tokio::test]
async fn a_finalize_killed_between_steps_leaves_a_ready_order_or_a_valid_one_with_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut urls = vec![format!("sqlite://{}", dir.path().join("finalize.db").display())];
    urls.extend(tests::throwaway_postgres("lanyard_crash_finalize").await);
    for url in urls {
        let pass = Passphrase::new(PASS).expect("pass");
        let store = Store::open(&url).await.expect("open");
        let m = ca::create_ca(&InitOptions::default(), &pass).expect("ca");
        store
            .insert_issuers(
                &[&m.root, &m.intermediate],
                &[AuditEvent::now("operator", "ca.init", &m.root.id, Outcome::Success, "")],
            )
            .await
            .expect("insert");

        // A clean run: the order is valid with the certificate the child printed.
        let account = ready_order(&store, "clean").await;
        let (ok, out) = finalize_child(&url, "clean", &account, None);
        assert!(ok, "clean finalize failed: {out}");
        assert_eq!(assert_consistent(&store, "clean", &account, "clean").await, OrderStatus::Valid);
        let printed = out.lines().next().expect("serial");
        let o = store.acme_order("clean").await.expect("read").expect("order");
        assert_eq!(o.cert_serial.as_deref(), Some(printed));

        // Killed after each step: before the record commits the order stays ready (and a clean
        // retry then finalizes it: nothing is stuck); from the commit on it is valid.
        for (step, expect) in [
            ("intent", OrderStatus::Ready),
            ("signed", OrderStatus::Ready),
            ("recorded", OrderStatus::Valid),
            ("finalized", OrderStatus::Valid),
        ] {
            let account = ready_order(&store, step).await;
            let (ok, out) = finalize_child(&url, step, &account, Some(step));
            assert!(!ok, "the child survived its crash point {step}: {out}");
            assert!(!out.contains("BEGIN CERTIFICATE"), "a crashed child returned a certificate at {step}: {out}");
            assert_eq!(assert_consistent(&store, step, &account, step).await, expect, "{url} {step}");
            if expect == OrderStatus::Ready {
                let (ok, out) = finalize_child(&url, step, &account, None);
                assert!(ok, "retry after a crash at {step} failed: {out}");
                assert_eq!(assert_consistent(&store, step, &account, step).await, OrderStatus::Valid, "{url}");
            } else {
                let (ok, out) = finalize_child(&url, step, &account, None);
                assert!(!ok && out.contains("not ready"), "a valid order was finalized again at {step}: {out}");
                assert_consistent(&store, step, &account, step).await;
            }
        }
        store.close().await;
    }
}

fn out_matches(pem: &Option<String>, serial: &str) -> bool {
    let Some(pem) = pem else { return false };
    let der =
        <rustls_pki_types::CertificateDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes())
            .expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    hex::encode(cert.raw_serial()) == serial
}
