//! `migrate --to DIR`: move the store, also to another filesystem, without
//! ever having a moment where a backup exists nowhere.
//!
//! The steps, each resumable from a journal (`<home>/migrate.json`):
//! 1. copy every archive and sidecar into `DIR/<instance>/` (a hard link
//!    when both are on one filesystem), each copy flushed and its SHA-256
//!    compared with its sidecar before it counts;
//! 2. point the config's `store` at `DIR` (the file is edited in place, the
//!    rest of it kept as written);
//! 3. switch the catalog's locations in one transaction;
//! 4. remove the old files and the emptied directories.
//!
//! The store lock is held exclusively, and every instance with backups
//! locked, for the whole migration: a backup, restore, verify or prune
//! started meanwhile waits (with `--wait`) or is refused, and then uses
//! the new store. An
//! interruption at any point loses nothing: before step 3 the catalog names
//! the old files, which are intact; after it, the new ones, which were
//! verified. Running the same command again finishes the job.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::archive::Codec;
use crate::archive::reader::read_sidecar;
use crate::catalog::Catalog;
use crate::config::{Config, absolute};
use crate::error::{Error, Result};
use crate::fsutil::{self, TEMP_PREFIX};
use crate::lock::{InstanceLock, StoreLock};
use crate::{Context, failpoint, time};

/// How far a migration got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Copying,
    Switched,
}

#[derive(Debug, Serialize, Deserialize)]
struct MigrateJournal {
    from: PathBuf,
    to: PathBuf,
    phase: Phase,
    started_at: String,
}

/// What `migrate` did.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub from: String,
    pub to: String,
    /// Archives (with their sidecars) now in the new store.
    pub archives: usize,
    pub bytes: u64,
    /// Whether the files were hard-linked (same filesystem) or copied.
    pub linked: bool,
    /// The config file whose `store` now names the new store.
    pub config: String,
    /// Whether this run finished a migration that had been interrupted.
    pub resumed: bool,
}

fn journal_path(home: &Path) -> PathBuf {
    home.join("migrate.json")
}

/// The unfinished migration, if there is one: (from, to).
pub fn pending(home: &Path) -> Option<(PathBuf, PathBuf)> {
    load(home).ok().flatten().map(|j| (j.from, j.to))
}

/// The unfinished migration and since when: (from, to, started at).
pub fn pending_since(home: &Path) -> Option<(PathBuf, PathBuf, String)> {
    load(home)
        .ok()
        .flatten()
        .map(|j| (j.from, j.to, j.started_at))
}

fn load(home: &Path) -> Result<Option<MigrateJournal>> {
    let path = journal_path(home);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            Error::usage(
                format!("the migration journal {} is damaged: {e}", path.display()),
                Some("it names the old and the new store: finish or undo the move by hand".into()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", &path, e)),
    }
}

fn save(home: &Path, j: &MigrateJournal) -> Result<()> {
    let text = serde_json::to_vec_pretty(j).expect("journal serialises");
    fsutil::atomic_write(&journal_path(home), &text, 0o600)
}

/// The config file migrate edits: the one in use, else a new one where
/// `init` would write.
fn config_file(ctx: &Context<'_>) -> PathBuf {
    ctx.config
        .path
        .clone()
        .unwrap_or_else(crate::ops::init::default_path)
}

/// Moves the store to `to`.
///
/// # Errors
///
/// Fails (having lost nothing) when `to` is unusable, space is short, a
/// lock is held, a copy does not match its checksum, or the config cannot
/// be written; running it again continues.
pub fn migrate(ctx: &Context<'_>, to: &Path, wait: Option<Duration>) -> Result<MigrateReport> {
    // No archive is read or written anywhere on this home while the store
    // moves: every such command holds this lock shared.
    let store = StoreLock::exclusive(ctx.layout, wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let home = &ctx.layout.home;
    let requested = absolute(to);
    let previous = load(home)?;
    if let Some(j) = previous.as_ref().filter(|j| j.to != requested) {
        return Err(Error::usage(
            format!(
                "a migration of the store to {} is unfinished",
                j.to.display()
            ),
            Some(format!(
                "finish it first: `backstop migrate --to {}`",
                j.to.display()
            )),
        ));
    }
    let resumed = previous.is_some();
    let (from, to) = match &previous {
        Some(j) => (j.from.clone(), j.to.clone()),
        None => (ctx.layout.store.clone(), requested),
    };
    if !resumed {
        check_target(&from, &to)?;
    }
    fsutil::create_private_dir_all(home)?;

    // Every instance with archives or rows, locked for the whole move.
    let catalog = Catalog::open(&ctx.layout.catalog())?;
    let mut instances = crate::ops::list::instances(ctx)?;
    instances.extend(crate::ops::list::store_instances(&from));
    instances.sort();
    instances.dedup();
    let mut locks = Vec::new();
    for name in &instances {
        let lock = InstanceLock::acquire(
            &ctx.layout.locks(),
            name,
            &format!("migrate --to {}", to.display()),
            wait,
            ctx.cancel,
        )?;
        crate::ops::recover::recover_locked(ctx, &lock)?;
        locks.push(lock);
    }

    let files = store_files(&from)?;
    let bytes: u64 = files.iter().map(|(_, _, size)| size).sum();
    let mut journal = MigrateJournal {
        from: from.clone(),
        to: to.clone(),
        phase: Phase::Copying,
        started_at: time::now_rfc3339(),
    };
    let phase = match &previous {
        Some(j) => j.phase,
        None => {
            let base = fsutil::existing_ancestor(&to);
            let free = fsutil::available_space(&base)?;
            let same_fs = same_filesystem(&from, &base);
            if !same_fs && free < bytes + bytes / 50 + (16 << 20) {
                return Err(Error::Refused {
                    message: format!(
                        "not enough free space on the filesystem of {}: the store needs {} MiB, {} MiB are free",
                        base.display(),
                        bytes >> 20,
                        free >> 20
                    ),
                    hint: Some("free some space, or choose another directory".into()),
                });
            }
            save(home, &journal)?;
            Phase::Copying
        }
    };
    let linked = same_filesystem(&from, &fsutil::existing_ancestor(&to));
    if phase == Phase::Copying {
        fsutil::create_private_dir_all(&to)?;
        for (instance, name, _) in &files {
            ctx.cancel.check()?;
            copy_one(&from, &to, instance, name, linked)?;
            failpoint::hit("migrate.after-copy")?;
        }
        failpoint::hit("migrate.before-config")?;
        set_store_in_config(&config_file(ctx), &to)?;
        // Commands that started with the old store and wait behind this
        // lock go to the new one.
        store.record_move(&from, &to)?;
        failpoint::hit("migrate.before-switch")?;
        catalog.move_locations(&path_prefix(&from)?, &path_prefix(&to)?)?;
        journal.phase = Phase::Switched;
        save(home, &journal)?;
    }
    // Only cleanup is left: the old files are copies of verified ones.
    failpoint::hit("migrate.before-remove")?;
    for (instance, name, _) in &files {
        let old = from.join(instance).join(name);
        match std::fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &old, e)),
        }
    }
    for instance in &instances {
        let _ = std::fs::remove_dir(from.join(instance));
    }
    let _ = std::fs::remove_dir(&from);
    std::fs::remove_file(journal_path(home))
        .map_err(|e| Error::io("removing", journal_path(home), e))?;
    fsutil::fsync_dir(home)?;
    drop(locks);
    Ok(MigrateReport {
        from: from.display().to_string(),
        to: to.display().to_string(),
        archives: files
            .iter()
            .filter(|(_, n, _)| Codec::from_file_name(n).is_some())
            .count(),
        bytes,
        linked,
        config: config_file(ctx).display().to_string(),
        resumed,
    })
}

fn path_prefix(p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| {
        Error::usage(
            format!("{} is not valid UTF-8", p.display()),
            Some("use a UTF-8 path for the store".into()),
        )
    })?;
    Ok(format!("{}/", s.trim_end_matches('/')))
}

fn check_target(from: &Path, to: &Path) -> Result<()> {
    let canon = |p: &Path| {
        let base = fsutil::existing_ancestor(p);
        let rest = p.strip_prefix(&base).unwrap_or(Path::new("")).to_path_buf();
        std::fs::canonicalize(&base).unwrap_or(base).join(rest)
    };
    let (f, t) = (canon(from), canon(to));
    if f == t {
        return Err(Error::usage(
            format!("the store is already {}", from.display()),
            None,
        ));
    }
    if t.starts_with(&f) || f.starts_with(&t) {
        return Err(Error::usage(
            format!(
                "{} and the store {} are inside one another",
                to.display(),
                from.display()
            ),
            Some("choose a directory outside the store".into()),
        ));
    }
    if std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::usage(
            format!("{} is not empty", to.display()),
            Some("choose an empty or new directory for the store".into()),
        ));
    }
    Ok(())
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

/// (instance, file name, size) of every archive and sidecar in the store.
fn store_files(store: &Path) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(store) else {
        return Ok(out);
    };
    for dir in dirs.flatten() {
        if !dir.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let instance = dir.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(dir.path())
            .map_err(|e| Error::io("reading", dir.path(), e))?
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            let is_ours = Codec::from_file_name(&name).is_some()
                || name
                    .strip_suffix(".sha256")
                    .or_else(|| crate::meta::archive_of(&name))
                    .is_some_and(|a| Codec::from_file_name(a).is_some());
            if name.starts_with(TEMP_PREFIX) || !is_ours {
                continue;
            }
            let meta = f
                .metadata()
                .map_err(|e| Error::io("reading", f.path(), e))?;
            if meta.is_file() {
                out.push((instance.clone(), name, meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies (or links) one file into the new store, unless an identical copy
/// is already there; an archive's copy must match its sidecar.
fn copy_one(from: &Path, to: &Path, instance: &str, name: &str, link: bool) -> Result<()> {
    let src = from.join(instance).join(name);
    let dir = to.join(instance);
    fsutil::create_private_dir_all(&dir)?;
    let dst = dir.join(name);
    let is_archive = Codec::from_file_name(name).is_some();
    let expected = if is_archive {
        read_sidecar(&crate::stores::Location::file(src.clone()))?
    } else {
        None
    };
    if dst.exists() {
        let same = if is_archive {
            expected.is_some() && crate::restore::diff::hash_file(&dst).map(hex::encode) == expected
        } else {
            std::fs::read(&dst).ok() == std::fs::read(&src).ok()
        };
        if same {
            return Ok(());
        }
        std::fs::remove_file(&dst).map_err(|e| Error::io("removing", &dst, e))?;
    }
    if link {
        std::fs::hard_link(&src, &dst).map_err(|e| Error::io("linking", &dst, e))?;
        return fsutil::fsync_dir(&dir);
    }
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut input = std::fs::File::open(&src).map_err(|e| Error::io("reading", &src, e))?;
        let mut out = fsutil::create_private(&tmp)?;
        std::io::copy(&mut input, &mut out).map_err(|e| Error::io("copying to", &tmp, e))?;
        out.flush().map_err(|e| Error::io("writing", &tmp, e))?;
        out.sync_all().map_err(|e| Error::io("flushing", &tmp, e))?;
    }
    if let Some(want) = &expected {
        let got = crate::restore::diff::hash_file(&tmp).map(hex::encode);
        if got.as_deref() != Some(want.as_str()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(crate::archive::ArchiveError::Checksum {
                path: src.clone(),
                detail: format!(
                    "its copy at {} does not match its sidecar; the original stays where it is",
                    dst.display()
                ),
            }
            .into());
        }
    }
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io("naming", &dst, e))?;
    fsutil::fsync_dir(&dir)?;
    Ok(())
}

/// Sets the top-level `store` of the config file at `path` (created if it
/// does not exist), keeping the rest of the file as written.
fn set_store_in_config(path: &Path, store: &Path) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    let value = toml::Value::String(store.display().to_string()).to_string();
    let line = format!("store = {value}");
    let mut out = Vec::new();
    let mut done = false;
    let mut in_table = false;
    for l in text.lines() {
        let t = l.trim_start();
        if t.starts_with('[') {
            if !done {
                out.push(line.clone());
                done = true;
            }
            in_table = true;
        }
        if !in_table && !done && (t.starts_with("store ") || t.starts_with("store=")) {
            out.push(line.clone());
            done = true;
            continue;
        }
        out.push(l.to_string());
    }
    if !done {
        out.push(line);
    }
    let mut new = out.join("\n");
    new.push('\n');
    let config = Config::parse(&new, path)?;
    if config.store.as_deref() != Some(store) {
        return Err(Error::usage(
            format!("could not set `store` in {}", path.display()),
            Some(format!(
                "set `store = {value}` there by hand, then run migrate again"
            )),
        ));
    }
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.mode() & 0o7777);
    let dir = fsutil::parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    fsutil::atomic_write(path, new.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_line_is_replaced_or_added_before_the_first_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.toml");
        std::fs::write(&p, "# mine\nhome = \"/h\"\n\n[defaults]\nexclude = []\n").unwrap();
        set_store_in_config(&p, Path::new("/mnt/new")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            "# mine\nhome = \"/h\"\n\nstore = \"/mnt/new\"\n[defaults]\nexclude = []\n"
        );
        set_store_in_config(&p, Path::new("/mnt/other")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("store = \"/mnt/other\"") && !text.contains("/mnt/new"));
        let fresh = dir.path().join("new/backstop.toml");
        set_store_in_config(&fresh, Path::new("/x")).unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "store = \"/x\"\n");
    }
}
