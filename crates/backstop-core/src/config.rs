//! The config file: where it is looked up, what it may say, and the layout
//! (home, store, catalog) that follows from it.
//!
//! The file is TOML. Unknown keys and bad values are errors that name the
//! file, the line and the column: a typo must never be silently ignored in a
//! tool that decides what gets backed up. Instances are `[instances.NAME]`
//! tables, turned into [`Instance`] values here (see `instance.rs` for what
//! they may say); relative paths resolve against the file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::archive::{Codec, CompressionSpec};
use crate::error::ErrorKind;
use crate::instance::Instance;

/// A problem with the config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config file {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("cannot find a home directory for backstop: {0}")]
    NoHome(String),
}

impl ConfigError {
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Missing { .. } => Some(
                "check the path given with --config or $BACKSTOP_CONFIG, or omit it to use \
                 the defaults"
                    .into(),
            ),
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { .. } => Some(
                "fix the line named above; the keys backstop knows are listed in the README \
                 (Configuration)"
                    .into(),
            ),
            ConfigError::NoHome(_) => Some("set --home DIR or $BACKSTOP_HOME".into()),
        }
    }

    #[allow(dead_code)]
    pub(crate) fn kind(&self) -> ErrorKind {
        ErrorKind::Usage
    }
}

/// The file as written, before defaults are applied.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    home: Option<toml::Spanned<PathBuf>>,
    store: Option<toml::Spanned<PathBuf>>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    stores: BTreeMap<String, toml::Spanned<crate::stores::RawStore>>,
    #[serde(default)]
    instances: BTreeMap<String, toml::Spanned<crate::instance::RawInstance>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    compression: Option<Codec>,
    level: Option<i32>,
    #[serde(default)]
    exclude: Vec<String>,
    encryption: Option<toml::Spanned<crate::encryption::EncryptionConfig>>,
    chain: Option<toml::Spanned<crate::chain::RawChain>>,
    store: Option<toml::Spanned<String>>,
    copies: Option<toml::Spanned<Vec<String>>>,
}

/// The loaded configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The file it came from; `None` when no config file exists.
    pub path: Option<PathBuf>,
    /// `home`, resolved against the file's directory.
    pub home: Option<PathBuf>,
    /// `store`, resolved against the file's directory.
    pub store: Option<PathBuf>,
    /// `[defaults] compression` and `level`.
    pub compression: Option<Codec>,
    pub level: Option<i32>,
    /// `[defaults] exclude`: gitignore-style patterns for every backup.
    pub exclude: Vec<String>,
    /// `[defaults.encryption]`: for every instance whose own table leaves
    /// a key out, and for ad-hoc instances.
    pub encryption: crate::encryption::EncryptionConfig,
    /// `[defaults.chain]`: chain limits for every instance whose own table
    /// leaves a key out, and for ad-hoc instances.
    pub chain: crate::chain::ChainConfig,
    /// `[stores.NAME]`: the stores besides the home's own.
    pub stores: crate::stores::Stores,
    /// `[defaults] store` and `copies`: where the backups of instances
    /// that say nothing of it go, and are copied to.
    pub placement: crate::stores::Placement,
    /// `[instances.NAME]`, by name.
    pub instances: BTreeMap<String, Instance>,
}

/// Where the config came from when it was looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--config FILE`
    Flag,
    /// `$BACKSTOP_CONFIG`
    Env,
    /// One of the standard places, which may all be absent.
    Search,
}

impl Config {
    /// The places searched when neither `--config` nor `$BACKSTOP_CONFIG` is
    /// given, in order.
    pub fn search_paths() -> Vec<PathBuf> {
        let mut paths = vec![PathBuf::from("backstop.toml")];
        if let Some(dir) = xdg_dir("XDG_CONFIG_HOME", ".config") {
            paths.push(dir.join("backstop").join("backstop.toml"));
        }
        paths.push(PathBuf::from("/etc/backstop/backstop.toml"));
        paths
    }

    /// Loads the config: `explicit` (from `--config`) first, then
    /// `$BACKSTOP_CONFIG`, then the first of [`Config::search_paths`] that
    /// exists. No file at all is fine: the defaults apply.
    ///
    /// # Errors
    ///
    /// Fails when a named file does not exist, cannot be read, or is not valid.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env = std::env::var_os("BACKSTOP_CONFIG").filter(|v| !v.is_empty());
        let (path, origin) = match (explicit, env) {
            (Some(p), _) => (Some(p.to_path_buf()), Origin::Flag),
            (None, Some(p)) => (Some(PathBuf::from(p)), Origin::Env),
            (None, None) => (
                Config::search_paths().into_iter().find(|p| p.is_file()),
                Origin::Search,
            ),
        };
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && origin != Origin::Search => {
                return Err(ConfigError::Missing { path });
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::parse(&text, &path)
    }

    /// Parses config text that came from `path`.
    ///
    /// # Errors
    ///
    /// Fails on invalid TOML, unknown keys and bad values, naming the line.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: describe_toml_error(&e, text),
        })?;
        let base = crate::fsutil::parent_dir(path);
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let resolve = |key: &str, value: Option<toml::Spanned<PathBuf>>| match value {
            Some(v) if v.get_ref().as_os_str().is_empty() => Err(invalid(format!(
                "line {}: `{key}` is empty: give a directory, or leave the key out for the default",
                line_of(text, v.span().start)
            ))),
            Some(v) => {
                let p = v.into_inner();
                Ok(Some(if p.is_absolute() { p } else { base.join(p) }))
            }
            None => Ok(None),
        };
        let home = resolve("home", raw.home)?;
        let store = resolve("store", raw.store)?;
        // A level alone is one for the default codec: checked against it.
        if raw.defaults.compression.is_some() || raw.defaults.level.is_some() {
            let codec = raw
                .defaults
                .compression
                .unwrap_or(CompressionSpec::default().codec);
            CompressionSpec::new(codec, raw.defaults.level).map_err(|message| {
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("[defaults] {message}"),
                }
            })?;
        }
        let encryption = match raw.defaults.encryption {
            None => crate::encryption::EncryptionConfig::default(),
            Some(table) => {
                let line = line_of(text, table.span().start);
                table
                    .into_inner()
                    .checked(&base)
                    .map_err(|message| ConfigError::Invalid {
                        path: path.to_path_buf(),
                        message: format!("[defaults.encryption] (line {line}): {message}"),
                    })?
            }
        };
        let chain = match raw.defaults.chain {
            None => crate::chain::ChainConfig::default(),
            Some(table) => {
                let line = line_of(text, table.span().start);
                crate::chain::ChainConfig::from_raw(table.into_inner()).map_err(|message| {
                    ConfigError::Invalid {
                        path: path.to_path_buf(),
                        message: format!("[defaults.chain] (line {line}): {message}"),
                    }
                })?
            }
        };
        let mut defs = BTreeMap::new();
        for (name, spanned) in raw.stores {
            let line = line_of(text, spanned.span().start);
            let def = crate::stores::StoreDef::from_raw(&name, spanned.into_inner(), &base)
                .map_err(|message| invalid(format!("[stores.{name}] (line {line}): {message}")))?;
            defs.insert(name, def);
        }
        let known = |name: &str| {
            if name == crate::stores::HOME_STORE || defs.contains_key(name) {
                return Ok(());
            }
            let names: Vec<&str> = defs.keys().map(String::as_str).collect();
            Err(format!(
                "there is no store named `{name}` ({})",
                if names.is_empty() {
                    "the config has no [stores.NAME] tables".to_string()
                } else {
                    format!("the config names: {}", names.join(", "))
                }
            ))
        };
        let placement =
            crate::stores::Placement::checked(raw.defaults.store, raw.defaults.copies, &known)
                .map_err(|(at, message)| {
                    invalid(format!(
                        "[defaults] (line {}): {message}",
                        line_of(text, at)
                    ))
                })?;
        let mut instances = BTreeMap::new();
        for (name, spanned) in raw.instances {
            let table = spanned.span();
            let instance = Instance::from_config(&name, spanned.into_inner(), &base, path, &known)
                .map_err(|e| {
                    let line = line_of(text, e.span.unwrap_or(table).start);
                    ConfigError::Invalid {
                        path: path.to_path_buf(),
                        message: format!("[instances.{name}] (line {line}): {}", e.message),
                    }
                })?;
            instances.insert(name, instance);
        }
        Ok(Config {
            path: Some(path.to_path_buf()),
            home,
            store,
            compression: raw.defaults.compression,
            level: raw.defaults.level,
            exclude: raw.defaults.exclude,
            encryption,
            chain,
            stores: crate::stores::Stores::new(defs),
            placement,
            instances,
        })
    }

    /// The instance called `name` in the config.
    ///
    /// # Errors
    ///
    /// Fails with a usage error listing the instances that exist.
    pub fn instance(&self, name: &str) -> Result<&Instance, crate::Error> {
        self.instances.get(name).ok_or_else(|| {
            let hint = if self.instances.is_empty() {
                match &self.path {
                    Some(p) => format!(
                        "{} defines no instances: add one with `backstop init {name} --root DIR`",
                        p.display()
                    ),
                    None => format!(
                        "no config file was found: `backstop init {name} --root DIR` writes one"
                    ),
                }
            } else {
                let names: Vec<&str> = self.instances.keys().map(String::as_str).collect();
                format!("the config defines: {}", names.join(", "))
            };
            crate::Error::usage(format!("there is no instance named `{name}`"), Some(hint))
        })
    }
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Turns a TOML error into one line: "line L, column C: what is wrong".
fn describe_toml_error(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim().to_string();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// `$VAR`, or `$HOME/<fallback>` when it is unset or empty.
fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(fallback)),
    }
}

/// Where backstop keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The home directory: catalog, locks.
    pub home: PathBuf,
    /// Where archives live, one directory per instance.
    pub store: PathBuf,
}

impl Layout {
    /// Resolves the layout: `home` (from `--home` or `$BACKSTOP_HOME`) wins over
    /// the config, which wins over the default (`$XDG_DATA_HOME/backstop`, or
    /// `/var/lib/backstop` for root). The store is the config's `store` or
    /// `<home>/backups`.
    ///
    /// # Errors
    ///
    /// Fails when no home can be determined.
    pub fn resolve(home: Option<&Path>, config: &Config) -> Result<Layout, ConfigError> {
        let home = match (home, &config.home) {
            (Some(h), _) => absolute(h),
            (None, Some(h)) => absolute(h),
            (None, None) if rustix::process::geteuid().is_root() => {
                PathBuf::from("/var/lib/backstop")
            }
            (None, None) => xdg_dir("XDG_DATA_HOME", ".local/share")
                .map(|d| d.join("backstop"))
                .ok_or_else(|| {
                    ConfigError::NoHome("neither $XDG_DATA_HOME nor $HOME is set".into())
                })?,
        };
        let store = match &config.store {
            Some(s) => absolute(s),
            None => home.join("backups"),
        };
        Ok(Layout { home, store })
    }

    /// The catalog database.
    pub fn catalog(&self) -> PathBuf {
        self.home.join("catalog.db")
    }

    /// The directory of lock files.
    pub fn locks(&self) -> PathBuf {
        self.home.join("locks")
    }

    /// The directory holding one instance's archives.
    pub fn instance_store(&self, instance: &str) -> PathBuf {
        self.store.join(instance)
    }
}

/// `path` made absolute against the current directory, without resolving
/// symlinks (the user's spelling is kept).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_the_line() {
        let text = "home = \"/x\"\n\n[defaults]\ncompresion = \"zstd\"\n";
        let err = Config::parse(text, Path::new("/etc/b.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("compresion"), "{msg}");
        assert!(msg.contains("/etc/b.toml"), "{msg}");
    }

    #[test]
    fn a_level_alone_is_checked_against_the_default_codec() {
        let text = "[defaults]\nlevel = 40\n";
        let err = Config::parse(text, Path::new("b.toml")).unwrap_err();
        assert!(err.to_string().contains("out of range for zstd"), "{err}");
        assert!(Config::parse("[defaults]\nlevel = 19\n", Path::new("b.toml")).is_ok());
    }

    #[test]
    fn bad_level_is_rejected() {
        let text = "[defaults]\ncompression = \"gzip\"\nlevel = 42\n";
        let err = Config::parse(text, Path::new("b.toml")).unwrap_err();
        assert!(err.to_string().contains("level"), "{err}");
    }

    #[test]
    fn bad_codec_is_rejected_with_line() {
        let text = "[defaults]\ncompression = \"lzma\"\n";
        let err = Config::parse(text, Path::new("b.toml")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let text =
            "home = \"state\"\nstore = \"/srv/backups\"\n[defaults]\nexclude = [\"*.tmp\"]\n";
        let config = Config::parse(text, Path::new("/etc/backstop/backstop.toml")).unwrap();
        assert_eq!(config.home.unwrap(), Path::new("/etc/backstop/state"));
        assert_eq!(config.store.unwrap(), Path::new("/srv/backups"));
        assert_eq!(config.exclude, vec!["*.tmp".to_string()]);
    }

    #[test]
    fn the_readme_config_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Configuration").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").unwrap()];
        let config = Config::parse(text, Path::new("/etc/backstop/backstop.toml")).unwrap();
        let app = &config.instances["app"];
        assert_eq!(app.sources.len(), 6, "{:?}", app.sources);
        assert!(app.services.is_some() && app.version.is_some());
    }

    #[test]
    fn an_instance_table_is_checked() {
        let bad = [
            (
                "[instances.a]\nroot = \"/x\"\n[instances.a.sources.s]\npath = \"p\"\nvolume = \"v\"\n",
                "exactly one",
            ),
            (
                "[instances.a]\nroot = \"/x\"\nversion = { file = \"V\", symlink = \"c\" }\n",
                "exactly one",
            ),
            (
                "[instances.a]\nroot = \"/x\"\nversion = { file = \"V\", regex = \"(\" }\n",
                "regex",
            ),
            (
                "[instances.a]\nroot = \"/x\"\n[instances.a.services]\nstop = \"s\"\n",
                "go together",
            ),
            (
                "[instances.a]\nroot = \"/x\"\n[instances.a.services]\nstop = \"s\"\nstart = \"t\"\nunits = [\"u\"]\n",
                "one style",
            ),
            (
                "[instances.a]\nroot = \"/x\"\n[instances.a.services]\nhealth = \"h\"\nhealth_timeout = \"soon\"\n",
                "not a duration",
            ),
            (
                "[instances.a]\nroot = \"/x\"\n[instances.a.sources]\na = \"data\"\nb = \"data/sub\"\n",
                "overlap",
            ),
            (
                "[instances.a]\nroot = \"/x\"\n[instances.a.profiles.p]\nsources = [\"nope\"]\n",
                "not defined",
            ),
            (
                "[instances.a]\nroot = \"/x\"\nvolumes = [\"-rf\"]\n",
                "volume",
            ),
            ("[instances.\"a b\"]\nroot = \"/x\"\n", "instance name"),
            (
                "[instances.a]\nroot = \"/x\"\n[instances.a.sources]\nbackstop-x = \".\"\n",
                "backstop-",
            ),
        ];
        for (text, want) in bad {
            let err = Config::parse(text, Path::new("b.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn nonsense_roots_and_homes_name_their_line_and_key() {
        let bad = [
            (
                "[instances.a]\nexclude = []\nroot = \"\"\n",
                "line 3",
                "`root` is empty",
            ),
            (
                "[instances.a]\nroot = \"/\"\n",
                "line 2",
                "allow_root_fs = true",
            ),
            (
                "[instances.a]\nroot = \"/./\"\n",
                "line 2",
                "the whole filesystem",
            ),
            ("\nhome = \"\"\n", "line 2", "`home` is empty"),
            ("store = \"\"\n", "line 1", "`store` is empty"),
        ];
        for (text, line, want) in bad {
            let err = Config::parse(text, Path::new("b.toml")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(line) && msg.contains(want), "{text}: {msg}");
            assert_eq!(err.kind(), ErrorKind::Usage);
        }
        let text = "[instances.a]\nroot = \"/\"\nallow_root_fs = true\n";
        let config = Config::parse(text, Path::new("b.toml")).unwrap();
        assert_eq!(config.instances["a"].root, Path::new("/"));
    }

    #[test]
    fn layout_defaults_store_under_home() {
        let layout = Layout::resolve(Some(Path::new("/h")), &Config::default()).unwrap();
        assert_eq!(layout.store, Path::new("/h/backups"));
        assert_eq!(layout.catalog(), Path::new("/h/catalog.db"));
    }
}
