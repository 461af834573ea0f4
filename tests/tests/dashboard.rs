//! The Grafana dashboard (`deploy/grafana/lanyard-rotation.json`) only queries metrics that
//! `lanyard-ca` exports: every `lanyard_*` name in its expressions is checked against the
//! `# TYPE` lines of a running CA's metrics page.

use std::collections::BTreeSet;

use tests::workload::WorkloadCa;

/// The `lanyard_*` names an expression mentions.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("lanyard_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Whether `name` is a sample name of an exported family: counters are typed with their `_total`
/// here, histograms without `_bucket`, `_sum` and `_count`.
fn exported_as(exported: &BTreeSet<&str>, name: &str) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"].iter().filter_map(|s| name.strip_suffix(s)).any(|f| exported.contains(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_an_exported_metric() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/lanyard-rotation.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels.iter().filter(|p| p["type"] == "row").filter_map(|p| p["title"].as_str()).collect();
    for want in ["Executive", "On-call", "Debug"] {
        assert!(rows.iter().any(|r| r.starts_with(want)), "a {want} row: {rows:?}");
    }
    let queried: BTreeSet<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(names_in))
        .flatten()
        .collect();
    assert!(queried.len() >= 20, "{queried:?}");
    for sli in ["M1", "M2", "M3", "M4", "M5", "M6", "M7", "M8"] {
        assert!(panels.iter().any(|p| p["title"].as_str().is_some_and(|t| t.starts_with(sli))), "a panel for {sli}");
    }

    let ca = WorkloadCa::start().expect("CA");
    let page = ca.metrics().await.expect("metrics");
    let exported: BTreeSet<&str> =
        page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    let missing: Vec<&String> = queried.iter().filter(|n| !exported_as(&exported, n)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics lanyard-ca does not export: {missing:?}");
}
