//! Certificate revocation lists (RFC 5280 section 5), one per intermediate, each signed by that
//! intermediate's own key.
//!
//! - **What is listed**: every certificate the issuer signed that is revoked, until one CRL
//!   validity period (`[policy] crl_validity`, default 1 h) after the certificate's NotAfter. RFC
//!   5280 section 3.3 lets an entry go once it has appeared on a CRL issued after the certificate
//!   expired; CRLs are reissued at least every half validity period while the server runs, so each
//!   entry does, and CRLs stay as small as the set of revoked *live* certificates.
//! - **Entries**: serial, revocation date and the reason code; reason 0 (unspecified) is left out,
//!   as section 5.3.1 recommends.
//! - **Extensions**: v2 CRL with the authority key identifier (the issuer's subject key
//!   identifier, whatever method produced it) and the CRL number. thisUpdate is the signing time,
//!   nextUpdate thisUpdate + `crl_validity`.
//! - **When**: a CRL is reissued when its revoked set changes (a revocation, or an entry ageing
//!   out) and when half of its validity has passed. Each reissue gets the next CRL number; the
//!   latest CRL is stored in the database (`crl_state`), so the number only increases across
//!   restarts and replicas, and every replica serves the same CRL for a given number.
//! - **Which issuers**: prepared, active and retired intermediates that have not expired. Expired
//!   intermediates have no CRL: everything they signed has expired too. Root CRLs are signed
//!   only where the root key is ([`root`]); this module serves the latest stored one.
//!
//! The active intermediate's key is in memory already; a retired (or prepared) one's is decrypted
//! from the journal with the passphrase handed over by [`Authority::set_passphrase`] and kept in
//! memory while it is needed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;
use tracing::info;

use crate::audit::{AuditEvent, Outcome};
use crate::issuers::{ActiveIssuer, IssuerKind, IssuerRecord, IssuerState};
use crate::keys::{Passphrase, decrypt_key_pem};
use crate::store::crl::{RevokedCertificate, StoredCrl};
use crate::{Authority, CaError, PASSPHRASE_ENV};

pub(crate) mod root;

/// A signed CRL.
#[derive(Clone, PartialEq, Eq)]
pub struct Crl {
    /// Journal id of the issuer that signed it.
    pub issuer_id: String,
    /// CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// The CRL, DER (`application/pkix-crl`).
    pub der: Vec<u8>,
}

impl std::fmt::Debug for Crl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crl")
            .field("issuer_id", &self.issuer_id)
            .field("number", &self.number)
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .field("der_len", &self.der.len())
            .finish()
    }
}

impl Crl {
    /// PEM (`X509 CRL`), e.g. for `openssl verify -CRLfile`.
    pub fn pem(&self) -> String {
        crate::pem::encode(crate::pem::X509_CRL, &self.der)
    }
}

/// A CRL this process holds, with the digest of the entries it lists.
#[derive(Debug, Clone)]
struct Cached {
    crl: Crl,
    digest: String,
}

/// CRL state of an [`Authority`]: the latest CRL per issuer, decrypted keys of non-active
/// issuers, and the passphrase to decrypt them.
#[derive(Default)]
pub(crate) struct CrlCache {
    pass: Mutex<Option<Passphrase>>,
    signers: Mutex<HashMap<String, Arc<ActiveIssuer>>>,
    latest: Mutex<HashMap<String, Cached>>,
    /// One regeneration at a time in this process (others wait and then find it done).
    regen: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CrlCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlCache").finish_non_exhaustive()
    }
}

fn poisoned<T>(_: T) -> CaError {
    CaError::Store("CRL cache lock poisoned".into())
}

/// SHA-256 over the entries a CRL lists: equal digests, equal revoked sets.
pub(crate) fn entries_digest(entries: &[RevokedCertificate]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for e in entries {
        ctx.update(format!("{},{},{}\n", e.serial, e.revoked_at.unix_timestamp(), e.reason.unwrap_or(0)).as_bytes());
    }
    hex::encode(ctx.finish())
}

fn reason(code: Option<i32>) -> Option<RevocationReason> {
    use RevocationReason::*;
    Some(match code? {
        0 => Unspecified,
        1 => KeyCompromise,
        2 => CaCompromise,
        3 => AffiliationChanged,
        4 => Superseded,
        5 => CessationOfOperation,
        6 => CertificateHold,
        8 => RemoveFromCrl,
        9 => PrivilegeWithdrawn,
        10 => AaCompromise,
        _ => return None,
    })
}

/// Builds and signs the CRL of `signer` (RFC 5280 section 5: v2, AKI = the issuer's SKI, CRL
/// number, reason codes other than unspecified).
pub(crate) fn build_crl(
    signer: &ActiveIssuer,
    number: u64,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    entries: &[RevokedCertificate],
) -> Result<Vec<u8>, CaError> {
    let revoked_certs = entries
        .iter()
        .map(|e| {
            let serial = hex::decode(&e.serial)
                .map_err(|_| CaError::Store(format!("certificate serial {:?} is not hex", e.serial)))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: e.revoked_at,
                reason_code: reason(e.reason),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    let ski = hex::decode(&signer.record.ski)
        .map_err(|_| CaError::Store(format!("issuer {} has a malformed subject key identifier", signer.record.id)))?;
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::PreSpecified(ski),
    };
    let crl = params.signed_by(&signer.issuer).map_err(|e| match e {
        rcgen::Error::IssuerNotCrlSigner => {
            CaError::Config(format!("issuer {} has no cRLSign key usage and cannot sign CRLs", signer.record.id))
        }
        other => CaError::Signing(format!("CRL of {}: {other}", signer.record.id)),
    })?;
    Ok(crl.der().to_vec())
}

/// Whether an issuer has a CRL: a prepared, active or retired intermediate, not yet expired.
fn has_crl(r: &IssuerRecord, now: OffsetDateTime) -> bool {
    r.kind == IssuerKind::Intermediate
        && matches!(r.state, IssuerState::Prepared | IssuerState::Active | IssuerState::Retired)
        && r.not_after > now
}

fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Still good to serve: younger than half its validity and not past nextUpdate.
fn fresh(this_update: OffsetDateTime, next_update: OffsetDateTime, validity: Duration, now: OffsetDateTime) -> bool {
    now < next_update && now < this_update + validity / 2
}

fn to_crl(issuer_id: &str, s: StoredCrl) -> Cached {
    Cached {
        crl: Crl {
            issuer_id: issuer_id.to_owned(),
            number: u64::try_from(s.number).unwrap_or(0),
            this_update: s.this_update,
            next_update: s.next_update,
            der: s.der,
        },
        digest: s.digest,
    }
}

impl Authority {
    /// Hands the CA passphrase to the authority so it can sign CRLs for retired (and prepared)
    /// intermediates, whose keys stay encrypted in the journal until a CRL needs them. Without
    /// it, only the active intermediate's CRL can be (re)made.
    pub fn set_passphrase(&self, pass: Passphrase) {
        if let Ok(mut p) = self.crl.pass.lock() {
            *p = Some(pass);
        }
    }

    /// The current CRL of intermediate `issuer_id`, DER; None when it has none (unknown, a root,
    /// or expired). Served from memory unless the issuer's revoked set changed or half of the
    /// CRL's validity has passed; then the latest CRL in the database is used if another replica
    /// already made a fresh one, else a new one is signed with the next CRL number.
    pub async fn crl(&self, issuer_id: &str) -> Result<Option<Crl>, CaError> {
        let now = now_seconds();
        let journal = self.store().issuers().await?;
        // Roots: the CRL signed where the root key is (an emergency rotation, the rotation loop).
        if journal.iter().any(|r| r.id == issuer_id && r.kind == IssuerKind::Root && r.state != IssuerState::Expired) {
            // A staged emergency revocation that is due is served even before a rotation loop
            // has published it.
            self.store().publish_due_crls(now.unix_timestamp()).await?;
            let latest = self.store().latest_crl(issuer_id).await?;
            return Ok(latest.filter(|l| l.next_update > now).map(|l| to_crl(issuer_id, l).crl));
        }
        let Some(record) = journal.iter().find(|r| r.id == issuer_id && has_crl(r, now)) else {
            self.forget_crl(issuer_id)?;
            return Ok(None);
        };
        let validity = self.policy().crl_validity;
        let entries = self.store().revoked_certificates(issuer_id, now - validity).await?;
        let digest = entries_digest(&entries);
        if let Some(c) = self.cached_crl(issuer_id, &digest, validity, now)? {
            return Ok(Some(c));
        }

        let _one_at_a_time = self.crl.regen.lock().await;
        let now = now_seconds();
        if let Some(c) = self.cached_crl(issuer_id, &digest, validity, now)? {
            return Ok(Some(c));
        }
        for _ in 0..5 {
            // Read the latest CRL before the entries: a CRL stored by another replica after this
            // read makes the conditional replace below fail, and one stored before it was made
            // from entries this read sees too, so a revocation can never be dropped.
            let latest = self.store().latest_crl(issuer_id).await?;
            let entries = self.store().revoked_certificates(issuer_id, now - validity).await?;
            let digest = entries_digest(&entries);
            let current = latest.as_ref().filter(|s| s.digest == digest);
            if let Some(s) = current.filter(|s| fresh(s.this_update, s.next_update, validity, now)) {
                return Ok(Some(self.remember_crl(to_crl(issuer_id, s.clone()))?));
            }
            let number = latest.as_ref().map_or(1, |s| s.number.saturating_add(1));
            let signer = self.crl_signer(record).await?;
            let next_update = now + validity;
            let der = build_crl(&signer, u64::try_from(number).unwrap_or(0), now, next_update, &entries)?;
            let stored = StoredCrl { number, digest, this_update: now, next_update, der };
            let ev = AuditEvent::now(
                "ca",
                "crl.sign",
                issuer_id,
                Outcome::Success,
                format!("CRL number {number}, {} revoked certificates", entries.len()),
            );
            if self.store().replace_crl(issuer_id, latest.map(|s| s.number), &stored, &ev).await? {
                info!(issuer = issuer_id, number, revoked = entries.len(), "CRL signed");
                return Ok(Some(self.remember_crl(to_crl(issuer_id, stored))?));
            }
            // Another replica stored a CRL meanwhile: look again.
        }
        Err(CaError::Store(format!("the CRL of {issuer_id} kept changing under us")))
    }

    /// Makes sure every intermediate that has a CRL has a fresh one (the schedule: call it more
    /// often than half the CRL validity), and forgets issuers that no longer have one. Returns how
    /// many CRLs are current; the first error, if any, after trying them all.
    pub async fn refresh_crls(&self) -> Result<usize, CaError> {
        let now = now_seconds();
        let journal = self.store().issuers().await?;
        let mut current = 0;
        let mut first_err = None;
        for r in &journal {
            if !has_crl(r, now) {
                self.forget_crl(&r.id)?;
                continue;
            }
            match self.crl(&r.id).await {
                Ok(Some(_)) => current += 1,
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(current), Err)
    }

    /// Every CRL a relying party needs to check whole chains, for `GET /crls.pem`: the current
    /// CRL of each intermediate that has one (made or refreshed as [`Authority::crl`] does) and
    /// the latest CRL of each trusted root that has one (the intermediates an emergency rotation
    /// revoked).
    ///
    /// All or nothing: if any CRL cannot be produced the whole call fails, because relying parties
    /// replace their revocation state with this list and a partial list would silently drop a
    /// revocation. A root CRL is listed even past its nextUpdate (it is re-signed only where the
    /// root key is): an intermediate revoked for key compromise is never reinstated, so a stale
    /// root CRL is still true, and leaving it out would reinstate the intermediate.
    pub async fn current_crls(&self) -> Result<Vec<Crl>, CaError> {
        let now = now_seconds();
        let journal = self.store().issuers().await?;
        self.store().publish_due_crls(now.unix_timestamp()).await?;
        let mut out = Vec::new();
        for r in &journal {
            if r.kind == IssuerKind::Root && r.state != IssuerState::Expired {
                if let Some(latest) = self.store().latest_crl(&r.id).await? {
                    out.push(to_crl(&r.id, latest).crl);
                }
            } else if has_crl(r, now) {
                out.extend(self.crl(&r.id).await?);
            }
        }
        Ok(out)
    }

    fn cached_crl(
        &self,
        issuer_id: &str,
        digest: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Option<Crl>, CaError> {
        let latest = self.crl.latest.lock().map_err(poisoned)?;
        Ok(latest
            .get(issuer_id)
            .filter(|c| c.digest == digest && fresh(c.crl.this_update, c.crl.next_update, validity, now))
            .map(|c| c.crl.clone()))
    }

    fn remember_crl(&self, c: Cached) -> Result<Crl, CaError> {
        let crl = c.crl.clone();
        self.crl.latest.lock().map_err(poisoned)?.insert(crl.issuer_id.clone(), c);
        Ok(crl)
    }

    fn forget_crl(&self, issuer_id: &str) -> Result<(), CaError> {
        self.crl.latest.lock().map_err(poisoned)?.remove(issuer_id);
        self.crl.signers.lock().map_err(poisoned)?.remove(issuer_id);
        Ok(())
    }

    /// The key that signs `record`'s CRL: the active issuer's from memory, another's decrypted
    /// from the journal once and kept.
    async fn crl_signer(&self, record: &IssuerRecord) -> Result<Arc<ActiveIssuer>, CaError> {
        if let Some(active) = self.active_issuer().ok().filter(|a| a.record.id == record.id) {
            return Ok(active);
        }
        if let Some(s) = self.crl.signers.lock().map_err(poisoned)?.get(&record.id) {
            return Ok(s.clone());
        }
        let pass = self
            .crl
            .pass
            .lock()
            .map_err(poisoned)?
            .clone()
            .ok_or_else(|| CaError::MissingPassphrase { env: PASSPHRASE_ENV.into() })?;
        let key_pem = record
            .key_pem_enc
            .clone()
            .ok_or_else(|| CaError::Config(format!("intermediate {} has no key in the store", record.id)))?;
        let what = format!("intermediate {}", record.id);
        // scrypt: keep it off the async workers.
        let key = tokio::task::spawn_blocking(move || decrypt_key_pem(&key_pem, &pass, &what))
            .await
            .map_err(|e| CaError::Key(format!("key decryption task: {e}")))??;
        let signer = Arc::new(ActiveIssuer::new(record.clone(), key)?);
        self.store()
            .append_audit(AuditEvent::now(
                "ca",
                "key.load",
                &record.id,
                Outcome::Success,
                format!("{} intermediate key decrypted for signing CRLs", record.state),
            ))
            .await?;
        self.crl.signers.lock().map_err(poisoned)?.insert(record.id.clone(), signer.clone());
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;

    use super::*;
    use crate::authority::{InitOptions, create_ca};
    use crate::keys::KeyAlgorithm;

    fn pass() -> Passphrase {
        Passphrase::new("crl unit test passphrase").expect("passphrase")
    }

    fn intermediate(alg: KeyAlgorithm) -> ActiveIssuer {
        let mut opts = InitOptions::default();
        opts.key_algorithm = alg;
        let m = create_ca(&opts, &pass()).expect("create CA");
        let key = decrypt_key_pem(m.intermediate.key_pem_enc.as_deref().expect("key"), &pass(), "int").expect("key");
        ActiveIssuer::new(m.intermediate, key).expect("issuer")
    }

    fn entry(serial: &str, at: i64, reason: Option<i32>) -> RevokedCertificate {
        RevokedCertificate {
            serial: serial.into(),
            revoked_at: OffsetDateTime::from_unix_timestamp(at).expect("time"),
            reason,
            not_after: OffsetDateTime::from_unix_timestamp(at + 3600).expect("time"),
        }
    }

    #[test]
    fn crl_is_v2_with_number_aki_entries_and_reasons_and_verifies() {
        for alg in [KeyAlgorithm::P256, KeyAlgorithm::P384, KeyAlgorithm::Ed25519] {
            let signer = intermediate(alg);
            let this = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
            let next = this + Duration::from_secs(3600);
            let entries = [
                entry("4c0000000102030405060708090a0b0c", 1_699_999_000, Some(1)),
                entry("4c00000001ffeeddccbbaa9988776655", 1_699_999_500, Some(0)),
                entry("4c0000000200000000000000000000ff", 1_699_999_900, None),
                entry("4c0000000300000000000000000000aa", 1_699_999_950, Some(4)),
            ];
            let der = build_crl(&signer, 300, this, next, &entries).expect("CRL");
            let (rest, crl) = CertificateRevocationList::from_der(&der).expect("parse CRL");
            assert!(rest.is_empty());

            // v2, issuer = the intermediate's subject, times.
            assert_eq!(crl.version().map(|v| v.0), Some(1), "{alg:?}");
            let cert_der = signer.record.cert_der().expect("der");
            let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("cert");
            assert_eq!(crl.issuer().as_raw(), cert.subject().as_raw());
            assert_eq!(crl.last_update().timestamp(), 1_700_000_000);
            assert_eq!(crl.next_update().map(|t| t.timestamp()), Some(1_700_003_600));

            // CRL number, AKI = the issuer's SKI.
            assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("300".into()));
            let aki = crl
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| hex::encode(k.0))
                    }
                    _ => None,
                })
                .expect("AKI");
            assert_eq!(aki, signer.record.ski);
            assert!(crl.extensions().iter().all(|e| !e.critical), "no critical CRL extensions");

            // Entries: serial, date, reason (absent for unspecified and unknown).
            let got: Vec<_> = crl
                .iter_revoked_certificates()
                .map(|r| {
                    (hex::encode(r.raw_serial()), r.revocation_date.timestamp(), r.reason_code().map(|(_, c)| c.0))
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    ("4c0000000102030405060708090a0b0c".to_owned(), 1_699_999_000, Some(1)),
                    ("4c00000001ffeeddccbbaa9988776655".to_owned(), 1_699_999_500, None),
                    ("4c0000000200000000000000000000ff".to_owned(), 1_699_999_900, None),
                    ("4c0000000300000000000000000000aa".to_owned(), 1_699_999_950, Some(4)),
                ]
            );

            // The signature verifies with the intermediate's key, and not with another.
            crl.verify_signature(cert.public_key()).expect("CRL signature verifies");
            let other = intermediate(alg);
            let other_der = other.record.cert_der().expect("der");
            let (_, other_cert) = x509_parser::parse_x509_certificate(&other_der).expect("cert");
            assert!(crl.verify_signature(other_cert.public_key()).is_err());
        }
    }

    #[test]
    fn empty_crl_has_no_revoked_list() {
        let signer = intermediate(KeyAlgorithm::P256);
        let this = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let der = build_crl(&signer, 1, this, this + Duration::from_secs(60), &[]).expect("CRL");
        let (_, crl) = CertificateRevocationList::from_der(&der).expect("parse");
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("1".into()));
        // nextUpdate must follow thisUpdate.
        assert!(build_crl(&signer, 2, this, this, &[]).is_err());
    }

    #[test]
    fn reissued_after_half_the_validity() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let v = Duration::from_secs(3600);
        assert!(fresh(t, t + v, v, t));
        assert!(fresh(t, t + v, v, t + Duration::from_secs(1799)));
        assert!(!fresh(t, t + v, v, t + Duration::from_secs(1800)));
        // A CRL made with a longer validity than configured now is reissued on the new schedule.
        assert!(!fresh(t, t + v * 4, v, t + Duration::from_secs(1800)));
    }

    #[test]
    fn digest_changes_with_the_revoked_set() {
        let a = [entry("aa", 1, Some(1))];
        let b = [entry("aa", 1, Some(1)), entry("bb", 2, None)];
        assert_ne!(entries_digest(&a), entries_digest(&b));
        assert_ne!(entries_digest(&a), entries_digest(&[entry("aa", 1, Some(4))]));
        assert_eq!(entries_digest(&b), entries_digest(&b.clone()));
        assert_ne!(entries_digest(&[]), entries_digest(&a));
    }
}
