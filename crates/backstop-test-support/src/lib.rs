//! Fixtures and assertions shared by backstop's integration and end-to-end
//! tests: trees with every awkward case, an entry-by-entry tree comparison,
//! skips that CI turns into failures, throwaway tmpfs mounts, and a real
//! S3-protocol server (moto) on loopback.

#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod podman;
pub mod s3;

/// Reports that a test cannot run here and returns. When
/// `BACKSTOP_TEST_REQUIRE_ALL` is set (as CI sets it), a skip fails the test
/// instead: CI installs every tool the tests need.
pub fn skip(reason: &str) {
    if std::env::var_os("BACKSTOP_TEST_REQUIRE_ALL").is_some() {
        panic!("test would be skipped, but BACKSTOP_TEST_REQUIRE_ALL is set: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Whether `tool` is on the PATH; if not, reports a skip.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(&format!("`{tool}` is not installed"));
    }
    found
}

/// Whether the test runs as root; if not, reports a skip naming `why`.
pub fn root(why: &str) -> bool {
    let is_root = rustix::process::geteuid().is_root();
    if !is_root {
        skip(&format!("needs root to {why}"));
    }
    is_root
}

/// Whether `dir`'s filesystem takes `user.` extended attributes.
pub fn supports_user_xattrs(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    let _ = fs::write(&probe, b"");
    let ok =
        rustix::fs::setxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// A POSIX access or default ACL as the kernel stores it in
/// `system.posix_acl_access` / `system.posix_acl_default` (what `setfacl`
/// writes): the owner, group and other permissions (`rwx` as 0–7) and named
/// users, with a mask of the named users' and the group's permissions.
pub fn posix_acl(owner: u16, named_users: &[(u32, u16)], group: u16, other: u16) -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u16, id: u32| {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    };
    entry(0x01, owner, UNDEFINED);
    for &(uid, perm) in named_users {
        entry(0x02, perm, uid);
    }
    entry(0x04, group, UNDEFINED);
    if !named_users.is_empty() {
        let mask = named_users.iter().fold(group, |m, &(_, p)| m | p);
        entry(0x10, mask, UNDEFINED);
    }
    entry(0x20, other, UNDEFINED);
    out
}

/// Whether files under `dir` take POSIX ACLs.
pub fn supports_acls(dir: &Path) -> bool {
    let probe = dir.join(".acl-probe");
    let _ = fs::write(&probe, b"");
    let ok = rustix::fs::setxattr(
        &probe,
        "system.posix_acl_access",
        &posix_acl(6, &[(1, 4)], 4, 4),
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// A tmpfs mounted on a temporary directory; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes (root only).
    pub fn mount(size: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs failed");
        Tmpfs { dir }
    }

    /// Remounts read-only.
    pub fn make_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount read-only failed");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn write(path: &Path, data: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, data).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// `len` bytes that do not compress (xorshift64 from `seed`, made odd so
/// it is never stuck at zero; its low byte each step): the same bytes for
/// the same seed, on every run.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Builds, under `root`, a tree with every case the archive format must
/// carry: nested and empty directories, modes (0600 secrets, an executable,
/// set-gid), a long path beyond 255 bytes, a non-UTF-8 name, names with a
/// space, a newline and a backslash, symlinks (relative, absolute, dangling),
/// hard links, a sparse file, sub-second and old mtimes, an empty file, a
/// 3 MiB file, and `user.` xattrs where the filesystem has them.
pub fn awkward_tree(root: &Path) {
    write(&root.join("config/.env"), b"SECRET=1\n", 0o600);
    write(&root.join("config/app.toml"), b"name = \"app\"\n", 0o644);
    write(&root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("bin/setgid-tool"), b"x", 0o2755);
    write(&root.join("data/empty-file"), b"", 0o644);
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&root.join("data/big.bin"), &big, 0o640);
    fs::create_dir_all(root.join("data/empty/nested")).expect("mkdir");
    let long_dir: PathBuf = (0..6)
        .map(|i| format!("directory-with-a-long-name-{i:02}"))
        .collect();
    write(
        &root
            .join("deep")
            .join(&long_dir)
            .join("file-at-the-end.txt"),
        b"deep\n",
        0o644,
    );
    write(&root.join("names/with space.txt"), b"space\n", 0o644);
    write(
        &root.join("names/caf\u{e9}-\u{65e5}\u{672c}.txt"),
        b"unicode\n",
        0o644,
    );
    write(
        &root.join(OsStr::from_bytes(b"names/latin1-\xe9\xff.bin")),
        b"bytes\n",
        0o644,
    );
    write(&root.join("names/new\nline"), b"nl\n", 0o644);
    write(&root.join("names/back\\slash"), b"bs\n", 0o644);
    symlink("../config/app.toml", root.join("data/link-to-config")).expect("symlink");
    symlink("/etc/hostname", root.join("data/absolute-link")).expect("symlink");
    symlink("nowhere/at/all", root.join("data/dangling-link")).expect("symlink");
    fs::hard_link(
        root.join("config/app.toml"),
        root.join("data/app-hardlink.toml"),
    )
    .expect("link");
    fs::hard_link(
        root.join("config/app.toml"),
        root.join("names/second-hardlink"),
    )
    .expect("link");
    let sparse = root.join("data/sparse.img");
    {
        let mut f = fs::File::create(&sparse).expect("create");
        f.set_len(16 << 20).expect("truncate");
        f.seek(SeekFrom::Start(8 << 20)).expect("seek");
        f.write_all(b"in the middle").expect("write");
    }
    set_mtime(&root.join("config/app.toml"), 1_700_000_000, 123_456_789);
    set_mtime(&root.join("data/big.bin"), 946_684_800, 0);
    set_mtime(&root.join("data/dangling-link"), 1_600_000_000, 500_000_000);
    if supports_user_xattrs(root) {
        for (file, name, value) in [
            ("config/app.toml", "user.backstop.test", b"value".as_slice()),
            ("data/big.bin", "user.binary", b"\x00\x01\xff".as_slice()),
            ("data/empty", "user.on-a-dir", b"d".as_slice()),
        ] {
            rustix::fs::setxattr(
                root.join(file),
                name,
                value,
                rustix::fs::XattrFlags::empty(),
            )
            .expect("setxattr");
        }
    }
    // Directory mtimes last, after their contents were made.
    set_mtime(&root.join("data/empty/nested"), 1_650_000_000, 250_000_000);
}

/// What the comparison looks at for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    pub kind: &'static str,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For files: whether it occupies less space than its size (sparse).
    pub sparse: bool,
}

/// Options for [`snapshot`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Compare {
    /// Directory mtimes change when entries inside are created; some
    /// extractors set them, some do not.
    pub dir_mtimes: bool,
    pub xattrs: bool,
    /// Whether files with holes must keep them.
    pub sparse: bool,
}

fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(size) = rustix::fs::llistxattr_query(path) else {
        return out;
    };
    let mut list = vec![0u8; size];
    let Ok(n) = rustix::fs::llistxattr(path, &mut list[..]) else {
        return out;
    };
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let size = rustix::fs::lgetxattr_query(path, name).unwrap_or(0);
        let mut value = vec![0u8; size];
        if let Ok(n) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(n);
            out.insert(name.to_vec(), value);
        }
    }
    out
}

/// Every entry under `root` (relative paths) with its facts, and the groups
/// of paths that share an inode (hard links).
pub fn snapshot(root: &Path, opts: Compare) -> (BTreeMap<PathBuf, EntryFacts>, Vec<Vec<PathBuf>>) {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let ft = meta.file_type();
            let (kind, content, link) = if ft.is_dir() {
                stack.push(path.clone());
                ("dir", None, None)
            } else if ft.is_symlink() {
                (
                    "symlink",
                    None,
                    Some(fs::read_link(&path).expect("readlink")),
                )
            } else {
                ("file", Some(fs::read(&path).expect("read")), None)
            };
            if ft.is_file() && meta.nlink() > 1 {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let mtime = if ft.is_dir() && !opts.dir_mtimes {
                (0, 0)
            } else {
                (meta.mtime(), meta.mtime_nsec())
            };
            entries.insert(
                rel,
                EntryFacts {
                    kind,
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        meta.mode() & 0o7777
                    },
                    mtime,
                    content,
                    link,
                    xattrs: if opts.xattrs {
                        xattrs_of(&path)
                    } else {
                        BTreeMap::new()
                    },
                    sparse: opts.sparse && ft.is_file() && meta.blocks() * 512 < meta.size() / 2,
                },
            );
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (entries, groups)
}

/// Asserts that `got` holds exactly the entries of `want`, entry by entry:
/// type, content, mode, symlink target, mtime, xattrs, sparseness and
/// hard-link identity. Lists every difference on failure.
pub fn assert_same_tree(want: &Path, got: &Path, opts: Compare) {
    let (a, a_links) = snapshot(want, opts);
    let (b, b_links) = snapshot(got, opts);
    let mut problems = Vec::new();
    for (path, fa) in &a {
        match b.get(path) {
            None => problems.push(format!("missing: {}", path.display())),
            Some(fb) if fa != fb => {
                let mut what = Vec::new();
                if fa.kind != fb.kind {
                    what.push(format!("type {} != {}", fa.kind, fb.kind));
                }
                if fa.mode != fb.mode {
                    what.push(format!("mode {:o} != {:o}", fa.mode, fb.mode));
                }
                if fa.mtime != fb.mtime {
                    what.push(format!("mtime {:?} != {:?}", fa.mtime, fb.mtime));
                }
                if fa.content != fb.content {
                    what.push("content differs".into());
                }
                if fa.link != fb.link {
                    what.push(format!("link {:?} != {:?}", fa.link, fb.link));
                }
                if fa.xattrs != fb.xattrs {
                    what.push(format!("xattrs {:?} != {:?}", fa.xattrs, fb.xattrs));
                }
                if fa.sparse != fb.sparse {
                    what.push(format!("sparse {} != {}", fa.sparse, fb.sparse));
                }
                problems.push(format!("{}: {}", path.display(), what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for path in b.keys() {
        if !a.contains_key(path) {
            problems.push(format!("unexpected: {}", path.display()));
        }
    }
    if a_links != b_links {
        problems.push(format!("hard links differ: {a_links:?} != {b_links:?}"));
    }
    assert!(
        problems.is_empty(),
        "trees differ:\n  {}",
        problems.join("\n  ")
    );
}
