//! `prune` (alias `cleanup`), `delete`, `pin`, `unpin`: retention by rules
//! from flags or the config, never the pinned or the newest backup.

use std::path::{Path, PathBuf};

use predicates::prelude::*;

use crate::support::Env;

/// `n` backups of a small app; ids oldest first.
fn backups(env: &Env, n: usize) -> (PathBuf, Vec<String>) {
    let app = env.small_app("app");
    let ids = (0..n)
        .map(|i| {
            std::fs::write(app.join("data/counter"), i.to_string()).unwrap();
            env.backup(&app, &["--full"])["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    (app, ids)
}

fn archive(env: &Env, id: &str) -> PathBuf {
    env.home().join(format!("backups/app/{id}.tar.zst"))
}

fn ids(env: &Env) -> Vec<String> {
    let mut ids: Vec<String> = env
        .list()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn sidecar(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_os_string();
    s.push(".sha256");
    PathBuf::from(s)
}

#[test]
fn prune_keeps_by_rule_and_never_the_pinned_or_the_newest() {
    let env = Env::new();
    let (_app, all) = backups(&env, 5);
    env.cmd().args(["pin", &all[0]]).assert().success();

    // A dry run lists every backup and the rule that decided, and changes nothing.
    let doc = env.json(&["prune", "app", "--keep", "2", "--dry-run"]);
    let decisions = doc["prune"][0]["decisions"].as_array().unwrap().clone();
    let verdict: Vec<(String, bool)> = decisions
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdict,
        [
            (all[4].clone(), true),
            (all[3].clone(), true),
            (all[2].clone(), false),
            (all[1].clone(), false),
            (all[0].clone(), true),
        ]
    );
    assert_eq!(decisions[4]["reasons"][0], "pinned");
    assert_eq!(ids(&env).len(), 5);
    env.cmd()
        .args(["prune", "app", "--keep", "2", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no rule keeps it"))
        .stdout(predicate::str::contains("Nothing was changed"));

    // Applied: archives, sidecars and rows go.
    env.cmd()
        .args(["prune", "app", "--keep", "2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("removed 2 of 5"));
    let mut want = vec![all[0].clone(), all[3].clone(), all[4].clone()];
    want.sort();
    assert_eq!(ids(&env), want);
    for gone in &all[1..3] {
        assert!(!archive(&env, gone).exists());
        assert!(!sidecar(&archive(&env, gone)).exists());
    }
    assert!(archive(&env, &all[0]).exists());

    // The newest stays even when no rule keeps anything; unpinned, the
    // old one goes.
    env.cmd().args(["unpin", &all[0]]).assert().success();
    env.cmd()
        .args(["cleanup", "app", "--keep-manual", "0"])
        .assert()
        .success();
    assert_eq!(ids(&env), [all[4].clone()]);
    // The seed spelling.
    env.cmd()
        .args(["backup", "cleanup", "--keep", "1"])
        .assert()
        .success();
    assert_eq!(ids(&env), [all[4].clone()]);
}

#[test]
fn prune_and_reconcile_of_an_instance_nothing_knows_fail_with_exit_2() {
    // A typo'd name would otherwise prune or reconcile nothing, and say
    // "removed 0 of 0" with exit 0.
    let env = Env::new();
    backups(&env, 3);
    for args in [
        &["prune", "nosuch", "--keep", "1"][..],
        &["prune", "nosuch", "--keep", "1", "--dry-run"],
        &["reconcile", "nosuch"],
    ] {
        env.cmd()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("no instance named `nosuch`"));
    }
    assert_eq!(ids(&env).len(), 3);
}

#[test]
fn prune_without_a_rule_removes_nothing_and_says_so() {
    let env = Env::new();
    let (_app, all) = backups(&env, 2);
    env.cmd()
        .args(["prune", "app"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no retention rule"));
    assert_eq!(ids(&env).len(), all.len());
}

#[test]
fn the_config_gives_defaults_per_instance_and_flags_override_them() {
    let env = Env::new();
    let app = env.small_app("app");
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.app]\nroot = \"{}\"\n[instances.app.retention]\nkeep_manual = 2\nkeep_automatic = 1\nauto_prune = true\nfailed_max_age = \"0s\"\n[instances.app.chain]\nmax_length = 0\n[instances.app.sources.db]\ncommand = \"cat {}/data/db.sqlite\"\n",
            app.display(),
            app.display()
        ),
    )
    .unwrap();
    for _ in 0..3 {
        env.cmd()
            .args(["backup", "app", "--full"])
            .assert()
            .success();
    }
    // Two guarded commands: automatic backups, pruned after each.
    for _ in 0..2 {
        env.cmd()
            .args(["guard", "app", "--", "true"])
            .assert()
            .success();
    }
    let rows = env.list();
    let automatic = rows.iter().filter(|r| r["kind"] == "automatic").count();
    let manual = rows.iter().filter(|r| r["kind"] == "manual").count();
    assert_eq!((manual, automatic), (2, 1), "{rows:?}");

    // A failed attempt leaves the catalog at the next prune.
    std::fs::write(app.join("data/db.sqlite"), "").unwrap();
    std::fs::remove_file(app.join("data/db.sqlite")).unwrap();
    env.cmd().args(["backup", "app"]).assert().code(1);
    assert!(env.list().iter().any(|r| r["status"] == "failed"));
    let doc = env.json(&["prune", "app"]);
    assert_eq!(
        doc["prune"][0]["failed_dropped"].as_array().unwrap().len(),
        1
    );
    assert!(env.list().iter().all(|r| r["status"] != "failed"));

    // A flag replaces the config's rule of the same name only.
    let doc = env.json(&["prune", "app", "--keep-manual", "1", "--dry-run"]);
    let removed = doc["prune"][0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .count();
    assert_eq!(removed, 1);
    assert_eq!(doc["prune"][0]["rules"]["keep_automatic"], 1);
}

#[test]
fn delete_removes_a_backup_but_not_a_pinned_one() {
    let env = Env::new();
    let (_app, all) = backups(&env, 3);
    env.cmd().args(["pin", &all[1]]).assert().success();
    env.cmd()
        .args(["delete", &all[0], &all[1]])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is pinned"));
    // Refused as a whole: nothing went.
    assert_eq!(ids(&env).len(), 3);
    env.cmd()
        .args(["delete", "app-1999-01-01-000000"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("there is no backup"));
    env.cmd()
        .args(["delete", &all[0]])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("Deleted {}", all[0])));
    assert!(!archive(&env, &all[0]).exists());
    assert!(!sidecar(&archive(&env, &all[0])).exists());
    assert_eq!(ids(&env), [all[1].clone(), all[2].clone()]);
    env.cmd().args(["pin", "nope"]).assert().code(1);
}
