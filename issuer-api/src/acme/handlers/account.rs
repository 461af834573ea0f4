//! Accounts: newAccount with external account binding, account update and deactivation, the
//! account's order list, and keyChange (RFC 8555 sections 7.3, 7.3.4, 7.3.5).

use super::*;

pub(super) fn account_json(acme: &Acme, a: &AcmeAccount) -> Account {
    Account {
        status: a.status.clone(),
        contact: a.contact.clone(),
        orders: acme.url(&format!("/account/{}/orders", a.id)),
        terms_of_service_agreed: true,
    }
}

pub(super) fn check_contacts(contact: &[String]) -> Result<(), AcmeProblem> {
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
        return Ok(super::super::ratelimit::limited(wait, "too many new accounts from this address"));
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
pub(super) async fn check_eab(
    acme: &Acme,
    eab: &super::super::jws::FlattenedJws,
    jwk: &Jwk,
) -> Result<ca::ra::EabKey, AcmeProblem> {
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
    super::super::jws::verify_eab(eab, jwk, &acme.url("/new-account"), |k| (k == key.kid).then_some(mac)).map_err(
        |e| match e {
            super::super::jws::JwsError::BadSignature => {
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

/// POST /acme/key-change (section 7.3.5): the outer JWS is signed by the current key (kid), the
/// inner one by the new key (jwk), with the same url, no nonce, and `{account, oldKey}`.
pub(crate) async fn key_change(State(acme): State<Arc<Acme>>, Signed(auth): Kid) -> AcmeResult {
    let acct = auth.account.as_ref().ok_or_else(|| AcmeProblem::malformed("kid required"))?;
    let inner = super::super::jws::ParsedJws::parse(&auth.jws.payload)?;
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
