//! The ACME state in the store: concurrent changes, some of which must fail, land in the same
//! group-committed batches on SQLite. A failing change must undo exactly its own rows and leave
//! its neighbours committed; compare-and-set changes must let exactly one caller win.

mod common;

use std::sync::Arc;

use ca::CaError;
use ca::store::acme::{AcmeAccount, AcmeAuthz, AcmeChallenge, AcmeOrder, EabKey};
use common::databases;

fn account(id: &str, eab: Option<&str>) -> AcmeAccount {
    AcmeAccount {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_acme_changes_undo_only_themselves_and_races_have_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = ca::Store::open(&url).await.expect("open store");
        let key = EabKey { kid: "kid-1".into(), hmac_key: "a2V5".into(), allowed_suffixes: vec![], account_id: None };
        store.acme_create_eab_key(&key, 1_700_000_000).await.expect("eab key");

        // Eight accounts race for one EAB key while eight others need none, all at once.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let store = store.clone();
            let a = account(&format!("acct{i}"), (i % 2 == 0).then_some("kid-1"));
            tasks.spawn(async move { (a.clone(), store.acme_create_account(&a).await) });
        }
        let (mut bound, mut refused, mut plain) = (0, 0, 0);
        while let Some(joined) = tasks.join_next().await {
            let (a, r) = joined.expect("task");
            match (a.eab_kid.is_some(), r) {
                (true, Ok((stored, true))) => {
                    assert_eq!(stored.id, a.id);
                    assert_eq!(stored.eab_kid.as_deref(), Some("kid-1"));
                    bound += 1;
                }
                (true, Err(CaError::NameNotAllowed { .. })) => {
                    // Its insert was undone with the failed claim: no account for that key.
                    let gone = store.acme_account_by_thumbprint(&a.thumbprint).await.expect("lookup");
                    assert_eq!(gone, None, "a refused binding left its account behind");
                    refused += 1;
                }
                (false, Ok((stored, true))) => {
                    assert_eq!(stored, a);
                    plain += 1;
                }
                (_, other) => panic!("unexpected answer for {}: {other:?}", a.id),
            }
        }
        assert_eq!((bound, refused, plain), (1, 7, 8), "{url}");
        let claimed = store.acme_eab_key("kid-1").await.expect("eab").expect("key");
        assert!(claimed.account_id.is_some());

        // The same key again: the existing account, not a second one.
        let (again, created) = store.acme_create_account(&account("acct1", None)).await.expect("existing");
        assert!(!created);
        assert_eq!(again.id, "acct1");

        // An order with its authorization and challenge, validated, then finalized by 16
        // concurrent callers: exactly one moves it from ready to processing.
        let order = AcmeOrder {
            id: "order-1".into(),
            account_id: "acct1".into(),
            status: "pending".into(),
            identifiers: r#"[{"type":"dns","value":"a.example.test"}]"#.into(),
            expires_at: i64::MAX / 2,
            error: None,
            cert_serial: None,
            created_at: 1_700_000_000,
            replaces: None,
        };
        let authz = AcmeAuthz {
            id: "authz-1".into(),
            order_id: order.id.clone(),
            account_id: "acct1".into(),
            id_type: "dns".into(),
            id_value: "a.example.test".into(),
            wildcard: false,
            status: "pending".into(),
            expires_at: i64::MAX / 2,
        };
        let challenge = AcmeChallenge {
            id: "chall-1".into(),
            authz_id: authz.id.clone(),
            kind: "http-01".into(),
            token: "token".into(),
            status: "pending".into(),
            validated_at: None,
            error: None,
        };
        store
            .acme_create_order(&order, std::slice::from_ref(&authz), std::slice::from_ref(&challenge))
            .await
            .expect("order");
        // A second order with the same id fails as a whole: no stray authorization is left.
        let clash = AcmeAuthz { id: "authz-2".into(), ..authz.clone() };
        store.acme_create_order(&order, &[clash], &[]).await.expect_err("duplicate order id");
        assert!(store.acme_authz("authz-2").await.expect("read").is_none(), "{url}");

        store.acme_finish_challenge("chall-1", "authz-1", "order-1", true, None, 1_700_000_100).await.expect("valid");
        let (o, authzs) = store.acme_order_with_authzs("order-1").await.expect("read").expect("order");
        assert_eq!(o.status, "ready", "the order is ready with its last authorization");
        assert_eq!(authzs.len(), 1);
        assert_eq!(authzs[0].status, "valid");
        let (ch, az) = store.acme_challenge("chall-1").await.expect("read").expect("challenge");
        assert_eq!((ch.status.as_str(), ch.validated_at, az.id.as_str()), ("valid", Some(1_700_000_100), "authz-1"));

        let store = Arc::new(store);
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let store = store.clone();
            racers
                .spawn(async move { store.acme_transition_order("order-1", "ready", "processing", None, None).await });
        }
        let mut winners = 0;
        while let Some(r) = racers.join_next().await {
            winners += usize::from(r.expect("task").expect("transition"));
        }
        assert_eq!(winners, 1, "{url}");
        assert_eq!(store.acme_order("order-1").await.expect("read").expect("order").status, "processing");
        store.close().await;
    }
}
