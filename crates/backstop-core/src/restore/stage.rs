//! Staging: unpacking an archive beneath private staging directories, one
//! per source, each next to the place its source goes (so the swap is a
//! rename on one filesystem). The archive is verified by the same walk as
//! `verify`; staged content only counts once that walk has finished without
//! error.
//!
//! Two threads share the work. The walk's thread parses the archive and
//! hashes every file (the walk's own checks); a writer thread makes every
//! change to the filesystem — directories, files, links, metadata — in
//! archive order, through the confined handles. Creating inodes is most of a
//! restore's system time, and this keeps it off the parser's path.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use sha2::{Digest, Sha256};

use crate::archive::Manifest;
use crate::archive::format::SourceManifest;
use crate::archive::read_entry::file_xattrs;
use crate::archive::reader::{Content, Visitor};
use crate::archive::tarread::{Entry, Kind};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::handle;
use crate::progress::Cancel;
use crate::restore::confine::Confined;
use crate::restore::diff::Why;
use crate::restore::journal::{is_label, is_trusted, own_xattrs};
use crate::source::exclude::Patterns;

/// Which parts of a backup a restore writes.
pub struct Selection {
    /// Source names to restore; all when empty.
    pub only: Vec<String>,
    /// Paths (relative to the instance root) not written: never-restore
    /// paths and `--exclude` patterns.
    pub keep: Patterns,
    /// The `--exclude` patterns alone, to say why a path is kept.
    pub excluded: Patterns,
    /// Paths (relative to the root) whose files are made 0600 whatever the
    /// archive says.
    pub secrets: Patterns,
}

impl Selection {
    /// Why the rules of this restore keep `rel` (relative to the root).
    pub fn why_kept(&self, rel: &Path, is_dir: bool) -> Option<Why> {
        self.keep.matches(rel, is_dir)?;
        Some(if self.excluded.matches(rel, is_dir).is_some() {
            Why::Excluded
        } else {
            Why::NeverRestore
        })
    }

    /// Whether source `name` is restored.
    pub fn source_selected(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// The path of a member relative to the instance root, from its source.
pub fn root_relative(source: &SourceManifest, member: &[u8]) -> PathBuf {
    let rel = member
        .strip_prefix(source.name.as_bytes())
        .map(|r| r.strip_prefix(b"/").unwrap_or(r))
        .unwrap_or(member);
    let base = if source.path == "." {
        PathBuf::new()
    } else {
        PathBuf::from(&source.path)
    };
    if rel.is_empty() {
        base
    } else {
        base.join(OsStr::from_bytes(rel))
    }
}

/// What was staged.
#[derive(Debug, Default, Clone)]
pub struct StageCounts {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Entries passed over: other sources, kept paths.
    pub skipped: u64,
    /// Files already in place as the backup has them, linked into the
    /// staged tree instead of written, and their bytes.
    pub linked: u64,
    pub linked_bytes: u64,
    /// Of those bytes, the ones not decoded: the archive's frames inside
    /// large files already in place, passed over ([`crate::archive::skip`]).
    pub undecoded_bytes: u64,
}

/// Metadata set on an entry once it exists (for directories: once
/// everything inside exists).
struct Meta {
    mode: u32,
    /// Owner and group, only when restoring as root.
    owner: Option<(u32, u32)>,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One change for the writer thread, in archive order.
enum Op {
    /// A directory.
    Dir {
        source: String,
        path: Vec<u8>,
        meta: Meta,
    },
    Symlink {
        source: String,
        path: Vec<u8>,
        target: Vec<u8>,
        meta: Meta,
    },
    HardLink {
        source: String,
        path: Vec<u8>,
        target: Vec<u8>,
    },
    /// A small file, complete.
    File {
        source: String,
        path: Vec<u8>,
        data: Vec<u8>,
        meta: Meta,
    },
    /// A large file starts; `Data` follows, then `Close`. With `prefix`,
    /// its first bytes are those of a live file, found equal while its
    /// change time was the one given.
    Open {
        source: String,
        path: Vec<u8>,
        sparse: Option<Vec<(u64, u64)>>,
        prefix: Option<Prefix>,
    },
    /// A live file whose content, mode, owner and time are the backup's:
    /// linked into the staged tree.
    /// A live file found as the backup has it while its change time was
    /// `ctime`: linked into the staged tree, unless it changed since.
    Link {
        source: String,
        path: Vec<u8>,
        live: File,
        meta: Meta,
        ctime: u64,
    },
    Data(Vec<u8>),
    Close {
        size: u64,
        meta: Meta,
    },
}

/// Files up to this size travel to the writer in one message.
const SMALL: u64 = 1 << 20;
/// The chunks of larger files.
const CHUNK: usize = 1 << 20;
/// Messages in flight to the writer (bounding memory to about this many MiB).
const WRITER_QUEUE: usize = 16;

/// Writes the selected entries of an archive beneath the staging
/// directories, one [`Confined`] per selected source.
pub struct Stager<'a> {
    sources: HashMap<String, SourceManifest>,
    selection: &'a Selection,
    /// Whether to restore owners (only root may).
    as_root: bool,
    /// Members restored as files, by a 64-bit hash of their path, for hard
    /// links to point at: a few bytes a file rather than its path. (A
    /// collision could only make a link to a file that was left out be
    /// attempted, which fails on the missing file: never a wrong link.)
    files: HashSet<u64>,
    /// The live trees, by source, where files already as the backup has
    /// them are looked for.
    live: HashMap<String, Confined>,
    /// Things that could not be restored exactly (xattrs the filesystem
    /// refuses, hard links whose first name was not restored).
    pub warnings: Vec<String>,
    /// Hard links that could not be restored because the file they share
    /// was excluded: root-relative paths the restore must leave as they are.
    pub unrestorable: Vec<PathBuf>,
    pub counts: StageCounts,
    cancel: &'a Cancel,
    tx: Option<Sender<Op>>,
    writer: Option<JoinHandle<std::result::Result<Written, Error>>>,
    /// The inodes linked from the live tree, with their change time once
    /// linked: a later change means something wrote them meanwhile. For a
    /// source restored in place, the live files and directories found as
    /// the backup has them, which are not staged at all.
    pub linked: HashMap<u64, u64>,
    /// Sources restored exactly in place (see [`crate::restore::steps::InPlace`]).
    in_place: HashSet<String>,
    /// Files and directories of those sources left in place, by
    /// [`path_key`]: for hard links to them to link the live file, and for
    /// the merge to tell an entry put in one's place meanwhile.
    unstaged: HashSet<u64>,
    /// How many of them each source has, for the merge to tell one gone.
    left_counts: HashMap<String, u64>,
    /// The live file's bytes, to compare with the archive's.
    compare_buffer: Vec<u8>,
    /// Directories left in place, not made in staging yet, outermost
    /// first: made when something is staged inside, dropped when the walk
    /// leaves them.
    lazy: Vec<(String, Vec<u8>, Meta)>,
}

/// What staging left where it was, in the sources restored in place:
/// files and directories found as the backup has them.
#[derive(Debug, Default)]
pub struct Left {
    /// Their members, by [`path_key`].
    pub keys: HashSet<u64>,
    /// How many each source has.
    pub counts: HashMap<String, u64>,
}

/// The first `len` bytes of a live file, found equal to the backup's
/// while its change time was `ctime`.
struct Prefix {
    live: File,
    len: u64,
    ctime: u64,
}

/// What the writer thread hands back.
struct Written {
    warnings: Vec<String>,
    linked: HashMap<u64, u64>,
}

impl<'a> Stager<'a> {
    /// A stager writing source `name` beneath `targets[name]`. Sources in
    /// `in_place` stage only what differs from their live tree.
    pub fn new(
        manifest: &Manifest,
        targets: HashMap<String, Confined>,
        live: HashMap<String, Confined>,
        in_place: HashSet<String>,
        selection: &'a Selection,
        cancel: &'a Cancel,
    ) -> Stager<'a> {
        let (tx, rx) = bounded(WRITER_QUEUE);
        let writer = std::thread::spawn(move || Writer::new(targets).run(rx));
        Stager {
            sources: manifest
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            selection,
            as_root: rustix::process::geteuid().is_root(),
            files: HashSet::new(),
            live,
            warnings: Vec::new(),
            unrestorable: Vec::new(),
            counts: StageCounts::default(),
            cancel,
            tx: Some(tx),
            writer: Some(writer),
            linked: HashMap::new(),
            in_place,
            unstaged: HashSet::new(),
            left_counts: HashMap::new(),
            compare_buffer: Vec::new(),
            lazy: Vec::new(),
        }
    }

    /// The mode a restored entry gets: set-uid and set-gid only for root,
    /// 0600 for secrets.
    fn meta(&self, entry: &Entry, secret: bool) -> Meta {
        let mut mode = entry.mode & 0o7777;
        if !self.as_root {
            mode &= !0o6000;
        }
        if secret && entry.kind == Kind::File {
            mode = 0o600;
        }
        Meta {
            mode,
            owner: self.as_root.then_some((entry.uid as u32, entry.gid as u32)),
            mtime: (entry.mtime, entry.mtime_nsec),
            xattrs: entry.xattrs.clone(),
        }
    }

    /// Sends `op` to the writer, with the lazy directories it lies in
    /// first (outermost first); those it does not lie in are dropped.
    fn send(&mut self, op: Op) -> Result<()> {
        let place = match &op {
            Op::Dir { source, path, .. }
            | Op::Symlink { source, path, .. }
            | Op::HardLink { source, path, .. }
            | Op::Link { source, path, .. }
            | Op::File { source, path, .. }
            | Op::Open { source, path, .. } => Some((source, path)),
            Op::Data(_) | Op::Close { .. } => None,
        };
        if let Some((source, path)) = place {
            self.leave_lazy(source, path);
            for (source, path, meta) in std::mem::take(&mut self.lazy) {
                self.send_now(Op::Dir { source, path, meta })?;
            }
        }
        self.send_now(op)
    }

    /// A directory of a source restored in place, found as the backup has
    /// it: made in staging only once something is staged inside it, so
    /// that the writer's queue holds only what it has to do.
    fn lazy_dir(&mut self, source: String, path: Vec<u8>, meta: Meta) {
        self.leave_lazy(&source, &path);
        self.lazy.push((source, path, meta));
    }

    /// Drops the lazy directories `path` (in `source`) is not inside: the
    /// walk has left them.
    fn leave_lazy(&mut self, source: &str, path: &[u8]) {
        while let Some((s, dir, _)) = self.lazy.last() {
            let inside = s == source
                && path.len() > dir.len()
                && path.starts_with(dir)
                && path[dir.len()] == b'/';
            if inside {
                break;
            }
            self.lazy.pop();
        }
    }

    fn send_now(&mut self, op: Op) -> Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(op).is_ok());
        if !sent {
            // The writer stopped: it failed, and says why.
            return Err(self.stop_writer().err().unwrap_or(Error::Interrupted));
        }
        Ok(())
    }

    /// Lets the writer finish what it was given (directories' metadata
    /// last) and returns its first error.
    fn stop_writer(&mut self) -> Result<()> {
        self.tx = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Ok(written))) => {
                self.warnings.extend(written.warnings);
                self.linked.extend(written.linked);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(Error::io(
                "restoring",
                "staging",
                std::io::Error::other("the writer thread panicked"),
            )),
            None => Ok(()),
        }
    }

    /// Waits for every change to be made, then flushes every staging
    /// filesystem once.
    ///
    /// # Errors
    ///
    /// Fails with the writer's first error, or when the flush fails.
    pub fn finish(&mut self) -> Result<()> {
        self.stop_writer()
    }

    /// The members of sources restored in place that staging left where
    /// they were (files and directories found as the backup has them).
    pub fn take_left(&mut self) -> Left {
        Left {
            keys: std::mem::take(&mut self.unstaged),
            counts: std::mem::take(&mut self.left_counts),
        }
    }

    /// Leaves the live entry of `member` (inode `ino`, changed at `ctime`)
    /// where it is: never staged.
    fn leave(&mut self, source: &str, member: &[u8], (ino, ctime): (u64, u64)) {
        self.linked.insert(ino, ctime);
        if self.unstaged.insert(path_key(member)) {
            *self.left_counts.entry(source.to_owned()).or_default() += 1;
        }
    }

    fn file(
        &mut self,
        source: String,
        entry: &Entry,
        content: &mut Content<'_>,
        meta: Meta,
    ) -> Result<()> {
        if let Some(live) = self.live_twin(&source, entry, &meta)? {
            self.against_live(source, entry, content, meta, live)?;
        } else if entry.sparse.is_none() && entry.size <= SMALL {
            let mut data = vec![0u8; entry.size as usize];
            let mut n = 0;
            while n < data.len() {
                let k = content.read(&mut data[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            data.truncate(n);
            self.send(Op::File {
                source,
                path: entry.path.clone(),
                data,
                meta,
            })?;
        } else {
            self.send(Op::Open {
                source,
                path: entry.path.clone(),
                sparse: entry.sparse.clone(),
                prefix: None,
            })?;
            self.rest(entry, content, meta)?;
        }
        let key = path_key(&entry.path);
        if !self.unstaged.contains(&key) {
            // Each file in one set or the other: a few bytes a file.
            self.files.insert(key);
        }
        self.counts.files += 1;
        self.counts.bytes += entry.size;
        Ok(())
    }
}

impl Stager<'_> {
    /// Sends the rest of an open file's content, then closes it.
    fn rest(&mut self, entry: &Entry, content: &mut Content<'_>, meta: Meta) -> Result<()> {
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = content.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            self.send(Op::Data(chunk))?;
            self.cancel.check()?;
        }
        self.send(Op::Close {
            size: entry.size,
            meta,
        })
    }

    /// The live file at this entry's place when its type, size, mode,
    /// owner, time and link count say it may be the backup's own: then
    /// only its content is left to compare. Its extended attributes must
    /// be the backup's too (security labels aside, which a restore in place
    /// leaves to the system): one given an ACL since is not the backup's.
    /// Sparse files are always written.
    fn live_twin(
        &mut self,
        source: &str,
        entry: &Entry,
        meta: &Meta,
    ) -> Result<Option<(File, rustix::fs::Stat)>> {
        let below = below(source, &entry.path);
        if below.is_empty() || entry.sparse.is_some() || entry.size == 0 {
            return Ok(None);
        }
        let Some(live) = self.live.get_mut(source) else {
            return Ok(None);
        };
        let shown = live.display(below);
        let Some((file, st)) = live
            .open_existing(below)
            .map_err(|e| Error::io("reading", &shown, e))?
        else {
            return Ok(None);
        };
        let same = st.st_size as u64 == entry.size
            && st.st_nlink == 1
            && same_meta(&st, meta)
            // Attributes that cannot be read are not known to be the
            // backup's: the file is staged.
            && file_xattrs(&file).is_ok_and(|have| same_xattrs(have, &entry.xattrs));
        Ok(same.then_some((file, st)))
    }

    /// A directory of a source restored in place: lazy (made in staging
    /// only if something is staged inside) when the live one is a
    /// directory with the backup's mode, owner, time and extended
    /// attributes (labels aside), which is then recorded with its change
    /// time. The top is always made.
    fn dir_in_place(&mut self, source: &str, entry: &Entry, meta: &Meta) -> Result<bool> {
        let below = below(source, &entry.path);
        if below.is_empty() {
            return Ok(false);
        }
        let Some(live) = self.live.get_mut(source) else {
            return Ok(false);
        };
        let st = match live.stat(below) {
            Ok(st) => st,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(false);
            }
            Err(e) => return Err(Error::io("reading", live.display(below), e)),
        };
        if !handle::is_dir(&st) || !same_meta(&st, meta) {
            return Ok(false);
        }
        // Other extended attributes than the backup's: staged, so that the
        // steps give the live one the backup's.
        if own_xattrs(&live.display(below)).map_or(true, |have| !same_xattrs(have, &entry.xattrs)) {
            return Ok(false);
        }
        self.leave(source, &entry.path, (st.st_ino, change_time(&st)));
        Ok(true)
    }

    /// Reads the entry's content and the live file's side by side. Equal to
    /// the end: the live file is linked into the staged tree. Different
    /// from some chunk on: the staged file is written, its equal first
    /// part copied from the live file.
    fn against_live(
        &mut self,
        source: String,
        entry: &Entry,
        content: &mut Content<'_>,
        meta: Meta,
        (live, before): (File, rustix::fs::Stat),
    ) -> Result<()> {
        let shown = self.live[&source].display(below(&source, &entry.path));
        // One buffer for the whole restore, not one a file: a fresh
        // megabyte zeroed for each of many files was most of the time.
        let mut theirs = std::mem::take(&mut self.compare_buffer);
        theirs.resize(CHUNK, 0);
        let compared = vouch(&mut theirs, content, &live, &shown)
            .and_then(|()| self.compare(&mut theirs, content, &live, &shown));
        self.compare_buffer = theirs;
        let compared = compared?;
        if compared.is_some() && content.vouched() {
            return Err(unlike_its_sum(content, &live, &before, &shown));
        }
        if let Some((pos, differs_from)) = compared {
            self.send(Op::Open {
                source,
                path: entry.path.clone(),
                sparse: None,
                prefix: Some(Prefix {
                    live,
                    len: pos,
                    ctime: change_time(&before),
                }),
            })?;
            self.send(Op::Data(differs_from))?;
            return self.rest(entry, content, meta);
        }
        let after = rustix::fs::fstat(&live).map_err(|e| Error::io("reading", &shown, e.into()))?;
        if change_time(&after) != change_time(&before) {
            return Err(changed_meanwhile(&shown));
        }
        self.counts.linked += 1;
        self.counts.linked_bytes += entry.size;
        if self.in_place.contains(&source) {
            // Left where it is, never staged.
            self.leave(&source, &entry.path, (after.st_ino, change_time(&after)));
            return Ok(());
        }
        self.send(Op::Link {
            source,
            path: entry.path.clone(),
            live,
            meta,
            ctime: change_time(&after),
        })
    }

    /// Compares the entry's content with the live file, chunk by chunk:
    /// `None` when equal to the end, else the offset of the first chunk
    /// that differs and that chunk (the entry's bytes). The entry's bytes
    /// are compared where the archive's buffer holds them, not copied.
    fn compare(
        &mut self,
        theirs: &mut [u8],
        content: &mut Content<'_>,
        live: &File,
        shown: &Path,
    ) -> Result<Option<(u64, Vec<u8>)>> {
        let mut pos = 0u64;
        loop {
            let gap = content.gap()?;
            if gap > 0 {
                content.pass_gap(gap);
                pos += gap;
                self.counts.undecoded_bytes += gap;
                continue;
            }
            let ours = content.peek()?;
            let n = ours.len().min(theirs.len());
            if n == 0 {
                break;
            }
            let m = read_full_at(live, &mut theirs[..n], pos)
                .map_err(|e| Error::io("reading", shown, e))?;
            if m != n || ours[..n] != theirs[..n] {
                let differs = ours[..n].to_vec();
                content.consume(n)?;
                return Ok(Some((pos, differs)));
            }
            content.consume(n)?;
            pos += n as u64;
            self.cancel.check()?;
        }
        Ok(None)
    }
}

/// Vouches for a large file whose live twin hashes to the SHA-256 the
/// archive's index records for it ([`Content::sum`]): the archive's frames
/// inside it are then passed over, and what is still decoded of it is
/// compared with the live file as any file's is.
fn vouch(buf: &mut [u8], content: &mut Content<'_>, live: &File, shown: &Path) -> Result<()> {
    let Some(sum) = content.sum() else {
        return Ok(());
    };
    // The archive is read on while the live file is hashed.
    content.pass_over()?;
    let mut hasher = Sha256::new();
    let mut pos = 0u64;
    loop {
        let n = read_full_at(live, buf, pos).map_err(|e| Error::io("reading", shown, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    if <[u8; 32]>::from(hasher.finalize()) == sum {
        content.vouch()?;
        crate::failpoint::hit("restore.after-vouch")?;
    }
    Ok(())
}

/// A file vouched for whose decoded bytes are not the live file's: the
/// live file changed while it was compared, or the archive's bytes are
/// not those its index records.
fn unlike_its_sum(
    content: &Content<'_>,
    live: &File,
    before: &rustix::fs::Stat,
    shown: &Path,
) -> Error {
    match rustix::fs::fstat(live) {
        Ok(now) if change_time(&now) == change_time(before) => {
            content.corrupt("its bytes are not those its checksum records")
        }
        _ => changed_meanwhile(shown),
    }
}

/// Extended attributes but security labels (which a restore in place
/// leaves to the system), in order, to compare.
fn own(mut xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    xattrs.retain(|(name, _)| !is_label(name));
    xattrs.sort();
    xattrs
}

/// Whether a live entry's extended attributes are the backup's, as a
/// restore in place sees them: labels aside, and the `trusted.*` ones the
/// backup does not hold kept (a backup made by an ordinary user could not
/// see them). An ordinary user sees no `trusted.*` attribute at all, so
/// the backup's are not compared then.
fn same_xattrs(live: Vec<(Vec<u8>, Vec<u8>)>, backup: &[(Vec<u8>, Vec<u8>)]) -> bool {
    let root = euid() == 0;
    let mut backup = own(backup.to_vec());
    backup.retain(|(name, _)| root || !is_trusted(name));
    let mut live = own(live);
    live.retain(|(name, _)| !is_trusted(name) || backup.iter().any(|(n, _)| n == name));
    live == backup
}

/// Whether a live entry has the mode, owner (as root; else this user) and
/// time the backup gives it.
fn same_meta(st: &rustix::fs::Stat, meta: &Meta) -> bool {
    let euid = euid();
    let owner_ok = match meta.owner {
        Some((uid, gid)) => st.st_uid == uid && st.st_gid == gid,
        None => st.st_uid == euid,
    };
    st.st_mode & 0o7777 == meta.mode
        && owner_ok
        && (st.st_mtime, st.st_mtime_nsec as u32) == meta.mtime
}

/// Whether this process runs as root (its effective user id, asked once).
pub fn is_root() -> bool {
    euid() == 0
}

/// This process's effective user id, asked once: the comparisons ask for
/// it for every live entry, a system call each.
fn euid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// A member's source name (its first component) and the rest of its path.
pub fn split_member(member: &[u8]) -> (String, &[u8]) {
    let top = member
        .iter()
        .position(|&b| b == b'/')
        .unwrap_or(member.len());
    let rest = member[top..].strip_prefix(b"/").unwrap_or(&member[top..]);
    (String::from_utf8_lossy(&member[..top]).into_owned(), rest)
}

/// A 64-bit hash of a member's path.
pub fn path_key(member: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    member.hash(&mut h);
    h.finish()
}

/// The part of a member's path below its source's name.
fn below<'p>(source: &str, member: &'p [u8]) -> &'p [u8] {
    member
        .strip_prefix(source.as_bytes())
        .and_then(|r| r.strip_prefix(b"/"))
        .unwrap_or_default()
}

/// An inode's change time, which every write, chmod, chown or link moves,
/// in nanoseconds (one word a linked file).
pub fn change_time(st: &rustix::fs::Stat) -> u64 {
    (st.st_ctime as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(st.st_ctime_nsec)
}

/// Reads `buf.len()` bytes of `file` from `pos`, fewer only at its end.
fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], pos + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A live file that changed while the restore used it.
pub fn changed_meanwhile(shown: &Path) -> Error {
    Error::Refused {
        message: format!(
            "{} changed while the restore was reading it: something is writing in the destination",
            shown.display()
        ),
        hint: Some(
            "stop what writes there (the instance's services, a sync job) and restore again".into(),
        ),
    }
}

impl Drop for Stager<'_> {
    fn drop(&mut self) {
        // Never leave the writer writing into a staging directory that is
        // about to be removed.
        let _ = self.stop_writer();
    }
}

impl Stager<'_> {
    /// Refuses to replace a live directory with a symlink to itself: what a
    /// backup of a symlinked root holds when it was made before roots were
    /// resolved (the link alone). Restored, it would leave a link pointing
    /// at itself where the directory was.
    fn check_top_link(&self, source: &str, target: &[u8]) -> Result<()> {
        let Some(live) = self.live.get(source) else {
            return Ok(());
        };
        let dir = live.root_path();
        let link = Path::new(OsStr::from_bytes(target));
        let points_at = fsutil::parent_dir(dir).join(link);
        if std::fs::canonicalize(&points_at).is_ok_and(|p| p == dir) {
            return Err(Error::Refused {
                message: format!(
                    "this backup holds {source} only as a symlink to {}, the directory it would \
                     replace (a backup of a symlinked root made before backstop resolved roots): \
                     restoring it would leave a link to itself and lose the directory",
                    dir.display()
                ),
                hint: Some(
                    "nothing was changed; restore a newer backup, or look at this one with \
                     `backstop show ID`"
                        .into(),
                ),
            });
        }
        Ok(())
    }
}

impl Stager<'_> {
    /// A hard link to a file left in place: the live file is linked at
    /// the link's place in the staged tree.
    fn link_unstaged(
        &mut self,
        source: String,
        path: Vec<u8>,
        link: &[u8],
        meta: Meta,
    ) -> Result<()> {
        let live = self
            .live
            .get_mut(&source)
            .expect("in-place sources have a live tree");
        let first = below(&source, link);
        let shown = live.display(first);
        let Some((file, st)) = live
            .open_existing(first)
            .map_err(|e| Error::io("reading", &shown, e))?
        else {
            return Err(changed_meanwhile(&shown));
        };
        // The file staging left there, with its change time then: the
        // writer checks it has not changed since.
        let Some(&ctime) = self.linked.get(&st.st_ino) else {
            return Err(changed_meanwhile(&shown));
        };
        self.send(Op::Link {
            source,
            path,
            live: file,
            meta,
            ctime,
        })
    }
}

impl Visitor for Stager<'_> {
    fn compares_live(&self) -> bool {
        !self.live.is_empty()
    }

    fn entry(&mut self, entry: &Entry, content: &mut Content<'_>) -> Result<()> {
        let (source_name, _) = split_member(&entry.path);
        let Some(source) = self.sources.get(&source_name) else {
            // The walk refuses members outside the sources before this.
            return Err(Error::usage(
                format!("member outside the sources: {source_name}"),
                None,
            ));
        };
        let rel = root_relative(source, &entry.path);
        let is_dir = entry.kind == Kind::Dir;
        if !self.selection.source_selected(&source_name)
            || self.selection.keep.matches(&rel, is_dir).is_some()
        {
            // Not restored; the walk still reads and checks it.
            self.counts.skipped += 1;
            return Ok(());
        }
        let secret = self.selection.secrets.matches(&rel, is_dir).is_some();
        let meta = self.meta(entry, secret);
        self.counts.entries += 1;
        let path = entry.path.clone();
        match entry.kind {
            Kind::File => self.file(source_name, entry, content, meta)?,
            Kind::Dir => {
                if self.in_place.contains(&source_name)
                    && self.dir_in_place(&source_name, entry, &meta)?
                {
                    self.lazy_dir(source_name, path, meta);
                } else {
                    self.send(Op::Dir {
                        source: source_name,
                        path,
                        meta,
                    })?;
                }
            }
            Kind::Symlink => {
                let target = entry.link.clone().unwrap_or_default();
                if path == source_name.as_bytes() {
                    self.check_top_link(&source_name, &target)?;
                }
                self.send(Op::Symlink {
                    source: source_name,
                    path,
                    target,
                    meta,
                })?
            }
            Kind::HardLink => {
                let link = entry.link.clone().unwrap_or_default();
                if self.unstaged.contains(&path_key(&link)) {
                    self.link_unstaged(source_name, path, &link, meta)?;
                } else if self.files.contains(&path_key(&link)) {
                    self.send(Op::HardLink {
                        source: source_name,
                        path,
                        target: link,
                    })?;
                } else {
                    self.counts.entries -= 1;
                    self.unrestorable.push(rel);
                    self.warnings.push(format!(
                        "{}: left as it is, because the file it is a hard link to ({}) was not restored",
                        String::from_utf8_lossy(&entry.path),
                        String::from_utf8_lossy(&link)
                    ));
                }
            }
            Kind::Other(_) => unreachable!("the walk refuses other types"),
        }
        Ok(())
    }
}

/// A large file between `Open` and `Close`.
struct OpenFile {
    file: File,
    shown: PathBuf,
    sparse: Option<Vec<(u64, u64)>>,
    pos: u64,
}

/// The writer thread's state.
struct Writer {
    targets: HashMap<String, Confined>,
    /// Directories whose metadata is set at the end, deepest last in.
    dirs: Vec<(String, Vec<u8>, Meta)>,
    /// The large file being written.
    open: Option<OpenFile>,
    warnings: Vec<String>,
    /// Inodes linked from the live tree, and their change time once linked.
    linked: HashMap<u64, u64>,
}

impl Writer {
    fn new(targets: HashMap<String, Confined>) -> Writer {
        Writer {
            targets,
            dirs: Vec::new(),
            open: None,
            warnings: Vec::new(),
            linked: HashMap::new(),
        }
    }

    /// Makes every change, then the directories' metadata (deepest first,
    /// once their contents exist), then flushes each staging filesystem.
    fn run(mut self, rx: Receiver<Op>) -> Result<Written> {
        for op in rx {
            self.apply(op)?;
        }
        while let Some((source, path, meta)) = self.dirs.pop() {
            let target = self.targets.get_mut(&source).expect("source has a target");
            let shown = target.display(&path);
            for (name, value) in &meta.xattrs {
                if let Err(e) = target.set_xattr(&path, name, value) {
                    self.warnings.push(xattr_warning(&shown, name, &e));
                }
            }
            if let Some((uid, gid)) = meta.owner {
                target
                    .chown(&path, uid, gid)
                    .map_err(|e| Error::io("setting the owner of", &shown, e))?;
            }
            target
                .chmod(&path, meta.mode)
                .map_err(|e| Error::io("setting the mode of", &shown, e))?;
            target
                .set_mtime(&path, meta.mtime.0, meta.mtime.1)
                .map_err(|e| Error::io("setting the time of", &shown, e))?;
        }
        let mut synced: HashSet<u64> = HashSet::new();
        for target in self.targets.values() {
            let dev = rustix::fs::fstat(target.root_fd())
                .map(|st| st.st_dev)
                .unwrap_or(0);
            if synced.insert(dev) {
                target
                    .sync_filesystem()
                    .map_err(|e| Error::io("flushing", target.root_path(), e))?;
            }
        }
        Ok(Written {
            warnings: self.warnings,
            linked: self.linked,
        })
    }

    fn target(&mut self, source: &str) -> &mut Confined {
        self.targets
            .get_mut(source)
            .expect("selected sources have targets")
    }

    fn make_dir(&mut self, source: String, path: Vec<u8>, meta: Meta) -> Result<()> {
        let target = self
            .targets
            .get_mut(&source)
            .expect("selected sources have targets");
        let shown = target.display(&path);
        // Private until finished, so nothing can be put inside meanwhile;
        // its extended attributes come then too, so that what is staged
        // inside inherits no default ACL of the backup's.
        target
            .create_dir(&path, 0o700)
            .map_err(|e| Error::io("creating", &shown, e))?;
        self.dirs.push((source, path, meta));
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Dir { source, path, meta } => self.make_dir(source, path, meta)?,
            Op::Symlink {
                source,
                path,
                target: link,
                meta,
            } => {
                let target = self.target(&source);
                let shown = target.display(&path);
                target
                    .symlink(&path, &link)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                if let Some((uid, gid)) = meta.owner {
                    target
                        .chown(&path, uid, gid)
                        .map_err(|e| Error::io("setting the owner of", &shown, e))?;
                }
                target
                    .set_mtime(&path, meta.mtime.0, meta.mtime.1)
                    .map_err(|e| Error::io("setting the time of", &shown, e))?;
            }
            Op::HardLink {
                source,
                path,
                target: link,
            } => {
                let target = self.target(&source);
                let shown = target.display(&path);
                // A live file linked in (none is: one left in place is
                // linked by `Op::Link`): as it was when linked, or the
                // further name would hide a change to it.
                let st = target
                    .stat(&link)
                    .map_err(|e| Error::io("reading", target.display(&link), e))?;
                if self
                    .linked
                    .get(&st.st_ino)
                    .is_some_and(|c| *c != change_time(&st))
                {
                    return Err(changed_meanwhile(&shown));
                }
                let target = self.target(&source);
                target
                    .hard_link(&link, &path)
                    .map_err(|e| Error::io("linking", &shown, e))?;
                // A further name changes the inode's change time.
                let st = target
                    .stat(&path)
                    .map_err(|e| Error::io("reading", &shown, e))?;
                if let Some(ctime) = self.linked.get_mut(&st.st_ino) {
                    *ctime = change_time(&st);
                }
            }
            Op::Link {
                source,
                path,
                live,
                meta,
                ctime,
            } => self.link(
                &source,
                &path,
                Prefix {
                    live,
                    len: 0,
                    ctime,
                },
                &meta,
            )?,
            Op::File {
                source,
                path,
                data,
                meta,
            } => {
                let target = self.target(&source);
                let shown = target.display(&path);
                let mut file = target
                    .create_file(&path, 0o600)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                file.write_all(&data)
                    .map_err(|e| Error::io("writing", &shown, e))?;
                self.close(&file, &shown, None, &meta)?;
            }
            Op::Open {
                source,
                path,
                sparse,
                prefix,
            } => {
                let target = self.target(&source);
                let shown = target.display(&path);
                let mut file = target
                    .create_file(&path, 0o600)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                let mut pos = 0;
                if let Some(prefix) = prefix {
                    crate::failpoint::hit("restore.before-prefix-copy")?;
                    copy_equal_prefix(&prefix, &mut file, &shown)?;
                    pos = prefix.len;
                }
                self.open = Some(OpenFile {
                    file,
                    shown,
                    sparse,
                    pos,
                });
            }
            Op::Data(chunk) => {
                let o = self.open.as_mut().expect("Open comes first");
                write_chunk(&mut o.file, o.sparse.as_deref(), o.pos, &chunk)
                    .map_err(|e| Error::io("writing", &o.shown, e))?;
                o.pos += chunk.len() as u64;
            }
            Op::Close { size, meta } => {
                let o = self.open.take().expect("Open comes first");
                self.close(&o.file, &o.shown, o.sparse.is_some().then_some(size), &meta)?;
            }
        }
        Ok(())
    }

    /// Links the live file at `path` in the staged tree; where the kernel
    /// refuses (another filesystem below the target, protected hard links),
    /// copies it instead. Refuses the restore when the file changed since
    /// it was found as the backup has it (`found.ctime`): the time the
    /// writer's queue took is no gap for a write to slip through.
    fn link(&mut self, source: &str, path: &[u8], found: Prefix, meta: &Meta) -> Result<()> {
        let shown = self.target(source).display(path);
        crate::failpoint::hit("restore.before-link")?;
        let live = &found.live;
        let now = rustix::fs::fstat(live).map_err(|e| Error::io("reading", &shown, e.into()))?;
        // Linked here before (a further name of it): as it was then.
        let expected = self.linked.get(&now.st_ino).copied().unwrap_or(found.ctime);
        if change_time(&now) != expected {
            return Err(changed_meanwhile(&shown));
        }
        let target = self.target(source);
        match target.link_open_file(live, path) {
            Ok(()) => {
                let st =
                    rustix::fs::fstat(live).map_err(|e| Error::io("reading", &shown, e.into()))?;
                self.linked.insert(st.st_ino, change_time(&st));
                Ok(())
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EPERM | libc::EMLINK)
                ) =>
            {
                let mut file = target
                    .create_file(path, 0o600)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                let whole = Prefix {
                    live: found.live,
                    len: now.st_size as u64,
                    ctime: expected,
                };
                copy_equal_prefix(&whole, &mut file, &shown)?;
                self.close(&file, &shown, None, meta)
            }
            Err(e) => Err(Error::io("linking", &shown, e)),
        }
    }

    /// Size (of a sparse file), owner, mode, extended attributes and time.
    fn close(
        &mut self,
        file: &File,
        shown: &Path,
        sparse_size: Option<u64>,
        meta: &Meta,
    ) -> Result<()> {
        let io = |action: &'static str| move |e: std::io::Error| Error::io(action, shown, e);
        if let Some(size) = sparse_size {
            file.set_len(size).map_err(io("sizing"))?;
        }
        if let Some((uid, gid)) = meta.owner {
            rustix::fs::fchown(
                file.as_fd(),
                Some(rustix::process::Uid::from_raw(uid)),
                Some(rustix::process::Gid::from_raw(gid)),
            )
            .map_err(|e| io("setting the owner of")(e.into()))?;
        }
        // After chown, which clears set-uid and set-gid bits.
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode))
            .map_err(io("setting the mode of"))?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = rustix::fs::fsetxattr(
                file.as_fd(),
                OsStr::from_bytes(name),
                value,
                rustix::fs::XattrFlags::empty(),
            ) {
                self.warnings.push(xattr_warning(shown, name, &e.into()));
            }
        }
        let ts = rustix::fs::Timespec {
            tv_sec: meta.mtime.0,
            tv_nsec: i64::from(meta.mtime.1),
        };
        rustix::fs::futimens(
            file.as_fd(),
            &rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            },
        )
        .map_err(|e| io("setting the time of")(e.into()))
    }
}

/// Copies a live file's equal first part into the staged file; then its
/// change time must be the one it had when compared, or the bytes copied
/// may not be those found equal.
fn copy_equal_prefix(prefix: &Prefix, out: &mut File, shown: &Path) -> Result<()> {
    copy_prefix(&prefix.live, out, prefix.len).map_err(|e| Error::io("writing", shown, e))?;
    let now = rustix::fs::fstat(&prefix.live).map_err(|e| Error::io("reading", shown, e.into()))?;
    if change_time(&now) != prefix.ctime {
        return Err(changed_meanwhile(shown));
    }
    Ok(())
}

/// Copies the first `len` bytes of `live` to the start of `out` (the
/// kernel's copy where it can).
fn copy_prefix(live: &File, out: &mut File, len: u64) -> std::io::Result<()> {
    let mut input = std::io::Read::take(live, len);
    let copied = std::io::copy(&mut input, out)?;
    if copied != len {
        return Err(std::io::Error::other(format!(
            "the live file ended after {copied} of {len} bytes"
        )));
    }
    Ok(())
}

fn xattr_warning(shown: &Path, name: &[u8], e: &std::io::Error) -> String {
    format!(
        "{}: extended attribute {} not restored: {e}",
        shown.display(),
        String::from_utf8_lossy(name)
    )
}

/// Writes a chunk at logical position `pos`; of a sparse file only what
/// falls inside its data segments, so holes stay holes.
fn write_chunk(
    file: &mut File,
    sparse: Option<&[(u64, u64)]>,
    pos: u64,
    chunk: &[u8],
) -> std::io::Result<()> {
    let Some(map) = sparse else {
        return file.write_all(chunk);
    };
    let end = pos + chunk.len() as u64;
    for &(off, len) in map {
        let (a, b) = (off.max(pos), (off + len).min(end));
        if a < b {
            file.write_all_at(&chunk[(a - pos) as usize..(b - pos) as usize], a)?;
        }
    }
    Ok(())
}

/// Where the staging directory for source `source` going to `target`
/// lives: a hidden directory beside it, so it is on the same filesystem
/// (one per source: several sources may share a parent).
pub fn staging_dir(target: &Path, backup_id: &str, source: &str) -> PathBuf {
    let parent = crate::fsutil::parent_dir(target);
    let name = format!(
        "{STAGING_PREFIX}{backup_id}-{}-{source}",
        std::process::id()
    );
    OWN_STAGING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(name.clone().into_bytes());
    parent.join(name)
}

/// The names of the staging directories this process makes: a walk of a
/// tree passes over them (another source's, beside a target inside it),
/// and over nothing else, whatever its name (a tree may hold a
/// `.backstop-staging-notes` of its own).
static OWN_STAGING: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether `name` is one of this process's staging directories.
pub fn is_own_staging(name: &[u8]) -> bool {
    name.starts_with(STAGING_PREFIX.as_bytes())
        && OWN_STAGING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
}

/// The name prefix of staging directories, so stale ones can be found.
pub const STAGING_PREFIX: &str = ".backstop-staging-";

/// Removes a staging directory and everything in it, through directory
/// handles that never follow a symlink (see [`handle::remove_tree`]).
///
/// # Errors
///
/// Fails when something cannot be removed.
pub fn remove_tree(path: &Path) -> Result<()> {
    handle::remove_tree(path)
}
