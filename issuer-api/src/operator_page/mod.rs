//! The operator page (`[admin] page = true`): `/ops` on the metrics listener, a static page that
//! polls `/ops/state.json` and shows the issuer journal on a timeline, the rotation in progress
//! with the fleet's convergence and the gate, the SLIs (README "Rotation SLIs") and recent audit
//! events. It reads only what the metrics already expose plus the audit log's newest events: no
//! keys, no passphrase, no certificate bodies. Off by default and loopback-only unless configured
//! ([`crate::config::AdminConfig`]).

use ca::{Authority, CaError, IssuerState, TrustBundle};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The page: markup only; behaviour in [`SCRIPT`] (served separately, so the content security
/// policy allows no inline script).
pub const PAGE: &str = include_str!("page.html");
/// The page's script.
pub const SCRIPT: &str = include_str!("app.js");
/// Content security policy of the page: nothing from elsewhere, no inline script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// How many audit events the page lists.
const AUDIT_EVENTS: i64 = 15;

fn rfc(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn unix_rfc(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t).map(rfc).unwrap_or_default()
}

/// What the page shows, read now.
pub async fn state(authority: &Authority) -> Result<Value, CaError> {
    let views = authority.views();
    let now = OffsetDateTime::now_utc();
    let journal = views.issuers().await?;
    let sequence = views.bundle_sequence(&TrustBundle::from_journal(&journal).digest()).await?;
    let mut issuers = Vec::new();
    for r in &journal {
        let valid = if r.state == IssuerState::Retired {
            Some(views.valid_certificates_of(&r.id, now.unix_timestamp()).await?)
        } else {
            None
        };
        issuers.push(json!({
            "id": r.id, "kind": r.kind.to_string(), "state": r.state.to_string(), "subject": r.subject,
            "parent": r.parent_id, "not_before": rfc(r.not_before), "not_after": rfc(r.not_after),
            "state_changed_at": rfc(r.state_changed_at), "valid_certificates": valid,
        }));
    }
    let fleet = authority.fleet();
    let c = fleet.convergence(sequence, now);
    let totals = fleet.totals();
    let refused: serde_json::Map<String, Value> =
        totals.refused.iter().map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect();
    let gate = fleet.gate().map(|g| {
        json!({
            "step": g.step, "issuer": g.issuer, "reason": g.reason, "live": g.live, "confirmed": g.confirmed,
            "required": g.required, "due_at": unix_rfc(g.due_at), "overdue": g.overdue,
        })
    });
    let target = |t: &ca::fleet::Target| match t {
        ca::fleet::Target::Bundle(s) => format!("bundle {s} installed"),
        ca::fleet::Target::Serving(fp) => format!("serving issuer {}", &fp[..fp.len().min(16)]),
    };
    let windows: Vec<Value> = fleet
        .windows()
        .iter()
        .map(|w| {
            json!({"rotation": w.rotation, "kind": w.kind, "target": target(&w.target),
                   "started": rfc(w.started), "deadline": rfc(w.deadline)})
        })
        .collect();
    let recent = fleet.recent_closed();
    let recent_json: Vec<Value> = recent
        .iter()
        .map(|c| {
            json!({"rotation": c.window.rotation, "kind": c.window.kind, "converged": c.converged,
                   "took_seconds": c.took.as_secs(), "unconverged": c.unconverged})
        })
        .collect();
    let emergencies = views.emergencies().await?;
    let mut m7 = Vec::new();
    for e in &emergencies {
        let outstanding = if e.completed_at.is_some() {
            0
        } else {
            views.emergency_outstanding(&e.issuer_id, now.unix_timestamp()).await?
        };
        m7.push(
            json!({"rotation": e.id, "duration_seconds": e.completed_at.unwrap_or(now.unix_timestamp()) - e.started_at,
                       "outstanding": outstanding, "completed": e.completed_at.is_some()}),
        );
    }
    let canary = match views.canaries().await?.into_iter().next() {
        Some(k) => {
            let serving = fleet.serving_issuers(now);
            let on = |id: &str| {
                journal.iter().find(|r| r.id == id).and_then(|r| serving.get(&r.fingerprint)).copied().unwrap_or(0)
            };
            let t = fleet.tally(&k.rotation).unwrap_or_default();
            json!({
                "rotation": k.rotation, "state": k.state.as_str(), "successor": k.successor, "previous": k.previous,
                "prefix": k.prefix, "fraction": k.fraction_ppm as f64 / 1_000_000.0,
                "started": unix_rfc(k.started_at), "soak_until": unix_rfc(k.soak_until),
                "decided_at": k.decided_at.map(unix_rfc), "reason": k.reason,
                "serving_successor": on(&k.successor), "serving_previous": on(&k.previous),
                "handshakes_accepted": t.accepted, "handshakes_refused": t.refused,
                "signed": t.signed, "failed_renewals": t.failed,
            })
        }
        None => Value::Null,
    };
    let (audited, outside) = views.audit_counts().await?;
    let audit: Vec<Value> = views
        .recent_audit(AUDIT_EVENTS)
        .await?
        .into_iter()
        .rev()
        .map(|a| {
            json!({"seq": a.seq, "at": rfc(a.at), "actor": a.actor, "action": a.action, "target": a.target,
                   "outcome": a.outcome, "detail": a.detail})
        })
        .collect();
    let converged = recent.iter().filter(|c| c.converged).count();
    let m6: Vec<Value> = issuers
        .iter()
        .filter(|i| i["valid_certificates"].is_number())
        .map(|i| json!({"issuer": i["id"], "valid": i["valid_certificates"]}))
        .collect();
    Ok(json!({
        "generated_at": rfc(now),
        "bundle_sequence": sequence,
        "issuers": issuers,
        "fleet": {
            "live": c.live, "gone": c.gone, "confirmed": c.confirmed, "sequence": c.sequence,
            "behind": c.behind.iter().map(|(id, s)| json!({"workload": id, "sequence": s})).collect::<Vec<_>>(),
            "serving": fleet.serving_issuers(now), "accepted": totals.accepted, "refused": refused,
            "warm": fleet.warm(now),
        },
        "gate": gate,
        "windows": windows,
        "canary": canary,
        "slis": {
            "m1_m3": {"converged": converged, "partial": recent.len() - converged, "recent": recent_json},
            "m2_last_seconds": recent.iter().rev().find(|c| c.converged).map(|c| c.took.as_secs()),
            "m4_agent_mean_seconds": (totals.fetch_latency_count > 0)
                .then(|| totals.fetch_latency_sum / totals.fetch_latency_count as f64),
            "m5": fleet.refused_in_windows().iter().map(|(r, n)| json!({"rotation": r, "refused": n})).collect::<Vec<_>>(),
            "m6": m6,
            "m7": m7,
            "m8": {"audited": audited, "outside_chain": outside},
        },
        "audit": audit,
    }))
}
