//! The plan of a restore, made before anything is written: the backup found
//! and its checksums known, where each source goes, every check on the
//! backup and the destination, what the safety backup will hold, and (for a
//! dry run) every path and its action. [`crate::restore::apply`] carries
//! the plan out.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::Context;
use crate::archive::format::{SourceManifest, Trailer};
use crate::archive::frames::{self, Partial};
use crate::archive::holders::{self, Link};
use crate::archive::reader::{read_manifest, read_sidecar, walk_archive_chain};
use crate::archive::{ArchiveError, Manifest, TakenOf};
use crate::catalog::{BackupRecord, ListFilter, Status};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::instance::{Instance, Source, SourceSpec};
use crate::ops::list::open_existing;
use crate::ops::show::{Resolved, resolve as resolve_name};
use crate::progress::Phase;
use crate::restore::diff::{Action, Changes, Kind, Why};
use crate::restore::journal::{ImportTarget, Journal};
use crate::restore::listing::{Walk, check_listable};
use crate::restore::preview::{self, Preview, Skim};
use crate::restore::stage::{Selection, root_relative};
use crate::restore::steps::{Merger, Mode};
use crate::service::Services;
use crate::source::exclude::{Excludes, Patterns};
use crate::stores::Location;
use crate::version::{Major, Mismatch};

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
    /// Allow an exact restore over a directory that is not the backup's
    /// own, and a backup of another major version than the instance's.
    pub force: bool,
    /// A restore, or a rollback (which the version gate lets through).
    pub purpose: Purpose,
    pub wait: Option<Duration>,
    /// For a rollback: run the instance's activate command with this
    /// version once the files are in place, before the services start.
    pub activate: Option<String>,
    /// The reason recorded on the safety backup (`pre-restore`, `pre-rollback`).
    pub safety_reason: String,
    /// Read the archive for every path's action before the confirmation,
    /// as a dry run does, so that a person asked sees what will change
    /// (one more read of the archive).
    pub preview: bool,
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
            purpose: Purpose::Restore,
            wait: None,
            activate: None,
            safety_reason: "pre-restore".into(),
            preview: false,
        }
    }
}

/// One check made before anything is written.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// Whether the check passed (or could not be made, which never
    /// blocks); `false` only for a check `--force` overrode.
    pub ok: bool,
    pub outcome: CheckOutcome,
    pub detail: String,
}

/// How a check ended, for a plan that is carried out: a check that fails
/// without `--force` refuses the restore instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckOutcome {
    Passed,
    /// There was nothing to compare (a version that cannot be read or is
    /// not one backstop can compare): shown, never blocking.
    NotCompared,
    /// It failed, and `--force` let the restore go on.
    Overridden,
}

/// Why a restore is made: a plain restore, or a rollback (`rollback`,
/// `guard --rollback-on-failure`), whose job is to go back across an
/// upgrade and which the version gate therefore lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    #[default]
    Restore,
    Rollback,
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
    /// The catalog's record of this restore; `None` when the catalog could
    /// not be used (a restore from an archive file with a damaged catalog).
    pub restore_id: Option<i64>,
    /// Files that were already in place as the backup has them, and their
    /// bytes: not written again (left where they are by an exact restore
    /// in place, linked into the staged tree otherwise).
    pub linked_files: u64,
    pub linked_bytes: u64,
    /// Of those bytes, the ones whose copy in the archive was not decoded:
    /// large files whose live copy hashed to the checksum the archive
    /// records (the archive's bytes are still read and hashed whole).
    pub undecoded_bytes: u64,
    pub safety_backup: Option<String>,
    /// The command that undoes this restore: the safety backup restored
    /// (to the directory it was taken of), then what this restore created
    /// where nothing was removed. `None` without a safety backup.
    pub undo: Option<String>,
    /// The process's working directory (a shell's, that ran it), when the
    /// restore moved the directory there away (the backup has no
    /// directory there): the shell still sits in it, removed.
    pub replaced_cwd: Option<String>,
    pub warnings: Vec<String>,
    /// How long the application was down: from the first service stopped
    /// to the last started again; `None` when no service was stopped.
    pub downtime_ms: Option<u64>,
    /// The systemd services of the quadlet files put back that ran at
    /// backup time: started, or why not and the command that does; `None`
    /// when there are none to start.
    pub quadlet_units: Option<Box<crate::systemd::UnitsReport>>,
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
pub(crate) struct Found {
    pub(crate) archive: Location,
    pub(crate) record: Option<BackupRecord>,
    pub(crate) manifest: Manifest,
    /// Why the catalog cannot be used, when an archive file is restored
    /// without it.
    pub(crate) catalog_unusable: Option<String>,
    /// For an incremental: the rest of its chain, parent first, each link
    /// found and checked against its sidecar.
    pub(crate) links: Vec<Link>,
    /// A restore of some sources from a store reads only their frames
    /// (see [`crate::archive::frames`]): what it reads of the archive.
    pub(crate) partial: Option<Partial>,
    /// The archive fetched once into the home ([`Found::fetch`]), when a
    /// restore reads it twice: checked whole first, then unpacked.
    fetched: std::sync::OnceLock<Location>,
}

impl Found {
    /// Where the archive is read from: its copy in the home once fetched,
    /// else where it is.
    pub(crate) fn source(&self) -> &Location {
        self.fetched.get().unwrap_or(&self.archive)
    }

    /// The archive fetched once into the home, for a restore that reads it
    /// twice ([`fetch_once`]); a file, or a partial read's frames, as they
    /// are.
    ///
    /// # Errors
    ///
    /// Fails when the object cannot be fetched.
    pub(crate) fn fetch(&self, ctx: &Context<'_>) -> Result<&Location> {
        if self.partial.is_none() && self.fetched.get().is_none() {
            let _ = self.fetched.set(fetch_once(ctx, self.archive.clone())?);
        }
        Ok(self.source())
    }

    /// Drops what was fetched of the archive and its chain into the home
    /// ([`Location::release_spool`]), once nothing reads them again.
    pub(crate) fn release_fetched(&self) {
        self.source().release_spool();
        for link in &self.links {
            link.location.release_spool();
        }
    }

    /// Reads the archive (and its chain) through, passing every entry of
    /// the tree to `visitor`.
    pub(crate) fn walk(
        &self,
        ctx: &Context<'_>,
        phase: Phase,
        visitor: &mut dyn crate::archive::reader::Visitor,
    ) -> crate::archive::reader::VerifyRun {
        let sources = self
            .manifest
            .sources
            .iter()
            .map(|s| s.name.as_bytes().to_vec())
            .collect();
        // A full read of an archive whose frame table the catalog records
        // may pass over the frames of large files already in place. A
        // table that is not the recorded one is not used: the archive's
        // own SHA-256 then tells what is wrong with it.
        let table = match (&self.partial, &self.record) {
            (None, Some(record)) => record.frames_sha256.as_deref().and_then(|sha| {
                let size = self.source().size().ok()??;
                frames::read_table(self.source(), size, sha, &self.manifest.id).ok()
            }),
            _ => None,
        };
        walk_archive_chain(
            (self.source(), self.partial.as_ref(), table.as_ref()),
            (&self.links, sources),
            (ctx.progress, phase),
            ctx.cancel,
            ctx.keys,
            visitor,
        )
    }
}

/// `first`, the archive where the catalog has it, when it is there; else
/// the first further copy of it that is (a store down, an archive lost:
/// the second copy is what it is for).
///
/// # Errors
///
/// Fails when `first` cannot be asked and no copy is there either.
fn reachable_copy(
    ctx: &Context<'_>,
    catalog: &crate::catalog::Catalog,
    record: &BackupRecord,
    first: Result<Location>,
) -> Result<Location> {
    // Why the first location cannot be used, if it cannot.
    let failed = match &first {
        Ok(at) => match at.size() {
            Ok(Some(_)) => None,
            Ok(None) => Some(None),
            Err(e) => Some(Some(e)),
        },
        Err(_) => Some(None),
    };
    let Some(failed) = failed else {
        return first;
    };
    for copy in catalog.copies_of(&record.id)? {
        if let Ok(at) = ctx.config.stores.locate(&copy.location)
            && matches!(at.size(), Ok(Some(_)))
        {
            return Ok(at);
        }
    }
    match failed {
        // Asking the first location failed: that error, not "missing".
        Some(e) => Err(e),
        None => first,
    }
}

/// An archive in a store, fetched once into an unnamed file in the home
/// when the home's filesystem has room for it: a restore reads it twice
/// (its checksum before anything is stopped, then its content), and a
/// bucket is then asked once. Without the room it is read from the store
/// both times.
///
/// # Errors
///
/// Fails when the object cannot be fetched.
fn fetch_once(ctx: &Context<'_>, archive: Location) -> Result<Location> {
    if archive.as_object().is_none() || !ctx.layout.home.is_dir() {
        return Ok(archive);
    }
    let size = archive.size()?.unwrap_or(0);
    let room = fsutil::available_space(&ctx.layout.home).unwrap_or(0);
    if room < size.saturating_add(size / 10).saturating_add(64 << 20) {
        return Ok(archive);
    }
    archive.spooled(&ctx.layout.home, (ctx.progress, ctx.cancel))
}

/// Resolves `target` (a backup id, an archive file, or an application
/// version) to the archive a restore reads, and reads its manifest.
///
/// # Errors
///
/// Fails when nothing matches, when the backup has no archive (failed,
/// still being created, missing), or when the archive holds another backup
/// than the catalog says.
pub(crate) fn find(ctx: &Context<'_>, target: &str, only: &[String]) -> Result<Found> {
    // An archive file describes itself: restoring one needs no catalog, so
    // a damaged or unreadable catalog is only noted. An id needs it.
    let (catalog, catalog_unusable) = match open_existing(ctx) {
        Ok(c) => (c, None),
        Err(Error::Catalog(e)) if Path::new(target).is_file() => (None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
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
            (ctx.config.stores.locate(&loc), Some(r))
        }
        Ok(Resolved::File(p, r)) => (Ok(Location::file(p)), r),
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
            let at = ctx
                .config
                .stores
                .locate(r.location.as_deref().unwrap_or_default());
            (at, Some(r))
        }
    };
    let archive = match (&catalog, &record) {
        (Some(c), Some(r)) => reachable_copy(ctx, c, r, archive)?,
        _ => archive?,
    };
    let Some(size) = archive.size()? else {
        return Err(Error::NotFound {
            message: format!("the archive {} is missing", archive.label().display()),
            hint: Some(
                "run `backstop verify --all` to mark missing archives; restore another backup"
                    .into(),
            ),
        });
    };
    let manifest = read_manifest(&archive, ctx.keys)?;
    if let Some(r) = &record
        && r.id != manifest.id
    {
        return Err(ArchiveError::Corrupt {
            path: archive.label().to_path_buf(),
            detail: format!("it holds backup {}, not {}", manifest.id, r.id),
        }
        .into());
    }
    // A chain with a missing or altered link is refused here, before
    // anything is touched.
    let mut links = holders::resolve(
        &archive,
        &manifest,
        (catalog.as_ref(), &ctx.config.stores),
        ctx.keys,
    )?;
    let partial = partial_read(&archive, size, (record.as_ref(), &manifest), only)?;
    let archive = match &partial {
        Some(p) => {
            for link in &mut links {
                link.partial = link_partial(link, only)?;
                if let Some(lp) = &link.partial {
                    link.location = spool_frames(ctx, &link.location, lp)?;
                }
            }
            spool_frames(ctx, &archive, p)?
        }
        // Fetched when it is read twice (`Found::fetch`), else streamed.
        None => archive,
    };
    Ok(Found {
        archive,
        record,
        manifest,
        catalog_unusable,
        links,
        partial,
        fetched: std::sync::OnceLock::new(),
    })
}

/// The partial read of a restore of `only` from the `size`-byte archive at
/// `at`: when it names some of the backup's sources, not all, and the
/// archive is in a store (a bucket: what is not read is not fetched) with
/// a frame table whose SHA-256 the catalog records. `None`: it is read
/// whole.
///
/// # Errors
///
/// An integrity error when the frame table is not the one recorded.
fn partial_read(
    at: &Location,
    size: u64,
    (record, manifest): (Option<&BackupRecord>, &Manifest),
    only: &[String],
) -> Result<Option<Partial>> {
    let all = manifest.sources.iter().all(|s| only.contains(&s.name));
    let Some(frames_sha) = record.and_then(|r| r.frames_sha256.as_deref()) else {
        return Ok(None);
    };
    if only.is_empty() || all || at.as_object().is_none() {
        return Ok(None);
    }
    let table = frames::read_table(at, size, frames_sha, &manifest.id)?;
    Ok(Some(Partial::of(&table, only)))
}

/// A link's partial read, for a restore of `only`: when it is in a store
/// and the catalog records its frame table.
///
/// # Errors
///
/// An integrity error when its frame table is not the one recorded.
fn link_partial(link: &Link, only: &[String]) -> Result<Option<Partial>> {
    let (Some(sha), Some(_)) = (&link.frames_sha256, link.location.as_object()) else {
        return Ok(None);
    };
    let Some(size) = link.location.size()? else {
        return Ok(None);
    };
    let table = frames::read_table(&link.location, size, sha, &link.id)?;
    Ok(Some(Partial::of(&table, only)))
}

/// The frames `partial` reads of the object at `at`, fetched once (each
/// checked) into an unnamed file in the home at their offsets, when there
/// is room: a restore reads them twice. Without room, `at` as it is.
///
/// # Errors
///
/// Fails when a frame cannot be fetched or is not the one recorded.
fn spool_frames(ctx: &Context<'_>, at: &Location, partial: &Partial) -> Result<Location> {
    if !ctx.layout.home.is_dir() {
        return Ok(at.clone());
    }
    let room = fsutil::available_space(&ctx.layout.home).unwrap_or(0);
    if room < partial.bytes().saturating_add(64 << 20) {
        return Ok(at.clone());
    }
    frames::spool(at, partial, &ctx.layout.home, (ctx.progress, ctx.cancel))
}

/// The refusal of a safety backup that could not be recorded: a backup is
/// an archive and its catalog row.
fn safety_needs_catalog(problem: &str) -> Error {
    Error::Refused {
        message: format!("the safety backup before this restore cannot be recorded: {problem}"),
        hint: Some(
            "`backstop reconcile --apply` rebuilds the catalog from the archives; or restore \
             without a safety backup with --no-pre-backup"
                .into(),
        ),
    }
}

/// Refuses a request that does not fit the backup found: `--instance`
/// naming another instance, `--only` naming a source it does not have.
///
/// # Errors
///
/// A usage error naming what does not fit.
pub(crate) fn check_request(req: &RestoreRequest, m: &Manifest) -> Result<()> {
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
    Ok(())
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
            path: src.archive.label().to_path_buf(),
            detail: format!("the sidecar records SHA-256 {a}, the catalog {b}"),
        }
        .into()),
        (Some((_, a)), Some(_)) => Ok(Some(("the sidecar and the catalog".into(), a))),
        (Some((w, a)), None) | (None, Some((w, a))) => Ok(Some((w.into(), a))),
        (None, None) => Ok(None),
    }
}

/// Compares the archive's SHA-256 with what it must be.
///
/// # Errors
///
/// A checksum error (integrity, exit 4) when they differ.
pub(crate) fn check_sum(
    src: &Found,
    expected: &Option<(String, String)>,
    actual: &str,
) -> Result<()> {
    // A partial read has no whole-file SHA-256: each frame it read was
    // checked against the frame table, and the table against the catalog.
    if src.partial.is_some() {
        return Ok(());
    }
    match expected {
        Some((what, sum)) if sum != actual => Err(ArchiveError::Checksum {
            path: src.archive.label().to_path_buf(),
            detail: format!("{what} records SHA-256 {sum}, the archive's is {actual}"),
        }
        .into()),
        _ => Ok(()),
    }
}

/// `dest` made absolute, with symlinks resolved in the part that exists.
/// Where a restore with no `--dest` goes: the instance's root, resolved.
/// A root the config names may be a symlink (resolved now, as at backup
/// time); a root only the backup records was resolved then, so one that
/// resolves elsewhere now (a symlink put in its place, by whoever may
/// write beside it) is not the directory the backup was taken of.
fn resolve_root(m: &Manifest, inst: Option<&Instance>, root: &Path) -> Result<PathBuf> {
    let resolved = resolve_dest(root);
    let configured = inst.is_some() && m.taken_of == TakenOf::InstanceRoot;
    if configured || resolved == root {
        return Ok(resolved);
    }
    Err(Error::Refused {
        message: format!(
            "{} now leads to {}, not to the directory backup {} was taken of (a symlink is \
             on the way): nothing was changed",
            root.display(),
            resolved.display(),
            m.id
        ),
        hint: Some(format!(
            "if the data moved there, restore it with `--dest {}`; otherwise put the directory \
             back at {}",
            resolved.display(),
            root.display()
        )),
    })
}

fn resolve_dest(dest: &Path) -> PathBuf {
    let abs = crate::config::absolute(dest);
    let base = fsutil::existing_ancestor(&abs);
    let canonical = base.canonicalize().unwrap_or_else(|_| base.clone());
    match abs.strip_prefix(&base) {
        Ok(rest) if !rest.as_os_str().is_empty() => canonical.join(rest),
        _ => canonical,
    }
}

/// The kinds of source a manifest knows (its `kind` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    /// `path`: files and directories.
    Path,
    /// `sqlite`: a database captured with SQLite's online backup.
    Sqlite,
    /// `volume`: a podman volume.
    Volume,
    /// `command`: a command's output.
    Command,
}

impl SourceKind {
    /// The kind of `source`; `None` for a kind this backstop does not know.
    fn of(source: &SourceManifest) -> Option<SourceKind> {
        match source.kind.as_str() {
            "path" => Some(SourceKind::Path),
            "sqlite" => Some(SourceKind::Sqlite),
            "volume" => Some(SourceKind::Volume),
            "command" => Some(SourceKind::Command),
            _ => None,
        }
    }
}

/// What the plan calls a source put back by a program: a `volume` or a
/// `dump`.
pub(crate) fn import_kind(source: &SourceManifest) -> Kind {
    if SourceKind::of(source) == Some(SourceKind::Volume) {
        Kind::Volume
    } else {
        Kind::Dump
    }
}

/// Whether what an import replaces is there now: a podman volume may have
/// been removed (the restore creates it); a dump's database is taken to be.
///
/// # Errors
///
/// Fails when podman cannot say whether the volume exists.
pub(crate) fn import_exists(into: &ImportTarget) -> Result<bool> {
    match into {
        ImportTarget::Volume { name, .. } => crate::podman::Podman::default().volume_exists(name),
        ImportTarget::Command { .. } => Ok(true),
    }
}

/// What an import does to its target, for the plan: replace it, or create
/// a volume that is not there.
///
/// # Errors
///
/// As [`import_exists`].
pub(crate) fn import_action(into: &ImportTarget) -> Result<Action> {
    Ok(if import_exists(into)? {
        Action::Replace
    } else {
        Action::Create
    })
}

/// Where a source's paths sit below the restored root: its path, empty for
/// the root itself.
pub(crate) fn rel_base(source: &SourceManifest) -> PathBuf {
    PathBuf::from(if source.path == "." { "" } else { &source.path })
}

/// Where one source of the backup goes.
#[derive(Debug, Clone)]
pub(crate) enum Place {
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
    pub(crate) fn target(&self, scratch: &Path, name: &str) -> PathBuf {
        match self {
            Place::Tree(t) | Place::File { target: t, .. } => t.clone(),
            Place::Import { .. } => scratch.join(name),
        }
    }

    /// How the plan names the place: a path, a volume, a command.
    pub(crate) fn shown(&self, scratch: &Path, name: &str) -> String {
        match self {
            Place::Import {
                into: ImportTarget::Volume { name, .. },
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
pub(crate) fn database_paths(places: &HashMap<String, Place>) -> Vec<PathBuf> {
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
    archive: &Path,
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
    let Some(kind) = SourceKind::of(source) else {
        return Err(Error::usage(
            format!(
                "source {} is of kind `{}`, which this backstop does not know",
                source.name, source.kind
            ),
            Some("upgrade backstop, or leave the source out with --only".into()),
        ));
    };
    match kind {
        SourceKind::Path => Ok(Place::Tree(at(&source.path))),
        SourceKind::Sqlite => Ok(Place::File {
            target: at(&source.path),
            file: manifest_file(archive, source)?,
        }),
        SourceKind::Volume | SourceKind::Command if !in_place => {
            Ok(Place::Tree(dest.join(&source.name)))
        }
        SourceKind::Volume => volume_place(archive, source, configured.map(|c| &c.spec)),
        SourceKind::Command => {
            command_place(archive, source, instance, configured.map(|c| &c.spec))
        }
    }
}

/// The one file under a captured source's name that holds its data.
fn manifest_file(archive: &Path, source: &SourceManifest) -> Result<String> {
    source.file.clone().ok_or_else(|| {
        Error::from(ArchiveError::Corrupt {
            path: archive.to_path_buf(),
            detail: format!("source {} names no file in its manifest", source.name),
        })
    })
}

/// A volume restored in place: the config's volume, or the manifest's.
fn volume_place(
    archive: &Path,
    source: &SourceManifest,
    configured: Option<&SourceSpec>,
) -> Result<Place> {
    let name = match configured {
        Some(SourceSpec::Volume(v)) => v.clone(),
        _ => source
            .origin
            .strip_prefix("podman volume ")
            .unwrap_or_default()
            .to_string(),
    };
    let checked = match name.as_str() {
        "" => Err(format!(
            "its origin `{}` does not say which volume it came from",
            source.origin.escape_debug()
        )),
        _ => crate::podman::check_name("volume", &name),
    };
    checked.map_err(|detail| ArchiveError::BadVolume {
        path: archive.to_path_buf(),
        source_name: source.name.clone(),
        volume: name.clone(),
        detail,
    })?;
    Ok(Place::Import {
        into: ImportTarget::Volume {
            name,
            settings: source.volume.clone().unwrap_or_default(),
        },
        file: manifest_file(archive, source)?,
    })
}

/// A dump restored in place: by the restore command of the config.
fn command_place(
    archive: &Path,
    source: &SourceManifest,
    instance: Option<&Instance>,
    configured: Option<&SourceSpec>,
) -> Result<Place> {
    let (
        Some(inst),
        Some(SourceSpec::Command {
            restore: Some(command),
            ..
        }),
    ) = (instance, configured)
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
        file: manifest_file(archive, source)?,
    })
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

/// The root-relative paths the backup could not hold as they were: its
/// trailer's vanished, unreadable and skipped paths.
pub(crate) fn incomplete_paths(m: &Manifest, trailer: &Trailer) -> BTreeSet<PathBuf> {
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

/// backstop's home and store, as a restored tree's paths would name them:
/// symlinks resolved, as the destination's are.
fn own_state(ctx: &Context<'_>) -> Vec<PathBuf> {
    [&ctx.layout.home, &ctx.layout.store]
        .into_iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect()
}

/// A restore planned and checked: the plan, and everything carrying it out
/// needs.
pub(crate) struct Prepared<'a> {
    /// The backup read.
    pub(crate) src: &'a Found,
    /// The config's definition of the instance, when it has one: its root,
    /// secrets, services and restore commands.
    pub(crate) inst: Option<&'a Instance>,
    /// Where the backup goes, absolute, symlinks resolved.
    pub(crate) dest: PathBuf,
    pub(crate) mode: Mode,
    /// The sources written and the paths kept as they are.
    pub(crate) selection: Selection,
    /// What the backup never covered: paths its excludes matched, which
    /// stay as they are too.
    pub(crate) backup_excludes: Excludes,
    /// backstop's own home and store, which no backup holds: kept wherever
    /// they sit in a tree restored.
    pub(crate) own_state: Vec<PathBuf>,
    /// The sources restored, in the backup's order.
    pub(crate) sources: Vec<&'a SourceManifest>,
    /// Where each of them goes, by name.
    pub(crate) places: HashMap<String, Place>,
    /// Where volumes and dumps are staged, under backstop's home.
    pub(crate) scratch: PathBuf,
    /// The services stopped around the change (only for the instance's
    /// own root).
    pub(crate) services: Option<&'a Services>,
    /// Whether the destination is the instance's own root (not a
    /// directory elsewhere, nor the destination a safety backup was taken
    /// of): volumes and dumps are imported and services stopped only then,
    /// and the safety backup says which it was taken of.
    pub(crate) in_place: bool,
    /// What the safety backup holds: what is there now of the sources
    /// restored.
    pub(crate) existing: Vec<Source>,
    /// Whether a safety backup is taken.
    pub(crate) safety: bool,
    /// The whole-file checksum the archive must have, and who says so.
    pub(crate) expected: Option<(String, String)>,
    /// The backup's version and the instance's now.
    pub(crate) version: VersionGate,
    pub(crate) plan: RestorePlan,
}

impl Prepared<'_> {
    /// Whether a keep rule covers a path, given absolute and relative to
    /// the restored root: a never-restore path, an `--exclude`, or one the
    /// backup itself leaves out wherever it sits — what its excludes
    /// match, backstop's own home and store. (A directory holding a
    /// `CACHEDIR.TAG`, which the backup leaves out too, is kept by the
    /// merge, which looks for the tag only in directories the backup does
    /// not hold: see [`crate::restore::steps::Merger`].)
    pub(crate) fn kept(&self, abs: &Path, rel_root: &Path, is_dir: bool) -> bool {
        self.why_kept(abs, rel_root, is_dir).is_some()
    }

    /// Why a keep rule covers a path (see [`Prepared::kept`]).
    pub(crate) fn why_kept(&self, abs: &Path, rel_root: &Path, is_dir: bool) -> Option<Why> {
        if let Some(why) = self.selection.why_kept(rel_root, is_dir) {
            Some(why)
        } else if self.backup_excludes.check(abs, is_dir).is_some() {
            Some(Why::NotBackedUp)
        } else if is_dir && self.own_state.iter().any(|p| p == abs) {
            Some(Why::Backstop)
        } else {
            None
        }
    }

    /// [`Prepared::why_kept`] for the paths of source `name`: a database
    /// file is its own source, which the backup's excludes (that leave it
    /// out of the tree around it, to be captured whole) do not keep.
    pub(crate) fn why_kept_in(
        &self,
        name: &str,
        abs: &Path,
        rel_root: &Path,
        is_dir: bool,
    ) -> Option<Why> {
        match self.places.get(name) {
            Some(Place::File { .. }) => self.selection.why_kept(rel_root, is_dir),
            _ => self.why_kept(abs, rel_root, is_dir),
        }
    }
}

/// Plans a restore of `src` (found, and checked against the request by
/// [`check_request`]): where each source goes, every check made before
/// anything is written, what the safety backup holds, and, for a dry run,
/// every path and its action, read from the archive.
///
/// # Errors
///
/// Integrity failures (the checksum, the manifest) and refusals (free
/// space, permissions, an exact restore over another directory, a symlink
/// on the way to a target, an unreadable destination) before anything is
/// written.
pub(crate) fn prepare<'a>(
    ctx: &Context<'a>,
    req: &RestoreRequest,
    src: &'a Found,
) -> Result<Prepared<'a>> {
    let m = &src.manifest;
    let inst = ctx.config.instances.get(&m.instance);
    let (dest, own_root) = match (&req.dest, own_root(m, inst, trusted(src))) {
        (Some(dest), root) => (
            resolve_dest(dest),
            root.unwrap_or_else(|_| PathBuf::from(&m.root)),
        ),
        (None, Ok(root)) => (resolve_root(m, inst, &root)?, root),
        (None, Err(e)) => return Err(e),
    };
    check_dest_is_dir(&dest)?;
    let is_own_root = resolve_dest(&own_root) == dest;
    let in_place = in_place(m, inst, &dest, is_own_root);
    let mode = req
        .mode
        .unwrap_or(if is_own_root { Mode::Exact } else { Mode::Safe });
    if req.activate.is_some() && !in_place {
        return Err(Error::usage(
            "a rollback puts the instance back in place; it takes no destination",
            Some("use `backstop restore ID --dest DIR` to restore elsewhere".into()),
        ));
    }
    let (selection, backup_excludes) = selection(req, m, inst, &dest)?;
    let sources: Vec<&SourceManifest> = m
        .sources
        .iter()
        .filter(|s| selection.source_selected(&s.name))
        .collect();
    let scratch = ctx.layout.home.join("restore").join(&m.instance);
    let places = places(src, &sources, &dest, in_place, inst)?;
    let planned_sources = planned_sources(&sources, &places, &scratch);
    let expected = expected_checksum(src)?;
    let plan = RestorePlan {
        backup: m.id.clone(),
        archive: src.archive.label().display().to_string(),
        instance: m.instance.clone(),
        created_at: m.created_at.clone(),
        destination: dest.display().to_string(),
        mode,
        sources: planned_sources,
        // Filled in below, once made.
        checks: Vec::new(),
        safety_backup: false,
        safety_backup_note: String::new(),
        changes: Changes::default(),
    };
    let mut prep = Prepared {
        src,
        inst,
        dest,
        mode,
        selection,
        backup_excludes,
        own_state: own_state(ctx),
        sources,
        places,
        scratch,
        services: inst.and_then(|i| i.services.as_ref()).filter(|_| in_place),
        in_place,
        existing: Vec::new(),
        safety: false,
        expected,
        version: VersionGate::Unknown,
        plan,
    };

    // Checks, all before anything is written.
    prep.version = prep.version_gate();
    let mut checks = prep.checks(ctx, req, &own_root, is_own_root)?;
    prep.existing = prep.safety_sources();
    prep.safety = req.pre_backup && !prep.existing.is_empty();
    // The destination must be readable wherever no rule keeps it: the
    // merge's walk of the live tree refuses what it cannot read, before
    // any change to it. When services stop or a safety backup is taken
    // first, and the catalog says the backup had no warnings (its trailer
    // keeps nothing else), an unreadable directory is refused now, before
    // either; otherwise the walk beside the staging would cost a pass
    // over the tree for nothing.
    if !req.dry_run
        && (prep.safety || prep.services.is_some())
        && prep.src.record.as_ref().is_some_and(|r| r.warnings == 0)
    {
        prep.check_readable()?;
    }
    if let Some(problem) = src
        .catalog_unusable
        .as_ref()
        .filter(|_| prep.safety && !req.dry_run)
    {
        return Err(safety_needs_catalog(problem));
    }
    prep.plan.safety_backup = prep.safety;
    prep.plan.safety_backup_note = prep.safety_note(req);
    if prep.safety {
        checks.push(prep.check_safety_space(ctx)?);
    }
    checks.insert(1, prep.check_checksum(ctx, req.dry_run || req.preview)?);
    prep.plan.checks = checks;

    if req.dry_run || req.preview {
        // The archive is read to list what it holds; nothing is written,
        // nothing is run. (A real restore lists what it did once staged.)
        prep.plan.changes = preview(ctx, &prep)?;
    }
    Ok(prep)
}

/// Refuses a destination that exists and is not a directory (a regular
/// file, say): a backup's sources are put into a directory, and nothing
/// there may change, not even by a safety backup, when that cannot be.
fn check_dest_is_dir(dest: &Path) -> Result<()> {
    let Ok(md) = dest.symlink_metadata() else {
        return Ok(());
    };
    if md.is_dir() {
        return Ok(());
    }
    let what = if md.is_file() {
        "a file"
    } else {
        "not a directory"
    };
    Err(Error::usage(
        format!(
            "{} is {what}: a restore puts a backup into a directory",
            dest.display()
        ),
        Some(
            "give a directory with --dest DIR (a new one is created), or move the file aside first"
                .into(),
        ),
    ))
}

/// Where a backup goes back to when no destination is given: the
/// directory it was taken of. For a backup of a configured instance's root
/// that is the root the config gives now (the instance may have moved); a
/// safety backup of a restore's destination elsewhere goes back there, when
/// it is one of this catalog's (a bare archive file's manifest never sends
/// a configured instance's backup somewhere else).
fn own_root(m: &Manifest, inst: Option<&Instance>, trusted: bool) -> Result<PathBuf> {
    match (m.taken_of, inst) {
        (TakenOf::RestoreDestination, Some(_)) if !trusted => Err(Error::Refused {
            message: format!(
                "this archive was taken of {} (the destination of an earlier restore), not of \
                 instance {}'s root, and it is not one of this catalog's backups",
                m.root, m.instance
            ),
            hint: Some(format!(
                "say where it goes: `--dest {}` puts it back where it was taken",
                m.root
            )),
        }),
        (TakenOf::RestoreDestination, _) | (_, None) => Ok(PathBuf::from(&m.root)),
        (TakenOf::InstanceRoot, Some(i)) => Ok(i.root.clone()),
    }
}

/// Whether the backup is one backstop wrote into this home's catalog: a row
/// with its checksum, against which the archive is checked before anything
/// changes.
fn trusted(src: &Found) -> bool {
    src.record.as_ref().is_some_and(|r| r.sha256.is_some())
}

/// Whether `dest` is the instance's own root: the config's, or with no
/// config the manifest's when the backup was taken of the instance.
fn in_place(m: &Manifest, inst: Option<&Instance>, dest: &Path, is_own_root: bool) -> bool {
    match inst {
        Some(i) => resolve_dest(&i.root) == dest,
        None => is_own_root && m.taken_of == TakenOf::InstanceRoot,
    }
}

/// What the restore writes and what it keeps: the `--only` sources, the
/// never-restore paths and `--exclude` patterns, the secrets, and the
/// backup's own excludes.
fn selection(
    req: &RestoreRequest,
    m: &Manifest,
    inst: Option<&Instance>,
    dest: &Path,
) -> Result<(Selection, Excludes)> {
    // The backup's never-restore paths, and the config's now (one added
    // since the backup keeps what it names too).
    let mut keep_patterns = m.never_restore.clone();
    keep_patterns.extend(
        inst.filter(|_| m.taken_of == TakenOf::InstanceRoot)
            .map(|i| i.never_restore.clone())
            .unwrap_or_default(),
    );
    keep_patterns.extend(req.excludes.iter().cloned());
    let secrets = inst.map(|i| i.secrets.clone()).unwrap_or_default();
    let selection = Selection {
        only: req.only.clone(),
        keep: Patterns::new(dest, &keep_patterns)?,
        excluded: Patterns::new(dest, &req.excludes)?,
        secrets: Patterns::new(dest, &secrets)?,
    };
    // What the backup never covered stays too: paths its excludes matched.
    let backup_excludes = Excludes::new(dest, &m.excludes)?;
    Ok((selection, backup_excludes))
}

/// Where each selected source goes, with no symlink or file on the way to
/// any of them inside `dest`.
fn places(
    src: &Found,
    sources: &[&SourceManifest],
    dest: &Path,
    in_place: bool,
    inst: Option<&Instance>,
) -> Result<HashMap<String, Place>> {
    // A backup this home's catalog holds with its checksum is one backstop
    // wrote (the archive is checked against that checksum before anything
    // is changed): its absolute paths (bind mounts, found from quadlet
    // units that may be gone now) are its own. A bare archive file's are
    // not.
    let trusted = trusted(src);
    let mut places = HashMap::new();
    for s in sources {
        let place = place(src.archive.label(), dest, in_place, trusted, s, inst)?;
        places.insert(s.name.clone(), place);
    }
    for place in places.values() {
        if let Place::Tree(t) | Place::File { target: t, .. } = place {
            check_way_to(dest, t)?;
        }
    }
    Ok(places)
}

/// The sources as the plan shows them.
fn planned_sources(
    sources: &[&SourceManifest],
    places: &HashMap<String, Place>,
    scratch: &Path,
) -> Vec<PlannedSource> {
    sources
        .iter()
        .map(|s| {
            let place = &places[&s.name];
            let target = place.target(scratch, &s.name);
            PlannedSource {
                name: s.name.clone(),
                exists: match place {
                    // Shown as new when podman cannot tell: the plan's
                    // actions, which need the answer, fail instead.
                    Place::Import { into, .. } => import_exists(into).unwrap_or(false),
                    _ => target.symlink_metadata().is_ok(),
                },
                target: place.shown(scratch, &s.name),
            }
        })
        .collect()
}

impl Prepared<'_> {
    /// The checks on the backup and the destination, in the order the plan
    /// shows them (the checksum's comes later, once the safety backup is
    /// decided).
    fn checks(
        &self,
        ctx: &Context<'_>,
        req: &RestoreRequest,
        own_root: &Path,
        is_own_root: bool,
    ) -> Result<Vec<Check>> {
        let m = &self.src.manifest;
        let mut checks = vec![Check {
            name: "format",
            ok: true,
            outcome: CheckOutcome::Passed,
            detail: format!("archive format {} written by {}", m.format, m.created_by),
        }];
        if let Some(name) = &req.instance {
            checks.push(Check {
                name: "instance",
                ok: true,
                outcome: CheckOutcome::Passed,
                detail: format!("the backup belongs to {name}"),
            });
        }
        checks.extend(self.version.check(m, req)?);
        if req.dry_run
            && let Some(pending) = Journal::load(&ctx.layout.home, &m.instance)?
        {
            checks.push(Check {
                name: "interrupted restore",
                ok: true,
        outcome: CheckOutcome::Passed,
                detail: format!(
                    "the restore of {} into {} was interrupted; the restore finishes or undoes it first (or run `backstop recover {}`)",
                    pending.backup,
                    pending.destination.display(),
                    m.instance
                ),
            });
        }
        let base = fsutil::existing_ancestor(&self.dest);
        checks.push(self.check_free_space(&base)?);
        checks.push(check_writable(&base)?);
        self.check_staging_writable(&base)?;
        if self.mode == Mode::Exact && !is_own_root && !req.force {
            self.refuse_exact_elsewhere(own_root)?;
        }
        if let Some(s) = self.services {
            checks.push(Check {
                name: "services",
                ok: true,
                outcome: CheckOutcome::Passed,
                detail: s.describe(),
            });
        }
        Ok(checks)
    }

    /// What the version gate sees (Sindri's): the backup's version and
    /// the one the instance reports now, for a restore in place (a
    /// restore elsewhere leaves the instance as it is) of an instance with
    /// a version probe, of a backup that recorded its version.
    fn version_gate(&self) -> VersionGate {
        let m = &self.src.manifest;
        let (true, Some(inst), Some(backup)) = (
            self.in_place,
            self.inst.filter(|i| i.version.is_some()),
            m.about.app_version.clone(),
        ) else {
            return VersionGate::Unknown;
        };
        let current = match inst.detect_version() {
            Ok(Some(v)) => v,
            Ok(None) => return VersionGate::Unknown,
            Err(e) => {
                return VersionGate::NotCompared(format!(
                    "the backup was made by version {backup}; the instance's version cannot \
                     be read now ({}), so it is not compared",
                    crate::ops::backup::error_chain(&e)
                ));
            }
        };
        match (Major::of(&backup), Major::of(&current)) {
            (Some(was), Some(now)) => VersionGate::Compared {
                backup,
                was,
                current,
                now,
            },
            _ => VersionGate::NotCompared(format!(
                "the backup was made by version {backup}, the instance reports {current}: \
                 not versions whose major version backstop can read, so not compared"
            )),
        }
    }

    /// Refuses a restore the filesystem of `base` (the destination's
    /// nearest existing ancestor) has no room for.
    fn check_free_space(&self, base: &Path) -> Result<Check> {
        let need = self.staging_need();
        let have = fsutil::available_space(base)?;
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
        Ok(Check {
            name: "free space",
            ok: true,
            outcome: CheckOutcome::Passed,
            detail: format!(
                "{} MiB free on {}, about {} MiB needed",
                have >> 20,
                base.display(),
                need >> 20
            ),
        })
    }

    /// The bytes of the regular files the safety backup will read: what is
    /// there now of the trees and files restored (not below kept paths).
    fn live_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for s in &self.sources {
            let (Place::Tree(target) | Place::File { target, .. }) = &self.places[&s.name] else {
                continue;
            };
            let mut walk = Walk::new(target, false)?;
            while let Some((rel, node)) = walk.peek()? {
                total += node.size;
                let is_dir = node.kind == Kind::Dir;
                let kept = !rel.as_os_str().is_empty() && is_dir && {
                    let abs = target.join(rel);
                    // One this user cannot list (the backup's trailer may
                    // keep it; if not, the restore refuses it later) is not
                    // counted: an estimate does not fail on it.
                    self.kept(&abs, rel, true)
                        || rustix::fs::access(
                            &abs,
                            rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK,
                        )
                        .is_err()
                };
                walk.take(!kept);
            }
            walk.finish()?;
        }
        Ok(total)
    }

    /// About what staging the backup takes on the destination's
    /// filesystem.
    fn staging_need(&self) -> u64 {
        let totals = &self.src.manifest.totals;
        totals.bytes + totals.bytes / 20 + totals.entries * 4096 + (16 << 20)
    }

    /// Refuses a restore whose safety backup the store has no room for.
    /// The safety backup is estimated from the bytes there now, compressed
    /// as well as the backup's were; when the store shares the
    /// destination's filesystem, staging needs its room there too.
    fn check_safety_space(&self, ctx: &Context<'_>) -> Result<Check> {
        let placement = self
            .inst
            .map(|i| i.placement.or_defaults(&ctx.config.placement))
            .unwrap_or_else(|| {
                crate::stores::Placement::default().or_defaults(&ctx.config.placement)
            });
        if let Some(named) = placement.store() {
            let def = ctx.config.stores.def(named)?;
            if matches!(def.kind, crate::stores::StoreKind::S3(_)) {
                return Ok(Check {
                    name: "free space for the safety backup",
                    ok: true,
                    outcome: CheckOutcome::Passed,
                    detail: format!("it goes to the bucket {}", def.describe()),
                });
            }
        }
        // The current state's bytes, compressed as well as the backup's
        // were (the same application's files).
        let archive = self.src.archive.size()?.unwrap_or(0);
        let ratio =
            (archive as f64 / self.src.manifest.totals.bytes.max(1) as f64).clamp(0.01, 1.1);
        let estimate = (self.live_bytes()? as f64 * ratio) as u64;
        let store = fsutil::existing_ancestor(&ctx.layout.store);
        let dest = fsutil::existing_ancestor(&self.dest);
        let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let shared = device(&store).is_some() && device(&store) == device(&dest);
        let need =
            estimate + estimate / 10 + (1 << 20) + if shared { self.staging_need() } else { 0 };
        let have = fsutil::available_space(&store)?;
        let what = if shared {
            "the safety backup and the staged copy"
        } else {
            "the safety backup"
        };
        if have < need {
            return Err(Error::Refused {
                message: format!(
                    "not enough free space on the filesystem of {} for {what}: about {} MiB are needed, {} MiB are free",
                    store.display(),
                    need >> 20,
                    have >> 20
                ),
                hint: Some(
                    "free some space in the store, or pass --no-pre-backup if the current state need not be kept"
                        .into(),
                ),
            });
        }
        Ok(Check {
            name: "free space for the safety backup",
            ok: true,
            outcome: CheckOutcome::Passed,
            detail: format!(
                "{} MiB free on {}, about {} MiB needed for {what}",
                have >> 20,
                store.display(),
                need >> 20
            ),
        })
    }

    /// Refuses an exact restore over a non-empty directory that is not the
    /// backup's own root: it would delete everything the backup lacks.
    fn refuse_exact_elsewhere(&self, own_root: &Path) -> Result<()> {
        let non_empty = std::fs::read_dir(&self.dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if non_empty {
            return Err(Error::usage(
                format!(
                    "{} is not where backup {} was taken from ({}), and an exact restore would delete everything in it that the backup does not hold",
                    self.dest.display(),
                    self.src.manifest.id,
                    own_root.display()
                ),
                Some(
                    "use --mode safe or --mode merge, or pass --force if that is what you want"
                        .into(),
                ),
            ));
        }
        Ok(())
    }

    /// Walks every tree and database target, failing on the first
    /// directory no rule keeps that cannot be read.
    fn check_readable(&self) -> Result<()> {
        for s in &self.sources {
            let (Place::Tree(target) | Place::File { target, .. }) = &self.places[&s.name] else {
                continue;
            };
            let rel_base = rel_base(s);
            check_listable(target, &|rel: &Path| {
                self.kept(&target.join(rel), &rel_base.join(rel), true)
            })?;
        }
        Ok(())
    }

    /// What the safety backup holds: what is there now of the sources
    /// restored, as sources of a backup.
    fn safety_sources(&self) -> Vec<Source> {
        self.sources
            .iter()
            .filter_map(|s| {
                Some(Source {
                    name: s.name.clone(),
                    spec: self.safety_spec(s)?,
                })
            })
            .collect()
    }

    /// What the safety backup takes of `s`, if anything is there now.
    fn safety_spec(&self, s: &SourceManifest) -> Option<SourceSpec> {
        let present = |t: &Path| {
            t.symlink_metadata().is_ok()
                && std::fs::read_dir(t)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true)
        };
        // Relative to the destination, as the backup's own sources are; a
        // bind mount outside it stays absolute.
        let below_dest = |t: &Path| match t.strip_prefix(&self.dest) {
            Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
            Ok(rel) => rel.to_path_buf(),
            Err(_) => t.to_path_buf(),
        };
        let spec = match &self.places[&s.name] {
            Place::Tree(t) if present(t) => SourceSpec::Path(below_dest(t)),
            Place::File { target, .. } if target.is_file() => {
                SourceSpec::Sqlite(below_dest(target))
            }
            Place::Import {
                into: ImportTarget::Volume { name, .. },
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
            } => self
                .inst
                .and_then(|i| i.sources.iter().find(|c| c.name == s.name))
                .map(|c| c.spec.clone())?,
            _ => return None,
        };
        Some(spec)
    }

    /// Why a safety backup is taken or not, as the plan says it.
    fn safety_note(&self, req: &RestoreRequest) -> String {
        if !req.pre_backup {
            "skipped: --no-pre-backup".to_string()
        } else if self.existing.is_empty() {
            "not needed: nothing is at the destination".to_string()
        } else {
            format!(
                "of {} as instance {}, reason {}",
                self.dest.display(),
                self.src.manifest.instance,
                req.safety_reason
            )
        }
    }

    /// The checksum check, made now when the sidecar or the catalog records
    /// one and a service is to be stopped or a safety backup taken (or the
    /// plan is only shown): before either, so that a damaged or tampered
    /// archive costs no downtime. Staging compares it again, in the same
    /// read that checks every member; without services or a safety backup
    /// that comparison is the check, still before anything is replaced.
    fn check_checksum(&self, ctx: &Context<'_>, shown_only: bool) -> Result<Check> {
        let src = self.src;
        if let Some(partial) = &src.partial {
            return partial_checksum(src, partial);
        }
        // First when something happens before staging that a bad archive
        // would cost (services stopped, a safety backup), and for a plan
        // that is only shown (nothing is staged to check it). Otherwise the
        // one read that stages the archive checks it, before anything is
        // replaced, and a bucket is read once, not fetched and then read.
        let checked_first =
            self.expected.is_some() && (self.services.is_some() || self.safety || shown_only);
        if checked_first {
            let actual = hex::encode(src.fetch(ctx)?.hash()?);
            check_sum(src, &self.expected, &actual)?;
        }
        Ok(Check {
            name: "checksum",
            ok: true,
            outcome: CheckOutcome::Passed,
            detail: match (&self.expected, checked_first) {
                (None, _) => {
                    "no sidecar or catalog checksum to compare; every file is checked while staging"
                        .into()
                }
                (Some((what, _)), true) => format!("SHA-256 matches {what}"),
                (Some((what, _)), false) => format!(
                    "SHA-256 compared with {what} while staging, before anything is replaced \
                     (no service is stopped and no safety backup taken before it)"
                ),
            },
        })
    }
}

/// The checksum check of a partial read: every frame it reads, and every
/// frame its chain's partial reads take, against their frame tables.
fn partial_checksum(src: &Found, partial: &Partial) -> Result<Check> {
    let mut bytes = 0u64;
    let mut frames = 0usize;
    let reads = std::iter::once((&src.archive, partial)).chain(
        src.links
            .iter()
            .filter_map(|l| Some((&l.location, l.partial.as_ref()?))),
    );
    for (at, p) in reads {
        for f in &p.frames {
            frames::read_frame(at, f)?;
        }
        bytes += p.bytes();
        frames += p.frames.len();
    }
    let whole = src.record.as_ref().and_then(|r| r.chain_size.or(r.size));
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20));
    let of = whole.map_or(String::new(), |w| format!(" of {}", mib(w)));
    Ok(Check {
        name: "checksum",
        ok: true,
        outcome: CheckOutcome::Passed,
        detail: format!(
            "{} needs {frames} frames ({}{of}); each matches its hash in the frame table, \
             whose SHA-256 matches the catalog",
            partial.sources.join(", "),
            mib(bytes),
        ),
    })
}

/// The backup's version and the instance's now, as the version gate
/// compares them.
#[derive(Debug, Clone)]
pub(crate) enum VersionGate {
    /// Nothing to compare: a restore elsewhere, an instance without a
    /// version probe, a backup that recorded no version.
    Unknown,
    /// Shown in the plan, never blocking: why they cannot be compared.
    NotCompared(String),
    Compared {
        backup: String,
        was: Major,
        current: String,
        now: Major,
    },
}

impl VersionGate {
    /// Whether the restore puts back another major version than the
    /// instance runs now.
    pub(crate) fn crosses_major(&self) -> bool {
        matches!(self, VersionGate::Compared { was, now, .. } if was != now)
    }

    /// The plan's check: none for a rollback (whose job is to cross
    /// versions) or with nothing to compare.
    ///
    /// # Errors
    ///
    /// [`Error::MajorVersion`] for a plain restore across major versions
    /// without `--force`.
    fn check(&self, m: &Manifest, req: &RestoreRequest) -> Result<Option<Check>> {
        let check = |outcome, detail| Check {
            name: "version",
            ok: outcome != CheckOutcome::Overridden,
            outcome,
            detail,
        };
        let (gate, Purpose::Restore) = (self, req.purpose) else {
            return Ok(None);
        };
        let (backup, was, current, now) = match gate {
            VersionGate::Unknown => return Ok(None),
            VersionGate::NotCompared(why) => {
                return Ok(Some(check(CheckOutcome::NotCompared, why.clone())));
            }
            VersionGate::Compared {
                backup,
                was,
                current,
                now,
            } => (backup, was, current, now),
        };
        if was == now {
            return Ok(Some(check(
                CheckOutcome::Passed,
                format!(
                    "the backup was made by version {backup}, the instance reports {current}: \
                     the same major version {now}"
                ),
            )));
        }
        if !req.force {
            return Err(Error::MajorVersion(Box::new(Mismatch {
                backup: m.id.clone(),
                instance: m.instance.clone(),
                backup_version: backup.clone(),
                backup_major: *was,
                current: current.clone(),
                current_major: *now,
            })));
        }
        Ok(Some(check(
            CheckOutcome::Overridden,
            format!(
                "the backup was made by version {backup} (major version {was}), the instance \
                 reports {current} (major version {now}): restored anyway, as --force asks"
            ),
        )))
    }
}

impl Prepared<'_> {
    /// Refuses a restore whose staged copy cannot be made: it goes beside
    /// each target (to be renamed into place on the same filesystem), in
    /// a directory other than `base` when the target is the destination
    /// itself.
    fn check_staging_writable(&self, base: &Path) -> Result<()> {
        for place in self.places.values() {
            let (Place::Tree(target) | Place::File { target, .. }) = place else {
                continue;
            };
            let beside = fsutil::existing_ancestor(&fsutil::parent_dir(target));
            if beside.as_path() != base
                && rustix::fs::access(&beside, rustix::fs::Access::WRITE_OK).is_err()
            {
                return Err(Error::Refused {
                    message: format!(
                        "{} is not writable, and the restore stages its copy of {} there, \
                         beside it, to move it into place",
                        beside.display(),
                        target.display()
                    ),
                    hint: Some(
                        "run as a user who may write there, or restore elsewhere with --dest DIR"
                            .into(),
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Refuses a restore into `base` (the destination's nearest existing
/// ancestor) when this user may not write there.
fn check_writable(base: &Path) -> Result<Check> {
    if rustix::fs::access(base, rustix::fs::Access::WRITE_OK).is_err() {
        return Err(Error::Refused {
            message: format!("{} is not writable", base.display()),
            hint: Some(
                "run as a user who may write there, or restore elsewhere with --dest DIR".into(),
            ),
        });
    }
    Ok(Check {
        name: "permissions",
        ok: true,
        outcome: CheckOutcome::Passed,
        detail: format!("{} is writable", base.display()),
    })
}

/// Whether a keep rule covers a path relative to a target.
type KeepRule<'a> = Box<dyn Fn(&Path, bool) -> Option<Why> + 'a>;

/// What a dry run plans: the archive read once (twice when the catalog
/// cannot rule out paths the backup could not hold, whose list comes last),
/// each entry merged with the live tree as it comes.
fn preview(ctx: &Context<'_>, prep: &Prepared<'_>) -> Result<Changes> {
    let src = prep.src;
    let m = &src.manifest;
    let places = &prep.places;
    let incomplete = if src.record.as_ref().is_some_and(|r| r.warnings == 0) {
        BTreeSet::new()
    } else {
        let run = src.walk(ctx, Phase::Verify, &mut Skim);
        incomplete_paths(m, &run.result?.trailer)
    };
    let databases = database_paths(places);
    let other = |abs: &Path| databases.iter().any(|d| d == abs);
    let keeps: Vec<(String, KeepRule<'_>)> = prep
        .sources
        .iter()
        .filter_map(|s| {
            let (Place::Tree(target) | Place::File { target, .. }) = &places[&s.name] else {
                return None;
            };
            let rel_base = rel_base(s);
            let incomplete = &incomplete;
            let keep = move |rel: &Path, is_dir: bool| {
                prep.why_kept_in(&s.name, &target.join(rel), &rel_base.join(rel), is_dir)
                    .or_else(|| {
                        incomplete
                            .contains(&rel_base.join(rel))
                            .then_some(Why::NotRead)
                    })
            };
            Some((s.name.clone(), Box::new(keep) as KeepRule<'_>))
        })
        .collect();
    let mut targets = Vec::new();
    for s in &prep.sources {
        let keep = keeps
            .iter()
            .find(|(n, _)| *n == s.name)
            .map(|(_, k)| k.as_ref());
        let target = match (&places[&s.name], keep) {
            (Place::Import { file, into }, _) => preview::Target::Import {
                file: file.clone(),
                size: 0,
                action: import_action(into)?,
            },
            (Place::Tree(t), Some(keep)) => {
                preview::Target::Tree(Merger::new(prep.mode, t, None, keep, &other, None)?)
            }
            (Place::File { target, file }, Some(keep)) => preview::Target::File {
                file: file.clone(),
                merger: Merger::new(prep.mode, target, None, keep, &other, None)?,
            },
            _ => continue,
        };
        targets.push((s.name.clone(), target));
    }
    let mut visitor = Preview::new(&m.sources, targets, &prep.selection);
    src.walk(ctx, Phase::Verify, &mut visitor).result?;
    // In the order of the sources, as a real restore reports them.
    let mut by_name = visitor.into_targets();
    let mut changes = Changes::default();
    for s in &prep.sources {
        match by_name.remove(&s.name) {
            Some(preview::Target::Import { size, action, .. }) => changes.push(
                &places[&s.name].shown(&prep.scratch, &s.name),
                action,
                import_kind(s),
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
