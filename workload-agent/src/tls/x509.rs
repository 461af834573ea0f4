//! What the seam reads out of an X509-SVID leaf with x509-parser: the SPIFFE ID and the validity
//! window. webpki verifies the chain but knows nothing of SPIFFE, so the X509-SVID leaf rules
//! (exactly one `spiffe://` URI SAN, not a CA, keyUsage with digitalSignature and without
//! keyCertSign/cRLSign) are checked here, for our own SVID at publish time and for every peer.

use x509_parser::extensions::GeneralName;
use x509_parser::parse_x509_certificate;

use super::SeamError;
use super::spiffe_id::SpiffeId;

/// The parts of a leaf the seam acts on.
#[derive(Debug)]
pub(crate) struct SvidLeaf {
    pub(crate) spiffe_id: SpiffeId,
    /// notBefore, Unix seconds.
    pub(crate) not_before: i64,
    /// notAfter, Unix seconds.
    pub(crate) not_after: i64,
}

/// Parses `der` and checks the X509-SVID leaf rules. Does not verify signatures or time.
pub(crate) fn inspect_leaf(der: &[u8]) -> Result<SvidLeaf, SeamError> {
    let not_svid = |reason: String| SeamError::NotAnSvid { reason };
    let (rest, cert) = parse_x509_certificate(der).map_err(|e| not_svid(format!("does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(not_svid("trailing bytes after the certificate".into()));
    }

    let sans = cert.subject_alternative_name().map_err(|e| not_svid(format!("bad subjectAltName: {e}")))?;
    let mut uris = sans.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = match (uris.next(), uris.next()) {
        (Some(uri), None) => uri,
        (None, _) => return Err(not_svid("no URI SAN".into())),
        (Some(_), Some(_)) => return Err(not_svid("more than one URI SAN".into())),
    };
    let spiffe_id = SpiffeId::parse(uri).map_err(|e| not_svid(e.to_string()))?;

    let basic = cert.basic_constraints().map_err(|e| not_svid(format!("bad basicConstraints: {e}")))?;
    if basic.is_some_and(|ext| ext.value.ca) {
        return Err(not_svid("leaf has basicConstraints cA=true".into()));
    }
    let usage = cert.key_usage().map_err(|e| not_svid(format!("bad keyUsage: {e}")))?;
    let usage = usage.ok_or_else(|| not_svid("leaf has no keyUsage extension".into()))?.value;
    if !usage.digital_signature() {
        return Err(not_svid("keyUsage lacks digitalSignature".into()));
    }
    if usage.key_cert_sign() || usage.crl_sign() {
        return Err(not_svid("keyUsage of a leaf includes keyCertSign or cRLSign".into()));
    }

    let validity = cert.validity();
    Ok(SvidLeaf { spiffe_id, not_before: validity.not_before.timestamp(), not_after: validity.not_after.timestamp() })
}
