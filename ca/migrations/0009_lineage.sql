-- Renewal lineage. A workload certificate renewed over mTLS is superseded by its successor: the
-- successor names its predecessor (renewed_from, set with its intent), and the predecessor points
-- at its one live successor (superseded_by) from the moment of its first renewal (superseded_at).
-- superseded_by is set in the same transaction that records the successor, guarded by the value it
-- had, so two renewals of one certificate can never both be recorded, and revoking a certificate
-- can find (and revoke) every certificate renewed from it.
ALTER TABLE certificates ADD COLUMN renewed_from TEXT REFERENCES certificates (serial);
ALTER TABLE certificates ADD COLUMN superseded_by TEXT;
ALTER TABLE certificates ADD COLUMN superseded_at BIGINT;
CREATE INDEX certificates_renewed_from ON certificates (renewed_from) WHERE renewed_from IS NOT NULL;

-- Renewals made before this migration recorded their predecessor only as the requester
-- 'renewal:<serial>'. Their lineage is taken from there, so revoking an old certificate also
-- reaches what was renewed from it; a predecessor renewed more than once points at its latest
-- recorded successor.
UPDATE certificates SET renewed_from = substr(requester, 9)
WHERE requester LIKE 'renewal:%' AND substr(requester, 9) IN (SELECT serial FROM certificates);
UPDATE certificates SET
    superseded_by = (SELECT MAX(n.serial) FROM certificates n JOIN issued_certificates i ON i.serial = n.serial
                     WHERE n.renewed_from = certificates.serial),
    superseded_at = (SELECT MIN(i.issued_at) FROM certificates n JOIN issued_certificates i ON i.serial = n.serial
                     WHERE n.renewed_from = certificates.serial)
WHERE serial IN (SELECT n.renewed_from FROM certificates n JOIN issued_certificates i ON i.serial = n.serial
                 WHERE n.renewed_from IS NOT NULL);
