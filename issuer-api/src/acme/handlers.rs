//! ACME resource handlers (RFC 8555 sections 7.1 to 7.6).

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

fn account_json(acme: &Acme, a: &AcmeAccount) -> Account {
    Account {
        status: a.status.clone(),
        contact: a.contact.clone(),
        orders: acme.url(&format!("/account/{}/orders", a.id)),
        terms_of_service_agreed: true,
    }
}

fn check_contacts(contact: &[String]) -> Result<(), AcmeProblem> {
    for c in contact {
        let ok = c.strip_prefix("mailto:").is_some_and(|addr| {
            let mut parts = addr.split('@');
            matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None)
                if !l.is_empty() && ca::check_dns_name(d).is_ok() && !addr.contains([',', '?', ' ']))
        });
        if !ok {
            return Err(AcmeProblem::new(
                StatusCode::BAD_REQUEST,
                "invalidContact",
                format!("unsupported contact {c:?}: only mailto: with one address"),
            ));
        }
    }
    if contact.len() > 10 {
        return Err(AcmeProblem::new(StatusCode::BAD_REQUEST, "invalidContact", "at most 10 contacts"));
    }
    Ok(())
}

/// POST /acme/new-account (section 7.3).
pub(crate) async fn new_account(
    State(acme): State<Arc<Acme>>,
    peer: Option<axum::Extension<crate::server::PeerAddr>>,
    Signed(auth): JwkSigned,
) -> AcmeResult {
    let req: AccountRequest = payload(&auth)?;
    let thumbprint = auth.jwk.thumbprint();
    if let Some(existing) = acme.ra.account_by_thumbprint(&thumbprint).await.map_err(AcmeProblem::from)? {
        if existing.status != "valid" {
            return Err(AcmeProblem::unauthorized(format!("the account for this key is {}", existing.status)));
        }
        let r = json(StatusCode::OK, &account_json(&acme, &existing));
        return Ok(with_header(r, header::LOCATION, &acme.url(&format!("/account/{}", existing.id))));
    }
    if req.only_return_existing {
        return Err(AcmeProblem::new(StatusCode::BAD_REQUEST, "accountDoesNotExist", "no account exists for this key"));
    }
    let eab = match &req.external_account_binding {
        Some(eab) => Some(check_eab(&acme, eab, &auth.jwk).await?),
        None if acme.cfg.require_eab => {
            return Err(AcmeProblem::new(
                StatusCode::FORBIDDEN,
                "externalAccountRequired",
                "this CA requires external account binding; ask the operator for a key (lanyard-ca eab create)",
            ));
        }
        None => None,
    };
    if acme.cfg.terms_of_service.is_some() && req.terms_of_service_agreed != Some(true) {
        return Err(AcmeProblem::new(StatusCode::FORBIDDEN, "userActionRequired", "agree to the terms of service"));
    }
    let contact = req.contact.unwrap_or_default();
    check_contacts(&contact)?;
    // Counted only for accounts about to be created: looking up an existing one is free.
    if let Some(axum::Extension(peer)) = peer
        && let Err(wait) = acme.limits.check_new_account(peer.0.ip())
    {
        return Ok(super::ratelimit::limited(wait, "too many new accounts from this address"));
    }
    let account = AcmeAccount {
        id: new_id(),
        thumbprint,
        jwk: serde_json::to_string(&auth.jwk).map_err(AcmeProblem::internal)?,
        status: "valid".into(),
        contact,
        eab_kid: eab.as_ref().map(|k| k.kid.clone()),
        created_at: now(),
        allowed_suffixes: eab.map(|k| k.allowed_suffixes).unwrap_or_default(),
    };
    let audit = ca::AuditEvent::now(
        format!("acme:{}", account.id),
        "account.create",
        &account.id,
        ca::Outcome::Success,
        match &account.eab_kid {
            Some(kid) => format!("bound to EAB key {kid}"),
            None => String::new(),
        },
    );
    let (stored, created) = acme.ra.new_account(&account, &audit).await.map_err(|e| match e {
        NewAccountError::EabKeyUsed => AcmeProblem::unauthorized("this external account binding key is already used"),
        NewAccountError::Database(other) => AcmeProblem::from(other),
    })?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    if created {
        tracing::info!(account = %stored.id, "ACME account created");
    }
    let r = json(status, &account_json(&acme, &stored));
    Ok(with_header(r, header::LOCATION, &acme.url(&format!("/account/{}", stored.id))))
}

/// Verifies an external account binding and returns its (unused) key.
async fn check_eab(acme: &Acme, eab: &super::jws::FlattenedJws, jwk: &Jwk) -> Result<ca::ra::EabKey, AcmeProblem> {
    #[derive(serde::Deserialize)]
    struct Kid {
        kid: String,
    }
    let kid: Kid = B64
        .decode(&eab.protected)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| AcmeProblem::malformed("the external account binding has no kid"))?;
    let key = acme
        .ra
        .eab_key(&kid.kid)
        .await
        .map_err(AcmeProblem::from)?
        .ok_or_else(|| AcmeProblem::unauthorized("unknown external account binding key"))?;
    if key.account_id.is_some() {
        return Err(AcmeProblem::unauthorized("this external account binding key is already used"));
    }
    let mac = B64.decode(&key.hmac_key).map_err(AcmeProblem::internal)?;
    super::jws::verify_eab(eab, jwk, &acme.url("/new-account"), |k| (k == key.kid).then_some(mac)).map_err(
        |e| match e {
            super::jws::JwsError::BadSignature => {
                AcmeProblem::unauthorized("the external account binding MAC does not verify")
            }
            other => AcmeProblem::from(other),
        },
    )?;
    Ok(key)
}

/// POST /acme/account/{id}: read, update contacts, or deactivate (sections 7.3.2, 7.3.6).
pub(crate) async fn account(State(acme): State<Arc<Acme>>, Path(id): Path<String>, Signed(auth): Kid) -> AcmeResult {
    let acct = owner(&auth, &id)?.clone();
    if auth.jws.payload.is_empty() {
        return Ok(json(StatusCode::OK, &account_json(&acme, &acct)));
    }
    let req: AccountRequest = payload(&auth)?;
    let contact = match req.contact {
        Some(c) => {
            check_contacts(&c)?;
            c
        }
        None => acct.contact.clone(),
    };
    let status = match req.status.as_deref() {
        None | Some("valid") => AccountStatus::Valid,
        Some("deactivated") => AccountStatus::Deactivated,
        Some(other) => return Err(AcmeProblem::malformed(format!("an account cannot be set to {other:?}"))),
    };
    let action = if status == AccountStatus::Deactivated { "account.deactivate" } else { "account.update" };
    let audit = ca::AuditEvent::now(
        format!("acme:{}", acct.id),
        action,
        &acct.id,
        ca::Outcome::Success,
        format!("{} contacts", contact.len()),
    );
    if !acme.ra.update_account(&acct.id, &contact, status, &audit).await.map_err(AcmeProblem::from)? {
        return Err(AcmeProblem::unauthorized("the account is no longer valid"));
    }
    if status == AccountStatus::Deactivated {
        tracing::info!(account = %acct.id, "ACME account deactivated");
    }
    let updated = AcmeAccount { contact, status: status.as_str().into(), ..acct };
    Ok(json(StatusCode::OK, &account_json(&acme, &updated)))
}

/// POST /acme/account/{id}/orders (section 7.1.2.1).
pub(crate) async fn account_orders(
    State(acme): State<Arc<Acme>>,
    Path(id): Path<String>,
    Signed(auth): Kid,
) -> AcmeResult {
    require_post_as_get(&auth)?;
    let acct = owner(&auth, &id)?;
    let ids = acme.ra.order_ids(&acct.id).await.map_err(AcmeProblem::from)?;
    Ok(json(StatusCode::OK, &OrdersList { orders: ids.iter().map(|o| acme.url(&format!("/order/{o}"))).collect() }))
}

/// Validates one requested identifier; returns it normalised with its policy name.
fn check_identifier(
    acme: &Acme,
    acct: &AcmeAccount,
    id: &Identifier,
) -> Result<(Identifier, Name, bool), (String, String)> {
    let (norm, name, wildcard) = check_identifier_ca(acme, id)?;
    ca::ra::account_allows(acct, &name).map_err(|d| ("rejectedIdentifier".to_owned(), d))?;
    Ok((norm, name, wildcard))
}

fn check_identifier_ca(acme: &Acme, id: &Identifier) -> Result<(Identifier, Name, bool), (String, String)> {
    check_identifier_policy(acme.authority.policy(), acme.cfg.validation.dns_resolver.is_some(), id)
}

/// [`check_identifier_ca`] against `policy`; `dns01`: whether dns-01 (so wildcards) is offered.
fn check_identifier_policy(
    policy: &ca::Policy,
    dns01: bool,
    id: &Identifier,
) -> Result<(Identifier, Name, bool), (String, String)> {
    match id.kind.as_str() {
        "dns" => {
            let wildcard = id.value.starts_with("*.");
            let name = ca::check_dns_name(&id.value).map_err(|e| ("rejectedIdentifier".to_owned(), e.to_string()))?;
            if wildcard && !dns01 {
                return Err((
                    "rejectedIdentifier".into(),
                    "wildcard names need dns-01, which this CA does not offer".into(),
                ));
            }
            let n = Name::Dns(name.clone());
            policy.check_name(&n).map_err(|e| ("rejectedIdentifier".to_owned(), e.to_string()))?;
            Ok((Identifier { kind: "dns".into(), value: name }, n, wildcard))
        }
        "ip" => {
            let ip: IpAddr = id
                .value
                .parse()
                .map_err(|_| ("malformed".to_owned(), format!("{:?} is not an IP address", id.value)))?;
            let n = Name::Ip(ip);
            policy.check_name(&n).map_err(|e| ("rejectedIdentifier".to_owned(), e.to_string()))?;
            Ok((Identifier { kind: "ip".into(), value: ip.to_string() }, n, false))
        }
        crate::enroll::SPIFFE_IDENTIFIER => {
            let id = ca::SpiffeId::parse(&id.value).map_err(|e| ("malformed".to_owned(), e.to_string()))?;
            let td = &policy.trust_domain;
            if id.trust_domain() != td {
                return Err(("rejectedIdentifier".into(), format!("{id} is outside the trust domain {td}")));
            }
            if id.path().is_empty() {
                return Err(("rejectedIdentifier".into(), "a workload SPIFFE ID needs a path".into()));
            }
            let value = id.to_string();
            Ok((Identifier { kind: crate::enroll::SPIFFE_IDENTIFIER.into(), value }, Name::Spiffe(id), false))
        }
        other => Err(("unsupportedIdentifier".into(), format!("identifier type {other:?} is not supported"))),
    }
}

/// Whether an order is a workload enrollment (a SPIFFE identifier), issued under the workload
/// profile after attestation instead of the tls-server profile after domain validation.
fn is_enrollment(ids: &[Identifier]) -> bool {
    ids.iter().any(|i| i.kind == crate::enroll::SPIFFE_IDENTIFIER)
}

/// POST /acme/new-order (section 7.4).
pub(crate) async fn new_order(State(acme): State<Arc<Acme>>, Signed(auth): Kid) -> AcmeResult {
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("kid required"))?;
    let req: NewOrder = payload(&auth)?;
    if let Err(wait) = acme.limits.check_order(&acct.id) {
        return Ok(super::ratelimit::limited(wait, "too many new orders for this account"));
    }
    if let Some(cert_id) = &req.replaces {
        check_replaces(&acme, acct, cert_id).await?;
    }
    let ids = check_new_order(&req, |id| check_identifier(&acme, acct, id))?;
    let t = now();
    let expires = t.saturating_add(ca::units::secs(acme.cfg.order_lifetime));
    let order_id = new_id();
    let identifiers: Vec<Identifier> = ids.iter().map(|(i, _)| i.clone()).collect();
    let mut authzs = Vec::new();
    let mut challenges = Vec::new();
    let dns01 = acme.cfg.validation.dns_resolver.is_some();
    for (id, wildcard) in &ids {
        let authz_id = new_id();
        // RFC 8555 section 7.1.3: a wildcard is authorized for its base name, by dns-01 only.
        let kinds: &[&str] = match (id.kind.as_str(), *wildcard, dns01) {
            (crate::enroll::SPIFFE_IDENTIFIER, _, _) => acme.enroll.challenge_kinds(),
            ("ip", _, _) => &["http-01"],
            (_, true, _) => &["dns-01"],
            (_, false, true) => &["http-01", "tls-alpn-01", "dns-01"],
            (_, false, false) => &["http-01", "tls-alpn-01"],
        };
        for kind in kinds {
            challenges.push(AcmeChallenge {
                id: new_id(),
                authz_id: authz_id.clone(),
                kind: (*kind).into(),
                token: new_id(),
                status: "pending".into(),
                validated_at: None,
                error: None,
            });
        }
        authzs.push(AcmeAuthz {
            id: authz_id,
            order_id: order_id.clone(),
            account_id: acct.id.clone(),
            id_type: id.kind.clone(),
            id_value: id.value.strip_prefix("*.").unwrap_or(&id.value).to_owned(),
            wildcard: *wildcard,
            status: "pending".into(),
            expires_at: expires,
        });
    }
    let order = AcmeOrder {
        id: order_id.clone(),
        account_id: acct.id.clone(),
        status: "pending".into(),
        identifiers: serde_json::to_string(&identifiers).map_err(AcmeProblem::internal)?,
        expires_at: expires,
        error: None,
        cert_serial: None,
        created_at: t,
        replaces: req.replaces.clone(),
    };
    acme.ra.new_order(&order, &authzs, &challenges).await.map_err(AcmeProblem::from)?;
    let body = order_json(&acme, &order, &authzs)?;
    Ok(with_header(json(StatusCode::CREATED, &body), header::LOCATION, &acme.url(&format!("/order/{order_id}"))))
}

/// The checks of a newOrder payload that need no store: no notBefore/notAfter, 1 to 100
/// identifiers each accepted by `check` (else subproblems), and a spiffe identifier alone.
/// Returns the normalised identifiers with their wildcard flags.
fn check_new_order(
    req: &NewOrder,
    check: impl Fn(&Identifier) -> Result<(Identifier, Name, bool), (String, String)>,
) -> Result<BTreeSet<(Identifier, bool)>, AcmeProblem> {
    if req.not_before.is_some() || req.not_after.is_some() {
        return Err(AcmeProblem::malformed("notBefore and notAfter are not supported; the profile decides validity"));
    }
    if req.identifiers.is_empty() || req.identifiers.len() > 100 {
        return Err(AcmeProblem::malformed("an order needs 1 to 100 identifiers"));
    }
    let mut ids = BTreeSet::new();
    let mut sub = Vec::new();
    for id in &req.identifiers {
        match check(id) {
            Ok((norm, _, wildcard)) => {
                ids.insert((norm, wildcard));
            }
            Err((kind, detail)) => sub.push(Subproblem {
                kind: format!("urn:ietf:params:acme:error:{kind}"),
                detail,
                identifier: id.clone(),
            }),
        }
    }
    if !sub.is_empty() {
        let kind = if sub.iter().all(|s| s.kind.ends_with("unsupportedIdentifier")) {
            "unsupportedIdentifier"
        } else {
            "rejectedIdentifier"
        };
        let mut p =
            AcmeProblem::new(StatusCode::BAD_REQUEST, kind, "some identifiers cannot be ordered; see subproblems");
        p.subproblems = sub;
        return Err(p);
    }
    let identifiers: Vec<Identifier> = ids.iter().map(|(i, _)| i.clone()).collect();
    if is_enrollment(&identifiers) && identifiers.len() != 1 {
        return Err(AcmeProblem::new(
            StatusCode::BAD_REQUEST,
            "rejectedIdentifier",
            "a spiffe identifier is ordered alone: one workload identity per order",
        ));
    }
    Ok(ids)
}

/// Which ACME request payload [`check_payload`] reads.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// newAccount / account update.
    Account,
    /// newOrder.
    NewOrder,
    /// finalize.
    Finalize,
    /// revokeCert.
    Revoke,
    /// keyChange (its inner payload).
    KeyChange,
    /// The JSON object a challenge POST carries (join-token-01 / jwt-01 attestation payload).
    Challenge,
}

/// Deserializes `payload` as the handlers do and runs every check on it that needs no store or
/// network, with the handlers' own functions, against `policy` (`dns01`: whether dns-01 is
/// offered) and `account_key` (the JWS signer). For fuzzing.
#[doc(hidden)]
pub fn check_payload(
    kind: PayloadKind,
    payload: &[u8],
    policy: &ca::Policy,
    dns01: bool,
    account_key: &Jwk,
) -> Result<(), AcmeProblem> {
    fn parse<T: serde::de::DeserializeOwned>(p: &[u8]) -> Result<T, AcmeProblem> {
        serde_json::from_slice(p).map_err(|e| AcmeProblem::malformed(format!("bad payload: {e}")))
    }
    match kind {
        PayloadKind::Account => {
            let req: AccountRequest = parse(payload)?;
            check_contacts(&req.contact.unwrap_or_default())
        }
        PayloadKind::NewOrder => {
            let req: NewOrder = parse(payload)?;
            if let Some(r) = &req.replaces {
                parse_cert_id(r).ok_or_else(|| AcmeProblem::malformed("replaces is not a certID"))?;
            }
            check_new_order(&req, |id| check_identifier_policy(policy, dns01, id)).map(|_| ())
        }
        PayloadKind::Finalize => finalize_csr(&parse(payload)?, account_key).map(|_| ()),
        PayloadKind::Revoke => revoke_request(&parse(payload)?).map(|_| ()),
        PayloadKind::KeyChange => {
            let req: KeyChange = serde_json::from_slice(payload)
                .map_err(|e| AcmeProblem::malformed(format!("bad keyChange payload: {e}")))?;
            // Parsing is what is fuzzed here; the thumbprint is computed to exercise the key.
            std::hint::black_box(req.old_key.thumbprint());
            Ok(())
        }
        PayloadKind::Challenge => {
            let _: crate::enroll::AttestationPayload = parse(payload)?;
            Ok(())
        }
    }
}

fn order_json(acme: &Acme, o: &AcmeOrder, authzs: &[AcmeAuthz]) -> Result<Order, AcmeProblem> {
    Ok(Order {
        status: o.status.clone(),
        expires: rfc3339(o.expires_at),
        identifiers: serde_json::from_str(&o.identifiers).map_err(AcmeProblem::internal)?,
        authorizations: authzs.iter().map(|a| acme.url(&format!("/authz/{}", a.id))).collect(),
        finalize: acme.url(&format!("/order/{}/finalize", o.id)),
        certificate: o.cert_serial.as_ref().map(|s| acme.url(&format!("/cert/{s}"))),
        error: o.error.as_deref().and_then(|e| serde_json::from_str(e).ok()),
        replaces: o.replaces.clone(),
    })
}

async fn load_order(acme: &Acme, auth: &Authenticated, id: &str) -> Result<(AcmeOrder, Vec<AcmeAuthz>), AcmeProblem> {
    let (o, authzs) =
        acme.ra.order_with_authzs(id).await.map_err(AcmeProblem::from)?.ok_or_else(AcmeProblem::not_found)?;
    owner(auth, &o.account_id)?;
    Ok((o, authzs))
}

fn polled(r: Response, status: &str) -> Response {
    if matches!(status, "pending" | "processing") { with_header(r, header::RETRY_AFTER, "1") } else { r }
}

/// POST /acme/order/{id} (section 7.4).
pub(crate) async fn order(State(acme): State<Arc<Acme>>, Path(id): Path<String>, Signed(auth): Kid) -> AcmeResult {
    require_post_as_get(&auth)?;
    let (o, authzs) = load_order(&acme, &auth, &id).await?;
    Ok(polled(json(StatusCode::OK, &order_json(&acme, &o, &authzs)?), &o.status))
}

fn challenge_json(acme: &Acme, c: &AcmeChallenge) -> Challenge {
    Challenge {
        kind: c.kind.clone(),
        url: acme.url(&format!("/challenge/{}", c.id)),
        status: c.status.clone(),
        token: c.token.clone(),
        validated: c.validated_at.map(rfc3339),
        error: c.error.as_deref().and_then(|e| serde_json::from_str(e).ok()),
    }
}

/// POST /acme/authz/{id} (section 7.5).
pub(crate) async fn authz(State(acme): State<Arc<Acme>>, Path(id): Path<String>, Signed(auth): Kid) -> AcmeResult {
    require_post_as_get(&auth)?;
    let (a, challenges) = acme.ra.authz(&id).await.map_err(AcmeProblem::from)?.ok_or_else(AcmeProblem::not_found)?;
    owner(&auth, &a.account_id)?;
    let status = if a.status == "pending" && a.expires_at < now() { "expired".to_owned() } else { a.status.clone() };
    let body = Authorization {
        identifier: Identifier { kind: a.id_type.clone(), value: a.id_value.clone() },
        status: status.clone(),
        expires: rfc3339(a.expires_at),
        challenges: challenges.iter().map(|c| challenge_json(&acme, c)).collect(),
        wildcard: a.wildcard,
    };
    Ok(polled(json(StatusCode::OK, &body), &status))
}

/// POST /acme/challenge/{id}: `{}` asks for validation (section 7.5.1), an empty payload reads.
/// Validation runs before the answer, so the answer already says `valid` or `invalid`.
pub(crate) async fn challenge(State(acme): State<Arc<Acme>>, Path(id): Path<String>, Signed(auth): Kid) -> AcmeResult {
    let (ch, az) = acme.ra.challenge(&id).await.map_err(AcmeProblem::from)?.ok_or_else(AcmeProblem::not_found)?;
    owner(&auth, &az.account_id)?;
    let up = acme.url(&format!("/authz/{}", az.id));
    let respond = |c: &AcmeChallenge| {
        with_header(json(StatusCode::OK, &challenge_json(&acme, c)), header::LINK, &format!("<{up}>;rel=\"up\""))
    };
    if auth.jws.payload.is_empty() || ch.status != "pending" || az.status != "pending" {
        return Ok(respond(&ch));
    }
    let _: serde_json::Value = payload(&auth)?;
    if az.expires_at < now() {
        return Err(AcmeProblem::malformed("the authorization has expired"));
    }
    // Outbound validations are bounded; attestation (enrollment) and the test mode connect nowhere.
    let _slot = if az.id_type != crate::enroll::SPIFFE_IDENTIFIER && !acme.cfg.insecure_always_valid_challenges {
        match acme.validation_slots.acquire().await {
            Some(slot) => Some(slot),
            None => {
                return Ok(super::ratelimit::limited(
                    std::time::Duration::from_secs(1),
                    "every validation slot is busy; the challenge is still pending, post it again",
                ));
            }
        }
    } else {
        None
    };
    // Exactly one of concurrent POSTs validates; the others answer with the challenge as it is
    // now (processing, with Retry-After, or already final).
    if !acme.ra.claim_challenge(&ch.id).await.map_err(AcmeProblem::from)? {
        let (now_ch, _) =
            acme.ra.challenge(&id).await.map_err(AcmeProblem::from)?.ok_or_else(AcmeProblem::not_found)?;
        return Ok(polled(respond(&now_ch), &now_ch.status));
    }
    let key_authorization = format!("{}.{}", ch.token, auth.jwk.thumbprint());
    // A join token is spent together with the valid result (below), never before.
    let mut spend = None;
    let result = if az.id_type == crate::enroll::SPIFFE_IDENTIFIER {
        // Attestation is never skipped, not even in the insecure load-test mode: it decides who a
        // workload is, not whether a name resolves.
        acme.enroll.attest(&ch.kind, &az.id_value, &auth.jws.payload, now()).await.map(|digest| {
            spend = digest.map(|digest| ca::ra::TokenSpend {
                digest,
                spiffe_id: az.id_value.clone(),
                error_if_used: challenge_error("unauthorized", ca::ra::JoinTokenError::Used.to_string()),
                audit: ca::AuditEvent::now(
                    format!("acme:{}", az.account_id),
                    "join_token.spend",
                    &az.id_value,
                    ca::Outcome::Success,
                    format!("challenge {} of order {}", ch.id, az.order_id),
                ),
            });
        })
    } else if acme.cfg.insecure_always_valid_challenges {
        Ok(())
    } else {
        let v = &acme.cfg.validation;
        match ch.kind.as_str() {
            "http-01" => v.http01(&az.id_value, &ch.token, &key_authorization).await,
            "tls-alpn-01" => v.tls_alpn01(&az.id_value, &key_authorization).await,
            "dns-01" => v.dns01(&az.id_value, &key_authorization).await,
            other => Err(super::validation::ValidationError {
                kind: "malformed",
                detail: format!("unknown challenge {other}"),
            }),
        }
    };
    let error = result.as_ref().err().map(|e| challenge_error(e.kind, e.detail.clone()));
    if let Err(e) = &result {
        if az.id_type == crate::enroll::SPIFFE_IDENTIFIER {
            acme.metrics.auth_failure("attestation");
        }
        tracing::info!(identifier = %az.id_value, challenge = %ch.kind, kind = e.kind, detail = %e.detail, "ACME validation failed");
    }
    let outcome = match (&result, &error) {
        (Ok(()), _) => Ok(spend.as_ref()),
        (Err(_), e) => Err(e.as_deref().unwrap_or_default()),
    };
    let valid = match acme.ra.finish_challenge(&ch.id, &az.id, &az.order_id, outcome, now()).await {
        Ok(valid) => valid,
        Err(e) => {
            // Not recorded (and no token spent): hand the challenge back so the client can post
            // it again.
            match acme.ra.release_challenge(&ch.id).await {
                Ok(_) => {}
                Err(release) => tracing::error!(
                    challenge = %ch.id,
                    error = %release,
                    "a challenge whose result could not be recorded stays processing until its authorization expires"
                ),
            }
            return Err(AcmeProblem::from(e));
        }
    };
    let error = match (valid, result.is_ok()) {
        (true, _) => None,
        // Valid, but another enrollment spent the join token first.
        (false, true) => {
            acme.metrics.auth_failure("attestation");
            spend.map(|s| s.error_if_used)
        }
        (false, false) => error,
    };
    let done = AcmeChallenge {
        status: if valid { "valid".into() } else { "invalid".into() },
        validated_at: valid.then(now),
        error,
        ..ch
    };
    Ok(respond(&done))
}

/// The problem document (RFC 8555 section 8) a failed challenge carries, as JSON.
fn challenge_error(kind: &'static str, detail: String) -> String {
    let mut p = AcmeProblem::new(StatusCode::FORBIDDEN, kind, detail);
    p.subproblems = vec![];
    p.to_json()
}

/// The finalize payload's CSR: decoded, parsed, its signature verified (the one time it is, see
/// [`ca::ra::FinalizeRequest::csr`]), and its key not the account key.
fn finalize_csr(req: &Finalize, account_key: &Jwk) -> Result<ca::VerifiedCsr, AcmeProblem> {
    let csr = B64
        .decode(req.csr.trim_end_matches('='))
        .map_err(|_| AcmeProblem::new(StatusCode::BAD_REQUEST, "badCSR", "csr is not base64url"))?;
    let verified = ca::parse_and_verify_csr(&csr).map_err(AcmeProblem::from_finalize)?;
    let (_, spki) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&verified.spki_der)
            .map_err(|_| AcmeProblem::new(StatusCode::BAD_REQUEST, "badCSR", "unreadable public key"))?;
    if jwk_is_spki(account_key, &spki) {
        return Err(AcmeProblem::new(
            StatusCode::BAD_REQUEST,
            "badCSR",
            "the certificate key must differ from the account key",
        ));
    }
    Ok(verified)
}

/// True when `jwk` is the public key in the DER SubjectPublicKeyInfo `spki`.
fn jwk_is_spki(jwk: &Jwk, spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
    let key = spki.subject_public_key.data.as_ref();
    let dec = |s: &str| B64.decode(s).unwrap_or_default();
    match jwk {
        Jwk::Ec { x, y, .. } => {
            let mut p = vec![4u8];
            p.extend(dec(x));
            p.extend(dec(y));
            key == p.as_slice()
        }
        Jwk::Okp { x, .. } => key == dec(x).as_slice(),
        Jwk::Rsa { n, e } => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<u8>>();
                strip(rsa.modulus) == strip(&dec(n)) && strip(rsa.exponent) == strip(&dec(e))
            }
            _ => false,
        },
    }
}

/// POST /acme/order/{id}/finalize (section 7.4): issues synchronously and answers `valid`. The
/// registration authority does the rest in one call ([`ca::ra::Registration::finalize`]): the
/// certificate's record and the order's move to `valid` commit together.
pub(crate) async fn finalize(State(acme): State<Arc<Acme>>, Path(id): Path<String>, Signed(auth): Kid) -> AcmeResult {
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("kid required"))?;
    let req: Finalize = payload(&auth)?;
    let csr = finalize_csr(&req, &auth.jwk)?;
    let render = |e: &ca::CaError| AcmeProblem::for_finalize(e).to_json();
    let done = acme
        .ra
        .finalize(FinalizeRequest { order_id: &id, account: acct, csr, render_problem: &render })
        .await
        .map_err(finalize_problem)?;
    let r = json(StatusCode::OK, &order_json(&acme, &done.order, &done.authzs)?);
    Ok(with_header(r, header::LOCATION, &acme.url(&format!("/order/{}", done.order.id))))
}

/// The problem document (RFC 8555 section 7.4) for a finalize that did not issue.
fn finalize_problem(e: FinalizeError) -> AcmeProblem {
    match e {
        FinalizeError::NotFound => AcmeProblem::not_found(),
        FinalizeError::NotReady(detail) => AcmeProblem::new(StatusCode::FORBIDDEN, "orderNotReady", detail),
        // A CSR that does not name exactly the order's identifiers is a badCSR.
        FinalizeError::BadCsr(e) => AcmeProblem::new(StatusCode::BAD_REQUEST, "badCSR", e.to_string()),
        FinalizeError::NotAllowed(detail) => AcmeProblem::new(StatusCode::FORBIDDEN, "rejectedIdentifier", detail),
        FinalizeError::Unavailable(e) | FinalizeError::Failed(e) => AcmeProblem::from_finalize(e),
        FinalizeError::Database(e) => AcmeProblem::from(e),
    }
}

/// POST /acme/cert/{serial} (section 7.4.2): the chain as `application/pem-certificate-chain`.
pub(crate) async fn certificate(
    State(acme): State<Arc<Acme>>,
    Path(serial): Path<String>,
    Signed(auth): Kid,
) -> AcmeResult {
    download(&acme, &serial, 0, &auth).await
}

/// POST /acme/cert/{serial}/alt/{n}: an alternate chain (RFC 8555 section 7.4.2).
pub(crate) async fn certificate_alternate(
    State(acme): State<Arc<Acme>>,
    Path((serial, n)): Path<(String, usize)>,
    Signed(auth): Kid,
) -> AcmeResult {
    if n == 0 {
        return Err(AcmeProblem::not_found());
    }
    download(&acme, &serial, n, &auth).await
}

/// The chains (issuer certificates, PEM) a certificate can be served with. The default one leads
/// to every trusted root: during a root rotation it carries the cross certificate to the other
/// root, so a client that holds only the old root (or only the new one) validates it. The
/// alternate, offered only then, stops at the intermediate's own root, for clients that pick
/// chains by the top issuer's name (cert-manager's `preferredChain`) or want the shorter one.
fn chains_for(issuer: &ca::IssuerRecord, journal: &[ca::IssuerRecord]) -> Vec<String> {
    let cross = issuer.cross_chain(journal);
    if cross.is_empty() {
        return vec![issuer.cert_pem.clone()];
    }
    vec![format!("{}{}", issuer.cert_pem, cross.concat()), issuer.cert_pem.clone()]
}

async fn download(acme: &Acme, serial: &str, n: usize, auth: &Authenticated) -> AcmeResult {
    require_post_as_get(auth)?;
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("signed with jwk where kid is required"))?;
    let found = acme.ra.download(serial, &acct.id).await.map_err(|e| match e {
        DownloadError::NotFound => AcmeProblem::not_found(),
        DownloadError::IssuerMissing => AcmeProblem::internal("issuer of a certificate missing"),
        DownloadError::Database(e) => AcmeProblem::from(e),
    })?;
    let leaf = found.leaf_pem;
    let chains = chains_for(&found.issuer, &found.journal);
    let chain = chains.get(n).ok_or_else(AcmeProblem::not_found)?;
    let mut r = (StatusCode::OK, format!("{leaf}{chain}")).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pem-certificate-chain"));
    for k in (0..chains.len()).filter(|k| *k != n) {
        let url =
            if k == 0 { acme.url(&format!("/cert/{serial}")) } else { acme.url(&format!("/cert/{serial}/alt/{k}")) };
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>;rel=\"alternate\"")) {
            r.headers_mut().append(header::LINK, v);
        }
    }
    Ok(r)
}

/// POST /acme/revoke-cert (section 7.6): by the ordering account (kid) or the certificate key (jwk).
pub(crate) async fn revoke_cert(State(acme): State<Arc<Acme>>, Signed(auth): EitherKey) -> AcmeResult {
    let req: Revoke = payload(&auth)?;
    let (reason, der) = revoke_request(&req)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| AcmeProblem::malformed("certificate is not DER X.509"))?;
    let serial = hex::encode(cert.raw_serial());
    let by = match &auth.account {
        Some(acct) => Revoker::Account(&acct.id),
        None => Revoker::CertificateKey { key_matches: jwk_is_spki(&auth.jwk, cert.public_key()) },
    };
    // The certificate and everything renewed from it, with the audit events, in one transaction.
    let done = acme.ra.revoke(&serial, &der, by, reason).await.map_err(|e| match e {
        RevokeError::NotFound => AcmeProblem::not_found(),
        RevokeError::NotAuthorized => {
            AcmeProblem::unauthorized("neither the ordering account nor the certificate key signed this request")
        }
        RevokeError::AlreadyRevoked => {
            AcmeProblem::new(StatusCode::BAD_REQUEST, "alreadyRevoked", "the certificate is already revoked")
        }
        RevokeError::Database(e) => AcmeProblem::from(e),
    })?;
    tracing::info!(%serial, reason, successors = done.successors.len(), "certificate revoked");
    Ok(StatusCode::OK.into_response())
}

/// The revokeCert payload's reason (checked) and certificate (decoded, and checked to be X.509).
fn revoke_request(req: &Revoke) -> Result<(i32, Vec<u8>), AcmeProblem> {
    let reason = req.reason.unwrap_or(0);
    if ![0, 1, 3, 4, 5, 9].contains(&reason) {
        return Err(AcmeProblem::new(
            StatusCode::BAD_REQUEST,
            "badRevocationReason",
            format!("reason {reason} is not accepted (0, 1, 3, 4, 5, 9)"),
        ));
    }
    let der = B64
        .decode(req.certificate.trim_end_matches('='))
        .map_err(|_| AcmeProblem::malformed("certificate is not base64url"))?;
    x509_parser::parse_x509_certificate(&der).map_err(|_| AcmeProblem::malformed("certificate is not DER X.509"))?;
    Ok((reason, der))
}

/// POST /acme/key-change (section 7.3.5): the outer JWS is signed by the current key (kid), the
/// inner one by the new key (jwk), with the same url, no nonce, and `{account, oldKey}`.
pub(crate) async fn key_change(State(acme): State<Arc<Acme>>, Signed(auth): Kid) -> AcmeResult {
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("kid required"))?;
    let inner = super::jws::ParsedJws::parse(&auth.jws.payload)?;
    let new_key = inner.require_jwk()?.clone();
    new_key.validate()?;
    // The outer url was already checked against the request URL.
    if inner.header.url != auth.jws.header.url {
        return Err(AcmeProblem::malformed("the inner JWS url differs from the outer one"));
    }
    if inner.header.nonce.is_some() {
        return Err(AcmeProblem::malformed("the inner JWS must not carry a nonce"));
    }
    inner.verify(&new_key)?;
    let req: KeyChange = serde_json::from_slice(&inner.payload)
        .map_err(|e| AcmeProblem::malformed(format!("bad keyChange payload: {e}")))?;
    let account_url = acme.url(&format!("/account/{}", acct.id));
    if req.account != account_url {
        return Err(AcmeProblem::unauthorized("the keyChange account is not the signer's account"));
    }
    if req.old_key.thumbprint() != acct.thumbprint {
        return Err(AcmeProblem::unauthorized("oldKey is not the account's current key"));
    }
    let new_jwk = serde_json::to_string(&new_key).map_err(AcmeProblem::internal)?;
    let audit =
        ca::AuditEvent::now(format!("acme:{}", acct.id), "account.key-change", &acct.id, ca::Outcome::Success, "");
    match acme.ra.change_key(acct, &new_key.thumbprint(), &new_jwk, &audit).await.map_err(AcmeProblem::from)? {
        KeyChangeOutcome::Changed => {
            tracing::info!(account = %acct.id, "ACME account key changed");
            Ok(json(StatusCode::OK, &account_json(&acme, acct)))
        }
        KeyChangeOutcome::Raced => Err(AcmeProblem::unauthorized("the account key changed concurrently")),
        KeyChangeOutcome::KeyInUse(other) => {
            let r = AcmeProblem::new(StatusCode::CONFLICT, "malformed", "the new key already belongs to an account")
                .into_response();
            Ok(with_header(r, header::LOCATION, &acme.url(&format!("/account/{other}"))))
        }
    }
}

/// Parses an RFC 9773 certID (`base64url(AKI keyIdentifier).base64url(serial)`) into
/// (AKI hex, serial hex).
fn parse_cert_id(id: &str) -> Option<(String, String)> {
    let (aki, serial) = id.split_once('.')?;
    let aki = B64.decode(aki).ok()?;
    let serial = B64.decode(serial).ok()?;
    if aki.is_empty() || serial.is_empty() {
        return None;
    }
    Some((hex::encode(aki), hex::encode(serial)))
}

/// Finds the certificate a certID names, checking that the AKI is its issuer's key id.
async fn cert_for_id(acme: &Acme, id: &str) -> Result<ca::ra::CertificateRecord, AcmeProblem> {
    let (aki, serial) = cert_id_parts(id)?;
    acme.ra.certificate_by_id(&aki, &serial).await.map_err(AcmeProblem::from)?.ok_or_else(AcmeProblem::not_found)
}

/// [`parse_cert_id`], refusing what is not a certID.
fn cert_id_parts(id: &str) -> Result<(String, String), AcmeProblem> {
    parse_cert_id(id).ok_or_else(|| AcmeProblem::malformed("not an RFC 9773 certificate identifier"))
}

async fn check_replaces(acme: &Acme, acct: &AcmeAccount, cert_id: &str) -> Result<(), AcmeProblem> {
    let (aki, serial) = cert_id_parts(cert_id)?;
    acme.ra.check_replaces(cert_id, &aki, &serial, &acct.id).await.map_err(|e| match e {
        ReplacesError::NotFound => AcmeProblem::not_found(),
        ReplacesError::NotOwned => AcmeProblem::unauthorized("replaces names a certificate this account did not order"),
        ReplacesError::AlreadyReplaced => {
            AcmeProblem::new(StatusCode::CONFLICT, "alreadyReplaced", "that certificate was already replaced")
        }
        ReplacesError::Database(e) => AcmeProblem::from(e),
    })
}

/// GET /acme/renewal-info/{certID} (RFC 9773 section 4): when to renew. Around two thirds of the
/// lifetime normally; in the past once the CA wants the certificate replaced (or it is revoked).
pub(crate) async fn renewal_info(State(acme): State<Arc<Acme>>, Path(id): Path<String>) -> AcmeResult {
    let rec = cert_for_id(&acme, &id).await?;
    let (nb, na) = (rec.not_before.unix_timestamp(), rec.not_after.unix_timestamp());
    let life = (na - nb).max(60);
    let replace = acme.ra.replacement_window(&rec.serial).await.map_err(AcmeProblem::from)?;
    let (start, end) = match (replace, rec.revoked_at) {
        // An emergency: a window the fleet spreads its renewals over (RFC 9773 section 4.2).
        (Some((at, Some(end))), _) => (at, end),
        (Some((at, None)), _) => (at - 3600, at),
        (None, Some(at)) => (at.unix_timestamp() - 3600, at.unix_timestamp()),
        (None, None) => (nb + life * 2 / 3 - life / 30, nb + life * 2 / 3 + life / 30),
    };
    let body = RenewalInfo {
        suggested_window: SuggestedWindow { start: rfc3339(start), end: rfc3339(end) },
        explanation_url: None,
    };
    let retry = (life / 10).clamp(60, 6 * 3600);
    Ok(with_header(json(StatusCode::OK, &body), header::RETRY_AFTER, &retry.to_string()))
}
