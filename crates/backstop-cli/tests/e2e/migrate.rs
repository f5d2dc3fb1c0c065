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
