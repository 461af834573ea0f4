//! PEM (RFC 7468) for everything this crate writes or reads back: certificates and CRLs.
//!
//! Built on `pem-rfc7468` (the encoder/decoder `der` and `pkcs8` use), so there is one PEM
//! implementation in the crate. Output is LF line endings, 64-character lines and a trailing
//! newline, as the CA has always written it to its records.
//!
//! Decoding takes one PEM document: surrounding whitespace and text before the `-----BEGIN` line
//! are tolerated, a second block or text after the `-----END` line is not. Every record decoded
//! here (`cert_pem` of issuers and issued certificates) was written by [`encode`] as one block.
//! Concatenated blocks (`cross_cert_pem`, operator key files) are split by their callers.

use crate::error::CaError;

/// Label of an X.509 certificate.
pub(crate) const CERTIFICATE: &str = "CERTIFICATE";
/// Label of an X.509 CRL (as OpenSSL writes and reads it).
pub(crate) const X509_CRL: &str = "X509 CRL";

/// Encodes `der` as one PEM block labelled `label`.
///
/// `label` is one of this module's constants: RFC 7468 labels, so encoding cannot fail.
pub(crate) fn encode(label: &'static str, der: &[u8]) -> String {
    // Errors are an invalid label or an input longer than memory: neither is possible here.
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).expect("PEM label is valid")
}

/// Encodes a certificate DER as a `CERTIFICATE` block.
pub(crate) fn certificate(der: &[u8]) -> String {
    encode(CERTIFICATE, der)
}

/// Decodes a PEM document holding one `CERTIFICATE` block.
pub(crate) fn decode_certificate(pem: &str) -> Result<Vec<u8>, CaError> {
    let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
        .map_err(|e| CaError::InvalidCertificate(format!("bad PEM: {e}")))?;
    if label != CERTIFICATE {
        return Err(CaError::InvalidCertificate(format!("PEM label is {label}, expected CERTIFICATE")));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| u8::try_from(i % 251).unwrap_or_default()).collect()
    }

    #[test]
    fn round_trip() {
        for n in [1, 2, 3, 47, 48, 49, 96, 1000] {
            let der = bytes(n);
            assert_eq!(decode_certificate(&certificate(&der)).expect("decode"), der, "{n} bytes");
        }
    }

    #[test]
    fn same_text_as_before() {
        // What the hand-written encoder produced: LF, 64 columns, trailing newline.
        let pem = encode(X509_CRL, &bytes(50));
        assert_eq!(
            pem,
            "-----BEGIN X509 CRL-----\n\
             AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v\n\
             MDE=\n\
             -----END X509 CRL-----\n"
        );
    }

    #[test]
    fn label_and_line_length() {
        for n in [48, 200, 1000] {
            let pem = encode(X509_CRL, &bytes(n));
            assert!(!pem.contains('\r'));
            assert!(pem.ends_with("-----END X509 CRL-----\n"), "{pem}");
            let lines: Vec<&str> = pem.lines().collect();
            assert_eq!(lines.first(), Some(&"-----BEGIN X509 CRL-----"));
            let body = &lines[1..lines.len() - 1];
            let (last, full) = body.split_last().expect("body");
            assert!(full.iter().all(|l| l.len() == 64), "{pem}");
            assert!(!last.is_empty() && last.len() <= 64, "{pem}");
        }
    }

    #[test]
    fn tolerates_surrounding_whitespace_and_crlf() {
        let der = bytes(100);
        let pem = certificate(&der);
        assert_eq!(decode_certificate(&format!("\n  \n{pem}\n\n  ")).expect("decode"), der);
        assert_eq!(decode_certificate(&pem.replace('\n', "\r\n")).expect("decode CRLF"), der);
        assert_eq!(decode_certificate(&format!("subject=CN=x\n{pem}")).expect("decode with preamble"), der);
    }

    #[test]
    fn refuses_wrong_label() {
        let err = decode_certificate(&encode(X509_CRL, &bytes(10))).expect_err("CRL is not a certificate");
        assert!(err.to_string().contains("PEM label is X509 CRL, expected CERTIFICATE"), "{err}");
    }

    #[test]
    fn refuses_garbage_and_second_block() {
        assert!(decode_certificate("").is_err());
        assert!(decode_certificate("not PEM").is_err());
        let two = format!("{}{}", certificate(&bytes(10)), certificate(&bytes(20)));
        assert!(decode_certificate(&two).is_err());
    }
}
