//! `lanyard-ca`: create, serve and inspect a Lanyard CA.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use issuer_api::config::{Config, LogFormat};
use issuer_api::ops;

/// Lanyard: an internal certificate authority for short-lived mTLS identities.
#[derive(Debug, Parser)]
#[command(name = "lanyard-ca", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "LANYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Database URL, sqlite:// or postgres:// (overrides `database_url`).
    #[arg(long, global = true, env = "LANYARD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// File with the CA passphrase (else LANYARD_CA_PASSPHRASE).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new root and intermediate, or import existing ones, into the data directory.
    Init {
        /// Key algorithm: p256 (default), p384 or ed25519.
        #[arg(long)]
        key_algorithm: Option<ca::KeyAlgorithm>,
        /// Import this root certificate (PEM) instead of creating one.
        #[arg(long)]
        import_root: Option<PathBuf>,
        /// The imported root's key (PEM; needed only to create a new intermediate).
        #[arg(long)]
        import_root_key: Option<PathBuf>,
        /// Import this intermediate certificate (PEM), signed by the root.
        #[arg(long)]
        import_intermediate: Option<PathBuf>,
        /// The imported intermediate's key (PEM).
        #[arg(long)]
        import_intermediate_key: Option<PathBuf>,
    },
    /// Serve HTTPS (loopback by default). On an empty data directory, first initialize a development CA.
    Serve {
        /// Listen address (overrides `listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Show the issuer journal and certificate counts.
    Status,
    /// External account binding keys for ACME (RFC 8555 section 7.3.4).
    #[command(subcommand)]
    Eab(EabCommand),
    /// Rotate now (normally automatic): `rotate intermediate` prepares a successor if there is none
    /// and activates it; running servers pick it up within `[rotation] check_interval`.
    Rotate {
        /// What to rotate.
        #[arg(value_enum)]
        what: RotateWhat,
        /// The intermediate is suspect: activate a fresh successor now, revoke the old one and ask
        /// every holder of a certificate it signed to renew (renewalInfo), spread over --window.
        #[arg(long)]
        emergency: bool,
        /// `rotate root`: bring this root certificate (PEM) instead of creating one.
        #[arg(long, requires = "import_root_key")]
        import_root: Option<PathBuf>,
        /// `rotate root`: the imported root's key (PEM, plain or encrypted with the CA passphrase).
        #[arg(long, requires = "import_root")]
        import_root_key: Option<PathBuf>,
        /// How long the fleet gets to renew after an emergency rotation (jittered across it).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        window: std::time::Duration,
        /// `--emergency`: publish the revocation of the suspect intermediate at once. By default it
        /// is published once every affected workload has renewed, or when --window ends (plus
        /// --settle), so that no peer refuses an honest workload that has not renewed yet.
        #[arg(long)]
        revoke_now: bool,
        /// `--emergency`: margin between the last renewal (or the end of --window) and publishing
        /// the revocation, for renewed certificates to be installed and handshakes in flight.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
        settle: std::time::Duration,
        /// `rotate intermediate`: canary the successor first; it signs only for SPIFFE IDs under
        /// this prefix for --soak, then becomes active unless the fleet's reports roll it back.
        #[arg(long)]
        canary_prefix: Option<String>,
        /// `rotate intermediate`: canary the successor on this share of the workloads (0 to 1).
        #[arg(long)]
        canary_fraction: Option<f64>,
        /// The canary's soak ([rotation.canary] soak by default).
        #[arg(long, value_parser = humantime::parse_duration)]
        soak: Option<std::time::Duration>,
        /// `rotate rollback`: why, for the audit log.
        #[arg(long, default_value = "no reason given")]
        reason: String,
    },
    /// Revoke a certificate by serial (hex): renewals with it are refused from now on.
    Revoke {
        /// Serial number, hex, as shown by `status` or in the certificate.
        serial: String,
        /// RFC 5280 reason code (0 unspecified, 1 keyCompromise, 4 superseded, 5 cessationOfOperation...).
        #[arg(long, default_value_t = 0)]
        reason: i32,
    },
    /// Join tokens: one-time secrets a workload presents to enroll (challenge join-token-01).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: list or export events, verify their hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List audit events, oldest first (the newest --limit of those that match).
    List {
        /// Events at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z).
        #[arg(long, value_parser = ops::parse_rfc3339)]
        since: Option<time::OffsetDateTime>,
        /// Events at or before this time (RFC 3339).
        #[arg(long, value_parser = ops::parse_rfc3339)]
        until: Option<time::OffsetDateTime>,
        /// Only this actor (operator, ca, acme:<account>, workload:<spiffe id>, ...).
        #[arg(long)]
        actor: Option<String>,
        /// Only this kind of event (the action: eab.create, certificate.revoke, issuer.activate, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only the events of this rotation (emergency or planned).
        #[arg(long)]
        rotation: Option<String>,
        /// Only chained events after this position (resume an export).
        #[arg(long)]
        after_seq: Option<i64>,
        /// At most this many (the newest).
        #[arg(long)]
        limit: Option<i64>,
        /// table for people, jsonl (one JSON object per line) for a SIEM.
        #[arg(long, value_enum, default_value_t = ops::AuditFormat::Table)]
        format: ops::AuditFormat,
    },
    /// Verify the hash chain: exit status 0 when intact, 1 naming the first broken event when not.
    Verify,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RotateWhat {
    /// The signing intermediate (needs the root key file and the passphrase).
    Intermediate,
    /// The root: a new root and an intermediate under it are prepared, the two roots certify
    /// each other, and both roots are published in the trust bundle; the new pair takes over after
    /// `[rotation] root_overlap`.
    Root,
    /// Undo an intermediate rotation: a soaking canary is rolled back (its successor retired), or
    /// else the intermediate the active one replaced takes over again (unexpired, unrevoked, same
    /// root). Holders of the discarded intermediate's certificates are asked to renew within `[rotation.canary] renew_spread`.
    Rollback,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token bound to one SPIFFE ID (or a path prefix); prints the secret once.
    Create {
        /// The SPIFFE ID the token admits, e.g. spiffe://example.org/ns/web/sa/api.
        #[arg(long)]
        spiffe_id: String,
        /// Admit any SPIFFE ID below this one's path, not only the ID itself.
        #[arg(long)]
        prefix: bool,
        /// Lifetime (e.g. 10m, 1h); default `[workload] join_token_ttl`.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
}

#[derive(Debug, Subcommand)]
enum EabCommand {
    /// Create a key: prints its id and HMAC key (base64url) for the ACME client, once.
    Create {
        /// DNS suffix the bound account may order (repeat for several); none: any name the CA allows.
        #[arg(long = "allow-suffix")]
        allow_suffixes: Vec<String>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{}", ca::QUIET_LOG_DIRECTIVES)));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(d) = cli.data_dir {
        cfg.data_dir = d;
    }
    if let Some(u) = cli.database_url {
        cfg.database_url = Some(u);
    }
    if let Some(p) = cli.passphrase_file {
        cfg.passphrase_file = Some(p);
    }
    if let Some(f) = cli.log_format {
        cfg.log_format = f;
    }
    init_logging(cfg.log_format);
    match cli.command {
        Command::Init { key_algorithm, import_root, import_root_key, import_intermediate, import_intermediate_key } => {
            if let Some(a) = key_algorithm {
                cfg.init.key_algorithm = a;
            }
            cfg.validate()?;
            let import = ops::read_import(
                import_root.as_deref(),
                import_root_key.as_deref(),
                import_intermediate.as_deref(),
                import_intermediate_key.as_deref(),
            )?;
            let (pass, _) = ops::passphrase(&cfg)?
                .ok_or(ca::CaError::MissingPassphrase { env: ca::PASSPHRASE_ENV.into() })
                .context("init needs the passphrase that will protect the CA keys")?;
            let admin = ops::open_admin(&cfg).await?;
            let material = ops::init(&cfg, &admin, &pass, import.as_ref()).await?;
            ops::announce(&cfg, &material);
            Ok(())
        }
        Command::Serve { listen } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let shutdown = async {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            };
            issuer_api::run_server(cfg, shutdown, |addr| println!("lanyard-ca: listening on https://{addr}")).await
        }
        Command::Eab(EabCommand::Create { allow_suffixes }) => {
            let admin = ops::open_admin(&cfg).await?;
            let (kid, key) = ops::create_eab_key(&admin, allow_suffixes).await?;
            println!("kid:      {kid}");
            println!("hmac key: {key}");
            println!("(lego: --eab --kid {kid} --hmac {key}; uacme: -e {kid}:{key})");
            Ok(())
        }
        Command::Rotate { what: RotateWhat::Intermediate, import_root: Some(_), .. } => {
            anyhow::bail!("--import-root applies to `rotate root`")
        }
        Command::Rotate { what: RotateWhat::Intermediate, emergency: true, window, revoke_now, settle, .. } => {
            let (pass, _) = ops::passphrase(&cfg)?
                .ok_or(ca::CaError::MissingPassphrase { env: ca::PASSPHRASE_ENV.into() })
                .context("rotation needs the CA passphrase")?;
            let admin = ops::open_admin(&cfg).await?;
            let keys = ca::rotation::RotationKeys { pass, root_key_path: cfg.root_key_path(), init: cfg.init.clone() };
            // Running replicas load the new issuer within a second; renewals start after two.
            let delay = issuer_api::rotation::REFRESH * 2;
            let enforcement = if revoke_now {
                ca::rotation::Enforcement::Now
            } else {
                ca::rotation::Enforcement::AfterRenewal { settle }
            };
            let r = admin.emergency_rotate(&keys, delay, window, enforcement).await?;
            println!(
                "emergency rotation {}: {} is active; {} is revoked; {} certificates asked to renew between {} and {}",
                r.rotation, r.active, r.revoked, r.affected, r.window.0, r.window.1
            );
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if r.enforce_at <= now {
                println!("revocation published: peers refuse {} at their next revocation refresh", r.revoked);
            } else {
                println!(
                    "revocation of {} published at {} ({} s from now), or {} s after the last affected workload renewed",
                    r.revoked,
                    r.enforce_at,
                    r.enforce_at - now,
                    settle.as_secs().max(1)
                );
            }
            Ok(())
        }
        Command::Rotate {
            what: RotateWhat::Root | RotateWhat::Rollback, canary_prefix, canary_fraction, soak, ..
        } if canary_prefix.is_some() || canary_fraction.is_some() || soak.is_some() => {
            anyhow::bail!("--canary-prefix, --canary-fraction and --soak apply to `rotate intermediate`")
        }
        Command::Rotate { what: RotateWhat::Root, emergency, import_root, import_root_key, .. } => {
            if emergency {
                anyhow::bail!(
                    "--emergency applies to intermediates; a compromised root needs a new trust anchor everywhere"
                );
            }
            let (pass, _) = ops::passphrase(&cfg)?
                .ok_or(ca::CaError::MissingPassphrase { env: ca::PASSPHRASE_ENV.into() })
                .context("rotation needs the CA passphrase")?;
            let admin = ops::open_admin(&cfg).await?;
            let keys = ca::rotation::RotationKeys { pass, root_key_path: cfg.root_key_path(), init: cfg.init.clone() };
            let import = match (import_root, import_root_key) {
                (Some(c), Some(k)) => Some((
                    std::fs::read_to_string(&c).with_context(|| format!("reading {}", c.display()))?,
                    zeroize::Zeroizing::new(
                        std::fs::read_to_string(&k).with_context(|| format!("reading {}", k.display()))?,
                    ),
                )),
                _ => None,
            };
            let (root, intermediate) =
                admin.prepare_root(&keys, import.as_ref().map(|(c, k)| (c.as_str(), k.as_str()))).await?;
            println!(
                "root {} prepared (sha256 {}) with intermediate {}, cross-certified with the current root; both \
                 roots are in the trust bundle now and the new ones take over in {}",
                root.id,
                root.fingerprint,
                intermediate.id,
                humantime::format_duration(cfg.rotation.root_overlap)
            );
            Ok(())
        }
        Command::Rotate { what: RotateWhat::Rollback, reason, .. } => {
            let admin = ops::open_admin(&cfg).await?;
            match admin.rollback(cfg.rotation.canary.renew_spread, &reason).await? {
                ca::rotation::canary::CanaryDecision::RolledBack {
                    rotation, successor, previous, affected, ..
                } => {
                    println!(
                        "rotation {rotation} rolled back: {previous} signs for everyone, {successor} is retired;                          {affected} certificates asked to renew within {}",
                        humantime::format_duration(cfg.rotation.canary.renew_spread)
                    );
                    Ok(())
                }
                other => anyhow::bail!("nothing rolled back: {other:?}"),
            }
        }
        Command::Rotate {
            what: RotateWhat::Intermediate,
            emergency: false,
            canary_prefix,
            canary_fraction,
            soak,
            ..
        } if canary_prefix.is_some() || canary_fraction.is_some() => {
            let (pass, _) = ops::passphrase(&cfg)?
                .ok_or(ca::CaError::MissingPassphrase { env: ca::PASSPHRASE_ENV.into() })
                .context("rotation needs the CA passphrase")?;
            let admin = ops::open_admin(&cfg).await?;
            let keys = ca::rotation::RotationKeys { pass, root_key_path: cfg.root_key_path(), init: cfg.init.clone() };
            let spec = ca::rotation::canary::CanarySpec {
                prefix: canary_prefix,
                fraction: canary_fraction.unwrap_or(0.0),
                soak: soak.unwrap_or(cfg.rotation.canary.soak),
            };
            let (c, asked) = admin.start_canary(&keys, &spec, cfg.rotation.canary.renew_spread).await?;
            println!(
                "canary {}: {} signs for the canaries until {} ({} s); {} signs for everyone else; {asked} canary \
                 certificates asked to renew. Running servers judge it from the fleet's reports: `lanyard-ca rotate \
                 rollback` ends it by hand",
                c.rotation,
                c.successor,
                c.soak_until,
                c.soak_until - c.started_at,
                c.previous
            );
            Ok(())
        }
        Command::Rotate { what: RotateWhat::Intermediate, emergency: false, .. } => {
            let (pass, _) = ops::passphrase(&cfg)?
                .ok_or(ca::CaError::MissingPassphrase { env: ca::PASSPHRASE_ENV.into() })
                .context("rotation needs the CA passphrase")?;
            let admin = ops::open_admin(&cfg).await?;
            let keys = ca::rotation::RotationKeys { pass, root_key_path: cfg.root_key_path(), init: cfg.init.clone() };
            let (active, retired) = admin.rotate_intermediate_now(&keys).await?;
            println!("intermediate {active} is active; {retired} is retired (trusted until its certificates expire)");
            Ok(())
        }
        Command::Revoke { serial, reason } => {
            if !matches!(reason, 0..=6 | 8..=10) {
                anyhow::bail!("--reason {reason} is not an RFC 5280 CRLReason code (0-6, 8-10)");
            }
            let serial = serial.to_ascii_lowercase().replace(':', "");
            let admin = ops::open_admin(&cfg).await?;
            if admin.certificate(&serial).await?.is_none() {
                anyhow::bail!("no certificate with serial {serial} was issued by this CA");
            }
            // The certificate and everything renewed from it, with the audit events, at once.
            let done = admin.revoke(&serial, reason, time::OffsetDateTime::now_utc(), "operator").await?;
            if done.revoked {
                println!("revoked {serial}");
            } else {
                println!("{serial} was already revoked");
            }
            for s in &done.successors {
                println!("revoked {s} (renewed from {serial})");
            }
            Ok(())
        }
        Command::Token(TokenCommand::Create { spiffe_id, prefix, ttl }) => {
            let ttl = ttl.unwrap_or(cfg.workload.join_token_ttl);
            if ttl > cfg.workload.join_token_max_ttl || ttl.is_zero() {
                anyhow::bail!(
                    "--ttl must be between 1s and {} ([workload] join_token_max_ttl)",
                    humantime::format_duration(cfg.workload.join_token_max_ttl)
                );
            }
            let admin = ops::open_admin(&cfg).await?;
            let (secret, token) =
                issuer_api::enroll::create_join_token(&admin, &cfg.policy.trust_domain, &spiffe_id, prefix, ttl)
                    .await?;
            let expires = time::OffsetDateTime::from_unix_timestamp(token.expires_at)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_default();
            let scope = if prefix { format!("{}/*", token.spiffe_id) } else { token.spiffe_id.to_string() };
            eprintln!("join token for {scope}, single use, expires {expires}");
            println!("{secret}");
            Ok(())
        }
        Command::Audit(AuditCommand::List { since, until, actor, kind, rotation, after_seq, limit, format }) => {
            let admin = ops::open_admin(&cfg).await?;
            let filter =
                ca::store::audit_log::AuditFilter { since, until, actor, action: kind, rotation, after_seq, limit };
            let events = admin.audit_events(&filter).await?;
            let mut out = std::io::stdout().lock();
            ops::write_audit(&mut out, &events, format).context("writing the events")?;
            Ok(())
        }
        Command::Audit(AuditCommand::Verify) => {
            let admin = ops::open_admin(&cfg).await?;
            let report = admin.audit_verify().await?;
            let (text, intact) = ops::describe_verify(&report);
            if intact {
                println!("{text}");
                Ok(())
            } else {
                anyhow::bail!("{text}")
            }
        }
        Command::Status => {
            let admin = ops::open_admin(&cfg).await?;
            print!("{}", ops::status(&admin, &cfg.rotation).await?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lanyard-ca: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanyard-ca: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
