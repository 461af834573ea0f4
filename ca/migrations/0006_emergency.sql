-- Emergency rotation: the renewal window handed to holders of certificates under a revoked
-- intermediate (RFC 9773 renewalInfo [replace_after, replace_window_end]), an index to find the
-- renewal of a certificate, and the record of each emergency so its duration can be measured.
ALTER TABLE certificates ADD COLUMN replace_window_end BIGINT;
CREATE INDEX certificates_requester ON certificates (requester);

CREATE TABLE emergencies (
    id            TEXT PRIMARY KEY,
    issuer_id     TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    affected      BIGINT NOT NULL,
    completed_at  BIGINT
);
