//! Reading an incremental backup's chain: the archives that hold its
//! unchanged files, found before anything is read and read alongside it.
//!
//! [`resolve`] follows the manifests from the incremental down to its full
//! backup, each link's archive found through the catalog (or beside the
//! incremental) and checked against its sidecar and the SHA-256 its child
//! recorded. [`ChainReader`] then streams every link at once, each on its
//! own reader and decoder threads, and gives the walk over the incremental
//! each unchanged file from the nearest link that stores it. Every link is
//! read and hashed to its end, so an archive altered after its sidecar was
//! checked is still caught.

use std::cmp::Ordering;
use std::io;
use std::path::Path;
use std::thread::{Scope, ScopedJoinHandle};

use crossbeam_channel::bounded;

use crate::archive::format::{ArchiveError, CHECKSUMS_NAME, MANIFEST_NAME, Manifest};
use crate::archive::frames::{Partial, PartialReader};
use crate::archive::index::source_cmp;
use crate::archive::reader::{
    ChannelReader, DataSource, Holders, decode_error, open_stream, parse_manifest, read_doc,
    read_full, read_manifest, read_sidecar, read_stage, refill, sniff,
};
use crate::archive::tarread::{Entry, Kind, TarReader};
use crate::catalog::Catalog;
use crate::encryption::Keys;
use crate::error::{Error, Result};
use crate::progress::Cancel;
use crate::stores::{Location, Stores};

/// Chunks (of 1 MiB) queued between the stages of one link.
const LINK_QUEUE: usize = 1;

/// One archive of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: String,
    pub location: Location,
    /// The SHA-256 its child recorded for it.
    pub sha256: String,
    /// The catalog's SHA-256 of its frame table, when it has one.
    pub frames_sha256: Option<String>,
    /// A read of some of its sources only, its frames checked against
    /// its frame table (set by a restore of some sources).
    pub partial: Option<Partial>,
}

fn broken(path: &Path, detail: String) -> Error {
    ArchiveError::BrokenChain {
        path: path.to_path_buf(),
        detail,
        damaged: None,
    }
    .into()
}

/// Why the catalog says backup `id` failed its last verification, if it
/// does.
fn failed_verification(catalog: Option<&Catalog>, id: &str) -> Option<String> {
    let row = catalog?.get(id).ok().flatten()?;
    (row.verify_ok == Some(false)).then(|| row.verify_error.unwrap_or_default())
}

/// The chain broken because its archive `id` is damaged: its bytes are
/// not the ones recorded, or it cannot be read.
fn damaged(path: &Path, id: &str, detail: String) -> Error {
    ArchiveError::BrokenChain {
        path: path.to_path_buf(),
        detail,
        damaged: Some(id.to_string()),
    }
    .into()
}

/// The links an incremental needs, its parent first and its full backup
/// last; empty for a full backup. Each is found, its sidecar agrees with
/// the SHA-256 its child recorded, and its manifest is the one named.
///
/// # Errors
///
/// A link that is missing, altered or not what its child names breaks the
/// chain (exit 4), named in the error.
pub fn resolve(
    newest_at: &Location,
    manifest: &Manifest,
    (catalog, stores): (Option<&Catalog>, &Stores),
    keys: &Keys,
) -> Result<Vec<Link>> {
    let newest = newest_at.label();
    let mut links: Vec<Link> = Vec::new();
    let mut child = manifest.clone();
    while let Some(chain) = child.chain.clone() {
        let want = &chain.parent;
        if links.iter().any(|l| l.id == want.id) || links.len() > 10_000 {
            return Err(broken(
                newest,
                format!("{} names itself as an ancestor", want.id),
            ));
        }
        let (at, frames_sha256) =
            locate(newest_at, &want.id, (catalog, stores)).ok_or_else(|| {
                broken(
                    newest,
                    format!(
                        "{}, which {} is built on, is not in the store",
                        want.id, child.id
                    ),
                )
            })?;
        let path = at.label().to_path_buf();
        if let Some(why) = failed_verification(catalog, &want.id) {
            return Err(damaged(
                newest,
                &want.id,
                format!(
                    "{}, which {} is built on, failed its last verification: {why}",
                    want.id, child.id
                ),
            ));
        }
        let sidecar = read_sidecar(&at)?;
        if sidecar.as_deref() != Some(want.sha256.as_str()) {
            return Err(broken(
                newest,
                format!(
                    "{} is not the archive {} was built on (its sidecar says {}, {} recorded {})",
                    path.display(),
                    child.id,
                    sidecar.as_deref().unwrap_or("nothing"),
                    child.id,
                    want.sha256
                ),
            ));
        }
        let parent = read_manifest(&at, keys)?;
        if parent.id != want.id {
            return Err(broken(
                newest,
                format!(
                    "{} holds backup {}, not {}",
                    path.display(),
                    parent.id,
                    want.id
                ),
            ));
        }
        links.push(Link {
            id: want.id.clone(),
            location: at,
            sha256: want.sha256.clone(),
            frames_sha256,
            partial: None,
        });
        child = parent;
    }
    if let (Some(base), Some(last)) = (&manifest.chain, links.last())
        && base.base.id != last.id
    {
        return Err(broken(
            newest,
            format!(
                "its chain ends at {}, not at its full backup {}",
                last.id, base.base.id
            ),
        ));
    }
    Ok(links)
}

/// Where the archive of backup `id` is: the catalog's location, else a
/// file (or object) named after the id beside `newest`; and the SHA-256
/// of its frame table the catalog records.
fn locate(
    newest: &Location,
    id: &str,
    (catalog, stores): (Option<&Catalog>, &Stores),
) -> Option<(Location, Option<String>)> {
    if let Some(Ok(Some(row))) = catalog.map(|c| c.get(id))
        && let Some(loc) = row.location
        && let Ok(found) = stores.locate(&loc)
        && matches!(found.size(), Ok(Some(_)))
    {
        return Some((found, row.frames_sha256));
    }
    let prefix = format!("{id}.tar");
    let name = newest.siblings().ok()?.into_iter().find(|name| {
        name.strip_prefix(&prefix).is_some_and(|rest| {
            matches!(rest, "" | ".zst" | ".gz" | ".age" | ".zst.age" | ".gz.age")
        })
    })?;
    newest.sibling(&name).map(|at| (at, None))
}

/// One link being read: its tar stream, the entry looked at last, and the
/// thread hashing its file.
struct Stream<'s> {
    link: Link,
    tar: Option<TarReader<ChannelReader>>,
    peeked: Option<Entry>,
    /// The whole file's SHA-256; `None` for a partial read, whose frames
    /// are checked as they are read.
    hashed: Option<ScopedJoinHandle<'s, Result<String>>>,
    decoded: ScopedJoinHandle<'s, Result<()>>,
}

/// Every link of a chain, read in step with the walk over the incremental.
pub struct ChainReader<'s> {
    streams: Vec<Stream<'s>>,
    sources: Vec<Vec<u8>>,
}

impl<'s> ChainReader<'s> {
    /// Starts reading `links` (parent first) on threads of `scope`.
    ///
    /// # Errors
    ///
    /// Fails when a link cannot be opened or does not start with the
    /// manifest its child names.
    pub fn start<'e>(
        scope: &'s Scope<'s, 'e>,
        links: &'e [Link],
        sources: Vec<Vec<u8>>,
        (keys, cancel): (&'e Keys, &'e Cancel),
    ) -> Result<ChainReader<'s>> {
        let mut streams = Vec::with_capacity(links.len());
        for link in links {
            streams.push(open(scope, link, keys, cancel)?);
        }
        Ok(ChainReader { streams, sources })
    }

    /// Reads every link to its end and checks it is the archive its child
    /// recorded.
    ///
    /// # Errors
    ///
    /// A link whose SHA-256 is not the recorded one breaks the chain.
    pub fn finish(self) -> Result<()> {
        let mut first = None;
        for mut s in self.streams {
            // Closing the tar stream lets the decoder stop; the file is
            // still read to its end and hashed.
            s.tar = None;
            let decoded = s.decoded.join().expect("decoder thread panicked");
            let Some(hashed) = s.hashed else {
                // A frame that failed its check.
                if let Err(e) = decoded {
                    first.get_or_insert(e);
                }
                continue;
            };
            let outcome = hashed.join().expect("reader thread panicked");
            let err = match outcome {
                Ok(sha) if sha == s.link.sha256 => continue,
                Ok(sha) => damaged(
                    s.link.location.label(),
                    &s.link.id,
                    format!(
                        "{} is damaged: its SHA-256 is {sha}, but {} was recorded",
                        s.link.id, s.link.sha256
                    ),
                ),
                Err(e) => e,
            };
            first.get_or_insert(err);
        }
        first.map_or(Ok(()), Err)
    }
}

/// Opens one link: a thread reads and hashes the file, one decrypts and
/// decompresses it, and the manifest is read here.
fn open<'s, 'e>(
    scope: &'s Scope<'s, 'e>,
    link: &'e Link,
    keys: &'e Keys,
    cancel: &'e Cancel,
) -> Result<Stream<'s>> {
    let at = &link.location;
    let path = at.label();
    if let Some(partial) = &link.partial {
        return open_partial(scope, link, partial, cancel);
    }
    let sniffed = sniff(at)?;
    // Shallow queues: a chain of N links holds N of these at once, and a
    // link mostly waits for the incremental to reach its next file.
    let (raw_tx, raw_rx) = bounded::<Vec<u8>>(LINK_QUEUE);
    let (plain_tx, plain_rx) = bounded::<Vec<u8>>(LINK_QUEUE);
    let (raw_spent_tx, raw_spent_rx) = bounded::<Vec<u8>>(LINK_QUEUE);
    let (plain_spent_tx, plain_spent_rx) = bounded::<Vec<u8>>(LINK_QUEUE);
    let hashed = Some(scope.spawn(move || -> Result<String> {
        read_stage(at, cancel, (&raw_tx, &raw_spent_rx), &|_| {}).map(|(sha, _)| sha)
    }));
    let decoded = scope.spawn(move || -> Result<()> {
        let input = ChannelReader::new(raw_rx, raw_spent_tx);
        let (codec, mut stream, failure) = open_stream(path, sniffed, input, keys)?;
        loop {
            let mut buf = refill(&plain_spent_rx);
            let n = read_full(&mut stream, &mut buf)
                .map_err(|e| decode_error(path, codec, &failure, e.to_string()))?;
            buf.truncate(n);
            if n == 0 || plain_tx.send(buf).is_err() {
                return Ok(());
            }
        }
    });
    start_stream(link, (plain_rx, plain_spent_tx), hashed, decoded)
}

/// [`open`] for a link read partly: a thread reads its frames, checks
/// them against its frame table and sends on the parts it takes.
fn open_partial<'s, 'e>(
    scope: &'s Scope<'s, 'e>,
    link: &'e Link,
    partial: &'e Partial,
    cancel: &'e Cancel,
) -> Result<Stream<'s>> {
    let (plain_tx, plain_rx) = bounded::<Vec<u8>>(LINK_QUEUE);
    let (plain_spent_tx, plain_spent_rx) = bounded::<Vec<u8>>(LINK_QUEUE);
    let decoded = scope.spawn(move || -> Result<()> {
        let path = link.location.label();
        let mut plain = PartialReader::new(&link.location, partial, &|_| {})
            .map_err(|e| corrupt_link(link, &e))?;
        loop {
            cancel.check()?;
            let mut buf = refill(&plain_spent_rx);
            let n = match read_full(&mut plain, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    return Err(plain.failed.take().unwrap_or_else(|| {
                        broken(path, format!("{} cannot be read: {e}", link.id))
                    }));
                }
            };
            buf.truncate(n);
            if n == 0 || plain_tx.send(buf).is_err() {
                return Ok(());
            }
        }
    });
    start_stream(link, (plain_rx, plain_spent_tx), None, decoded)
}

/// A link's stream once its threads run: its manifest read and checked.
fn start_stream<'s>(
    link: &Link,
    (plain_rx, plain_spent_tx): (
        crossbeam_channel::Receiver<Vec<u8>>,
        crossbeam_channel::Sender<Vec<u8>>,
    ),
    hashed: Option<ScopedJoinHandle<'s, Result<String>>>,
    decoded: ScopedJoinHandle<'s, Result<()>>,
) -> Result<Stream<'s>> {
    let path = link.location.label();
    let mut tar = TarReader::new(ChannelReader::new(plain_rx, plain_spent_tx));
    let read = (|| {
        let first = tar
            .next_entry()
            .map_err(|e| corrupt_link(link, &e))?
            .ok_or_else(|| broken(path, format!("{} is empty", link.id)))?;
        parse_manifest(path, &read_doc(path, &mut tar, &first, MANIFEST_NAME)?)
    })();
    let manifest = match read {
        Ok(manifest) => manifest,
        Err(e) => return Err(explained(link, hashed, e)),
    };
    if manifest.id != link.id {
        return Err(broken(
            path,
            format!("{} holds backup {}", path.display(), manifest.id),
        ));
    }
    Ok(Stream {
        link: link.clone(),
        tar: Some(tar),
        peeked: None,
        hashed,
        decoded,
    })
}

/// A link that cannot be read whose bytes are not the recorded ones is
/// damaged: said so, rather than what reading it found.
fn explained(link: &Link, hashed: Option<ScopedJoinHandle<'_, Result<String>>>, e: Error) -> Error {
    let Some(Ok(sha)) = hashed.map(|h| h.join().expect("reader thread panicked")) else {
        return e;
    };
    if sha == link.sha256 {
        return e;
    }
    damaged(
        link.location.label(),
        &link.id,
        format!(
            "{} is damaged: its SHA-256 is {sha}, but {} was recorded",
            link.id, link.sha256
        ),
    )
}

fn corrupt_link(link: &Link, e: &io::Error) -> Error {
    broken(
        link.location.label(),
        format!("{} cannot be read: {e}", link.id),
    )
}

/// What a walk of an incremental with the chain's archives read beside it
/// (`whole`, from [`ChainReader::finish`]) comes to: a link whose bytes are
/// not the recorded ones explains whatever the walk found wrong next.
pub fn chain_outcome<T>(walked: Result<T>, whole: Result<()>) -> Result<T> {
    match (walked, whole) {
        (_, Err(e)) if is_damaged(&e) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(v), whole) => whole.map(|()| v),
    }
}

/// The archive of a chain an error found damaged, if it names one.
pub fn damaged_link(e: &Error) -> Option<&str> {
    match e {
        Error::Archive(ArchiveError::BrokenChain {
            damaged: Some(id), ..
        }) => Some(id),
        _ => None,
    }
}

fn is_damaged(e: &Error) -> bool {
    damaged_link(e).is_some()
}

impl Holders for ChainReader<'_> {
    fn find(&mut self, member: &[u8]) -> Result<Option<(Entry, &mut dyn DataSource)>> {
        let sources = &self.sources;
        for (i, s) in self.streams.iter_mut().enumerate() {
            if advance(s, member, sources)? {
                let s = &mut self.streams[i];
                let entry = s.peeked.take().expect("advance found it");
                let tar = s.tar.as_mut().expect("open while found");
                return Ok(Some((entry, tar as &mut dyn DataSource)));
            }
        }
        Ok(None)
    }
}

/// Moves `s` forward to `member`; whether it stores it as a file.
fn advance(s: &mut Stream<'_>, member: &[u8], sources: &[Vec<u8>]) -> Result<bool> {
    loop {
        let Some(tar) = s.tar.as_mut() else {
            return Ok(false);
        };
        if s.peeked.is_none() {
            let next = tar.next_entry().map_err(|e| corrupt_link(&s.link, &e))?;
            match next {
                Some(e) if e.path != CHECKSUMS_NAME.as_bytes() => s.peeked = Some(e),
                // Past the payload: nothing more to find here.
                _ => {
                    s.tar = None;
                    return Ok(false);
                }
            }
        }
        let e = s.peeked.as_ref().expect("just read");
        match source_cmp(sources, &e.path, member) {
            Ordering::Less => s.peeked = None,
            Ordering::Equal => return Ok(e.kind == Kind::File),
            Ordering::Greater => return Ok(false),
        }
    }
}
