//! The operator page (`[admin] page = true`, `/ops` on the metrics listener), loaded in Debian's
//! headless Chromium during a root rotation that waits for a held workload: the rendered page
//! shows the journal with the prepared root, the gate waiting on the fleet (1 of 2 confirmed), the
//! SLIs and the audit events of the rotation. A screenshot is kept in
//! `target/test-artifacts/operator-page.png`. Off by default: the paths do not exist then.

use std::process::Command;
use std::time::Duration;

use tests::workload::{TD, WorkloadCa, held_reports, silent_agent};

/// `GET path` on the metrics listener: (status line and headers, body).
async fn get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (head.to_owned(), body.to_owned())
}

fn chromium(args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=8000"])
        .args(args)
        .output()
        .expect("run chromium (apt-get install chromium; scripts/test.sh installs it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_page_shows_a_rotation_waiting_for_the_fleet() {
    // Off by default.
    let plain = WorkloadCa::start().expect("CA");
    let addr = plain.metrics_addr().expect("metrics address");
    assert!(get(&addr, "/ops").await.0.starts_with("HTTP/1.1 404"), "no page unless [admin] page = true");
    drop(plain);

    let ca = WorkloadCa::start_with(
        "",
        "[rotation]\ncheck_interval = \"1s\"\nroot_overlap = \"1s\"\n[policy.fleet]\nwarmup = \"1s\"\n[admin]\npage = true\n",
    )
    .expect("CA");
    let addr = ca.metrics_addr().expect("metrics address");
    let a_id = format!("spiffe://{TD}/web");
    let agents = ca.enrolled_agents(&[&a_id], 0.5).await.expect("agent");
    let held = silent_agent(&ca, &format!("spiffe://{TD}/held"), 0.5).await.expect("held agent");
    let old_seq = held.seam().bundle_updates().borrow().as_ref().expect("bundle").sequence;
    let _reports = held_reports(&ca.url(), &held, old_seq);
    println!("{}", ca.cli(&["rotate", "root"]).expect("rotate root").trim());
    let journal = ca.journal().await.expect("journal");
    let new_root = journal
        .iter()
        .find(|r| r.kind == ca::IssuerKind::Root && r.state == ca::IssuerState::Prepared)
        .expect("prepared root")
        .id
        .clone();
    // The gate waits on the held workload: 1 of 2 live workloads confirmed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&addr, "/ops/state.json").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("state JSON");
        if v["gate"]["confirmed"] == 1 && v["gate"]["required"] == 2 {
            assert_eq!(v["gate"]["issuer"], new_root.as_str());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the gate never waited on 1 of 2: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Headers and content: a strict CSP, no secrets.
    let (head, page) = get(&addr, "/ops").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(page.contains("<script src=\"/ops/app.js\"></script>"));
    let (_, state) = get(&addr, "/ops/state.json").await;
    for secret in ["PRIVATE KEY", "key_pem", "BEGIN CERTIFICATE", "passphrase"] {
        assert!(!state.contains(secret), "the state leaks {secret}");
    }

    // The page as a browser renders it.
    let url = format!("http://{addr}/ops");
    let out = chromium(&["--dump-dom", &url]);
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dom.contains("data-loaded=\"true\""), "the script ran and loaded the state:\n{dom}");
    assert!(dom.contains(&format!("activate_root of {new_root} waits for the fleet: 1 of 2 confirmations")), "{dom}");
    assert!(dom.contains(&format!("data-issuer=\"{new_root}\"")), "the new root is on the timeline");
    assert!(dom.contains(">prepared<"), "with its state");
    assert!(dom.contains("1 of 2 live workloads on bundle"), "fleet convergence: {dom}");
    assert!(dom.contains("spiffe://lanyard.test/held (bundle"), "names the workload behind: {dom}");
    assert!(dom.contains("root.prepare"), "the audit events of the rotation");
    assert!(dom.contains("M8 audit") && dom.contains("outside the chain"), "the SLIs");
    assert!(dom.contains("No canary"), "the canary panel says there is none");

    // A screenshot, kept as a test artifact.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let png = dir.join("operator-page.png");
    let shot = format!("--screenshot={}", png.display());
    let out = chromium(&["--window-size=1280,1500", &shot, &url]);
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).expect("screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000,
        "a real screenshot: {} bytes",
        bytes.len()
    );
    println!("screenshot: {} ({} bytes)", png.display(), bytes.len());
    drop(agents);
}

/// The canary panel during a canary and after it was rolled back, as Chromium renders it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_page_shows_a_canary_and_its_rollback() {
    let ca = WorkloadCa::start_with(
        "[policy.fleet]\nwarmup = \"1s\"\n",
        "[rotation]\ncheck_interval = \"1s\"\n[rotation.canary]\nrenew_spread = \"2s\"\n[admin]\npage = true\n",
    )
    .expect("CA");
    let addr = ca.metrics_addr().expect("metrics address");
    let agents = ca.canary_and_web_agents().await.expect("agents");
    let rotation = ca.start_canary("10m").expect("canary");
    // Wait until the canary workload reports serving the successor.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&addr, "/ops/state.json").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("state JSON");
        if v["canary"]["serving_successor"] == 1 && v["canary"]["serving_previous"] == 1 {
            assert_eq!(v["canary"]["rotation"], rotation.as_str());
            assert_eq!(v["canary"]["state"], "soaking");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the canary never showed one workload on each: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let url = format!("http://{addr}/ops");
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom", &url]).stdout).to_string();
    assert!(dom.contains("data-state=\"soaking\""), "{dom}");
    assert!(dom.contains(&format!("Canary {rotation} soaking until")), "{dom}");
    assert!(dom.contains(&format!("SPIFFE IDs under spiffe://{TD}/ns/canary/")), "{dom}");
    assert!(dom.contains("rotation.canary_start"), "the audit event is listed");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let png = dir.join("operator-page-canary.png");
    let out = chromium(&["--window-size=1280,1500", &format!("--screenshot={}", png.display()), &url]);
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&png).expect("screenshot").starts_with(b"\x89PNG\r\n\x1a\n"));

    ca.cli(&["rotate", "rollback", "--reason", "page test"]).expect("rollback");
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom", &url]).stdout).to_string();
    assert!(dom.contains("data-state=\"rolled_back\""), "{dom}");
    assert!(dom.contains("by the operator: page test"), "the reason is shown: {dom}");
    drop(agents);
}
