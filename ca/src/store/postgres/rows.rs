//! Rows of PostgreSQL queries mapped to the store's types, every column read by name.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::db_err;
use crate::CaError;
use crate::issuers::{IssuerKind, IssuerRecord};
use crate::store::acme::{AcmeAccount, AcmeAuthz, AcmeChallenge, AcmeOrder};
use crate::store::records::{CertificateRecord, CertificateStatus};
use crate::store::{IssuerState, from_unix};

/// Column `c`, of any type sqlx decodes.
pub(super) fn get<'r, T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>>(
    r: &'r AnyRow,
    c: &str,
) -> Result<T, CaError> {
    r.try_get(c).map_err(db_err)
}

/// Column `c`, a JSON text.
fn json<T: serde::de::DeserializeOwned>(r: &AnyRow, c: &str) -> Result<T, CaError> {
    serde_json::from_str(&get::<String>(r, c)?).map_err(|e| CaError::Store(format!("{c}: {e}")))
}

pub(super) fn issuer(r: &AnyRow) -> Result<IssuerRecord, CaError> {
    Ok(IssuerRecord {
        id: get(r, "id")?,
        kind: IssuerKind::parse(&get::<String>(r, "kind")?)?,
        state: IssuerState::parse(&get::<String>(r, "state")?)?,
        parent_id: get(r, "parent_id")?,
        subject: get(r, "subject")?,
        cert_pem: get(r, "cert_pem")?,
        key_pem_enc: get(r, "key_pem_enc")?,
        ski: get(r, "ski")?,
        fingerprint: get(r, "fingerprint")?,
        not_before: from_unix(get(r, "not_before")?)?,
        not_after: from_unix(get(r, "not_after")?)?,
        created_at: from_unix(get(r, "created_at")?)?,
        state_changed_at: from_unix(get(r, "state_changed_at")?)?,
        cross_cert_pem: get(r, "cross_cert_pem")?,
    })
}

pub(super) fn certificate(r: &AnyRow) -> Result<CertificateRecord, CaError> {
    Ok(CertificateRecord {
        serial: get(r, "serial")?,
        status: CertificateStatus::parse(&get::<String>(r, "status")?)?,
        issuer_id: get(r, "issuer_id")?,
        profile: get(r, "profile")?,
        requester: get(r, "requester")?,
        subject: get(r, "subject")?,
        sans: get(r, "sans")?,
        key_fingerprint: get(r, "key_fingerprint")?,
        not_before: from_unix(get(r, "not_before")?)?,
        not_after: from_unix(get(r, "not_after")?)?,
        cert_pem: get(r, "cert_pem")?,
        revoked_at: get::<Option<i64>>(r, "revoked_at")?.map(from_unix).transpose()?,
        renewed_from: get(r, "renewed_from")?,
        superseded_by: get(r, "superseded_by")?,
        superseded_at: get::<Option<i64>>(r, "superseded_at")?.map(from_unix).transpose()?,
    })
}

pub(super) fn account(r: &AnyRow) -> Result<AcmeAccount, CaError> {
    Ok(AcmeAccount {
        id: get(r, "id")?,
        thumbprint: get(r, "thumbprint")?,
        jwk: get(r, "jwk")?,
        status: get(r, "status")?,
        contact: json(r, "contact")?,
        eab_kid: get(r, "eab_kid")?,
        created_at: get(r, "created_at")?,
        allowed_suffixes: json(r, "allowed_suffixes")?,
    })
}

pub(super) fn order(r: &AnyRow) -> Result<AcmeOrder, CaError> {
    Ok(AcmeOrder {
        id: get(r, "id")?,
        account_id: get(r, "account_id")?,
        status: get(r, "status")?,
        identifiers: get(r, "identifiers")?,
        expires_at: get(r, "expires_at")?,
        error: get(r, "error")?,
        cert_serial: get(r, "cert_serial")?,
        created_at: get(r, "created_at")?,
        replaces: get(r, "replaces")?,
    })
}

pub(super) fn authz(r: &AnyRow) -> Result<AcmeAuthz, CaError> {
    Ok(AcmeAuthz {
        id: get(r, "id")?,
        order_id: get(r, "order_id")?,
        account_id: get(r, "account_id")?,
        id_type: get(r, "id_type")?,
        id_value: get(r, "id_value")?,
        wildcard: get::<i32>(r, "wildcard")? != 0,
        status: get(r, "status")?,
        expires_at: get(r, "expires_at")?,
    })
}

pub(super) fn challenge(r: &AnyRow) -> Result<AcmeChallenge, CaError> {
    Ok(AcmeChallenge {
        id: get(r, "id")?,
        authz_id: get(r, "authz_id")?,
        kind: get(r, "type")?,
        token: get(r, "token")?,
        status: get(r, "status")?,
        validated_at: get(r, "validated_at")?,
        error: get(r, "error")?,
    })
}

/// An `audit_events` row with its place in the chain.
pub(super) fn audit_record(r: &AnyRow) -> Result<crate::store::audit_log::AuditRecord, CaError> {
    Ok(crate::store::audit_log::AuditRecord {
        seq: get(r, "seq")?,
        id: get(r, "id")?,
        at: from_unix(get(r, "at")?)?,
        actor: get(r, "actor")?,
        action: get(r, "action")?,
        target: get(r, "target")?,
        outcome: get(r, "outcome")?,
        detail: get(r, "detail")?,
        prev_digest: get(r, "prev_digest")?,
        digest: get(r, "digest")?,
    })
}
