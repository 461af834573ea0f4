-- Root rotation: an intermediate signed by a new root also gets a certificate for the same name and
-- key signed by the previous root, so chains validate from either root during the overlap.
ALTER TABLE issuers ADD COLUMN cross_cert_pem TEXT;
