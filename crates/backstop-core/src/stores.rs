//! The stores a config names (`[stores.NAME]`), connected on first use,
//! and where an archive the catalog names is.
//!
//! The home's own directory stays the default store; a named store is a
//! bucket (`url = "s3://bucket/prefix"`) or another directory (`path`).
//! Archives in a named store live under `<host>/<instance>/<id>.tar.zst`,
//! so several machines share one bucket without colliding. The catalog
//! records an archive by its location: a file path, or the object's URL
//! (`s3://bucket/prefix/<host>/<instance>/<file>`), which [`Stores::locate`]
//! turns back into the store and key that reach it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::{Credentials, Key, LocalStore, S3Config, S3Store, Store, StoreError};

/// `[stores.NAME]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    url: Option<String>,
    path: Option<PathBuf>,
    endpoint: Option<String>,
    region: Option<String>,
    #[serde(default)]
    virtual_hosted: bool,
    #[serde(default)]
    allow_http: bool,
    /// MiB per part of a multipart upload.
    part_size_mib: Option<usize>,
}

/// Where a named store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// A directory (`path`).
    Local(PathBuf),
    /// A bucket (`url`, with the settings beside it).
    S3(S3Config),
}

/// One `[stores.NAME]` table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDef {
    pub name: String,
    pub kind: StoreKind,
}

impl StoreDef {
    /// Checks a table; relative paths resolve against `base`.
    pub(crate) fn from_raw(name: &str, raw: RawStore, base: &Path) -> Result<StoreDef, String> {
        check_name(name)?;
        let kind = match (raw.url, raw.path) {
            (Some(_), Some(_)) => {
                return Err("give `url` (a bucket) or `path` (a directory), not both".into());
            }
            (None, None) => {
                return Err(
                    "say where the store is: `url = \"s3://bucket/prefix\"` or `path = \"DIR\"`"
                        .into(),
                );
            }
            (None, Some(path)) => {
                if raw.endpoint.is_some()
                    || raw.region.is_some()
                    || raw.virtual_hosted
                    || raw.allow_http
                    || raw.part_size_mib.is_some()
                {
                    return Err("`endpoint`, `region`, `virtual_hosted`, `allow_http` and \
                                `part_size_mib` are for a bucket (`url`), not a directory"
                        .into());
                }
                if path.as_os_str().is_empty() {
                    return Err("`path` is empty".into());
                }
                StoreKind::Local(if path.is_absolute() {
                    path
                } else {
                    base.join(path)
                })
            }
            (Some(url), None) => {
                let mut s3 = S3Config::from_url(&url).map_err(|e| e.to_string())?;
                s3.endpoint = raw.endpoint;
                s3.region = raw.region;
                s3.virtual_hosted = raw.virtual_hosted;
                s3.allow_http = raw.allow_http;
                if let Some(mib) = raw.part_size_mib {
                    s3.transfer.part_size = mib.saturating_mul(1 << 20);
                }
                s3.transfer.check().map_err(|e| e.to_string())?;
                StoreKind::S3(s3)
            }
        };
        Ok(StoreDef {
            name: name.to_string(),
            kind,
        })
    }

    /// The store as messages name it: `s3://bucket/prefix`, or its
    /// directory.
    pub fn describe(&self) -> String {
        match &self.kind {
            StoreKind::Local(p) => p.display().to_string(),
            StoreKind::S3(c) => c.describe(),
        }
    }
}

/// A store name: what `store = "…"` and `--to` say.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!(
            "`{name}` is not a store name: use letters, digits, `-` and `_`"
        ));
    }
    if name == HOME_STORE {
        return Err(format!(
            "`{HOME_STORE}` names the home's own store; pick another name"
        ));
    }
    Ok(())
}

/// The name by which commands refer to the home's own store.
pub const HOME_STORE: &str = "local";

/// Where an instance's backups go (`store`, `None` for the home's own)
/// and which stores each is copied to after it is made (`copies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// As the table says it (`local` included); see [`Placement::store`].
    store: Option<String>,
    pub copies: Vec<String>,
}

impl Placement {
    /// `store` and `copies` as a table says them, each name `known`; the
    /// error is the byte offset of the bad name and why.
    pub(crate) fn checked(
        store: Option<toml::Spanned<String>>,
        copies: Option<toml::Spanned<Vec<String>>>,
        known: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<Placement, (usize, String)> {
        if let Some(s) = &store {
            known(s.get_ref()).map_err(|m| (s.span().start, format!("store: {m}")))?;
        }
        let store_name = store.map(toml::Spanned::into_inner);
        let mut names = Vec::new();
        if let Some(list) = copies {
            let at = list.span().start;
            for name in list.into_inner() {
                known(&name).map_err(|m| (at, format!("copies: {m}")))?;
                let home = store_name.as_deref().unwrap_or(HOME_STORE);
                if name == home || names.contains(&name) {
                    return Err((
                        at,
                        format!("copies: `{name}` is named twice (or is where backups go)"),
                    ));
                }
                names.push(name);
            }
        }
        Ok(Placement {
            store: store_name,
            copies: names,
        })
    }

    /// The named store backups go to; `None` for the home's own.
    pub fn store(&self) -> Option<&str> {
        self.store.as_deref().filter(|s| *s != HOME_STORE)
    }

    /// This placement, with `[defaults]`'s where it says nothing.
    pub fn or_defaults(&self, defaults: &Placement) -> Placement {
        let mut copies = if self.copies.is_empty() && self.store.is_none() {
            defaults.copies.clone()
        } else {
            self.copies.clone()
        };
        let store = self.store.clone().or_else(|| defaults.store.clone());
        let home = store.clone().unwrap_or_else(|| HOME_STORE.to_string());
        copies.retain(|c| *c != home);
        Placement { store, copies }
    }
}

/// The stores of a config, each connected the first time it is used.
#[derive(Debug, Clone, Default)]
pub struct Stores {
    defs: BTreeMap<String, StoreDef>,
    open: Arc<Mutex<BTreeMap<String, Arc<dyn Store>>>>,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Stores {
    pub(crate) fn new(defs: BTreeMap<String, StoreDef>) -> Stores {
        Stores {
            defs,
            open: Arc::default(),
        }
    }

    /// The store definitions, by name.
    pub fn defs(&self) -> &BTreeMap<String, StoreDef> {
        &self.defs
    }

    /// The definition of `name`.
    ///
    /// # Errors
    ///
    /// A usage error naming the stores there are.
    pub fn def(&self, name: &str) -> Result<&StoreDef> {
        self.defs.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.defs.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "the config names no stores: add a `[stores.NAME]` table (README: Off-site \
                 stores)"
                    .to_string()
            } else {
                format!("the config names: {}", known.join(", "))
            };
            Error::usage(format!("there is no store named `{name}`"), Some(hint))
        })
    }

    /// The store `name`, connected (an S3 store asks the bucket once, so
    /// wrong credentials, a missing bucket or a skewed clock are named
    /// before any data moves).
    ///
    /// # Errors
    ///
    /// An unknown name, missing credentials, or the store's refusal.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Store>> {
        let def = self.def(name)?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = open.get(name) {
            return Ok(store.clone());
        }
        let store: Arc<dyn Store> = match &def.kind {
            StoreKind::Local(root) => {
                crate::fsutil::create_private_dir_all(root)?;
                Arc::new(LocalStore::open(root)?)
            }
            StoreKind::S3(config) => {
                let credentials = Credentials::from_env()?;
                Arc::new(S3Store::connect(config, &credentials)?)
            }
        };
        open.insert(name.to_string(), store.clone());
        Ok(store)
    }

    /// Where the archive a catalog row or a command names is: an object
    /// of a configured bucket when `location` is an `s3://` URL, else a
    /// file.
    ///
    /// # Errors
    ///
    /// A URL of a bucket the config does not name (with the way out), or
    /// the store's failure to connect.
    pub fn locate(&self, location: &str) -> Result<Location> {
        if !location.starts_with("s3://") {
            return Ok(Location::file(PathBuf::from(location)));
        }
        for (name, def) in &self.defs {
            let StoreKind::S3(config) = &def.kind else {
                continue;
            };
            let Some(rest) = location
                .strip_prefix(&config.describe())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            let key = Key::new(rest)?;
            return Ok(Location::object(self.get(name)?, key));
        }
        Err(Error::usage(
            format!("{location} is in a bucket the config names no store for"),
            Some(
                "add a `[stores.NAME]` table with its `url` (and `endpoint`) to the config".into(),
            ),
        ))
    }

    /// The named store whose objects' locations start as `location`
    /// does, if any: where a backup at `location` is kept.
    pub fn name_of(&self, location: &str) -> Option<&str> {
        self.defs.iter().find_map(|(name, def)| {
            let prefix = match &def.kind {
                StoreKind::S3(c) => c.describe(),
                StoreKind::Local(p) => p.display().to_string(),
            };
            location
                .strip_prefix(&prefix)
                .is_some_and(|r| r.starts_with('/'))
                .then_some(name.as_str())
        })
    }
}

/// Where an archive is: a file, or an object of a store. Its label is how
/// messages and the catalog name it (the path, or the object's URL), and
/// its sidecar is the file or object of that name plus `.sha256`.
#[derive(Clone)]
pub struct Location {
    label: PathBuf,
    object: Option<(Arc<dyn Store>, Key)>,
    /// The object's bytes, fetched once into an unnamed local file
    /// ([`Location::spooled`]): read from there, not the store.
    spool: Option<Arc<std::fs::File>>,
    /// The SHA-256 of the whole object, computed as it was fetched into
    /// the spool (which no one else can reach): asked again, not read again.
    fetched_sha256: Option<[u8; 32]>,
}

impl PartialEq for Location {
    fn eq(&self, other: &Location) -> bool {
        self.label == other.label
    }
}

impl Eq for Location {}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({})", self.label.display())
    }
}

impl Location {
    /// A file.
    pub fn file(path: impl Into<PathBuf>) -> Location {
        Location {
            label: path.into(),
            object: None,
            spool: None,
            fetched_sha256: None,
        }
    }

    /// The object `key` of `store`.
    pub fn object(store: Arc<dyn Store>, key: Key) -> Location {
        let label = PathBuf::from(format!("{}/{}", store.describe(), key.as_str()));
        Location {
            label,
            object: Some((store, key)),
            spool: None,
            fetched_sha256: None,
        }
    }

    /// How messages and the catalog name it.
    pub fn label(&self) -> &Path {
        &self.label
    }

    /// The file, when it is one.
    pub fn as_file(&self) -> Option<&Path> {
        self.object.is_none().then_some(self.label.as_path())
    }

    /// Its last component: the archive's file name.
    pub fn file_name(&self) -> String {
        self.label
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The file or object `name` beside this one.
    pub fn sibling(&self, name: &str) -> Option<Location> {
        match &self.object {
            None => Some(Location::file(self.label.parent()?.join(name))),
            Some((store, key)) => {
                let full = match key.as_str().rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{name}"),
                    None => name.to_string(),
                };
                Some(Location::object(store.clone(), Key::new(&full).ok()?))
            }
        }
    }

    /// The names of the files or objects beside this one.
    ///
    /// # Errors
    ///
    /// Fails when the directory or store cannot be listed.
    pub fn siblings(&self) -> Result<Vec<String>> {
        match &self.object {
            None => {
                let dir = crate::fsutil::parent_dir(&self.label);
                let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
                Ok(entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect())
            }
            Some((store, key)) => {
                let dir = key.as_str().rsplit_once('/').map(|(d, _)| d);
                let prefix = dir.map(Key::new).transpose()?;
                Ok(store
                    .list(prefix.as_ref())?
                    .into_iter()
                    .filter_map(|o| {
                        let rest = match dir {
                            Some(d) => o.key.as_str().strip_prefix(d)?.strip_prefix('/')?,
                            None => o.key.as_str(),
                        };
                        (!rest.contains('/')).then(|| rest.to_string())
                    })
                    .collect())
            }
        }
    }

    /// Its sidecar's location: `<name>.sha256`.
    pub fn sidecar(&self) -> Location {
        self.with_suffix(".sha256")
    }

    /// The location named as this one with `suffix` added.
    pub fn with_suffix(&self, suffix: &str) -> Location {
        match &self.object {
            None => {
                let mut s = self.label.as_os_str().to_os_string();
                s.push(suffix);
                Location::file(PathBuf::from(s))
            }
            Some((store, key)) => Location::object(
                store.clone(),
                Key::new(&format!("{}{suffix}", key.as_str())).expect("a suffix keeps a key valid"),
            ),
        }
    }

    /// Opens it for reading from the start.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be opened (missing included).
    pub fn open(&self) -> Result<Box<dyn Read + Send>> {
        if let Some(file) = &self.spool {
            return Ok(Box::new(Spooled {
                file: file.clone(),
                pos: 0,
            }));
        }
        match &self.object {
            None => {
                let file = std::fs::File::open(&self.label)
                    .map_err(|e| Error::io("opening", &self.label, e))?;
                Ok(Box::new(file))
            }
            Some((store, key)) => store.open(key),
        }
    }

    /// Opens it for reading from the start, for a reader that needs only
    /// its beginning (a manifest): an object is fetched in ranges that
    /// double from 64 KiB to 8 MiB as they are read, not read ahead.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be opened (missing included).
    pub fn open_lazily(&self) -> Result<Box<dyn Read + Send>> {
        self.open_in_ranges(64 << 10)
    }

    /// Its first `n` bytes (fewer when it is shorter).
    ///
    /// # Errors
    ///
    /// Fails when it cannot be read.
    pub fn head_bytes(&self, n: usize) -> Result<Vec<u8>> {
        let mut reader = self.open_in_ranges(n as u64)?;
        let mut buf = Vec::with_capacity(n);
        std::io::Read::by_ref(&mut reader)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| match StoreError::from_io(&e) {
                Some(se) => se.clone().into(),
                None => Error::io("reading", &self.label, e),
            })?;
        Ok(buf)
    }

    /// [`Location::open`], but an object is fetched in ranges of `first`
    /// bytes, doubling as they are read (to 8 MiB).
    fn open_in_ranges(&self, first: u64) -> Result<Box<dyn Read + Send>> {
        match (&self.object, &self.spool) {
            (Some((store, key)), None) => {
                let size = store.head(key)?.ok_or_else(|| StoreError::NotFound {
                    store: store.describe(),
                    key: key.as_str().to_string(),
                })?;
                Ok(Box::new(Ranges {
                    store: store.clone(),
                    key: key.clone(),
                    size,
                    pos: 0,
                    chunk: first.max(1),
                    buf: Vec::new(),
                    at: 0,
                }))
            }
            _ => self.open(),
        }
    }

    /// Its size, or `None` when there is nothing there.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be asked (permission denied, a store down).
    pub fn size(&self) -> Result<Option<u64>> {
        if let Some(file) = &self.spool {
            let len = file
                .metadata()
                .map_err(|e| Error::io("reading the metadata of", &self.label, e))?
                .len();
            return Ok(Some(len));
        }
        match &self.object {
            None => match std::fs::symlink_metadata(&self.label) {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("reading the metadata of", &self.label, e)),
            },
            Some((store, key)) => store.head(key),
        }
    }

    /// Its whole content when it is small (a sidecar, a meta file), or
    /// `None` when there is nothing there.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be read.
    pub fn read_small(&self) -> Result<Option<Vec<u8>>> {
        match &self.object {
            None => match std::fs::read(&self.label) {
                Ok(data) => Ok(Some(data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("reading", &self.label, e)),
            },
            Some((store, key)) => match store.head(key)? {
                None => Ok(None),
                Some(0) => Ok(Some(Vec::new())),
                Some(n) if n > 1 << 20 => Err(crate::archive::ArchiveError::Corrupt {
                    path: self.label.clone(),
                    detail: format!("is {n} bytes: no sidecar or metadata file is that large"),
                }
                .into()),
                Some(n) => Ok(Some(store.read_range(key, 0, n)?)),
            },
        }
    }

    /// Writes `data` there whole (mode 0600 for a file), replacing what
    /// was there: a file atomically; an object, which a store never
    /// overwrites, by removing the old one first (so a crash in between
    /// leaves none, never half of one).
    ///
    /// # Errors
    ///
    /// Fails when it cannot be written.
    pub fn write_small(&self, data: &[u8]) -> Result<()> {
        match &self.object {
            None => crate::fsutil::atomic_write(&self.label, data, 0o600),
            Some((store, key)) => {
                store.delete(key)?;
                let mut w = store.create(key)?;
                std::io::Write::write_all(&mut w, data)
                    .map_err(|e| Error::io("writing", &self.label, e))?;
                w.finish().map(|_| ())
            }
        }
    }

    /// The SHA-256 of its whole content.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be read to its end.
    pub fn hash(&self) -> Result<[u8; 32]> {
        use sha2::Digest;
        if let Some(sha) = self.fetched_sha256 {
            return Ok(sha);
        }
        let mut reader = self.open()?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(hasher.finalize().into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(match StoreError::from_io(&e) {
                        Some(se) => se.clone().into(),
                        None => Error::io("reading", &self.label, e),
                    });
                }
            };
            hasher.update(&buf[..n]);
        }
    }

    /// This object, fetched once into an unnamed file in `dir` (mode 0600,
    /// gone when the last reader closes it, even after a crash), so that
    /// a restore that reads an archive twice (its checksum before anything
    /// stops, then its content) fetches it once; its SHA-256 is computed on
    /// the way, so the first of those reads is an answer, not a read. Its
    /// sidecar, siblings and label stay the object's. A file is returned
    /// as it is.
    ///
    /// # Errors
    ///
    /// Fails when the object cannot be read or the file written.
    pub fn spooled(
        &self,
        dir: &Path,
        (progress, cancel): (&dyn crate::progress::Progress, &crate::progress::Cancel),
    ) -> Result<Location> {
        if self.object.is_none() || self.spool.is_some() {
            return Ok(self.clone());
        }
        let mut file = crate::fsutil::unnamed_file(dir)
            .map_err(|e| Error::io("creating a file in", dir, e))?;
        let mut reader = self.open()?;
        progress.start(crate::progress::Phase::Fetch, self.size()?.unwrap_or(0));
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let copied = (|| {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                cancel.check()?;
                let n = match reader.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(match StoreError::from_io(&e) {
                            Some(se) => se.clone().into(),
                            None => Error::io("fetching", &self.label, e),
                        });
                    }
                };
                std::io::Write::write_all(&mut file, &buf[..n])
                    .map_err(|e| Error::io("writing a copy of", &self.label, e))?;
                hasher.update(&buf[..n]);
                progress.advance(n as u64);
            }
        })();
        progress.finish();
        copied?;
        Ok(Location {
            spool: Some(Arc::new(file)),
            fetched_sha256: Some(hasher.finalize().into()),
            ..self.clone()
        })
    }

    /// `len` bytes of it from `start`.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be read, or ends before `start + len`.
    pub fn read_range(&self, start: u64, len: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let from_file = |f: &std::fs::File| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, start)
                .map_err(|e| Error::io("reading", &self.label, e))?;
            Ok(buf)
        };
        match (&self.spool, &self.object) {
            (Some(file), _) => from_file(file),
            (None, Some((store, key))) => store.read_range(key, start, len),
            (None, None) => {
                let f = std::fs::File::open(&self.label)
                    .map_err(|e| Error::io("opening", &self.label, e))?;
                from_file(&f)
            }
        }
    }

    /// The same object, read from `file` from now on: a copy of what of
    /// it is needed, at the same offsets.
    pub(crate) fn with_spool(&self, file: std::fs::File) -> Location {
        Location {
            spool: Some(Arc::new(file)),
            fetched_sha256: None,
            ..self.clone()
        }
    }

    /// Empties the copy in the home it is read from, if it has one, so
    /// that its pages are dropped, never written to disk (a restore's
    /// `syncfs` would write the whole fetched archive). Only when nothing
    /// reads it again: reads find it empty and fail (too short, or not an
    /// archive).
    pub fn release_spool(&self) {
        if let Some(file) = &self.spool {
            let _ = file.set_len(0);
        }
    }

    /// The store and key, when it is an object.
    pub fn as_object(&self) -> Option<(&Arc<dyn Store>, &Key)> {
        self.object.as_ref().map(|(s, k)| (s, k))
    }

    /// Removes it; nothing there is not an error.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be removed.
    pub fn remove(&self) -> Result<()> {
        match &self.object {
            None => match std::fs::remove_file(&self.label) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("removing", &self.label, e)),
            },
            Some((store, key)) => store.delete(key),
        }
    }
}

/// Claims backup id `id` of `instance` for `host` in `store`, so that no
/// other host sharing the store gives a backup the same id: an object
/// `.ids/<instance>/<id>` holding the host's name, created only if there
/// is none (a conditional write, atomic across hosts). True when the id
/// is this host's (claimed now, or before by this host); false when
/// another host holds it. Host names never start with `.`, so the claims
/// never mix with a host's archives.
///
/// # Errors
///
/// Fails when the store cannot be written or read.
pub fn claim_id(store: &dyn Store, instance: &str, id: &str, host: &str) -> Result<bool> {
    let key = Key::new(&format!(".ids/{instance}/{id}"))?;
    let mut w = store.create(&key);
    let written = match &mut w {
        Ok(w) => std::io::Write::write_all(w, host.as_bytes())
            .map_err(|e| Error::io("writing", key.as_str(), e)),
        Err(_) => Ok(()),
    };
    let finished = w.and_then(|w| written.and_then(|()| w.finish()));
    match finished {
        Ok(_) => Ok(true),
        Err(Error::Store(StoreError::AlreadyExists { .. })) => {
            let holder = store.read_range(&key, 0, store.head(&key)?.unwrap_or(0))?;
            Ok(holder == host.as_bytes())
        }
        Err(e) => Err(e),
    }
}

/// The key of an archive in a named store: `<host>/<instance>/<file>`,
/// the host's name made a key component (anything but `A-Z a-z 0-9 . _ -`
/// becomes `-`).
///
/// # Errors
///
/// Fails when the instance or file name is not a key component.
pub fn archive_key(host: &str, instance: &str, file: &str) -> Result<Key> {
    let host = host_component(host);
    Ok(Key::new(&format!("{host}/{instance}/{file}"))?)
}

/// An object from its start, fetched in ranges that double up to 8 MiB
/// as they are read.
struct Ranges {
    store: Arc<dyn Store>,
    key: Key,
    size: u64,
    pos: u64,
    chunk: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for Ranges {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let len = self.chunk.min(self.size - self.pos);
            self.buf = self
                .store
                .read_range(&self.key, self.pos, len)
                .map_err(|e| match e {
                    Error::Store(se) => se.into_io(),
                    other => std::io::Error::other(other.to_string()),
                })?;
            self.pos += len;
            self.at = 0;
            self.chunk = (self.chunk * 2).clamp(64 << 10, 8 << 20);
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A reader of a spooled file at its own offset (`pread`), so that each
/// [`Location::open`] reads from the start whatever the others do.
struct Spooled {
    file: Arc<std::fs::File>,
    pos: u64,
}

impl Read for Spooled {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The key below which a host keeps an instance's archives in a named
/// store: `<host>/<instance>`.
///
/// # Errors
///
/// Fails when the instance name is not a key component.
pub fn instance_prefix(host: &str, instance: &str) -> Result<Key> {
    Ok(Key::new(&format!("{}/{instance}", host_component(host)))?)
}

/// A host name as a key component: anything but `A-Z a-z 0-9 . _ -`
/// becomes `-`.
pub fn host_component(host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    match host.trim_matches('.') {
        "" => "host".to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(text: &str) -> Result<StoreDef, String> {
        let raw: RawStore = toml::from_str(text).map_err(|e| e.to_string())?;
        StoreDef::from_raw("offsite", raw, Path::new("/etc/backstop"))
    }

    #[test]
    fn a_store_is_a_bucket_or_a_directory() {
        let s3 =
            def("url = \"s3://bkt/pre\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true")
                .unwrap();
        let StoreKind::S3(c) = &s3.kind else {
            panic!("a bucket")
        };
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bkt", "pre"));
        assert!(c.allow_http && !c.virtual_hosted);
        assert_eq!(s3.describe(), "s3://bkt/pre");
        let local = def("path = \"usb\"").unwrap();
        assert_eq!(local.kind, StoreKind::Local("/etc/backstop/usb".into()));
        for (bad, says) in [
            ("", "say where"),
            ("url = \"s3://bkt\"\npath = \"/x\"", "not both"),
            ("path = \"/x\"\nendpoint = \"http://h\"", "for a bucket"),
            ("url = \"http://bk\"", "s3://"),
            ("url = \"s3://bkt\"\npart_size_mib = 1", "part"),
        ] {
            let err = def(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let raw = RawStore {
            path: Some("/x".into()),
            ..Default::default()
        };
        assert!(StoreDef::from_raw("local", raw, Path::new("/")).is_err());
    }

    #[test]
    fn archive_keys_carry_host_and_instance() {
        assert_eq!(
            archive_key("nas.home", "app", "20261201T000000Z.tar.zst")
                .unwrap()
                .as_str(),
            "nas.home/app/20261201T000000Z.tar.zst"
        );
        assert_eq!(
            archive_key("my host!", "app", "x.tar").unwrap().as_str(),
            "my-host-/app/x.tar"
        );
    }

    #[test]
    fn locations_of_unknown_buckets_are_refused() {
        let stores = Stores::default();
        assert!(stores.locate("/srv/x.tar.zst").unwrap().as_file().is_some());
        let err = stores.locate("s3://nobody/x.tar.zst").unwrap_err();
        assert!(err.to_string().contains("no store"), "{err}");
    }
}
