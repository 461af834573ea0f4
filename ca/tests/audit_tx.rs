//! Every state change an operator or a client causes commits with its audit event, or not at all
//! (issue 14). Each test breaks the audit table (a trigger that raises on insert), makes the
//! change, and checks that the call fails and the change did not happen either; then, with the
//! audit table working again, that the change happens with exactly one event. SQLite and
//! PostgreSQL.

mod common;

use std::time::Duration;

use ca::store::acme::{AcmeAuthz, AcmeChallenge, AcmeOrder, TokenSpend};
use ca::store::crl::StoredCrl;
use ca::store::workload::{JoinToken, JoinTokenError, join_token_digest};
use ca::{AuditEvent, Authority, IssueRequest, IssuerState, Outcome, Profile, SpiffeId, Store};
use common::*;

fn ev(action: &str, target: &str) -> AuditEvent {
    AuditEvent::now("test", action, target, Outcome::Success, "audit_tx test")
}

fn order(id: &str, account: &str, expires_at: i64) -> (AcmeOrder, AcmeAuthz, AcmeChallenge) {
    let o = AcmeOrder {
        id: id.to_owned(),
        account_id: account.to_owned(),
        status: "pending".into(),
        identifiers: r#"[{"type":"spiffe","value":"spiffe://example.org/web"}]"#.into(),
        expires_at,
        error: None,
        cert_serial: None,
        created_at: 1_000,
        replaces: None,
    };
    let a = AcmeAuthz {
        id: format!("authz-{id}"),
        order_id: id.to_owned(),
        account_id: account.to_owned(),
        id_type: "spiffe".into(),
        id_value: "spiffe://example.org/web".into(),
        wildcard: false,
        status: "pending".into(),
        expires_at,
    };
    let c = AcmeChallenge {
        id: format!("chall-{id}"),
        authz_id: a.id.clone(),
        kind: "join-token-01".into(),
        token: format!("token-{id}"),
        status: "pending".into(),
        validated_at: None,
        error: None,
    };
    (o, a, c)
}

async fn issue(auth: &Authority, n: u32) -> String {
    let csr = csr(&p256(), &[San::Uri(&format!("spiffe://example.org/w{n}"))], None);
    let req =
        IssueRequest { csr: &csr, profile: Profile::Workload, requester: "test", lifetime: None, authorized: None };
    auth.issue(req).await.expect("issue").serial.to_hex()
}

/// ACME newAccount, with and without an EAB binding: the account, the key's binding and
/// `account.create` commit together. An existing account changes nothing and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_creation_and_eab_binding_need_their_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.expect("open store");
        store.acme_create_eab_key(&eab_key("kid-1"), 1_700_000_000, &ev("eab.create", "kid-1")).await.expect("eab");

        break_audit(&url).await;
        for (id, eab) in [("plain", None), ("bound", Some("kid-1"))] {
            let a = account(id, eab);
            store.acme_create_account(&a, &ev("account.create", id)).await.expect_err("audit broken");
            assert_eq!(store.acme_account_by_thumbprint(&a.thumbprint).await.expect("read"), None, "{url} {id}");
        }
        let key = store.acme_eab_key("kid-1").await.expect("read").expect("key");
        assert_eq!(key.account_id, None, "the EAB key stays unbound ({url})");
        assert_eq!(events(&store, "account.create").await, 0);

        restore_audit(&url).await;
        for (id, eab) in [("plain", None), ("bound", Some("kid-1"))] {
            let (stored, created) =
                store.acme_create_account(&account(id, eab), &ev("account.create", id)).await.expect("create");
            assert!(created, "{url} {id}");
            assert_eq!(stored.eab_kid.as_deref(), eab);
        }
        let key = store.acme_eab_key("kid-1").await.expect("read").expect("key");
        assert_eq!(key.account_id.as_deref(), Some("bound"), "{url}");
        assert_eq!(events(&store, "account.create").await, 2, "one per account ({url})");
        // The same key again: the existing account, no new event.
        let (_, created) =
            store.acme_create_account(&account("plain", None), &ev("account.create", "x")).await.expect("again");
        assert!(!created);
        assert_eq!(events(&store, "account.create").await, 2, "{url}");
        store.close().await;
    }
}

/// ACME account update and deactivation (RFC 8555 sections 7.3.2, 7.3.6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_update_and_deactivation_need_their_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.expect("open store");
        let a = account("acct", None);
        store.acme_create_account(&a, &ev("account.create", "acct")).await.expect("create");
        let new_contact = vec!["mailto:new@example.test".to_owned()];

        break_audit(&url).await;
        store.acme_update_account("acct", &new_contact, "valid", &ev("account.update", "acct")).await.expect_err("b");
        store
            .acme_update_account("acct", &a.contact, "deactivated", &ev("account.deactivate", "acct"))
            .await
            .expect_err("b");
        assert_eq!(store.acme_account("acct").await.expect("read"), Some(a.clone()), "unchanged ({url})");

        restore_audit(&url).await;
        assert!(
            store.acme_update_account("acct", &new_contact, "valid", &ev("account.update", "acct")).await.expect("u")
        );
        assert_eq!(store.acme_account("acct").await.expect("read").expect("acct").contact, new_contact);
        assert_eq!(events(&store, "account.update").await, 1, "{url}");
        let deact = ev("account.deactivate", "acct");
        assert!(store.acme_update_account("acct", &new_contact, "deactivated", &deact).await.expect("d"));
        assert_eq!(store.acme_account("acct").await.expect("read").expect("acct").status, "deactivated");
        assert_eq!(events(&store, "account.deactivate").await, 1, "{url}");
        // A deactivated account changes no more, and records nothing.
        assert!(
            !store.acme_update_account("acct", &a.contact, "valid", &ev("account.update", "acct")).await.expect("u")
        );
        assert_eq!(events(&store, "account.update").await, 1, "{url}");
        store.close().await;
    }
}

/// ACME keyChange (RFC 8555 section 7.3.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_needs_its_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.expect("open store");
        let a = account("acct", None);
        store.acme_create_account(&a, &ev("account.create", "acct")).await.expect("create");
        let change = ev("account.key-change", "acct");

        break_audit(&url).await;
        store.acme_change_key("acct", &a.thumbprint, "thumb-new", "{}", &change).await.expect_err("audit broken");
        assert_eq!(store.acme_account("acct").await.expect("read"), Some(a.clone()), "key unchanged ({url})");
        assert_eq!(store.acme_account_by_thumbprint("thumb-new").await.expect("read"), None);

        restore_audit(&url).await;
        assert_eq!(
            store.acme_change_key("acct", &a.thumbprint, "thumb-new", "{}", &change).await.expect("c"),
            Ok(true)
        );
        let now = store.acme_account("acct").await.expect("read").expect("acct");
        assert_eq!((now.thumbprint.as_str(), now.jwk.as_str()), ("thumb-new", "{}"), "{url}");
        assert_eq!(events(&store, "account.key-change").await, 1, "{url}");
        // The old key no longer matches: nothing changes, nothing is recorded.
        assert_eq!(store.acme_change_key("acct", &a.thumbprint, "thumb-3", "{}", &change).await.expect("c"), Ok(false));
        assert_eq!(events(&store, "account.key-change").await, 1, "{url}");
        store.close().await;
    }
}

/// `lanyard-ca eab create`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eab_key_creation_needs_its_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.expect("open store");
        break_audit(&url).await;
        store.acme_create_eab_key(&eab_key("kid-1"), 1, &ev("eab.create", "kid-1")).await.expect_err("audit broken");
        assert_eq!(store.acme_eab_key("kid-1").await.expect("read"), None, "no EAB key ({url})");
        restore_audit(&url).await;
        store.acme_create_eab_key(&eab_key("kid-1"), 1, &ev("eab.create", "kid-1")).await.expect("create");
        assert!(store.acme_eab_key("kid-1").await.expect("read").is_some());
        assert_eq!(events(&store, "eab.create").await, 1, "{url}");
        store.close().await;
    }
}

/// `lanyard-ca token create`, and the spending of a join token by a valid attestation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_creation_and_spending_need_their_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.expect("open store");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let id = SpiffeId::parse("spiffe://example.org/web").expect("id");
        let digest = join_token_digest("lanyard-jt-secret");
        let token = JoinToken { spiffe_id: id.clone(), is_prefix: false, expires_at: now + 600 };

        break_audit(&url).await;
        store.create_join_token(&digest, &token, now, &ev("join_token.create", "web")).await.expect_err("broken");
        assert_eq!(store.check_join_token(&digest, &id, now).await.expect("check"), Err(JoinTokenError::Unknown));
        restore_audit(&url).await;
        store.create_join_token(&digest, &token, now, &ev("join_token.create", "web")).await.expect("create");
        assert_eq!(store.check_join_token(&digest, &id, now).await.expect("check"), Ok(()), "{url}");
        assert_eq!(events(&store, "join_token.create").await, 1, "{url}");

        // Spending: the valid result, the spent token and the event, or none of them.
        store.acme_create_account(&account("agent", None), &ev("account.create", "agent")).await.expect("account");
        let (o, a, c) = order("o1", "agent", now + 600);
        store.acme_create_order(&o, &[a], &[c]).await.expect("order");
        let spend = TokenSpend {
            digest: digest.clone(),
            spiffe_id: id.to_string(),
            error_if_used: r#"{"type":"urn:ietf:params:acme:error:unauthorized"}"#.into(),
            audit: ev("join_token.spend", "spiffe://example.org/web"),
        };
        break_audit(&url).await;
        store.acme_finish_challenge("chall-o1", "authz-o1", "o1", Ok(Some(&spend)), now).await.expect_err("broken");
        assert_eq!(store.check_join_token(&digest, &id, now).await.expect("check"), Ok(()), "unspent ({url})");
        let (order_now, _) = store.acme_order_with_authzs("o1").await.expect("read").expect("order");
        assert_eq!(order_now.status, "pending", "{url}");
        restore_audit(&url).await;
        assert!(store.acme_finish_challenge("chall-o1", "authz-o1", "o1", Ok(Some(&spend)), now).await.expect("ok"));
        assert_eq!(store.check_join_token(&digest, &id, now).await.expect("check"), Err(JoinTokenError::Used));
        assert_eq!(events(&store, "join_token.spend").await, 1, "{url}");
        store.close().await;
    }
}

/// An intermediate's CRL (signed on demand by the authority) and a staged root CRL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_signing_needs_its_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, material) = authority(&url, audit_policy()).await;
        let store = auth.store().clone();
        let int = material.intermediate.id.clone();

        break_audit(&url).await;
        auth.crl(&int).await.expect_err("audit broken");
        assert_eq!(store.latest_crl(&int).await.expect("read"), None, "no CRL stored ({url})");
        let staged = StoredCrl {
            number: 1,
            digest: "d".into(),
            this_update: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("t"),
            next_update: time::OffsetDateTime::from_unix_timestamp(1_700_003_600).expect("t"),
            der: vec![0x30, 0x00],
        };
        let root = material.root.id.clone();
        store.stage_crl(&root, &staged, i64::MAX, "r1", &ev("crl.sign", &root)).await.expect_err("audit broken");
        assert_eq!(store.staged_crl_number(&root).await.expect("read"), None, "nothing staged ({url})");
        assert_eq!(events(&store, "crl.sign").await, 0);

        restore_audit(&url).await;
        let crl = auth.crl(&int).await.expect("crl").expect("has a CRL");
        assert_eq!(crl.number, 1);
        assert_eq!(store.latest_crl(&int).await.expect("read").map(|l| l.number), Some(1), "{url}");
        assert_eq!(events(&store, "crl.sign").await, 1, "{url}");
        store.stage_crl(&root, &staged, i64::MAX, "r1", &ev("crl.sign", &root)).await.expect("stage");
        assert_eq!(store.staged_crl_number(&root).await.expect("read"), Some(1));
        assert_eq!(events(&store, "crl.sign").await, 2, "{url}");
        store.close().await;
    }
}

/// `lanyard-ca rotate intermediate --emergency`, its store step (renewal windows, the emergency
/// record, `issuer.revoke`) and the root CRL re-signed where the root key is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_and_root_crl_need_their_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, material) = authority(&url, audit_policy()).await;
        let store = auth.store().clone();
        let serial = issue(&auth, 1).await;
        let int = material.intermediate.id.clone();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();

        break_audit(&url).await;
        let event = move |n: i64| ev("issuer.revoke", &format!("{n} affected"));
        store.begin_emergency("r1", &int, (now, now + 60), None, now, event).await.expect_err("audit broken");
        assert_eq!(store.emergencies().await.expect("read"), vec![], "emergency not begun ({url})");
        assert_eq!(store.replacement_window(&serial).await.expect("read"), None, "no renewal window ({url})");

        let key_file = dir.path().join("root.key.pem");
        std::fs::write(&key_file, material.root_key_pem_enc.as_deref().expect("root key")).expect("write");
        let keys = ca::rotation::RotationKeys { pass: pass(), root_key_path: key_file, init: Default::default() };
        let enforce = ca::rotation::Enforcement::Now;
        ca::rotation::emergency_rotate(&store, &keys, Duration::ZERO, Duration::from_secs(60), enforce)
            .await
            .expect_err("audit broken");
        let journal = store.issuers().await.expect("journal");
        assert_eq!(journal.len(), 2, "no successor ({url})");
        assert!(journal.iter().all(|r| r.state == IssuerState::Active), "nothing moved ({url})");
        assert_eq!(store.emergencies().await.expect("read"), vec![], "{url}");

        restore_audit(&url).await;
        let report = ca::rotation::emergency_rotate(&store, &keys, Duration::ZERO, Duration::from_secs(60), enforce)
            .await
            .expect("emergency");
        assert_eq!((report.revoked.as_str(), report.affected), (int.as_str(), 1), "{url}");
        assert_eq!(store.emergencies().await.expect("read").len(), 1);
        assert_eq!(events(&store, "issuer.revoke").await, 1, "{url}");
        let root = material.root.id.clone();
        assert_eq!(store.latest_crl(&root).await.expect("read").map(|l| l.number), Some(1));
        assert_eq!(events(&store, "crl.sign").await, 1, "the root CRL ({url})");

        // The root CRL re-signed (forced) with the audit table broken: not replaced.
        break_audit(&url).await;
        ca::rotation::sign_root_crl(&store, &keys, &root, true).await.expect_err("audit broken");
        assert_eq!(store.latest_crl(&root).await.expect("read").map(|l| l.number), Some(1), "{url}");
        restore_audit(&url).await;
        assert_eq!(ca::rotation::sign_root_crl(&store, &keys, &root, true).await.expect("sign"), Some(2));
        assert_eq!(events(&store, "crl.sign").await, 2, "{url}");
        store.close().await;
    }
}

/// `lanyard-ca revoke` and ACME revokeCert both go through `Store::revoke`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_needs_its_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, _) = authority(&url, audit_policy()).await;
        let store = auth.store().clone();
        let serial = issue(&auth, 1).await;
        let at = time::OffsetDateTime::now_utc();

        break_audit(&url).await;
        store.revoke(&serial, 1, at, "operator").await.expect_err("audit broken");
        let cert = store.certificate(&serial).await.expect("read").expect("cert");
        assert_eq!(cert.revoked_at, None, "not revoked ({url})");

        restore_audit(&url).await;
        assert!(store.revoke(&serial, 1, at, "operator").await.expect("revoke").revoked);
        assert!(store.certificate(&serial).await.expect("read").expect("cert").revoked_at.is_some());
        let revokes: Vec<_> = store
            .audit_events(1000)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.action == "certificate.revoke" && e.outcome == Outcome::Success)
            .collect();
        assert_eq!(revokes.len(), 1, "{url}");
        assert_eq!(revokes[0].target, serial);
        store.close().await;
    }
}

/// The issuer journal: a new issuer and an activation need their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_journal_changes_need_their_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, material) = authority(&url, audit_policy()).await;
        let store = auth.store().clone();
        let key_file = dir.path().join("root.key.pem");
        std::fs::write(&key_file, material.root_key_pem_enc.as_deref().expect("root key")).expect("write");
        let keys = ca::rotation::RotationKeys { pass: pass(), root_key_path: key_file, init: Default::default() };

        break_audit(&url).await;
        ca::rotation::prepare_intermediate(&store, &keys, "r1").await.expect_err("audit broken");
        assert_eq!(store.issuers().await.expect("journal").len(), 2, "no issuer added ({url})");

        restore_audit(&url).await;
        let next = ca::rotation::prepare_intermediate(&store, &keys, "r1").await.expect("prepare");
        assert_eq!(events(&store, "issuer.prepare").await, 1, "{url}");
        let int = material.intermediate.id.clone();
        let at = time::OffsetDateTime::now_utc();

        break_audit(&url).await;
        store.activate_issuer(&next.id, &int, at, &ev("issuer.activate", &next.id)).await.expect_err("broken");
        let state = |j: &[ca::IssuerRecord], id: &str| j.iter().find(|r| r.id == id).map(|r| r.state);
        let journal = store.issuers().await.expect("journal");
        assert_eq!(state(&journal, &next.id), Some(IssuerState::Prepared), "not activated ({url})");
        assert_eq!(state(&journal, &int), Some(IssuerState::Active), "{url}");

        restore_audit(&url).await;
        assert!(store.activate_issuer(&next.id, &int, at, &ev("issuer.activate", &next.id)).await.expect("activate"));
        let journal = store.issuers().await.expect("journal");
        assert_eq!(state(&journal, &next.id), Some(IssuerState::Active), "{url}");
        assert_eq!(events(&store, "issuer.activate").await, 1, "{url}");
        store.close().await;
    }
}
