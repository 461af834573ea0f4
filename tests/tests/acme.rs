//! ACME against real clients (lego, uacme from Debian) and a negative suite of requests no real
//! client would send. Everything runs on loopback: the CA's host map points the test names at
//! 127.0.0.1 and the challenge ports are free ports picked here.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::json;
use tests::acme::RawClient;
use tests::{CaProcess, start_ca};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Ca {
    proc: CaProcess,
    root_pem: String,
    root_path: PathBuf,
    db_url: String,
    http_port: u16,
    tls_port: u16,
}

fn start(dir: &Path, extra: &str) -> Ca {
    start_with(dir, extra, "")
}

fn start_with(dir: &Path, extra: &str, validation_extra: &str) -> Ca {
    let (http_port, tls_port) = (free_port(), free_port());
    let data = dir.join("data");
    let cfg = dir.join("ca.toml");
    // Everything here validates on loopback, which the default allowed_networks excludes: opt in.
    // The second deny suffix is spelled oddly on purpose: it must deny all the same.
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[policy.dns]\ndeny_suffixes = [\"forbidden.test\", \"Secret.Corp.Test.\"]\n[acme]\n{extra}\n[acme.validation]\n\
             http01_port = {http_port}\ntls_alpn01_port = {tls_port}\n{validation_extra}\n\
             allowed_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\
             hosts = {{ \"web.example.test\" = \"127.0.0.1\", \"api.example.test\" = \"127.0.0.1\", \"far.example.test\" = \"192.0.2.1\" }}\n",
            data.display()
        ),
    )
    .expect("config");
    let proc = start_ca(&["--config", cfg.to_str().expect("utf8")], &[]).expect("start lanyard-ca");
    let root_path = data.join("root.pem");
    Ca {
        proc,
        root_pem: std::fs::read_to_string(&root_path).expect("root"),
        root_path,
        db_url: format!("sqlite://{}", data.join("lanyard.db").display()),
        http_port,
        tls_port,
    }
}

fn directory(ca: &Ca) -> String {
    format!("https://localhost:{}/acme/directory", ca.proc.addr.port())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed? scripts/test.sh installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn openssl_verify(root: &Path, chain_pem: &str, dir: &Path) {
    let end = chain_pem.find("-----END CERTIFICATE-----").expect("pem") + 26;
    std::fs::write(dir.join("leaf.pem"), &chain_pem[..end]).expect("write");
    std::fs::write(dir.join("rest.pem"), &chain_pem[end..]).expect("write");
    run(Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .arg(root)
        .args(["-untrusted", "rest.pem", "leaf.pem"])
        .current_dir(dir));
}

fn serial_of(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    hex::encode(x509_parser::parse_x509_certificate(&der).expect("x509").1.raw_serial())
}

async fn revoked(db_url: &str, serial: &str) -> bool {
    let store = ca::Store::open(db_url).await.expect("open store");
    store.certificate(serial).await.expect("read").expect("recorded").revoked_at.is_some()
}

#[tokio::test]
async fn lego_obtains_with_http01_renews_with_tls_alpn01_and_revokes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = start(d, "");
    let lego = |domains: &[&str], args: &[&str]| {
        let mut c = Command::new("lego");
        c.env("LEGO_CA_CERTIFICATES", &ca.root_path).args([
            "--server",
            &directory(&ca),
            "--email",
            "ops@example.test",
            "--accept-tos",
        ]);
        for dom in domains {
            c.args(["--domains", dom]);
        }
        c.arg("--path").arg(d.join("lego")).args(args);
        run(&mut c)
    };
    let both = ["web.example.test", "api.example.test"];
    lego(&both, &["--http", "--http.port", &format!("127.0.0.1:{}", ca.http_port), "run"]);
    let crt = d.join("lego/certificates/web.example.test.crt");
    let first = std::fs::read_to_string(&crt).expect("certificate");
    openssl_verify(&ca.root_path, &first, d);

    let out = lego(
        &both,
        &["--tls", "--tls.port", &format!("127.0.0.1:{}", ca.tls_port), "renew", "--days", "30", "--no-random-sleep"],
    );
    assert!(out.contains("Server responded with a certificate"), "{out}");
    let second = std::fs::read_to_string(&crt).expect("renewed certificate");
    assert_ne!(serial_of(&first), serial_of(&second), "renewal issued a new certificate");
    openssl_verify(&ca.root_path, &second, d);

    // lego files the certificate under its first domain and revokes per domain: name that one.
    lego(&both[..1], &["revoke"]);
    assert!(revoked(&ca.db_url, &serial_of(&second)).await, "revocation recorded");
    assert!(!revoked(&ca.db_url, &serial_of(&first)).await);
}

/// Serves files of `dir` at /.well-known/acme-challenge/<token> over plain HTTP, as a web server
/// in front of an ACME client's webroot would.
async fn serve_webroot(port: u16, dir: PathBuf) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind http-01 port");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let token = path.strip_prefix("/.well-known/acme-challenge/").unwrap_or("");
                let body =
                    if token.is_empty() || token.contains('/') { None } else { std::fs::read(dir.join(token)).ok() };
                let resp = match body {
                    Some(b) => [
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", b.len())
                            .into_bytes(),
                        b,
                    ]
                    .concat(),
                    None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                };
                s.write_all(&resp).await.ok();
            });
        }
    })
}

#[tokio::test]
async fn uacme_obtains_renews_and_revokes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = start(d, "");
    let webroot = d.join("www");
    std::fs::create_dir_all(&webroot).expect("webroot");
    let _server = serve_webroot(ca.http_port, webroot.clone()).await;
    let hook = d.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n[ \"$2\" = http-01 ] || exit 1\ncase \"$1\" in begin) printf '%s' \"$5\" > '{w}'/\"$4\";; *) rm -f '{w}'/\"$4\";; esac\n",
            w = webroot.display()
        ),
    )
    .expect("hook");
    run(Command::new("chmod").arg("+x").arg(&hook));
    // uacme (libcurl-gnutls) trusts only the system bundle: give it ours in a private mount
    // namespace instead of touching the machine's trust store.
    let conf = d.join("uacme");
    let uacme = |cmds: String| {
        let script =
            format!("set -e; mount --bind '{}' /etc/ssl/certs/ca-certificates.crt; {cmds}", ca.root_path.display());
        tokio::task::spawn_blocking(move || {
            run(Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]))
        })
    };
    let (a, c) = (directory(&ca), conf.display().to_string());
    let out = uacme(format!(
        "uacme -v -a '{a}' -c '{c}' -y new ops@example.test; uacme -v -a '{a}' -c '{c}' -h '{}' -t EC issue web.example.test",
        hook.display()
    ))
    .await
    .expect("join");
    let cert_path = conf.join("web.example.test/cert.pem");
    let first = std::fs::read_to_string(&cert_path).unwrap_or_else(|_| panic!("no certificate: {out}"));
    openssl_verify(&ca.root_path, &first, d);
    // Renew (forced: the certificate is far from expiry).
    uacme(format!("uacme -v -a '{a}' -c '{c}' -h '{}' -t EC -f issue web.example.test", hook.display()))
        .await
        .expect("join");
    let cert = std::fs::read_to_string(&cert_path).expect("renewed certificate");
    assert_ne!(serial_of(&first), serial_of(&cert), "renewal issued a new certificate");
    openssl_verify(&ca.root_path, &cert, d);
    uacme(format!("uacme -v -a '{a}' -c '{c}' revoke '{}'", cert_path.display())).await.expect("join");
    assert!(revoked(&ca.db_url, &serial_of(&cert)).await, "revocation recorded");
}

fn csr_b64(names: &[&str], key: &ca::rcgen::KeyPair) -> String {
    let mut p =
        ca::rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name = ca::rcgen::DistinguishedName::new();
    B64.encode(p.serialize_request(key).expect("csr").der())
}

fn problem(r: &tests::Response) -> String {
    r.json()["type"].as_str().unwrap_or_default().trim_start_matches("urn:ietf:params:acme:error:").to_owned()
}

#[tokio::test]
async fn negative_suite_gets_the_right_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = start(dir.path(), "insecure_always_valid_challenges = true");
    let mut c = RawClient::new(ca.proc.addr, &ca.root_pem);

    // newNonce: HEAD 200, GET 204, both with a nonce and the index link.
    let h = tests::https_request(c.addr, "localhost", "HEAD", "/acme/new-nonce", None, Some(&ca.root_pem))
        .await
        .expect("head");
    assert_eq!(h.status, 200);
    let g = tests::https_request(c.addr, "localhost", "GET", "/acme/new-nonce", None, Some(&ca.root_pem))
        .await
        .expect("get");
    assert_eq!(g.status, 204);
    assert!(g.header("replay-nonce").is_some());
    assert_eq!(g.header("link"), Some(format!("<{}>;rel=\"index\"", c.url("/directory")).as_str()));

    // Unknown account.
    c.kid = Some(c.url("/account/nope"));
    let r = c.post("/new-order", Some(&json!({"identifiers": [{"type": "dns", "value": "web.example.test"}]}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "accountDoesNotExist"));
    assert!(r.header("replay-nonce").is_some(), "errors carry a nonce too");
    c.kid = None;
    let acct = c.register().await;
    assert_eq!(acct.status, 201);
    let again = c.register().await;
    assert_eq!(again.status, 200, "same key: the existing account");
    let orders_path = c.path_of(acct.json()["orders"].as_str().expect("orders url"));
    let order_count = |r: tests::Response| r.json()["orders"].as_array().map(|a| a.len()).unwrap_or(usize::MAX);

    let new_order = json!({"identifiers": [{"type": "dns", "value": "web.example.test"}]});
    // Bad nonce.
    let body = c.sign(c.header(&c.url("/new-order"), "AAAAnotanonce"), Some(&new_order));
    let r = c.send("/new-order", body).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "badNonce"));
    assert!(r.header("replay-nonce").is_some(), "badNonce carries a fresh nonce");
    // Wrong url.
    let body = c.sign(c.header(&c.url("/new-account"), &c.nonce().await), Some(&new_order));
    let r = c.send("/new-order", body).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "unauthorized"));
    // Unsupported algorithms.
    for alg in ["HS256", "none", "RS1"] {
        let mut hdr = c.header(&c.url("/new-order"), &c.nonce().await);
        hdr["alg"] = json!(alg);
        let r = c.send("/new-order", c.sign(hdr, Some(&new_order))).await;
        assert_eq!((r.status, problem(&r).as_str()), (400, "badSignatureAlgorithm"), "{alg}");
    }
    // Wrong content type.
    let body = c.sign(c.header(&c.url("/new-order"), &c.nonce().await), Some(&new_order));
    let r = tests::https_request(
        c.addr,
        "localhost",
        "POST",
        "/acme/new-order",
        Some(("application/json", body)),
        Some(&ca.root_pem),
    )
    .await
    .expect("post");
    assert_eq!(r.status, 415);
    // An oversized body is refused before anything is parsed.
    let huge = json!({"identifiers": [{"type": "dns", "value": "x".repeat(70_000)}]});
    let r = c.post("/new-order", Some(&huge)).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "malformed"));
    assert_eq!(order_count(c.post(&orders_path, None).await), 0, "no refused request created an order");
    // An oversized request target (a 5,000-character path) gets a 414 problem document, not a
    // dropped connection, on ACME and other paths alike.
    for prefix in ["/acme/order/", "/"] {
        let long = format!("{prefix}{}", "a".repeat(5_000));
        let r = tests::https_request(c.addr, "localhost", "GET", &long, None, Some(&ca.root_pem)).await.expect("long");
        assert_eq!(r.status, 414, "{prefix}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.json()["type"], "urn:lanyard:problem:uriTooLong", "{}", String::from_utf8_lossy(&r.body));
    }

    // Replayed JWS: the first creates an order, the replay is refused and creates nothing.
    let body = c.sign(c.header(&c.url("/new-order"), &c.nonce().await), Some(&new_order));
    let first = c.send("/new-order", body.clone()).await;
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let replay = c.send("/new-order", body).await;
    assert_eq!((replay.status, problem(&replay).as_str()), (400, "badNonce"));
    assert_eq!(order_count(c.post(&orders_path, None).await), 1);

    // Identifiers outside policy: rejected with per-identifier subproblems, no order.
    let r = c
        .post("/new-order", Some(&json!({"identifiers": [
            {"type": "dns", "value": "ok.example.test"}, {"type": "dns", "value": "x.forbidden.test"}, {"type": "email", "value": "a@b.c"}]})))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(problem(&r), "rejectedIdentifier");
    let subs = r.json()["subproblems"].as_array().cloned().unwrap_or_default();
    assert_eq!(subs.len(), 2, "{:?}", r.json());
    assert!(subs.iter().any(|s| s["identifier"]["value"] == "x.forbidden.test"));
    assert!(subs.iter().any(|s| s["type"] == "urn:ietf:params:acme:error:unsupportedIdentifier"));
    assert_eq!(order_count(c.post(&orders_path, None).await), 1);

    // Wildcards need dns-01, which this CA (no resolver configured) does not offer.
    let r = c.post("/new-order", Some(&json!({"identifiers": [{"type": "dns", "value": "*.web.example.test"}]}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "rejectedIdentifier"));

    // Finalize before the order is ready.
    let order_url = first.header("location").expect("order location").to_owned();
    let order = first.json();
    let finalize_path = c.path_of(order["finalize"].as_str().expect("finalize"));
    let key = ca::rcgen::KeyPair::generate().expect("key");
    let r = c.post(&finalize_path, Some(&json!({"csr": csr_b64(&["web.example.test"], &key)}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "orderNotReady"));

    // Pass the challenge (always-valid test mode): the order is ready in the same step.
    let authz_path = c.path_of(order["authorizations"][0].as_str().expect("authz"));
    let authz = c.post(&authz_path, None).await.json();
    let ch_path = c.path_of(authz["challenges"][0]["url"].as_str().expect("challenge"));
    let ch = c.post(&ch_path, Some(&json!({}))).await;
    assert_eq!(ch.json()["status"], "valid");
    assert_eq!(c.post(&c.path_of(&order_url), None).await.json()["status"], "ready");

    // Mismatched CSR and a CSR with the account key: badCSR, the order stays ready.
    let r = c.post(&finalize_path, Some(&json!({"csr": csr_b64(&["api.example.test"], &key)}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "badCSR"));
    let r =
        c.post(&finalize_path, Some(&json!({"csr": csr_b64(&["web.example.test", "api.example.test"], &key)}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "badCSR"));
    let r = c.post(&finalize_path, Some(&json!({"csr": "!!!"}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "badCSR"));
    assert_eq!(c.post(&c.path_of(&order_url), None).await.json()["status"], "ready");
    let store = ca::Store::open(&ca.db_url).await.expect("store");
    assert_eq!(store.certificate_counts().await.expect("counts").1, 1, "only the server's own certificate");

    // A good CSR: valid at once, with a certificate URL that downloads the chain.
    let r = c.post(&finalize_path, Some(&json!({"csr": csr_b64(&["web.example.test"], &key)}))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "valid");
    let cert_path = c.path_of(r.json()["certificate"].as_str().expect("certificate url"));
    let cert = c.post(&cert_path, None).await;
    assert_eq!(cert.content_type, "application/pem-certificate-chain");
    let pem = String::from_utf8(cert.body.clone()).expect("pem");
    openssl_verify(&ca.root_path, &pem, dir.path());
    let cert_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("der").to_vec()
    };

    // Another account may neither download nor revoke it.
    let mut other = RawClient::new(ca.proc.addr, &ca.root_pem);
    other.register().await;
    assert_eq!(other.post(&cert_path, None).await.status, 404);
    let revoke = json!({"certificate": B64.encode(&cert_der), "reason": 4});
    let r = other.post("/revoke-cert", Some(&revoke)).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "unauthorized"));
    let r = c.post("/revoke-cert", Some(&json!({"certificate": B64.encode(&cert_der), "reason": 7}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "badRevocationReason"));
    assert!(!revoked(&ca.db_url, &serial_of(&pem)).await, "refused revocations change nothing");
    let r = c.post("/revoke-cert", Some(&revoke)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(revoked(&ca.db_url, &serial_of(&pem)).await);
    let r = c.post("/revoke-cert", Some(&revoke)).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "alreadyRevoked"));

    // Deactivated account: refused from then on, also when registering the same key again.
    let acct_path = c.path_of(c.kid.as_deref().expect("kid"));
    let r = c.post(&acct_path, Some(&json!({"status": "deactivated"}))).await;
    assert_eq!(r.json()["status"], "deactivated");
    let r = c.post("/new-order", Some(&new_order)).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "unauthorized"));
    c.kid = None;
    let r = c.post("/new-account", Some(&json!({"termsOfServiceAgreed": true}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (403, "unauthorized"));
    // onlyReturnExisting for an unknown key.
    let fresh = RawClient::new(ca.proc.addr, &ca.root_pem);
    let r = fresh.post("/new-account", Some(&json!({"onlyReturnExisting": true}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "accountDoesNotExist"));
    // Bad contact.
    let r = fresh.post("/new-account", Some(&json!({"contact": ["tel:+123"]}))).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "invalidContact"));
}

#[tokio::test]
async fn validation_failures_report_type_and_detail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = start(dir.path(), "");
    let mut c = RawClient::new(ca.proc.addr, &ca.root_pem);
    c.register().await;
    // Nothing listens on the http-01 port: connection error. far.example.test maps outside the
    // allowed networks: rejected without connecting.
    for (name, kind) in [("web.example.test", "connection"), ("far.example.test", "rejectedIdentifier")] {
        let order = c.post("/new-order", Some(&json!({"identifiers": [{"type": "dns", "value": name}]}))).await.json();
        let http = c.challenge_path(order["authorizations"][0].as_str().expect("authz"), "http-01").await;
        let r = c.post(&http, Some(&json!({}))).await.json();
        assert_eq!(r["status"], "invalid", "{r}");
        assert_eq!(r["error"]["type"], format!("urn:ietf:params:acme:error:{kind}"), "{r}");
        assert!(!r["error"]["detail"].as_str().unwrap_or_default().is_empty());
        let order_url = c.path_of(order["finalize"].as_str().expect("f").trim_end_matches("/finalize"));
        assert_eq!(c.post(&order_url, None).await.json()["status"], "invalid");
    }
}

#[tokio::test]
async fn instant_acme_with_eab_account_policy_renewal_info_replaces_and_key_change() {
    use instant_acme::{
        Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
        NewOrder, RetryPolicy, RevocationRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = start(d, "require_eab = true");
    let webroot = d.join("www");
    std::fs::create_dir_all(&webroot).expect("webroot");
    let _server = serve_webroot(ca.http_port, webroot.clone()).await;
    let cfg = d.join("ca.toml");
    let eab = |suffix: &str| {
        let (ok, out, err) =
            tests::run_ca(&["--config", cfg.to_str().expect("utf8"), "eab", "create", "--allow-suffix", suffix], &[])
                .expect("eab create");
        assert!(ok, "{err}");
        let field = |name: &str| out.lines().find_map(|l| l.strip_prefix(name)).expect("field").trim().to_owned();
        let key = B64.decode(field("hmac key:")).expect("b64");
        ExternalAccountKey::new(field("kid:"), &key)
    };
    let new_account = NewAccount {
        contact: &["mailto:ops@example.test"],
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let builder = || Account::builder_with_root(&ca.root_path).expect("builder");

    // EAB is required.
    let Err(err) = builder().create(&new_account, directory(&ca), None).await else { panic!("created without EAB") };
    assert!(err.to_string().contains("externalAccountRequired"), "{err}");
    // A key restricted to web.example.test creates one account, and only one.
    let key = eab("web.example.test");
    let (mut account, _creds) =
        builder().create(&new_account, directory(&ca), Some(&key)).await.expect("account with EAB");
    let Err(err) = builder().create(&new_account, directory(&ca), Some(&key)).await else { panic!("EAB key reused") };
    assert!(err.to_string().contains("already used"), "{err}");

    // The account's policy: api.example.test is allowed by the CA but not by this account's key.
    let Err(err) = account.new_order(&NewOrder::new(&[Identifier::Dns("api.example.test".into())])).await else {
        panic!("ordered outside the account's policy")
    };
    assert!(err.to_string().contains("rejectedIdentifier"), "{err}");

    async fn obtain(
        account: &Account,
        webroot: &Path,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<String, instant_acme::Error> {
        let ids = [Identifier::Dns("web.example.test".into())];
        let mut new_order = NewOrder::new(&ids);
        if let Some(r) = replaces {
            new_order = new_order.replaces(r);
        }
        let mut order = account.new_order(&new_order).await?;
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            if a.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut ch = a.challenge(ChallengeType::Http01).expect("http-01 offered");
            std::fs::write(webroot.join(&ch.token), ch.key_authorization().as_str()).expect("write token");
            ch.set_ready().await?;
        }
        order.poll_ready(&RetryPolicy::default()).await?;
        order.finalize().await?;
        order.poll_certificate(&RetryPolicy::default()).await
    }
    let chain = obtain(&account, &webroot, None).await.expect("certificate");
    openssl_verify(&ca.root_path, &chain, d);
    let cert_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(chain.as_bytes()).expect("der")
    };

    // renewalInfo: a window around two thirds of the 24 h lifetime, in the future.
    let id = CertificateIdentifier::try_from(&cert_der).expect("cert id").into_owned();
    let (info, retry_after) = account.renewal_info(&id).await.expect("renewal info");
    let now = time::OffsetDateTime::now_utc();
    let w = info.suggested_window;
    assert!(
        w.start > now + time::Duration::hours(14) && w.end < now + time::Duration::hours(18) && w.start < w.end,
        "{w:?}"
    );
    assert!(retry_after > std::time::Duration::ZERO);

    // Key rollover: the account keeps working with the new key.
    let _new_credentials = account.update_key().await.expect("key change");
    let renewed = obtain(&account, &webroot, Some(id.clone())).await.expect("renewal replacing the first certificate");
    assert_ne!(serial_of(&renewed), serial_of(&chain));
    // The same certificate cannot be replaced twice.
    let err = obtain(&account, &webroot, Some(id.clone())).await.expect_err("already replaced");
    assert!(err.to_string().contains("alreadyReplaced"), "{err}");

    // Revocation moves the renewal window to the past.
    account.revoke(&RevocationRequest { certificate: &cert_der, reason: None }).await.expect("revoke");
    let (info, _) = account.renewal_info(&id).await.expect("renewal info");
    assert!(info.suggested_window.end <= time::OffsetDateTime::now_utc(), "{:?}", info.suggested_window);
}

#[tokio::test]
async fn rate_limits_answer_rate_limited_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = start(dir.path(), "[acme.rate_limits]\nnew_orders_per_account = { burst = 2, period = \"1h\" }");
    let mut c = RawClient::new(ca.proc.addr, &ca.root_pem);
    c.register().await;
    let order = json!({"identifiers": [{"type": "dns", "value": "web.example.test"}]});
    for _ in 0..2 {
        assert_eq!(c.post("/new-order", Some(&order)).await.status, 201);
    }
    let r = c.post("/new-order", Some(&order)).await;
    assert_eq!((r.status, problem(&r).as_str()), (429, "rateLimited"));
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1700..=1801).contains(&retry), "one token per 30 min: {retry}");
    assert!(r.header("replay-nonce").is_some());
    // Another account has its own bucket.
    let mut other = RawClient::new(ca.proc.addr, &ca.root_pem);
    other.register().await;
    assert_eq!(other.post("/new-order", Some(&order)).await.status, 201);
}

/// Two replicas on one PostgreSQL database behind one public URL: a nonce issued by one is good
/// at the other, exactly once.
#[tokio::test]
async fn nonces_work_across_replicas_sharing_postgresql() {
    let Some(db) = tests::throwaway_postgres("lanyard_replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = ("LANYARD_CA_PASSPHRASE", "replica test passphrase");
    let data_a = dir.path().join("a");
    let (ok, _, err) =
        tests::run_ca(&["init", "--data-dir", data_a.to_str().expect("utf8"), "--database-url", &db], &[pass])
            .expect("init");
    assert!(ok, "{err}");
    let root_pem = std::fs::read_to_string(data_a.join("root.pem")).expect("root");
    let public = "https://localhost:8443";
    let cfg = dir.path().join("replica.toml");
    std::fs::write(&cfg, format!("database_url = \"{db}\"\n[acme]\npublic_url = \"{public}\"\n")).expect("config");
    let start_replica = |name: &str| {
        let data = dir.path().join(name);
        start_ca(&["--config", cfg.to_str().expect("utf8"), "--data-dir", data.to_str().expect("utf8")], &[pass])
            .expect("replica")
    };
    let (a, b) = (start_replica("a"), start_replica("b"));
    let mut ca_a = RawClient::new(a.addr, &root_pem).with_base(public);
    ca_a.register().await;
    let mut ca_b = RawClient::new(b.addr, &root_pem).with_base(public);
    ca_b.kid = ca_a.kid.clone();
    let order = json!({"identifiers": [{"type": "dns", "value": "web.example.test"}]});

    // Nonce from A, request to B (signed with the same account key: share it by cloning the body).
    let nonce = ca_a.nonce().await;
    let body = ca_a.sign(ca_a.header(&ca_a.url("/new-order"), &nonce), Some(&order));
    let r = ca_b.send("/new-order", body.clone()).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // The same nonce replayed at A is refused.
    let r = ca_a.send("/new-order", body).await;
    assert_eq!((r.status, problem(&r).as_str()), (400, "badNonce"));
}

/// A wildcard whose base lies above a denied suffix would cover names under it: newOrder refuses
/// it with rejectedIdentifier naming the suffix, and creates no order. The deny suffix is
/// configured as `Secret.Corp.Test.`, so this also shows suffixes are normalized at load.
#[tokio::test]
async fn wildcards_covering_a_denied_suffix_are_refused_at_new_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A resolver must be configured for wildcards to be orderable at all; newOrder never asks it.
    let ca = start_with(dir.path(), "", "dns_resolver = \"127.0.0.1:9\"");
    let mut c = RawClient::new(ca.proc.addr, &ca.root_pem);
    let acct = c.register().await;
    let orders_path = c.path_of(acct.json()["orders"].as_str().expect("orders url"));
    let order_count = |r: tests::Response| r.json()["orders"].as_array().map(|a| a.len()).unwrap_or(usize::MAX);

    for value in ["*.corp.test", "secret.corp.test", "A.SECRET.corp.test", "*.secret.corp.test"] {
        let r = c.post("/new-order", Some(&json!({"identifiers": [{"type": "dns", "value": value}]}))).await;
        assert_eq!((r.status, problem(&r).as_str()), (400, "rejectedIdentifier"), "{value}");
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(text.contains("secret.corp.test"), "{value}: {text}");
    }
    assert_eq!(order_count(c.post(&orders_path, None).await), 0, "no refused order was created");

    // A wildcard beside the denied suffix, and one elsewhere, are still orderable.
    for value in ["*.web.corp.test", "*.web.example.test"] {
        let r = c.post("/new-order", Some(&json!({"identifiers": [{"type": "dns", "value": value}]}))).await;
        assert_eq!(r.status, 201, "{value}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(order_count(c.post(&orders_path, None).await), 2);
}

/// Kills a helper process on drop.
struct Helper(std::process::Child);
impl Drop for Helper {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[tokio::test]
async fn lego_obtains_a_wildcard_with_dns01() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Pebble's challenge test server is the DNS server: lego publishes TXT records through its
    // management API, Lanyard queries it as its configured resolver.
    let (dns_port, mgmt_port) = (free_port(), free_port());
    let cts = Helper(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-management", &format!("127.0.0.1:{mgmt_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", mgmt_port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "challtestsrv did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ca = start_with(d, "", &format!("dns_resolver = \"127.0.0.1:{dns_port}\""));
    let exec = d.join("exec.sh");
    std::fs::write(
        &exec,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n\
             present) curl -sf -X POST -d \"{{\\\"host\\\":\\\"$2\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{mgmt_port}/set-txt ;;\n\
             cleanup) curl -sf -X POST -d \"{{\\\"host\\\":\\\"$2\\\"}}\" http://127.0.0.1:{mgmt_port}/clear-txt ;;\nesac\n"
        ),
    )
    .expect("exec script");
    run(Command::new("chmod").arg("+x").arg(&exec));
    run(Command::new("lego")
        .env("LEGO_CA_CERTIFICATES", &ca.root_path)
        .env("EXEC_PATH", &exec)
        .env("EXEC_SEQUENCE_INTERVAL", "1")
        .args(["--server", &directory(&ca), "--email", "ops@example.test", "--accept-tos"])
        .args(["--domains", "*.web.example.test", "--domains", "web.example.test"])
        .args(["--dns", "exec", "--dns.resolvers", &format!("127.0.0.1:{dns_port}"), "--dns.disable-cp", "--path"])
        .arg(d.join("lego"))
        .arg("run"));
    let pem = std::fs::read_to_string(d.join("lego/certificates/_.web.example.test.crt")).expect("certificate");
    openssl_verify(&ca.root_path, &pem, d);
    let san = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(d.join("lego/certificates/_.web.example.test.crt")));
    assert!(san.contains("DNS:*.web.example.test") && san.contains("DNS:web.example.test"), "{san}");

    // A dns-01 challenge without the TXT record fails with unauthorized.
    let mut c = RawClient::new(ca.proc.addr, &ca.root_pem);
    c.register().await;
    let order = c
        .post("/new-order", Some(&json!({"identifiers": [{"type": "dns", "value": "*.api.example.test"}]})))
        .await
        .json();
    let authz = c.post(&c.path_of(order["authorizations"][0].as_str().expect("authz")), None).await.json();
    assert_eq!(authz["wildcard"], true);
    assert_eq!(authz["identifier"]["value"], "api.example.test");
    let chs = authz["challenges"].as_array().expect("challenges");
    assert_eq!(chs.len(), 1, "a wildcard is proved by dns-01 only");
    let r = c.post(&c.path_of(chs[0]["url"].as_str().expect("url")), Some(&json!({}))).await.json();
    assert_eq!(r["status"], "invalid");
    assert_eq!(r["error"]["type"], "urn:ietf:params:acme:error:unauthorized", "{r}");
    drop(cts);
}

/// An http-01 responder that answers every request only after `delay`, with the key
/// authorization `token.thumbprint` of whatever token is asked for.
async fn slow_http01(port: u16, thumbprint: String, delay: std::time::Duration) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind http-01 port");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let thumbprint = thumbprint.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let token = req.split_whitespace().nth(1).unwrap_or("/").rsplit('/').next().unwrap_or("").to_owned();
                tokio::time::sleep(delay).await;
                let body = format!("{token}.{thumbprint}");
                let resp =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                s.write_all(resp.as_bytes()).await.ok();
            });
        }
    })
}

/// RFC 7638 thumbprint of a P-256 JWK.
fn thumbprint(jwk: &serde_json::Value) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y")
    );
    B64.encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()))
}

/// ACME state limits (issue 13): new accounts per client address, and a cap on outbound
/// validations running at once. Refused requests change nothing and say when to come back.
#[tokio::test]
async fn new_accounts_per_address_and_concurrent_validations_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = start_with(
        dir.path(),
        "[acme.rate_limits]\nnew_accounts_per_ip = { burst = 2, period = \"1h\" }",
        "max_concurrent = 1\nslot_wait = \"300ms\"",
    );
    let mut first = RawClient::new(ca.proc.addr, &ca.root_pem);
    assert_eq!(first.register().await.status, 201);
    let mut second = RawClient::new(ca.proc.addr, &ca.root_pem);
    assert_eq!(second.register().await.status, 201);
    // A third key from the same address: refused, with Retry-After, and no account created.
    let third = RawClient::new(ca.proc.addr, &ca.root_pem);
    let hdr =
        json!({"alg": "ES256", "jwk": third.jwk(), "nonce": third.nonce().await, "url": third.url("/new-account")});
    let r = third.send("/new-account", third.sign(hdr, Some(&json!({"termsOfServiceAgreed": true})))).await;
    assert_eq!((r.status, problem(&r).as_str()), (429, "rateLimited"), "{}", String::from_utf8_lossy(&r.body));
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1700..=1801).contains(&retry), "one account per 30 min: {retry}");
    let store = ca::Store::open(&ca.db_url).await.expect("store");
    let thumb = thumbprint(&third.jwk());
    assert!(store.acme_account_by_thumbprint(&thumb).await.expect("read").is_none(), "nothing recorded");
    // Looking up an existing account costs nothing from that budget.
    assert_eq!(first.register().await.status, 200);

    // One validation slot: while one http-01 validation waits on a slow responder, a second
    // challenge POST is answered rateLimited and its challenge stays pending; posted again once
    // the slot is free, it validates.
    let _responder = slow_http01(ca.http_port, thumbprint(&first.jwk()), std::time::Duration::from_secs(2)).await;
    let order = json!({"identifiers": [{"type": "dns", "value": "web.example.test"}, {"type": "dns", "value": "api.example.test"}]});
    let o = first.post("/new-order", Some(&order)).await;
    assert_eq!(o.status, 201, "{}", String::from_utf8_lossy(&o.body));
    let mut challenges = Vec::new();
    for authz in o.json()["authorizations"].as_array().expect("authzs") {
        challenges.push(first.challenge_path(authz.as_str().expect("url"), "http-01").await);
    }
    let started = std::time::Instant::now();
    let empty = json!({});
    let (a, b) = tokio::join!(first.post(&challenges[0], Some(&empty)), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        first.post(&challenges[1], Some(&empty)).await
    });
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "valid", "{}", String::from_utf8_lossy(&a.body));
    assert_eq!((b.status, problem(&b).as_str()), (429, "rateLimited"), "{}", String::from_utf8_lossy(&b.body));
    assert!(b.header("retry-after").is_some());
    let pending = first.post(&challenges[1], None).await;
    assert_eq!(pending.json()["status"], "pending", "a refused POST leaves the challenge as it was");
    let again = first.post(&challenges[1], Some(&json!({}))).await;
    assert_eq!(again.json()["status"], "valid", "{}", String::from_utf8_lossy(&again.body));
    println!(
        "validation slots: second challenge refused while the first validated, both valid after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
