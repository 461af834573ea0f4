//! The issuer journal on SQLite. Each change is one write job holding SQLite's write lock, so its
//! guards see every change committed before it, in this process or another.

use time::OffsetDateTime;

use super::{SqliteDb, all, exec, guarded, insert_audit, rows};
use crate::CaError;
use crate::audit::AuditEvent;
use crate::issuers::{IssuerRecord, IssuerState};
use crate::store::{APPEND_CROSS_CERT, INSERT_ISSUER, ISSUERS, MOVE_ISSUER, unix};

impl SqliteDb {
    pub(in crate::store) async fn insert_issuers_with_cross(
        &self,
        issuers: &[&IssuerRecord],
        cross: &[(&str, &str)],
        audit: &[AuditEvent],
    ) -> Result<(), CaError> {
        let issuers: Vec<IssuerRecord> = issuers.iter().map(|r| (*r).clone()).collect();
        let cross: Vec<(String, String)> =
            cross.iter().map(|(id, pem)| ((*id).to_owned(), (*pem).to_owned())).collect();
        let audit = audit.to_vec();
        self.write(move |c| {
            for r in &issuers {
                exec(
                    c,
                    INSERT_ISSUER,
                    rusqlite::params![
                        r.id,
                        r.kind.as_str(),
                        r.state.as_str(),
                        r.parent_id,
                        r.subject,
                        r.cert_pem,
                        r.key_pem_enc,
                        r.ski,
                        r.fingerprint,
                        unix(r.not_before),
                        unix(r.not_after),
                        unix(r.created_at),
                        unix(r.state_changed_at),
                        r.cross_cert_pem,
                    ],
                )?;
            }
            for (id, pem) in &cross {
                if exec(c, APPEND_CROSS_CERT, (pem, id))? != 1 {
                    return Err(CaError::Config(format!("issuer {id} is not in the journal")));
                }
            }
            for ev in &audit {
                insert_audit(c, ev)?;
            }
            Ok(())
        })
        .await
    }

    /// Every certificate download reads the journal (to pick the chain): the reader thread.
    pub(in crate::store) async fn issuers(&self) -> Result<Vec<IssuerRecord>, CaError> {
        self.read(|c| all(c, ISSUERS, [], |r| rows::issuer(r))).await
    }

    pub(in crate::store) async fn move_issuers(
        &self,
        moves: &[(&str, IssuerState, IssuerState)],
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<bool, CaError> {
        let moves: Vec<(String, IssuerState, IssuerState)> =
            moves.iter().map(|(id, from, to)| ((*id).to_owned(), *from, *to)).collect();
        let audit = audit.clone();
        self.write(move |c| {
            guarded(c, |c| {
                for (id, from, to) in &moves {
                    if exec(c, MOVE_ISSUER, (to.as_str(), unix(at), id, from.as_str()))? != 1 {
                        return Ok(false);
                    }
                }
                insert_audit(c, &audit)?;
                Ok(true)
            })
        })
        .await
    }
}
