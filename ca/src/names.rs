//! Names a certificate may carry: DNS names, IP addresses and SPIFFE IDs, with the syntax checks
//! that keep malformed names out of certificates.

use std::fmt;
use std::net::IpAddr;

use crate::CaError;

/// A name in a certificate's subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Name {
    /// A DNS name, lower-cased; may start with `*.` (wildcard).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// A SPIFFE ID (URI SAN).
    Spiffe(SpiffeId),
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Dns(d) => write!(f, "dns:{d}"),
            Name::Ip(i) => write!(f, "ip:{i}"),
            Name::Spiffe(s) => write!(f, "{s}"),
        }
    }
}

/// The names a requester has proved control of (ACME authorizations, workload attestation).
///
/// `exact` means the certificate must carry exactly these names (ACME finalize); otherwise it may
/// carry any subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedNames {
    /// The proven names.
    pub names: Vec<Name>,
    /// Whether the CSR must request exactly this set.
    pub exact: bool,
}

/// Normalises and checks a DNS name (RFC 1034 preferred syntax, LDH labels, at most one leading
/// wildcard label). Returns the lower-cased name.
pub fn check_dns_name(raw: &str) -> Result<String, CaError> {
    let bad = |reason: &str| CaError::BadName { name: raw.to_owned(), reason: reason.to_owned() };
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(bad("DNS names must have 1 to 253 characters"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(bad("an IP address is not a DNS name"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 && labels[0] != "localhost" {
        return Err(bad("a DNS name needs at least two labels"));
    }
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" {
            if i != 0 {
                return Err(bad("a wildcard is only allowed as the whole leftmost label"));
            }
            if labels.len() < 3 {
                return Err(bad("a wildcard needs at least two labels below it"));
            }
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return Err(bad("DNS labels must have 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("DNS labels may contain only letters, digits and hyphens"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("DNS labels may not start or end with a hyphen"));
        }
    }
    if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad("the top-level label may not be all digits"));
    }
    Ok(name)
}

/// A SPIFFE ID: `spiffe://<trust-domain>/<path>` as the SPIFFE-ID specification defines it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID. The path may be empty only for trust-domain IDs.
    pub fn parse(raw: &str) -> Result<Self, CaError> {
        let bad = |reason: &str| CaError::BadName { name: raw.to_owned(), reason: reason.to_owned() };
        if raw.len() > 2048 {
            return Err(bad("a SPIFFE ID may not exceed 2048 bytes"));
        }
        let rest =
            raw.strip_prefix("spiffe://").ok_or_else(|| bad("a SPIFFE ID starts with spiffe:// (lower case)"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        check_trust_domain(td).map_err(|r| bad(&r))?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(bad("path segments may not be empty (no // and no trailing /)"));
                }
                if seg == "." || seg == ".." {
                    return Err(bad("path segments may not be . or .."));
                }
                if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                    return Err(bad("path segments may contain only letters, digits, '-', '.' and '_'"));
                }
            }
        }
        Ok(SpiffeId { trust_domain: td.to_owned(), path: path.to_owned() })
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether `self` equals `prefix` or lies below it on a path-segment boundary.
    pub fn is_under(&self, prefix: &SpiffeId) -> bool {
        self.trust_domain == prefix.trust_domain
            && (self.path == prefix.path
                || (self.path.starts_with(&prefix.path)
                    && (prefix.path.is_empty() || self.path.as_bytes().get(prefix.path.len()) == Some(&b'/'))))
    }
}

pub(crate) fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > 255 {
        return Err("the trust domain must have 1 to 255 characters".into());
    }
    if !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
        return Err("the trust domain may contain only lower-case letters, digits, '-', '.' and '_'".into());
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = CaError;
    fn try_from(s: String) -> Result<Self, CaError> {
        SpiffeId::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(s: SpiffeId) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert_eq!(check_dns_name("WWW.Example.COM.").expect("ok"), "www.example.com");
        assert_eq!(check_dns_name("*.example.com").expect("ok"), "*.example.com");
        assert_eq!(check_dns_name("localhost").expect("ok"), "localhost");
        for bad in ["", "a..b", "-a.com", "a-.com", "a_b.com", "*.com", "a.*.com", "1.2.3.4", "foo.123", "x"] {
            assert!(check_dns_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_dns_name(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn spiffe_ids() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").expect("ok");
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/web");
        assert_eq!(id.to_string(), "spiffe://example.org/ns/prod/sa/web");
        let prefix = SpiffeId::parse("spiffe://example.org/ns/prod").expect("ok");
        assert!(id.is_under(&prefix));
        assert!(!SpiffeId::parse("spiffe://example.org/ns/production").expect("ok").is_under(&prefix));
        for bad in [
            "http://example.org/a",
            "spiffe://Example.org/a",
            "spiffe:///a",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?b",
            "spiffe://user@example.org/a",
            "SPIFFE://example.org/a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
