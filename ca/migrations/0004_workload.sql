-- Workload enrollment: one-time join tokens (stored as SHA-256 digests, never in clear) and the
-- SPIFFE trust bundle's sequence number, which must only ever increase.
CREATE TABLE join_tokens (
    digest      TEXT PRIMARY KEY,
    spiffe_id   TEXT NOT NULL,
    -- 1: the token admits any SPIFFE ID below spiffe_id (a path prefix); 0: exactly spiffe_id.
    is_prefix   INTEGER NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_for    TEXT
);

CREATE TABLE bundle_state (
    id        INTEGER PRIMARY KEY,
    sequence  BIGINT NOT NULL,
    digest    TEXT NOT NULL
);
