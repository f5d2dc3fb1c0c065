//! Shared fixtures for the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use backstop_core::Context;
use backstop_core::archive::{BackupKind, Codec, CompressionSpec, Description};
use backstop_core::config::{Config, Layout};
use backstop_core::instance::Instance;
use backstop_core::ops::backup::{BackupReport, BackupRequest, Output, backup};
use backstop_core::progress::{Cancel, NoProgress};

/// A home directory for backstop and a place for test data.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub layout: Layout,
    pub config: Config,
    pub cancel: Cancel,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let layout = Layout {
            store: home.join("backups"),
            home,
        };
        Env {
            dir,
            layout,
            config: Config::default(),
            cancel: Cancel::default(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn ctx(&self) -> Context<'_> {
        Context {
            layout: &self.layout,
            config: &self.config,
            progress: &NoProgress,
            cancel: &self.cancel,
            keys: &backstop_core::encryption::NO_KEYS,
        }
    }

    /// Backs up `dir` into the store with `codec`.
    pub fn backup(&self, dir: &Path, codec: Codec) -> BackupReport {
        self.backup_with(dir, codec, Output::Store, &[])
    }

    pub fn backup_with(
        &self,
        dir: &Path,
        codec: Codec,
        output: Output,
        excludes: &[&str],
    ) -> BackupReport {
        let request = BackupRequest {
            instance: Instance::ad_hoc(&[dir.to_path_buf()]).expect("instance"),
            about: Description::new(BackupKind::Manual, "manual"),
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
            compression: CompressionSpec::new(codec, None).expect("spec"),
            encryption: backstop_core::encryption::EncryptRequest::default(),
            output,
            // Another test's child may hold the lock until it execs.
            wait: Some(std::time::Duration::from_secs(10)),
            chain: backstop_core::chain::ChainRequest::Full,
        };
        backup(&self.ctx(), request).expect("backup")
    }
}

/// Extracts `archive` with GNU tar into a new directory `dest`, keeping
/// permissions, xattrs and holes.
pub fn tar_extract(archive: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("mkdir");
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xpf"])
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar -x failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The member names of `archive` in order, as `tar -t` lists them.
pub fn tar_list(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(archive)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar -t failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
