-- Fleet-gated emergency revocation. An emergency rotation signs, where the root key is, the root
-- CRL that revokes the suspect intermediate, but parks it here until `publish_at`: the end of the
-- fleet's renewal window plus a settle margin, or earlier once every affected workload renewed.
-- Every replica's rotation loop moves a due CRL into crl_state (what is served), so enforcement
-- needs no root key on the servers and no peer refuses an honest workload that has not renewed.
CREATE TABLE staged_crls (
    issuer_id    TEXT NOT NULL REFERENCES issuers (id),
    number       BIGINT NOT NULL,
    digest       TEXT NOT NULL,
    this_update  BIGINT NOT NULL,
    next_update  BIGINT NOT NULL,
    der          TEXT NOT NULL,
    publish_at   BIGINT NOT NULL,
    -- The emergency rotation this CRL enforces.
    rotation     TEXT NOT NULL,
    PRIMARY KEY (issuer_id, number)
);

-- When the revocation of an emergency's intermediate takes effect (NULL: at once, as before), and
-- the margin after the last affected renewal after which it may take effect earlier.
ALTER TABLE emergencies ADD COLUMN enforce_at BIGINT;
ALTER TABLE emergencies ADD COLUMN settle_secs BIGINT;
