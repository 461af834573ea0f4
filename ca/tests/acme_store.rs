//! The ACME state in the store: concurrent changes, some of which must fail, land in the same
//! group-committed batches on SQLite. A failing change must undo exactly its own rows and leave
//! its neighbours committed; compare-and-set changes must let exactly one caller win.

mod common;

use std::sync::Arc;

use ca::CaError;
use ca::ra::OrderStatus;
use ca::store::acme::{AcmeAuthz, AcmeChallenge, AcmeOrder, EabKey};
use common::{account, databases, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_acme_changes_undo_only_themselves_and_races_have_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = ca::Store::open(&url).await.expect("open store");
        let key = EabKey { kid: "kid-1".into(), hmac_key: "a2V5".into(), allowed_suffixes: vec![], account_id: None };
        store.acme_create_eab_key(&key, 1_700_000_000, &event("eab.create")).await.expect("eab key");

        // Eight accounts race for one EAB key while eight others need none, all at once.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let store = store.clone();
            let a = account(&format!("acct{i}"), (i % 2 == 0).then_some("kid-1"));
            tasks.spawn(async move { (a.clone(), store.acme_create_account(&a, &event("account.create")).await) });
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
        let (again, created) =
            store.acme_create_account(&account("acct1", None), &event("account.create")).await.expect("existing");
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

        assert!(
            store.acme_finish_challenge("chall-1", "authz-1", "order-1", Ok(None), 1_700_000_100).await.expect("valid")
        );
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
            racers.spawn(async move {
                store.acme_transition_order("order-1", OrderStatus::Ready, OrderStatus::Processing, None, None).await
            });
        }
        let mut winners = 0;
        while let Some(r) = racers.join_next().await {
            winners += usize::from(r.expect("task").expect("transition"));
        }
        assert_eq!(winners, 1, "{url}");
        assert_eq!(store.acme_order("order-1").await.expect("read").expect("order").status, "processing");
        // A transition the order state machine forbids changes nothing.
        let illegal = store.acme_transition_order("order-1", OrderStatus::Processing, OrderStatus::Pending, None, None);
        assert!(matches!(illegal.await, Err(CaError::Store(_))), "{url}");
        assert_eq!(store.acme_order("order-1").await.expect("read").expect("order").status, "processing");
        // An older version's crash left it processing: the RA's startup releases it to ready.
        assert_eq!(store.acme_release_processing_orders().await.expect("release"), 1, "{url}");
        assert_eq!(store.acme_order("order-1").await.expect("read").expect("order").status, "ready");
        store.close().await;
    }
}

fn order(id: &str, account: &str, status: &str, expires_at: i64) -> (AcmeOrder, AcmeAuthz, AcmeChallenge) {
    let o = AcmeOrder {
        id: id.to_owned(),
        account_id: account.to_owned(),
        status: status.to_owned(),
        identifiers: r#"[{"type":"dns","value":"a.example.test"}]"#.into(),
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
        id_type: "dns".into(),
        id_value: "a.example.test".into(),
        wildcard: false,
        status: "pending".into(),
        expires_at,
    };
    let c = AcmeChallenge {
        id: format!("chall-{id}"),
        authz_id: a.id.clone(),
        kind: "http-01".into(),
        token: format!("token-{id}"),
        status: "pending".into(),
        validated_at: None,
        error: None,
    };
    (o, a, c)
}

/// Retention (issue 13): expired orders with their authorizations and challenges, and everything
/// of an account deactivated before the cutoff, are deleted in batches; live orders, the
/// deactivated account's row (so its key stays refused) and everything else stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_what_is_past_retention_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = ca::Store::open(&url).await.expect("open store");
        for id in ["keep", "gone"] {
            store.acme_create_account(&account(id, None), &event("account.create")).await.expect("account");
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // More expired orders than one purge batch, one live order, and a live order of an
        // account that is then deactivated.
        let expired = usize::try_from(ca::store::acme::PURGE_BATCH).expect("batch") + 20;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..expired {
            let store = store.clone();
            tasks.spawn(async move {
                let (o, a, c) =
                    order(&format!("old-{i}"), "keep", if i % 2 == 0 { "pending" } else { "invalid" }, 1_000);
                store.acme_create_order(&o, &[a], &[c]).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task").expect("expired order");
        }
        for (id, account) in [("live", "keep"), ("of-gone", "gone")] {
            let (o, a, c) = order(id, account, "pending", now + 86_400);
            store.acme_create_order(&o, &[a], &[c]).await.expect("live order");
        }
        assert!(
            store
                .acme_update_account(
                    "gone",
                    &["mailto:gone@example.test".into()],
                    "deactivated",
                    &event("account.deactivate")
                )
                .await
                .expect("deactivate")
        );

        // Before the deactivation is past retention, only the expired orders go.
        let first = store.acme_purge(now - 3_600).await.expect("purge");
        let n = expired as u64;
        assert_eq!(
            first,
            ca::store::acme::AcmePurged { orders: n, authorizations: n, challenges: n, accounts: 0 },
            "{url}"
        );
        assert!(store.acme_order("old-0").await.expect("read").is_none());
        assert!(store.acme_challenge("chall-old-1").await.expect("read").is_none());
        assert!(store.acme_order("of-gone").await.expect("read").is_some(), "deactivated too recently");

        // Once it is: the deactivated account's orders and contacts go, its row stays.
        let second = store.acme_purge(now + 60).await.expect("purge");
        assert_eq!(
            second,
            ca::store::acme::AcmePurged { orders: 1, authorizations: 1, challenges: 1, accounts: 1 },
            "{url}"
        );
        assert!(store.acme_order("of-gone").await.expect("read").is_none());
        let gone = store.acme_account("gone").await.expect("read").expect("the account row stays");
        assert_eq!((gone.status.as_str(), gone.contact.len()), ("deactivated", 0));
        assert!(store.acme_account_by_thumbprint("thumb-gone").await.expect("read").is_some(), "key stays refused");

        // The live order of a valid account is untouched, and a purge with nothing to do is a no-op.
        let (live, authzs) = store.acme_order_with_authzs("live").await.expect("read").expect("live order");
        assert_eq!((live.status.as_str(), authzs.len()), ("pending", 1));
        assert!(store.acme_challenge("chall-live").await.expect("read").is_some());
        assert_eq!(store.acme_purge(now + 60).await.expect("purge"), ca::store::acme::AcmePurged::default());
        store.close().await;
    }
}

/// Join tokens (issue 13): a valid attestation's token is spent in the transaction that records
/// the valid authorization. Two orders racing on one token: exactly one becomes ready, the other
/// is recorded invalid with the "already used" error, and the token names the winner. A result
/// that is never recorded spends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_is_spent_with_the_valid_authorization_once() {
    use ca::store::acme::TokenSpend;
    use ca::store::workload::{JoinToken, JoinTokenError, join_token_digest};
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = Arc::new(ca::Store::open(&url).await.expect("open store"));
        store.acme_create_account(&account("agent", None), &event("account.create")).await.expect("account");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let id = ca::SpiffeId::parse("spiffe://example.org/web").expect("id");
        let digest = join_token_digest("lanyard-jt-secret");
        let token = JoinToken { spiffe_id: id.clone(), is_prefix: false, expires_at: now + 600 };
        store.create_join_token(&digest, &token, now, &event("join_token.create")).await.expect("token");
        for i in 0..8 {
            let (o, a, c) = order(&format!("o{i}"), "agent", "pending", now + 600);
            store.acme_create_order(&o, &[a], &[c]).await.expect("order");
        }
        // Checking does not spend: the token still admits a check after many.
        for _ in 0..3 {
            assert_eq!(store.check_join_token(&digest, &id, now).await.expect("check"), Ok(()), "{url}");
        }
        let spend = TokenSpend {
            digest: digest.clone(),
            spiffe_id: id.to_string(),
            error_if_used: r#"{"type":"urn:ietf:params:acme:error:unauthorized"}"#.into(),
            audit: event("join_token.spend"),
        };
        // A result for a challenge that is not being validated is not recorded and spends nothing.
        store.acme_finish_challenge("chall-none", "authz-o0", "o0", Ok(Some(&spend)), now).await.expect_err("unknown");
        assert_eq!(store.check_join_token(&digest, &id, now).await.expect("check"), Ok(()), "{url}");
        let (o0, _) = store.acme_order_with_authzs("o0").await.expect("read").expect("order");
        assert_eq!(o0.status, "pending", "nothing of the failed result was kept ({url})");

        let mut racers = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (store, spend) = (store.clone(), spend.clone());
            racers.spawn(async move {
                let (o, a, c) = (format!("o{i}"), format!("authz-o{i}"), format!("chall-o{i}"));
                let valid = store.acme_finish_challenge(&c, &a, &o, Ok(Some(&spend)), now).await.expect("finish");
                (o, valid)
            });
        }
        let mut winners = Vec::new();
        while let Some(r) = racers.join_next().await {
            let (o, valid) = r.expect("task");
            let (order, _) = store.acme_order_with_authzs(&o).await.expect("read").expect("order");
            if valid {
                assert_eq!(order.status, "ready", "{url}");
                winners.push(o);
            } else {
                assert_eq!(order.status, "invalid", "{url}");
                let (ch, _) = store.acme_challenge(&format!("chall-{o}")).await.expect("read").expect("challenge");
                assert_eq!(ch.status, "invalid");
                assert_eq!(ch.error.as_deref(), Some(spend.error_if_used.as_str()), "{url}");
            }
        }
        assert_eq!(winners.len(), 1, "exactly one order spends the token: {winners:?} ({url})");
        assert_eq!(store.check_join_token(&digest, &id, now).await.expect("check"), Err(JoinTokenError::Used));
    }
}
