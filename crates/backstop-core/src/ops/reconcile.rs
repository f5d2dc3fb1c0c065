//! `reconcile`: the catalog against the store. The catalog is an index of
//! the truth; the archives are the truth.
//!
//! Found, per instance directory of the store:
//! - **missing**: a row says available, its archive is gone → marked
//!   `missing`;
//! - **mismatched**: a row says missing, its archive is there (put back by
//!   hand) → `available` again, once its sidecar and size agree;
//! - **corrupt**: the archive is there but its size or its sidecar
//!   disagrees with the row → marked `corrupt`;
//! - **orphaned**: an archive with no row (copied in by hand, or the
//!   catalog was lost) → verified in full and adopted from its own manifest
//!   and trailer; one that does not verify is reported, never adopted.
//!
//! Without `--apply` nothing changes. With it, each instance is locked while
//! its rows change. Running it twice changes nothing the second time. A
//! catalog file that is damaged (not SQLite, or failing SQLite's
//! `quick_check`) is moved aside as `catalog.db.damaged-<timestamp>`, never
//! deleted, and rebuilt from the archives by `--apply`: every archive is
//! then an orphan, adopted with its pin from its `.meta.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::archive::reader::{read_sidecar, verify_archive};
use crate::catalog::{
    BackupRecord, Catalog, CatalogError, Finished, ListFilter, NewBackup, Status,
};
use crate::encryption::EncryptionError;
use crate::error::{Error, Result};
use crate::lock::{InstanceLock, StoreLock};
use crate::progress::NoProgress;
use crate::stores::Location;
use crate::{Context, fsutil, time};

/// What reconcile found about one backup or archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Problem {
    Missing,
    Mismatched,
    Corrupt,
    Orphaned,
    /// An incremental whose chain lacks a backup it needs: reported, as
    /// nothing but the missing archive can mend it.
    Broken,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub problem: Problem,
    pub instance: String,
    /// The backup id (from the row, or the archive's manifest).
    pub id: Option<String>,
    /// The archive file.
    pub path: String,
    pub detail: String,
    /// What `--apply` does (or did) about it; `None` when it cannot act.
    pub action: Option<String>,
}

/// What reconcile found and did.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub findings: Vec<Finding>,
    /// Rows and archives that agree.
    pub consistent: usize,
    pub applied: bool,
    /// Where a damaged catalog was moved before it was rebuilt.
    pub catalog_moved_to: Option<String>,
    /// What was wrong with it.
    pub catalog_damage: Option<String>,
}

/// Compares the catalog with the store (for one instance, or all), and
/// with `apply` makes the catalog true.
///
/// # Errors
///
/// Fails when the catalog is damaged and `apply` is not given (with a hint
/// to rebuild it), when a lock is held, or on I/O errors.
pub fn reconcile(
    ctx: &Context<'_>,
    instance: Option<&str>,
    store_name: Option<&str>,
    apply: bool,
    wait: Option<Duration>,
) -> Result<ReconcileReport> {
    let store = StoreLock::shared(ctx.layout, wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let scope = match store_name {
        Some(name) if name != crate::stores::HOME_STORE => Scope::Named {
            name: name.to_string(),
            store: ctx.config.stores.get(name)?,
        },
        _ => Scope::Home,
    };
    // Before the catalog is created: a store that cannot be listed
    // changes nothing.
    let listed = scope.archives(ctx)?;
    let (catalog, damage) = open_catalog(ctx, apply)?;
    let rows: Vec<BackupRecord> = match &catalog {
        Some(c) => c.list(&ListFilter {
            instance: instance.map(str::to_string),
            ..ListFilter::default()
        })?,
        None => Vec::new(),
    };
    let rows: Vec<BackupRecord> = rows
        .into_iter()
        .filter(|r| scope.holds(ctx, r.location.as_deref()))
        .collect();
    let mut instances: Vec<String> = match instance {
        Some(i) => vec![i.to_string()],
        None => {
            let mut names: Vec<String> = rows.iter().map(|r| r.instance.clone()).collect();
            names.extend(listed.iter().map(|(i, _)| i.clone()));
            names
        }
    };
    instances.sort();
    instances.dedup();

    let mut report = ReconcileReport {
        findings: Vec::new(),
        consistent: 0,
        applied: apply,
        catalog_moved_to: damage.as_ref().map(|m| m.to.clone()),
        catalog_damage: damage.map(|m| m.problem),
    };
    for name in &instances {
        // Rows change only under the instance's lock.
        let _lock = if apply {
            let lock = InstanceLock::acquire(
                &ctx.layout.locks(),
                name,
                &format!("reconcile {name}"),
                wait,
                ctx.cancel,
            )?;
            crate::ops::recover::recover_locked(ctx, &lock)?;
            Some(lock)
        } else {
            None
        };
        let mine: Vec<&BackupRecord> = rows.iter().filter(|r| &r.instance == name).collect();
        let files: Vec<&Location> = listed
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, at)| at)
            .collect();
        check_instance(
            ctx,
            catalog.as_ref(),
            name,
            (&mine, &files),
            apply,
            &mut report,
        )?;
    }
    Ok(report)
}

/// The store a reconcile compares the catalog with.
enum Scope {
    /// The home's own store directory.
    Home,
    /// A `[stores.NAME]` store.
    Named {
        name: String,
        store: std::sync::Arc<dyn crate::store::Store>,
    },
}

impl Scope {
    /// Whether a row at `location` is one of this store's.
    fn holds(&self, ctx: &Context<'_>, location: Option<&str>) -> bool {
        let Some(location) = location else {
            return matches!(self, Scope::Home);
        };
        let named = ctx.config.stores.name_of(location);
        match self {
            Scope::Home => named.is_none() && !location.starts_with("s3://"),
            Scope::Named { name, .. } => named == Some(name.as_str()),
        }
    }

    /// Every archive in the store, with the instance it is filed under:
    /// `<store>/<instance>/<file>` at home, `<host>/<instance>/<file>` (of
    /// every host) in a named store.
    fn archives(&self, ctx: &Context<'_>) -> Result<Vec<(String, Location)>> {
        match self {
            Scope::Home => {
                let mut out = Vec::new();
                for instance in crate::ops::list::store_instances(&ctx.layout.store) {
                    let dir = ctx.layout.instance_store(&instance);
                    for file in crate::ops::list::store_archives(&dir) {
                        out.push((instance.clone(), Location::file(file)));
                    }
                }
                Ok(out)
            }
            Scope::Named { store, .. } => Ok(store
                .list(None)?
                .into_iter()
                .filter_map(|o| {
                    let mut parts = o.key.as_str().split('/');
                    let (_host, instance, file) = (parts.next()?, parts.next()?, parts.next()?);
                    let archive = parts.next().is_none()
                        && crate::archive::Codec::from_file_name(file).is_some();
                    archive.then(|| {
                        (
                            instance.to_string(),
                            Location::object(store.clone(), o.key.clone()),
                        )
                    })
                })
                .collect()),
        }
    }
}

/// A damaged catalog moved aside: where to, and what was wrong.
struct MovedAside {
    to: String,
    problem: String,
}

/// Opens the catalog, checked with SQLite's own check. A report needs none
/// (nothing is created); `--apply` creates one, and moves a damaged one
/// aside first, returning where it went and what was wrong with it.
fn open_catalog(ctx: &Context<'_>, apply: bool) -> Result<(Option<Catalog>, Option<MovedAside>)> {
    let path = ctx.layout.catalog();
    if !apply {
        return match path.exists() {
            true => Ok((Some(Catalog::open_checked(&path)?), None)),
            false => Ok((None, None)),
        };
    }
    fsutil::create_private_dir_all(&ctx.layout.home)?;
    match Catalog::open_checked(&path) {
        Ok(c) => Ok((Some(c), None)),
        Err(e) if e.is_damage() => {
            let aside = move_aside(&path)?;
            let problem = match e {
                CatalogError::Damaged { problem, .. } => problem,
                _ => "it is not an SQLite database".to_string(),
            };
            let moved = MovedAside {
                to: aside.display().to_string(),
                problem,
            };
            Ok((Some(Catalog::open(&path)?), Some(moved)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Renames a damaged catalog (and its WAL and shared-memory files, which
/// SQLite pairs with it by name) to `catalog.db.damaged-<timestamp>`. It is
/// never deleted: it still holds the restore history.
fn move_aside(path: &Path) -> Result<PathBuf> {
    let stamp = time::id_stamp(time::now());
    let mut aside = path.with_file_name(format!("catalog.db.damaged-{stamp}"));
    let mut n = 2;
    while aside.symlink_metadata().is_ok() {
        aside = path.with_file_name(format!("catalog.db.damaged-{stamp}-{n}"));
        n += 1;
    }
    for suffix in ["-wal", "-shm"] {
        let side = with_suffix(path, suffix);
        if side.exists() {
            let to = with_suffix(&aside, suffix);
            std::fs::rename(&side, &to).map_err(|e| Error::io("moving aside", &side, e))?;
        }
    }
    std::fs::rename(path, &aside).map_err(|e| Error::io("moving aside", path, e))?;
    fsutil::fsync_dir(&fsutil::parent_dir(path))?;
    Ok(aside)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn check_instance(
    ctx: &Context<'_>,
    catalog: Option<&Catalog>,
    instance: &str,
    (rows, files): (&[&BackupRecord], &[&Location]),
    apply: bool,
    report: &mut ReconcileReport,
) -> Result<()> {
    let mut known: Vec<PathBuf> = Vec::new();
    for row in rows {
        ctx.cancel.check()?;
        let Some(loc) = &row.location else { continue };
        if !matches!(row.status, Status::Available | Status::Missing) {
            // Failed attempts have no archive; corrupt ones stay corrupt
            // until `verify` says otherwise.
            known.push(PathBuf::from(loc));
            continue;
        }
        let archive = ctx.config.stores.locate(loc)?;
        known.push(PathBuf::from(loc));
        let finding = |problem, detail: String, action: &str| Finding {
            problem,
            instance: instance.to_string(),
            id: Some(row.id.clone()),
            path: loc.clone(),
            detail,
            action: Some(action.to_string()),
        };
        let Some(size) = archive.size()? else {
            if row.status == Status::Available {
                report.findings.push(finding(
                    Problem::Missing,
                    "the catalog says available; the archive is not there".into(),
                    "marked missing",
                ));
                if apply && let Some(c) = catalog {
                    crate::failpoint::hit("reconcile.before-status")?;
                    c.set_status(&row.id, Status::Missing, None)?;
                }
            } else {
                report.consistent += 1;
            }
            continue;
        };
        let sidecar = read_sidecar(&archive).ok().flatten();
        let disagreement = if row.size.is_some_and(|s| s != size) {
            Some(format!(
                "the archive is {size} bytes, the catalog records {}",
                row.size.unwrap_or_default()
            ))
        } else if sidecar.is_none() {
            Some("its sidecar is missing or unreadable".to_string())
        } else if row.sha256.is_some() && sidecar != row.sha256 {
            Some("its sidecar's SHA-256 differs from the catalog's".to_string())
        } else {
            None
        };
        match (disagreement, row.status) {
            (Some(detail), _) => {
                report
                    .findings
                    .push(finding(Problem::Corrupt, detail, "marked corrupt"));
                if apply && let Some(c) = catalog {
                    c.set_status(&row.id, Status::Corrupt, None)?;
                }
            }
            (None, Status::Missing) => {
                report.findings.push(finding(
                    Problem::Mismatched,
                    "the catalog says missing; the archive is there and agrees".into(),
                    "marked available",
                ));
                if apply && let Some(c) = catalog {
                    c.set_status(&row.id, Status::Available, None)?;
                }
            }
            (None, _) => report.consistent += 1,
        }
    }
    // Archives in the store that no row names.
    for file in files {
        ctx.cancel.check()?;
        if known.iter().any(|k| same_file(k, file.label())) {
            continue;
        }
        adopt(ctx, catalog, instance, file, apply, report)?;
    }
    broken_chains(catalog, instance, rows, report)?;
    Ok(())
}

/// Reports the incrementals of `instance` that would be available once
/// the findings are applied but whose chain is not.
fn broken_chains(
    catalog: Option<&Catalog>,
    instance: &str,
    rows: &[&BackupRecord],
    report: &mut ReconcileReport,
) -> Result<()> {
    use std::collections::HashMap;
    let mut state: HashMap<String, (Status, Option<String>)> = rows
        .iter()
        .map(|r| (r.id.clone(), (r.status, r.parent.clone())))
        .collect();
    for f in report.findings.iter().filter(|f| f.instance == instance) {
        let Some(id) = &f.id else { continue };
        let status = match f.problem {
            Problem::Missing => Status::Missing,
            Problem::Corrupt => Status::Corrupt,
            Problem::Mismatched => Status::Available,
            Problem::Orphaned if f.action.is_some() => Status::Available,
            _ => continue,
        };
        let parent = match catalog {
            Some(c) => c.get(id)?.and_then(|r| r.parent),
            None => None,
        };
        let entry = state.entry(id.clone()).or_insert((status, parent));
        entry.0 = status;
    }
    let mut broken = Vec::new();
    for (id, (status, parent)) in &state {
        if *status != Status::Available {
            continue;
        }
        let mut next = parent.clone();
        let mut hops = 0;
        while let Some(up) = next {
            hops += 1;
            match state.get(&up) {
                Some((Status::Available, p)) if hops < 10_000 => next = p.clone(),
                other => {
                    let why =
                        other.map_or("not in the catalog".to_string(), |(s, _)| s.to_string());
                    broken.push((id.clone(), up, why));
                    break;
                }
            }
        }
    }
    broken.sort();
    for (id, link, why) in broken {
        report.findings.push(Finding {
            problem: Problem::Broken,
            instance: instance.to_string(),
            id: Some(id.clone()),
            path: String::new(),
            detail: format!(
                "an incremental whose chain is broken: {link}, which it needs, is {why}; it \
                 cannot be restored until that archive is back"
            ),
            action: None,
        });
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// What an orphan is adopted from: its manifest and trailer, and the
/// archive's SHA-256 and size.
struct Adoptable {
    manifest: crate::archive::Manifest,
    trailer: crate::archive::Trailer,
    sha256: String,
    size: u64,
    encrypted: bool,
    /// Whether its content was read and checked, or only its ends.
    verified: bool,
}

/// An orphan in a bucket with its sidecar there, read at its two ends
/// only (ranged GETs: the payload is not fetched); `None` when it must be
/// read in full (no sidecar, an age stream, ends that cannot be found).
fn by_its_ends(ctx: &Context<'_>, file: &Location) -> Result<Option<Adoptable>> {
    if file.as_object().is_none() {
        return Ok(None);
    }
    let (Some(size), Ok(Some(sha256))) = (file.size()?, read_sidecar(file)) else {
        return Ok(None);
    };
    let Ok(Some(ends)) = crate::archive::ends::read_ends(file, size, ctx.keys) else {
        return Ok(None);
    };
    Ok(Some(Adoptable {
        manifest: ends.manifest,
        trailer: ends.trailer,
        sha256,
        size,
        encrypted: false,
        verified: false,
    }))
}

/// Adopts an orphaned archive, with `apply`: one in a bucket from its two
/// ends, any other once verified in full.
fn adopt(
    ctx: &Context<'_>,
    catalog: Option<&Catalog>,
    instance: &str,
    file: &Location,
    apply: bool,
    report: &mut ReconcileReport,
) -> Result<()> {
    let found = match by_its_ends(ctx, file)? {
        Some(a) => a,
        None => match verified_whole(ctx, instance, file, report) {
            Some(a) => a,
            None => return Ok(()),
        },
    };
    record_orphan(catalog, (instance, file), found, apply, report)
}

/// An orphan read and checked in full; `None` (with a finding) when it
/// does not verify or cannot be opened.
fn verified_whole(
    ctx: &Context<'_>,
    instance: &str,
    file: &Location,
    report: &mut ReconcileReport,
) -> Option<Adoptable> {
    let run = verify_archive(file, (&NoProgress, ctx.cancel), ctx.keys);
    let path = file.label().display().to_string();
    match run.result {
        Ok(v) => Some(Adoptable {
            sha256: v.sha256,
            size: v.size,
            encrypted: v.encrypted,
            manifest: v.manifest,
            trailer: v.trailer,
            verified: true,
        }),
        Err(Error::Encryption(EncryptionError::NoPassphrase { .. })) => {
            report.findings.push(Finding {
                problem: Problem::Orphaned,
                instance: instance.to_string(),
                id: None,
                path,
                detail: "not in the catalog; it is encrypted to a passphrase, and there is no \
                         passphrase_command (nor a terminal to ask on), so its manifest cannot \
                         be read: set `passphrase_command` and run reconcile again to adopt it"
                    .into(),
                action: None,
            });
            None
        }
        Err(Error::Encryption(EncryptionError::NoIdentity { .. })) => {
            report.findings.push(Finding {
                problem: Problem::Orphaned,
                instance: instance.to_string(),
                id: None,
                path,
                detail: "not in the catalog; it is encrypted and no identity was given, so its \
                         manifest cannot be read: run reconcile again with --identity FILE (or \
                         $BACKSTOP_IDENTITY) to adopt it"
                    .into(),
                action: None,
            });
            None
        }
        Err(e) => {
            report.findings.push(Finding {
                problem: Problem::Orphaned,
                instance: instance.to_string(),
                id: None,
                path,
                detail: format!(
                    "not in the catalog, and it does not verify: {}",
                    crate::ops::backup::error_chain(&e)
                ),
                action: None,
            });
            None
        }
    }
}

/// Records an orphan (with `apply`) from what was read of it, unless its
/// sidecar disagrees or it is another instance's.
fn record_orphan(
    catalog: Option<&Catalog>,
    (instance, file): (&str, &Location),
    verified: Adoptable,
    apply: bool,
    report: &mut ReconcileReport,
) -> Result<()> {
    let path = file.label().display().to_string();
    let m = &verified.manifest;
    let sidecar = read_sidecar(file).ok().flatten();
    if sidecar.as_deref().is_some_and(|s| s != verified.sha256) || m.instance != instance {
        report.findings.push(Finding {
            problem: Problem::Orphaned,
            instance: instance.to_string(),
            id: Some(m.id.clone()),
            path,
            detail: if m.instance != instance {
                format!(
                    "not in the catalog; it is a backup of {}, in {instance}'s directory",
                    m.instance
                )
            } else {
                "not in the catalog, and its sidecar disagrees with its content".into()
            },
            action: None,
        });
        return Ok(());
    }
    let (pinned, meta_note) = pin_of(file, &m.id);
    let mut action = String::from("adopted from its manifest and trailer");
    if sidecar.is_none() {
        action.push_str("; sidecar written");
    }
    if pinned {
        action.push_str("; pinned, as its metadata file says");
    }
    report.findings.push(Finding {
        problem: Problem::Orphaned,
        instance: instance.to_string(),
        id: Some(m.id.clone()),
        path: path.clone(),
        detail: {
            let how = if verified.verified {
                "the archive verifies"
            } else {
                "its manifest and trailer were read (ranged GETs; `verify` checks the content, \
                 as every restore does)"
            };
            match meta_note {
                Some(note) => format!("not in the catalog; {how}; {note}"),
                None => format!("not in the catalog; {how}"),
            }
        },
        action: Some(action),
    });
    if !apply {
        return Ok(());
    }
    let Some(catalog) = catalog else {
        return Ok(());
    };
    crate::failpoint::hit("reconcile.before-adopt")?;
    if sidecar.is_none() {
        let line = crate::archive::format::sidecar_line(&verified.sha256, &file.file_name());
        file.sidecar().write_small(line.as_bytes())?;
    }
    crate::failpoint::hit("reconcile.before-row")?;
    let t = &verified.trailer;
    let finished_at = m
        .created_at
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|c| {
            c.checked_add(jiff::SignedDuration::from_millis(t.duration_ms as i64))
                .ok()
        })
        .map(time::rfc3339)
        .unwrap_or_else(|| m.created_at.clone());
    let warnings = (t.vanished.len() + t.changed.len() + t.unreadable.len()) as u64;
    // Its frame table, trusted as its sidecar is: what the store holds.
    let frames_sha = crate::archive::frames::found_table(file, verified.size, &m.id)?;
    let adopted = catalog.adopt(
        &m.id,
        &NewBackup {
            instance: &m.instance,
            origin: &m.root,
            host: &m.host,
            created_at: &m.created_at,
            about: &m.about,
            compression: m.compression,
            level: m.level,
            encrypted: verified.encrypted,
            created_by: &m.created_by,
            chain: m.chain.as_ref(),
        },
        &Finished {
            finished_at: &finished_at,
            location: &path,
            size: verified.size,
            entries: t.entries,
            files: t.files,
            bytes: t.bytes,
            sha256: &verified.sha256,
            frames_sha256: frames_sha.as_deref(),
            warnings,
        },
    )?;
    if adopted && pinned {
        catalog.set_pinned(&m.id, true)?;
    }
    if !adopted && let Some(f) = report.findings.last_mut() {
        // A row with this id exists elsewhere: two copies of one backup.
        f.action = None;
        f.detail = format!(
            "not in the catalog at this path; the catalog has backup {} elsewhere (a copy?)",
            m.id
        );
    }
    Ok(())
}

/// Whether the metadata file beside `file` pins backup `id`, and a note
/// when it exists but cannot be used (unreadable, or about another backup).
fn pin_of(file: &Location, id: &str) -> (bool, Option<String>) {
    match crate::meta::read(file) {
        Ok(None) => (false, None),
        Ok(Some(meta)) if meta.id == id => (meta.pinned, None),
        Ok(Some(meta)) => (
            false,
            Some(format!(
                "its metadata file describes backup {}, so it is ignored",
                meta.id
            )),
        ),
        Err(e) => (
            false,
            Some(format!(
                "its metadata file is ignored: {}",
                crate::ops::backup::error_chain(&e)
            )),
        ),
    }
}
