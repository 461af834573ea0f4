//! SPIFFE ID syntax (SPIFFE-ID standard, section 2). Only workload IDs are accepted: an SVID leaf
//! must name a workload, so an ID without a path (a trust domain ID) is refused here.

use super::SeamError;

/// The SPIFFE standard caps an ID at 2048 bytes.
const MAX_LEN: usize = 2048;
const SCHEME: &str = "spiffe://";

/// A syntactically valid workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (the first `/` after the trust domain).
    path_start: usize,
}

impl SpiffeId {
    pub(crate) fn parse(id: &str) -> Result<Self, SeamError> {
        let invalid = |reason| SeamError::InvalidSpiffeId { id: id.to_owned(), reason };
        if id.len() > MAX_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = id.strip_prefix(SCHEME).ok_or_else(|| invalid("does not start with spiffe://"))?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(invalid("trust domain is empty"));
        }
        if !trust_domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
            return Err(invalid("trust domain may only contain a-z, 0-9, '-', '.' and '_'"));
        }
        if path.is_empty() {
            return Err(invalid("path is empty (a trust domain ID does not name a workload)"));
        }
        for segment in path[1..].split('/') {
            match segment {
                "" => return Err(invalid("path has an empty segment or a trailing '/'")),
                "." | ".." => return Err(invalid("path has a '.' or '..' segment")),
                s if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) => {
                    return Err(invalid("path may only contain a-z, A-Z, 0-9, '-', '.', '_' and '/'"));
                }
                _ => {}
            }
        }
        Ok(SpiffeId { id: id.to_owned(), path_start: SCHEME.len() + trust_domain.len() })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.id
    }

    pub(crate) fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }
}

#[cfg(test)]
mod tests {
    use super::SpiffeId;

    #[test]
    fn accepts_workload_ids() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/svc-a_1.x").expect("valid");
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/svc-a_1.x");
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "",
            "https://example.org/a",
            "spiffe://",
            "spiffe:///a",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/../b",
            "spiffe://Example.org/a",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "spiffe://example.org/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
