//! `restore`: put a backup back, all or nothing (guarantees 2 to 8).
//!
//! The pipeline: resolve the backup → check it and the destination (format,
//! whole-file checksum, `--instance`, free space, permissions) → plan → take
//! the instance lock → repair an interrupted restore → confirm → safety
//! backup of the current state → stage: unpack beside each target, verifying
//! every checksum as it goes → apply the renames of the chosen mode through
//! the journal → commit → clean up. A failure before the commit point undoes
//! every rename and leaves the previous state; a crash at any instant is
//! repaired from the journal by the next command that takes the lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::archive::format::SourceManifest;
use crate::archive::reader::{read_manifest, read_sidecar, walk_archive};
use crate::archive::{ArchiveError, BackupKind, CompressionSpec, Description, Manifest};
use crate::catalog::{BackupRecord, Catalog, ListFilter, NewRestore, Status};
use crate::error::{Error, ErrorKind, Result};
use crate::failpoint;
use crate::fsutil;
use crate::instance::{Instance, Source, SourceSpec};
use crate::lock::{InstanceLock, hostname};
use crate::ops::backup::{BackupRequest, Output, backup_locked, error_chain};
use crate::ops::list::open_existing;
use crate::ops::recover::recover_locked;
use crate::ops::show::{Resolved, resolve as resolve_name};
use crate::restore::confine::Confined;
use crate::restore::diff::{self, Action, Changes};
use crate::restore::handle;
use crate::restore::journal::{self, ImportTarget, Journal, Phase, Step};
use crate::restore::listing::Walk;
use crate::restore::preview::{self, Preview, Skim};
use crate::restore::stage::{Selection, Stager, remove_tree, root_relative, staging_dir};
use crate::restore::steps::{Merger, Moves};
use crate::source::exclude::{Excludes, Patterns};
use crate::{Context, time};

pub use crate::restore::steps::Mode;

/// Everything a restore needs to know.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// A backup id, an archive file, or an application version.
    pub target: String,
    /// Where to restore; the backup's own root when `None`.
    pub dest: Option<PathBuf>,
    /// Exact for the backup's own root, safe elsewhere, when `None`.
    pub mode: Option<Mode>,
    /// Only these sources (all when empty).
    pub only: Vec<String>,
    /// Paths (gitignore syntax, relative to the destination) left as they are.
    pub excludes: Vec<String>,
    pub dry_run: bool,
    /// Take a safety backup of the current state first.
    pub pre_backup: bool,
    pub backup_message: Option<String>,
    /// Refuse unless the backup belongs to this instance.
    pub instance: Option<String>,
    /// Allow an exact restore over a directory that is not the backup's own.
    pub force: bool,
    pub wait: Option<Duration>,
    /// For a rollback: run the instance's activate command with this
    /// version once the files are in place, before the services start.
    pub activate: Option<String>,
    /// The reason recorded on the safety backup (`pre-restore`, `pre-rollback`).
    pub safety_reason: String,
}

impl RestoreRequest {
    /// A request for `target` with the defaults of the command line: safety
    /// backup on, mode chosen by destination, everything restored.
    pub fn new(target: impl Into<String>) -> RestoreRequest {
        RestoreRequest {
            target: target.into(),
            dest: None,
            mode: None,
            only: Vec::new(),
            excludes: Vec::new(),
            dry_run: false,
            pre_backup: true,
            backup_message: None,
            instance: None,
            force: false,
            wait: None,
            activate: None,
            safety_reason: "pre-restore".into(),
        }
    }
}

/// One check made before anything is written.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Where one source goes.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedSource {
    pub name: String,
    pub target: String,
    /// Whether something is at the target now.
    pub exists: bool,
}

/// The plan: what the restore will do, before it does anything.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub backup: String,
    pub archive: String,
    pub instance: String,
    pub created_at: String,
    pub destination: String,
    pub mode: Mode,
    pub sources: Vec<PlannedSource>,
    pub checks: Vec<Check>,
    /// Whether a safety backup of the current state will be taken, and if
    /// not, why.
    pub safety_backup: bool,
    pub safety_backup_note: String,
    /// Every path and its action (from the archive for a dry run, from the
    /// staged copy for a real restore), and the totals.
    #[serde(flatten)]
    pub changes: Changes,
}

/// A finished restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub plan: RestorePlan,
    pub restore_id: i64,
    /// Files that were already in place as the backup has them, and their
    /// bytes: linked into the staged tree rather than written again.
    pub linked_files: u64,
    pub linked_bytes: u64,
    pub safety_backup: Option<String>,
    pub warnings: Vec<String>,
    pub duration_ms: u64,
}

/// How `restore` ended without an error.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum RestoreOutcome {
    /// `--dry-run`: the plan, and nothing changed.
    DryRun {
        plan: RestorePlan,
    },
    /// The confirmation was declined: nothing changed.
    Declined {
        plan: RestorePlan,
    },
    Restored(RestoreReport),
}

/// The backup a restore reads.
struct Found {
    archive: PathBuf,
    record: Option<BackupRecord>,
    manifest: Manifest,
}

fn find(ctx: &Context<'_>, target: &str) -> Result<Found> {
    let catalog = open_existing(ctx)?;
    let (archive, record) = match resolve_name(catalog.as_ref(), target) {
        Ok(Resolved::Id(r)) => {
            if matches!(r.status, Status::Failed | Status::Creating) {
                return Err(Error::usage(
                    format!(
                        "backup {} is {}: it has no archive to restore",
                        r.id, r.status
                    ),
                    Some("`backstop list --status available` shows what can be restored".into()),
                ));
            }
            let loc = r.location.clone().ok_or_else(|| Error::NotFound {
                message: format!("backup {} has no archive file", r.id),
                hint: None,
            })?;
            (PathBuf::from(loc), Some(r))
        }
        Ok(Resolved::File(p, r)) => (p, r),
        Err(not_found) => {
            // An application version: its newest available backup.
            let by_version = match &catalog {
                Some(c) => c
                    .list(&ListFilter {
                        version: Some(target.to_string()),
                        status: Some(Status::Available),
                        limit: Some(1),
                        ..ListFilter::default()
                    })?
                    .into_iter()
                    .next(),
                None => None,
            };
            let Some(r) = by_version else {
                return Err(not_found);
            };
            (
                PathBuf::from(r.location.clone().unwrap_or_default()),
                Some(r),
            )
        }
    };
    if !archive.is_file() {
        return Err(Error::NotFound {
            message: format!("the archive {} is missing", archive.display()),
            hint: Some(
                "run `backstop verify --all` to mark missing archives; restore another backup"
                    .into(),
            ),
        });
    }
    let manifest = read_manifest(&archive)?;
    if let Some(r) = &record
        && r.id != manifest.id
    {
        return Err(ArchiveError::Corrupt {
            path: archive.clone(),
            detail: format!("it holds backup {}, not {}", manifest.id, r.id),
        }
        .into());
    }
    Ok(Found {
        archive,
        record,
        manifest,
    })
}

/// The whole-file checksums the archive must have: its sidecar's and the
/// catalog's (which must agree with each other).
fn expected_checksum(src: &Found) -> Result<Option<(String, String)>> {
    let sidecar = read_sidecar(&src.archive)?.map(|s| ("the sidecar", s));
    let catalog = src
        .record
        .as_ref()
        .and_then(|r| r.sha256.clone())
        .map(|s| ("the catalog", s));
    match (sidecar, catalog) {
        (Some((_, a)), Some((_, b))) if a != b => Err(ArchiveError::Checksum {
            path: src.archive.clone(),
            detail: format!("the sidecar records SHA-256 {a}, the catalog {b}"),
        }
        .into()),
        (Some((_, a)), Some(_)) => Ok(Some(("the sidecar and the catalog".into(), a))),
        (Some((w, a)), None) | (None, Some((w, a))) => Ok(Some((w.into(), a))),
        (None, None) => Ok(None),
    }
}

/// Compares the archive's SHA-256 with what it must be.
fn check_sum(src: &Found, expected: &Option<(String, String)>, actual: &str) -> Result<()> {
    match expected {
        Some((what, sum)) if sum != actual => Err(ArchiveError::Checksum {
            path: src.archive.clone(),
            detail: format!("{what} records SHA-256 {sum}, the archive's is {actual}"),
        }
        .into()),
        _ => Ok(()),
    }
}

/// `dest` made absolute, with symlinks resolved in the part that exists.
fn resolve_dest(dest: &Path) -> PathBuf {
    let abs = crate::config::absolute(dest);
    let base = fsutil::existing_ancestor(&abs);
    let canonical = base.canonicalize().unwrap_or_else(|_| base.clone());
    match abs.strip_prefix(&base) {
        Ok(rest) if !rest.as_os_str().is_empty() => canonical.join(rest),
        _ => canonical,
    }
}

/// Whether a keep rule covers a path relative to a target.
type KeepRule<'a> = Box<dyn Fn(&Path, bool) -> bool + 'a>;

/// What a dry run plans: the archive read once (twice when the catalog
/// cannot rule out paths the backup could not hold, whose list comes last),
/// each entry merged with the live tree as it comes.
#[allow(clippy::too_many_arguments)]
fn preview(
    ctx: &Context<'_>,
    src: &Found,
    mode: Mode,
    sources: &[&SourceManifest],
    places: &HashMap<String, Place>,
    scratch: &Path,
    selection: &Selection,
    kept: &dyn Fn(&Path, &Path, bool) -> bool,
) -> Result<Changes> {
    let m = &src.manifest;
    let incomplete = if src.record.as_ref().is_some_and(|r| r.warnings == 0) {
        BTreeSet::new()
    } else {
        let run = walk_archive(&src.archive, ctx.progress, ctx.cancel, &mut Skim);
        incomplete_paths(m, &run.result?.trailer)
    };
    let databases = database_paths(places);
    let other = |abs: &Path| databases.iter().any(|d| d == abs);
    let keeps: Vec<(String, KeepRule<'_>)> = sources
        .iter()
        .filter_map(|s| {
            let (Place::Tree(target) | Place::File { target, .. }) = &places[&s.name] else {
                return None;
            };
            let rel_base = PathBuf::from(if s.path == "." { "" } else { &s.path });
            let incomplete = &incomplete;
            let keep = move |rel: &Path, is_dir: bool| {
                kept(&target.join(rel), &rel_base.join(rel), is_dir)
                    || incomplete.contains(&rel_base.join(rel))
            };
            Some((
                s.name.clone(),
                Box::new(keep) as Box<dyn Fn(&Path, bool) -> bool>,
            ))
        })
        .collect();
    let mut targets = Vec::new();
    for s in sources {
        let keep = keeps
            .iter()
            .find(|(n, _)| *n == s.name)
            .map(|(_, k)| k.as_ref());
        let target = match (&places[&s.name], keep) {
            (Place::Import { file, .. }, _) => preview::Target::Import {
                file: file.clone(),
                size: 0,
            },
            (Place::Tree(t), Some(keep)) => {
                preview::Target::Tree(Merger::new(mode, t, None, keep, &other, None)?)
            }
            (Place::File { target, file }, Some(keep)) => preview::Target::File {
                file: file.clone(),
                merger: Merger::new(mode, target, None, keep, &other, None)?,
            },
            _ => continue,
        };
        targets.push((s.name.clone(), target));
    }
    let mut visitor = Preview::new(&m.sources, targets, selection);
    walk_archive(&src.archive, ctx.progress, ctx.cancel, &mut visitor).result?;
    // In the order of the sources, as a real restore reports them.
    let mut by_name = visitor.into_targets();
    let mut changes = Changes::default();
    for s in sources {
        match by_name.remove(&s.name) {
            Some(preview::Target::Import { size, .. }) => changes.push(
                &places[&s.name].shown(scratch, &s.name),
                Action::Replace,
                if s.kind == "volume" { "volume" } else { "dump" },
                size,
            ),
            Some(preview::Target::Tree(merger) | preview::Target::File { merger, .. }) => {
                changes.extend(&merger.finish()?.0);
            }
            None => {}
        }
    }
    Ok(changes)
}

/// Merges a staged tree with the live one: the plan of every path, the
/// moves the mode asks for, and how many entries were staged.
fn merge_staged(
    mode: Mode,
    target: &Path,
    staged_top: &Path,
    kept: &dyn Fn(&Path, bool) -> bool,
    other: &dyn Fn(&Path) -> bool,
    linked: &HashMap<u64, (i64, u64)>,
) -> Result<(Changes, Moves, u64)> {
    let mut merger = Merger::new(mode, target, Some(staged_top), kept, other, Some(linked))?;
    let mut staged = Walk::new(staged_top, true)?;
    let mut entries = 0;
    while let Some((rel, node)) = staged.peek()?.cloned() {
        staged.take(true);
        merger.backup_entry(rel, &node)?;
        entries += 1;
    }
    staged.finish()?;
    let (changes, moves) = merger.finish()?;
    Ok((changes, moves, entries))
}

/// Walks the live tree at `target` to the end, without descending where a
/// rule keeps: fails on the first directory it cannot read.
fn check_readable(target: &Path, kept: &dyn Fn(&Path, bool) -> bool) -> Result<()> {
    let mut walk = Walk::new(target, false)?;
    while let Some((rel, node)) = walk.peek()? {
        let descend = rel.as_os_str().is_empty() || !kept(rel, node.kind == "dir");
        walk.take(descend);
    }
    walk.finish()
}

/// The root-relative paths the backup could not hold as they were: its
/// trailer's vanished, unreadable and skipped paths.
fn incomplete_paths(m: &Manifest, trailer: &crate::archive::format::Trailer) -> BTreeSet<PathBuf> {
    let listed = trailer
        .vanished
        .iter()
        .chain(trailer.unreadable.iter().map(|p| &p.path))
        .chain(trailer.skipped.iter().map(|p| &p.path));
    listed
        .filter_map(|member| {
            let top = member.split('/').next().unwrap_or_default();
            let source = m.sources.iter().find(|s| s.name == top)?;
            Some(root_relative(source, member.as_bytes()))
        })
        .collect()
}

/// Refuses a target below `dest` whose way there passes through a symlink
/// or a file: a restore never writes through a symlink inside its
/// destination (the same is enforced again, by handle, at every step).
fn check_way_to(dest: &Path, target: &Path) -> Result<()> {
    let Ok(below) = target.strip_prefix(dest) else {
        return Ok(());
    };
    let mut cur = dest.to_path_buf();
    let parts: Vec<_> = below.components().collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        cur.push(part);
        let Ok(md) = cur.symlink_metadata() else {
            return Ok(());
        };
        let what = if md.file_type().is_symlink() {
            "a symlink"
        } else if !md.is_dir() {
            "not a directory"
        } else {
            continue;
        };
        return Err(Error::Refused {
            message: format!(
                "{} is {what}, and the backup restores {} below it: backstop never restores through a symlink or a file inside the destination",
                cur.display(),
                target.display()
            ),
            hint: Some(format!(
                "move {} aside (or replace it with the directory it stands for), or restore elsewhere with --dest DIR",
                cur.display()
            )),
        });
    }
    Ok(())
}

/// Where one source of the backup goes.
#[derive(Debug, Clone)]
enum Place {
    /// A tree (or a single file) at this path.
    Tree(PathBuf),
    /// A captured database: the one file under the source's name replaces
    /// this file.
    File { target: PathBuf, file: String },
    /// A volume or dump, put back by a program; staged under backstop's home.
    Import { into: ImportTarget, file: String },
}

impl Place {
    /// The path the plan shows, and the one whose filesystem holds the
    /// staging.
    fn target(&self, scratch: &Path, name: &str) -> PathBuf {
        match self {
            Place::Tree(t) | Place::File { target: t, .. } => t.clone(),
            Place::Import { .. } => scratch.join(name),
        }
    }

    fn shown(&self, scratch: &Path, name: &str) -> String {
        match self {
            Place::Import {
                into: ImportTarget::Volume { name },
                ..
            } => format!("podman volume {name}"),
            Place::Import {
                into: ImportTarget::Command { command, .. },
                ..
            } => format!("`{command}`"),
            other => other.target(scratch, name).display().to_string(),
        }
    }
}

/// The database files the restore's SQLite sources replace, with their
/// journal files: not part of the trees around them.
fn database_paths(places: &HashMap<String, Place>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for place in places.values() {
        if let Place::File { target, .. } = place {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = target.as_os_str().to_os_string();
                p.push(suffix);
                out.push(PathBuf::from(p));
            }
        }
    }
    out
}

/// Decides where `source` goes. Captured sources (volumes, dumps) are put
/// back by their program only when restoring the instance in place;
/// elsewhere they are written as files under `<dest>/<name>/`. A dump's
/// restore command always comes from the config, never from the archive.
fn place(
    dest: &Path,
    in_place: bool,
    trusted: bool,
    source: &SourceManifest,
    instance: Option<&Instance>,
) -> Result<Place> {
    let configured = instance.and_then(|i| i.sources.iter().find(|s| s.name == source.name));
    // An absolute path (a bind mount outside the root) is only written in
    // place when the config says the same or the backup is one of this
    // catalog's: a manifest alone never sends a restore outside its
    // destination.
    let configured_as = |p: &str| {
        configured.is_some_and(|c| match &c.spec {
            SourceSpec::Path(cp) | SourceSpec::Sqlite(cp) => cp == Path::new(p),
            _ => false,
        })
    };
    let at = |p: &str| {
        if p == "." {
            dest.to_path_buf()
        } else if Path::new(p).is_absolute() {
            if in_place && (trusted || configured_as(p)) {
                resolve_dest(Path::new(p))
            } else {
                dest.join(&source.name)
            }
        } else {
            dest.join(p)
        }
    };
    let file = || {
        source.file.clone().ok_or_else(|| {
            Error::from(ArchiveError::Corrupt {
                path: PathBuf::new(),
                detail: format!("source {} names no file in its manifest", source.name),
            })
        })
    };
    match source.kind.as_str() {
        "path" => Ok(Place::Tree(at(&source.path))),
        "sqlite" => Ok(Place::File {
            target: at(&source.path),
            file: file()?,
        }),
        "volume" | "command" if !in_place => Ok(Place::Tree(dest.join(&source.name))),
        "volume" => {
            let name = match configured.map(|c| &c.spec) {
                Some(SourceSpec::Volume(v)) => v.clone(),
                _ => source
                    .origin
                    .strip_prefix("podman volume ")
                    .unwrap_or_default()
                    .to_string(),
            };
            crate::podman::check_name("volume", &name).map_err(|e| ArchiveError::Corrupt {
                path: PathBuf::new(),
                detail: format!("source {}: {e}", source.name),
            })?;
            Ok(Place::Import {
                into: ImportTarget::Volume { name },
                file: file()?,
            })
        }
        "command" => {
            let (
                Some(inst),
                Some(SourceSpec::Command {
                    restore: Some(command),
                    ..
                }),
            ) = (instance, configured.map(|c| &c.spec))
            else {
                return Err(Error::usage(
                    format!(
                        "source {} is a command's output, and the config gives it no restore command",
                        source.name
                    ),
                    Some(format!(
                        "add `restore = \"...\"` to [instances.{}.sources.{}], leave it out with --only, or write it as a file with --dest DIR",
                        instance.map_or("NAME", |i| i.name.as_str()),
                        source.name
                    )),
                ));
            };
            let env = inst.env();
            Ok(Place::Import {
                into: ImportTarget::Command {
                    source: source.name.clone(),
                    command: command.clone(),
                    cwd: Some(inst.root.clone()),
                    env: env
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                },
                file: file()?,
            })
        }
        other => Err(Error::usage(
            format!(
                "source {} is of kind `{other}`, which this backstop does not know",
                source.name
            ),
            Some("upgrade backstop, or leave the source out with --only".into()),
        )),
    }
}

/// Plans, and (unless it is a dry run or the confirmation is declined)
/// carries out, a restore.
///
/// `confirm` is asked once, with the plan, after every check has passed and
/// before anything is written.
///
/// # Errors
///
/// Integrity failures (exit 4) and bad requests are refused before anything
/// is written; a failure after the restore began is rolled back and
/// reported as [`Error::RolledBack`] (exit 5); a held lock is exit 6.
pub fn restore(
    ctx: &Context<'_>,
    req: &RestoreRequest,
    confirm: &mut dyn FnMut(&RestorePlan) -> bool,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    let src = find(ctx, &req.target)?;
    let m = &src.manifest;
    if let Some(name) = &req.instance
        && *name != m.instance
    {
        return Err(Error::usage(
            format!(
                "backup {} belongs to instance {}, not {name}",
                m.id, m.instance
            ),
            Some("check the backup id, or drop --instance".into()),
        ));
    }
    for name in &req.only {
        if !m.sources.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = m.sources.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::usage(
                format!("backup {} has no source named {name}", m.id),
                Some(format!("its sources are: {}", names.join(", "))),
            ));
        }
    }
    // The plan is made under the lock it is carried out under, after any
    // interrupted restore of the instance is finished or undone, so what
    // the user is shown is what happens. A dry run takes no lock (it
    // creates nothing) and says when a recovery is pending.
    let lock = if req.dry_run {
        None
    } else {
        fsutil::create_private_dir_all(&ctx.layout.home)?;
        let lock = InstanceLock::acquire(
            &ctx.layout.locks(),
            &m.instance,
            &format!("restore {}", m.id),
            req.wait,
            ctx.cancel,
        )?;
        recover_locked(ctx, &lock)?;
        Some(lock)
    };
    // The config's definition of the instance, when it has one: its root,
    // secrets, services and restore commands.
    let inst = ctx.config.instances.get(&m.instance);
    let own_root = inst.map_or_else(|| PathBuf::from(&m.root), |i| i.root.clone());
    let dest = resolve_dest(req.dest.as_deref().unwrap_or(&own_root));
    let is_own_root = resolve_dest(&own_root) == dest;
    let mode = req
        .mode
        .unwrap_or(if is_own_root { Mode::Exact } else { Mode::Safe });
    if req.activate.is_some() && !is_own_root {
        return Err(Error::usage(
            "a rollback puts the instance back in place; it takes no destination",
            Some("use `backstop restore ID --dest DIR` to restore elsewhere".into()),
        ));
    }

    let mut keep_patterns = m.never_restore.clone();
    keep_patterns.extend(req.excludes.iter().cloned());
    let secrets = inst.map(|i| i.secrets.clone()).unwrap_or_default();
    let selection = Selection {
        only: req.only.clone(),
        keep: Patterns::new(&dest, &keep_patterns)?,
        secrets: Patterns::new(&dest, &secrets)?,
    };
    // What the backup never covered stays too: paths its excludes matched.
    let backup_excludes = Excludes::new(&dest, &m.excludes)?;
    let kept = |abs: &Path, rel_root: &Path, is_dir: bool| {
        selection.keep.matches(rel_root, is_dir).is_some()
            || backup_excludes.check(abs, is_dir).is_some()
    };

    let sources: Vec<&SourceManifest> = m
        .sources
        .iter()
        .filter(|s| selection.source_selected(&s.name))
        .collect();
    let scratch = ctx.layout.home.join("restore").join(&m.instance);
    // A backup this home's catalog holds with its checksum is one backstop
    // wrote (the archive is checked against that checksum before anything
    // is changed): its absolute paths (bind mounts, found from quadlet
    // units that may be gone now) are its own. A bare archive file's are
    // not.
    let trusted = src.record.as_ref().is_some_and(|r| r.sha256.is_some());
    let mut places = HashMap::new();
    for s in &sources {
        places.insert(s.name.clone(), place(&dest, is_own_root, trusted, s, inst)?);
    }
    for place in places.values() {
        if let Place::Tree(t) | Place::File { target: t, .. } = place {
            check_way_to(&dest, t)?;
        }
    }
    let planned_sources: Vec<PlannedSource> = sources
        .iter()
        .map(|s| {
            let place = &places[&s.name];
            let target = place.target(&scratch, &s.name);
            PlannedSource {
                name: s.name.clone(),
                exists: match place {
                    Place::Import { .. } => true,
                    _ => target.symlink_metadata().is_ok(),
                },
                target: place.shown(&scratch, &s.name),
            }
        })
        .collect();

    // Checks, all before anything is written.
    let mut checks = vec![Check {
        name: "format",
        ok: true,
        detail: format!("archive format {} written by {}", m.format, m.created_by),
    }];
    let expected = expected_checksum(&src)?;
    if let Some(name) = &req.instance {
        checks.push(Check {
            name: "instance",
            ok: true,
            detail: format!("the backup belongs to {name}"),
        });
    }
    if req.dry_run
        && let Some(pending) = Journal::load(&ctx.layout.home, &m.instance)?
    {
        checks.push(Check {
            name: "interrupted restore",
            ok: true,
            detail: format!(
                "the restore of {} into {} was interrupted; the restore finishes or undoes it first (or run `backstop recover {}`)",
                pending.backup,
                pending.destination.display(),
                m.instance
            ),
        });
    }
    let base = fsutil::existing_ancestor(&dest);
    let need = m.totals.bytes + m.totals.bytes / 20 + m.totals.entries * 4096 + (16 << 20);
    let have = fsutil::available_space(&base)?;
    if have < need {
        return Err(Error::Refused {
            message: format!(
                "not enough free space on the filesystem of {}: the restore needs about {} MiB, {} MiB are free",
                base.display(),
                need >> 20,
                have >> 20
            ),
            hint: Some("free some space, or restore elsewhere with --dest DIR".into()),
        });
    }
    checks.push(Check {
        name: "free space",
        ok: true,
        detail: format!(
            "{} MiB free on {}, about {} MiB needed",
            have >> 20,
            base.display(),
            need >> 20
        ),
    });
    if rustix::fs::access(&base, rustix::fs::Access::WRITE_OK).is_err() {
        return Err(Error::Refused {
            message: format!("{} is not writable", base.display()),
            hint: Some(
                "run as a user who may write there, or restore elsewhere with --dest DIR".into(),
            ),
        });
    }
    checks.push(Check {
        name: "permissions",
        ok: true,
        detail: format!("{} is writable", base.display()),
    });
    if mode == Mode::Exact && !is_own_root && !req.force {
        let non_empty = std::fs::read_dir(&dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if non_empty {
            return Err(Error::usage(
                format!(
                    "{} is not where backup {} was taken from ({}), and an exact restore would delete everything in it that the backup does not hold",
                    dest.display(),
                    m.id,
                    own_root.display()
                ),
                Some(
                    "use --mode safe or --mode merge, or pass --force if that is what you want"
                        .into(),
                ),
            ));
        }
    }
    // The destination must be readable wherever no rule keeps it. When the
    // catalog says the backup had no warnings, its trailer keeps nothing
    // else, so an unreadable directory is refused now, before any service
    // stops; otherwise once the archive (and its trailer) has been read.
    if !req.dry_run && src.record.as_ref().is_some_and(|r| r.warnings == 0) {
        for s in &sources {
            let (Place::Tree(target) | Place::File { target, .. }) = &places[&s.name] else {
                continue;
            };
            let rel_base = PathBuf::from(if s.path == "." { "" } else { &s.path });
            check_readable(target, &|rel: &Path, is_dir: bool| {
                kept(&target.join(rel), &rel_base.join(rel), is_dir)
            })?;
        }
    }
    let services = inst
        .and_then(|i| i.services.as_ref())
        .filter(|_| is_own_root);
    if let Some(s) = services {
        checks.push(Check {
            name: "services",
            ok: true,
            detail: s.describe(),
        });
    }

    // What the safety backup holds: what is there now of the sources restored.
    let existing: Vec<Source> = sources
        .iter()
        .filter_map(|s| {
            let place = &places[&s.name];
            let present = |t: &Path| {
                t.symlink_metadata().is_ok()
                    && std::fs::read_dir(t)
                        .map(|mut d| d.next().is_some())
                        .unwrap_or(true)
            };
            // Relative to the destination, as the backup's own sources are;
            // a bind mount outside it stays absolute.
            let below_dest = |t: &Path| match t.strip_prefix(&dest) {
                Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
                Ok(rel) => rel.to_path_buf(),
                Err(_) => t.to_path_buf(),
            };
            let spec = match place {
                Place::Tree(t) if present(t) => SourceSpec::Path(below_dest(t)),
                Place::File { target, .. } if target.is_file() => {
                    SourceSpec::Sqlite(below_dest(target))
                }
                Place::Import {
                    into: ImportTarget::Volume { name },
                    ..
                } => {
                    if !crate::podman::Podman::default()
                        .volume_exists(name)
                        .unwrap_or(false)
                    {
                        return None;
                    }
                    SourceSpec::Volume(name.clone())
                }
                Place::Import {
                    into: ImportTarget::Command { .. },
                    ..
                } => inst
                    .and_then(|i| i.sources.iter().find(|c| c.name == s.name))
                    .map(|c| c.spec.clone())?,
                _ => return None,
            };
            Some(Source {
                name: s.name.clone(),
                spec,
            })
        })
        .collect();
    let safety = req.pre_backup && !existing.is_empty();
    let safety_note = if !req.pre_backup {
        "skipped: --no-pre-backup".to_string()
    } else if existing.is_empty() {
        "not needed: nothing is at the destination".to_string()
    } else {
        format!(
            "of {} as instance {}, reason {}",
            dest.display(),
            m.instance,
            req.safety_reason
        )
    };
    // With a safety backup to take, the archive is checked first, so that a
    // damaged one costs nothing; otherwise while staging, in the same read.
    let checked_first = safety || req.dry_run;
    if checked_first {
        let actual = diff::hash_file(&src.archive)
            .map(hex::encode)
            .ok_or_else(|| {
                Error::io(
                    "reading",
                    &src.archive,
                    std::io::Error::other("cannot read"),
                )
            })?;
        check_sum(&src, &expected, &actual)?;
    }
    checks.insert(
        1,
        Check {
            name: "checksum",
            ok: true,
            detail: match (&expected, checked_first) {
                (None, _) => {
                    "no sidecar or catalog checksum to compare; every file is checked while staging"
                        .into()
                }
                (Some((what, _)), true) => format!("SHA-256 matches {what}"),
                (Some((what, _)), false) => format!(
                    "SHA-256 compared with {what} while staging, before anything is swapped in"
                ),
            },
        },
    );
    let mut plan = RestorePlan {
        backup: m.id.clone(),
        archive: src.archive.display().to_string(),
        instance: m.instance.clone(),
        created_at: m.created_at.clone(),
        destination: dest.display().to_string(),
        mode,
        sources: planned_sources,
        checks,
        safety_backup: safety,
        safety_backup_note: safety_note,
        changes: Changes::default(),
    };

    if req.dry_run {
        // The archive is read to list what it holds; nothing is written,
        // nothing is run.
        plan.changes = preview(
            ctx, &src, mode, &sources, &places, &scratch, &selection, &kept,
        )?;
        return Ok(RestoreOutcome::DryRun { plan });
    }

    let lock = lock.expect("a restore that is not a dry run holds the lock");
    failpoint::hit("restore.planned")?;
    if !confirm(&plan) {
        return Ok(RestoreOutcome::Declined { plan });
    }

    let catalog = Catalog::open(&ctx.layout.catalog())?;
    let user = uzers::get_current_username()
        .map(|u| u.to_string_lossy().into_owned())
        .unwrap_or_else(|| rustix::process::getuid().as_raw().to_string());
    let restore_id = catalog.begin_restore(&NewRestore {
        backup_id: &m.id,
        started_at: &time::now_rfc3339(),
        destination: &plan.destination,
        mode: &mode.to_string(),
        user: &user,
        host: &hostname(),
        safety_backup: None,
    })?;
    let finish = |outcome: &str, error: Option<&Error>| {
        let text = error.map(|e| error_chain(e));
        let _ = catalog.finish_restore(restore_id, &time::now_rfc3339(), outcome, text.as_deref());
    };

    // The services that run are stopped for the whole change, and started
    // again on every way out (the guard's drop), failures included.
    let env = {
        let mut env = inst.map_or_else(
            || crate::command::CommandEnv::new(&m.instance, &dest),
            Instance::env,
        );
        env.set("BACKSTOP_BACKUP_ID", &m.id)
            .set_opt(
                "BACKSTOP_VERSION",
                req.activate.as_deref().or(m.about.app_version.as_deref()),
            )
            .set("BACKSTOP_HOME", ctx.layout.home.to_string_lossy())
            .set("BACKSTOP_STORE", ctx.layout.store.to_string_lossy());
        env
    };
    let sctx = crate::service::Ctx {
        env: &env,
        cwd: dest.is_dir().then_some(dest.as_path()),
        cancel: Some(ctx.cancel),
        instance: &m.instance,
    };
    let stopped = match services.map(|s| s.stop_running(&sctx)).transpose() {
        Ok(stopped) => stopped,
        Err(e) => {
            finish("failed", Some(&e));
            return Err(e);
        }
    };
    // From here a journal exists: if the process dies, recovery starts the
    // stopped services again and undoes whatever was begun.
    let journal = Journal {
        version: 1,
        restore_id: Some(restore_id),
        backup: m.id.clone(),
        instance: m.instance.clone(),
        destination: dest.clone(),
        phase: Phase::Staging,
        staging: Vec::new(),
        steps: Vec::new(),
        services_stopped: stopped
            .as_ref()
            .map(|s| s.names().to_vec())
            .unwrap_or_default(),
    };
    if let Err(e) = journal.save(&ctx.layout.home) {
        finish("failed", Some(&e));
        return Err(e);
    }

    // The safety backup, under this restore's lock, of the quiet state.
    let mut warnings = Vec::new();
    let mut safety_id = None;
    if safety {
        let mut instance = Instance::bare(m.instance.clone(), dest.clone(), existing);
        instance.never_restore = m.never_restore.clone();
        let request = BackupRequest {
            instance,
            about: Description {
                kind: BackupKind::Automatic,
                reason: req.safety_reason.clone(),
                message: Some(
                    req.backup_message
                        .clone()
                        .unwrap_or_else(|| format!("before restoring {}", m.id)),
                ),
                labels: BTreeMap::from([("restoring".to_string(), m.id.clone())]),
                app_version: inst.and_then(|i| i.detect_version().ok().flatten()),
                upgraded_to: None,
                profile: None,
            },
            excludes: Vec::new(),
            compression: CompressionSpec::default(),
            output: Output::Store,
            wait: None,
        };
        match backup_locked(ctx, request, &lock) {
            Ok(report) => {
                for w in report.warnings.iter().filter(|w| w.is_incomplete()) {
                    warnings.push(format!(
                        "safety backup: {} {}: {}",
                        w.kind, w.path, w.detail
                    ));
                }
                catalog.set_restore_safety_backup(restore_id, &report.backup.id)?;
                safety_id = Some(report.backup.id);
            }
            Err(e) => {
                finish("failed", Some(&e));
                Journal::remove(&ctx.layout.home, &m.instance)?;
                return Err(e);
            }
        }
    }

    let mut reused = (0, 0);
    let applied = stage_and_apply(
        ctx,
        &src,
        &expected,
        mode,
        &sources,
        &places,
        &scratch,
        inst,
        &selection,
        &kept,
        journal,
        &mut plan,
        &mut warnings,
        &mut reused,
    );
    let journal = match applied {
        Ok(journal) => journal,
        Err(e) => {
            // A refusal (an unreadable part of the destination) comes
            // before the first step: nothing was changed to roll back.
            let refused = e.kind() == ErrorKind::Integrity || matches!(e, Error::Refused { .. });
            finish(if refused { "refused" } else { "rolled-back" }, Some(&e));
            if refused {
                return Err(e);
            }
            return Err(match e.kind() {
                ErrorKind::Interrupted | ErrorKind::RolledBack => e,
                _ => Error::RolledBack { cause: Box::new(e) },
            });
        }
    };

    // Activate (rollback), start what ran, check health: all before the
    // commit point, so any failure puts the previous state back.
    let checked = (|| -> Result<()> {
        if let (Some(version), Some(activate)) =
            (&req.activate, inst.and_then(|i| i.activate.as_ref()))
        {
            let what = format!("the activate command of {} (version {version})", m.instance);
            let mut run = crate::command::Run::new(&what, &env);
            run.cwd = dest.is_dir().then_some(dest.as_path());
            run.cancel = Some(ctx.cancel);
            run.output(activate)?;
        }
        failpoint::hit("restore.before-health")?;
        let ran = stopped.as_ref().is_some_and(|s| !s.names().is_empty());
        let any_control = services.is_some_and(|s| s.control.is_some());
        if let Some(stopped) = stopped {
            stopped.start()?;
        }
        if let Some(s) = services
            && (ran || !any_control)
            && let Err(failed) = s.health(&sctx)?
        {
            return Err(failed);
        }
        Ok(())
    })();
    if let Err(e) = checked {
        // Back to the old state, with the services as they were: stopped
        // while the files move back, started again if they ran.
        let undone = (|| -> Result<()> {
            let again = services.map(|s| s.stop_running(&sctx)).transpose()?;
            journal.recover(&ctx.layout.home)?;
            if let Some(again) = again {
                again.start()?;
            }
            Ok(())
        })();
        let _ = remove_tree(&scratch);
        if let Err(undo_err) = undone {
            finish("failed", Some(&undo_err));
            return Err(undo_err);
        }
        finish("rolled-back", Some(&e));
        return Err(match e.kind() {
            ErrorKind::Interrupted => e,
            _ => Error::RolledBack { cause: Box::new(e) },
        });
    }
    if let Err(e) = commit(ctx, journal) {
        finish("failed", Some(&e));
        return Err(e);
    }
    let _ = remove_tree(&scratch);
    finish("restored", None);
    Journal::remove(&ctx.layout.home, &m.instance)?;
    // The safety backup was an automatic one: prune after it if asked to.
    if let Some(i) = inst.filter(|i| i.retention.auto_prune && safety_id.is_some()) {
        match crate::ops::prune::prune_locked(ctx, &lock, &Default::default()) {
            Ok(p) => warnings.extend(
                p.decisions
                    .iter()
                    .filter(|d| !d.keep)
                    .map(|d| format!("auto-prune of {}: removed {}", i.name, d.id)),
            ),
            Err(e) => warnings.push(format!("auto-prune of {}: {}", i.name, error_chain(&e))),
        }
    }
    Ok(RestoreOutcome::Restored(RestoreReport {
        plan,
        restore_id,
        linked_files: reused.0,
        linked_bytes: reused.1,
        safety_backup: safety_id,
        warnings,
        duration_ms: started.elapsed().as_millis() as u64,
    }))
}

/// A name beside `path` for keeping a replaced entry: `<name>.bak-<time>`.
fn bak_name(path: &Path, stamp: &str) -> PathBuf {
    let mut n = 1;
    loop {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".bak-{stamp}"));
        if n > 1 {
            name.push(format!("-{n}"));
        }
        let candidate = path.with_file_name(name);
        if candidate.symlink_metadata().is_err() {
            return candidate;
        }
        n += 1;
    }
}

fn inode(path: &Path) -> Result<u64> {
    handle::lstat(path)
        .map(|st| st.st_ino)
        .map_err(|e| Error::io("reading", path, e))
}

/// The journal step that moves `from` to `to`. A directory this user may
/// not write, but owns, is opened up around a move to another directory
/// (which rewrites its `..`) and given its mode back.
fn move_step(from: PathBuf, to: PathBuf) -> Result<Step> {
    let st = handle::lstat(&from).map_err(|e| Error::io("reading", &from, e))?;
    let euid = rustix::process::geteuid();
    let reopen = (handle::is_dir(&st)
        && !euid.is_root()
        && st.st_uid == euid.as_raw()
        && st.st_mode & 0o200 == 0
        && from.parent() != to.parent())
    .then_some(st.st_mode & 0o7777);
    Ok(Step::Move {
        from,
        to,
        ino: st.st_ino,
        reopen,
    })
}

/// An empty tar archive: the "before" of a volume that did not exist.
const EMPTY_TAR: [u8; 1024] = [0; 1024];

/// Stages every source, verifies the archive, and applies the steps of the
/// mode through the journal, stopping just before the commit point: the
/// caller activates, starts services and checks health, then calls
/// [`commit`] or undoes with [`Journal::recover`]. On failure, everything
/// done is already undone.
#[allow(clippy::too_many_arguments)]
fn stage_and_apply(
    ctx: &Context<'_>,
    src: &Found,
    expected: &Option<(String, String)>,
    mode: Mode,
    sources: &[&SourceManifest],
    places: &HashMap<String, Place>,
    scratch: &Path,
    inst: Option<&Instance>,
    selection: &Selection,
    kept: &dyn Fn(&Path, &Path, bool) -> bool,
    mut journal: Journal,
    plan: &mut RestorePlan,
    warnings: &mut Vec<String>,
    reused: &mut (u64, u64),
) -> Result<Journal> {
    let m = &src.manifest;
    let home = &ctx.layout.home;
    let databases = database_paths(places);
    if places.values().any(|p| matches!(p, Place::Import { .. })) {
        fsutil::create_private_dir_all(scratch)?;
    }
    // Missing directories above the targets are created, and removed again
    // if the restore does not complete.
    let mut make_dirs: Vec<PathBuf> = Vec::new();
    for s in sources {
        let target = places[&s.name].target(scratch, &s.name);
        let mut missing = Vec::new();
        let mut p = fsutil::parent_dir(&target);
        while p.symlink_metadata().is_err() {
            missing.push(p.clone());
            p = fsutil::parent_dir(&p);
        }
        for dir in missing.into_iter().rev() {
            if !make_dirs.contains(&dir) {
                make_dirs.push(dir);
            }
        }
        let staging = staging_dir(&target, &m.id, &s.name);
        journal.staging.push(staging);
    }
    journal.steps = make_dirs
        .iter()
        .map(|p| Step::MakeDir { path: p.clone() })
        .collect();
    journal.save(home)?;
    // Hard links whose shared file was excluded: kept as they are.
    // And what the backup could not hold (its trailer's vanished,
    // unreadable and skipped paths): kept too, never deleted.
    let mut unrestorable: BTreeSet<PathBuf> = BTreeSet::new();
    // Inodes linked from the live tree, with their change time once linked.
    let mut linked = HashMap::new();
    let result = (|| -> Result<()> {
        for step in &journal.steps {
            journal::apply(step)?;
        }
        let mut targets = HashMap::new();
        for (s, staging) in sources.iter().zip(&journal.staging) {
            handle::mkdir(staging, 0o700).map_err(|e| Error::io("creating", staging, e))?;
            let confined = Confined::open(staging).map_err(|e| Error::io("opening", staging, e))?;
            targets.insert(s.name.clone(), confined);
        }
        failpoint::hit("restore.before-stage")?;
        // The live trees, where files the backup holds unchanged are found
        // and linked instead of written again.
        let mut live = HashMap::new();
        for s in sources {
            if let Place::Tree(target) = &places[&s.name]
                && handle::lstat(target).is_ok_and(|st| handle::is_dir(&st))
            {
                let tree = Confined::open(target).map_err(|e| Error::io("opening", target, e))?;
                live.insert(s.name.clone(), tree);
            }
        }
        let mut stager = Stager::new(m, targets, live, selection, ctx.progress, ctx.cancel);
        let run = walk_archive(&src.archive, ctx.progress, ctx.cancel, &mut stager);
        let verified = run.result?;
        check_sum(src, expected, run.sha256.as_deref().unwrap_or_default())?;
        stager.finish()?;
        warnings.extend(stager.warnings.iter().cloned());
        unrestorable.extend(stager.unrestorable.iter().cloned());
        unrestorable.extend(incomplete_paths(m, &verified.trailer));
        linked = std::mem::take(&mut stager.linked);
        *reused = (stager.counts.linked, stager.counts.linked_bytes);
        failpoint::hit("restore.after-stage")?;
        Ok(())
    })();
    if let Err(e) = result {
        journal.recover(home)?;
        return Err(e);
    }

    // The steps, all decided and journaled before the first is taken.
    let stamp = time::now().strftime("%Y%m%dT%H%M%S").to_string();
    let mut steps = journal.steps.clone();
    let mut changes = Changes::default();
    // A database inside a tree restored exactly goes into that tree's staged
    // copy, so the tree's swap brings it in: a swap of its own would happen
    // in a directory the tree's swap moves away.
    let mut nested: HashMap<String, Vec<(PathBuf, PathBuf)>> = HashMap::new();
    let mut nested_dbs: Vec<String> = Vec::new();
    if mode == Mode::Exact {
        for (s, staging) in sources.iter().zip(&journal.staging) {
            let Place::File { target, file } = &places[&s.name] else {
                continue;
            };
            let outer = sources
                .iter()
                .filter_map(|o| match &places[&o.name] {
                    Place::Tree(t) if target.starts_with(t) && t != target => {
                        Some((o.name.clone(), t.clone()))
                    }
                    _ => None,
                })
                .max_by_key(|(_, t)| t.components().count());
            if let Some((outer, outer_target)) = outer {
                let rel = target
                    .strip_prefix(&outer_target)
                    .unwrap_or(target)
                    .to_path_buf();
                nested
                    .entry(outer)
                    .or_default()
                    .push((rel, staging.join(&s.name).join(file)));
                nested_dbs.push(s.name.clone());
            }
        }
    }
    let decided = (|| -> Result<()> {
        for (s, staging) in sources.iter().zip(&journal.staging) {
            let (target, staged_top) = match &places[&s.name] {
                Place::Import { into, file } => {
                    let data = staging.join(&s.name).join(file);
                    if data.symlink_metadata().is_err() {
                        // Left out by --exclude or never-restore.
                        continue;
                    }
                    // The live state, captured now, is what an undo puts back.
                    let undo = staging.join(format!("{}.before", s.name));
                    capture_live(ctx, into, inst, &s.name, &undo)?;
                    let size = std::fs::metadata(&data).map_or(0, |md| md.len());
                    changes.push(
                        &places[&s.name].shown(scratch, &s.name),
                        Action::Replace,
                        if s.kind == "volume" { "volume" } else { "dump" },
                        size,
                    );
                    steps.push(Step::Import {
                        into: into.clone(),
                        data,
                        undo,
                    });
                    continue;
                }
                Place::File { target, file } => (target.clone(), staging.join(&s.name).join(file)),
                Place::Tree(target) => (target.clone(), staging.join(&s.name)),
            };
            let rel_base = PathBuf::from(if s.path == "." { "" } else { &s.path });
            let kept_here = |rel: &Path, is_dir: bool| {
                kept(&target.join(rel), &rel_base.join(rel), is_dir)
                    || unrestorable.contains(&rel_base.join(rel))
            };
            let other = |abs: &Path| databases.iter().any(|d| d == abs);
            let (planned, moves, entries) =
                merge_staged(mode, &target, &staged_top, &kept_here, &other, &linked)?;
            changes.extend(&planned);
            if entries == 0 || nested_dbs.contains(&s.name) {
                // Everything of this source was excluded, or it goes in
                // with the tree around it.
                continue;
            }
            let inner = nested.get(&s.name).map(Vec::as_slice).unwrap_or_default();
            // The databases themselves and their journal files: replaced,
            // not carried over.
            let replaced_db = |rel: &Path| {
                inner.iter().any(|(db, _)| {
                    ["", "-wal", "-shm", "-journal"].iter().any(|suffix| {
                        let mut name = db.as_os_str().to_os_string();
                        name.push(suffix);
                        rel == Path::new(&name)
                    })
                })
            };
            if let Place::File { .. } = &places[&s.name]
                && mode != Mode::Safe
            {
                // The old database's journal files must not meet the new
                // database: they go aside with it.
                for suffix in ["-wal", "-shm", "-journal"] {
                    let mut side = target.as_os_str().to_os_string();
                    side.push(suffix);
                    let side = PathBuf::from(side);
                    if side.symlink_metadata().is_ok() {
                        steps.push(move_step(
                            side,
                            staging.join(format!("{}.before{suffix}", s.name)),
                        )?);
                    }
                }
            }
            match mode {
                Mode::Exact => {
                    // Kept paths move from the live tree into the staged one, so
                    // the swap carries them over unchanged.
                    for rel in moves.carry.iter().filter(|r| !replaced_db(r)) {
                        let to = staged_top.join(rel);
                        if let Some(parent) = to.parent() {
                            make_staged_parents(&staged_top, parent, &target)?;
                        }
                        // What the backup holds of a path it could not read
                        // whole (an unreadable directory, empty) gives way to
                        // the live one.
                        remove_tree(&to)?;
                        steps.push(move_step(target.join(rel), to)?);
                    }
                    for (rel, db) in inner {
                        if db.symlink_metadata().is_err() {
                            continue;
                        }
                        let to = staged_top.join(rel);
                        if let Some(parent) = to.parent() {
                            make_staged_parents(&staged_top, parent, &target)?;
                        }
                        steps.push(move_step(db.clone(), to)?);
                    }
                    steps.push(Step::Swap {
                        existed: target.symlink_metadata().is_ok(),
                        staged_ino: inode(&staged_top)?,
                        target: target.clone(),
                        staged: staged_top.clone(),
                    });
                }
                Mode::Merge | Mode::Safe => {
                    // Whole new subtrees move in; replaced entries (merge)
                    // are kept as `.bak` first.
                    for (rel, bak) in &moves.move_in {
                        let from = staged_top.join(rel);
                        let to = if rel.as_os_str().is_empty() {
                            target.clone()
                        } else {
                            target.join(rel)
                        };
                        if *bak {
                            steps.push(move_step(to.clone(), bak_name(&to, &stamp))?);
                        }
                        steps.push(move_step(from, to)?);
                    }
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = decided {
        journal.recover(home)?;
        return Err(e);
    }
    plan.changes = changes;
    journal.steps = steps;
    journal.phase = Phase::Applying;
    journal.save(home)?;

    let applied = (|| -> Result<()> {
        for (i, step) in journal.steps.iter().enumerate() {
            ctx.cancel.check()?;
            if i >= make_dirs.len() {
                failpoint::hit("restore.apply-step")?;
                journal::apply(step)?;
            }
        }
        for dir in journal.touched_dirs() {
            // A directory a later swap moved away (inside an old tree) is
            // not part of the result; only existing ones matter.
            if dir.symlink_metadata().is_ok() {
                fsutil::fsync_dir(&dir)?;
            }
        }
        failpoint::hit("restore.before-commit")
    })();
    if let Err(e) = applied {
        journal.recover(home)?;
        return Err(Error::RolledBack { cause: Box::new(e) });
    }
    Ok(journal)
}

/// The commit point, then cleanup: the old trees parked in the staging
/// directories go.
fn commit(ctx: &Context<'_>, mut journal: Journal) -> Result<()> {
    journal.phase = Phase::Committed;
    journal.save(&ctx.layout.home)?;
    failpoint::hit("restore.after-commit")?;
    for staging in &journal.staging {
        remove_tree(staging)?;
    }
    // The journal goes last, after the caller has recorded the outcome: a
    // crash in between is completed (and recorded again) by recovery.
    Ok(())
}

/// Captures what a volume or dump source holds now into `out`, for an undo.
fn capture_live(
    ctx: &Context<'_>,
    into: &ImportTarget,
    inst: Option<&Instance>,
    name: &str,
    out: &Path,
) -> Result<()> {
    let file = fsutil::create_private(out)?;
    match into {
        ImportTarget::Volume { name: volume } => {
            let podman = crate::podman::Podman::default();
            if podman.volume_exists(volume)? {
                podman.volume_export(volume, file)
            } else {
                let mut file = file;
                std::io::Write::write_all(&mut file, &EMPTY_TAR)
                    .map_err(|e| Error::io("writing", out, e))
            }
        }
        ImportTarget::Command { env, cwd, .. } => {
            let dump = inst
                .and_then(|i| i.sources.iter().find(|s| s.name == name))
                .and_then(|s| match &s.spec {
                    SourceSpec::Command { dump, .. } => Some(dump.clone()),
                    _ => None,
                })
                .ok_or_else(|| {
                    Error::usage(
                        format!("source {name} has no dump command in the config"),
                        None,
                    )
                })?;
            let mut vars = crate::command::CommandEnv::default();
            for (k, v) in env {
                vars.set(k, v);
            }
            let what = format!("the dump command of source {name} (the state before the restore)");
            let mut run = crate::command::Run::new(&what, &vars);
            run.cwd = cwd.as_deref().filter(|c| c.is_dir());
            run.cancel = Some(ctx.cancel);
            run.to_file(&dump, file)
        }
    }
}

/// Creates, inside the staged tree, the directories above a carried-over
/// path, with the modes of their live counterparts.
fn make_staged_parents(staged_top: &Path, parent: &Path, target: &Path) -> Result<()> {
    let rel = parent.strip_prefix(staged_top).unwrap_or(Path::new(""));
    let mut cur = staged_top.to_path_buf();
    let mut live = target.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        live.push(part);
        if cur.symlink_metadata().is_err() {
            let mode = std::fs::symlink_metadata(&live).map_or(0o755, |m| m.mode() & 0o7777);
            std::fs::create_dir(&cur).map_err(|e| Error::io("creating", &cur, e))?;
            std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("setting the mode of", &cur, e))?;
        }
    }
    Ok(())
}
