//! `list`: the catalog's backups, newest first, and the archives in the
//! store that the catalog does not know (a lost or rebuilt catalog).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Context;
use crate::access::{self, Need};
use crate::archive::Codec;
use crate::catalog::{BackupRecord, Catalog, ListFilter};
use crate::error::Result;
use crate::fsutil::TEMP_PREFIX;
use crate::lock::InstanceLock;

/// Opens the catalog if there is one; a fresh machine has none, and reading
/// must not create it. The file is checked with SQLite's own check first,
/// so that a damaged catalog is named as such rather than half read.
///
/// # Errors
///
/// Fails when the catalog exists but cannot be opened, or is damaged
/// ([`CatalogError::Damaged`](crate::catalog::CatalogError::Damaged)), and
/// with [`Error::Denied`](crate::Error::Denied) when this user may not use
/// the home or the catalog: that is not the same as having no backups.
pub fn open_existing(ctx: &Context<'_>) -> Result<Option<Catalog>> {
    let path = ctx.layout.catalog();
    if !access::check(&ctx.layout.home, Need::List)? || !access::check(&path, Need::ReadWrite)? {
        return Ok(None);
    }
    Ok(Some(Catalog::open_checked(&path)?))
}

/// What `list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub backups: Vec<BackupRecord>,
    /// Archive files in the store (of the instance asked about, or all)
    /// that no catalog row names: `reconcile --apply` adopts them.
    pub untracked: Vec<PathBuf>,
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
            crate::ops::backup::repair_interrupted(ctx, catalog, &instance)?;
        }
    }
    Ok(())
}

/// Refuses an instance name nothing knows: not in the config, with no
/// backup in the catalog and no directory in the home's store (a typo,
/// which would otherwise prune or reconcile nothing and succeed).
///
/// # Errors
///
/// A usage error (exit 2) naming it; or when the catalog cannot be read.
pub fn require_known(ctx: &Context<'_>, name: &str) -> Result<()> {
    if ctx.config.instances.contains_key(name)
        || store_instances(&ctx.layout.store).iter().any(|i| i == name)
    {
        return Ok(());
    }
    if let Some(c) = open_existing(ctx)? {
        let rows = c.list(&ListFilter {
            instance: Some(name.to_string()),
            limit: Some(1),
            ..ListFilter::default()
        })?;
        if !rows.is_empty() {
            return Ok(());
        }
    }
    Err(crate::Error::usage(
        format!(
            "there is no instance named `{name}`: the config does not define it, and no backup \
             of it is in the catalog or the store"
        ),
        Some("check the spelling; `backstop list` shows the instances with backups".into()),
    ))
}

/// The backups matching `filter`, newest first, and the archives of the
/// store that the catalog does not know.
///
/// # Errors
///
/// Fails when the catalog cannot be read.
pub fn list(ctx: &Context<'_>, filter: &ListFilter) -> Result<Listing> {
    let catalog = open_existing(ctx)?;
    if let Some(c) = &catalog {
        repair_interrupted(ctx, c)?;
    }
    let backups = match &catalog {
        Some(c) => {
            let mut rows = c.list(filter)?;
            c.fill_chain_sizes(&mut rows)?;
            rows
        }
        None => Vec::new(),
    };
    let untracked = untracked_archives(ctx, catalog.as_ref(), filter.instance.as_deref())?;
    Ok(Listing { backups, untracked })
}

/// The archive files in the store (of `instance`, or of every instance)
/// that no row of `catalog` names. Only directories are listed: no archive
/// is opened, so this is cheap enough for every `list`.
///
/// # Errors
///
/// Fails when the catalog cannot be read.
pub fn untracked_archives(
    ctx: &Context<'_>,
    catalog: Option<&Catalog>,
    instance: Option<&str>,
) -> Result<Vec<PathBuf>> {
    let known: HashSet<PathBuf> = match catalog {
        Some(c) => c
            .list(&ListFilter::default())?
            .into_iter()
            .filter_map(|r| r.location.map(PathBuf::from))
            .collect(),
        None => HashSet::new(),
    };
    // An unreadable store is not an empty one.
    if !access::check(&ctx.layout.store, Need::List)? {
        return Ok(Vec::new());
    }
    let instances = match instance {
        Some(i) => vec![i.to_string()],
        None => store_instances(&ctx.layout.store),
    };
    for i in &instances {
        access::check(&ctx.layout.instance_store(i), Need::List)?;
    }
    Ok(instances
        .iter()
        .flat_map(|i| store_archives(&ctx.layout.instance_store(i)))
        .filter(|p| !known.contains(p))
        .collect())
}

/// The archive files directly in `dir`, sorted: names that end as an
/// archive does, not hidden or temporary. Sidecars and metadata files are
/// not archives.
pub fn store_archives(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !name.starts_with(TEMP_PREFIX)
                && !name.starts_with('.')
                && Codec::from_file_name(&name).is_some()
                && e.path().is_file()
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
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
