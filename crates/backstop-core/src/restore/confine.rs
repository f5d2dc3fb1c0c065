//! Writes confined to one directory (guarantee 3).
//!
//! A [`Confined`] holds a descriptor of its root directory, and every path it
//! is given is resolved beneath that descriptor one component at a time,
//! never following a symlink and never leaving the root: a symlink — from the
//! archive or already on disk — is never written through, and `..`, absolute
//! paths and empty components are refused before any system call. Files are
//! created exclusively (`O_EXCL`), so nothing that exists is ever opened for
//! writing by accident.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

/// Why a path may not be used beneath a confined root.
pub fn check_relative(rel: &[u8]) -> io::Result<()> {
    if rel.is_empty() {
        return Err(refused("an empty path"));
    }
    if rel.first() == Some(&b'/') {
        return Err(refused("an absolute path"));
    }
    for part in rel.split(|&b| b == b'/') {
        if part.is_empty() || part == b"." || part == b".." {
            return Err(refused("a path with an empty, `.` or `..` component"));
        }
    }
    Ok(())
}

/// Whether `e` means there is no such file to read: nothing there, or a
/// file or symlink where a directory should be on the way.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("refused {what}"))
}

/// Splits `a/b/c` into (`a/b`, `c`); a single component has an empty parent.
fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// A directory that writes stay beneath.
pub struct Confined {
    root: OwnedFd,
    root_path: PathBuf,
    /// The most recently opened parent directory, since entries arrive in
    /// depth-first order and siblings share their parent.
    cached: Option<(Vec<u8>, OwnedFd)>,
}

impl Confined {
    /// Opens `root`, an absolute path with no symlink in any component.
    ///
    /// # Errors
    ///
    /// Fails when `root` is missing, not a directory, or passes through a
    /// symlink.
    pub fn open(root: &Path) -> io::Result<Confined> {
        let fd = crate::handle::open_dir(root)?;
        Ok(Confined {
            root: fd,
            root_path: root.to_path_buf(),
            cached: None,
        })
    }

    /// The path of the root.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The root's descriptor.
    pub fn root_fd(&self) -> &OwnedFd {
        &self.root
    }

    /// The path of `rel` beneath the root, for messages.
    pub fn display(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(rel))
    }

    /// Opens the directory `rel` (empty: the root itself) beneath the root,
    /// refusing symlinks in every component.
    fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        if rel.is_empty() {
            return Ok(rustix::fs::openat(&self.root, ".", flags, Mode::empty())?);
        }
        check_relative(rel)?;
        // openat2 resolves the whole path in the kernel, beneath the root and
        // without symlinks; where it is missing, walk one component at a time.
        let how = rustix::fs::ResolveFlags::BENEATH
            | rustix::fs::ResolveFlags::NO_SYMLINKS
            | rustix::fs::ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(rel),
            flags,
            Mode::empty(),
            how,
        ) {
            Ok(fd) => return Ok(fd),
            Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {}
            Err(e) => return Err(e.into()),
        }
        let mut dir = rustix::fs::openat(&self.root, ".", flags, Mode::empty())?;
        for part in rel.split(|&b| b == b'/') {
            dir = rustix::fs::openat(&dir, OsStr::from_bytes(part), flags, Mode::empty())?;
        }
        Ok(dir)
    }

    /// The parent directory of `rel` and the last component's name.
    fn parent<'a>(&mut self, rel: &'a [u8]) -> io::Result<(&OwnedFd, &'a [u8])> {
        check_relative(rel)?;
        let (parent, name) = split(rel);
        let hit = matches!(&self.cached, Some((p, _)) if p.as_slice() == parent);
        if !hit {
            let fd = self.open_dir(parent)?;
            self.cached = Some((parent.to_vec(), fd));
        }
        let (_, fd) = self.cached.as_ref().expect("just cached");
        Ok((fd, name))
    }

    /// Creates directory `rel` (its parent must exist) with `mode`.
    ///
    /// # Errors
    ///
    /// Fails when it exists, or the path is refused.
    pub fn create_dir(&mut self, rel: &[u8], mode: u32) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        rustix::fs::mkdirat(parent, OsStr::from_bytes(name), Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Creates the new file `rel` for writing, with `mode`.
    ///
    /// # Errors
    ///
    /// Fails when anything exists there, or the path is refused.
    pub fn create_file(&mut self, rel: &[u8], mode: u32) -> io::Result<File> {
        let (parent, name) = self.parent(rel)?;
        let fd = rustix::fs::openat(
            parent,
            OsStr::from_bytes(name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Creates the symlink `rel` pointing at `target` (which is stored as
    /// given: a symlink's target is never followed by backstop).
    ///
    /// # Errors
    ///
    /// Fails when anything exists there, or the path is refused.
    pub fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), parent, OsStr::from_bytes(name))?;
        Ok(())
    }

    /// Creates `rel` as a further name of the existing file `target`.
    ///
    /// # Errors
    ///
    /// Fails when `target` is not a regular file beneath the root, when
    /// anything exists at `rel`, or a path is refused.
    pub fn hard_link(&mut self, target: &[u8], rel: &[u8]) -> io::Result<()> {
        check_relative(target)?;
        let (target_parent, target_name) = split(target);
        let target_dir = self.open_dir(target_parent)?;
        let st = rustix::fs::statat(
            &target_dir,
            OsStr::from_bytes(target_name),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(refused(
                "a hard link to something that is not a regular file",
            ));
        }
        let (parent, name) = self.parent(rel)?;
        rustix::fs::linkat(
            &target_dir,
            OsStr::from_bytes(target_name),
            parent,
            OsStr::from_bytes(name),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Opens the existing regular file `rel` for reading, never following a
    /// symlink and never blocking on a FIFO swapped in; `None` when nothing
    /// or something other than a regular file is there.
    ///
    /// # Errors
    ///
    /// Fails on a refused path or an error other than "not there".
    pub fn open_existing(&mut self, rel: &[u8]) -> io::Result<Option<(File, rustix::fs::Stat)>> {
        let (parent, name) = match self.parent(rel) {
            Ok(found) => found,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(parent, OsStr::from_bytes(name), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if is_absent(&e.into()) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Ok(None);
        }
        Ok(Some((File::from(fd), st)))
    }

    /// Gives the open file `file` (pinned when it was compared) the new
    /// name `rel`: a hard link made through its `/proc` entry, so the
    /// inode linked is exactly the one compared, whatever is at its old
    /// name now.
    ///
    /// # Errors
    ///
    /// Fails when anything exists at `rel`, across filesystems, or where
    /// the kernel refuses the link.
    pub fn link_open_file(&mut self, file: &File, rel: &[u8]) -> io::Result<()> {
        let magic = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
        let (parent, name) = self.parent(rel)?;
        rustix::fs::linkat(
            rustix::fs::CWD,
            magic.as_str(),
            parent,
            OsStr::from_bytes(name),
            AtFlags::SYMLINK_FOLLOW,
        )?;
        Ok(())
    }

    /// `lstat` of `rel` beneath the root.
    ///
    /// # Errors
    ///
    /// Fails on a refused path or a missing entry.
    pub fn stat(&mut self, rel: &[u8]) -> io::Result<rustix::fs::Stat> {
        let (parent, name) = self.parent(rel)?;
        Ok(rustix::fs::statat(
            parent,
            OsStr::from_bytes(name),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the mode of `rel`, which must not be a symlink. Only used on
    /// entries just created by this process in a private (0700) staging
    /// directory, where nobody else can put a symlink in their place.
    ///
    /// # Errors
    ///
    /// Fails on a refused path or a system error.
    pub fn chmod(&mut self, rel: &[u8], mode: u32) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        rustix::fs::chmodat(
            parent,
            OsStr::from_bytes(name),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Sets owner and group of `rel` without following a symlink.
    ///
    /// # Errors
    ///
    /// Fails on a refused path or a system error.
    pub fn chown(&mut self, rel: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        rustix::fs::chownat(
            parent,
            OsStr::from_bytes(name),
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Sets the modification (and access) time of `rel`, not following a symlink.
    ///
    /// # Errors
    ///
    /// Fails on a refused path or a system error.
    pub fn set_mtime(&mut self, rel: &[u8], sec: i64, nsec: u32) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        let ts = rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: i64::from(nsec),
        };
        rustix::fs::utimensat(
            parent,
            OsStr::from_bytes(name),
            &rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Sets an extended attribute on `rel` (not following a symlink).
    ///
    /// # Errors
    ///
    /// Fails on a refused path or a system error.
    pub fn set_xattr(&mut self, rel: &[u8], name: &[u8], value: &[u8]) -> io::Result<()> {
        check_relative(rel)?;
        // The path is made of components just created or checked beneath the
        // root; l*xattr does not follow the last one.
        let path = self.display(rel);
        rustix::fs::lsetxattr(
            &path,
            OsStr::from_bytes(name),
            value,
            rustix::fs::XattrFlags::empty(),
        )?;
        Ok(())
    }

    /// Flushes every directory and file written beneath the root in one go:
    /// `syncfs` on the root's filesystem.
    ///
    /// # Errors
    ///
    /// Fails when the filesystem reports a write error.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        rustix::fs::syncfs(self.root.as_fd())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./a",
            b"",
        ] {
            assert!(
                check_relative(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        check_relative(b"a/b/c").unwrap();
        check_relative(b"..hidden/x").unwrap();
    }

    #[test]
    fn writes_never_go_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let mut c = Confined::open(&root).unwrap();
        c.create_dir(b"d", 0o755).unwrap();
        c.symlink(b"escape", outside.as_os_str().as_bytes())
            .unwrap();
        c.symlink(b"d/up", b"../..").unwrap();
        assert!(c.create_file(b"escape/pwned", 0o644).is_err());
        assert!(c.create_dir(b"escape/dir", 0o755).is_err());
        assert!(c.create_file(b"d/up/outside/pwned", 0o644).is_err());
        assert!(
            c.hard_link(b"escape", b"d/h").is_err(),
            "a link to a symlink"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Existing names are never opened for writing.
        c.create_file(b"d/f", 0o644).unwrap();
        assert!(c.create_file(b"d/f", 0o644).is_err());
        c.hard_link(b"d/f", b"d/g").unwrap();
    }
}
