//! Exclude rules: gitignore-style patterns, the built-in caches, and
//! directories tagged with `CACHEDIR.TAG`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::error::{Error, Result};

/// Directories that are caches in every application and are never backed up.
/// A user pattern such as `!target/` brings one back.
pub const BUILTIN_EXCLUDES: &[&str] = &[".cache/", "node_modules/", "__pycache__/", "target/"];

/// The description recorded for directories skipped because of their tag.
pub const CACHEDIR_TAG_RULE: &str = "directories holding CACHEDIR.TAG";

/// The first bytes of a valid `CACHEDIR.TAG` (https://bford.info/cachedir/).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Why a path was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Excluded {
    /// A pattern matched (built-in, config or command line).
    Pattern(String),
    /// The directory holds a `CACHEDIR.TAG`.
    CacheDirTag,
    /// The path is backstop's own home or store.
    OwnState,
}

/// The compiled exclude rules of one backup.
#[derive(Debug)]
pub struct Excludes {
    matcher: Gitignore,
    patterns: Vec<String>,
}

impl Excludes {
    /// Compiles the built-in rules followed by `patterns`, all anchored at
    /// `root`. Later patterns win, as in a `.gitignore`.
    ///
    /// # Errors
    ///
    /// Fails on a pattern that is not valid glob syntax.
    pub fn new(root: &Path, patterns: &[String]) -> Result<Excludes> {
        let mut builder = GitignoreBuilder::new(root);
        let mut all = Vec::new();
        for p in BUILTIN_EXCLUDES
            .iter()
            .map(|s| s.to_string())
            .chain(patterns.iter().cloned())
        {
            builder.add_line(None, &p).map_err(|e| {
                Error::usage(
                    format!("invalid exclude pattern `{p}`: {e}"),
                    Some("patterns use .gitignore syntax, e.g. `*.log`, `cache/`, `/tmp`".into()),
                )
            })?;
            all.push(p);
        }
        let matcher = builder
            .build()
            .map_err(|e| Error::usage(format!("invalid exclude patterns: {e}"), None))?;
        Ok(Excludes {
            matcher,
            patterns: all,
        })
    }

    /// Every pattern in force, built-in ones first; recorded in the manifest.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether a pattern excludes `path` (under the root), and which. A
    /// directory's `CACHEDIR.TAG` is looked for through its handle, by the
    /// scan (see [`has_cachedir_tag`]).
    pub fn check(&self, path: &Path, is_dir: bool) -> Option<Excluded> {
        match self.matcher.matched(without_trailing_slash(path), is_dir) {
            Match::Ignore(glob) => Some(Excluded::Pattern(glob.original().to_string())),
            _ => None,
        }
    }
}

/// Plain gitignore-style patterns relative to a root, without the built-in
/// rules: what a restore keeps (never-restore paths, `--exclude`) or forces
/// private (secret paths). A path matches when it or any parent does.
#[derive(Debug)]
pub struct Patterns {
    matcher: Gitignore,
    root: std::path::PathBuf,
    empty: bool,
}

impl Patterns {
    /// Compiles `patterns`, anchored at `root`.
    ///
    /// # Errors
    ///
    /// Fails on a pattern that is not valid glob syntax.
    pub fn new(root: &Path, patterns: &[String]) -> Result<Patterns> {
        let mut builder = GitignoreBuilder::new(root);
        for p in patterns {
            builder.add_line(None, p).map_err(|e| {
                Error::usage(
                    format!("invalid pattern `{p}`: {e}"),
                    Some("patterns use .gitignore syntax, e.g. `*.log`, `cache/`, `/tmp`".into()),
                )
            })?;
        }
        let matcher = builder
            .build()
            .map_err(|e| Error::usage(format!("invalid patterns: {e}"), None))?;
        Ok(Patterns {
            matcher,
            root: root.to_path_buf(),
            empty: patterns.is_empty(),
        })
    }

    /// The pattern that matches `rel` (relative to the root) or one of its
    /// parents, if any.
    pub fn matches(&self, rel: &Path, is_dir: bool) -> Option<String> {
        if self.empty {
            return None;
        }
        match self
            .matcher
            .matched_path_or_any_parents(self.root.join(without_trailing_slash(rel)), is_dir)
        {
            Match::Ignore(glob) => Some(glob.original().to_string()),
            _ => None,
        }
    }
}

/// `path` without a trailing `/`, which the matcher would take for a
/// name of its own (`Path::join("")` adds one: a source's top is its path
/// joined with the empty path below it).
fn without_trailing_slash(path: &Path) -> &Path {
    let mut bytes = path.as_os_str().as_bytes();
    while bytes.len() > 1 && bytes.ends_with(b"/") {
        bytes = &bytes[..bytes.len() - 1];
    }
    Path::new(OsStr::from_bytes(bytes))
}

/// Whether the open directory `dir` holds a `CACHEDIR.TAG` with the
/// standard signature (the tag is opened without following a symlink).
pub fn has_cachedir_tag(dir: impl AsFd) -> bool {
    is_cachedir_tag(rustix::fs::openat(
        dir,
        "CACHEDIR.TAG",
        TAG_FLAGS,
        Mode::empty(),
    ))
}

const TAG_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// Whether `opened` is a tag file that begins with the signature.
fn is_cachedir_tag(opened: rustix::io::Result<std::os::fd::OwnedFd>) -> bool {
    let Ok(fd) = opened else {
        return false;
    };
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    File::from(fd).read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE
}

/// Whether the directory at `dir` holds a `CACHEDIR.TAG` with the standard
/// signature: [`has_cachedir_tag`] for a live tree a restore lists by path,
/// where a tagged directory, which no backup holds, is kept. The tag is
/// opened without following a symlink; one path lookup, for a directory
/// without a tag.
pub fn has_cachedir_tag_at(dir: &Path) -> bool {
    is_cachedir_tag(rustix::fs::open(
        dir.join("CACHEDIR.TAG"),
        TAG_FLAGS,
        Mode::empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excludes(root: &Path, patterns: &[&str]) -> Excludes {
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        Excludes::new(root, &patterns).unwrap()
    }

    #[test]
    fn builtin_caches_are_excluded_anywhere() {
        let root = Path::new("/srv/app");
        let ex = excludes(root, &[]);
        assert!(ex.check(&root.join("web/node_modules"), true).is_some());
        assert!(ex.check(&root.join(".cache"), true).is_some());
        assert!(ex.check(&root.join("src/__pycache__"), true).is_some());
        // A file named like a cache directory is not a directory rule match.
        assert!(ex.check(&root.join("target"), false).is_none());
        assert!(ex.check(&root.join("data"), true).is_none());
    }

    #[test]
    fn user_patterns_follow_gitignore_rules() {
        let root = Path::new("/srv/app");
        let ex = excludes(root, &["*.log", "/tmp", "!target/"]);
        assert!(ex.check(&root.join("logs/a.log"), false).is_some());
        assert!(ex.check(&root.join("tmp"), true).is_some());
        assert!(
            ex.check(&root.join("data/tmp"), true).is_none(),
            "anchored pattern"
        );
        assert!(
            ex.check(&root.join("target"), true).is_none(),
            "negation re-includes"
        );
    }

    #[test]
    fn patterns_match_paths_under_a_matching_parent() {
        let root = Path::new("/srv/app");
        let p = Patterns::new(root, &[".initialized".into(), "workspace/.system/".into()]).unwrap();
        assert!(p.matches(Path::new(".initialized"), false).is_some());
        assert!(
            p.matches(Path::new("workspace/.system/installed/x"), false)
                .is_some()
        );
        assert!(
            p.matches(Path::new("workspace/projects/a"), false)
                .is_none()
        );
        assert!(
            Patterns::new(root, &[])
                .unwrap()
                .matches(Path::new("x"), false)
                .is_none()
        );
    }

    #[test]
    fn a_path_with_a_trailing_slash_matches_as_without() {
        // `Path::join("")` adds one: a source's top joined with the empty
        // path below it is `config/`, which must match `config/` as
        // `config` does.
        let root = Path::new("/srv/app");
        let keep = Patterns::new(root, &["config/".to_string()]).unwrap();
        assert!(keep.matches(Path::new("config"), true).is_some());
        assert!(keep.matches(&Path::new("config").join(""), true).is_some());
        let ex = excludes(root, &["config/"]);
        assert!(ex.check(&root.join("config").join(""), true).is_some());
    }

    #[test]
    fn cachedir_tag_needs_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let tagged = dir.path().join("tagged");
        let fake = dir.path().join("fake");
        std::fs::create_dir_all(&tagged).unwrap();
        std::fs::create_dir_all(&fake).unwrap();
        std::fs::write(
            tagged.join("CACHEDIR.TAG"),
            b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
        )
        .unwrap();
        std::fs::write(fake.join("CACHEDIR.TAG"), b"hello").unwrap();
        let open = |p: &Path| std::fs::File::open(p).unwrap();
        assert!(has_cachedir_tag(open(&tagged)));
        assert!(!has_cachedir_tag(open(&fake)));
        // A tag that is a symlink to a real one is not followed.
        std::fs::remove_file(fake.join("CACHEDIR.TAG")).unwrap();
        std::os::unix::fs::symlink(tagged.join("CACHEDIR.TAG"), fake.join("CACHEDIR.TAG")).unwrap();
        assert!(!has_cachedir_tag(open(&fake)));
    }
}
