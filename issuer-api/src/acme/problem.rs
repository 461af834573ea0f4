//! ACME errors (RFC 8555 section 6.7): RFC 7807 documents with `urn:ietf:params:acme:error:*`
//! types. Internal detail is logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ca::{CaError, ErrorKind};
use serde::Serialize;

use super::jws::JwsError;

/// One ACME problem.
#[derive(Debug, Clone, Serialize)]
pub struct AcmeProblem {
    /// `urn:ietf:params:acme:error:<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable explanation.
    pub detail: String,
    /// HTTP status.
    pub status: u16,
    /// Per-identifier problems (RFC 8555 section 6.7.1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<Subproblem>,
}

/// A problem about one identifier.
#[derive(Debug, Clone, Serialize)]
pub struct Subproblem {
    /// Error type URN.
    #[serde(rename = "type")]
    pub kind: String,
    /// Explanation.
    pub detail: String,
    /// The identifier concerned.
    pub identifier: super::wire::Identifier,
}

impl AcmeProblem {
    /// A problem of ACME error type `kind` (e.g. `malformed`).
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        AcmeProblem {
            kind: format!("urn:ietf:params:acme:error:{kind}"),
            detail: detail.into(),
            status: status.as_u16(),
            subproblems: Vec::new(),
        }
    }
    /// 400 malformed.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", detail)
    }
    /// 403 unauthorized.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "unauthorized", detail)
    }
    /// 404 malformed (RFC 8555 has no notFound type).
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "malformed", "no such resource")
    }
    /// 500 serverInternal; the cause goes to the log only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "ACME internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "serverInternal", "internal error")
    }
    /// The problem document as a string (stored on invalid orders and challenges).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Maps CA errors raised while finalizing (the CSR is the client's input).
    pub fn from_finalize(e: CaError) -> Self {
        Self::for_finalize(&e)
    }

    /// [`AcmeProblem::from_finalize`] of an error the caller keeps: the registration authority
    /// stores this rendering on an order its failure made invalid.
    pub fn for_finalize(e: &CaError) -> Self {
        match e.kind() {
            ErrorKind::BadRequest => Self::new(StatusCode::BAD_REQUEST, "badCSR", e.to_string()),
            ErrorKind::Rejected => Self::new(StatusCode::FORBIDDEN, "rejectedIdentifier", e.to_string()),
            _ => Self::for_ca(e),
        }
    }

    /// The problem of an order the cleanup expired (stored as its error).
    pub fn order_expired() -> Self {
        Self::malformed("order expired")
    }

    /// `From<CaError>`, by reference.
    fn for_ca(e: &CaError) -> Self {
        match e.kind() {
            ErrorKind::BadRequest => Self::malformed(e.to_string()),
            ErrorKind::Rejected => Self::new(StatusCode::FORBIDDEN, "rejectedIdentifier", e.to_string()),
            ErrorKind::Unavailable => {
                tracing::warn!(error = %e, "CA unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "serverInternal", "the CA is unavailable; retry later")
            }
            _ => Self::internal(e),
        }
    }
}

impl From<CaError> for AcmeProblem {
    fn from(e: CaError) -> Self {
        Self::for_ca(&e)
    }
}

impl From<JwsError> for AcmeProblem {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::BadAlgorithm(_) => Self::new(StatusCode::BAD_REQUEST, "badSignatureAlgorithm", e.to_string()),
            JwsError::BadKey(_) => Self::new(StatusCode::BAD_REQUEST, "badPublicKey", e.to_string()),
            _ => Self::malformed(e.to_string()),
        }
    }
}

/// A key refused by the key policy when it is admitted (newAccount, keyChange).
impl From<crate::jose::KeyError> for AcmeProblem {
    fn from(e: crate::jose::KeyError) -> Self {
        JwsError::from(e).into()
    }
}

impl IntoResponse for AcmeProblem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, serde_json::to_vec(&self).unwrap_or_default()).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        r
    }
}
