//! The archive's side of a dry run: each entry, as it is read, goes to its
//! source's [`Merger`] against the live tree. Nothing is written.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use sha2::Digest;

use crate::archive::format::SourceManifest;
use crate::archive::reader::{Content, Visitor};
use crate::archive::tarread::{Entry, Kind};
use crate::error::Result;
use crate::restore::diff::Node;
use crate::restore::stage::{Selection, path_key, root_relative};
use crate::restore::steps::Merger;

/// Where a source's entries go in a dry run.
pub enum Target<'a> {
    /// A tree: every entry below the source's name.
    Tree(Merger<'a>),
    /// A single file (a database): only the member `<name>/<file>`.
    File { file: String, merger: Merger<'a> },
    /// A volume or dump: only the size of `<name>/<file>` is planned.
    Import { file: String, size: u64 },
}

/// Reads a backup's entries for a dry run.
pub struct Preview<'a> {
    sources: HashMap<String, (SourceManifest, Target<'a>)>,
    selection: &'a Selection,
    /// The files read so far, by a hash of their member path: size and
    /// content hash, which a later hard link to them shares. (A hash, not
    /// the path, so a million files cost a few dozen bytes each.)
    files: HashMap<u64, (u64, [u8; 32])>,
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
            files: HashMap::new(),
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
        let top_len = entry
            .path
            .iter()
            .position(|&b| b == b'/')
            .unwrap_or(entry.path.len());
        let name = String::from_utf8_lossy(&entry.path[..top_len]).into_owned();
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
        let below = entry.path[top_len..]
            .strip_prefix(b"/")
            .unwrap_or(&entry.path[top_len..])
            .to_vec();
        let node = match entry.kind {
            Kind::File => {
                let sha = self.content_hash(content)?;
                self.files.insert(path_key(&entry.path), (entry.size, sha));
                file_node(entry, entry.size, sha)
            }
            // A further name of an earlier file: the same content; none if
            // that file was not restored (the restore leaves this one too).
            Kind::HardLink => {
                let target = entry.link.as_deref().unwrap_or_default();
                match self.files.get(&path_key(target)) {
                    Some(&(size, sha)) => file_node(entry, size, sha),
                    None => return Ok(()),
                }
            }
            _ => Node {
                kind: if entry.kind == Kind::Dir {
                    "dir"
                } else {
                    "symlink"
                },
                size: 0,
                mode: entry.mode,
                mtime: (entry.mtime, entry.mtime_nsec),
                link: entry.link.clone().filter(|_| entry.kind == Kind::Symlink),
                sha256: None,
                ino: 0,
                ctime: (0, 0),
            },
        };
        let Some((_, target)) = self.sources.get_mut(&name) else {
            return Ok(());
        };
        match target {
            Target::Tree(merger) => {
                merger.backup_entry(PathBuf::from(OsStr::from_bytes(&below)), &node)
            }
            Target::File { file, merger } if below == file.as_bytes() => {
                merger.backup_entry(PathBuf::new(), &node)
            }
            Target::Import { file, size } if below == file.as_bytes() => {
                *size = node.size;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn file_node(entry: &Entry, size: u64, sha: [u8; 32]) -> Node {
    Node {
        kind: "file",
        size,
        mode: entry.mode,
        mtime: (entry.mtime, entry.mtime_nsec),
        link: None,
        sha256: Some(sha),
        ino: 0,
        ctime: (0, 0),
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
