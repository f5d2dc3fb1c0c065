//! Reading one scanned entry from the filesystem: its metadata, extended
//! attributes, link target and content, hashed as it is read. Runs on the
//! reader threads of the writer pipeline.
//!
//! Files are opened first (without following symlinks) and everything else is
//! asked of the open descriptor, so a file costs one path lookup however many
//! questions are asked about it, and the metadata and content belong to the
//! same file even if the path is replaced meanwhile.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, openat, statat};
use rustix::io::Errno;

use sha2::{Digest, Sha256};

use crate::handle::DIR_FLAGS;
use crate::source::scan::NodeKind;

/// Files up to this size are read in one piece and sent as one message;
/// larger ones stream in chunks of this size.
pub const CHUNK: usize = 1 << 20;

/// The metadata of an entry as read, which its tar header records.
#[derive(Debug, Clone)]
pub struct EntryMeta {
    pub kind: MetaKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: Option<Arc<str>>,
    pub gname: Option<Arc<str>>,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The inode and change time as read, for the backup's index.
    pub ino: u64,
    pub ctime: (i64, u32),
}

/// The type-specific part of [`EntryMeta`].
#[derive(Debug, Clone)]
pub enum MetaKind {
    Dir,
    /// `size` bytes of content; for a sparse file only the data segments in
    /// `sparse` are sent, `size` being the apparent size.
    File {
        size: u64,
        sparse: Option<Vec<(u64, u64)>>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A further name of an earlier file: no data.
    HardLink,
}

/// What a reader sends the tar writer about one entry: a single `Whole`,
/// `Vanished` or `Unreadable`; or, for a large file, `Meta`, any number of
/// `Data`, then `End`.
#[derive(Debug)]
pub enum Msg {
    /// A directory, link or small file, complete.
    Whole {
        meta: EntryMeta,
        data: Vec<u8>,
        sha256: [u8; 32],
        /// Why the content may not match one moment of the file.
        changed: Option<String>,
    },
    Meta(EntryMeta),
    Data(Vec<u8>),
    End {
        sha256: [u8; 32],
        changed: Option<String>,
    },
    Vanished,
    Unreadable(String),
}

/// Caches user and group names, which are looked up once per id.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, Option<Arc<str>>>,
    groups: HashMap<u32, Option<Arc<str>>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<Arc<str>> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid).map(|u| Arc::from(u.name().to_string_lossy()))
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<Arc<str>> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid).map(|g| Arc::from(g.name().to_string_lossy()))
            })
            .clone()
    }
}

fn gone_or_unreadable(e: &io::Error) -> Msg {
    if e.kind() == io::ErrorKind::NotFound {
        Msg::Vanished
    } else {
        Msg::Unreadable(e.to_string())
    }
}

/// Reads the entry `name` in the directory `dir`, which the scan saw as
/// `expected`, and passes the messages to `send`. `send` returns false when
/// nobody listens any more. Nothing is followed through a symlink: an entry
/// replaced by one since the scan is described as the symlink it now is.
pub fn read_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    expected: NodeKind,
    names: &mut Names,
    send: &mut dyn FnMut(Msg) -> bool,
) {
    if expected == NodeKind::File {
        // The common case, with one lookup: open, then ask the descriptor.
        match open_file(dir, name) {
            Ok(file) => match file.metadata() {
                Ok(meta) if meta.is_file() => return read_file(file, meta, names, send),
                // Now a directory: described below like any other change of type.
                Ok(_) => {}
                Err(e) => {
                    send(Msg::Unreadable(e.to_string()));
                    return;
                }
            },
            // ELOOP: a symlink now stands there; ENXIO, a socket; both are
            // described below.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENXIO)) => {}
            Err(e) => {
                send(gone_or_unreadable(&e));
                return;
            }
        }
    }
    let found = match look(dir, name) {
        Ok(found) => found,
        Err(e) => {
            send(gone_or_unreadable(&e));
            return;
        }
    };
    let (meta, kind, xattrs) = match found {
        Found::Dir(file, meta) => {
            let path = proc_path(dir, name);
            let source = match &file {
                Some(file) => Xattrs::File(file),
                None => Xattrs::Path(&path),
            };
            let Some(xattrs) = entry_xattrs(source, send) else {
                return;
            };
            (meta, MetaKind::Dir, xattrs)
        }
        Found::Symlink(stat, target) => {
            let Some(xattrs) = entry_xattrs(Xattrs::Path(&proc_path(dir, name)), send) else {
                return;
            };
            (Stat4::from(&stat), MetaKind::Symlink { target }, xattrs)
        }
        Found::File(file, meta) if expected == NodeKind::HardLink => {
            let Some(xattrs) = entry_xattrs(Xattrs::File(&file), send) else {
                return;
            };
            (Stat4::from(&meta), MetaKind::HardLink, xattrs)
        }
        // A file where the scan saw something else.
        Found::File(file, meta) => return read_file(file, meta, names, send),
        Found::Other => {
            // Replaced by a FIFO, socket or device since the scan.
            send(Msg::Unreadable(
                "is no longer a regular file, directory or symlink".into(),
            ));
            return;
        }
    };
    let changed = match (&kind, expected) {
        (MetaKind::Dir, NodeKind::Dir) | (MetaKind::Symlink { .. }, NodeKind::Symlink) => None,
        (MetaKind::HardLink, NodeKind::HardLink) => None,
        _ => Some("changed type while the backup ran".to_string()),
    };
    send(Msg::Whole {
        meta: entry_meta(&meta, kind, xattrs, names),
        data: Vec::new(),
        sha256: [0; 32],
        changed,
    });
}

/// What stands at a name now, opened where it can be.
enum Found {
    /// A directory, opened for reading unless this user may not list it.
    Dir(Option<File>, Stat4),
    File(File, Metadata),
    Symlink(Stat, Vec<u8>),
    Other,
}

/// Looks at `name` in `dir` without following it: a directory or file is
/// opened (its metadata then comes from the descriptor), a symlink read.
fn look(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Found> {
    let st = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            // A directory this user may not list is still described: its
            // contents are the scan's to report.
            let (file, readable) = match openat(dir, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => (File::from(fd), true),
                Err(Errno::ACCESS) => {
                    let flags =
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    (File::from(openat(dir, name, flags, Mode::empty())?), false)
                }
                Err(e) => return Err(e.into()),
            };
            let meta = file.metadata()?;
            if !meta.is_dir() {
                return Err(io::Error::other("changed type while the backup ran"));
            }
            Ok(Found::Dir(readable.then_some(file), Stat4::from(&meta)))
        }
        FileType::RegularFile => {
            let file = open_file(dir, name)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(io::Error::other("changed type while the backup ran"));
            }
            Ok(Found::File(file, meta))
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
            Ok(Found::Symlink(st, target.into_bytes()))
        }
        _ => Ok(Found::Other),
    }
}

/// A path that names `name` in `dir` without following `name` itself, for
/// the calls that take only paths (extended attributes of a symlink).
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

/// The metadata a tar header records, from `fstat` or `fstatat`.
#[derive(Debug, Clone, Copy)]
struct Stat4 {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: i64,
    ino: u64,
    ctime: (i64, u32),
}

impl From<&Metadata> for Stat4 {
    fn from(m: &Metadata) -> Stat4 {
        Stat4 {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec().clamp(0, 999_999_999) as u32),
        }
    }
}

impl From<&Stat> for Stat4 {
    fn from(st: &Stat) -> Stat4 {
        Stat4 {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as i64,
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        }
    }
}

fn entry_meta(
    meta: &Stat4,
    kind: MetaKind,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    names: &mut Names,
) -> EntryMeta {
    EntryMeta {
        kind,
        mode: meta.mode & 0o7777,
        uid: u64::from(meta.uid),
        gid: u64::from(meta.gid),
        uname: names.user(meta.uid),
        gname: names.group(meta.gid),
        mtime: meta.mtime,
        mtime_nsec: meta.mtime_nsec.clamp(0, 999_999_999) as u32,
        xattrs,
        ino: meta.ino,
        ctime: meta.ctime,
    }
}

/// Where extended attributes are read from.
enum Xattrs<'a> {
    /// Not following the last component.
    Path(&'a Path),
    File(&'a File),
    /// Following it: a `/proc/self/fd` path of a pinned inode.
    Pinned(&'a Path),
}

impl Xattrs<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            Xattrs::Path(p) => rustix::fs::llistxattr(*p, buf),
            Xattrs::File(f) => rustix::fs::flistxattr(f.as_fd(), buf),
            Xattrs::Pinned(p) => rustix::fs::listxattr(*p, buf),
        }
    }

    fn get(&self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            Xattrs::Path(p) => rustix::fs::lgetxattr(*p, name, buf),
            Xattrs::File(f) => rustix::fs::fgetxattr(f.as_fd(), name, buf),
            Xattrs::Pinned(p) => rustix::fs::getxattr(*p, name, buf),
        }
    }
}

/// Every extended attribute of an open file.
pub(crate) fn file_xattrs(file: &File) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    read_xattrs(Xattrs::File(file))
}

/// Every extended attribute of what `magic` (a `/proc/self/fd` path of a
/// pinned inode) reaches.
pub(crate) fn pinned_xattrs(magic: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    read_xattrs(Xattrs::Pinned(magic))
}

/// Every extended attribute (not following symlinks), in order. A
/// filesystem without them has none; one removed while it is read is not
/// there. Any other failure (a list too long for the kernel to give, an I/O
/// error) is an error: the entry's attributes are not known, and taking
/// them for none would lose them.
fn read_xattrs(source: Xattrs<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let unsupported = |e: Errno| e == Errno::NOTSUP || e == Errno::NOSYS;
    // Most files have none: one call with a small buffer answers that.
    let mut list = vec![0u8; 256];
    let len = loop {
        match source.list(&mut list) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let size = source.list(&mut [])?;
                list.resize(size.max(list.len() * 2), 0);
            }
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in list[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        loop {
            match source.get(name, &mut value) {
                Ok(n) => {
                    value.truncate(n);
                    out.push((name.to_vec(), value));
                    break;
                }
                Err(Errno::RANGE) => {
                    let size = source.get(name, &mut [])?;
                    value.resize(size.max(value.len() * 2), 0);
                }
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// [`read_xattrs`] for a backup: an entry whose attributes cannot be read
/// is unreadable, said so, rather than stored without them.
fn entry_xattrs(
    source: Xattrs<'_>,
    send: &mut dyn FnMut(Msg) -> bool,
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    match read_xattrs(source) {
        Ok(xattrs) => Some(xattrs),
        Err(e) => {
            send(Msg::Unreadable(format!(
                "its extended attributes cannot be read: {e}"
            )));
            None
        }
    }
}

/// Opens a file for reading: never through a symlink, never blocking on a
/// FIFO that took a file's place, and without updating its access time where
/// the kernel allows it (only the owner or root may ask).
fn open_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => openat(dir, name, flags, Mode::empty())?,
        other => other?,
    };
    Ok(File::from(fd))
}

/// The (size, mtime, ctime) that tell whether a file changed.
fn stamp(meta: &Metadata) -> (u64, i64, i64, i64, i64) {
    (
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

fn hash_zeros(hasher: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

fn read_file(
    mut file: File,
    before: Metadata,
    names: &mut Names,
    send: &mut dyn FnMut(Msg) -> bool,
) {
    // Tests pause here to change the file between its stat and its read, or
    // inject a read error.
    if let Err(e) = crate::failpoint::hit("backup.read-file") {
        send(Msg::Unreadable(e.to_string()));
        return;
    }
    let size = before.len();
    let sparse = sparse_map(&file, &before);
    let Some(xattrs) = entry_xattrs(Xattrs::File(&file), send) else {
        return;
    };
    let mut hasher = Sha256::new();
    let mut changed = None;

    // A small file is read completely before anything is sent, so that an
    // error while reading it leaves no trace in the archive.
    if size <= CHUNK as u64 && sparse.is_none() {
        let mut data = Vec::with_capacity(size as usize);
        if let Err(e) = (&mut file).take(size).read_to_end(&mut data) {
            send(Msg::Unreadable(e.to_string()));
            return;
        }
        if (data.len() as u64) < size {
            changed = Some("shrank while being read; the missing end is stored as zeros".into());
            data.resize(size as usize, 0);
        }
        hasher.update(&data);
        let changed = changed.or_else(|| changed_since(&file, &before));
        send(Msg::Whole {
            meta: entry_meta(
                &Stat4::from(&before),
                MetaKind::File { size, sparse: None },
                xattrs,
                names,
            ),
            data,
            sha256: hasher.finalize().into(),
            changed,
        });
        return;
    }

    let segments: Vec<(u64, u64)> = sparse.clone().unwrap_or_else(|| vec![(0, size)]);
    let meta = entry_meta(
        &Stat4::from(&before),
        MetaKind::File { size, sparse },
        xattrs,
        names,
    );
    if !send(Msg::Meta(meta)) {
        return;
    }
    let mut logical = 0u64;
    for &(offset, len) in &segments {
        hash_zeros(&mut hasher, offset - logical);
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            changed.get_or_insert(format!(
                "could not be read completely ({e}); the rest is stored as zeros"
            ));
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let mut buf = Vec::with_capacity(want);
            if changed.is_none() {
                match (&mut file).take(want as u64).read_to_end(&mut buf) {
                    Ok(_) => {}
                    Err(e) => {
                        changed = Some(format!(
                            "could not be read completely ({e}); the rest is stored as zeros"
                        ));
                    }
                }
                if buf.len() < want && changed.is_none() {
                    changed =
                        Some("shrank while being read; the missing end is stored as zeros".into());
                }
            }
            buf.resize(want, 0);
            hasher.update(&buf);
            left -= want as u64;
            if !send(Msg::Data(buf)) {
                return;
            }
        }
        logical = offset + len;
    }
    hash_zeros(&mut hasher, size - logical);
    let changed = changed.or_else(|| changed_since(&file, &before));
    send(Msg::End {
        sha256: hasher.finalize().into(),
        changed,
    });
}

/// Compares the file's metadata now with what it was when reading started.
fn changed_since(file: &File, before: &Metadata) -> Option<String> {
    match file.metadata() {
        Ok(after) if stamp(&after) == stamp(before) => None,
        Ok(after) if after.len() != before.len() => Some(format!(
            "changed size while being read ({} → {} bytes); stored as read",
            before.len(),
            after.len()
        )),
        Ok(_) => Some("modified while being read; stored as read".into()),
        Err(e) => Some(format!("could not be checked after reading: {e}")),
    }
}

/// The data segments of a sparse file, or `None` when the file has no holes
/// (or the filesystem cannot tell). Each segment but the last is a multiple
/// of 512 bytes long, as the GNU sparse format requires.
fn sparse_map(file: &File, meta: &Metadata) -> Option<Vec<(u64, u64)>> {
    let size = meta.len();
    if size == 0 || meta.blocks() * 512 >= size {
        return None;
    }
    let mut map = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return None,
        };
        let hole = match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(_) => return None,
        };
        if hole <= data {
            return None;
        }
        map.push((data, hole - data));
        pos = hole;
    }
    // Segments must start on 512-byte boundaries and all but the last must
    // span whole blocks; filesystem blocks always do, but check rather than trust.
    let aligned = map
        .iter()
        .enumerate()
        .all(|(i, &(o, l))| o % 512 == 0 && (i + 1 == map.len() || l % 512 == 0));
    if !aligned || (map.len() == 1 && map[0] == (0, size)) {
        return None;
    }
    // A file that ends in a hole gets an empty segment at its end, as GNU tar
    // writes it, so the real size is explicit in the map.
    if map.last().is_none_or(|&(o, l)| o + l < size) {
        map.push((size, 0));
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(path: &Path, expected: NodeKind) -> Vec<Msg> {
        let dir = File::open(path.parent().unwrap()).unwrap();
        let mut msgs = Vec::new();
        let name = path.file_name().unwrap();
        read_entry(
            dir.as_fd(),
            name,
            expected,
            &mut Names::default(),
            &mut |m| {
                msgs.push(m);
                true
            },
        );
        msgs
    }

    #[test]
    fn sparse_file_sends_only_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(4 << 20))?;
                std::io::Write::write_all(&mut f, b"middle")
            })
            .unwrap();
        let msgs = collect(&p, NodeKind::File);
        let Msg::Meta(EntryMeta {
            kind:
                MetaKind::File {
                    size,
                    sparse: Some(map),
                },
            ..
        }) = &msgs[0]
        else {
            panic!("expected a sparse file, got {:?}", msgs[0]);
        };
        assert_eq!(*size, 8 << 20);
        assert_eq!(map.last(), Some(&(8 << 20, 0)));
        let data: usize = msgs
            .iter()
            .map(|m| if let Msg::Data(d) = m { d.len() } else { 0 })
            .sum();
        assert!(data < 1 << 20, "only the data segment is read, got {data}");
        let Msg::End { sha256, changed } = msgs.last().unwrap() else {
            panic!()
        };
        assert!(changed.is_none());
        let mut whole = vec![0u8; 8 << 20];
        whole[4 << 20..(4 << 20) + 6].copy_from_slice(b"middle");
        assert_eq!(sha256[..], Sha256::digest(&whole)[..]);
    }

    #[test]
    fn vanished_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let msgs = collect(&dir.path().join("gone"), NodeKind::File);
        assert!(matches!(msgs[..], [Msg::Vanished]));
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_is_described_as_the_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secret")).unwrap();
        std::fs::write(dir.path().join("secret/key"), b"k").unwrap();
        std::os::unix::fs::symlink("secret", dir.path().join("sub")).unwrap();
        let msgs = collect(&dir.path().join("sub"), NodeKind::Dir);
        let [Msg::Whole { meta, changed, .. }] = &msgs[..] else {
            panic!("one whole entry, got {msgs:?}");
        };
        assert!(matches!(&meta.kind, MetaKind::Symlink { target } if target == b"secret"));
        assert_eq!(
            changed.as_deref(),
            Some("changed type while the backup ran")
        );
        // And a file that became a symlink is never read through it.
        std::os::unix::fs::symlink("secret/key", dir.path().join("f")).unwrap();
        let msgs = collect(&dir.path().join("f"), NodeKind::File);
        assert!(
            matches!(&msgs[..], [Msg::Whole { meta: EntryMeta { kind: MetaKind::Symlink { .. }, .. }, data, .. }] if data.is_empty()),
            "{msgs:?}"
        );
    }

    #[test]
    fn a_directory_this_user_cannot_list_is_still_described() {
        let dir = tempfile::tempdir().unwrap();
        let shut = dir.path().join("shut");
        std::fs::create_dir(&shut).unwrap();
        std::fs::set_permissions(&shut, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        let msgs = collect(&shut, NodeKind::Dir);
        std::fs::set_permissions(&shut, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let [
            Msg::Whole {
                meta,
                changed: None,
                ..
            },
        ] = &msgs[..]
        else {
            panic!("one whole entry, got {msgs:?}");
        };
        assert!(matches!(meta.kind, MetaKind::Dir));
        assert_eq!(meta.mode, 0);
    }

    #[test]
    fn xattrs_are_read_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        if rustix::fs::setxattr(&p, "user.b", b"2", rustix::fs::XattrFlags::empty()).is_err() {
            crate::testutil::skip("the temporary directory's filesystem has no user xattrs");
            return;
        }
        rustix::fs::setxattr(&p, "user.a", b"1", rustix::fs::XattrFlags::empty()).unwrap();
        let got = read_xattrs(Xattrs::File(&File::open(&p).unwrap())).unwrap();
        assert_eq!(
            got,
            vec![
                (b"user.a".to_vec(), b"1".to_vec()),
                (b"user.b".to_vec(), b"2".to_vec())
            ]
        );
    }
}
