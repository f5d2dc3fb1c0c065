//! `restore`: exact round trips, modes, refusals, hostile archives, and the
//! all-or-nothing guarantee under injected failures and `kill -9`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backstop_test_support::{
    Compare, Tmpfs, assert_same_tree, awkward_tree, have, root, snapshot, supports_user_xattrs,
};
use predicates::prelude::*;
use rustix::process::Signal;

use crate::craft::{Raw, craft, craft_with, manifest};
use crate::support::{Env, copy_tree, kept_why, run_paused, signal, spawn, walk};
use backstop_core::archive::format::SourceManifest;

fn compare_all(env: &Env) -> Compare {
    Compare {
        dir_mtimes: true,
        xattrs: supports_user_xattrs(env.dir.path()),
        sparse: true,
    }
}

/// An awkward tree, backed up, with a reference copy of it as it was.
fn backed_up(env: &Env) -> (PathBuf, PathBuf, String) {
    let app = env.path("app");
    awkward_tree(&app);
    let reference = env.path("reference");
    copy_tree(&app, &reference);
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    (app, reference, id)
}

/// Changes of every kind the exact restore must undo.
fn disturb(app: &Path) {
    std::fs::write(app.join("config/app.toml"), b"changed = true\n").unwrap();
    std::fs::remove_file(app.join("config/.env")).unwrap();
    std::fs::write(app.join("added.txt"), b"new").unwrap();
    std::fs::create_dir_all(app.join("added-dir/inner")).unwrap();
    std::fs::set_permissions(
        app.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(app.join("data/link-to-config")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", app.join("data/link-to-config")).unwrap();
    std::fs::remove_dir_all(app.join("data/empty")).unwrap();
}

fn no_staging_left(dir: &Path) {
    for entry in walk(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".backstop-staging-"),
            "staging left behind: {}",
            entry.display()
        );
    }
}

#[test]
fn exact_restore_gives_back_the_tree_as_it_was() {
    let env = Env::new();
    let (app, reference, id) = backed_up(&env);
    disturb(&app);
    let out = env.cmd().args(["restore", &id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("exact mode"), "{text}");
    assert!(text.contains("deleted"), "{text}");
    assert_same_tree(&reference, &app, compare_all(&env));
    no_staging_left(env.dir.path());
    // Restoring again gives the same state.
    env.cmd().args(["restore", &id]).assert().success();
    assert_same_tree(&reference, &app, compare_all(&env));
    // The history: two restores, each with a safety backup.
    let show = env.json(&["show", &id]);
    let restores = show["show"]["restores"].as_array().unwrap();
    assert_eq!(restores.len(), 2);
    assert!(
        restores
            .iter()
            .all(|r| r["outcome"] == "restored" && r["safety_backup"].is_string())
    );
    assert_eq!(
        show["show"]["backup"]["last_restored_to"],
        app.canonicalize().unwrap().to_str().unwrap()
    );
    env.cmd()
        .args(["show", &id])
        .assert()
        .stdout(predicate::str::contains("Restore history\n"));
}

#[test]
fn the_safety_backup_undoes_a_restore() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    disturb(&app);
    let disturbed = env.path("disturbed");
    copy_tree(&app, &disturbed);
    let doc = env.json(&["restore", &id]);
    let safety = doc["restore"]["safety_backup"]
        .as_str()
        .unwrap()
        .to_string();
    let safety_row = env.json(&["show", &safety]);
    assert_eq!(safety_row["show"]["backup"]["reason"], "pre-restore");
    assert_eq!(safety_row["show"]["backup"]["kind"], "automatic");
    env.cmd().args(["restore", &safety]).assert().success();
    assert_same_tree(&disturbed, &app, compare_all(&env));
}

#[test]
fn dry_run_changes_nothing_then_apply_does_what_it_said() {
    let env = Env::new();
    let (app, reference, id) = backed_up(&env);
    disturb(&app);
    let before = snapshot(&app, compare_all(&env));
    let rows = env.list().len();
    let doc = env.json(&["restore", &id, "--dry-run", "--yes"]);
    let plan = &doc["restore"]["plan"];
    assert_eq!(doc["restore"]["outcome"], "dry-run");
    assert_eq!(plan["mode"], "exact");
    assert!(plan["totals"]["delete"].as_u64().unwrap() >= 2, "{plan}");
    let deleted: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "delete")
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert!(
        deleted.iter().any(|p| p.ends_with("/added.txt")),
        "{deleted:?}"
    );
    assert_eq!(
        snapshot(&app, compare_all(&env)),
        before,
        "the dry run changed the tree"
    );
    assert_eq!(env.list().len(), rows, "the dry run made a safety backup");
    assert!(!env.home().join("journal").exists());
    let done = env.json(&["restore", &id, "--yes"]);
    assert_same_tree(&reference, &app, compare_all(&env));
    // The plan said what the restore did, hard links included: the second
    // names of a file that did not change are not "replaced".
    let paths = |doc: &serde_json::Value, action: &str| -> Vec<String> {
        doc["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == action)
            .map(|a| a["path"].as_str().unwrap().to_string())
            .collect()
    };
    let did = &done["restore"]["plan"];
    for action in ["create", "replace", "delete", "keep"] {
        assert_eq!(paths(plan, action), paths(did, action), "{action}");
    }
    assert_eq!(plan["totals"], did["totals"]);
}

#[test]
fn symlinks_and_empty_directories_survive_a_restore_into_a_fresh_directory() {
    let env = Env::new();
    let (_app, reference, id) = backed_up(&env);
    let fresh = env.path("elsewhere/new-root");
    env.cmd()
        .args(["restore", &id, "--dest"])
        .arg(&fresh)
        .assert()
        .success();
    assert_same_tree(&reference, &fresh, compare_all(&env));
    // Disaster recovery from the file alone, with the seed's --path spelling.
    let archive = env.list().iter().find(|r| r["id"] == id.as_str()).unwrap()["location"]
        .as_str()
        .unwrap()
        .to_string();
    let other = env.path("dr");
    env.cmd()
        .args(["backup", "restore", &archive, "--path"])
        .arg(&other)
        .assert()
        .success();
    assert_same_tree(&reference, &other, compare_all(&env));
}

#[test]
fn safe_mode_writes_only_missing_files_and_reports_conflicts() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    let other = env.path("other");
    std::fs::create_dir_all(other.join("config")).unwrap();
    std::fs::write(other.join("config/app.toml"), b"mine\n").unwrap();
    std::fs::write(other.join("local.txt"), b"keep me").unwrap();
    let doc = env.json(&["restore", &id, "--dest", other.to_str().unwrap()]);
    let plan = &doc["restore"]["plan"];
    assert_eq!(
        plan["mode"], "safe",
        "safe is the default into another directory"
    );
    assert!(plan["totals"]["conflict"].as_u64().unwrap() >= 1, "{plan}");
    assert_eq!(
        std::fs::read(other.join("config/app.toml")).unwrap(),
        b"mine\n"
    );
    assert_eq!(std::fs::read(other.join("local.txt")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(other.join("config/.env")).unwrap(),
        std::fs::read(app.join("config/.env")).unwrap()
    );
    assert!(other.join("data/empty/nested").is_dir());
    let conflicts: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "conflict")
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert!(
        conflicts.iter().any(|p| p.ends_with("config/app.toml")),
        "{conflicts:?}"
    );
    // The text report names them too, without -v.
    std::fs::remove_file(other.join("config/.env")).unwrap();
    env.cmd()
        .args(["restore", &id, "--yes", "--dest", other.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"conflict +\S*config/app\.toml").unwrap());
}

#[test]
fn merge_mode_keeps_bak_copies_of_what_it_replaces() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    let original = std::fs::read(app.join("config/app.toml")).unwrap();
    std::fs::write(app.join("config/app.toml"), b"edited\n").unwrap();
    std::fs::write(app.join("local.txt"), b"stays").unwrap();
    env.cmd()
        .args(["restore", &id, "--mode", "merge"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(app.join("config/app.toml")).unwrap(),
        original
    );
    let baks: Vec<PathBuf> = std::fs::read_dir(app.join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("app.toml.bak-")
        })
        .collect();
    assert_eq!(baks.len(), 1, "{baks:?}");
    assert_eq!(std::fs::read(&baks[0]).unwrap(), b"edited\n");
    assert_eq!(std::fs::read(app.join("local.txt")).unwrap(), b"stays");
}

#[test]
fn excluded_paths_are_left_as_they_are() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    std::fs::write(app.join("config/app.toml"), b"live config\n").unwrap();
    std::fs::write(app.join("data/big.bin"), b"live data").unwrap();
    // config/app.toml has two more names outside config/: they cannot be
    // restored without it, so they are left as they are, with a warning.
    env.cmd()
        .args(["restore", &id, "--exclude", "config/"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("app-hardlink.toml: left as it is"));
    assert_eq!(
        std::fs::read(app.join("config/app.toml")).unwrap(),
        b"live config\n",
        "kept"
    );
    assert_eq!(
        std::fs::read(app.join("data/app-hardlink.toml")).unwrap(),
        b"live config\n",
        "kept, not deleted"
    );
    assert_ne!(
        std::fs::read(app.join("data/big.bin")).unwrap(),
        b"live data",
        "restored"
    );
}

#[test]
fn what_no_backup_holds_is_kept_by_an_exact_restore() {
    // backstop's own home (with its store) inside the tree, a directory
    // tagged CACHEDIR.TAG and a FIFO: the backup leaves each out, so the
    // exact restore keeps each, in its plan and in what it does.
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("docs")).unwrap();
    std::fs::write(app.join("docs/d"), b"d").unwrap();
    std::fs::create_dir_all(app.join("proj/build")).unwrap();
    std::fs::write(
        app.join("proj/build/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    std::fs::write(app.join("proj/build/out.o"), b"object").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        app.join("docs/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let home = app.join(".local/share/backstop");
    let backstop = |args: &[&str]| {
        let mut cmd = env.cmd_with_home(&home);
        cmd.args(args);
        cmd.output().unwrap()
    };
    let out = backstop(&["--json", "backup", app.to_str().unwrap()]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = doc["report"]["backup"]["id"].as_str().unwrap().to_string();
    std::fs::write(app.join("docs/d"), b"changed").unwrap();
    let plan = backstop(&["--json", "restore", &id, "--dry-run"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let totals = &plan["restore"]["plan"]["totals"];
    assert_eq!(totals["delete"], 0, "{plan}");
    assert_eq!(totals["keep"], 3, "{plan}");
    // Each with its own reason.
    let mut why = kept_why(&plan);
    why.sort();
    assert_eq!(
        why,
        [
            ".local/share/backstop (backstop)",
            "docs/pipe (special)",
            "proj/build (cache)",
        ],
        "{plan}"
    );
    let text = backstop(&["restore", &id, "--dry-run"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("/docs/pipe  (special file)\n"), "{text}");
    assert!(text.contains("/proj/build/  (CACHEDIR.TAG)\n"), "{text}");
    let out = backstop(&["restore", &id, "--yes"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(app.join("docs/d")).unwrap(), b"d");
    assert_eq!(
        std::fs::read(app.join("proj/build/out.o")).unwrap(),
        b"object"
    );
    assert!(app.join("docs/pipe").exists(), "the FIFO is kept");
    // The home is whole: both backups and the safety backup are listed.
    let out = backstop(&["--json", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["backups"].as_array().unwrap().len(), 2, "{list}");
}

#[test]
fn a_tampered_archive_or_sidecar_is_refused_with_the_tree_untouched() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    disturb(&app);
    let before = snapshot(&app, compare_all(&env));
    let archive = PathBuf::from(
        env.list().iter().find(|r| r["id"] == id.as_str()).unwrap()["location"]
            .as_str()
            .unwrap(),
    );
    // A wrong sidecar.
    let sidecar = PathBuf::from(format!("{}.sha256", archive.display()));
    let good_sidecar = std::fs::read(&sidecar).unwrap();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(&sidecar, format!("{}  {name}\n", "0".repeat(64))).unwrap();
    env.cmd()
        .args(["restore", &id])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("sidecar"));
    std::fs::write(&sidecar, good_sidecar).unwrap();
    // A tampered member, with the sidecar and catalog made to match: only the
    // inner checksums see it.
    let copy = env.path("copy.tar.zst");
    std::fs::copy(&archive, &copy).unwrap();
    let mut data = std::fs::read(&copy).unwrap();
    let len = data.len();
    data[len / 2] ^= 0x01;
    std::fs::write(&copy, &data).unwrap();
    env.cmd()
        .args(["restore"])
        .arg(&copy)
        .args(["--dest"])
        .arg(&app)
        .assert()
        .code(4);
    assert_eq!(snapshot(&app, compare_all(&env)), before);
    no_staging_left(env.dir.path());
    assert!(!env.home().join("journal/app.json").exists());
}

/// Without a service to stop or a safety backup to take, the archive is
/// checked against its recorded SHA-256 by the one read that stages it, not
/// before: a substituted archive (catalog and sidecar both naming another
/// SHA-256, every member intact) is still refused before anything is
/// replaced.
#[test]
fn without_services_or_a_safety_backup_the_staging_read_is_the_checksum_check() {
    if !have("sqlite3") {
        return;
    }
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    let archive = PathBuf::from(
        env.list().iter().find(|r| r["id"] == id.as_str()).unwrap()["location"]
            .as_str()
            .unwrap(),
    );
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    let other = "ab".repeat(32);
    std::fs::write(
        format!("{}.sha256", archive.display()),
        format!("{other}  {name}\n"),
    )
    .unwrap();
    let set = std::process::Command::new("sqlite3")
        .arg(env.home().join("catalog.db"))
        .arg(format!(
            "UPDATE backups SET sha256 = '{other}' WHERE id = '{id}';"
        ))
        .status()
        .unwrap();
    assert!(set.success());
    let dest = env.path("elsewhere");
    // The plan alone is checked first: nothing is staged to check it.
    env.cmd()
        .args(["restore", &id, "--dest"])
        .arg(&dest)
        .arg("--dry-run")
        .assert()
        .code(4)
        .stderr(predicate::str::contains(&other));
    env.cmd()
        .args(["restore", &id, "--no-pre-backup", "--yes", "--dest"])
        .arg(&dest)
        .assert()
        .code(4)
        .stderr(predicate::str::contains(&other));
    assert!(
        !dest.exists() || std::fs::read_dir(&dest).unwrap().next().is_none(),
        "nothing restored"
    );
    no_staging_left(env.dir.path());
    // In place, a safety backup comes first: so does the check.
    let out = env.cmd().args(["restore", &id, "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let listed = env.list();
    assert_eq!(listed.len(), 1, "no safety backup was taken: {listed:?}");
    assert!(app.exists());
}

#[test]
fn hostile_archives_are_refused_and_nothing_is_written_outside() {
    let env = Env::new();
    let dest = env.path("dest");
    let outside = env.path("outside");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let cases: Vec<(&str, Vec<Raw>)> = vec![
        (
            "absolute",
            vec![Raw::Dir(b"app"), Raw::File(b"/tmp/backstop-pwned", b"x")],
        ),
        (
            "dotdot",
            vec![
                Raw::Dir(b"app"),
                Raw::File(b"app/../../outside/pwned", b"x"),
            ],
        ),
        (
            "outside-sources",
            vec![Raw::Dir(b"app"), Raw::File(b"other/pwned", b"x")],
        ),
        (
            "symlink-then-write-through",
            vec![
                Raw::Dir(b"app"),
                Raw::Symlink(b"app/esc", b"../../outside"),
                Raw::File(b"app/esc/pwned", b"x"),
            ],
        ),
        (
            "hardlink-outside",
            vec![
                Raw::Dir(b"app"),
                Raw::HardLink(b"app/h", b"../outside/secret"),
            ],
        ),
        (
            "hardlink-through-symlink",
            vec![
                Raw::Dir(b"app"),
                Raw::Symlink(b"app/esc", b"/etc"),
                Raw::HardLink(b"app/h", b"app/esc/passwd"),
            ],
        ),
        ("device", vec![Raw::Dir(b"app"), Raw::Device(b"app/null")]),
        (
            "duplicate",
            vec![
                Raw::Dir(b"app"),
                Raw::File(b"app/a", b"1"),
                Raw::Symlink(b"app/a", b"/etc/passwd"),
            ],
        ),
    ];
    for (name, entries) in cases {
        let archive = craft(
            env.dir.path(),
            &format!("app-hostile-{name}"),
            &dest,
            &entries,
        );
        env.cmd().arg("verify").arg(&archive).assert().code(4);
        env.cmd()
            .args(["restore"])
            .arg(&archive)
            .args(["--yes", "--no-pre-backup"])
            .assert()
            .code(4)
            .stderr(predicate::str::contains("unsafe").or(predicate::str::contains("hostile")));
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "{name}: wrote outside"
        );
        assert!(!Path::new("/tmp/backstop-pwned").exists(), "{name}");
        assert!(
            std::fs::read_dir(&dest).unwrap().next().is_none(),
            "{name}: wrote into the destination"
        );
        no_staging_left(env.dir.path());
    }
    // A well-formed crafted archive restores, so the cases above fail for
    // their content alone.
    let good = craft(
        env.dir.path(),
        "app-good",
        &dest,
        &[Raw::Dir(b"app"), Raw::File(b"app/ok", b"fine")],
    );
    env.cmd().arg("restore").arg(&good).assert().success();
    assert_eq!(std::fs::read(dest.join("ok")).unwrap(), b"fine");
}

#[test]
fn a_failure_at_any_step_puts_the_previous_state_back_with_no_residue() {
    for point in [
        "restore.before-stage",
        "restore.after-stage",
        "restore.apply-step",
        "restore.before-commit",
    ] {
        let env = Env::new();
        let (app, _reference, id) = backed_up(&env);
        disturb(&app);
        let before = snapshot(&app, compare_all(&env));
        env.cmd()
            .env("BACKSTOP_FAILPOINTS", format!("{point}=error"))
            .args(["restore", &id])
            .assert()
            .code(5)
            .stderr(predicate::str::contains("rolled back"));
        assert_eq!(snapshot(&app, compare_all(&env)), before, "{point}");
        no_staging_left(env.dir.path());
        assert!(!env.home().join("journal/app.json").exists(), "{point}");
        let restores = env.json(&["show", &id])["show"]["restores"].clone();
        assert_eq!(restores[0]["outcome"], "rolled-back", "{point}");
    }
}

#[test]
fn after_the_commit_point_a_failure_still_completes() {
    let env = Env::new();
    let (app, reference, id) = backed_up(&env);
    disturb(&app);
    // Dies right after the commit point: the next command finishes the job.
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "restore.after-commit=abort")
        .args(["restore", &id])
        .assert()
        .failure();
    assert!(env.home().join("journal/app.json").exists());
    env.cmd()
        .arg("recover")
        .assert()
        .success()
        .stdout(predicate::str::contains("was completed"));
    assert_same_tree(&reference, &app, compare_all(&env));
    no_staging_left(env.dir.path());
}

#[test]
fn kill_9_at_random_moments_then_recover_gives_old_or_new_exactly() {
    let env = Env::new();
    let app = env.path("app");
    awkward_tree(&app);
    for i in 0..40 {
        std::fs::write(
            app.join(format!("data/f{i:02}.bin")),
            vec![i as u8; 256 << 10],
        )
        .unwrap();
    }
    let reference = env.path("reference");
    copy_tree(&app, &reference);
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    disturb(&app);
    let disturbed = env.path("disturbed");
    copy_tree(&app, &disturbed);
    let opts = Compare {
        dir_mtimes: false,
        ..compare_all(&env)
    };
    for ms in [0u64, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400] {
        let mut cmd = env.std_cmd();
        cmd.args(["-q", "restore", &id, "--no-pre-backup"]);
        let mut child = spawn(cmd);
        std::thread::sleep(Duration::from_millis(ms));
        signal(&child, Signal::KILL);
        child.wait().unwrap();
        env.cmd().arg("-q").arg("recover").assert().success();
        let (now, _) = snapshot(&app, opts);
        let (old, _) = snapshot(&disturbed, opts);
        let (new, _) = snapshot(&reference, opts);
        assert!(
            now == old || now == new,
            "after kill at {ms} ms the tree is neither the old nor the new state"
        );
        no_staging_left(env.dir.path());
        if now == new {
            // Put the disturbed state back for the next round.
            std::fs::remove_dir_all(&app).unwrap();
            copy_tree(&disturbed, &app);
        }
    }
}

#[test]
fn an_interrupted_restore_is_recorded_as_such() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    disturb(&app);
    let before = snapshot(&app, compare_all(&env));
    // Dies during the safety backup, before the restore changed anything.
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "backup.after-scan=abort")
        .args(["restore", &id])
        .assert()
        .failure();
    env.cmd().arg("-q").arg("recover").assert().success();
    assert_eq!(snapshot(&app, compare_all(&env)), before);
    // Any command taking the lock repairs the record; `show` then says so.
    env.cmd().args(["-q", "recover", "app"]).assert().success();
    let restores = env.json(&["show", &id])["show"]["restores"].clone();
    assert_eq!(restores[0]["outcome"], "interrupted", "{restores}");
}

#[test]
fn a_held_lock_fails_with_exit_6() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    let out = run_paused(
        &env,
        "backup.after-scan",
        &["backup".as_ref(), app.as_os_str()],
        |_| {
            env.cmd()
                .args(["restore", &id])
                .assert()
                .code(6)
                .stderr(predicate::str::contains("locked by PID"));
        },
    );
    assert!(out.status.success());
}

#[test]
fn a_destination_too_small_is_refused_before_anything_is_written() {
    if !root("mount a small tmpfs") {
        return;
    }
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("big.bin"), vec![1u8; 24 << 20]).unwrap();
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    let small = Tmpfs::mount(8 << 20);
    env.cmd()
        .args(["restore", &id, "--dest"])
        .arg(small.path().join("restored"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not enough free space"))
        .stderr(predicate::str::contains("hint:"));
    assert!(std::fs::read_dir(small.path()).unwrap().next().is_none());
}

#[test]
fn a_safety_backup_the_store_has_no_room_for_is_refused_before_anything_changes() {
    if !root("mount a small tmpfs") {
        return;
    }
    // The home (and so the store) on a small filesystem, with room for the
    // backup but not for a second one of the same size.
    let small = Tmpfs::mount(12 << 20);
    let home = small.path().join("home");
    let app = Env::new();
    let dir = app.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    // Incompressible, so the archive is as big as the file.
    let noise = backstop_test_support::noise(7 << 20, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(dir.join("big.bin"), &noise).unwrap();
    let run = |args: &[&str]| app.cmd_with_home(&home).args(args).output().unwrap();
    let out = run(&["--json", "backup", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = doc["report"]["backup"]["id"].as_str().unwrap().to_string();
    // The current state as big as the backup: a second archive of it does
    // not fit.
    let mut changed = noise.clone();
    changed[0] ^= 1;
    std::fs::write(dir.join("big.bin"), &changed).unwrap();
    let out = run(&["restore", &id, "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("for the safety backup"), "{stderr}");
    assert!(stderr.contains("--no-pre-backup"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("big.bin")).unwrap(), changed);
    // Refused before the safety backup was tried: no failed row for it.
    let out = run(&["--json", "list"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows["backups"].as_array().unwrap().len(), 1, "{rows}");
    // Without a safety backup there is room.
    let out = run(&["restore", &id, "--yes", "--no-pre-backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dir.join("big.bin")).unwrap(), noise);
}

#[test]
fn requests_that_cannot_be_right_are_refused() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    env.cmd()
        .args(["restore", &id, "--instance", "other"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("belongs to instance app"));
    env.cmd()
        .args(["restore", &id, "--only", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("its sources are: app"));
    let foreign = env.path("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious"), b"x").unwrap();
    env.cmd()
        .args(["restore", &id, "--mode", "exact", "--dest"])
        .arg(&foreign)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--force"));
    assert!(foreign.join("precious").exists());
    env.cmd()
        .args(["restore", "no-such-backup"])
        .assert()
        .code(1);
    let _ = app;
}

#[test]
fn owners_come_back_by_number() {
    if !root("change owners") {
        return;
    }
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("d")).unwrap();
    std::fs::write(app.join("d/f"), b"x").unwrap();
    let (u, g) = (
        rustix::process::Uid::from_raw(4321),
        rustix::process::Gid::from_raw(8765),
    );
    rustix::fs::chown(app.join("d/f"), Some(u), Some(g)).unwrap();
    rustix::fs::chown(app.join("d"), Some(u), Some(g)).unwrap();
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    rustix::fs::chown(
        app.join("d/f"),
        Some(rustix::process::Uid::ROOT),
        Some(rustix::process::Gid::ROOT),
    )
    .unwrap();
    env.cmd()
        .args(["-q", "restore", &id])
        .assert()
        .success()
        .stdout("");
    use std::os::unix::fs::MetadataExt;
    for p in ["d", "d/f"] {
        let m = std::fs::symlink_metadata(app.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 8765), "{p}");
    }
}

#[test]
fn set_uid_and_set_gid_bits_are_dropped_unless_root() {
    if !root("run backstop as another user") || !backstop_test_support::have("setpriv") {
        return;
    }
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(app.join("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let archive = env.path("out.tar.zst");
    env.cmd()
        .arg("-q")
        .arg("backup")
        .arg(&app)
        .arg("--output")
        .arg(&archive)
        .assert()
        .success();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(
        env.path("out.tar.zst.sha256"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let home = env.path("nobody-home");
    let dest = env.path("dest");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::support::bin())
        .arg("--home")
        .arg(&home)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", env.path("xdg"))
        .args(["-q", "restore"])
        .arg(&archive)
        .arg("--dest")
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(dest.join("tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
}

#[test]
fn a_symlink_in_the_destination_is_never_written_through() {
    for mode in ["merge", "safe"] {
        let env = Env::new();
        let app = env.path("app");
        std::fs::create_dir_all(app.join("data")).unwrap();
        std::fs::write(app.join("data/db"), b"backed up").unwrap();
        let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
        // The destination's `data` is now a symlink to a directory elsewhere.
        let elsewhere = env.path("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::remove_dir_all(app.join("data")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, app.join("data")).unwrap();
        env.cmd()
            .args(["-q", "restore", &id, "--mode", mode])
            .assert()
            .success();
        assert!(
            std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
            "{mode}: wrote through the symlink"
        );
        if mode == "merge" {
            assert_eq!(std::fs::read(app.join("data/db")).unwrap(), b"backed up");
            assert!(
                !app.join("data")
                    .symlink_metadata()
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        } else {
            assert!(
                app.join("data")
                    .symlink_metadata()
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "safe leaves it"
            );
        }
    }
}

#[test]
fn a_restore_checks_every_file_against_the_inner_checksums() {
    let env = Env::new();
    let app = env.small_app("svc");
    let original = env.path("original.tar");
    env.cmd()
        .arg("-q")
        .arg("backup")
        .arg(&app)
        .arg("--output")
        .arg(&original)
        .assert()
        .success();
    // A copy the catalog does not know, with one byte of a file's content
    // changed and a matching sidecar: neither the codec (there is none), the
    // sidecar nor the catalog can tell.
    let archive = env.path("plain.tar");
    std::fs::copy(&original, &archive).unwrap();
    // Change one byte of a file's content and write a matching sidecar:
    // neither the codec (there is none) nor the sidecar can tell.
    let mut data = std::fs::read(&archive).unwrap();
    let at = data.windows(12).position(|w| w == b"TOKEN=secret").unwrap();
    data[at] = b'X';
    std::fs::write(&archive, &data).unwrap();
    let sum = std::process::Command::new("sha256sum")
        .arg("plain.tar")
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    std::fs::write(env.path("plain.tar.sha256"), &sum.stdout).unwrap();
    let dest = env.path("dest");
    for extra in [
        &[][..],
        &["--only", "svc"][..],
        &["--exclude", "config/"][..],
    ] {
        let mut cmd = env.cmd();
        cmd.arg("restore")
            .arg(&archive)
            .arg("--dest")
            .arg(&dest)
            .args(extra);
        cmd.assert().code(4).stderr(predicate::str::contains(
            "svc/config/.env does not match its checksum",
        ));
        assert!(!dest.exists(), "nothing was written");
        no_staging_left(env.dir.path());
    }
}

#[test]
fn a_bad_volume_name_in_a_manifest_is_named_with_the_next_step() {
    let env = Env::new();
    let root = env.path("vol-root");
    std::fs::create_dir_all(&root).unwrap();
    for (origin, shown) in [
        (
            "podman volume -rf",
            "names `-rf` as the volume of source vol",
        ),
        (
            "podman volume ",
            "names no volume as the volume of source vol",
        ),
        ("a volume", "names no volume as the volume of source vol"),
    ] {
        let source = SourceManifest {
            name: "vol".into(),
            kind: "volume".into(),
            path: String::new(),
            origin: origin.into(),
            restore: "podman volume import".into(),
            file: Some("vol.tar".into()),
            volume: None,
        };
        let id = format!("app-vol-{}", origin.len());
        let archive = craft_with(
            env.dir.path(),
            &manifest(&id, "app", &root, vec![source]),
            &[Raw::Dir(b"vol"), Raw::File(b"vol/vol.tar", b"")],
        );
        // Restored in place (its own root): the volume would be imported.
        let out = env
            .cmd()
            .arg("restore")
            .arg(&archive)
            .args(["--yes", "--no-pre-backup"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{origin}: {stderr}");
        // Before, it read "error:  is corrupt: …", naming neither the
        // archive nor the volume.
        assert!(
            stderr.contains(&format!("error: {} {shown}", archive.display())),
            "{origin}: {stderr}"
        );
        assert!(
            stderr.contains("hint: name the volume to import into in the config")
                && stderr.contains("--dest DIR"),
            "{origin}: {stderr}"
        );
    }
}

/// Issue 10, item 8: an archive whose directory entry comes after its
/// files (not how backstop writes, but what a hand-made tar may hold) is
/// refused by verify exactly as by restore, so nothing that verifies fails
/// to restore. The same entries in order verify and restore.
#[test]
fn verify_and_restore_agree_on_a_directory_after_its_files() {
    let env = Env::new();
    let dest = env.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let late = craft(
        env.dir.path(),
        "app-late-dir",
        &dest,
        &[
            Raw::Dir(b"app"),
            Raw::File(b"app/sub/f", b"x"),
            Raw::Dir(b"app/sub"),
        ],
    );
    env.cmd()
        .arg("verify")
        .arg(&late)
        .assert()
        .code(4)
        .stdout(predicate::str::contains("out of order"));
    env.cmd()
        .arg("restore")
        .arg(&late)
        .args(["--yes", "--no-pre-backup"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("out of order"));
    assert!(std::fs::read_dir(&dest).unwrap().next().is_none());
    let ordered = craft(
        env.dir.path(),
        "app-ordered",
        &dest,
        &[
            Raw::Dir(b"app"),
            Raw::Dir(b"app/sub"),
            Raw::File(b"app/sub/f", b"x"),
            Raw::File(b"app/sub.txt", b"y"),
        ],
    );
    env.cmd().arg("verify").arg(&ordered).assert().success();
    env.cmd()
        .arg("restore")
        .arg(&ordered)
        .args(["--yes", "--no-pre-backup"])
        .assert()
        .success();
    assert_eq!(std::fs::read(dest.join("sub/f")).unwrap(), b"x");
}

/// The command in a restore report's `(`…` undoes this restore)`.
fn printed_undo(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find("(`").map(|i| i + 2);
    let end = text.find("` undoes this restore)");
    match (start, end) {
        (Some(s), Some(e)) if s < e => text[s..e].to_string(),
        _ => panic!("no way back printed: {text}"),
    }
}

/// Runs `command` as a person would paste it into a shell in the test's
/// directory: `backstop` on the PATH, the test's home and config.
fn run_pasted(env: &Env, command: &str) -> std::process::Output {
    let bin_dir = crate::support::bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    std::process::Command::new("sh")
        .args(["-c", command])
        .current_dir(env.dir.path())
        .env("PATH", path)
        .env("BACKSTOP_HOME", env.home())
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("BACKSTOP_FAILPOINTS")
        .env("XDG_CONFIG_HOME", env.path("xdg-config"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn the_printed_way_back_restores_the_destination_not_the_instance_root() {
    let env = Env::new();
    let app = env.small_app("app");
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.app]\nroot = \"{}\"\n[instances.app.sources]\nconfig = \"config\"\ndata = \"data\"\n",
            app.display()
        ),
    )
    .unwrap();
    env.cmd().args(["backup", "app"]).assert().success();
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    // Another directory with a config of its own and no data yet.
    let other = env.path("other");
    std::fs::create_dir_all(other.join("config")).unwrap();
    std::fs::write(other.join("config/app.toml"), b"mine\n").unwrap();
    std::fs::write(other.join("local.txt"), b"not the app's").unwrap();
    let before = env.path("other-before");
    copy_tree(&other, &before);
    let opts = Compare {
        dir_mtimes: false,
        xattrs: false,
        sparse: false,
    };
    let app_before = snapshot(&app, opts);

    for mode in ["merge", "safe"] {
        let out = env
            .cmd()
            .args(["restore", &id, "--mode", mode, "--yes", "--dest"])
            .arg(&other)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(other.join("data/db.sqlite").is_file(), "{mode}: restored");
        let undo = printed_undo(&out.stdout);
        let safety = env.list()[0].clone();
        assert_eq!(safety["reason"], "pre-restore");
        assert_eq!(
            safety["origin"],
            other.canonicalize().unwrap().to_str().unwrap(),
            "the safety backup records the directory it was taken of"
        );
        let back = run_pasted(&env, &undo);
        assert!(
            back.status.success(),
            "{mode}: `{undo}` failed: {}{}",
            String::from_utf8_lossy(&back.stdout),
            String::from_utf8_lossy(&back.stderr)
        );
        assert!(
            String::from_utf8_lossy(&back.stdout)
                .contains(&format!("into {}", other.canonicalize().unwrap().display())),
            "{}",
            String::from_utf8_lossy(&back.stdout)
        );
        assert_same_tree(&before, &other, opts);
        assert_eq!(snapshot(&app, opts), app_before, "the instance's root");
    }
}

#[test]
fn a_destination_that_is_a_file_is_refused_before_anything_changes() {
    let env = Env::new();
    let app = env.small_app("app");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    let file = env.path("notes.txt");
    std::fs::write(&file, b"mine\n").unwrap();
    let rows = env.list().len();
    for extra in [
        &["--yes"][..],
        &["--dry-run"],
        &["--mode", "merge", "--yes"],
    ] {
        env.cmd()
            .args(["restore", &id, "--dest"])
            .arg(&file)
            .args(extra)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("notes.txt is a file"))
            .stderr(predicate::str::contains(
                "hint: give a directory with --dest DIR",
            ));
        assert_eq!(std::fs::read(&file).unwrap(), b"mine\n");
        assert_eq!(
            env.list().len(),
            rows,
            "{extra:?}: a safety backup was taken"
        );
    }
    assert_eq!(
        Env::files_in(env.dir.path())
            .iter()
            .filter(|n| n.starts_with(".backstop"))
            .count(),
        0
    );
}

#[test]
fn restore_m_is_the_mode_and_full_is_exact() {
    let env = Env::new();
    let app = env.small_app("app");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::fs::write(app.join("config/app.toml"), b"edited\n").unwrap();
    std::fs::write(app.join("local.txt"), b"stays").unwrap();
    // Sindri's `restore FILE -m merge`: a merge, not a note on an exact
    // restore that deletes local.txt.
    env.cmd()
        .args(["restore", &id, "-m", "merge", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(merge mode)"));
    assert_eq!(std::fs::read(app.join("local.txt")).unwrap(), b"stays");
    let baks = Env::files_in(&app.join("config"));
    assert!(
        baks.iter().any(|n| n.starts_with("app.toml.bak-")),
        "{baks:?}"
    );
    let safety = &env.list()[0];
    assert_eq!(safety["reason"], "pre-restore");
    assert_ne!(safety["message"], "merge");
    // A note for the safety backup is long-only; a stray -m TEXT is refused.
    env.cmd()
        .args(["restore", &id, "-m", "before the move", "--yes"])
        .assert()
        .code(2);
    env.cmd()
        .args(["restore", &id, "--mode", "full", "--yes"])
        .args(["--backup-message", "before the full restore"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(exact mode)"));
    assert!(!app.join("local.txt").exists(), "full is exact");
    assert_eq!(env.list()[0]["message"], "before the full restore");
    let help = env.cmd().args(["restore", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("-m, --mode <MODE>"), "{help}");
    assert!(help.contains("`full` is the same"), "{help}");
    assert!(help.contains("      --backup-message <TEXT>"), "{help}");
}

#[test]
fn restore_help_shows_every_spelling_of_the_destination() {
    let env = Env::new();
    let help = env.cmd().args(["restore", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[aliases: --path, --target]"), "{help}");
    // And the spelling works.
    let app = env.small_app("app");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    let fresh = env.path("fresh");
    env.cmd()
        .args(["restore", &id, "--yes", "--target"])
        .arg(&fresh)
        .assert()
        .success();
    assert!(fresh.join("config/app.toml").is_file());
}

#[test]
fn an_excluded_source_is_kept_and_counted_as_kept_not_deleted() {
    let env = Env::new();
    let app = env.small_app("app");
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.app]\nroot = \"{}\"\n[instances.app.sources]\nconfig = \"config\"\ndata = \"data\"\n",
            app.display()
        ),
    )
    .unwrap();
    env.cmd().args(["backup", "app"]).assert().success();
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    std::fs::write(app.join("config/app.toml"), b"live\n").unwrap();
    std::fs::write(app.join("config/new.toml"), b"new\n").unwrap();
    std::fs::write(app.join("data/added.bin"), b"added").unwrap();
    let config = app.canonicalize().unwrap().join("config");
    let args = ["restore", &id, "--exclude", "config/"];

    let doc = env.json(&[&args[..], &["--dry-run"]].concat());
    let plan = &doc["restore"]["plan"];
    let actions = plan["actions"].as_array().unwrap();
    let of = |path: &Path| -> Vec<&str> {
        actions
            .iter()
            .filter(|a| a["path"] == path.to_str().unwrap())
            .map(|a| a["action"].as_str().unwrap())
            .collect()
    };
    assert_eq!(of(&config), ["keep"], "{plan}");
    let why: Vec<&serde_json::Value> = actions.iter().map(|a| &a["why"]).collect();
    assert!(
        why.iter().any(|w| *w == "excluded") && why.iter().all(|w| w.is_null() || *w == "excluded"),
        "{plan}"
    );
    assert_eq!(plan["totals"]["delete"], 1, "only data/added.bin: {plan}");
    assert_eq!(plan["totals"]["keep"], 1, "{plan}");
    let text = env
        .cmd()
        .args(args)
        .arg("--dry-run")
        .output()
        .unwrap()
        .stdout;
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains(&format!("  keep     {}/  (--exclude)\n", config.display())),
        "{text}"
    );
    assert!(text.contains("  1 deleted, "), "{text}");
    assert!(
        !text.contains(&format!("delete   {}", config.display())),
        "{text}"
    );

    // What the restore then does, and reports, is what the plan said.
    let done = env.json(&[&args[..], &["--yes"]].concat());
    assert_eq!(done["restore"]["plan"]["totals"], plan["totals"]);
    assert_eq!(
        std::fs::read(app.join("config/app.toml")).unwrap(),
        b"live\n"
    );
    assert!(app.join("config/new.toml").exists());
    assert!(!app.join("data/added.bin").exists());
}

#[test]
fn a_restore_that_removes_the_current_directory_says_so() {
    let env = Env::new();
    let app = env.small_app("app");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    // A directory the backup does not have: the restore removes it.
    let gone = app.join("gone");
    std::fs::create_dir_all(&gone).unwrap();
    let out = env
        .cmd()
        .current_dir(&gone)
        .args(["restore", &id, "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a note, not a warning: {stderr}"
    );
    assert!(
        stderr.contains("note: this shell's current directory was removed by the restore"),
        "{stderr}"
    );
    assert!(!gone.exists());
    // Elsewhere, in the tree restored in place, or in a directory the
    // restore keeps, nothing is said: the shell's directory is still there.
    for (dir, extra) in [
        (env.dir.path().to_path_buf(), None),
        (app.clone(), None),
        (app.join("data"), None),
        (app.join("config"), Some("config/")),
    ] {
        std::fs::write(app.join("added.txt"), b"x").unwrap();
        let mut cmd = env.cmd();
        cmd.current_dir(&dir).args(["restore", &id, "--yes"]);
        if let Some(glob) = extra {
            cmd.args(["--exclude", glob]);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("current directory"),
            "{}: {stderr}",
            dir.display()
        );
        assert!(!app.join("added.txt").exists());
    }
}

/// A bare archive file whose manifest says it was taken of an earlier
/// restore's destination, for a configured instance, is not sent there on
/// its word (nor into the instance's root, which it was not taken of): the
/// restore asks for `--dest`, and nothing changes.
#[test]
fn a_bare_archive_taken_of_another_directory_needs_a_destination() {
    let env = Env::new();
    let root = env.path("app");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("keep"), b"mine").unwrap();
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep"), b"theirs").unwrap();
    std::fs::write(
        env.path("backstop.toml"),
        format!("[instances.app]\nroot = \"{}\"\n", root.display()),
    )
    .unwrap();
    let mut m = manifest(
        "app-2026-01-01-000000",
        "app",
        &elsewhere,
        vec![crate::craft::path_source("app", ".", &elsewhere)],
    );
    m.taken_of = backstop_core::archive::format::TakenOf::RestoreDestination;
    std::fs::create_dir_all(env.path("files")).unwrap();
    let archive = craft_with(
        &env.path("files"),
        &m,
        &[Raw::Dir(b"app"), Raw::File(b"app/new", b"n")],
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
        .stderr(predicate::str::contains("--dest"));
    assert_eq!(std::fs::read(root.join("keep")).unwrap(), b"mine");
    assert_eq!(std::fs::read(elsewhere.join("keep")).unwrap(), b"theirs");
    assert!(!root.join("new").exists() && !elsewhere.join("new").exists());
}

/// Two backups of `svc`, the older with `port = 1`, the newer `port = 2`;
/// their ids, newest first.
fn two_backups(env: &Env) -> (std::path::PathBuf, [String; 2]) {
    let app = env.small_app("svc");
    std::fs::write(app.join("config/app.toml"), b"port = 1\n").unwrap();
    let older = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::fs::write(app.join("config/app.toml"), b"port = 2\n").unwrap();
    let newer = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    (app, [newer, older])
}

#[test]
fn restore_without_a_backup_lists_candidates_and_fails_off_a_terminal() {
    let env = Env::new();
    let (_, [newer, older]) = two_backups(&env);
    let out = env
        .cmd()
        .args(["restore", "--instance", "svc"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let first = stderr.find(&format!(" 1  {newer}")).expect(&stderr);
    let second = stderr.find(&format!(" 2  {older}")).expect(&stderr);
    assert!(first < second, "newest first: {stderr}");
    assert!(
        stderr.contains(&format!("hint: name it: `backstop restore {newer}`")),
        "{stderr}"
    );
}

#[test]
fn restore_without_a_backup_asks_which_on_a_terminal() {
    let env = Env::new();
    let (app, [_, older]) = two_backups(&env);
    let args = [
        "restore".as_ref(),
        "--instance".as_ref(),
        "svc".as_ref(),
        "--no-pre-backup".as_ref(),
    ];
    let Some(run) = crate::support::on_terminal(&env, &args, "2\ny\n") else {
        return;
    };
    assert_eq!(run.code, Some(0), "{}", run.screen);
    assert!(
        run.screen.contains("Which one to restore? [1-2]"),
        "{}",
        run.screen
    );
    assert!(
        run.screen.contains(&format!("Restored {older}")),
        "{}",
        run.screen
    );
    assert_eq!(
        std::fs::read(app.join("config/app.toml")).unwrap(),
        b"port = 1\n",
        "the older backup, picked as 2, is back"
    );
}

/// Issue 11, item 5, for `rollback`: given no version on a terminal, it
/// lists the pre-upgrade backups newest first and restores the one picked.
#[test]
fn rollback_without_a_version_asks_which_on_a_terminal() {
    let env = Env::new();
    let app = env.small_app("svc");
    let mut ids = Vec::new();
    for port in ["1", "2"] {
        std::fs::write(app.join("config/app.toml"), format!("port = {port}\n")).unwrap();
        let b = env.backup(&app, &["--reason", "pre-upgrade"]);
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    std::fs::write(app.join("config/app.toml"), b"port = 3\n").unwrap();
    let args = [
        "rollback".as_ref(),
        "--instance".as_ref(),
        "svc".as_ref(),
        "--no-pre-backup".as_ref(),
    ];
    let Some(run) = crate::support::on_terminal(&env, &args, "2\ny\n") else {
        return;
    };
    assert_eq!(run.code, Some(0), "{}", run.screen);
    assert!(
        run.screen.contains("Which one to roll back to? [1-2]"),
        "{}",
        run.screen
    );
    let newest = run.screen.find(&format!("{}  ", ids[1]));
    let oldest = run.screen.find(&format!("{}  ", ids[0]));
    assert!(
        newest.is_some() && oldest.is_some() && newest < oldest,
        "the pre-upgrade backups, newest first: {}",
        run.screen
    );
    assert_eq!(
        std::fs::read(app.join("config/app.toml")).unwrap(),
        b"port = 1\n",
        "the older pre-upgrade backup, picked as 2, is back: {}",
        run.screen
    );
}

#[test]
fn a_kept_path_the_restore_cannot_keep_is_refused_by_the_dry_run_too() {
    // The backup has a file x; x is a directory now, and --exclude x/
    // keeps what is inside it. The exact restore cannot put the file there
    // and keep x/sub: it refuses, and so does its dry run, which used to
    // show a plan that the restore then refused.
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("y")).unwrap();
    std::fs::write(app.join("x"), b"file").unwrap();
    std::fs::write(app.join("y/b"), b"b").unwrap();
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::fs::remove_file(app.join("x")).unwrap();
    std::fs::create_dir_all(app.join("x/sub")).unwrap();
    std::fs::write(app.join("x/sub/f"), b"live").unwrap();
    for extra in ["--dry-run", "--yes"] {
        let out = env
            .cmd()
            .args(["restore", &id, "--exclude", "x/", "--no-pre-backup", extra])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra}: {stderr}");
        assert!(
            stderr.contains("x/sub is kept (--exclude), but the backup has a file"),
            "{extra}: {stderr}"
        );
    }
    assert_eq!(std::fs::read(app.join("x/sub/f")).unwrap(), b"live");
}
