-- Per-account name policy (from the account's external account binding key), renewal
-- information (RFC 9773) and external account binding keys (RFC 8555 section 7.3.4).
ALTER TABLE acme_accounts ADD COLUMN allowed_suffixes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE acme_orders ADD COLUMN replaces TEXT;
-- Set when the CA wants a certificate replaced early (renewalInfo then suggests "now").
ALTER TABLE certificates ADD COLUMN replace_after BIGINT;

CREATE TABLE acme_eab_keys (
    kid               TEXT PRIMARY KEY,
    hmac_key          TEXT NOT NULL,
    allowed_suffixes  TEXT NOT NULL,
    account_id        TEXT,
    created_at        BIGINT NOT NULL
);
