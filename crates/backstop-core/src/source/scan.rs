//! The scan: one walk over every source that decides what goes into the
//! archive, in what order, and measures the totals the manifest records.
//!
//! The result is a compact tree (a parent index and a name per entry, names
//! in one arena), because a million-file instance must not cost a million
//! `PathBuf`s. Entries are in depth-first order with the children of each
//! directory sorted by name bytes: deterministic, and every directory comes
//! before its contents, as extraction needs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, openat, statat};
use rustix::io::Errno;

use crate::archive::format::{Problem, Totals};
use crate::archive::index::{Previous, Stamp};
use crate::error::{Error, Result};
use crate::handle::{self, DIR_FLAGS};
use crate::progress::{Cancel, Progress};
use crate::source::exclude::{self, Excluded, Excludes};

/// What an entry is, as the scan saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
    /// A further name of a file seen earlier in the scan.
    HardLink,
}

/// One entry of the tree. 24 bytes.
#[derive(Debug, Clone, Copy)]
struct Node {
    name_start: u64,
    /// Apparent size for files; 0 otherwise.
    size: u64,
    /// `NO_PARENT` for the top of a source.
    parent: u32,
    name_len: u16,
    kind: NodeKind,
    /// A file the previous backup's index describes as it is now: an
    /// incremental backup does not read it.
    unchanged: bool,
}

const NO_PARENT: u32 = u32::MAX;

/// A path left out of the backup, with the rule that did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludedPath {
    /// The path inside the archive it would have had.
    pub path: String,
    pub rule: Excluded,
}

/// The outcome of a scan.
#[derive(Debug)]
pub struct Scan {
    root: PathBuf,
    names: Vec<u8>,
    nodes: Vec<Node>,
    /// The top of each source, and the directory it was found in.
    tops: Vec<Top>,
    /// Hard link entry → the entry holding the data.
    links: HashMap<u32, u32>,
    /// The children of every node, in name order: node `i`'s are
    /// `children[child_start[i]..child_start[i + 1]]` (8 bytes a node).
    child_start: Vec<u32>,
    children: Vec<u32>,
    /// What was measured.
    pub totals: Totals,
    /// Paths left out by an exclude rule (the top of each excluded subtree).
    pub excluded: Vec<ExcludedPath>,
    /// FIFOs, sockets and devices: never backed up.
    pub skipped: Vec<Problem>,
    /// Directories that could not be listed, and other scan errors.
    pub unreadable: Vec<Problem>,
    /// Files (and their bytes) marked unchanged since the previous backup.
    pub unchanged: (u64, u64),
}

/// The top of one source: its node, its path, and the directory it is in,
/// opened once for the whole backup.
#[derive(Debug)]
struct Top {
    index: u32,
    path: PathBuf,
    parent: OwnedFd,
    name: OsString,
}

/// One directory being listed: its handle, the names left (the next one
/// last) and its node.
struct Frame {
    fd: OwnedFd,
    left: Vec<CString>,
    index: u32,
}

impl Frame {
    fn new(fd: OwnedFd, mut names: Vec<CString>, index: u32) -> Frame {
        names.reverse();
        Frame {
            fd,
            left: names,
            index,
        }
    }
}

/// Opens the directory a source's top is in, following symlinks (the
/// instance root was resolved once, and the config names the path), and
/// gives the top's name in it.
fn open_top(top: &Path) -> io::Result<(OwnedFd, OsString)> {
    let name = top.file_name().unwrap_or(OsStr::new(".")).to_os_string();
    let parent = match top.file_name() {
        Some(_) => top.parent().unwrap_or(Path::new("/")),
        None => top,
    };
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    Ok((rustix::fs::open(parent, flags, Mode::empty())?, name))
}

/// A reference to one scanned entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef(pub u32);

/// What the scan needs besides the instance.
/// One source's top for a scan.
#[derive(Debug, Clone)]
pub struct ScanTop {
    /// The source's name: its top-level name in the archive.
    pub name: String,
    /// Where its data is: the path itself, or a spooled dump.
    pub path: PathBuf,
    /// Whether exclude patterns apply below it (not to spooled dumps).
    pub filtered: bool,
}

pub struct ScanOptions<'a> {
    pub excludes: &'a Excludes,
    /// Directories never to enter (backstop's own home and store), by
    /// `(device, inode)` so that any spelling of the path matches.
    pub skip_dirs: Vec<(u64, u64)>,
    pub progress: &'a dyn Progress,
    pub cancel: &'a Cancel,
    /// For an incremental backup: the index of its parent, read in step
    /// with the scan, which marks the files it describes as they are now.
    pub previous: Option<&'a RefCell<Previous>>,
}

impl Scan {
    /// Walks every top in order; `root` is the instance root the exclude
    /// patterns are anchored at.
    ///
    /// # Errors
    ///
    /// Fails when a source's top cannot be read at all, or on interruption.
    /// Unreadable directories further down are recorded, not fatal.
    pub fn run(root: &Path, tops: &[ScanTop], opts: &ScanOptions<'_>) -> Result<Scan> {
        let mut scan = Scan {
            root: root.to_path_buf(),
            names: Vec::new(),
            nodes: Vec::new(),
            tops: Vec::new(),
            links: HashMap::new(),
            child_start: Vec::new(),
            children: Vec::new(),
            totals: Totals::default(),
            excluded: Vec::new(),
            skipped: Vec::new(),
            unreadable: Vec::new(),
            unchanged: (0, 0),
        };
        let mut inodes: HashMap<(u64, u64), u32> = HashMap::new();
        for source in tops {
            scan.walk_top(source, opts, &mut inodes)?;
        }
        scan.index_children();
        opts.progress
            .scanned(scan.totals.entries, scan.totals.bytes);
        Ok(scan)
    }

    /// Walks one source through directory handles: its top is looked up
    /// once by path, everything below it relative to the descriptor of the
    /// directory it is in, never through a symlink. A source that is a
    /// symlink (`current -> versions/1.2`) is backed up as the symlink.
    fn walk_top(
        &mut self,
        source: &ScanTop,
        opts: &ScanOptions<'_>,
        inodes: &mut HashMap<(u64, u64), u32>,
    ) -> Result<()> {
        let top = &source.path;
        let fatal = |e: io::Error| Error::io("reading source", top, e);
        let (parent, name) = open_top(top).map_err(fatal)?;
        let st = statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| fatal(e.into()))?;
        let Some(kind) = self.kind_of(&st, source, top) else {
            return Ok(());
        };
        if kind == NodeKind::Dir && opts.skip_dirs.contains(&(st.st_dev, st.st_ino)) {
            self.excluded.push(ExcludedPath {
                path: source.name.clone(),
                rule: Excluded::OwnState,
            });
            return Ok(());
        }
        let index = self.add(NO_PARENT, source.name.as_bytes(), kind, &st, (inodes, opts));
        let mut frames = Vec::new();
        if kind == NodeKind::Dir {
            let fd =
                openat(&parent, &name, DIR_FLAGS, Mode::empty()).map_err(|e| fatal(e.into()))?;
            let left = handle::list(&fd).map_err(fatal)?;
            frames.push(Frame::new(fd, left, index));
        }
        self.tops.push(Top {
            index,
            path: top.clone(),
            parent,
            name,
        });
        let mut path = top.clone();
        while let Some(frame) = frames.last_mut() {
            let Some(name) = frame.left.pop() else {
                frames.pop();
                path.pop();
                continue;
            };
            if self.nodes.len().is_multiple_of(4096) {
                opts.cancel.check()?;
                opts.progress
                    .scanned(self.totals.entries, self.totals.bytes);
            }
            path.push(OsStr::from_bytes(name.to_bytes()));
            match self.entry(source, opts, inodes, frame, &name, &path) {
                Some(next) => frames.push(next),
                None => {
                    path.pop();
                }
            }
        }
        Ok(())
    }

    /// Looks at one entry below a source's top, in the directory of
    /// `frame`, adding it to the tree unless it is left out. Returns the
    /// frame to list next when it is a directory to enter.
    fn entry(
        &mut self,
        source: &ScanTop,
        opts: &ScanOptions<'_>,
        inodes: &mut HashMap<(u64, u64), u32>,
        frame: &Frame,
        name: &CStr,
        path: &Path,
    ) -> Option<Frame> {
        let st = match statat(&frame.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since the directory was listed: nothing to back up.
            Err(Errno::NOENT) => return None,
            Err(e) => {
                self.problem(source, path, &io::Error::from(e));
                return None;
            }
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if source.filtered
            && let Some(rule) = opts.excludes.check(path, is_dir)
        {
            self.exclude(source, path, rule);
            return None;
        }
        let kind = self.kind_of(&st, source, path)?;
        if kind != NodeKind::Dir {
            self.add(frame.index, name.to_bytes(), kind, &st, (inodes, opts));
            return None;
        }
        if opts.skip_dirs.contains(&(st.st_dev, st.st_ino)) {
            self.exclude(source, path, Excluded::OwnState);
            return None;
        }
        let opened = openat(&frame.fd, name, DIR_FLAGS, Mode::empty());
        if source.filtered
            && let Ok(fd) = &opened
            && exclude::has_cachedir_tag(fd)
        {
            self.exclude(source, path, Excluded::CacheDirTag);
            return None;
        }
        let index = self.add(frame.index, name.to_bytes(), kind, &st, (inodes, opts));
        let listed = opened
            .map_err(io::Error::from)
            .and_then(|fd| handle::list(&fd).map(|left| (fd, left)));
        match listed {
            Ok((fd, left)) => Some(Frame::new(fd, left, index)),
            Err(e) => {
                // Backed up as an empty directory; what it holds is reported.
                self.problem(source, path, &e);
                None
            }
        }
    }

    /// What the scan makes of an entry of type `st`; `None` for FIFOs,
    /// sockets and devices, which are recorded as skipped.
    fn kind_of(&mut self, st: &Stat, source: &ScanTop, path: &Path) -> Option<NodeKind> {
        let what = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => return Some(NodeKind::Dir),
            FileType::Symlink => return Some(NodeKind::Symlink),
            FileType::RegularFile => return Some(NodeKind::File),
            FileType::Fifo => "FIFO",
            FileType::Socket => "socket",
            FileType::BlockDevice => "block device",
            FileType::CharacterDevice => "character device",
            FileType::Unknown => "special file",
        };
        self.skipped.push(Problem {
            path: self.display_path(&source.name, &source.path, path),
            detail: format!("{what}: not backed up"),
        });
        None
    }

    /// Adds an entry: a further name of a file seen before becomes a hard
    /// link to it; a file's size counts once; a file the previous index
    /// describes as it is now is marked unchanged.
    fn add(
        &mut self,
        parent: u32,
        name: &[u8],
        kind: NodeKind,
        st: &Stat,
        (inodes, opts): (&mut HashMap<(u64, u64), u32>, &ScanOptions<'_>),
    ) -> u32 {
        let index = self.push(parent, name, kind, 0);
        self.totals.entries += 1;
        if kind != NodeKind::File {
            return index;
        }
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1
            && let Some(&first) = inodes.get(&key)
        {
            self.nodes[index as usize].kind = NodeKind::HardLink;
            self.links.insert(index, first);
            return index;
        }
        if st.st_nlink > 1 {
            inodes.insert(key, index);
        }
        let size = st.st_size.max(0) as u64;
        self.nodes[index as usize].size = size;
        self.totals.files += 1;
        self.totals.bytes += size;
        if let Some(previous) = opts.previous {
            let mut path = Vec::new();
            self.archive_path(EntryRef(index), &mut path);
            if previous.borrow_mut().unchanged(&path, &Stamp::of(st)) {
                self.nodes[index as usize].unchanged = true;
                self.unchanged.0 += 1;
                self.unchanged.1 += size;
            }
        }
        index
    }

    /// Whether `e` is a file unchanged since the previous backup.
    pub fn unchanged(&self, e: EntryRef) -> bool {
        self.nodes[e.0 as usize].unchanged
    }

    fn exclude(&mut self, source: &ScanTop, path: &Path, rule: Excluded) {
        self.excluded.push(ExcludedPath {
            path: self.display_path(&source.name, &source.path, path),
            rule,
        });
    }

    fn problem(&mut self, source: &ScanTop, path: &Path, e: &io::Error) {
        self.unreadable.push(Problem {
            path: self.display_path(&source.name, &source.path, path),
            detail: e.to_string(),
        });
    }

    fn push(&mut self, parent: u32, name: &[u8], kind: NodeKind, size: u64) -> u32 {
        let index = u32::try_from(self.nodes.len()).expect("fewer than 4 billion entries");
        self.nodes.push(Node {
            name_start: self.names.len() as u64,
            size,
            parent,
            // Linux names are at most 255 bytes; source names are short slugs.
            name_len: name.len().min(u16::MAX as usize) as u16,
            kind,
            unchanged: false,
        });
        self.names.extend_from_slice(name);
        index
    }

    /// The archive path of a path under a source, for messages about entries
    /// that never became nodes.
    fn display_path(&self, source: &str, top: &Path, path: &Path) -> String {
        let rel = path.strip_prefix(top).unwrap_or(path);
        if rel.as_os_str().is_empty() {
            source.to_string()
        } else {
            format!("{source}/{}", rel.display())
        }
    }

    /// The instance root the scan started from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of entries, in archive order.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing at all was found.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The kind of entry `e`.
    pub fn kind(&self, e: EntryRef) -> NodeKind {
        self.nodes[e.0 as usize].kind
    }

    /// The size of entry `e` as scanned (0 for all but files).
    pub fn size(&self, e: EntryRef) -> u64 {
        self.nodes[e.0 as usize].size
    }

    /// Builds the children index: one counting pass, then one filling pass
    /// in node order, which is each directory's name order.
    fn index_children(&mut self) {
        let n = self.nodes.len();
        let mut start = vec![0u32; n + 1];
        for node in &self.nodes {
            if node.parent != NO_PARENT {
                start[node.parent as usize + 1] += 1;
            }
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut next = start.clone();
        let mut children = vec![0u32; start[n] as usize];
        for (i, node) in self.nodes.iter().enumerate() {
            if node.parent != NO_PARENT {
                let slot = &mut next[node.parent as usize];
                children[*slot as usize] = i as u32;
                *slot += 1;
            }
        }
        self.child_start = start;
        self.children = children;
    }

    /// The entries directly below `e`, in name order.
    pub fn children(&self, e: EntryRef) -> impl Iterator<Item = EntryRef> + '_ {
        let i = e.0 as usize;
        let range = match (self.child_start.get(i), self.child_start.get(i + 1)) {
            (Some(&a), Some(&b)) => a as usize..b as usize,
            _ => 0..0,
        };
        self.children[range].iter().map(|&c| EntryRef(c))
    }

    /// The name of `e` in its directory (a source's top: the source name).
    pub fn file_name(&self, e: EntryRef) -> &[u8] {
        self.name(e.0)
    }

    /// The directory entry `e` is in; `None` for the top of a source.
    pub fn parent(&self, e: EntryRef) -> Option<EntryRef> {
        let parent = self.nodes[e.0 as usize].parent;
        (parent != NO_PARENT).then_some(EntryRef(parent))
    }

    /// For a hard link, the entry that holds the data.
    pub fn link_target(&self, e: EntryRef) -> Option<EntryRef> {
        self.links.get(&e.0).map(|&t| EntryRef(t))
    }

    fn name(&self, index: u32) -> &[u8] {
        let node = &self.nodes[index as usize];
        let start = node.name_start as usize;
        &self.names[start..start + node.name_len as usize]
    }

    /// The chain of nodes from the top of the source down to `e`.
    fn chain(&self, e: EntryRef) -> Vec<u32> {
        let mut chain = vec![e.0];
        let mut cur = e.0;
        while self.nodes[cur as usize].parent != NO_PARENT {
            cur = self.nodes[cur as usize].parent;
            chain.push(cur);
        }
        chain.reverse();
        chain
    }

    /// Writes the path of `e` inside the archive (`<source>/<relative path>`)
    /// into `out`.
    pub fn archive_path(&self, e: EntryRef, out: &mut Vec<u8>) {
        out.clear();
        for (i, index) in self.chain(e).into_iter().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(self.name(index));
        }
    }

    /// The path of `e` on the filesystem, for messages: it is read through
    /// [`Scan::locate`], never by this path.
    pub fn fs_path(&self, e: EntryRef) -> PathBuf {
        let chain = self.chain(e);
        let mut path = self.top(chain[0]).path.clone();
        for &index in &chain[1..] {
            path.push(OsStr::from_bytes(self.name(index)));
        }
        path
    }

    fn top(&self, index: u32) -> &Top {
        self.tops
            .iter()
            .find(|t| t.index == index)
            .expect("every chain starts at a source top")
    }

    /// The directory `e` is in, opened from its source's top down one
    /// component at a time without following a symlink (the handles along
    /// the way kept in `dirs` for the entries after it), and its name there.
    ///
    /// # Errors
    ///
    /// Fails when a directory above `e` is gone or was replaced by
    /// something else (`ENOENT`, `ELOOP`, `ENOTDIR`), or cannot be opened.
    pub fn locate<'s>(
        &'s self,
        e: EntryRef,
        dirs: &'s mut Dirs,
    ) -> io::Result<(BorrowedFd<'s>, &'s OsStr)> {
        let chain = self.chain(e);
        let top = self.top(chain[0]);
        let above = &chain[..chain.len() - 1];
        let same = dirs
            .stack
            .iter()
            .zip(above)
            .take_while(|((open, _), want)| open == *want)
            .count();
        dirs.stack.truncate(same);
        for &index in &above[same..] {
            let fd = match dirs.stack.last() {
                None => openat(&top.parent, &top.name, DIR_FLAGS, Mode::empty()),
                Some((_, dir)) => openat(
                    dir,
                    OsStr::from_bytes(self.name(index)),
                    DIR_FLAGS,
                    Mode::empty(),
                ),
            }?;
            dirs.stack.push((index, fd));
        }
        let dir = match dirs.stack.last() {
            Some((_, fd)) => fd.as_fd(),
            None => top.parent.as_fd(),
        };
        let name = if chain.len() == 1 {
            top.name.as_os_str()
        } else {
            OsStr::from_bytes(self.name(e.0))
        };
        Ok((dir, name))
    }
}

impl Scan {
    /// Opens the regular file `e` for reading as [`Scan::locate`] finds it,
    /// never through a symlink and never blocking on a FIFO put there.
    ///
    /// # Errors
    ///
    /// Fails as [`Scan::locate`] does, or when `e` cannot be opened.
    pub fn open_file(&self, e: EntryRef, dirs: &mut Dirs) -> io::Result<std::fs::File> {
        let (dir, name) = self.locate(e, dirs)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        Ok(openat(dir, name, flags, Mode::empty())?.into())
    }
}

/// The directory handles a reader holds along the path of the entry it
/// read last: entries in archive order share most of them.
#[derive(Debug, Default)]
pub struct Dirs {
    stack: Vec<(u32, OwnedFd)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;
    use crate::progress::NoProgress;

    fn scan(dir: &Path, patterns: &[&str]) -> Scan {
        let inst = Instance::ad_hoc(&[dir.to_path_buf()]).unwrap();
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        let excludes = Excludes::new(&inst.root, &patterns).unwrap();
        let opts = ScanOptions {
            excludes: &excludes,
            skip_dirs: Vec::new(),
            progress: &NoProgress,
            cancel: &Cancel::default(),
            previous: None,
        };
        let tops: Vec<ScanTop> = inst
            .sources
            .iter()
            .map(|s| ScanTop {
                name: s.name.clone(),
                path: inst.source_path(s).unwrap(),
                filtered: true,
            })
            .collect();
        Scan::run(&inst.root, &tops, &opts).unwrap()
    }

    fn paths(scan: &Scan) -> Vec<String> {
        let mut buf = Vec::new();
        (0..scan.len() as u32)
            .map(|i| {
                scan.archive_path(EntryRef(i), &mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
            .collect()
    }

    #[test]
    fn order_is_depth_first_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("b/inner")).unwrap();
        std::fs::create_dir_all(app.join("a")).unwrap();
        std::fs::write(app.join("a.txt"), b"x").unwrap();
        std::fs::write(app.join("b/inner/z"), b"zz").unwrap();
        std::fs::write(app.join("b/c"), b"c").unwrap();
        let s = scan(&app, &[]);
        assert_eq!(
            paths(&s),
            [
                "app",
                "app/a",
                "app/a.txt",
                "app/b",
                "app/b/c",
                "app/b/inner",
                "app/b/inner/z"
            ]
        );
        assert_eq!(s.totals.files, 3);
        assert_eq!(s.totals.bytes, 4);
        assert_eq!(
            s.fs_path(EntryRef(6)),
            app.canonicalize().unwrap().join("b/inner/z")
        );
    }

    #[test]
    fn hard_links_point_at_the_first_name() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("a"), b"data").unwrap();
        std::fs::hard_link(app.join("a"), app.join("b")).unwrap();
        let s = scan(&app, &[]);
        assert_eq!(s.kind(EntryRef(2)), NodeKind::HardLink);
        assert_eq!(s.link_target(EntryRef(2)), Some(EntryRef(1)));
        assert_eq!(s.totals.bytes, 4, "the data is counted once");
    }

    #[test]
    fn anchored_patterns_match_from_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("data/media")).unwrap();
        std::fs::create_dir_all(app.join("other/data/media")).unwrap();
        std::fs::write(app.join("data/media/a.bin"), b"x").unwrap();
        let s = scan(&app, &["data/media/"]);
        assert_eq!(
            paths(&s),
            [
                "app",
                "app/data",
                "app/other",
                "app/other/data",
                "app/other/data/media"
            ]
        );
        let s = scan(&app, &["/other"]);
        assert_eq!(
            paths(&s),
            ["app", "app/data", "app/data/media", "app/data/media/a.bin"]
        );
    }

    #[test]
    fn excluded_subtrees_are_recorded_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("node_modules/x")).unwrap();
        std::fs::write(app.join("node_modules/x/big"), b"junk").unwrap();
        std::fs::write(app.join("keep.log"), b"l").unwrap();
        std::fs::write(app.join("keep.txt"), b"t").unwrap();
        let s = scan(&app, &["*.log"]);
        assert_eq!(paths(&s), ["app", "app/keep.txt"]);
        let excluded: Vec<_> = s.excluded.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(excluded, ["app/keep.log", "app/node_modules"]);
    }

    #[test]
    fn fifos_are_skipped_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            app.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let s = scan(&app, &[]);
        assert_eq!(paths(&s), ["app"]);
        assert_eq!(s.skipped.len(), 1);
        assert!(s.skipped[0].detail.contains("FIFO"));
    }
}
