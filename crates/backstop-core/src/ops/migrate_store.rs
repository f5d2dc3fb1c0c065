//! `migrate --to NAME`: move every backup of the home's store into a
//! `[stores.NAME]` store (a bucket, another directory).
//!
//! Backup by backup, under its instance's lock: copy it there (with the
//! links of its chain, each read back and verified, as `copy` does), make
//! that copy its first location in the catalog, then remove the home's
//! archive. An interruption loses nothing: until the catalog switches, the
//! home's archive is the one it names, and after, the verified copy.
//! Running the same command again finishes the job (copies already made
//! are found and not sent again).

use std::time::Duration;

use serde::Serialize;

use crate::Context;
use crate::catalog::{BackupRecord, ListFilter, Status};
use crate::error::{Error, Result};
use crate::lock::{InstanceLock, StoreLock};
use crate::ops::copy::{Copied, Target, copy_locked};
use crate::ops::list::open_existing;
use crate::stores::HOME_STORE;

/// What `migrate --to NAME` did.
#[derive(Debug, Clone, Serialize)]
pub struct StoreMigrateReport {
    /// The store moved to.
    pub to: String,
    /// What it is (`s3://bucket/prefix`, a directory).
    pub url: String,
    /// The backups now there whose archive left the home's store.
    pub moved: Vec<Copied>,
    /// Bytes sent.
    pub bytes: u64,
    /// Whether new backups go there too (the instances' `store`, or
    /// `[defaults] store`); when not, the config needs it.
    pub new_backups_go_there: bool,
}

/// Moves every available backup of the home's store to the store `name`.
///
/// # Errors
///
/// An unknown store, a held lock, or a copy that cannot be made or does
/// not verify (what was moved before stays moved; the rest stays home).
pub fn migrate_to_store(
    ctx: &Context<'_>,
    name: &str,
    wait: Option<Duration>,
) -> Result<StoreMigrateReport> {
    if name == HOME_STORE {
        return Err(Error::usage(
            "the backups are in the home's store already".to_string(),
            Some("`migrate --to DIR` moves the home's store to another directory".into()),
        ));
    }
    let store = StoreLock::shared(ctx.layout, wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let target = Target::open(ctx, name)?;
    let url = ctx.config.stores.def(name)?.describe();
    let mut report = StoreMigrateReport {
        to: name.to_string(),
        url,
        moved: Vec::new(),
        bytes: 0,
        new_backups_go_there: goes_there(ctx, name),
    };
    let Some(catalog) = open_existing(ctx)? else {
        return Ok(report);
    };
    let rows = catalog.list(&ListFilter {
        status: Some(Status::Available),
        ..Default::default()
    })?;
    let home: Vec<BackupRecord> = rows
        .into_iter()
        .filter(|r| r.location.as_deref().is_some_and(|l| is_home(ctx, l)))
        .collect();
    for row in home.iter().rev() {
        ctx.cancel.check()?;
        let _lock = InstanceLock::acquire(
            &ctx.layout.locks(),
            &row.instance,
            &format!("migrate {} to {name}", row.id),
            wait,
            ctx.cancel,
        )?;
        // Read again under the lock: a prune may have taken it meanwhile.
        let Some(row) = catalog.get(&row.id)? else {
            continue;
        };
        let Some(first) = row.location.clone().filter(|l| is_home(ctx, l)) else {
            continue;
        };
        let mut copied = Vec::new();
        copy_locked(ctx, &catalog, &row, &target, &mut copied)?;
        let mine = copied
            .into_iter()
            .find(|c| c.id == row.id)
            .expect("copy_locked reports the backup itself");
        crate::failpoint::hit("migrate.before-switch")?;
        catalog.promote_copy(&row.id, name, &mine.location)?;
        crate::ops::prune::remove_archive(ctx, &first)?;
        report.bytes += mine.size;
        report.moved.push(mine);
    }
    Ok(report)
}

/// Whether `location` is in the home's store.
fn is_home(ctx: &Context<'_>, location: &str) -> bool {
    ctx.config.stores.name_of(location).is_none() && !location.starts_with("s3://")
}

/// Whether new backups of every configured instance (and ad-hoc ones)
/// go to `name`.
fn goes_there(ctx: &Context<'_>, name: &str) -> bool {
    let defaults = &ctx.config.placement;
    let default_there = crate::stores::Placement::default()
        .or_defaults(defaults)
        .store()
        == Some(name);
    if ctx.config.instances.is_empty() {
        return default_there;
    }
    ctx.config
        .instances
        .values()
        .all(|i| i.placement.or_defaults(defaults).store() == Some(name))
}
