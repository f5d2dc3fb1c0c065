//! Carrying out a restore planned by [`crate::restore::plan`] and
//! confirmed: the catalog's record, the services stopped around the change
//! with a journal from the first moment, the safety backup, staging, the
//! steps decided and then taken through the journal, the activate command
//! and the health check, the commit point, and the cleanup.
//!
//! A failure before the commit point undoes every step and leaves the
//! previous state; a crash at any instant is repaired from the journal by
//! the next command that takes the lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::archive::format::SourceManifest;
use crate::archive::{BackupKind, CompressionSpec, Description, TakenOf};
use crate::catalog::{Catalog, NewRestore};
use crate::command::{CommandEnv, shell_quote};
use crate::error::{Error, ErrorKind, Result};
use crate::handle;
use crate::instance::{Instance, SourceSpec};
use crate::lock::{InstanceLock, hostname};
use crate::ops::backup::{BackupRequest, Output, backup_locked, error_chain};
use crate::restore::confine::Confined;
use crate::restore::diff::{Changes, Why};
use crate::restore::journal::{
    self, Attrs, ImportTarget, Journal, Phase, StagingParent, Step, XattrChange, is_trusted,
    own_xattrs,
};
use crate::restore::listing::Walk;
use crate::restore::plan::{
    Place, Prepared, RestoreOutcome, RestoreReport, RestoreRequest, check_sum, database_paths,
    import_action, import_kind, incomplete_paths, rel_base,
};
use crate::restore::stage::{Left, Stager, path_key, remove_tree, staging_dir};
use crate::restore::steps::{Merger, Mode, Moves};
use crate::service::{self, Stopped};
use crate::systemd::{Systemd, UnitsReport};
use crate::{Context, failpoint, fsutil, time};

/// How a restore ended, as the catalog records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Restored,
    RolledBack,
    /// Refused before the first step: nothing was changed.
    Refused,
    Failed,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Restored => "restored",
            Ended::RolledBack => "rolled-back",
            Ended::Refused => "refused",
            Ended::Failed => "failed",
        }
    }
}

/// The catalog's record of this restore, finished with its outcome on
/// every way out. Without a usable catalog (an archive file restored while
/// the catalog is damaged) there is none, and the restore says so.
struct Record {
    catalog: Option<(Catalog, i64)>,
}

impl Record {
    /// Opens the catalog and records the restore as running, unless the
    /// catalog was found unusable; then `out` gets a warning instead.
    fn begin(ctx: &Context<'_>, prep: &Prepared<'_>, out: &mut Outcome) -> Result<Record> {
        if let Some(problem) = &prep.src.catalog_unusable {
            out.warnings.push(format!(
                "this restore is not recorded in the catalog: {problem}; \
                 `backstop reconcile --apply` rebuilds it"
            ));
            return Ok(Record { catalog: None });
        }
        let catalog = Catalog::open(&ctx.layout.catalog())?;
        let user = uzers::get_current_username()
            .map(|u| u.to_string_lossy().into_owned())
            .unwrap_or_else(|| rustix::process::getuid().as_raw().to_string());
        let id = catalog.begin_restore(&NewRestore {
            backup_id: &prep.src.manifest.id,
            started_at: &time::now_rfc3339(),
            destination: &prep.plan.destination,
            mode: &prep.mode.to_string(),
            user: &user,
            host: &hostname(),
            safety_backup: None,
        })?;
        Ok(Record {
            catalog: Some((catalog, id)),
        })
    }

    /// The restore's id in the catalog.
    fn id(&self) -> Option<i64> {
        self.catalog.as_ref().map(|(_, id)| *id)
    }

    /// Records how the restore ended; a failure to record is not the
    /// restore's.
    fn finish(&self, ended: Ended, error: Option<&Error>) {
        let Some((catalog, id)) = &self.catalog else {
            return;
        };
        let text = error.map(|e| error_chain(e));
        let _ = catalog.finish_restore(*id, &time::now_rfc3339(), ended.as_str(), text.as_deref());
    }
}

/// What applying adds to the report besides the plan.
#[derive(Debug, Default)]
struct Outcome {
    warnings: Vec<String>,
    /// Files already in place as the backup has them, and their bytes:
    /// linked into the staged tree rather than written again.
    linked_files: u64,
    linked_bytes: u64,
    undecoded_bytes: u64,
}

/// Carries out a planned and confirmed restore under `lock`: stops the
/// services, takes the safety backup, stages and verifies the archive,
/// applies the steps of the mode through the journal, activates (for a
/// rollback), starts the services and checks health, then commits.
///
/// # Errors
///
/// A refusal found while staging (an integrity failure, an unreadable part
/// of the destination) is returned as it is, nothing changed; any other
/// failure before the commit point is rolled back and reported as
/// [`Error::RolledBack`]; a failure to stop the services, to take the
/// safety backup, to undo or to commit is returned as it is.
pub(crate) fn apply(
    ctx: &Context<'_>,
    req: &RestoreRequest,
    mut prep: Prepared<'_>,
    lock: &InstanceLock,
    started: Instant,
) -> Result<RestoreOutcome> {
    let m = &prep.src.manifest;
    let home = &ctx.layout.home;
    let mut out = Outcome::default();
    let record = Record::begin(ctx, &prep, &mut out)?;
    let cwd = std::env::current_dir().ok();

    // The services that run are stopped for the whole change, and started
    // again on every way out (the guard's drop), failures included.
    let env = service_env(ctx, req, &prep);
    let sctx = service::Ctx {
        env: &env,
        cwd: prep.dest.is_dir().then_some(prep.dest.as_path()),
        cancel: Some(ctx.cancel),
        instance: &m.instance,
        progress: ctx.progress,
    };
    let running = match prep.services.map(|s| s.running(&sctx)).transpose() {
        Ok(running) => running.unwrap_or_default(),
        Err(e) => {
            record.finish(Ended::Failed, Some(&e));
            return Err(e);
        }
    };
    // The journal names the services about to be stopped before the first
    // is: if the process dies while stopping them, recovery starts them
    // again (starting one that still runs does nothing) and undoes
    // whatever was begun.
    let journal = Journal {
        version: 1,
        restore_id: record.id(),
        backup: m.id.clone(),
        instance: m.instance.clone(),
        destination: prep.dest.clone(),
        phase: Phase::Staging,
        staging: Vec::new(),
        steps: Vec::new(),
        services_stopped: running.clone(),
        staging_parents: Vec::new(),
    };
    if let Err(e) = journal.save(home) {
        record.finish(Ended::Failed, Some(&e));
        return Err(e);
    }
    let down = Downtime::new(!running.is_empty());
    let stopped = match prep
        .services
        .map(|s| s.stop_named(&sctx, &running))
        .transpose()
    {
        Ok(stopped) => stopped,
        Err(e) => {
            // Nothing is stopped any more: the journal has nothing to do.
            record.finish(Ended::Failed, Some(&e));
            Journal::remove(home, &m.instance)?;
            return Err(e);
        }
    };

    let safety_id = if prep.safety {
        Some(safety_backup(ctx, req, &prep, lock, &record, &mut out)?)
    } else {
        None
    };

    let (journal, changes) =
        stage_and_apply(ctx, &prep, journal, &mut out).map_err(|e| staging_failed(&record, e))?;
    prep.plan.changes = changes;

    // Activate (rollback), start what ran, check health: all before the
    // commit point, so any failure puts the previous state back.
    if let Err(e) = activate_and_check(ctx, req, &prep, &sctx, stopped, &down) {
        return Err(undo(ctx, &prep, &sctx, &journal, &record, e));
    }
    if let Err(e) = commit(ctx, journal) {
        record.finish(Ended::Failed, Some(&e));
        return Err(e);
    }
    let _ = remove_tree(&prep.scratch);
    record.finish(Ended::Restored, None);
    Journal::remove(home, &m.instance)?;
    // The safety backup was an automatic one: prune after it if asked to.
    auto_prune(ctx, &prep, lock, safety_id.is_some(), &mut out.warnings);
    let quadlet_units = bring_up_quadlets(&prep, &mut out.warnings);
    let undo = safety_id.as_deref().map(|id| undo_command(id, &prep));
    let replaced_cwd = cwd
        .filter(|dir| !is_working_dir(dir))
        .map(|dir| dir.display().to_string());
    Ok(RestoreOutcome::Restored(RestoreReport {
        plan: prep.plan,
        restore_id: record.id(),
        linked_files: out.linked_files,
        linked_bytes: out.linked_bytes,
        undecoded_bytes: out.undecoded_bytes,
        undo,
        replaced_cwd,
        safety_backup: safety_id,
        warnings: out.warnings,
        downtime_ms: down.millis(),
        quadlet_units: quadlet_units.map(Box::new),
        duration_ms: started.elapsed().as_millis() as u64,
    }))
}

/// After a restore in place that put an instance's quadlet files back:
/// the services they give that ran at backup time, brought up again (or
/// why not, and how). A service that does not start is a warning too.
fn bring_up_quadlets(prep: &Prepared<'_>, warnings: &mut Vec<String>) -> Option<UnitsReport> {
    let recorded = prep.src.manifest.quadlet_units.as_ref()?;
    let inst = prep.inst.filter(|_| prep.in_place)?;
    let dir = inst.resolve(inst.quadlets.as_ref()?);
    let restored = prep
        .sources
        .iter()
        .any(|s| matches!(&prep.places[&s.name], Place::Tree(t) if dir.starts_with(t)));
    if !restored {
        return None;
    }
    let now = crate::quadlet::service_names(&dir);
    let report = crate::systemd::bring_up(recorded, &now, Systemd::detect)?;
    for f in &report.failed {
        warnings.push(format!(
            "quadlet unit {} did not start: {}",
            f.unit, f.error
        ));
    }
    Some(report)
}

/// Whether `dir` is still the process's working directory: the same
/// inode. A restore that swapped the tree there left the process (and the
/// shell that ran it) in the old directory, removed.
fn is_working_dir(dir: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    id(Path::new(".")).is_some_and(|here| id(dir) == Some(here))
}

/// The command that undoes a restore whose safety backup is `safety`: that
/// backup restored, which goes back to the directory it was taken of and
/// puts back the sources that were there, then the removal of the sources
/// that were not (the safety backup could hold nothing of them).
fn undo_command(safety: &str, prep: &Prepared<'_>) -> String {
    let mut command = format!("backstop restore {safety}");
    // Across major versions (a forced restore, a rollback) the safety
    // backup holds the other version's files: the way back crosses the
    // version gate again.
    if prep.version.crosses_major() {
        command.push_str(" --force");
    }
    for (s, planned) in prep.sources.iter().zip(&prep.plan.sources) {
        let written_here = matches!(prep.places[&s.name], Place::Tree(_) | Place::File { .. });
        if written_here && !planned.exists {
            command.push_str(" && rm -rf -- ");
            command.push_str(&shell_quote(&planned.target));
        }
    }
    command
}

/// How long the application was down: from the first stop to the end of
/// the last start.
struct Downtime {
    since: Option<Instant>,
    until: std::cell::Cell<Option<Instant>>,
}

impl Downtime {
    /// Starts counting now if `stopping` (some service runs).
    fn new(stopping: bool) -> Downtime {
        Downtime {
            since: stopping.then(Instant::now),
            until: std::cell::Cell::new(None),
        }
    }

    /// The services run again.
    fn ended(&self) {
        self.until.set(Some(Instant::now()));
    }

    /// The downtime, when services were stopped and started again.
    fn millis(&self) -> Option<u64> {
        let (since, until) = (self.since?, self.until.get()?);
        Some(until.duration_since(since).as_millis() as u64)
    }
}

/// The `BACKSTOP_*` variables the service, activate and health commands
/// see.
fn service_env(ctx: &Context<'_>, req: &RestoreRequest, prep: &Prepared<'_>) -> CommandEnv {
    let m = &prep.src.manifest;
    let mut env = prep
        .inst
        .map_or_else(|| CommandEnv::new(&m.instance, &prep.dest), Instance::env);
    env.set("BACKSTOP_BACKUP_ID", &m.id)
        .set_opt(
            "BACKSTOP_VERSION",
            req.activate.as_deref().or(m.about.app_version.as_deref()),
        )
        .set("BACKSTOP_HOME", ctx.layout.home.to_string_lossy())
        .set("BACKSTOP_STORE", ctx.layout.store.to_string_lossy());
    env
}

/// The safety backup, under this restore's lock, of the quiet state: its
/// id. Its warnings about what it could not hold go into `out`.
fn safety_backup(
    ctx: &Context<'_>,
    req: &RestoreRequest,
    prep: &Prepared<'_>,
    lock: &InstanceLock,
    record: &Record,
    out: &mut Outcome,
) -> Result<String> {
    let m = &prep.src.manifest;
    let mut instance = Instance::bare(m.instance.clone(), prep.dest.clone(), prep.existing.clone());
    instance.never_restore = m.never_restore.clone();
    // Encrypted to the configured instance's recipients, as its own
    // backups are (else to `[defaults.encryption]`'s, if any).
    // Kept where its own backups are, too.
    if let Some(configured) = prep.inst {
        instance.encryption = configured.encryption.clone();
        instance.placement = configured.placement.clone();
    }
    // Taken of another directory than the instance's root, it goes back
    // there: its id is the command that undoes this restore.
    if !prep.in_place {
        instance.taken_of = TakenOf::RestoreDestination;
    }
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
            app_version: prep.inst.and_then(|i| i.detect_version().ok().flatten()),
            upgraded_to: None,
            profile: None,
        },
        excludes: Vec::new(),
        compression: CompressionSpec::default(),
        // Encrypted as the instance's own backups are.
        encryption: crate::encryption::EncryptRequest::default(),
        output: Output::Store,
        wait: None,
        chain: crate::chain::ChainRequest::Auto,
    };
    match backup_locked(ctx, request, lock) {
        Ok(report) => {
            for w in report.warnings.iter().filter(|w| w.is_incomplete()) {
                out.warnings.push(format!(
                    "safety backup: {} {}: {}",
                    w.kind, w.path, w.detail
                ));
            }
            if let Some((catalog, id)) = &record.catalog {
                catalog.set_restore_safety_backup(*id, &report.backup.id)?;
            }
            Ok(report.backup.id)
        }
        Err(e) => {
            record.finish(Ended::Failed, Some(&e));
            Journal::remove(&ctx.layout.home, &m.instance)?;
            Err(e)
        }
    }
}

/// Records a failure of [`stage_and_apply`] (already undone) and gives the
/// error the restore returns.
fn staging_failed(record: &Record, e: Error) -> Error {
    // A refusal (an unreadable part of the destination) comes before the
    // first step: nothing was changed to roll back.
    let refused = e.kind() == ErrorKind::Integrity || matches!(e, Error::Refused { .. });
    record.finish(
        if refused {
            Ended::Refused
        } else {
            Ended::RolledBack
        },
        Some(&e),
    );
    if refused {
        return e;
    }
    match e.kind() {
        ErrorKind::Interrupted | ErrorKind::RolledBack => e,
        _ => Error::RolledBack { cause: Box::new(e) },
    }
}

/// Runs the activate command (for a rollback), starts the services that
/// ran, and checks health.
fn activate_and_check(
    ctx: &Context<'_>,
    req: &RestoreRequest,
    prep: &Prepared<'_>,
    sctx: &service::Ctx<'_>,
    stopped: Option<Stopped<'_>>,
    down: &Downtime,
) -> Result<()> {
    if let (Some(version), Some(activate)) =
        (&req.activate, prep.inst.and_then(|i| i.activate.as_ref()))
    {
        let what = format!(
            "the activate command of {} (version {version})",
            prep.src.manifest.instance
        );
        let mut run = crate::command::Run::new(&what, sctx.env);
        run.cwd = prep.dest.is_dir().then_some(prep.dest.as_path());
        run.cancel = Some(ctx.cancel);
        run.output(activate)?;
    }
    failpoint::hit("restore.before-health")?;
    let ran = stopped.as_ref().is_some_and(|s| !s.names().is_empty());
    let any_control = prep.services.is_some_and(|s| s.control.is_some());
    if let Some(stopped) = stopped {
        stopped.start()?;
        down.ended();
    }
    if let Some(s) = prep.services
        && (ran || !any_control)
        && let Err(failed) = s.health(sctx)?
    {
        return Err(failed);
    }
    Ok(())
}

/// Puts the old state back after a failed activate or health check, with
/// the services as they were: stopped while the files move back, started
/// again if they ran. Gives the error the restore returns.
fn undo(
    ctx: &Context<'_>,
    prep: &Prepared<'_>,
    sctx: &service::Ctx<'_>,
    journal: &Journal,
    record: &Record,
    e: Error,
) -> Error {
    let undone = (|| -> Result<()> {
        let again = prep.services.map(|s| s.stop_running(sctx)).transpose()?;
        journal.recover(&ctx.layout.home)?;
        if let Some(again) = again {
            again.start()?;
        }
        Ok(())
    })();
    let _ = remove_tree(&prep.scratch);
    if let Err(undo_err) = undone {
        record.finish(Ended::Failed, Some(&undo_err));
        return undo_err;
    }
    record.finish(Ended::RolledBack, Some(&e));
    match e.kind() {
        ErrorKind::Interrupted => e,
        _ => Error::RolledBack { cause: Box::new(e) },
    }
}

/// After the safety backup (an automatic one), prunes the instance if its
/// retention asks to; what it removed, or why it failed, becomes a warning.
fn auto_prune(
    ctx: &Context<'_>,
    prep: &Prepared<'_>,
    lock: &InstanceLock,
    took_safety_backup: bool,
    warnings: &mut Vec<String>,
) {
    let Some(i) = prep
        .inst
        .filter(|i| i.retention.auto_prune && took_safety_backup)
    else {
        return;
    };
    match crate::ops::prune::prune_locked(ctx, lock, (&Default::default(), &Default::default())) {
        Ok(p) => warnings.extend(
            p.decisions
                .iter()
                .filter(|d| !d.keep)
                .map(|d| format!("auto-prune of {}: removed {}", i.name, d.id)),
        ),
        Err(e) => warnings.push(format!("auto-prune of {}: {}", i.name, error_chain(&e))),
    }
}

/// Stages every source, verifies the archive, and applies the steps of the
/// mode through the journal, stopping just before the commit point: the
/// caller activates, starts services and checks health, then calls
/// [`commit`] or undoes with [`Journal::recover`]. Returns the journal and
/// every path's action. On failure, everything done is already undone.
fn stage_and_apply(
    ctx: &Context<'_>,
    prep: &Prepared<'_>,
    mut journal: Journal,
    out: &mut Outcome,
) -> Result<(Journal, Changes)> {
    let home = &ctx.layout.home;
    let made = staging_dirs(prep, &mut journal)?;
    journal.save(home)?;
    let staged = match stage(ctx, prep, &journal, out) {
        Ok(staged) => staged,
        Err(e) => {
            journal.recover(home)?;
            return Err(e);
        }
    };
    // The steps, all decided and journaled before the first is taken.
    let decided = match decide(ctx, prep, &journal, &staged) {
        Ok(decided) => decided,
        Err(e) => {
            journal.recover(home)?;
            return Err(e);
        }
    };
    journal.steps = decided.steps;
    journal.phase = Phase::Applying;
    journal.save(home)?;
    take_steps(ctx, &journal, made)?;
    Ok((journal, decided.changes))
}

/// Names the staging directory of each source (beside its target, so the
/// swaps are renames within one filesystem) in the journal, with steps
/// that create the missing directories above the targets: removed again if
/// the restore does not complete. Returns how many such steps there are.
fn staging_dirs(prep: &Prepared<'_>, journal: &mut Journal) -> Result<usize> {
    if prep
        .places
        .values()
        .any(|p| matches!(p, Place::Import { .. }))
    {
        fsutil::create_private_dir_all(&prep.scratch)?;
    }
    let mut make_dirs: Vec<PathBuf> = Vec::new();
    for s in &prep.sources {
        let target = prep.places[&s.name].target(&prep.scratch, &s.name);
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
        let staging = staging_dir(&target, &prep.src.manifest.id, &s.name);
        if let Some(parent) = staging_parent(prep, &staging)
            && !journal
                .staging_parents
                .iter()
                .any(|p| p.path == parent.path)
        {
            journal.staging_parents.push(parent);
        }
        journal.staging.push(staging);
    }
    journal.steps = make_dirs
        .iter()
        .map(|p| Step::MakeDir { path: p.clone() })
        .collect();
    Ok(make_dirs.len())
}

/// The directory `staging` is made in, as it is now, when it lies in a
/// tree an exact restore gives back (see [`Journal::staging_parents`]).
fn staging_parent(prep: &Prepared<'_>, staging: &Path) -> Option<StagingParent> {
    if prep.mode != Mode::Exact {
        return None;
    }
    let parent = fsutil::parent_dir(staging);
    let in_a_tree = prep
        .sources
        .iter()
        .any(|s| matches!(&prep.places[&s.name], Place::Tree(t) if parent.starts_with(t)));
    let st = handle::lstat(&parent).ok().filter(handle::is_dir)?;
    in_a_tree.then(|| StagingParent {
        path: parent,
        ino: st.st_ino,
        attrs: Attrs::of(&st),
    })
}

/// What staging found out, for deciding the steps.
struct Staged {
    /// Paths kept as they are, never deleted, and why: hard links whose
    /// shared file was excluded, and what the backup could not hold (its
    /// trailer's vanished, unreadable and skipped paths).
    unrestorable: BTreeMap<PathBuf, Why>,
    /// Inodes linked from the live tree, with their change time once
    /// linked; for sources restored in place, the live files and
    /// directories found as the backup has them.
    linked: HashMap<u64, u64>,
    /// The sources restored over an existing live tree, where only what
    /// differs is staged: moved in by an exact restore (see
    /// [`crate::restore::steps::InPlace`]), merged by the other modes.
    in_place: HashSet<String>,
    /// What staging left where it was in those sources.
    left: Left,
}

/// Creates the directories of the journal's first steps and the staging
/// directories, then unpacks the archive into them, verifying every
/// checksum and the whole file's as it goes.
fn stage(
    ctx: &Context<'_>,
    prep: &Prepared<'_>,
    journal: &Journal,
    out: &mut Outcome,
) -> Result<Staged> {
    let m = &prep.src.manifest;
    for step in &journal.steps {
        journal::apply(step)?;
    }
    let mut targets = HashMap::new();
    for (s, staging) in prep.sources.iter().zip(&journal.staging) {
        handle::mkdir(staging, 0o700).map_err(|e| Error::io("creating", staging, e))?;
        let confined = Confined::open(staging).map_err(|e| Error::io("opening", staging, e))?;
        drop_inherited_acls(&confined).map_err(|e| Error::io("setting up", staging, e))?;
        targets.insert(s.name.clone(), confined);
    }
    failpoint::hit("restore.before-stage")?;
    // The live trees, where what the backup holds unchanged is found and
    // left where it is, never staged: its change time stays too, so the
    // next backup does not read it again.
    let mut live = HashMap::new();
    let mut in_place = HashSet::new();
    for s in &prep.sources {
        if let Place::Tree(target) = &prep.places[&s.name]
            && handle::lstat(target).is_ok_and(|st| handle::is_dir(&st))
        {
            let tree = Confined::open(target).map_err(|e| Error::io("opening", target, e))?;
            live.insert(s.name.clone(), tree);
            in_place.insert(s.name.clone());
        }
    }
    let mut stager = Stager::new(
        m,
        targets,
        live,
        in_place.clone(),
        &prep.selection,
        ctx.cancel,
    );
    let run = prep
        .src
        .walk(ctx, crate::progress::Phase::Unpack, &mut stager);
    let verified = run.result?;
    check_sum(
        prep.src,
        &prep.expected,
        run.sha256.as_deref().unwrap_or_default(),
    )?;
    // Read through: a copy fetched from a store is not read again, and the
    // staging's `syncfs` must not write its pages to disk.
    prep.src.release_fetched();
    stager.finish()?;
    out.warnings.extend(stager.warnings.iter().cloned());
    let mut unrestorable = BTreeMap::new();
    for rel in incomplete_paths(m, &verified.trailer) {
        unrestorable.insert(rel, Why::NotRead);
    }
    for rel in &stager.unrestorable {
        unrestorable.insert(rel.clone(), Why::LinkedToKept);
    }
    let linked = std::mem::take(&mut stager.linked);
    let left = stager.take_left();
    out.linked_files = stager.counts.linked;
    out.linked_bytes = stager.counts.linked_bytes;
    out.undecoded_bytes = stager.counts.undecoded_bytes;
    failpoint::hit("restore.after-stage")?;
    Ok(Staged {
        unrestorable,
        linked,
        left,
        in_place,
    })
}

/// Removes the ACLs a staging directory inherited from the default ACL of
/// the directory it was made in: what is staged inside would inherit them
/// in turn, and come out with entries neither the backup nor the live
/// tree had.
fn drop_inherited_acls(staging: &Confined) -> std::io::Result<()> {
    for name in ["system.posix_acl_default", "system.posix_acl_access"] {
        match rustix::fs::fremovexattr(staging.root_fd(), name) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::NODATA || e == rustix::io::Errno::OPNOTSUPP => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The steps of a restore, after the journal's first ones, and every
/// path's action.
struct Decided {
    steps: Vec<Step>,
    changes: Changes,
}

/// Decides the steps of every source from its staged copy and the live
/// tree, in the order of the sources.
fn decide(
    ctx: &Context<'_>,
    prep: &Prepared<'_>,
    journal: &Journal,
    staged: &Staged,
) -> Result<Decided> {
    let (nested, nested_dbs) = nested_databases(prep, &journal.staging, &staged.in_place);
    let mut decider = Decider {
        ctx,
        prep,
        staged,
        databases: database_paths(&prep.places),
        nested,
        nested_dbs,
        stamp: time::now().strftime("%Y%m%dT%H%M%S").to_string(),
        decided: Decided {
            steps: journal.steps.clone(),
            changes: Changes::default(),
        },
    };
    for (s, staging) in prep.sources.iter().zip(&journal.staging) {
        decider.source(s, staging)?;
    }
    Ok(decider.decided)
}

/// The databases that go into the staged copy of the tree around them, by
/// that tree's source: each one's path relative to the tree and its staged
/// file. And the names of those database sources.
///
/// A database inside a tree restored exactly goes into that tree's staged
/// copy, so the tree's swap brings it in: a swap of its own would happen in
/// a directory the tree's swap moves away.
fn nested_databases(
    prep: &Prepared<'_>,
    staging: &[PathBuf],
    in_place: &HashSet<String>,
) -> (Nested, Vec<String>) {
    let mut nested: Nested = HashMap::new();
    let mut nested_dbs: Vec<String> = Vec::new();
    if prep.mode != Mode::Exact {
        return (nested, nested_dbs);
    }
    for (s, staging) in prep.sources.iter().zip(staging) {
        let Place::File { target, file } = &prep.places[&s.name] else {
            continue;
        };
        let outer = prep
            .sources
            .iter()
            .filter_map(|o| match &prep.places[&o.name] {
                Place::Tree(t)
                    if target.starts_with(t) && t != target && !in_place.contains(&o.name) =>
                {
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
    (nested, nested_dbs)
}

/// Databases inside trees restored exactly, by the tree's source: each
/// one's path relative to the tree, and its staged file.
type Nested = HashMap<String, Vec<(PathBuf, PathBuf)>>;

/// Decides the steps of each source in turn.
struct Decider<'p, 'a> {
    ctx: &'p Context<'p>,
    prep: &'p Prepared<'a>,
    staged: &'p Staged,
    /// The database files the restore replaces, with their journal files.
    databases: Vec<PathBuf>,
    /// The databases inside trees restored exactly (see
    /// [`nested_databases`]).
    nested: Nested,
    nested_dbs: Vec<String>,
    /// The time in the names of `.bak` copies.
    stamp: String,
    decided: Decided,
}

impl Decider<'_, '_> {
    /// The steps of source `s`, staged in `staging`.
    fn source(&mut self, s: &SourceManifest, staging: &Path) -> Result<()> {
        let prep = self.prep;
        let (target, staged_top) = match &prep.places[&s.name] {
            Place::Import { into, file } => return self.import(s, staging, into, file),
            Place::File { target, file } => (target.clone(), staging.join(&s.name).join(file)),
            Place::Tree(target) => (target.clone(), staging.join(&s.name)),
        };
        let rel_base = rel_base(s);
        let unrestorable = &self.staged.unrestorable;
        let kept_here = |rel: &Path, is_dir: bool| {
            prep.why_kept_in(&s.name, &target.join(rel), &rel_base.join(rel), is_dir)
                .or_else(|| unrestorable.get(&rel_base.join(rel)).copied())
        };
        let databases = &self.databases;
        let other = |abs: &Path| databases.iter().any(|d| d == abs);
        let in_place = self.staged.in_place.contains(&s.name);
        let left = |rel: &Path| {
            let mut member = s.name.as_bytes().to_vec();
            if !rel.as_os_str().is_empty() {
                member.push(b'/');
                member.extend_from_slice(rel.as_os_str().as_bytes());
            }
            self.staged.left.keys.contains(&path_key(&member))
        };
        let left_count = self.staged.left.counts.get(&s.name).copied().unwrap_or(0);
        let (planned, moves, entries) = merge_staged(
            prep.mode,
            (&target, &staged_top),
            &kept_here,
            &other,
            &self.staged.linked,
            in_place.then_some((&left as &dyn Fn(&Path) -> bool, left_count)),
        )?;
        self.decided.changes.extend(&planned);
        if entries == 0 || self.nested_dbs.contains(&s.name) {
            // Everything of this source was excluded, or it goes in with
            // the tree around it.
            return Ok(());
        }
        if let Place::File { .. } = &prep.places[&s.name]
            && prep.mode != Mode::Safe
        {
            self.aside_journal_files(s, &target, staging)?;
        }
        match prep.mode {
            Mode::Exact if in_place => self.in_place(s, &target, &staged_top, staging, &moves),
            Mode::Exact => self.exact(s, &target, &staged_top, &moves),
            Mode::Merge | Mode::Safe => self.move_in(&target, &staged_top, &moves),
        }
    }

    /// The step of a volume or dump source: an import of its staged data,
    /// with the live state captured now as what an undo puts back.
    fn import(
        &mut self,
        s: &SourceManifest,
        staging: &Path,
        into: &ImportTarget,
        file: &str,
    ) -> Result<()> {
        let prep = self.prep;
        let data = staging.join(&s.name).join(file);
        if data.symlink_metadata().is_err() {
            // Left out by --exclude or never-restore.
            return Ok(());
        }
        // The live state, captured now, is what an undo puts back.
        let undo = staging.join(format!("{}.before", s.name));
        let action = import_action(into)?;
        capture_live(self.ctx, into, prep.inst, &s.name, &undo)?;
        let size = std::fs::metadata(&data).map_or(0, |md| md.len());
        self.decided.changes.push(
            &prep.places[&s.name].shown(&prep.scratch, &s.name),
            action,
            import_kind(s),
            size,
        );
        self.decided.steps.push(Step::Import {
            into: Box::new(into.clone()),
            data,
            undo,
        });
        Ok(())
    }

    /// The old database's journal files must not meet the new database:
    /// they go aside with it.
    fn aside_journal_files(
        &mut self,
        s: &SourceManifest,
        target: &Path,
        staging: &Path,
    ) -> Result<()> {
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = target.as_os_str().to_os_string();
            side.push(suffix);
            let side = PathBuf::from(side);
            if side.symlink_metadata().is_ok() {
                self.decided.steps.push(move_step(
                    side,
                    staging.join(format!("{}.before{suffix}", s.name)),
                )?);
            }
        }
        Ok(())
    }

    /// Exact: kept paths and nested databases move into the staged tree,
    /// which is then swapped with the live one.
    fn exact(
        &mut self,
        s: &SourceManifest,
        target: &Path,
        staged_top: &Path,
        moves: &Moves,
    ) -> Result<()> {
        let inner = self
            .nested
            .get(&s.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The databases themselves and their journal files: replaced, not
        // carried over.
        let replaced_db = |rel: &Path| {
            inner.iter().any(|(db, _)| {
                ["", "-wal", "-shm", "-journal"].iter().any(|suffix| {
                    let mut name = db.as_os_str().to_os_string();
                    name.push(suffix);
                    rel == Path::new(&name)
                })
            })
        };
        let steps = &mut self.decided.steps;
        // Kept paths move from the live tree into the staged one, so the
        // swap carries them over unchanged.
        for rel in moves.carry.iter().filter(|r| !replaced_db(r)) {
            let to = staged_top.join(rel);
            if let Some(parent) = to.parent() {
                make_staged_parents(staged_top, parent, target)?;
            }
            // What the backup holds of a path it could not read whole (an
            // unreadable directory, empty) gives way to the live one.
            remove_tree(&to)?;
            steps.push(move_step(target.join(rel), to)?);
        }
        for (rel, db) in inner {
            if db.symlink_metadata().is_err() {
                continue;
            }
            let to = staged_top.join(rel);
            if let Some(parent) = to.parent() {
                make_staged_parents(staged_top, parent, target)?;
            }
            steps.push(move_step(db.clone(), to)?);
        }
        steps.push(swap_step(target, staged_top)?);
        Ok(())
    }

    /// Exact in place: the directories whose entries or attributes change
    /// are opened up for the moves (undone last), the live entries that
    /// go move aside into the staging directory, the staged ones move in,
    /// and the directories take the backup's mode, owner and time.
    fn in_place(
        &mut self,
        s: &SourceManifest,
        target: &Path,
        staged_top: &Path,
        staging: &Path,
        moves: &Moves,
    ) -> Result<()> {
        let Some(moves) = &moves.in_place else {
            return Ok(());
        };
        if moves
            .move_in
            .first()
            .is_some_and(|rel| rel.as_os_str().is_empty())
        {
            // Nothing stays: the staged tree takes the live one's place.
            self.decided.steps.push(swap_step(target, staged_top)?);
            return Ok(());
        }
        let at = |top: &Path, rel: &Path| {
            if rel.as_os_str().is_empty() {
                top.to_path_buf()
            } else {
                top.join(rel)
            }
        };
        let mut dirs: BTreeSet<&Path> = moves.touch.iter().map(PathBuf::as_path).collect();
        for rel in moves.aside.iter().flatten().chain(&moves.move_in) {
            dirs.extend(rel.parent());
        }
        let mut last = Vec::new();
        for rel in dirs {
            if let Some((first, then)) = dir_attrs(&at(target, rel), &at(staged_top, rel))? {
                self.decided.steps.push(first);
                last.push(then);
            }
        }
        open_staged_parents(staged_top, &moves.move_in)?;
        for (n, rel) in moves.aside.iter().flatten().enumerate() {
            let aside = staging.join(format!("{}.old-{}", s.name, n + 1));
            self.decided.steps.push(move_step(at(target, rel), aside)?);
        }
        for rel in &moves.move_in {
            self.decided
                .steps
                .push(move_step(at(staged_top, rel), at(target, rel))?);
        }
        self.decided.steps.extend(last);
        Ok(())
    }

    /// Merge and safe: whole new subtrees move in; replaced entries (merge)
    /// are kept as `.bak` first.
    fn move_in(&mut self, target: &Path, staged_top: &Path, moves: &Moves) -> Result<()> {
        for (rel, bak) in &moves.move_in {
            let from = staged_top.join(rel);
            let to = if rel.as_os_str().is_empty() {
                target.to_path_buf()
            } else {
                target.join(rel)
            };
            if *bak {
                self.decided
                    .steps
                    .push(move_step(to.clone(), bak_name(&to, &self.stamp))?);
            }
            self.decided.steps.push(move_step(from, to)?);
        }
        Ok(())
    }
}

/// Exact in place: whether staging left a relative path where it was, and
/// how many it left.
type LeftHere<'a> = (&'a dyn Fn(&Path) -> bool, u64);

/// Merges a staged tree with the live one: the plan of every path, the
/// moves the mode asks for, and how many entries were staged. `kept` and
/// `other` say which live paths are kept and which are other sources'.
fn merge_staged(
    mode: Mode,
    (target, staged_top): (&Path, &Path),
    kept: &dyn Fn(&Path, bool) -> Option<Why>,
    other: &dyn Fn(&Path) -> bool,
    linked: &HashMap<u64, u64>,
    in_place: Option<LeftHere<'_>>,
) -> Result<(Changes, Moves, u64)> {
    let mut merger = Merger::new(mode, target, Some(staged_top), kept, other, Some(linked))?;
    if let Some((left, count)) = in_place {
        merger = match mode {
            Mode::Exact => merger.in_place(left, count),
            Mode::Merge | Mode::Safe => merger.leaving(left, count),
        };
    }
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

/// Takes the decided steps (after the first `made`, taken while staging),
/// then makes every directory they touched durable. On failure, undoes
/// them all and reports [`Error::RolledBack`].
fn take_steps(ctx: &Context<'_>, journal: &Journal, made: usize) -> Result<()> {
    let applied = (|| -> Result<()> {
        for (i, step) in journal.steps.iter().enumerate() {
            ctx.cancel.check()?;
            if i >= made {
                failpoint::hit("restore.apply-step")?;
                journal::apply(step)?;
            }
        }
        // A directory a later swap moved away (inside an old tree) is not
        // part of the result; only existing ones matter.
        fsutil::sync_dirs(&journal.touched_dirs())?;
        failpoint::hit("restore.before-commit")
    })();
    if let Err(e) = applied {
        journal.recover(&ctx.layout.home)?;
        return Err(Error::RolledBack { cause: Box::new(e) });
    }
    Ok(())
}

/// The commit point, then cleanup: the old trees parked in the staging
/// directories go.
fn commit(ctx: &Context<'_>, mut journal: Journal) -> Result<()> {
    journal.phase = Phase::Committed;
    journal.save(&ctx.layout.home)?;
    failpoint::hit("restore.after-commit")?;
    journal.remove_staging(true)?;
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
        ImportTarget::Volume { name: volume, .. } => {
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
            let mut vars = CommandEnv::default();
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

/// An empty tar archive: the "before" of a volume that did not exist.
const EMPTY_TAR: [u8; 1024] = [0; 1024];

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

/// Makes the staged directories that entries move out of writable by
/// this user (not root, whom modes do not stop): they hold the backup's
/// modes, and are only containers, removed with the staging directory.
fn open_staged_parents(staged_top: &Path, move_in: &[PathBuf]) -> Result<()> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let parents: BTreeSet<&Path> = move_in.iter().filter_map(|rel| rel.parent()).collect();
    for rel in parents {
        let dir = staged_top.join(rel);
        let st = handle::lstat(&dir).map_err(|e| Error::io("reading", &dir, e))?;
        if st.st_mode & 0o300 != 0o300 {
            handle::chmod(&dir, (st.st_mode & 0o7777) | 0o700)
                .map_err(|e| Error::io("setting the mode of", &dir, e))?;
        }
    }
    Ok(())
}

/// The two attribute steps of live directory `live` in an exact restore in
/// place: before the moves, opened up for them (as another user than
/// root, writable and searchable by its owner); after them, the staged
/// copy's mode, owner and time, or (where nothing inside it was staged)
/// the ones it had. None for a directory of another user, restoring as
/// someone else than root: its attributes are not this user's to set (the
/// moves need it writable).
fn dir_attrs(live: &Path, staged: &Path) -> Result<Option<(Step, Step)>> {
    let st = handle::lstat(live).map_err(|e| Error::io("reading", live, e))?;
    let before = Attrs::of(&st);
    let euid = rustix::process::geteuid();
    let root = euid.is_root();
    if !root && st.st_uid != euid.as_raw() {
        return Ok(None);
    }
    let mut open = before;
    if !root {
        open.mode |= 0o300;
    }
    let (after, xattrs) = match handle::lstat(staged) {
        Ok(staged_st) if handle::is_dir(&staged_st) => {
            let mut after = Attrs::of(&staged_st);
            if !root {
                // Staged as this user: the owner stays whoever it is.
                (after.uid, after.gid) = (before.uid, before.gid);
            }
            (after, xattr_change(live, staged)?)
        }
        _ => (before, None),
    };
    let step = |before, after, xattrs| Step::Meta {
        path: live.to_path_buf(),
        ino: st.st_ino,
        before: Box::new(before),
        after: Box::new(after),
        xattrs,
    };
    // Undone in reverse: the last back to opened up, so that the moves can
    // be undone; the first back to what it was.
    Ok(Some((step(before, open, None), step(open, after, xattrs))))
}

/// The live directory's extended attributes and the staged one's (the
/// backup's, as far as staging could set them), when they differ.
/// `trusted.*` attributes the backup does not hold stay (see
/// [`is_trusted`]).
fn xattr_change(live: &Path, staged: &Path) -> Result<Option<Box<XattrChange>>> {
    let mut before = own_xattrs(live).map_err(|e| Error::io("reading", live, e))?;
    let mut after = own_xattrs(staged).map_err(|e| Error::io("reading", staged, e))?;
    for (name, value) in &before {
        if is_trusted(name) && !after.iter().any(|(n, _)| n == name) {
            after.push((name.clone(), value.clone()));
        }
    }
    before.sort();
    after.sort();
    Ok((before != after).then(|| Box::new(XattrChange { before, after })))
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

/// The inode number of `path`, not following a symlink.
fn inode(path: &Path) -> Result<u64> {
    handle::lstat(path)
        .map(|st| st.st_ino)
        .map_err(|e| Error::io("reading", path, e))
}

/// The journal step that puts the staged tree `staged` in `target`'s place:
/// an exchange with what is there, or a rename where nothing is.
fn swap_step(target: &Path, staged: &Path) -> Result<Step> {
    Ok(Step::Swap {
        existed: target.symlink_metadata().is_ok(),
        staged_ino: inode(staged)?,
        target: target.to_path_buf(),
        staged: staged.to_path_buf(),
    })
}

/// The journal step that moves `from` to `to`. A directory this user may
/// not write, but owns, is opened up around a move to another directory
/// (which rewrites its `..`) and given its mode back.
fn move_step(from: PathBuf, to: PathBuf) -> Result<Step> {
    let st = handle::lstat(&from).map_err(|e| Error::io("reading", &from, e))?;
    let euid = rustix::process::geteuid();
    let needs_write = handle::is_dir(&st) && !euid.is_root() && from.parent() != to.parent();
    let ours = st.st_uid == euid.as_raw();
    if needs_write && !ours && !handle::writable(&from) {
        // Known now, before any step, rather than as a failed rename.
        return Err(Error::Refused {
            message: format!(
                "{} belongs to another user and this one may not write it, which moving it into the restored tree needs",
                from.display()
            ),
            hint: Some(
                "restore as root or as its owner, or leave it where it is with --mode merge".into(),
            ),
        });
    }
    let reopen = (needs_write && ours && st.st_mode & 0o200 == 0).then_some(st.st_mode & 0o7777);
    Ok(Step::Move {
        from,
        to,
        ino: st.st_ino,
        reopen,
    })
}
