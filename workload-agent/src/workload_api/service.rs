//! The `SpiffeWorkloadAPI` service: turns the published credentials into Workload API messages.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use super::pb::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest, X509svidResponse,
};
use crate::credentials::{Svid, TrustBundle};

/// The metadata key every Workload API request must carry with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Messages a stream may have queued for a slow client. Updates are snapshots of watch channels, so
/// a client that lags behind skips intermediate states instead of growing a queue.
const STREAM_BUFFER: usize = 1;

const JWT_UNSUPPORTED: &str = "JWT-SVIDs are not supported by the Lanyard agent; use X509-SVIDs";

/// Interceptor enforcing the Workload API security header (`workload.spiffe.io: true`).
///
/// The spec requires it so that a client that was not written for the Workload API (a browser, an
/// SSRF-able HTTP client) cannot talk to the socket. Missing or wrong, the request is refused with
/// `INVALID_ARGUMENT` and the message SPIRE uses, before it reaches any method.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let present = {
            let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
            match (values.next(), values.next()) {
                (Some(value), None) => value.to_str().is_ok_and(|value| value == "true"),
                _ => false,
            }
        };
        if present { Ok(request) } else { Err(Status::invalid_argument("security header missing from request")) }
    }
}

/// The tonic service [`super::service`] returns: the Workload API behind [`SecurityHeader`].
pub type WorkloadApiService = InterceptedService<SpiffeWorkloadApiServer<WorkloadApi>, SecurityHeader>;

/// The Workload API implementation, reading the credentials the agent publishes.
///
/// Cheap to clone; clones share the stream shutdown switch ([`WorkloadApi::close_streams`]).
#[derive(Clone)]
pub struct WorkloadApi {
    svids: watch::Receiver<Option<Arc<Svid>>>,
    bundles: watch::Receiver<Option<Arc<TrustBundle>>>,
    /// Flipped to `true` to end every open stream; streams subscribe to it.
    stop: Arc<watch::Sender<bool>>,
}

/// Hand-written so that debug output can never include key material.
impl fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadApi")
            .field("svid", &self.svids.borrow().as_ref().map(|svid| svid.spiffe_id.clone()))
            .field("bundle_sequence", &self.bundles.borrow().as_ref().map(|bundle| bundle.sequence))
            .field("closed", &*self.stop.borrow())
            .finish()
    }
}

impl WorkloadApi {
    /// Serves whatever `svids` and `bundles` hold now and publish later.
    pub fn new(svids: watch::Receiver<Option<Arc<Svid>>>, bundles: watch::Receiver<Option<Arc<TrustBundle>>>) -> Self {
        WorkloadApi { svids, bundles, stop: Arc::new(watch::Sender::new(false)) }
    }

    /// Wraps the API in the generated tonic server, behind the security-header check.
    pub fn into_service(self) -> WorkloadApiService {
        SpiffeWorkloadApiServer::with_interceptor(self, SecurityHeader)
    }

    /// Ends every open `Fetch*` stream (status OK) and every stream opened afterwards.
    ///
    /// Needed before a graceful server shutdown, which otherwise waits for streams that by design
    /// run as long as the client listens.
    pub fn close_streams(&self) {
        self.stop.send_replace(true);
    }

    fn spawn_stream<T: PartialEq + Clone + Send + 'static>(
        &self,
        watch_svids: bool,
        render: fn(&Snapshot) -> Option<T>,
    ) -> ReceiverStream<Result<T, Status>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let sources = Sources { svids: watch_svids.then(|| self.svids.clone()), bundles: self.bundles.clone() };
        tokio::spawn(pump(sources, self.stop.subscribe(), tx, render));
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ReceiverStream<Result<X509svidResponse, Status>>;

    /// Streams the SVID with its bundle: the current one at once if the agent has both, then a full
    /// response whenever either changes.
    ///
    /// Before the agent's first SVID the stream stays open and silent instead of answering
    /// `PERMISSION_DENIED` (which the spec allows for "no identity"): the agent serves a single
    /// identity that is merely not issued yet, and clients (and X509Source builders) that wait
    /// then start the moment it arrives rather than backing off and retrying.
    async fn fetch_x509svid(
        &self,
        _request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        Ok(Response::new(self.spawn_stream(true, x509_svid_response)))
    }

    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;

    /// Streams the trust bundle: the current one at once, then every new one.
    async fn fetch_x509_bundles(
        &self,
        _request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Ok(Response::new(self.spawn_stream(false, x509_bundles_response)))
    }

    async fn fetch_jwtsvid(&self, _request: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented(JWT_UNSUPPORTED))
    }

    type FetchJWTBundlesStream = tokio_stream::Empty<Result<JwtBundlesResponse, Status>>;

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented(JWT_UNSUPPORTED))
    }

    async fn validate_jwtsvid(
        &self,
        _request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented(JWT_UNSUPPORTED))
    }
}

/// The credentials one stream looks at, as of one moment.
#[derive(Debug)]
struct Snapshot {
    svid: Option<Arc<Svid>>,
    bundle: Option<Arc<TrustBundle>>,
}

/// The watch channels one stream follows (`svids` only for streams that carry the SVID, so a
/// bundle-only client is not woken by SVID rotations).
struct Sources {
    svids: Option<watch::Receiver<Option<Arc<Svid>>>>,
    bundles: watch::Receiver<Option<Arc<TrustBundle>>>,
}

impl Sources {
    /// The current values, marked as seen so that [`Sources::changed`] waits for the next ones.
    fn current(&mut self) -> Snapshot {
        Snapshot {
            svid: self.svids.as_mut().and_then(|svids| svids.borrow_and_update().clone()),
            bundle: self.bundles.borrow_and_update().clone(),
        }
    }

    /// Waits for a new value; `false` once a publisher is gone, since nothing will ever change again.
    async fn changed(&mut self) -> bool {
        match &mut self.svids {
            Some(svids) => tokio::select! {
                changed = svids.changed() => changed.is_ok(),
                changed = self.bundles.changed() => changed.is_ok(),
            },
            None => self.bundles.changed().await.is_ok(),
        }
    }
}

/// Feeds one server stream: renders the current snapshot, sends it if it differs from the last one
/// sent (a re-publish of identical credentials must not make clients rotate), and waits for the
/// next change. Ends (which the client sees as a clean end of stream) when the client goes away, a
/// publisher is dropped, or the server closes its streams.
async fn pump<T: PartialEq + Clone>(
    mut sources: Sources,
    mut stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<T, Status>>,
    render: fn(&Snapshot) -> Option<T>,
) {
    let mut last_sent: Option<T> = None;
    loop {
        let next = render(&sources.current()).filter(|next| last_sent.as_ref() != Some(next));
        if let Some(next) = next {
            tokio::select! {
                sent = tx.send(Ok(next.clone())) => if sent.is_err() { return },
                () = stopped(&mut stop) => return,
            }
            last_sent = Some(next);
        }
        tokio::select! {
            alive = sources.changed() => if !alive { return },
            () = tx.closed() => return,
            () = stopped(&mut stop) => return,
        }
    }
}

/// Completes once streams are to be closed, or the [`WorkloadApi`] holding the switch is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped with the service: nothing serves this stream any more.
    stop.wait_for(|stopped| *stopped).await.ok();
}

/// `X509SVIDResponse` for the agent's SVID, or `None` until both the SVID and a bundle exist (the
/// `bundle` field is required, so a response without one would be rejected by clients).
fn x509_svid_response(snapshot: &Snapshot) -> Option<X509svidResponse> {
    let svid = snapshot.svid.as_deref()?;
    let bundle = snapshot.bundle.as_deref().filter(|bundle| !bundle.roots.is_empty())?;
    Some(X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: svid.spiffe_id.clone(),
            x509_svid: concat_der(&svid.chain),
            x509_svid_key: svid.key.secret_der().to_vec(),
            bundle: concat_der(&bundle.roots),
            hint: String::new(),
        }],
        // Lanyard distributes no CRLs and federates with no other trust domain (yet).
        crl: Vec::new(),
        federated_bundles: HashMap::new(),
    })
}

/// `X509BundlesResponse` for the agent's trust domain, or `None` until a non-empty bundle exists.
fn x509_bundles_response(snapshot: &Snapshot) -> Option<X509BundlesResponse> {
    let bundle = snapshot.bundle.as_deref().filter(|bundle| !bundle.roots.is_empty())?;
    Some(X509BundlesResponse {
        crl: Vec::new(),
        bundles: HashMap::from([(trust_domain_id(&bundle.trust_domain), concat_der(&bundle.roots))]),
    })
}

/// The spec keys bundles by the trust domain's SPIFFE ID (`spiffe://example.org`), as SPIRE does.
fn trust_domain_id(trust_domain: &str) -> String {
    if trust_domain.starts_with("spiffe://") { trust_domain.to_owned() } else { format!("spiffe://{trust_domain}") }
}

/// The Workload API carries certificate lists as DER certificates concatenated without framing.
fn concat_der(certs: &[rustls_pki_types::CertificateDer<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(certs.iter().map(|cert| cert.len()).sum());
    for cert in certs {
        out.extend_from_slice(cert);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(values: &[&'static str]) -> Request<()> {
        let mut request = Request::new(());
        for value in values {
            request.metadata_mut().append(SECURITY_HEADER, value.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn security_header_must_be_exactly_true() {
        assert!(SecurityHeader.call(request_with(&["true"])).is_ok());
        for values in [&[][..], &["false"], &["TRUE"], &["true", "true"]] {
            let status = SecurityHeader.call(request_with(values)).expect_err("must be refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(status.message(), "security header missing from request");
        }
    }

    #[test]
    fn bundles_are_keyed_by_trust_domain_id() {
        assert_eq!(trust_domain_id("example.org"), "spiffe://example.org");
        assert_eq!(trust_domain_id("spiffe://example.org"), "spiffe://example.org");
    }
}
