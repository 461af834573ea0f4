-- When an account was deactivated: its orders, authorizations and challenges, and its contact
-- addresses, are purged once the ACME retention period has passed since then. The account row
-- itself stays, so the deactivated key can never sign again (RFC 8555 section 7.3.6).
ALTER TABLE acme_accounts ADD COLUMN deactivated_at BIGINT;
-- The purge finds expired orders by their expiry.
CREATE INDEX acme_orders_expires ON acme_orders (expires_at);
