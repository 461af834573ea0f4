//! Audit events: who did what, when, and how it ended. Appended for every issuance (and refusal),
//! every use of a CA key and every operator action.

use time::OffsetDateTime;

/// How an audited action ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused (policy, bad input).
    Refused,
    /// It failed (internal error, store unavailable).
    Failed,
}

impl Outcome {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Outcome {
        match s {
            "success" => Outcome::Success,
            "refused" => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who asked: `operator`, `acme:<account>`, `workload:<spiffe id>`, `ca` for the CA itself.
    pub actor: String,
    /// What: `certificate.issue`, `key.sign`, `ca.init`, ...
    pub action: String,
    /// What it was done to: a serial, an issuer id.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Free text without secrets.
    pub detail: String,
}

impl AuditEvent {
    /// A new event stamped now.
    pub fn now(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> Self {
        AuditEvent {
            at: OffsetDateTime::now_utc(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome,
            detail: detail.into(),
        }
    }
}
