//! End to end (issue 14): an ACME state change whose audit event cannot be written is answered
//! with an error and leaves nothing behind; with the audit table working again, the same request
//! succeeds and records exactly one event.

use serde_json::json;
use tests::acme::RawClient;
use tests::{break_audit, restore_audit, start_ca};

async fn events(db_url: &str, action: &str) -> usize {
    let store = ca::Store::open(db_url).await.expect("store");
    let n = store.audit_events(10_000).await.expect("events").iter().filter(|e| e.action == action).count();
    store.close().await;
    n
}

#[tokio::test]
async fn acme_account_changes_commit_with_their_audit_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = dir.path().join("ca.toml");
    std::fs::write(&cfg, format!("data_dir = \"{}\"\n", data.display())).expect("config");
    let proc = start_ca(&["--config", cfg.to_str().expect("utf8")], &[]).expect("start lanyard-ca");
    let root_pem = std::fs::read_to_string(data.join("root.pem")).expect("root");
    let db_url = format!("sqlite://{}", data.join("lanyard.db").display());
    let mut c = RawClient::new(proc.addr, &root_pem);

    // newAccount: refused, and no account for the key.
    break_audit(&db_url).await;
    let hdr = json!({"alg": "ES256", "jwk": c.jwk(), "nonce": c.nonce().await, "url": c.url("/new-account")});
    let payload = json!({"termsOfServiceAgreed": true});
    let r = c.send("/new-account", c.sign(hdr, Some(&payload))).await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    let only = json!({"onlyReturnExisting": true});
    let hdr = json!({"alg": "ES256", "jwk": c.jwk(), "nonce": c.nonce().await, "url": c.url("/new-account")});
    let r = c.send("/new-account", c.sign(hdr, Some(&only))).await;
    assert_eq!(r.status, 400, "no account was left behind: {}", String::from_utf8_lossy(&r.body));
    restore_audit(&db_url).await;
    c.register().await;
    assert_eq!(events(&db_url, "account.create").await, 1);

    // Deactivation: refused, and the account stays valid.
    let acct_path = c.path_of(c.kid.as_deref().expect("kid"));
    break_audit(&db_url).await;
    let r = c.post(&acct_path, Some(&json!({"status": "deactivated"}))).await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    restore_audit(&db_url).await;
    assert_eq!(c.post(&acct_path, None).await.json()["status"], "valid");
    assert_eq!(events(&db_url, "account.deactivate").await, 0);
    let r = c.post(&acct_path, Some(&json!({"status": "deactivated"}))).await;
    assert_eq!(r.json()["status"], "deactivated");
    assert_eq!(events(&db_url, "account.deactivate").await, 1);
}
