//! `migrate --to DIR`: the store moves (across filesystems too), records and
//! config follow, and an interruption at any step loses nothing.

use std::path::{Path, PathBuf};

use backstop_test_support::{Tmpfs, root};
use predicates::prelude::*;

use crate::support::Env;

/// Two instances with two backups each, and a config file to update.
fn store_with_backups(env: &Env) -> Vec<String> {
    std::fs::write(
        env.path("backstop.toml"),
        "# backstop\n\n[defaults]\nexclude = []\n",
    )
    .unwrap();
    let mut ids = Vec::new();
    for name in ["app", "web"] {
        let dir = env.small_app(name);
        for i in 0..2 {
            std::fs::write(dir.join("data/n"), i.to_string()).unwrap();
            ids.push(env.backup(&dir, &[])["id"].as_str().unwrap().to_string());
        }
    }
    ids
}

fn locations(env: &Env) -> Vec<PathBuf> {
    env.list()
        .iter()
        .map(|r| PathBuf::from(r["location"].as_str().unwrap()))
        .collect()
}

fn assert_all_under(env: &Env, dir: &Path) {
    for loc in locations(env) {
        assert!(
            loc.starts_with(dir),
            "{} not under {}",
            loc.display(),
            dir.display()
        );
        assert!(loc.exists(), "{}", loc.display());
    }
    env.cmd().args(["verify", "--all"]).assert().success();
}

#[test]
fn the_store_moves_to_another_filesystem() {
    if !root("mount a tmpfs for another filesystem") {
        return;
    }
    let env = Env::new();
    let ids = store_with_backups(&env);
    let fs = Tmpfs::mount(64 << 20);
    let to = fs.path().join("store");
    env.cmd()
        .args(["migrate", "--to", to.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::contains("4 archives"))
        .stdout(predicate::str::contains("copied and checked"));
    assert_all_under(&env, &to);
    assert!(
        !env.home().join("backups").exists(),
        "the old store is gone"
    );
    let config = std::fs::read_to_string(env.path("backstop.toml")).unwrap();
    assert!(
        config.contains(&format!("store = \"{}\"", to.display())),
        "{config}"
    );
    assert!(
        config.starts_with("# backstop\n"),
        "the rest is kept: {config}"
    );
    // The next backup goes to the new store, and restores work.
    let app = env.path("app");
    let new = env.backup(&app, &[]);
    assert!(Path::new(new["location"].as_str().unwrap()).starts_with(&to));
    env.cmd()
        .args(["restore", &ids[0], "--yes"])
        .assert()
        .success();
}

#[test]
fn an_interrupted_migration_loses_nothing_and_the_same_command_finishes_it() {
    let env = Env::new();
    store_with_backups(&env);
    // Another filesystem when we may mount one (the copy path), else the
    // same one (the link path).
    let fs = if rustix::process::geteuid().is_root() {
        Some(Tmpfs::mount(64 << 20))
    } else {
        None
    };
    let to = match &fs {
        Some(fs) => fs.path().join("store"),
        None => env.path("elsewhere/store"),
    };
    let old = env.home().join("backups");
    for point in [
        "migrate.after-copy",
        "migrate.before-config",
        "migrate.before-switch",
        "migrate.before-remove",
    ] {
        env.cmd()
            .env("BACKSTOP_FAILPOINTS", format!("{point}=abort"))
            .args(["migrate", "--to", to.to_str().unwrap()])
            .assert()
            .failure();
        // Every backup the catalog lists is where it says, and verifies.
        for loc in locations(&env) {
            assert!(loc.exists(), "after {point}: {} is gone", loc.display());
        }
        env.cmd().args(["verify", "--all"]).assert().success();
        env.cmd()
            .args(["doctor"])
            .assert()
            .code(1)
            .stdout(predicate::str::contains("was interrupted"));
        // Another destination is refused while this one is unfinished.
        env.cmd()
            .args(["migrate", "--to", env.path("third").to_str().unwrap()])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("unfinished"));
        if point == "migrate.before-remove" {
            break;
        }
        // Undo nothing: the next round resumes from where this one stopped.
    }
    env.cmd()
        .args(["migrate", "--to", to.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::contains("Finished moving"));
    assert_all_under(&env, &to);
    assert!(!old.exists());
    env.cmd().args(["doctor"]).assert().success();
}

#[test]
fn a_bad_destination_is_refused_before_anything_moves() {
    let env = Env::new();
    store_with_backups(&env);
    let inside = env.home().join("backups/sub");
    env.cmd()
        .args(["migrate", "--to", inside.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("inside one another"));
    let full = env.path("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("x"), "x").unwrap();
    env.cmd()
        .args(["migrate", "--to", full.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not empty"));
    assert_all_under(&env, &env.home().join("backups"));
}

/// Issue 10, item 4: backups, verifications and prunes running (with
/// `--wait`) while the store moves twice. Each waits behind the migration
/// and then uses the store it moved to: afterwards no archive is left in an
/// old store, reconcile finds nothing to repair, every available backup
/// verifies, and no verification ever failed on the way (a backup a
/// concurrent prune removed is not a failure).
#[test]
fn migrations_under_mixed_load_strand_nothing_and_fail_no_verification() {
    let env = Env::new();
    let ids = store_with_backups(&env);
    assert_eq!(ids.len(), 4);
    let stores = [env.home().join("backups"), env.path("s2"), env.path("s3")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let run = |args: &[&str]| env.std_cmd().args(args).output().unwrap();
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    let loop_until_done = |args: &[&str], ok: &[i32]| {
        while std::time::Instant::now() < deadline {
            let out = run(args);
            let code = out.status.code().unwrap_or(-1);
            if !ok.contains(&code) {
                failures.lock().unwrap().push(format!(
                    "`{}` exited {code}: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    };
    let (app, web) = (env.path("app"), env.path("web"));
    std::thread::scope(|s| {
        s.spawn(|| loop_until_done(&["backup", app.to_str().unwrap(), "--wait", "60s"], &[0]));
        s.spawn(|| loop_until_done(&["backup", web.to_str().unwrap(), "--wait", "60s"], &[0]));
        s.spawn(|| loop_until_done(&["verify", "--all", "--wait", "60s"], &[0]));
        s.spawn(|| loop_until_done(&["prune", "app", "--keep", "2", "--wait", "60s"], &[0]));
        for to in &stores[1..] {
            std::thread::sleep(std::time::Duration::from_secs(2));
            let out = run(&["migrate", "--to", to.to_str().unwrap(), "--wait", "60s"]);
            if !out.status.success() {
                failures.lock().unwrap().push(format!(
                    "migrate --to {} exited {:?}: {}",
                    to.display(),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let current = &stores[2];
    for old in &stores[..2] {
        let stranded: Vec<PathBuf> = crate::support::walk(old)
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        assert!(
            stranded.is_empty(),
            "left in the old store {}: {stranded:?}",
            old.display()
        );
    }
    assert_all_under(&env, current);
    let reconcile = env.json(&["reconcile"]);
    let findings = reconcile["reconcile"]["findings"]
        .as_array()
        .map_or(1, Vec::len);
    assert_eq!(
        findings, 0,
        "reconcile found something to repair: {reconcile}"
    );
    let rows = env.list().len();
    let archives = crate::support::walk(current)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .count();
    assert_eq!(rows, archives, "one archive per catalog row");
}
