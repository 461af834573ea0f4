//! Certificate records, the audit trail and the rotation lease on SQLite.

use std::time::Duration;

use time::OffsetDateTime;

use super::rows::{self, get};
use super::{SqliteDb, all, exec, one};
use crate::CaError;
use crate::audit::AuditEvent;
use crate::store::audit_log::{self, AuditFilter, AuditRecord, QueryBinds, Verifier, VerifyReport};
use crate::store::records::{CertificateRecord, cert_columns};
use crate::store::unix;

/// Intents older than `$1` whose certificate was never recorded.
const ABANDON_STALE_INTENTS: &str = "UPDATE certificates SET status = 'abandoned' WHERE status = 'intent' \
     AND created_at <= $1 AND NOT EXISTS (SELECT 1 FROM issued_certificates i WHERE i.serial = certificates.serial)";

impl SqliteDb {
    pub(in crate::store) async fn abandon_stale_intents(&self, older_than: Duration) -> Result<u64, CaError> {
        let cutoff = unix(OffsetDateTime::now_utc()).saturating_sub(crate::units::secs(older_than));
        self.write(move |c| exec(c, ABANDON_STALE_INTENTS, [cutoff])).await
    }

    /// Answered by the reader thread's batched lookup, the renewal hot path.
    pub(in crate::store) async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, CaError> {
        self.reader.certificate(serial).await
    }

    pub(in crate::store) async fn certificates(&self, limit: i64) -> Result<Vec<CertificateRecord>, CaError> {
        self.read(move |c| {
            all(
                c,
                concat!("SELECT ", cert_columns!(), " ORDER BY c.created_at DESC, c.serial LIMIT $1"),
                [limit],
                |r| rows::certificate(r),
            )
        })
        .await
    }

    pub(in crate::store) async fn certificate_counts(&self) -> Result<(i64, i64, i64), CaError> {
        let counts = self
            .read(|c| {
                all(
                    c,
                    "SELECT CASE WHEN i.serial IS NULL THEN c.status ELSE 'issued' END AS st, COUNT(*) AS n \
                     FROM certificates c LEFT JOIN issued_certificates i ON i.serial = c.serial GROUP BY 1",
                    [],
                    |r| Ok((get::<String>(r, "st")?, get::<i64>(r, "n")?)),
                )
            })
            .await?;
        let mut out = (0, 0, 0);
        for (status, n) in counts {
            match status.as_str() {
                "intent" => out.0 = n,
                "issued" => out.1 = n,
                _ => out.2 = n,
            }
        }
        Ok(out)
    }

    pub(in crate::store) async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, CaError> {
        self.read(move |c| all(c, crate::store::AUDIT_EVENTS, [limit], |r| rows::audit_event(r))).await
    }

    pub(in crate::store) async fn last_signed_not_after(&self, issuer_id: &str) -> Result<Option<i64>, CaError> {
        let id = issuer_id.to_owned();
        self.read(move |c| {
            one(c, "SELECT MAX(not_after) AS m FROM certificates WHERE issuer_id = $1", [&id], |r| {
                get::<Option<i64>>(r, "m")
            })
            .map(Option::flatten)
        })
        .await
    }

    pub(in crate::store) async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, CaError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        Ok(self.write(move |c| exec(c, crate::store::ACQUIRE_LEASE, (&name, &holder, until, now))).await? == 1)
    }
}

impl SqliteDb {
    pub(in crate::store) async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, CaError> {
        let b = QueryBinds::of(filter);
        let mut out = self
            .read(move |c| {
                all(
                    c,
                    audit_log::AUDIT_QUERY,
                    rusqlite::params![
                        b.since,
                        b.until,
                        b.actor,
                        b.action,
                        b.rotation,
                        b.patterns[0],
                        b.patterns[1],
                        b.patterns[2],
                        b.after_seq,
                        b.limit
                    ],
                    |r| rows::audit_record(r),
                )
            })
            .await?;
        out.reverse();
        Ok(out)
    }

    /// (chained events, events outside the chain).
    pub(in crate::store) async fn audit_counts(&self) -> Result<(i64, i64), CaError> {
        self.read(|c| {
            Ok(one(c, audit_log::COUNTS, [], |r| Ok((get::<i64>(r, "chained")?, get::<i64>(r, "unchained")?)))?
                .unwrap_or((0, 0)))
        })
        .await
    }

    /// One read transaction on the reader thread: the head and every row from one snapshot.
    pub(in crate::store) async fn audit_verify(&self) -> Result<VerifyReport, CaError> {
        self.read(|c| {
            let unchained = one(c, audit_log::UNCHAINED, [], |r| get::<i64>(r, "n"))?.unwrap_or(0);
            let unchained = u64::try_from(unchained).unwrap_or(0);
            let head = one(c, audit_log::CHAIN_HEAD, [], |r| {
                Ok(audit_log::Head { seq: get(r, "seq")?, digest: get(r, "digest")? })
            })?;
            let Some(head) = head else { return Ok(audit_log::headless(unchained)) };
            let mut v = Verifier::new(head);
            while v.wants_more() && v.last_seq() < v.head_seq() {
                let page = all(c, audit_log::CHAIN_PAGE, (v.last_seq(), v.head_seq(), audit_log::PAGE), |r| {
                    rows::audit_record(r)
                })?;
                if page.is_empty() {
                    break;
                }
                page.iter().for_each(|r| v.row(r));
            }
            let beyond = one(c, audit_log::BEYOND_HEAD, [v.head_seq()], |r| get::<Option<i64>>(r, "s"))?.flatten();
            let slipped = one(c, audit_log::SLIPPED_IN, [], |r| get::<String>(r, "id"))?;
            Ok(v.finish(unchained, beyond, slipped))
        })
        .await
    }
}
