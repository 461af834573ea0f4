-- Trust reports shared between replicas on one database (ca/src/store/fleet_share.rs). Each
-- replica writes the newest report of the workloads it heard from since its last exchange, and
-- reads the rows written since the version it last saw; `version` comes from the one-row
-- fleet_sync counter, taken under its row lock, so versions commit in order and a reader never
-- skips a row that commits late. Canary tallies (handshakes accepted and refused, certificates signed and failed) add up each
-- replica's counts per rotation.
CREATE TABLE fleet_reports (
    workload        TEXT PRIMARY KEY,
    serial          TEXT NOT NULL,
    seen_ms         BIGINT NOT NULL,
    bundle_sequence BIGINT NOT NULL,
    serving_issuer  TEXT,
    version         BIGINT NOT NULL
);
CREATE INDEX fleet_reports_version ON fleet_reports (version);

CREATE TABLE fleet_sync (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO fleet_sync (id, version) VALUES (1, 0);

CREATE TABLE fleet_tallies (
    rotation TEXT PRIMARY KEY,
    accepted BIGINT NOT NULL,
    refused  BIGINT NOT NULL,
    signed   BIGINT NOT NULL,
    failed   BIGINT NOT NULL
);
