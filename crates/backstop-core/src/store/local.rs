//! A store in a local directory, reached only through descriptors.
//!
//! The root is resolved once, when the store is opened; every key below it
//! is reached one `O_NOFOLLOW` component at a time from the root's
//! descriptor, so a symlink planted inside the store (or a directory
//! swapped for one) makes the operation fail instead of writing, reading or
//! removing elsewhere. A write goes to a hidden temporary file beside its
//! key (mode 0600 from the first byte), is flushed, takes its name with
//! `renameat2(RENAME_NOREPLACE)` (or `linkat` where that is missing), and
//! the directory is flushed.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::{Key, ObjectInfo, Pending, Store, StoreError, StoreWriter};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{TEMP_PREFIX, create_private_dir_all};
use crate::handle::{self, DIR_FLAGS};

/// A directory holding objects as files: key `a/b/c` is the file `c` in
/// the directory `a/b` below the root. Directories are created with mode
/// 0700 and files with 0600.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    dir: OwnedFd,
}

impl LocalStore {
    /// Opens the store at `root`, creating the directory (mode 0700) if it
    /// is missing. Symlinks in `root` itself are resolved now, once.
    ///
    /// # Errors
    ///
    /// Fails when the directory cannot be created, resolved or opened.
    pub fn open(root: &Path) -> Result<LocalStore> {
        create_private_dir_all(root)?;
        let root = std::fs::canonicalize(root).at("resolving", root)?;
        let dir = handle::open_dir(&root).at("opening", &root)?;
        Ok(LocalStore { root, dir })
    }

    /// The directory, resolved.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The directory that holds `key`, opened without following symlinks;
    /// missing directories are created when `create` is set.
    fn parent(&self, key: &Key, create: bool) -> io::Result<OwnedFd> {
        let mut dir = self.dir.try_clone()?;
        let parts: Vec<&str> = key.components().collect();
        for part in &parts[..parts.len() - 1] {
            dir = match open_subdir(&dir, part) {
                Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                    match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => open_subdir(&dir, part)?,
                        Err(e) => return Err(e.into()),
                    }
                }
                other => other?,
            };
        }
        Ok(dir)
    }

    /// The parent of `key` for reading: `None` when a directory on the way
    /// is missing (so the key is too).
    fn existing_parent(&self, key: &Key) -> Result<Option<OwnedFd>> {
        match self.parent(key, false) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(Error::io(
                "opening the directory of",
                self.path(key.as_str()),
                e,
            )),
        }
    }

    /// Every regular file at or below `prefix`: its path relative to the
    /// root and its size. Temporary files are included; symlinks and
    /// other types are not, and are never followed.
    fn files(&self, prefix: Option<&Key>) -> Result<Vec<(String, u64)>> {
        let Some(prefix) = prefix else {
            return self.files_in(self.dir.try_clone().at("opening", &self.root)?, "");
        };
        let Some(parent) = self.existing_parent(prefix)? else {
            return Ok(Vec::new());
        };
        let shown = self.path(prefix.as_str());
        match rustix::fs::statat(&parent, prefix.name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if handle::is_dir(&st) => {
                let dir = open_subdir(&parent, prefix.name()).at("opening", &shown)?;
                self.files_in(dir, prefix.as_str())
            }
            Ok(st) if is_file(&st) => Ok(vec![(prefix.to_string(), st.st_size as u64)]),
            Ok(_) | Err(Errno::NOENT) => Ok(Vec::new()),
            Err(e) => Err(Error::io("looking at", shown, e.into())),
        }
    }

    /// The pending writes of `key` itself: temporary files beside it.
    fn temps_of(&self, key: &Key) -> Result<Vec<Pending>> {
        let Some(parent) = self.existing_parent(key)? else {
            return Ok(Vec::new());
        };
        let shown = self.path(key.as_str());
        let dir = match key.as_str().rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => String::new(),
        };
        let names = handle::list(&parent).at("listing the directory of", &shown)?;
        Ok(names
            .iter()
            .filter_map(|name| pending_of(&format!("{dir}{}", name.to_str().ok()?)))
            .filter(|p| &p.key == key)
            .collect())
    }

    /// [`LocalStore::files`] below the open directory `top`, whose path
    /// relative to the root is `base`.
    fn files_in(&self, top: OwnedFd, base: &str) -> Result<Vec<(String, u64)>> {
        let mut found = Vec::new();
        let mut stack = vec![(top, base.to_string())];
        while let Some((dir, base)) = stack.pop() {
            let shown = self.path(&base);
            for name in handle::list(&dir).at("listing", &shown)? {
                let Ok(text) = name.to_str() else { continue };
                let rel = if base.is_empty() {
                    text.to_string()
                } else {
                    format!("{base}/{text}")
                };
                match rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if handle::is_dir(&st) => {
                        let sub = open_subdir(&dir, text).at("opening", &self.path(&rel))?;
                        stack.push((sub, rel));
                    }
                    Ok(st) if is_file(&st) => found.push((rel, st.st_size as u64)),
                    Ok(_) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(Error::io("looking at", self.path(&rel), e.into())),
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self, key: &Key) -> Result<Box<dyn StoreWriter>> {
        let path = self.path(key.as_str());
        let parent = self
            .parent(key, true)
            .at("creating the directory of", &path)?;
        match rustix::fs::statat(&parent, key.name(), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {}
            Ok(_) => return Err(self.exists(key)),
            Err(e) => return Err(Error::io("looking at", path, e.into())),
        }
        let temp = temp_name(key.name());
        let fd = rustix::fs::openat(
            &parent,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io("creating a temporary file for", &path, e.into()))?;
        Ok(Box::new(LocalWriter {
            file: Some(File::from(fd)),
            parent,
            temp: Some(temp),
            key: key.clone(),
            path,
            store: self.describe(),
            written: 0,
            failed: None,
        }))
    }

    fn open(&self, key: &Key) -> Result<Box<dyn std::io::Read + Send>> {
        Ok(Box::new(self.open_file(key)?))
    }

    fn read_range(&self, key: &Key, start: u64, len: u64) -> Result<Vec<u8>> {
        let file = self.open_file(key)?;
        let path = self.path(key.as_str());
        let size = file.metadata().at("looking at", &path)?.len();
        if start.saturating_add(len) > size {
            return Err(StoreError::Short {
                store: self.describe(),
                key: key.to_string(),
                expected: len,
                got: size.saturating_sub(start).min(len),
            }
            .into());
        }
        let mut buf = vec![0; usize::try_from(len).expect("a range that fits in memory")];
        file.read_exact_at(&mut buf, start).at("reading", &path)?;
        Ok(buf)
    }

    fn head(&self, key: &Key) -> Result<Option<u64>> {
        let Some(parent) = self.existing_parent(key)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&parent, key.name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_file(&st) => Ok(Some(st.st_size as u64)),
            Ok(_) | Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("looking at", self.path(key.as_str()), e.into())),
        }
    }

    fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>> {
        let files = self.files(prefix)?;
        Ok(files
            .into_iter()
            .filter_map(|(rel, size)| {
                Some(ObjectInfo {
                    key: Key::new(&rel).ok()?,
                    size,
                })
            })
            .collect())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        let path = self.path(key.as_str());
        let Some(parent) = self.existing_parent(key)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&parent, key.name(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(Error::io("removing", path, e.into())),
        }
        rustix::fs::fsync(&parent)
            .map_err(|e| Error::io("flushing the directory of", path, e.into()))
    }

    fn pending(&self, prefix: Option<&Key>) -> Result<Vec<Pending>> {
        let mut found: Vec<Pending> = self
            .files(prefix)?
            .into_iter()
            .filter_map(|(rel, _)| pending_of(&rel))
            .collect();
        if let Some(key) = prefix {
            found.extend(self.temps_of(key)?);
        }
        found.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.id.cmp(&b.id)));
        Ok(found)
    }

    fn cleanup_abandoned(&self, prefix: Option<&Key>) -> Result<usize> {
        let pending = self.pending(prefix)?;
        let mut first_error = None;
        for p in &pending {
            let parent = match self.existing_parent(&p.key) {
                Ok(Some(parent)) => parent,
                Ok(None) => continue,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            match rustix::fs::unlinkat(&parent, p.id.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => {
                    let shown = self.path(p.key.as_str()).with_file_name(&p.id);
                    first_error.get_or_insert(Error::io("removing", shown, e.into()));
                }
            }
        }
        first_error.map_or(Ok(pending.len()), Err)
    }
}

impl LocalStore {
    fn exists(&self, key: &Key) -> Error {
        StoreError::AlreadyExists {
            store: self.describe(),
            key: key.to_string(),
        }
        .into()
    }

    /// Opens `key`'s file for reading, refusing anything but a regular file.
    fn open_file(&self, key: &Key) -> Result<File> {
        let path = self.path(key.as_str());
        let not_found = || {
            Error::from(StoreError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            })
        };
        let parent = self.existing_parent(key)?.ok_or_else(not_found)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&parent, key.name(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(not_found()),
            Err(e) => return Err(Error::io("opening", path, e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| Error::io("opening", &path, e.into()))?;
        if !is_file(&st) {
            return Err(not_found());
        }
        Ok(File::from(fd))
    }
}

/// An unfinished write to a [`LocalStore`]: a hidden temporary file beside
/// its key.
struct LocalWriter {
    file: Option<File>,
    parent: OwnedFd,
    /// The temporary name, until the file has its own.
    temp: Option<String>,
    key: Key,
    path: PathBuf,
    store: String,
    written: u64,
    /// The first write error: the writer accepts nothing after it.
    failed: Option<Failed>,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(failed) = &self.failed {
            return Err(failed.again());
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("writer is finished"))?;
        match file.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.failed = Some(Failed::from(&e));
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A write error kept to be given again (`io::Error` is not `Clone`).
struct Failed {
    os: Option<i32>,
    kind: io::ErrorKind,
    message: String,
}

impl Failed {
    fn from(e: &io::Error) -> Failed {
        Failed {
            os: e.raw_os_error(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    fn again(&self) -> io::Error {
        match self.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

impl StoreWriter for LocalWriter {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        if let Some(failed) = &self.failed {
            // Dropping the writer removes the temporary file.
            return Err(Error::io("writing", &self.path, failed.again()));
        }
        let file = self.file.take().expect("file is open until finish");
        file.sync_all().at("flushing", &self.path)?;
        drop(file);
        let temp = self.temp.clone().expect("temporary name until finish");
        self.name_it(&temp)?;
        self.temp = None;
        rustix::fs::fsync(&self.parent)
            .map_err(|e| Error::io("flushing the directory of", &self.path, e.into()))?;
        Ok(self.written)
    }

    fn abort(mut self: Box<Self>) -> Result<()> {
        self.file = None;
        match self.temp.take() {
            Some(temp) => match rustix::fs::unlinkat(&self.parent, temp.as_str(), AtFlags::empty())
            {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(Error::io(
                    "removing the temporary file of",
                    &self.path,
                    e.into(),
                )),
            },
            None => Ok(()),
        }
    }
}

impl LocalWriter {
    /// Gives the temporary file its key's name, never replacing a file.
    fn name_it(&self, temp: &str) -> Result<()> {
        let name = self.key.name();
        let renamed = rustix::fs::renameat_with(
            &self.parent,
            temp,
            &self.parent,
            name,
            RenameFlags::NOREPLACE,
        );
        let result = match renamed {
            // A filesystem without RENAME_NOREPLACE: a hard link refuses an
            // existing name just the same.
            Err(Errno::INVAL) | Err(Errno::NOSYS) => {
                rustix::fs::linkat(&self.parent, temp, &self.parent, name, AtFlags::empty())
                    .and_then(|()| rustix::fs::unlinkat(&self.parent, temp, AtFlags::empty()))
            }
            other => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(StoreError::AlreadyExists {
                store: self.store.clone(),
                key: self.key.to_string(),
            }
            .into()),
            Err(e) => Err(Error::io("naming", &self.path, e.into())),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = rustix::fs::unlinkat(&self.parent, temp.as_str(), AtFlags::empty());
        }
    }
}

/// `.backstop-tmp-<name>.<pid>-<n>`: unique among this process's writers
/// and every other process's, and recognisable as unfinished.
fn temp_name(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{name}.{}-{n}", std::process::id())
}

/// The pending write a file at `rel` is, if it is a temporary file of a
/// writer: the key it was for, and its own name.
fn pending_of(rel: &str) -> Option<Pending> {
    let (dir, file) = match rel.rsplit_once('/') {
        Some((dir, file)) => (Some(dir), file),
        None => (None, rel),
    };
    let rest = file.strip_prefix(TEMP_PREFIX)?;
    let (name, tag) = rest.rsplit_once('.')?;
    let (pid, n) = tag.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    let key = match dir {
        Some(dir) => Key::new(&format!("{dir}/{name}")),
        None => Key::new(name),
    };
    Some(Pending {
        key: key.ok()?,
        id: file.to_string(),
    })
}

/// Opens the directory `name` in `dir` without following a symlink; a
/// symlink there is `ELOOP`, whatever `O_DIRECTORY` made of it.
fn open_subdir(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOTDIR)
            if rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink) =>
        {
            Err(io::Error::from_raw_os_error(libc::ELOOP))
        }
        Err(e) => Err(e.into()),
    }
}

fn is_file(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// Whether an error opening a key's directory means the key is not there:
/// a missing directory, or a file where a directory would be.
fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn key(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    #[test]
    fn objects_are_private_files_named_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("store")).unwrap();
        let mut w = store.create(&key("h/i/a.tar")).unwrap();
        w.write_all(b"hello").unwrap();
        assert_eq!(store.head(&key("h/i/a.tar")).unwrap(), None);
        assert_eq!(store.pending(None).unwrap().len(), 1);
        assert!(
            store.list(None).unwrap().is_empty(),
            "temporary files are not listed"
        );
        assert_eq!(w.finish().unwrap(), 5);
        let file = dir.path().join("store/h/i/a.tar");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let d = std::fs::metadata(dir.path().join("store/h")).unwrap();
        assert_eq!(d.permissions().mode() & 0o777, 0o700);
        let mut text = String::new();
        store
            .open(&key("h/i/a.tar"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hello");
        assert!(store.pending(None).unwrap().is_empty());
    }

    #[test]
    fn a_symlink_inside_the_store_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        let store = LocalStore::open(&dir.path().join("store")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("store/link")).unwrap();
        let err = store.create(&key("link/new")).err().expect("refused");
        assert!(
            matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP))
        );
        assert!(!outside.join("new").exists());
        assert!(store.open(&key("link/secret")).is_err());
        assert!(
            store.list(None).unwrap().is_empty(),
            "the symlink is not followed"
        );
        store.delete(&key("link/secret")).unwrap_err();
        assert!(outside.join("secret").exists());
    }

    #[test]
    fn a_failed_write_is_never_named() {
        if !backstop_test_support::root("mount a small tmpfs") {
            return;
        }
        let fs = backstop_test_support::Tmpfs::mount(256 << 10);
        let store = LocalStore::open(&fs.path().join("store")).unwrap();
        let mut w = store.create(&key("full")).unwrap();
        let err = w.write_all(&vec![1; 1 << 20]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(
            w.write_all(b"more").is_err(),
            "a failed writer stays failed"
        );
        let err = w.finish().unwrap_err();
        assert!(err.hint().unwrap().contains("full"), "{err}");
        assert_eq!(store.head(&key("full")).unwrap(), None);
        assert!(store.pending(None).unwrap().is_empty());
    }

    #[test]
    fn temporary_names_are_recognised() {
        let p = pending_of("a/b/.backstop-tmp-x.tar.123-4").unwrap();
        assert_eq!(p.key.as_str(), "a/b/x.tar");
        assert_eq!(p.id, ".backstop-tmp-x.tar.123-4");
        assert!(pending_of("a/.backstop-tmp-x.tar").is_none());
        assert!(pending_of("a/x.tar.1-2").is_none());
        let name = temp_name("y.zst");
        assert_eq!(pending_of(&name).unwrap().key.as_str(), "y.zst");
    }
}
