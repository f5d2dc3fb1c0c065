//! Incremental chains through the real binary: what each backup stores,
//! restores of a chain by backstop and by GNU tar alone, broken links,
//! retention, interruptions and the index cache.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use predicates::prelude::*;

use crate::support::{Env, flip_byte, run_paused, signal};

/// Every entry below `root`: kind, mode, size, mtime (files), content or
/// link target, and the link count of files.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let what = if m.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if m.is_dir() {
                todo.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let data = std::fs::read(&path).unwrap();
                format!(
                    "file {mode:o} {} bytes mtime {}.{} links {} sum {:x}",
                    data.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.nlink(),
                    md5ish(&data)
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

/// A cheap content fingerprint (FNV-1a), enough to tell files apart.
fn md5ish(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn id(b: &serde_json::Value) -> String {
    b["id"].as_str().unwrap().to_string()
}

fn location(b: &serde_json::Value) -> PathBuf {
    PathBuf::from(b["location"].as_str().unwrap())
}

/// A backup's report (not only its record).
fn backup_report(env: &Env, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["backup", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.json(&args)["report"].clone()
}

/// A full backup of `app` and two incrementals, each after a file was added.
fn chain_of_three(
    env: &Env,
    app: &Path,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let full = env.backup(app, &[]);
    write(&app.join("config/one"), b"1");
    let inc1 = env.backup(app, &[]);
    write(&app.join("config/two"), b"2");
    let inc2 = env.backup(app, &[]);
    assert_eq!(
        (&inc1["parent"], &inc2["parent"]),
        (&full["id"], &inc1["id"])
    );
    (full, inc1, inc2)
}

/// `restore TARGET --dest DEST --yes`, asserted by the caller.
fn restore_into(
    env: &Env,
    target: impl AsRef<std::ffi::OsStr>,
    dest: &Path,
) -> assert_cmd::assert::Assert {
    env.cmd()
        .arg("restore")
        .arg(target)
        .arg("--dest")
        .arg(dest)
        .arg("--yes")
        .assert()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// The tree the chain starts from.
fn first_state(app: &Path) {
    write(&app.join("a.txt"), b"alpha");
    write(&app.join("sub/b"), b"beta");
    write(&app.join("sub/deeper/c"), b"gamma");
    write(&app.join("dir2/x"), b"in a directory that becomes a file");
    write(&app.join("file2"), b"a file that becomes a directory");
    write(&app.join("f3"), b"a file that becomes a symlink");
    write(&app.join("h1"), b"hard linked");
    std::fs::hard_link(app.join("h1"), app.join("h2")).unwrap();
    let big: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&app.join("big.bin"), &big);
    std::fs::create_dir_all(app.join("empty")).unwrap();
}

/// Runs GNU tar `-x -g /dev/null` on each archive in order into `dest`.
fn gnu_tar_chain(archives: &[PathBuf], dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for a in archives {
        let out = StdCommand::new("tar")
            .args(["-I", "zstd", "-x", "-g", "/dev/null", "-f"])
            .arg(a)
            .arg("-C")
            .arg(dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn have_tools() -> bool {
    backstop_test_support::have("tar") && backstop_test_support::have("zstd")
}

#[test]
fn a_chain_restores_exactly_by_backstop_and_by_gnu_tar_deletions_included() {
    if !have_tools() {
        return;
    }
    let env = Env::new();
    let app = env.path("app");
    first_state(&app);
    let full = backup_report(&env, &app, &[]);
    assert_eq!(full["backup"]["parent"], serde_json::Value::Null);

    // Changed, added, deleted, renamed.
    write(&app.join("a.txt"), b"ALPHA, changed");
    write(&app.join("new.txt"), b"new");
    std::fs::remove_file(app.join("sub/b")).unwrap();
    std::fs::rename(app.join("sub/deeper/c"), app.join("sub/c-renamed")).unwrap();
    // A dry run says what the backup would build on, and changes nothing.
    let plan = env.json(&["backup", app.to_str().unwrap(), "--dry-run"]);
    assert_eq!(
        plan["plan"]["chain"]["parent"]["id"], full["backup"]["id"],
        "{plan}"
    );
    env.cmd()
        .args(["backup", app.to_str().unwrap(), "--dry-run", "-q"])
        .assert()
        .success();
    env.cmd()
        .args(["backup", app.to_str().unwrap(), "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("chain    incremental 1 on"));
    let full_plan = env.json(&["backup", app.to_str().unwrap(), "--dry-run", "--full"]);
    assert!(full_plan["plan"]["chain"].is_null(), "{full_plan}");
    assert_eq!(env.list().len(), 1, "a dry run records nothing");
    let inc1 = backup_report(&env, &app, &[]);
    assert_eq!(inc1["backup"]["parent"], full["backup"]["id"]);
    assert_eq!(inc1["backup"]["chain_position"], 1);
    // Only what changed is stored: a.txt, new.txt and the renamed file.
    assert_eq!(inc1["backup"]["files"], 3, "{inc1}");
    assert!(inc1["unchanged_files"].as_u64().unwrap() >= 4, "{inc1}");

    // A directory replaced by a file, a file by a directory, a file by a symlink.
    std::fs::remove_dir_all(app.join("dir2")).unwrap();
    write(&app.join("dir2"), b"now a file");
    std::fs::remove_file(app.join("file2")).unwrap();
    write(&app.join("file2/y"), b"now in a directory");
    std::fs::remove_file(app.join("f3")).unwrap();
    std::os::unix::fs::symlink("a.txt", app.join("f3")).unwrap();
    let inc2 = backup_report(&env, &app, &[]);
    assert_eq!(inc2["backup"]["parent"], inc1["backup"]["id"]);
    assert_eq!(inc2["backup"]["base"], full["backup"]["id"]);

    // Nothing changed: nothing stored.
    let inc3 = backup_report(&env, &app, &[]);
    assert_eq!(inc3["backup"]["files"], 0, "{inc3}");
    assert_eq!(inc3["backup"]["chain_position"], 3);
    let want = describe(&app);

    // backstop, into a fresh directory and over a tree that drifted.
    let dest = env.path("restored");
    restore_into(&env, id(&inc3["backup"]), &dest).success();
    assert_eq!(describe(&dest), want);
    // In place, over a tree that drifted: exact, with a safety backup
    // that is itself an incremental, and undone by restoring that.
    write(&app.join("stray"), b"x");
    write(&app.join("a.txt"), b"drifted");
    std::fs::remove_file(app.join("new.txt")).unwrap();
    let drifted = describe(&app);
    let done = env.json(&["restore", &id(&inc3["backup"]), "--mode", "exact", "--yes"]);
    assert_eq!(describe(&app), want);
    let safety = done["restore"]["safety_backup"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("a safety backup: {done}"));
    let safety_row = env.json(&["show", &safety])["show"]["backup"].clone();
    assert_eq!(safety_row["parent"], inc3["backup"]["id"], "{safety_row}");
    env.cmd()
        .args([
            "restore",
            &safety,
            "--mode",
            "exact",
            "--yes",
            "--no-pre-backup",
        ])
        .assert()
        .success();
    assert_eq!(describe(&app), drifted);
    env.cmd()
        .args([
            "restore",
            &id(&inc3["backup"]),
            "--mode",
            "exact",
            "--yes",
            "--no-pre-backup",
        ])
        .assert()
        .success();
    assert_eq!(describe(&app), want);

    // GNU tar alone, archive after archive: the same tree, deletions included.
    let archives: Vec<PathBuf> = [&full, &inc1, &inc2, &inc3]
        .iter()
        .map(|r| location(&r["backup"]))
        .collect();
    let by_hand = env.path("by-hand");
    gnu_tar_chain(&archives, &by_hand);
    assert_eq!(describe(&by_hand.join("app")), want);
    // The newest checksums list every file of the tree.
    let sums = StdCommand::new("sha256sum")
        .args(["-c", "--quiet", "backstop-checksums.sha256"])
        .current_dir(&by_hand)
        .output()
        .unwrap();
    assert!(sums.status.success(), "{sums:?}");

    // An older point of the chain restores as it was.
    let older = env.path("older");
    restore_into(&env, id(&inc1["backup"]), &older).success();
    assert_eq!(
        std::fs::read(older.join("a.txt")).unwrap(),
        b"ALPHA, changed"
    );
    assert!(older.join("dir2/x").is_file() && !older.join("sub/b").exists());

    // verify and show know the chain.
    env.cmd().args(["verify", "--all"]).assert().success();
    env.cmd()
        .args(["show", &id(&inc3["backup"])])
        .assert()
        .success()
        .stdout(predicate::str::contains("incremental 3 of the chain of"));
    env.cmd()
        .args(["list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("incr 3"));
}

#[test]
fn a_file_rewritten_to_the_same_size_and_mtime_is_read_again() {
    let env = Env::new();
    let app = env.path("app");
    write(&app.join("same.txt"), b"aaaa");
    write(&app.join("other.txt"), b"other");
    let mtime = std::fs::metadata(app.join("same.txt"))
        .unwrap()
        .modified()
        .unwrap();
    env.backup(&app, &[]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&app.join("same.txt"), b"bbbb");
    std::fs::File::options()
        .write(true)
        .open(app.join("same.txt"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(
        std::fs::metadata(app.join("same.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    let inc = env.backup(&app, &[]);
    assert_eq!(inc["files"], 1, "the rewritten file is stored: {inc}");
    let dest = env.path("dest");
    restore_into(&env, id(&inc), &dest).success();
    assert_eq!(std::fs::read(dest.join("same.txt")).unwrap(), b"bbbb");
    assert_eq!(std::fs::read(dest.join("other.txt")).unwrap(), b"other");
    // A mode change alone is a change too.
    std::fs::set_permissions(
        app.join("other.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(env.backup(&app, &[])["files"], 1);
}

#[test]
fn a_chain_with_a_missing_or_altered_link_is_refused_and_nothing_changes() {
    let env = Env::new();
    let app = env.small_app("app");
    let (full, inc1, inc2) = chain_of_three(&env, &app);
    std::fs::remove_file(app.join("config/one")).unwrap();
    let before = describe(&app);

    let middle = location(&inc1);
    let kept = env.path("inc1.kept");
    std::fs::rename(&middle, &kept).unwrap();
    let dest = env.path("dest");
    for args in [
        vec!["restore", inc2["id"].as_str().unwrap(), "--yes"],
        vec!["restore", inc2["id"].as_str().unwrap(), "--dry-run"],
    ] {
        env.cmd()
            .args(&args)
            .assert()
            .code(4)
            .stderr(predicate::str::contains(inc1["id"].as_str().unwrap()))
            .stderr(predicate::str::contains("chain"));
    }
    restore_into(&env, id(&inc2), &dest).code(4);
    assert_eq!(describe(&app), before, "the live tree is untouched");
    assert!(!dest.exists(), "nothing was written");
    env.cmd().args(["verify", &id(&inc2)]).assert().code(4);

    // An archive put back altered is not the one the chain was built on.
    std::fs::copy(&kept, &middle).unwrap();
    flip_byte(&middle, 200);
    restore_into(&env, id(&inc2), &dest).code(4);
    assert!(!dest.exists());
    // The full backup needs no other archive; whole again, the chain restores.
    let alone = env.path("alone");
    restore_into(&env, id(&full), &alone).success();
    assert!(!alone.join("config/one").exists());
    std::fs::rename(&kept, &middle).unwrap();
    restore_into(&env, id(&inc2), &dest).success();
    assert_eq!(std::fs::read(dest.join("config/two")).unwrap(), b"2");
}

/// The status of backup `id` in the catalog.
fn status(env: &Env, id: &str) -> String {
    let rows = env.list();
    let row = rows.iter().find(|r| r["id"] == id).unwrap();
    row["status"].as_str().unwrap().to_string()
}

/// A full backup of a small app and two incrementals, the first of which
/// holds 200 KB of new data; its byte in the middle of that data flipped,
/// its sidecar left as it was (damage on the disk).
fn chain_with_a_damaged_link(env: &Env) -> (PathBuf, String, String) {
    let (app, inc1, inc2, _) = damaged_chain(env);
    (app, inc1, inc2)
}

/// [`chain_with_a_damaged_link`], with the damaged archive and the offset
/// of its flipped byte.
fn damaged_chain(env: &Env) -> (PathBuf, String, String, (PathBuf, u64)) {
    let app = env.small_app("app");
    env.backup(&app, &[]);
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&app.join("data/noise"), &noise);
    let inc1 = env.backup(&app, &[]);
    write(&app.join("config/two"), b"2");
    let inc2 = env.backup(&app, &[]);
    let archive = location(&inc1);
    let len = std::fs::metadata(&archive).unwrap().len();
    flip_byte(&archive, len / 2);
    (app, id(&inc1), id(&inc2), (archive, len / 2))
}

#[test]
fn a_damaged_link_fails_its_childs_verify_and_no_backup_builds_on_it() {
    // What verifies, restores: an incremental's verify reads its chain's
    // archives too, and one whose bytes are not the recorded ones (its
    // sidecar still agreeing) fails it. The link is recorded as corrupt: a
    // restore that needs it is refused before its safety backup, and the
    // next backup is a full one.
    let env = Env::new();
    let (app, inc1, inc2) = chain_with_a_damaged_link(&env);
    env.cmd()
        .args(["verify", &inc2])
        .assert()
        .code(4)
        .stdout(predicate::str::contains(format!("{inc1} is damaged")));
    assert_eq!(status(&env, &inc1), "corrupt");
    let rows = env.list().len();
    env.cmd()
        .args(["restore", &inc2, "--yes"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("failed its last verification"));
    assert_eq!(env.list().len(), rows, "no safety backup was taken");
    write(&app.join("config/three"), b"3");
    let next = env.backup(&app, &[]);
    assert!(next["parent"].is_null(), "{next}");
}

#[test]
fn a_restore_that_finds_a_damaged_link_records_it() {
    let env = Env::new();
    let (_app, inc1, inc2, (archive, at)) = damaged_chain(&env);
    env.cmd()
        .args(["restore", &inc2, "--yes"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains(format!("{inc1} is damaged")))
        .stderr(predicate::str::contains("recorded as corrupt"));
    assert_eq!(status(&env, &inc1), "corrupt");
    // Known now: refused before another safety backup is taken.
    let rows = env.list().len();
    env.cmd().args(["restore", &inc2, "--yes"]).assert().code(4);
    assert_eq!(env.list().len(), rows);
    // Whole again (an intact copy put back), it is verified again before
    // the chain is used.
    flip_byte(&archive, at);
    env.cmd().args(["verify", &inc1]).assert().success();
    env.cmd()
        .args(["restore", &inc2, "--yes", "--no-pre-backup"])
        .assert()
        .success();
}

#[test]
fn prune_keeps_what_kept_backups_need_and_delete_names_the_dependants() {
    let env = Env::new();
    let app = env.small_app("app");
    let (full, inc1, inc2) = chain_of_three(&env, &app);
    let plan = env.json(&["prune", "app", "--keep", "1", "--dry-run"]);
    let decisions = plan["prune"][0]["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(decisions.len(), 3, "{plan}");
    assert!(decisions.iter().all(|d| d["keep"] == true), "{plan}");
    let reasons = decisions[2]["reasons"].to_string();
    assert!(
        reasons.contains(&format!("base of {}", id(&inc2))),
        "{reasons}"
    );
    env.cmd()
        .args(["prune", "app", "--keep", "1", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("base of"));
    env.cmd()
        .args(["prune", "app", "--keep", "1"])
        .assert()
        .success();
    assert_eq!(env.list().len(), 3);

    env.cmd()
        .args(["delete", &id(&inc1)])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(id(&inc2)))
        .stderr(predicate::str::contains("--with-dependants"));
    assert!(location(&inc1).exists());
    env.cmd()
        .args(["delete", &id(&inc1), "--with-dependants"])
        .assert()
        .success();
    assert!(!location(&inc1).exists() && !location(&inc2).exists());
    let left: Vec<String> = env.list().iter().map(id).collect();
    assert_eq!(left, vec![id(&full)]);
    // The next backup builds on what is left.
    assert_eq!(env.backup(&app, &[])["parent"], full["id"]);
}

#[test]
fn a_killed_incremental_leaves_no_archive_and_the_chain_goes_on() {
    let env = Env::new();
    let app = env.small_app("app");
    env.backup(&app, &[]);
    write(&app.join("config/one"), b"1");
    let good = env.backup(&app, &[]);
    write(&app.join("config/two"), b"2");
    let out = run_paused(
        &env,
        "backup.after-payload",
        &["backup".as_ref(), app.as_os_str()],
        |child| signal(child, rustix::process::Signal::KILL),
    );
    assert!(!out.status.success());
    let next = env.backup(&app, &[]);
    let rows = env.list();
    assert!(rows.iter().any(|r| r["status"] == "failed"), "{rows:?}");
    assert_eq!(next["parent"], good["id"], "built on the last good one");
    let archives = crate::support::walk(&env.home().join("backups"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .count();
    assert_eq!(archives, 3);
    let dest = env.path("dest");
    restore_into(&env, id(&next), &dest).success();
    assert_eq!(std::fs::read(dest.join("config/two")).unwrap(), b"2");
}

#[test]
fn the_index_cache_deleted_or_damaged_is_rebuilt_from_the_archive() {
    let env = Env::new();
    let app = env.small_app("app");
    env.backup(&app, &[]);
    let cache = env.home().join("index/app.zst");
    assert!(cache.is_file());
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::remove_file(&cache).unwrap();
    let inc = env.backup(&app, &[]);
    assert_eq!(
        (inc["chain_position"].clone(), inc["files"].clone()),
        (1.into(), 0.into())
    );
    let len = std::fs::metadata(&cache).unwrap().len();
    flip_byte(&cache, len / 2);
    let inc2 = env.backup(&app, &[]);
    assert_eq!(
        (inc2["chain_position"].clone(), inc2["files"].clone()),
        (2.into(), 0.into())
    );
    // Rebuilt: the cache reads again and names the newest backup.
    let text = StdCommand::new("zstd")
        .args(["-dc"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(text.status.success());
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .starts_with(&format!("backstop-index 1 {}", id(&inc2)))
    );
}

#[test]
fn when_there_is_nothing_to_build_on_the_backup_is_full_and_says_why() {
    let env = Env::new();
    let app = env.small_app("app");
    env.cmd()
        .args(["backup", app.to_str().unwrap(), "--incremental"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no incremental backup"))
        .stderr(predicate::str::contains("hint:"));
    let first = env.backup(&app, &[]);
    // The parent altered: found by verify, never built on.
    flip_byte(&location(&first), 300);
    env.cmd().args(["verify", &id(&first)]).assert().code(4);
    env.cmd()
        .args(["backup", app.to_str().unwrap()])
        .assert()
        .success()
        .stderr(predicate::str::contains("a full backup"))
        .stderr(predicate::str::contains(id(&first)));
    let rows = env.list();
    assert_eq!(rows[0]["parent"], serde_json::Value::Null);
    // A backup written elsewhere is full, and says nothing of it unless an
    // incremental was asked for.
    let file = env.path("elsewhere.tar.zst");
    env.cmd()
        .args(["backup", app.to_str().unwrap(), "--output"])
        .arg(&file)
        .assert()
        .success()
        .stderr(predicate::str::contains("note:").not());
    env.cmd()
        .args(["backup", app.to_str().unwrap(), "--incremental", "--output"])
        .arg(env.path("other.tar.zst"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "only backups in the store form chains",
        ));
    // --full, and the chain's limits.
    assert_eq!(env.backup(&app, &[])["chain_position"], 1);
    assert_eq!(env.backup(&app, &["--full"])["chain_position"], 0);
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[defaults.chain]\nmax_length = 1\n[instances.app]\nroot = \"{}\"\n",
            app.display()
        ),
    )
    .unwrap();
    let with_config = |extra: &[&str]| {
        let mut cmd = env.cmd();
        cmd.arg("--config")
            .arg(env.path("backstop.toml"))
            .args(["--json", "backup", "app"]);
        cmd.args(extra);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["report"].clone()
    };
    let a = with_config(&["--full"]);
    assert_eq!(a["backup"]["chain_position"], 0, "{a}");
    let b = with_config(&[]);
    assert_eq!(b["backup"]["chain_position"], 1, "{b}");
    let c = with_config(&[]);
    assert_eq!(c["backup"]["chain_position"], 0, "{c}");
    assert!(c["notes"].to_string().contains("max_length"), "{c}");
}

#[test]
fn reconcile_adopts_a_chain_with_its_links_and_reports_a_broken_one() {
    let env = Env::new();
    let app = env.small_app("app");
    let (full, inc1, inc2) = chain_of_three(&env, &app);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(env.home().join(format!("catalog.db{suffix}")));
    }
    env.cmd().args(["reconcile", "--apply"]).assert().success();
    let rows = env.list();
    let row = |b: &serde_json::Value| rows.iter().find(|r| r["id"] == b["id"]).unwrap().clone();
    assert_eq!(row(&inc2)["parent"], inc1["id"]);
    assert_eq!(row(&inc2)["base"], full["id"]);
    assert_eq!(row(&inc1)["chain_position"], 1);
    assert_eq!(row(&full)["parent"], serde_json::Value::Null);
    // The chain restores from the rebuilt catalog.
    let dest = env.path("dest");
    restore_into(&env, id(&inc2), &dest).success();
    // A link gone: reported, and left for a person (exit 3).
    std::fs::remove_file(location(&inc1)).unwrap();
    env.cmd()
        .args(["reconcile"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("broken"))
        .stdout(predicate::str::contains(id(&inc2)));
    env.cmd()
        .args(["reconcile", "--apply"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("chain is broken"));
    env.cmd()
        .args(["doctor"])
        .assert()
        .stdout(predicate::str::contains("incomplete chain"));
}

/// Hand-made archives that lie about their chain: each is refused with
/// exit 4 by verify and by restore, and nothing is written.
#[test]
fn hostile_dumpdirs_and_chains_are_refused() {
    use crate::craft::{Raw, craft, craft_with, manifest, path_source};
    use backstop_core::archive::format::{ArchiveRef, ChainLinks};
    let env = Env::new();
    let dir = env.path("crafted");
    std::fs::create_dir_all(&dir).unwrap();
    let root = env.path("root");
    let refused = |archive: &Path, why: &str| {
        env.cmd()
            .args(["verify"])
            .arg(archive)
            .assert()
            .code(4)
            .stdout(predicate::str::contains(why));
        let dest = env.path("dest");
        restore_into(&env, archive, &dest).code(4);
        assert!(
            !dest.exists(),
            "nothing is written for {}",
            archive.display()
        );
    };
    // A full backup naming a file it does not hold.
    let a = craft(
        &dir,
        "app-2026-01-01-000001",
        &root,
        &[
            Raw::DirWith(b"app", b"Na.txt\0\0"),
            Raw::Listed(b"app/a.txt", b"x"),
        ],
    );
    refused(&a, "does not hold");
    // A name with a slash, and a record not ended by NUL bytes.
    let b = craft(
        &dir,
        "app-2026-01-01-000002",
        &root,
        &[Raw::DirWith(b"app", b"N../../etc/passwd\0\0")],
    );
    refused(&b, "not a name");
    let c = craft(
        &dir,
        "app-2026-01-01-000003",
        &root,
        &[Raw::DirWith(b"app", b"Ya.txt")],
    );
    refused(&c, "NUL");
    // An incremental over `parent` naming app/a.txt unchanged.
    let incremental = |id: &str, parent: ArchiveRef| {
        let mut m = manifest(id, "app", &root, vec![path_source("app", ".", &root)]);
        m.chain = Some(ChainLinks {
            parent: parent.clone(),
            base: parent,
            position: 1,
        });
        craft_with(
            &dir,
            &m,
            &[
                Raw::DirWith(b"app", b"Na.txt\0\0"),
                Raw::Listed(b"app/a.txt", b"x"),
            ],
        )
    };
    // Its parent nowhere.
    let missing = ArchiveRef {
        id: "app-2025-12-31-000000".into(),
        sha256: "0".repeat(64),
    };
    refused(&incremental("app-2026-01-01-000004", missing), "chain");
    // A parent that is there but holds the name as a symlink, not a file.
    let parent = craft(
        &dir,
        "app-2026-01-01-000005",
        &root,
        &[Raw::Dir(b"app"), Raw::Symlink(b"app/a.txt", b"/etc/passwd")],
    );
    let sidecar = std::fs::read_to_string(format!("{}.sha256", parent.display())).unwrap();
    let link = ArchiveRef {
        id: "app-2026-01-01-000005".into(),
        sha256: sidecar[..64].to_string(),
    };
    let e = incremental("app-2026-01-01-000006", link);
    let dest = env.path("dest");
    restore_into(&env, &e, &dest)
        .code(4)
        .stderr(predicate::str::contains(
            "no earlier archive of the chain holds it",
        ));
    assert!(!dest.exists());
}
