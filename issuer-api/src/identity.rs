//! The server's own TLS identity: a key generated in memory at start (never written anywhere) and
//! a `tls-server` certificate from our own CA, renewed at two thirds of its life.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ca::rcgen::{CertificateParams, KeyPair, SanType};
use ca::{Authority, IssueRequest, Profile};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// Lifetime of the server's certificate.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Serves whatever certificate was last published; new handshakes see a renewal at once.
#[derive(Debug)]
pub struct ServerIdentity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

async fn issue(authority: &Authority, names: &[String]) -> anyhow::Result<(Arc<CertifiedKey>, time::OffsetDateTime)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca::rcgen::DistinguishedName::new();
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, ca::rcgen::Error>>()?;
    let csr = params.serialize_request(&key)?;
    let issued = authority
        .issue(IssueRequest {
            csr: csr.der(),
            profile: Profile::TlsServer,
            requester: "lanyard-ca",
            lifetime: Some(SERVER_CERT_LIFETIME.min(authority.policy().tls_server.max)),
            authorized: None,
        })
        .await?;
    let mut chain = vec![CertificateDer::from(issued.der.clone())];
    chain.extend(issued.chain_der.iter().map(|d| CertificateDer::from(d.clone())));
    let signing = any_supported_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))?;
    Ok((Arc::new(CertifiedKey::new(chain, signing)), issued.not_after))
}

impl ServerIdentity {
    /// Issues the first certificate and starts the renewal task.
    pub async fn start(
        tasks: &crate::supervise::Tasks,
        authority: Arc<Authority>,
        names: Vec<String>,
    ) -> anyhow::Result<Arc<Self>> {
        let (ck, not_after) = issue(&authority, &names).await?;
        let me = Arc::new(ServerIdentity { current: RwLock::new(ck) });
        let weak = Arc::downgrade(&me);
        tasks.spawn("server_certificate", async move {
            let mut not_after = not_after;
            // The issuer and the chain it hands out: both change in a root rotation (cross
            // certificates come and go), and the server's chain must follow so that clients
            // holding only one of the roots keep reaching it.
            let active_id = |a: &Authority| a.active_issuer().map(|i| (i.record.id.clone(), i.chain_der.clone())).ok();
            let mut signed_by = active_id(&authority);
            loop {
                let left = (not_after - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
                let wait =
                    Duration::try_from(left * 2 / 3).unwrap_or(Duration::from_secs(60)).max(Duration::from_secs(5));
                // Renew at two thirds of the life, or as soon as the intermediate or its chain
                // changes (a rotation, an emergency that revoked the one that signed us, a root
                // rotation starting or ending).
                let due = tokio::time::Instant::now() + wait;
                while tokio::time::Instant::now() < due && active_id(&authority) == signed_by {
                    tokio::time::sleep(Duration::from_secs(1).min(due - tokio::time::Instant::now())).await;
                }
                signed_by = active_id(&authority);
                // The server is gone (it shut down): nothing left to renew for.
                let Some(me) = weak.upgrade() else { return Ok(()) };
                match issue(&authority, &names).await {
                    Ok((ck, na)) => {
                        if let Ok(mut c) = me.current.write() {
                            *c = ck;
                        }
                        not_after = na;
                        info!("server certificate renewed");
                    }
                    Err(e) => warn!(error = %e, "server certificate renewal failed; retrying"),
                }
            }
        });
        Ok(me)
    }
}
