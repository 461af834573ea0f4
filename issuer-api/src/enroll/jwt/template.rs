//! SPIFFE-ID templates: how a verified token's claims become the workload's SPIFFE ID.
//!
//! A claim value fills in exactly one path segment and must be a non-empty string of letters,
//! digits, `-`, `.` and `_`, and not `.` or `..`; otherwise a workload that controls a claim (a
//! namespace name, a repository name) could inject `/` or `..` and climb into another workload's
//! ID. The fixed prefix is `spiffe://<trust domain>/`, so no claim can change the trust domain.

use ca::SpiffeId;
use serde_json::{Map, Value};

use super::{AttestError, shown};

/// A parsed `spiffe_id_template`.
#[derive(Debug, Clone)]
pub(super) struct Template {
    pub(super) raw: String,
    trust_domain: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{name}`: a top-level claim.
    Claim(String),
    /// `{/a/b}`: an RFC 6901 JSON pointer into the claims.
    Pointer(String),
}

impl Part {
    /// How the placeholder is written in the template, for error details.
    fn label(&self) -> String {
        match self {
            Part::Literal(l) => l.clone(),
            Part::Claim(name) | Part::Pointer(name) => format!("{{{name}}}"),
        }
    }
}

impl Template {
    /// Parses and checks a template. The fixed prefix must be `spiffe://<trust domain>/`, so that
    /// no claim can change the trust domain, and a sample rendering must be a valid SPIFFE ID, so
    /// that the literal parts are sound.
    pub(super) fn parse(raw: &str, trust_domain: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find(['{', '}']) {
            if rest[i..].starts_with('}') {
                return Err("has a '}' without a matching '{'".into());
            }
            literal.push_str(&rest[..i]);
            let inner = &rest[i + 1..];
            let end = match inner.find(['{', '}']) {
                Some(j) if inner[j..].starts_with('}') => j,
                _ => return Err("has a '{' without a matching '}'".into()),
            };
            let name = &inner[..end];
            let part = if name.is_empty() {
                return Err("has an empty placeholder {}".into());
            } else if name.starts_with('/') {
                check_pointer(name)?;
                Part::Pointer(name.to_owned())
            } else {
                Part::Claim(name.to_owned())
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &inner[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let prefix = format!("spiffe://{trust_domain}/");
        if !matches!(parts.first(), Some(Part::Literal(l)) if l.starts_with(&prefix)) {
            return Err(format!(
                "must start with {prefix} (SPIFFE IDs are issued only in the trust domain {trust_domain}, and \
                 placeholders may fill in path segments only)"
            ));
        }
        let sample: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                _ => "x",
            })
            .collect();
        SpiffeId::parse(&sample).map_err(|e| format!("does not make a valid SPIFFE ID: {e}"))?;
        Ok(Template { raw: raw.to_owned(), trust_domain: trust_domain.to_owned(), parts })
    }

    pub(super) fn render(&self, claims: &Map<String, Value>) -> Result<SpiffeId, AttestError> {
        let mut out = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Literal(l) => {
                    out.push_str(l);
                    continue;
                }
                Part::Claim(name) => claims.get(name),
                Part::Pointer(pointer) => pointer_get(claims, pointer),
            };
            let label = part.label();
            let value = match value {
                Some(Value::String(s)) => s,
                Some(_) => {
                    return Err(AttestError::unauthorized(format!(
                        "the token's claim {label} (used by the SPIFFE ID template) is not a string"
                    )));
                }
                None => {
                    return Err(AttestError::unauthorized(format!(
                        "the token has no claim {label}, which the SPIFFE ID template needs"
                    )));
                }
            };
            check_segment(value).map_err(|why| {
                AttestError::unauthorized(format!(
                    "the token's claim {label} is {}, which cannot be a SPIFFE ID path segment: {why}",
                    shown(value)
                ))
            })?;
            out.push_str(value);
        }
        let id = SpiffeId::parse(&out)
            .map_err(|e| AttestError::unauthorized(format!("the token's claims do not make a valid SPIFFE ID: {e}")))?;
        // Guaranteed by the template's prefix; checked again because it is what matters.
        if id.trust_domain() != self.trust_domain {
            return Err(AttestError::unauthorized(format!("{id} is outside the configured trust domain")));
        }
        Ok(id)
    }
}

/// RFC 6901: `~` must be followed by `0` (for `~`) or `1` (for `/`).
fn check_pointer(pointer: &str) -> Result<(), String> {
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!("has an invalid JSON pointer {{{pointer}}}: '~' must be followed by 0 or 1"));
        }
    }
    Ok(())
}

fn pointer_get<'v>(claims: &'v Map<String, Value>, pointer: &str) -> Option<&'v Value> {
    let mut segments = pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~"));
    let first = segments.next()?;
    let mut cur = claims.get(&first)?;
    for seg in segments {
        cur = match cur {
            Value::Object(map) => map.get(&seg)?,
            Value::Array(items) => {
                // RFC 6901 array indexes: no leading zeros, no signs.
                if seg.is_empty() || (seg.len() > 1 && seg.starts_with('0')) || !seg.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                items.get(seg.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// A claim value must be exactly one SPIFFE ID path segment.
fn check_segment(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value == "." || value == ".." {
        return Err("it may not be . or ..");
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err("only letters, digits, '-', '.' and '_' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn claim_values_cannot_inject_path_segments() {
        let key = es256("k1");
        let f = fixture(&[&key], SUB_TEMPLATE);
        for (sub, why) in [
            ("a/../b", "only letters"),
            ("a/b", "only letters"),
            ("..", "may not be . or .."),
            (".", "may not be . or .."),
            ("", "it is empty"),
            ("spiffe://other.org/x", "only letters"),
            ("ns%2Fx", "only letters"),
        ] {
            refused(&f.attestors, &sign(&key, &claims(sub)), "unauthorized", why).await;
        }
        let mut c = claims("w");
        c["sub"] = json!(42);
        refused(
            &f.attestors,
            &sign(&key, &c),
            "unauthorized",
            "claim {sub} (used by the SPIFFE ID template) is not a string",
        )
        .await;
        c.as_object_mut().expect("object").remove("sub");
        refused(&f.attestors, &sign(&key, &c), "unauthorized", "no claim {sub}").await;
        let g = fixture(&[&key], K8S_TEMPLATE);
        refused(
            &g.attestors,
            &sign(&key, &k8s_claims("../kube-system", "x")),
            "unauthorized",
            "{/kubernetes.io/namespace}",
        )
        .await;
        let mut k = k8s_claims("payments", "api");
        k["kubernetes.io"].as_object_mut().expect("object").remove("serviceaccount");
        refused(&g.attestors, &sign(&key, &k), "unauthorized", "no claim {/kubernetes.io/serviceaccount/name}").await;
    }

    #[test]
    fn json_pointers_follow_rfc_6901() {
        let claims = json!({"a/b": {"c~d": "v1"}, "list": ["x", "y"], "kubernetes.io": {"namespace": "ns"}});
        let m = claims.as_object().expect("object");
        assert_eq!(pointer_get(m, "/a~1b/c~0d"), Some(&json!("v1")));
        assert_eq!(pointer_get(m, "/list/1"), Some(&json!("y")));
        assert_eq!(pointer_get(m, "/list/01"), None);
        assert_eq!(pointer_get(m, "/kubernetes.io/namespace"), Some(&json!("ns")));
        assert_eq!(pointer_get(m, "/missing/x"), None);
    }
}
