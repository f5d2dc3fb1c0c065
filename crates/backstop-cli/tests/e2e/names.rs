//! Instance names: each bound to the directory (and machine) its backups
//! come from, so two directories never share one and prune never removes
//! one's backups for the other's; names keep letters of any script.

use std::path::Path;

use predicates::prelude::*;

use crate::support::Env;

fn dir_with_file(env: &Env, rel: &str) -> std::path::PathBuf {
    let dir = env.path(rel);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), rel.as_bytes()).unwrap();
    dir.canonicalize().unwrap()
}

fn ids_of(env: &Env, instance: &str) -> Vec<String> {
    env.list()
        .iter()
        .filter(|b| b["instance"] == instance && b["status"] == "available")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_directories_with_one_name_get_two_instances_and_prune_keeps_both() {
    let env = Env::new();
    let p1 = dir_with_file(&env, "p1/data");
    let p2 = dir_with_file(&env, "p2/data");
    let first = env.backup(&p1, &["--full"]);
    assert_eq!(first["instance"], "data");
    // The second directory is told, in words and in JSON.
    env.cmd()
        .args(["backup", p2.to_str().unwrap(), "--full"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "instance data-2: data already holds the backups of {}",
            p1.display()
        )));
    let doc = env.json(&["backup", p2.to_str().unwrap(), "--full"]);
    assert_eq!(doc["report"]["backup"]["instance"], "data-2", "{doc}");
    assert_eq!(doc["report"]["renamed"]["wanted"], "data", "{doc}");
    // Each comes back to its own name, again and again.
    assert_eq!(env.backup(&p1, &["--full"])["instance"], "data");
    assert_eq!(env.backup(&p2, &["--full"])["instance"], "data-2");
    assert_eq!(
        env.backup(&dir_with_file(&env, "p3/data"), &["--full"])["instance"],
        "data-3"
    );
    let plan = env.json(&["backup", p2.to_str().unwrap(), "--dry-run"]);
    assert_eq!(plan["plan"]["instance"], "data-2", "{plan}");
    // Pruning one directory's instance leaves the other's backups alone.
    env.cmd()
        .args(["prune", "data", "--keep", "1"])
        .assert()
        .success();
    assert_eq!(ids_of(&env, "data").len(), 1);
    assert_eq!(ids_of(&env, "data-2").len(), 3);
    let kept = &ids_of(&env, "data")[0];
    let shown = env.json(&["show", kept]);
    assert_eq!(shown["show"]["backup"]["origin"], p1.to_str().unwrap());
}

#[test]
fn a_configured_name_holding_another_directory_s_backups_is_refused() {
    let env = Env::new();
    let old = dir_with_file(&env, "old/app");
    env.backup(&old, &[]);
    let new = dir_with_file(&env, "new/app");
    std::fs::write(
        env.path("backstop.toml"),
        format!("[instances.app]\nroot = \"{}\"\n", new.display()),
    )
    .unwrap();
    env.cmd()
        .args(["backup", "app"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "instance app holds backups of {}",
            old.display()
        )))
        .stderr(predicate::str::contains(
            "hint: give this instance another name",
        ));
    assert_eq!(ids_of(&env, "app").len(), 1);
    // An ad-hoc directory whose name a configured instance has gets another.
    std::fs::write(
        env.path("backstop.toml"),
        format!("[instances.data]\nroot = \"{}\"\n", new.display()),
    )
    .unwrap();
    let elsewhere = dir_with_file(&env, "elsewhere/data");
    assert_eq!(env.backup(&elsewhere, &[])["instance"], "data-2");
    assert_eq!(env.backup(Path::new("data"), &[])["instance"], "data");
}

#[test]
fn a_name_keeps_its_letters_in_any_script() {
    let env = Env::new();
    let dir = dir_with_file(&env, "ünï");
    let backup = env.backup(&dir, &[]);
    assert_eq!(backup["instance"], "ünï", "{backup}");
    let id = backup["id"].as_str().unwrap();
    assert!(id.starts_with("ünï-"), "{id}");
    assert!(
        env.home()
            .join("backups/ünï")
            .join(format!("{id}.tar.zst"))
            .is_file()
    );
    env.cmd().args(["verify", id]).assert().success();
}
