//! Small files the broker writes outside sled (the auth file, the TLS pair, compiled
//! plugins, markers), written so that a crash or a power cut leaves the old contents
//! or the new, never a torn mix, and so that a write that returned is on disk.
//!
//! A file's own `fsync` covers its bytes, not its name: creating, renaming or
//! removing an entry is durable only once its directory is synced too (the model of
//! a power cut in the kernel's documentation, and the one the power-cut harness in
//! `tests/src/disk/` enforces).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `contents` to `path` atomically and durably: into a temporary file in the
/// same directory, synced, renamed over `path`, and then the directory synced. After
/// a crash `path` holds the old contents or the new; once this returns, the new.
/// `mode` is the new file's permission bits.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent(path);
    create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".quiver-tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Creates an empty file at `path` if there is none, durably (file and name).
pub fn create_durably(path: &Path) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    fs::File::create(path)?.sync_all()?;
    sync_dir(parent(path))
}

/// `fs::create_dir_all`, with every directory it creates made durable in its parent.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.as_os_str().is_empty() || path.is_dir() {
        return Ok(());
    }
    create_dir_all(parent(path))?;
    match fs::create_dir(path) {
        Ok(()) => sync_dir(parent(path)),
        // Created meanwhile by someone else, who syncs it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_replace_whole_files_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file");
        write_atomically(&path, b"first", 0o600).unwrap();
        write_atomically(&path, b"second", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["file"], "no temporary file is left behind");
    }

    #[test]
    fn a_marker_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("marker");
        create_durably(&path).unwrap();
        fs::write(&path, b"kept").unwrap();
        create_durably(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"kept");
    }
}
