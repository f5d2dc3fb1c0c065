//! Instance roots: a root that is a symlink is resolved once and the tree
//! behind it backed up and restored; roots and homes that make no sense
//! are config errors.

use std::path::{Path, PathBuf};

use backstop_test_support::{Compare, assert_same_tree};
use predicates::prelude::*;

use crate::support::{Env, copy_tree};

/// `real/` with files, a subdirectory and a symlink inside, and `link ->
/// real`; the config's instance `app` has `root = <link>`.
fn symlinked_root(env: &Env) -> (PathBuf, PathBuf) {
    let real = env.path("real");
    std::fs::create_dir_all(real.join("sub")).unwrap();
    std::fs::write(real.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(real.join("sub/b.txt"), b"beta\n").unwrap();
    std::os::unix::fs::symlink("a.txt", real.join("inner-link")).unwrap();
    let link = env.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    config(
        env,
        &format!("[instances.app]\nroot = \"{}\"\n", link.display()),
    );
    (real, link)
}

fn config(env: &Env, text: &str) {
    std::fs::write(env.path("backstop.toml"), text).unwrap();
}

fn manifest_of(env: &Env, id: &str) -> serde_json::Value {
    let archive = env.home().join(format!("backups/app/{id}.tar.zst"));
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("backstop-manifest.json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_symlinked_root_backs_up_the_tree_behind_it() {
    let env = Env::new();
    let (real, link) = symlinked_root(&env);
    let backup = env.backup(Path::new("app"), &[]);
    // Before, the archive held the one symlink: 1 entry, 0 files.
    assert_eq!(backup["entries"], 5, "{backup}");
    assert_eq!(backup["files"], 2, "{backup}");
    let m = manifest_of(&env, backup["id"].as_str().unwrap());
    let real = real.canonicalize().unwrap();
    assert_eq!(m["root"], real.to_str().unwrap(), "{m}");
    assert_eq!(m["configured_root"], link.to_str().unwrap(), "{m}");
    // The catalog's origin is the directory itself.
    assert_eq!(backup["origin"], real.to_str().unwrap(), "{backup}");
}

#[test]
fn a_symlinked_root_is_restored_into_the_real_directory() {
    let env = Env::new();
    let (real, link) = symlinked_root(&env);
    let reference = env.path("reference");
    copy_tree(&real, &reference);
    let id = env.backup(Path::new("app"), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(real.join("a.txt"), b"changed\n").unwrap();
    std::fs::remove_file(real.join("sub/b.txt")).unwrap();
    std::fs::write(real.join("added.txt"), b"new\n").unwrap();
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
    // The root is still a directory (not a symlink to itself), the link
    // still points at it, and the tree is as it was, inner symlink included.
    assert!(real.symlink_metadata().unwrap().is_dir());
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), real);
    assert_eq!(
        std::fs::read_link(real.join("inner-link")).unwrap(),
        Path::new("a.txt")
    );
    assert_same_tree(&reference, &real, Compare::default());
}

#[test]
fn doctor_says_where_a_symlinked_root_resolves() {
    let env = Env::new();
    let (real, link) = symlinked_root(&env);
    let real = real.canonicalize().unwrap();
    env.cmd()
        .args(["doctor", "app"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "root {} resolves to {}",
            link.display(),
            real.display()
        )));
}

#[test]
fn an_empty_root_is_a_config_error_naming_the_line() {
    let env = Env::new();
    config(&env, "[instances.app]\nexclude = []\nroot = \"\"\n");
    env.cmd()
        .args(["backup", "app"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("backstop.toml"))
        .stderr(predicate::str::contains("line 3"))
        .stderr(predicate::str::contains("`root` is empty"));
    // Nothing was backed up from the config's own directory.
    assert!(!env.home().join("backups").exists());
}

#[test]
fn an_empty_home_or_store_is_a_config_error_naming_the_line() {
    let env = Env::new();
    for key in ["home", "store"] {
        config(&env, &format!("# backstop\n{key} = \"\"\n"));
        env.cmd()
            .args(["list"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("line 2"))
            .stderr(predicate::str::contains(format!("`{key}` is empty")));
        // Before, the catalog (or the store) went beside the config.
        assert!(!env.path("catalog.db").exists(), "{key}");
    }
}

#[test]
fn the_filesystem_root_needs_allow_root_fs() {
    let env = Env::new();
    config(&env, "[instances.all]\nroot = \"/\"\n");
    env.cmd()
        .args(["backup", "all", "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 2"))
        .stderr(predicate::str::contains("allow_root_fs = true"));
    // A symlink to / is the filesystem root too.
    let slash = env.path("slash");
    std::os::unix::fs::symlink("/", &slash).unwrap();
    config(
        &env,
        &format!("[instances.all]\nroot = \"{}\"\n", slash.display()),
    );
    env.cmd()
        .args(["doctor", "all"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("resolves to `/`"));
    // Said explicitly, it is accepted (doctor only reads).
    config(
        &env,
        "[instances.all]\nroot = \"/\"\nallow_root_fs = true\n",
    );
    env.cmd()
        .args(["doctor", "all"])
        .assert()
        .stdout(predicate::str::contains("instance all: root /"));
}

/// A backup made before roots were resolved holds a symlinked root as the
/// link alone (`app -> real`). Restored in place, into the directory the
/// root now resolves to, it would replace that directory with a link to
/// itself: the restore refuses, and nothing changes.
#[test]
fn an_old_backup_of_a_symlinked_root_never_replaces_the_directory_with_a_link_to_itself() {
    let env = Env::new();
    let (real, link) = symlinked_root(&env);
    let before = crate::support::walk(&real);
    std::fs::create_dir_all(env.path("old")).unwrap();
    let archive = crate::craft::craft_with(
        &env.path("old"),
        &crate::craft::manifest(
            "app-2026-01-01-000000",
            "app",
            &link,
            vec![crate::craft::path_source("app", ".", &link)],
        ),
        &[crate::craft::Raw::Symlink(b"app", b"real")],
    );
    env.cmd()
        .args([
            "restore",
            archive.to_str().unwrap(),
            "--yes",
            "--no-pre-backup",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("only as a symlink to"));
    assert!(real.is_dir(), "{} is no longer a directory", real.display());
    assert_eq!(crate::support::walk(&real), before);
    assert_eq!(std::fs::read(real.join("sub/b.txt")).unwrap(), b"beta\n");
}
