//! The error type of the core, and how each error is classified.
//!
//! Every module has its own typed error; [`Error`] gathers them so that an
//! operation can fail with any of them. The CLI never inspects messages: it
//! asks [`Error::kind`] for the exit code and [`Error::hint`] for the next step
//! to suggest.

use std::io;
use std::path::{Path, PathBuf};

use crate::access::Need;
use crate::archive::ArchiveError;
use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::encryption::EncryptionError;
use crate::lock::LockError;
use crate::store::StoreError;

/// What kind of failure an error is; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The command line or a config file is wrong (exit code 2).
    Usage,
    /// An archive failed a checksum, is corrupt, truncated, or hostile (exit code 4).
    Integrity,
    /// Another process holds the lock (exit code 6).
    LockHeld,
    /// The user interrupted the operation (exit code 130).
    Interrupted,
    /// A restore failed and the previous state was put back (exit code 5).
    RolledBack,
    /// Anything else: I/O errors, full disks, missing permissions (exit code 1).
    Failed,
}

/// Any error the core can return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Encryption(#[from] EncryptionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An I/O operation on a named path failed.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// This user may not use one of backstop's own paths (the home, the
    /// catalog, the store, a lock file) as it must.
    #[error("permission denied: backstop needs {} {} (running as uid {uid})", need.describe(), path.display())]
    Denied {
        path: PathBuf,
        need: Need,
        /// The owner of the path, when it can be seen.
        owner: Option<u32>,
        uid: u32,
    },
    /// The request itself is wrong (a path that does not exist, flags that
    /// contradict each other).
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// A backup or verification target was not found.
    #[error("{message}")]
    NotFound {
        message: String,
        hint: Option<String>,
    },
    /// The operation was refused before it changed anything: not enough
    /// space, no permission to write the destination.
    #[error("{message}")]
    Refused {
        message: String,
        hint: Option<String>,
    },
    /// An external command (a dump, a service control, a health check,
    /// podman) failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was being done, e.g. "the stop command of service gitea".
        what: String,
        /// The exit status and the end of its error output.
        detail: String,
        hint: Option<String>,
    },
    /// A configured instance's name holds backups of another directory or
    /// machine only: backing it up would mix them, and prune would remove
    /// one's backups for the other's.
    #[error("instance {name} holds backups of {theirs}, not of its root {ours}")]
    NameTaken {
        name: String,
        ours: String,
        theirs: String,
    },
    /// A plain restore of a backup made by another major version of the
    /// application than the one the instance reports now.
    #[error(transparent)]
    MajorVersion(Box<crate::version::Mismatch>),
    /// The operation was interrupted by a signal.
    #[error("interrupted")]
    Interrupted,
    /// A restore failed after it began changing things; everything it had
    /// changed was put back.
    #[error("the restore failed and was rolled back: the previous state is back")]
    RolledBack {
        #[source]
        cause: Box<Error>,
    },
}

impl Error {
    /// Builds an [`Error::Io`] for `action` on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Usage`] with an optional hint.
    pub fn usage(message: impl Into<String>, hint: Option<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint,
        }
    }

    /// The classification that decides the exit code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::Usage { .. } | Error::NameTaken { .. } => ErrorKind::Usage,
            Error::Catalog(e) => e.kind(),
            Error::Lock(e) => e.kind(),
            Error::Archive(e) => e.kind(),
            Error::Encryption(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Io { source, .. } if source.kind() == io::ErrorKind::Interrupted => {
                ErrorKind::Interrupted
            }
            Error::Io { .. } => ErrorKind::Failed,
            Error::NotFound { .. }
            | Error::Refused { .. }
            | Error::Command { .. }
            | Error::Denied { .. }
            | Error::MajorVersion(_) => ErrorKind::Failed,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::RolledBack { .. } => ErrorKind::RolledBack,
        }
    }

    /// What the user can do next, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Config(e) => e.hint(),
            Error::Catalog(e) => e.hint(),
            Error::Lock(e) => e.hint(),
            Error::Archive(e) => e.hint(),
            Error::Encryption(e) => e.hint(),
            Error::Store(e) => e.hint(),
            Error::Io { source, path, .. } => io_hint(source, path),
            Error::Usage { hint, .. }
            | Error::NotFound { hint, .. }
            | Error::Refused { hint, .. }
            | Error::Command { hint, .. } => hint.clone(),
            Error::NameTaken { name, theirs, .. } => Some(format!(
                "give this instance another name in the config (the backups under {name} stay \
                 theirs), or set its root back to {} if the application only moved",
                theirs.split(" on ").next().unwrap_or(theirs)
            )),
            Error::Denied { path, owner, .. } => Some(denied_hint(path, *owner)),
            Error::MajorVersion(m) => Some(format!(
                "to go back across an upgrade, `backstop rollback` restores {}'s \
                 pre-upgrade backup and activates its version; to restore this backup \
                 anyway, add --force",
                m.instance
            )),
            Error::Interrupted => None,
            Error::RolledBack { cause } => cause.hint(),
        }
    }
}

/// The next step after [`Error::Denied`]: the right user, or a home of
/// one's own.
fn denied_hint(path: &Path, owner: Option<u32>) -> String {
    let who = match owner {
        Some(0) | None => "root".to_string(),
        Some(uid) => format!("its owner (uid {uid}) or root"),
    };
    format!(
        "run backstop as {who}, who may use {}, or give this user a home of its own \
         with --home DIR",
        path.display()
    )
}

/// Hints for the I/O errors users meet most: full disks and permissions.
pub(crate) fn io_hint(err: &io::Error, path: &Path) -> Option<String> {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Some(format!(
            "the filesystem holding {} is full: free some space or choose another \
             destination (--output DIR, or `store` in the config)",
            path.display()
        )),
        Some(libc::EACCES) | Some(libc::EPERM) => Some(format!(
            "check the permissions of {} (run as a user who may write there, or choose \
             another destination)",
            path.display()
        )),
        Some(libc::ELOOP) => Some(format!(
            "a component of {} is a symlink, and backstop never writes, moves or removes through \
             a symlink inside a destination: move it aside, or restore elsewhere with --dest DIR",
            path.display()
        )),
        Some(libc::EROFS) => Some(format!(
            "{} is on a read-only filesystem: choose another destination",
            path.display()
        )),
        _ => None,
    }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path and the action to a bare `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::io(action, path, source))
    }
}
