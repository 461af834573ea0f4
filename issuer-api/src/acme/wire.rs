//! ACME resources as they go over the wire (RFC 8555 section 7.1), camelCase JSON.

use serde::{Deserialize, Serialize};

/// An identifier (RFC 8555 section 9.7.7): `dns` or `ip` (RFC 8738).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    /// `dns` or `ip`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The name or address.
    pub value: String,
}

/// The directory (section 7.1.1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// URL of newNonce (section 7.2).
    pub new_nonce: String,
    /// URL of newAccount (section 7.3).
    pub new_account: String,
    /// URL of newOrder (section 7.4).
    pub new_order: String,
    /// URL of revokeCert (section 7.6).
    pub revoke_cert: String,
    /// URL of keyChange (section 7.3.5).
    pub key_change: String,
    /// RFC 9773 renewal information base URL.
    pub renewal_info: String,
    /// Metadata: terms of service, whether EAB is required.
    pub meta: DirectoryMeta,
}

/// Directory metadata (section 7.1.1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta {
    /// URL of the current terms of service, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms_of_service: Option<String>,
    /// Whether newAccount needs an external account binding (section 7.3.4).
    pub external_account_required: bool,
}

/// An account object (section 7.1.2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// `valid`, `deactivated` or `revoked`.
    pub status: String,
    /// `mailto:` URLs the client registered.
    pub contact: Vec<String>,
    /// URL of the account's orders list (section 7.1.2.1).
    pub orders: String,
    /// Whether the client agreed to the terms of service.
    pub terms_of_service_agreed: bool,
}

/// newAccount / account update payload (sections 7.3, 7.3.2, 7.3.6).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccountRequest {
    /// Contact URLs to set; `None` leaves them unchanged.
    pub contact: Option<Vec<String>>,
    /// The client agrees to the terms of service.
    pub terms_of_service_agreed: Option<bool>,
    /// Look up the account of this key, never create one (section 7.3.1).
    pub only_return_existing: bool,
    /// `deactivated` to deactivate the account (section 7.3.6).
    pub status: Option<String>,
    /// The EAB JWS binding a pre-issued key id to this account key (section 7.3.4).
    pub external_account_binding: Option<super::jws::FlattenedJws>,
}

/// newOrder payload (section 7.4).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    /// The identifiers the certificate is to name.
    pub identifiers: Vec<Identifier>,
    /// Requested notBefore (RFC 3339); refused if the policy cannot honour it.
    #[serde(default)]
    pub not_before: Option<String>,
    /// Requested notAfter (RFC 3339); refused if the policy cannot honour it.
    #[serde(default)]
    pub not_after: Option<String>,
    /// RFC 9773 section 5: the certID of the certificate this order replaces.
    #[serde(default)]
    pub replaces: Option<String>,
}

/// keyChange inner payload (section 7.3.5).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyChange {
    /// URL of the account whose key changes.
    pub account: String,
    /// The account's current key, which must match the outer signer's account.
    pub old_key: super::jws::Jwk,
}

/// RFC 9773 renewal information.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalInfo {
    /// When to renew.
    pub suggested_window: SuggestedWindow,
    /// A page explaining an early window (an emergency rotation), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "explanationURL")]
    pub explanation_url: Option<String>,
}

/// The window in which to renew (RFC 9773 section 4.2).
#[derive(Debug, Serialize)]
pub struct SuggestedWindow {
    /// Start of the window (RFC 3339).
    pub start: String,
    /// End of the window (RFC 3339).
    pub end: String,
}

/// An order object (section 7.1.3).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// `pending`, `ready`, `processing`, `valid` or `invalid` (section 7.1.6).
    pub status: String,
    /// When the order expires (RFC 3339).
    pub expires: String,
    /// The identifiers the order covers.
    pub identifiers: Vec<Identifier>,
    /// URLs of the order's authorizations.
    pub authorizations: Vec<String>,
    /// URL to POST the CSR to.
    pub finalize: String,
    /// URL of the certificate, once the order is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The problem document that made the order invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// RFC 9773 section 5: echoed from newOrder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// An authorization object (section 7.1.4).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The identifier being authorized (without the wildcard label).
    pub identifier: Identifier,
    /// `pending`, `valid`, `invalid`, `deactivated`, `expired` or `revoked`.
    pub status: String,
    /// When the authorization expires (RFC 3339).
    pub expires: String,
    /// The challenges that can prove control of the identifier.
    pub challenges: Vec<Challenge>,
    /// Whether the order asked for `*.` of the identifier (section 7.1.4).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub wildcard: bool,
}

/// A challenge object (section 8).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    /// `http-01`, `dns-01`, `tls-alpn-01` or a Lanyard attestation type.
    #[serde(rename = "type")]
    pub kind: String,
    /// URL to POST to when the client is ready.
    pub url: String,
    /// `pending`, `processing`, `valid` or `invalid`.
    pub status: String,
    /// The random token of the key authorization (section 8.1).
    pub token: String,
    /// When the challenge was validated (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated: Option<String>,
    /// Why validation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// finalize payload (section 7.4).
#[derive(Debug, Deserialize)]
pub struct Finalize {
    /// The CSR, base64url DER.
    pub csr: String,
}

/// revokeCert payload (section 7.6).
#[derive(Debug, Deserialize)]
pub struct Revoke {
    /// The certificate to revoke, base64url DER.
    pub certificate: String,
    /// RFC 5280 reason code.
    #[serde(default)]
    pub reason: Option<i32>,
}

/// The orders list (section 7.1.2.1).
#[derive(Debug, Serialize)]
pub struct OrdersList {
    /// URLs of the account's orders.
    pub orders: Vec<String>,
}
