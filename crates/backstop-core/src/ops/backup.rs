//! `backup`: scan an instance and write an archive, with every step of
//! guarantee 1 in order: temporary file → flush → name → directory flush →
//! sidecar → catalog row marked available. Any failure on the way leaves no
//! archive and a `failed` row that says why.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Context;
use crate::archive::compress::BlockCompressor;
use crate::archive::format::{FORMAT, Problem, QuadletUnits, SourceManifest, Totals};
use crate::archive::index::Previous;
use crate::archive::reader::sidecar_path;
use crate::archive::writer::{Target, Written, write_archive};
use crate::archive::{Codec, CompressionSpec, Description, Manifest, Trailer};
use crate::catalog::{BackupRecord, Catalog, Finished, NewBackup};
use crate::chain::{self, ChainRequest, Choice, Parent, Wanted};
use crate::encryption::{EXTENSION, EncryptRequest, Recipients};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fsutil::{self, NewFile, TEMP_PREFIX};
use crate::instance::{Instance, SourceSpec};
use crate::lock::{InstanceLock, StoreLock, hostname};
use crate::naming::{self, Renamed};
use crate::source::capture::{self, Spool};
use crate::source::exclude::{Excluded, Excludes};
use crate::source::scan::{Dirs, EntryRef, ExcludedPath, NodeKind, Scan, ScanOptions, ScanTop};
use crate::store::{Key, Store};
use crate::stores::Location;
use crate::systemd::{Scope, Systemd};
use crate::time;

/// Where the archive goes.
pub enum Output {
    /// `<store>/<instance>/<id>.<ext>`.
    Store,
    /// Into this directory, named `<id>.<ext>`.
    Dir(PathBuf),
    /// Exactly this file, which must not exist.
    File(PathBuf),
    /// A stream such as stdout: no sidecar, not recorded in the catalog.
    Stream(Box<dyn Write + Send>),
}

/// Everything a backup needs to know.
pub struct BackupRequest {
    pub instance: Instance,
    pub about: Description,
    /// Exclude patterns on top of the built-in ones and the instance's own.
    pub excludes: Vec<String>,
    pub compression: CompressionSpec,
    /// Whether to encrypt, on top of what the instance's config says.
    pub encryption: EncryptRequest,
    pub output: Output,
    /// How long to wait for the instance lock; `None` fails at once.
    pub wait: Option<Duration>,
    /// Full, incremental, or whichever the chain allows.
    pub chain: ChainRequest,
}

/// A problem with one file that did not stop the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// `vanished`, `changed`, `unreadable` or `skipped`.
    pub kind: &'static str,
    pub path: String,
    pub detail: String,
}

impl Warning {
    /// Whether this warning means the archive lacks something the source
    /// had (exit code 3). Skipped sockets and FIFOs are not data.
    pub fn is_incomplete(&self) -> bool {
        self.kind != "skipped"
    }
}

/// What a note is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoteKind {
    /// Something found in the quadlet files that backstop assumed or left
    /// out (a volume's default name, an anonymous volume).
    Quadlet,
    /// The instance's version could not be read.
    Version,
    /// The catalog failed SQLite's own check: the backup is made and
    /// recorded, but `reconcile --apply` should rebuild the catalog.
    Catalog,
    /// Why the backup is full where an incremental was possible, or why
    /// the index cache could not be kept.
    Chain,
}

/// Something a backup says about how it understood the instance. Unlike a
/// [`Warning`], a note never means the archive lacks a file, so it does
/// not change the exit code or the catalog's warning count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub kind: NoteKind,
    pub detail: String,
}

impl Note {
    fn quadlet(notes: Vec<String>) -> impl Iterator<Item = Note> {
        notes.into_iter().map(|detail| Note {
            kind: NoteKind::Quadlet,
            detail,
        })
    }
}

/// A finished backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The catalog record; for a streamed backup, what it would have said.
    pub backup: BackupRecord,
    /// Set when this directory cannot have its own name, which another
    /// directory's backups hold.
    pub renamed: Option<Renamed>,
    /// Whether the backup is in the catalog (not for streams).
    pub cataloged: bool,
    pub trailer: Trailer,
    pub excluded: Vec<ExcludedSummary>,
    /// What the archive lacks of the sources (files vanished, changed,
    /// unreadable or skipped while being read).
    pub warnings: Vec<Warning>,
    /// What backstop assumed or could not learn; not about the files.
    pub notes: Vec<Note>,
    /// The recipients the archive is encrypted to; empty when it is not.
    pub encrypted_to: Vec<String>,
    /// Files (and their bytes) an incremental did not store because they
    /// are unchanged since its parent.
    pub unchanged_files: u64,
    pub unchanged_bytes: u64,
    /// The copies made after the backup (`copies = [...]`), links first.
    pub copies: Vec<crate::ops::copy::Copied>,
    /// The copies that failed, each with why: the backup itself is made.
    pub copy_errors: Vec<String>,
    pub duration_ms: u64,
}

/// Excluded paths, grouped by the rule that excluded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExcludedSummary {
    pub rule: String,
    pub count: usize,
    /// The first few paths, as examples.
    pub examples: Vec<String>,
}

/// What a backup would do: the answer to `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct BackupPlan {
    pub instance: String,
    /// Set when this directory cannot have its own name, which another
    /// directory's backups hold.
    pub renamed: Option<Renamed>,
    pub root: String,
    pub sources: Vec<SourceManifest>,
    /// Where the archive would be written (`None` for a stream).
    pub destination: Option<String>,
    pub compression: crate::archive::Codec,
    pub level: Option<i32>,
    /// The recipients the archive would be encrypted to; empty when it
    /// would not be.
    pub encrypted_to: Vec<String>,
    pub entries: Vec<PlannedEntry>,
    pub totals: Totals,
    pub excluded: Vec<ExcludedSummary>,
    pub excluded_paths: Vec<String>,
    pub warnings: Vec<Warning>,
    /// What backstop assumed or could not learn; not about the files.
    pub notes: Vec<Note>,
    /// The archive size expected from compressing samples of the data
    /// (of a full backup).
    pub estimated_size: u64,
    /// What the backup would build on, when it would be incremental.
    pub chain: Option<crate::archive::format::ChainLinks>,
    /// Why it would be full where a chain could go on.
    pub full_because: Option<String>,
}

/// One entry that would go into the archive.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedEntry {
    pub path: String,
    /// `dir`, `file`, `symlink` or `hardlink`.
    pub kind: &'static str,
    pub size: u64,
}

fn rule_name(rule: &Excluded) -> String {
    match rule {
        Excluded::Pattern(p) => p.clone(),
        Excluded::CacheDirTag => crate::source::exclude::CACHEDIR_TAG_RULE.to_string(),
        Excluded::OwnState => "backstop's own home and store".to_string(),
    }
}

fn summarize_excluded(excluded: &[ExcludedPath]) -> Vec<ExcludedSummary> {
    let mut groups: BTreeMap<String, ExcludedSummary> = BTreeMap::new();
    for e in excluded {
        let rule = rule_name(&e.rule);
        let g = groups
            .entry(rule.clone())
            .or_insert_with(|| ExcludedSummary {
                rule,
                count: 0,
                examples: Vec::new(),
            });
        g.count += 1;
        if g.examples.len() < 3 {
            g.examples.push(e.path.clone());
        }
    }
    groups.into_values().collect()
}

fn warnings_of(trailer: &Trailer) -> Vec<Warning> {
    let w = |kind: &'static str, p: &Problem| Warning {
        kind,
        path: p.path.clone(),
        detail: p.detail.clone(),
    };
    let mut out: Vec<Warning> = trailer
        .vanished
        .iter()
        .map(|p| Warning {
            kind: "vanished",
            path: p.clone(),
            detail: "disappeared before it could be read; not in the archive".into(),
        })
        .collect();
    out.extend(trailer.changed.iter().map(|p| w("changed", p)));
    out.extend(trailer.unreadable.iter().map(|p| w("unreadable", p)));
    out.extend(trailer.skipped.iter().map(|p| w("skipped", p)));
    out
}

/// The `(device, inode)` of backstop's home and store, so a backup of a
/// directory that contains them does not back up itself.
fn own_state_dirs(ctx: &Context<'_>) -> Vec<(u64, u64)> {
    [&ctx.layout.home, &ctx.layout.store]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn scan(
    ctx: &Context<'_>,
    req: &BackupRequest,
    tops: &[ScanTop],
    previous: Option<&RefCell<Previous>>,
) -> Result<(Scan, Excludes)> {
    let mut patterns = req.instance.excludes.clone();
    patterns.extend(req.excludes.iter().cloned());
    // A database captured consistently is not also copied file by file
    // (nor reported as excluded: it is in the archive, under its source).
    let mut captured = Vec::new();
    for s in &req.instance.sources {
        if let SourceSpec::Sqlite(p) = &s.spec
            && let Ok(rel) = req.instance.resolve(p).strip_prefix(&req.instance.root)
        {
            let rel = rel.display().to_string();
            for suffix in ["", "-wal", "-shm", "-journal"] {
                captured.push(format!("/{}{suffix}", glob_escape(&rel)));
            }
        }
    }
    patterns.extend(captured.iter().cloned());
    let excludes = Excludes::new(&req.instance.root, &patterns)?;
    let opts = ScanOptions {
        excludes: &excludes,
        skip_dirs: own_state_dirs(ctx),
        progress: ctx.progress,
        cancel: ctx.cancel,
        previous,
    };
    let mut scan = Scan::run(&req.instance.root, tops, &opts)?;
    scan.excluded
        .retain(|e| !matches!(&e.rule, Excluded::Pattern(p) if captured.contains(p)));
    Ok((scan, excludes))
}

/// `text` with glob characters escaped, for a literal gitignore pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).ok_or_else(|| {
        Error::usage(
            format!("{} is not valid UTF-8", path.display()),
            Some("backstop records paths in JSON and SQLite: use a UTF-8 path".into()),
        )
    })
}

fn sources_manifest(instance: &Instance) -> Result<Vec<SourceManifest>> {
    instance
        .sources
        .iter()
        .map(|s| {
            let (path, origin, restore) = match &s.spec {
                SourceSpec::Path(p) => (
                    path_str(p)?,
                    path_str(&instance.resolve(p))?,
                    "extract".to_string(),
                ),
                SourceSpec::Sqlite(p) => (
                    path_str(p)?,
                    path_str(&instance.resolve(p))?,
                    "replace the database file".to_string(),
                ),
                SourceSpec::Volume(v) => (
                    String::new(),
                    format!("podman volume {v}"),
                    format!("podman volume import {v}"),
                ),
                SourceSpec::Command { dump, restore, .. } => (
                    String::new(),
                    format!("the output of `{dump}`"),
                    match restore {
                        Some(r) => format!("fed to `{r}`"),
                        None => "none configured: restored as a file with --dest".into(),
                    },
                ),
            };
            Ok(SourceManifest {
                name: s.name.clone(),
                kind: s.spec.kind().into(),
                path,
                origin,
                restore,
                file: capture::captured_file(s, &instance.root),
                volume: match &s.spec {
                    // Recorded so that a volume created again is the same.
                    SourceSpec::Volume(v) => {
                        Some(crate::podman::Podman::default().volume_settings(v)?)
                    }
                    _ => None,
                },
            })
        })
        .collect()
}

/// The archive file for backup `id` of `instance` under `output`, if it is
/// a file (`….age` when `encrypted`).
fn destination(
    ctx: &Context<'_>,
    instance: &str,
    (req, encrypted): (&BackupRequest, bool),
    id: &str,
    named: Option<&Named>,
) -> Option<Location> {
    let name = format!("{id}{}", req.compression.codec.file_suffix(encrypted));
    match &req.output {
        Output::Store => Some(match named {
            Some(n) => {
                let key = crate::stores::archive_key(&n.host, instance, &name)
                    .expect("instance names and ids are key components");
                Location::object(n.store.clone(), key)
            }
            None => Location::file(ctx.layout.instance_store(instance).join(name)),
        }),
        Output::Dir(d) => Some(Location::file(d.join(name))),
        Output::File(f) => Some(Location::file(f.clone())),
        Output::Stream(_) => None,
    }
}

/// Where a dry run says the archive would go (a named store is not
/// connected for it).
fn planned_destination(
    ctx: &Context<'_>,
    instance: &str,
    (req, encrypted): (&BackupRequest, bool),
    id: &str,
) -> Option<String> {
    let placement = req.instance.placement.or_defaults(&ctx.config.placement);
    match (&req.output, placement.store()) {
        (Output::Store, Some(name)) => {
            let def = ctx.config.stores.def(name).ok()?;
            let file = format!("{id}{}", req.compression.codec.file_suffix(encrypted));
            let key = crate::stores::archive_key(&hostname(), instance, &file).ok()?;
            Some(format!("{}/{}", def.describe(), key.as_str()))
        }
        _ => destination(ctx, instance, (req, encrypted), id, None)
            .map(|at| at.label().display().to_string()),
    }
}

/// [`store_prefix`] for a dry run, which connects no store.
fn planned_prefix(ctx: &Context<'_>, instance: &Instance) -> String {
    let placement = instance.placement.or_defaults(&ctx.config.placement);
    match placement
        .store()
        .and_then(|n| ctx.config.stores.def(n).ok())
    {
        Some(def) => format!(
            "{}/{}/{}/",
            def.describe(),
            crate::stores::host_component(&hostname()),
            instance.name
        ),
        None => format!("{}/", ctx.layout.instance_store(&instance.name).display()),
    }
}

/// A stream a backup is written to (stdout).
type Stream = Box<dyn Write + Send>;

/// The named store a backup to the store goes to, connected, and the
/// host its keys carry.
struct Named {
    store: Arc<dyn Store>,
    host: String,
}

/// Where an instance's archives in the store are: the start of their
/// locations, within which chains are formed.
fn store_prefix(ctx: &Context<'_>, instance: &str, named: Option<&Named>) -> String {
    match named {
        Some(n) => format!(
            "{}/{}/{instance}/",
            n.store.describe(),
            crate::stores::host_component(&n.host)
        ),
        None => format!("{}/", ctx.layout.instance_store(instance).display()),
    }
}

/// The named stores a backup's id is claimed in: where it goes, and
/// where it is copied to (those that cannot be reached are left out: the
/// copy then fails and says why).
fn claim_stores(
    ctx: &Context<'_>,
    req: &BackupRequest,
    named: Option<&Named>,
) -> Vec<Arc<dyn Store>> {
    if !matches!(req.output, Output::Store) {
        return Vec::new();
    }
    let mut stores: Vec<Arc<dyn Store>> = named.iter().map(|n| n.store.clone()).collect();
    let placement = req.instance.placement.or_defaults(&ctx.config.placement);
    stores.extend(
        placement
            .copies
            .iter()
            .filter(|c| c.as_str() != crate::stores::HOME_STORE)
            .filter_map(|c| ctx.config.stores.get(c).ok()),
    );
    stores
}

/// Connects the store the instance's backups go to, when it is a named
/// one and the backup goes to the store: wrong credentials or a missing
/// bucket fail here, before anything is recorded.
///
/// # Errors
///
/// The store's failure to connect.
fn connect_named(ctx: &Context<'_>, req: &BackupRequest, streaming: bool) -> Result<Option<Named>> {
    if !matches!(req.output, Output::Store) || streaming {
        return Ok(None);
    }
    let placement = req.instance.placement.or_defaults(&ctx.config.placement);
    let Some(name) = placement.store() else {
        return Ok(None);
    };
    Ok(Some(Named {
        store: ctx.config.stores.get(name)?,
        host: hostname(),
    }))
}

/// Works out what a backup would contain, without writing anything
/// anywhere: no directories, no catalog, no lock.
///
/// # Errors
///
/// Fails when a source cannot be read or a pattern is invalid.
pub fn plan(ctx: &Context<'_>, req: &BackupRequest) -> Result<BackupPlan> {
    let mut req_sources = req.instance.clone();
    let renamed = naming::settle(ctx, &mut req_sources)?;
    let name = req_sources.name.clone();
    let (sources, notes) = req_sources.expanded_sources()?;
    req_sources.sources = sources;
    let env = req_sources.env();
    // Nothing is captured for a plan: volumes and dumps are listed, not run.
    let tops = capture::capture(ctx, &req_sources, None, &env)?;
    let recipients = recipients_of(ctx, req)?;
    let encrypted = recipients.is_some();
    check_output_name(&req.output, encrypted)?;
    let expanded = BackupRequest {
        instance: req_sources,
        about: req.about.clone(),
        excludes: req.excludes.clone(),
        compression: req.compression,
        encryption: req.encryption.clone(),
        output: Output::Store,
        wait: None,
        chain: ChainRequest::Full,
    };
    let (scan, _excludes) = scan(ctx, &expanded, &tops, None)?;
    let req_instance = &expanded.instance;
    let base = format!("{name}-{}", time::id_stamp(time::now()));
    let mut entries = Vec::with_capacity(scan.len());
    let mut buf = Vec::new();
    for i in 0..scan.len() as u32 {
        let e = EntryRef(i);
        scan.archive_path(e, &mut buf);
        entries.push(PlannedEntry {
            path: String::from_utf8_lossy(&buf).into_owned(),
            kind: match scan.kind(e) {
                NodeKind::Dir => "dir",
                NodeKind::File => "file",
                NodeKind::Symlink => "symlink",
                NodeKind::HardLink => "hardlink",
            },
            size: scan.size(e),
        });
    }
    let trailer = Trailer {
        unreadable: scan.unreadable.clone(),
        skipped: scan.skipped.clone(),
        ..Trailer::default()
    };
    let warnings = warnings_of(&trailer);
    let chained = match crate::ops::list::open_existing(ctx)? {
        Some(catalog) => {
            // The settled name and expanded sources, the request's chain and output.
            let wanted = Wanted {
                request: req.chain,
                to_store: matches!(req.output, Output::Store)
                    .then(|| planned_prefix(ctx, &expanded.instance)),
                ..wanted_chain(ctx, &expanded, None)
            };
            chain::preview(ctx, &catalog, &wanted)?
        }
        None => Err(String::new()),
    };
    let (chain, full_because) = match chained {
        Ok(links) => (Some(links), None),
        Err(why) => (None, Some(why).filter(|w| !w.is_empty())),
    };
    Ok(BackupPlan {
        chain,
        full_because,
        instance: name.clone(),
        renamed,
        root: req.instance.root.display().to_string(),
        sources: sources_manifest(req_instance)?,
        destination: planned_destination(ctx, &name, (req, encrypted), &base),
        compression: req.compression.codec,
        level: req.compression.level,
        encrypted_to: recipients.map(|r| r.shown).unwrap_or_default(),
        estimated_size: sealed_size(estimate_size(&scan, req.compression), encrypted),
        totals: scan.totals,
        excluded: summarize_excluded(&scan.excluded),
        excluded_paths: scan.excluded.iter().map(|e| e.path.clone()).collect(),
        warnings,
        notes: Note::quadlet(notes).collect(),
        entries,
    })
}

/// The size of an archive of `size` bytes once encrypted: age adds 16
/// bytes to every 64 KiB chunk, and a header of about 100 bytes a
/// recipient (a few hundred in all).
fn sealed_size(size: u64, encrypted: bool) -> u64 {
    if encrypted {
        size + size.div_ceil(64 << 10) * 16 + 512
    } else {
        size
    }
}

/// The recipients the backup `req` is encrypted to, from the instance's
/// config (and `[defaults]`) and the request; `None` when it is not.
fn recipients_of(ctx: &Context<'_>, req: &BackupRequest) -> Result<Option<Recipients>> {
    let config = req.instance.encryption.or_defaults(&ctx.config.encryption);
    Recipients::resolve(&config, &req.encryption, &req.instance.env())
}

/// Refuses an `--output FILE` whose name says the opposite of what the
/// archive is: plaintext named `….age`, or ciphertext named without it.
fn check_output_name(output: &Output, encrypted: bool) -> Result<()> {
    let Output::File(f) = output else {
        return Ok(());
    };
    let named_age = f
        .as_os_str()
        .as_encoded_bytes()
        .ends_with(EXTENSION.as_bytes());
    match (named_age, encrypted) {
        (true, false) => Err(Error::usage(
            format!(
                "{} ends in {EXTENSION}, but the backup is not encrypted",
                f.display()
            ),
            Some("give --recipient R (or configure recipients), or drop the .age suffix".into()),
        )),
        (false, true) => Err(Error::usage(
            format!(
                "the backup is encrypted, but {} does not end in {EXTENSION}",
                f.display()
            ),
            Some("name the file ….tar.zst.age, or give --no-encrypt".into()),
        )),
        _ => Ok(()),
    }
}

/// Estimates the archive size by compressing samples of the files: up to 32
/// samples of 256 KiB, spread evenly over the bytes to back up.
fn estimate_size(scan: &Scan, spec: CompressionSpec) -> u64 {
    const SAMPLES: u64 = 32;
    const SAMPLE: usize = 256 << 10;
    // Headers: a 512-byte header, a PAX header for sub-second times, padding.
    let overhead = scan.totals.entries * 1536;
    if spec.codec == Codec::None || scan.totals.bytes == 0 {
        let ratio = if spec.codec == Codec::None { 1.0 } else { 0.02 };
        return scan.totals.bytes + (overhead as f64 * ratio) as u64;
    }
    let Ok(mut compressor) = BlockCompressor::new(spec) else {
        return scan.totals.bytes;
    };
    let step = (scan.totals.bytes / SAMPLES).max(1);
    let (mut raw, mut packed) = (0u64, 0u64);
    let mut next_at = 0u64;
    let mut seen = 0u64;
    let mut out = Vec::new();
    let mut dirs = Dirs::default();
    for i in 0..scan.len() as u32 {
        let e = EntryRef(i);
        if scan.kind(e) != NodeKind::File {
            continue;
        }
        let size = scan.size(e);
        seen += size;
        if seen <= next_at || size == 0 {
            continue;
        }
        next_at = seen + step;
        let mut data = Vec::with_capacity(SAMPLE.min(size as usize));
        let read = scan.open_file(e, &mut dirs).and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, SAMPLE as u64), &mut data)
        });
        if read.is_err() || data.is_empty() {
            continue;
        }
        if compressor.compress(&data, &mut out).is_ok() {
            raw += data.len() as u64;
            packed += out.len() as u64;
        }
    }
    let ratio = if raw == 0 {
        1.0
    } else {
        packed as f64 / raw as f64
    };
    (scan.totals.bytes as f64 * ratio) as u64 + overhead / 50
}

/// Runs a backup.
///
/// # Errors
///
/// Fails when the lock is held, the output cannot be written (full disk,
/// permissions), the catalog is unusable, or on interruption. Every failure
/// after the attempt was recorded leaves a `failed` row and no archive.
pub fn backup(ctx: &Context<'_>, mut req: BackupRequest) -> Result<BackupReport> {
    check_output(&req.output)?;
    fsutil::create_private_dir_all(&ctx.layout.home)?;
    // Behind a migration of the store, then into the store it moved to.
    let store = StoreLock::shared(ctx.layout, req.wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let (lock, renamed) = lock_named(ctx, &mut req)?;
    // We hold the lock: an interrupted restore of this instance is repaired
    // before anything else reads or writes it.
    crate::ops::recover::recover_locked(ctx, &lock)?;
    let copies = req
        .instance
        .placement
        .or_defaults(&ctx.config.placement)
        .copies;
    let streamed = matches!(req.output, Output::Stream(_));
    let mut report = backup_locked(ctx, req, &lock)?;
    report.renamed = renamed;
    if report.cataloged && !streamed {
        copy_after(ctx, &copies, &mut report);
    }
    Ok(report)
}

/// Copies a new backup to each of `stores` (`copies = [...]`), under
/// its instance's lock; a copy that fails is said, and the backup stays.
fn copy_after(ctx: &Context<'_>, stores: &[String], report: &mut BackupReport) {
    if stores.is_empty() {
        return;
    }
    let catalog = match Catalog::open(&ctx.layout.catalog()) {
        Ok(c) => c,
        Err(e) => {
            report.copy_errors.push(format!("the catalog: {e}"));
            return;
        }
    };
    for name in stores {
        let copied = crate::ops::copy::Target::open(ctx, name).and_then(|target| {
            let mut out = Vec::new();
            crate::ops::copy::copy_locked(ctx, &catalog, &report.backup, &target, &mut out)
                .map(|()| out)
        });
        match copied {
            Ok(out) => report.copies.extend(out),
            Err(e) => report
                .copy_errors
                .push(format!("to {name}: {}", error_chain(&e))),
        }
    }
}

/// Settles the name the instance is backed up under (`naming`) and takes
/// that name's lock; settled again under the lock, since a backup of
/// another directory may have claimed the name while this one waited.
fn lock_named(
    ctx: &Context<'_>,
    req: &mut BackupRequest,
) -> Result<(InstanceLock, Option<Renamed>)> {
    let wanted = req.instance.clone();
    loop {
        let mut named = wanted.clone();
        let renamed = naming::settle(ctx, &mut named)?;
        let lock = InstanceLock::acquire(
            &ctx.layout.locks(),
            &named.name,
            &format!("backup {}", named.name),
            req.wait,
            ctx.cancel,
        )?;
        let mut again = wanted.clone();
        naming::settle(ctx, &mut again)?;
        if again.name == named.name {
            req.instance = named;
            return Ok((lock, renamed));
        }
    }
}

/// Refuses outputs that cannot work before anything is recorded.
fn check_output(output: &Output) -> Result<()> {
    if let Output::Dir(d) | Output::File(d) = output {
        path_str(d)?;
    }
    if let Output::File(f) = output {
        // Checked again when the file is created; refusing here records no attempt.
        if f.symlink_metadata().is_ok() {
            return Err(Error::usage(
                format!("{} already exists", f.display()),
                Some("backstop never overwrites an archive: choose another name".into()),
            ));
        }
    }
    Ok(())
}

/// Runs a backup while the caller holds the instance's lock (a restore's
/// safety backup runs under the restore's lock).
///
/// # Errors
///
/// As [`backup`], but for the lock.
pub fn backup_locked(
    ctx: &Context<'_>,
    mut req: BackupRequest,
    lock: &InstanceLock,
) -> Result<BackupReport> {
    assert_eq!(
        lock.instance(),
        req.instance.name,
        "the lock must be the instance's"
    );
    check_output(&req.output)?;
    // Before anything is recorded: a bad recipient is a usage error.
    let recipients = recipients_of(ctx, &req)?;
    let encrypted = recipients.is_some();
    check_output_name(&req.output, encrypted)?;
    let started = Instant::now();
    let (sources, quadlet_notes) = req.instance.expanded_sources()?;
    req.instance.sources = sources;
    let mut notes: Vec<Note> = Note::quadlet(quadlet_notes).collect();
    if req.about.app_version.is_none() {
        match req.instance.detect_version() {
            Ok(v) => req.about.app_version = v,
            Err(e) => notes.push(Note {
                kind: NoteKind::Version,
                detail: format!("the version could not be read: {}", error_chain(&e)),
            }),
        }
    }
    // A stream is taken out of the request: it is consumed by the writer.
    let stream = match std::mem::replace(&mut req.output, Output::Store) {
        Output::Stream(s) => Some(s),
        other => {
            req.output = other;
            None
        }
    };
    let streaming = stream.is_some();
    let named = connect_named(ctx, &req, streaming)?;
    let named = named.as_ref();
    let created = time::now();
    let created_at = time::rfc3339(created);
    let base = format!("{}-{}", req.instance.name, time::id_stamp(created));
    let origin = path_str(&req.instance.root)?;
    let made = Made {
        host: hostname(),
        created_by: crate::created_by(),
        // Asked before a cold backup stops anything: what ran as it began.
        quadlet_units: quadlet_units(&req.instance),
    };
    let (host, created_by) = (&made.host, &made.created_by);

    let mut catalog = Catalog::open(&ctx.layout.catalog())?;
    // A damaged catalog does not stop a backup (the archive describes
    // itself, and a rebuild adopts it), but it is said.
    let damage = match catalog.quick_check() {
        Ok(found) => found,
        Err(_) => Some("SQLite cannot read all of it".to_string()),
    };
    if let Some(problem) = damage {
        notes.push(Note {
            kind: NoteKind::Catalog,
            detail: format!(
                "the catalog {} is damaged ({problem}): this backup is recorded in it as far \
                 as it can be; run `backstop reconcile --apply` to rebuild the catalog from \
                 the archives",
                ctx.layout.catalog().display()
            ),
        });
    }
    repair_interrupted(ctx, &catalog, &req.instance.name)?;
    let wanted = wanted_chain(
        ctx,
        &req,
        (matches!(req.output, Output::Store) && !streaming)
            .then(|| store_prefix(ctx, &req.instance.name, named)),
    );
    let choice = match chain::choose(ctx, &catalog, &wanted) {
        // A damaged catalog cannot say what to build on; the backup is full.
        Err(Error::Catalog(e)) if wanted.request != ChainRequest::Incremental => Choice::Full(
            Some(format!("the catalog cannot say what to build on ({e})")),
        ),
        other => other?,
    };
    let parent = match choice {
        Choice::Incremental(parent) => Some(parent),
        Choice::Full(why) => {
            notes.extend(why.map(|why| Note {
                kind: NoteKind::Chain,
                detail: format!("a full backup: {why}"),
            }));
            None
        }
    };
    let links = parent.as_ref().map(|p| p.links.clone());
    if matches!(req.output, Output::Store) && !streaming {
        match named {
            // We hold the lock: no live backup of this instance writes here.
            Some(n) => {
                let dir = crate::stores::instance_prefix(&n.host, &req.instance.name)?;
                n.store.cleanup_abandoned(Some(&dir))?;
            }
            None => {
                let store_dir = ctx.layout.instance_store(&req.instance.name);
                fsutil::create_private_dir_all(&store_dir)?;
                remove_stale_temps(&store_dir);
            }
        }
    }

    let new = NewBackup {
        instance: &req.instance.name,
        origin: &origin,
        host,
        created_at: &created_at,
        about: &req.about,
        compression: req.compression.codec,
        level: req.compression.level,
        encrypted,
        created_by,
        chain: links.as_ref(),
    };
    // An id is taken when an archive of that name exists where this one goes
    // (only the store and a directory output name the file after the id).
    // Ids are claimed in every shared store the backup goes to or is
    // copied to, so two hosts never give theirs the same id.
    let claim_in = if streaming {
        Vec::new()
    } else {
        claim_stores(ctx, &req, named)
    };
    let taken = |id: &str| {
        let here = matches!(req.output, Output::Store | Output::Dir(_))
            && destination(ctx, &req.instance.name, (&req, encrypted), id, named).is_some_and(
                |at| match at.as_file() {
                    Some(p) => p.symlink_metadata().is_ok(),
                    // A store that cannot say is taken: the next id is tried.
                    None => !matches!(at.size(), Ok(None)),
                },
            );
        here || claim_in.iter().any(|store| {
            !crate::stores::claim_id(store.as_ref(), &req.instance.name, id, host).unwrap_or(true)
        })
    };
    let id = if streaming {
        // A stream is not recorded, but its id must not clash with one that is.
        let mut n = 1;
        loop {
            let candidate = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            if catalog.get(&candidate)?.is_none() {
                break candidate;
            }
            n += 1;
        }
    } else {
        catalog.begin_backup(&base, &new, &taken)?
    };

    if let Some(planned) =
        destination(ctx, &req.instance.name, (&req, encrypted), &id, named).filter(|_| !streaming)
    {
        catalog.set_planned_location(&id, &path_str(planned.label())?)?;
    }
    let result = cold(ctx, &req, || {
        run(
            ctx,
            &req,
            (stream, parent, named),
            recipients.as_ref(),
            (&id, &created_at),
            &made,
        )
    });
    match result {
        Ok((written, location, scanned)) => {
            let finished_at = time::now_rfc3339();
            let warnings = warnings_of(&written.trailer);
            let incomplete = warnings.iter().filter(|w| w.is_incomplete()).count() as u64;
            let finished = Finished {
                finished_at: &finished_at,
                location: location.as_deref().unwrap_or("-"),
                size: written.size,
                entries: written.trailer.entries,
                files: written.trailer.files,
                bytes: written.trailer.bytes,
                sha256: &written.sha256,
                frames_sha256: written.frames_sha256.as_deref(),
                warnings: incomplete,
            };
            let backup = if streaming {
                streamed_record(&id, &new, &finished)
            } else {
                let recorded = failpoint::hit("backup.before-available")
                    .and_then(|()| Ok(catalog.finish_backup(&id, &finished)?));
                if let Err(err) = recorded {
                    // Not recorded as available: the archive must not stay either.
                    if let Some(loc) = &location {
                        discard(ctx, loc);
                    }
                    let _ = catalog.fail_backup(&id, &time::now_rfc3339(), &error_chain(&err));
                    return Err(err);
                }
                keep_index(ctx, &req.instance.name, &written, &mut notes);
                catalog.get(&id)?.expect("the row was just written")
            };
            Ok(BackupReport {
                backup,
                renamed: None,
                cataloged: !streaming,
                excluded: summarize_excluded(&scanned.excluded),
                unchanged_files: scanned.unchanged.0,
                unchanged_bytes: scanned.unchanged.1,
                copies: Vec::new(),
                copy_errors: Vec::new(),
                warnings,
                notes,
                trailer: written.trailer,
                encrypted_to: recipients.map(|r| r.shown).unwrap_or_default(),
                duration_ms: started.elapsed().as_millis() as u64,
            })
        }
        Err(err) => {
            if !streaming {
                let message = match &err {
                    Error::Interrupted => "interrupted".to_string(),
                    other => error_chain(other),
                };
                // The original error matters more than a failure to record it.
                let _ = catalog.fail_backup(&id, &time::now_rfc3339(), &message);
            }
            Err(err)
        }
    }
}

/// What a backup asks of the chain.
fn wanted_chain<'r>(
    ctx: &Context<'_>,
    req: &'r BackupRequest,
    to_store: Option<String>,
) -> Wanted<'r> {
    Wanted {
        instance: &req.instance.name,
        origin: req.instance.root.to_str().unwrap_or_default(),
        profile: req.about.profile.as_deref(),
        sources: req
            .instance
            .sources
            .iter()
            .map(|s| s.name.as_bytes().to_vec())
            .collect(),
        config: req.instance.chain.or_defaults(&ctx.config.chain),
        request: req.chain,
        to_store,
    }
}

/// Keeps the new backup's index as the instance's cache; a cache that
/// cannot be written is said, and rebuilt by the next backup.
fn keep_index(ctx: &Context<'_>, instance: &str, written: &Written, notes: &mut Vec<Note>) {
    if let Err(e) = chain::save_cache(&ctx.layout.home, instance, &written.index) {
        notes.push(Note {
            kind: NoteKind::Chain,
            detail: format!(
                "the index cache could not be written ({}): the next backup reads it from \
                 this archive",
                error_chain(&e)
            ),
        });
    }
}

/// What the scan found that the report tells.
struct Scanned {
    excluded: Vec<ExcludedPath>,
    unchanged: (u64, u64),
}

/// The part of a backup after its row exists: scan (against the parent's
/// index for an incremental), write (encrypted to `recipients` when there
/// are any), commit.
fn run(
    ctx: &Context<'_>,
    req: &BackupRequest,
    (stream, parent, named): (Option<Stream>, Option<Box<Parent>>, Option<&Named>),
    recipients: Option<&Recipients>,
    (id, created_at): (&str, &str),
    made: &Made,
) -> Result<(Written, Option<String>, Scanned)> {
    let spool = Spool::new(&ctx.layout.home, &req.instance.name)?;
    let mut env = req.instance.env();
    env.set("BACKSTOP_BACKUP_ID", id)
        .set("BACKSTOP_REASON", &req.about.reason)
        .set_opt("BACKSTOP_VERSION", req.about.app_version.as_deref())
        .set("BACKSTOP_HOME", ctx.layout.home.to_string_lossy())
        .set("BACKSTOP_STORE", ctx.layout.store.to_string_lossy());
    let tops = capture::capture(ctx, &req.instance, Some(&spool), &env)?;
    let (links, for_scan, for_writer) = match parent {
        Some(p) => {
            let Parent {
                links,
                for_scan,
                for_writer,
            } = *p;
            (Some(links), Some(RefCell::new(for_scan)), Some(for_writer))
        }
        None => (None, None, None),
    };
    let (scan, excludes) = scan(ctx, req, &tops, for_scan.as_ref())?;
    failpoint::hit("backup.after-scan")?;
    ctx.cancel.check()?;
    let manifest = Manifest {
        format: FORMAT,
        id: id.to_string(),
        instance: req.instance.name.clone(),
        created_at: created_at.to_string(),
        created_by: made.created_by.clone(),
        host: made.host.clone(),
        about: req.about.clone(),
        compression: req.compression.codec,
        level: req.compression.level,
        root: path_str(&req.instance.root)?,
        configured_root: Some(path_str(&req.instance.configured_root)?),
        taken_of: req.instance.taken_of,
        sources: sources_manifest(&req.instance)?,
        excludes: excludes.patterns().to_vec(),
        never_restore: req.instance.never_restore.clone(),
        totals: scan.totals,
        quadlet_units: made.quadlet_units.clone(),
        chain: links,
    };
    let scanned = Scanned {
        excluded: scan.excluded.clone(),
        unchanged: scan.unchanged,
    };
    if let Some(stream) = stream {
        let written = write_archive(
            (&scan, for_writer),
            &manifest,
            Target::Stream(stream),
            req.compression,
            recipients,
            (ctx.progress, ctx.cancel),
        )?;
        return Ok((written, None, scanned));
    }
    let at = destination(
        ctx,
        &req.instance.name,
        (req, recipients.is_some()),
        id,
        named,
    )
    .expect("file outputs have a destination");
    let write = |target: Target<'_>| -> Result<Written> {
        write_archive(
            (&scan, for_writer),
            &manifest,
            target,
            req.compression,
            recipients,
            (ctx.progress, ctx.cancel),
        )
    };
    let written = match at.as_object() {
        Some((store, key)) => write_object(ctx, (store, key), write)?,
        None => write_file(ctx, at.label(), write)?,
    };
    Ok((written, Some(path_str(at.label())?), scanned))
}

/// Writes the archive into a new file at `path` and gives it its name,
/// then writes its sidecar; on any failure neither remains.
fn write_file(
    ctx: &Context<'_>,
    path: &Path,
    write: impl FnOnce(Target<'_>) -> Result<Written>,
) -> Result<Written> {
    let file = NewFile::create(path)?;
    let written = write(Target::File(file.file())).map_err(|e| with_path(e, path))?;
    failpoint::hit("backup.before-commit")?;
    ctx.cancel.check()?;
    let committed = file.commit()?;
    // From here on the archive has its name: remove it again on any failure.
    let finish = (|| {
        failpoint::hit("backup.after-rename")?;
        let name = committed
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let line = crate::archive::format::sidecar_line(&written.sha256, &name);
        fsutil::atomic_write(&sidecar_path(&committed), line.as_bytes(), 0o600)?;
        failpoint::hit("backup.after-sidecar")?;
        ctx.cancel.check()
    })();
    if let Err(e) = finish {
        discard_file(&committed);
        return Err(e);
    }
    Ok(written)
}

/// Streams the archive into a new object `key` of `store` (a multipart
/// upload, completed only when the archive is whole), then writes its
/// sidecar object; on any failure neither remains.
fn write_object(
    ctx: &Context<'_>,
    (store, key): (&Arc<dyn Store>, &Key),
    write: impl FnOnce(Target<'_>) -> Result<Written>,
) -> Result<Written> {
    let mut upload = store.create(key)?;
    let written = write(Target::Stream(Box::new(&mut upload))).map_err(store_write_error)?;
    failpoint::hit("backup.before-commit")?;
    ctx.cancel.check()?;
    upload.finish()?;
    let at = Location::object(store.clone(), key.clone());
    let finish = (|| {
        failpoint::hit("backup.after-rename")?;
        let line = crate::archive::format::sidecar_line(&written.sha256, key.name());
        let sidecar = Key::new(&format!("{}.sha256", key.as_str()))?;
        let mut w = store.create(&sidecar)?;
        w.write_all(line.as_bytes())
            .map_err(|e| Error::io("writing", at.sidecar().label(), e))?;
        w.finish()?;
        failpoint::hit("backup.after-sidecar")?;
        ctx.cancel.check()
    })();
    if let Err(e) = finish {
        discard_location(&at);
        return Err(e);
    }
    Ok(written)
}

/// A write error of the pipeline into a store: the store's own error
/// when it carries one (a dropped connection, refused credentials).
fn store_write_error(err: Error) -> Error {
    match err {
        Error::Io { source, .. } if crate::store::StoreError::from_io(&source).is_some() => {
            crate::store::StoreError::from_io(&source)
                .expect("just checked")
                .clone()
                .into()
        }
        other => other,
    }
}

/// Where and by what a backup is made, and what ran then: the manifest's
/// facts about its making.
struct Made {
    host: String,
    created_by: String,
    quadlet_units: Option<QuadletUnits>,
}

/// The services an instance's quadlet files give, and which of them are
/// active now (when systemd can be asked); `None` without `quadlets`.
fn quadlet_units(instance: &Instance) -> Option<QuadletUnits> {
    let dir = instance.resolve(instance.quadlets.as_ref()?);
    let units = crate::quadlet::service_names(&dir);
    let scope = Scope::of_this_process();
    let asked = Systemd::detect(scope)
        .and_then(|systemd| systemd.active(&units).map_err(|e| error_chain(&e)));
    let (active, unknown) = match asked {
        Ok(active) => (Some(active), None),
        Err(why) => (None, Some(why)),
    };
    Some(QuadletUnits {
        scope,
        units,
        active,
        unknown,
    })
}

/// Runs `f`, with the instance's services stopped around it when it asks
/// for cold backups; those that ran are started again whatever happens.
fn cold<T>(ctx: &Context<'_>, req: &BackupRequest, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let services = match &req.instance.services {
        Some(s) if req.instance.cold_backup => s,
        _ => return f(),
    };
    let env = req.instance.env();
    let sctx = crate::service::Ctx {
        env: &env,
        cwd: req
            .instance
            .root
            .is_dir()
            .then_some(req.instance.root.as_path()),
        cancel: Some(ctx.cancel),
        instance: &req.instance.name,
        progress: ctx.progress,
    };
    let stopped = services.stop_running(&sctx)?;
    let result = f();
    let started = stopped.start();
    match (result, started) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
    }
}

/// Names the archive path in a pipeline I/O error, which only knows "archive".
fn with_path(err: Error, path: &Path) -> Error {
    match err {
        Error::Io {
            action,
            path: p,
            source,
        } if p == Path::new("archive") => Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        },
        other => other,
    }
}

/// Repairs the backups of `instance` whose process died while writing them:
/// whatever they left at their archive's place (a complete archive that was
/// never recorded as available, a sidecar) is removed, and the rows are
/// marked failed. Only call this while holding the instance's lock: then no
/// live process is writing them.
///
/// # Errors
///
/// Fails on a database error.
pub fn repair_interrupted(ctx: &Context<'_>, catalog: &Catalog, instance: &str) -> Result<usize> {
    let stale = catalog.list(&crate::catalog::ListFilter {
        instance: Some(instance.to_string()),
        status: Some(crate::catalog::Status::Creating),
        ..Default::default()
    })?;
    for row in &stale {
        if let Some(location) = &row.location {
            discard(ctx, location);
        }
    }
    Ok(catalog.fail_interrupted(instance, &time::now_rfc3339())?)
}

/// Removes an archive (a file or an object, as the catalog names it) and
/// its sidecar that must not remain.
fn discard(ctx: &Context<'_>, location: &str) {
    match ctx.config.stores.locate(location) {
        Ok(at) if at.as_file().is_none() => discard_location(&at),
        _ => discard_file(Path::new(location)),
    }
}

/// Removes an object and its sidecar that must not remain.
fn discard_location(at: &Location) {
    let _ = at.sidecar().remove();
    let _ = at.remove();
}

/// Removes an archive file and its sidecar that must not remain.
fn discard_file(archive: &Path) {
    let sidecar = sidecar_path(archive);
    fsutil::remove_temp_siblings(&sidecar);
    let _ = std::fs::remove_file(sidecar);
    let _ = std::fs::remove_file(archive);
    let _ = fsutil::fsync_dir(&fsutil::parent_dir(archive));
}

/// Removes named temporary files left by killed backups. Only called while
/// holding the instance lock, so no live backup owns them.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The error and its causes on one line, for the catalog.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The record a streamed backup would have had.
fn streamed_record(id: &str, new: &NewBackup<'_>, done: &Finished<'_>) -> BackupRecord {
    BackupRecord {
        id: id.to_string(),
        instance: new.instance.to_string(),
        origin: new.origin.to_string(),
        host: new.host.to_string(),
        created_at: new.created_at.to_string(),
        finished_at: Some(done.finished_at.to_string()),
        about: new.about.clone(),
        location: None,
        size: Some(done.size),
        entries: Some(done.entries),
        files: Some(done.files),
        bytes: Some(done.bytes),
        compression: new.compression,
        level: new.level,
        encrypted: new.encrypted,
        sha256: Some(done.sha256.to_string()),
        frames_sha256: done.frames_sha256.map(str::to_string),
        status: crate::catalog::Status::Available,
        error: None,
        warnings: done.warnings,
        verified_at: None,
        verify_ok: None,
        verify_error: None,
        pinned: false,
        created_by: new.created_by.to_string(),
        last_restored_at: None,
        last_restored_to: None,
        last_restored_by: None,
        parent: new.chain.map(|c| c.parent.id.clone()),
        base: new.chain.map(|c| c.base.id.clone()),
        chain_position: new.chain.map_or(0, |c| c.position),
        chain_size: None,
    }
}
