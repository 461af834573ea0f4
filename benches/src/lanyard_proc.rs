//! Running the built `lanyard-ca` and `lanyard-agent` binaries from a bench: find them in the
//! bench's own profile, build them there first, start the server and read its banner.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // Best effort in Drop: the child may have exited already.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// `target/<profile>`: the bench runs from `target/<profile>/deps`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

/// Builds `lanyard-ca` and `lanyard-agent` in the bench's own profile, so that the processes
/// measured are the current code (`cargo bench -p benches` builds only this package's targets).
/// Env `LANYARD_BENCH_NO_BUILD=1` skips it.
pub fn build_binaries(dir: &Path) {
    if std::env::var_os("LANYARD_BENCH_NO_BUILD").is_some() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "issuer-api", "-p", "workload-agent", "--bin", "lanyard-ca", "--bin", "lanyard-agent"]);
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("bench: building lanyard-ca and lanyard-agent ({})", dir.display());
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build of lanyard-ca and lanyard-agent failed");
}

/// The path of binary `name` in `dir`, which must exist.
pub fn bin(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built (cargo build --release -p issuer-api -p workload-agent --bins)", p.display());
    p
}

/// Starts `lanyard-ca serve` and waits for its listening line: (child, HTTPS address).
pub fn start_lanyard(ca_bin: &Path, config: &Path, pass: &str, log: &Path) -> (Killed, SocketAddr) {
    let (child, addr, _) = start_lanyard_with_metrics(ca_bin, config, pass, log);
    (child, addr)
}

/// [`start_lanyard`], also returning the metrics listener's address when the config has one
/// (it is announced before the HTTPS one).
pub fn start_lanyard_with_metrics(
    ca_bin: &Path,
    config: &Path,
    pass: &str,
    log: &Path,
) -> (Killed, SocketAddr, Option<SocketAddr>) {
    let mut child = Command::new(ca_bin)
        .arg("--config")
        .arg(config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LANYARD_CA_PASSPHRASE", pass)
        .env("LANYARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start lanyard-ca");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut metrics = None;
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            child.kill().ok(); // it may have exited on its own
            panic!("lanyard-ca exited before listening: {}", std::fs::read_to_string(log).unwrap_or_default());
        };
        if let Some(m) = line.strip_prefix("lanyard-ca: metrics on http://").and_then(|a| a.strip_suffix("/metrics")) {
            metrics = m.parse().ok();
        }
        if let Some(a) = line.strip_prefix("lanyard-ca: listening on https://") {
            break a.parse().expect("listen address");
        }
    };
    // Keep draining stdout so the server never blocks on (or fails writing to) a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), addr, metrics)
}
