//! ACME state (RFC 8555): accounts, orders, authorizations, challenges, used nonces. The web edge
//! decides; this module only remembers, with every multi-row change in one transaction.
//!
//! The statements are written once for both backends: SQLite reads the `$1`-style placeholders
//! too (numbered in order of first appearance), and each backend module runs them its own way.

use super::Store;
use crate::ra::OrderStatus;
use crate::{AuditEvent, CaError};

/// An ACME account (RFC 8555 section 7.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccount {
    /// Opaque id (the last segment of the account URL).
    pub id: String,
    /// RFC 7638 thumbprint of the account key.
    pub thumbprint: String,
    /// The account key as JWK JSON.
    pub jwk: String,
    /// `valid`, `deactivated` or `revoked`.
    pub status: String,
    /// Contact URLs.
    pub contact: Vec<String>,
    /// The external account binding key id used at creation.
    pub eab_kid: Option<String>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// DNS suffixes this account may order (from its EAB key); empty: the CA policy alone.
    pub allowed_suffixes: Vec<String>,
}

/// An external account binding key (RFC 8555 section 7.3.4).
#[derive(Clone, PartialEq, Eq)]
pub struct EabKey {
    /// Key id given to the client.
    pub kid: String,
    /// The HMAC key, base64url.
    pub hmac_key: String,
    /// DNS suffixes accounts bound with this key may order; empty: any the CA allows.
    pub allowed_suffixes: Vec<String>,
    /// The account it was used for, if any (each key binds one account).
    pub account_id: Option<String>,
}

impl std::fmt::Debug for EabKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EabKey")
            .field("kid", &self.kid)
            .field("allowed_suffixes", &self.allowed_suffixes)
            .finish_non_exhaustive()
    }
}

/// An ACME order (RFC 8555 section 7.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOrder {
    /// Opaque id.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// `pending`, `ready`, `processing`, `valid`, `invalid`.
    pub status: String,
    /// Identifiers as JSON (`[{"type":"dns","value":"..."}]`).
    pub identifiers: String,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
    /// Problem document JSON when invalid.
    pub error: Option<String>,
    /// Serial of the issued certificate.
    pub cert_serial: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// RFC 9773 certID of the certificate this order replaces.
    pub replaces: Option<String>,
}

/// An authorization (RFC 8555 section 7.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAuthz {
    /// Opaque id.
    pub id: String,
    /// The order it belongs to.
    pub order_id: String,
    /// Owning account.
    pub account_id: String,
    /// `dns` or `ip`.
    pub id_type: String,
    /// The identifier (without `*.` for wildcards).
    pub id_value: String,
    /// Whether the order asked for `*.<id_value>`.
    pub wildcard: bool,
    /// `pending`, `valid`, `invalid`, ...
    pub status: String,
    /// Expiry.
    pub expires_at: i64,
}

/// A challenge (RFC 8555 section 7.1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeChallenge {
    /// Opaque id.
    pub id: String,
    /// The authorization it proves.
    pub authz_id: String,
    /// `http-01`, `tls-alpn-01`, `dns-01`.
    pub kind: String,
    /// Token (base64url, 128 bits or more).
    pub token: String,
    /// `pending`, `processing`, `valid`, `invalid`.
    pub status: String,
    /// When it was validated.
    pub validated_at: Option<i64>,
    /// Problem document JSON when invalid.
    pub error: Option<String>,
}

macro_rules! account_cols {
    () => {
        "id, thumbprint, jwk, status, contact, eab_kid, created_at, allowed_suffixes"
    };
}
macro_rules! order_cols {
    () => {
        "id, account_id, status, identifiers, expires_at, error, cert_serial, created_at, replaces"
    };
}
macro_rules! authz_cols {
    () => {
        "id, order_id, account_id, id_type, id_value, wildcard, status, expires_at"
    };
}
pub(super) const ACCOUNT_BY_ID: &str = concat!("SELECT ", account_cols!(), " FROM acme_accounts WHERE id = $1");
pub(super) const ACCOUNT_BY_THUMBPRINT: &str =
    concat!("SELECT ", account_cols!(), " FROM acme_accounts WHERE thumbprint = $1");
pub(super) const INSERT_ACCOUNT: &str = "INSERT INTO acme_accounts (id, thumbprint, jwk, status, contact, eab_kid, created_at, \
     allowed_suffixes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (thumbprint) DO NOTHING";
pub(super) const CHANGE_KEY: &str =
    "UPDATE acme_accounts SET thumbprint = $1, jwk = $2 WHERE id = $3 AND thumbprint = $4";
pub(super) const CLAIM_EAB_KEY: &str = "UPDATE acme_eab_keys SET account_id = $1 WHERE kid = $2 AND account_id IS NULL";
/// Orders the purge takes, per transaction.
pub const PURGE_BATCH: i64 = 500;
/// Orders past retention (see [`Store::acme_purge`]), oldest first.
pub(super) const PURGE_VICTIMS: &str = "SELECT o.id FROM acme_orders o WHERE \
    (o.status <> 'valid' AND o.expires_at < $1) \
    OR (o.status = 'valid' AND EXISTS (SELECT 1 FROM certificates c WHERE c.serial = o.cert_serial AND c.not_after < $1)) \
    OR EXISTS (SELECT 1 FROM acme_accounts a WHERE a.id = o.account_id AND a.status = 'deactivated' AND a.deactivated_at < $1) \
    ORDER BY o.expires_at LIMIT $2";

/// What [`Store::acme_purge`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AcmePurged {
    /// Orders deleted.
    pub orders: u64,
    /// Authorizations deleted.
    pub authorizations: u64,
    /// Challenges deleted.
    pub challenges: u64,
    /// Deactivated accounts whose contacts were erased.
    pub accounts: u64,
}

pub(super) const UPDATE_ACCOUNT: &str = "UPDATE acme_accounts SET contact = $1, status = $2, deactivated_at = CASE WHEN $2 = \
    'deactivated' THEN $3 ELSE deactivated_at END WHERE id = $4 AND status = 'valid'";
pub(super) const INSERT_ORDER: &str = "INSERT INTO acme_orders (id, account_id, status, identifiers, expires_at, error, \
     cert_serial, created_at, replaces) VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $7)";
pub(super) const INSERT_AUTHZ: &str = "INSERT INTO acme_authorizations (id, order_id, account_id, id_type, id_value, wildcard, \
     status, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(super) const INSERT_CHALLENGE: &str = "INSERT INTO acme_challenges (id, authz_id, type, token, status, validated_at, error) \
     VALUES ($1, $2, $3, $4, $5, NULL, NULL)";
pub(super) const ORDER_BY_ID: &str = concat!("SELECT ", order_cols!(), " FROM acme_orders WHERE id = $1");
pub(super) const ORDER_BY_CERT: &str = concat!("SELECT ", order_cols!(), " FROM acme_orders WHERE cert_serial = $1");
pub(super) const AUTHZS_OF_ORDER: &str =
    concat!("SELECT ", authz_cols!(), " FROM acme_authorizations WHERE order_id = $1 ORDER BY id");
pub(super) const AUTHZ_BY_ID: &str = concat!("SELECT ", authz_cols!(), " FROM acme_authorizations WHERE id = $1");
pub(super) const CHALLENGES_OF_AUTHZ: &str = "SELECT id, authz_id, type, token, status, validated_at, error \
     FROM acme_challenges WHERE authz_id = $1 ORDER BY type";
pub(super) const CHALLENGE_BY_ID: &str =
    "SELECT id, authz_id, type, token, status, validated_at, error FROM acme_challenges WHERE id = $1";
// A final state is never overwritten: only a pending or processing challenge is finished.
pub(super) const FINISH_CHALLENGE: &str = "UPDATE acme_challenges SET status = $1, validated_at = $2, error = $3 WHERE id = $4 \
    AND status IN ('pending', 'processing')";
pub(super) const CLAIM_CHALLENGE: &str =
    "UPDATE acme_challenges SET status = 'processing' WHERE id = $1 AND status = 'pending'";
pub(super) const RELEASE_CHALLENGE: &str =
    "UPDATE acme_challenges SET status = 'pending' WHERE id = $1 AND status = 'processing'";
pub(super) const FINISH_AUTHZ: &str = "UPDATE acme_authorizations SET status = $1 WHERE id = $2 AND status = 'pending'";
pub(super) const ORDER_READY: &str = "UPDATE acme_orders SET status = 'ready' WHERE id = $1 AND status = 'pending' AND NOT EXISTS \
     (SELECT 1 FROM acme_authorizations a WHERE a.order_id = $1 AND a.status <> 'valid')";
pub(super) const ORDER_INVALID: &str =
    "UPDATE acme_orders SET status = 'invalid', error = $1 WHERE id = $2 AND status = 'pending'";
/// `processing -> ready` ([`OrderStatus::can_become`] allows it for this recovery only).
pub(super) const RELEASE_PROCESSING_ORDERS: &str =
    "UPDATE acme_orders SET status = 'ready' WHERE status = 'processing' AND cert_serial IS NULL";
pub(super) const TRANSITION_ORDER: &str = "UPDATE acme_orders SET status = $1, cert_serial = COALESCE($2, cert_serial), \
     error = COALESCE($3, error) WHERE id = $4 AND status = $5";

/// Creates a shared secret unless it exists (binds: name, value).
pub(super) const INSERT_SECRET: &str =
    "INSERT INTO acme_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
/// A shared secret by name.
pub(super) const SECRET: &str = "SELECT value FROM acme_secrets WHERE name = $1";
/// The ids of an account's orders, newest first.
pub(super) const ORDER_IDS: &str =
    "SELECT id FROM acme_orders WHERE account_id = $1 ORDER BY created_at DESC, id LIMIT 1000";
/// Creates an EAB key (binds: kid, HMAC key, suffixes JSON, now).
pub(super) const INSERT_EAB_KEY: &str = "INSERT INTO acme_eab_keys (kid, hmac_key, allowed_suffixes, account_id, \
     created_at) VALUES ($1, $2, $3, NULL, $4)";
/// An EAB key by kid.
pub(super) const EAB_KEY: &str = "SELECT kid, hmac_key, allowed_suffixes, account_id FROM acme_eab_keys WHERE kid = $1";
/// Asks for a certificate's replacement (binds: at, serial).
pub(super) const REQUEST_REPLACEMENT: &str = "UPDATE certificates SET replace_after = $1 WHERE serial = $2";
/// When the CA asked for a certificate's replacement.
pub(super) const REPLACEMENT_REQUESTED: &str = "SELECT replace_after FROM certificates WHERE serial = $1";
/// A valid order that replaced the certificate with this certID.
pub(super) const REPLACED: &str = "SELECT 1 AS one FROM acme_orders WHERE replaces = $1 AND status = 'valid'";
/// Deletes used nonces that expired (binds: now).
pub(super) const DELETE_EXPIRED_NONCES: &str = "DELETE FROM acme_used_nonces WHERE expires_at < $1";
/// Expires pending authorizations (binds: now).
pub(super) const EXPIRE_AUTHZS: &str =
    "UPDATE acme_authorizations SET status = 'expired' WHERE expires_at < $1 AND status = 'pending'";
/// Erases the contacts of accounts deactivated before the retention cutoff.
pub(super) const ERASE_CONTACTS: &str = "UPDATE acme_accounts SET contact = '[]' \
     WHERE status = 'deactivated' AND deactivated_at < $1 AND contact <> '[]'";

/// The statement that expires stale orders (binds: the problem document, now): every status an
/// order can still leave ([`OrderStatus::live`]) becomes `invalid`. Only the fixed status
/// spellings are formatted in; the values are bound.
pub(super) fn expire_orders_sql() -> String {
    let live = OrderStatus::live().map(|st| format!("'{st}'")).collect::<Vec<_>>().join(", ");
    format!("UPDATE acme_orders SET status = 'invalid', error = $1 WHERE expires_at < $2 AND status IN ({live})")
}

/// The three deletions of one purge batch of `n` orders (binds: the order ids): challenges,
/// authorizations, orders. Only `$n` placeholders are formatted in; every value is bound.
pub(super) fn purge_sql(n: usize) -> [String; 3] {
    let list = (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    [
        format!(
            "DELETE FROM acme_challenges WHERE authz_id IN \
             (SELECT id FROM acme_authorizations WHERE order_id IN ({list}))"
        ),
        format!("DELETE FROM acme_authorizations WHERE order_id IN ({list})"),
        format!("DELETE FROM acme_orders WHERE id IN ({list})"),
    ]
}

/// An EAB key binds exactly one account: the claim must have taken the key.
pub(super) fn claim_eab_key(claimed: u64, kid: &str) -> Result<(), CaError> {
    if claimed == 1 {
        Ok(())
    } else {
        Err(CaError::NameNotAllowed {
            name: kid.to_owned(),
            reason: "this EAB key is already bound to an account".into(),
        })
    }
}

impl Store {
    /// Marks a nonce used; false if it already was (a replay). Group-committed.
    pub async fn acme_use_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool, CaError> {
        let affected = self.submit_counted(super::batch::Write::Nonce { nonce: nonce.to_owned(), expires_at }).await?;
        Ok(affected == 1)
    }
    /// Moves a challenge from `pending` to `processing` (compare-and-set, RFC 8555 section 7.1.6):
    /// of concurrent POSTs of one challenge exactly one gets true and validates; the others see the
    /// challenge as it is. This is what keeps a second POST from redeeming a join token again.
    pub async fn acme_claim_challenge(&self, id: &str) -> Result<bool, CaError> {
        self.acme_challenge_cas(CLAIM_CHALLENGE, id).await
    }
    /// Moves a challenge back from `processing` to `pending`, when its validation could not be
    /// recorded, so the client may post it again; false if it was not processing.
    pub async fn acme_release_challenge(&self, id: &str) -> Result<bool, CaError> {
        self.acme_challenge_cas(RELEASE_CHALLENGE, id).await
    }

    /// A named secret shared by every replica, created by whichever asks first.
    pub async fn acme_secret(&self, name: &str, fresh: String) -> Result<String, CaError> {
        on_backend!(self, acme_secret(name, fresh))
    }

    /// Creates an account, or returns the existing one for the same key (false = existed). A new
    /// account, its EAB key's binding and its `audit` event commit together; an existing one
    /// changes nothing and records nothing.
    pub async fn acme_create_account(
        &self,
        a: &AcmeAccount,
        audit: &AuditEvent,
    ) -> Result<(AcmeAccount, bool), CaError> {
        on_backend!(self, acme_create_account(a, audit))
    }

    /// An account by id.
    pub async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccount>, CaError> {
        on_backend!(self, acme_account(id))
    }

    /// An account by key thumbprint.
    pub async fn acme_account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<AcmeAccount>, CaError> {
        on_backend!(self, acme_account_by_thumbprint(thumbprint))
    }

    /// Updates contacts and status of a valid account, with its `audit` event in the same
    /// transaction; false (and nothing recorded) if it is no longer valid.
    pub async fn acme_update_account(
        &self,
        id: &str,
        contact: &[String],
        status: &str,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        on_backend!(self, acme_update_account(id, contact, status, audit))
    }

    /// Creates an order with its authorizations and challenges, all or nothing.
    pub async fn acme_create_order(
        &self,
        order: &AcmeOrder,
        authzs: &[AcmeAuthz],
        challenges: &[AcmeChallenge],
    ) -> Result<(), CaError> {
        on_backend!(self, acme_create_order(order, authzs, challenges))
    }

    /// An order by id.
    pub async fn acme_order(&self, id: &str) -> Result<Option<AcmeOrder>, CaError> {
        on_backend!(self, acme_order(id))
    }

    /// An order and its authorizations, read together (one read transaction on SQLite).
    pub async fn acme_order_with_authzs(&self, id: &str) -> Result<Option<(AcmeOrder, Vec<AcmeAuthz>)>, CaError> {
        on_backend!(self, acme_order_with_authzs(id))
    }

    /// The ids of an account's orders, newest first.
    pub async fn acme_order_ids(&self, account_id: &str) -> Result<Vec<String>, CaError> {
        on_backend!(self, acme_order_ids(account_id))
    }

    /// The order that produced a certificate.
    pub async fn acme_order_for_cert(&self, serial: &str) -> Result<Option<AcmeOrder>, CaError> {
        on_backend!(self, acme_order_for_cert(serial))
    }

    /// The authorizations of an order.
    pub async fn acme_authzs_for_order(&self, order_id: &str) -> Result<Vec<AcmeAuthz>, CaError> {
        on_backend!(self, acme_authzs_for_order(order_id))
    }

    /// An authorization and its challenges.
    pub async fn acme_authz(&self, id: &str) -> Result<Option<(AcmeAuthz, Vec<AcmeChallenge>)>, CaError> {
        on_backend!(self, acme_authz(id))
    }

    /// A challenge and the authorization it belongs to.
    pub async fn acme_challenge(&self, id: &str) -> Result<Option<(AcmeChallenge, AcmeAuthz)>, CaError> {
        on_backend!(self, acme_challenge(id))
    }

    async fn acme_challenge_cas(&self, sql: &'static str, id: &str) -> Result<bool, CaError> {
        on_backend!(self, acme_challenge_cas(sql, id))
    }

    /// Records a validation result in one transaction: the challenge, its authorization and, when
    /// this was the order's last pending authorization, the order (`ready`, or `invalid` on failure)
    /// change together, so a client never sees valid authorizations under a pending order.
    ///
    /// With `spend`, a valid result also spends that join token, with its audit event, in the same
    /// transaction; if another enrollment spent it first, the result is recorded as invalid with
    /// the spend's error instead. Either way the token is spent exactly when a valid authorization is recorded, so a
    /// result that cannot be recorded leaves it for the agent's retry. A challenge that is not
    /// pending or processing (already final) gets nothing recorded: an error, and no token spent.
    /// Returns whether the result recorded is valid.
    pub async fn acme_finish_challenge(
        &self,
        challenge_id: &str,
        authz_id: &str,
        order_id: &str,
        result: Result<Option<&TokenSpend>, &str>,
        now: i64,
    ) -> Result<bool, CaError> {
        on_backend!(self, acme_finish_challenge(challenge_id, authz_id, order_id, result, now))
    }

    /// Moves an order from one status to another (compare-and-set); false if it was not in `from`.
    /// A transition the order state machine does not allow ([`OrderStatus::can_become`]) is an
    /// error and changes nothing.
    pub async fn acme_transition_order(
        &self,
        id: &str,
        from: OrderStatus,
        to: OrderStatus,
        cert_serial: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, CaError> {
        if !from.can_become(to) {
            return Err(CaError::Store(format!("order {id}: {from} -> {to} is not a legal transition")));
        }
        on_backend!(self, acme_transition_order(id, from.as_str(), to.as_str(), cert_serial, error))
    }

    /// Replaces an account's key (RFC 8555 section 7.3.5) if it still has `old_thumbprint`, with
    /// its `audit` event in the same transaction (nothing is recorded when no key changed).
    /// `Ok(Err(id))`: the new key already belongs to account `id`.
    pub async fn acme_change_key(
        &self,
        id: &str,
        old_thumbprint: &str,
        new_thumbprint: &str,
        new_jwk: &str,
        audit: &AuditEvent,
    ) -> Result<Result<bool, String>, CaError> {
        if let Some(other) = self.acme_account_by_thumbprint(new_thumbprint).await? {
            return Ok(Err(other.id));
        }
        match on_backend!(self, acme_change_key(id, old_thumbprint, new_thumbprint, new_jwk, audit))? {
            Some(changed) => Ok(Ok(changed)),
            // A concurrent registration took the key between the check and the update.
            None => {
                let other = self.acme_account_by_thumbprint(new_thumbprint).await?.map(|a| a.id).unwrap_or_default();
                Ok(Err(other))
            }
        }
    }

    /// Moves every order an older version left in `processing` without a certificate back to
    /// `ready` (see [`crate::ra::Registration::open`]); returns how many.
    pub async fn acme_release_processing_orders(&self) -> Result<u64, CaError> {
        on_backend!(self, acme_release_processing_orders())
    }

    /// Creates an external account binding key, with its `audit` event in the same transaction.
    pub async fn acme_create_eab_key(&self, key: &EabKey, now: i64, audit: &AuditEvent) -> Result<(), CaError> {
        on_backend!(self, acme_create_eab_key(key, now, audit))
    }

    /// An external account binding key by id.
    pub async fn acme_eab_key(&self, kid: &str) -> Result<Option<EabKey>, CaError> {
        on_backend!(self, acme_eab_key(kid))
    }

    /// Asks every holder of a certificate to replace it now (renewalInfo answers with a window in
    /// the past from `at` on).
    pub async fn request_replacement(&self, serial: &str, at: i64) -> Result<bool, CaError> {
        on_backend!(self, request_replacement(serial, at))
    }

    /// When the CA asked for a certificate to be replaced, if it did.
    pub async fn replacement_requested(&self, serial: &str) -> Result<Option<i64>, CaError> {
        on_backend!(self, replacement_requested(serial))
    }

    /// Whether a valid order already replaced the certificate with this RFC 9773 certID.
    pub async fn acme_replaced(&self, cert_id: &str) -> Result<bool, CaError> {
        on_backend!(self, acme_replaced(cert_id))
    }

    /// Deletes used nonces that have expired anyway, and expires stale orders (storing
    /// `expired_problem`, a problem document the edge rendered, as their error) and authorizations.
    pub async fn acme_cleanup(&self, now: i64, expired_problem: &str) -> Result<(u64, u64), CaError> {
        on_backend!(self, acme_cleanup(now, expired_problem))
    }

    /// Deletes, in batches of [`PURGE_BATCH`] orders with one transaction each, what ACME no longer
    /// needs once `cutoff` (now minus the retention period) has passed: orders that expired
    /// without a certificate, orders whose certificate expired, every order of an account
    /// deactivated before it, and the authorizations and challenges of all of those. Deactivated
    /// accounts also lose their contact addresses; their rows (and keys' thumbprints) stay, so the
    /// keys stay refused. Issued certificates and their records are never touched.
    pub async fn acme_purge(&self, cutoff: i64) -> Result<AcmePurged, CaError> {
        on_backend!(self, acme_purge(cutoff))
    }
}

/// A challenge that is no longer pending or processing gets no result (and spends no token).
pub(super) fn not_in_progress(id: &str) -> CaError {
    CaError::Store(format!("challenge {id} is not being validated; its result was not recorded"))
}

/// A join token that a valid attestation spends when its result is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpend {
    /// The token's digest ([`crate::store::workload::join_token_digest`]).
    pub digest: String,
    /// The SPIFFE ID it is spent for.
    pub spiffe_id: String,
    /// The challenge error (problem document JSON) recorded if another enrollment spent it first.
    pub error_if_used: String,
    /// The `join_token.spend` event, recorded with the spending (and only then).
    pub audit: AuditEvent,
}
