//! What a restore would change: the backup's entries against the live tree,
//! path by path.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::restore::handle;

/// What happens to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Not in the destination: written.
    Create,
    /// In both, different: the backup's version replaces it (in merge mode
    /// the current one is kept as `.bak-<time>`).
    Replace,
    /// In both, the same: nothing to do.
    Unchanged,
    /// Only in the destination, and the restore is exact: removed.
    Delete,
    /// A never-restore or excluded path: left as it is.
    Keep,
    /// Only in the destination, and the restore is merge or safe: left.
    Skip,
    /// Safe mode: in both and different: left as it is, and reported.
    Conflict,
}

/// One entry of a backup or of a live tree, as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub mtime: (i64, u32),
    pub link: Option<Vec<u8>>,
    /// SHA-256 of a file's content, when known.
    pub sha256: Option<[u8; 32]>,
    /// Inode and change time, on disk (0 for an archive's entry).
    pub ino: u64,
    pub ctime: (i64, u64),
}

/// One path and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedAction {
    /// Relative to the destination.
    pub path: String,
    pub action: Action,
    /// `dir`, `file`, `symlink`.
    pub kind: &'static str,
}

/// Every path a restore touches, and the totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub totals: Totals,
    /// Every path and its action.
    pub actions: Vec<PlannedAction>,
}

impl Changes {
    /// Records what happens to one path.
    pub fn push(&mut self, path: String, action: Action, kind: &'static str, bytes: u64) {
        self.totals.add(action, bytes);
        self.actions.push(PlannedAction { path, action, kind });
    }
}

/// The number of paths per action, and the bytes to write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub create: u64,
    pub replace: u64,
    pub unchanged: u64,
    pub delete: u64,
    pub keep: u64,
    pub skip: u64,
    pub conflict: u64,
    /// Bytes of file content the restore writes.
    pub bytes: u64,
}

impl Totals {
    pub fn add(&mut self, action: Action, bytes: u64) {
        match action {
            Action::Create => self.create += 1,
            Action::Replace => self.replace += 1,
            Action::Unchanged => self.unchanged += 1,
            Action::Delete => self.delete += 1,
            Action::Keep => self.keep += 1,
            Action::Skip => self.skip += 1,
            Action::Conflict => self.conflict += 1,
        }
        if matches!(action, Action::Create | Action::Replace) {
            self.bytes += bytes;
        }
    }
}

/// Reads the live tree under `top` (relative paths, `""` for `top` itself)
/// through directory handles, never following a symlink and not descending
/// into a directory that a `keep(rel)` rule matches (it is listed as one
/// kept path). The listing never stops early or skips silently: a directory
/// it cannot read, and no rule keeps, is an error naming it, since what a
/// restore cannot see it cannot keep.
///
/// # Errors
///
/// Fails on an unreadable directory that no rule keeps, a symlink on the
/// way to `top`, or any other error reading the tree.
pub fn live_tree(
    top: &Path,
    keep: &dyn Fn(&Path, bool) -> bool,
) -> Result<BTreeMap<PathBuf, Node>> {
    list_tree(top, keep, false)
}

/// Reads a staged tree, this restore's own, like [`live_tree`]; a
/// directory whose restored mode shuts out this user is opened up while it
/// is read and given its mode back.
///
/// # Errors
///
/// Fails on any error reading the tree.
pub fn staged_tree(top: &Path) -> Result<BTreeMap<PathBuf, Node>> {
    list_tree(top, &|_, _| false, true)
}

fn list_tree(
    top: &Path,
    keep: &dyn Fn(&Path, bool) -> bool,
    open_up: bool,
) -> Result<BTreeMap<PathBuf, Node>> {
    let mut out = BTreeMap::new();
    let mut reopened: Vec<(PathBuf, u32)> = Vec::new();
    let listed = walk_into(top, keep, open_up, &mut out, &mut reopened);
    for (rel, mode) in reopened.iter().rev() {
        let path = top.join(rel);
        handle::chmod(&path, *mode).map_err(|e| Error::io("restoring the mode of", &path, e))?;
    }
    listed.map(|()| out)
}

fn walk_into(
    top: &Path,
    keep: &dyn Fn(&Path, bool) -> bool,
    open_up: bool,
    out: &mut BTreeMap<PathBuf, Node>,
    reopened: &mut Vec<(PathBuf, u32)>,
) -> Result<()> {
    let st = match handle::lstat(top) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::io("reading", top, e)),
    };
    let link = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        let (dir, name) = handle::open_parent(top).map_err(|e| Error::io("reading", top, e))?;
        Some(read_link(&dir, name, top)?)
    } else {
        None
    };
    out.insert(PathBuf::new(), node(&st, link));
    if !handle::is_dir(&st) {
        return Ok(());
    }
    let fd = handle::open_dir(top).map_err(|e| unreadable(top, e))?;
    let names = handle::list(&fd).map_err(|e| unreadable(top, e))?;
    let mut stack = vec![(fd, PathBuf::new(), names)];
    while let Some((dir, rel_dir, names)) = stack.last_mut() {
        let Some(name) = names.pop() else {
            stack.pop();
            continue;
        };
        // Another source's staging directory, made by this restore.
        if name
            .to_bytes()
            .starts_with(crate::restore::stage::STAGING_PREFIX.as_bytes())
        {
            continue;
        }
        let rel = rel_dir.join(OsStr::from_bytes(name.to_bytes()));
        let shown = top.join(&rel);
        let st = match rustix::fs::statat(&*dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Gone since the directory was listed.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(unreadable(&shown, e.into())),
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        let link = if kind == FileType::Symlink {
            Some(read_link(dir, OsStr::from_bytes(name.to_bytes()), &shown)?)
        } else {
            None
        };
        out.insert(rel.clone(), node(&st, link));
        if kind != FileType::Directory || keep(&rel, true) {
            continue;
        }
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let child = match rustix::fs::openat(&*dir, name.as_c_str(), flags, Mode::empty()) {
            Err(rustix::io::Errno::ACCESS) if open_up => {
                let mode = st.st_mode & 0o7777;
                handle::chmod_at(dir, OsStr::from_bytes(name.to_bytes()), mode | 0o700)
                    .map_err(|e| unreadable(&shown, e))?;
                reopened.push((rel.clone(), mode));
                rustix::fs::openat(&*dir, name.as_c_str(), flags, Mode::empty())
            }
            other => other,
        }
        .map_err(|e| unreadable(&shown, e.into()))?;
        let names = handle::list(&child).map_err(|e| unreadable(&shown, e))?;
        stack.push((child, rel, names));
    }
    Ok(())
}

/// The error for a part of the destination that cannot be read.
fn unreadable(path: &Path, e: std::io::Error) -> Error {
    Error::Refused {
        message: format!(
            "cannot read {} in the destination ({e}): a restore must see everything there to know what to keep",
            path.display()
        ),
        hint: Some(
            "give this user read access to it, restore as a user who can read it, or leave it alone with --exclude PATH"
                .into(),
        ),
    }
}

fn read_link(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<Vec<u8>> {
    rustix::fs::readlinkat(dir, name, Vec::new())
        .map(|l| l.into_bytes())
        .map_err(|e| Error::io("reading the symlink", shown, e.into()))
}

fn node(st: &Stat, link: Option<Vec<u8>>) -> Node {
    let ft = FileType::from_raw_mode(st.st_mode);
    Node {
        kind: match ft {
            FileType::Directory => "dir",
            FileType::Symlink => "symlink",
            FileType::RegularFile => "file",
            _ => "other",
        },
        size: if ft == FileType::RegularFile {
            st.st_size as u64
        } else {
            0
        },
        mode: st.st_mode & 0o7777,
        mtime: (st.st_mtime, st.st_mtime_nsec.clamp(0, 999_999_999) as u32),
        link,
        sha256: None,
        ino: st.st_ino,
        ctime: crate::restore::stage::change_time(st),
    }
}

/// SHA-256 of a file's content (a file of backstop's own: an archive, a
/// copy in the store).
pub fn hash_file(path: &Path) -> Option<[u8; 32]> {
    hash_reader(std::fs::File::open(path).ok()?)
}

/// SHA-256 of a live file's content, opened through its parent's handle:
/// never through a symlink, never blocking on a FIFO swapped in. `None`
/// for anything but a regular file.
pub fn hash_live(path: &Path) -> Option<[u8; 32]> {
    let (dir, name) = handle::open_parent(path).ok()?;
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, name, flags, Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return None;
    }
    hash_reader(std::fs::File::from(fd))
}

fn hash_reader(mut file: std::fs::File) -> Option<[u8; 32]> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Whether the backup's `want` and the live `have` are the same entry.
/// Files compare by content: the same inode (a live file the restore
/// linked into its staged tree, found equal byte for byte), else their
/// hashes.
pub fn same(want: &Node, have: &Node, live_path: &Path, staged_path: Option<&Path>) -> bool {
    if want.kind != have.kind {
        return false;
    }
    match want.kind {
        "symlink" => want.link == have.link,
        "dir" => true,
        "file" => {
            if want.size != have.size {
                return false;
            }
            if want.ino != 0 && want.ino == have.ino {
                return true;
            }
            match (want.sha256, staged_path) {
                (Some(h), _) => hash_live(live_path) == Some(h),
                (None, Some(staged)) => hash_live(staged) == hash_live(live_path),
                (None, None) => false,
            }
        }
        _ => false,
    }
}

/// The path of a relative path for display: `.` for the top.
pub fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

/// Joins `base` and a relative path given as bytes.
pub fn join(base: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(OsStr::from_bytes(rel))
    }
}
