//! What a restore would change: the backup's entries against the live tree,
//! path by path.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use serde::Serialize;

use crate::handle;

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

/// Why a path is kept as it is (the plan's `keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// A never-restore path of the backup or of the instance's config now.
    NeverRestore,
    /// An `--exclude` of this restore.
    Excluded,
    /// What the backup's excludes left out (a cache, a pattern of its
    /// config), which it does not hold.
    NotBackedUp,
    /// What the backup could not hold as it was: read errors, files that
    /// vanished or were skipped while it ran (its trailer lists them).
    NotRead,
    /// A further name of a file this restore does not write.
    LinkedToKept,
    /// backstop's own home or store.
    Backstop,
    /// A directory tagged as a cache (`CACHEDIR.TAG`).
    Cache,
    /// A FIFO, socket or device, which no backup holds.
    Special,
}

impl Why {
    /// How plans say it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NeverRestore => "never-restore",
            Why::Excluded => "--exclude",
            Why::NotBackedUp => "not backed up",
            Why::NotRead => "not read by the backup",
            Why::LinkedToKept => "a link to a kept file",
            Why::Backstop => "backstop's own",
            Why::Cache => "CACHEDIR.TAG",
            Why::Special => "special file",
        }
    }
}

/// What a planned path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A FIFO, socket or device: what no backup holds.
    Other,
    /// A podman volume, imported.
    Volume,
    /// A database dump, imported.
    Dump,
}

impl Kind {
    /// How plans and messages name it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Other => "other",
            Kind::Volume => "volume",
            Kind::Dump => "dump",
        }
    }
}

/// One entry of a backup or of a live tree, as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub mtime: (i64, u32),
    pub link: Option<Vec<u8>>,
    /// SHA-256 of a file's content, when known.
    pub sha256: Option<[u8; 32]>,
    /// Inode and change time, on disk (0 for an archive's entry).
    pub ino: u64,
    pub ctime: u64,
    /// Owner and group, where known (what a restore as root gives).
    pub owner: Option<(u64, u64)>,
}

/// One path and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedAction {
    /// Relative to the destination.
    pub path: String,
    pub action: Action,
    pub kind: Kind,
    /// Why it is kept, for [`Action::Keep`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<Why>,
}

/// Every path a restore changes or keeps, and the totals (unchanged
/// paths included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub totals: Totals,
    /// Every path it creates, replaces, deletes, keeps, leaves alone or
    /// finds in conflict, and what.
    pub actions: Actions,
}

impl Changes {
    /// Records what happens to one path. Unchanged paths are only
    /// counted: a plan lists what changes, so that it stays the size of
    /// the change, not of the tree.
    pub fn push(&mut self, path: &str, action: Action, kind: Kind, bytes: u64) {
        self.push_below(path, "", action, kind, bytes);
    }

    /// Records what happens to `below` (relative, `""` for `top` itself)
    /// under `top`.
    pub fn push_below(&mut self, top: &str, below: &str, action: Action, kind: Kind, bytes: u64) {
        self.totals.add(action, bytes);
        if action != Action::Unchanged {
            self.actions.push(top, below, (action, kind, None));
        }
    }

    /// Records that `below` under `top` is kept as it is, and why.
    pub fn keep_below(&mut self, top: &str, below: &str, kind: Kind, why: Why) {
        self.totals.add(Action::Keep, 0);
        self.actions
            .push(top, below, (Action::Keep, kind, Some(why)));
    }

    /// Appends `other`'s paths and totals.
    pub fn extend(&mut self, other: &Changes) {
        let mut start = 0usize;
        for &(top, end, action, kind, why) in &other.actions.items {
            let end = (end as usize).min(other.actions.paths.len());
            let below = other.actions.paths.get(start..end).unwrap_or_default();
            start = end;
            let top = other
                .actions
                .tops
                .get(top as usize)
                .map_or("", String::as_str);
            self.actions.push(top, below, (action, kind, why));
        }
        self.totals.merge(&other.totals);
    }
}

/// The actions of a plan, held compactly (a restore of a million files
/// plans a million actions): each path as the part below its target, in
/// one arena, and the targets once. Serialised as a list of
/// [`PlannedAction`] with whole paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// The targets the paths are below.
    tops: Vec<String>,
    /// The parts below them, end to end.
    paths: String,
    /// (target index, end of the part in `paths`, action, kind, why kept).
    items: Vec<(u32, u32, Action, Kind, Option<Why>)>,
}

impl Actions {
    fn push(&mut self, top: &str, below: &str, (action, kind, why): (Action, Kind, Option<Why>)) {
        if self.tops.last().is_none_or(|t| t != top) {
            self.tops.push(top.to_string());
        }
        let top = u32::try_from(self.tops.len() - 1).unwrap_or(u32::MAX);
        self.paths.push_str(below);
        let end = u32::try_from(self.paths.len()).unwrap_or(u32::MAX);
        self.items.push((top, end, action, kind, why));
    }

    /// How many paths are planned.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is planned.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every planned path, in order.
    pub fn iter(&self) -> impl Iterator<Item = PlannedAction> + '_ {
        let mut start = 0usize;
        self.items
            .iter()
            .map(move |&(top, end, action, kind, why)| {
                let end = (end as usize).min(self.paths.len());
                let below = self.paths.get(start..end).unwrap_or_default();
                start = end;
                let top = self.tops.get(top as usize).map_or("", String::as_str);
                let path = if below.is_empty() {
                    top.to_string()
                } else {
                    format!("{top}/{below}")
                };
                PlannedAction {
                    path,
                    action,
                    kind,
                    why,
                }
            })
    }
}

impl Serialize for Actions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
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
    /// Adds another plan's totals.
    pub fn merge(&mut self, other: &Totals) {
        self.create += other.create;
        self.replace += other.replace;
        self.unchanged += other.unchanged;
        self.delete += other.delete;
        self.keep += other.keep;
        self.skip += other.skip;
        self.conflict += other.conflict;
        self.bytes += other.bytes;
    }

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

/// SHA-256 of a file's content (a file of backstop's own: an archive, a
/// copy in the store).
pub fn hash_file(path: &Path) -> Option<[u8; 32]> {
    hash_reader(std::fs::File::open(path).ok()?)
}

/// SHA-256 of a live file's content, opened through its parent's handle:
/// never through a symlink, never blocking on a FIFO swapped in. `None`
/// for anything but a regular file.
pub fn hash_live(path: &Path) -> Option<[u8; 32]> {
    hash_reader(open_live(path)?)
}

/// A live regular file, opened through its parent's handle: never through
/// a symlink, never blocking on a FIFO swapped in.
fn open_live(path: &Path) -> Option<std::fs::File> {
    let (dir, name) = handle::open_parent(path).ok()?;
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, name, flags, Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| fd.into())
}

/// Whether two live regular files hold the same `size` bytes, compared
/// byte for byte. A range that is a hole in both is equal without being
/// read, so two copies of a sparse file cost what they hold, not their
/// apparent size. Anything unreadable, or shorter than `size`, differs.
pub fn same_content(a: &Path, b: &Path, size: u64) -> bool {
    let sized = |f: std::fs::File| (f.metadata().ok()?.len() == size).then_some(f);
    let (Some(a), Some(b)) = (open_live(a).and_then(sized), open_live(b).and_then(sized)) else {
        return false;
    };
    let mut bufs = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut pos = 0u64;
    while pos < size {
        let (at_a, at_b) = (next_data(&a, pos, size), next_data(&b, pos, size));
        let start = at_a.min(at_b);
        if start >= size {
            return true;
        }
        // To where the data of whichever has data here ends; the other's
        // hole in that range reads as the zeros it holds.
        let end_of = |f, at| {
            if at == start {
                next_hole(f, start, size)
            } else {
                start
            }
        };
        let end = end_of(&a, at_a).max(end_of(&b, at_b));
        if !same_range(&a, &b, start..end, &mut bufs) {
            return false;
        }
        pos = end;
    }
    true
}

/// Where data starts at or after `pos` (`size` when only a hole is left).
/// A filesystem that cannot say has data everywhere.
fn next_data(file: &std::fs::File, pos: u64, size: u64) -> u64 {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
        Ok(at) => at.min(size),
        Err(rustix::io::Errno::NXIO) => size,
        Err(_) => pos,
    }
}

/// Where the data at `pos` ends (`size` at most).
fn next_hole(file: &std::fs::File, pos: u64, size: u64) -> u64 {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(pos)) {
        Ok(at) if at > pos => at.min(size),
        _ => size,
    }
}

/// Whether both files hold the same bytes in `range`, read in chunks.
fn same_range(
    a: &std::fs::File,
    b: &std::fs::File,
    range: std::ops::Range<u64>,
    (x, y): &mut (Vec<u8>, Vec<u8>),
) -> bool {
    use std::os::unix::fs::FileExt;
    let mut pos = range.start;
    while pos < range.end {
        let n = (range.end - pos).min(x.len() as u64) as usize;
        let (x, y) = (&mut x[..n], &mut y[..n]);
        if a.read_exact_at(x, pos).is_err() || b.read_exact_at(y, pos).is_err() || x != y {
            return false;
        }
        pos += n as u64;
    }
    true
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
        // A link's own owner and time are the backup's too (its mode
        // is always 0777); the owner only as root, who restores it.
        Kind::Symlink => {
            want.link == have.link
                && want.mtime == have.mtime
                && (!crate::restore::stage::is_root()
                    || want.owner.is_none()
                    || have.owner.is_none()
                    || want.owner == have.owner)
        }
        Kind::Dir => true,
        Kind::File => {
            if want.size != have.size {
                return false;
            }
            if want.ino != 0 && want.ino == have.ino {
                return true;
            }
            match (want.sha256, staged_path) {
                (Some(h), _) => hash_live(live_path) == Some(h),
                (None, Some(staged)) => same_content(staged, live_path, want.size),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `size` bytes holding `data` at each offset, holes between.
    fn sparse(dir: &Path, name: &str, size: u64, data: &[(u64, &[u8])]) -> PathBuf {
        use std::os::unix::fs::FileExt;
        let path = dir.join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (at, bytes) in data {
            f.write_all_at(bytes, *at).unwrap();
        }
        path
    }

    #[test]
    fn same_content_reads_holes_as_the_zeros_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mib = 1u64 << 20;
        let x = vec![b'x'; 4096];
        let zeros = vec![0u8; 3 * mib as usize];
        let a = sparse(d, "a", 64 * mib, &[(8 * mib, &x), (40 * mib, &x)]);
        let same = sparse(d, "same", 64 * mib, &[(8 * mib, &x), (40 * mib, &x)]);
        // Zeros written out where `a` has a hole: the same content.
        let dense = sparse(
            d,
            "dense",
            64 * mib,
            &[(8 * mib, &x), (40 * mib, &x), (0, &zeros)],
        );
        // One byte more, in a range that is a hole in `a`.
        let extra = sparse(
            d,
            "extra",
            64 * mib,
            &[(8 * mib, &x), (40 * mib, &x), (63 * mib, b"y")],
        );
        let moved = sparse(d, "moved", 64 * mib, &[(8 * mib, &x), (41 * mib, &x)]);
        let short = sparse(d, "short", 64 * mib - 1, &[(8 * mib, &x), (40 * mib, &x)]);
        assert!(same_content(&a, &same, 64 * mib));
        assert!(same_content(&a, &dense, 64 * mib));
        assert!(same_content(&dense, &a, 64 * mib));
        assert!(!same_content(&a, &extra, 64 * mib));
        assert!(!same_content(&extra, &a, 64 * mib));
        assert!(!same_content(&a, &moved, 64 * mib));
        assert!(!same_content(&a, &short, 64 * mib));
        assert!(!same_content(&a, &d.join("absent"), 64 * mib));
    }

    #[test]
    fn same_content_compares_every_byte_of_dense_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let body: Vec<u8> = (0..(3 << 20) + 5).map(|i: u32| (i % 251) as u8).collect();
        let mut last = body.clone();
        *last.last_mut().unwrap() ^= 1;
        let n = body.len() as u64;
        let a = sparse(d, "a", n, &[(0, &body)]);
        let b = sparse(d, "b", n, &[(0, &body)]);
        let c = sparse(d, "c", n, &[(0, &last)]);
        assert!(same_content(&a, &b, n));
        assert!(!same_content(&a, &c, n));
        // A size the listing saw that the file no longer has.
        assert!(!same_content(&a, &b, n + 1));
    }

    #[test]
    fn actions_keep_their_paths_through_extend_and_skip_unchanged() {
        let mut a = Changes::default();
        a.push("x/one", Action::Create, Kind::File, 3);
        a.push("x/same", Action::Unchanged, Kind::File, 0);
        let mut b = Changes::default();
        b.push("y/two", Action::Delete, Kind::Dir, 0);
        b.keep_below("y", "ü", Kind::Symlink, Why::NeverRestore);
        a.extend(&b);
        let got: Vec<(String, Action, Kind)> = a
            .actions
            .iter()
            .map(|p| (p.path, p.action, p.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("x/one".to_string(), Action::Create, Kind::File),
                ("y/two".to_string(), Action::Delete, Kind::Dir),
                ("y/ü".to_string(), Action::Keep, Kind::Symlink),
            ]
        );
        assert_eq!(a.totals.unchanged, 1);
        assert_eq!(a.totals.create, 1);
        assert_eq!(a.totals.bytes, 3);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["actions"][2]["path"], "y/ü");
        assert_eq!(json["actions"][2]["why"], "never-restore");
        assert_eq!(json["actions"][2]["kind"], "symlink");
        assert!(json["actions"][0].get("why").is_none(), "{json}");
        assert_eq!(a.totals.keep, 1);
    }
}
