//! `copy`: a second copy of backups in another store (local → S3, S3 →
//! local, S3 → S3), each verified where it lands before the catalog
//! records it.
//!
//! A copy streams the archive from where the catalog has it into the
//! other store under the same name (`<host>/<instance>/<file>` in a named
//! store, `<instance>/<file>` in the home's), hashing it on the way; the
//! object gets its name only when complete, then its sidecar, then the
//! copy is read back in full ([`verify_archive`]) and only then recorded.
//! An incremental is copied with the links of its chain the other store
//! lacks, so the other store alone can restore it. A failed copy leaves
//! nothing under the archive's name there.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sha2::Digest;

use crate::Context;
use crate::archive::reader::verify_archive;
use crate::catalog::{BackupRecord, Catalog, CopyRecord, Status};
use crate::error::{Error, Result};
use crate::lock::{InstanceLock, StoreLock};
use crate::ops::list::open_existing;
use crate::progress::NoProgress;
use crate::store::{Key, LocalStore, Store};
use crate::stores::{HOME_STORE, Location};
use crate::time;

/// What was done for one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Copied {
    pub id: String,
    /// Where it is now, in the store copied to.
    pub location: String,
    /// Bytes sent; 0 when it was there already.
    pub size: u64,
    /// `copied`, or `already there`.
    pub outcome: &'static str,
}

/// What `copy` did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// The store copied to.
    pub to: String,
    pub copied: Vec<Copied>,
}

/// Copies the backups `ids` (or every available one with `all`) to the
/// store `to`, with the links of their chains.
///
/// # Errors
///
/// Fails on an unknown id or store, a backup with no archive, a held
/// lock, or a copy that cannot be written or does not verify (nothing
/// is recorded of that one, and no object of it remains).
pub fn copy(
    ctx: &Context<'_>,
    (ids, all): (&[String], bool),
    to: &str,
    wait: Option<Duration>,
) -> Result<CopyReport> {
    let store = StoreLock::shared(ctx.layout, wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let target = Target::open(ctx, to)?;
    let catalog = open_existing(ctx)?.ok_or_else(|| Error::NotFound {
        message: "there are no backups: the catalog does not exist".into(),
        hint: None,
    })?;
    let rows = chosen(&catalog, ids, all)?;
    let mut report = CopyReport {
        to: to.to_string(),
        copied: Vec::new(),
    };
    for row in rows {
        ctx.cancel.check()?;
        let _lock = InstanceLock::acquire(
            &ctx.layout.locks(),
            &row.instance,
            &format!("copy {} to {to}", row.id),
            wait,
            ctx.cancel,
        )?;
        copy_locked(ctx, &catalog, &row, &target, &mut report.copied)?;
    }
    Ok(report)
}

/// Copies `row` (and the links it needs) to `target` while the caller
/// holds its instance's lock; what was done goes into `out`, links first.
///
/// # Errors
///
/// As [`copy`].
pub(crate) fn copy_locked(
    ctx: &Context<'_>,
    catalog: &Catalog,
    row: &BackupRecord,
    target: &Target,
    out: &mut Vec<Copied>,
) -> Result<()> {
    // The links first, the full backup before the incrementals on it.
    let mut chain = vec![row.clone()];
    while let Some(parent) = chain.last().and_then(|r| r.parent.clone()) {
        let link = catalog.get(&parent)?.ok_or_else(|| Error::NotFound {
            message: format!(
                "{parent}, which {} is built on, is not in the catalog",
                row.id
            ),
            hint: Some("`backstop reconcile` reports broken chains".into()),
        })?;
        chain.push(link);
    }
    for r in chain.iter().rev() {
        // A link copied (or found there) for an earlier backup of the run.
        if out.iter().any(|c| c.id == r.id) {
            continue;
        }
        out.push(copy_one(ctx, catalog, r, target)?);
    }
    Ok(())
}

/// The rows asked for, oldest first (so links go before what needs them).
fn chosen(catalog: &Catalog, ids: &[String], all: bool) -> Result<Vec<BackupRecord>> {
    let mut rows = Vec::new();
    if all {
        rows = catalog
            .list(&crate::catalog::ListFilter {
                status: Some(Status::Available),
                ..Default::default()
            })?
            .into_iter()
            .collect();
    }
    for id in ids {
        let row = catalog.get(id)?.ok_or_else(|| Error::NotFound {
            message: format!("there is no backup {id}"),
            hint: Some("`backstop list` shows the backups there are".into()),
        })?;
        if row.status != Status::Available {
            return Err(Error::usage(
                format!(
                    "backup {id} is {}: only available backups are copied",
                    row.status
                ),
                Some("`backstop list --status available` shows what can be copied".into()),
            ));
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    rows.dedup_by(|a, b| a.id == b.id);
    Ok(rows)
}

/// The store a copy goes to.
pub(crate) struct Target {
    name: String,
    store: Arc<dyn Store>,
    /// Whether it is the home's own store (keys `<instance>/<file>`).
    home: bool,
}

impl Target {
    /// The store called `name` (`local` for the home's own), connected.
    ///
    /// # Errors
    ///
    /// An unknown name, or the store's failure to connect.
    pub(crate) fn open(ctx: &Context<'_>, name: &str) -> Result<Target> {
        if name == HOME_STORE {
            crate::fsutil::create_private_dir_all(&ctx.layout.store)?;
            return Ok(Target {
                name: name.to_string(),
                store: Arc::new(LocalStore::open(&ctx.layout.store)?),
                home: true,
            });
        }
        Ok(Target {
            name: name.to_string(),
            store: ctx.config.stores.get(name)?,
            home: false,
        })
    }

    /// Where `row`'s archive goes in this store.
    fn location(&self, row: &BackupRecord, file: &str) -> Result<Location> {
        let key = if self.home {
            Key::new(&format!("{}/{file}", row.instance))?
        } else {
            crate::stores::archive_key(&row.host, &row.instance, file)?
        };
        Ok(Location::object(self.store.clone(), key))
    }
}

/// The store name of a location the catalog holds.
fn store_of(ctx: &Context<'_>, location: &str) -> String {
    ctx.config
        .stores
        .name_of(location)
        .unwrap_or(HOME_STORE)
        .to_string()
}

/// Copies one backup's archive to `target`, unless it is there already.
fn copy_one(
    ctx: &Context<'_>,
    catalog: &Catalog,
    row: &BackupRecord,
    target: &Target,
) -> Result<Copied> {
    let primary = row.location.clone().ok_or_else(|| Error::NotFound {
        message: format!("backup {} has no archive", row.id),
        hint: None,
    })?;
    let copies = catalog.copies_of(&row.id)?;
    let there = if store_of(ctx, &primary) == target.name {
        Some(primary.clone())
    } else {
        copies
            .iter()
            .find(|c| c.store == target.name)
            .map(|c| c.location.clone())
    };
    if let Some(location) = there {
        return Ok(Copied {
            id: row.id.clone(),
            location,
            size: 0,
            outcome: "already there",
        });
    }
    if !target.home
        && !crate::stores::claim_id(target.store.as_ref(), &row.instance, &row.id, &row.host)?
    {
        return Err(Error::Refused {
            message: format!(
                "{} already holds a backup of another host with the id {}",
                target.store.describe(),
                row.id
            ),
            hint: Some(
                "two hosts back up an instance of the same name into it: give one of them \
                 another instance name"
                    .into(),
            ),
        });
    }
    let source = ctx.config.stores.locate(&primary)?;
    let dest = target.location(row, &source.file_name())?;
    let size = transfer(&source, &dest, row)?;
    if let Err(e) = check_copy(ctx, &dest, row) {
        let _ = dest.sidecar().remove();
        let _ = dest.remove();
        return Err(e);
    }
    let location = dest.label().display().to_string();
    catalog.add_copy(
        &row.id,
        &CopyRecord {
            store: target.name.clone(),
            location: location.clone(),
            copied_at: time::now_rfc3339(),
        },
    )?;
    Ok(Copied {
        id: row.id.clone(),
        location,
        size,
        outcome: "copied",
    })
}

/// Streams `source` into a new object `dest` and writes its sidecar;
/// the bytes must hash to what the catalog recorded. Gives the size.
fn transfer(source: &Location, dest: &Location, row: &BackupRecord) -> Result<u64> {
    let (store, key) = dest.as_object().expect("copies go to a store");
    let mut reader = source.open()?;
    let mut writer = store.create(key)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("reading", source, e)),
        };
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .map_err(|e| io_error("writing", dest, e))?;
        size += n as u64;
    }
    let sha = hex::encode(hasher.finalize());
    if row.sha256.as_deref() != Some(sha.as_str()) {
        return Err(crate::archive::ArchiveError::Corrupt {
            path: source.label().to_path_buf(),
            detail: format!(
                "its SHA-256 is {sha}, the catalog records {}: it was not copied",
                row.sha256.as_deref().unwrap_or("nothing")
            ),
        }
        .into());
    }
    writer.finish()?;
    let line = crate::archive::format::sidecar_line(&sha, &dest.file_name());
    if let Err(e) = dest.sidecar().write_small(line.as_bytes()) {
        let _ = dest.remove();
        return Err(e);
    }
    Ok(size)
}

/// Reads the copy back in full: every member, the whole-file checksum
/// against the catalog's, and the sidecar (an encrypted archive without
/// its key: the checksum alone).
fn check_copy(ctx: &Context<'_>, dest: &Location, row: &BackupRecord) -> Result<()> {
    let run = verify_archive(dest, (&NoProgress, ctx.cancel), ctx.keys);
    match run.result {
        Ok(_) => {}
        Err(Error::Encryption(
            crate::encryption::EncryptionError::NoIdentity { .. }
            | crate::encryption::EncryptionError::NoPassphrase { .. },
        )) => {}
        Err(e) => return Err(e),
    }
    let sidecar = crate::archive::reader::read_sidecar(dest)?;
    if run.sha256 != row.sha256 || sidecar != row.sha256 {
        return Err(crate::archive::ArchiveError::Corrupt {
            path: dest.label().to_path_buf(),
            detail: format!(
                "the copy reads back as SHA-256 {}, its sidecar says {}, the catalog {}",
                run.sha256.as_deref().unwrap_or("nothing"),
                sidecar.as_deref().unwrap_or("nothing"),
                row.sha256.as_deref().unwrap_or("nothing"),
            ),
        }
        .into());
    }
    Ok(())
}

fn io_error(action: &'static str, at: &Location, e: std::io::Error) -> Error {
    match crate::store::StoreError::from_io(&e) {
        Some(se) => se.clone().into(),
        None => Error::io(action, at.label(), e),
    }
}
