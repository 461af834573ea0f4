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
    pub new_nonce: String,
    pub new_account: String,
    pub new_order: String,
    pub revoke_cert: String,
    pub key_change: String,
    /// RFC 9773 renewal information base URL.
    pub renewal_info: String,
    pub meta: DirectoryMeta,
}

/// Directory metadata (section 7.1.1).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms_of_service: Option<String>,
    pub external_account_required: bool,
}

/// An account object (section 7.1.2).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub status: String,
    pub contact: Vec<String>,
    pub orders: String,
    pub terms_of_service_agreed: bool,
}

/// newAccount / account update payload (sections 7.3, 7.3.2, 7.3.6).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccountRequest {
    pub contact: Option<Vec<String>>,
    pub terms_of_service_agreed: Option<bool>,
    pub only_return_existing: bool,
    pub status: Option<String>,
    pub external_account_binding: Option<super::jws::FlattenedJws>,
}

/// newOrder payload (section 7.4).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    pub identifiers: Vec<Identifier>,
    #[serde(default)]
    pub not_before: Option<String>,
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
    pub account: String,
    pub old_key: super::jws::Jwk,
}

/// RFC 9773 renewal information.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalInfo {
    pub suggested_window: SuggestedWindow,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "explanationURL")]
    pub explanation_url: Option<String>,
}

/// The window in which to renew (RFC 9773 section 4.2).
#[derive(Debug, Serialize)]
pub struct SuggestedWindow {
    pub start: String,
    pub end: String,
}

/// An order object (section 7.1.3).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub status: String,
    pub expires: String,
    pub identifiers: Vec<Identifier>,
    pub authorizations: Vec<String>,
    pub finalize: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
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
    pub identifier: Identifier,
    pub status: String,
    pub expires: String,
    pub challenges: Vec<Challenge>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub wildcard: bool,
}

/// A challenge object (section 8).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub status: String,
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// finalize payload (section 7.4).
#[derive(Debug, Deserialize)]
pub struct Finalize {
    pub csr: String,
}

/// revokeCert payload (section 7.6).
#[derive(Debug, Deserialize)]
pub struct Revoke {
    pub certificate: String,
    #[serde(default)]
    pub reason: Option<i32>,
}

/// The orders list (section 7.1.2.1).
#[derive(Debug, Serialize)]
pub struct OrdersList {
    pub orders: Vec<String>,
}
