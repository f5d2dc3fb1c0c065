//! Permissions on backstop's own state: the home, the catalog, the store
//! and the lock files. A path this user may not look at is an error that
//! says so, never "not there": an ordinary user pointed at root's home must
//! not be told that there are no backups.

use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{Access, AtFlags, CWD};

use crate::error::{Error, Result};

/// What backstop must be allowed to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read a file.
    Read,
    /// List a directory and open what is in it (read and search, `r-x`).
    List,
    /// Read and write a file (the catalog, a lock file).
    ReadWrite,
}

impl Need {
    /// The permission in words, as the error shows it.
    pub fn describe(self) -> &'static str {
        match self {
            Need::Read => "read permission on",
            Need::List => "read and search (r-x) permission on",
            Need::ReadWrite => "read and write permission on",
        }
    }

    fn mode(self) -> Access {
        match self {
            Need::Read => Access::READ_OK,
            Need::List => Access::READ_OK | Access::EXEC_OK,
            Need::ReadWrite => Access::READ_OK | Access::WRITE_OK,
        }
    }
}

/// The error for `path`, which this user may not use as `need` says.
pub fn denied(path: &Path, need: Need) -> Error {
    Error::Denied {
        path: path.to_path_buf(),
        need,
        owner: rustix::fs::stat(path).ok().map(|s| s.st_uid),
        uid: rustix::process::geteuid().as_raw(),
    }
}

/// Whether `path` exists; an error when this user cannot tell, because a
/// directory on the way may not be searched.
///
/// # Errors
///
/// [`Error::Denied`] naming the directory that hides `path`, or an I/O
/// error.
pub fn exists(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(denied(&hiding_dir(path), Need::List))
        }
        Err(e) => Err(Error::io("looking up", path, e)),
    }
}

/// Whether `path` exists, after checking that, if it does, this user has
/// `need` on it.
///
/// # Errors
///
/// [`Error::Denied`] when the path or a directory above it refuses this
/// user.
pub fn check(path: &Path, need: Need) -> Result<bool> {
    if !exists(path)? {
        return Ok(false);
    }
    match rustix::fs::accessat(CWD, path, need.mode(), AtFlags::EACCESS) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::ACCESS) | Err(rustix::io::Errno::PERM) => Err(denied(path, need)),
        Err(e) => Err(Error::io("checking access to", path, e.into())),
    }
}

/// Maps an error opening `path` to [`Error::Denied`] when it is a refused
/// permission, and to an I/O error naming `action` otherwise.
pub fn opening(action: &'static str, path: &Path, need: Need, err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::PermissionDenied {
        denied(path, need)
    } else {
        Error::io(action, path, err)
    }
}

/// The directory above `path` whose search permission this user lacks when
/// `path` cannot even be looked up: the topmost such one (those below it
/// fail only because of it).
fn hiding_dir(path: &Path) -> PathBuf {
    let mut dir = path.parent();
    let mut hiding = path.parent().unwrap_or(path).to_path_buf();
    while let Some(d) = dir {
        if rustix::fs::accessat(CWD, d, Access::EXEC_OK, AtFlags::EACCESS).is_err() {
            hiding = d.to_path_buf();
        }
        dir = d.parent();
    }
    hiding
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_path_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!check(&dir.path().join("catalog.db"), Need::ReadWrite).unwrap());
        assert!(check(dir.path(), Need::List).unwrap());
    }

    #[test]
    fn each_need_says_which_permission() {
        assert!(Need::List.describe().contains("r-x"));
        assert!(Need::ReadWrite.describe().contains("write"));
        assert!(Need::Read.describe().starts_with("read permission"));
    }
}
