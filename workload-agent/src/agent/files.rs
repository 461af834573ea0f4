//! Credential files for services that read PEM from disk, and the reload that follows.
//!
//! Every file is replaced atomically (temporary file in the same directory, fsync, rename, fsync of
//! the directory), so a service reloading at any moment reads either the old or the new file,
//! never half of one. Key files are created 0600 from the start, never widened afterwards.
//!
//! Files are one more consumer of the seam ([`follow_seam`]), like the Workload API: whatever the
//! seam accepted (a new SVID, a new bundle, new CRLs) is written, and nothing the seam refused
//! ever reaches the disk. A failed write is counted and retried with backoff until it succeeds;
//! the in-process and Workload API consumers already have the new credentials meanwhile.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use tracing::warn;

use crate::agent::metrics::Metrics;
use crate::config::{Output, Reload};
use crate::credentials::{Svid, TrustBundle};
use crate::tls::CredentialSeam;

/// First pause after a failed write; doubled per further failure up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest pause between two attempts at a failing write.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Writes `data` to `path` atomically with `mode`.
///
/// The temporary file gets an unpredictable name and is created with `O_CREAT | O_EXCL`
/// (`create_new`), so a file or symlink planted in a shared output directory is never followed
/// or reused: a pre-created 0644 file would otherwise keep its mode and receive a private key.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let mut nonce = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| anyhow::anyhow!("no randomness for a temporary file name"))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(nonce)));
    let mut created = false;
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        created = true;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err()
        && created
        && let Err(e) = std::fs::remove_file(&tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %tmp.display(), error = %e, "could not remove a temporary file");
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// One PEM block (RFC 7468: LF, 64-character lines, trailing newline). `label` is a literal
/// RFC 7468 label (`CERTIFICATE`, `X509 CRL`, `PRIVATE KEY`), so encoding cannot fail.
fn pem(label: &'static str, der: &[u8]) -> String {
    // Errors are an invalid label or an input longer than memory: neither is possible here.
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).expect("PEM label is valid")
}

/// The chain as PEM, leaf first.
pub fn chain_pem(svid: &Svid) -> String {
    svid.chain.iter().map(|c| pem("CERTIFICATE", c.as_ref())).collect()
}

/// The roots as PEM.
pub fn bundle_pem(bundle: &TrustBundle) -> String {
    bundle.roots.iter().map(|c| pem("CERTIFICATE", c.as_ref())).collect()
}

/// CRLs as PEM `X509 CRL` blocks.
pub fn crls_pem(crls: &[rustls::pki_types::CertificateRevocationListDer<'_>]) -> String {
    crls.iter().map(|c| pem("X509 CRL", c.as_ref())).collect()
}

/// Writes the configured files. The key goes first and the certificate last, so a service that
/// watches the certificate file never pairs a new certificate with an old key.
pub fn write_outputs(out: &Output, svid: &Svid, bundle: &TrustBundle) -> anyhow::Result<()> {
    if let Some(p) = &out.bundle_file {
        write_atomic(p, bundle_pem(bundle).as_bytes(), 0o644)?;
    }
    if let Some(p) = &out.key_file {
        let mut key = pem("PRIVATE KEY", svid.key.secret_der());
        let r = write_atomic(p, key.as_bytes(), 0o600);
        zeroize_string(&mut key);
        r?;
    }
    if let Some(p) = &out.cert_file {
        write_atomic(p, chain_pem(svid).as_bytes(), 0o644)?;
    }
    Ok(())
}

/// What the files must show next: the credentials the seam published last.
#[derive(Default)]
struct Pending {
    /// The SVID and bundle files (key, chain, bundle) are behind the seam.
    credentials: bool,
    /// The CRL file is behind the seam.
    crls: bool,
}

/// Writes the configured files whenever the seam publishes, and reloads the service after the
/// credential files changed. Runs until the seam is dropped (never, in the agent).
///
/// Changes arriving together (a renewal publishes bundle and SVID at once) are coalesced into one
/// write and one reload. A failed write (disk full, a directory gone) is logged, counted in
/// `lanyard_agent_file_write_failures_total` and retried after 1 s, 2 s ... up to 60 s; a newer
/// publication replaces what was pending, so the files never go back to older credentials.
pub async fn follow_seam(seam: CredentialSeam, output: Output, reload_with: Reload, metrics: std::sync::Arc<Metrics>) {
    let mut svids = seam.svid_updates();
    let mut bundles = seam.bundle_updates();
    let mut crls = seam.crl_updates();
    let mut pending =
        Pending { credentials: svids.borrow().is_some(), crls: output.crl_file.is_some() && !crls.borrow().is_empty() };
    let mut failures: u32 = 0;
    loop {
        if !pending.credentials && !pending.crls {
            tokio::select! {
                r = svids.changed() => if r.is_err() { return } else { pending.credentials = true },
                r = bundles.changed() => if r.is_err() { return } else { pending.credentials = true },
                r = crls.changed() => if r.is_err() { return } else { pending.crls = output.crl_file.is_some() },
            }
            // Let a publication in progress finish (bundle first, then SVID) before writing.
            tokio::task::yield_now().await;
        }
        if svids.has_changed().unwrap_or(false) || bundles.has_changed().unwrap_or(false) {
            pending.credentials = true;
        }
        if crls.has_changed().unwrap_or(false) {
            pending.crls = output.crl_file.is_some();
        }
        let svid = svids.borrow_and_update().clone();
        let bundle = bundles.borrow_and_update().clone();
        let current_crls = crls.borrow_and_update().clone();
        let mut result = Ok(());
        if pending.credentials {
            match (&svid, &bundle) {
                (Some(svid), Some(bundle)) => match write_outputs(&output, svid, bundle) {
                    Ok(()) => {
                        pending.credentials = false;
                        if let Err(e) = reload(&reload_with).await {
                            warn!(error = %format!("{e:#}"), "reloading the service failed");
                        }
                    }
                    Err(e) => result = Err(e),
                },
                // A bundle before the first SVID: nothing to pair it with yet.
                _ => pending.credentials = false,
            }
        }
        if pending.crls && result.is_ok() {
            if let Some(p) = &output.crl_file {
                match write_atomic(p, crls_pem(&current_crls).as_bytes(), 0o644) {
                    Ok(()) => pending.crls = false,
                    Err(e) => result = Err(e),
                }
            } else {
                pending.crls = false;
            }
        }
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                metrics.file_write_failures.inc();
                let wait = RETRY_INITIAL.saturating_mul(1 << failures.min(6)).min(RETRY_MAX);
                failures = failures.saturating_add(1);
                warn!(error = %format!("{e:#}"), retry_in_s = wait.as_secs(), "writing credential files failed");
                // A newer publication ends the wait early: it is what must be written now.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    r = svids.changed() => if r.is_err() { return } else { pending.credentials = true },
                    r = bundles.changed() => if r.is_err() { return } else { pending.credentials = true },
                    r = crls.changed() => if r.is_err() { return } else { pending.crls = output.crl_file.is_some() },
                }
            }
        }
    }
}

fn zeroize_string(s: &mut String) {
    // Overwrite the PEM copy of the key before freeing it.
    let len = s.len();
    s.clear();
    s.extend(std::iter::repeat_n('\0', len));
    s.clear();
}

/// Parses `HUP`, `SIGHUP`, `hup`...
pub fn parse_signal(name: &str) -> anyhow::Result<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&full).map_err(|_| anyhow::anyhow!("unknown signal {name:?}"))
}

/// Tells the service to reload: a signal to its pid, or a command. Nothing configured: nothing done.
pub async fn reload(r: &Reload) -> anyhow::Result<()> {
    if let Some(sig) = &r.signal {
        let sig = parse_signal(sig)?;
        let pid = match (&r.pid, &r.pid_file) {
            (Some(p), _) => *p,
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading pid file {}", f.display()))?
                .trim()
                .parse()
                .with_context(|| format!("pid file {} does not hold a pid", f.display()))?,
            (None, None) => bail!("[reload] signal needs pid or pid_file"),
        };
        if pid <= 0 {
            bail!("refusing to signal pid {pid}");
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .with_context(|| format!("sending {sig} to pid {pid}"))?;
        return Ok(());
    }
    if let Some((prog, args)) = r.command.split_first() {
        let mut child = tokio::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting reload command {prog}"))?;
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .with_context(|| format!("reload command {prog} did not finish within 60s"))??;
        if !status.success() {
            bail!("reload command {prog} failed: {status}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pem_blocks_read_back() {
        let der: Vec<u8> = (0..=255u8).cycle().take(500).collect();
        let text = pem("X509 CRL", &der);
        assert!(text.starts_with("-----BEGIN X509 CRL-----\n") && text.ends_with("-----END X509 CRL-----\n"));
        assert!(!text.contains('\r'));
        let body: Vec<&str> = text.lines().skip(1).take_while(|l| !l.starts_with("-----")).collect();
        assert!(body.iter().rev().skip(1).all(|l| l.len() == 64) && body.iter().all(|l| l.len() <= 64));
        let chain = format!("{}{}", pem("CERTIFICATE", &der), pem("CERTIFICATE", &der[..10]));
        let read = crate::agent::cert::chain_from_pem(chain.as_bytes()).expect("chain");
        assert_eq!(read.iter().map(|c| c.as_ref().to_vec()).collect::<Vec<_>>(), vec![der.clone(), der[..10].to_vec()]);
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/key.pem");
        write_atomic(&p, b"one", 0o600).expect("write");
        write_atomic(&p, b"two", 0o600).expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().expect("dir")).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn planted_temporary_files_and_symlinks_are_neither_followed_nor_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key.pem");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").expect("victim");
        // What an attacker could pre-create under the old, predictable name.
        let planted = dir.path().join(format!(".key.pem.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
        for _ in 0..3 {
            write_atomic(&p, b"secret", 0o600).expect("write");
        }
        assert_eq!(std::fs::read(&victim).expect("read"), b"untouched");
        assert_eq!(std::fs::read(&p).expect("read"), b"secret");
        assert_eq!(std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777, 0o600);
        assert!(std::fs::symlink_metadata(&p).expect("meta").file_type().is_file(), "the key is a regular file");
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 3, "no temporary file left besides the planted one: {names:?}");
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("hup").expect("hup"), Signal::SIGHUP);
        assert_eq!(parse_signal("SIGUSR1").expect("usr1"), Signal::SIGUSR1);
        assert!(parse_signal("NOPE").is_err());
    }
}
