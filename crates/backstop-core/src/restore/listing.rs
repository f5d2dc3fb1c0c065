//! Both sides of a restore as sorted streams: a tree on disk walked
//! through directory handles, in the order archives hold their entries
//! (depth first, names in byte order), one entry at a time.
//!
//! Memory is the depth of the tree times the width of its directories,
//! never the tree: a restore compares a million files with the backup
//! without holding either list.

use std::ffi::{CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::error::{Error, Result};
use crate::handle;
use crate::restore::diff::{Kind, Node};

/// One directory being listed: its descriptor, its path below the top,
/// and the names left, in reverse order (the next one is last).
struct Frame {
    fd: OwnedFd,
    rel: PathBuf,
    left: Vec<CString>,
}

/// A tree on disk as a stream of `(relative path, node)`, the top itself
/// first as `""`. A directory is descended into when the entry after it is
/// asked for, unless [`Walk::take`] was told not to: what a keep rule covers
/// is never opened. Nothing is followed through a symlink, and an entry
/// that cannot be read is an error, never a silent gap.
pub struct Walk {
    top: PathBuf,
    stack: Vec<Frame>,
    /// The next entry, looked at but not yet taken.
    peeked: Option<(PathBuf, Node)>,
    /// The directory last taken, to open before the next entry unless
    /// skipped: (its parent's frame index, its name).
    pending: Option<(usize, CString, PathBuf, u32)>,
    /// The top, not yet given out.
    first: Option<(PathBuf, Node)>,
    /// Open up directories whose mode shuts this user out (a staged tree
    /// of this restore's own), giving them their mode back at the end.
    open_up: bool,
    reopened: Vec<(PathBuf, u32)>,
}

impl Walk {
    /// Starts a walk of `top`; a missing `top` is an empty walk.
    ///
    /// # Errors
    ///
    /// Fails when `top` cannot be looked at, or is reached through a
    /// symlink.
    pub fn new(top: &Path, open_up: bool) -> Result<Walk> {
        let mut walk = Walk {
            top: top.to_path_buf(),
            stack: Vec::new(),
            peeked: None,
            pending: None,
            first: None,
            open_up,
            reopened: Vec::new(),
        };
        let st = match handle::lstat(top) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(walk),
            Err(e) => return Err(Error::io("reading", top, e)),
        };
        let link = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            let (dir, name) = handle::open_parent(top).map_err(|e| Error::io("reading", top, e))?;
            Some(read_link(&dir, name, top)?)
        } else {
            None
        };
        if handle::is_dir(&st) {
            let fd = handle::open_dir(top).map_err(|e| unreadable(top, e))?;
            let left = reversed(handle::list(&fd).map_err(|e| unreadable(top, e))?);
            walk.stack.push(Frame {
                fd,
                rel: PathBuf::new(),
                left,
            });
        }
        walk.first = Some((PathBuf::new(), node(&st, link)));
        Ok(walk)
    }

    /// The next entry, without taking it.
    ///
    /// # Errors
    ///
    /// Fails on a directory that cannot be read, or any other read error.
    pub fn peek(&mut self) -> Result<Option<&(PathBuf, Node)>> {
        if self.peeked.is_none() {
            self.peeked = self.advance()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// Takes the entry [`Walk::peek`] showed; `descend` says whether a
    /// directory's entries follow (false: it is kept whole, not opened).
    pub fn take(&mut self, descend: bool) -> Option<(PathBuf, Node)> {
        let taken = self.peeked.take();
        if let Some((rel, node)) = &taken
            && node.kind == Kind::Dir
            && descend
            && !rel.as_os_str().is_empty()
        {
            let parent = self.stack.len() - 1;
            let name = CString::new(
                rel.file_name()
                    .map(OsStr::as_bytes)
                    .unwrap_or_default()
                    .to_vec(),
            )
            .unwrap_or_default();
            self.pending = Some((parent, name, rel.clone(), node.mode));
        }
        if let Some((rel, _)) = &taken
            && rel.as_os_str().is_empty()
            && !descend
        {
            // The top kept whole: nothing below it is listed.
            self.stack.clear();
        }
        taken
    }

    /// Gives back the modes of directories opened up to be read.
    ///
    /// # Errors
    ///
    /// Fails when a mode cannot be set back.
    pub fn finish(mut self) -> Result<()> {
        self.stack.clear();
        for (rel, mode) in self.reopened.iter().rev() {
            let path = self.top.join(rel);
            handle::chmod(&path, *mode)
                .map_err(|e| Error::io("restoring the mode of", &path, e))?;
        }
        self.reopened.clear();
        Ok(())
    }

    fn advance(&mut self) -> Result<Option<(PathBuf, Node)>> {
        if let Some(top) = self.first.take() {
            return Ok(Some(top));
        }
        if let Some((parent, name, rel, mode)) = self.pending.take() {
            self.descend(parent, &name, rel, mode)?;
        }
        loop {
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(name) = frame.left.pop() else {
                self.stack.pop();
                continue;
            };
            // Another source's staging directory, made by this restore.
            if crate::restore::stage::is_own_staging(name.to_bytes()) {
                continue;
            }
            let rel = frame.rel.join(OsStr::from_bytes(name.to_bytes()));
            let shown = self.top.join(&rel);
            let st = match rustix::fs::statat(&frame.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            {
                Ok(st) => st,
                // Gone since the directory was listed.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(unreadable(&shown, e.into())),
            };
            let link = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                Some(read_link(
                    &frame.fd,
                    OsStr::from_bytes(name.to_bytes()),
                    &shown,
                )?)
            } else {
                None
            };
            return Ok(Some((rel, node(&st, link))));
        }
    }

    /// Opens the directory `name` of frame `parent` and lists it.
    fn descend(&mut self, parent: usize, name: &CString, rel: PathBuf, mode: u32) -> Result<()> {
        let shown = self.top.join(&rel);
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let dir = &self.stack[parent].fd;
        let fd = match rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty()) {
            Err(rustix::io::Errno::ACCESS) if self.open_up => {
                handle::chmod_at(dir, OsStr::from_bytes(name.to_bytes()), mode | 0o700)
                    .map_err(|e| unreadable(&shown, e))?;
                self.reopened.push((rel.clone(), mode));
                rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty())
            }
            other => other,
        }
        .map_err(|e| unreadable(&shown, e.into()))?;
        let left = reversed(handle::list(&fd).map_err(|e| unreadable(&shown, e))?);
        // Frames deeper than the parent are done: their names ran out
        // before this directory's turn came.
        self.stack.truncate(parent + 1);
        self.stack.push(Frame { fd, rel, left });
        Ok(())
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        // A walk given up early (an error) still gives modes back.
        self.stack.clear();
        for (rel, mode) in self.reopened.iter().rev() {
            let _ = handle::chmod(&self.top.join(rel), *mode);
        }
    }
}

/// Checks that [`Walk`] could walk the tree at `top` to its end without
/// descending where `kept` says: every directory opens and lists, and may
/// be searched. Only directories are opened, and entries are not looked at
/// (the kernel's entry types say which are directories), so it costs a
/// fraction of the walk. Nothing is followed through a symlink; a missing
/// `top` passes.
///
/// # Errors
///
/// Fails, naming it, on the first part in the walk's order that cannot be
/// read.
pub fn check_listable(top: &Path, kept: &dyn Fn(&Path) -> bool) -> Result<()> {
    let st = match handle::lstat(top) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::io("reading", top, e)),
    };
    if !handle::is_dir(&st) {
        return Ok(());
    }
    let fd = handle::open_dir(top).map_err(|e| unreadable(top, e))?;
    let mut stack = vec![Listed::read(fd, PathBuf::new(), top)?];
    while let Some(dir) = stack.last_mut() {
        let Some((name, is_dir)) = dir.left.pop() else {
            stack.pop();
            continue;
        };
        let rel = dir.rel.join(OsStr::from_bytes(name.to_bytes()));
        if !is_dir || kept(&rel) {
            continue;
        }
        let shown = top.join(&rel);
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir.fd, name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            // Gone since its parent was listed.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(unreadable(&shown, e.into())),
        };
        let listed = Listed::read(fd, rel, &shown)?;
        stack.push(listed);
    }
    Ok(())
}

/// A directory being checked by [`check_listable`]: its names, in reverse
/// order, each with whether it is a directory.
struct Listed {
    fd: OwnedFd,
    rel: PathBuf,
    left: Vec<(CString, bool)>,
}

impl Listed {
    /// Lists the open directory `fd`. The listing reopens it as `.`, which
    /// needs search permission: a directory that may be listed but not
    /// searched fails here, as it would fail the walk.
    fn read(fd: OwnedFd, rel: PathBuf, shown: &Path) -> Result<Listed> {
        let mut left = Vec::new();
        let mut dir = rustix::fs::Dir::read_from(&fd).map_err(|e| unreadable(shown, e.into()))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| unreadable(shown, e.into()))?;
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." || crate::restore::stage::is_own_staging(bytes) {
                continue;
            }
            let is_dir = match entry.file_type() {
                // A filesystem that does not say: look.
                FileType::Unknown => match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                {
                    Ok(st) => handle::is_dir(&st),
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => {
                        let path = shown.join(OsStr::from_bytes(bytes));
                        return Err(unreadable(&path, e.into()));
                    }
                },
                ft => ft == FileType::Directory,
            };
            left.push((name.to_owned(), is_dir));
        }
        // The next one last.
        left.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        Ok(Listed { fd, rel, left })
    }
}

fn reversed(mut names: Vec<CString>) -> Vec<CString> {
    names.reverse();
    names
}

/// The error for a part of the destination that cannot be read.
pub fn unreadable(path: &Path, e: std::io::Error) -> Error {
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

/// The node of what `st` describes.
pub fn node(st: &Stat, link: Option<Vec<u8>>) -> Node {
    let ft = FileType::from_raw_mode(st.st_mode);
    Node {
        kind: match ft {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::RegularFile => Kind::File,
            _ => Kind::Other,
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
        owner: Some((u64::from(st.st_uid), u64::from(st.st_gid))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(top: &Path, skip: &[&str]) -> Vec<String> {
        let mut walk = Walk::new(top, false).unwrap();
        let mut out = Vec::new();
        while let Some((rel, _)) = walk.peek().unwrap() {
            let shown = rel.display().to_string();
            let descend = !skip.contains(&shown.as_str());
            walk.take(descend);
            out.push(shown);
        }
        out
    }

    #[test]
    fn the_order_is_the_archives_and_kept_directories_are_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("t");
        for p in ["a/b/c", "a/b-x", "a.c", "z/keep/inner"] {
            std::fs::create_dir_all(top.join(p)).unwrap();
        }
        std::fs::write(top.join("a/b/c/f"), b"f").unwrap();
        let got = all(&top, &["z/keep"]);
        let want = [
            "", "a", "a/b", "a/b/c", "a/b/c/f", "a/b-x", "a.c", "z", "z/keep",
        ];
        assert_eq!(got, want);
        // The same order as paths compare.
        let mut sorted: Vec<PathBuf> = got.iter().map(PathBuf::from).collect();
        sorted.sort();
        assert_eq!(sorted, got.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    #[test]
    fn the_check_asks_about_directories_only_and_skips_kept_ones() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("t");
        for p in ["a/b", "z/keep/inner", "outside"] {
            std::fs::create_dir_all(top.join(p)).unwrap();
        }
        std::fs::write(top.join("a/f"), b"f").unwrap();
        std::fs::write(top.join("z/keep/inner/g"), b"g").unwrap();
        std::os::unix::fs::symlink(top.join("outside"), top.join("a/link")).unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        check_listable(&top, &|rel: &Path| {
            asked.borrow_mut().push(rel.display().to_string());
            rel == Path::new("z/keep")
        })
        .unwrap();
        assert_eq!(asked.into_inner(), ["a", "a/b", "outside", "z", "z/keep"]);
        check_listable(&dir.path().join("none"), &|_: &Path| false).unwrap();
        check_listable(&top.join("a/link"), &|_: &Path| panic!("followed")).unwrap();
    }

    #[test]
    fn a_missing_top_is_empty_and_a_file_top_is_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        assert!(all(&dir.path().join("none"), &[]).is_empty());
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        assert_eq!(all(&dir.path().join("f"), &[]), [""]);
    }
}
