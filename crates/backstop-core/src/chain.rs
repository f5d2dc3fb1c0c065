//! Incremental chains: which backup a new one builds on, and the index
//! cache that tells it what is unchanged without reading an archive.
//!
//! A backup is incremental when the instance has a parent to build on:
//! the newest available backup in the store of the same root and profile,
//! whose archive is there as the catalog recorded it (size and sidecar),
//! that did not fail verification, whose own chain is complete, and that
//! keeps the chain within `[chain]`'s limits (`full_every`, `max_length`).
//! Anything else makes a full backup, and says why.
//!
//! The cache, `<home>/index/<instance>.zst`, is the newest backup's index
//! as the writer compressed it. It is checked whole before it is used (its
//! zstd checksum and every line); one that is missing, damaged or of
//! another backup is rebuilt from the parent's archive.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Context;
use crate::archive::format::{ArchiveRef, ChainLinks};
use crate::archive::index::{self, BoxedReader, Compressed, Previous};
use crate::catalog::{BackupRecord, Catalog, ListFilter, Status};
use crate::error::{Error, Result};
use crate::fsutil;

/// A full backup at least this often, by default.
pub const DEFAULT_FULL_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many incrementals after a full backup, by default.
pub const DEFAULT_MAX_LENGTH: u32 = 14;

/// `[chain]` of an instance or of `[defaults]`, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChain {
    full_every: Option<String>,
    max_length: Option<u32>,
}

/// How long a chain may grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainConfig {
    /// A full backup when the chain's is older than this.
    pub full_every: Option<Duration>,
    /// Incrementals after a full backup; 0: every backup is full.
    pub max_length: Option<u32>,
}

impl ChainConfig {
    /// Checks a `[chain]` table.
    ///
    /// # Errors
    ///
    /// A message naming the bad key.
    pub fn from_raw(raw: RawChain) -> std::result::Result<ChainConfig, String> {
        let full_every = raw
            .full_every
            .as_deref()
            .map(crate::time::parse_duration)
            .transpose()
            .map_err(|e| format!("chain.full_every: {e}"))?;
        Ok(ChainConfig {
            full_every,
            max_length: raw.max_length,
        })
    }

    /// This table with what it leaves out taken from `defaults`.
    pub fn or_defaults(&self, defaults: &ChainConfig) -> ChainConfig {
        ChainConfig {
            full_every: self.full_every.or(defaults.full_every),
            max_length: self.max_length.or(defaults.max_length),
        }
    }

    fn full_every(&self) -> Duration {
        self.full_every.unwrap_or(DEFAULT_FULL_EVERY)
    }

    fn max_length(&self) -> u32 {
        self.max_length.unwrap_or(DEFAULT_MAX_LENGTH)
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChainRequest {
    /// Incremental when there is a parent to build on, else full.
    #[default]
    Auto,
    /// `--full`.
    Full,
    /// `--incremental`: fail when there is no parent.
    Incremental,
}

/// What a new backup is built on.
pub struct Parent {
    /// The manifest's `chain`.
    pub links: ChainLinks,
    /// The parent's index, twice: for the scan and for the writer.
    pub for_scan: Previous,
    pub for_writer: Previous,
}

/// The decision: a parent, or why the backup is full.
pub enum Choice {
    Incremental(Box<Parent>),
    Full(Option<String>),
}

/// What a backup is, as far as choosing a parent goes.
pub struct Wanted<'a> {
    pub instance: &'a str,
    /// The resolved root, as the catalog's `origin` records it.
    pub origin: &'a str,
    pub profile: Option<&'a str>,
    /// The sources' names, in order.
    pub sources: Vec<Vec<u8>>,
    pub config: ChainConfig,
    pub request: ChainRequest,
    /// Where in the store the instance's archives are (the start of their
    /// locations), when the archive goes there: only those form chains.
    pub to_store: Option<String>,
}

/// Chooses what a new backup builds on.
///
/// # Errors
///
/// `--incremental` without a parent to build on is a usage error; a
/// catalog error fails.
pub fn choose(ctx: &Context<'_>, catalog: &Catalog, wanted: &Wanted<'_>) -> Result<Choice> {
    // Said only when an incremental was asked for: a backup written
    // elsewhere is full by design, not for a reason worth a note each time.
    let elsewhere = "only backups in the store form chains (--output writes a full backup)";
    let why_full = match wanted.request {
        ChainRequest::Full => return Ok(Choice::Full(None)),
        ChainRequest::Auto if wanted.to_store.is_none() => None,
        ChainRequest::Incremental if wanted.to_store.is_none() => Some(elsewhere.to_string()),
        _ if wanted.config.max_length() == 0 => None,
        _ => match parent_of(ctx, catalog, wanted)? {
            Ok(parent) => return Ok(Choice::Incremental(Box::new(parent))),
            // The first backup: nothing to say.
            Err(why) if why.is_empty() => None,
            Err(why) => Some(why),
        },
    };
    if wanted.request == ChainRequest::Incremental {
        let why = why_full.unwrap_or_else(|| {
            if wanted.config.max_length() == 0 {
                "[chain] max_length is 0".into()
            } else {
                "there is no earlier backup of this root and profile in the store".into()
            }
        });
        return Err(Error::usage(
            format!("no incremental backup of {}: {why}", wanted.instance),
            Some("run it without --incremental to make a full backup".into()),
        ));
    }
    Ok(Choice::Full(why_full))
}

/// The parent a backup builds on, or why there is none.
fn parent_of(
    ctx: &Context<'_>,
    catalog: &Catalog,
    wanted: &Wanted<'_>,
) -> Result<std::result::Result<Parent, String>> {
    let (parent, links) = match candidate(ctx, catalog, wanted)? {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    match open_index(ctx, &parent, &wanted.sources) {
        Ok((a, b)) => Ok(Ok(Parent {
            links,
            for_scan: a,
            for_writer: b,
        })),
        Err(why) => Ok(Err(format!("the index of {} {why}", parent.id))),
    }
}

/// What a dry run says a backup would be: the links of an incremental,
/// or why it would be full (empty for a first backup). Reads the catalog
/// and the archives' sizes and sidecars only: the index cache is neither
/// read nor rebuilt, so the real backup may still be full if it cannot be.
///
/// # Errors
///
/// Fails on a catalog error.
pub fn preview(
    ctx: &Context<'_>,
    catalog: &Catalog,
    wanted: &Wanted<'_>,
) -> Result<std::result::Result<ChainLinks, String>> {
    match wanted.request {
        ChainRequest::Full => return Ok(Err(String::new())),
        _ if wanted.to_store.is_none() || wanted.config.max_length() == 0 => {
            return Ok(Err(String::new()));
        }
        _ => {}
    }
    Ok(candidate(ctx, catalog, wanted)?.map(|(_, links)| links))
}

/// The backup a new one would build on and its links, as the catalog and
/// the store say, or why there is none.
fn candidate(
    ctx: &Context<'_>,
    catalog: &Catalog,
    wanted: &Wanted<'_>,
) -> Result<std::result::Result<(BackupRecord, ChainLinks), String>> {
    let rows = catalog.list(&ListFilter {
        instance: Some(wanted.instance.to_string()),
        ..Default::default()
    })?;
    let store = wanted.to_store.as_deref().unwrap_or_default();
    // The newest backup of this root and profile in the store that is or
    // was there (failed attempts never were): the parent, or the reason
    // there is none. Rows come newest first.
    let Some(parent) = rows
        .iter()
        .filter(|r| {
            matches!(
                r.status,
                Status::Available | Status::Missing | Status::Corrupt
            )
        })
        .filter(|r| r.origin == wanted.origin && r.about.profile.as_deref() == wanted.profile)
        .find(|r| r.location.as_deref().is_some_and(|l| l.starts_with(store)))
    else {
        // The first backup: nothing to say.
        return Ok(Err(String::new()));
    };
    if parent.status != Status::Available {
        return Ok(Err(format!(
            "the newest backup, {}, is {}",
            parent.id, parent.status
        )));
    }
    if let Err(why) = usable(ctx, parent) {
        return Ok(Err(format!("the newest backup, {}, {why}", parent.id)));
    }
    Ok(links_after(ctx, catalog, parent, &wanted.config)?.map(|links| (parent.clone(), links)))
}

/// Why `row`'s archive cannot be built on, if it cannot: not where the
/// catalog says, not the size it recorded, a sidecar that disagrees, or
/// a failed verification.
fn usable(ctx: &Context<'_>, row: &BackupRecord) -> std::result::Result<(), String> {
    if row.verify_ok == Some(false) {
        return Err("failed verification".into());
    }
    let Some(location) = row.location.as_deref() else {
        return Err("has no archive".into());
    };
    let at = ctx
        .config
        .stores
        .locate(location)
        .map_err(|e| e.to_string())?;
    let size = match at.size() {
        Ok(Some(size)) => size,
        Ok(None) => return Err("is not in the store".into()),
        Err(e) => return Err(format!("is not in the store ({e})")),
    };
    if Some(size) != row.size {
        return Err(format!(
            "is {size} bytes, not the {} the catalog recorded",
            row.size.unwrap_or(0)
        ));
    }
    let sidecar = crate::archive::reader::read_sidecar(&at).map_err(|e| e.to_string())?;
    if sidecar.is_none() || sidecar != row.sha256 {
        return Err("has a sidecar that disagrees with the catalog".into());
    }
    Ok(())
}

/// The chain links of a backup built on `parent`, or why none may be.
fn links_after(
    ctx: &Context<'_>,
    catalog: &Catalog,
    parent: &BackupRecord,
    config: &ChainConfig,
) -> Result<std::result::Result<ChainLinks, String>> {
    let sha = |r: &BackupRecord| r.sha256.clone().unwrap_or_default();
    let parent_ref = ArchiveRef {
        id: parent.id.clone(),
        sha256: sha(parent),
    };
    let base = match &parent.base {
        None => parent.clone(),
        Some(base_id) => match catalog.get(base_id)? {
            Some(b) if b.status == Status::Available => b,
            _ => {
                return Ok(Err(format!(
                    "the chain of {} has lost its full backup",
                    parent.id
                )));
            }
        },
    };
    // Every link of the parent's chain must still be there.
    let mut link = parent.clone();
    while let Some(up) = link.parent.clone() {
        match catalog.get(&up)? {
            Some(row) if row.status == Status::Available && usable(ctx, &row).is_ok() => link = row,
            _ => {
                return Ok(Err(format!("the chain of {} is broken at {up}", parent.id)));
            }
        }
    }
    let position = parent.chain_position + 1;
    if position > config.max_length() {
        return Ok(Err(format!(
            "the chain of {} is {} incrementals long, [chain] max_length",
            base.id, parent.chain_position
        )));
    }
    if let Some(age) = age_of(&base.created_at)
        && age > config.full_every()
    {
        return Ok(Err(format!(
            "the chain's full backup, {}, is older than [chain] full_every ({})",
            base.id,
            crate::time::human_duration(config.full_every())
        )));
    }
    Ok(Ok(ChainLinks {
        parent: parent_ref,
        base: ArchiveRef {
            id: base.id.clone(),
            sha256: sha(&base),
        },
        position,
    }))
}

fn age_of(created_at: &str) -> Option<Duration> {
    let t: jiff::Timestamp = created_at.parse().ok()?;
    let secs = crate::time::now().as_second() - t.as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

/// The cache file of `instance`'s newest index.
pub fn cache_path(home: &Path, instance: &str) -> PathBuf {
    home.join("index").join(format!("{instance}.zst"))
}

/// Saves `index` (of backup `id`) as the cache of `instance`.
///
/// # Errors
///
/// Fails when the file cannot be written.
pub fn save_cache(home: &Path, instance: &str, index: &Compressed) -> Result<()> {
    let path = cache_path(home, instance);
    fsutil::create_private_dir_all(&fsutil::parent_dir(&path))?;
    fsutil::atomic_write(&path, &index.bytes, 0o600)
}

/// Opens the parent's index twice, from the cache or, when the cache is
/// not the parent's or is damaged, rebuilt from the parent's archive.
fn open_index(
    ctx: &Context<'_>,
    parent: &BackupRecord,
    sources: &[Vec<u8>],
) -> std::result::Result<(Previous, Previous), String> {
    let cache = cache_path(&ctx.layout.home, &parent.instance);
    if check_cache(&cache).as_deref() != Ok(parent.id.as_str()) {
        rebuild(ctx, parent, &cache)?;
    }
    let id = check_cache(&cache).map_err(|e| format!("cannot be read: {e}"))?;
    if id != parent.id {
        return Err(format!("names another backup ({id})"));
    }
    let open = || -> std::result::Result<Previous, String> {
        let reader = open_cache(&cache)?;
        Ok(Previous::new(reader, sources.to_vec()))
    };
    Ok((open()?, open()?))
}

fn open_cache(path: &Path) -> std::result::Result<BoxedReader, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    index::open_compressed(BufReader::with_capacity(1 << 20, file)).map_err(|e| e.to_string())
}

/// Checks the cache whole without parsing it (the zstd frame's checksum
/// covers every byte; the lines are checked as the scan reads them) and
/// gives the id it is of.
fn check_cache(path: &Path) -> std::result::Result<String, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    zstd::stream::copy_decode(BufReader::with_capacity(1 << 20, file), std::io::sink())
        .map_err(|e| format!("is damaged ({e})"))?;
    Ok(open_cache(path)?.id.clone())
}

/// Writes the cache anew from the index member of `parent`'s archive.
fn rebuild(
    ctx: &Context<'_>,
    parent: &BackupRecord,
    cache: &Path,
) -> std::result::Result<(), String> {
    let location = parent.location.as_deref().unwrap_or_default();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).map_err(|e| e.to_string())?;
    let _ = enc.include_checksum(true);
    let found = ctx
        .config
        .stores
        .locate(location)
        .and_then(|at| crate::archive::reader::copy_index(&at, ctx.keys, &mut enc))
        .map_err(|e| format!("is not cached, and its archive cannot be read: {}", e))?;
    if !found {
        return Err("does not exist: the archive was written before chains".into());
    }
    let bytes = enc.finish().map_err(|e| e.to_string())?;
    fsutil::create_private_dir_all(&fsutil::parent_dir(cache)).map_err(|e| e.to_string())?;
    fsutil::atomic_write(cache, &bytes, 0o600).map_err(|e| e.to_string())
}
