//! Who may get which names, and for how long. Pure functions over a [`VerifiedCsr`]; no I/O.

use std::collections::BTreeSet;
use std::time::Duration;

use time::OffsetDateTime;

use crate::csr::VerifiedCsr;
use crate::names::{AuthorizedNames, Name, check_dns_name, check_trust_domain};
use crate::profile::Profile;
use crate::{CaError, SpiffeId};

/// Issuance policy of one CA.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The SPIFFE trust domain workload identities must belong to.
    pub trust_domain: String,
    /// Which DNS names and IP addresses may be certified at all.
    pub dns: DnsPolicy,
    /// Lifetimes for the `workload` profile (X509-SVIDs).
    pub workload: LifetimePolicy,
    /// Lifetimes for the `tls-server` profile.
    pub tls_server: LifetimePolicy,
    /// How far NotBefore is backdated, to tolerate clock skew between peers.
    #[serde(with = "humantime_serde")]
    pub backdate: Duration,
    /// Base URL of the CRLs (`https://<public host>:<port>/crl`). When set, every leaf carries the
    /// CRL distribution point `<crl_url>/<issuer id>.crl` of the intermediate that signed it (RFC
    /// 5280 section 4.2.1.13); when unset, leaves carry none.
    pub crl_url: Option<String>,
    /// How long a CRL is valid: nextUpdate = thisUpdate + this. CRLs are reissued when their
    /// revoked set changes and once half of this has passed.
    #[serde(with = "humantime_serde")]
    pub crl_validity: Duration,
    /// AIA caIssuers URL written into issued certificates (RFC 5280 section 4.2.2.1).
    pub ca_issuers_url: Option<String>,
    /// Issuance is refused (as "unavailable") when the active intermediate has less life left than
    /// this: its certificates would be uselessly short. Rotation activates a successor long before.
    #[serde(with = "humantime_serde")]
    pub min_issuer_remaining: Duration,
    /// The lost-response rule of workload renewal. A renewed certificate is superseded and
    /// renewing it again is refused, except within this long after its *first* renewal: an agent
    /// whose answer was lost retries with the same old certificate, and gets a new successor while
    /// the previous one (which it never received) is revoked as superseded. The window never
    /// moves, and a successor that was itself renewed or revoked is never replaced this way, so
    /// there is at most one live successor per certificate at any time. Short, because a thief
    /// holding the old certificate can use it too, for this long, and only by revoking the
    /// holder's successor (which the holder notices). Zero disables retries.
    #[serde(with = "humantime_serde")]
    pub renewal_retry_window: Duration,
    /// Bounds of the fleet's trust-state view ([`crate::fleet`]).
    pub fleet: crate::fleet::FleetPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            trust_domain: "lanyard.internal".into(),
            dns: DnsPolicy::default(),
            workload: LifetimePolicy { default: Duration::from_secs(3600), max: Duration::from_secs(24 * 3600) },
            tls_server: LifetimePolicy {
                default: Duration::from_secs(24 * 3600),
                max: Duration::from_secs(30 * 24 * 3600),
            },
            backdate: Duration::from_secs(60),
            crl_url: None,
            crl_validity: Duration::from_secs(3600),
            ca_issuers_url: None,
            min_issuer_remaining: Duration::from_secs(60),
            renewal_retry_window: DEFAULT_RENEWAL_RETRY_WINDOW,
            fleet: crate::fleet::FleetPolicy::default(),
        }
    }
}

/// Default of [`Policy::renewal_retry_window`]: an agent retries a failed renewal after 1, 2, 4,
/// 8... seconds, so it gets about six attempts in two minutes, and a lost answer costs it nothing.
pub const DEFAULT_RENEWAL_RETRY_WINDOW: Duration = Duration::from_secs(120);

/// Which DNS names and IP addresses may appear in certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsPolicy {
    /// If not empty, every DNS name must equal or lie below one of these suffixes. Normalized when
    /// read (see [`normalize_suffix`]).
    #[serde(deserialize_with = "suffix_list")]
    pub allow_suffixes: Vec<String>,
    /// DNS names equal to or below these suffixes are refused, whatever the allow list says. A
    /// wildcard name is refused too when one of these lies at or below its base, since the
    /// certificate would cover names under it. Normalized when read (see [`normalize_suffix`]).
    #[serde(deserialize_with = "suffix_list")]
    pub deny_suffixes: Vec<String>,
    /// Refuse IP address SANs.
    pub deny_ip_addresses: bool,
}

/// Default and maximum certificate lifetime of one profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifetimePolicy {
    /// Lifetime when the request names none.
    #[serde(with = "humantime_serde")]
    pub default: Duration,
    /// Longest lifetime a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

/// Whether DNS `name` (a leading `*.` ignored) equals `suffix` or lies below it on a label
/// boundary. The one suffix rule for CA policy and ACME account policies alike.
///
/// Both sides are compared without case and without a trailing dot, and the suffix without
/// leading dots: DNS names are case-insensitive, so a deny list must never fail open because
/// of how a suffix or a name happens to be spelled.
pub fn suffix_matches(name: &str, suffix: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
    let suffix = suffix.trim_start_matches('.');
    let suffix = suffix.strip_suffix('.').unwrap_or(suffix).as_bytes();
    if suffix.is_empty() || name.len() < suffix.len() {
        return false;
    }
    let (head, tail) = name.split_at(name.len() - suffix.len());
    tail.eq_ignore_ascii_case(suffix) && (head.is_empty() || head.last() == Some(&b'.'))
}

/// Normalizes a configured allow/deny suffix: lower case, without the trailing dot, and without
/// the leading dot ([`suffix_matches`] matches on label boundaries, so `.corp.example` and
/// `corp.example` mean the same). Refuses what cannot be a DNS suffix (empty, wildcards, spaces or
/// other characters outside letters, digits, hyphens and dots), so a typo stops the server
/// instead of silently matching nothing.
pub fn normalize_suffix(raw: &str) -> Result<String, CaError> {
    let bad = |why: &str| CaError::Config(format!("DNS suffix {raw:?}: {why}"));
    let s = raw.strip_prefix('.').unwrap_or(raw);
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.contains('*') {
        return Err(bad("wildcards are not allowed in suffixes; a suffix already covers every name below it"));
    }
    // Single-label suffixes ("svc", "internal") are fine: check the suffix as a name below it.
    check_dns_name(&format!("x.{s}")).map_err(|e| bad(&e.to_string()))?;
    Ok(s.to_ascii_lowercase())
}

/// Reads a suffix list through [`normalize_suffix`], so the policy in memory holds only
/// normalized suffixes and a bad one is an error naming it when the config loads.
fn suffix_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = <Vec<String> as serde::Deserialize>::deserialize(d)?;
    raw.iter().map(|s| normalize_suffix(s).map_err(serde::de::Error::custom)).collect()
}

/// Longest duration a configuration may give (100 years). Validity periods are computed as
/// `now + duration`, which overflows (and panics) far before `Duration::MAX`; no certificate,
/// timeout or interval needs more.
pub const MAX_CONFIG_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Refuses a configured duration above [`MAX_CONFIG_DURATION`].
pub fn check_duration(name: &str, value: Duration) -> Result<(), CaError> {
    if value > MAX_CONFIG_DURATION {
        return Err(CaError::Config(format!(
            "{name} is {}s, more than the longest accepted duration (100 years)",
            value.as_secs()
        )));
    }
    Ok(())
}

impl Policy {
    /// Checks the configuration itself; a bad policy must stop the server at start, not at issuance.
    pub fn validate(&self) -> Result<(), CaError> {
        check_trust_domain(&self.trust_domain).map_err(|r| CaError::Config(format!("trust_domain: {r}")))?;
        for (name, lp) in [("workload", &self.workload), ("tls_server", &self.tls_server)] {
            if lp.default.is_zero() || lp.default > lp.max {
                return Err(CaError::Config(format!(
                    "{name}: the default lifetime must be positive and not above the maximum"
                )));
            }
            check_duration(&format!("{name}.max"), lp.max)?;
        }
        check_duration("min_issuer_remaining", self.min_issuer_remaining)?;
        for s in self.dns.allow_suffixes.iter().chain(&self.dns.deny_suffixes) {
            normalize_suffix(s)?;
        }
        if self.backdate > Duration::from_secs(3600) {
            return Err(CaError::Config("backdate may not exceed 1h".into()));
        }
        let bad_url = |u: &&String| !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(['?', '#']);
        if let Some(url) = self.crl_url.as_ref().filter(bad_url) {
            return Err(CaError::Config(format!(
                "crl_url must be an http:// or https:// base URL without query or fragment, not {url:?}"
            )));
        }
        if self.fleet.horizon.is_zero() || self.fleet.max_workloads == 0 {
            return Err(CaError::Config("fleet: horizon and max_workloads must be positive".into()));
        }
        if self.fleet.share && (self.fleet.share_interval.is_zero() || self.fleet.share_interval >= self.fleet.horizon)
        {
            return Err(CaError::Config(
                "[policy.fleet] share_interval must be positive and shorter than horizon".into(),
            ));
        }
        if self.renewal_retry_window > Duration::from_secs(3600) {
            return Err(CaError::Config("renewal_retry_window may not exceed 1h".into()));
        }
        if self.crl_validity < Duration::from_secs(60) || self.crl_validity > Duration::from_secs(7 * 24 * 3600) {
            return Err(CaError::Config("crl_validity must be between 1m and 7days".into()));
        }
        Ok(())
    }

    /// Decides the names a certificate gets: the CSR's SANs plus its common name, checked against
    /// the profile, this policy and (if given) the names the requester proved control of.
    pub fn names_for(
        &self,
        csr: &VerifiedCsr,
        profile: Profile,
        authorized: Option<&AuthorizedNames>,
    ) -> Result<Vec<Name>, CaError> {
        let mut names: BTreeSet<Name> = csr.names.iter().cloned().collect();
        if let Some(cn) = &csr.common_name {
            // A CN must also be a SAN (RFC 6125 clients ignore the CN); add it so policy sees it.
            let as_name = match cn.parse() {
                Ok(ip) => Name::Ip(ip),
                Err(_) => Name::Dns(check_dns_name(cn)?),
            };
            names.insert(as_name);
        }

        let spiffe: Vec<&SpiffeId> =
            names.iter().filter_map(|n| if let Name::Spiffe(s) = n { Some(s) } else { None }).collect();
        match profile {
            Profile::Workload => {
                let [id] = spiffe.as_slice() else {
                    return Err(CaError::BadIdentity(format!(
                        "a workload certificate carries exactly one spiffe:// URI SAN, the CSR has {}",
                        spiffe.len()
                    )));
                };
                if id.trust_domain() != self.trust_domain {
                    return Err(CaError::NameNotAllowed {
                        name: id.to_string(),
                        reason: format!("outside the trust domain {}", self.trust_domain),
                    });
                }
                if id.path().is_empty() {
                    return Err(CaError::BadIdentity("a workload SPIFFE ID needs a path".into()));
                }
                if let Some(ip) = names.iter().find(|n| matches!(n, Name::Ip(_))) {
                    return Err(CaError::BadName {
                        name: ip.to_string(),
                        reason: "workload certificates carry a SPIFFE ID and DNS names only".into(),
                    });
                }
            }
            Profile::TlsServer => {
                if let Some(id) = spiffe.first() {
                    return Err(CaError::BadName {
                        name: id.to_string(),
                        reason: "SPIFFE IDs are issued under the workload profile".into(),
                    });
                }
                if names.is_empty() {
                    return Err(CaError::BadIdentity("the CSR names no DNS name or IP address".into()));
                }
            }
        }

        for n in &names {
            self.check_name(n)?;
        }

        if let Some(auth) = authorized {
            let allowed: BTreeSet<&Name> = auth.names.iter().collect();
            if let Some(extra) = names.iter().find(|n| !allowed.contains(n)) {
                return Err(CaError::NameNotAllowed {
                    name: extra.to_string(),
                    reason: "the requester is not authorized for this name".into(),
                });
            }
            if auth.exact
                && let Some(missing) = allowed.iter().find(|n| !names.contains(**n))
            {
                return Err(CaError::BadIdentity(format!("the CSR does not request the authorized name {missing}")));
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Checks one name against the DNS allow/deny lists and the IP rule (not against a profile).
    /// ACME uses it at newOrder, before any CSR exists.
    pub fn check_name(&self, n: &Name) -> Result<(), CaError> {
        match n {
            Name::Dns(d) => {
                if let Some(s) = self.dns.deny_suffixes.iter().find(|s| suffix_matches(d, s)) {
                    return Err(CaError::NameNotAllowed { name: d.clone(), reason: format!("denied suffix {s}") });
                }
                // `*.corp.example` covers `secret.corp.example`: a wildcard is refused when a
                // denied suffix lies at or below its base, not only when its base lies below one.
                if let Some(base) = d.strip_prefix("*.")
                    && let Some(s) = self.dns.deny_suffixes.iter().find(|s| suffix_matches(s, base))
                {
                    return Err(CaError::NameNotAllowed {
                        name: d.clone(),
                        reason: format!("the wildcard would cover the denied suffix {s}"),
                    });
                }
                if !self.dns.allow_suffixes.is_empty() && !self.dns.allow_suffixes.iter().any(|s| suffix_matches(d, s))
                {
                    return Err(CaError::NameNotAllowed {
                        name: d.clone(),
                        reason: "not below any allowed DNS suffix".into(),
                    });
                }
                Ok(())
            }
            Name::Ip(ip) if self.dns.deny_ip_addresses => {
                Err(CaError::NameNotAllowed { name: ip.to_string(), reason: "IP addresses are not issued".into() })
            }
            _ => Ok(()),
        }
    }

    /// The validity window: NotBefore backdated by [`Policy::backdate`], NotAfter after the requested
    /// (or default) lifetime, capped at the issuer's own NotAfter.
    pub fn validity(
        &self,
        profile: Profile,
        requested: Option<Duration>,
        now: OffsetDateTime,
        issuer_not_after: OffsetDateTime,
    ) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
        let lp = match profile {
            Profile::Workload => self.workload,
            Profile::TlsServer => self.tls_server,
        };
        let lifetime = requested.unwrap_or(lp.default);
        if lifetime > lp.max {
            return Err(CaError::LifetimeTooLong {
                profile: profile.as_str(),
                requested_secs: crate::units::secs(lifetime),
                max_secs: crate::units::secs(lp.max),
            });
        }
        if lifetime.is_zero() {
            return Err(CaError::BadIdentity("the requested lifetime is zero".into()));
        }
        if issuer_not_after - now < self.min_issuer_remaining {
            return Err(CaError::IssuerExpiring { not_after: crate::issuers::rfc3339(issuer_not_after) });
        }
        let not_after = (now + lifetime).min(issuer_not_after);
        Ok((now - self.backdate, not_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_match_on_label_boundaries() {
        assert!(suffix_matches("a.example.com", "example.com"));
        assert!(suffix_matches("example.com", "example.com"));
        assert!(suffix_matches("*.example.com", ".example.com"));
        assert!(!suffix_matches("badexample.com", "example.com"));
        assert!(!suffix_matches("com", "example.com"));
    }

    #[test]
    fn suffixes_match_regardless_of_case_and_dots() {
        assert!(suffix_matches("secret.corp.example", "Secret.Corp.Example."));
        assert!(suffix_matches("A.Secret.Corp.Example.", "secret.corp.example"));
        assert!(suffix_matches("x.corp.example", "..corp.example"));
        assert!(!suffix_matches("corp.example", ""));
        assert!(!suffix_matches("corp.example", "."));
        assert!(!suffix_matches("xcorp.example", "CORP.example"));
    }

    fn with_dns(allow: &[&str], deny: &[&str]) -> Policy {
        let mut p = Policy::default();
        p.dns.allow_suffixes = allow.iter().map(|s| (*s).to_owned()).collect();
        p.dns.deny_suffixes = deny.iter().map(|s| (*s).to_owned()).collect();
        p
    }

    fn dns(n: &str) -> Name {
        Name::Dns(n.to_owned())
    }

    #[test]
    fn wildcards_covering_a_denied_suffix_are_refused() {
        for deny in ["secret.corp.example", "corp.example", "deep.secret.corp.example", "example"] {
            let p = with_dns(&[], &[deny]);
            match p.check_name(&dns("*.corp.example")) {
                Err(CaError::NameNotAllowed { name, reason }) => {
                    assert_eq!(name, "*.corp.example");
                    assert!(reason.contains(deny), "{deny}: {reason}");
                }
                other => panic!("deny {deny}: {other:?}"),
            }
        }
        let p = with_dns(&[], &["other.example", "xcorp.example"]);
        assert!(p.check_name(&dns("*.corp.example")).is_ok());
        // A denied sibling does not refuse a wildcard beside it.
        let p = with_dns(&[], &["secret.corp.example"]);
        assert!(p.check_name(&dns("*.web.corp.example")).is_ok());
        assert!(p.check_name(&dns("web.corp.example")).is_ok());
        assert!(p.check_name(&dns("*.secret.corp.example")).is_err());
    }

    #[test]
    fn suffixes_are_normalized_when_the_config_loads() {
        let p: Policy = serde_json::from_value(serde_json::json!({"dns": {
            "deny_suffixes": ["Secret.Corp.Example."],
            "allow_suffixes": [".Corp.EXAMPLE", "svc"],
        }}))
        .expect("valid policy");
        assert_eq!(p.dns.deny_suffixes, ["secret.corp.example"]);
        assert_eq!(p.dns.allow_suffixes, ["corp.example", "svc"]);
        p.validate().expect("valid");
        assert!(matches!(p.check_name(&dns("secret.corp.example")), Err(CaError::NameNotAllowed { .. })));
        assert!(matches!(p.check_name(&dns("a.secret.corp.example")), Err(CaError::NameNotAllowed { .. })));
        assert!(p.check_name(&dns("web.corp.example")).is_ok());
        // Names that bypassed check_dns_name are still compared without case or trailing dot.
        assert!(p.check_name(&dns("SECRET.corp.example.")).is_err());
    }

    #[test]
    fn invalid_suffixes_are_config_errors() {
        for bad in ["", ".", "*.corp.example", "corp.*", "bad suffix.example", "a..b", "x_y.example"] {
            let err = serde_json::from_value::<Policy>(serde_json::json!({"dns": {"deny_suffixes": [bad]}}))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("DNS suffix"), "{bad}: {err}");
            let p = with_dns(&[bad], &[]);
            assert!(matches!(p.validate(), Err(CaError::Config(_))), "{bad}");
        }
        let err = normalize_suffix("*.corp.example").expect_err("wildcard").to_string();
        assert!(err.contains("wildcards are not allowed"), "{err}");
    }

    #[test]
    fn crl_settings_are_checked() {
        let mut p = Policy::default();
        assert!(p.validate().is_ok());
        p.crl_url = Some("https://ca.internal:8443/crl".into());
        assert!(p.validate().is_ok());
        for bad in ["ca.internal/crl", "ldap://ca/crl", "https://ca/crl?x=1"] {
            p.crl_url = Some(bad.into());
            assert!(p.validate().is_err(), "{bad}");
        }
        p.crl_url = None;
        p.crl_validity = Duration::from_secs(10);
        assert!(p.validate().is_err());
    }

    #[test]
    fn validity_caps_at_issuer_and_backdates() {
        let p = Policy::default();
        let now = OffsetDateTime::now_utc();
        let (nb, na) = p.validity(Profile::Workload, None, now, now + time::Duration::days(1)).expect("ok");
        assert_eq!(nb, now - time::Duration::seconds(60));
        assert_eq!(na, now + time::Duration::hours(1));
        let (_, na) = p.validity(Profile::Workload, None, now, now + time::Duration::minutes(10)).expect("capped");
        assert_eq!(na, now + time::Duration::minutes(10));
        assert!(matches!(
            p.validity(Profile::Workload, None, now, now + time::Duration::seconds(30)),
            Err(CaError::IssuerExpiring { .. })
        ));
        assert!(matches!(
            p.validity(Profile::Workload, Some(Duration::from_secs(48 * 3600)), now, now + time::Duration::days(9)),
            Err(CaError::LifetimeTooLong { .. })
        ));
    }

    #[test]
    fn bad_policies_are_refused() {
        let mut p = Policy::default();
        p.trust_domain = "Bad Domain".into();
        assert!(p.validate().is_err());
        let mut p = Policy::default();
        p.workload.default = Duration::from_secs(48 * 3600);
        assert!(p.validate().is_err());
        assert!(Policy::default().validate().is_ok());
    }
}
