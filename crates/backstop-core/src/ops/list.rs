//! `list`: the catalog's backups, newest first.

use crate::Context;
use crate::catalog::{BackupRecord, Catalog, ListFilter};
use crate::error::Result;
use crate::lock::InstanceLock;

/// Opens the catalog if there is one; a fresh machine has none, and reading
/// must not create it.
///
/// # Errors
///
/// Fails when the catalog exists but cannot be opened.
pub fn open_existing(ctx: &Context<'_>) -> Result<Option<Catalog>> {
    let path = ctx.layout.catalog();
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Catalog::open(&path)?))
}

/// Marks the `creating` rows of dead processes failed. A row is only stale if
/// its instance lock is free: a live backup holds it.
///
/// # Errors
///
/// Fails on catalog or lock-file errors.
pub fn repair_interrupted(ctx: &Context<'_>, catalog: &Catalog) -> Result<()> {
    for instance in catalog.instances_creating()? {
        if let Some(_lock) = InstanceLock::try_acquire(&ctx.layout.locks(), &instance, "repair")? {
            crate::ops::backup::repair_interrupted(catalog, &instance)?;
        }
    }
    Ok(())
}

/// The backups matching `filter`, newest first.
///
/// # Errors
///
/// Fails when the catalog cannot be read.
pub fn list(ctx: &Context<'_>, filter: &ListFilter) -> Result<Vec<BackupRecord>> {
    let Some(catalog) = open_existing(ctx)? else {
        return Ok(Vec::new());
    };
    repair_interrupted(ctx, &catalog)?;
    Ok(catalog.list(filter)?)
}

/// The instances that have backups in the catalog, sorted.
///
/// # Errors
///
/// Fails on a database error.
pub fn instances(ctx: &Context<'_>) -> Result<Vec<String>> {
    let Some(catalog) = open_existing(ctx)? else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = catalog
        .list(&ListFilter::default())?
        .into_iter()
        .map(|r| r.instance)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The instances that have a directory in the store at `store`, sorted.
pub fn store_instances(store: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store)
        .map(|dirs| {
            dirs.flatten()
                .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
