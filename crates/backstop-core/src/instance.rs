//! Instances and their sources.
//!
//! An instance is one application installation: a name, a root directory,
//! the sources under it, and optionally how to read its version, control its
//! services and check its health. Instances come from the config file
//! (`[instances.NAME]`, parsed here from [`RawInstance`]) or from paths given
//! on the command line ([`Instance::ad_hoc`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::archive::format::{RESERVED_PREFIX, TakenOf};
use crate::command::{CommandEnv, CommandLine, Run};
use crate::error::{Error, Result};
use crate::ops::prune::{DEFAULT_FAILED_MAX_AGE, Retention, RetentionConfig};
use crate::service::{Control, Health, Services};

/// What a source is and where its data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A file or directory: relative to the root (`.` is the root itself),
    /// or absolute (a bind mount outside it).
    Path(PathBuf),
    /// A podman volume, exported with `podman volume export`.
    Volume(String),
    /// A command whose standard output is the data (a database dump).
    Command {
        dump: CommandLine,
        /// Fed the file on its standard input by a restore.
        restore: Option<CommandLine>,
        /// The file's name in the archive, under the source's name.
        file: String,
    },
    /// A live SQLite database, captured with SQLite's online backup.
    Sqlite(PathBuf),
}

impl SourceSpec {
    /// The manifest's name for this kind of source.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Path(_) => "path",
            SourceSpec::Volume(_) => "volume",
            SourceSpec::Command { .. } => "command",
            SourceSpec::Sqlite(_) => "sqlite",
        }
    }
}

/// One thing inside an instance that goes into a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The top-level name of the source in the archive.
    pub name: String,
    pub spec: SourceSpec,
}

impl Source {
    /// A path source.
    pub fn path(name: impl Into<String>, path: impl Into<PathBuf>) -> Source {
        Source {
            name: name.into(),
            spec: SourceSpec::Path(path.into()),
        }
    }
}

/// A named selection of sources plus extra excludes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// The sources it backs up; `None` means all of them.
    pub sources: Option<Vec<String>>,
    /// Patterns excluded on top of the instance's own.
    pub exclude: Vec<String>,
}

/// How an instance's version is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionProbe {
    /// A file's content (its first line, trimmed).
    File {
        path: PathBuf,
        regex: Option<String>,
    },
    /// A symlink's target: its last component (`current -> versions/0.1.12`).
    Symlink {
        path: PathBuf,
        regex: Option<String>,
    },
    /// A command's output (its first line, trimmed).
    Command {
        command: CommandLine,
        regex: Option<String>,
    },
}

/// Where an instance definition came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceOrigin {
    /// Paths given on the command line.
    AdHoc,
    /// `[instances.NAME]` in this config file.
    Config(PathBuf),
}

/// An application installation that backstop protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Absolute, with symlinks resolved when the instance was loaded: the
    /// directory that is backed up and restored.
    pub root: PathBuf,
    /// The root as the config or the command line names it (absolute, its
    /// symlinks kept), recorded beside `root` in every manifest.
    pub configured_root: PathBuf,
    /// Whether `root` is the instance's root or the destination of a
    /// restore elsewhere (the safety backup before it), as every manifest
    /// records it.
    pub taken_of: TakenOf,
    pub origin: InstanceOrigin,
    pub sources: Vec<Source>,
    /// Instance-specific exclude patterns (gitignore syntax, relative to the root).
    pub excludes: Vec<String>,
    /// Paths relative to the root that a restore never writes.
    pub never_restore: Vec<String>,
    /// Paths relative to the root that a restore leaves mode 0600.
    pub secrets: Vec<String>,
    pub profiles: BTreeMap<String, Profile>,
    /// The profile a backup uses when none is asked for.
    pub default_profile: Option<String>,
    pub version: Option<VersionProbe>,
    /// Run by a rollback with the version being activated.
    pub activate: Option<CommandLine>,
    pub services: Option<Services>,
    /// Stop the services for every backup (and start them again).
    pub cold_backup: bool,
    /// A directory of quadlet files whose volumes and bind mounts are
    /// sources too, found at backup time.
    pub quadlets: Option<PathBuf>,
    /// `[retention]`: the rules `prune` uses when given none.
    pub retention: RetentionConfig,
    /// `[encryption]`, as the instance's table says it (see
    /// [`crate::encryption::EncryptionConfig::or_defaults`] for `[defaults.encryption]`).
    pub encryption: crate::encryption::EncryptionConfig,
    /// `[chain]`: how long an incremental chain may grow (see
    /// [`crate::chain::ChainConfig::or_defaults`] for `[defaults.chain]`).
    pub chain: crate::chain::ChainConfig,
    /// `store` and `copies`: where its backups go and are copied to
    /// (see [`crate::stores::Placement::or_defaults`] for `[defaults]`).
    pub placement: crate::stores::Placement,
}

impl Instance {
    /// An instance with only a name, a root and sources; everything else
    /// empty.
    pub fn bare(name: impl Into<String>, root: PathBuf, sources: Vec<Source>) -> Instance {
        Instance {
            name: name.into(),
            configured_root: root.clone(),
            root,
            taken_of: TakenOf::InstanceRoot,
            origin: InstanceOrigin::AdHoc,
            sources,
            excludes: Vec::new(),
            never_restore: Vec::new(),
            secrets: Vec::new(),
            profiles: BTreeMap::new(),
            default_profile: None,
            version: None,
            activate: None,
            services: None,
            cold_backup: false,
            quadlets: None,
            retention: RetentionConfig {
                failed_max_age: DEFAULT_FAILED_MAX_AGE,
                ..RetentionConfig::default()
            },
            encryption: crate::encryption::EncryptionConfig::default(),
            chain: crate::chain::ChainConfig::default(),
            placement: crate::stores::Placement::default(),
        }
    }

    /// The filesystem path of a path or SQLite source: the root itself for
    /// `.`; `None` for volumes and commands.
    pub fn source_path(&self, source: &Source) -> Option<PathBuf> {
        match &source.spec {
            SourceSpec::Path(p) | SourceSpec::Sqlite(p) => Some(self.resolve(p)),
            SourceSpec::Volume(_) | SourceSpec::Command { .. } => None,
        }
    }

    /// `path` against the root (`.` is the root; absolute stays as is).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path == Path::new(".") {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }

    /// This instance narrowed to profile `name`: its sources only, its
    /// excludes added.
    ///
    /// # Errors
    ///
    /// Fails when the instance has no such profile.
    pub fn with_profile(mut self, name: &str) -> Result<Instance> {
        let Some(profile) = self.profiles.get(name).cloned() else {
            let names: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            return Err(Error::usage(
                format!("instance {} has no profile named {name}", self.name),
                Some(if names.is_empty() {
                    "it defines no profiles: add [instances.NAME.profiles.PROFILE] to the config"
                        .into()
                } else {
                    format!("its profiles are: {}", names.join(", "))
                }),
            ));
        };
        if let Some(list) = &profile.sources {
            self.sources.retain(|s| list.contains(&s.name));
            // A profile that picks sources picks configured ones only: the
            // quadlet ones are found later and cannot be named.
            self.quadlets = None;
        }
        self.excludes.extend(profile.exclude);
        Ok(self)
    }

    /// The variables commands of this instance get.
    pub fn env(&self) -> CommandEnv {
        let mut env = CommandEnv::new(&self.name, &self.root);
        if let InstanceOrigin::Config(p) = &self.origin {
            env.set("BACKSTOP_CONFIG", p.to_string_lossy());
        }
        env
    }

    /// Reads the instance's version with its probe. `Ok(None)` when it has
    /// none.
    ///
    /// # Errors
    ///
    /// Fails when the file, symlink or command cannot be read, or the regex
    /// does not match.
    pub fn detect_version(&self) -> Result<Option<String>> {
        let Some(probe) = &self.version else {
            return Ok(None);
        };
        let (text, regex, what) = match probe {
            VersionProbe::File { path, regex } => {
                let path = self.resolve(path);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::io("reading the version from", &path, e))?;
                (text, regex, format!("the version file {}", path.display()))
            }
            VersionProbe::Symlink { path, regex } => {
                let path = self.resolve(path);
                let target = std::fs::read_link(&path)
                    .map_err(|e| Error::io("reading the version symlink", &path, e))?;
                let text = match regex {
                    Some(_) => target.to_string_lossy().into_owned(),
                    None => target
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                };
                (text, regex, format!("the symlink {}", path.display()))
            }
            VersionProbe::Command { command, regex } => {
                let env = self.env();
                let what = format!("the version command of {}", self.name);
                let mut run = Run::new(&what, &env);
                run.cwd = self.root.is_dir().then_some(self.root.as_path());
                run.timeout = Some(Duration::from_secs(30));
                (run.output(command)?, regex, format!("`{command}`"))
            }
        };
        let version = match regex {
            Some(re) => {
                let re = regex::Regex::new(re).map_err(|e| Error::usage(e.to_string(), None))?;
                let caps = re.captures(&text).ok_or_else(|| Error::Refused {
                    message: format!(
                        "the version regex `{re}` does not match what {what} says: {:?}",
                        text.trim()
                    ),
                    hint: Some("fix `version.regex` in the config".into()),
                })?;
                caps.get(1)
                    .or_else(|| caps.get(0))
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default()
            }
            None => text.lines().next().unwrap_or_default().trim().to_string(),
        };
        if version.is_empty() {
            return Err(Error::Refused {
                message: format!("{what} gives an empty version"),
                hint: Some("check the instance's `version` settings in the config".into()),
            });
        }
        Ok(Some(version))
    }

    /// The sources a backup reads: the configured ones, plus, with
    /// `quadlets`, the quadlet files, their volumes and bind mounts; with
    /// notes about what was found but cannot be backed up.
    ///
    /// # Errors
    ///
    /// Fails when the quadlet directory cannot be read, or a found source's
    /// name clashes with a configured one.
    pub fn expanded_sources(&self) -> Result<(Vec<Source>, Vec<String>)> {
        let mut sources = self.sources.clone();
        let Some(dir) = &self.quadlets else {
            return Ok((sources, Vec::new()));
        };
        let dir = self.resolve(dir);
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        let found = crate::quadlet::discover(&dir, &home)?;
        let name = self.name.clone();
        let add = |sources: &mut Vec<Source>, source: Source| -> Result<()> {
            if let Some(other) = sources.iter().find(|s| s.name == source.name) {
                if other.spec == source.spec {
                    return Ok(());
                }
                return Err(Error::usage(
                    format!(
                        "instance {name}: the quadlet files give a source named `{}`, which the config already uses",
                        source.name
                    ),
                    Some("rename the configured source".into()),
                ));
            }
            sources.push(source);
            Ok(())
        };
        let quadlet_dir = match dir.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
            Ok(rel) => rel.to_path_buf(),
            Err(_) => dir.clone(),
        };
        let covered = sources.iter().any(|s| match &s.spec {
            SourceSpec::Path(p) => dir.starts_with(self.resolve(p)),
            _ => false,
        });
        if !covered {
            add(&mut sources, Source::path("quadlets", quadlet_dir))?;
        }
        for v in &found.volumes {
            add(
                &mut sources,
                Source {
                    name: source_name(&format!("volume-{}", slug(OsStr::new(&v.name)))),
                    spec: SourceSpec::Volume(v.name.clone()),
                },
            )?;
        }
        for b in &found.binds {
            let inside = sources.iter().any(|s| match &s.spec {
                SourceSpec::Path(p) => b.path.starts_with(self.resolve(p)),
                _ => false,
            });
            if inside {
                continue;
            }
            let spec = match b.path.strip_prefix(&self.root) {
                Ok(rel) if !rel.as_os_str().is_empty() => SourceSpec::Path(rel.to_path_buf()),
                _ => SourceSpec::Path(b.path.clone()),
            };
            add(
                &mut sources,
                Source {
                    name: source_name(&format!("bind-{}", slug(b.path.as_os_str()))),
                    spec,
                },
            )?;
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((sources, found.notes))
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
            let sources = vec![Source::path(source_name(&name), source_path)];
            let mut instance = Instance::bare(name, root, sources);
            if is_dir {
                instance.configured_root = crate::config::absolute(&paths[0]);
            }
            return Ok(instance);
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
                        other_path(&root, other).display(),
                        p.display()
                    ),
                    Some(format!(
                        "back up their common directory {} instead",
                        root.display()
                    )),
                ));
            }
            let rel = p.strip_prefix(&root).expect("root is a common ancestor");
            sources.push(Source::path(name, rel));
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Instance::bare(
            slug(root.file_name().unwrap_or(OsStr::new("root"))),
            root,
            sources,
        ))
    }
}

/// The longest instance or source name [`slug`] makes, in bytes: a backup
/// id (`<name>-YYYY-MM-DD-HHMMSS-N`) plus `.tar.zst.sha256` then stays far
/// inside the 255 bytes of one path component.
pub const MAX_NAME: usize = 100;

/// A name safe as one path component and in backup ids: letters and digits
/// of any script, `.`, `_` and `-`; anything else (`/`, spaces, control and
/// format characters, bytes that are not UTF-8) becomes `-`. It never
/// starts or ends with `-` or `.` (so it is never `.` or `..`) and is at
/// most [`MAX_NAME`] bytes.
pub fn slug(name: &OsStr) -> String {
    let mut out = String::new();
    for ch in String::from_utf8_lossy(name.as_bytes()).chars() {
        let ch = if ch.is_alphanumeric() || ch == '_' || ch == '-' || ch == '.' {
            ch
        } else if out.ends_with('-') {
            continue;
        } else {
            '-'
        };
        if out.len() + ch.len_utf8() > MAX_NAME {
            break;
        }
        out.push(ch);
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '.');
    if trimmed.is_empty() {
        "backup".to_string()
    } else {
        trimmed.to_string()
    }
}

fn other_path(root: &Path, source: &Source) -> PathBuf {
    match &source.spec {
        SourceSpec::Path(p) => root.join(p),
        _ => root.to_path_buf(),
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

// ---------------------------------------------------------------------------
// `[instances.NAME]` as the config file writes it.

/// An instance table as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    root: toml::Spanned<PathBuf>,
    /// Allows `root = "/"`: backing up the whole filesystem is never a
    /// default.
    #[serde(default)]
    allow_root_fs: bool,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    volumes: Vec<String>,
    quadlets: Option<PathBuf>,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
    default_profile: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    never_restore: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    version: Option<RawVersion>,
    activate: Option<CommandLine>,
    services: Option<RawServices>,
    retention: Option<RawRetention>,
    encryption: Option<toml::Spanned<crate::encryption::EncryptionConfig>>,
    chain: Option<crate::chain::RawChain>,
    store: Option<toml::Spanned<String>>,
    copies: Option<toml::Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep: Option<usize>,
    keep_manual: Option<usize>,
    keep_automatic: Option<usize>,
    keep_daily: Option<usize>,
    keep_weekly: Option<usize>,
    keep_monthly: Option<usize>,
    keep_yearly: Option<usize>,
    keep_within: Option<String>,
    #[serde(default)]
    auto_prune: bool,
    failed_max_age: Option<String>,
}

/// A source: a path string, or a table naming its kind.
#[derive(Debug)]
enum RawSource {
    Path(PathBuf),
    Table(RawSourceTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceTable {
    path: Option<PathBuf>,
    volume: Option<String>,
    command: Option<CommandLine>,
    restore: Option<CommandLine>,
    file: Option<String>,
    sqlite: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a path, or a table with one of `path`, `volume`, `command` or `sqlite`",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<RawSource, E> {
                Ok(RawSource::Path(PathBuf::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<RawSource, A::Error> {
                RawSourceTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSource::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    sources: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    file: Option<PathBuf>,
    symlink: Option<PathBuf>,
    command: Option<CommandLine>,
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServices {
    stop: Option<CommandLine>,
    start: Option<CommandLine>,
    status: Option<CommandLine>,
    containers: Option<Vec<String>>,
    units: Option<Vec<String>>,
    #[serde(default)]
    user: bool,
    health: Option<CommandLine>,
    health_timeout: Option<String>,
    health_interval: Option<String>,
    stop_timeout: Option<String>,
    #[serde(default)]
    cold_backup: bool,
}

/// Checks a name used as a source or instance name: what [`slug`] keeps.
fn check_name(what: &str, name: &str) -> std::result::Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!("{what} `{name}` is longer than {MAX_NAME} bytes"));
    }
    if name.is_empty() || slug(OsStr::new(name)) != name {
        return Err(format!(
            "{what} `{name}` may only hold letters, digits, `.`, `_` and `-`, and may not start or end with `-` or `.`"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "{what} `{name}` starts with `{RESERVED_PREFIX}`, which backstop keeps for its own archive members"
        ));
    }
    Ok(())
}

/// Checks a path inside the root: relative without `..`, or absolute.
fn check_inside(what: &str, path: &Path) -> std::result::Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err(format!("{what} is empty: use `.` for the root itself"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{what} `{}` uses `..`: give a path below the root, or an absolute one",
            path.display()
        ));
    }
    Ok(())
}

/// `~/x` expanded with `$HOME`, then resolved against `base`.
fn expand(path: &Path, base: &Path) -> PathBuf {
    let path = match path.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(rest))
            .unwrap_or_else(|| path.to_path_buf()),
        Err(_) => path.to_path_buf(),
    };
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// A bad value in an instance table, with where its key is written when
/// that is known (else the table's header is named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub message: String,
    /// Byte offsets of the value in the config text.
    pub span: Option<std::ops::Range<usize>>,
}

impl From<String> for KeyError {
    fn from(message: String) -> KeyError {
        KeyError {
            message,
            span: None,
        }
    }
}

/// Why a configured `root` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootProblem {
    /// `root = ""`: it would silently mean the config file's directory.
    Empty,
    /// The root is (or resolves to) `/` without `allow_root_fs = true`.
    WholeFilesystem { configured: PathBuf },
}

impl fmt::Display for RootProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootProblem::Empty => f.write_str(
                "`root` is empty: give the application's directory (`.` for the config \
                 file's own directory)",
            ),
            RootProblem::WholeFilesystem { configured } if configured == Path::new("/") => f
                .write_str(
                    "`root` is `/`, the whole filesystem: give the application's directory, \
                     or add `allow_root_fs = true` to the instance if that is really meant",
                ),
            RootProblem::WholeFilesystem { configured } => write!(
                f,
                "`root` {} resolves to `/`, the whole filesystem: give the application's \
                 directory, or add `allow_root_fs = true` to the instance if that is really meant",
                configured.display()
            ),
        }
    }
}

/// The configured root made absolute (`~` and the config's directory
/// applied), and where it resolves to: its symlinks followed once, now, so
/// that a root that is a symlink backs up the tree behind it. A root that
/// does not exist yet stays as written (a restore may create it).
///
/// # Errors
///
/// Refuses an empty root, and `/` unless `allow_root_fs`.
pub fn resolve_root(
    raw: &Path,
    base: &Path,
    allow_root_fs: bool,
) -> std::result::Result<(PathBuf, PathBuf), RootProblem> {
    if raw.as_os_str().is_empty() {
        return Err(RootProblem::Empty);
    }
    let configured = crate::config::absolute(&expand(raw, base));
    let resolved = std::fs::canonicalize(&configured).unwrap_or_else(|_| configured.clone());
    let is_fs_root = |p: &Path| p.components().all(|c| c == Component::RootDir);
    if !allow_root_fs && (is_fs_root(&configured) || is_fs_root(&resolved)) {
        return Err(RootProblem::WholeFilesystem { configured });
    }
    Ok((configured, resolved))
}

fn duration(
    key: &str,
    text: Option<&str>,
    default: Duration,
) -> std::result::Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => crate::time::parse_duration(t).map_err(|e| format!("services.{key}: {e}")),
    }
}

impl Instance {
    /// Builds and checks an instance from its config table. `base` is the
    /// config file's directory (relative roots resolve against it).
    ///
    /// # Errors
    ///
    /// Returns a message naming the bad key and the fix.
    pub fn from_config(
        name: &str,
        raw: RawInstance,
        base: &Path,
        config_path: &Path,
        known_store: &dyn Fn(&str) -> std::result::Result<(), String>,
    ) -> std::result::Result<Instance, KeyError> {
        let span = raw.root.span();
        let placement =
            crate::stores::Placement::checked(raw.store.clone(), raw.copies.clone(), known_store)
                .map_err(|(at, message)| KeyError {
                message,
                span: Some(at..at),
            })?;
        let (configured, root) = resolve_root(raw.root.get_ref(), base, raw.allow_root_fs)
            .map_err(|problem| KeyError {
                message: problem.to_string(),
                span: Some(span),
            })?;
        if let Some(table) = &raw.encryption {
            // Checked here too, to name the line of the [encryption] table.
            table
                .get_ref()
                .clone()
                .checked(base)
                .map_err(|e| KeyError {
                    message: format!("encryption: {e}"),
                    span: Some(table.span()),
                })?;
        }
        let mut instance =
            Instance::build(name, raw, configured, root, config_path).map_err(KeyError::from)?;
        instance.placement = placement;
        Ok(instance)
    }

    /// [`Instance::from_config`] once the root is resolved.
    fn build(
        name: &str,
        raw: RawInstance,
        configured_root: PathBuf,
        root: PathBuf,
        config_path: &Path,
    ) -> std::result::Result<Instance, String> {
        check_name("the instance name", name)?;
        let mut sources = Vec::new();
        for (sname, rs) in raw.sources {
            check_name("the source name", &sname)?;
            let spec = match rs {
                RawSource::Path(p) => {
                    check_inside(&format!("sources.{sname}"), &p)?;
                    SourceSpec::Path(p)
                }
                RawSource::Table(t) => {
                    let kinds = [
                        t.path.is_some(),
                        t.volume.is_some(),
                        t.command.is_some(),
                        t.sqlite.is_some(),
                    ];
                    if kinds.iter().filter(|k| **k).count() != 1 {
                        return Err(format!(
                            "sources.{sname} must say exactly one of `path`, `volume`, `command` or `sqlite`"
                        ));
                    }
                    if t.command.is_none() && (t.restore.is_some() || t.file.is_some()) {
                        return Err(format!(
                            "sources.{sname}: `restore` and `file` belong to command sources"
                        ));
                    }
                    if let Some(p) = t.path {
                        check_inside(&format!("sources.{sname}.path"), &p)?;
                        SourceSpec::Path(p)
                    } else if let Some(v) = t.volume {
                        crate::podman::check_name("volume", &v)
                            .map_err(|e| format!("sources.{sname}.volume: {e}"))?;
                        SourceSpec::Volume(v)
                    } else if let Some(p) = t.sqlite {
                        check_inside(&format!("sources.{sname}.sqlite"), &p)?;
                        if p == Path::new(".") {
                            return Err(format!(
                                "sources.{sname}.sqlite names the root: give the database file"
                            ));
                        }
                        SourceSpec::Sqlite(p)
                    } else {
                        let file = t.file.unwrap_or_else(|| format!("{sname}.dump"));
                        check_name(&format!("sources.{sname}.file"), &file)?;
                        SourceSpec::Command {
                            dump: t.command.expect("one kind is set"),
                            restore: t.restore,
                            file,
                        }
                    }
                }
            };
            sources.push(Source { name: sname, spec });
        }
        for v in raw.volumes {
            crate::podman::check_name("volume", &v).map_err(|e| format!("volumes: {e}"))?;
            let sname = source_name(&format!("volume-{}", slug(OsStr::new(&v))));
            if sources.iter().any(|s| s.name == sname) {
                return Err(format!(
                    "volumes: `{v}` would be stored as source `{sname}`, which sources already uses"
                ));
            }
            sources.push(Source {
                name: sname,
                spec: SourceSpec::Volume(v),
            });
        }
        if let Some(q) = &raw.quadlets {
            check_inside("quadlets", q)?;
        }
        if sources.is_empty() && raw.quadlets.is_none() {
            sources.push(Source::path(source_name(name), "."));
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        // Path sources may not overlap: a file would be in the archive twice.
        let paths: Vec<(&str, PathBuf)> = sources
            .iter()
            .filter_map(|s| match &s.spec {
                SourceSpec::Path(p) => Some((s.name.as_str(), root.join(p))),
                _ => None,
            })
            .collect();
        for (i, (a, pa)) in paths.iter().enumerate() {
            for (b, pb) in &paths[i + 1..] {
                if pa.starts_with(pb) || pb.starts_with(pa) {
                    return Err(format!(
                        "sources {a} and {b} overlap ({} and {}): list each path once",
                        pa.display(),
                        pb.display()
                    ));
                }
            }
        }
        let mut profiles = BTreeMap::new();
        for (pname, p) in raw.profiles {
            check_name("the profile name", &pname)?;
            if let Some(list) = &p.sources {
                for s in list {
                    if !sources.iter().any(|x| &x.name == s) {
                        let names: Vec<&str> = sources.iter().map(|x| x.name.as_str()).collect();
                        return Err(format!(
                            "profiles.{pname} names source `{s}`, which is not defined (sources: {})",
                            names.join(", ")
                        ));
                    }
                }
            }
            profiles.insert(
                pname,
                Profile {
                    sources: p.sources,
                    exclude: p.exclude,
                },
            );
        }
        if let Some(d) = &raw.default_profile
            && !profiles.contains_key(d)
        {
            return Err(format!("default_profile `{d}` is not one of the profiles"));
        }
        let version = match raw.version {
            None => None,
            Some(v) => {
                if let Some(re) = &v.regex {
                    regex::Regex::new(re).map_err(|e| format!("version.regex: {e}"))?;
                }
                match (v.file, v.symlink, v.command) {
                    (Some(path), None, None) => Some(VersionProbe::File {
                        path,
                        regex: v.regex,
                    }),
                    (None, Some(path), None) => Some(VersionProbe::Symlink {
                        path,
                        regex: v.regex,
                    }),
                    (None, None, Some(command)) => Some(VersionProbe::Command {
                        command,
                        regex: v.regex,
                    }),
                    _ => {
                        return Err(
                            "version must say exactly one of `file`, `symlink` or `command`".into(),
                        );
                    }
                }
            }
        };
        let (services, cold_backup) = match raw.services {
            None => (None, false),
            Some(s) => {
                let commands = s.stop.is_some() || s.start.is_some() || s.status.is_some();
                let styles = [commands, s.containers.is_some(), s.units.is_some()];
                if styles.iter().filter(|x| **x).count() > 1 {
                    return Err(
                        "services: use one style: `stop`/`start`/`status` commands, `containers`, or `units`"
                            .into(),
                    );
                }
                if s.user && s.units.is_none() {
                    return Err("services.user applies to `units` only".into());
                }
                let control = if commands {
                    match (s.stop, s.start) {
                        (Some(stop), Some(start)) => Some(Control::Commands {
                            stop,
                            start,
                            status: s.status,
                        }),
                        _ => {
                            return Err(
                                "services: `stop` and `start` go together (and `status` needs them)"
                                    .into(),
                            );
                        }
                    }
                } else if let Some(names) = s.containers {
                    for n in &names {
                        crate::podman::check_name("container", n)
                            .map_err(|e| format!("services.containers: {e}"))?;
                    }
                    Some(Control::Containers { names })
                } else if let Some(names) = s.units {
                    for n in &names {
                        if n.is_empty() || n.starts_with('-') || n.contains(char::is_whitespace) {
                            return Err(format!("services.units: `{n}` is not a unit name"));
                        }
                    }
                    Some(Control::Units {
                        names,
                        user: s.user,
                    })
                } else {
                    None
                };
                if control.is_none() && s.cold_backup {
                    return Err(
                        "services.cold_backup needs a way to stop them: commands, containers or units"
                            .into(),
                    );
                }
                let health = match s.health {
                    Some(command) => Some(Health {
                        command,
                        timeout: duration(
                            "health_timeout",
                            s.health_timeout.as_deref(),
                            Duration::from_secs(60),
                        )?,
                        interval: duration(
                            "health_interval",
                            s.health_interval.as_deref(),
                            Duration::from_secs(2),
                        )?,
                    }),
                    None if s.health_timeout.is_some() || s.health_interval.is_some() => {
                        return Err(
                            "services: health_timeout and health_interval need `health`".into()
                        );
                    }
                    None => None,
                };
                let stop_timeout = duration(
                    "stop_timeout",
                    s.stop_timeout.as_deref(),
                    Duration::from_secs(30),
                )?;
                (
                    Some(Services {
                        control,
                        health,
                        stop_timeout,
                        systemctl: PathBuf::from("systemctl"),
                        podman: crate::podman::Podman::default(),
                    }),
                    s.cold_backup,
                )
            }
        };
        let encryption = raw
            .encryption
            .map(toml::Spanned::into_inner)
            .unwrap_or_default()
            .checked(&crate::fsutil::parent_dir(config_path))
            .map_err(|e| format!("encryption: {e}"))?;
        let chain = crate::chain::ChainConfig::from_raw(raw.chain.unwrap_or_default())?;
        let retention = match raw.retention {
            None => RetentionConfig {
                failed_max_age: DEFAULT_FAILED_MAX_AGE,
                ..RetentionConfig::default()
            },
            Some(r) => {
                let parse = |key: &str, v: Option<&str>| {
                    v.map(crate::time::parse_duration)
                        .transpose()
                        .map_err(|e| format!("retention.{key}: {e}"))
                };
                let rules = Retention {
                    keep: r.keep,
                    keep_manual: r.keep_manual,
                    keep_automatic: r.keep_automatic,
                    keep_daily: r.keep_daily,
                    keep_weekly: r.keep_weekly,
                    keep_monthly: r.keep_monthly,
                    keep_yearly: r.keep_yearly,
                    keep_within: parse("keep_within", r.keep_within.as_deref())?,
                };
                if r.auto_prune && rules.is_empty() {
                    return Err(
                        "retention.auto_prune needs at least one keep rule to prune by".into(),
                    );
                }
                RetentionConfig {
                    rules,
                    auto_prune: r.auto_prune,
                    failed_max_age: parse("failed_max_age", r.failed_max_age.as_deref())?
                        .unwrap_or(DEFAULT_FAILED_MAX_AGE),
                }
            }
        };
        Ok(Instance {
            name: name.to_string(),
            root,
            configured_root,
            taken_of: TakenOf::InstanceRoot,
            origin: InstanceOrigin::Config(config_path.to_path_buf()),
            sources,
            excludes: raw.exclude,
            never_restore: raw.never_restore,
            secrets: raw.secrets,
            profiles,
            default_profile: raw.default_profile,
            version,
            activate: raw.activate,
            services,
            cold_backup,
            quadlets: raw.quadlets,
            retention,
            encryption,
            chain,
            placement: crate::stores::Placement::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_keeps_safe_characters() {
        assert_eq!(slug(OsStr::new("my app (prod)")), "my-app-prod");
        assert_eq!(slug(OsStr::new("naïve")), "naïve");
        assert_eq!(slug(OsStr::new("ünï")), "ünï");
        assert_eq!(slug(OsStr::new("日本語 データ")), "日本語-データ");
        assert_eq!(slug(OsStr::new("...")), "backup");
        assert_eq!(slug(OsStr::new("svc_1.2")), "svc_1.2");
    }

    #[test]
    fn slug_is_one_safe_bounded_component() {
        for hostile in [
            "..",
            "a/../b",
            "/",
            "x\u{0}y",
            "tab\there",
            "rtl\u{202e}txt",
            "line\nbreak",
        ] {
            let s = slug(OsStr::new(hostile));
            assert!(!s.is_empty() && s != "." && s != "..", "{hostile:?}: {s}");
            assert!(
                !s.contains('/') && !s.chars().any(char::is_control),
                "{hostile:?}: {s}"
            );
            assert!(!s.chars().any(|c| c == '\u{202e}'), "{hostile:?}: {s}");
        }
        assert_eq!(slug(OsStr::new("a/../b")), "a-..-b");
        assert_eq!(slug(OsStr::from_bytes(b"caf\xe9")), "caf");
        let long = slug(OsStr::new(&"é".repeat(200)));
        assert!(
            long.len() <= MAX_NAME && long.chars().all(|c| c == 'é'),
            "{long}"
        );
        assert_eq!(
            slug(OsStr::new(&format!("{}-tail", "a".repeat(MAX_NAME - 1)))).len(),
            MAX_NAME - 1
        );
    }

    #[test]
    fn one_directory_is_its_own_instance() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("my app");
        std::fs::create_dir(&app).unwrap();
        let inst = Instance::ad_hoc(std::slice::from_ref(&app)).unwrap();
        assert_eq!(inst.name, "my-app");
        assert_eq!(inst.root, app.canonicalize().unwrap());
        assert_eq!(inst.sources[0].spec, SourceSpec::Path(".".into()));
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
        assert_eq!(inst.sources[1].spec, SourceSpec::Path("data/db".into()));
    }

    #[test]
    fn nested_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let err = Instance::ad_hoc(&[dir.path().join("a"), dir.path().join("a/b")]).unwrap_err();
        assert!(err.to_string().contains("inside"), "{err}");
    }

    #[test]
    fn a_root_resolves_through_its_symlinks_once() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let (configured, resolved) = resolve_root(Path::new("link"), dir.path(), false).unwrap();
        assert_eq!(configured, dir.path().join("link"));
        assert_eq!(resolved, real);
        // A root that does not exist yet is kept as written.
        let (configured, resolved) = resolve_root(Path::new("new"), dir.path(), false).unwrap();
        assert_eq!(
            (configured.clone(), resolved),
            (configured, dir.path().join("new"))
        );
    }

    #[test]
    fn empty_and_filesystem_roots_are_refused() {
        let base = Path::new("/etc/backstop");
        assert_eq!(
            resolve_root(Path::new(""), base, true),
            Err(RootProblem::Empty)
        );
        assert!(matches!(
            resolve_root(Path::new("/"), base, false),
            Err(RootProblem::WholeFilesystem { .. })
        ));
        assert!(matches!(
            resolve_root(Path::new(".."), Path::new("/usr"), false),
            Err(RootProblem::WholeFilesystem { .. })
        ));
        assert_eq!(
            resolve_root(Path::new("/"), base, true).unwrap().1,
            Path::new("/")
        );
    }

    #[test]
    fn missing_path_is_a_usage_error() {
        let err = Instance::ad_hoc(&[PathBuf::from("/definitely/not/here")]).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Usage);
    }
}
