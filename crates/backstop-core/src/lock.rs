//! Instance locks: one writer per instance at a time; and the store lock:
//! no archive is read or written while `migrate` moves the store.
//!
//! A lock is a kernel file lock (`flock`) on `<home>/locks/<instance>.lock`;
//! the store lock is one on the home directory itself (see [`StoreLock`]).
//! The kernel releases it when the holder exits, however it exits, so there
//! are never stale locks to clean up. The holder writes its PID, host,
//! command and start time into the file so that a second invocation can say
//! who holds the lock. (File locks are not reliable on NFS; keep the home on
//! a local filesystem.)

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::access::{self, Need};
use crate::config::Layout;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::create_private_dir_all;
use crate::progress::Cancel;

/// Who holds a lock, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub started_at: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PID {} on {} (`{}`, since {})",
            self.pid, self.host, self.command, self.started_at
        )
    }
}

/// A lock that could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("instance {instance} is locked by {}", holder.as_ref().map_or_else(|| "another process".to_string(), Holder::to_string))]
    Held {
        instance: String,
        holder: Option<Holder>,
        /// How long this process waited, if it did.
        waited: Option<Duration>,
    },
    #[error("{}", moving_message(moving.as_ref()))]
    StoreMoving {
        /// From where to where, since when: the migration's journal, once
        /// it has written one.
        moving: Option<(PathBuf, PathBuf, String)>,
        waited: Option<Duration>,
    },
    #[error("the store of {} is in use by other operations", home.display())]
    StoreInUse {
        home: PathBuf,
        waited: Option<Duration>,
    },
}

impl LockError {
    pub(crate) fn kind(&self) -> ErrorKind {
        ErrorKind::LockHeld
    }

    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            LockError::StoreMoving { .. } => Some(
                "run it again when `backstop migrate` is done, or with --wait to queue \
                 behind it"
                    .into(),
            ),
            LockError::StoreInUse { .. } => Some(
                "wait for the backups, restores and verifications running on this home to \
                 finish, or run again with --wait to queue behind them"
                    .into(),
            ),
            LockError::Held {
                waited: Some(_), ..
            } => Some(
                "the other operation is still running: try again later or wait longer \
                 (--wait=DURATION)"
                    .into(),
            ),
            LockError::Held { waited: None, .. } => Some(
                "wait for the other operation to finish, or run again with --wait to queue \
                 behind it"
                    .into(),
            ),
        }
    }
}

/// A held instance lock; released on drop (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
    instance: String,
}

impl InstanceLock {
    /// The lock file of `instance`.
    pub fn path(locks_dir: &Path, instance: &str) -> PathBuf {
        locks_dir.join(format!("{instance}.lock"))
    }

    /// Takes the lock of `instance` for `command`. With `wait`, waits up to
    /// that long (`Duration::MAX`: forever) for the holder to finish.
    ///
    /// # Errors
    ///
    /// Fails with [`LockError::Held`] when another process holds the lock, on
    /// I/O errors, and when `cancel` is set while waiting.
    pub fn acquire(
        locks_dir: &Path,
        instance: &str,
        command: &str,
        wait: Option<Duration>,
        cancel: &Cancel,
    ) -> Result<InstanceLock> {
        create_private_dir_all(locks_dir)?;
        let path = InstanceLock::path(locks_dir, instance);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| access::opening("opening lock file", &path, Need::ReadWrite, e))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let waited = started.elapsed();
                    if wait.is_none_or(|w| waited >= w) {
                        return Err(LockError::Held {
                            instance: instance.to_string(),
                            holder: read_holder(&mut file),
                            waited: wait.map(|_| waited),
                        }
                        .into());
                    }
                    cancel.check()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(TryLockError::Error(e)) => return Err(Error::io("locking", &path, e)),
            }
        }
        let holder = Holder {
            pid: std::process::id(),
            host: hostname(),
            command: command.to_string(),
            started_at: crate::time::now_rfc3339(),
        };
        let text = serde_json::to_string(&holder).expect("holder serialises");
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .map_err(|e| Error::io("writing lock file", &path, e))?;
        Ok(InstanceLock {
            _file: file,
            path,
            instance: instance.to_string(),
        })
    }

    /// Takes the lock only if it is free right now.
    ///
    /// # Errors
    ///
    /// Fails on I/O errors; a held lock is `Ok(None)`.
    pub fn try_acquire(
        locks_dir: &Path,
        instance: &str,
        command: &str,
    ) -> Result<Option<InstanceLock>> {
        match InstanceLock::acquire(locks_dir, instance, command, None, &Cancel::default()) {
            Ok(lock) => Ok(Some(lock)),
            Err(Error::Lock(LockError::Held { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The instance this lock is for.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The lock file.
    pub fn file_path(&self) -> &Path {
        &self.path
    }
}

/// The store lock: an `flock` on the home directory itself, which exists
/// whenever there is a store to move and needs no file of its own (so a
/// read-only command creates nothing). Every command that reads or writes
/// archives holds it shared for its whole run; `migrate` holds it
/// exclusively. Taking it resolves the store again: a command that waited
/// behind a migration uses the store the migration moved to, as the moves
/// recorded in `<home>/store-moves.json` say, never the old one.
///
/// Take it before any instance lock, so that no two commands wait for
/// each other.
#[derive(Debug)]
pub struct StoreLock {
    _dir: Option<File>,
    layout: Layout,
}

impl StoreLock {
    /// Takes the store lock shared, for a command that reads or writes
    /// archives. A home that does not exist yet has no store to move: the
    /// lock is then nothing.
    ///
    /// # Errors
    ///
    /// Fails with [`LockError::StoreMoving`] while a migration runs (after
    /// `wait`), and on I/O errors.
    pub fn shared(layout: &Layout, wait: Option<Duration>, cancel: &Cancel) -> Result<StoreLock> {
        let dir = match File::open(&layout.home) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StoreLock {
                    _dir: None,
                    layout: layout.clone(),
                });
            }
            Err(e) => return Err(access::opening("opening", &layout.home, Need::List, e)),
        };
        StoreLock::held(take(dir, false, layout, wait, cancel)?, layout)
    }

    /// Takes the store lock exclusively, for `migrate`.
    ///
    /// # Errors
    ///
    /// Fails with [`LockError::StoreInUse`] while other commands hold it
    /// (after `wait`), and on I/O errors.
    pub fn exclusive(
        layout: &Layout,
        wait: Option<Duration>,
        cancel: &Cancel,
    ) -> Result<StoreLock> {
        create_private_dir_all(&layout.home)?;
        let dir = File::open(&layout.home).map_err(|e| Error::io("opening", &layout.home, e))?;
        StoreLock::held(take(dir, true, layout, wait, cancel)?, layout)
    }

    /// The lock held on `dir`, with the store resolved again under it.
    fn held(dir: File, layout: &Layout) -> Result<StoreLock> {
        Ok(StoreLock {
            _dir: Some(dir),
            layout: Layout {
                home: layout.home.clone(),
                store: followed(&layout.home, &layout.store)?,
            },
        })
    }

    /// The layout with the store as it is now that the lock is held.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Records, under the exclusive lock, that the store moved from `from`
    /// to `to`: commands that were started with `from` and waited use `to`.
    ///
    /// # Errors
    ///
    /// Fails when the record cannot be written.
    pub fn record_move(&self, from: &Path, to: &Path) -> Result<()> {
        let mut moves = read_moves(&self.layout.home)?;
        moves.retain(|m| m.from != from);
        moves.push(Move {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            at: crate::time::now_rfc3339(),
        });
        let text = serde_json::to_vec_pretty(&moves).expect("moves serialise");
        crate::fsutil::atomic_write(&moves_path(&self.layout.home), &text, 0o600)
    }
}

/// One recorded move of the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Move {
    from: PathBuf,
    to: PathBuf,
    at: String,
}

fn moves_path(home: &Path) -> PathBuf {
    home.join("store-moves.json")
}

fn read_moves(home: &Path) -> Result<Vec<Move>> {
    let path = moves_path(home);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| {
            Error::usage(
                format!("{} is damaged: {e}", path.display()),
                Some(
                    "it lists where the store moved; remove it if the config names the right store"
                        .into(),
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("reading", &path, e)),
    }
}

/// Where `store` is now: followed along the recorded moves.
fn followed(home: &Path, store: &Path) -> Result<PathBuf> {
    let moves = read_moves(home)?;
    let mut now = store.to_path_buf();
    // Each move is followed once at most: a cycle (moved back and forth)
    // ends where the last move points.
    for _ in 0..moves.len() {
        match moves.iter().rev().find(|m| m.from == now) {
            Some(m) => now = m.to.clone(),
            None => break,
        }
    }
    Ok(now)
}

/// Locks `dir` (shared or exclusive), waiting up to `wait`.
fn take(
    dir: File,
    exclusive: bool,
    layout: &Layout,
    wait: Option<Duration>,
    cancel: &Cancel,
) -> Result<File> {
    let started = Instant::now();
    loop {
        let tried = if exclusive {
            dir.try_lock()
        } else {
            dir.try_lock_shared()
        };
        match tried {
            Ok(()) => return Ok(dir),
            Err(TryLockError::WouldBlock) => {
                let waited = started.elapsed();
                if wait.is_none_or(|w| waited >= w) {
                    let waited = wait.map(|_| waited);
                    return Err(busy(exclusive, layout, waited).into());
                }
                cancel.check()?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("locking", &layout.home, e)),
        }
    }
}

fn busy(exclusive: bool, layout: &Layout, waited: Option<Duration>) -> LockError {
    if exclusive {
        return LockError::StoreInUse {
            home: layout.home.clone(),
            waited,
        };
    }
    LockError::StoreMoving {
        moving: crate::ops::migrate::pending_since(&layout.home),
        waited,
    }
}

fn moving_message(moving: Option<&(PathBuf, PathBuf, String)>) -> String {
    match moving {
        Some((from, to, since)) => format!(
            "the store is being moved from {} to {} (`backstop migrate`, since {since})",
            from.display(),
            to.display()
        ),
        None => "the store is being moved (`backstop migrate` is starting)".into(),
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// This machine's host name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::default();
        let first = InstanceLock::acquire(dir.path(), "app", "backup app", None, &cancel).unwrap();
        let err =
            InstanceLock::acquire(dir.path(), "app", "restore app", None, &cancel).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LockHeld);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("backup app"), "{msg}");
        // Another instance is independent.
        InstanceLock::acquire(dir.path(), "other", "backup other", None, &cancel).unwrap();
        drop(first);
        InstanceLock::acquire(dir.path(), "app", "restore app", None, &cancel).unwrap();
    }

    #[test]
    fn waiting_gets_the_lock_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::default();
        let first = InstanceLock::acquire(dir.path(), "app", "backup", None, &cancel).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let started = Instant::now();
        InstanceLock::acquire(
            dir.path(),
            "app",
            "second",
            Some(Duration::from_secs(10)),
            &cancel,
        )
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        release.join().unwrap();
    }

    #[test]
    fn the_store_lock_keeps_commands_out_of_a_migration_and_follows_the_move() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::default();
        let layout = Layout {
            home: dir.path().join("home"),
            store: dir.path().join("old"),
        };
        let shared = StoreLock::shared(&layout, None, &cancel).unwrap();
        assert!(shared._dir.is_none(), "no home yet: nothing to lock");
        drop(shared);
        let moving = StoreLock::exclusive(&layout, None, &cancel).unwrap();
        let err = StoreLock::shared(&layout, None, &cancel).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LockHeld);
        assert!(err.to_string().contains("being moved"), "{err}");
        moving
            .record_move(&layout.store, &dir.path().join("new"))
            .unwrap();
        drop(moving);
        let reader = StoreLock::shared(&layout, None, &cancel).unwrap();
        assert_eq!(reader.layout().store, dir.path().join("new"));
        // A migration waits for the commands that hold it shared.
        let err =
            StoreLock::exclusive(&layout, Some(Duration::from_millis(200)), &cancel).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(reader);
        StoreLock::exclusive(&layout, None, &cancel).unwrap();
    }

    #[test]
    fn waiting_gives_up_after_the_duration() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Cancel::default();
        let _first = InstanceLock::acquire(dir.path(), "app", "backup", None, &cancel).unwrap();
        let err = InstanceLock::acquire(
            dir.path(),
            "app",
            "x",
            Some(Duration::from_millis(200)),
            &cancel,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LockHeld);
    }
}
