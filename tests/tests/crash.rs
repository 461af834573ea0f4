//! A process killed between issuance steps never leaves a certificate returned without a record,
//! and never reuses a serial. The child is the real issuance path (`crash-issue`), aborted with
//! `abort()` right after each step.

use std::process::Command;

use ca::rcgen::{CertificateParams, KeyPair};
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

fn out_matches(pem: &Option<String>, serial: &str) -> bool {
    let Some(pem) = pem else { return false };
    let der =
        <rustls_pki_types::CertificateDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes())
            .expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    hex::encode(cert.raw_serial()) == serial
}
