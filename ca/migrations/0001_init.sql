-- Lanyard schema. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are Unix seconds (BIGINT); certificates and keys are PEM text.

-- The issuer journal: roots and intermediates with their state.
CREATE TABLE issuers (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('root', 'intermediate')),
    state            TEXT NOT NULL CHECK (state IN ('prepared', 'active', 'retired', 'expired')),
    parent_id        TEXT REFERENCES issuers (id),
    subject          TEXT NOT NULL,
    cert_pem         TEXT NOT NULL,
    -- PKCS#8 EncryptedPrivateKeyInfo (PEM); NULL when the key is kept offline.
    key_pem_enc      TEXT,
    ski              TEXT NOT NULL,
    fingerprint      TEXT NOT NULL UNIQUE,
    not_before       BIGINT NOT NULL,
    not_after        BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    state_changed_at BIGINT NOT NULL
);
-- Never two active issuers of one kind, whatever the application does.
CREATE UNIQUE INDEX issuers_one_active ON issuers (kind) WHERE state = 'active';

-- Every certificate, from the moment its serial is reserved (step 1 of issuance). Rows are never
-- deleted, so a serial is never used twice.
-- status: 'intent' (serial reserved; signed and recorded once a row in issued_certificates exists),
-- 'abandoned' (the process died between intent and record; the certificate was never returned).
CREATE TABLE certificates (
    serial           TEXT PRIMARY KEY,
    status           TEXT NOT NULL CHECK (status IN ('intent', 'abandoned')),
    issuer_id        TEXT NOT NULL REFERENCES issuers (id),
    profile          TEXT NOT NULL,
    requester        TEXT NOT NULL,
    subject          TEXT NOT NULL,
    sans             TEXT NOT NULL,
    key_fingerprint  TEXT NOT NULL,
    not_before       BIGINT NOT NULL,
    not_after        BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    revoked_at       BIGINT,
    revocation_reason INTEGER
);
CREATE INDEX certificates_issuer_not_after ON certificates (issuer_id, not_after);

-- Signed certificates (step 3 of issuance). Insert-only, so the group-commit writer records a
-- whole batch with one multi-row INSERT instead of one UPDATE per certificate.
CREATE TABLE issued_certificates (
    serial    TEXT PRIMARY KEY REFERENCES certificates (serial),
    cert_pem  TEXT NOT NULL,
    issued_at BIGINT NOT NULL
);

-- Append-only audit trail of refusals, key use and operator actions. Ids sort by time (no index on
-- `at` needed). Each issued certificate is its own audit event (see issued_certificates).
CREATE TABLE audit_events (
    id      TEXT PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail  TEXT NOT NULL
);
