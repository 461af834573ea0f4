//! Canary records on SQLite.

use super::rows::{self, get};
use super::{SqliteDb, all, exec, guarded, insert_audit, one};
use crate::CaError;
use crate::store::MOVE_ISSUER;
use crate::store::canary::*;
use crate::store::emergency::ASK_RENEWAL;

impl SqliteDb {
    pub(in crate::store) async fn canaries(&self) -> Result<Vec<Canary>, CaError> {
        self.read(|c| all(c, CANARIES, [], |r| rows::canary(r))).await
    }

    pub(in crate::store) async fn live_workloads_of(
        &self,
        issuer_id: &str,
        now: i64,
    ) -> Result<Vec<(String, String)>, CaError> {
        let id = issuer_id.to_owned();
        self.read(move |c| all(c, LIVE_WORKLOADS, (&id, now), |r| Ok((get(r, "serial")?, get(r, "sans")?)))).await
    }

    pub(in crate::store) async fn change_journal(&self, ch: JournalChange) -> Result<Option<i64>, CaError> {
        self.write(move |c| {
            let mut affected = 0i64;
            let ok = guarded(c, |c| {
                if let Some(k) = &ch.start {
                    if k.state == CanaryState::Soaking && one(c, SOAKING, [], |r| get::<i64>(r, "n"))?.unwrap_or(0) > 0
                    {
                        return Ok(false);
                    }
                    exec(
                        c,
                        INSERT_CANARY,
                        rusqlite::params![
                            k.rotation,
                            k.successor,
                            k.previous,
                            k.prefix,
                            k.fraction_ppm,
                            k.started_at,
                            k.soak_until,
                            k.state.as_str(),
                            k.decided_at,
                            k.reason
                        ],
                    )?;
                }
                if let Some((rotation, state, reason)) = &ch.decide
                    && exec(c, DECIDE_CANARY, (state.as_str(), ch.at, reason, rotation))? != 1
                {
                    return Ok(false);
                }
                for (id, state) in &ch.guards {
                    if exec(c, GUARD_ISSUER, (id, state.as_str()))? != 1 {
                        return Ok(false);
                    }
                }
                for (id, from, to) in &ch.moves {
                    if exec(c, MOVE_ISSUER, (to.as_str(), ch.at, id, from.as_str()))? != 1 {
                        return Ok(false);
                    }
                }
                for serial in &ch.ask_serials {
                    affected += i64::try_from(exec(c, ASK_ONE, (ch.window.0, ch.window.1, serial))?).unwrap_or(0);
                }
                if let Some(issuer) = &ch.ask_issuer {
                    let n = exec(c, ASK_RENEWAL, (ch.window.0, ch.window.1, issuer, ch.at))?;
                    affected += i64::try_from(n).unwrap_or(i64::MAX);
                }
                for ev in &ch.audit {
                    insert_audit(c, ev)?;
                }
                Ok(true)
            })?;
            Ok(ok.then_some(affected))
        })
        .await
    }
}
