//! What a restore would change: the backup's entries against the live tree,
//! path by path.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

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

/// Reads the live tree under `top` (relative paths, `""` for `top` itself),
/// not following symlinks and not descending into a directory that a
/// `keep(rel)` rule matches (it is reported as one kept path).
pub fn live_tree(top: &Path, keep: &dyn Fn(&Path, bool) -> bool) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    if std::fs::symlink_metadata(top).is_err() {
        return out;
    }
    let mut walker = walkdir::WalkDir::new(top)
        .follow_links(false)
        .follow_root_links(false)
        .into_iter();
    while let Some(Ok(entry)) = walker.next() {
        let rel = entry
            .path()
            .strip_prefix(top)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        // Another source's staging directory, made by this restore.
        if entry
            .file_name()
            .as_bytes()
            .starts_with(crate::restore::stage::STAGING_PREFIX.as_bytes())
        {
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        if !rel.as_os_str().is_empty() && ft.is_dir() && keep(&rel, true) {
            walker.skip_current_dir();
        }
        out.insert(
            rel,
            Node {
                kind,
                size: if ft.is_file() { meta.len() } else { 0 },
                mode: meta.mode() & 0o7777,
                mtime: (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32),
                link: if ft.is_symlink() {
                    std::fs::read_link(entry.path())
                        .ok()
                        .map(|l| l.as_os_str().as_bytes().to_vec())
                } else {
                    None
                },
                sha256: None,
            },
        );
    }
    out
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).ok()?;
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
/// Files compare by content when hashes or contents can be had, else by
/// size, mode and mtime.
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
            if want.mtime == have.mtime && want.mode == have.mode {
                return true;
            }
            match (want.sha256, staged_path) {
                (Some(h), _) => hash_file(live_path) == Some(h),
                (None, Some(staged)) => hash_file(staged) == hash_file(live_path),
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
