//! Archive format version 1: the fixed member names, the manifest and trailer
//! documents, codecs and file names, and the `sha256sum` line encoding.
//!
//! See DESIGN.md ("Archive format, version 1"). Any change here that a
//! version-1 reader could not handle needs a new major format number.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The format major version this build writes and reads.
pub const FORMAT: u32 = 1;

/// The first member of every archive.
pub const MANIFEST_NAME: &str = "backstop-manifest.json";
/// The list of payload checksums, after the payload.
pub const CHECKSUMS_NAME: &str = "backstop-checksums.sha256";
/// The last member of every archive.
pub const TRAILER_NAME: &str = "backstop-trailer.json";
/// Top-level names starting with this are reserved for the members above.
pub const RESERVED_PREFIX: &str = "backstop-";

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Zstd,
    Gzip,
    None,
}

impl Codec {
    /// The archive file name suffix for this codec.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Zstd => ".tar.zst",
            Codec::Gzip => ".tar.gz",
            Codec::None => ".tar",
        }
    }

    /// The archive file name suffix for this codec, encrypted or not
    /// (`.tar.zst.age`).
    pub fn file_suffix(self, encrypted: bool) -> String {
        let age = if encrypted {
            crate::encryption::EXTENSION
        } else {
            ""
        };
        format!("{}{age}", self.extension())
    }

    /// The codec an archive file name implies, if any; an encrypted
    /// archive's name (`….tar.zst.age`) implies the codec inside.
    pub fn from_file_name(name: &str) -> Option<Codec> {
        let name = name
            .strip_suffix(crate::encryption::EXTENSION)
            .unwrap_or(name);
        [Codec::Zstd, Codec::Gzip, Codec::None]
            .into_iter()
            .find(|c| name.ends_with(c.extension()))
    }

    /// The level used when none is given.
    pub fn default_level(self) -> Option<i32> {
        match self {
            Codec::Zstd => Some(3),
            Codec::Gzip => Some(6),
            Codec::None => None,
        }
    }

    /// The accepted level range.
    pub fn levels(self) -> Option<(i32, i32)> {
        match self {
            Codec::Zstd => Some((1, 19)),
            Codec::Gzip => Some((1, 9)),
            Codec::None => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
            Codec::None => "none",
        })
    }
}

/// A codec with a level checked against the codec's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSpec {
    pub codec: Codec,
    /// `None` only for [`Codec::None`].
    pub level: Option<i32>,
}

impl CompressionSpec {
    /// Checks `level` against `codec`, filling in the default.
    ///
    /// # Errors
    ///
    /// Returns a message when the level is out of range, or given for `none`.
    pub fn new(codec: Codec, level: Option<i32>) -> Result<CompressionSpec, String> {
        match (codec.levels(), level) {
            (None, Some(_)) => {
                Err("a compression level has no effect with compression \"none\"".into())
            }
            (None, None) => Ok(CompressionSpec { codec, level: None }),
            (Some(_), None) => Ok(CompressionSpec {
                codec,
                level: codec.default_level(),
            }),
            (Some((lo, hi)), Some(l)) if (lo..=hi).contains(&l) => Ok(CompressionSpec {
                codec,
                level: Some(l),
            }),
            (Some((lo, hi)), Some(l)) => Err(format!(
                "compression level {l} is out of range for {codec} (use {lo} to {hi})"
            )),
        }
    }
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec {
            codec: Codec::Zstd,
            level: Some(3),
        }
    }
}

/// Whether a person asked for the backup or backstop made it by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Manual,
    Automatic,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Manual => "manual",
            BackupKind::Automatic => "automatic",
        }
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceManifest {
    /// The top-level directory (or file) of the source in the archive.
    pub name: String,
    /// `path` for files and directories, `sqlite` for a database captured
    /// with SQLite's online backup, `volume` for a podman volume, `command`
    /// for a command's output.
    pub kind: String,
    /// For `path` and `sqlite`: the path relative to the instance root (`.`
    /// for the root itself), or absolute for a path outside it. Empty for
    /// the others.
    pub path: String,
    /// Where the data came from: the absolute path on the host, the volume,
    /// the command.
    pub origin: String,
    /// How a restore puts it back, in words: `extract` for path sources.
    pub restore: String,
    /// For captured sources (all but `path`): the one file under the
    /// source's name that holds the data (`<name>/<file>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// For a `volume`: its labels and driver options at backup time, which
    /// a restore that creates the volume again gives it (absent in archives
    /// written before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSettings>,
}

/// A podman volume's labels and driver options (`podman volume inspect`'s
/// `Labels` and `Options`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSettings {
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
}

/// What the scan measured before anything was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Payload entries of every type.
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// Bytes of regular-file content (apparent size).
    pub bytes: u64,
}

/// What a backup is, as its maker described it. The same fields appear in
/// a backup request, in the manifest and in the catalog (flattened into
/// both: the JSON shapes list them beside the other fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub kind: BackupKind,
    /// Why: `manual`, `pre-upgrade`, `pre-restore`, `scheduled`…
    pub reason: String,
    pub message: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The application's version when the backup was made.
    pub app_version: Option<String>,
    /// For a pre-upgrade backup, the version being upgraded to.
    pub upgraded_to: Option<String>,
    pub profile: Option<String>,
}

impl Description {
    /// A description with only a kind and a reason.
    pub fn new(kind: BackupKind, reason: impl Into<String>) -> Description {
        Description {
            kind,
            reason: reason.into(),
            message: None,
            labels: BTreeMap::new(),
            app_version: None,
            upgraded_to: None,
            profile: None,
        }
    }
}

/// What a backup's root is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TakenOf {
    /// The instance's own root: a restore goes to the root the config
    /// gives the instance now (or, with no config, to the manifest's).
    #[default]
    InstanceRoot,
    /// The destination of a restore elsewhere (`restore ID --dest DIR`),
    /// backed up before it changed: a restore goes back to that directory,
    /// never to the instance's root.
    RestoreDestination,
}

impl TakenOf {
    /// Whether this is the default, left out of a manifest.
    pub fn is_instance_root(&self) -> bool {
        *self == TakenOf::InstanceRoot
    }
}

/// The first member: everything needed to understand the archive without
/// reading the rest of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub instance: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// `backstop <version>`.
    pub created_by: String,
    pub host: String,
    #[serde(flatten)]
    pub about: Description,
    pub compression: Codec,
    pub level: Option<i32>,
    /// The instance root the sources are relative to; an ad-hoc restore with
    /// no destination goes back here.
    pub root: String,
    /// The root as the config or the command line named it, before its
    /// symlinks were resolved into `root`. An additive field of format 1:
    /// absent in archives written before it, ignored by readers that
    /// predate it (a restore goes to `root`, the directory itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_root: Option<String>,
    /// What `root` is: the instance's root, or the destination of a restore
    /// elsewhere (a safety backup), to which a restore of this backup goes
    /// back. An additive field of format 1: absent means the instance's
    /// root.
    #[serde(default, skip_serializing_if = "TakenOf::is_instance_root")]
    pub taken_of: TakenOf,
    pub sources: Vec<SourceManifest>,
    /// Every exclude pattern in force, built-in ones included.
    pub excludes: Vec<String>,
    /// Paths (relative to the root) a restore never writes.
    pub never_restore: Vec<String>,
    /// The scan's totals, so a restore can check free space first.
    pub totals: Totals,
    /// For an instance with quadlet files: the systemd services they give
    /// and which ran when the backup was made, so a restore that puts the
    /// files back can start those again. An additive field of format 1:
    /// absent otherwise and in archives written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quadlet_units: Option<QuadletUnits>,
    /// For an incremental backup: the backups it is built on. An additive
    /// field of format 1: absent for a full backup and in archives written
    /// before chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainLinks>,
}

impl Manifest {
    /// Whether the backup is a full one (it needs no other archive).
    pub fn is_full(&self) -> bool {
        self.chain.is_none()
    }
}

/// One archive of a chain, named by id and the SHA-256 of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRef {
    pub id: String,
    pub sha256: String,
}

/// Where an incremental backup sits in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLinks {
    /// The backup this one stores the changes since.
    pub parent: ArchiveRef,
    /// The full backup the chain starts with.
    pub base: ArchiveRef,
    /// 1 for the first incremental after the full backup, and so on.
    pub position: u32,
}

/// The systemd services of a quadlet deployment at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuadletUnits {
    /// Whose service manager runs them: `user` or `system`.
    pub scope: crate::systemd::Scope,
    /// Every service the quadlet files give, sorted.
    pub units: Vec<String>,
    /// Those that were active; `None` when systemd could not be asked.
    pub active: Option<Vec<String>>,
    /// Why systemd could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl Manifest {
    /// Checks the names and paths a manifest gives, which come from the
    /// archive and are untrusted: the id, the instance and each source's
    /// name become file names and archive members, so each is one plain
    /// path component; a source's path is `.`, relative without `..`, or
    /// absolute without `..`; a captured source's file is a relative path
    /// without `..`.
    ///
    /// # Errors
    ///
    /// Returns what is wrong, for an [`ArchiveError::Corrupt`].
    pub fn check_names(&self) -> Result<(), String> {
        check_component("id", &self.id)?;
        check_component("instance", &self.instance)?;
        if !self.root.is_empty() {
            check_path("root", &self.root, true)?;
            if !self.root.starts_with('/') {
                return Err(format!("root `{}` is not an absolute path", self.root));
            }
        }
        // Only shown, never used to build a path (it may hold `..` as the
        // config spelled it): absolute and printable is all it must be.
        if let Some(configured) = &self.configured_root
            && (!configured.starts_with('/') || configured.chars().any(char::is_control))
        {
            return Err(format!(
                "configured root `{}` is not a printable absolute path",
                configured.escape_debug()
            ));
        }
        for s in &self.sources {
            check_component("source name", &s.name)?;
            if s.name.starts_with(RESERVED_PREFIX) {
                return Err(format!(
                    "source name `{}` is one of backstop's own members",
                    s.name
                ));
            }
            if !s.path.is_empty() && s.path != "." {
                check_path(&format!("the path of source {}", s.name), &s.path, true)?;
            }
            if let Some(file) = &s.file {
                check_path(&format!("the file of source {}", s.name), file, false)?;
            }
        }
        Ok(())
    }
}

/// One path component: not empty, `.` or `..`, no `/`, NUL or control
/// character.
fn check_component(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.chars().any(|c| c == '/' || c.is_control())
    {
        return Err(format!(
            "its {what} `{}` is not a plain name",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// A path of plain components (absolute only when `absolute_ok`).
fn check_path(what: &str, path: &str, absolute_ok: bool) -> Result<(), String> {
    let rel = match path.strip_prefix('/') {
        Some(rest) if absolute_ok => rest,
        Some(_) => return Err(format!("{what} `{}` is absolute", path.escape_debug())),
        None => path,
    };
    if rel.is_empty() && absolute_ok && path == "/" {
        return Ok(());
    }
    for part in rel.split('/') {
        check_component(what, part).map_err(|_| {
            format!(
                "{what} `{}` has an empty, `.`, `..` or unprintable component",
                path.escape_debug()
            )
        })?;
    }
    Ok(())
}

/// A path that could not be backed up as scanned, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The path inside the archive (`<source>/<relative path>`).
    pub path: String,
    pub detail: String,
}

/// The last member: what was actually written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub format: u32,
    pub id: String,
    /// Payload entries written.
    pub entries: u64,
    /// Regular files written. The checksums member lists these and, in an
    /// incremental backup, the unchanged files other archives hold.
    pub files: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Files that disappeared between the scan and the read: not in the archive.
    pub vanished: Vec<String>,
    /// Files that changed while being read: in the archive as read.
    pub changed: Vec<Problem>,
    /// Files that could not be read (permissions, I/O errors).
    pub unreadable: Vec<Problem>,
    /// FIFOs, sockets and devices, which are never backed up.
    pub skipped: Vec<Problem>,
    pub duration_ms: u64,
}

/// A problem with an archive's content or form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The data is damaged: decompression failed, the tar structure is broken,
    /// a member is missing or out of place.
    #[error("{} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// The manifest names a volume to import into that is not a podman
    /// volume name (or none at all): nothing is imported anywhere.
    #[error(
        "{} names {} as the volume of source {source_name}: {detail}",
        path.display(),
        shown_volume(volume)
    )]
    BadVolume {
        path: PathBuf,
        source_name: String,
        volume: String,
        detail: String,
    },
    /// A checksum did not match.
    #[error("{} failed its checksum: {detail}", path.display())]
    Checksum { path: PathBuf, detail: String },
    /// A member would be written outside the destination, or is of a kind
    /// backstop never writes (devices, FIFOs): the archive was made to attack.
    #[error("{} is unsafe: member {member} {detail}", path.display())]
    Hostile {
        path: PathBuf,
        member: String,
        detail: String,
    },
    /// The archive was written by a newer backstop.
    #[error("{} uses archive format {found}; this backstop reads format {FORMAT}", path.display())]
    NewerFormat { path: PathBuf, found: u64 },
    /// An incremental whose chain is not whole: an archive it needs is
    /// missing, altered, or does not hold what it should. `damaged` names
    /// the archive of the chain found damaged (its bytes not the ones
    /// recorded, or unreadable), which the catalog then records.
    #[error("the chain of {} is broken: {detail}", path.display())]
    BrokenChain {
        path: PathBuf,
        detail: String,
        damaged: Option<String>,
    },
}

impl ArchiveError {
    pub(crate) fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ArchiveError::Corrupt { .. }
            | ArchiveError::BadVolume { .. }
            | ArchiveError::Checksum { .. }
            | ArchiveError::Hostile { .. }
            | ArchiveError::BrokenChain { .. } => crate::error::ErrorKind::Integrity,
            ArchiveError::NewerFormat { .. } => crate::error::ErrorKind::Failed,
        }
    }

    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            ArchiveError::Corrupt { .. } | ArchiveError::Checksum { .. } => Some(
                "do not restore from this archive; use another backup (`backstop list`), and \
                 check the disk it is on"
                    .into(),
            ),
            ArchiveError::BadVolume { source_name, .. } => Some(format!(
                "name the volume to import into in the config (`{source_name} = {{ volume = \"NAME\" }}` \
                 under the instance's sources), or restore elsewhere with --dest DIR to get the \
                 volume's tar as a file"
            )),
            ArchiveError::Hostile { .. } => Some(
                "this archive was not written by backstop or was altered to escape its \
                 destination: do not extract it"
                    .into(),
            ),
            ArchiveError::NewerFormat { .. } => {
                Some("upgrade backstop to read this archive".into())
            }
            ArchiveError::BrokenChain { damaged: None, .. } => Some(
                "an incremental backup needs every archive of its chain: restore an older \
                 backup whose chain is whole (`backstop list`), or put the missing archive back \
                 and run `backstop reconcile`"
                    .into(),
            ),
            ArchiveError::BrokenChain {
                damaged: Some(id), ..
            } => Some(format!(
                "an incremental backup needs every archive of its chain, and {id} is recorded as \
                 corrupt now (the next backup starts a new chain): restore an older backup whose \
                 chain is whole (`backstop list`), or put an intact copy of {id} back (`backstop \
                 copy` from another store) and run `backstop verify {id}`"
            )),
        }
    }
}

/// A volume name from a manifest as a message shows it.
fn shown_volume(volume: &str) -> String {
    if volume.is_empty() {
        "no volume".into()
    } else {
        format!("`{}`", volume.escape_debug())
    }
}

/// Formats one `sha256sum` line for `name`, escaped the way GNU coreutils
/// does: a name holding a backslash or a newline gets a leading `\` and those
/// characters written as `\\` and `\n`.
pub fn checksum_line(out: &mut Vec<u8>, hex: &str, name: &[u8]) {
    let escape = name.iter().any(|&b| b == b'\\' || b == b'\n');
    if escape {
        out.push(b'\\');
    }
    out.extend_from_slice(hex.as_bytes());
    out.extend_from_slice(b"  ");
    for &b in name {
        match b {
            b'\\' if escape => out.extend_from_slice(b"\\\\"),
            b'\n' if escape => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
}

/// Parses one line written by [`checksum_line`] (without its newline) into
/// the hex checksum and the name.
///
/// # Errors
///
/// Returns `None` for a malformed line.
pub fn parse_checksum_line(line: &[u8]) -> Option<(&str, Vec<u8>)> {
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    if line.len() < 66 || &line[64..66] != b"  " {
        return None;
    }
    let hex = std::str::from_utf8(&line[..64]).ok()?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let raw = &line[66..];
    if !escaped {
        return Some((hex, raw.to_vec()));
    }
    let mut name = Vec::with_capacity(raw.len());
    let mut iter = raw.iter();
    while let Some(&b) = iter.next() {
        if b == b'\\' {
            match iter.next() {
                Some(b'\\') => name.push(b'\\'),
                Some(b'n') => name.push(b'\n'),
                _ => return None,
            }
        } else {
            name.push(b);
        }
    }
    Some((hex, name))
}

/// The sidecar content for an archive named `file_name`.
pub fn sidecar_line(hex: &str, file_name: &str) -> String {
    format!("{hex}  {file_name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lines_round_trip_awkward_names() {
        let names: Vec<&[u8]> = vec![
            b"plain/file.txt",
            b"with space/x",
            b"back\\slash",
            b"new\nline",
            b"\xff\xfe not utf8",
        ];
        let hex = "a".repeat(64);
        let mut text = Vec::new();
        for n in &names {
            checksum_line(&mut text, &hex, n);
        }
        let back: Vec<Vec<u8>> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_checksum_line(l).unwrap().1)
            .collect();
        assert_eq!(back, names);
    }

    #[test]
    fn malformed_checksum_line_is_reported() {
        assert_eq!(parse_checksum_line(b"nothex  x"), None);
    }

    #[test]
    fn taken_of_is_additive() {
        // Older readers see no new field in an ordinary backup; older
        // archives read as backups of the instance's root.
        #[derive(Serialize, Deserialize)]
        struct Only {
            #[serde(default, skip_serializing_if = "TakenOf::is_instance_root")]
            taken_of: TakenOf,
        }
        let plain = Only {
            taken_of: TakenOf::InstanceRoot,
        };
        assert_eq!(serde_json::to_string(&plain).unwrap(), "{}");
        let old: Only = serde_json::from_str("{}").unwrap();
        assert_eq!(old.taken_of, TakenOf::InstanceRoot);
        let elsewhere = Only {
            taken_of: TakenOf::RestoreDestination,
        };
        assert_eq!(
            serde_json::to_string(&elsewhere).unwrap(),
            r#"{"taken_of":"restore-destination"}"#
        );
    }

    #[test]
    fn levels_are_checked() {
        assert!(CompressionSpec::new(Codec::Zstd, Some(0)).is_err());
        assert!(CompressionSpec::new(Codec::Gzip, Some(10)).is_err());
        assert!(CompressionSpec::new(Codec::None, Some(1)).is_err());
        assert_eq!(
            CompressionSpec::new(Codec::Gzip, None).unwrap().level,
            Some(6)
        );
    }
}
