//! `show`: everything known about one backup, from the catalog and from the
//! archive's own manifest.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Context;
use crate::archive::Manifest;
use crate::archive::reader::read_manifest;
use crate::catalog::{BackupRecord, Catalog, GuardRecord, RestoreRecord};
use crate::error::{Error, Result};
use crate::ops::backup::error_chain;
use crate::ops::list::{open_existing, repair_interrupted};
use crate::stores::Location;

/// One backup in full.
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    /// The catalog record, when the backup is in the catalog.
    pub backup: Option<BackupRecord>,
    /// The archive file.
    pub path: Option<String>,
    /// The archive's manifest, when the archive could be read.
    pub manifest: Option<Manifest>,
    /// Why the manifest could not be read.
    pub manifest_error: Option<String>,
    /// Restores of this backup, oldest first.
    pub restores: Vec<RestoreRecord>,
    /// The guarded commands this backup was taken before, with their outcome.
    pub guards: Vec<GuardRecord>,
    /// The incremental backups that need this one (built on it, or on one
    /// built on it).
    pub dependants: Vec<String>,
    /// Its further copies, in other stores.
    pub copies: Vec<crate::catalog::CopyRecord>,
}

/// A backup named on the command line: a catalog id or an archive file.
pub(crate) enum Resolved {
    Id(BackupRecord),
    File(PathBuf, Option<BackupRecord>),
}

/// Finds `target` as a backup id first, then as a file.
pub(crate) fn resolve(catalog: Option<&Catalog>, target: &str) -> Result<Resolved> {
    if let Some(catalog) = catalog
        && let Some(record) = catalog.get(target)?
    {
        return Ok(Resolved::Id(record));
    }
    let path = Path::new(target);
    if path.is_file() {
        let record = match catalog {
            Some(c) => find_file(c, path)?,
            None => None,
        };
        return Ok(Resolved::File(path.to_path_buf(), record));
    }
    Err(Error::NotFound {
        message: format!("no backup or archive file named `{target}`"),
        hint: Some("`backstop list` shows the backups in the catalog".into()),
    })
}

/// The catalog record of an archive file, by its location.
fn find_file(catalog: &Catalog, path: &Path) -> Result<Option<BackupRecord>> {
    let mut candidates = vec![crate::config::absolute(path)];
    if let Ok(c) = path.canonicalize() {
        candidates.push(c);
    }
    for c in candidates {
        if let Some(s) = c.to_str()
            && let Some(r) = catalog.find_by_location(s)?
        {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Shows backup `target` (an id or an archive file).
///
/// # Errors
///
/// Fails when `target` is neither, or the catalog cannot be read.
pub fn show(ctx: &Context<'_>, target: &str) -> Result<ShowReport> {
    let catalog = open_existing(ctx)?;
    if let Some(c) = &catalog {
        repair_interrupted(ctx, c)?;
    }
    let (record, path) = match resolve(catalog.as_ref(), target)? {
        Resolved::Id(r) => {
            let path = r.location.as_deref().map(|l| ctx.config.stores.locate(l));
            (Some(r), path)
        }
        Resolved::File(p, r) => (r, Some(Ok(Location::file(p)))),
    };
    let (manifest, manifest_error) = match &path {
        Some(Ok(p)) => match p.size() {
            Ok(Some(_)) => match read_manifest(p, ctx.keys) {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(error_chain(&e))),
            },
            Ok(None) => (
                None,
                Some(format!("the archive {} is missing", p.label().display())),
            ),
            Err(e) => (None, Some(error_chain(&e))),
        },
        Some(Err(e)) => (None, Some(error_chain(e))),
        None => (None, None),
    };
    let path = match path {
        Some(Ok(p)) => Some(p.label().to_path_buf()),
        _ => record
            .as_ref()
            .and_then(|r| r.location.as_ref().map(PathBuf::from)),
    };
    let mut record = record;
    let (restores, guards, dependants, copies) = match (&catalog, &mut record) {
        (Some(c), Some(r)) => {
            c.fill_chain_sizes(std::slice::from_mut(r))?;
            let dependants = c.dependants(&r.id)?.into_iter().map(|d| d.id).collect();
            (
                c.restores_of(&r.id)?,
                c.guards_of(&r.id)?,
                dependants,
                c.copies_of(&r.id)?,
            )
        }
        _ => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
    };
    Ok(ShowReport {
        backup: record,
        path: path.map(|p| p.display().to_string()),
        manifest,
        manifest_error,
        restores,
        guards,
        dependants,
        copies,
    })
}
