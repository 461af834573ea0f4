//! The one place errors become RFC 7807 problem documents. Internal detail goes to the log, never
//! to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ca::{CaError, ErrorKind};

/// An RFC 7807 problem document.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// Problem type URI.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: String,
    /// Human-readable explanation of this occurrence.
    pub detail: String,
    /// HTTP status, repeated in the body (RFC 7807 section 3.1).
    pub status: u16,
}

impl Problem {
    /// A problem with a Lanyard type.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("urn:lanyard:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            detail: detail.into(),
            status: status.as_u16(),
        }
    }

    /// 404 for unknown paths.
    pub fn not_found() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "notFound", "no such resource")
    }
}

impl From<CaError> for Problem {
    fn from(e: CaError) -> Self {
        if let CaError::Superseded { .. } = e {
            // Its own type, so that an agent can tell "renew from the successor / enroll again"
            // from other refusals.
            return Problem::new(StatusCode::FORBIDDEN, "superseded", e.to_string());
        }
        match e.kind() {
            ErrorKind::BadRequest => Problem::new(StatusCode::BAD_REQUEST, "badRequest", e.to_string()),
            ErrorKind::Rejected => Problem::new(StatusCode::FORBIDDEN, "rejected", e.to_string()),
            ErrorKind::Unauthenticated => Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
            ErrorKind::Unavailable => {
                tracing::warn!(error = %e, "CA unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the CA cannot serve this request right now",
                )
            }
            _ => {
                tracing::error!(error = %e, "internal error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        r
    }
}
