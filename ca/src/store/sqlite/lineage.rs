//! Revocation along the renewal lineage on SQLite: one write job, which holds SQLite's write
//! lock throughout, so no renewal can be recorded between the walk and the commit and one pass
//! finds every successor.

use time::OffsetDateTime;

use super::rows::get;
use super::{SqliteDb, all, exec, insert_audit};
use crate::CaError;
use crate::store::lineage::{REVOKE_ONE, REVOKE_SUCCESSORS, Revocation, revocation_events};
use crate::store::unix;

impl SqliteDb {
    pub(in crate::store) async fn revoke(
        &self,
        serial: &str,
        reason: i32,
        at: OffsetDateTime,
        actor: &str,
    ) -> Result<Revocation, CaError> {
        let (serial, actor) = (serial.to_owned(), actor.to_owned());
        self.write(move |c| {
            let revoked = exec(c, REVOKE_ONE, (unix(at), reason, &serial))? == 1;
            let successors: Vec<String> = all(c, REVOKE_SUCCESSORS, (unix(at), reason, &serial), |r| get(r, "serial"))?;
            let revocation = Revocation { revoked, successors };
            for ev in &revocation_events(&serial, reason, at, &actor, &revocation) {
                insert_audit(c, ev)?;
            }
            Ok(revocation)
        })
        .await
    }
}
