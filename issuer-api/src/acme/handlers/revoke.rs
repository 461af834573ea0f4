//! revokeCert (RFC 8555 section 7.6), authorized by the account or by the certificate's key.

use super::*;

/// POST /acme/revoke-cert (section 7.6): by the ordering account (kid) or the certificate key (jwk).
pub(crate) async fn revoke_cert(State(acme): State<Arc<Acme>>, Signed(auth): EitherKey) -> AcmeResult {
    let req: Revoke = payload(&auth)?;
    let (reason, der) = revoke_request(&req)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| AcmeProblem::malformed("certificate is not DER X.509"))?;
    let serial = hex::encode(cert.raw_serial());
    let by = match &auth.account {
        Some(acct) => Revoker::Account(&acct.id),
        None => Revoker::CertificateKey { key_matches: jwk_is_spki(&auth.jwk, cert.public_key()) },
    };
    // The certificate and everything renewed from it, with the audit events, in one transaction.
    let done = acme.ra.revoke(&serial, &der, by, reason).await.map_err(|e| match e {
        RevokeError::NotFound => AcmeProblem::not_found(),
        RevokeError::NotAuthorized => {
            AcmeProblem::unauthorized("neither the ordering account nor the certificate key signed this request")
        }
        RevokeError::AlreadyRevoked => {
            AcmeProblem::new(StatusCode::BAD_REQUEST, "alreadyRevoked", "the certificate is already revoked")
        }
        RevokeError::Database(e) => AcmeProblem::from(e),
    })?;
    tracing::info!(%serial, reason, successors = done.successors.len(), "certificate revoked");
    Ok(StatusCode::OK.into_response())
}

/// The revokeCert payload's reason (checked) and certificate (decoded, and checked to be X.509).
pub(super) fn revoke_request(req: &Revoke) -> Result<(i32, Vec<u8>), AcmeProblem> {
    let reason = req.reason.unwrap_or(0);
    if ![0, 1, 3, 4, 5, 9].contains(&reason) {
        return Err(AcmeProblem::new(
            StatusCode::BAD_REQUEST,
            "badRevocationReason",
            format!("reason {reason} is not accepted (0, 1, 3, 4, 5, 9)"),
        ));
    }
    let der = B64
        .decode(req.certificate.trim_end_matches('='))
        .map_err(|_| AcmeProblem::malformed("certificate is not base64url"))?;
    x509_parser::parse_x509_certificate(&der).map_err(|_| AcmeProblem::malformed("certificate is not DER X.509"))?;
    Ok((reason, der))
}
