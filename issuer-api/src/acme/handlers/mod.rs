//! ACME resource handlers (RFC 8555 sections 7.1 to 7.6), one file per resource. Each handler
//! authenticates (the extractors in `super`), decodes the wire format, makes one call into
//! `ca::ra` and maps the result to a response or a problem document; the helpers they share
//! (ids, timestamps, JSON responses, payload and ownership checks) live here.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ca::Name;
use ca::ra::{
    AccountStatus, AcmeAccount, AcmeAuthz, AcmeChallenge, AcmeOrder, DownloadError, FinalizeError, FinalizeRequest,
    KeyChangeOutcome, NewAccountError, ReplacesError, RevokeError, Revoker,
};
use ring::rand::SecureRandom;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::jws::Jwk;
use super::problem::{AcmeProblem, Subproblem};
use super::wire::*;
use super::{Acme, Authenticated, EitherKey, JwkSigned, Kid, Signed};

mod account;
mod authz;
mod certificate;
mod challenge;
mod finalize;
pub(crate) mod order;
mod renewal_info;
mod revoke;

pub(crate) use account::*;
pub(crate) use authz::*;
pub(crate) use certificate::*;
pub(crate) use challenge::*;
pub(crate) use finalize::*;
pub(crate) use order::*;
pub(crate) use renewal_info::*;
pub(crate) use revoke::*;

type AcmeResult = Result<Response, AcmeProblem>;

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// A random opaque id (128 bits, base64url).
fn new_id() -> String {
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Never seen on Linux (getrandom); loud, since ids must not be guessable.
        tracing::error!("the system random generator failed; an ACME id is not random");
    }
    B64.encode(b)
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let mut r = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn with_header(mut r: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(name, v);
    }
    r
}

/// Parses a JSON payload; an empty payload (POST-as-GET) is refused where a body is required.
fn payload<T: serde::de::DeserializeOwned>(auth: &Authenticated) -> Result<T, AcmeProblem> {
    serde_json::from_slice(&auth.jws.payload).map_err(|e| AcmeProblem::malformed(format!("bad payload: {e}")))
}

fn require_post_as_get(auth: &Authenticated) -> Result<(), AcmeProblem> {
    if auth.jws.payload.is_empty() {
        Ok(())
    } else {
        Err(AcmeProblem::malformed("this resource is read with POST-as-GET (an empty payload)"))
    }
}

fn owner<'a>(auth: &'a Authenticated, account_id: &str) -> Result<&'a AcmeAccount, AcmeProblem> {
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("signed with jwk where kid is required"))?;
    if acct.id != account_id {
        // Not "forbidden": another account's resources do not exist for this one.
        return Err(AcmeProblem::not_found());
    }
    Ok(acct)
}

/// GET /acme/directory (section 7.1.1).
pub(crate) async fn directory(State(acme): State<Arc<Acme>>) -> Response {
    json(
        StatusCode::OK,
        &Directory {
            new_nonce: acme.url("/new-nonce"),
            new_account: acme.url("/new-account"),
            new_order: acme.url("/new-order"),
            revoke_cert: acme.url("/revoke-cert"),
            key_change: acme.url("/key-change"),
            renewal_info: acme.url("/renewal-info"),
            meta: DirectoryMeta {
                terms_of_service: acme.cfg.terms_of_service.clone(),
                external_account_required: acme.cfg.require_eab,
            },
        },
    )
}

/// HEAD /acme/new-nonce answers 200 (section 7.2); the nonce comes from the common headers.
pub(crate) async fn new_nonce_head() -> StatusCode {
    StatusCode::OK
}

/// GET /acme/new-nonce answers 204 (section 7.2).
pub(crate) async fn new_nonce_get() -> StatusCode {
    StatusCode::NO_CONTENT
}
