//! Responding to a challenge (RFC 8555 section 7.5.1): validation under the slot limit, and
//! the join-token attestation that enrollment orders use.

use super::*;

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
                return Ok(super::super::ratelimit::limited(
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
            other => Err(super::super::validation::ValidationError {
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
pub(super) fn challenge_error(kind: &'static str, detail: String) -> String {
    let mut p = AcmeProblem::new(StatusCode::FORBIDDEN, kind, detail);
    p.subproblems = vec![];
    p.to_json()
}
