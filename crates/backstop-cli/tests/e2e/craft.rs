//! Hand-made archives: every checksum valid (sidecar, inner list, trailer
//! counts), so that only the reader's own rules can refuse what is inside.

use std::path::{Path, PathBuf};

use backstop_core::archive::format::{
    CHECKSUMS_NAME, MANIFEST_NAME, SourceManifest, TRAILER_NAME, Totals, Trailer, checksum_line,
    sidecar_line,
};
use backstop_core::archive::tarfmt::{self, EntryHeader, HeaderKind};
use backstop_core::archive::{BackupKind, Codec, Description, Manifest};
use sha2::{Digest, Sha256};

/// One entry exactly as it goes into the tar stream.
pub enum Raw {
    Dir(&'static [u8]),
    /// A directory with this `GNU.dumpdir` record.
    DirWith(&'static [u8], &'static [u8]),
    /// No entry: only a checksums line for this path and content, as an
    /// incremental lists an unchanged file another archive holds.
    Listed(&'static [u8], &'static [u8]),
    File(&'static [u8], &'static [u8]),
    Symlink(&'static [u8], &'static [u8]),
    HardLink(&'static [u8], &'static [u8]),
    /// A character device (type `3`), which backstop never writes.
    Device(&'static [u8]),
}

fn header(out: &mut Vec<u8>, path: &[u8], kind: HeaderKind<'_>, mode: u32) {
    tarfmt::write_header(
        out,
        &EntryHeader {
            path,
            kind,
            mode,
            uid: 0,
            gid: 0,
            uname: None,
            gname: None,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            xattrs: &[],
        },
    );
}

fn member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    header(
        out,
        name.as_bytes(),
        HeaderKind::File {
            size: data.len() as u64,
        },
        0o600,
    );
    out.extend_from_slice(data);
    tarfmt::pad(out, data.len() as u64);
}

/// A manifest for instance `instance` rooted at `root` with `sources`.
pub fn manifest(id: &str, instance: &str, root: &Path, sources: Vec<SourceManifest>) -> Manifest {
    Manifest {
        format: 1,
        id: id.into(),
        instance: instance.into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        created_by: "backstop test".into(),
        host: "test".into(),
        about: Description::new(BackupKind::Manual, "manual"),
        compression: Codec::None,
        level: None,
        root: root.display().to_string(),
        configured_root: None,
        taken_of: Default::default(),
        sources,
        excludes: vec![],
        never_restore: vec![],
        totals: Totals::default(),
        quadlet_units: None,
        chain: None,
    }
}

/// A path source `name` at `path` below the root.
pub fn path_source(name: &str, path: &str, origin: &Path) -> SourceManifest {
    SourceManifest {
        name: name.into(),
        kind: "path".into(),
        path: path.into(),
        origin: origin.display().to_string(),
        restore: "extract".into(),
        file: None,
        volume: None,
    }
}

/// Writes `<dir>/<id>.tar` and its sidecar, for an instance rooted at `root`
/// with one source `app` covering the root.
pub fn craft(dir: &Path, id: &str, root: &Path, entries: &[Raw]) -> PathBuf {
    let sources = vec![path_source("app", ".", root)];
    craft_with(dir, &manifest(id, "app", root, sources), entries)
}

/// Writes `<dir>/<id>.tar` with `manifest` and `entries`, and its sidecar.
pub fn craft_with(dir: &Path, manifest: &Manifest, entries: &[Raw]) -> PathBuf {
    let id = manifest.id.as_str();
    let mut out = Vec::new();
    member(
        &mut out,
        MANIFEST_NAME,
        &serde_json::to_vec(manifest).unwrap(),
    );
    let mut sums = Vec::new();
    let (mut n, mut files, mut bytes) = (0u64, 0u64, 0u64);
    for e in entries {
        n += u64::from(!matches!(e, Raw::Listed(..)));
        match e {
            Raw::Listed(p, data) => {
                checksum_line(&mut sums, &hex::encode(Sha256::digest(data)), p);
            }
            Raw::Dir(p) => header(&mut out, p, HeaderKind::Dir { dumpdir: None }, 0o755),
            Raw::DirWith(p, dumpdir) => header(
                &mut out,
                p,
                HeaderKind::Dir {
                    dumpdir: Some(dumpdir),
                },
                0o755,
            ),
            Raw::File(p, data) => {
                header(
                    &mut out,
                    p,
                    HeaderKind::File {
                        size: data.len() as u64,
                    },
                    0o644,
                );
                out.extend_from_slice(data);
                tarfmt::pad(&mut out, data.len() as u64);
                checksum_line(&mut sums, &hex::encode(Sha256::digest(data)), p);
                files += 1;
                bytes += data.len() as u64;
            }
            Raw::Symlink(p, target) => header(&mut out, p, HeaderKind::Symlink { target }, 0o777),
            Raw::HardLink(p, target) => header(&mut out, p, HeaderKind::HardLink { target }, 0o644),
            Raw::Device(p) => {
                let mut h = tar::Header::new_ustar();
                h.as_old_mut().name[..p.len()].copy_from_slice(p);
                h.set_mode(0o600);
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                h.set_cksum();
                out.extend_from_slice(h.as_bytes());
            }
        }
    }
    member(&mut out, CHECKSUMS_NAME, &sums);
    let trailer = Trailer {
        format: 1,
        id: id.into(),
        entries: n,
        files,
        bytes,
        ..Trailer::default()
    };
    member(
        &mut out,
        TRAILER_NAME,
        &serde_json::to_vec(&trailer).unwrap(),
    );
    out.extend_from_slice(&tarfmt::END_OF_ARCHIVE);
    let path = dir.join(format!("{id}.tar"));
    std::fs::write(&path, &out).unwrap();
    let name = format!("{id}.tar");
    std::fs::write(
        dir.join(format!("{name}.sha256")),
        sidecar_line(&hex::encode(Sha256::digest(&out)), &name),
    )
    .unwrap();
    path
}
