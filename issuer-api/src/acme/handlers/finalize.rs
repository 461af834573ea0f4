//! Finalize (RFC 8555 section 7.4): the CSR is checked against the account key here, then one
//! call into the registration authority, whose typed errors become problem documents.

use super::*;

/// The finalize payload's CSR: decoded, parsed, its signature verified (the one time it is, see
/// [`ca::ra::FinalizeRequest::csr`]), and its key not the account key.
pub(super) fn finalize_csr(req: &Finalize, account_key: &Jwk) -> Result<ca::VerifiedCsr, AcmeProblem> {
    let csr = B64
        .decode(req.csr.trim_end_matches('='))
        .map_err(|_| AcmeProblem::new(StatusCode::BAD_REQUEST, "badCSR", "csr is not base64url"))?;
    let verified = ca::parse_and_verify_csr(&csr).map_err(AcmeProblem::from_finalize)?;
    let (_, spki) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&verified.spki_der)
            .map_err(|_| AcmeProblem::new(StatusCode::BAD_REQUEST, "badCSR", "unreadable public key"))?;
    if jwk_is_spki(account_key, &spki) {
        return Err(AcmeProblem::new(
            StatusCode::BAD_REQUEST,
            "badCSR",
            "the certificate key must differ from the account key",
        ));
    }
    Ok(verified)
}

/// True when `jwk` is the public key in the DER SubjectPublicKeyInfo `spki`.
pub(super) fn jwk_is_spki(jwk: &Jwk, spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
    let key = spki.subject_public_key.data.as_ref();
    let dec = |s: &str| B64.decode(s).unwrap_or_default();
    match jwk {
        Jwk::Ec { x, y, .. } => {
            let mut p = vec![4u8];
            p.extend(dec(x));
            p.extend(dec(y));
            key == p.as_slice()
        }
        Jwk::Okp { x, .. } => key == dec(x).as_slice(),
        Jwk::Rsa { n, e } => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<u8>>();
                strip(rsa.modulus) == strip(&dec(n)) && strip(rsa.exponent) == strip(&dec(e))
            }
            _ => false,
        },
    }
}

/// POST /acme/order/{id}/finalize (section 7.4): issues synchronously and answers `valid`. The
/// registration authority does the rest in one call ([`ca::ra::Registration::finalize`]): the
/// certificate's record and the order's move to `valid` commit together.
pub(crate) async fn finalize(State(acme): State<Arc<Acme>>, Path(id): Path<String>, Signed(auth): Kid) -> AcmeResult {
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("kid required"))?;
    let req: Finalize = payload(&auth)?;
    let csr = finalize_csr(&req, &auth.jwk)?;
    let render = |e: &ca::CaError| AcmeProblem::for_finalize(e).to_json();
    let done = acme
        .ra
        .finalize(FinalizeRequest { order_id: &id, account: acct, csr, render_problem: &render })
        .await
        .map_err(finalize_problem)?;
    let r = json(StatusCode::OK, &order_json(&acme, &done.order, &done.authzs)?);
    Ok(with_header(r, header::LOCATION, &acme.url(&format!("/order/{}", done.order.id))))
}

/// The problem document (RFC 8555 section 7.4) for a finalize that did not issue.
pub(super) fn finalize_problem(e: FinalizeError) -> AcmeProblem {
    match e {
        FinalizeError::NotFound => AcmeProblem::not_found(),
        FinalizeError::NotReady(detail) => AcmeProblem::new(StatusCode::FORBIDDEN, "orderNotReady", detail),
        // A CSR that does not name exactly the order's identifiers is a badCSR.
        FinalizeError::BadCsr(e) => AcmeProblem::new(StatusCode::BAD_REQUEST, "badCSR", e.to_string()),
        FinalizeError::NotAllowed(detail) => AcmeProblem::new(StatusCode::FORBIDDEN, "rejectedIdentifier", detail),
        FinalizeError::Unavailable(e) | FinalizeError::Failed(e) => AcmeProblem::from_finalize(e),
        FinalizeError::Database(e) => AcmeProblem::from(e),
    }
}
