//! End to end (issue 15): the real `lanyard-ca` binary lists and exports the audit log
//! (`audit list`, filters, JSON lines with the chain fields) and verifies its hash chain
//! (`audit verify`): exit status 0 when intact, non-zero naming the first broken position after
//! an event is edited or deleted in the database. SQLite, and PostgreSQL when provided.

use tests::{run_ca, tamper};

const PASS: &str = "audit cli test passphrase";

/// Runs `lanyard-ca <base> <args>`; returns (success, stdout, stderr).
fn ca(base: &[&str], args: &[&str]) -> (bool, String, String) {
    let all: Vec<&str> = base.iter().chain(args).copied().collect();
    run_ca(&all, &[("LANYARD_CA_PASSPHRASE", PASS)]).expect("run lanyard-ca")
}

fn ok(base: &[&str], args: &[&str]) -> String {
    let (success, out, err) = ca(base, args);
    assert!(success, "lanyard-ca {args:?} failed: {out}{err}");
    out
}

fn jsonl(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[tokio::test]
async fn audit_list_exports_and_verify_finds_tampering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf8").to_owned();
    let mut dbs = vec![format!("sqlite://{}", data.join("lanyard.db").display())];
    dbs.extend(tests::throwaway_postgres("lanyard_audit_cli").await);
    for db in dbs {
        let base = ["--data-dir", data_s.as_str(), "--database-url", db.as_str()];
        if data.join("root.pem").exists() {
            std::fs::remove_dir_all(&data).expect("fresh data dir");
        }
        let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
        ok(&base, &["init"]);
        ok(&base, &["eab", "create"]);
        ok(&base, &["eab", "create", "--allow-suffix", "example.test"]);
        ok(&base, &["token", "create", "--spiffe-id", "spiffe://lanyard.internal/web"]);

        // Everything, as JSON lines: positions 1.., each linked to its predecessor.
        let all = jsonl(&ok(&base, &["audit", "list", "--format", "jsonl"]));
        assert!(all.len() >= 4, "{db}: {all:?}");
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e["seq"].as_u64(), u64::try_from(i + 1).ok(), "{db}: {e}");
            for field in ["id", "at", "actor", "action", "target", "outcome", "detail", "prev_digest", "digest"] {
                assert!(e.get(field).is_some(), "{db}: {field} missing in {e}");
            }
            if i > 0 {
                assert_eq!(e["prev_digest"], all[i - 1]["digest"], "{db}");
            }
        }
        assert!(all.iter().any(|e| e["action"] == "ca.init"), "{db}");
        // Filters.
        let eab = jsonl(&ok(&base, &["audit", "list", "--format", "jsonl", "--kind", "eab.create"]));
        assert_eq!(eab.len(), 2, "{db}: {eab:?}");
        let rfc = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).expect("fmt");
        let since = jsonl(&ok(&base, &["audit", "list", "--format", "jsonl", "--since", &rfc(start)]));
        assert_eq!(since.len(), all.len(), "{db}");
        let later = rfc(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
        assert!(ok(&base, &["audit", "list", "--format", "jsonl", "--since", &later]).is_empty(), "{db}");
        let op = jsonl(&ok(&base, &["audit", "list", "--format", "jsonl", "--actor", "operator", "--limit", "1"]));
        assert_eq!(op.len(), 1, "{db}");
        assert_eq!(op[0]["action"], "join_token.create", "{db}: the newest operator event");
        let table = ok(&base, &["audit", "list"]);
        assert!(table.contains("eab.create") && table.contains("SEQ"), "{db}: {table}");
        let (success, _, err) = ca(&base, &["audit", "list", "--since", "yesterday"]);
        assert!(!success && err.contains("RFC 3339"), "{db}: {err}");

        // Intact.
        let out = ok(&base, &["audit", "verify"]);
        assert!(out.contains("intact") && out.contains(&format!("{} events checked", all.len())), "{db}: {out}");

        // An edited event: non-zero, naming its position.
        tamper(&db, "UPDATE audit_events SET detail = 'edited' WHERE seq = 2").await;
        let (success, out, err) = ca(&base, &["audit", "verify"]);
        assert!(!success, "{db}: verify passed a tampered log: {out}");
        assert!(err.contains("BROKEN at seq 2") && err.contains("altered"), "{db}: {err}");
        // And a deleted one before it: the first break moves up.
        tamper(&db, "DELETE FROM audit_events WHERE seq = 1").await;
        let (success, _, err) = ca(&base, &["audit", "verify"]);
        assert!(!success && err.contains("BROKEN at seq 1") && err.contains("missing"), "{db}: {err}");
    }
}
