//! Keeps the data directory private to the account that runs chatd.
//!
//! The database holds every message and every password hash, so nobody but its owner may read
//! it. sled creates its files with the process umask, which an operator's shell or a service
//! manager may set loosely (0022, even 0000), so chatd does not rely on it.
//!
//! Invariants:
//! - A data directory chatd creates, or one it finds without a database, is made mode 0700
//!   whatever the umask.
//! - A data directory that already holds a database but is accessible to group or others is
//!   never opened: chatd refuses, naming the directory and the command that fixes it, because
//!   tightening it silently would hide that the data may already have been read.
//! - Inside a database directory, directories are 0700 and files 0600 once it is opened.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode bits that give anyone but the owner access.
const OTHERS: u32 = 0o077;
const PRIVATE_DIR: u32 = 0o700;
const PRIVATE_FILE: u32 = 0o600;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Creating it, or reading or changing its mode, failed.
    #[error("cannot make the data directory {path} private: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It holds a database and other users can reach it.
    #[error("the data directory {path} holds a database but other users can access it (mode {mode:04o}): they may read messages and password hashes; make it private with `chmod -R go-rwx {path}` and start again")]
    Exposed {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `data_dir` (mode 0700) if it is missing, makes it 0700 if it holds no database
/// (`db` inside) yet, and refuses one that holds a database but is open to other users.
pub fn prepare_data_dir(data_dir: &Path, db: &Path) -> Result<(), DataDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(data_dir)
        .map_err(io_error(data_dir))?;
    let mode = std::fs::metadata(data_dir)
        .map_err(io_error(data_dir))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & OTHERS == 0 {
        return Ok(());
    }
    if db.exists() {
        return Err(DataDirError::Exposed {
            path: data_dir.to_path_buf(),
            mode,
        });
    }
    // Also covers a directory created just now under a umask that removed the owner's bits.
    set_mode(data_dir, PRIVATE_DIR)
}

/// Makes every directory under `dir` (itself included) 0700 and every file 0600.
pub(crate) fn restrict_tree(dir: &Path) -> Result<(), DataDirError> {
    set_mode(dir, PRIVATE_DIR)?;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error(&path))?;
        if kind.is_dir() {
            restrict_tree(&path)?;
        } else if kind.is_file() {
            set_mode(&path, PRIVATE_FILE)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DataDirError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_existing_directory_without_a_database_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o777).unwrap();
        prepare_data_dir(&dir, &dir.join("db")).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn an_exposed_directory_with_a_database_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        set_mode(&dir, 0o750).unwrap();
        let err = prepare_data_dir(&dir, &dir.join("db")).unwrap_err();
        assert!(
            matches!(err, DataDirError::Exposed { mode: 0o750, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod -R go-rwx"), "{err}");
        assert_eq!(mode(&dir), 0o750);
    }

    #[test]
    fn a_tree_is_restricted_to_its_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("conf"), b"x").unwrap();
        std::fs::write(dir.join("blobs/1"), b"x").unwrap();
        set_mode(&dir.join("conf"), 0o666).unwrap();
        set_mode(&dir.join("blobs"), 0o777).unwrap();
        restrict_tree(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("blobs")), 0o700);
        assert_eq!(mode(&dir.join("conf")), 0o600);
        assert_eq!(mode(&dir.join("blobs/1")), 0o600);
    }
}
