//! The audit hash chain (issue 15): every audit event is chained as it is written, whichever path
//! writes it (operator changes, ACME and enrollment state, revocations, issuer moves, the
//! group-commit writer's batches), in the transaction of its change, so that `audit_verify`
//! finds an edited, deleted, swapped or slipped-in event at the right position; a change that
//! rolls back leaves no gap; and concurrent writers (two store handles, as two replicas or a
//! server and an operator command would be) build one chain. SQLite and PostgreSQL.

mod common;

use ca::store::audit_log::{AuditFilter, AuditRecord, VerifyReport};
use ca::store::workload::{JoinToken, join_token_digest};
use ca::{AuditEvent, IssueRequest, IssuerState, Outcome, Profile, SpiffeId, Store};
use common::*;

fn ev(actor: &str, action: &str, target: &str, detail: &str) -> AuditEvent {
    AuditEvent::now(actor, action, target, Outcome::Success, detail)
}

async fn all(store: &Store) -> Vec<AuditRecord> {
    store.audit_query(&AuditFilter::default()).await.expect("audit query")
}

async fn verify(store: &Store) -> VerifyReport {
    store.audit_verify().await.expect("verify")
}

fn int(n: usize) -> i64 {
    i64::try_from(n).expect("small")
}

/// Asserts an intact chain of exactly `n` events, positions 1..=n.
async fn assert_intact(store: &Store, n: usize, ctx: &str) {
    let r = verify(store).await;
    assert_eq!(r.first_break, None, "{ctx}");
    assert_eq!(r.checked, u64::try_from(n).expect("small"), "{ctx}");
    assert_eq!(r.head_seq, int(n), "{ctx}");
    let seqs: Vec<_> = all(store).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=int(n)).map(Some).collect::<Vec<_>>(), "{ctx}");
}

/// The first break's position and reason.
async fn first_break(store: &Store, ctx: &str) -> (Option<i64>, String) {
    let b = verify(store).await.first_break.unwrap_or_else(|| panic!("{ctx}: the chain should be broken"));
    (b.seq, b.reason)
}

/// Events from every kind of write, then tampering from outside: each is found at its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_is_chained_and_tampering_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        // ca.init through insert_issuers.
        let (auth, material) = authority(&url, audit_policy()).await;
        let store = auth.store().clone();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // EAB key, then an account bound to it (SQLite: a write job on the writer thread).
        store
            .acme_create_eab_key(&eab_key("kid-1"), now, &ev("operator", "eab.create", "kid-1", ""))
            .await
            .expect("eab");
        store
            .acme_create_account(&account("a1", Some("kid-1")), &ev("acme:a1", "account.create", "a1", ""))
            .await
            .expect("acct");
        // Join token.
        let token = JoinToken {
            spiffe_id: SpiffeId::parse("spiffe://example.org/web").expect("id"),
            is_prefix: false,
            expires_at: now + 600,
        };
        let digest = join_token_digest("lanyard-jt-chain");
        store
            .create_join_token(&digest, &token, now, &ev("operator", "join_token.create", "web", ""))
            .await
            .expect("token");
        // An issuance (its record is not a chained event) and its revocation.
        let csr = csr(&p256(), &[San::Uri("spiffe://example.org/w")], None);
        let req =
            IssueRequest { csr: &csr, profile: Profile::Workload, requester: "test", lifetime: None, authorized: None };
        let serial = auth.issue(req).await.expect("issue").serial.to_hex();
        assert!(store.revoke(&serial, 1, time::OffsetDateTime::now_utc(), "operator").await.expect("revoke").revoked);
        // Group-committed events from many callers at once: one batch or several.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..24 {
            let s = store.clone();
            let detail = match i {
                0 => "rotation r-1: successor prepared".to_owned(),
                1 => "root CRL number 3 published: emergency rotation r-1 enforced".to_owned(),
                2 => "rotation r-10: successor prepared".to_owned(),
                _ => format!("batch {i}"),
            };
            set.spawn(async move { s.append_audit(ev("ca", "batch.event", &format!("t{i}"), &detail)).await });
        }
        while let Some(r) = set.join_next().await {
            r.expect("join").expect("append");
        }
        // An issuer journal move.
        let at = time::OffsetDateTime::now_utc();
        let moved = store
            .transition_issuer(
                &material.intermediate.id,
                IssuerState::Active,
                IssuerState::Retired,
                at,
                &ev("operator", "issuer.retire", &material.intermediate.id, ""),
            )
            .await
            .expect("move");
        assert!(moved);

        let events = all(&store).await;
        let n = events.len();
        assert!(n >= 30, "{url}: {n} events");
        for action in
            ["ca.init", "eab.create", "account.create", "join_token.create", "certificate.revoke", "issuer.retire"]
        {
            assert!(events.iter().any(|e| e.action == action), "{url}: no {action} in {events:?}");
        }
        assert!(events.iter().all(|e| e.action != "certificate.issue"), "issuance records are not chained");
        assert_intact(&store, n, &url).await;
        assert_eq!(events[0].prev_digest.as_deref(), Some(ca::store::audit_log::GENESIS));
        for w in events.windows(2) {
            assert_eq!(w[1].prev_digest, w[0].digest, "{url}");
        }

        // Filters.
        let q = |f: AuditFilter| {
            let s = store.clone();
            async move { s.audit_query(&f).await.expect("query") }
        };
        let by_kind = q(AuditFilter { action: Some("batch.event".into()), ..Default::default() }).await;
        assert_eq!(by_kind.len(), 24, "{url}");
        let by_actor = q(AuditFilter { actor: Some("operator".into()), ..Default::default() }).await;
        assert!(by_actor.iter().all(|e| e.actor == "operator") && by_actor.len() >= 4, "{url}: {by_actor:?}");
        let rot = q(AuditFilter { rotation: Some("r-1".into()), ..Default::default() }).await;
        let mut details: Vec<_> = rot.iter().map(|e| e.detail.as_str()).collect();
        details.sort_unstable();
        assert_eq!(
            details,
            ["root CRL number 3 published: emergency rotation r-1 enforced", "rotation r-1: successor prepared"],
            "{url}: r-1 and not r-10"
        );
        let last3 = q(AuditFilter { limit: Some(3), ..Default::default() }).await;
        assert_eq!(last3.iter().map(|e| e.seq).collect::<Vec<_>>(), [int(n) - 2, int(n) - 1, int(n)].map(Some));
        let after = q(AuditFilter { after_seq: Some(int(n) - 1), ..Default::default() }).await;
        assert_eq!(after.len(), 1);
        let future = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        assert!(q(AuditFilter { since: Some(future), ..Default::default() }).await.is_empty());
        assert_eq!(q(AuditFilter { until: Some(future), ..Default::default() }).await.len(), n);

        // 1. An edited event: found at its own position; undone, intact again.
        let third = &events[2];
        tamper(&url, "UPDATE audit_events SET detail = 'nothing to see' WHERE seq = 3").await;
        let (seq, why) = first_break(&store, &url).await;
        assert_eq!(seq, Some(3), "{url}: {why}");
        assert!(why.contains("altered"), "{why}");
        tamper(&url, &format!("UPDATE audit_events SET detail = '{}' WHERE seq = 3", third.detail)).await;
        assert_intact(&store, n, &url).await;
        // Editing the digest too does not help: the next event's link gives it away.
        let fake = "ab".repeat(32);
        tamper(&url, &format!("UPDATE audit_events SET detail = 'x', digest = '{fake}' WHERE seq = 3")).await;
        let (seq, why) = first_break(&store, &url).await;
        assert_eq!(seq, Some(3), "{url}: {why}");
        tamper(
            &url,
            &format!(
                "UPDATE audit_events SET detail = '{}', digest = '{}' WHERE seq = 3",
                third.detail,
                third.digest.as_deref().expect("digest")
            ),
        )
        .await;
        assert_intact(&store, n, &url).await;

        // 2. A deleted event in the middle: the gap is named.
        let fifth = &events[4];
        tamper(&url, "DELETE FROM audit_events WHERE seq = 5").await;
        let (seq, why) = first_break(&store, &url).await;
        assert_eq!(seq, Some(5), "{url}: {why}");
        assert!(why.contains("missing"), "{why}");
        tamper(&url, &reinsert(fifth)).await;
        assert_intact(&store, n, &url).await;

        // 3. Two events swapped (positions exchanged): found at the first of them.
        tamper(
            &url,
            "UPDATE audit_events SET seq = -1 WHERE seq = 7; UPDATE audit_events SET seq = 7 WHERE seq = 9; \
             UPDATE audit_events SET seq = 9 WHERE seq = -1",
        )
        .await;
        let (seq, why) = first_break(&store, &url).await;
        assert_eq!(seq, Some(7), "{url}: {why}");
        tamper(
            &url,
            "UPDATE audit_events SET seq = -1 WHERE seq = 7; UPDATE audit_events SET seq = 7 WHERE seq = 9; \
             UPDATE audit_events SET seq = 9 WHERE seq = -1",
        )
        .await;
        assert_intact(&store, n, &url).await;

        // 4. The newest event deleted (the head still names it).
        let last = &events[n - 1];
        tamper(&url, &format!("DELETE FROM audit_events WHERE seq = {n}")).await;
        let (seq, why) = first_break(&store, &url).await;
        assert_eq!(seq, Some(int(n)), "{url}: {why}");
        tamper(&url, &reinsert(last)).await;
        assert_intact(&store, n, &url).await;

        // 5. An event slipped in without a place in the chain.
        tamper(
            &url,
            &format!(
                "INSERT INTO audit_events (id, at, actor, action, target, outcome, detail) \
                 VALUES ('zz-forged', {}, 'operator', 'eab.create', 'kid-x', 'success', '')",
                now + 5
            ),
        )
        .await;
        let (seq, why) = first_break(&store, &url).await;
        assert_eq!(seq, None, "{url}: {why}");
        assert!(why.contains("zz-forged"), "{why}");
        tamper(&url, "DELETE FROM audit_events WHERE id = 'zz-forged'").await;
        assert_intact(&store, n, &url).await;

        // 6. The chain goes on after all this, from the head.
        store.append_audit(ev("ca", "after", "x", "")).await.expect("append");
        assert_intact(&store, n + 1, &url).await;
        store.close().await;
    }
}

/// The INSERT that puts `e` back as it was.
fn reinsert(e: &AuditRecord) -> String {
    format!(
        "INSERT INTO audit_events (id, at, actor, action, target, outcome, detail, seq, prev_digest, digest) \
         VALUES ('{}', {}, '{}', '{}', '{}', '{}', '{}', {}, '{}', '{}')",
        e.id,
        e.at.unix_timestamp(),
        e.actor,
        e.action,
        e.target,
        e.outcome,
        e.detail,
        e.seq.expect("seq"),
        e.prev_digest.as_deref().expect("prev"),
        e.digest.as_deref().expect("digest")
    )
}

/// Changes whose events could not be written, a guard that fails after its event was inserted,
/// and a job that fails inside a batch of good ones: none leaves a gap or a fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_changes_leave_no_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, material) = authority(&url, audit_policy()).await;
        let store = auth.store().clone();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        store
            .acme_create_eab_key(&eab_key("kid-1"), now, &ev("operator", "eab.create", "kid-1", ""))
            .await
            .expect("eab");

        // ca.init, key.load (the authority loaded its key), eab.create.
        let base = all(&store).await.len();
        assert!(base >= 2, "{url}");

        break_audit(&url).await;
        store
            .acme_create_eab_key(&eab_key("kid-2"), now, &ev("operator", "eab.create", "kid-2", ""))
            .await
            .expect_err("broken");
        store.append_audit(ev("ca", "lost", "x", "")).await.expect_err("broken");
        restore_audit(&url).await;
        assert_intact(&store, base, &url).await;

        // A guarded move whose guard fails (the root is not prepared): nothing, no event.
        let at = time::OffsetDateTime::now_utc();
        let moved = store
            .transition_issuer(
                &material.root.id,
                IssuerState::Prepared,
                IssuerState::Active,
                at,
                &ev("operator", "issuer.activate", "r", ""),
            )
            .await
            .expect("move");
        assert!(!moved);

        // In one batch: good events, and an account creation that fails after its insert (its EAB
        // key is bound already) and must take its chain position back with it.
        store
            .acme_create_account(&account("a1", Some("kid-1")), &ev("acme:a1", "account.create", "a1", ""))
            .await
            .expect("a1");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16 {
            let s = store.clone();
            set.spawn(async move {
                if i % 4 == 0 {
                    let id = format!("b{i}");
                    s.acme_create_account(&account(&id, Some("kid-1")), &ev("acme:b", "account.create", &id, ""))
                        .await
                        .map(|_| ())
                        .expect_err("the key is bound already");
                } else {
                    s.append_audit(ev("ca", "good", &format!("g{i}"), "")).await.expect("append");
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("join");
        }
        assert_intact(&store, base + 1 + 12, &url).await;

        // A batch that fails as a whole (a serial used twice) after write jobs in it had chained
        // their events: rolled back, retried job by job; the chain has each good event once.
        let intent = |serial: &str| ca::store::CertificateIntent {
            serial: serial.to_owned(),
            issuer_id: material.intermediate.id.clone(),
            profile: "workload".into(),
            requester: "test".into(),
            subject: String::new(),
            sans: String::new(),
            key_fingerprint: "00".into(),
            not_before: at,
            not_after: at + time::Duration::hours(1),
            renewed_from: None,
        };
        store.record_intent(intent("0a0a")).await.expect("intent");
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (s, dup) = (store.clone(), intent("0a0a"));
            set.spawn(async move {
                match i % 4 {
                    0 => assert!(s.record_intent(dup).await.is_err(), "serial reused"),
                    1 => {
                        let kid = format!("kid-b{i}");
                        s.acme_create_eab_key(&eab_key(&kid), now, &ev("operator", "eab.create", &kid, ""))
                            .await
                            .expect("eab");
                    }
                    _ => s.append_audit(ev("ca", "good", &format!("h{i}"), "")).await.expect("append"),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("join");
        }
        assert_intact(&store, base + 13 + 12, &url).await;
        store.close().await;
    }
}

/// Two store handles on one database (two replicas on PostgreSQL; on SQLite two writers, as a
/// server and `lanyard-ca` commands are) writing at once: one chain, no gap, no fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_build_one_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let a = Store::open(&url).await.expect("open a");
        let b = Store::open(&url).await.expect("open b");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut set = tokio::task::JoinSet::new();
        for (h, store) in [("a", a.clone()), ("b", b.clone())] {
            for i in 0..40 {
                let s = store.clone();
                set.spawn(async move {
                    if i % 5 == 0 {
                        let kid = format!("{h}-{i}");
                        s.acme_create_eab_key(&eab_key(&kid), now, &ev("operator", "eab.create", &kid, "")).await
                    } else {
                        s.append_audit(ev(h, "concurrent", &format!("{h}{i}"), "")).await
                    }
                });
            }
        }
        while let Some(r) = set.join_next().await {
            r.expect("join").expect("write");
        }
        assert_intact(&a, 80, &url).await;
        assert_intact(&b, 80, &url).await;
        a.close().await;
        b.close().await;
    }
}
