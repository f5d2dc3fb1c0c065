//! The catalog: an SQLite index of every backup attempt and every restore.
//!
//! It is an index, not the truth: each archive describes itself, so the
//! catalog can be checked against the store and rebuilt from it. It is opened
//! in WAL mode with a busy timeout, so concurrent invocations (different
//! instances backing up at once, a `list` during a backup) simply wait for
//! each other's short transactions. Commits are fully synchronous: a row
//! marked available must survive a power cut.
//!
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] holds
//! one step per version and is only ever appended to.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::archive::{BackupKind, Codec, Description};
use crate::error::ErrorKind;

/// A problem with the catalog database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("catalog {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalog {} is not a backstop catalog or is damaged", path.display())]
    Corrupt { path: PathBuf },
    /// The file opens, but SQLite's own check (`PRAGMA quick_check`) finds
    /// damage in it.
    #[error("catalog {} is damaged: {problem}", path.display())]
    Damaged { path: PathBuf, problem: String },
    #[error(
        "catalog {} has schema version {found}; this backstop knows up to {known}",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

impl CatalogError {
    /// Whether the catalog file itself is damaged (rather than busy or
    /// unreadable): `reconcile --apply` rebuilds it.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            CatalogError::Corrupt { .. } | CatalogError::Damaged { .. }
        )
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            // Damaged data, like a corrupt archive: exit 4.
            CatalogError::Corrupt { .. } | CatalogError::Damaged { .. } => ErrorKind::Integrity,
            _ => ErrorKind::Failed,
        }
    }

    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            CatalogError::Sqlite { .. } => None,
            CatalogError::Corrupt { path } | CatalogError::Damaged { path, .. } => Some(format!(
                "`backstop reconcile --apply` moves {} aside and rebuilds it from the archives, \
                 which describe themselves; meanwhile `backstop restore FILE` restores an \
                 archive file directly",
                path.display()
            )),
            CatalogError::TooNew { .. } => Some("upgrade backstop to use this catalog".into()),
        }
    }
}

type CResult<T> = std::result::Result<T, CatalogError>;

/// Schema steps; step `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // Version 1: backups and restores.
    r#"
    CREATE TABLE backups (
        id               TEXT PRIMARY KEY,
        instance         TEXT NOT NULL,
        origin           TEXT NOT NULL,
        host             TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        finished_at      TEXT,
        kind             TEXT NOT NULL CHECK (kind IN ('manual', 'automatic')),
        reason           TEXT NOT NULL,
        message          TEXT,
        labels           TEXT NOT NULL DEFAULT '{}',
        app_version      TEXT,
        upgraded_to      TEXT,
        profile          TEXT,
        location         TEXT,
        size             INTEGER,
        entries          INTEGER,
        files            INTEGER,
        bytes            INTEGER,
        compression      TEXT NOT NULL,
        level            INTEGER,
        sha256           TEXT,
        status           TEXT NOT NULL
                         CHECK (status IN ('creating', 'available', 'failed', 'missing', 'corrupt')),
        error            TEXT,
        warnings         INTEGER NOT NULL DEFAULT 0,
        verified_at      TEXT,
        verify_ok        INTEGER,
        verify_error     TEXT,
        pinned           INTEGER NOT NULL DEFAULT 0,
        created_by       TEXT NOT NULL,
        last_restored_at TEXT,
        last_restored_to TEXT,
        last_restored_by TEXT
    );
    CREATE INDEX backups_by_instance ON backups (instance, created_at);
    CREATE INDEX backups_by_location ON backups (location);
    CREATE TABLE restores (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        backup_id       TEXT NOT NULL,
        started_at      TEXT NOT NULL,
        finished_at     TEXT,
        destination     TEXT NOT NULL,
        mode            TEXT NOT NULL,
        user            TEXT NOT NULL,
        host            TEXT NOT NULL,
        outcome         TEXT NOT NULL,
        safety_backup   TEXT,
        error           TEXT
    );
    CREATE INDEX restores_by_backup ON restores (backup_id, started_at);
    "#,
    // 2: guarded commands.
    r#"
    CREATE TABLE guards (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        instance        TEXT NOT NULL,
        started_at      TEXT NOT NULL,
        finished_at     TEXT,
        command         TEXT NOT NULL,
        backup_id       TEXT,
        no_backup       INTEGER NOT NULL,
        exit_code       INTEGER,
        outcome         TEXT NOT NULL,
        detail          TEXT
    );
    CREATE INDEX guards_by_backup ON guards (backup_id);
    "#,
    // 3: whether the archive is an age stream (encrypted backups).
    r#"
    ALTER TABLE backups ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: incremental chains: the backup each builds on, its full backup,
    // and its place in the chain (0 for a full backup).
    r#"
    ALTER TABLE backups ADD COLUMN parent_id TEXT;
    ALTER TABLE backups ADD COLUMN base_id TEXT;
    ALTER TABLE backups ADD COLUMN chain_position INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX backups_by_parent ON backups (parent_id);
    "#,
    // 5: further copies of a backup's archive, one per store (the first
    // is `backups.location`).
    r#"
    CREATE TABLE copies (
        backup_id   TEXT NOT NULL,
        store       TEXT NOT NULL,
        location    TEXT NOT NULL,
        copied_at   TEXT NOT NULL,
        PRIMARY KEY (backup_id, store)
    );
    "#,
    // 6: the SHA-256 of the frame table that ends the archive, which a
    // partial read trusts through it.
    r#"
    ALTER TABLE backups ADD COLUMN frames_sha256 TEXT;
    "#,
];

/// A further copy of a backup's archive, in another store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyRecord {
    /// The store's name (`local` for the home's own).
    pub store: String,
    /// The archive there, as [`BackupRecord::location`] names one.
    pub location: String,
    pub copied_at: String,
}

/// The state of a backup attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being written right now (or its writer died; see
    /// [`Catalog::fail_interrupted`]).
    Creating,
    /// Complete, flushed, with its sidecar.
    Available,
    /// The attempt failed; `error` says why. No archive exists.
    Failed,
    /// The archive is no longer where the catalog says.
    Missing,
    /// The archive failed verification.
    Corrupt,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Available => "available",
            Status::Failed => "failed",
            Status::Missing => "missing",
            Status::Corrupt => "corrupt",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "creating" => Status::Creating,
            "available" => Status::Available,
            "missing" => Status::Missing,
            "corrupt" => Status::Corrupt,
            _ => Status::Failed,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where some backups of an instance come from: one `(instance, host,
/// origin)` the catalog's rows hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub instance: String,
    pub host: String,
    pub origin: String,
}

/// One backup attempt as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRecord {
    pub id: String,
    pub instance: String,
    /// The instance root the data came from.
    pub origin: String,
    pub host: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    #[serde(flatten)]
    pub about: Description,
    /// The archive file.
    pub location: Option<String>,
    /// Bytes of the archive file.
    pub size: Option<u64>,
    pub entries: Option<u64>,
    pub files: Option<u64>,
    /// Bytes of file content inside.
    pub bytes: Option<u64>,
    pub compression: Codec,
    pub level: Option<i32>,
    /// Whether the archive is encrypted (an age stream around it).
    pub encrypted: bool,
    pub sha256: Option<String>,
    /// The SHA-256 of the frame table at the archive's end, when it has one
    /// (see docs/format.md): what a restore of some sources from a bucket
    /// trusts to fetch only their frames.
    pub frames_sha256: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    /// Files that vanished, changed or were unreadable during the backup.
    pub warnings: u64,
    pub verified_at: Option<String>,
    pub verify_ok: Option<bool>,
    pub verify_error: Option<String>,
    pub pinned: bool,
    pub created_by: String,
    pub last_restored_at: Option<String>,
    pub last_restored_to: Option<String>,
    pub last_restored_by: Option<String>,
    /// For an incremental: the backup it stores the changes since.
    pub parent: Option<String>,
    /// For an incremental: the full backup its chain starts with.
    pub base: Option<String>,
    /// 0 for a full backup, 1 for the first incremental after it…
    pub chain_position: u32,
    /// Bytes of every archive a restore of it reads: its own and its
    /// chain's (filled in by [`Catalog::fill_chain_sizes`]; `None` when a
    /// link is unknown).
    pub chain_size: Option<u64>,
}

impl BackupRecord {
    /// `full` or `incremental`.
    pub fn chain_kind(&self) -> &'static str {
        if self.parent.is_some() {
            "incremental"
        } else {
            "full"
        }
    }
}

/// One guarded command as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardRecord {
    pub id: i64,
    pub instance: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// The command as it would be typed.
    pub command: String,
    /// The backup taken before it (none with `--no-backup`, or when the
    /// backup failed and the command was refused).
    pub backup_id: Option<String>,
    pub no_backup: bool,
    pub exit_code: Option<i32>,
    /// `running`, `succeeded`, `failed`, `rolled-back`, `rollback-failed`,
    /// `refused` (the backup failed, the command did not run).
    pub outcome: String,
    pub detail: Option<String>,
}

/// One restore as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreRecord {
    pub id: i64,
    pub backup_id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub destination: String,
    pub mode: String,
    pub user: String,
    pub host: String,
    pub outcome: String,
    pub safety_backup: Option<String>,
    pub error: Option<String>,
}

/// What is known when a backup attempt starts.
#[derive(Debug, Clone)]
pub struct NewBackup<'a> {
    pub instance: &'a str,
    pub origin: &'a str,
    pub host: &'a str,
    pub created_at: &'a str,
    pub about: &'a Description,
    pub compression: Codec,
    pub level: Option<i32>,
    pub encrypted: bool,
    pub created_by: &'a str,
    /// For an incremental: what it is built on.
    pub chain: Option<&'a crate::archive::format::ChainLinks>,
}

/// What is known when a backup attempt succeeds.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    pub finished_at: &'a str,
    pub location: &'a str,
    pub size: u64,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    pub sha256: &'a str,
    pub frames_sha256: Option<&'a str>,
    pub warnings: u64,
}

/// What is known when a restore starts.
#[derive(Debug, Clone)]
pub struct NewRestore<'a> {
    pub backup_id: &'a str,
    pub started_at: &'a str,
    pub destination: &'a str,
    pub mode: &'a str,
    pub user: &'a str,
    pub host: &'a str,
    pub safety_backup: Option<&'a str>,
}

/// Which rows [`Catalog::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub instance: Option<String>,
    pub reason: Option<String>,
    pub status: Option<Status>,
    pub version: Option<String>,
    pub kind: Option<BackupKind>,
    /// At most this many rows, newest first.
    pub limit: Option<usize>,
}

impl ListFilter {
    /// Whether the filter leaves out some rows by what they are (a limit
    /// only shortens the list): an empty result then means nothing matched,
    /// not that there are no backups.
    pub fn narrows(&self) -> bool {
        self.instance.is_some()
            || self.reason.is_some()
            || self.status.is_some()
            || self.version.is_some()
            || self.kind.is_some()
    }
}

/// An open catalog.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

const COLUMNS: &str = "id, instance, origin, host, created_at, finished_at, kind, reason, message, \
    labels, app_version, upgraded_to, profile, location, size, entries, files, bytes, compression, \
    level, sha256, status, error, warnings, verified_at, verify_ok, verify_error, pinned, created_by, \
    last_restored_at, last_restored_to, last_restored_by, encrypted, parent_id, base_id, \
    chain_position, frames_sha256";

/// Runs `f` again while SQLite answers busy without waiting: switching a new
/// catalog to WAL needs it alone, and two processes opening it at once can
/// each hold the shared lock the other must wait out, a deadlock SQLite
/// breaks by failing one at once instead of calling the busy handler.
/// Gives up after about a minute, as the busy timeout does.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut waited = Duration::ZERO;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && waited < Duration::from_secs(60) =>
            {
                let pause = Duration::from_millis(20);
                std::thread::sleep(pause);
                waited += pause;
            }
            other => return other,
        }
    }
}

impl Catalog {
    /// Opens (creating if needed, with mode 0600) and migrates the catalog at
    /// `path`. Its directory must exist.
    ///
    /// # Errors
    ///
    /// Fails when the file is not an SQLite database, is from a newer
    /// backstop, or cannot be opened.
    pub fn open(path: &Path) -> CResult<Catalog> {
        let sql = |source| CatalogError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            // Created by hand so that the mode is 0600 from the start; SQLite
            // gives its WAL and shared-memory files the same mode.
            let _ = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(sql)?;
        let wal = retry_busy(|| {
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        });
        match wal {
            Ok(_) => {}
            Err(e) if is_not_a_database(&e) => {
                return Err(CatalogError::Corrupt {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(sql(e)),
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(sql)?;
        let mut catalog = Catalog {
            conn,
            path: path.to_path_buf(),
        };
        catalog.migrate()?;
        Ok(catalog)
    }

    fn err(&self, source: rusqlite::Error) -> CatalogError {
        if is_not_a_database(&source) {
            return CatalogError::Corrupt {
                path: self.path.clone(),
            };
        }
        CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> CResult<()> {
        let known = MIGRATIONS.len() as i64;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| CatalogError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| CatalogError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
        if version > known {
            return Err(CatalogError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(step)
                .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1)))
                .map_err(|e| CatalogError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
        }
        tx.commit().map_err(|e| CatalogError::Sqlite {
            path: self.path.clone(),
            source: e,
        })
    }

    /// The schema version of the open catalog.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn schema_version(&self) -> CResult<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Records the start of a backup attempt with status `creating`, under the
    /// first free id among `base`, `base-2`, `base-3`… An id is free when no
    /// row has it and `taken(id)` is false (an archive file of that name may
    /// exist outside the catalog).
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn begin_backup(
        &mut self,
        base: &str,
        new: &NewBackup<'_>,
        taken: &dyn Fn(&str) -> bool,
    ) -> CResult<String> {
        let path = self.path.clone();
        let sql = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        let mut n = 1;
        let id = loop {
            let candidate = if n == 1 {
                base.to_string()
            } else {
                format!("{base}-{n}")
            };
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM backups WHERE id = ?1)",
                    [&candidate],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if !exists && !taken(&candidate) {
                break candidate;
            }
            n += 1;
        };
        insert_creating(&tx, "INSERT", &id, new).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(id)
    }

    /// Marks a backup available, with what was written.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn finish_backup(&self, id: &str, done: &Finished<'_>) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE backups SET status = 'available', finished_at = ?2, location = ?3, size = ?4, \
                 entries = ?5, files = ?6, bytes = ?7, sha256 = ?8, warnings = ?9, error = NULL, \
                 frames_sha256 = ?10 WHERE id = ?1",
                params![
                    id,
                    done.finished_at,
                    done.location,
                    done.size as i64,
                    done.entries as i64,
                    done.files as i64,
                    done.bytes as i64,
                    done.sha256,
                    done.warnings as i64,
                    done.frames_sha256
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Marks a backup attempt failed with `error`.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn fail_backup(&self, id: &str, finished_at: &str, error: &str) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE backups SET status = 'failed', finished_at = ?2, error = ?3, location = NULL \
                 WHERE id = ?1",
                params![id, finished_at, error],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records where the archive of a `creating` backup will be, so that if
    /// its process dies, whatever it left there can be removed.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn set_planned_location(&self, id: &str, location: &str) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE backups SET location = ?2 WHERE id = ?1 AND status = 'creating'",
                params![id, location],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Marks every `creating` row of `instance` failed. Only call this while
    /// holding the instance lock: then no live process is writing them.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn fail_interrupted(&self, instance: &str, now: &str) -> CResult<usize> {
        self.conn
            .execute(
                "UPDATE backups SET status = 'failed', finished_at = ?2, location = NULL, \
                 error = 'interrupted: the process ended before the backup was complete' \
                 WHERE instance = ?1 AND status = 'creating'",
                params![instance, now],
            )
            .map_err(|e| self.err(e))
    }

    /// The instances that have rows in state `creating`.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn instances_creating(&self) -> CResult<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT instance FROM backups WHERE status = 'creating'")
            .map_err(|e| self.err(e))?;

        stmt.query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))
    }

    /// Records the result of a verification. A failure marks the backup
    /// corrupt; a success marks a corrupt or missing backup available again.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn record_verification(&self, id: &str, at: &str, error: Option<&str>) -> CResult<()> {
        let ok = error.is_none();
        self.conn
            .execute(
                "UPDATE backups SET verified_at = ?2, verify_ok = ?3, verify_error = ?4, \
                 status = CASE \
                   WHEN ?3 THEN (CASE WHEN status IN ('corrupt', 'missing') THEN 'available' ELSE status END) \
                   ELSE (CASE WHEN status = 'available' THEN 'corrupt' ELSE status END) END \
                 WHERE id = ?1",
                params![id, at, ok, error],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Marks a backup whose archive is gone as missing.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn mark_missing(&self, id: &str, at: &str) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE backups SET status = 'missing', verified_at = ?2, verify_ok = 0, \
                 verify_error = 'the archive file is missing' WHERE id = ?1 AND status != 'failed'",
                params![id, at],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Where the backups of instance `name` and of the names made from it
    /// (`name-2`, `name-3`…, and any `name-…`) come from, every attempt
    /// counted.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn claims(&self, name: &str) -> CResult<Vec<Claim>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT DISTINCT instance, host, origin FROM backups \
                 WHERE instance = ?1 OR substr(instance, 1, length(?1) + 1) = ?1 || '-' \
                 ORDER BY instance, host, origin",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([name], |r| {
            Ok(Claim {
                instance: r.get(0)?,
                host: r.get(1)?,
                origin: r.get(2)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.err(e))
    }

    /// One backup by id.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn get(&self, id: &str) -> CResult<Option<BackupRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM backups WHERE id = ?1"),
                [id],
                record,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The backup whose archive is at `location`, if any.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn find_by_location(&self, location: &str) -> CResult<Option<BackupRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM backups WHERE location = ?1 ORDER BY created_at DESC LIMIT 1"),
                [location],
                record,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Backups matching `filter`, newest first.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn list(&self, filter: &ListFilter) -> CResult<Vec<BackupRecord>> {
        let mut sql = format!("SELECT {COLUMNS} FROM backups WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut add = |clause: &str, value: String| {
            args.push(value);
            sql.push_str(&format!(" AND {clause} = ?{}", args.len()));
        };
        if let Some(v) = &filter.instance {
            add("instance", v.clone());
        }
        if let Some(v) = &filter.reason {
            add("reason", v.clone());
        }
        if let Some(v) = filter.status {
            add("status", v.as_str().to_string());
        }
        if let Some(v) = &filter.version {
            add("app_version", v.clone());
        }
        if let Some(v) = filter.kind {
            add("kind", v.as_str().to_string());
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;

        stmt.query_map(rusqlite::params_from_iter(args.iter()), record)
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))
    }

    /// The backups built directly on `id` (its children in a chain),
    /// newest first, whatever their status.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn children(&self, id: &str) -> CResult<Vec<BackupRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM backups WHERE parent_id = ?1 ORDER BY created_at DESC, id DESC"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map([id], record)
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))
    }

    /// Fills in every record's [`BackupRecord::chain_size`].
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn fill_chain_sizes(&self, records: &mut [BackupRecord]) -> CResult<()> {
        let mut sizes: HashMap<String, Option<u64>> = HashMap::new();
        for record in records.iter_mut() {
            record.chain_size = self.chain_size_of(record, &mut sizes)?;
        }
        Ok(())
    }

    fn chain_size_of(
        &self,
        record: &BackupRecord,
        known: &mut HashMap<String, Option<u64>>,
    ) -> CResult<Option<u64>> {
        let mut total = record.size;
        let mut next = record.parent.clone();
        let mut hops = 0;
        while let Some(id) = next {
            hops += 1;
            if let Some(rest) = known.get(&id) {
                total = total.zip(*rest).map(|(a, b)| a + b);
                break;
            }
            match self.get(&id)? {
                Some(r) if hops < 10_000 => {
                    total = total.zip(r.size).map(|(a, b)| a + b);
                    next = r.parent;
                }
                _ => return Ok(None),
            }
        }
        known.insert(record.id.clone(), total);
        Ok(total)
    }

    /// Every backup that needs `id` (its children, theirs, and so on),
    /// failed attempts left out.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn dependants(&self, id: &str) -> CResult<Vec<BackupRecord>> {
        let mut out = Vec::new();
        let mut todo = vec![id.to_string()];
        while let Some(next) = todo.pop() {
            for child in self.children(&next)? {
                if child.status == Status::Failed
                    || out.iter().any(|o: &BackupRecord| o.id == child.id)
                {
                    continue;
                }
                todo.push(child.id.clone());
                out.push(child);
            }
        }
        Ok(out)
    }

    /// Records the start of a restore; returns its id.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn begin_restore(&self, new: &NewRestore<'_>) -> CResult<i64> {
        self.conn
            .execute(
                "INSERT INTO restores (backup_id, started_at, destination, mode, user, host, outcome, safety_backup) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7)",
                params![new.backup_id, new.started_at, new.destination, new.mode, new.user, new.host, new.safety_backup],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the safety backup taken for a restore.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn set_restore_safety_backup(&self, id: i64, safety_backup: &str) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE restores SET safety_backup = ?2 WHERE id = ?1",
                params![id, safety_backup],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records how a restore ended: `restored`, `rolled-back`, `refused` or
    /// `failed`; a successful one also updates its backup's last-restored fields.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn finish_restore(
        &self,
        id: i64,
        at: &str,
        outcome: &str,
        error: Option<&str>,
    ) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE restores SET finished_at = ?2, outcome = ?3, error = ?4 WHERE id = ?1",
                params![id, at, outcome, error],
            )
            .map_err(|e| self.err(e))?;
        if outcome == "restored" {
            self.conn
                .execute(
                    "UPDATE backups SET last_restored_at = r.finished_at, last_restored_to = r.destination, \
                     last_restored_by = r.user FROM (SELECT * FROM restores WHERE id = ?1) AS r \
                     WHERE backups.id = r.backup_id",
                    params![id],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Marks restores of `instance` still recorded as running as
    /// interrupted. Only call this while holding the instance's lock and
    /// after its journal was dealt with: a restore without a journal had not
    /// changed anything yet.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn fail_running_restores(&self, instance: &str, at: &str) -> CResult<usize> {
        self.conn
            .execute(
                "UPDATE restores SET outcome = 'interrupted', finished_at = ?2, \
                 error = 'the process ended before the restore changed anything' \
                 WHERE outcome = 'running' AND backup_id IN (SELECT id FROM backups WHERE instance = ?1)",
                params![instance, at],
            )
            .map_err(|e| self.err(e))
    }

    /// Records an archive found in the store without a row (reconcile),
    /// from its own manifest and trailer, as available. `false` when a row
    /// with that id exists.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn adopt(&self, id: &str, new: &NewBackup<'_>, done: &Finished<'_>) -> CResult<bool> {
        let inserted =
            insert_creating(&self.conn, "INSERT OR IGNORE", id, new).map_err(|e| self.err(e))?;
        if inserted == 0 {
            return Ok(false);
        }
        self.finish_backup(id, done)?;
        Ok(true)
    }

    /// Sets a backup's status (reconcile: `available`, `missing`, `corrupt`)
    /// and, when given, its location.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn set_status(&self, id: &str, status: Status, location: Option<&str>) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE backups SET status = ?2, location = coalesce(?3, location) WHERE id = ?1",
                params![id, status.as_str(), location],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Rewrites every location under `from` (a directory path ending in
    /// `/`) to the same place under `to`, in one transaction; returns how
    /// many rows changed.
    ///
    /// # Errors
    ///
    /// Fails on a database error; then nothing changed.
    pub fn move_locations(&self, from: &str, to: &str) -> CResult<usize> {
        self.conn
            .execute(
                "UPDATE backups SET location = ?2 || substr(location, length(?1) + 1) \
                 WHERE substr(location, 1, length(?1)) = ?1",
                params![from, to],
            )
            .map_err(|e| self.err(e))
    }

    /// Removes a backup's row and its copies' (its archives are gone).
    /// Restore and guard records that name it stay, as history.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn delete_row(&self, id: &str) -> CResult<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| {
                self.conn
                    .execute("DELETE FROM copies WHERE backup_id = ?1", [id])?;
                self.conn
                    .execute("DELETE FROM backups WHERE id = ?1", [id])?;
                self.conn.execute_batch("COMMIT")
            })
            .inspect_err(|_| {
                let _ = self.conn.execute_batch("ROLLBACK");
            })
            .map_err(|e| self.err(e))
    }

    /// The further copies of backup `id`, by store name.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn copies_of(&self, id: &str) -> CResult<Vec<CopyRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT store, location, copied_at FROM copies WHERE backup_id = ?1 \
                 ORDER BY store",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(CopyRecord {
                    store: r.get(0)?,
                    location: r.get(1)?,
                    copied_at: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Records a copy of backup `id` in `store`, replacing an earlier
    /// record of one there.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn add_copy(&self, id: &str, copy: &CopyRecord) -> CResult<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO copies (backup_id, store, location, copied_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, copy.store, copy.location, copy.copied_at],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Forgets the copy of backup `id` in `store`.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn remove_copy(&self, id: &str, store: &str) -> CResult<()> {
        self.conn
            .execute(
                "DELETE FROM copies WHERE backup_id = ?1 AND store = ?2",
                params![id, store],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Makes `location` the backup's first location (its copy there is
    /// then no longer a further copy).
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn promote_copy(&self, id: &str, store: &str, location: &str) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE backups SET location = ?2 WHERE id = ?1",
                params![id, location],
            )
            .and_then(|_| {
                self.conn.execute(
                    "DELETE FROM copies WHERE backup_id = ?1 AND store = ?2",
                    params![id, store],
                )
            })
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Pins or unpins a backup; `false` when there is no such backup.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn set_pinned(&self, id: &str, pinned: bool) -> CResult<bool> {
        self.conn
            .execute(
                "UPDATE backups SET pinned = ?2 WHERE id = ?1",
                params![id, pinned],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// SQLite's own consistency check: `None` when the file is sound, else
    /// the first problem it reports.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn quick_check(&self) -> CResult<Option<String>> {
        // At most a few lines: SQLite reports up to 100 problems.
        let mut stmt = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(|e| self.err(e))?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))?;
        if lines == ["ok"] {
            return Ok(None);
        }
        // One line per problem, without the `*** in database main ***`
        // headings SQLite puts between them.
        let problems: Vec<&str> = lines
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| !l.starts_with("***") && !l.trim().is_empty())
            .collect();
        Ok(Some(if problems.is_empty() {
            "SQLite's check failed".to_string()
        } else {
            problems.join("; ")
        }))
    }

    /// Opens the catalog at `path` as [`Catalog::open`] does, then runs
    /// SQLite's consistency check over it, so that damage in any table is
    /// found before a command relies on it.
    ///
    /// # Errors
    ///
    /// As [`Catalog::open`], and [`CatalogError::Damaged`] when the check
    /// reports a problem.
    pub fn open_checked(path: &Path) -> CResult<Catalog> {
        let catalog = Catalog::open(path)?;
        match catalog.quick_check()? {
            None => Ok(catalog),
            Some(problem) => Err(CatalogError::Damaged {
                path: path.to_path_buf(),
                problem,
            }),
        }
    }

    /// Records a guarded command about to run.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn begin_guard(
        &self,
        instance: &str,
        started_at: &str,
        command: &str,
        backup_id: Option<&str>,
        no_backup: bool,
    ) -> CResult<i64> {
        self.conn
            .execute(
                "INSERT INTO guards (instance, started_at, command, backup_id, no_backup, outcome) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
                params![instance, started_at, command, backup_id, no_backup],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records how a guarded command ended.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn finish_guard(
        &self,
        id: i64,
        at: &str,
        exit_code: Option<i32>,
        outcome: &str,
        detail: Option<&str>,
    ) -> CResult<()> {
        self.conn
            .execute(
                "UPDATE guards SET finished_at = ?2, exit_code = ?3, outcome = ?4, detail = ?5 WHERE id = ?1",
                params![id, at, exit_code, outcome, detail],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The guarded commands a backup was taken for.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn guards_of(&self, backup_id: &str) -> CResult<Vec<GuardRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, instance, started_at, finished_at, command, backup_id, no_backup, \
                 exit_code, outcome, detail FROM guards WHERE backup_id = ?1 \
                 ORDER BY started_at, id",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([backup_id], |r| {
            Ok(GuardRecord {
                id: r.get(0)?,
                instance: r.get(1)?,
                started_at: r.get(2)?,
                finished_at: r.get(3)?,
                command: r.get(4)?,
                backup_id: r.get(5)?,
                no_backup: r.get(6)?,
                exit_code: r.get(7)?,
                outcome: r.get(8)?,
                detail: r.get(9)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.err(e))
    }

    /// The restores of one backup, oldest first.
    ///
    /// # Errors
    ///
    /// Fails on a database error.
    pub fn restores_of(&self, backup_id: &str) -> CResult<Vec<RestoreRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, backup_id, started_at, finished_at, destination, mode, user, host, outcome, \
                 safety_backup, error FROM restores WHERE backup_id = ?1 ORDER BY started_at, id",
            )
            .map_err(|e| self.err(e))?;

        stmt.query_map([backup_id], |r| {
            Ok(RestoreRecord {
                id: r.get(0)?,
                backup_id: r.get(1)?,
                started_at: r.get(2)?,
                finished_at: r.get(3)?,
                destination: r.get(4)?,
                mode: r.get(5)?,
                user: r.get(6)?,
                host: r.get(7)?,
                outcome: r.get(8)?,
                safety_backup: r.get(9)?,
                error: r.get(10)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.err(e))
    }
}

/// Inserts a `creating` row for backup `id` (`verb` is `INSERT` or
/// `INSERT OR IGNORE`); returns the number of rows inserted.
fn insert_creating(
    conn: &Connection,
    verb: &str,
    id: &str,
    new: &NewBackup<'_>,
) -> rusqlite::Result<usize> {
    let about = new.about;
    let labels = serde_json::to_string(&about.labels).expect("labels serialise");
    conn.execute(
        &format!(
            "{verb} INTO backups (id, instance, origin, host, created_at, kind, reason, message, \
             labels, app_version, upgraded_to, profile, compression, level, status, created_by, \
             encrypted, parent_id, base_id, chain_position) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'creating', ?15, \
             ?16, ?17, ?18, ?19)"
        ),
        params![
            id,
            new.instance,
            new.origin,
            new.host,
            new.created_at,
            about.kind.as_str(),
            about.reason,
            about.message,
            labels,
            about.app_version,
            about.upgraded_to,
            about.profile,
            new.compression.to_string(),
            new.level,
            new.created_by,
            new.encrypted,
            new.chain.map(|c| c.parent.id.as_str()),
            new.chain.map(|c| c.base.id.as_str()),
            new.chain.map_or(0, |c| c.position),
        ],
    )
}

fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::NotADatabase || f.code == rusqlite::ErrorCode::DatabaseCorrupt
    )
}

fn opt_u64(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64))
}

fn record(r: &Row<'_>) -> rusqlite::Result<BackupRecord> {
    let kind: String = r.get(6)?;
    let labels: String = r.get(9)?;
    let compression: String = r.get(18)?;
    let status: String = r.get(21)?;
    Ok(BackupRecord {
        id: r.get(0)?,
        instance: r.get(1)?,
        origin: r.get(2)?,
        host: r.get(3)?,
        created_at: r.get(4)?,
        finished_at: r.get(5)?,
        about: Description {
            kind: if kind == "automatic" {
                BackupKind::Automatic
            } else {
                BackupKind::Manual
            },
            reason: r.get(7)?,
            message: r.get(8)?,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            app_version: r.get(10)?,
            upgraded_to: r.get(11)?,
            profile: r.get(12)?,
        },
        location: r.get(13)?,
        size: opt_u64(r, 14)?,
        entries: opt_u64(r, 15)?,
        files: opt_u64(r, 16)?,
        bytes: opt_u64(r, 17)?,
        compression: match compression.as_str() {
            "gzip" => Codec::Gzip,
            "none" => Codec::None,
            _ => Codec::Zstd,
        },
        level: r.get(19)?,
        encrypted: r.get(32)?,
        sha256: r.get(20)?,
        frames_sha256: r.get(36)?,
        status: Status::parse(&status),
        error: r.get(22)?,
        warnings: r.get::<_, i64>(23)? as u64,
        verified_at: r.get(24)?,
        verify_ok: r.get(25)?,
        verify_error: r.get(26)?,
        pinned: r.get(27)?,
        created_by: r.get(28)?,
        last_restored_at: r.get(29)?,
        last_restored_to: r.get(30)?,
        last_restored_by: r.get(31)?,
        parent: r.get(33)?,
        base: r.get(34)?,
        chain_position: r.get(35)?,
        chain_size: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_limit_alone_does_not_narrow_a_list() {
        let limited = ListFilter {
            limit: Some(3),
            ..ListFilter::default()
        };
        assert!(!limited.narrows());
        let by_status = ListFilter {
            status: Some(Status::Missing),
            ..ListFilter::default()
        };
        assert!(by_status.narrows());
    }

    fn about(labels: BTreeMap<String, String>) -> Description {
        Description {
            message: Some("m".into()),
            labels,
            app_version: Some("1.0".into()),
            ..Description::new(BackupKind::Manual, "manual")
        }
    }

    fn new_backup(about: &Description) -> NewBackup<'_> {
        NewBackup {
            instance: "app",
            origin: "/srv/app",
            host: "h",
            created_at: "2026-01-01T00:00:00.000Z",
            about,
            compression: Codec::Zstd,
            level: Some(3),
            encrypted: false,
            created_by: "backstop test",
            chain: None,
        }
    }

    #[test]
    fn ids_get_suffixes_on_collision() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let labels = about(BTreeMap::new());
        let a = cat
            .begin_backup("app-x", &new_backup(&labels), &|_| false)
            .unwrap();
        let b = cat
            .begin_backup("app-x", &new_backup(&labels), &|_| false)
            .unwrap();
        let c = cat
            .begin_backup("app-x", &new_backup(&labels), &|id| id == "app-x-3")
            .unwrap();
        assert_eq!(
            (a.as_str(), b.as_str(), c.as_str()),
            ("app-x", "app-x-2", "app-x-4")
        );
    }

    #[test]
    fn lifecycle_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let labels = about(BTreeMap::from([("k".to_string(), "v".to_string())]));
        let id = cat
            .begin_backup("app-1", &new_backup(&labels), &|_| false)
            .unwrap();
        assert_eq!(cat.get(&id).unwrap().unwrap().status, Status::Creating);
        cat.finish_backup(
            &id,
            &Finished {
                finished_at: "t",
                location: "/s/app-1.tar.zst",
                size: 10,
                entries: 3,
                files: 2,
                bytes: 7,
                sha256: "ab",
                frames_sha256: None,
                warnings: 0,
            },
        )
        .unwrap();
        let rec = cat.get(&id).unwrap().unwrap();
        assert_eq!(rec.status, Status::Available);
        assert_eq!(rec.about, labels);
        let failed = cat
            .begin_backup("app-2", &new_backup(&labels), &|_| false)
            .unwrap();
        cat.fail_backup(&failed, "t", "disk full").unwrap();
        let only_failed = cat
            .list(&ListFilter {
                status: Some(Status::Failed),
                ..ListFilter::default()
            })
            .unwrap();
        assert_eq!(only_failed.len(), 1);
        assert_eq!(only_failed[0].error.as_deref(), Some("disk full"));
        cat.record_verification(&id, "t2", Some("bad")).unwrap();
        assert_eq!(cat.get(&id).unwrap().unwrap().status, Status::Corrupt);
        cat.record_verification(&id, "t3", None).unwrap();
        assert_eq!(cat.get(&id).unwrap().unwrap().status, Status::Available);
        assert_eq!(
            cat.find_by_location("/s/app-1.tar.zst")
                .unwrap()
                .unwrap()
                .id,
            id
        );
    }

    #[test]
    fn restores_are_recorded_with_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let about = about(BTreeMap::new());
        let id = cat
            .begin_backup("app-1", &new_backup(&about), &|_| false)
            .unwrap();
        let r = cat
            .begin_restore(&NewRestore {
                backup_id: &id,
                started_at: "t1",
                destination: "/srv/app",
                mode: "exact",
                user: "root",
                host: "h",
                safety_backup: None,
            })
            .unwrap();
        cat.set_restore_safety_backup(r, "app-0").unwrap();
        cat.finish_restore(r, "t2", "restored", None).unwrap();
        let rec = cat.get(&id).unwrap().unwrap();
        assert_eq!(rec.last_restored_at.as_deref(), Some("t2"));
        assert_eq!(rec.last_restored_to.as_deref(), Some("/srv/app"));
        let history = cat.restores_of(&id).unwrap();
        assert_eq!(history[0].outcome, "restored");
        assert_eq!(history[0].safety_backup.as_deref(), Some("app-0"));
    }

    #[test]
    fn stale_creating_rows_become_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::open(&dir.path().join("c.db")).unwrap();
        let labels = about(BTreeMap::new());
        let id = cat
            .begin_backup("app-1", &new_backup(&labels), &|_| false)
            .unwrap();
        assert_eq!(cat.instances_creating().unwrap(), ["app"]);
        assert_eq!(cat.fail_interrupted("app", "t").unwrap(), 1);
        let rec = cat.get(&id).unwrap().unwrap();
        assert_eq!(rec.status, Status::Failed);
        assert!(rec.error.unwrap().contains("interrupted"));
    }

    #[test]
    fn not_a_database_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        assert!(matches!(
            Catalog::open(&path),
            Err(CatalogError::Corrupt { .. })
        ));
    }

    #[test]
    fn damage_inside_a_table_is_found_by_the_checked_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let mut cat = Catalog::open(&path).unwrap();
            let about = about(BTreeMap::new());
            let id = cat
                .begin_backup("app-1", &new_backup(&about), &|_| false)
                .unwrap();
            cat.begin_restore(&NewRestore {
                backup_id: &id,
                started_at: "t1",
                destination: "/srv/app",
                mode: "exact",
                user: "root",
                host: "h",
                safety_backup: None,
            })
            .unwrap();
            assert!(Catalog::open_checked(&path).is_ok());
            cat.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        let (page, root): (i64, i64) = {
            let c = Connection::open(&path).unwrap();
            let page = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
            let root = c
                .query_row(
                    "SELECT rootpage FROM sqlite_master WHERE name = 'restores'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            (page, root)
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let start = ((root - 1) * page + 8) as usize;
        bytes[start..start + 100].fill(0xee);
        std::fs::write(&path, bytes).unwrap();
        // The plain open does not look; the checked one does.
        assert!(Catalog::open(&path).is_ok());
        let err = Catalog::open_checked(&path).err().expect("damage is found");
        assert!(err.is_damage(), "{err}");
        assert!(!err.to_string().contains("***"), "{err}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(Catalog::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        assert!(matches!(
            Catalog::open(&path),
            Err(CatalogError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn concurrent_writers_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(Catalog::open(&path).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut cat = Catalog::open(&path).unwrap();
                    let labels = about(BTreeMap::new());
                    for _ in 0..10 {
                        cat.begin_backup(&format!("app-{i}"), &new_backup(&labels), &|_| false)
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.list(&ListFilter::default()).unwrap().len(), 80);
    }
}
