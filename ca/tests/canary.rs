//! Canary activation in the CA core, on SQLite and PostgreSQL: the successor signs only for the
//! canaries' SPIFFE IDs, the journal change of each decision commits with its audit events or not
//! at all, a rollback retires the successor and asks its certificates to renew, and the next
//! scheduled attempt waits.

mod common;

use std::time::Duration;

use ca::rotation::canary::{self, CanaryDecision, CanaryPolicy, CanarySpec};
use ca::rotation::{RotationKeys, prepare_intermediate};
use ca::store::canary::CanaryState;
use ca::{Authority, InitOptions, IssueRequest, IssuerState, Profile};
use common::*;

async fn issue(auth: &Authority, id: &str) -> String {
    let csr = csr(&p256(), &[San::Uri(id)], None);
    let req =
        IssueRequest { csr: &csr, profile: Profile::Workload, requester: "test", lifetime: None, authorized: None };
    auth.issue(req).await.expect("issue").issuer_id
}

fn state(journal: &[ca::IssuerRecord], id: &str) -> Option<IssuerState> {
    journal.iter().find(|r| r.id == id).map(|r| r.state)
}

/// A CA in the store at `url`, its root key written to `dir` for rotations.
async fn ca_with_root_key(url: &str, dir: &std::path::Path) -> (Authority, ca::Store, RotationKeys, ca::CaMaterial) {
    let (auth, material) = authority(url, audit_policy()).await;
    let store = auth.store().clone();
    let root_key = dir.join("root.key.pem");
    std::fs::write(&root_key, material.root_key_pem_enc.as_deref().expect("root key")).expect("write key");
    let keys = RotationKeys { pass: pass(), root_key_path: root_key, init: InitOptions::default() };
    (auth, store, keys, material)
}

#[tokio::test]
async fn canary_signs_for_canaries_only_and_rolls_back_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, store, keys, material) = ca_with_root_key(&url, dir.path()).await;
        let previous = material.intermediate.id.clone();
        assert_eq!(issue(&auth, "spiffe://example.org/canary/a").await, previous);
        assert_eq!(issue(&auth, "spiffe://example.org/web/b").await, previous);
        let successor = prepare_intermediate(&store, &keys, "r1").await.expect("prepare").id;

        let spec = CanarySpec {
            prefix: Some("spiffe://example.org/canary/".into()),
            fraction: 0.0,
            soak: Duration::from_secs(600),
        };
        let (c, asked) = canary::begin(&store, &spec, Duration::from_secs(5), "r1", "test").await.expect("begin");
        assert_eq!(asked, 1, "{url}: only the canary's live certificate is asked to renew");
        assert_eq!(c.state, CanaryState::Soaking);
        let again = canary::begin(&store, &spec, Duration::from_secs(5), "r2", "test").await;
        assert!(again.is_err(), "{url}: a second canary while one soaks");

        // Every replica picks the successor up; it signs for the canaries only.
        auth.refresh_active(&pass()).await.expect("refresh");
        assert_eq!(issue(&auth, "spiffe://example.org/canary/a").await, successor, "{url}");
        assert_eq!(issue(&auth, "spiffe://example.org/web/b").await, previous, "{url}");
        assert_eq!(auth.fleet().tally("r1").map(|t| (t.signed, t.failed)), Some((1, 0)));

        // A rollback whose audit event cannot be written changes nothing.
        break_audit(&url).await;
        assert!(canary::rollback(&store, Duration::from_secs(5), "test").await.is_err(), "{url}");
        restore_audit(&url).await;
        let journal = store.issuers().await.expect("journal");
        assert_eq!(state(&journal, &successor), Some(IssuerState::Prepared), "{url}");
        assert_eq!(store.canaries().await.expect("canaries")[0].state, CanaryState::Soaking, "{url}");

        // The real one: the successor is retired and its certificate asked to renew.
        let before = events(&store, "rotation.rollback").await;
        let d = canary::rollback(&store, Duration::from_secs(5), "test").await.expect("rollback");
        let CanaryDecision::RolledBack { affected, .. } = d else { panic!("{url}: {d:?}") };
        assert_eq!(affected, 1, "{url}");
        assert_eq!(events(&store, "rotation.rollback").await, before + 1);
        let journal = store.issuers().await.expect("journal");
        assert_eq!(state(&journal, &successor), Some(IssuerState::Retired), "{url}");
        assert_eq!(state(&journal, &previous), Some(IssuerState::Active), "{url}");
        auth.refresh_active(&pass()).await.expect("refresh");
        assert_eq!(issue(&auth, "spiffe://example.org/canary/a").await, previous, "{url}: the successor signs no more");

        // Scheduled rotation holds off for retry_after.
        let list = store.canaries().await.expect("canaries");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(canary::holding_after_rollback(&list, &CanaryPolicy::default(), now).is_some(), "{url}");
        assert!(canary::holding_after_rollback(&list, &CanaryPolicy::default(), now + 3601).is_none(), "{url}");
        store.close().await;
    }
}

#[test]
fn judge_weighs_refusals_failures_and_the_soak() {
    use ca::fleet::CanaryTally;
    use ca::rotation::canary::judge;
    let c = ca::store::canary::Canary {
        rotation: "r".into(),
        successor: "s".into(),
        previous: "p".into(),
        prefix: None,
        fraction_ppm: 50_000,
        started_at: 0,
        soak_until: 100,
        state: CanaryState::Soaking,
        decided_at: None,
        reason: None,
    };
    let p = CanaryPolicy::default();
    let s = |accepted, refused, failed| CanaryTally { accepted, refused, failed, signed: 0 };
    assert_eq!(judge(&c, &p, &s(1000, 0, 0), 50), Ok(None), "clean and soaking");
    assert_eq!(judge(&c, &p, &s(1000, 2, 0), 50), Ok(None), "below min_refused");
    assert_eq!(judge(&c, &p, &s(1000, 10, 0), 50), Ok(None), "1 % is not above 1 %");
    assert!(judge(&c, &p, &s(1000, 11, 0), 50).is_err(), "above the ratio");
    assert!(judge(&c, &p, &s(0, 3, 0), 50).is_err(), "refusals with nothing accepted");
    assert!(judge(&c, &p, &s(1000, 0, 1), 50).is_err(), "a failed canary renewal");
    assert!(judge(&c, &p, &s(1000, 0, 0), 100).is_ok_and(|v| v.is_some()), "soak passed");
    assert!(judge(&c, &p, &s(1000, 50, 0), 100).is_err(), "refusals beat the soak's end");
    // The share is stable per SPIFFE ID and close to the fraction.
    let picked = (0..10_000).filter(|i| c.selects(&format!("spiffe://example.org/w/{i}"))).count();
    assert!((400..600).contains(&picked), "5 % of 10,000 picked {picked}");
    assert!(c.selects("spiffe://example.org/w/7") == c.selects("spiffe://example.org/w/7"));
}

/// Two replicas' fleet views exchanged through one database: each sees the workloads that only
/// reported to the other, a newer report wins over an older one, and canary tallies and failures
/// add up across replicas.
#[tokio::test]
async fn replicas_share_the_fleet_view() {
    use ca::fleet::{Fleet, FleetPolicy, RefusalReason, TrustReport};
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let store = ca::Store::open(&url).await.expect("store");
        let policy = FleetPolicy { warmup: Duration::ZERO, ..FleetPolicy::default() };
        let (a, b) = (Fleet::new(policy.clone()), Fleet::new(policy));
        for f in [&a, &b] {
            f.enable_sharing();
            f.start_tally("r1");
        }
        let now = time::OffsetDateTime::now_utc();
        let report = |seq: u64, accepted: u64, refused: u64| TrustReport {
            bundle_sequence: seq,
            serving_issuer: Some("ab".repeat(32)),
            accepted,
            refused: [(RefusalReason::UnknownIssuer, refused)].into_iter().collect(),
            fetch_latency: None,
        };
        assert!(a.record("spiffe://example.org/w1", "01", &report(1, 10, 0), now));
        assert!(b.record("spiffe://example.org/w2", "02", &report(2, 5, 4), now));
        b.count_canary_signing("r1", false);
        let (va, vb) = (0, 0);
        let va = ca::fleet::exchange(&store, &a, va, now).await.expect("exchange a");
        let vb = ca::fleet::exchange(&store, &b, vb, now).await.expect("exchange b");
        let va = ca::fleet::exchange(&store, &a, va, now).await.expect("exchange a again");
        for (name, f) in [("a", &a), ("b", &b)] {
            assert_eq!(f.convergence(1, now).live, 2, "{url}: replica {name} sees both workloads");
            assert_eq!(f.convergence(2, now).confirmed, 1, "{url}: replica {name}");
        }
        assert_eq!(
            a.tally("r1").map(|t| (t.accepted, t.refused)),
            Some((15, 4)),
            "{url}: tallies add up across replicas"
        );
        assert_eq!(a.tally("r1").map(|t| t.failed), Some(1), "{url}: replica b's failed canary renewal is seen by a");
        // A newer report on b replaces the older one everywhere; an older one changes nothing.
        let later = now + time::Duration::seconds(5);
        assert!(b.record("spiffe://example.org/w1", "03", &report(3, 0, 0), later));
        let vb = ca::fleet::exchange(&store, &b, vb, later).await.expect("exchange b");
        ca::fleet::exchange(&store, &a, va, later).await.expect("exchange a");
        assert_eq!(a.latest("spiffe://example.org/w1").map(|l| (l.0, l.2)), Some(("03".into(), 3)), "{url}");
        // An exchange that brings back an older row (b's first w1 report was never written, but
        // a's was) leaves b's newer one in place.
        ca::fleet::exchange(&store, &b, 0, later).await.expect("exchange b from the start");
        assert_eq!(b.latest("spiffe://example.org/w1").map(|l| l.0), Some("03".into()), "{url}");
        assert!(vb > 0);
        store.close().await;
    }
}

/// An emergency rotation during a canary discards the successor on trial; the next check ends
/// the canary instead of waiting on it forever, and the successor's holders are asked to renew.
#[tokio::test]
async fn an_emergency_during_a_canary_ends_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, store, keys, _) = ca_with_root_key(&url, dir.path()).await;
        issue(&auth, "spiffe://example.org/canary/a").await;
        prepare_intermediate(&store, &keys, "r1").await.expect("prepare");
        let spec =
            CanarySpec { prefix: Some("spiffe://example.org/".into()), fraction: 0.0, soak: Duration::from_secs(600) };
        let (c, _) = canary::begin(&store, &spec, Duration::from_secs(5), "r1", "test").await.expect("begin");
        auth.refresh_active(&pass()).await.expect("refresh");
        assert_eq!(issue(&auth, "spiffe://example.org/canary/a").await, c.successor);
        ca::rotation::emergency_rotate(
            &store,
            &keys,
            Duration::from_secs(1),
            Duration::from_secs(5),
            ca::rotation::Enforcement::Now,
        )
        .await
        .expect("emergency");
        let fleet = ca::fleet::Fleet::new(ca::fleet::FleetPolicy::default());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let d = canary::tick(&store, &fleet, &CanaryPolicy::default(), now).await.expect("tick");
        let CanaryDecision::RolledBack { reason, affected, .. } = d else { panic!("{url}: {d:?}") };
        assert!(reason.contains("journal moved on"), "{url}: {reason}");
        assert_eq!(affected, 1, "{url}: the canary's certificate under the discarded successor renews");
        assert!(canary::soaking(&store).await.expect("soaking").is_none(), "{url}");
        store.close().await;
    }
}

/// Bad canary input gets a clear error and changes nothing: no prefix and no share, a share
/// outside [0, 1], no prepared successor; and the policy refuses a prefix that is no SPIFFE ID.
#[tokio::test]
async fn bad_canary_requests_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (_auth, store, keys, _) = ca_with_root_key(&url, dir.path()).await;
        let spec = |prefix: Option<&str>, fraction| CanarySpec {
            prefix: prefix.map(str::to_owned),
            fraction,
            soak: Duration::from_secs(60),
        };
        let journal = store.issuers().await.expect("journal");
        let e = canary::begin(&store, &spec(Some("spiffe://example.org/"), 0.0), Duration::from_secs(5), "r", "t")
            .await
            .expect_err("no prepared successor");
        assert!(e.to_string().contains("no prepared intermediate"), "{url}: {e}");
        prepare_intermediate(&store, &keys, "r1").await.expect("prepare");
        let journal_prepared = store.issuers().await.expect("journal");
        assert_eq!(journal_prepared.len(), journal.len() + 1);
        for (bad, why) in [(spec(None, 0.0), "prefix or a fraction"), (spec(None, 1.5), "fraction must be in [0, 1]")] {
            let e = canary::begin(&store, &bad, Duration::from_secs(5), "r", "t").await.expect_err("refused");
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
        assert!(store.canaries().await.expect("canaries").is_empty(), "{url}: nothing recorded");
        assert_eq!(store.issuers().await.expect("journal"), journal_prepared, "{url}: the journal is unchanged");
        let rollback = canary::rollback(&store, Duration::from_secs(5), "t").await.expect_err("nothing to roll back");
        assert!(rollback.to_string().contains("nothing to roll back"), "{url}: {rollback}");
        store.close().await;
    }
    let bad = CanaryPolicy { prefix: Some("example.org/canary".into()), ..CanaryPolicy::default() };
    assert!(bad.validate().is_err());
    let bad = CanaryPolicy { fraction: -0.1, ..CanaryPolicy::default() };
    assert!(bad.validate().is_err());
    let bad = CanaryPolicy { soak: Duration::ZERO, fraction: 0.1, ..CanaryPolicy::default() };
    assert!(bad.validate().is_err());
    assert!(CanaryPolicy { fraction: 0.05, ..CanaryPolicy::default() }.validate().is_ok());
}
