-- ACME (RFC 8555) state. Portable SQL for SQLite and PostgreSQL; times are Unix seconds.

-- Accounts, keyed by an opaque id; the key's RFC 7638 thumbprint finds an account by key.
CREATE TABLE acme_accounts (
    id          TEXT PRIMARY KEY,
    thumbprint  TEXT NOT NULL UNIQUE,
    jwk         TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    contact     TEXT NOT NULL,
    eab_kid     TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE acme_orders (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES acme_accounts (id),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'processing', 'valid', 'invalid')),
    identifiers  TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    error        TEXT,
    cert_serial  TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX acme_orders_account ON acme_orders (account_id, created_at);
CREATE INDEX acme_orders_cert ON acme_orders (cert_serial);

CREATE TABLE acme_authorizations (
    id          TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES acme_orders (id),
    account_id  TEXT NOT NULL REFERENCES acme_accounts (id),
    id_type     TEXT NOT NULL,
    id_value    TEXT NOT NULL,
    wildcard    INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'valid', 'invalid', 'deactivated', 'expired', 'revoked')),
    expires_at  BIGINT NOT NULL
);
CREATE INDEX acme_authorizations_order ON acme_authorizations (order_id);

CREATE TABLE acme_challenges (
    id           TEXT PRIMARY KEY,
    authz_id     TEXT NOT NULL REFERENCES acme_authorizations (id),
    type         TEXT NOT NULL,
    token        TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    validated_at BIGINT,
    error        TEXT
);
CREATE INDEX acme_challenges_authz ON acme_challenges (authz_id);

-- Nonces are stateless (HMAC over time and randomness, keyed by a secret every replica reads from
-- here); only used nonces are stored, until they would have expired anyway.
CREATE TABLE acme_used_nonces (
    nonce       TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE acme_secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
