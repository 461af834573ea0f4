//! Rows mapped to the store's types, written once for both backends: each backend's row type
//! implements [`Columns`], which reads a column by name.

use crate::CaError;
use crate::issuers::{IssuerKind, IssuerRecord, IssuerState};
use crate::store::acme::{AcmeAccount, AcmeAuthz, AcmeChallenge, AcmeOrder, EabKey};
use crate::store::from_unix;
use crate::store::records::{CertificateRecord, CertificateStatus};

/// A result row whose columns are read by name.
pub(super) trait Columns {
    /// A text column.
    fn text(&self, col: &str) -> Result<String, CaError>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>, CaError>;
    /// A nullable integer column.
    fn opt_int(&self, col: &str) -> Result<Option<i64>, CaError>;

    /// An integer column.
    fn int(&self, col: &str) -> Result<i64, CaError> {
        self.opt_int(col)?.ok_or_else(|| CaError::Store(format!("column {col} is NULL")))
    }

    /// A text column holding JSON.
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T, CaError> {
        serde_json::from_str(&self.text(col)?).map_err(|e| CaError::Store(format!("{col}: {e}")))
    }
}

/// An `issuers` row.
pub(super) fn issuer(r: &impl Columns) -> Result<IssuerRecord, CaError> {
    Ok(IssuerRecord {
        id: r.text("id")?,
        kind: IssuerKind::parse(&r.text("kind")?)?,
        state: IssuerState::parse(&r.text("state")?)?,
        parent_id: r.opt_text("parent_id")?,
        subject: r.text("subject")?,
        cert_pem: r.text("cert_pem")?,
        key_pem_enc: r.opt_text("key_pem_enc")?,
        ski: r.text("ski")?,
        fingerprint: r.text("fingerprint")?,
        not_before: from_unix(r.int("not_before")?)?,
        not_after: from_unix(r.int("not_after")?)?,
        created_at: from_unix(r.int("created_at")?)?,
        state_changed_at: from_unix(r.int("state_changed_at")?)?,
        cross_cert_pem: r.opt_text("cross_cert_pem")?,
    })
}

/// A certificate record ([`crate::store::records::cert_columns`]).
pub(super) fn certificate(r: &impl Columns) -> Result<CertificateRecord, CaError> {
    Ok(CertificateRecord {
        serial: r.text("serial")?,
        status: CertificateStatus::parse(&r.text("status")?)?,
        issuer_id: r.text("issuer_id")?,
        profile: r.text("profile")?,
        requester: r.text("requester")?,
        subject: r.text("subject")?,
        sans: r.text("sans")?,
        key_fingerprint: r.text("key_fingerprint")?,
        not_before: from_unix(r.int("not_before")?)?,
        not_after: from_unix(r.int("not_after")?)?,
        cert_pem: r.opt_text("cert_pem")?,
        revoked_at: r.opt_int("revoked_at")?.map(from_unix).transpose()?,
        renewed_from: r.opt_text("renewed_from")?,
        superseded_by: r.opt_text("superseded_by")?,
        superseded_at: r.opt_int("superseded_at")?.map(from_unix).transpose()?,
    })
}

/// An `acme_accounts` row.
pub(super) fn account(r: &impl Columns) -> Result<AcmeAccount, CaError> {
    Ok(AcmeAccount {
        id: r.text("id")?,
        thumbprint: r.text("thumbprint")?,
        jwk: r.text("jwk")?,
        status: r.text("status")?,
        contact: r.json("contact")?,
        eab_kid: r.opt_text("eab_kid")?,
        created_at: r.int("created_at")?,
        allowed_suffixes: r.json("allowed_suffixes")?,
    })
}

/// An `acme_orders` row.
pub(super) fn order(r: &impl Columns) -> Result<AcmeOrder, CaError> {
    Ok(AcmeOrder {
        id: r.text("id")?,
        account_id: r.text("account_id")?,
        status: r.text("status")?,
        identifiers: r.text("identifiers")?,
        expires_at: r.int("expires_at")?,
        error: r.opt_text("error")?,
        cert_serial: r.opt_text("cert_serial")?,
        created_at: r.int("created_at")?,
        replaces: r.opt_text("replaces")?,
    })
}

/// An `acme_authorizations` row.
pub(super) fn authz(r: &impl Columns) -> Result<AcmeAuthz, CaError> {
    Ok(AcmeAuthz {
        id: r.text("id")?,
        order_id: r.text("order_id")?,
        account_id: r.text("account_id")?,
        id_type: r.text("id_type")?,
        id_value: r.text("id_value")?,
        wildcard: r.int("wildcard")? != 0,
        status: r.text("status")?,
        expires_at: r.int("expires_at")?,
    })
}

/// An `acme_challenges` row.
pub(super) fn challenge(r: &impl Columns) -> Result<AcmeChallenge, CaError> {
    Ok(AcmeChallenge {
        id: r.text("id")?,
        authz_id: r.text("authz_id")?,
        kind: r.text("type")?,
        token: r.text("token")?,
        status: r.text("status")?,
        validated_at: r.opt_int("validated_at")?,
        error: r.opt_text("error")?,
    })
}

/// An `acme_eab_keys` row.
pub(super) fn eab_key(r: &impl Columns) -> Result<EabKey, CaError> {
    Ok(EabKey {
        kid: r.text("kid")?,
        hmac_key: r.text("hmac_key")?,
        allowed_suffixes: r.json("allowed_suffixes")?,
        account_id: r.opt_text("account_id")?,
    })
}

/// An audit event row ([`crate::store::AUDIT_EVENTS`]).
pub(super) fn audit_event(r: &impl Columns) -> Result<crate::AuditEvent, CaError> {
    Ok(crate::AuditEvent {
        at: from_unix(r.int("at")?)?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        target: r.text("target")?,
        outcome: crate::audit::Outcome::parse(&r.text("outcome")?),
        detail: r.text("detail")?,
    })
}

/// A revoked certificate row ([`crate::store::crl::REVOKED_OF_ISSUER`]).
pub(super) fn revoked(r: &impl Columns) -> Result<crate::store::crl::RevokedCertificate, CaError> {
    Ok(crate::store::crl::RevokedCertificate {
        serial: r.text("serial")?,
        revoked_at: from_unix(r.int("revoked_at")?)?,
        reason: r.opt_int("reason")?.and_then(|n| i32::try_from(n).ok()),
        not_after: from_unix(r.int("not_after")?)?,
    })
}

/// A `crl_state` row of `issuer_id`.
pub(super) fn crl(r: &impl Columns, issuer_id: &str) -> Result<crate::store::crl::StoredCrl, CaError> {
    Ok(crate::store::crl::StoredCrl {
        number: r.int("number")?,
        digest: r.text("digest")?,
        this_update: from_unix(r.int("this_update")?)?,
        next_update: from_unix(r.int("next_update")?)?,
        der: crate::store::crl::der_of(&r.text("der")?, issuer_id)?,
    })
}

/// An `emergencies` row.
pub(super) fn emergency(r: &impl Columns) -> Result<crate::store::emergency::Emergency, CaError> {
    Ok(crate::store::emergency::Emergency {
        id: r.text("id")?,
        issuer_id: r.text("issuer_id")?,
        started_at: r.int("started_at")?,
        affected: r.int("affected")?,
        completed_at: r.opt_int("completed_at")?,
        enforce_at: r.opt_int("enforce_at")?,
        settle_secs: r.opt_int("settle_secs")?,
    })
}

/// A `join_tokens` row ([`crate::store::workload::JOIN_TOKEN_BY_DIGEST`]).
pub(super) fn join_token(r: &impl Columns) -> Result<crate::store::workload::StoredJoinToken, CaError> {
    let bound = r.text("spiffe_id")?;
    Ok(crate::store::workload::StoredJoinToken {
        token: crate::store::workload::JoinToken {
            spiffe_id: crate::SpiffeId::parse(&bound)?,
            is_prefix: r.int("is_prefix")? != 0,
            expires_at: r.int("expires_at")?,
        },
        bound,
        used: r.opt_int("used_at")?.is_some(),
    })
}

/// An `audit_events` row with its place in the chain.
pub(super) fn audit_record(r: &impl Columns) -> Result<crate::store::audit_log::AuditRecord, CaError> {
    Ok(crate::store::audit_log::AuditRecord {
        seq: r.opt_int("seq")?,
        id: r.text("id")?,
        at: from_unix(r.int("at")?)?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        target: r.text("target")?,
        outcome: r.text("outcome")?,
        detail: r.text("detail")?,
        prev_digest: r.opt_text("prev_digest")?,
        digest: r.opt_text("digest")?,
    })
}

/// A `canaries` row ([`crate::store::canary::CANARIES`]).
pub(super) fn canary(r: &impl Columns) -> Result<crate::store::canary::Canary, CaError> {
    Ok(crate::store::canary::Canary {
        rotation: r.text("rotation")?,
        successor: r.text("successor")?,
        previous: r.text("previous")?,
        prefix: r.opt_text("prefix")?,
        fraction_ppm: r.int("fraction_ppm")?,
        started_at: r.int("started_at")?,
        soak_until: r.int("soak_until")?,
        state: crate::store::canary::CanaryState::parse(&r.text("state")?)?,
        decided_at: r.opt_int("decided_at")?,
        reason: r.opt_text("reason")?,
    })
}
