//! `guard INSTANCE -- CMD…`: a backup before a risky command, and a way back
//! after it.
//!
//! Takes an automatic backup (reason `pre-upgrade` unless told otherwise,
//! recording the version upgraded to), refuses to run the command if that
//! fails, runs it with the terminal's stdio and the `BACKSTOP_*`
//! environment, runs the health check, and on failure either rolls back
//! (exit 5) or says exactly which command would. Every guarded run is
//! recorded in the catalog with its backup and outcome.
//!
//! The instance lock is held for the backup and for a rollback, not while
//! the command runs: the command may itself call backstop.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::archive::{BackupKind, CompressionSpec, Description};
use crate::catalog::Catalog;
use crate::command::{CommandLine, Run};
use crate::error::{Error, ErrorKind, Result};
use crate::instance::Instance;
use crate::ops::backup::{BackupRequest, Output, backup, error_chain};
use crate::ops::restore::{Mode, Purpose, RestoreOutcome, RestoreRequest, restore};
use crate::{Context, time};

/// A guarded command.
#[derive(Debug, Clone)]
pub struct GuardRequest {
    pub instance: Instance,
    /// Recorded on the backup; `pre-upgrade` by default.
    pub reason: String,
    /// The version being upgraded to.
    pub to_version: Option<String>,
    pub rollback_on_failure: bool,
    pub no_backup: bool,
    pub message: Option<String>,
    /// The program and its arguments, run directly.
    pub command: Vec<String>,
    pub wait: Option<std::time::Duration>,
}

/// How a guarded command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardOutcome {
    /// The command exited 0 and the health check passed.
    Succeeded,
    /// It failed; nothing was undone. `undo` says how.
    Failed,
    /// It failed, and the pre-command backup was restored.
    RolledBack,
}

/// What `guard` did.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    pub instance: String,
    pub command: String,
    /// The backup taken before the command.
    pub backup: Option<String>,
    pub outcome: GuardOutcome,
    /// The command's exit code (`None` when killed by a signal).
    pub exit_code: Option<i32>,
    /// Why it counts as failed: the exit status or the health check.
    pub failure: Option<String>,
    /// The exact command that undoes it, when it failed and was not undone.
    pub undo: Option<String>,
    /// The safety backup the rollback took of the failed state.
    pub rollback_safety_backup: Option<String>,
    /// Backups removed by the instance's automatic pruning after the backup.
    pub pruned: Vec<String>,
    /// Why that pruning failed (the command ran all the same).
    pub prune_error: Option<String>,
}

/// Runs a guarded command.
///
/// # Errors
///
/// Fails when the backup fails (the command is then not run), when the
/// command cannot start, or when a rollback fails.
pub fn guard(ctx: &Context<'_>, req: &GuardRequest) -> Result<GuardReport> {
    let line = CommandLine::Argv(req.command.clone());
    let shown = line.to_string();
    // Named once, before the backup: the guard's record and a rollback go
    // by the name the backup is taken under.
    let mut named = req.instance.clone();
    crate::naming::settle(ctx, &mut named)?;
    let inst = &named;
    let mut backup_id = None;
    let mut pruned = Vec::new();
    let mut prune_error = None;
    let mut version = inst.detect_version().ok().flatten();
    // An encrypted backup, which a rollback must be able to open.
    let mut sealed = None;
    if !req.no_backup {
        let mut labels = BTreeMap::new();
        labels.insert("guarded".to_string(), shown.clone());
        let request = BackupRequest {
            instance: inst.clone(),
            about: Description {
                kind: BackupKind::Automatic,
                reason: req.reason.clone(),
                message: req
                    .message
                    .clone()
                    .or_else(|| Some(format!("before `{shown}`"))),
                labels,
                app_version: None,
                upgraded_to: req.to_version.clone(),
                profile: None,
            },
            excludes: ctx.config.exclude.clone(),
            compression: CompressionSpec::default(),
            encryption: crate::encryption::EncryptRequest::default(),
            output: Output::Store,
            wait: req.wait,
            chain: crate::chain::ChainRequest::Auto,
        };
        match backup(ctx, request) {
            Ok(report) => {
                version = report.backup.about.app_version.clone().or(version);
                if report.backup.encrypted {
                    sealed = report.backup.location.clone().map(PathBuf::from);
                }
                backup_id = Some(report.backup.id);
                if inst.retention.auto_prune {
                    match crate::ops::prune::prune(
                        ctx,
                        &inst.name,
                        (&Default::default(), &Default::default()),
                        false,
                        req.wait,
                    ) {
                        Ok(p) => {
                            pruned.extend(p.decisions.into_iter().filter(|d| !d.keep).map(|d| d.id))
                        }
                        Err(e) => prune_error = Some(error_chain(&e)),
                    }
                }
            }
            Err(e) => {
                // The refusal is recorded too: the command never ran.
                record_refusal(
                    ctx,
                    (&inst.name, &shown),
                    None,
                    &format!("the backup failed: {}", error_chain(&e)),
                );
                return Err(Error::Refused {
                    message: format!(
                        "the backup before `{shown}` failed, so the command was not run: {}",
                        error_chain(&e)
                    ),
                    hint: e.hint().or_else(|| {
                        Some("fix the backup, or run the command with --no-backup".into())
                    }),
                });
            }
        }
    }
    // A rollback of an encrypted backup needs a key: without one that
    // opens it, a failed command would be left as it is, which is what
    // --rollback-on-failure asks to avoid. Opening the header now also
    // leaves its file key with `ctx.keys` for the rollback.
    if req.rollback_on_failure
        && let Some(file) = &sealed
        && let Err(e) = crate::encryption::check_opens(file, ctx.keys)
    {
        let id = backup_id.as_deref().unwrap_or_default();
        record_refusal(
            ctx,
            (&inst.name, &shown),
            backup_id.as_deref(),
            &format!("a rollback could not open {id}: {}", error_chain(&e)),
        );
        return Err(Error::usage(
            format!(
                "`{shown}` was not run: its backup {id} is encrypted and a rollback could not \
                 open it ({})",
                error_chain(&e)
            ),
            Some(format!(
                "{}; or drop --rollback-on-failure (a failure then prints the way back)",
                e.hint()
                    .unwrap_or_else(|| "give the identity with --identity FILE".into())
            )),
        ));
    }
    crate::fsutil::create_private_dir_all(&ctx.layout.home)?;
    let catalog = Catalog::open(&ctx.layout.catalog())?;
    let guard_id = catalog.begin_guard(
        &inst.name,
        &time::now_rfc3339(),
        &shown,
        backup_id.as_deref(),
        req.no_backup,
    )?;

    let mut env = inst.env();
    env.set_opt("BACKSTOP_BACKUP_ID", backup_id.as_deref())
        .set_opt("BACKSTOP_VERSION", version.as_deref())
        .set_opt("BACKSTOP_TARGET_VERSION", req.to_version.as_deref())
        .set("BACKSTOP_REASON", &req.reason)
        .set("BACKSTOP_HOME", ctx.layout.home.to_string_lossy())
        .set("BACKSTOP_STORE", ctx.layout.store.to_string_lossy());
    let what = format!("the guarded command of {}", inst.name);
    let status = Run::new(&what, &env).inherit(&line);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = catalog.finish_guard(
                guard_id,
                &time::now_rfc3339(),
                None,
                "failed",
                Some(&error_chain(&e)),
            );
            return Err(e);
        }
    };
    let exit_code = status.code();
    let mut failure = (!status.success()).then(|| match exit_code {
        Some(c) => format!("`{shown}` exited with status {c}"),
        None => format!("`{shown}` was killed by a signal"),
    });
    if failure.is_none()
        && let Some(services) = &inst.services
    {
        let sctx = crate::service::Ctx {
            env: &env,
            cwd: inst.root.is_dir().then_some(inst.root.as_path()),
            cancel: Some(ctx.cancel),
            instance: &inst.name,
            progress: ctx.progress,
        };
        if let Err(e) = services.health(&sctx)? {
            failure = Some(format!("the health check failed after `{shown}`: {e}"));
        }
    }
    let undo_command = backup_id
        .as_ref()
        .map(|id| format!("backstop restore {id}"));
    let mut report = GuardReport {
        instance: inst.name.clone(),
        command: shown,
        backup: backup_id.clone(),
        outcome: GuardOutcome::Succeeded,
        exit_code,
        failure: failure.clone(),
        undo: None,
        rollback_safety_backup: None,
        pruned,
        prune_error,
    };
    let Some(failure) = failure else {
        catalog.finish_guard(guard_id, &time::now_rfc3339(), exit_code, "succeeded", None)?;
        return Ok(report);
    };
    let Some(id) = backup_id.filter(|_| req.rollback_on_failure) else {
        report.outcome = GuardOutcome::Failed;
        report.undo = undo_command;
        catalog.finish_guard(
            guard_id,
            &time::now_rfc3339(),
            exit_code,
            "failed",
            Some(&failure),
        )?;
        return Ok(report);
    };
    // Back to the backup taken before the command, exactly, through the
    // whole restore pipeline (its own safety backup of the failed state).
    let mut request = RestoreRequest::new(id.clone());
    request.mode = Some(Mode::Exact);
    request.instance = Some(inst.name.clone());
    request.activate = version.clone();
    request.safety_reason = "pre-rollback".into();
    request.purpose = Purpose::Rollback;
    request.backup_message = Some(format!("the state after the failed `{}`", report.command));
    request.wait = req.wait;
    request.dest = Some(PathBuf::from(&inst.root));
    match restore(ctx, &request, &mut |_| true) {
        Ok(RestoreOutcome::Restored(r)) => {
            report.outcome = GuardOutcome::RolledBack;
            report.rollback_safety_backup = r.safety_backup;
            catalog.finish_guard(
                guard_id,
                &time::now_rfc3339(),
                exit_code,
                "rolled-back",
                Some(&failure),
            )?;
            Ok(report)
        }
        Ok(_) => unreachable!("a confirmed, real restore restores"),
        Err(e) => {
            let detail = format!("{failure}; the rollback failed too: {}", error_chain(&e));
            let _ = catalog.finish_guard(
                guard_id,
                &time::now_rfc3339(),
                exit_code,
                "rollback-failed",
                Some(&detail),
            );
            Err(match e.kind() {
                ErrorKind::Interrupted => e,
                _ => Error::Refused {
                    message: format!(
                        "{failure}, and rolling back to {id} failed: {}",
                        error_chain(&e)
                    ),
                    hint: Some(format!(
                        "the instance is as the command left it; try `backstop restore {id}` once the cause is fixed"
                    )),
                },
            })
        }
    }
}

/// Records a guarded command that was not run, and why.
fn record_refusal(
    ctx: &Context<'_>,
    (instance, shown): (&str, &str),
    backup: Option<&str>,
    why: &str,
) {
    if let Ok(catalog) = Catalog::open(&ctx.layout.catalog()) {
        let now = time::now_rfc3339();
        if let Ok(id) = catalog.begin_guard(instance, &now, shown, backup, false) {
            let _ = catalog.finish_guard(id, &now, None, "refused", Some(why));
        }
    }
}
