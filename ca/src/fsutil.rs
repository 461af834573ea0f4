//! Atomic file writes: a reader sees either the old file or the complete new one, never half of it,
//! and a crash right after the call still finds the new content on disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::CaError;

/// Writes `bytes` to `path` with permission `mode` (e.g. `0o600` for keys): write a temporary file in
/// the same directory (created with `mode`, so the content is never readable by others, even
/// briefly), fsync it, rename it over the target, then fsync the directory so the rename survives.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| CaError::Config(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(CaError::io("create", &tmp))?;
        f.write_all(bytes).map_err(CaError::io("write", &tmp))?;
        f.sync_all().map_err(CaError::io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(CaError::io("rename into", path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(CaError::io("fsync directory", dir))
    })();
    if result.is_err()
        && let Err(e) = fs::remove_file(&tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %tmp.display(), error = %e, "could not remove a temporary file");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", 0o600).expect("first write");
        write_atomic(&p, b"two", 0o600).expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("nope").join("k.pem");
        let err = write_atomic(&p, b"x", 0o600).expect_err("must fail");
        assert!(matches!(err, CaError::Io { .. }), "{err}");
    }
}
