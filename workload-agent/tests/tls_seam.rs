//! The rustls seam against real handshakes over loopback TCP, with a throwaway rcgen PKI
//! (root -> intermediate -> X509-SVID leaves).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use workload_agent::tls::{Authorizer, CredentialSeam, SeamError};
use workload_agent::{Svid, TrustBundle};

const TD: &str = "example.org";
const SVC_A: &str = "spiffe://example.org/svc-a";
const SVC_B: &str = "spiffe://example.org/svc-b";
const SVC_C: &str = "spiffe://example.org/svc-c";
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Throwaway PKI

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
}

impl Ca {
    fn params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
        params
    }

    fn root(cn: &str) -> Ca {
        let params = Ca::params(cn);
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca { params, key, der }
    }

    fn child(&self, cn: &str) -> Ca {
        let params = Ca::params(cn);
        let key = KeyPair::generate().unwrap();
        let der = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key)).unwrap().der().clone();
        Ca { params, key, der }
    }
}

/// Root -> intermediate; SVIDs are signed by the intermediate.
struct Pki {
    root: Ca,
    intermediate: Ca,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let root = Ca::root(&format!("{name} root"));
        let intermediate = root.child(&format!("{name} intermediate"));
        Pki { root, intermediate }
    }

    fn svid(&self, id: &str) -> Svid {
        let now = OffsetDateTime::now_utc();
        self.svid_valid(id, now - time::Duration::minutes(5), now + time::Duration::hours(1))
    }

    fn svid_valid(&self, id: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Svid {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.intermediate.params, &self.intermediate.key);
        let leaf = params.signed_by(&key, &issuer).unwrap();
        Svid {
            spiffe_id: id.to_owned(),
            chain: vec![leaf.der().clone(), self.intermediate.der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after: not_after.unix_timestamp(),
            not_before: not_before.unix_timestamp(),
        }
    }

    fn bundle(&self, sequence: u64) -> TrustBundle {
        bundle_of(&[self], sequence)
    }
}

fn bundle_of(pkis: &[&Pki], sequence: u64) -> TrustBundle {
    TrustBundle { trust_domain: TD.into(), roots: pkis.iter().map(|p| p.root.der.clone()).collect(), sequence }
}

fn seam_with(id: &str, pki: &Pki) -> CredentialSeam {
    let seam = CredentialSeam::new(id).unwrap();
    seam.publish(pki.svid(id), pki.bundle(1)).unwrap();
    seam
}

fn spiffe_id_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .unwrap()
}

fn only(id: &str) -> Authorizer {
    Authorizer::exact([id]).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Loopback mTLS harness

/// What the server learned from one handshake: the client's leaf, or why it refused.
type Accepted = Result<CertificateDer<'static>, String>;

/// Accepts forever; reports each handshake, then echoes until the client closes.
async fn serve(config: ServerConfig) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tx.send(Err(e.to_string())).ok();
                        return;
                    }
                };
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
                tx.send(Ok(leaf)).ok();
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(config: &Arc<ClientConfig>, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // Any name will do: SPIFFE verifiers ignore it.
    let name = ServerName::try_from("ignored.invalid").unwrap();
    tokio::time::timeout(STEP, TlsConnector::from(config.clone()).connect(name, tcp)).await?
}

/// One round trip. In TLS 1.3 a server's refusal of the client certificate surfaces here.
async fn ping(tls: &mut TlsStream<TcpStream>) -> std::io::Result<()> {
    tokio::time::timeout(STEP, async {
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    })
    .await?
}

async fn connect_and_ping(config: &Arc<ClientConfig>, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let mut tls = connect(config, addr).await?;
    ping(&mut tls).await?;
    Ok(tls)
}

fn server_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

async fn next_accept(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(STEP, rx.recv()).await.unwrap().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Publishing

#[test]
fn new_validates_the_spiffe_id() {
    assert!(CredentialSeam::new(SVC_A).is_ok());
    for bad in ["", "example.org/svc-a", "spiffe://example.org", "spiffe://example.org/", "https://example.org/a"] {
        assert!(matches!(CredentialSeam::new(bad), Err(SeamError::InvalidSpiffeId { .. })), "{bad:?}");
    }
    let seam = CredentialSeam::new(SVC_A).unwrap();
    assert_eq!((seam.spiffe_id(), seam.trust_domain()), (SVC_A, TD));
}

#[test]
fn nothing_is_served_before_the_first_publish() {
    let seam = CredentialSeam::new(SVC_A).unwrap();
    assert!(seam.resolver().current().is_none());
    assert!(seam.svid_updates().borrow().is_none());
    assert!(seam.bundle_updates().borrow().is_none());
}

#[test]
fn rejections_leave_the_published_material_in_place() {
    let pki = Pki::new("one");
    let other = Pki::new("other");
    let seam = CredentialSeam::new(SVC_A).unwrap();
    let mut svids = seam.svid_updates();
    let mut bundles = seam.bundle_updates();
    let resolver = seam.resolver();

    let good = pki.svid(SVC_A);
    let good_leaf = good.chain[0].clone();
    seam.publish(good, pki.bundle(5)).unwrap();
    assert!(svids.has_changed().unwrap() && bundles.has_changed().unwrap());
    svids.mark_unchanged();
    bundles.mark_unchanged();

    let now = OffsetDateTime::now_utc();
    let mut key_mismatch = pki.svid(SVC_A);
    key_mismatch.key = pki.svid(SVC_A).key;
    let mut field_mismatch = pki.svid(SVC_A);
    field_mismatch.not_after += 1;
    let mut wrong_td = pki.bundle(6);
    wrong_td.trust_domain = "other.org".into();

    let expired = pki.svid_valid(SVC_A, now - time::Duration::hours(2), now - time::Duration::hours(1));
    let not_yet_valid = pki.svid_valid(SVC_A, now + time::Duration::hours(1), now + time::Duration::hours(2));
    type Attempt<'a> = Box<dyn FnOnce() -> Result<(), SeamError> + 'a>;
    type Check = fn(&SeamError) -> bool;
    let attempts: Vec<(&str, Attempt<'_>, Check)> = vec![
        ("wrong SPIFFE ID", Box::new(|| seam.publish(pki.svid(SVC_B), pki.bundle(5))), |e| {
            matches!(e, SeamError::WrongSpiffeId { .. })
        }),
        ("expired", Box::new(|| seam.publish(expired, pki.bundle(5))), |e| matches!(e, SeamError::Expired { .. })),
        ("not yet valid", Box::new(|| seam.publish(not_yet_valid, pki.bundle(5))), |e| {
            matches!(e, SeamError::NotYetValid { .. })
        }),
        ("key mismatch", Box::new(|| seam.publish(key_mismatch, pki.bundle(5))), |e| {
            matches!(e, SeamError::KeyMismatch)
        }),
        ("field mismatch", Box::new(|| seam.publish(field_mismatch, pki.bundle(5))), |e| {
            matches!(e, SeamError::SvidFieldMismatch { field: "not_after", .. })
        }),
        ("unknown root", Box::new(|| seam.publish(other.svid(SVC_A), pki.bundle(6))), |e| {
            matches!(e, SeamError::UntrustedChain { sequence: 6, .. })
        }),
        ("sequence backwards", Box::new(|| seam.publish(pki.svid(SVC_A), pki.bundle(4))), |e| {
            matches!(e, SeamError::SequenceWentBackwards { current: 5, offered: 4 })
        }),
        ("sequence reused", Box::new(|| seam.publish(pki.svid(SVC_A), bundle_of(&[&pki, &other], 5))), |e| {
            matches!(e, SeamError::SequenceReused { sequence: 5 })
        }),
        ("wrong trust domain", Box::new(|| seam.publish(pki.svid(SVC_A), wrong_td.clone())), |e| {
            matches!(e, SeamError::WrongTrustDomain { .. })
        }),
        ("empty chain", Box::new(|| seam.publish(Svid { chain: vec![], ..pki.svid(SVC_A) }, pki.bundle(5))), |e| {
            matches!(e, SeamError::EmptyChain)
        }),
        ("bundle backwards", Box::new(|| seam.publish_bundle(pki.bundle(4))), |e| {
            matches!(e, SeamError::SequenceWentBackwards { current: 5, offered: 4 })
        }),
        ("bundle drops our root", Box::new(|| seam.publish_bundle(other.bundle(7))), |e| {
            matches!(e, SeamError::UntrustedChain { sequence: 7, .. })
        }),
        ("bundle for another trust domain", Box::new(|| seam.publish_bundle(wrong_td.clone())), |e| {
            matches!(e, SeamError::WrongTrustDomain { .. })
        }),
        ("empty bundle", Box::new(|| seam.publish_bundle(TrustBundle { roots: vec![], ..pki.bundle(8) })), |e| {
            matches!(e, SeamError::EmptyBundle { .. })
        }),
    ];
    for (what, attempt, is_expected) in attempts {
        let err = attempt().expect_err(what);
        assert!(is_expected(&err), "{what}: unexpected error {err:?}");
        // Still the first SVID and bundle, for rustls and for the channel subscribers.
        assert!(!svids.has_changed().unwrap() && !bundles.has_changed().unwrap(), "{what}: a channel changed");
        assert_eq!(resolver.current().unwrap().cert[0], good_leaf, "{what}: resolver changed");
        assert_eq!(svids.borrow().as_ref().unwrap().chain[0], good_leaf, "{what}");
        assert_eq!(bundles.borrow().as_ref().unwrap().sequence, 5, "{what}");
    }

    let err = seam.publish(pki.svid(SVC_B), pki.bundle(5)).unwrap_err();
    assert_eq!(err.to_string(), format!("SVID is for {SVC_B} but this seam serves {SVC_A}"));

    // A later good publish with the same bundle replaces the SVID without touching the bundle channel.
    seam.publish(pki.svid(SVC_A), pki.bundle(5)).unwrap();
    assert!(svids.has_changed().unwrap());
    assert!(!bundles.has_changed().unwrap());
    assert_ne!(resolver.current().unwrap().cert[0], good_leaf);
}

// ---------------------------------------------------------------------------------------------
// Handshakes

#[tokio::test]
async fn mtls_between_two_seams_by_spiffe_id() {
    let pki = Pki::new("one");
    let a = seam_with(SVC_A, &pki);
    let b = seam_with(SVC_B, &pki);
    let (addr, mut accepted) = serve(a.server_config(only(SVC_B)).unwrap()).await;
    let client = Arc::new(b.client_config(only(SVC_A)).unwrap());

    let tls = connect_and_ping(&client, addr).await.unwrap();
    assert_eq!(spiffe_id_of(&server_leaf(&tls)), SVC_A);
    assert_eq!(spiffe_id_of(&next_accept(&mut accepted).await.unwrap()), SVC_B);

    // The any-in-trust-domain and custom rules admit the same peers.
    let (addr, mut accepted) = serve(a.server_config(Authorizer::custom(|id| id.ends_with("/svc-b"))).unwrap()).await;
    let client = Arc::new(b.client_config(Authorizer::any_in_trust_domain()).unwrap());
    connect_and_ping(&client, addr).await.unwrap();
    assert_eq!(spiffe_id_of(&next_accept(&mut accepted).await.unwrap()), SVC_B);
}

#[tokio::test]
async fn server_refuses_unauthorized_client() {
    let pki = Pki::new("one");
    let a = seam_with(SVC_A, &pki);
    let b = seam_with(SVC_B, &pki);
    let (addr, mut accepted) = serve(a.server_config(only(SVC_C)).unwrap()).await;
    let client = Arc::new(b.client_config(only(SVC_A)).unwrap());

    assert!(connect_and_ping(&client, addr).await.is_err());
    let refusal = next_accept(&mut accepted).await.unwrap_err();
    assert!(refusal.contains(&format!("peer SPIFFE ID {SVC_B} is not authorized")), "{refusal}");
}

#[tokio::test]
async fn client_refuses_unauthorized_server() {
    let pki = Pki::new("one");
    let a = seam_with(SVC_A, &pki);
    let b = seam_with(SVC_B, &pki);
    let (addr, mut accepted) = serve(a.server_config(only(SVC_B)).unwrap()).await;
    let client = Arc::new(b.client_config(only(SVC_C)).unwrap());

    let err = connect(&client, addr).await.unwrap_err();
    assert!(err.to_string().contains(&format!("peer SPIFFE ID {SVC_A} is not authorized")), "{err}");
    assert!(next_accept(&mut accepted).await.is_err());
}

#[tokio::test]
async fn chains_from_another_root_are_refused_both_ways() {
    let pki = Pki::new("one");
    let stranger = Pki::new("stranger");
    let a = seam_with(SVC_A, &pki);
    // Same trust domain name, different root: the SPIFFE ID alone proves nothing.
    let b = seam_with(SVC_B, &stranger);
    let any = Authorizer::any_in_trust_domain;

    let (addr, mut accepted) = serve(a.server_config(any()).unwrap()).await;
    let client = Arc::new(b.client_config(any()).unwrap());
    let err = connect(&client, addr).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "client: {err}");
    assert!(next_accept(&mut accepted).await.is_err());

    // And the server refuses the stranger's client certificate even when the client trusts it.
    let b_trusting = seam_with(SVC_B, &stranger);
    b_trusting.publish_bundle(bundle_of(&[&stranger, &pki], 2)).unwrap();
    let client = Arc::new(b_trusting.client_config(any()).unwrap());
    assert!(connect_and_ping(&client, addr).await.is_err());
    let refusal = next_accept(&mut accepted).await.unwrap_err();
    assert!(refusal.contains("UnknownIssuer"), "server: {refusal}");
}

#[tokio::test]
async fn handshake_before_any_publish_fails_cleanly() {
    let pki = Pki::new("one");
    let empty = CredentialSeam::new(SVC_A).unwrap();
    let b = seam_with(SVC_B, &pki);
    let (addr, mut accepted) = serve(empty.server_config(Authorizer::any_in_trust_domain()).unwrap()).await;
    let client = Arc::new(b.client_config(Authorizer::any_in_trust_domain()).unwrap());
    assert!(connect_and_ping(&client, addr).await.is_err());
    assert!(next_accept(&mut accepted).await.is_err());
}

#[tokio::test]
async fn hot_reload_serves_new_handshakes_and_keeps_open_connections() {
    let pki = Pki::new("one");
    let a = seam_with(SVC_A, &pki);
    let b = seam_with(SVC_B, &pki);
    // Built once, never rebuilt.
    let (addr, mut accepted) = serve(a.server_config(only(SVC_B)).unwrap()).await;
    let client = Arc::new(b.client_config(only(SVC_A)).unwrap());

    let mut old_conn = connect_and_ping(&client, addr).await.unwrap();
    let old_server_leaf = server_leaf(&old_conn);
    let old_client_leaf = next_accept(&mut accepted).await.unwrap();

    let new_a = pki.svid(SVC_A);
    let new_b = pki.svid(SVC_B);
    let (new_a_leaf, new_b_leaf) = (new_a.chain[0].clone(), new_b.chain[0].clone());
    assert_ne!(new_a_leaf, old_server_leaf);
    assert_ne!(new_b_leaf, old_client_leaf);
    a.publish(new_a, pki.bundle(1)).unwrap();
    b.publish(new_b, pki.bundle(1)).unwrap();

    let new_conn = connect_and_ping(&client, addr).await.unwrap();
    assert_eq!(server_leaf(&new_conn), new_a_leaf);
    assert_eq!(next_accept(&mut accepted).await.unwrap(), new_b_leaf);

    // The connection made before the reload still works, still on the old certificates.
    ping(&mut old_conn).await.unwrap();
    assert_eq!(server_leaf(&old_conn), old_server_leaf);
}

#[tokio::test]
async fn root_rotation_without_rebuilding_configs() {
    let old = Pki::new("old");
    let new = Pki::new("new");
    let a = seam_with(SVC_A, &old);
    let b = seam_with(SVC_B, &old);
    let (addr, mut accepted) = serve(a.server_config(only(SVC_B)).unwrap()).await;
    let client = Arc::new(b.client_config(only(SVC_A)).unwrap());
    connect_and_ping(&client, addr).await.unwrap();
    next_accept(&mut accepted).await.unwrap();

    // 1. Both sides learn the new root alongside the old one.
    let both = bundle_of(&[&old, &new], 2);
    a.publish_bundle(both.clone()).unwrap();
    b.publish_bundle(both.clone()).unwrap();
    assert_eq!(a.bundle_updates().borrow().as_ref().unwrap().roots.len(), 2);
    connect_and_ping(&client, addr).await.unwrap();
    next_accept(&mut accepted).await.unwrap();

    // 2. The server moves to an SVID under the new root; the client, still under the old one, is fine.
    let a_new = new.svid(SVC_A);
    let a_new_leaf = a_new.chain[0].clone();
    a.publish(a_new, both.clone()).unwrap();
    let conn = connect_and_ping(&client, addr).await.unwrap();
    assert_eq!(server_leaf(&conn), a_new_leaf);
    next_accept(&mut accepted).await.unwrap();

    // 3. B cannot drop the old root while its own SVID still chains to it; A can.
    let only_new = new.bundle(3);
    assert!(matches!(b.publish_bundle(only_new.clone()), Err(SeamError::UntrustedChain { .. })));
    a.publish_bundle(only_new.clone()).unwrap();
    assert!(connect_and_ping(&client, addr).await.is_err(), "A no longer trusts B's old root");
    next_accept(&mut accepted).await.unwrap_err();

    // 4. B renews under the new root and the pair works again.
    b.publish(new.svid(SVC_B), only_new).unwrap();
    connect_and_ping(&client, addr).await.unwrap();
    next_accept(&mut accepted).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Revocation

fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

/// A CRL signed by `ca` listing `revoked` (DER serials).
fn crl(ca: &Ca, revoked: &[Vec<u8>]) -> rustls::pki_types::CertificateRevocationListDer<'static> {
    let now = OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::hours(1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(s),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&Issuer::from_params(&ca.params, &ca.key)).unwrap().der().clone()
}

#[tokio::test]
async fn crls_refuse_revoked_leaves_and_everything_under_a_revoked_intermediate() {
    let pki = Pki::new("one");
    let a = seam_with(SVC_A, &pki);
    let b = seam_with(SVC_B, &pki);
    // A second svc-b leaf, held elsewhere, and a client presenting it.
    let held = pki.svid(SVC_B);
    let held_serial = serial_of(held.chain[0].as_ref());
    let c = CredentialSeam::new(SVC_B).unwrap();
    c.publish(held, pki.bundle(1)).unwrap();
    let (addr, _accepted) = serve(a.server_config(only(SVC_B)).unwrap()).await;
    let honest = Arc::new(b.client_config(only(SVC_A)).unwrap());
    let holder = Arc::new(c.client_config(only(SVC_A)).unwrap());
    connect_and_ping(&holder, addr).await.unwrap();

    // The intermediate's CRL lists the held leaf; the root has no CRL (unknown status: allowed).
    let leaf_crl = crl(&pki.intermediate, std::slice::from_ref(&held_serial));
    assert!(a.publish_crls(vec![leaf_crl.clone()]).unwrap());
    assert!(!a.publish_crls(vec![leaf_crl]).unwrap(), "an identical set changes nothing");
    assert!(!a.svid_revoked());
    let err = connect_and_ping(&holder, addr).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    connect_and_ping(&honest, addr).await.unwrap();

    // A set with a CRL that does not parse, or a root CRL not signed by the root it names, is
    // refused whole, and the CRLs in force stay.
    let garbage = rustls::pki_types::CertificateRevocationListDer::from(b"not a CRL".to_vec());
    assert!(matches!(a.publish_crls(vec![garbage]), Err(SeamError::InvalidCrl { .. })));
    let impostor = Ca { params: Ca::params("one root"), key: KeyPair::generate().unwrap(), der: pki.root.der.clone() };
    assert!(matches!(a.publish_crls(vec![crl(&impostor, &[])]), Err(SeamError::InvalidCrl { .. })));
    assert!(connect_and_ping(&holder, addr).await.is_err(), "the revoked leaf is still refused");

    // The root's CRL revokes the intermediate: every leaf under it is refused, in both roles.
    let int_serial = serial_of(pki.intermediate.der.as_ref());
    assert!(
        b.publish_crls(vec![crl(&pki.root, std::slice::from_ref(&int_serial)), crl(&pki.intermediate, &[])]).unwrap(),
        "our own SVID being under the revoked intermediate does not block the CRLs"
    );
    assert!(b.svid_revoked());
    let err = connect(&honest, addr).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    assert!(a.publish_crls(vec![crl(&pki.root, &[int_serial])]).unwrap());
    assert!(connect_and_ping(&honest, addr).await.is_err());
    assert!(a.svid_revoked());
}

// ---------------------------------------------------------------------------------------------
// Files: one more subscriber of the seam

fn outputs(dir: &std::path::Path) -> workload_agent::config::Output {
    workload_agent::config::Output {
        key_file: Some(dir.join("key.pem")),
        cert_file: Some(dir.join("cert.pem")),
        bundle_file: Some(dir.join("bundle.pem")),
        crl_file: Some(dir.join("crls.pem")),
    }
}

/// Waits until `path` holds what `check` wants (the writer runs as a task of its own).
async fn file_until(path: &std::path::Path, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && check(&text)
        {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never got the expected content", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pem_of(der: &[u8], label: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[tokio::test]
async fn files_follow_every_publish_of_the_seam_and_nothing_it_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = outputs(dir.path());
    let pki = Pki::new("files");
    let seam = CredentialSeam::new(SVC_A).unwrap();
    let (_registry, metrics) = workload_agent::agent::metrics::registry();
    let writer = tokio::spawn(workload_agent::agent::files::follow_seam(
        seam.clone(),
        out.clone(),
        Default::default(),
        metrics.clone(),
    ));

    // A first SVID: key (0600), chain and bundle appear.
    let first = pki.svid(SVC_A);
    seam.publish(first.clone(), pki.bundle(1)).unwrap();
    let leaf = pem_of(first.chain[0].as_ref(), "CERTIFICATE");
    file_until(out.cert_file.as_ref().unwrap(), |t| t.starts_with(&leaf)).await;
    let key = std::fs::read_to_string(out.key_file.as_ref().unwrap()).unwrap();
    assert_eq!(key, pem_of(first.key.secret_der(), "PRIVATE KEY"), "the key that goes with the chain");
    let mode = std::fs::metadata(out.key_file.as_ref().unwrap()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let root = pem_of(pki.root.der.as_ref(), "CERTIFICATE");
    assert_eq!(std::fs::read_to_string(out.bundle_file.as_ref().unwrap()).unwrap(), root);

    // A renewal: new key and chain.
    let second = pki.svid(SVC_A);
    seam.publish(second.clone(), pki.bundle(1)).unwrap();
    let leaf2 = pem_of(second.chain[0].as_ref(), "CERTIFICATE");
    file_until(out.cert_file.as_ref().unwrap(), |t| t.starts_with(&leaf2)).await;
    assert_eq!(
        std::fs::read_to_string(out.key_file.as_ref().unwrap()).unwrap(),
        pem_of(second.key.secret_der(), "PRIVATE KEY")
    );

    // A root rotation: the bundle file gets both roots.
    let next = Pki::new("files-next");
    seam.publish_bundle(bundle_of(&[&pki, &next], 2)).unwrap();
    let both = format!("{root}{}", pem_of(next.root.der.as_ref(), "CERTIFICATE"));
    file_until(out.bundle_file.as_ref().unwrap(), |t| t == both).await;

    // New CRLs: the CRL file.
    let list = crl(&pki.intermediate, &[vec![0x42]]);
    assert!(seam.publish_crls(vec![list.clone()]).unwrap());
    file_until(out.crl_file.as_ref().unwrap(), |t| t == pem_of(list.as_ref(), "X509 CRL")).await;

    // What the seam refuses (another workload's SVID) never reaches the disk.
    assert!(seam.publish(pki.svid(SVC_B), bundle_of(&[&pki, &next], 2)).is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(std::fs::read_to_string(out.cert_file.as_ref().unwrap()).unwrap().starts_with(&leaf2));
    assert_eq!(metrics.file_write_failures.get(), 0);
    writer.abort();
}

#[tokio::test]
async fn a_failed_file_write_is_counted_and_retried_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // The output directory cannot be created: a regular file sits where it should be.
    let blocked = dir.path().join("out");
    std::fs::write(&blocked, b"in the way").unwrap();
    let out = outputs(&blocked);
    let pki = Pki::new("retry");
    let seam = CredentialSeam::new(SVC_A).unwrap();
    let (registry, metrics) = workload_agent::agent::metrics::registry();
    let writer = tokio::spawn(workload_agent::agent::files::follow_seam(
        seam.clone(),
        out.clone(),
        Default::default(),
        metrics.clone(),
    ));
    let svid = pki.svid(SVC_A);
    seam.publish(svid.clone(), pki.bundle(1)).unwrap();
    let deadline = tokio::time::Instant::now() + STEP;
    while metrics.file_write_failures.get() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the failed write was not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        workload_agent::agent::metrics::render(&registry).contains("lanyard_agent_file_write_failures_total "),
        "exported"
    );
    // The obstacle goes away: the retry (after about a second) writes the files.
    std::fs::remove_file(&blocked).unwrap();
    let leaf = pem_of(svid.chain[0].as_ref(), "CERTIFICATE");
    file_until(out.cert_file.as_ref().unwrap(), |t| t.starts_with(&leaf)).await;
    assert!(out.key_file.as_ref().unwrap().exists());
    writer.abort();
}
