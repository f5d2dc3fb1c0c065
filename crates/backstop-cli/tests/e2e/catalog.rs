//! The catalog lost or damaged: real bytes of a real SQLite catalog
//! overwritten, the file deleted, and what every command then does;
//! `reconcile --apply` rebuilding it with the pins kept beside the archives.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use predicates::prelude::*;

use crate::support::{Env, sqlite};

fn archive(env: &Env, id: &str) -> PathBuf {
    env.home().join(format!("backups/app/{id}.tar.zst"))
}

fn meta(archive: &Path) -> PathBuf {
    PathBuf::from(format!("{}.meta.json", archive.display()))
}

fn backups(env: &Env, app: &Path, n: usize, extra: &[&str]) -> Vec<String> {
    (0..n)
        .map(|i| {
            std::fs::write(app.join("data/n"), i.to_string()).unwrap();
            env.backup(app, extra)["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Overwrites the middle of the restores table's root page with bytes that
/// are not a b-tree page, after SQLite has written everything into the
/// main file. The file still opens; only SQLite's own check sees it.
fn damage_restores_table(db: &Path) {
    sqlite(db, "PRAGMA wal_checkpoint(TRUNCATE);");
    let page_size: u64 = sqlite(db, "PRAGMA page_size;").parse().unwrap();
    let root: u64 = sqlite(
        db,
        "SELECT rootpage FROM sqlite_master WHERE name = 'restores';",
    )
    .parse()
    .unwrap();
    let mut bytes = std::fs::read(db).unwrap();
    // Past the page's type byte and header: the cell pointers and what
    // follows, as a stray write would leave them.
    let start = ((root - 1) * page_size) as usize + 8;
    let mut x: u32 = 0x1234_5678;
    for b in &mut bytes[start..start + 200] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(db, bytes).unwrap();
    let check = StdCommand::new("sqlite3")
        .arg(db)
        .arg("PRAGMA quick_check;")
        .output()
        .unwrap();
    assert!(
        !check.status.success() || String::from_utf8_lossy(&check.stdout).trim() != "ok",
        "the damage must be real"
    );
}

fn catalog(env: &Env) -> PathBuf {
    env.home().join("catalog.db")
}

fn remove_catalog(env: &Env) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(env.home().join(format!("catalog.db{suffix}")));
    }
}

#[test]
fn a_catalog_damaged_inside_is_named_by_every_command_and_rebuilt() {
    let env = Env::new();
    let app = env.small_app("app");
    let ids = backups(&env, &app, 2, &["-m", "from the manifest"]);
    env.cmd()
        .args(["restore", &ids[0], "--yes", "--no-pre-backup"])
        .assert()
        .success();
    damage_restores_table(&catalog(&env));
    let damaged = std::fs::read(catalog(&env)).unwrap();

    env.cmd()
        .args(["doctor"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("is damaged"))
        .stdout(predicate::str::contains("reconcile --apply"))
        .stdout(predicate::str::contains("matches the store").not());
    for args in [
        &["list"][..],
        &["verify", &ids[0]],
        &["verify", "--all"],
        &["show", &ids[0]],
        &["restore", &ids[0], "--yes"],
        &["reconcile"],
    ] {
        env.cmd()
            .args(args)
            .assert()
            .code(4)
            .stderr(predicate::str::contains("is damaged"))
            .stderr(predicate::str::contains("backstop reconcile --apply"))
            .stderr(predicate::str::contains("panicked").not());
    }

    env.cmd()
        .args(["reconcile", "--apply"])
        .assert()
        .success()
        .stdout(predicate::str::contains("rebuilt from the archives"));
    // The damaged file is kept, byte for byte.
    let aside: Vec<String> = Env::files_in(&env.home())
        .into_iter()
        .filter(|n| n.starts_with("catalog.db.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(env.home().join(&aside[0])).unwrap(), damaged);
    assert_eq!(sqlite(&catalog(&env), "PRAGMA quick_check;"), "ok");
    let rows = env.list();
    let mut got: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    got.sort();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    assert!(rows.iter().all(|r| r["message"] == "from the manifest"));
    env.cmd().args(["doctor"]).assert().success();
    env.cmd()
        .args(["restore", &ids[1], "--yes"])
        .assert()
        .success();
}

#[test]
fn an_archive_file_restores_and_verifies_with_a_broken_catalog() {
    let env = Env::new();
    let app = env.small_app("app");
    let ids = backups(&env, &app, 1, &[]);
    // A restore, so that the restores table has a page to damage.
    env.cmd()
        .args(["restore", &ids[0], "--yes", "--no-pre-backup"])
        .assert()
        .success();
    let file = archive(&env, &ids[0]);
    let file = file.to_str().unwrap();
    for broken in ["damaged", "not a database"] {
        if broken == "damaged" {
            damage_restores_table(&catalog(&env));
        } else {
            remove_catalog(&env);
            std::fs::write(catalog(&env), vec![0x42u8; 8192]).unwrap();
        }
        std::fs::write(app.join("config/app.toml"), b"port = 1\n").unwrap();
        // A safety backup could not be recorded: refused, not exit 4.
        env.cmd()
            .args(["restore", file, "--yes"])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("--no-pre-backup"))
            .stderr(predicate::str::contains("reconcile --apply"));
        assert_eq!(
            std::fs::read(app.join("config/app.toml")).unwrap(),
            b"port = 1\n"
        );
        env.cmd()
            .args(["restore", file, "--yes", "--no-pre-backup"])
            .assert()
            .code(predicate::in_iter([0, 3]))
            .stderr(predicate::str::contains("not recorded in the catalog"));
        assert_eq!(
            std::fs::read(app.join("config/app.toml")).unwrap(),
            b"port = 8080\n",
            "{broken}: the file was restored"
        );
        env.cmd()
            .args(["verify", file])
            .assert()
            .code(predicate::in_iter([0, 3]))
            .stdout(predicate::str::contains("not recorded in the catalog"));
    }
}

#[test]
fn a_deleted_catalog_is_noticed_by_list_and_doctor() {
    let env = Env::new();
    let app = env.small_app("app");
    let ids = backups(&env, &app, 2, &[]);
    env.cmd().args(["doctor"]).assert().success();
    remove_catalog(&env);

    env.cmd()
        .args(["list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("No backups yet").not())
        .stdout(predicate::str::contains(
            "2 archives in the store are not in the catalog",
        ))
        .stdout(predicate::str::contains(
            archive(&env, &ids[0]).to_str().unwrap(),
        ))
        .stdout(predicate::str::contains("backstop reconcile --apply"));
    let doc = env.json(&["list"]);
    assert_eq!(doc["backups"].as_array().unwrap().len(), 0);
    assert_eq!(doc["untracked"].as_array().unwrap().len(), 2, "{doc}");
    env.cmd()
        .args(["doctor"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("does not exist, but the store"))
        .stdout(predicate::str::contains("reconcile --apply"))
        .stdout(predicate::str::contains("All checks passed").not());

    env.cmd().args(["reconcile", "--apply"]).assert().success();
    let doc = env.json(&["list"]);
    assert_eq!(doc["backups"].as_array().unwrap().len(), 2);
    assert!(doc["untracked"].as_array().unwrap().is_empty(), "{doc}");
    env.cmd()
        .args(["list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("not in the catalog").not());
    env.cmd().args(["doctor"]).assert().success();
}

#[test]
fn pins_and_labels_survive_a_lost_catalog() {
    let env = Env::new();
    let app = env.small_app("app");
    let ids = backups(
        &env,
        &app,
        3,
        &["--full", "--label", "env=prod", "-m", "kept"],
    );
    env.cmd().args(["pin", &ids[0]]).assert().success();
    env.cmd().args(["pin", &ids[1]]).assert().success();
    env.cmd().args(["unpin", &ids[1]]).assert().success();
    let pinned = archive(&env, &ids[0]);
    let mode = std::fs::metadata(meta(&pinned))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The sidecar is still a plain `sha256sum -c` file.
    let ok = StdCommand::new("sha256sum")
        .arg("-c")
        .arg(format!(
            "{}.sha256",
            pinned.file_name().unwrap().to_str().unwrap()
        ))
        .current_dir(pinned.parent().unwrap())
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);

    remove_catalog(&env);
    env.cmd()
        .args(["reconcile", "--apply"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "pinned, as its metadata file says",
        ));
    let rows = env.list();
    let pin = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap()["pinned"].clone();
    assert_eq!(pin(&ids[0]), true);
    assert_eq!(pin(&ids[1]), false);
    assert_eq!(pin(&ids[2]), false);
    assert!(
        rows.iter()
            .all(|r| r["labels"]["env"] == "prod" && r["message"] == "kept"),
        "{rows:?}"
    );
    // The pin still protects it from pruning.
    env.cmd()
        .args(["prune", "app", "--keep", "1"])
        .assert()
        .success();
    let left: Vec<String> = env
        .list()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(left.contains(&ids[0]), "{left:?}");
    assert!(!left.contains(&ids[1]), "{left:?}");
    // Prune took the metadata file with the archive it removed.
    assert!(!meta(&archive(&env, &ids[1])).exists());
}

#[test]
fn metadata_files_move_and_go_with_their_archives_and_are_never_backups() {
    let env = Env::new();
    // migrate writes the new store into this config, never into /etc.
    std::fs::write(env.path("backstop.toml"), "# backstop\n").unwrap();
    let app = env.small_app("app");
    let ids = backups(&env, &app, 2, &[]);
    env.cmd().args(["pin", &ids[0]]).assert().success();
    env.cmd().args(["pin", &ids[1]]).assert().success();
    // A metadata file whose archive is gone is not a backup.
    let stray = env
        .home()
        .join("backups/app/app-2001-01-01-000000.tar.zst.meta.json");
    std::fs::write(
        &stray,
        br#"{"format":1,"id":"app-2001-01-01-000000","pinned":true}"#,
    )
    .unwrap();
    let doc = env.json(&["list"]);
    assert!(doc["untracked"].as_array().unwrap().is_empty(), "{doc}");
    let doc = env.json(&["reconcile"]);
    assert!(
        doc["reconcile"]["findings"].as_array().unwrap().is_empty(),
        "{doc}"
    );

    let to = env.path("new-store");
    env.cmd()
        .args(["migrate", "--to", to.to_str().unwrap()])
        .assert()
        .success();
    let moved = to.join(format!("app/{}.tar.zst", ids[0]));
    assert!(meta(&moved).is_file());
    assert!(!meta(&archive(&env, &ids[0])).exists());

    env.cmd().args(["unpin", &ids[1]]).assert().success();
    env.cmd().args(["delete", &ids[1]]).assert().success();
    assert!(!meta(&to.join(format!("app/{}.tar.zst", ids[1]))).exists());

    remove_catalog(&env);
    env.cmd().args(["reconcile", "--apply"]).assert().success();
    let rows = env.list();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], ids[0].as_str());
    assert_eq!(rows[0]["pinned"], true);
}

/// A backup into a home whose catalog is damaged is still made (the
/// archive describes itself; a rebuild adopts it), and says so with the
/// way out, rather than going into the damaged catalog unsaid.
#[test]
fn a_backup_with_a_damaged_catalog_is_made_and_says_so() {
    let env = Env::new();
    let app = env.small_app("app");
    for _ in 0..3 {
        env.backup(&app, &[]);
    }
    let db = env.home().join("catalog.db");
    crate::support::sqlite(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
    let mut data = std::fs::read(&db).unwrap();
    // Page 9 (4 KiB pages): the guards table, which SQLite's quick_check
    // reads and a backup does not.
    for (i, b) in data[8 * 4096..9 * 4096].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&db, data).unwrap();
    let out = env
        .cmd()
        .args(["backup", app.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is damaged") && stderr.contains("reconcile --apply"),
        "{stderr}"
    );
    let archives = crate::support::walk(&env.home().join("backups"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .count();
    assert_eq!(archives, 4);
}
