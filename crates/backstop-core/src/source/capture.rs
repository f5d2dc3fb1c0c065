//! Sources that are not files on disk: podman volumes, command dumps and
//! live SQLite databases, captured into a private spool directory before the
//! scan so the archive writer treats them like any file.
//!
//! Each lands as one file under its source's name (`<name>/<file>`), as
//! DESIGN.md's archive format says. Spooling is needed anyway: a tar header
//! states a member's size before its content, and a dump's size is only
//! known at its end.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::Context;
use crate::command::{CommandEnv, Run};
use crate::error::{Error, Result};
use crate::instance::{Instance, Source, SourceSpec};
use crate::source::scan::ScanTop;

/// The directory dumps are captured into for one backup; removed when
/// dropped.
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The spool of `instance` under backstop's home, emptied of whatever
    /// an interrupted backup left. Call it only under the instance lock.
    ///
    /// # Errors
    ///
    /// Fails when the directory cannot be created.
    pub fn new(home: &Path, instance: &str) -> Result<Spool> {
        let dir = home.join("spool").join(instance);
        if dir.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))?;
        }
        crate::fsutil::create_private_dir_all(&dir)?;
        Ok(Spool { dir })
    }

    /// Where source `name`'s file goes.
    fn source_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("creating", &dir, e))?;
        Ok(dir)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The archive file name of a captured source, under the source's name.
pub fn captured_file(source: &Source, instance_root: &Path) -> Option<String> {
    match &source.spec {
        SourceSpec::Path(_) => None,
        SourceSpec::Volume(v) => Some(format!("{v}.tar")),
        SourceSpec::Command { file, .. } => Some(file.clone()),
        SourceSpec::Sqlite(p) => Some(
            instance_root
                .join(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "database.sqlite".into()),
        ),
    }
}

/// Refuses a volume source whose volume does not exist.
fn require_volume(volume: &str, source: &Source, instance: &Instance) -> Result<()> {
    if crate::podman::Podman::default().volume_exists(volume)? {
        return Ok(());
    }
    Err(Error::Refused {
        message: format!(
            "podman volume {volume} (source {} of instance {}) does not exist",
            source.name, instance.name
        ),
        hint: Some("create it (start the application once), or remove it from the config".into()),
    })
}

/// Captures every source of `instance` that is not a path into `spool`, and
/// returns the scan tops of all sources in order. `env` is what dump
/// commands see.
///
/// # Errors
///
/// Fails when a volume cannot be exported, a dump command fails (exits
/// non-zero, cannot start), or a database cannot be read.
pub fn capture(
    ctx: &Context<'_>,
    instance: &Instance,
    spool: Option<&Spool>,
    env: &CommandEnv,
) -> Result<Vec<ScanTop>> {
    let mut tops = Vec::with_capacity(instance.sources.len());
    for source in &instance.sources {
        ctx.cancel.check()?;
        if let SourceSpec::Path(p) = &source.spec {
            tops.push(ScanTop {
                name: source.name.clone(),
                path: instance.resolve(p),
                filtered: true,
            });
            continue;
        }
        if let SourceSpec::Volume(volume) = &source.spec {
            // A plan finds a missing volume too: the backup would fail.
            require_volume(volume, source, instance)?;
        }
        let Some(spool) = spool else {
            // A plan without a spool: the source is described, not captured.
            continue;
        };
        let dir = spool.source_dir(&source.name)?;
        let file = dir.join(captured_file(source, &instance.root).expect("not a path source"));
        match &source.spec {
            SourceSpec::Path(_) => unreachable!("handled above"),
            SourceSpec::Volume(volume) => {
                let podman = crate::podman::Podman::default();
                let out = crate::fsutil::create_private(&file)?;
                podman.volume_export(volume, out)?;
            }
            SourceSpec::Command { dump, .. } => {
                let what = format!("the dump command of source {}", source.name);
                let mut run = Run::new(&what, env);
                run.cwd = instance.root.is_dir().then_some(instance.root.as_path());
                run.cancel = Some(ctx.cancel);
                run.to_file(dump, crate::fsutil::create_private(&file)?)?;
            }
            SourceSpec::Sqlite(p) => {
                let db = instance.resolve(p);
                sqlite_backup(&db, &file, ctx)?;
            }
        }
        tops.push(ScanTop {
            name: source.name.clone(),
            path: dir,
            filtered: false,
        });
    }
    Ok(tops)
}

/// Copies the live database `db` into `out` with SQLite's online backup:
/// one consistent snapshot, whatever the application writes meanwhile.
fn sqlite_backup(db: &Path, out: &Path, ctx: &Context<'_>) -> Result<()> {
    let fail = |e: rusqlite::Error| Error::Command {
        what: format!("the SQLite backup of {}", db.display()),
        detail: e.to_string(),
        hint: Some("check that the file is an SQLite database and readable".into()),
    };
    if !db.is_file() {
        return Err(Error::io(
            "reading the SQLite database",
            db,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    src.busy_timeout(Duration::from_secs(30)).map_err(fail)?;
    // Created private first, so the copy is never readable by others.
    drop(crate::fsutil::create_private(out)?);
    let mut dst = Connection::open(out).map_err(fail)?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(fail)?;
        // All pages in one step: one read transaction, so one snapshot. A
        // writer holding the database is waited for, not raced.
        loop {
            ctx.cancel.check()?;
            match backup.step(-1).map_err(fail)? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    // The copy stands alone: no write-ahead log beside it.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(fail)?;
    let check: String = dst
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(fail)?;
    if check != "ok" {
        return Err(Error::Command {
            what: format!("the SQLite backup of {}", db.display()),
            detail: format!("the copy fails SQLite's check: {check}"),
            hint: Some("run `sqlite3 DB 'PRAGMA integrity_check'` on the live database".into()),
        });
    }
    dst.close().map_err(|(_, e)| fail(e))?;
    // The copy carries the live file's mode and owner, which a restore
    // gives back (the spool itself is private to backstop).
    if let Ok(meta) = std::fs::metadata(db) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if rustix::process::geteuid().is_root() {
            let _ = std::os::unix::fs::chown(out, Some(meta.uid()), Some(meta.gid()));
        }
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| Error::io("setting the mode of", out, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Layout};
    use crate::progress::{Cancel, NoProgress};

    #[test]
    fn a_database_is_captured_while_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, pad TEXT);",
        )
        .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let db = db.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let conn = Connection::open(&db).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    conn.execute("INSERT INTO t(pad) VALUES (?1)", [format!("{n:0>200}")])
                        .unwrap();
                    n += 1;
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let layout = Layout {
            home: dir.path().join("home"),
            store: dir.path().join("store"),
        };
        let config = Config::default();
        let ctx = Context {
            layout: &layout,
            config: &config,
            progress: &NoProgress,
            cancel: &Cancel::default(),
            keys: &crate::encryption::NO_KEYS,
        };
        let out = dir.path().join("copy.db");
        sqlite_backup(&db, &out, &ctx).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        let copy = Connection::open(&out).unwrap();
        let ok: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let (count, max): (i64, i64) = copy
            .query_row("SELECT count(*), coalesce(max(n), 0) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        // A snapshot: rows 1..=count with no gaps, taken mid-stream.
        assert_eq!(count, max);
        assert!(
            count > 0 && (count as u64) < written,
            "{count} of {written}"
        );
        assert!(!dir.path().join("copy.db-wal").exists());
    }
}
