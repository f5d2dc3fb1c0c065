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

use crate::archive::Manifest;
use crate::archive::format::SourceManifest;
use crate::archive::reader::{Content, Visitor};
use crate::archive::tarread::{Entry, Kind};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::restore::confine::Confined;
use crate::restore::handle;
use crate::source::exclude::Patterns;

/// Which parts of a backup a restore writes.
pub struct Selection {
    /// Source names to restore; all when empty.
    pub only: Vec<String>,
    /// Paths (relative to the instance root) not written: never-restore
    /// paths and `--exclude` patterns.
    pub keep: Patterns,
    /// Paths (relative to the root) whose files are made 0600 whatever the
    /// archive says.
    pub secrets: Patterns,
}

impl Selection {
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
    /// A large file starts; `Data` follows, then `Close`.
    Open {
        source: String,
        path: Vec<u8>,
        sparse: Option<Vec<(u64, u64)>>,
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
    /// Members restored as files, by path, for hard links to point at.
    files: HashSet<Vec<u8>>,
    /// Things that could not be restored exactly (xattrs the filesystem
    /// refuses, hard links whose first name was not restored).
    pub warnings: Vec<String>,
    /// Hard links that could not be restored because the file they share
    /// was excluded: root-relative paths the restore must leave as they are.
    pub unrestorable: Vec<PathBuf>,
    pub counts: StageCounts,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
    tx: Option<Sender<Op>>,
    writer: Option<JoinHandle<std::result::Result<Vec<String>, Error>>>,
}

impl<'a> Stager<'a> {
    /// A stager writing source `name` beneath `targets[name]`.
    pub fn new(
        manifest: &Manifest,
        targets: HashMap<String, Confined>,
        selection: &'a Selection,
        progress: &'a dyn Progress,
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
            warnings: Vec::new(),
            unrestorable: Vec::new(),
            counts: StageCounts::default(),
            progress,
            cancel,
            tx: Some(tx),
            writer: Some(writer),
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

    fn send(&mut self, op: Op) -> Result<()> {
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
            Some(Ok(Ok(warnings))) => {
                self.warnings.extend(warnings);
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

    fn file(
        &mut self,
        source: String,
        entry: &Entry,
        content: &mut Content<'_>,
        meta: Meta,
    ) -> Result<()> {
        if entry.sparse.is_none() && entry.size <= SMALL {
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
            self.progress.advance(n as u64);
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
            })?;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let n = content.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                self.progress.advance(n as u64);
                self.send(Op::Data(chunk))?;
                self.cancel.check()?;
            }
            self.send(Op::Close {
                size: entry.size,
                meta,
            })?;
        }
        self.files.insert(entry.path.clone());
        self.counts.files += 1;
        self.counts.bytes += entry.size;
        Ok(())
    }
}

impl Drop for Stager<'_> {
    fn drop(&mut self) {
        // Never leave the writer writing into a staging directory that is
        // about to be removed.
        let _ = self.stop_writer();
    }
}

impl Visitor for Stager<'_> {
    fn entry(&mut self, entry: &Entry, content: &mut Content<'_>) -> Result<()> {
        let top_len = entry
            .path
            .iter()
            .position(|&b| b == b'/')
            .unwrap_or(entry.path.len());
        let source_name = String::from_utf8_lossy(&entry.path[..top_len]).into_owned();
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
            Kind::Dir => self.send(Op::Dir {
                source: source_name,
                path,
                meta,
            })?,
            Kind::Symlink => self.send(Op::Symlink {
                source: source_name,
                path,
                target: entry.link.clone().unwrap_or_default(),
                meta,
            })?,
            Kind::HardLink => {
                let link = entry.link.clone().unwrap_or_default();
                if self.files.contains(&link) {
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
}

impl Writer {
    fn new(targets: HashMap<String, Confined>) -> Writer {
        Writer {
            targets,
            dirs: Vec::new(),
            open: None,
            warnings: Vec::new(),
        }
    }

    /// Makes every change, then the directories' metadata (deepest first,
    /// once their contents exist), then flushes each staging filesystem.
    fn run(mut self, rx: Receiver<Op>) -> Result<Vec<String>> {
        for op in rx {
            self.apply(op)?;
        }
        while let Some((source, path, meta)) = self.dirs.pop() {
            let target = self.targets.get_mut(&source).expect("source has a target");
            let shown = target.display(&path);
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
        Ok(self.warnings)
    }

    fn target(&mut self, source: &str) -> &mut Confined {
        self.targets
            .get_mut(source)
            .expect("selected sources have targets")
    }

    fn apply(&mut self, op: Op) -> Result<()> {
        match op {
            Op::Dir { source, path, meta } => {
                let target = self
                    .targets
                    .get_mut(&source)
                    .expect("selected sources have targets");
                let shown = target.display(&path);
                // Private until finished, so nothing can be put inside meanwhile.
                target
                    .create_dir(&path, 0o700)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                for (name, value) in &meta.xattrs {
                    if let Err(e) = target.set_xattr(&path, name, value) {
                        self.warnings.push(xattr_warning(&shown, name, &e));
                    }
                }
                self.dirs.push((source, path, meta));
            }
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
                target
                    .hard_link(&link, &path)
                    .map_err(|e| Error::io("linking", &shown, e))?;
            }
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
            } => {
                let target = self.target(&source);
                let shown = target.display(&path);
                let file = target
                    .create_file(&path, 0o600)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                self.open = Some(OpenFile {
                    file,
                    shown,
                    sparse,
                    pos: 0,
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
    parent.join(format!(
        "{STAGING_PREFIX}{backup_id}-{}-{source}",
        std::process::id()
    ))
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
