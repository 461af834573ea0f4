//! Shared fixtures for the CA core's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;

use ca::rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use ca::{AuditEvent, Authority, InitOptions, Outcome, Passphrase, Policy, Store, create_ca};

#[path = "../../../tests/src/audit_fault.rs"]
mod audit_fault;
#[allow(unused_imports)] // each test file that includes `common` uses only part of it
pub use audit_fault::{break_audit, restore_audit, tamper};

pub const PASS: &str = "integration test passphrase";

pub fn pass() -> Passphrase {
    Passphrase::new(PASS).expect("passphrase")
}

/// Databases the storage tests run against: always a fresh SQLite file; PostgreSQL too when the
/// test command provides one. The README's test command always does, and sets
/// LANYARD_REQUIRE_POSTGRES=1 so a missing server is a failure, not a silent skip.
pub async fn databases(dir: &Path) -> Vec<String> {
    let mut urls = vec![format!("sqlite://{}", dir.join("lanyard.db").display())];
    match std::env::var("LANYARD_TEST_POSTGRES_URL") {
        Ok(admin) => urls.push(fresh_pg_database(&admin).await),
        Err(_) => assert!(
            std::env::var("LANYARD_REQUIRE_POSTGRES").is_err(),
            "LANYARD_REQUIRE_POSTGRES is set but LANYARD_TEST_POSTGRES_URL is not"
        ),
    }
    urls
}

/// Creates an empty database on the test server and returns its URL.
pub async fn fresh_pg_database(admin_url: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url).await.expect("connect to the test PostgreSQL");
    let name = format!("lanyard_{}", hex::encode(rand_bytes()));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).expect("URL has a database");
    format!("{base}/{name}")
}

fn rand_bytes() -> [u8; 6] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 6];
    ring::rand::SystemRandom::new().fill(&mut b).expect("rng");
    b
}

/// An audit event for a state change a test makes.
pub fn event(action: &str) -> AuditEvent {
    AuditEvent::now("test", action, "test", Outcome::Success, "")
}

/// How many audit events with `action` the store holds.
pub async fn events(store: &Store, action: &str) -> usize {
    store.audit_events(100_000).await.expect("audit events").iter().filter(|e| e.action == action).count()
}

/// A store with a freshly created CA in it, and the authority loaded from it.
pub async fn authority(url: &str, policy: Policy) -> (Authority, ca::CaMaterial) {
    let store = Store::open(url).await.expect("open store");
    let material = create_ca(&InitOptions::default(), &pass()).expect("create CA");
    store
        .insert_issuers(
            &[&material.root, &material.intermediate],
            &[AuditEvent::now("operator", "ca.init", &material.root.id, Outcome::Success, "test")],
        )
        .await
        .expect("insert issuers");
    let auth = Authority::load(store, policy, &pass()).await.expect("load authority");
    (auth, material)
}

pub enum San<'a> {
    Dns(&'a str),
    Uri(&'a str),
    Ip(&'a str),
}

/// A CSR for `key` with the given SANs and optional CN.
pub fn csr(key: &KeyPair, sans: &[San<'_>], cn: Option<&str>) -> Vec<u8> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.subject_alt_names = sans
        .iter()
        .map(|s| match s {
            San::Dns(d) => SanType::DnsName((*d).try_into().expect("ia5")),
            San::Uri(u) => SanType::URI((*u).try_into().expect("ia5")),
            San::Ip(i) => SanType::IpAddress(i.parse().expect("ip")),
        })
        .collect();
    p.serialize_request(key).expect("csr").der().to_vec()
}

pub fn p256() -> KeyPair {
    KeyPair::generate_for(&ca::rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

/// Runs the openssl CLI; panics with its output when it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out =
        Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CSR made by the openssl CLI (for RSA, SHA-1 and curves rcgen cannot produce).
pub fn openssl_csr(dir: &Path, keygen: &[&str], digest: &str, san: &str) -> Vec<u8> {
    let key = dir.join(format!("k{}.pem", hex::encode(rand_bytes())));
    let key_s = key.to_str().expect("utf8");
    let mut args = keygen.to_vec();
    args.extend(["-out", key_s]);
    openssl(dir, &args);
    let csr = dir.join("req.der");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key_s,
            digest,
            "-subj",
            "/",
            "-addext",
            san,
            "-outform",
            "DER",
            "-out",
            csr.to_str().expect("utf8"),
        ],
    );
    std::fs::read(csr).expect("read csr")
}

/// A policy for the audit tests: the default with the `example.org` trust domain.
pub fn audit_policy() -> Policy {
    let mut p = Policy::default();
    p.trust_domain = "example.org".into();
    p
}

/// An ACME account row for store tests, optionally bound to EAB key `eab`.
pub fn account(id: &str, eab: Option<&str>) -> ca::store::acme::AcmeAccount {
    ca::store::acme::AcmeAccount {
        id: id.to_owned(),
        thumbprint: format!("thumb-{id}"),
        jwk: format!(r#"{{"kty":"EC","crv":"P-256","x":"{id}","y":"y"}}"#),
        status: "valid".into(),
        contact: vec![format!("mailto:{id}@example.test")],
        eab_kid: eab.map(str::to_owned),
        created_at: 1_700_000_000,
        allowed_suffixes: vec![],
    }
}

/// An unbound EAB key for store tests, limited to `example.test`.
pub fn eab_key(kid: &str) -> ca::store::acme::EabKey {
    ca::store::acme::EabKey {
        kid: kid.into(),
        hmac_key: "a2V5".into(),
        allowed_suffixes: vec!["example.test".into()],
        account_id: None,
    }
}
