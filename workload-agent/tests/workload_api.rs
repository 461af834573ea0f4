//! The SPIFFE Workload API server against an independent client (the `spiffe` crate) and a raw
//! tonic client, over a real Unix socket.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::{TrustDomain, WorkloadApiClient, X509Source};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;
use workload_agent::workload_api::{self, DEFAULT_SOCKET_MODE, pb};
use workload_agent::{Svid, TrustBundle};

const TRUST_DOMAIN: &str = "example.org";
const SPIFFE_ID: &str = "spiffe://example.org/svc";
const WAIT: Duration = Duration::from_secs(15);

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
    fn new(name: &str) -> Pki {
        let root =
            CertifiedIssuer::self_signed(ca_params(&format!("{name} root")), KeyPair::generate().unwrap()).unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca_params(&format!("{name} intermediate")),
            KeyPair::generate().unwrap(),
            &*root,
        )
        .unwrap();
        Pki { root, intermediate }
    }

    fn root_der(&self) -> CertificateDer<'static> {
        self.root.der().clone()
    }

    fn bundle(&self, sequence: u64) -> TrustBundle {
        TrustBundle { trust_domain: TRUST_DOMAIN.into(), roots: vec![self.root_der()], sequence }
    }

    /// An X509-SVID as the spec wants it: URI SAN, not a CA, digitalSignature, server+client auth.
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

/// A running server on a socket in a temp dir, and the publishing side of its channels.
struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    svids: Option<watch::Sender<Option<Arc<Svid>>>>,
    bundles: Option<watch::Sender<Option<Arc<TrustBundle>>>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    async fn start(svid: Option<Svid>, bundle: Option<TrustBundle>) -> Agent {
        Agent::start_with_limits(svid, bundle, workload_api::SocketLimits::default()).await
    }

    async fn start_with_limits(
        svid: Option<Svid>,
        bundle: Option<TrustBundle>,
        limits: workload_api::SocketLimits,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: the server creates it.
        let socket = dir.path().join("agent").join("api.sock");
        let (svids, svids_rx) = watch::channel(svid.map(Arc::new));
        let (bundles, bundles_rx) = watch::channel(bundle.map(Arc::new));
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let socket = socket.clone();
            async move {
                workload_api::serve_with_limits(&socket, DEFAULT_SOCKET_MODE, limits, svids_rx, bundles_rx, async {
                    shutdown_rx.await.ok();
                })
                .await
            }
        });
        wait_for_socket(&socket).await;
        Agent {
            _dir: dir,
            socket,
            svids: Some(svids),
            bundles: Some(bundles),
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    async fn client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect_to(self.endpoint()).await.unwrap()
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.endpoint()).unwrap().connect().await.unwrap()
    }

    fn publish_svid(&self, svid: Svid) {
        self.svids.as_ref().unwrap().send_replace(Some(Arc::new(svid)));
    }

    fn publish_bundle(&self, bundle: TrustBundle) {
        self.bundles.as_ref().unwrap().send_replace(Some(Arc::new(bundle)));
    }

    /// Drops the publishing side, as the agent core does when it exits.
    fn stop_publishing(&mut self) {
        self.svids = None;
        self.bundles = None;
    }

    /// Shuts the server down and checks that it stops (open streams included) and cleans up.
    async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).ok();
        let result = tokio::time::timeout(WAIT, self.server.take().unwrap())
            .await
            .expect("server did not stop within the timeout")
            .unwrap();
        result.unwrap();
        assert!(!self.socket.exists(), "socket must be removed on shutdown");
    }
}

async fn wait_for_socket(socket: &Path) {
    tokio::time::timeout(WAIT, async {
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("socket did not appear");
}

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn assert_svid_matches(fetched: &spiffe::X509Svid, expected: &Svid) {
    assert_eq!(fetched.spiffe_id().to_string(), expected.spiffe_id);
    let chain: Vec<&[u8]> = fetched.cert_chain().iter().map(|cert| cert.as_bytes()).collect();
    let expected_chain: Vec<&[u8]> = expected.chain.iter().map(|cert| cert.as_ref()).collect();
    assert_eq!(chain, expected_chain, "chain must be leaf first, intermediates after, no root");
    assert_eq!(fetched.private_key().as_bytes(), expected.key.secret_der());
}

fn authorities(bundle_set: &spiffe::X509BundleSet) -> Vec<Vec<u8>> {
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle = bundle_set.get(&trust_domain).expect("bundle for the trust domain");
    bundle.authorities().iter().map(|cert| cert.as_bytes().to_vec()).collect()
}

/// Raw gRPC calls, so that requests can omit the security header the `spiffe` client always adds.
struct RawClient(tonic::client::Grpc<Channel>);

impl RawClient {
    fn new(channel: Channel) -> RawClient {
        RawClient(tonic::client::Grpc::new(channel))
    }

    fn request<T>(message: T, header: bool) -> Request<T> {
        let mut request = Request::new(message);
        if header {
            request.metadata_mut().insert(workload_api::SECURITY_HEADER, "true".parse().unwrap());
        }
        request
    }

    async fn unary<Req, Resp>(&mut self, method: &'static str, message: Req, header: bool) -> Result<Resp, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.0.ready().await.unwrap();
        let path = PathAndQuery::from_static(method);
        let codec = ProstCodec::<Req, Resp>::default();
        self.0.unary(Self::request(message, header), path, codec).await.map(|response| response.into_inner())
    }

    async fn stream<Req, Resp>(
        &mut self,
        method: &'static str,
        message: Req,
        header: bool,
    ) -> Result<tonic::Streaming<Resp>, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.0.ready().await.unwrap();
        let path = PathAndQuery::from_static(method);
        let codec = ProstCodec::<Req, Resp>::default();
        self.0.server_streaming(Self::request(message, header), path, codec).await.map(|response| response.into_inner())
    }
}

const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
const FETCH_X509_BUNDLES: &str = "/SpiffeWorkloadAPI/FetchX509Bundles";
const FETCH_JWT_SVID: &str = "/SpiffeWorkloadAPI/FetchJWTSVID";
const FETCH_JWT_BUNDLES: &str = "/SpiffeWorkloadAPI/FetchJWTBundles";
const VALIDATE_JWT_SVID: &str = "/SpiffeWorkloadAPI/ValidateJWTSVID";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_source_receives_the_svid_and_its_rotation() {
    let pki = Pki::new("lanyard");
    let first = pki.svid();
    let agent = Agent::start(Some(first.clone()), Some(pki.bundle(1))).await;

    let mode = std::fs::metadata(&agent.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, DEFAULT_SOCKET_MODE);

    let source = within("X509Source", X509Source::builder().endpoint(agent.endpoint()).build()).await.unwrap();
    assert_svid_matches(&source.svid().unwrap(), &first);
    assert_eq!(authorities(&source.bundle_set().unwrap()), vec![pki.root_der().to_vec()]);

    let mut updates = source.updated();
    let second = pki.svid();
    agent.publish_svid(second.clone());
    within("the rotated SVID", updates.changed()).await.unwrap();
    assert_svid_matches(&source.svid().unwrap(), &second);

    // The source still holds its stream open: stopping the server must end it, not hang.
    agent.stop().await;
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_stream_waits_for_the_first_svid_and_ends_with_the_publisher() {
    let pki = Pki::new("lanyard");
    let mut agent = Agent::start(None, None).await;
    let client = agent.client().await;
    let mut svids = within("FetchX509SVID", client.stream_x509_svids()).await.unwrap();

    // Nothing to serve yet: the stream stays open and silent rather than sending an empty answer.
    assert!(tokio::time::timeout(Duration::from_millis(300), svids.next()).await.is_err());
    agent.publish_bundle(pki.bundle(1));
    assert!(tokio::time::timeout(Duration::from_millis(300), svids.next()).await.is_err());

    let svid = pki.svid();
    agent.publish_svid(svid.clone());
    let fetched = within("the first SVID", svids.next()).await.expect("a message").unwrap();
    assert_svid_matches(&fetched, &svid);

    // A new SVID is a new full response on the same stream.
    let rotated = pki.svid();
    agent.publish_svid(rotated.clone());
    let fetched = within("the rotated SVID", svids.next()).await.expect("a message").unwrap();
    assert_svid_matches(&fetched, &rotated);

    // The agent stops publishing (its senders are gone): the stream ends cleanly.
    agent.stop_publishing();
    assert!(within("the end of the stream", svids.next()).await.is_none());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_stream_follows_new_bundles() {
    let pki = Pki::new("lanyard");
    let agent = Agent::start(Some(pki.svid()), Some(pki.bundle(1))).await;
    let client = agent.client().await;

    let fetched = within("FetchX509Bundles", client.fetch_x509_bundles()).await.unwrap();
    assert_eq!(authorities(&fetched), vec![pki.root_der().to_vec()]);

    let mut bundles = within("FetchX509Bundles", client.stream_x509_bundles()).await.unwrap();
    let first = within("the first bundle", bundles.next()).await.expect("a message").unwrap();
    assert_eq!(authorities(&first), vec![pki.root_der().to_vec()]);

    // Root rotation: sequence 2 carries the old and the new root.
    let next_root = Pki::new("lanyard next");
    let mut rotated = pki.bundle(2);
    rotated.roots.push(next_root.root_der());
    agent.publish_bundle(rotated);
    let second = within("the rotated bundle", bundles.next()).await.expect("a message").unwrap();
    assert_eq!(authorities(&second), vec![pki.root_der().to_vec(), next_root.root_der().to_vec()]);

    // The SVID stream carries the new bundle too.
    let context = within("FetchX509SVID", client.fetch_x509_context()).await.unwrap();
    assert_eq!(authorities(context.bundle_set()), vec![pki.root_der().to_vec(), next_root.root_der().to_vec()]);

    // Bundle streams end on server shutdown as well.
    agent.stop().await;
    assert!(within("the end of the stream", bundles.next()).await.is_none_or(|item| item.is_err()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_responses_follow_the_spec() {
    let pki = Pki::new("lanyard");
    let svid = pki.svid();
    let agent = Agent::start(Some(svid.clone()), Some(pki.bundle(1))).await;
    let mut raw = RawClient::new(agent.channel().await);

    let mut stream =
        raw.stream::<_, pb::X509svidResponse>(FETCH_X509_SVID, pb::X509svidRequest {}, true).await.unwrap();
    let response = within("FetchX509SVID", stream.message()).await.unwrap().expect("a message");
    assert_eq!(response.svids.len(), 1);
    let entry = &response.svids[0];
    assert_eq!(entry.spiffe_id, SPIFFE_ID);
    assert_eq!(entry.x509_svid, [svid.chain[0].as_ref(), svid.chain[1].as_ref()].concat());
    assert_eq!(entry.x509_svid_key, svid.key.secret_der());
    assert_eq!(entry.bundle, pki.root_der().to_vec());
    assert_eq!(entry.hint, "");
    assert!(response.crl.is_empty());
    assert!(response.federated_bundles.is_empty());

    let mut stream =
        raw.stream::<_, pb::X509BundlesResponse>(FETCH_X509_BUNDLES, pb::X509BundlesRequest {}, true).await.unwrap();
    let response = within("FetchX509Bundles", stream.message()).await.unwrap().expect("a message");
    assert_eq!(response.bundles.len(), 1);
    assert_eq!(response.bundles["spiffe://example.org"], pki.root_der().to_vec());

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_security_header_are_refused() {
    let pki = Pki::new("lanyard");
    let agent = Agent::start(Some(pki.svid()), Some(pki.bundle(1))).await;
    let mut raw = RawClient::new(agent.channel().await);

    let refused = |status: Status| {
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "security header missing from request");
    };
    refused(raw.stream::<_, pb::X509svidResponse>(FETCH_X509_SVID, pb::X509svidRequest {}, false).await.unwrap_err());
    refused(
        raw.stream::<_, pb::X509BundlesResponse>(FETCH_X509_BUNDLES, pb::X509BundlesRequest {}, false)
            .await
            .unwrap_err(),
    );
    refused(
        raw.unary::<_, pb::JwtsvidResponse>(FETCH_JWT_SVID, pb::JwtsvidRequest::default(), false).await.unwrap_err(),
    );
    refused(
        raw.stream::<_, pb::JwtBundlesResponse>(FETCH_JWT_BUNDLES, pb::JwtBundlesRequest {}, false).await.unwrap_err(),
    );
    refused(
        raw.unary::<_, pb::ValidateJwtsvidResponse>(VALIDATE_JWT_SVID, pb::ValidateJwtsvidRequest::default(), false)
            .await
            .unwrap_err(),
    );

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_methods_are_unimplemented() {
    let pki = Pki::new("lanyard");
    let agent = Agent::start(Some(pki.svid()), Some(pki.bundle(1))).await;
    let mut raw = RawClient::new(agent.channel().await);

    let unimplemented = |status: Status| {
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(status.message().contains("JWT-SVIDs are not supported"), "{}", status.message());
    };
    let request = pb::JwtsvidRequest { audience: vec!["aud".into()], spiffe_id: String::new() };
    unimplemented(raw.unary::<_, pb::JwtsvidResponse>(FETCH_JWT_SVID, request, true).await.unwrap_err());
    unimplemented(
        raw.stream::<_, pb::JwtBundlesResponse>(FETCH_JWT_BUNDLES, pb::JwtBundlesRequest {}, true).await.unwrap_err(),
    );
    let request = pb::ValidateJwtsvidRequest { audience: "aud".into(), svid: "a.b.c".into() };
    unimplemented(raw.unary::<_, pb::ValidateJwtsvidResponse>(VALIDATE_JWT_SVID, request, true).await.unwrap_err());

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_path_handling() {
    let dir = tempfile::tempdir().unwrap();
    let (_svids, svids_rx) = watch::channel(None);
    let (_bundles, bundles_rx) = watch::channel(None);

    // A path that is not a socket is never deleted.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let err = workload_api::serve(&file, svids_rx.clone(), bundles_rx.clone(), async {}).await.unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err:#}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // A stale socket (nobody accepting on it) is replaced.
    let socket = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let (socket, svids_rx, bundles_rx) = (socket.clone(), svids_rx.clone(), bundles_rx.clone());
        async move {
            workload_api::serve_with_mode(&socket, 0o600, svids_rx, bundles_rx, async {
                shutdown_rx.await.ok();
            })
            .await
        }
    });
    within("the server to accept", async {
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    // A live socket is not stolen from the server using it.
    let err = workload_api::serve(&socket, svids_rx, bundles_rx, async {}).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err:#}");

    shutdown.send(()).ok();
    within("the server to stop", server).await.unwrap().unwrap();
    assert!(!socket.exists());
}

/// Hostile load on the socket (issue 13): connections that never send the HTTP/2 preface are
/// closed at the preface deadline, or earlier when the socket is full and a newcomer needs their
/// slot; a real client (the `spiffe` crate) fetches its SVID during the flood, long before the
/// deadline, and a stream opened before the flood is never evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_bounded_and_real_clients_get_through() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use workload_api::limits::STATS;
    let pki = Pki::new("lanyard");
    let svid = pki.svid();
    let preface = Duration::from_secs(5);
    let limits = workload_api::SocketLimits { max_connections: 64, preface_timeout: preface };
    let agent = Agent::start_with_limits(Some(svid.clone()), Some(pki.bundle(1)), limits).await;
    // A client that spoke before the flood: its stream must survive it.
    let mut early = agent.client().await.stream_x509_svids().await.unwrap();
    within("the first stream message", early.next()).await.unwrap().unwrap();
    let (refused_before, timeouts_before, evicted_before) = (
        STATS.refused.load(Ordering::Relaxed),
        STATS.preface_timeouts.load(Ordering::Relaxed),
        STATS.evicted.load(Ordering::Relaxed),
    );

    let flood_started = std::time::Instant::now();
    // Ten slow clients (half a preface, then nothing), then 100 idle ones: 110 against 63 free
    // slots.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::UnixStream::connect(&agent.socket).await.unwrap();
        s.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..12]).await.unwrap();
        slow.push(s);
    }
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::UnixStream::connect(&agent.socket).await.unwrap());
    }
    // Every slot is taken by a silent connection now. A real client gets in by evicting some,
    // well before their preface deadline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = std::time::Instant::now();
    let fetched = within("fetch_x509_svid during the flood", async { agent.client().await.fetch_x509_svid().await })
        .await
        .unwrap();
    let fetch_took = during.elapsed();
    assert_svid_matches(&fetched, &svid);
    assert!(flood_started.elapsed() < preface, "fetched before any preface deadline passed");

    // Every flooding connection ends: evicted, or closed at the preface deadline.
    let mut closed = 0;
    for mut s in idle.into_iter().chain(slow) {
        // The server's SETTINGS may come first; then the end of the stream.
        let mut sink = Vec::new();
        match tokio::time::timeout(preface + Duration::from_secs(3), s.read_to_end(&mut sink)).await {
            Ok(_) => closed += 1,
            Err(_) => panic!("a flooding connection is still open after the preface deadline"),
        }
    }
    let closed_after = flood_started.elapsed();
    assert_eq!(closed, 110);
    let refused = STATS.refused.load(Ordering::Relaxed) - refused_before;
    let timeouts = STATS.preface_timeouts.load(Ordering::Relaxed) - timeouts_before;
    let evicted = STATS.evicted.load(Ordering::Relaxed) - evicted_before;
    assert!(evicted >= 47, "the 47 connections over the 63 free slots, and room for the client: {evicted}");
    assert_eq!(refused + timeouts + evicted, 110, "refused {refused}, timed out {timeouts}, evicted {evicted}");
    assert!(timeouts > 0, "the silent connections left in the slots were closed at the deadline");

    // The stream that spoke first is still served.
    let fetch_started = std::time::Instant::now();
    let fetched = within("fetch_x509_svid after the flood", async { agent.client().await.fetch_x509_svid().await })
        .await
        .unwrap();
    assert_svid_matches(&fetched, &svid);
    match tokio::time::timeout(Duration::from_millis(300), early.next()).await {
        Err(_) | Ok(Some(Ok(_))) => {} // still open
        Ok(other) => panic!("the stream opened before the flood was cut: {other:?}"),
    }
    println!(
        "workload API flood: 110 silent connections against 63 free slots; SVID fetched {:.3} s into the flood; \
         {evicted} evicted, {timeouts} closed at the {} s preface deadline, {refused} refused; all closed after \
         {:.2} s; SVID fetched {:.3} s after; the stream opened before the flood stayed open",
        fetch_took.as_secs_f64(),
        preface.as_secs(),
        closed_after.as_secs_f64(),
        fetch_started.elapsed().as_secs_f64()
    );
    agent.stop().await;
}
