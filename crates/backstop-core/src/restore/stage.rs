//! Staging: unpacking an archive beneath private staging directories, one
//! per source, each next to the place its source goes (so the swap is a
//! rename on one filesystem). The archive is verified by the same walk as
//! `verify`; staged content only counts once that walk has finished without
//! error.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::archive::Manifest;
use crate::archive::format::SourceManifest;
use crate::archive::reader::{Content, Visitor};
use crate::archive::tarread::{Entry, Kind};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};
use crate::restore::confine::Confined;
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

/// A directory's metadata, applied once everything inside it exists.
struct DirMeta {
    source: String,
    path: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
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

/// Writes the selected entries of an archive beneath the staging
/// directories, one [`Confined`] per selected source.
pub struct Stager<'a> {
    sources: HashMap<String, SourceManifest>,
    targets: HashMap<String, Confined>,
    selection: &'a Selection,
    /// Whether to restore owners (only root may).
    as_root: bool,
    dirs: Vec<DirMeta>,
    /// Members written as files, by path, for hard links to point at.
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
    buf: Vec<u8>,
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
        Stager {
            sources: manifest
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            targets,
            selection,
            as_root: rustix::process::geteuid().is_root(),
            dirs: Vec::new(),
            files: HashSet::new(),
            warnings: Vec::new(),
            unrestorable: Vec::new(),
            counts: StageCounts::default(),
            progress,
            cancel,
            buf: vec![0u8; 1 << 20],
        }
    }

    /// The mode a restored entry gets: set-uid and set-gid only for root,
    /// 0600 for secrets.
    fn mode(&self, entry: &Entry, secret: bool) -> u32 {
        if secret && entry.kind == Kind::File {
            return 0o600;
        }
        let mode = entry.mode & 0o7777;
        if self.as_root { mode } else { mode & !0o6000 }
    }

    fn write_file(
        &mut self,
        source: &str,
        entry: &Entry,
        content: &mut Content<'_>,
        mode: u32,
    ) -> Result<()> {
        let target = self
            .targets
            .get_mut(source)
            .expect("selected sources have targets");
        let shown = target.display(&entry.path);
        let io = |action: &'static str| {
            let shown = shown.clone();
            move |e: std::io::Error| Error::io(action, shown, e)
        };
        let mut file: File = target
            .create_file(&entry.path, 0o600)
            .map_err(io("creating"))?;
        let mut pos = 0u64;
        loop {
            let n = content.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            match &entry.sparse {
                None => file.write_all(&self.buf[..n]).map_err(io("writing"))?,
                Some(map) => {
                    // Write only what falls inside data segments; holes
                    // stay holes.
                    let (start, end) = (pos, pos + n as u64);
                    for &(off, len) in map {
                        let (a, b) = (off.max(start), (off + len).min(end));
                        if a < b {
                            let slice = &self.buf[(a - start) as usize..(b - start) as usize];
                            file.write_all_at(slice, a).map_err(io("writing"))?;
                        }
                    }
                }
            }
            pos += n as u64;
            self.progress.advance(n as u64);
            self.cancel.check()?;
        }
        if entry.sparse.is_some() {
            file.set_len(entry.size).map_err(io("sizing"))?;
        }
        if self.as_root {
            rustix::fs::fchown(
                file.as_fd(),
                Some(rustix::process::Uid::from_raw(entry.uid as u32)),
                Some(rustix::process::Gid::from_raw(entry.gid as u32)),
            )
            .map_err(|e| io("setting the owner of")(e.into()))?;
        }
        // After chown, which clears set-uid and set-gid bits.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of"))?;
        for (name, value) in &entry.xattrs {
            if let Err(e) = rustix::fs::fsetxattr(
                file.as_fd(),
                OsStr::from_bytes(name),
                value,
                rustix::fs::XattrFlags::empty(),
            ) {
                self.warnings.push(format!(
                    "{}: extended attribute {} not restored: {e}",
                    String::from_utf8_lossy(&entry.path),
                    String::from_utf8_lossy(name)
                ));
            }
        }
        let ts = rustix::fs::Timespec {
            tv_sec: entry.mtime,
            tv_nsec: i64::from(entry.mtime_nsec),
        };
        rustix::fs::futimens(
            file.as_fd(),
            &rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            },
        )
        .map_err(|e| io("setting the time of")(e.into()))?;
        self.files.insert(entry.path.clone());
        self.counts.files += 1;
        self.counts.bytes += entry.size;
        Ok(())
    }

    /// Applies the directories' modes, owners and times, deepest first, once
    /// all their contents exist; then flushes every staging filesystem.
    ///
    /// # Errors
    ///
    /// Fails when a directory's metadata cannot be set or the flush fails.
    pub fn finish(&mut self) -> Result<()> {
        while let Some(d) = self.dirs.pop() {
            let target = self
                .targets
                .get_mut(&d.source)
                .expect("source has a target");
            let shown = target.display(&d.path);
            if self.as_root {
                target
                    .chown(&d.path, d.uid as u32, d.gid as u32)
                    .map_err(|e| Error::io("setting the owner of", &shown, e))?;
            }
            target
                .chmod(&d.path, d.mode)
                .map_err(|e| Error::io("setting the mode of", &shown, e))?;
            target
                .set_mtime(&d.path, d.mtime.0, d.mtime.1)
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
        Ok(())
    }

    /// The staging directories, by source name.
    pub fn into_targets(self) -> HashMap<String, Confined> {
        self.targets
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
            self.counts.skipped += 1;
            return Ok(());
        }
        let secret = self.selection.secrets.matches(&rel, is_dir).is_some();
        let mode = self.mode(entry, secret);
        self.counts.entries += 1;
        let target = self
            .targets
            .get_mut(&source_name)
            .expect("selected sources have targets");
        let shown = target.display(&entry.path);
        match entry.kind {
            Kind::File => self.write_file(&source_name, entry, content, mode)?,
            Kind::Dir => {
                // Private until finished, so nothing can be put inside meanwhile.
                target
                    .create_dir(&entry.path, 0o700)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                for (name, value) in &entry.xattrs {
                    if let Err(e) = target.set_xattr(&entry.path, name, value) {
                        self.warnings.push(format!(
                            "{}: extended attribute {} not restored: {e}",
                            String::from_utf8_lossy(&entry.path),
                            String::from_utf8_lossy(name)
                        ));
                    }
                }
                self.dirs.push(DirMeta {
                    source: source_name,
                    path: entry.path.clone(),
                    mode,
                    uid: entry.uid,
                    gid: entry.gid,
                    mtime: (entry.mtime, entry.mtime_nsec),
                });
            }
            Kind::Symlink => {
                let link = entry.link.as_deref().unwrap_or_default();
                target
                    .symlink(&entry.path, link)
                    .map_err(|e| Error::io("creating", &shown, e))?;
                if self.as_root {
                    target
                        .chown(&entry.path, entry.uid as u32, entry.gid as u32)
                        .map_err(|e| Error::io("setting the owner of", &shown, e))?;
                }
                target
                    .set_mtime(&entry.path, entry.mtime, entry.mtime_nsec)
                    .map_err(|e| Error::io("setting the time of", &shown, e))?;
            }
            Kind::HardLink => {
                let link = entry.link.as_deref().unwrap_or_default();
                if self.files.contains(link) {
                    target
                        .hard_link(link, &entry.path)
                        .map_err(|e| Error::io("linking", &shown, e))?;
                } else {
                    self.counts.entries -= 1;
                    self.unrestorable.push(rel);
                    self.warnings.push(format!(
                        "{}: left as it is, because the file it is a hard link to ({}) was not restored",
                        String::from_utf8_lossy(&entry.path),
                        String::from_utf8_lossy(link)
                    ));
                }
            }
            Kind::Other(_) => unreachable!("the walk refuses other types"),
        }
        Ok(())
    }
}

/// Where the staging directory for a source going to `target` lives: a
/// hidden directory beside it, so it is on the same filesystem.
pub fn staging_dir(target: &Path, backup_id: &str) -> PathBuf {
    let parent = crate::fsutil::parent_dir(target);
    parent.join(format!(
        "{STAGING_PREFIX}{backup_id}-{}",
        std::process::id()
    ))
}

/// The name prefix of staging directories, so stale ones can be found.
pub const STAGING_PREFIX: &str = ".backstop-staging-";

/// Removes a staging directory and everything in it, never following
/// symlinks out of it.
///
/// # Errors
///
/// Fails when something cannot be removed.
pub fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("removing", path, e)),
        Ok(m) if !m.is_dir() => {
            return std::fs::remove_file(path).map_err(|e| Error::io("removing", path, e));
        }
        Ok(_) => {}
    }
    // Read-only directories (restored modes) must be opened up to empty them.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    for entry in std::fs::read_dir(path).map_err(|e| Error::io("reading", path, e))? {
        let entry = entry.map_err(|e| Error::io("reading", path, e))?;
        remove_tree(&entry.path())?;
    }
    std::fs::remove_dir(path).map_err(|e| Error::io("removing", path, e))
}
