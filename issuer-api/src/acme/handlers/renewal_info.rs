//! ACME Renewal Information (RFC 9773): renewal windows and the `replaces` check of newOrder.

use super::*;

/// Parses an RFC 9773 certID (`base64url(AKI keyIdentifier).base64url(serial)`) into
/// (AKI hex, serial hex).
pub(super) fn parse_cert_id(id: &str) -> Option<(String, String)> {
    let (aki, serial) = id.split_once('.')?;
    let aki = B64.decode(aki).ok()?;
    let serial = B64.decode(serial).ok()?;
    if aki.is_empty() || serial.is_empty() {
        return None;
    }
    Some((hex::encode(aki), hex::encode(serial)))
}

/// Finds the certificate a certID names, checking that the AKI is its issuer's key id.
pub(super) async fn cert_for_id(acme: &Acme, id: &str) -> Result<ca::ra::CertificateRecord, AcmeProblem> {
    let (aki, serial) = cert_id_parts(id)?;
    acme.ra.certificate_by_id(&aki, &serial).await.map_err(AcmeProblem::from)?.ok_or_else(AcmeProblem::not_found)
}

/// [`parse_cert_id`], refusing what is not a certID.
pub(super) fn cert_id_parts(id: &str) -> Result<(String, String), AcmeProblem> {
    parse_cert_id(id).ok_or_else(|| AcmeProblem::malformed("not an RFC 9773 certificate identifier"))
}

pub(super) async fn check_replaces(acme: &Acme, acct: &AcmeAccount, cert_id: &str) -> Result<(), AcmeProblem> {
    let (aki, serial) = cert_id_parts(cert_id)?;
    acme.ra.check_replaces(cert_id, &aki, &serial, &acct.id).await.map_err(|e| match e {
        ReplacesError::NotFound => AcmeProblem::not_found(),
        ReplacesError::NotOwned => AcmeProblem::unauthorized("replaces names a certificate this account did not order"),
        ReplacesError::AlreadyReplaced => {
            AcmeProblem::new(StatusCode::CONFLICT, "alreadyReplaced", "that certificate was already replaced")
        }
        ReplacesError::Database(e) => AcmeProblem::from(e),
    })
}

/// GET /acme/renewal-info/{certID} (RFC 9773 section 4): when to renew. Around two thirds of the
/// lifetime normally; in the past once the CA wants the certificate replaced (or it is revoked).
pub(crate) async fn renewal_info(State(acme): State<Arc<Acme>>, Path(id): Path<String>) -> AcmeResult {
    let rec = cert_for_id(&acme, &id).await?;
    let (nb, na) = (rec.not_before.unix_timestamp(), rec.not_after.unix_timestamp());
    let life = (na - nb).max(60);
    let replace = acme.ra.replacement_window(&rec.serial).await.map_err(AcmeProblem::from)?;
    let (start, end) = match (replace, rec.revoked_at) {
        // An emergency: a window the fleet spreads its renewals over (RFC 9773 section 4.2).
        (Some((at, Some(end))), _) => (at, end),
        (Some((at, None)), _) => (at - 3600, at),
        (None, Some(at)) => (at.unix_timestamp() - 3600, at.unix_timestamp()),
        (None, None) => (nb + life * 2 / 3 - life / 30, nb + life * 2 / 3 + life / 30),
    };
    let body = RenewalInfo {
        suggested_window: SuggestedWindow { start: rfc3339(start), end: rfc3339(end) },
        explanation_url: None,
    };
    let retry = (life / 10).clamp(60, 6 * 3600);
    Ok(with_header(json(StatusCode::OK, &body), header::RETRY_AFTER, &retry.to_string()))
}
