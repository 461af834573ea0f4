//! The `Lanyard-Trust-Report` request header: an agent's trust state, sent with every renewal
//! and notices poll (see `ca::fleet` for what the CA does with it).
//!
//! The value is one JSON object, at most [`MAX_LEN`] bytes:
//! `{"bundle_sequence":7,"serving_issuer":"<sha256 hex>","accepted":120,"refused":{"unknown_issuer":2},"fetch_ms":14}`.
//! Every field is optional except `bundle_sequence`; counts are since the agent's previous
//! report. A header that is present but malformed is refused (400) rather than ignored: the
//! fleet view must not silently lose an agent.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use ca::fleet::{RefusalReason, TrustReport};

use crate::problem::Problem;

/// The header's name.
pub const HEADER: &str = "lanyard-trust-report";
/// Longest header value accepted.
pub const MAX_LEN: usize = 2048;
/// Most refusal reasons in one report.
const MAX_REASONS: usize = 16;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    bundle_sequence: u64,
    #[serde(default)]
    serving_issuer: Option<String>,
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    refused: BTreeMap<String, u64>,
    #[serde(default)]
    fetch_ms: Option<u64>,
}

fn bad(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "badRequest", format!("malformed {HEADER} header: {detail}"))
}

/// The report in `headers`, if the agent sent one.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<TrustReport>, Problem> {
    let Some(value) = headers.get(HEADER) else { return Ok(None) };
    if value.len() > MAX_LEN {
        return Err(bad(format!("longer than {MAX_LEN} bytes")));
    }
    let wire: Wire = serde_json::from_slice(value.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if let Some(fp) = &wire.serving_issuer
        && (fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(bad("serving_issuer must be a SHA-256 digest in lowercase hex".into()));
    }
    if wire.refused.len() > MAX_REASONS {
        return Err(bad(format!("more than {MAX_REASONS} refusal reasons")));
    }
    let mut refused = BTreeMap::new();
    for (label, n) in &wire.refused {
        let slot: &mut u64 = refused.entry(RefusalReason::from_label(label)).or_default();
        *slot = slot.saturating_add(*n);
    }
    Ok(Some(TrustReport {
        bundle_sequence: wire.bundle_sequence,
        serving_issuer: wire.serving_issuer,
        accepted: wire.accepted,
        refused,
        fetch_latency: wire.fetch_ms.map(Duration::from_millis),
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(v).expect("value"));
        h
    }

    #[test]
    fn a_full_report_decodes() {
        let fp = "ab".repeat(32);
        let r = from_headers(&headers(&format!(
            r#"{{"bundle_sequence":7,"serving_issuer":"{fp}","accepted":3,"refused":{{"unknown_issuer":2,"new_reason":1}},"fetch_ms":14}}"#
        )))
        .expect("ok")
        .expect("some");
        assert_eq!(r.bundle_sequence, 7);
        assert_eq!(r.serving_issuer.as_deref(), Some(fp.as_str()));
        assert_eq!(r.refused.get(&RefusalReason::UnknownIssuer), Some(&2));
        assert_eq!(r.refused.get(&RefusalReason::Other), Some(&1), "unknown reasons are kept as other");
        assert_eq!(r.fetch_latency, Some(Duration::from_millis(14)));
        assert_eq!(from_headers(&HeaderMap::new()).expect("ok"), None);
    }

    #[test]
    fn malformed_reports_are_refused_with_a_reason() {
        for (v, want) in [
            ("not json", "malformed"),
            (r#"{"accepted":1}"#, "bundle_sequence"),
            (r#"{"bundle_sequence":-1}"#, "invalid value"),
            (r#"{"bundle_sequence":1,"serving_issuer":"XYZ"}"#, "SHA-256"),
            (r#"{"bundle_sequence":1,"extra":1}"#, "unknown field"),
        ] {
            let e = from_headers(&headers(v)).expect_err(v);
            assert_eq!(e.status, StatusCode::BAD_REQUEST.as_u16());
            assert!(e.detail.contains(want), "{v}: {}", e.detail);
        }
        let long = format!(r#"{{"bundle_sequence":1,"serving_issuer":"{}"}}"#, "a".repeat(MAX_LEN));
        assert!(from_headers(&headers(&long)).expect_err("long").detail.contains("longer than"));
    }
}
