//! Authorizations (RFC 8555 section 7.5).

use super::*;

pub(super) fn challenge_json(acme: &Acme, c: &AcmeChallenge) -> Challenge {
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
