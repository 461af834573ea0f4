-- Hash chain over the audit table. Every event written from now on carries its position in the
-- chain (`seq`, 1, 2, 3, ... without gaps), the digest of its predecessor and its own digest
-- (SHA-256 over its fields and `prev_digest`, see ca/src/store/audit_log.rs). The one-row head
-- holds the last position and digest; every audit insert reads and moves it in the transaction of
-- its state change (PostgreSQL: SELECT ... FOR UPDATE, so replicas take turns), so a rolled-back
-- change leaves no gap. Events written before this migration keep seq NULL: `lanyard-ca audit
-- verify` counts them as written before the chain started and cannot vouch for them.
ALTER TABLE audit_events ADD COLUMN seq BIGINT;
ALTER TABLE audit_events ADD COLUMN prev_digest TEXT;
ALTER TABLE audit_events ADD COLUMN digest TEXT;
CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);

CREATE TABLE audit_chain_head (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    seq    BIGINT NOT NULL,
    digest TEXT NOT NULL
);
-- Genesis: position 0, the digest the first event names as its predecessor.
INSERT INTO audit_chain_head (id, seq, digest)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
