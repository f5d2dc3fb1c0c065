//! `verify`: read archives back in full and check every checksum: the
//! sidecar, the catalog's record, each member against the checksums member,
//! and the structure the format promises. The result is recorded in the
//! catalog when the archive is one of its backups.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::archive::holders;
use crate::archive::reader::{read_sidecar, verify_archive};
use crate::catalog::{BackupRecord, Catalog, ListFilter, Status};
use crate::encryption::EncryptionError;
use crate::error::{Error, Result};
use crate::lock::{InstanceLock, StoreLock};
use crate::ops::backup::error_chain;
use crate::ops::list::open_existing;
use crate::ops::show::{Resolved, resolve};
use crate::stores::Location;
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
    /// Whether the archive is encrypted (an age stream).
    pub encrypted: bool,
    /// Whether the content was read and checked; not for an encrypted
    /// archive without an identity that opens it, whose sidecar (and age
    /// header) alone were checked. Such a result is not recorded.
    pub content_checked: bool,
    pub sha256: Option<String>,
    pub size: u64,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Whether the result was written to the catalog.
    pub recorded: bool,
    /// Whether the backup was removed (by `prune` or `delete`) while this
    /// verification ran.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    pub duration_ms: u64,
    /// The archive had no sidecar when it was read: as a prune removes the
    /// sidecar first, the row is asked again under the instance's lock.
    #[serde(skip)]
    pub sidecar_missing: bool,
    /// Archives of the chain found damaged (id, problem), which the
    /// catalog records as corrupt.
    #[serde(skip)]
    pub damaged: Vec<(String, String)>,
}

/// What the archives of chains read in one run came to, by id: `None`
/// when the archive is the one recorded, else the problem.
type LinksSeen = HashMap<String, Option<String>>;

/// What `verify` did: a verdict per archive read, and how many backups
/// `--all` left out because the catalog already knows their archive is
/// missing (`reconcile --apply` or `delete` settles those).
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub archives: Vec<VerifyReport>,
    pub skipped_missing: usize,
}

/// Verifies `targets`. Problems with an archive are reported in its
/// [`VerifyReport`], not as errors.
///
/// # Errors
///
/// Fails when a name is neither a backup nor a file, or the catalog cannot
/// be used.
pub fn verify(
    ctx: &Context<'_>,
    targets: &VerifyTargets,
    wait: Option<Duration>,
) -> Result<Verified> {
    // Not while `migrate` moves the archives (waiting up to `wait`), and
    // then from the store they are in.
    let store = StoreLock::shared(ctx.layout, wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
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
    let mut skipped_missing = 0;
    let resolved: Vec<Resolved> = match targets {
        VerifyTargets::Named(names) => names
            .iter()
            .map(|n| resolve(catalog.as_ref(), n))
            .collect::<Result<_>>()?,
        VerifyTargets::All => {
            let rows = match &catalog {
                Some(c) => c.list(&ListFilter::default())?,
                None => Vec::new(),
            };
            let (rows, known) = every_checkable(rows);
            skipped_missing = known;
            rows.into_iter().map(Resolved::Id).collect()
        }
    };
    let all = matches!(targets, VerifyTargets::All);
    let mut reports = Vec::new();
    let mut links_seen = LinksSeen::new();
    for target in resolved {
        ctx.cancel.check()?;
        let mut report = verify_one(ctx, catalog.as_ref(), target, &mut links_seen)?;
        // A backup pruned or deleted since the list was read is not a
        // failure of `verify --all`: it is simply no longer there to check.
        if all && report.removed {
            continue;
        }
        if let Some(problem) = &unusable {
            report.warnings.push(format!(
                "the result is not recorded in the catalog: {problem}; \
                 `backstop reconcile --apply` rebuilds it"
            ));
        }
        reports.push(report);
    }
    Ok(Verified {
        archives: reports,
        skipped_missing,
    })
}

/// The rows `verify --all` reads: those with an archive, not failed or
/// still being made, and not already known to be missing (a row marked
/// `missing` whose file is back is read again). Also says how many were
/// left out as known to be missing.
fn every_checkable(rows: Vec<BackupRecord>) -> (Vec<BackupRecord>, usize) {
    let (known_missing, rest): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .filter(|r| !matches!(r.status, Status::Failed | Status::Creating) && r.location.is_some())
        .partition(|r| {
            r.status == Status::Missing
                && r.location
                    .as_ref()
                    .is_some_and(|l| !l.starts_with("s3://") && !Path::new(l).exists())
        });
    (rest, known_missing.len())
}

/// Verifies one target and records the verdict in the catalog, against
/// the backup as the catalog holds it once the archive was read: a backup
/// removed meanwhile (a prune removes the file, then the row, under the
/// instance's lock) is reported as removed, and one whose id was taken
/// again by a newer backup since the list was read is verified afresh.
fn verify_one(
    ctx: &Context<'_>,
    catalog: Option<&Catalog>,
    target: Resolved,
    links_seen: &mut LinksSeen,
) -> Result<VerifyReport> {
    let (by_id, file, mut record) = match target {
        Resolved::Id(r) => (true, None, Some(r)),
        Resolved::File(p, r) => (false, Some(p), r),
    };
    loop {
        let path = match &file {
            Some(p) => Some(Location::file(p.clone())),
            None => record
                .as_ref()
                .and_then(|r| r.location.as_deref())
                .map(|l| ctx.config.stores.locate(l))
                .transpose()?,
        };
        let (mut report, missing) = check(ctx, path, record.as_ref(), links_seen)?;
        if let Some(c) = catalog {
            record_damaged(c, &report.damaged)?;
        }
        let (Some(c), Some(r)) = (catalog, &record) else {
            return Ok(report);
        };
        // A sidecar that matches says nothing about the content: only what
        // was found wrong is recorded of a partial check.
        if report.ok && !report.content_checked && !report.sidecar_missing {
            return Ok(report);
        }
        // Whatever is wrong is asked again under the instance's lock, which
        // a removal holds until the row is gone. A long backup of the
        // instance may hold it: then the catalog is asked without it.
        let _lock = (!report.ok || report.sidecar_missing).then(|| {
            InstanceLock::acquire(
                &ctx.layout.locks(),
                &r.instance,
                &format!("verify {}", r.id),
                Some(Duration::from_secs(10)),
                ctx.cancel,
            )
        });
        match c.get(&r.id)? {
            None => {
                report.removed = true;
                report.problems = vec![format!(
                    "backup {} was removed (by prune or delete) while it was being verified",
                    r.id
                )];
                report.ok = false;
                return Ok(report);
            }
            Some(now) if by_id && !same_backup(&now, r) => record = Some(now),
            Some(_) => {
                let now = time::now_rfc3339();
                if missing {
                    c.mark_missing(&r.id, &now)?;
                } else {
                    c.record_verification(
                        &r.id,
                        &now,
                        report.problems.first().map(String::as_str),
                    )?;
                }
                report.recorded = true;
                return Ok(report);
            }
        }
    }
}

/// Records the archives of a chain found damaged as corrupt (once).
fn record_damaged(catalog: &Catalog, damaged: &[(String, String)]) -> Result<()> {
    for (id, problem) in damaged {
        if catalog
            .get(id)?
            .is_some_and(|row| row.verify_ok != Some(false))
        {
            catalog.record_verification(id, &time::now_rfc3339(), Some(problem))?;
        }
    }
    Ok(())
}

/// Whether two rows are the same backup (an id can be taken again by a
/// backup made in the same second after the first was pruned).
fn same_backup(a: &BackupRecord, b: &BackupRecord) -> bool {
    a.created_at == b.created_at && a.sha256 == b.sha256 && a.location == b.location
}

/// Hashes each archive of an incremental's chain (once a run) and reports
/// any whose SHA-256 is not the one its child recorded.
fn check_links(
    ctx: &Context<'_>,
    links: &[holders::Link],
    links_seen: &mut LinksSeen,
    report: &mut VerifyReport,
) -> Result<()> {
    for link in links {
        if !links_seen.contains_key(&link.id) {
            let problem = match link_sha256(ctx, &link.location) {
                Ok(sha) if sha == link.sha256 => None,
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                // Not read: not known to be damaged either.
                Err(e) => {
                    report.problems.push(error_chain(&e));
                    continue;
                }
                Ok(sha) => Some(format!(
                    "{} is damaged: its SHA-256 is {sha}, but {} was recorded",
                    link.id, link.sha256
                )),
            };
            links_seen.insert(link.id.clone(), problem);
        }
        if let Some(problem) = &links_seen[&link.id] {
            report
                .problems
                .push(format!("the chain is broken: {problem}"));
            report.damaged.push((link.id.clone(), problem.clone()));
        }
    }
    Ok(())
}

/// The SHA-256 of the archive at `at`, read to its end.
fn link_sha256(ctx: &Context<'_>, at: &Location) -> Result<String> {
    use sha2::Digest;
    let path = at.label();
    let mut file = at.open()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        ctx.cancel.check()?;
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Reads the archive at `path` in full and checks it against its sidecar
/// and `record`; records nothing. Also says whether the archive is missing.
fn check(
    ctx: &Context<'_>,
    path: Option<Location>,
    record: Option<&BackupRecord>,
    links_seen: &mut LinksSeen,
) -> Result<(VerifyReport, bool)> {
    let started = Instant::now();
    let mut report = VerifyReport {
        id: record.map(|r| r.id.clone()),
        path: path
            .as_ref()
            .map(|p| p.label().display().to_string())
            .unwrap_or_default(),
        ok: false,
        problems: Vec::new(),
        warnings: Vec::new(),
        encrypted: false,
        content_checked: false,
        sha256: None,
        size: 0,
        entries: 0,
        files: 0,
        bytes: 0,
        recorded: false,
        removed: false,
        duration_ms: 0,
        sidecar_missing: false,
        damaged: Vec::new(),
    };
    let present = match &path {
        Some(p) => p.size()?.is_some(),
        None => false,
    };
    let Some(path) = path.filter(|_| present) else {
        report.problems.push(if report.path.is_empty() {
            "the backup has no archive file".to_string()
        } else {
            format!("the archive {} is missing", report.path)
        });
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok((report, true));
    };
    let run = verify_archive(&path, (ctx.progress, ctx.cancel), ctx.keys);
    report.sha256 = run.sha256.clone();
    report.size = run.size;
    report.encrypted = run.encrypted;
    match &run.result {
        Ok(v) => {
            report.content_checked = true;
            report.entries = v.entries;
            report.files = v.files;
            report.bytes = v.bytes;
            if report.id.is_none() {
                report.id = Some(v.manifest.id.clone());
            }
            // An incremental's unchanged files are checked where they are
            // held; here, that every archive of its chain is there, and is
            // byte for byte the one recorded: what verifies, restores.
            match holders::resolve(&path, &v.manifest, (None, &ctx.config.stores), ctx.keys) {
                Ok(links) => check_links(ctx, &links, links_seen, &mut report)?,
                Err(e) => report.problems.push(error_chain(&e)),
            }
            if let Some(r) = record
                && r.id != v.manifest.id
            {
                report.problems.push(format!(
                    "the archive holds backup {}, but the catalog expects {}",
                    v.manifest.id, r.id
                ));
            }
        }
        Err(crate::Error::Interrupted) => return Err(crate::Error::Interrupted),
        Err(Error::Encryption(EncryptionError::NoIdentity { .. })) => report.warnings.push(
            "encrypted, and no identity was given: only the age header and the whole-file \
             checksum were checked, not the content (give --identity FILE to check it all)"
                .into(),
        ),
        Err(Error::Encryption(EncryptionError::NoPassphrase { .. })) => report.warnings.push(
            "encrypted to a passphrase, and there is no passphrase_command and no terminal to \
             ask on: only the age header and the whole-file checksum were checked, not the \
             content (set `passphrase_command` to check it all)"
                .into(),
        ),
        Err(e) => report.problems.push(error_chain(e)),
    }
    if let Some(actual) = &run.sha256 {
        match read_sidecar(&path) {
            Ok(Some(expected)) if &expected != actual => report.problems.push(format!(
                "the sidecar {}.sha256 records {expected}, but the archive's SHA-256 is {actual}",
                path.label().display()
            )),
            Ok(Some(_)) => {}
            Ok(None) => {
                report.sidecar_missing = true;
                report.warnings.push(
                    "no .sha256 sidecar next to the archive: its whole-file checksum was not \
                     compared"
                        .into(),
                );
            }
            Err(e) => report.problems.push(error_chain(&e)),
        }
        if let Some(expected) = record.and_then(|r| r.sha256.as_ref())
            && expected != actual
        {
            report.problems.push(format!(
                "the catalog records SHA-256 {expected}, but the archive's is {actual}"
            ));
        }
    }
    report.ok = report.problems.is_empty();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok((report, false))
}
