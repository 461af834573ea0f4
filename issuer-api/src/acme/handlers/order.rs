//! newOrder and order polling (RFC 8555 sections 7.4 and 7.1.3): identifier checks against the
//! CA policy and the account's own, and the payload checks shared with the fuzz targets.

use super::*;

/// Validates one requested identifier; returns it normalised with its policy name.
pub(super) fn check_identifier(
    acme: &Acme,
    acct: &AcmeAccount,
    id: &Identifier,
) -> Result<(Identifier, Name, bool), (String, String)> {
    let (norm, name, wildcard) = check_identifier_ca(acme, id)?;
    ca::ra::account_allows(acct, &name).map_err(|d| ("rejectedIdentifier".to_owned(), d))?;
    Ok((norm, name, wildcard))
}

pub(super) fn check_identifier_ca(acme: &Acme, id: &Identifier) -> Result<(Identifier, Name, bool), (String, String)> {
    check_identifier_policy(acme.authority.policy(), acme.cfg.validation.dns_resolver.is_some(), id)
}

/// [`check_identifier_ca`] against `policy`; `dns01`: whether dns-01 (so wildcards) is offered.
pub(super) fn check_identifier_policy(
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
pub(super) fn is_enrollment(ids: &[Identifier]) -> bool {
    ids.iter().any(|i| i.kind == crate::enroll::SPIFFE_IDENTIFIER)
}

/// POST /acme/new-order (section 7.4).
pub(crate) async fn new_order(State(acme): State<Arc<Acme>>, Signed(auth): Kid) -> AcmeResult {
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("kid required"))?;
    let req: NewOrder = payload(&auth)?;
    if let Err(wait) = acme.limits.check_order(&acct.id) {
        return Ok(super::super::ratelimit::limited(wait, "too many new orders for this account"));
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
pub(super) fn check_new_order(
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

pub(super) fn order_json(acme: &Acme, o: &AcmeOrder, authzs: &[AcmeAuthz]) -> Result<Order, AcmeProblem> {
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

pub(super) async fn load_order(
    acme: &Acme,
    auth: &Authenticated,
    id: &str,
) -> Result<(AcmeOrder, Vec<AcmeAuthz>), AcmeProblem> {
    let (o, authzs) =
        acme.ra.order_with_authzs(id).await.map_err(AcmeProblem::from)?.ok_or_else(AcmeProblem::not_found)?;
    owner(auth, &o.account_id)?;
    Ok((o, authzs))
}

pub(super) fn polled(r: Response, status: &str) -> Response {
    if matches!(status, "pending" | "processing") { with_header(r, header::RETRY_AFTER, "1") } else { r }
}

/// POST /acme/order/{id} (section 7.4).
pub(crate) async fn order(State(acme): State<Arc<Acme>>, Path(id): Path<String>, Signed(auth): Kid) -> AcmeResult {
    require_post_as_get(&auth)?;
    let (o, authzs) = load_order(&acme, &auth, &id).await?;
    Ok(polled(json(StatusCode::OK, &order_json(&acme, &o, &authzs)?), &o.status))
}
