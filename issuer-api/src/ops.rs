//! Operator commands: create or import the CA, open it for serving, and report its state.

use std::path::Path;

use anyhow::{Context, bail};
use ca::{Admin, AuditEvent, CaMaterial, ImportedCa, IssuerRecord, Outcome, Passphrase, TrustBundle};
use tracing::{info, warn};

use crate::config::Config;

/// Where the passphrase came from; a development CA's generated passphrase earns a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassphraseSource {
    /// `passphrase_file` / `--passphrase-file`.
    File,
    /// `LANYARD_CA_PASSPHRASE`.
    Env,
    /// `<data_dir>/dev-passphrase`, written by the development auto-init.
    DevFile,
}

/// Finds the operator's passphrase: the configured file, else the environment, else the
/// development passphrase file of an auto-initialized CA.
pub fn passphrase(cfg: &Config) -> anyhow::Result<Option<(Passphrase, PassphraseSource)>> {
    if let Some(p) = &cfg.passphrase_file {
        return Ok(Some((Passphrase::from_file(p)?, PassphraseSource::File)));
    }
    if let Some(p) = Passphrase::from_env()? {
        return Ok(Some((p, PassphraseSource::Env)));
    }
    let dev = cfg.dev_passphrase_path();
    if dev.exists() {
        return Ok(Some((Passphrase::from_file(&dev)?, PassphraseSource::DevFile)));
    }
    Ok(None)
}

/// Creates the data directory (0700), refuses one that others can get into, and opens the
/// database for the operator (its SQLite files are kept 0600).
pub async fn open_admin(cfg: &Config) -> anyhow::Result<Admin> {
    create_private_dir(&cfg.data_dir)?;
    let url = cfg.database_url()?;
    Admin::open(&url).await.with_context(|| format!("opening the database {}", ca::store::redact_url(&url)))
}

/// The data directory holds the encrypted keys, the development passphrase and the database, so
/// only its owner may read, write or enter it. A new one is created 0700; an existing one with any
/// group or other permission is refused rather than silently changed: the operator should know
/// the files may already have been read.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("reading data directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("data directory {} is not a directory", dir.display());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "data directory {} has mode {mode:04o}: it holds the CA's keys and database and must be \
             accessible by its owner only; fix with `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Creates (or imports) the CA into an empty database. Writes `root.pem` and, if the root key is at
/// hand, the encrypted `root.key.pem` (0600) for the operator to move offline.
pub async fn init(
    cfg: &Config,
    admin: &Admin,
    pass: &Passphrase,
    import: Option<&ImportedCa>,
) -> anyhow::Result<CaMaterial> {
    if !admin.issuers().await?.is_empty() {
        bail!(
            "this CA is already initialized ({}); refusing to create another root",
            ca::store::redact_url(&cfg.database_url()?)
        );
    }
    let material = match import {
        Some(imp) => ca::import_ca(imp, &cfg.init, pass)?,
        None => ca::create_ca(&cfg.init, pass)?,
    };
    // Files first, then the journal: if the insert fails, a rerun simply overwrites the files.
    ca::write_atomic(&cfg.root_cert_path(), material.root.cert_pem.as_bytes(), 0o644)?;
    if let Some(k) = &material.root_key_pem_enc {
        ca::write_atomic(&cfg.root_key_path(), k.as_bytes(), 0o600)?;
    }
    let how = if import.is_some() { "imported" } else { "created" };
    let mut audit = vec![
        AuditEvent::now(
            "operator",
            "ca.init",
            &material.root.id,
            Outcome::Success,
            format!("root {how}: {}", material.root.subject),
        ),
        AuditEvent::now(
            "operator",
            "issuer.activate",
            &material.intermediate.id,
            Outcome::Success,
            format!("intermediate {how}: {}", material.intermediate.subject),
        ),
    ];
    if import.is_none() || import.is_some_and(|i| i.intermediate_cert_pem.is_none()) {
        audit.push(AuditEvent::now(
            "operator",
            "key.sign",
            &material.root.id,
            Outcome::Success,
            format!("root key signed intermediate {}", material.intermediate.id),
        ));
    }
    admin.insert_issuers(&[&material.root, &material.intermediate], &audit).await?;
    info!(root = %material.root.id, intermediate = %material.intermediate.id, "CA {how}");
    Ok(material)
}

/// Reads the import files named on the command line.
pub fn read_import(
    root: Option<&Path>,
    root_key: Option<&Path>,
    intermediate: Option<&Path>,
    intermediate_key: Option<&Path>,
) -> anyhow::Result<Option<ImportedCa>> {
    let read = |p: Option<&Path>| -> anyhow::Result<Option<String>> {
        p.map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))).transpose()
    };
    let Some(root_cert_pem) = read(root)? else {
        if root_key.is_some() || intermediate.is_some() || intermediate_key.is_some() {
            bail!("--import-root is required when importing");
        }
        return Ok(None);
    };
    Ok(Some(ImportedCa {
        root_cert_pem,
        root_key_pem: read(root_key)?,
        intermediate_cert_pem: read(intermediate)?,
        intermediate_key_pem: read(intermediate_key)?,
    }))
}

/// Human-readable journal and counters for `lanyard-ca status`.
pub async fn status(admin: &Admin, rotation: &ca::rotation::RotationPolicy) -> anyhow::Result<String> {
    use std::fmt::Write;
    let journal = admin.issuers().await?;
    if journal.is_empty() {
        return Ok("not initialized: run `lanyard-ca init` (or `lanyard-ca serve` for a development CA)\n".into());
    }
    let mut out = String::new();
    let now = time::OffsetDateTime::now_utc();
    writeln!(out, "{:<17} {:<13} {:<9} {:<22} {:<10} subject", "id", "kind", "state", "not after", "remaining")?;
    for r in &journal {
        writeln!(
            out,
            "{:<17} {:<13} {:<9} {:<22} {:<10} {}",
            r.id,
            r.kind.as_str(),
            r.state.as_str(),
            r.not_after.format(&time::format_description::well_known::Rfc3339)?,
            remaining(r, now),
            r.subject
        )?;
    }
    let bundle = TrustBundle::from_journal(&journal);
    let (intent, issued, abandoned) = admin.certificate_counts().await?;
    writeln!(out, "\nroot fingerprint (sha256): {}", bundle.primary_fingerprint().unwrap_or("-"))?;
    writeln!(out, "certificates: {issued} issued, {intent} in flight, {abandoned} abandoned")?;
    let mut last = std::collections::HashMap::new();
    for r in journal.iter().filter(|r| r.state == ca::IssuerState::Retired) {
        last.insert(r.id.clone(), admin.last_signed_not_after(&r.id).await?);
    }
    let plan = ca::rotation::plan(&journal, &|id| last.get(id).copied().flatten(), rotation);
    let auto = if rotation.enabled { "automatic" } else { "disabled; manual: lanyard-ca rotate intermediate" };
    writeln!(out, "\nrotation ({auto}):")?;
    for line in ca::rotation::describe(&plan, &journal) {
        writeln!(out, "  {line}")?;
    }
    let canaries = admin.canaries().await?;
    if !canaries.is_empty() {
        writeln!(out, "\ncanaries (newest first):")?;
    }
    for c in canaries.iter().take(5) {
        let who = match (&c.prefix, c.fraction_ppm) {
            (Some(p), 0) => format!("under {p}"),
            (Some(p), n) => format!("under {p} + {:.2} %", n as f64 / 10_000.0),
            (None, n) => format!("{:.2} % of workloads", n as f64 / 10_000.0),
        };
        match c.state {
            ca::store::canary::CanaryState::Soaking => writeln!(
                out,
                "  {}: soaking, {} signs for canaries ({who}) for {} s more; {} signs for the rest",
                c.rotation,
                c.successor,
                (c.soak_until - now.unix_timestamp()).max(0),
                c.previous
            )?,
            state => writeln!(
                out,
                "  {}: {} {} (previous {}): {}",
                c.rotation,
                c.successor,
                state.as_str(),
                c.previous,
                c.reason.as_deref().unwrap_or("")
            )?,
        }
    }
    if let Some(c) = ca::rotation::canary::holding_after_rollback(&canaries, &rotation.canary, now.unix_timestamp()) {
        writeln!(
            out,
            "  scheduled rotation holds after rollback {} until {}",
            c.rotation,
            c.decided_at.unwrap_or(0).saturating_add(ca::units::secs(rotation.canary.retry_after))
        )?;
    }
    let emergencies = admin.emergencies().await?;
    if !emergencies.is_empty() {
        writeln!(out, "\nemergency rotations:")?;
    }
    let now_s = now.unix_timestamp();
    for e in &emergencies {
        let outstanding = admin.emergency_outstanding(&e.issuer_id, now_s).await?;
        let revocation = match e.enforce_at {
            Some(t) if t > now_s => {
                format!("revocation pending: published in {} s or when the fleet has renewed", t - now_s)
            }
            _ => "revocation in force".to_owned(),
        };
        writeln!(
            out,
            "  {}: {} revoked; {} certificates affected, {outstanding} not renewed yet; {revocation}",
            e.id, e.issuer_id, e.affected
        )?;
    }
    Ok(out)
}

fn remaining(r: &IssuerRecord, now: time::OffsetDateTime) -> String {
    let d = r.not_after - now;
    if d.is_negative() {
        "expired".into()
    } else if d.whole_days() > 0 {
        format!("{}d", d.whole_days())
    } else {
        format!("{}h{}m", d.whole_hours(), d.whole_minutes() % 60)
    }
}

/// Prints how to trust this CA; used after init and after the development auto-init.
pub fn announce(cfg: &Config, material: &CaMaterial) {
    println!(
        "root certificate:   {}",
        std::path::absolute(cfg.root_cert_path()).unwrap_or(cfg.root_cert_path()).display()
    );
    println!("root fingerprint:   sha256:{}", material.root.fingerprint);
    if material.root_key_pem_enc.is_some() {
        println!(
            "root key:           {} (encrypted; move it offline, the server does not need it)",
            cfg.root_key_path().display()
        );
    }
    println!("intermediate:       {}", material.intermediate.subject);
}

/// Warns about the development passphrase.
pub fn warn_dev_passphrase(cfg: &Config) {
    warn!(
        file = %cfg.dev_passphrase_path().display(),
        "DEVELOPMENT CA: its keys are encrypted with a generated passphrase stored next to them; \
         use `lanyard-ca init` with LANYARD_CA_PASSPHRASE or --passphrase-file for anything real"
    );
}

/// Creates an ACME external account binding key; returns (kid, base64url HMAC key).
pub async fn create_eab_key(admin: &Admin, allowed_suffixes: Vec<String>) -> anyhow::Result<(String, String)> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    for s in &allowed_suffixes {
        ca::check_dns_name(&format!("x.{}", s.trim_start_matches('.')))
            .with_context(|| format!("--allow-suffix {s}"))?;
    }
    let rng = ring::rand::SystemRandom::new();
    let (mut kid, mut key) = ([0u8; 12], [0u8; 32]);
    rng.fill(&mut kid).map_err(|_| anyhow::anyhow!("system RNG failed"))?;
    rng.fill(&mut key).map_err(|_| anyhow::anyhow!("system RNG failed"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (kid, key) = (b64.encode(kid), b64.encode(key));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let suffixes: Vec<String> =
        allowed_suffixes.iter().map(|s| s.trim_start_matches('.').to_ascii_lowercase()).collect();
    let audit =
        AuditEvent::now("operator", "eab.create", &kid, Outcome::Success, format!("allowed_suffixes={suffixes:?}"));
    let eab = ca::ra::EabKey { kid: kid.clone(), hmac_key: key.clone(), allowed_suffixes: suffixes, account_id: None };
    // The key and its audit event commit together.
    admin.create_eab_key(&eab, now, &audit).await?;
    Ok((kid, key))
}

/// How `lanyard-ca audit list` writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line (seq, id, at, actor, action, target, outcome, detail,
    /// prev_digest, digest) for a SIEM.
    Jsonl,
}

/// Parses an RFC 3339 time (`--since`, `--until`).
pub fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z): {e}"))
}

/// Writes audit events as a table or as JSON lines.
pub fn write_audit(
    out: &mut impl std::io::Write,
    events: &[ca::store::audit_log::AuditRecord],
    format: AuditFormat,
) -> anyhow::Result<()> {
    match format {
        AuditFormat::Jsonl => {
            for e in events {
                serde_json::to_writer(&mut *out, e)?;
                writeln!(out)?;
            }
        }
        AuditFormat::Table => {
            writeln!(
                out,
                "{:>6}  {:<20}  {:<22}  {:<24}  {:<8}  TARGET / DETAIL",
                "SEQ", "AT", "ACTOR", "KIND", "OUTCOME"
            )?;
            for e in events {
                let at = e.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                let seq = e.seq.map_or_else(|| "-".to_owned(), |s| s.to_string());
                writeln!(
                    out,
                    "{seq:>6}  {at:<20}  {:<22}  {:<24}  {:<8}  {} {}",
                    e.actor, e.action, e.outcome, e.target, e.detail
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// What `lanyard-ca audit verify` says, and whether the chain is intact.
pub fn describe_verify(r: &ca::store::audit_log::VerifyReport) -> (String, bool) {
    let before = if r.unchained > 0 {
        format!("; {} older events were written before the chain started and are not covered", r.unchained)
    } else {
        String::new()
    };
    match &r.first_break {
        None => (format!("audit chain intact: {} events checked, head at {}{before}", r.checked, r.head_seq), true),
        Some(b) => {
            let at = b.seq.map_or_else(|| "an event outside the chain".to_owned(), |s| format!("seq {s}"));
            (
                format!(
                    "audit chain BROKEN at {at}: {} ({} events before it are intact; head at {}){before}",
                    b.reason, r.checked, r.head_seq
                ),
                false,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::create_private_dir;

    #[test]
    fn data_dir_is_created_0700_and_a_shared_one_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fresh = tmp.path().join("a/data");
        create_private_dir(&fresh).expect("create");
        assert_eq!(std::fs::metadata(&fresh).expect("meta").permissions().mode() & 0o777, 0o700);
        create_private_dir(&fresh).expect("an existing private directory is fine");

        for mode in [0o750, 0o705, 0o720, 0o755] {
            std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = create_private_dir(&fresh).expect_err("shared").to_string();
            let path = fresh.display().to_string();
            assert!(err.contains(&path), "{err}");
            assert!(err.contains(&format!("{mode:04o}")), "{err}");
            assert!(err.contains(&format!("chmod 700 {path}")), "{err}");
        }
    }
}
