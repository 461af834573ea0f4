//! Which peers may talk to us, by SPIFFE ID. Chain verification only says a peer belongs to the trust
//! domain; an [`Authorizer`] says which workloads of it are welcome. Peers outside the seam's trust
//! domain are refused before the authorizer is asked, whatever rule it holds.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use super::SeamError;
use super::spiffe_id::SpiffeId;

/// A rule deciding whether a verified peer SPIFFE ID is allowed.
#[derive(Clone)]
pub struct Authorizer {
    rule: Rule,
}

#[derive(Clone)]
enum Rule {
    AnyInTrustDomain,
    Exact(Arc<BTreeSet<String>>),
    Custom(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl Authorizer {
    /// Any workload of the seam's trust domain.
    pub fn any_in_trust_domain() -> Self {
        Authorizer { rule: Rule::AnyInTrustDomain }
    }

    /// Exactly these SPIFFE IDs. Each must be a valid workload SPIFFE ID, and there must be at least
    /// one: a typo here would otherwise silently lock every peer out.
    pub fn exact<I, S>(ids: I) -> Result<Self, SeamError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let ids = ids
            .into_iter()
            .map(|id| SpiffeId::parse(id.as_ref()).map(|id| id.as_str().to_owned()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if ids.is_empty() {
            return Err(SeamError::EmptyAuthorizer);
        }
        Ok(Authorizer { rule: Rule::Exact(Arc::new(ids)) })
    }

    /// A predicate over the peer's SPIFFE ID (already syntactically valid and in the trust domain).
    /// It runs inside the handshake, so it must be quick and must not block.
    pub fn custom(predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Authorizer { rule: Rule::Custom(Arc::new(predicate)) }
    }

    /// Whether `spiffe_id` is allowed by this rule (the trust domain check is the verifier's).
    pub fn is_authorized(&self, spiffe_id: &str) -> bool {
        match &self.rule {
            Rule::AnyInTrustDomain => true,
            Rule::Exact(ids) => ids.contains(spiffe_id),
            Rule::Custom(predicate) => predicate(spiffe_id),
        }
    }
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::AnyInTrustDomain => f.write_str("Authorizer::AnyInTrustDomain"),
            Rule::Exact(ids) => f.debug_tuple("Authorizer::Exact").field(ids).finish(),
            Rule::Custom(_) => f.write_str("Authorizer::Custom(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Authorizer;

    #[test]
    fn rules() {
        let exact = Authorizer::exact(["spiffe://example.org/a"]).expect("valid");
        assert!(exact.is_authorized("spiffe://example.org/a"));
        assert!(!exact.is_authorized("spiffe://example.org/b"));
        assert!(Authorizer::exact(Vec::<String>::new()).is_err());
        assert!(Authorizer::exact(["example.org/a"]).is_err());
        let custom = Authorizer::custom(|id| id.ends_with("/b"));
        assert!(custom.is_authorized("spiffe://example.org/b"));
        assert!(!custom.is_authorized("spiffe://example.org/a"));
        assert!(Authorizer::any_in_trust_domain().is_authorized("spiffe://example.org/z"));
        assert_eq!(format!("{custom:?}"), "Authorizer::Custom(..)");
    }
}
