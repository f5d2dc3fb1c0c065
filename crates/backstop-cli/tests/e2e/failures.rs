//! Guarantees 1, 6 and 8 under failure: nothing half-written is ever called a
//! backup, one writer per instance, and bad situations get clear errors.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backstop_test_support::{Tmpfs, have, noise, root};
use predicates::prelude::*;
use rustix::process::Signal;

use crate::support::{Env, Pause, run_paused, signal, spawn};

fn big_app(env: &Env, name: &str, files: usize, size: usize) -> PathBuf {
    let app = env.path(name);
    std::fs::create_dir_all(app.join("media")).unwrap();
    for i in 0..files {
        std::fs::write(
            app.join(format!("media/{i:03}.bin")),
            noise(size, i as u64 + 1),
        )
        .unwrap();
    }
    app
}

/// Nothing in `dir` but committed archives with their sidecars.
fn only_complete_archives(dir: &Path) -> Vec<String> {
    let names = Env::files_in(dir);
    for n in &names {
        assert!(!n.starts_with('.'), "temporary file left behind: {n}");
        if !n.ends_with(".sha256") {
            assert!(
                names.contains(&format!("{n}.sha256")),
                "archive without sidecar: {n}"
            );
        }
    }
    names
}

#[test]
fn a_full_disk_leaves_nothing_and_records_the_failure() {
    if !root("mount a small tmpfs") {
        return;
    }
    let env = Env::new();
    let app = big_app(&env, "media-app", 4, 2 << 20);
    let small = Tmpfs::mount(3 << 20);
    env.cmd()
        .arg("backup")
        .arg(&app)
        .arg("--output")
        .arg(small.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("No space left on device"))
        .stderr(predicate::str::contains("hint:"))
        .stderr(predicate::str::contains("full"));
    assert!(
        Env::files_in(small.path()).is_empty(),
        "{:?}",
        Env::files_in(small.path())
    );
    assert_eq!(
        rustix::fs::statvfs(small.path()).unwrap().f_bfree,
        rustix::fs::statvfs(small.path()).unwrap().f_blocks
    );
    let rows = env.list();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "failed");
    assert!(
        rows[0]["error"].as_str().unwrap().contains("No space left"),
        "{}",
        rows[0]
    );
    assert!(rows[0]["location"].is_null());
    env.cmd()
        .arg("list")
        .assert()
        .stdout(predicate::str::contains("failed"));

    // The same with the whole store on the small filesystem.
    let config = env.path("store.toml");
    std::fs::write(
        &config,
        format!("store = \"{}\"\n", small.path().join("store").display()),
    )
    .unwrap();
    env.cmd()
        .arg("--config")
        .arg(&config)
        .arg("backup")
        .arg(&app)
        .assert()
        .code(1);
    assert!(only_complete_archives(&small.path().join("store/media-app")).is_empty());
}

#[test]
fn a_read_only_destination_is_a_clear_error() {
    if !root("mount a read-only tmpfs") {
        return;
    }
    let env = Env::new();
    let app = env.small_app("svc");
    let ro = Tmpfs::mount(8 << 20);
    ro.make_read_only();
    env.cmd()
        .arg("backup")
        .arg(&app)
        .arg("--output")
        .arg(ro.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Read-only file system"))
        .stderr(predicate::str::contains("read-only filesystem"));
    assert_eq!(env.list()[0]["status"], "failed");
}

#[test]
fn an_output_directory_without_write_permission_is_a_clear_error() {
    if !root("run backstop as another user") || !have("setpriv") {
        return;
    }
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = env.small_app("svc");
    for dir in [&app, &app.join("config"), &app.join("data")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for file in ["config/.env", "config/app.toml", "data/db.sqlite"] {
        std::fs::set_permissions(app.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let home = env.home();
    std::fs::create_dir_all(&home).unwrap();
    let nobody = (
        rustix::process::Uid::from_raw(65534),
        rustix::process::Gid::from_raw(65534),
    );
    rustix::fs::chown(&home, Some(nobody.0), Some(nobody.1)).unwrap();
    // Owned by root, mode 0755: nobody may not create files in it.
    let locked = env.path("root-only");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::support::bin())
            .arg("--home")
            .arg(&home)
            .env("NO_COLOR", "1")
            .env("XDG_CONFIG_HOME", env.path("xdg"))
            .args(args)
            .current_dir(env.dir.path())
            .output()
            .unwrap()
    };
    let out = as_nobody(&[
        "backup".as_ref(),
        app.as_os_str(),
        "--output".as_ref(),
        locked.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(stderr.contains("hint: check the permissions"), "{stderr}");
    assert!(Env::files_in(&locked).is_empty());
    let list = as_nobody(&["--json".as_ref(), "list".as_ref()]);
    let doc: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(doc["backups"][0]["status"], "failed");
    assert!(
        doc["backups"][0]["error"]
            .as_str()
            .unwrap()
            .contains("Permission denied")
    );
}

#[test]
fn a_file_vanishing_after_the_scan_gives_exit_3_and_is_listed() {
    let env = Env::new();
    let app = env.small_app("svc");
    std::fs::write(app.join("data/ephemeral.tmp"), b"here now").unwrap();
    let out = run_paused(
        &env,
        "backup.after-scan",
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
        |_| {
            std::fs::remove_file(app.join("data/ephemeral.tmp")).unwrap();
        },
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: vanished svc/data/ephemeral.tmp"),
        "{stderr}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["report"]["trailer"]["vanished"][0],
        "svc/data/ephemeral.tmp"
    );
    let b = &doc["report"]["backup"];
    assert_eq!(b["status"], "available");
    assert_eq!(b["warnings"], 1);
    env.cmd()
        .args(["verify", b["id"].as_str().unwrap()])
        .assert()
        .success();
}

#[test]
fn when_the_first_name_of_a_hard_link_vanishes_the_second_carries_the_data() {
    let env = Env::new();
    let app = env.path("links");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a-first"), vec![b'z'; 2 << 20]).unwrap();
    std::fs::hard_link(app.join("a-first"), app.join("b-second")).unwrap();
    let out = run_paused(
        &env,
        "backup.after-scan",
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
        |_| {
            std::fs::remove_file(app.join("a-first")).unwrap();
        },
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["report"]["trailer"]["vanished"][0], "links/a-first");
    assert_eq!(doc["report"]["backup"]["files"], 1);
    let id = doc["report"]["backup"]["id"].as_str().unwrap();
    env.cmd().args(["verify", id]).assert().success();
    if backstop_test_support::have("tar") && have("zstd") {
        let x = env.path("x");
        std::fs::create_dir_all(&x).unwrap();
        let archive = doc["report"]["backup"]["location"].as_str().unwrap();
        assert!(
            std::process::Command::new("tar")
                .args(["-xf", archive, "-C"])
                .arg(&x)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(
            std::fs::read(x.join("links/b-second")).unwrap(),
            vec![b'z'; 2 << 20]
        );
    }
}

#[test]
fn a_file_changing_while_read_is_archived_and_listed_as_changed() {
    let env = Env::new();
    let app = env.path("one");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("growing.log"), vec![b'a'; 3 << 20]).unwrap();
    let out = run_paused(
        &env,
        "backup.read-file",
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
        |_| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(app.join("growing.log"))
                .unwrap();
            std::io::Write::write_all(&mut f, b"appended while reading\n").unwrap();
        },
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let changed = &doc["report"]["trailer"]["changed"][0];
    assert_eq!(changed["path"], "one/growing.log");
    assert!(
        changed["detail"].as_str().unwrap().contains("changed size"),
        "{changed}"
    );
    // The archive is valid: it holds the file as it was first seen.
    let id = doc["report"]["backup"]["id"].as_str().unwrap();
    env.cmd().args(["verify", id]).assert().success();
}

#[test]
fn an_unreadable_file_is_skipped_with_exit_3() {
    let env = Env::new();
    let app = env.small_app("svc");
    let mut cmd = env.std_cmd();
    cmd.env("BACKSTOP_FAILPOINTS", "backup.read-file=error")
        .args(["--json", "backup"])
        .arg(&app);
    let out = spawn(cmd).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["report"]["trailer"]["unreadable"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(doc["report"]["backup"]["files"], 0);
}

/// A file whose extended attributes cannot be listed (more names than the
/// kernel gives in one list) is unreadable, exit 3, not stored as though
/// it had none.
#[test]
fn a_file_whose_extended_attributes_cannot_be_read_is_unreadable() {
    if !root("mount a tmpfs") {
        return;
    }
    let fs = Tmpfs::mount(16 << 20);
    let app = fs.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("plain"), b"fine").unwrap();
    let many = app.join("many");
    std::fs::write(&many, b"labelled to excess").unwrap();
    // 300 names of 250 bytes: past the 64 KiB a list may hold.
    for i in 0..300 {
        let name = format!("user.{i:03}{}", "x".repeat(242));
        if rustix::fs::setxattr(&many, name.as_str(), b"1", rustix::fs::XattrFlags::empty())
            .is_err()
        {
            backstop_test_support::skip("this tmpfs takes no user. extended attributes");
            return;
        }
    }
    let env = Env::new();
    let out = env
        .std_cmd()
        .args(["--json", "backup"])
        .arg(&app)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unreadable = doc["report"]["trailer"]["unreadable"].to_string();
    assert!(unreadable.contains("many"), "{doc}");
    assert!(unreadable.contains("extended attributes"), "{doc}");
    assert_eq!(doc["report"]["backup"]["files"], 1, "{doc}");
}

#[test]
fn a_file_without_read_permission_is_skipped_with_exit_3() {
    if !root("run backstop as another user") || !have("setpriv") {
        return;
    }
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = env.small_app("svc");
    std::fs::write(app.join("data/locked"), b"no").unwrap();
    std::fs::set_permissions(
        app.join("data/locked"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let home = env.home();
    std::fs::create_dir_all(&home).unwrap();
    rustix::fs::chown(
        &home,
        Some(rustix::process::Uid::from_raw(65534)),
        Some(rustix::process::Gid::from_raw(65534)),
    )
    .unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::support::bin())
        .arg("--home")
        .arg(&home)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", env.path("xdg"))
        .arg("backup")
        .arg(&app)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("unreadable svc/data/locked"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn sockets_and_fifos_are_skipped_with_a_note_but_no_failure() {
    let env = Env::new();
    let app = env.small_app("svc");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        app.join("data/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let out = env.cmd().arg("backup").arg(&app).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped svc/data/pipe: FIFO"));
}

#[test]
fn an_interrupt_leaves_no_archive_and_a_failed_row() {
    let env = Env::new();
    let app = big_app(&env, "svc", 8, 1 << 20);
    let out = run_paused(
        &env,
        "backup.sink-write",
        &["backup".as_ref(), app.as_os_str()],
        |child| {
            signal(child, Signal::INT);
            std::thread::sleep(Duration::from_millis(100));
        },
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(only_complete_archives(&env.home().join("backups/svc")).is_empty());
    let rows = env.list();
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["error"], "interrupted");
}

#[test]
fn kill_9_while_writing_leaves_no_archive_and_the_row_is_repaired() {
    let env = Env::new();
    let app = big_app(&env, "svc", 8, 1 << 20);
    let pause = Pause::new(&env, "sink");
    let mut cmd = env.std_cmd();
    cmd.env("BACKSTOP_FAILPOINTS", pause.at("backup.sink-write"))
        .arg("backup")
        .arg(&app);
    let mut child = spawn(cmd);
    pause.wait_reached(&mut child);

    // The archive exists only as an unnamed, private inode while it is written.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id())).unwrap();
    let mut seen = false;
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.starts_with(env.home().join("backups")) {
            let meta = std::fs::metadata(fd.path()).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600, "archive mode while writing");
            assert!(
                target.to_string_lossy().contains("(deleted)")
                    || target.to_string_lossy().contains('#'),
                "{target:?}"
            );
            seen = true;
        }
    }
    assert!(
        seen,
        "the archive being written was not found among the open files"
    );

    signal(&child, Signal::KILL);
    child.wait().unwrap();
    assert!(only_complete_archives(&env.home().join("backups/svc")).is_empty());
    // The next command sees the lock is free and repairs the row.
    let rows = env.list();
    assert_eq!(rows[0]["status"], "failed");
    assert!(rows[0]["error"].as_str().unwrap().contains("interrupted"));
    // And backups work again.
    env.cmd()
        .arg("-q")
        .arg("backup")
        .arg(&app)
        .assert()
        .success();
}

#[test]
fn dying_after_the_archive_is_named_leaves_no_archive_once_repaired() {
    for point in [
        "backup.after-rename",
        "backup.after-sidecar",
        "backup.before-available",
    ] {
        let env = Env::new();
        let app = env.small_app("svc");
        env.cmd()
            .env("BACKSTOP_FAILPOINTS", format!("{point}=abort"))
            .arg("backup")
            .arg(&app)
            .assert()
            .failure();
        // The process died with its archive named: a later command repairs.
        let rows = env.list();
        assert_eq!(rows[0]["status"], "failed", "{point}");
        assert!(
            Env::files_in(&env.home().join("backups/svc")).is_empty(),
            "{point}: {:?}",
            Env::files_in(&env.home().join("backups/svc"))
        );
    }
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_half_backup() {
    let env = Env::new();
    let app = big_app(&env, "svc", 24, 1 << 20);
    let delays = [0u64, 5, 15, 30, 60, 90, 120, 200, 300, 450];
    for ms in delays {
        let mut cmd = env.std_cmd();
        cmd.arg("-q").arg("backup").arg(&app);
        let mut child = spawn(cmd);
        std::thread::sleep(Duration::from_millis(ms));
        signal(&child, Signal::KILL);
        child.wait().unwrap();
        // Every archive on disk is a backup the catalog calls available and
        // that verifies; every available backup has its archive. (`list`
        // first: it repairs what the killed process left, as any later
        // command does.)
        let rows = env.list();
        let names = only_complete_archives(&env.home().join("backups/svc"));
        for row in &rows {
            let status = row["status"].as_str().unwrap();
            assert!(status == "available" || status == "failed", "{row}");
            if status == "available" {
                let loc = PathBuf::from(row["location"].as_str().unwrap());
                assert!(loc.exists(), "available but missing: {row}");
            }
        }
        let available = rows.iter().filter(|r| r["status"] == "available").count();
        assert_eq!(
            names.len(),
            available * 2,
            "after {ms} ms: {names:?} vs {rows:?}"
        );
    }
    env.cmd().args(["verify", "--all"]).assert().success();
}

#[test]
fn a_failure_at_each_commit_step_leaves_no_archive() {
    for point in [
        "backup.after-manifest",
        "backup.sink-write",
        "backup.after-payload",
        "backup.before-commit",
        "backup.after-rename",
        "backup.after-sidecar",
        "backup.before-available",
    ] {
        let env = Env::new();
        let app = env.small_app("svc");
        env.cmd()
            .env("BACKSTOP_FAILPOINTS", format!("{point}=error"))
            .arg("backup")
            .arg(&app)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("injected failure"));
        assert!(
            only_complete_archives(&env.home().join("backups/svc")).is_empty(),
            "{point}"
        );
        let rows = env.list();
        assert_eq!(rows.len(), 1, "{point}");
        assert_eq!(rows[0]["status"], "failed", "{point}");
        assert!(
            rows[0]["error"].as_str().unwrap().contains(point),
            "{point}: {}",
            rows[0]
        );
    }
}

#[test]
fn a_second_backup_of_the_same_instance_fails_with_exit_6_naming_the_holder() {
    let env = Env::new();
    let app = env.small_app("svc");
    let pause = Pause::new(&env, "hold");
    let mut cmd = env.std_cmd();
    cmd.env("BACKSTOP_FAILPOINTS", pause.at("backup.after-scan"))
        .arg("-q")
        .arg("backup")
        .arg(&app);
    let mut first = spawn(cmd);
    pause.wait_reached(&mut first);
    env.cmd()
        .arg("backup")
        .arg(&app)
        .assert()
        .code(6)
        .stderr(predicate::str::contains(format!(
            "locked by PID {}",
            first.id()
        )))
        .stderr(predicate::str::contains("backup svc"))
        .stderr(predicate::str::contains("--wait"));
    // Another instance is not affected.
    let other = env.small_app("other");
    env.cmd()
        .arg("-q")
        .arg("backup")
        .arg(&other)
        .assert()
        .success();
    // --wait queues behind the holder.
    let mut cmd = env.std_cmd();
    cmd.args(["-q", "backup", "--wait=30s"]).arg(&app);
    let second = spawn(cmd);
    std::thread::sleep(Duration::from_millis(300));
    pause.release();
    assert!(first.wait().unwrap().success());
    let out = second.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A short wait gives up with exit 6.
    let mut cmd = env.std_cmd();
    let pause2 = Pause::new(&env, "hold2");
    cmd.env("BACKSTOP_FAILPOINTS", pause2.at("backup.after-scan"))
        .arg("-q")
        .arg("backup")
        .arg(&app);
    let mut third = spawn(cmd);
    pause2.wait_reached(&mut third);
    env.cmd()
        .args(["backup", "--wait=300ms"])
        .arg(&app)
        .assert()
        .code(6);
    pause2.release();
    assert!(third.wait().unwrap().success());
}
