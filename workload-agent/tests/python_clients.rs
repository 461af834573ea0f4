//! The Workload API against grpc C-core clients: py-spiffe (the SPIFFE project's Python library)
//! and raw `grpcio` with default channel options, over a real Unix socket.
//!
//! These clients send the socket path as the HTTP/2 `:authority` (`tmp%2F...%2Fapi.sock`), which
//! `h2` refuses on its own; `workload_api::serve` filters it (see `workload_api::AuthorityFilter`).
//! The clients run in the virtualenv that `scripts/python-clients.sh` builds; `scripts/test.sh`
//! exports its interpreter as `LANYARD_TEST_PYTHON`. Under CI (`CI` set) a missing
//! `LANYARD_TEST_PYTHON` fails these tests; locally they build the virtualenv themselves.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use workload_agent::workload_api;
use workload_agent::{Svid, TrustBundle};

const TRUST_DOMAIN: &str = "example.org";
const SPIFFE_ID: &str = "spiffe://example.org/svc";
/// Generous: a Python client starts in well under a second, but the machine may be busy.
const WAIT: Duration = Duration::from_secs(60);
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/workload_api_client.py");

/// The interpreter of the virtualenv with py-spiffe and grpcio.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Some(python) = std::env::var_os("LANYARD_TEST_PYTHON") {
            return PathBuf::from(python);
        }
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(
            !ci,
            "LANYARD_TEST_PYTHON is not set: under CI the Workload API must be tested against py-spiffe and \
             grpcio; run the tests through scripts/test.sh, which builds the virtualenv and exports it"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-clients.sh");
        let output = std::process::Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "{} failed ({}); set LANYARD_TEST_PYTHON to a Python with spiffe==0.3.x and grpcio",
            script.display(),
            output.status
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        PathBuf::from(stdout.lines().last().expect("python-clients.sh printed no interpreter path").trim())
    })
}

/// A throwaway CA: a root and an intermediate that issues the SVIDs.
struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl Pki {
    fn new() -> Pki {
        let root = CertifiedIssuer::self_signed(ca_params("python root"), KeyPair::generate().unwrap()).unwrap();
        let intermediate =
            CertifiedIssuer::signed_by(ca_params("python intermediate"), KeyPair::generate().unwrap(), &*root).unwrap();
        Pki { root, intermediate }
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle { trust_domain: TRUST_DOMAIN.into(), roots: vec![self.root.der().clone()], sequence: 1 }
    }

    /// An X509-SVID as the spec wants it (py-spiffe checks every rule when it parses one).
    fn svid(&self) -> Svid {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "svc");
        params.subject_alt_names = vec![SanType::URI(SPIFFE_ID.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let issuer: &Issuer<'_, KeyPair> = &self.intermediate;
        let leaf = params.signed_by(&key, issuer).unwrap();
        Svid {
            spiffe_id: SPIFFE_ID.into(),
            chain: vec![leaf.der().clone(), self.intermediate.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after: params.not_after.unix_timestamp(),
            not_before: params.not_before.unix_timestamp(),
        }
    }
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert))
}

/// The agent's Workload API (`workload_api::serve`, as `lanyard-agent` runs it) on a socket in a
/// temp dir, with the DER files the Python clients compare against.
struct Agent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    svids: watch::Sender<Option<Arc<Svid>>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    async fn start(pki: &Pki, svid: Svid) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent").join("api.sock");
        let bundle = pki.bundle();
        let roots: Vec<u8> = bundle.roots.iter().flat_map(|c| c.to_vec()).collect();
        std::fs::write(dir.path().join("roots.der"), roots).unwrap();
        let (svids, svids_rx) = watch::channel(None);
        let (bundles, bundles_rx) = watch::channel(Some(Arc::new(bundle)));
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let socket = socket.clone();
            async move {
                // The bundle sender lives as long as the server: a dropped sender ends the streams.
                let _bundles = bundles;
                workload_api::serve(&socket, svids_rx, bundles_rx, async {
                    shutdown_rx.await.ok();
                })
                .await
            }
        });
        let agent = Agent { dir, socket, svids, shutdown: Some(shutdown), server: Some(server) };
        agent.publish(svid);
        tokio::time::timeout(WAIT, async {
            while !agent.socket.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("socket did not appear");
        agent
    }

    /// Publishes an SVID and writes what the clients must see for it.
    fn publish(&self, svid: Svid) {
        let chain: Vec<u8> = svid.chain.iter().flat_map(|c| c.to_vec()).collect();
        std::fs::write(self.dir.path().join("chain.der"), chain).unwrap();
        std::fs::write(self.dir.path().join("key.der"), svid.key.secret_der()).unwrap();
        self.svids.send_replace(Some(Arc::new(svid)));
    }

    /// `unix:/abs/path`, as py-spiffe passes it to grpcio.
    fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// `unix:///abs/path`, the form of `SPIFFE_ENDPOINT_SOCKET`.
    fn endpoint_with_slashes(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
        let server = self.server.take().unwrap();
        tokio::time::timeout(WAIT, server).await.expect("server did not stop").unwrap().unwrap();
    }
}

/// A running Python client; its stdout is read line by line.
struct Client {
    what: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Client {
    fn start(endpoint: &str, expected: &Path, command: &str) -> Client {
        let mut child = Command::new(python())
            .arg(CLIENT)
            .args([endpoint, expected.to_str().unwrap(), command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", python().display()));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Client { what: format!("{command} on {endpoint}"), child, lines }
    }

    async fn next_line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let stderr = self.stderr().await;
                panic!("{}: the client ended without output; stderr:\n{stderr}", self.what)
            }
            Ok(Err(err)) => panic!("{}: reading stdout: {err}", self.what),
            Err(_) => panic!("{}: no output within {WAIT:?}", self.what),
        }
    }

    async fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(stderr) = self.child.stderr.take() {
            read_all(stderr, &mut text).await;
        }
        text
    }

    /// Waits for the client to exit and requires success; returns the rest of its output.
    async fn finish(mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(line) = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: did not finish within {WAIT:?}", self.what))
            .unwrap()
        {
            rest.push(line);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait()).await.unwrap().unwrap();
        let stderr = self.stderr().await;
        assert!(status.success(), "{} failed ({status}); stdout {rest:?}; stderr:\n{stderr}", self.what);
        rest
    }
}

async fn read_all(stream: impl AsyncRead + Unpin, into: &mut String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await {
        into.push_str(&line);
        into.push('\n');
    }
}

/// Runs a client to its end and returns its output lines.
async fn run(endpoint: &str, expected: &Path, command: &str) -> Vec<String> {
    Client::start(endpoint, expected, command).finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_the_svid_and_the_bundles() {
    let pki = Pki::new();
    let svid = pki.svid();
    let leaf = fingerprint(&svid.chain[0]);
    let agent = Agent::start(&pki, svid).await;

    for endpoint in [agent.endpoint(), agent.endpoint_with_slashes()] {
        // The script checks SPIFFE ID, chain and key against chain.der and key.der.
        let out = run(&endpoint, agent.dir.path(), "fetch-svid").await;
        assert_eq!(out, [format!("svid {SPIFFE_ID} {leaf}")], "{endpoint}");
    }
    let out = run(&agent.endpoint(), agent.dir.path(), "fetch-bundles").await;
    assert_eq!(out, [format!("bundles {TRUST_DOMAIN}")]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_stream_sees_every_rotation() {
    let pki = Pki::new();
    let first = pki.svid();
    let mut expected = vec![fingerprint(&first.chain[0])];
    let agent = Agent::start(&pki, first).await;

    let mut client = Client::start(&agent.endpoint(), agent.dir.path(), "stream");
    assert_eq!(client.next_line().await, format!("context {}", expected[0]));
    for rotation in 1..=3 {
        let next = pki.svid();
        expected.push(fingerprint(&next.chain[0]));
        agent.publish(next);
        // The next SVID goes out only once the client has seen this one, so none is coalesced.
        assert_eq!(client.next_line().await, format!("context {}", expected[rotation]), "rotation {rotation}");
    }
    assert!(client.finish().await.is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_default_options_is_served_and_needs_the_security_header() {
    let pki = Pki::new();
    let svid = pki.svid();
    let leaf = fingerprint(&svid.chain[0]);
    let agent = Agent::start(&pki, svid).await;

    for endpoint in [agent.endpoint(), agent.endpoint_with_slashes()] {
        let out = run(&endpoint, agent.dir.path(), "raw").await;
        assert_eq!(out, [format!("ok {leaf}")], "{endpoint}");
        let out = run(&endpoint, agent.dir.path(), "raw-no-header").await;
        assert_eq!(out.len(), 1, "{endpoint}: {out:?}");
        assert!(
            out[0].starts_with("status INVALID_ARGUMENT "),
            "{endpoint}: without workload.spiffe.io the client must see InvalidArgument, got {out:?}"
        );
    }
    agent.stop().await;
}

/// Why the filter exists: the same service behind tonic without it, and grpcio's stream is reset.
/// If grpcio ever stops sending the socket path as `:authority`, this fails and the filter can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_filter_h2_resets_grpcio_requests() {
    let pki = Pki::new();
    let svid = pki.svid();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bare.sock");
    let (_svids, svids_rx) = watch::channel(Some(Arc::new(svid)));
    let (_bundles, bundles_rx) = watch::channel(Some(Arc::new(pki.bundle())));
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(workload_api::service(svids_rx, bundles_rx))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                shutdown_rx.await.ok();
            }),
    );

    let out = run(&format!("unix:{}", socket.display()), dir.path(), "raw").await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].starts_with("status INTERNAL ") && out[0].contains("RST_STREAM"), "{out:?}");
    shutdown.send(()).unwrap();
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap().unwrap();
}
