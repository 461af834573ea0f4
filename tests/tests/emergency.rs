//! Emergency intermediate rotation with 1,000 simulated workloads: every one re-issues under the
//! new intermediate, spread over the renewal window instead of all at once, the CA measures how
//! long the fleet took, and the root CRL revoking the old intermediate is published only once the
//! whole fleet has renewed (fleet-gated enforcement), within the settle margin of the last renewal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use x509_parser::prelude::FromDer;

use ca::{IssuerKind, IssuerState};
use tests::workload::{TD, WorkloadCa, authority_key_id};
use workload_agent::agent::ca_client::CaClient;
use workload_agent::agent::{cert, enroll, schedule};

const WORKLOADS: usize = 1000;

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).expect("milliseconds fit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_reissues_a_thousand_workloads_with_jitter() {
    let ca = WorkloadCa::start_with("", "[rotation]\nenabled = false\ncheck_interval = \"1s\"\n").expect("CA");

    // 1,000 workload certificates, issued directly by the CA core against the same database (the
    // operator path), so the test spends its time on the emergency, not on enrollment.
    let data = ca.dir.path().join("data");
    let store = ca::Store::open(&format!("sqlite://{}", data.join("lanyard.db").display())).await.expect("store");
    let pass = ca::Passphrase::new(std::fs::read_to_string(data.join("dev-passphrase")).expect("pass")).expect("p");
    let mut policy = ca::Policy::default();
    policy.trust_domain = TD.into();
    policy.backdate = Duration::from_secs(5);
    policy.workload = ca::LifetimePolicy { default: Duration::from_secs(60), max: Duration::from_secs(60) };
    let authority = Arc::new(ca::Authority::load(store.clone(), policy, &pass).await.expect("authority"));
    let mut fleet = Vec::with_capacity(WORKLOADS);
    let mut pending = Vec::new();
    for i in 0..WORKLOADS {
        let authority = authority.clone();
        pending.push(tokio::spawn(async move {
            let id = format!("spiffe://{TD}/fleet/w{i}");
            let (key, csr) = enroll::new_key_and_csr(&id).expect("csr");
            let issued = authority
                .issue(ca::IssueRequest {
                    csr: &csr,
                    profile: ca::Profile::Workload,
                    requester: "operator",
                    lifetime: None,
                    authorized: None,
                })
                .await
                .expect("issue");
            let mut chain = vec![rustls::pki_types::CertificateDer::from(issued.der.clone())];
            chain.extend(issued.chain_der.iter().map(|d| rustls::pki_types::CertificateDer::from(d.clone())));
            workload_agent::Svid {
                spiffe_id: id,
                chain,
                key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
                not_after: issued.not_after.unix_timestamp(),
                not_before: issued.not_before.unix_timestamp(),
            }
        }));
    }
    for p in pending {
        fleet.push(p.await.expect("task"));
    }
    let old_ski = authority.active_issuer().expect("active").record.ski.clone();

    let client = CaClient::new(&ca.url(), &ca.fingerprint().expect("fp"), TD, Duration::from_secs(20));
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;

    // Light clients: poll renewalInfo every 5 s (first poll at a random offset), and when the CA
    // suggests a window, renew at a uniformly random moment inside it, as lanyard-agent does.
    let renewed: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let mut clients = Vec::new();
    for (i, svid) in fleet.into_iter().enumerate() {
        let (client, bundle, renewed) = (client.clone(), bundle.clone(), renewed.clone());
        clients.push(tokio::spawn(async move {
            let ari = cert::leaf_info(svid.chain[0].as_ref()).expect("leaf").ari_id.expect("ari id");
            tokio::time::sleep(Duration::from_millis((i as u64 * 4999) % 5000)).await;
            loop {
                if let Ok((start, end)) = client.renewal_info(&bundle, &ari).await
                    && start < svid.not_after - 30
                {
                    let now = now_ms() / 1000;
                    let unit = ((i as u64).wrapping_mul(2654435761) % 1000) as f64 / 1000.0;
                    let at = schedule::pick_in_window(start.max(now), end, unit);
                    if i % 100 == 0 {
                        eprintln!("w{i}: window [{start}, {end}], now {now}, renewing at {at}");
                    }
                    tokio::time::sleep(Duration::from_secs(u64::try_from(at - now).unwrap_or(0))).await;
                    for _ in 0..5 {
                        let (_, csr) = enroll::new_key_and_csr(&svid.spiffe_id).expect("csr");
                        match client.renew(&bundle, &svid, csr).await {
                            Ok(chain) => {
                                renewed.lock().expect("lock").push((now_ms(), authority_key_id(chain[0].as_ref())));
                                return;
                            }
                            Err(e) => {
                                eprintln!("w{i}: renewal failed, retrying: {e}");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    panic!("w{i} could not renew");
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }

    // Let the fleet settle into its polling, then the emergency.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Watch the root CRL in the database the servers serve it from: when does it first list an
    // intermediate?
    let root_id = ca
        .journal()
        .await
        .expect("journal")
        .iter()
        .find(|r| r.kind == IssuerKind::Root && r.state == IssuerState::Active)
        .expect("root")
        .id
        .clone();
    let first_listed: Arc<Mutex<Option<i64>>> = Arc::default();
    let watcher = {
        let (store, first_listed) = (store.clone(), first_listed.clone());
        tokio::spawn(async move {
            loop {
                if let Some(crl) = store.latest_crl(&root_id).await.expect("root CRL") {
                    let (_, parsed) =
                        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.der).expect("CRL");
                    if parsed.iter_revoked_certificates().count() > 0 {
                        *first_listed.lock().expect("lock") = Some(now_ms());
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let t0 = now_ms();
    eprintln!("emergency command at {}", t0 / 1000);
    let out = ca.cli(&["rotate", "intermediate", "--emergency", "--window", "20s"]).expect("emergency rotation");
    assert!(out.contains(&format!("{} certificates asked to renew", WORKLOADS + 1)), "{out}");
    let journal = ca.journal().await.expect("journal");
    let active =
        journal.iter().find(|r| r.kind == IssuerKind::Intermediate && r.state == IssuerState::Active).expect("a");
    assert_ne!(active.ski, old_ski);

    for c in clients {
        tokio::time::timeout(Duration::from_secs(90), c).await.expect("fleet renewed in time").expect("client");
    }
    let renewed = renewed.lock().expect("lock").clone();
    assert_eq!(renewed.len(), WORKLOADS);
    assert!(renewed.iter().all(|(_, aki)| *aki == active.ski), "every workload re-issued under the new intermediate");
    let last = renewed.iter().map(|(t, _)| *t).max().expect("max");
    let first = renewed.iter().map(|(t, _)| *t).min().expect("min");

    // Jitter: renewals spread across the window instead of arriving together.
    let mut per_second = std::collections::BTreeMap::<i64, usize>::new();
    for (t, _) in &renewed {
        *per_second.entry((t - t0) / 1000).or_default() += 1;
    }
    let peak = per_second.values().copied().max().unwrap_or(0);
    println!(
        "emergency rotation: {WORKLOADS} workloads re-issued; first {:.1} s, last {:.1} s after the command; peak {peak}/s; per second: {:?}",
        (first - t0) as f64 / 1000.0,
        (last - t0) as f64 / 1000.0,
        per_second
    );
    assert!(last - first >= 10_000, "renewals spread over at least 10 s of the 20 s window");

    // Fleet-gated revocation: not published before the last renewal, and within the settle margin
    // (3 s) plus a loop tick after it; the planned time (window end + settle) is the latest.
    tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("revocation published").expect("watcher");
    let listed = first_listed.lock().expect("lock").expect("listed");
    println!(
        "emergency rotation: revocation published {:.1} s after the command, {:.1} s after the last renewal",
        (listed - t0) as f64 / 1000.0,
        (listed - last) as f64 / 1000.0
    );
    assert!(listed >= last, "the revocation was published before the fleet had renewed");
    assert!(listed - last <= 3_000 + 3_500, "published {} ms after the last renewal", listed - last);
    assert!(listed - t0 <= (2 + 20 + 3 + 2) * 1000, "published later than planned (window end + settle)");
    assert!(peak <= WORKLOADS / 5, "no second carries more than a fifth of the fleet (peak {peak})");

    // The CA measured it too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = ca.metrics().await.expect("metrics");
        let outstanding = m.lines().find(|l| l.starts_with("lanyard_emergency_rotation_outstanding_certificates{"));
        if outstanding.is_some_and(|l| l.ends_with(" 0")) {
            let dur = m
                .lines()
                .find(|l| l.starts_with("lanyard_emergency_rotation_duration_seconds{"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<i64>().ok())
                .expect("duration");
            println!("CA-measured emergency duration: {dur} s");
            assert!(dur > 0 && dur <= (last - t0) / 1000 + 3, "{dur}");
            assert!(m.contains("lanyard_certificates_valid_under_retired_issuer{"), "{m}");
            assert!(m.contains("lanyard_rotations_total{kind=\"emergency\"} 1"), "{m}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the CA never saw the emergency complete:\n{m}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
