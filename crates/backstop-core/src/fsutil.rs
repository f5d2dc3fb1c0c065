//! Filesystem primitives with the durability rules backstop depends on.
//!
//! Everything that must survive a power cut goes through here: files that
//! appear under their final name only when complete ([`NewFile`]), small files
//! replaced atomically ([`atomic_write`]), directory flushes, and early
//! write-back so that the final flush of a large archive is short.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, RenameFlags};

use crate::error::{Error, IoContext, Result};

/// Creates `path` and any missing parents; directories created here get mode
/// 0700, because backstop's home and store hold secrets.
///
/// # Errors
///
/// Fails when a directory cannot be created.
pub fn create_private_dir_all(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .at("creating directory", path)
}

/// Flushes a directory, so that entries created or renamed in it survive a
/// power cut.
///
/// # Errors
///
/// Fails when the directory cannot be opened or flushed.
pub fn fsync_dir(path: &Path) -> Result<()> {
    let dir = File::open(path).at("opening directory", path)?;
    dir.sync_all().at("flushing directory", path)
}

/// Flushes the directories `dirs` that exist, so that their entries
/// survive a power cut: each on its own when there are a few, else one
/// `syncfs` of each filesystem they are on. On ext4 an `fsync` of a
/// directory waits for a journal commit of its own; a restore in place
/// touches hundreds, and one `syncfs` makes them all durable at once.
///
/// # Errors
///
/// Fails when a directory cannot be opened or a flush fails.
pub fn sync_dirs(dirs: &[PathBuf]) -> Result<()> {
    const FEW: usize = 8;
    let mut existing = dirs.iter().filter(|d| d.symlink_metadata().is_ok());
    if dirs.len() <= FEW {
        return existing.try_for_each(|d| fsync_dir(d));
    }
    let mut synced = std::collections::HashSet::new();
    for dir in existing {
        let file = File::open(dir).at("opening directory", dir)?;
        let dev = file.metadata().at("reading", dir)?.dev();
        if synced.insert(dev) {
            rustix::fs::syncfs(&file)
                .map_err(std::io::Error::from)
                .at("flushing the filesystem of", dir)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory
/// is written, flushed and renamed over `path`, then the directory is flushed.
/// A reader sees either the old content or the new one, never a mix.
///
/// # Errors
///
/// Fails on any I/O error; the temporary file is removed.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    atomic_write_with(path, mode, &mut |out| out.write_all(bytes))
}

/// [`atomic_write`] of what `write` writes, streamed to the file through a
/// buffer rather than held whole in memory first.
///
/// # Errors
///
/// Fails on any I/O error, `write`'s included; the temporary file is
/// removed.
pub fn atomic_write_with(
    path: &Path,
    mode: u32,
    write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_sibling(path, "tmp");
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .at("creating", &tmp)?;
        let mut out = io::BufWriter::with_capacity(1 << 16, file);
        write(&mut out).at("writing", &tmp)?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .at("writing", &tmp)?;
        file.sync_all().at("flushing", &tmp)?;
        fs::rename(&tmp, path).at("renaming into place", path)?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path`, which must not exist, for writing with mode 0600 from
/// the start (spooled dumps, undo captures, copies of archives).
///
/// # Errors
///
/// Fails when it exists or cannot be created.
pub fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .at("creating", path)
}

/// The nearest existing path at or above `path` (`/` at worst).
pub fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent.to_path_buf(),
            _ => return PathBuf::from("/"),
        }
    }
    p
}

/// The directory that holds `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A hidden name next to `path` that no other process uses:
/// `.backstop-tmp-<name>.<tag>-<pid>`, so that what a killed process left
/// is recognised as such ([`temp_siblings`]).
fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    let mut name = OsString::from(TEMP_PREFIX);
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{tag}-{}", std::process::id()));
    parent_dir(path).join(name)
}

/// Removes the temporary files that writers of `path` killed before they
/// finished left beside it. Only for a caller that knows no live writer
/// of `path` exists (it holds the lock, or the path's row is dead).
pub fn remove_temp_siblings(path: &Path) {
    let Some(name) = path.file_name() else { return };
    let mut prefix = OsString::from(TEMP_PREFIX);
    prefix.push(name);
    prefix.push(".");
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether an `open` error means "this filesystem has no `O_TMPFILE`".
fn no_tmpfile(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [Errno::OPNOTSUPP, Errno::ISDIR, Errno::INVAL, Errno::NOSYS].contains(&e)
}

/// A new file in `dir` for reading and writing (mode 0600) that no name
/// reaches (`O_TMPFILE`), or, where the filesystem has none, one whose
/// name is removed at once: gone when closed, even after a crash.
///
/// # Errors
///
/// Fails when `dir` is not writable.
pub fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    let mode = Mode::from_raw_mode(0o600);
    match rustix::fs::open(dir, OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC, mode) {
        Ok(fd) => Ok(File::from(fd)),
        Err(e) if no_tmpfile(e) => {
            let name = dir.join(format!(
                "{TEMP_PREFIX}spool.{}.{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            let flags =
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::open(&name, flags, mode)?;
            let _ = fs::remove_file(&name);
            Ok(File::from(fd))
        }
        Err(e) => Err(e.into()),
    }
}

/// How a [`NewFile`] exists before it is committed.
#[derive(Debug)]
enum Pending {
    /// An unnamed inode (`O_TMPFILE`): a crash leaves nothing behind at all.
    Anonymous,
    /// A hidden temporary name, for filesystems without `O_TMPFILE`.
    Named(PathBuf),
}

/// A file that appears under its final name only once it is complete and on
/// disk. Created with mode 0600 from the first byte.
///
/// The life cycle is `create` → write → [`NewFile::commit`]; dropping it
/// without committing removes every trace of it.
#[derive(Debug)]
pub struct NewFile {
    file: Option<File>,
    pending: Pending,
    final_path: PathBuf,
}

/// The name prefix of named temporary files, so stale ones can be recognised.
pub const TEMP_PREFIX: &str = ".backstop-tmp-";

impl NewFile {
    /// Prepares `final_path`. Nothing is visible under that name until
    /// [`NewFile::commit`].
    ///
    /// # Errors
    ///
    /// Fails when `final_path` already exists or its directory is not writable.
    pub fn create(final_path: &Path) -> Result<NewFile> {
        if final_path.symlink_metadata().is_ok() {
            return Err(Error::usage(
                format!("{} already exists", final_path.display()),
                Some("backstop never overwrites an archive: choose another name".into()),
            ));
        }
        let dir = parent_dir(final_path);
        let tmpfile = rustix::fs::open(
            &dir,
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        match tmpfile {
            Ok(fd) => {
                return Ok(NewFile {
                    file: Some(File::from(fd)),
                    pending: Pending::Anonymous,
                    final_path: final_path.to_path_buf(),
                });
            }
            // This filesystem has no O_TMPFILE: fall back to a name.
            Err(e) if no_tmpfile(e) => {}
            Err(e) => return Err(Error::io("creating a file in", dir, e.into())),
        }
        let mut name = OsString::from(TEMP_PREFIX);
        name.push(final_path.file_name().unwrap_or_default());
        name.push(format!(".{}", std::process::id()));
        let temp = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .at("creating", &temp)?;
        Ok(NewFile {
            file: Some(file),
            pending: Pending::Named(temp),
            final_path: final_path.to_path_buf(),
        })
    }

    /// The open file, for writing.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("file is present until commit")
    }

    /// The name the file will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Flushes the data, gives the file its final name (never replacing an
    /// existing file) and flushes the directory.
    ///
    /// # Errors
    ///
    /// Fails on any I/O error; the file is then removed.
    pub fn commit(mut self) -> Result<PathBuf> {
        let file = self.file.take().expect("file is present until commit");
        file.sync_all().at("flushing", &self.final_path)?;
        let dir = parent_dir(&self.final_path);
        match &self.pending {
            Pending::Anonymous => link_anonymous(&file, &self.final_path)?,
            Pending::Named(temp) => {
                rustix::fs::renameat_with(CWD, temp, CWD, &self.final_path, RenameFlags::NOREPLACE)
                    .map_err(|e| Error::io("renaming into place", &self.final_path, e.into()))?;
                // The temporary name is gone: nothing to clean up on drop.
                self.pending = Pending::Anonymous;
            }
        }
        drop(file);
        fsync_dir(&dir)?;
        Ok(self.final_path.clone())
    }
}

/// Gives an `O_TMPFILE` inode a name. `AT_EMPTY_PATH` needs a capability that
/// unprivileged users lack, so the `/proc/self/fd` route is the fallback.
fn link_anonymous(file: &File, target: &Path) -> Result<()> {
    let direct = rustix::fs::linkat(file, "", CWD, target, AtFlags::EMPTY_PATH);
    match direct {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::EXIST => Err(Error::io(
            "naming",
            target,
            io::Error::from(io::ErrorKind::AlreadyExists),
        )),
        Err(_) => {
            let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
            rustix::fs::linkat(
                CWD,
                proc_path.as_str(),
                CWD,
                target,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(|e| Error::io("naming", target, e.into()))
        }
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if let Pending::Named(temp) = &self.pending {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Starts write-back of a file's dirty pages while it is still being written,
/// so the final flush has little left to do, and keeps the amount of dirty
/// archive data in the page cache bounded.
#[derive(Debug)]
pub struct WriteBack {
    fd: i32,
    started: u64,
    waited: u64,
}

/// Write-back is started every this many bytes.
const WRITEBACK_STEP: u64 = 8 << 20;
/// Data older than this (behind the write position) is waited for and dropped
/// from the page cache.
const WRITEBACK_LAG: u64 = 64 << 20;

impl WriteBack {
    /// Tracks write-back for `file`.
    pub fn new(file: &File) -> WriteBack {
        WriteBack {
            fd: file.as_raw_fd(),
            started: 0,
            waited: 0,
        }
    }

    /// Records that the file now holds `written` bytes. Errors are ignored:
    /// this is an optimisation, and the final `fsync` reports real failures.
    pub fn advance(&mut self, written: u64) {
        if written - self.started >= WRITEBACK_STEP {
            // SAFETY: sync_file_range only reads its integer arguments.
            unsafe {
                libc::sync_file_range(
                    self.fd,
                    self.started as i64,
                    (written - self.started) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = written;
        }
        if self.started.saturating_sub(self.waited) > WRITEBACK_LAG {
            let upto = self.started - WRITEBACK_LAG / 2;
            // SAFETY: as above; posix_fadvise only reads its arguments too.
            unsafe {
                libc::sync_file_range(
                    self.fd,
                    self.waited as i64,
                    (upto - self.waited) as i64,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                libc::posix_fadvise(
                    self.fd,
                    self.waited as i64,
                    (upto - self.waited) as i64,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
            self.waited = upto;
        }
    }
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
///
/// # Errors
///
/// Fails when the filesystem cannot be queried.
pub fn available_space(path: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| Error::io("checking free space on", path, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Converts raw bytes from an archive into a path.
pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_file_is_invisible_until_commit_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.tar");
        let new = NewFile::create(&target).unwrap();
        new.file().write_all(b"hello").unwrap();
        assert!(!target.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no visible temp file"
        );
        new.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn dropped_new_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.tar");
        let new = NewFile::create(&target).unwrap();
        new.file().write_all(b"partial").unwrap();
        drop(new);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn new_file_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.tar");
        fs::write(&target, b"old").unwrap();
        assert!(NewFile::create(&target).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"old");
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.sha256");
        atomic_write(&target, b"one", 0o600).unwrap();
        atomic_write(&target, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn directories_gone_are_skipped_whether_few_or_many() {
        let top = tempfile::tempdir().unwrap();
        for n in [3, 20] {
            let mut dirs: Vec<PathBuf> = (0..n)
                .map(|i| top.path().join(format!("{n}-{i}")))
                .collect();
            for d in &dirs {
                fs::create_dir_all(d).unwrap();
            }
            dirs.insert(1, top.path().join("gone"));
            sync_dirs(&dirs).unwrap();
        }
    }
}
