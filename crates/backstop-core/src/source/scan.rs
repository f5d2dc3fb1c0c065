//! The scan: one walk over every source that decides what goes into the
//! archive, in what order, and measures the totals the manifest records.
//!
//! The result is a compact tree (a parent index and a name per entry, names
//! in one arena), because a million-file instance must not cost a million
//! `PathBuf`s. Entries are in depth-first order with the children of each
//! directory sorted by name bytes: deterministic, and every directory comes
//! before its contents, as extraction needs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::archive::format::{Problem, Totals};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::source::exclude::{Excluded, Excludes};

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
    /// For each top-of-source node: the source's path on the filesystem.
    tops: Vec<(u32, PathBuf)>,
    /// Hard link entry → the entry holding the data.
    links: HashMap<u32, u32>,
    /// What was measured.
    pub totals: Totals,
    /// Paths left out by an exclude rule (the top of each excluded subtree).
    pub excluded: Vec<ExcludedPath>,
    /// FIFOs, sockets and devices: never backed up.
    pub skipped: Vec<Problem>,
    /// Directories that could not be listed, and other scan errors.
    pub unreadable: Vec<Problem>,
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
            totals: Totals::default(),
            excluded: Vec::new(),
            skipped: Vec::new(),
            unreadable: Vec::new(),
        };
        let mut inodes: HashMap<(u64, u64), u32> = HashMap::new();
        for source in tops {
            let top = source.path.clone();
            top.symlink_metadata()
                .map_err(|e| Error::io("reading source", &top, e))?;
            // The stack of node indices of the directories above the current entry.
            let mut parents: Vec<u32> = Vec::new();
            // Siblings share their parent's path, so comparing whole paths
            // orders them by name bytes, without parsing path components.
            // A source that is a symlink (`current -> versions/1.2`) is
            // backed up as the symlink, never followed.
            let mut walker = walkdir::WalkDir::new(&top)
                .follow_links(false)
                .follow_root_links(false)
                .sort_by(|a, b| a.path().as_os_str().cmp(b.path().as_os_str()))
                .into_iter();
            while let Some(item) = walker.next() {
                let entry = match item {
                    Ok(entry) => entry,
                    Err(err) => {
                        let path = err
                            .path()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| top.clone());
                        if err.depth() == 0 {
                            return Err(Error::io(
                                "reading source",
                                &path,
                                err.into_io_error()
                                    .unwrap_or_else(|| std::io::Error::other("walk failed")),
                            ));
                        }
                        scan.unreadable.push(Problem {
                            path: scan.display_path(&source.name, &top, &path),
                            detail: err
                                .io_error()
                                .map(|e| e.to_string())
                                .unwrap_or_else(|| err.to_string()),
                        });
                        continue;
                    }
                };
                if scan.nodes.len().is_multiple_of(4096) {
                    opts.cancel.check()?;
                    opts.progress
                        .scanned(scan.totals.entries, scan.totals.bytes);
                }
                let depth = entry.depth();
                parents.truncate(depth);
                let file_type = entry.file_type();
                let path = entry.path();
                if depth > 0
                    && source.filtered
                    && let Some(rule) = opts.excludes.check(path, file_type.is_dir())
                {
                    scan.excluded.push(ExcludedPath {
                        path: scan.display_path(&source.name, &top, path),
                        rule,
                    });
                    if file_type.is_dir() {
                        walker.skip_current_dir();
                    }
                    continue;
                }
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(err) => {
                        // Gone since the directory was listed: nothing to back up.
                        if err.io_error().map(|e| e.kind()) != Some(std::io::ErrorKind::NotFound) {
                            scan.unreadable.push(Problem {
                                path: scan.display_path(&source.name, &top, path),
                                detail: err.to_string(),
                            });
                        }
                        continue;
                    }
                };
                if file_type.is_dir() && opts.skip_dirs.contains(&(meta.dev(), meta.ino())) {
                    scan.excluded.push(ExcludedPath {
                        path: scan.display_path(&source.name, &top, path),
                        rule: Excluded::OwnState,
                    });
                    walker.skip_current_dir();
                    continue;
                }
                let kind = if file_type.is_dir() {
                    NodeKind::Dir
                } else if file_type.is_symlink() {
                    NodeKind::Symlink
                } else if file_type.is_file() {
                    NodeKind::File
                } else {
                    let what = if file_type.is_fifo() {
                        "FIFO"
                    } else if file_type.is_socket() {
                        "socket"
                    } else if file_type.is_block_device() {
                        "block device"
                    } else if file_type.is_char_device() {
                        "character device"
                    } else {
                        "special file"
                    };
                    scan.skipped.push(Problem {
                        path: scan.display_path(&source.name, &top, path),
                        detail: format!("{what}: not backed up"),
                    });
                    continue;
                };
                let name: &[u8] = if depth == 0 {
                    source.name.as_bytes()
                } else {
                    entry.file_name().as_bytes()
                };
                let parent = parents.last().copied().unwrap_or(NO_PARENT);
                let index = scan.push(parent, name, kind, 0);
                if depth == 0 {
                    scan.tops.push((index, top.clone()));
                }
                match kind {
                    NodeKind::Dir => parents.push(index),
                    NodeKind::File => {
                        let key = (meta.dev(), meta.ino());
                        let first = if meta.nlink() > 1 {
                            inodes.get(&key).copied()
                        } else {
                            None
                        };
                        match first {
                            Some(first) => {
                                scan.nodes[index as usize].kind = NodeKind::HardLink;
                                scan.links.insert(index, first);
                            }
                            None => {
                                if meta.nlink() > 1 {
                                    inodes.insert(key, index);
                                }
                                scan.nodes[index as usize].size = meta.len();
                                scan.totals.files += 1;
                                scan.totals.bytes += meta.len();
                            }
                        }
                    }
                    NodeKind::Symlink | NodeKind::HardLink => {}
                }
                scan.totals.entries += 1;
            }
        }
        opts.progress
            .scanned(scan.totals.entries, scan.totals.bytes);
        Ok(scan)
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

    /// The path of `e` on the filesystem.
    pub fn fs_path(&self, e: EntryRef) -> PathBuf {
        let chain = self.chain(e);
        let mut path = self
            .tops
            .iter()
            .find(|(index, _)| *index == chain[0])
            .map(|(_, p)| p.clone())
            .expect("every chain starts at a source top");
        for &index in &chain[1..] {
            path.push(OsStr::from_bytes(self.name(index)));
        }
        path
    }
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
