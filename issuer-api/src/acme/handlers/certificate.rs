//! Certificate download with alternate chains (RFC 8555 section 7.4.2).

use super::*;

/// POST /acme/cert/{serial} (section 7.4.2): the chain as `application/pem-certificate-chain`.
pub(crate) async fn certificate(
    State(acme): State<Arc<Acme>>,
    Path(serial): Path<String>,
    Signed(auth): Kid,
) -> AcmeResult {
    download(&acme, &serial, 0, &auth).await
}

/// POST /acme/cert/{serial}/alt/{n}: an alternate chain (RFC 8555 section 7.4.2).
pub(crate) async fn certificate_alternate(
    State(acme): State<Arc<Acme>>,
    Path((serial, n)): Path<(String, usize)>,
    Signed(auth): Kid,
) -> AcmeResult {
    if n == 0 {
        return Err(AcmeProblem::not_found());
    }
    download(&acme, &serial, n, &auth).await
}

/// The chains (issuer certificates, PEM) a certificate can be served with. The default one leads
/// to every trusted root: during a root rotation it carries the cross certificate to the other
/// root, so a client that holds only the old root (or only the new one) validates it. The
/// alternate, offered only then, stops at the intermediate's own root, for clients that pick
/// chains by the top issuer's name (cert-manager's `preferredChain`) or want the shorter one.
pub(super) fn chains_for(issuer: &ca::IssuerRecord, journal: &[ca::IssuerRecord]) -> Vec<String> {
    let cross = issuer.cross_chain(journal);
    if cross.is_empty() {
        return vec![issuer.cert_pem.clone()];
    }
    vec![format!("{}{}", issuer.cert_pem, cross.concat()), issuer.cert_pem.clone()]
}

pub(super) async fn download(acme: &Acme, serial: &str, n: usize, auth: &Authenticated) -> AcmeResult {
    require_post_as_get(auth)?;
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("signed with jwk where kid is required"))?;
    let found = acme.ra.download(serial, &acct.id).await.map_err(|e| match e {
        DownloadError::NotFound => AcmeProblem::not_found(),
        DownloadError::IssuerMissing => AcmeProblem::internal("issuer of a certificate missing"),
        DownloadError::Database(e) => AcmeProblem::from(e),
    })?;
    let leaf = found.leaf_pem;
    let chains = chains_for(&found.issuer, &found.journal);
    let chain = chains.get(n).ok_or_else(AcmeProblem::not_found)?;
    let mut r = (StatusCode::OK, format!("{leaf}{chain}")).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pem-certificate-chain"));
    for k in (0..chains.len()).filter(|k| *k != n) {
        let url =
            if k == 0 { acme.url(&format!("/cert/{serial}")) } else { acme.url(&format!("/cert/{serial}/alt/{k}")) };
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>;rel=\"alternate\"")) {
            r.headers_mut().append(header::LINK, v);
        }
    }
    Ok(r)
}
