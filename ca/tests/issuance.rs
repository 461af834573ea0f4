//! Issuance end to end inside the CA core: real CSRs in, certificates out, checked field by field
//! with x509-parser, verified with rustls' webpki and `openssl verify`, and recorded durably.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ca::{AuthorizedNames, CaError, IssueRequest, Name, Policy, Profile, SpiffeId};
use common::*;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn policy() -> Policy {
    let mut p = Policy::default();
    p.trust_domain = "example.org".into();
    p.dns.deny_suffixes = vec!["forbidden.test".into()];
    p.crl_url = Some("http://127.0.0.1:8443/crl/".into());
    p.ca_issuers_url = Some("http://127.0.0.1:8443/ca/intermediate.der".into());
    p
}

fn req<'a>(csr: &'a [u8], profile: Profile) -> IssueRequest<'a> {
    IssueRequest { csr, profile, requester: "test", lifetime: None, authorized: None }
}

fn ext<'a>(
    cert: &'a X509Certificate<'a>,
    f: impl Fn(&ParsedExtension<'a>) -> bool,
) -> &'a x509_parser::extensions::X509Extension<'a> {
    cert.extensions().iter().find(|e| f(e.parsed_extension())).expect("extension present")
}

#[tokio::test]
async fn workload_certificate_has_every_field_the_profile_promises() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, material) = authority(&url, policy()).await;
        let key = p256();
        let csr = csr(&key, &[San::Uri("spiffe://example.org/ns/prod/sa/web"), San::Dns("web.prod.svc")], None);
        let before = time::OffsetDateTime::now_utc();
        let issued = auth.issue(req(&csr, Profile::Workload)).await.expect("issue");
        let (_, cert) = X509Certificate::from_der(&issued.der).expect("parse");

        // Serial: positive, at least 64 bits.
        let serial = cert.raw_serial();
        assert!(serial.len() >= 8 && serial[0] & 0x80 == 0, "serial {serial:02x?}");
        assert_eq!(hex::encode(serial), issued.serial.to_hex());
        // Subject empty, so the SAN extension must be critical.
        assert!(cert.subject().iter().next().is_none());
        let san = ext(&cert, |p| matches!(p, ParsedExtension::SubjectAlternativeName(_)));
        assert!(san.critical);
        let ParsedExtension::SubjectAlternativeName(san) = san.parsed_extension() else { unreachable!() };
        let uris: Vec<_> = san.general_names.iter().filter(|g| matches!(g, GeneralName::URI(_))).collect();
        assert_eq!(uris.len(), 1);
        assert!(san.general_names.contains(&GeneralName::URI("spiffe://example.org/ns/prod/sa/web")));
        assert!(san.general_names.contains(&GeneralName::DNSName("web.prod.svc")));
        // cA=false, critical.
        let bc = cert.basic_constraints().expect("bc").expect("present");
        assert!(bc.critical && !bc.value.ca);
        // Key usage: critical, digitalSignature only.
        let ku = cert.key_usage().expect("ku").expect("present");
        assert!(ku.critical && ku.value.digital_signature());
        assert!(!ku.value.key_encipherment() && !ku.value.key_cert_sign() && !ku.value.crl_sign());
        // EKU: serverAuth and clientAuth.
        let eku = cert.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        // AKI = intermediate SKI; SKI present.
        let aki = ext(&cert, |p| matches!(p, ParsedExtension::AuthorityKeyIdentifier(_)));
        let ParsedExtension::AuthorityKeyIdentifier(aki) = aki.parsed_extension() else { unreachable!() };
        assert_eq!(hex::encode(aki.key_identifier.as_ref().expect("keyid").0), material.intermediate.ski);
        ext(&cert, |p| matches!(p, ParsedExtension::SubjectKeyIdentifier(_)));
        // CRL distribution point (the signing intermediate's CRL below `crl_url`) and AIA caIssuers.
        let crl = ext(&cert, |p| matches!(p, ParsedExtension::CRLDistributionPoints(_)));
        let ParsedExtension::CRLDistributionPoints(dps) = crl.parsed_extension() else { unreachable!() };
        let want = format!("http://127.0.0.1:8443/crl/{}.crl", material.intermediate.id);
        let uris: Vec<_> = dps
            .iter()
            .filter_map(|dp| match &dp.distribution_point {
                Some(x509_parser::extensions::DistributionPointName::FullName(names)) => Some(names),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(uris, vec![&GeneralName::URI(&want)]);
        let aia = ext(&cert, |p| matches!(p, ParsedExtension::AuthorityInfoAccess(_)));
        let ParsedExtension::AuthorityInfoAccess(aia) = aia.parsed_extension() else { unreachable!() };
        assert_eq!(aia.accessdescs[0].access_location, GeneralName::URI("http://127.0.0.1:8443/ca/intermediate.der"));
        // Validity: backdated by 60 s, 1 h default lifetime.
        let nb = cert.validity().not_before.to_datetime();
        let na = cert.validity().not_after.to_datetime();
        assert!(nb <= before - time::Duration::seconds(59) && nb >= before - time::Duration::seconds(62), "{nb}");
        assert!((na - before - time::Duration::hours(1)).abs() < time::Duration::seconds(3), "{na}");
        // Issued by the intermediate, which chains to the root.
        assert_eq!(cert.issuer().to_string(), material.intermediate.subject);

        // Durable record with every field.
        let rec = auth.store().certificate(&issued.serial.to_hex()).await.expect("read").expect("recorded");
        assert_eq!(rec.status, ca::store::CertificateStatus::Issued);
        assert_eq!(rec.profile, "workload");
        assert_eq!(rec.requester, "test");
        assert_eq!(rec.issuer_id, material.intermediate.id);
        assert!(rec.sans.contains("spiffe://example.org/ns/prod/sa/web"));
        assert_eq!(rec.key_fingerprint, ca::sha256_fingerprint(cert.public_key().raw));
        assert_eq!(rec.not_after.unix_timestamp(), na.unix_timestamp());
        assert!(rec.cert_pem.expect("pem").contains("BEGIN CERTIFICATE"));
        let audit = auth.store().audit_events(10).await.expect("audit");
        assert!(audit.iter().any(|e| e.action == "certificate.issue" && e.target == issued.serial.to_hex()));
        assert!(audit.iter().any(|e| e.action == "key.load"));
    }
}

fn root_store(material: &ca::CaMaterial) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(material.root.cert_der().expect("der"))).expect("add root");
    Arc::new(roots)
}

#[tokio::test]
async fn certificates_verify_with_webpki_and_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let (auth, material) = authority(&url, policy()).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = root_store(&material);

    // tls-server with an EC key: webpki server verification for the DNS name and the IP.
    let key = p256();
    let server_csr = csr(&key, &[San::Dns("api.example.test"), San::Ip("127.0.0.1")], Some("api.example.test"));
    let server = auth.issue(req(&server_csr, Profile::TlsServer)).await.expect("issue tls-server");
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("verifier");
    let chain: Vec<CertificateDer<'static>> =
        server.chain_der.iter().map(|d| CertificateDer::from(d.clone())).collect();
    for name in ["api.example.test", "127.0.0.1"] {
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &CertificateDer::from(server.der.clone()),
            &chain,
            &ServerName::try_from(name).expect("name"),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("webpki rejects {name}: {e}"));
    }
    let (_, parsed) = X509Certificate::from_der(&server.der).expect("parse");
    let ku = parsed.key_usage().expect("ku").expect("present");
    assert!(!ku.value.key_encipherment(), "keyEncipherment on an EC key");
    let eku = parsed.extended_key_usage().expect("eku").expect("present");
    assert!(eku.value.server_auth && !eku.value.client_auth);

    // workload: webpki client verification (the X509-SVID is a client certificate too).
    let wl_csr = csr(&p256(), &[San::Uri("spiffe://example.org/billing")], None);
    let wl = auth.issue(req(&wl_csr, Profile::Workload)).await.expect("issue workload");
    let cv = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("client verifier");
    rustls::server::danger::ClientCertVerifier::verify_client_cert(
        cv.as_ref(),
        &CertificateDer::from(wl.der.clone()),
        &chain,
        UnixTime::now(),
    )
    .expect("webpki accepts the workload certificate as a client certificate");

    // RSA key from the openssl CLI: accepted, and keyEncipherment allowed for RSA TLS servers.
    let rsa_csr = openssl_csr(
        dir.path(),
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "-sha256",
        "subjectAltName=DNS:rsa.example.test",
    );
    let rsa = auth.issue(req(&rsa_csr, Profile::TlsServer)).await.expect("issue for RSA key");
    let (_, parsed) = X509Certificate::from_der(&rsa.der).expect("parse");
    assert!(parsed.key_usage().expect("ku").expect("present").value.key_encipherment());
    // Ed25519 and P-384 keys.
    for alg in [&ca::rcgen::PKCS_ED25519, &ca::rcgen::PKCS_ECDSA_P384_SHA384] {
        let k = ca::rcgen::KeyPair::generate_for(alg).expect("key");
        let c = csr(&k, &[San::Dns("k.example.test")], None);
        auth.issue(req(&c, Profile::TlsServer)).await.expect("issue");
    }

    // openssl verify against the root, with the intermediate as untrusted chain material.
    std::fs::write(dir.path().join("root.pem"), &material.root.cert_pem).expect("write");
    std::fs::write(dir.path().join("int.pem"), &material.intermediate.cert_pem).expect("write");
    for (name, c) in [("server", &server), ("workload", &wl), ("rsa", &rsa)] {
        let leaf = format!("{name}.pem");
        let pem = c.pem_chain();
        let first_end = pem.find("-----END CERTIFICATE-----").expect("pem") + 26;
        std::fs::write(dir.path().join(&leaf), &pem[..first_end]).expect("write");
        let out = openssl(
            dir.path(),
            &["verify", "-CAfile", "root.pem", "-untrusted", "int.pem", "-purpose", "sslserver", &leaf],
        );
        assert!(out.trim().ends_with(": OK"), "{out}");
    }
    let out = openssl(
        dir.path(),
        &["verify", "-CAfile", "root.pem", "-untrusted", "int.pem", "-purpose", "sslclient", "workload.pem"],
    );
    assert!(out.trim().ends_with(": OK"), "{out}");
}

async fn assert_refused(auth: &ca::Authority, r: IssueRequest<'_>, check: impl Fn(&CaError) -> bool) {
    let before = auth.store().certificate_counts().await.expect("counts");
    let err = auth.issue(r).await.expect_err("must be refused");
    assert!(check(&err), "unexpected error: {err:?}");
    assert_eq!(auth.store().certificate_counts().await.expect("counts"), before, "a refusal recorded a certificate");
    let last = &auth.store().audit_events(1).await.expect("audit")[0];
    assert_eq!(last.action, "certificate.issue");
    assert_ne!(last.outcome, ca::Outcome::Success);
}

#[tokio::test]
async fn every_rejection_is_typed_and_records_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for url in databases(d).await {
        let (auth, _) = authority(&url, {
            let mut p = policy();
            p.dns.allow_suffixes = vec!["example.test".into(), "forbidden.test".into(), "svc".into()];
            p
        })
        .await;
        let key = p256();
        let wl = Profile::Workload;
        let tls = Profile::TlsServer;

        // Malformed input.
        assert_refused(&auth, req(b"not a csr", tls), |e| matches!(e, CaError::MalformedCsr(_))).await;
        assert_refused(
            &auth,
            req(b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n", tls),
            |e| matches!(e, CaError::MalformedCsr(_)),
        )
        .await;
        let mut tampered = csr(&key, &[San::Dns("a.example.test")], None);
        let n = tampered.len();
        tampered[n - 5] ^= 0x55;
        assert_refused(&auth, req(&tampered, tls), |e| {
            matches!(e, CaError::BadCsrSignature | CaError::MalformedCsr(_))
        })
        .await;
        // Signature over different content: swap a SAN byte inside the signed part.
        let mut forged = csr(&key, &[San::Dns("a.example.test")], None);
        let pos = forged.windows(14).position(|w| w == b"a.example.test").expect("san");
        forged[pos] = b'b';
        assert_refused(&auth, req(&forged, tls), |e| matches!(e, CaError::BadCsrSignature)).await;
        let mut trailing = csr(&key, &[San::Dns("a.example.test")], None);
        trailing.push(0);
        assert_refused(&auth, req(&trailing, tls), |e| matches!(e, CaError::MalformedCsr(_))).await;

        // Algorithms and keys.
        let sha1 = openssl_csr(
            d,
            &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            "-sha1",
            "subjectAltName=DNS:a.example.test",
        );
        assert_refused(&auth, req(&sha1, tls), |e| matches!(e, CaError::UnsupportedSignatureAlgorithm(_))).await;
        let rsa1024 = openssl_csr(
            d,
            &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
            "-sha256",
            "subjectAltName=DNS:a.example.test",
        );
        assert_refused(&auth, req(&rsa1024, tls), |e| matches!(e, CaError::UnsupportedKey(_))).await;
        let p521 = openssl_csr(
            d,
            &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
            "-sha256",
            "subjectAltName=DNS:a.example.test",
        );
        assert_refused(&auth, req(&p521, tls), |e| matches!(e, CaError::UnsupportedKey(_))).await;

        // Workload identity shape.
        let c = csr(&key, &[San::Dns("a.svc")], None);
        assert_refused(&auth, req(&c, wl), |e| matches!(e, CaError::BadIdentity(_))).await;
        let c = csr(&key, &[San::Uri("spiffe://example.org/a"), San::Uri("spiffe://example.org/b")], None);
        assert_refused(&auth, req(&c, wl), |e| matches!(e, CaError::BadIdentity(_))).await;
        let c = csr(&key, &[San::Uri("spiffe://other.org/a")], None);
        assert_refused(&auth, req(&c, wl), |e| matches!(e, CaError::NameNotAllowed { .. })).await;
        let c = csr(&key, &[San::Uri("spiffe://example.org")], None);
        assert_refused(&auth, req(&c, wl), |e| matches!(e, CaError::BadIdentity(_))).await;
        let c = csr(&key, &[San::Uri("spiffe://example.org/a/../b")], None);
        assert_refused(&auth, req(&c, wl), |e| matches!(e, CaError::BadName { .. })).await;
        let c = csr(&key, &[San::Uri("spiffe://example.org/a"), San::Ip("10.0.0.1")], None);
        assert_refused(&auth, req(&c, wl), |e| matches!(e, CaError::BadName { .. })).await;
        let c = csr(&key, &[San::Uri("https://example.org/a")], None);
        assert_refused(&auth, req(&c, wl), |e| matches!(e, CaError::BadName { .. })).await;

        // TLS server names and DNS policy.
        let c = csr(&key, &[San::Uri("spiffe://example.org/a")], None);
        assert_refused(&auth, req(&c, tls), |e| matches!(e, CaError::BadName { .. })).await;
        let c = csr(&key, &[], None);
        assert_refused(&auth, req(&c, tls), |e| matches!(e, CaError::BadIdentity(_))).await;
        let c = csr(&key, &[San::Dns("x.forbidden.test")], None);
        assert_refused(&auth, req(&c, tls), |e| matches!(e, CaError::NameNotAllowed { .. })).await;
        let c = csr(&key, &[San::Dns("www.elsewhere.com")], None);
        assert_refused(&auth, req(&c, tls), |e| matches!(e, CaError::NameNotAllowed { .. })).await;
        let c = csr(&key, &[San::Dns("a.example.test")], Some("www.elsewhere.com"));
        assert_refused(&auth, req(&c, tls), |e| matches!(e, CaError::NameNotAllowed { .. })).await;
        let c = csr(&key, &[San::Dns("under_score.example.test")], None);
        assert_refused(&auth, req(&c, tls), |e| matches!(e, CaError::BadName { .. })).await;
        let email = openssl_csr(
            d,
            &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "-sha256",
            "subjectAltName=email:a@example.test",
        );
        assert_refused(&auth, req(&email, tls), |e| matches!(e, CaError::BadName { .. })).await;

        // Lifetime.
        let c = csr(&key, &[San::Dns("a.example.test")], None);
        let mut r = req(&c, tls);
        r.lifetime = Some(Duration::from_secs(365 * 24 * 3600));
        assert_refused(&auth, r, |e| matches!(e, CaError::LifetimeTooLong { .. })).await;

        // Authorized names: extra name, and a missing name when the set must be exact.
        let only_a = AuthorizedNames { names: vec![Name::Dns("a.example.test".into())], exact: true };
        let c = csr(&key, &[San::Dns("a.example.test"), San::Dns("b.example.test")], None);
        let mut r = req(&c, tls);
        r.authorized = Some(&only_a);
        assert_refused(&auth, r, |e| matches!(e, CaError::NameNotAllowed { .. })).await;
        let both = AuthorizedNames {
            names: vec![Name::Dns("a.example.test".into()), Name::Dns("b.example.test".into())],
            exact: true,
        };
        let c = csr(&key, &[San::Dns("a.example.test")], None);
        let mut r = req(&c, tls);
        r.authorized = Some(&both);
        assert_refused(&auth, r, |e| matches!(e, CaError::BadIdentity(_))).await;
        let spiffe = AuthorizedNames {
            names: vec![Name::Spiffe(SpiffeId::parse("spiffe://example.org/a").expect("id"))],
            exact: false,
        };
        let c = csr(&key, &[San::Uri("spiffe://example.org/b")], None);
        let mut r = req(&c, wl);
        r.authorized = Some(&spiffe);
        assert_refused(&auth, r, |e| matches!(e, CaError::NameNotAllowed { .. })).await;

        assert_eq!(auth.store().certificate_counts().await.expect("counts"), (0, 0, 0));
        // And the authorized case does issue.
        let c = csr(&key, &[San::Uri("spiffe://example.org/a")], None);
        let mut r = req(&c, wl);
        r.authorized = Some(&spiffe);
        auth.issue(r).await.expect("authorized workload issues");
        assert_eq!(auth.store().certificate_counts().await.expect("counts"), (0, 1, 0));
    }
}

#[tokio::test]
async fn unavailable_store_issues_nothing_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, _) = authority(&url, policy()).await;
        auth.store().ping().await.expect("an open store answers");
        auth.store().close().await;
        let err = auth.store().ping().await.expect_err("a closed store does not");
        assert!(matches!(err, CaError::StoreUnavailable(_)), "{err:?}");
        let c = csr(&p256(), &[San::Dns("a.example.test")], None);
        let err = auth.issue(req(&c, Profile::TlsServer)).await.expect_err("store closed");
        assert!(matches!(err, CaError::StoreUnavailable(_)), "{err:?}");
        assert!(err.to_string().contains("nothing was issued"), "{err}");
        let reopened = ca::Store::open(&url).await.expect("reopen");
        assert_eq!(reopened.certificate_counts().await.expect("counts"), (0, 0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issuance_gives_unique_recorded_serials() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, _) = authority(&url, policy()).await;
        let auth = Arc::new(auth);
        let key = Arc::new(p256());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (auth, key) = (auth.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let c = csr(&key, &[San::Dns(&format!("n{i}.example.test"))], None);
                auth.issue(req(&c, Profile::TlsServer)).await.expect("issue").serial
            }));
        }
        let mut serials = std::collections::HashSet::new();
        for t in tasks {
            assert!(serials.insert(t.await.expect("join")));
        }
        assert_eq!(serials.len(), 200);
        assert_eq!(auth.store().certificate_counts().await.expect("counts"), (0, 200, 0));
        for s in serials.iter().take(20) {
            assert!(auth.store().certificate(&s.to_hex()).await.expect("read").is_some());
        }
    }
}

#[tokio::test]
async fn the_journal_never_holds_two_active_intermediates() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, _) = authority(&url, policy()).await;
        // A second, complete CA whose intermediate also claims to be active.
        let other = ca::create_ca(&ca::InitOptions::default(), &pass()).expect("ca");
        let mut second = other.intermediate.clone();
        second.parent_id = None; // its root is not in this journal; only the state may differ
        let err = auth.store().insert_issuers(&[&second], &[]).await.expect_err("two active");
        assert!(matches!(err, CaError::Store(_)), "{err:?}");
        // All or nothing: nothing of the refused insert is in the journal.
        let journal = auth.store().issuers().await.expect("journal");
        assert_eq!(journal.len(), 2);
        assert!(journal.iter().all(|r| r.id != other.intermediate.id));
        // A prepared one is fine.
        let mut prepared = second;
        prepared.state = ca::IssuerState::Prepared;
        auth.store().insert_issuers(&[&prepared], &[]).await.expect("prepared issuer");
        assert_eq!(auth.store().issuers().await.expect("journal").len(), 3);
    }
}

/// Renewal authenticates every request against the stored record of the presented certificate.
/// With SQLite those lookups go through the store's reader thread and share read transactions:
/// each caller must get its own certificate's record, and a revocation recorded through another
/// connection (as `lanyard-ca revoke` does from its own process) must be seen by the next lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_get_their_own_record_and_see_revocations_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in databases(dir.path()).await {
        let (auth, _) = authority(&url, policy()).await;
        let auth = Arc::new(auth);
        let mut issued = Vec::new();
        for i in 0..48 {
            let c = csr(&p256(), &[San::Uri(&format!("spiffe://example.org/w/{i}"))], None);
            issued.push(auth.issue(req(&c, Profile::Workload)).await.expect("issue"));
        }
        // All lookups at once, so that they arrive at the reader together.
        let mut lookups = tokio::task::JoinSet::new();
        for cert in &issued {
            let (auth, der, serial) = (auth.clone(), cert.der.clone(), cert.serial.to_hex());
            lookups.spawn(async move { (serial, auth.authenticate_workload(&der).await) });
        }
        let mut answered = 0;
        while let Some(joined) = lookups.join_next().await {
            let (serial, record) = joined.expect("lookup task");
            let record = record.expect("a current certificate authenticates");
            assert_eq!(record.serial, serial);
            assert!(record.sans.contains("spiffe://example.org/w/"), "{}", record.sans);
            answered += 1;
        }
        assert_eq!(answered, issued.len());

        // Revoked through a second store on the same database: refused by the very next lookup.
        let other = ca::Store::open(&url).await.expect("second store");
        let revoked = &issued[7];
        assert!(
            other
                .revoke_certificate(&revoked.serial.to_hex(), 1, time::OffsetDateTime::now_utc())
                .await
                .expect("revoke")
        );
        let err = auth.authenticate_workload(&revoked.der).await.expect_err("revoked certificate");
        assert!(matches!(err, CaError::Unauthenticated(_)), "{err:?}");
        assert!(err.to_string().contains("revoked"), "{err}");
        auth.authenticate_workload(&issued[8].der).await.expect("its neighbour still authenticates");

        // A certificate issued through the second store is found by the first at once.
        let c = csr(&p256(), &[San::Uri("spiffe://example.org/w/late")], None);
        let other_auth = ca::Authority::load(other.clone(), policy(), &pass()).await.expect("second authority");
        let late = other_auth.issue(req(&c, Profile::Workload)).await.expect("issue through the second store");
        auth.authenticate_workload(&late.der).await.expect("found by the first store");

        // After close, lookups are refused as unavailable, not answered from a stale connection.
        auth.store().close().await;
        let err = auth.authenticate_workload(&issued[8].der).await.expect_err("closed store");
        assert!(matches!(err, CaError::StoreUnavailable(_)), "{err:?}");
        other.close().await;
    }
}
