//! `<archive>.meta.json`: what the catalog knows about a backup that the
//! archive itself cannot say, kept beside it so that a catalog rebuilt from
//! the store (`reconcile --apply`) loses none of it.
//!
//! The manifest already holds everything fixed when the backup was made
//! (kind, reason, message, labels, versions, profile); this file holds what
//! changes afterwards. Today that is the pin. It is separate from the
//! `.sha256` sidecar, which must stay a plain `sha256sum -c` file, and it
//! names its backup, so a file that ends up beside another archive is
//! ignored. It is written atomically (temporary file, `fsync`, rename,
//! `fsync` of the directory) with mode 0600, and travels with its archive
//! when the store moves or the backup is removed. An archive without one
//! has the defaults: not pinned.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stores::Location;

/// What ends the name of a metadata file, after the archive's own name.
pub const META_SUFFIX: &str = ".meta.json";

/// The version of the file's layout; readers ignore fields they do not know.
pub const META_FORMAT: u32 = 1;

/// The state of one backup that only the catalog would otherwise hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    pub format: u32,
    /// The backup this describes; a file naming another backup is ignored.
    pub id: String,
    /// Pinned backups are never pruned.
    #[serde(default)]
    pub pinned: bool,
}

impl BackupMeta {
    /// The metadata of backup `id` with its pin.
    pub fn new(id: &str, pinned: bool) -> BackupMeta {
        BackupMeta {
            format: META_FORMAT,
            id: id.to_string(),
            pinned,
        }
    }
}

/// `<archive>.meta.json`.
pub fn meta_path(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(META_SUFFIX);
    PathBuf::from(s)
}

/// Whether `name` is the metadata file of an archive named `<stem>`; the
/// stem is returned.
pub fn archive_of(name: &str) -> Option<&str> {
    name.strip_suffix(META_SUFFIX)
}

/// Writes the metadata beside `archive`, replacing what was there.
///
/// # Errors
///
/// Fails when the file cannot be written (the previous one then stays).
pub fn write(archive: &Location, meta: &BackupMeta) -> Result<()> {
    let mut text = serde_json::to_string_pretty(meta).expect("metadata serialises");
    text.push('\n');
    archive
        .with_suffix(META_SUFFIX)
        .write_small(text.as_bytes())
}

/// Reads the metadata beside `archive`: `None` when there is none.
///
/// # Errors
///
/// Fails when it exists but cannot be read or is not valid.
pub fn read(archive: &Location) -> Result<Option<BackupMeta>> {
    let at = archive.with_suffix(META_SUFFIX);
    let path = at.label();
    let Some(text) = at.read_small()? else {
        return Ok(None);
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        Error::io(
            "reading",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

/// Removes the metadata beside `archive`, if there is any.
///
/// # Errors
///
/// Fails when it exists and cannot be removed.
pub fn remove(archive: &Location) -> Result<()> {
    archive.with_suffix(META_SUFFIX).remove()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Codec;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app-2026-01-01-000000.tar.zst");
        let archive = Location::file(path.clone());
        assert_eq!(read(&archive).unwrap(), None);
        let meta = BackupMeta::new("app-2026-01-01-000000", true);
        write(&archive, &meta).unwrap();
        assert_eq!(read(&archive).unwrap(), Some(meta));
        let mode = std::fs::metadata(meta_path(&path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        write(&archive, &BackupMeta::new("app-2026-01-01-000000", false)).unwrap();
        assert!(!read(&archive).unwrap().unwrap().pinned);
        remove(&archive).unwrap();
        remove(&archive).unwrap();
        assert_eq!(read(&archive).unwrap(), None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let archive = Location::file(path.clone());
        std::fs::write(
            meta_path(&path),
            br#"{"format": 2, "id": "a", "pinned": true, "later": [1]}"#,
        )
        .unwrap();
        assert!(read(&archive).unwrap().unwrap().pinned);
        std::fs::write(meta_path(&path), b"{not json").unwrap();
        assert!(read(&archive).is_err());
    }

    #[test]
    fn a_metadata_file_is_not_an_archive() {
        for name in ["a.tar.zst", "a.tar.gz", "a.tar"] {
            let meta = format!("{name}{META_SUFFIX}");
            assert_eq!(Codec::from_file_name(&meta), None, "{meta}");
            assert_eq!(archive_of(&meta), Some(name));
        }
    }
}
