//! Two workloads authenticate each other by SPIFFE ID over mutual TLS, through `CredentialSeam`.
//!
//! Everything is in-process: a throwaway CA made with rcgen (root -> intermediate -> two X509-SVIDs),
//! one seam per workload, a server for `svc-a` that only admits `svc-b`, and a client for `svc-b`
//! that only accepts `svc-a`. Both print the SPIFFE ID they verified, and the program exits 0.
//!
//! ```sh
//! cargo run -p workload-agent --example mtls
//! ```

use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use workload_agent::tls::{Authorizer, CredentialSeam};
use workload_agent::{Svid, TrustBundle};

const SERVER_ID: &str = "spiffe://example.org/svc-a";
const CLIENT_ID: &str = "spiffe://example.org/svc-b";

/// A throwaway CA: a root and the intermediate that signs SVIDs.
struct DevCa {
    root: CertificateDer<'static>,
    intermediate_params: CertificateParams,
    intermediate_key: KeyPair,
    intermediate: CertificateDer<'static>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(1);
    params
}

impl DevCa {
    fn new() -> Result<Self> {
        let root_params = ca_params("example root");
        let root_key = KeyPair::generate()?;
        let root = root_params.self_signed(&root_key)?.der().clone();
        let intermediate_params = ca_params("example intermediate");
        let intermediate_key = KeyPair::generate()?;
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &Issuer::from_params(&root_params, &root_key))?
            .der()
            .clone();
        Ok(DevCa { root, intermediate_params, intermediate_key, intermediate })
    }

    /// An X509-SVID as the Lanyard CA's workload profile shapes it, valid for an hour.
    fn issue(&self, spiffe_id: &str) -> Result<Svid> {
        let (not_before, not_after) =
            (OffsetDateTime::now_utc() - Duration::minutes(1), OffsetDateTime::now_utc() + Duration::hours(1));
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &Issuer::from_params(&self.intermediate_params, &self.intermediate_key))?;
        Ok(Svid {
            spiffe_id: spiffe_id.to_owned(),
            chain: vec![leaf.der().clone(), self.intermediate.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after: not_after.unix_timestamp(),
            not_before: not_before.unix_timestamp(),
        })
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle { trust_domain: "example.org".into(), roots: vec![self.root.clone()], sequence: 1 }
    }
}

/// The SPIFFE ID in a verified peer leaf, for printing.
fn spiffe_id_of(leaf: Option<&CertificateDer<'_>>) -> Result<String> {
    let leaf = leaf.context("peer presented no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)?;
    let san = cert.subject_alternative_name()?.context("peer leaf has no subjectAltName")?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .context("peer leaf has no URI SAN")
}

#[tokio::main]
async fn main() -> Result<()> {
    let ca = DevCa::new()?;

    let server_seam = CredentialSeam::new(SERVER_ID)?;
    server_seam.publish(ca.issue(SERVER_ID)?, ca.bundle())?;
    let client_seam = CredentialSeam::new(CLIENT_ID)?;
    client_seam.publish(ca.issue(CLIENT_ID)?, ca.bundle())?;

    let acceptor = TlsAcceptor::from(Arc::new(server_seam.server_config(Authorizer::exact([CLIENT_ID])?)?));
    let connector = TlsConnector::from(Arc::new(client_seam.client_config(Authorizer::exact([SERVER_ID])?)?));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let peer = spiffe_id_of(tls.get_ref().1.peer_certificates().and_then(|c| c.first()))?;
        println!("server {SERVER_ID} verified client {peer}");
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        anyhow::Ok(())
    });

    // The name is required by the API but not checked: the server is verified by its SPIFFE ID.
    let mut tls =
        connector.connect(ServerName::try_from("svc-a.example.org")?, TcpStream::connect(addr).await?).await?;
    let peer = spiffe_id_of(tls.get_ref().1.peer_certificates().and_then(|c| c.first()))?;
    println!("client {CLIENT_ID} verified server {peer}");
    tls.write_all(b"hello").await?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await?;
    anyhow::ensure!(reply == b"hello", "unexpected reply {reply:?}");

    server.await??;
    println!("mTLS by SPIFFE ID: ok");
    Ok(())
}
