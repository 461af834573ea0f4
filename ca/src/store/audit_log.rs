//! The audit log as operators read it: listing and exporting events ([`AuditFilter`],
//! [`AuditRecord`]) and the hash chain that makes a deleted or edited event detectable
//! ([`VerifyReport`]).
//!
//! What the chain covers: every row of the `audit_events` table written since migration 0014
//! (operator actions, refusals, key use, revocations, ACME and enrollment state changes, issuer
//! journal moves, CRLs). Each such row carries `seq` (its position: 1, 2, 3, ... without gaps
//! across every replica), `prev_digest` (the digest of the row at `seq - 1`, or [`GENESIS`] for
//! the first) and `digest`, the SHA-256 of [`digest`]'s canonical encoding of the row. The
//! one-row `audit_chain_head` holds the last `seq` and digest. Every insert reads and moves the
//! head in the transaction of its state change, so a change that rolls back leaves no gap.
//!
//! What it does not cover: the `certificate.issue` events that are the `issued_certificates`
//! rows themselves (the issuance hot path does not take the chain's lock), and events written
//! before the migration (`seq` NULL: counted, not vouched for). And someone able to write the
//! database can cut the newest events *and* move the head back consistently, or rewrite the
//! whole chain from some point on: the chain proves the log is internally consistent, not that
//! it is complete up to now. Exporting it ([`AuditRecord`] as JSON lines) to a system the CA
//! cannot write and comparing the exported digests later closes that gap.

use time::OffsetDateTime;

use crate::CaError;
use crate::audit::AuditEvent;

/// The digest the first chained event names as its predecessor (the head's seed in migration
/// 0014).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which events [`Store::audit_query`](super::Store::audit_query) returns. Every field left
/// `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Events at or before this time.
    pub until: Option<OffsetDateTime>,
    /// Exactly this actor (`operator`, `ca`, `acme:<account>`, ...).
    pub actor: Option<String>,
    /// Exactly this action (kind): `eab.create`, `certificate.revoke`, `issuer.activate`, ...
    pub action: Option<String>,
    /// Events of one rotation: whose target is this id or whose detail names `rotation <id>`.
    pub rotation: Option<String>,
    /// Only chained events after this position (an incremental export resumes here).
    pub after_seq: Option<i64>,
    /// At most this many, the newest (still returned oldest first).
    pub limit: Option<i64>,
}

/// One row of the audit table, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// Position in the chain; `None` for an event written before the chain started.
    pub seq: Option<i64>,
    /// Event id (time-ordered).
    pub id: String,
    /// When it happened (second precision, as stored).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What (the kind).
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `success`, `refused` or `failed`.
    pub outcome: String,
    /// Free text.
    pub detail: String,
    /// Digest of the predecessor in the chain.
    pub prev_digest: Option<String>,
    /// This event's digest.
    pub digest: Option<String>,
}

/// Where the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The position of the first event that does not fit, or the missing position; `None` for an
    /// event that has no position at all.
    pub seq: Option<i64>,
    /// What is wrong there.
    pub reason: String,
}

/// What [`Store::audit_verify`](super::Store::audit_verify) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chained events whose digest and link were checked (up to the first break).
    pub checked: u64,
    /// Events written before the chain started (not covered).
    pub unchained: u64,
    /// The head's position: the number of chained events there should be.
    pub head_seq: i64,
    /// The first break, `None` when the chain is intact.
    pub first_break: Option<ChainBreak>,
}

impl VerifyReport {
    /// True when no break was found.
    pub fn intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// The chain's head: the last position and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) seq: i64,
    pub(super) digest: String,
}

/// An event ready to insert: its stored values and its place in the chain.
#[derive(Debug)]
pub(super) struct Chained<'a> {
    pub(super) ev: &'a AuditEvent,
    pub(super) id: String,
    pub(super) at: i64,
    pub(super) seq: i64,
    pub(super) prev_digest: String,
    pub(super) digest: String,
}

/// Assigns `events` the positions after `head`, in order, computes their digests and moves
/// `head` past them.
pub(super) fn chain<'a>(head: &mut Head, events: &[&'a AuditEvent]) -> Vec<Chained<'a>> {
    events
        .iter()
        .map(|ev| {
            let id = super::batch::audit_id(ev);
            let at = super::unix(ev.at);
            let seq = head.seq + 1;
            let prev_digest = std::mem::take(&mut head.digest);
            let d = digest(
                seq,
                &prev_digest,
                &[&id, &at.to_string(), &ev.actor, &ev.action, &ev.target, ev.outcome.as_str(), &ev.detail],
            );
            *head = Head { seq, digest: d.clone() };
            Chained { ev, id, at, seq, prev_digest, digest: d }
        })
        .collect()
}

/// Hex SHA-256 over an unambiguous encoding of an event at position `seq`: a version tag, then
/// `seq`, `prev_digest` and the fields (id, at in Unix seconds as decimal, actor, action, target,
/// outcome, detail), each as its byte length (8 bytes, big-endian) followed by its bytes.
pub(super) fn digest(seq: i64, prev_digest: &str, fields: &[&str; 7]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let seq = seq.to_string();
    for part in ["lanyard-audit-v1", seq.as_str(), prev_digest].iter().chain(fields.iter()) {
        ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

/// The digest `r` should carry, recomputed from its stored fields.
fn recompute(seq: i64, prev_digest: &str, r: &AuditRecord) -> String {
    let at = super::unix(r.at).to_string();
    digest(seq, prev_digest, &[&r.id, &at, &r.actor, &r.action, &r.target, &r.outcome, &r.detail])
}

/// Walks the chained events in `seq` order (fed page by page) and finds the first break.
#[derive(Debug)]
pub(super) struct Verifier {
    head: Head,
    expect_seq: i64,
    expect_prev: String,
    checked: u64,
    first_break: Option<ChainBreak>,
}

impl Verifier {
    /// A walk against the head as read in the same snapshot as the rows.
    pub(super) fn new(head: Head) -> Verifier {
        Verifier { head, expect_seq: 1, expect_prev: GENESIS.to_owned(), checked: 0, first_break: None }
    }

    /// Whether the walk still wants rows (it stops at the first break).
    pub(super) fn wants_more(&self) -> bool {
        self.first_break.is_none()
    }

    /// The last position walked: the next page starts after it.
    pub(super) fn last_seq(&self) -> i64 {
        self.expect_seq - 1
    }

    /// The head's position: pages go no further.
    pub(super) fn head_seq(&self) -> i64 {
        self.head.seq
    }

    fn broken(&mut self, seq: Option<i64>, reason: String) {
        if self.first_break.is_none() {
            self.first_break = Some(ChainBreak { seq, reason });
        }
    }

    /// Checks the next row (rows arrive in `seq` order).
    pub(super) fn row(&mut self, r: &AuditRecord) {
        if !self.wants_more() {
            return;
        }
        let expect = self.expect_seq;
        let Some(seq) = r.seq else { return };
        if seq != expect {
            return self.broken(Some(expect), format!("event {expect} is missing (the next event is {seq})"));
        }
        if r.prev_digest.as_deref() != Some(self.expect_prev.as_str()) {
            return self.broken(
                Some(seq),
                format!(
                    "event {seq} (id {}) does not link to its predecessor: prev_digest {} but event {} has digest {}",
                    r.id,
                    r.prev_digest.as_deref().unwrap_or("(none)"),
                    seq - 1,
                    self.expect_prev
                ),
            );
        }
        let want = recompute(seq, &self.expect_prev, r);
        if r.digest.as_deref() != Some(want.as_str()) {
            return self.broken(
                Some(seq),
                format!("event {seq} (id {}) was altered: its fields do not hash to its recorded digest", r.id),
            );
        }
        self.checked += 1;
        self.expect_seq = seq + 1;
        self.expect_prev = want;
    }

    /// Ends the walk: the rows must have reached the head, the head's digest must be the last
    /// row's; `beyond` is the first position above the head, if a row has one; `slipped_in` an
    /// event without a position written after the chain started.
    pub(super) fn finish(mut self, unchained: u64, beyond: Option<i64>, slipped_in: Option<String>) -> VerifyReport {
        if self.wants_more() {
            let last = self.last_seq();
            if last < self.head.seq {
                let missing = last + 1;
                self.broken(
                    Some(missing),
                    format!(
                        "event {missing} is missing (the chain head is at {}, the events end at {last})",
                        self.head.seq
                    ),
                );
            } else if self.head.digest != self.expect_prev {
                let seq = self.head.seq;
                self.broken(Some(seq), format!("the chain head's digest is not that of event {seq}"));
            } else if let Some(b) = beyond {
                self.broken(Some(b), format!("event {b} lies beyond the chain head ({})", self.head.seq));
            } else if let Some(id) = slipped_in {
                self.broken(
                    None,
                    format!("event {id} has no place in the chain but was written after the chain started"),
                );
            }
        }
        VerifyReport { checked: self.checked, unchained, head_seq: self.head.seq, first_break: self.first_break }
    }
}

/// The binds of [`AUDIT_QUERY`] for `f`, in order: since, until, actor, action, rotation,
/// three LIKE patterns, after_seq, limit.
pub(super) struct QueryBinds {
    pub(super) since: i64,
    pub(super) until: i64,
    pub(super) actor: String,
    pub(super) action: String,
    pub(super) rotation: String,
    pub(super) patterns: [String; 3],
    pub(super) after_seq: i64,
    pub(super) limit: i64,
}

impl QueryBinds {
    pub(super) fn of(f: &AuditFilter) -> QueryBinds {
        let rotation = f.rotation.clone().unwrap_or_default();
        let esc: String =
            rotation.chars().flat_map(|c| if matches!(c, '!' | '%' | '_') { vec!['!', c] } else { vec![c] }).collect();
        QueryBinds {
            since: f.since.map_or(i64::MIN, super::unix),
            until: f.until.map_or(i64::MAX, super::unix),
            actor: f.actor.clone().unwrap_or_default(),
            action: f.action.clone().unwrap_or_default(),
            rotation,
            patterns: [format!("%rotation {esc}:%"), format!("%rotation {esc} %"), format!("%rotation {esc}")],
            after_seq: f.after_seq.unwrap_or(-1),
            limit: f.limit.unwrap_or(i64::MAX),
        }
    }
}

/// Newest first (binds: [`QueryBinds`]); empty strings match any actor, action or rotation.
/// Events from before the chain sort first (position 0), by id.
pub(super) const AUDIT_QUERY: &str = "SELECT seq, id, at, actor, action, target, outcome, detail, prev_digest, digest \
     FROM audit_events WHERE at >= $1 AND at <= $2 AND ($3 = '' OR actor = $3) AND ($4 = '' OR action = $4) \
     AND ($5 = '' OR target = $5 OR detail LIKE $6 ESCAPE '!' OR detail LIKE $7 ESCAPE '!' \
          OR detail LIKE $8 ESCAPE '!') \
     AND COALESCE(seq, 0) > $9 ORDER BY COALESCE(seq, 0) DESC, id DESC LIMIT $10";

/// The chain's head.
pub(super) const CHAIN_HEAD: &str = "SELECT seq, digest FROM audit_chain_head WHERE id = 1";
/// Moves the chain's head (binds: seq, digest).
pub(super) const SET_CHAIN_HEAD: &str = "UPDATE audit_chain_head SET seq = $1, digest = $2 WHERE id = 1";
/// Chained events after a position up to another (binds: after, up to, limit), in order.
pub(super) const CHAIN_PAGE: &str = "SELECT seq, id, at, actor, action, target, outcome, detail, prev_digest, digest \
     FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3";
/// Rows per page of a verification.
pub(super) const PAGE: i64 = 5000;
/// The first position above the head (binds: head seq), if any row has one.
pub(super) const BEYOND_HEAD: &str = "SELECT MIN(seq) AS s FROM audit_events WHERE seq > $1";
/// Events without a position.
pub(super) const UNCHAINED: &str = "SELECT COUNT(*) AS n FROM audit_events WHERE seq IS NULL";
/// Chained events (the head's position) and events outside the chain, for the M8 gauges.
pub(super) const COUNTS: &str = "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit_chain_head) AS chained, \
     (SELECT COUNT(*) FROM audit_events WHERE seq IS NULL) AS unchained";
/// An event without a position written after the first chained one.
pub(super) const SLIPPED_IN: &str = "SELECT id FROM audit_events WHERE seq IS NULL \
     AND at > (SELECT MIN(at) FROM audit_events WHERE seq IS NOT NULL) ORDER BY id LIMIT 1";

/// The head, or an error naming what is wrong when the row is gone (an insert cannot continue
/// the chain then).
pub(super) fn head_or_err(head: Option<Head>) -> Result<Head, CaError> {
    head.ok_or_else(|| CaError::Store("the audit chain head (audit_chain_head, id 1) is missing".into()))
}

/// The report when the head row is gone.
pub(super) fn headless(unchained: u64) -> VerifyReport {
    VerifyReport {
        checked: 0,
        unchained,
        head_seq: 0,
        first_break: Some(ChainBreak {
            seq: None,
            reason: "the chain head (audit_chain_head, id 1) is missing".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field boundaries are part of the digest: moving a character from one field to the next
    /// changes it; so do the position and the predecessor.
    #[test]
    fn the_encoding_is_unambiguous() {
        let base = digest(1, GENESIS, &["id", "1", "ab", "c", "t", "success", ""]);
        assert_ne!(base, digest(1, GENESIS, &["id", "1", "a", "bc", "t", "success", ""]));
        assert_ne!(base, digest(2, GENESIS, &["id", "1", "ab", "c", "t", "success", ""]));
        assert_ne!(base, digest(1, &"1".repeat(64), &["id", "1", "ab", "c", "t", "success", ""]));
        assert_eq!(base, digest(1, GENESIS, &["id", "1", "ab", "c", "t", "success", ""]));
        assert_eq!(base.len(), 64);
    }

    fn record(ch: &Chained<'_>) -> AuditRecord {
        AuditRecord {
            seq: Some(ch.seq),
            id: ch.id.clone(),
            at: ch.ev.at.replace_nanosecond(0).expect("ns"),
            actor: ch.ev.actor.clone(),
            action: ch.ev.action.clone(),
            target: ch.ev.target.clone(),
            outcome: ch.ev.outcome.as_str().into(),
            detail: ch.ev.detail.clone(),
            prev_digest: Some(ch.prev_digest.clone()),
            digest: Some(ch.digest.clone()),
        }
    }

    /// A chain built by [`chain`] verifies; a reordered one breaks at its first misplaced event.
    #[test]
    fn chained_events_verify() {
        let evs: Vec<AuditEvent> =
            (0..4).map(|i| AuditEvent::now("a", "b", format!("t{i}"), crate::Outcome::Success, "")).collect();
        let refs: Vec<&AuditEvent> = evs.iter().collect();
        let mut head = Head { seq: 0, digest: GENESIS.into() };
        let rows: Vec<AuditRecord> = chain(&mut head, &refs).iter().map(record).collect();
        let mut v = Verifier::new(head.clone());
        rows.iter().for_each(|r| v.row(r));
        assert_eq!(v.finish(0, None, None).first_break, None);

        let mut swapped = rows.clone();
        swapped.swap(1, 2);
        (swapped[1].seq, swapped[2].seq) = (Some(2), Some(3));
        let mut v = Verifier::new(head);
        swapped.iter().for_each(|r| v.row(r));
        assert_eq!(v.finish(0, None, None).first_break.and_then(|b| b.seq), Some(2));
    }
}
