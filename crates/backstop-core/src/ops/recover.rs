//! `recover`: finish or undo a restore that was interrupted (a crash, a
//! power cut, `kill -9`). Every command that takes an instance's lock does
//! this first, so an interrupted restore never stays half done.

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::Result;
use crate::lock::InstanceLock;
use crate::restore::journal::{Journal, Phase, Recovered};
use crate::{Context, time};

/// What recovery found for one instance.
#[derive(Debug, Clone, Serialize)]
pub struct RecoverReport {
    pub instance: String,
    /// `None` when there was nothing to recover.
    pub recovered: Option<Recovered>,
    pub backup: Option<String>,
    pub destination: Option<String>,
    /// The services the interrupted restore had stopped, started again.
    pub restarted: Vec<String>,
    /// Why they could not be started again.
    pub restart_error: Option<String>,
}

/// Repairs an interrupted restore of the locked instance, if there is one.
///
/// # Errors
///
/// Fails when the journal is damaged or a step cannot be undone; the journal
/// is then kept for another attempt.
pub fn recover_locked(ctx: &Context<'_>, lock: &InstanceLock) -> Result<RecoverReport> {
    let instance = lock.instance();
    let Some(journal) = Journal::load(&ctx.layout.home, instance)? else {
        if ctx.layout.catalog().exists() {
            // Bookkeeping only: a damaged catalog is not this command's
            // failure (a restore from an archive file must still work),
            // and a command that needs the catalog says it is damaged.
            let marked = Catalog::open(&ctx.layout.catalog())
                .and_then(|c| c.fail_running_restores(instance, &time::now_rfc3339()));
            match marked {
                Err(e) if !e.is_damage() => return Err(e.into()),
                _ => {}
            }
        }
        return Ok(RecoverReport {
            instance: instance.to_string(),
            recovered: None,
            backup: None,
            destination: None,
            restarted: Vec::new(),
            restart_error: None,
        });
    };
    let outcome = journal.recover(&ctx.layout.home)?;
    // The services the interrupted restore had stopped run again, as they
    // did before it.
    let mut restarted = Vec::new();
    let mut restart_error = None;
    if !journal.services_stopped.is_empty() {
        match ctx
            .config
            .instances
            .get(instance)
            .and_then(|i| i.services.as_ref().map(|s| (i, s)))
        {
            Some((inst, services)) => {
                let env = inst.env();
                let sctx = crate::service::Ctx {
                    env: &env,
                    cwd: inst.root.is_dir().then_some(inst.root.as_path()),
                    cancel: None,
                    instance,
                    progress: ctx.progress,
                };
                match services.start_names(&sctx, &journal.services_stopped) {
                    Ok(()) => restarted = journal.services_stopped.clone(),
                    Err(e) => restart_error = Some(crate::ops::backup::error_chain(&e)),
                }
            }
            None => {
                restart_error = Some(format!(
                    "the config no longer defines the services of {instance}: start {} by hand",
                    journal.services_stopped.join(", ")
                ));
            }
        }
    }
    if let Some(id) = journal.restore_id
        && ctx.layout.catalog().exists()
    {
        let catalog = Catalog::open(&ctx.layout.catalog())?;
        let (what, error) = match outcome {
            // Still staging: the live tree was never touched.
            Recovered::RolledBack if journal.phase == Phase::Staging => (
                "interrupted",
                Some("the process ended before the restore changed anything"),
            ),
            Recovered::RolledBack => (
                "rolled-back",
                Some("interrupted; the previous state was put back by recovery"),
            ),
            Recovered::Completed => ("restored", None),
        };
        catalog.finish_restore(id, &time::now_rfc3339(), what, error)?;
    }
    Ok(RecoverReport {
        instance: instance.to_string(),
        recovered: Some(outcome),
        backup: Some(journal.backup),
        destination: Some(journal.destination.display().to_string()),
        restarted,
        restart_error,
    })
}

/// Takes `instance`'s lock and repairs an interrupted restore of it.
///
/// # Errors
///
/// Fails when the lock is held or recovery fails.
pub fn recover(
    ctx: &Context<'_>,
    instance: &str,
    wait: Option<std::time::Duration>,
) -> Result<RecoverReport> {
    crate::fsutil::create_private_dir_all(&ctx.layout.home)?;
    let lock = InstanceLock::acquire(
        &ctx.layout.locks(),
        instance,
        &format!("recover {instance}"),
        wait,
        ctx.cancel,
    )?;
    recover_locked(ctx, &lock)
}

/// The instances that have a restore journal.
///
/// # Errors
///
/// Fails when the journal directory cannot be read.
pub fn pending(ctx: &Context<'_>) -> Result<Vec<String>> {
    let dir = ctx.layout.home.join("journal");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(instance) = name.strip_suffix(".json") {
            out.push(instance.to_string());
        }
    }
    out.sort();
    Ok(out)
}
