-- Rotation: at most one prepared successor per kind, and a lease so that among several replicas
-- sharing one database exactly one performs a rotation step at a time.
CREATE UNIQUE INDEX issuers_one_prepared ON issuers (kind) WHERE state = 'prepared';

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
