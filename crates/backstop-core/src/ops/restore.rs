//! `restore`: put a backup back, all or nothing (guarantees 2 to 8).
//!
//! The pipeline: resolve the backup → take the instance lock and repair an
//! interrupted restore → check it and the destination (format, whole-file
//! checksum, `--instance`, free space, permissions) and plan, under that
//! lock → confirm → safety backup of the current state → stage: unpack
//! beside each target, verifying every checksum as it goes and linking
//! what is already in place → apply the renames of the chosen mode through
//! the journal → commit → clean up. A failure before the commit point undoes
//! every rename and leaves the previous state; a crash at any instant is
//! repaired from the journal by the next command that takes the lock.
//!
//! This is the entry point; the work is in [`crate::restore::plan`]
//! (everything before the confirmation) and [`crate::restore::apply`]
//! (everything after it).

use std::time::Instant;

use crate::error::Result;
use crate::lock::{InstanceLock, StoreLock};
use crate::ops::recover::recover_locked;
use crate::restore::{apply, plan};
use crate::{Context, failpoint, fsutil};

pub use crate::restore::plan::{
    Check, CheckOutcome, PlannedSource, Purpose, RestoreOutcome, RestorePlan, RestoreReport,
    RestoreRequest,
};
pub use crate::restore::steps::Mode;

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
/// reported as [`Error::RolledBack`](crate::Error::RolledBack) (exit 5); a
/// held lock is exit 6.
pub fn restore(
    ctx: &Context<'_>,
    req: &RestoreRequest,
    confirm: &mut dyn FnMut(&RestorePlan) -> bool,
) -> Result<RestoreOutcome> {
    let outcome = restore_inner(ctx, req, confirm);
    if let Err(e) = &outcome {
        record_damage(ctx, e);
    }
    outcome
}

/// A chain found with a damaged archive (its bytes not the recorded ones)
/// has it recorded as corrupt: no backup builds on it then, and a restore
/// that needs it is refused before its safety backup. What cannot be
/// recorded changes nothing: the restore's own error is what is reported.
fn record_damage(ctx: &Context<'_>, e: &crate::Error) {
    let Some(id) = crate::archive::holders::damaged_link(e) else {
        return;
    };
    if let Ok(Some(catalog)) = crate::ops::list::open_existing(ctx)
        && catalog
            .get(id)
            .ok()
            .flatten()
            .is_some_and(|row| row.verify_ok != Some(false))
    {
        let now = crate::time::now_rfc3339();
        let _ = catalog.record_verification(id, &now, Some(&e.to_string()));
    }
}

fn restore_inner(
    ctx: &Context<'_>,
    req: &RestoreRequest,
    confirm: &mut dyn FnMut(&RestorePlan) -> bool,
) -> Result<RestoreOutcome> {
    let started = Instant::now();
    // Behind a migration of the store, then from the store it moved to. A
    // dry run too: it reads the archive.
    let store = StoreLock::shared(ctx.layout, req.wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let src = plan::find(ctx, &req.target, &req.only)?;
    let m = &src.manifest;
    plan::check_request(req, m)?;
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
    let prep = plan::prepare(ctx, req, &src)?;
    if req.dry_run {
        return Ok(RestoreOutcome::DryRun { plan: prep.plan });
    }

    let lock = lock.expect("a restore that is not a dry run holds the lock");
    failpoint::hit("restore.planned")?;
    if !confirm(&prep.plan) {
        return Ok(RestoreOutcome::Declined { plan: prep.plan });
    }
    apply::apply(ctx, req, prep, &lock, started)
}
