//! The archive's side of a dry run: each entry, as it is read, goes to its
//! source's [`Merger`] against the live tree. Nothing is written.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use sha2::Digest;

use crate::archive::format::SourceManifest;
use crate::archive::reader::{Content, Visitor};
use crate::archive::tarread::{Entry, Kind};
use crate::error::Result;
use crate::handle;
use crate::restore::diff::{Action, Kind as NodeKind, Node};
use crate::restore::stage::{Selection, path_key, root_relative, split_member};
use crate::restore::steps::Merger;

/// Where a source's entries go in a dry run.
pub enum Target<'a> {
    /// A tree: every entry below the source's name.
    Tree(Merger<'a>),
    /// A single file (a database): only the member `<name>/<file>`.
    File { file: String, merger: Merger<'a> },
    /// A volume or dump: only the size of `<name>/<file>` is planned, and
    /// whether it replaces what is there or creates it.
    Import {
        file: String,
        size: u64,
        action: Action,
    },
}

/// Reads a backup's entries for a dry run.
pub struct Preview<'a> {
    sources: HashMap<String, (SourceManifest, Target<'a>)>,
    selection: &'a Selection,
    /// The files found unchanged so far, by a hash of their member path:
    /// a later hard link to one is unchanged too when the live tree still
    /// links the two. (A hash, not the path, so a million files cost a few
    /// bytes each.)
    unchanged: HashSet<u64>,
    /// Every file restored so far, the same way, with its size: a hard
    /// link to a file left out is left out too.
    restored: HashMap<u64, u64>,
    buf: Vec<u8>,
}

impl<'a> Preview<'a> {
    /// A preview of the sources in `targets` (the selected ones).
    pub fn new(
        sources: &[SourceManifest],
        targets: Vec<(String, Target<'a>)>,
        selection: &'a Selection,
    ) -> Preview<'a> {
        let mut by_name = HashMap::new();
        for (name, target) in targets {
            if let Some(s) = sources.iter().find(|s| s.name == name) {
                by_name.insert(name, (s.clone(), target));
            }
        }
        Preview {
            sources: by_name,
            selection,
            unchanged: HashSet::new(),
            restored: HashMap::new(),
            buf: vec![0u8; 1 << 20],
        }
    }

    /// The targets, once the walk is over.
    pub fn into_targets(self) -> HashMap<String, Target<'a>> {
        self.sources
            .into_iter()
            .map(|(name, (_, target))| (name, target))
            .collect()
    }

    fn content_hash(&mut self, content: &mut Content<'_>) -> Result<[u8; 32]> {
        let mut hasher = sha2::Sha256::new();
        loop {
            let n = content.read(&mut self.buf)?;
            if n == 0 {
                return Ok(hasher.finalize().into());
            }
            hasher.update(&self.buf[..n]);
        }
    }
}

impl Visitor for Preview<'_> {
    fn entry(&mut self, entry: &Entry, content: &mut Content<'_>) -> Result<()> {
        let (name, below) = split_member(&entry.path);
        let Some((source, _)) = self.sources.get(&name) else {
            return Ok(());
        };
        let rel_root = root_relative(source, &entry.path);
        if self
            .selection
            .keep
            .matches(&rel_root, entry.kind == Kind::Dir)
            .is_some()
        {
            return Ok(());
        }
        let below = PathBuf::from(OsStr::from_bytes(below));
        let node = match entry.kind {
            Kind::File => {
                let sha = self.content_hash(content)?;
                file_node(entry, entry.size, Some(sha), 0)
            }
            // A further name of an earlier file, which was not restored (the
            // restore leaves this one too), or was: then the same as the
            // live file there when that one was unchanged.
            Kind::HardLink => {
                let target = entry.link.as_deref().unwrap_or_default();
                let Some(link) = self.hard_link(&name, target) else {
                    return Ok(());
                };
                link
            }
            _ => Node {
                kind: if entry.kind == Kind::Dir {
                    NodeKind::Dir
                } else {
                    NodeKind::Symlink
                },
                size: 0,
                mode: entry.mode,
                mtime: (entry.mtime, entry.mtime_nsec),
                link: entry.link.clone().filter(|_| entry.kind == Kind::Symlink),
                sha256: None,
                ino: 0,
                ctime: 0,
                owner: Some((entry.uid, entry.gid)),
            },
        };
        let Some((_, target)) = self.sources.get_mut(&name) else {
            return Ok(());
        };
        let action = match target {
            Target::Tree(merger) => merger.backup_entry(below, &node)?,
            Target::File { file, merger } if below.as_os_str().as_bytes() == file.as_bytes() => {
                merger.backup_entry(PathBuf::new(), &node)?
            }
            Target::Import { file, size, .. }
                if below.as_os_str().as_bytes() == file.as_bytes() =>
            {
                *size = node.size;
                None
            }
            _ => None,
        };
        if entry.kind == Kind::File {
            self.restored.insert(path_key(&entry.path), entry.size);
            if action == Some(Action::Unchanged) {
                self.unchanged.insert(path_key(&entry.path));
            }
        }
        Ok(())
    }
}

impl Preview<'_> {
    /// The node of a hard link to the member `target`: `None` when that
    /// file is not restored; the live file at the target (its inode, which
    /// the live link must share) when it was found unchanged; otherwise a
    /// file that matches nothing (replaced).
    fn hard_link(&self, source: &str, target: &[u8]) -> Option<Node> {
        let key = path_key(target);
        let size = *self.restored.get(&key)?;
        let mut node = Node {
            kind: NodeKind::File,
            size,
            mode: 0,
            mtime: (0, 0),
            link: None,
            sha256: None,
            ino: 0,
            ctime: 0,
            owner: None,
        };
        if self.unchanged.contains(&key)
            && let Some((_, Target::Tree(merger))) = self.sources.get(source)
        {
            let (_, below) = split_member(target);
            if let Ok(st) = handle::lstat(&merger.target().join(OsStr::from_bytes(below))) {
                node.ino = st.st_ino;
            }
        }
        Some(node)
    }
}

fn file_node(entry: &Entry, size: u64, sha: Option<[u8; 32]>, ino: u64) -> Node {
    Node {
        kind: NodeKind::File,
        size,
        mode: entry.mode,
        mtime: (entry.mtime, entry.mtime_nsec),
        link: None,
        sha256: sha,
        ino,
        ctime: 0,
        owner: Some((entry.uid, entry.gid)),
    }
}

/// A visitor that only lets the walk read and check everything (for the
/// trailer of a backup whose problems the catalog does not rule out).
pub struct Skim;

impl Visitor for Skim {
    fn entry(&mut self, _entry: &Entry, _content: &mut Content<'_>) -> Result<()> {
        Ok(())
    }
}
