//! certs-dev writes a PKI that real TLS stacks accept: openssl verifies every leaf, and a rustls
//! server and client complete a mutual-TLS handshake with the generated material.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tests::bin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn certs(path: &std::path::Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).expect("open").collect::<Result<_, _>>().expect("pem")
}

#[tokio::test]
async fn dev_pki_verifies_and_does_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = std::process::Command::new(bin("certs-dev")).arg(d).output().expect("run certs-dev");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for key in ["server.key.pem", "client.key.pem", "server-svid.key.pem"] {
        assert_eq!(std::fs::metadata(d.join(key)).expect("meta").permissions().mode() & 0o777, 0o600);
    }
    for f in std::fs::read_dir(d).expect("ls") {
        let text = std::fs::read_to_string(f.expect("entry").path()).expect("read");
        assert!(!text.contains("ENCRYPTED") || !text.contains("PRIVATE"), "no CA key is written");
    }
    // A second run refuses to overwrite.
    let again = std::process::Command::new(bin("certs-dev")).arg(d).output().expect("run");
    assert!(!again.status.success());

    for leaf in ["server.pem", "client.pem", "server-svid.pem"] {
        let o = std::process::Command::new("openssl")
            .args(["verify", "-CAfile", "root.pem", "-untrusted", "intermediate.pem", leaf])
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(o.status.success(), "{leaf}: {}", String::from_utf8_lossy(&o.stderr));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs(&d.join("root.pem")).remove(0)).expect("root");
    let roots = Arc::new(roots);
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("verifier");
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(
            certs(&d.join("server-svid.pem")),
            PrivateKeyDer::from_pem_file(d.join("server-svid.key.pem")).expect("key"),
        )
        .expect("server config");
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(&d.join("client.pem")),
            PrivateKeyDer::from_pem_file(d.join("client.key.pem")).expect("key"),
        )
        .expect("client config");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("server handshake");
        let peer = tls.get_ref().1.peer_certificates().expect("client cert")[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&peer).expect("x509");
        let san = cert.subject_alternative_name().expect("san").expect("present");
        let uri = san.value.general_names.iter().find_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.expect("read");
        tls.write_all(b"pong").await.expect("write");
        tls.shutdown().await.ok();
        uri
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls =
        connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("client handshake");
    tls.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"pong");
    assert_eq!(server.await.expect("join").as_deref(), Some("spiffe://lanyard.internal/dev/client"));
}
