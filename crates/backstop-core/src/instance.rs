//! Instances and their sources.
//!
//! An instance is one application installation: a name, a root directory and
//! the sources under it. Instances come from the config file (a later
//! addition) or, as here, from paths given on the command line.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::archive::format::RESERVED_PREFIX;
use crate::error::{Error, Result};

/// One thing inside an instance that goes into a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The top-level name of the source in the archive.
    pub name: String,
    /// The path relative to the instance root; `.` is the root itself.
    pub path: PathBuf,
}

/// Where an instance definition came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceOrigin {
    /// Paths given on the command line.
    AdHoc,
}

/// An application installation that backstop protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Absolute, with symlinks resolved.
    pub root: PathBuf,
    pub origin: InstanceOrigin,
    pub sources: Vec<Source>,
    /// Instance-specific exclude patterns (gitignore syntax, relative to the root).
    pub excludes: Vec<String>,
    /// Paths relative to the root that a restore never writes.
    pub never_restore: Vec<String>,
}

impl Instance {
    /// The filesystem path of `source`: the root itself for `.`.
    pub fn source_path(&self, source: &Source) -> PathBuf {
        if source.path == Path::new(".") {
            self.root.clone()
        } else {
            self.root.join(&source.path)
        }
    }

    /// Builds an ad-hoc instance from paths on the command line.
    ///
    /// One directory becomes an instance named after it, rooted there, with
    /// one source covering all of it. One file becomes an instance rooted in
    /// its directory with the file as the only source. Several paths become
    /// an instance rooted at their deepest common directory, one source per
    /// path, each named after its last component.
    ///
    /// # Errors
    ///
    /// Fails when a path does not exist, when two paths would give sources the
    /// same name, or when one path contains another.
    pub fn ad_hoc(paths: &[PathBuf]) -> Result<Instance> {
        let mut resolved = Vec::with_capacity(paths.len());
        for p in paths {
            let canonical = std::fs::canonicalize(p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::usage(
                        format!("{} does not exist", p.display()),
                        Some("give the path of a directory or file to back up".into()),
                    )
                } else {
                    Error::io("resolving", p, e)
                }
            })?;
            resolved.push(canonical);
        }
        let Some(first) = resolved.first().cloned() else {
            return Err(Error::usage(
                "nothing to back up",
                Some("give a directory, e.g. `backstop backup /srv/myapp`".into()),
            ));
        };
        if resolved.len() == 1 {
            let is_dir = first.is_dir();
            let (root, source_path) = if is_dir {
                (first.clone(), PathBuf::from("."))
            } else {
                let parent = first.parent().unwrap_or(Path::new("/")).to_path_buf();
                (parent, PathBuf::from(first.file_name().unwrap_or_default()))
            };
            let name = slug(first.file_name().unwrap_or(OsStr::new("root")));
            return Ok(Instance {
                sources: vec![Source {
                    name: source_name(&name),
                    path: source_path,
                }],
                name,
                root,
                origin: InstanceOrigin::AdHoc,
                excludes: Vec::new(),
                never_restore: Vec::new(),
            });
        }
        for (i, a) in resolved.iter().enumerate() {
            for b in &resolved[i + 1..] {
                if a.starts_with(b) || b.starts_with(a) {
                    let (outer, inner) = if a.starts_with(b) { (b, a) } else { (a, b) };
                    return Err(Error::usage(
                        format!("{} is inside {}", inner.display(), outer.display()),
                        Some(
                            "give each path once: the outer one already contains the other".into(),
                        ),
                    ));
                }
            }
        }
        let mut root = first.parent().unwrap_or(Path::new("/")).to_path_buf();
        while !resolved.iter().all(|p| p.starts_with(&root)) {
            root = root.parent().unwrap_or(Path::new("/")).to_path_buf();
        }
        let mut sources: Vec<Source> = Vec::new();
        for p in &resolved {
            let name = source_name(&slug(p.file_name().unwrap_or_default()));
            if let Some(other) = sources.iter().find(|s| s.name == name) {
                return Err(Error::usage(
                    format!(
                        "{} and {} would both be stored as `{name}`",
                        root.join(&other.path).display(),
                        p.display()
                    ),
                    Some(format!(
                        "back up their common directory {} instead",
                        root.display()
                    )),
                ));
            }
            let rel = p.strip_prefix(&root).expect("root is a common ancestor");
            sources.push(Source {
                name,
                path: rel.to_path_buf(),
            });
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Instance {
            name: slug(root.file_name().unwrap_or(OsStr::new("root"))),
            root,
            origin: InstanceOrigin::AdHoc,
            sources,
            excludes: Vec::new(),
            never_restore: Vec::new(),
        })
    }
}

/// A name safe for file names and backup ids: letters, digits, `.`, `_` and
/// `-`; anything else becomes `-`.
pub fn slug(name: &OsStr) -> String {
    let mut out = String::new();
    for ch in String::from_utf8_lossy(name.as_bytes()).chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.' {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '.');
    if trimmed.is_empty() {
        "backup".to_string()
    } else {
        trimmed.to_string()
    }
}

/// A source name that cannot collide with the archive's own members.
fn source_name(slug: &str) -> String {
    if slug.starts_with(RESERVED_PREFIX) {
        format!("data-{slug}")
    } else {
        slug.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_keeps_safe_characters() {
        assert_eq!(slug(OsStr::new("my app (prod)")), "my-app-prod");
        assert_eq!(slug(OsStr::new("naïve")), "na-ve");
        assert_eq!(slug(OsStr::new("...")), "backup");
        assert_eq!(slug(OsStr::new("svc_1.2")), "svc_1.2");
    }

    #[test]
    fn one_directory_is_its_own_instance() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("my app");
        std::fs::create_dir(&app).unwrap();
        let inst = Instance::ad_hoc(std::slice::from_ref(&app)).unwrap();
        assert_eq!(inst.name, "my-app");
        assert_eq!(inst.root, app.canonicalize().unwrap());
        assert_eq!(inst.sources[0].path, Path::new("."));
    }

    #[test]
    fn several_paths_share_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap().join("svc");
        std::fs::create_dir_all(base.join("config")).unwrap();
        std::fs::create_dir_all(base.join("data/db")).unwrap();
        let inst = Instance::ad_hoc(&[base.join("data/db"), base.join("config")]).unwrap();
        assert_eq!(inst.root, base);
        assert_eq!(inst.name, "svc");
        let names: Vec<_> = inst.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["config", "db"]);
        assert_eq!(inst.sources[1].path, Path::new("data/db"));
    }

    #[test]
    fn nested_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let err = Instance::ad_hoc(&[dir.path().join("a"), dir.path().join("a/b")]).unwrap_err();
        assert!(err.to_string().contains("inside"), "{err}");
    }

    #[test]
    fn missing_path_is_a_usage_error() {
        let err = Instance::ad_hoc(&[PathBuf::from("/definitely/not/here")]).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Usage);
    }
}
