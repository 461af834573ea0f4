//! Measuring a server process from the outside, for the hostile-load tests: its CPU time, its
//! open descriptors, and everything it writes on stderr.

use std::io::Read;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the parenthesized command name: state is the 1st, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

/// Descriptors the process has open now.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Resident memory of the process, bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Everything a child writes on stderr, collected by a thread (so the pipe never fills and
/// blocks the server, and its volume can be measured).
#[derive(Clone, Default, Debug)]
pub struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    /// Starts collecting the child's (piped) stderr.
    pub fn collect(child: &mut Child) -> Log {
        let log = Log::default();
        let mut stderr = child.stderr.take().expect("stderr piped");
        let sink = log.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("log").extend_from_slice(&buf[..n]);
            }
        });
        log
    }

    /// Bytes collected so far.
    pub fn len(&self) -> usize {
        self.0.lock().expect("log").len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What was collected so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

/// Kills the child on drop.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // Best effort in Drop: the child may have exited already.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// The value of a metric line (`name{labels}`) in a Prometheus page.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from metrics:\n{page}"))
}
