-- Canary activation of a successor intermediate (ca/src/rotation/canary.rs). While a canary is
-- `soaking`, the successor (still `prepared` in the journal) signs only for the workloads the
-- selector picks: SPIFFE IDs under `prefix`, or a stable share of them (`fraction_ppm`, parts per
-- million of the SHA-256 space of the SPIFFE ID). The decision ends it: `completed` (the successor
-- became active in the same transaction) or `rolled_back` (the successor was retired and its
-- certificates asked to renew under the previous intermediate, also in the same transaction).
CREATE TABLE canaries (
    rotation     TEXT PRIMARY KEY,
    successor    TEXT NOT NULL,
    previous     TEXT NOT NULL,
    prefix       TEXT,
    fraction_ppm BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    soak_until   BIGINT NOT NULL,
    state        TEXT NOT NULL,
    decided_at   BIGINT,
    reason       TEXT
);
CREATE INDEX canaries_state ON canaries (state);
