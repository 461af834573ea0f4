//! The SQLite store's two connections, driven synchronously through rusqlite on threads of their
//! own: the group-commit writer ([`super::writer`]) and the reader ([`super::reader`]). Opened
//! after the migrations have run.

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::CaError;

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    ReadOnly,
    ReadWrite,
}

/// The file path in a SQLite URL: `sqlite:///abs/path.db`, `sqlite://rel/path.db` or
/// `sqlite:path.db`, with an optional `?query` (ignored: the store sets its own options).
pub(super) fn path_of(url: &str) -> Result<String, CaError> {
    let rest = url.strip_prefix("sqlite:").ok_or_else(|| CaError::Config(format!("not a SQLite URL: {url}")))?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return Err(CaError::Config(format!(
            "the SQLite store needs a database file (in-memory databases are not supported): {url}"
        )));
    }
    Ok(path.to_owned())
}

/// Keeps the SQLite files private to the CA's user: creates the database file 0600 if it does
/// not exist yet (SQLite then creates `-wal` and `-shm` with the database file's mode), and
/// tightens the database, `-wal` and `-shm` files to 0600 where they are group or world
/// accessible (left so by an older version or a copy). Without a umask change (process-wide,
/// and unsafe to set from a library) this is the only way to be sure of the modes.
pub(super) fn secure_files(path: &str) -> Result<(), CaError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let db = std::path::Path::new(path);
    if !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(db)
            .map_err(CaError::io("create", db))?;
    }
    for f in [path.to_owned(), format!("{path}-wal"), format!("{path}-shm")] {
        let f = std::path::Path::new(&f);
        let Ok(meta) = std::fs::metadata(f) else { continue };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).map_err(CaError::io("chmod 600", f))?;
        }
    }
    Ok(())
}

/// Opens a connection: WAL, and synchronous=FULL so that a commit is on
/// disk when it returns.
pub(super) fn open(path: &str, access: Access) -> Result<Connection, CaError> {
    let mode = match access {
        Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        Access::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
    };
    let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(sqlite_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sqlite_err)?;
    let pragmas = match access {
        // The writer keeps its cache across its own commits: inserts at random serials touch
        // index pages all over a growing table, so it gets room for them (64 MiB) and reads the
        // file through a memory map (issuance bench: 66 % of the ceiling without, 70-74 % with).
        Access::ReadWrite => {
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY; PRAGMA mmap_size = 268435456;"
        }
        // The reader's cache is dropped whenever the writer has committed since its last
        // transaction, which under load is every time. No memory map: every checkpoint grows the
        // file, and the reader would unmap and remap it at its next transaction.
        Access::ReadOnly => "PRAGMA cache_size = -8192; PRAGMA temp_store = MEMORY;",
    };
    conn.execute_batch(pragmas).map_err(sqlite_err)?;
    // Every statement shape in use (a handful of row counts per kind) stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Maps rusqlite errors: anything that means "could not use the
/// database" (busy, locked, read-only, full, I/O, cannot open) is `StoreUnavailable`.
pub(super) fn sqlite_err(e: rusqlite::Error) -> CaError {
    let unavailable = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
        )
    );
    if unavailable { CaError::StoreUnavailable(e.to_string()) } else { CaError::Store(e.to_string()) }
}

#[cfg(test)]
mod tests {
    /// A SQLite error that means the database cannot be written (here SQLITE_READONLY, as a full
    /// or failing disk would give) is `StoreUnavailable`; a constraint violation is not.
    #[test]
    fn sqlite_errors_are_classified() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY); INSERT INTO t (k) VALUES (1);").expect("create");
        let dup = conn.execute("INSERT INTO t (k) VALUES (1)", []).expect_err("duplicate");
        assert!(matches!(super::sqlite_err(dup), crate::CaError::Store(_)));
        conn.execute_batch("PRAGMA query_only = 1").expect("pragma");
        let ro = conn.execute("INSERT INTO t (k) VALUES (2)", []).expect_err("read-only");
        let e = super::sqlite_err(ro);
        assert!(matches!(e, crate::CaError::StoreUnavailable(_)), "{e:?}");
    }

    #[test]
    fn paths_from_sqlx_urls() {
        assert_eq!(super::path_of("sqlite:///abs/l.db?mode=rwc").expect("path"), "/abs/l.db");
        assert_eq!(super::path_of("sqlite://rel/l.db").expect("path"), "rel/l.db");
        assert_eq!(super::path_of("sqlite:l.db").expect("path"), "l.db");
        assert!(super::path_of("sqlite::memory:").is_err());
        assert!(super::path_of("postgres://x/y").is_err());
    }
}
