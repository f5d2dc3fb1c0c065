//! `init [NAME] --root DIR`: a commented starter config for an instance.
//!
//! The starter is built from what is in the root: quadlet files make a
//! `quadlets` line, a `current` symlink a version probe, `.env` files
//! secrets, SQLite databases `sqlite` sources. Everything else is there as
//! comments to fill in. The text always parses: it is checked before it is
//! written, and an existing config is appended to, never rewritten.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::instance::slug;

/// What `init` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub instance: String,
    pub root: String,
    /// The config file written (or appended to); `None` with `--print`.
    pub path: Option<String>,
    /// Whether the file existed and the instance was added to it.
    pub appended: bool,
    /// What was found in the root and put in the config.
    pub found: Vec<String>,
    pub text: String,
}

/// Where `init` writes when no config file is named: the first existing
/// config, else `/etc/backstop/backstop.toml` for root, else the user's.
pub fn default_path() -> PathBuf {
    if let Some(p) = Config::search_paths().into_iter().find(|p| p.is_file()) {
        return p;
    }
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/etc/backstop/backstop.toml")
    } else {
        Config::search_paths()
            .into_iter()
            .nth(1)
            .unwrap_or_else(|| PathBuf::from("backstop.toml"))
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A key as TOML writes it: bare when it can be (a slug with no `.`).
fn toml_key(key: &str) -> String {
    if key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        toml_str(key)
    }
}

fn is_sqlite(path: &Path) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"SQLite format 3\0"
}

/// Builds the starter text for instance `name` rooted at `root`.
///
/// # Errors
///
/// Fails when the root does not exist or the name is not usable.
pub fn starter(name: Option<&str>, root: &Path) -> Result<(String, String, Vec<String>)> {
    let root = std::fs::canonicalize(root).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::usage(
                format!("{} does not exist", root.display()),
                Some("give the application's directory with --root DIR".into()),
            )
        } else {
            Error::io("resolving", root, e)
        }
    })?;
    let name = match name {
        Some(n) => n.to_string(),
        None => slug(root.file_name().unwrap_or_default()),
    };
    let key = toml_key(&name);
    let mut found = Vec::new();
    let mut quadlets = false;
    let mut version = None;
    let mut secrets = Vec::new();
    let mut databases = Vec::new();
    for entry in walkdir::WalkDir::new(&root)
        .max_depth(3)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let n = e.file_name().to_string_lossy();
            !(e.depth() > 0 && e.file_type().is_dir() && (n == "node_modules" || n == ".git"))
        })
        .flatten()
    {
        let rel = entry.path().strip_prefix(&root).unwrap_or(entry.path());
        let rel_s = rel.to_string_lossy().into_owned();
        let fname = entry.file_name().to_string_lossy().into_owned();
        if entry.depth() == 1
            && entry.file_type().is_file()
            && [".container", ".pod", ".volume"]
                .iter()
                .any(|x| fname.ends_with(x))
        {
            quadlets = true;
        }
        if entry.depth() == 1 && fname == "current" && entry.file_type().is_symlink() {
            version = Some(rel_s.clone());
        }
        if entry.file_type().is_file() && (fname == ".env" || fname.ends_with(".key")) {
            secrets.push(rel_s.clone());
        }
        if entry.file_type().is_file()
            && [".db", ".sqlite", ".sqlite3"]
                .iter()
                .any(|x| fname.ends_with(x))
            && is_sqlite(entry.path())
        {
            databases.push(rel_s);
        }
    }
    let mut t = String::new();
    t.push_str(&format!(
        "\n# Instance {name}, written by `backstop init`. Every key is described in\n\
         # backstop's README (Configuration); unknown keys are errors.\n\
         [instances.{key}]\nroot = {}\n",
        toml_str(&root.to_string_lossy())
    ));
    if quadlets {
        found.push("quadlet files: their volumes and bind mounts are sources".into());
        t.push_str(
            "# The quadlet files here are a source; the volumes and bind mounts they\n\
             # use are found at every backup.\nquadlets = \".\"\n",
        );
    }
    t.push_str(
        "# Paths (.gitignore syntax, relative to the root) never backed up,\n\
         # beside the built-in caches (.cache/, node_modules/, __pycache__/, target/).\n\
         exclude = []\n\
         # Paths a restore never writes (markers, machine-specific files).\n\
         never_restore = []\n",
    );
    if !secrets.is_empty() {
        found.push(format!("secrets: {}", secrets.join(", ")));
    }
    t.push_str(&format!(
        "# Paths a restore leaves mode 0600 whatever the archive says.\nsecrets = [{}]\n",
        secrets
            .iter()
            .map(|s| toml_str(s))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    match &version {
        Some(link) => {
            found.push(format!("version: the target of the symlink {link}"));
            t.push_str(&format!(
                "# The version is the name the symlink points to (current -> versions/1.2.3).\n\
                 version = {{ symlink = {} }}\n\
                 # Run by `backstop rollback` with BACKSTOP_VERSION set, once the files are back.\n\
                 # activate = \"ln -sfn versions/$BACKSTOP_VERSION current\"\n",
                toml_str(link)
            ));
        }
        None => t.push_str(
            "# How to read the version: { file = \"VERSION\" }, { symlink = \"current\" },\n\
             # or { command = \"app --version\", regex = '(\\d+\\.\\d+\\.\\d+)' }.\n\
             # version = { file = \"VERSION\" }\n",
        ),
    }
    if databases.is_empty() {
        t.push_str(
            "\n# Sources: with none listed, the whole root is one source. List them to\n\
             # back up parts, volumes, dumps or live SQLite databases:\n\
             # [instances.NAME.sources]\n\
             # config = \"config\"\n\
             # data = { path = \"data\" }\n\
             # db = { sqlite = \"data/app.db\" }\n\
             # pg = { command = \"pg_dump -Fc app\", restore = \"pg_restore --clean -d app\" }\n\
             # files = { volume = \"app-files\" }\n"
                .replace("NAME", &key)
                .as_str(),
        );
    } else {
        found.push(format!("SQLite databases: {}", databases.join(", ")));
        t.push_str(&format!(
            "\n# The root is one source; each live SQLite database is captured with\n\
             # SQLite's online backup (consistent while the application writes).\n\
             [instances.{key}.sources]\n{} = \".\"\n",
            toml_key(&name)
        ));
        for (i, db) in databases.iter().enumerate() {
            let sname = if databases.len() == 1 {
                "db".to_string()
            } else {
                format!("db{}", i + 1)
            };
            t.push_str(&format!("{sname} = {{ sqlite = {} }}\n", toml_str(db)));
        }
    }
    t.push_str(&format!(
        "\n# How to stop, start and health-check the application around restores:\n\
         # commands, podman containers, or systemd units (one style).\n\
         # [instances.{key}.services]\n\
         # containers = [\"{name}\"]\n\
         # units = [\"{name}.service\"]   # user = true for `systemctl --user`\n\
         # stop = \"...\"  start = \"...\"  status = \"...\"\n\
         # health = \"curl -fsS http://localhost:8080/health\"\n\
         # health_timeout = \"60s\"\n\
         # cold_backup = false   # stop the services for every backup\n\
         \n\
         # Named selections of sources, for `backstop backup {name} --profile NAME`:\n\
         # [instances.{key}.profiles.data]\n\
         # sources = [\"data\"]\n\
         # exclude = [\"*.log\"]\n"
    ));
    Ok((name, t, found))
}

/// Writes (or, with `print`, only builds) the starter config.
///
/// # Errors
///
/// Fails when the instance already exists in the file, the file is not
/// valid, or it cannot be written.
pub fn init(name: Option<&str>, root: &Path, path: &Path, print: bool) -> Result<InitReport> {
    let (name, text, found) = starter(name, root)?;
    let root_s = std::fs::canonicalize(root)
        .map(|r| r.display().to_string())
        .unwrap_or_default();
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    let combined = match &existing {
        Some(old) => {
            let config = Config::parse(old, path)?;
            if config.instances.contains_key(&name) {
                return Err(Error::usage(
                    format!("{} already defines instance {name}", path.display()),
                    Some("choose another name, or edit the file".into()),
                ));
            }
            let sep = if old.ends_with('\n') || old.is_empty() {
                ""
            } else {
                "\n"
            };
            format!("{old}{sep}{text}")
        }
        None => format!(
            "# backstop's config. See the README (Configuration) for every key.\n\
             # home = \"/var/lib/backstop\"      # catalog, locks, journals\n\
             # store = \"/srv/backups\"          # archives [default: <home>/backups]\n\
             \n[defaults]\ncompression = \"zstd\"\nexclude = []\n{text}"
        ),
    };
    // What is written must load: the same checks every later command makes.
    Config::parse(&combined, path)?;
    if !print {
        let dir = crate::fsutil::parent_dir(path);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        crate::fsutil::atomic_write(path, combined.as_bytes(), 0o644)?;
    }
    Ok(InitReport {
        instance: name,
        root: root_s,
        path: (!print).then(|| path.display().to_string()),
        appended: existing.is_some(),
        found,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_parses_and_finds_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        std::fs::create_dir_all(root.join("versions/0.1.12")).unwrap();
        std::os::unix::fs::symlink("versions/0.1.12", root.join("current")).unwrap();
        std::fs::create_dir_all(root.join("config")).unwrap();
        std::fs::write(root.join("config/.env"), "A=1").unwrap();
        let conn = rusqlite::Connection::open(root.join("app.db")).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        drop(conn);
        std::fs::write(root.join("web.container"), "[Container]\n").unwrap();
        let cfg = dir.path().join("backstop.toml");
        let report = init(None, &root, &cfg, false).unwrap();
        assert_eq!(report.instance, "app");
        let config = Config::load(Some(&cfg)).unwrap();
        let inst = &config.instances["app"];
        assert_eq!(inst.secrets, ["config/.env"]);
        assert_eq!(inst.detect_version().unwrap().as_deref(), Some("0.1.12"));
        assert!(inst.quadlets.is_some());
        assert!(inst.sources.iter().any(|s| s.name == "db"));
        // A second instance is appended; the same name again is refused.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        assert!(init(None, &other, &cfg, false).unwrap().appended);
        assert_eq!(Config::load(Some(&cfg)).unwrap().instances.len(), 2);
        assert!(init(None, &other, &cfg, false).is_err());
    }
}
