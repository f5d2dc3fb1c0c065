//! Trees on disk through directory handles: the live tree a restore meets
//! (guarantee 3) and the sources a backup reads.
//!
//! A restore's destination is resolved once, when the plan is made; from
//! then on every path it uses is absolute and free of symlinks. Each
//! operation here opens the parent directory of its path with
//! `RESOLVE_NO_SYMLINKS` (or one `O_NOFOLLOW` component at a time where
//! `openat2` is missing) and acts on the last component relative to that
//! descriptor: a directory swapped for a symlink by another user between
//! two steps makes the step fail with `ELOOP` instead of reaching through
//! it. Removal of a tree works on descriptors all the way down and never
//! follows a symlink it meets, whatever is swapped in while it runs.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};

use crate::error::{Error, Result};
use crate::failpoint;

/// How a directory is opened: for reading, never through a symlink.
pub const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

/// Opens the directory at the absolute `path`, refusing a symlink in any of
/// its components (the error is then `ELOOP`).
///
/// # Errors
///
/// Fails when the path is relative, missing, not a directory, or passes
/// through a symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let how = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(CWD, path, DIR_FLAGS, Mode::empty(), how) {
        Ok(fd) => return Ok(fd),
        Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {}
        // O_DIRECTORY answers ENOTDIR for a symlink at the end: say what it is.
        Err(rustix::io::Errno::NOTDIR)
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        Err(e) => return Err(e.into()),
    }
    let mut dir = rustix::fs::open("/", DIR_FLAGS, Mode::empty())?;
    for part in path.components() {
        match part {
            Component::RootDir => {}
            Component::Normal(name) => {
                dir = match rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty()) {
                    Ok(next) => next,
                    // O_DIRECTORY answers ENOTDIR for a symlink: say what it is.
                    Err(rustix::io::Errno::NOTDIR)
                        if rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(
                            |st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink,
                        ) =>
                    {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    Err(e) => return Err(e.into()),
                };
            }
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    Ok(dir)
}

/// The parent directory of `path`, opened as [`open_dir`] does, and the
/// name of the last component.
///
/// # Errors
///
/// Fails as [`open_dir`] does, or when `path` has no last component.
pub fn open_parent(path: &Path) -> io::Result<(OwnedFd, &OsStr)> {
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok((open_dir(parent)?, name))
}

/// `lstat` of `path`, its parent reached without symlinks.
///
/// # Errors
///
/// Fails when it is missing or its path passes through a symlink.
pub fn lstat(path: &Path) -> io::Result<Stat> {
    let (dir, name) = open_parent(path)?;
    Ok(rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The inode at `path`, or `None` when nothing is there.
pub fn ino(path: &Path) -> Option<u64> {
    lstat(path).ok().map(|st| st.st_ino)
}

/// Whether this user may write `path` itself (not following a symlink
/// there).
pub fn writable(path: &Path) -> bool {
    let Ok((dir, name)) = open_parent(path) else {
        return false;
    };
    rustix::fs::accessat(
        &dir,
        name,
        rustix::fs::Access::WRITE_OK,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::EACCESS,
    )
    .is_ok()
}

/// Whether `st` is a directory.
pub fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Renames `from` to `to`, both parents reached without symlinks.
///
/// # Errors
///
/// Fails as `renameat2` does, or `ELOOP` for a symlink on the way.
pub fn rename(from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
    let (from_dir, from_name) = open_parent(from)?;
    let (to_dir, to_name) = open_parent(to)?;
    rustix::fs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags)?;
    Ok(())
}

/// Creates the directory `path` with `mode`.
///
/// # Errors
///
/// Fails when something is there, or a symlink is on the way.
pub fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Removes the empty directory `path`.
///
/// # Errors
///
/// Fails when it is not empty, missing, or a symlink is on the way.
pub fn rmdir(path: &Path) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Sets the mode of `path` without following a symlink there: the entry is
/// pinned by an `O_PATH` descriptor, and the mode set through it.
///
/// # Errors
///
/// Fails when `path` is a symlink, missing, or not ours.
pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    chmod_at(&dir, name, mode)
}

/// [`chmod`] of `name` in `dir`.
///
/// # Errors
///
/// Fails when `name` is a symlink, missing, or not ours.
pub fn chmod_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let pinned = Pinned::at(dir, name)?;
    rustix::fs::chmodat(
        CWD,
        pinned.magic.as_str(),
        Mode::from_raw_mode(mode),
        AtFlags::empty(),
    )?;
    Ok(())
}

/// An entry that is not a symlink, pinned by an `O_PATH` descriptor. Such
/// a descriptor cannot be `fchmod`ed, but its `/proc` entry names exactly
/// the pinned inode, and calls made through it follow nothing else.
struct Pinned {
    /// Held open for as long as `magic` is used.
    _fd: OwnedFd,
    st: Stat,
    magic: String,
}

impl Pinned {
    fn at(dir: &OwnedFd, name: &OsStr) -> io::Result<Pinned> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let magic = format!("/proc/self/fd/{}", fd.as_raw_fd());
        Ok(Pinned { _fd: fd, st, magic })
    }
}

/// Runs `f` on `path` pinned (opened `O_PATH`, not following a symlink
/// there, which is refused): `f` gets the `/proc/self/fd` path that reaches
/// exactly that inode, and its stat.
///
/// # Errors
///
/// Fails when `path` is a symlink or missing, or as `f` does.
pub fn with_pinned<T>(path: &Path, f: impl FnOnce(&Path, &Stat) -> io::Result<T>) -> io::Result<T> {
    let (dir, name) = open_parent(path)?;
    let pinned = Pinned::at(&dir, name)?;
    f(Path::new(&pinned.magic), &pinned.st)
}

/// Sets the mode, owner and modification time of `path` without following
/// a symlink there (pinned as [`chmod`] does); the owner only where it
/// differs, which only root may change.
///
/// # Errors
///
/// Fails when `path` is a symlink, missing, or not ours.
pub fn set_attrs(
    path: &Path,
    mode: u32,
    (uid, gid): (u32, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    let pinned = Pinned::at(&dir, name)?;
    let (magic, st) = (pinned.magic.as_str(), &pinned.st);
    if (st.st_uid, st.st_gid) != (uid, gid) {
        rustix::fs::chownat(
            CWD,
            magic,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
            AtFlags::empty(),
        )?;
    }
    // After chown, which may clear the set-gid bit.
    rustix::fs::chmodat(CWD, magic, Mode::from_raw_mode(mode), AtFlags::empty())?;
    let ts = rustix::fs::Timespec {
        tv_sec: mtime.0,
        tv_nsec: i64::from(mtime.1),
    };
    let times = rustix::fs::Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, magic, &times, AtFlags::empty())?;
    Ok(())
}

/// Flushes the directory `path` (its entries) to disk.
///
/// # Errors
///
/// Fails when it cannot be opened as [`open_dir`] does, or flushed.
pub fn fsync_dir(path: &Path) -> Result<()> {
    let fd = open_dir(path).map_err(|e| Error::io("opening", path, e))?;
    rustix::fs::fsync(&fd).map_err(|e| Error::io("flushing", path, e.into()))
}

/// Removes `path` and, if it is a directory, everything beneath it. A
/// symlink anywhere inside is removed as a symlink, never followed;
/// nothing missing is an error.
///
/// # Errors
///
/// Fails when something cannot be removed (the error names it), or when a
/// symlink is on the way to `path` itself.
pub fn remove_tree(path: &Path) -> Result<()> {
    let (dir, name) = match open_parent(path) {
        Ok(found) => found,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::io("removing", path, e)),
    };
    remove_tree_at(&dir, name, path)
}

/// One directory being emptied: its descriptor, the names left in it, and
/// its own name in its parent.
struct Frame {
    fd: OwnedFd,
    left: Vec<CString>,
    name: CString,
}

/// [`remove_tree`] of `name` in `dir`; `shown` is its path, for messages.
fn remove_tree_at(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<()> {
    let io = |e: io::Error| Error::io("removing", shown, e);
    let top = CString::new(name.as_bytes()).map_err(|_| io(einval()))?;
    let Some(first) = open_for_removal(dir, &top).map_err(io)? else {
        return Ok(());
    };
    let mut stack = vec![first];
    // Iterative, so a deep tree cannot exhaust the stack; it holds one
    // descriptor a level.
    while let Some(frame) = stack.last_mut() {
        match frame.left.pop() {
            Some(entry) => {
                if let Some(child) = open_for_removal(&frame.fd, &entry).map_err(io)? {
                    stack.push(child);
                }
            }
            None => {
                let done = stack.pop().expect("a frame");
                let parent = stack.last().map_or(dir, |f| &f.fd);
                drop(done.fd);
                rustix::fs::unlinkat(parent, done.name.as_c_str(), AtFlags::REMOVEDIR)
                    .map_err(|e| io(e.into()))?;
            }
        }
    }
    Ok(())
}

/// Removes `name` in `dir` if it is not a directory (`None`), or opens it
/// without following a symlink and lists it (a frame to empty). A name
/// that vanished meanwhile is `None` too.
fn open_for_removal(dir: &OwnedFd, name: &CString) -> io::Result<Option<Frame>> {
    let st = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !is_dir(&st) {
        return unlink_file(dir, name).map(|()| None);
    }
    failpoint::hit("restore.cleanup-descend").map_err(|_| io::Error::other("failure point"))?;
    let fd = match rustix::fs::openat(dir, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        // Swapped for something else since the stat: remove that instead.
        Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
            return unlink_file(dir, name).map(|()| None);
        }
        // A directory without read or search permission for us (a restored
        // mode): ours, so opened up first.
        Err(rustix::io::Errno::ACCESS) => {
            chmod_at(dir, OsStr::from_bytes(name.as_bytes()), 0o700)?;
            rustix::fs::openat(dir, name.as_c_str(), DIR_FLAGS, Mode::empty())?
        }
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if st.st_mode & 0o300 != 0o300 && st.st_uid == rustix::process::geteuid().as_raw() {
        // Entries of a read-only directory cannot be removed: open it up.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
    }
    let left = list(&fd)?;
    Ok(Some(Frame {
        fd,
        left,
        name: name.clone(),
    }))
}

fn unlink_file(dir: &OwnedFd, name: &CString) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The names in the directory `fd`, without `.` and `..`, in byte order.
///
/// # Errors
///
/// Fails when the directory cannot be read.
pub fn list(fd: impl AsFd) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(fd.as_fd())?;
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        names.push(name.to_owned());
    }
    names.sort_unstable();
    Ok(names)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_on_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let err = open_dir(&dir.path().join("link/sub")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let err = mkdir(&dir.path().join("link/new"), 0o755).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(!real.join("new").exists());
        open_dir(&real.join("sub")).unwrap();
    }

    #[test]
    fn removal_never_follows_symlinks_inside() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("keep"), b"k").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), b"f").unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a/to-victim")).unwrap();
        std::fs::set_permissions(tree.join("a/b"), std::fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(victim.join("keep").exists());
        remove_tree(&tree).unwrap();
    }

    #[test]
    fn a_deep_tree_is_removed_without_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        let mut fd = open_dir(&top).unwrap();
        for _ in 0..600 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", DIR_FLAGS, Mode::empty()).unwrap();
        }
        remove_tree(&top).unwrap();
        assert!(!top.exists());
    }
}
