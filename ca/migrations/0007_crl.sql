-- Certificate revocation lists, one per intermediate. The latest CRL of each issuer is kept here so
-- that every replica serves the same CRL for a given CRL number, and so that the number only ever
-- increases (RFC 5280 section 5.2.3), across regenerations, restarts and replicas.
CREATE TABLE crl_state (
    issuer_id    TEXT PRIMARY KEY REFERENCES issuers (id),
    -- CRL number of the latest CRL; the next one gets number + 1.
    number       BIGINT NOT NULL,
    -- SHA-256 over the revoked entries it lists (serial, revocation time, reason).
    digest       TEXT NOT NULL,
    this_update  BIGINT NOT NULL,
    next_update  BIGINT NOT NULL,
    -- The signed CRL, DER, base64.
    der          TEXT NOT NULL
);

-- Revoked certificates of one issuer, without scanning every certificate it signed.
CREATE INDEX certificates_revoked ON certificates (issuer_id, not_after) WHERE revoked_at IS NOT NULL;
