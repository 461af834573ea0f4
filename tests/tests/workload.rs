//! Workload identity end to end: `lanyard-ca` issuing 60-second workload certificates, the real
//! `lanyard-agent` renewing them (files + reload signal + SPIFFE Workload API), two in-process
//! services doing mTLS across renewals, a CA outage, and every refusal path.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::workload::{JWT_AUDIENCE, JWT_ISSUER, JwtIssuer, TD, WorkloadCa, leaf_serial, mtls_loop, wait_for_file};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use workload_agent::agent::ca_client::{CaClient, RenewError};
use workload_agent::agent::enroll::{self, EnrollError, Proof};
use workload_agent::agent::http;
use workload_agent::tls::Authorizer;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The real agent binary: enrollment with a join token, at least 5 renewals of 60 s certificates,
/// each followed by atomically written files and a SIGHUP to the consumer, and each visible to a
/// SPIFFE Workload API client (the `spiffe` crate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_files_signals_and_workload_api() {
    let ca = WorkloadCa::start().expect("CA");
    let id = format!("spiffe://{TD}/web");
    let token = ca.token(&id, &[]).expect("token");
    let work = tempfile::tempdir().expect("tmp");
    let out = work.path().join("out");
    let seen = work.path().join("seen");
    std::fs::create_dir_all(&seen).expect("mkdir");

    // The file consumer: copies cert.pem aside on every SIGHUP, as a service reloading would.
    let script = format!(
        "trap 'cp {out}/cert.pem {seen}/$(date +%s%N).pem' HUP; echo ready; while :; do sleep 0.1; done",
        out = out.display(),
        seen = seen.display()
    );
    let mut consumer = Command::new("sh").arg("-c").arg(&script).stdout(Stdio::piped()).spawn().expect("sh");
    let mut line = String::new();
    std::io::BufReader::new(consumer.stdout.take().expect("stdout")).read_line(&mut line).expect("ready");

    let socket = work.path().join("agent.sock");
    let cfg = format!(
        r#"ca_url = "{url}"
root_fingerprint = "{fp}"
spiffe_id = "{id}"
workload_api_socket = "{socket}"
metrics_listen = "127.0.0.1:0"
[attestation]
join_token_file = "{tokfile}"
[output]
key_file = "{out}/key.pem"
cert_file = "{out}/cert.pem"
bundle_file = "{out}/bundle.pem"
[reload]
signal = "HUP"
pid = {pid}
[renewal]
fraction = 0.2
jitter = 0.02
retry_initial = "500ms"
retry_max = "5s"
"#,
        url = ca.url(),
        fp = ca.fingerprint().expect("fp"),
        socket = socket.display(),
        tokfile = work.path().join("token").display(),
        out = out.display(),
        pid = consumer.id(),
    );
    std::fs::write(work.path().join("token"), &token).expect("token file");
    std::fs::write(work.path().join("agent.toml"), cfg).expect("config");
    let mut agent = Command::new(tests::bin("lanyard-agent"))
        .arg("--config")
        .arg(work.path().join("agent.toml"))
        .env("LANYARD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.path().join("agent.log")).expect("log"))
        .spawn()
        .expect("agent");
    let mut metrics_line = String::new();
    std::io::BufReader::new(agent.stdout.take().expect("stdout")).read_line(&mut metrics_line).expect("line");
    let metrics_addr =
        metrics_line.trim().trim_start_matches("lanyard-agent: metrics on http://").trim_end_matches("/metrics");
    let metrics_addr: std::net::SocketAddr = metrics_addr.parse().expect("metrics address");

    // An independent Workload API client.
    wait_for_file(&socket, Duration::from_secs(30)).await.expect("socket");
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display())).await.expect("connect");
    let api_seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let api_seen2 = api_seen.clone();
    let mut stream = client.stream_x509_svids().await.expect("stream");
    let watcher = tokio::spawn(async move {
        while let Some(svid) = stream.next().await {
            let svid = svid.expect("svid update");
            let leaf = svid.cert_chain()[0].as_ref().to_vec();
            api_seen2.lock().expect("lock").push(leaf);
        }
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    loop {
        let files = std::fs::read_dir(&seen).expect("ls").count();
        let api = api_seen.lock().expect("lock").len();
        if files >= 6 && api >= 6 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 150 s: {files} reloads, {api} Workload API updates; agent log:\n{}",
            std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every reload saw a complete, distinct, valid certificate for the workload.
    let root = std::fs::read_to_string(ca.dir.path().join("data/root.pem")).expect("root");
    let mut serials = BTreeSet::new();
    let mut names: Vec<_> = std::fs::read_dir(&seen).expect("ls").map(|e| e.expect("entry").path()).collect();
    names.sort();
    for p in &names {
        let pem = std::fs::read(p).expect("read");
        let chain = workload_agent::agent::cert::chain_from_pem(&pem).expect("chain");
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        let info = workload_agent::agent::cert::leaf_info(chain[0].as_ref()).expect("leaf");
        assert_eq!(info.spiffe_id, id);
        assert_eq!(info.not_after - info.not_before, 65, "60 s lifetime plus 5 s backdate");
        serials.insert(info.serial);
        let verify = Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile", "/dev/stdin", "-untrusted"])
            .arg(p)
            .arg(p)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(root.as_bytes())?;
                c.wait_with_output()
            })
            .expect("openssl");
        assert!(verify.status.success(), "openssl verify: {}", String::from_utf8_lossy(&verify.stderr));
    }
    assert_eq!(serials.len(), names.len(), "every reload delivered a new certificate");
    let api: BTreeSet<String> = api_seen.lock().expect("lock").iter().map(|d| leaf_serial(d)).collect();
    assert!(api.len() >= 6, "the Workload API streamed each SVID: {api:?}");

    // Key file: 0600, and it belongs to the certificate on disk.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(out.join("key.pem")).expect("key");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key_pem = std::fs::read_to_string(out.join("key.pem")).expect("key");
    let cert_pem = std::fs::read(out.join("cert.pem")).expect("cert");
    let key = rcgen_public_key(&key_pem);
    let chain = workload_agent::agent::cert::chain_from_pem(&cert_pem).expect("chain");
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).expect("leaf");
    assert_eq!(leaf.public_key().raw, key.as_slice(), "key.pem matches cert.pem");

    // Metrics tell the story.
    let text = plain_http_get(metrics_addr, "/metrics").await;
    let success: u64 = metric(&text, "lanyard_agent_renewals_total{result=\"success\"}");
    assert!(success >= 6, "{text}");
    assert!(metric::<i64>(&text, "lanyard_agent_certificate_seconds_until_expiry") > 0, "{text}");
    assert!(metric::<u64>(&text, "lanyard_agent_bundle_sequence") >= 1, "{text}");

    watcher.abort();
    agent.kill().ok();
    agent.wait().ok();
    consumer.kill().ok();
    consumer.wait().ok();
}

fn rcgen_public_key(key_pem: &str) -> Vec<u8> {
    let der = workload_agent::agent::cert::key_from_pem(key_pem.as_bytes()).expect("key");
    let rng = ring::rand::SystemRandom::new();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_der(),
        &rng,
    )
    .expect("P-256 key");
    // SubjectPublicKeyInfo of a P-256 key: fixed prefix plus the point.
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
    spki.extend_from_slice(ring::signature::KeyPair::public_key(&kp).as_ref());
    spki
}

async fn plain_http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("w");
    let mut buf = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut buf).await.expect("read");
    buf
}

fn metric<T: std::str::FromStr + Default>(text: &str, name: &str) -> T {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

/// Two services on the agent library keep an mTLS request loop (a new handshake per request,
/// plus one long-lived connection) running across at least 5 renewals of both identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_hot_reload_under_load() {
    let ca = WorkloadCa::start().expect("CA");
    let a_id = format!("spiffe://{TD}/svc-a");
    let b_id = format!("spiffe://{TD}/svc-b");
    let agents = ca.enrolled_agents(&[&a_id, &b_id], 0.2).await.expect("agents");
    let (a, b) = (agents[0].clone(), agents[1].clone());

    // Configs are built once inside the loop; every new handshake picks up the current credentials.
    let renewals = |agent: &workload_agent::Agent| agent.metrics().renewals_ok.get();
    let rep = mtls_loop(&a, &b, &a_id, &b_id, Duration::from_secs(150), || renewals(&a) >= 6 && renewals(&b) >= 6)
        .await
        .expect("mTLS loop");
    let n = rep.handshakes;
    println!(
        "{n} handshakes across {} / {} renewals, {} failures",
        renewals(&a) - 1,
        renewals(&b) - 1,
        rep.failures.len()
    );
    assert!(
        rep.failures.is_empty(),
        "{} of {n} handshakes failed: {:?}",
        rep.failures.len(),
        &rep.failures[..rep.failures.len().min(5)]
    );
    assert!(n >= 200, "only {n} handshakes");
    assert!(rep.server_serials.len() >= 6, "the client saw the server's renewed certificates");
    assert!(rep.client_serials.len() >= 6, "the server saw the client's renewed certificates");

    // And the verifier refuses identities it does not authorize.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        a.seam().server_config(Authorizer::exact([b_id.as_str()]).expect("authz")).expect("cfg"),
    ));
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            acceptor.accept(tcp).await.ok();
        }
    });
    let name = rustls::pki_types::ServerName::try_from("svc-a.internal").expect("name");
    // And the verifier still refuses identities it does not authorize.
    let wrong = Arc::new(b.seam().client_config(Authorizer::exact([b_id.as_str()]).expect("authz")).expect("cfg"));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    assert!(tokio_rustls::TlsConnector::from(wrong).connect(name, tcp).await.is_err(), "svc-a is not authorized here");
}

/// The CA goes away for longer than a renewal attempt (and past the planned renewal time); the
/// agent keeps its certificate, retries, and renews after the CA is back, before expiry. At no
/// point does it serve an expired certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rides_out_a_ca_outage() {
    let mut ca = WorkloadCa::start().expect("CA");
    let id = format!("spiffe://{TD}/batch");
    let mut cfg = ca.agent_config(&id, &ca.token(&id, &[]).expect("t"), 0.5).expect("cfg");
    cfg.renewal.jitter = 0.0;
    let agent = workload_agent::Agent::new(cfg).expect("agent");
    let runner = agent.clone();
    tokio::spawn(async move { runner.run(std::future::pending()).await });
    let mut rx = agent.seam().svid_updates();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| s.is_some())).await.expect("enrolled").expect("w");
    let first = rx.borrow().clone().expect("svid");
    let issued_at = first.not_before + 5;

    // Outage: from now until 40 s after issuance; the planned renewal (at ~27 s) falls inside.
    ca.stop();
    let restart_at = issued_at + 40;
    let resolver = agent.seam().resolver();
    while now() < restart_at {
        let current = rx.borrow().clone().expect("svid");
        assert!(current.not_after > now(), "the agent holds an expired certificate");
        assert!(resolver.current().is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let failed_during_outage = agent.metrics().renewals_failed.get();
    assert!(failed_during_outage >= 1, "the agent tried during the outage");
    assert_eq!(rx.borrow().as_ref().expect("svid").chain[0], first.chain[0], "nothing new while the CA is down");
    ca.restart().expect("CA back on the same address");

    // Recovery before the first certificate expires.
    let renewed = tokio::time::timeout(
        Duration::from_secs(u64::try_from(first.not_after - now()).unwrap_or(0)),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.chain[0] != first.chain[0])),
    )
    .await
    .expect("renewed before the old certificate expired")
    .expect("watch")
    .clone()
    .expect("svid");
    assert!(now() < first.not_after);
    assert!(renewed.not_after > first.not_after);
    println!(
        "outage: {} failed attempts; renewed {} s after the CA returned, {} s before expiry",
        failed_during_outage,
        now() - restart_at,
        first.not_after - now()
    );
}

/// Wrong, expired and replayed join tokens; JWTs with the wrong audience, issuer or signature;
/// renewal with a revoked certificate, a foreign certificate, or the same key: each refused with a
/// clear error, and nothing issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_issue_nothing() {
    let ca = WorkloadCa::start().expect("CA");
    let client = CaClient::new(&ca.url(), &ca.fingerprint().expect("fp"), TD, Duration::from_secs(10));
    let bundle = client.bootstrap().await.expect("bootstrap").bundle;
    let tls = http::tls_config(&bundle.roots, None).expect("tls");
    let id = format!("spiffe://{TD}/api");
    let attempt = |proof: Proof, id: String| {
        let tls = tls.clone();
        let url = ca.url();
        async move {
            let (_, csr) = enroll::new_key_and_csr(&id).expect("csr");
            enroll::enroll(tls, &url, &id, &proof, &csr, Duration::from_secs(10)).await
        }
    };
    let refused = |r: Result<Vec<u8>, EnrollError>, want: &str| match r {
        Err(EnrollError::Refused(msg)) => assert!(msg.contains(want), "{msg:?} should mention {want:?}"),
        other => panic!("expected a refusal mentioning {want:?}, got {other:?}"),
    };
    let before = ca.issued_count().await.expect("count");

    refused(attempt(Proof::JoinToken("lanyard-jt-made-up".into()), id.clone()).await, "unknown join token");
    let short = ca.token(&id, &["--ttl", "1s"]).expect("token");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(attempt(Proof::JoinToken(short), id.clone()).await, "expired");
    let other = ca.token(&format!("spiffe://{TD}/other"), &[]).expect("token");
    refused(attempt(Proof::JoinToken(other), id.clone()).await, "bound to");
    assert!(ca.token("spiffe://elsewhere.test/x", &[]).is_err(), "tokens only for our trust domain");

    let jwt = |claims: serde_json::Value| Proof::Jwt(ca.jwt.sign(&claims));
    refused(
        attempt(
            jwt(ca.jwt.k8s_claims(JWT_ISSUER, "someone-else", "prod", "api")),
            format!("spiffe://{TD}/ns/prod/sa/api"),
        )
        .await,
        "audience",
    );
    refused(
        attempt(
            jwt(ca.jwt.k8s_claims("https://evil.test", JWT_AUDIENCE, "prod", "api")),
            format!("spiffe://{TD}/ns/prod/sa/api"),
        )
        .await,
        "issuer",
    );
    let forger = JwtIssuer::new("k1");
    refused(
        attempt(
            Proof::Jwt(forger.sign(&ca.jwt.k8s_claims(JWT_ISSUER, JWT_AUDIENCE, "prod", "api"))),
            format!("spiffe://{TD}/ns/prod/sa/api"),
        )
        .await,
        "signature",
    );
    refused(
        attempt(
            jwt(ca.jwt.k8s_claims(JWT_ISSUER, JWT_AUDIENCE, "prod", "api")),
            format!("spiffe://{TD}/ns/prod/sa/admin"),
        )
        .await,
        "maps to",
    );
    assert_eq!(ca.issued_count().await.expect("count"), before, "refusals issue nothing");

    // The good paths: a JWT and a join token (once).
    let jwt_id = format!("spiffe://{TD}/ns/prod/sa/api");
    let pem =
        attempt(jwt(ca.jwt.k8s_claims(JWT_ISSUER, JWT_AUDIENCE, "prod", "api")), jwt_id.clone()).await.expect("JWT");
    let chain = workload_agent::agent::cert::chain_from_pem(&pem).expect("chain");
    assert_eq!(workload_agent::agent::cert::leaf_info(chain[0].as_ref()).expect("leaf").spiffe_id, jwt_id);
    let token = ca.token(&id, &[]).expect("token");
    let (key, csr) = enroll::new_key_and_csr(&id).expect("csr");
    let pem =
        enroll::enroll(tls.clone(), &ca.url(), &id, &Proof::JoinToken(token.clone()), &csr, Duration::from_secs(10))
            .await
            .expect("join token");
    refused(attempt(Proof::JoinToken(token), id.clone()).await, "already used");
    assert_eq!(ca.issued_count().await.expect("count"), before + 2);

    // Renewal refusals.
    let chain = workload_agent::agent::cert::chain_from_pem(&pem).expect("chain");
    let info = workload_agent::agent::cert::leaf_info(chain[0].as_ref()).expect("leaf");
    let svid = workload_agent::Svid {
        spiffe_id: id.clone(),
        chain: chain.clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.clone().into()),
        not_after: info.not_after,
        not_before: info.not_before,
    };
    // Same key: refused (400), nothing issued.
    let same_key_csr = {
        let kp = ca::rcgen::KeyPair::try_from(key.as_slice()).expect("key");
        let mut p = ca::rcgen::CertificateParams::default();
        p.distinguished_name = ca::rcgen::DistinguishedName::new();
        p.subject_alt_names =
            vec![ca::rcgen::SanType::URI(ca::rcgen::string::Ia5String::try_from(id.as_str()).expect("uri"))];
        p.serialize_request(&kp).expect("csr").der().to_vec()
    };
    match client.renew(&bundle, &svid, same_key_csr).await {
        Err(RenewError::Transient(e)) => assert!(format!("{e:#}").contains("new key"), "{e:#}"),
        other => panic!("same-key renewal: {other:?}"),
    }
    // A different identity in the CSR: refused.
    let (_, other_csr) = enroll::new_key_and_csr(&format!("spiffe://{TD}/admin")).expect("csr");
    assert!(client.renew(&bundle, &svid, other_csr).await.is_err(), "renewal cannot change the identity");
    // A good renewal works...
    let (_, csr) = enroll::new_key_and_csr(&id).expect("csr");
    let renewed = client.renew(&bundle, &svid, csr).await.expect("renewal");
    assert_eq!(workload_agent::agent::cert::leaf_info(renewed[0].as_ref()).expect("leaf").spiffe_id, id);
    // ...until the certificate is revoked.
    let out = ca.cli(&["revoke", &info.serial, "--reason", "1"]).expect("revoke");
    assert!(out.contains("revoked"), "{out}");
    let count = ca.issued_count().await.expect("count");
    let (_, csr) = enroll::new_key_and_csr(&id).expect("csr");
    match client.renew(&bundle, &svid, csr).await {
        Err(RenewError::Refused(msg)) => assert!(msg.contains("revoked"), "{msg}"),
        other => panic!("revoked renewal: {other:?}"),
    }
    // A certificate this CA never issued (self-signed, same SPIFFE ID): refused.
    let fake_key = ca::rcgen::KeyPair::generate().expect("key");
    let mut p = ca::rcgen::CertificateParams::default();
    p.subject_alt_names =
        vec![ca::rcgen::SanType::URI(ca::rcgen::string::Ia5String::try_from(id.as_str()).expect("u"))];
    let fake = p.self_signed(&fake_key).expect("self-signed");
    let fake_svid = workload_agent::Svid {
        spiffe_id: id.clone(),
        chain: vec![fake.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(fake_key.serialize_der().into()),
        not_after: now() + 60,
        not_before: now(),
    };
    let (_, csr) = enroll::new_key_and_csr(&id).expect("csr");
    match client.renew(&bundle, &fake_svid, csr).await {
        Err(RenewError::Refused(msg)) => assert!(msg.contains("not issued by this CA"), "{msg}"),
        other => panic!("foreign certificate renewal: {other:?}"),
    }
    assert_eq!(ca.issued_count().await.expect("count"), count, "refused renewals issue nothing");
}

/// Two concurrent POSTs of one join-token challenge (issue 13): the challenge moves pending ->
/// processing by compare-and-set, so exactly one request redeems the token; the other answers
/// with the challenge as it is instead of redeeming again (which used to fail and could turn the
/// challenge, authorization and order invalid). The enrollment then finalizes with that one token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_challenge_posts_validate_once_and_keep_the_enrollment() {
    use base64::Engine;
    let ca = WorkloadCa::start().expect("CA");
    let root = std::fs::read_to_string(ca.dir.path().join("data/root.pem")).expect("root");
    let id = format!("spiffe://{TD}/race");
    for round in 0..5 {
        let token = ca.token(&id, &[]).expect("token");
        let mut c = tests::acme::RawClient::new(ca.addr, &root);
        c.register().await;
        let r =
            c.post("/new-order", Some(&serde_json::json!({"identifiers": [{"type": "spiffe", "value": id}]}))).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let order = r.json();
        let ch_path = c.challenge_path(order["authorizations"][0].as_str().expect("authz"), "join-token-01").await;
        let payload = serde_json::json!({"token": token});
        let (a, b) = tokio::join!(c.post(&ch_path, Some(&payload)), c.post(&ch_path, Some(&payload)));
        let statuses = [a.json()["status"].clone(), b.json()["status"].clone()];
        assert_eq!((a.status, b.status), (200, 200), "round {round}: {statuses:?}");
        assert!(statuses.iter().any(|s| s == "valid"), "round {round}: one POST validated: {statuses:?}");
        assert!(
            statuses.iter().all(|s| s == "valid" || s == "processing"),
            "round {round}: the other saw the same validation, not a second (failed) one: {statuses:?}"
        );
        let now_ch = c.post(&ch_path, None).await.json();
        assert_eq!(now_ch["status"], "valid", "round {round}");
        let (_, csr) = enroll::new_key_and_csr(&id).expect("csr");
        let csr = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(csr);
        let fin = c
            .post(&c.path_of(order["finalize"].as_str().expect("finalize")), Some(&serde_json::json!({"csr": csr})))
            .await;
        assert_eq!(fin.status, 200, "round {round}: finalize: {}", String::from_utf8_lossy(&fin.body));
        assert_eq!(fin.json()["status"], "valid");
        // The token was redeemed once: a fresh order cannot use it again.
        let again =
            c.post("/new-order", Some(&serde_json::json!({"identifiers": [{"type": "spiffe", "value": id}]}))).await;
        let ch = c.challenge_path(again.json()["authorizations"][0].as_str().expect("authz"), "join-token-01").await;
        let reuse = c.post(&ch, Some(&payload)).await.json();
        assert_eq!(reuse["status"], "invalid", "round {round}: a redeemed token stays redeemed");
    }
}

/// A TLS-terminating proxy in front of the CA that forwards every request, but answers the first
/// finalize with 503 after forwarding it: the CA issued, the answer was lost. Returns its port and
/// the root its certificate chains to, and counts finalize and new-order POSTs.
async fn lossy_proxy(
    listener: tokio::net::TcpListener,
    ca_addr: std::net::SocketAddr,
    ca_root: rustls::pki_types::CertificateDer<'static>,
    counts: Arc<Mutex<(u32, u32)>>,
) -> rustls::pki_types::CertificateDer<'static> {
    use ca::rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use http_body_util::BodyExt;
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let proxy_root = ca_params.self_signed(&ca_key).expect("proxy root");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let upstream = http::tls_config(&[ca_root], None).expect("upstream tls");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream, counts) = (acceptor.clone(), upstream.clone(), counts.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (upstream, counts) = (upstream.clone(), counts.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                        let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                        let ct = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let url = format!("https://localhost:{}{path}", ca_addr.port());
                        let r = http::request(
                            upstream,
                            parts.method.clone(),
                            &url,
                            ct.as_deref(),
                            body,
                            Duration::from_secs(10),
                        )
                        .await
                        .expect("forward");
                        let lose = {
                            let mut c = counts.lock().expect("counts");
                            if path.ends_with("/new-order") {
                                c.1 += 1;
                            }
                            if path.ends_with("/finalize") {
                                c.0 += 1;
                                c.0 == 1
                            } else {
                                false
                            }
                        };
                        let mut resp = hyper::Response::builder();
                        if lose {
                            resp = resp.status(503).header("content-type", "application/problem+json");
                            let body = br#"{"type":"about:blank","detail":"lost on the way"}"#.to_vec();
                            return Ok::<_, std::convert::Infallible>(
                                resp.body(http_body_util::Full::new(hyper::body::Bytes::from(body))).expect("response"),
                            );
                        }
                        resp = resp.status(r.status);
                        for (k, v) in r.headers.iter() {
                            if !matches!(k.as_str(), "content-length" | "transfer-encoding" | "connection") {
                                resp = resp.header(k, v);
                            }
                        }
                        Ok(resp.body(http_body_util::Full::new(r.body)).expect("response"))
                    }
                });
                // A connection the client drops mid-request ends with an error: nothing to do.
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
                    .ok();
            });
        }
    });
    proxy_root.der().clone()
}

/// Enrollment resumes its order after the attestation (issue 13): the first finalize's answer is
/// lost (503 after the CA issued), and the agent's enrollment re-reads the same order and downloads
/// the certificate instead of starting over with its already redeemed join token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_resumes_its_order_after_a_lost_finalize_answer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_port = listener.local_addr().expect("addr").port();
    let ca =
        WorkloadCa::start_with("", &format!("[acme]\npublic_url = \"https://localhost:{proxy_port}\"\n")).expect("CA");
    let root_pem = std::fs::read(ca.dir.path().join("data/root.pem")).expect("root");
    let ca_root = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&root_pem).expect("root pem").into_owned()
    };
    let counts = Arc::new(Mutex::new((0u32, 0u32)));
    let proxy_root = lossy_proxy(listener, ca.addr, ca_root, counts.clone()).await;
    let id = format!("spiffe://{TD}/resumed");
    let token = ca.token(&id, &[]).expect("token");
    let (_, csr) = enroll::new_key_and_csr(&id).expect("csr");
    let tls = http::tls_config(&[proxy_root], None).expect("tls");
    let issued_before = ca.issued_count().await.expect("count");
    let started = std::time::Instant::now();
    let pem = enroll::enroll(
        tls,
        &format!("https://localhost:{proxy_port}"),
        &id,
        &Proof::JoinToken(token),
        &csr,
        Duration::from_secs(10),
    )
    .await
    .expect("enrollment resumes and succeeds");
    let pem = String::from_utf8(pem).expect("pem");
    assert!(pem.contains("BEGIN CERTIFICATE"));
    let (finalizes, orders) = *counts.lock().expect("counts");
    assert_eq!(orders, 1, "one order: the enrollment never started over");
    assert_eq!(finalizes, 1, "the lost finalize had issued; the resumed order was valid, so no second finalize");
    assert_eq!(ca.issued_count().await.expect("count") - issued_before, 1, "one certificate issued");
    println!(
        "enrollment resume: finalize answer lost once, certificate after {:.2} s with {orders} order and {finalizes} finalize",
        started.elapsed().as_secs_f64()
    );
}
