//! Workload enrollment state on SQLite.

use super::rows::{self, get};
use super::{SqliteDb, exec, insert_audit, one};
use crate::store::workload::{INSERT_JOIN_TOKEN, JOIN_TOKEN_BY_DIGEST, JoinToken, SPEND_JOIN_TOKEN, StoredJoinToken};
use crate::{AuditEvent, CaError};

impl SqliteDb {
    pub(in crate::store) async fn create_join_token(
        &self,
        digest: &str,
        token: &JoinToken,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<(), CaError> {
        let row = (digest.to_owned(), token.spiffe_id.to_string(), i64::from(token.is_prefix), token.expires_at, now);
        let ev = audit.clone();
        self.write(move |c| {
            exec(c, INSERT_JOIN_TOKEN, (&row.0, &row.1, row.2, row.3, row.4))?;
            insert_audit(c, &ev)
        })
        .await
    }

    pub(in crate::store) async fn spend_join_token(
        &self,
        digest: &str,
        spiffe_id: &str,
        now: i64,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let (digest, spiffe_id, ev) = (digest.to_owned(), spiffe_id.to_owned(), audit.clone());
        self.write(move |c| {
            if exec(c, SPEND_JOIN_TOKEN, (now, &spiffe_id, &digest))? != 1 {
                return Ok(false);
            }
            insert_audit(c, &ev)?;
            Ok(true)
        })
        .await
    }

    pub(in crate::store) async fn join_token(&self, digest: &str) -> Result<Option<StoredJoinToken>, CaError> {
        let key = digest.to_owned();
        self.read(move |c| one(c, JOIN_TOKEN_BY_DIGEST, [&key], |r| rows::join_token(r))).await
    }

    /// One write job: no other process can change the sequence between the read and the update.
    pub(in crate::store) async fn bundle_sequence(&self, digest: &str) -> Result<u64, CaError> {
        let digest = digest.to_owned();
        self.write(move |c| {
            let current = one(c, "SELECT sequence, digest FROM bundle_state WHERE id = 1", [], |r| {
                Ok((get::<i64>(r, "sequence")?, get::<String>(r, "digest")?))
            })?;
            let seq = match current {
                None => {
                    exec(c, "INSERT INTO bundle_state (id, sequence, digest) VALUES (1, 1, $1)", [&digest])?;
                    1
                }
                Some((seq, current)) if current == digest => seq,
                Some((seq, _)) => {
                    exec(c, "UPDATE bundle_state SET sequence = sequence + 1, digest = $1 WHERE id = 1", [&digest])?;
                    seq + 1
                }
            };
            Ok(u64::try_from(seq).unwrap_or(0))
        })
        .await
    }
}
