//! `verify`: read archives back in full and check every checksum: the
//! sidecar, the catalog's record, each member against the checksums member,
//! and the structure the format promises. The result is recorded in the
//! catalog when the archive is one of its backups.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::archive::reader::{read_sidecar, verify_archive};
use crate::catalog::{Catalog, ListFilter, Status};
use crate::error::{Error, Result};
use crate::ops::backup::error_chain;
use crate::ops::list::open_existing;
use crate::ops::show::{Resolved, resolve};
use crate::{Context, time};

/// What to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyTargets {
    /// Backup ids or archive files.
    Named(Vec<String>),
    /// Every backup in the catalog that has an archive.
    All,
}

/// The verdict on one archive.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The backup id, from the catalog or else the manifest.
    pub id: Option<String>,
    pub path: String,
    pub ok: bool,
    /// What failed; empty when `ok`.
    pub problems: Vec<String>,
    /// What could not be checked, without being wrong.
    pub warnings: Vec<String>,
    pub sha256: Option<String>,
    pub size: u64,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Whether the result was written to the catalog.
    pub recorded: bool,
    pub duration_ms: u64,
}

/// Verifies `targets`. Problems with an archive are reported in its
/// [`VerifyReport`], not as errors.
///
/// # Errors
///
/// Fails when a name is neither a backup nor a file, or the catalog cannot
/// be used.
pub fn verify(ctx: &Context<'_>, targets: &VerifyTargets) -> Result<Vec<VerifyReport>> {
    // Archive files describe themselves: they are verified without a
    // usable catalog, the result left unrecorded. Ids need the catalog.
    let (catalog, unusable) = match (open_existing(ctx), targets) {
        (Ok(c), _) => (c, None),
        (Err(Error::Catalog(e)), VerifyTargets::Named(names))
            if names.iter().all(|n| Path::new(n).is_file()) =>
        {
            (None, Some(e.to_string()))
        }
        (Err(e), _) => return Err(e),
    };
    let resolved: Vec<Resolved> = match targets {
        VerifyTargets::Named(names) => names
            .iter()
            .map(|n| resolve(catalog.as_ref(), n))
            .collect::<Result<_>>()?,
        VerifyTargets::All => match &catalog {
            Some(c) => c
                .list(&ListFilter::default())?
                .into_iter()
                .filter(|r| {
                    !matches!(r.status, Status::Failed | Status::Creating) && r.location.is_some()
                })
                .map(Resolved::Id)
                .collect(),
            None => Vec::new(),
        },
    };
    let mut reports = Vec::new();
    for target in resolved {
        ctx.cancel.check()?;
        let mut report = verify_one(ctx, catalog.as_ref(), target)?;
        if let Some(problem) = &unusable {
            report.warnings.push(format!(
                "the result is not recorded in the catalog: {problem}; \
                 `backstop reconcile --apply` rebuilds it"
            ));
        }
        reports.push(report);
    }
    Ok(reports)
}

fn verify_one(
    ctx: &Context<'_>,
    catalog: Option<&Catalog>,
    target: Resolved,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (path, record) = match target {
        Resolved::Id(r) => (r.location.clone().map(PathBuf::from), Some(r)),
        Resolved::File(p, r) => (Some(p), r),
    };
    let mut report = VerifyReport {
        id: record.as_ref().map(|r| r.id.clone()),
        path: path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        ok: false,
        problems: Vec::new(),
        warnings: Vec::new(),
        sha256: None,
        size: 0,
        entries: 0,
        files: 0,
        bytes: 0,
        recorded: false,
        duration_ms: 0,
    };
    let now = time::now_rfc3339();
    let Some(path) = path.filter(|p| p.exists()) else {
        report.problems.push(if report.path.is_empty() {
            "the backup has no archive file".to_string()
        } else {
            format!("the archive {} is missing", report.path)
        });
        if let (Some(c), Some(r)) = (catalog, &record) {
            c.mark_missing(&r.id, &now)?;
            report.recorded = true;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    };

    let run = verify_archive(&path, ctx.progress, ctx.cancel);
    report.sha256 = run.sha256.clone();
    report.size = run.size;
    match &run.result {
        Ok(v) => {
            report.entries = v.entries;
            report.files = v.files;
            report.bytes = v.bytes;
            if report.id.is_none() {
                report.id = Some(v.manifest.id.clone());
            }
            if let Some(r) = &record
                && r.id != v.manifest.id
            {
                report.problems.push(format!(
                    "the archive holds backup {}, but the catalog expects {}",
                    v.manifest.id, r.id
                ));
            }
        }
        Err(crate::Error::Interrupted) => return Err(crate::Error::Interrupted),
        Err(e) => report.problems.push(error_chain(e)),
    }
    if let Some(actual) = &run.sha256 {
        match read_sidecar(&path) {
            Ok(Some(expected)) if &expected != actual => report.problems.push(format!(
                "the sidecar {}.sha256 records {expected}, but the archive's SHA-256 is {actual}",
                path.display()
            )),
            Ok(Some(_)) => {}
            Ok(None) => report.warnings.push(
                "no .sha256 sidecar next to the archive: its whole-file checksum was not compared"
                    .into(),
            ),
            Err(e) => report.problems.push(error_chain(&e)),
        }
        if let Some(expected) = record.as_ref().and_then(|r| r.sha256.as_ref())
            && expected != actual
        {
            report.problems.push(format!(
                "the catalog records SHA-256 {expected}, but the archive's is {actual}"
            ));
        }
    }
    report.ok = report.problems.is_empty();
    if let (Some(c), Some(r)) = (catalog, &record) {
        c.record_verification(&r.id, &now, report.problems.first().map(String::as_str))?;
        report.recorded = true;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
