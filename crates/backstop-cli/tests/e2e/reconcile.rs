//! `reconcile`: the catalog against the store — missing, orphaned,
//! mismatched and corrupt archives, idempotence, and a damaged catalog
//! rebuilt from the archives.

use std::path::PathBuf;

use predicates::prelude::*;

use crate::support::Env;

fn archive(env: &Env, id: &str) -> PathBuf {
    env.home().join(format!("backups/app/{id}.tar.zst"))
}

fn with_sidecar(p: &std::path::Path) -> [PathBuf; 2] {
    let mut s = p.as_os_str().to_os_string();
    s.push(".sha256");
    [p.to_path_buf(), PathBuf::from(s)]
}

fn status(env: &Env, id: &str) -> String {
    env.list()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "absent".into())
}

#[test]
fn missing_orphaned_mismatched_and_corrupt_archives_are_found_and_fixed() {
    let env = Env::new();
    let app = env.small_app("app");
    // An orphan: a backup made with another home, to be copied into this
    // store (a second earlier, so that its id is its own).
    let other = Env::new();
    let foreign = other.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ids: Vec<String> = (0..4)
        .map(|i| {
            std::fs::write(app.join("data/n"), i.to_string()).unwrap();
            // Full backups: chains broken by these findings are another test's.
            env.backup(&app, &["--full"])["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let foreign_archive = other.home().join(format!("backups/app/{foreign}.tar.zst"));
    for (from, to) in with_sidecar(&foreign_archive)
        .iter()
        .zip(with_sidecar(&archive(&env, &foreign)))
    {
        std::fs::copy(from, to).unwrap();
    }
    // Missing: removed by hand.
    let gone = archive(&env, &ids[0]);
    let kept_away = env.path("kept-away.tar.zst");
    std::fs::rename(&gone, &kept_away).unwrap();
    // Corrupt: its size no longer matches.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(archive(&env, &ids[1]))
        .unwrap();
    std::io::Write::write_all(&mut f, b"x").unwrap();

    // doctor sums it up.
    env.cmd()
        .args(["doctor"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains(format!(
            "missing archive {}",
            ids[0]
        )))
        .stdout(predicate::str::contains("reconcile --apply"));
    // A report changes nothing and exits 3.
    let out = env.cmd().args(["--json", "reconcile"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String)> = doc["reconcile"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["problem"].as_str().unwrap().to_string(),
                f["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let mut want = vec![
        ("corrupt".to_string(), ids[1].clone()),
        ("missing".to_string(), ids[0].clone()),
        ("orphaned".to_string(), foreign.clone()),
    ];
    want.sort();
    assert_eq!(found, want);
    assert_eq!(doc["reconcile"]["consistent"], 2);
    assert_eq!(status(&env, &foreign), "absent");

    // --apply makes the catalog true.
    env.cmd()
        .args(["reconcile", "--apply"])
        .assert()
        .success()
        .stdout(predicate::str::contains("adopted"));
    assert_eq!(status(&env, &ids[0]), "missing");
    assert_eq!(status(&env, &ids[1]), "corrupt");
    assert_eq!(status(&env, &foreign), "available");
    let adopted = env.json(&["show", &foreign]);
    assert_eq!(adopted["show"]["backup"]["instance"], "app");
    env.cmd().args(["verify", &foreign]).assert().success();

    // Twice: nothing more to do.
    let again = env.json(&["reconcile", "--apply"]);
    assert!(
        again["reconcile"]["findings"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{again}"
    );

    // Put back by hand: mismatched, then available again.
    std::fs::rename(&kept_away, &gone).unwrap();
    let doc = env.json(&["reconcile", "app"]);
    assert_eq!(doc["reconcile"]["findings"][0]["problem"], "mismatched");
    env.cmd()
        .args(["backup", "reconcile", "app", "--apply"])
        .assert()
        .success();
    assert_eq!(status(&env, &ids[0]), "available");
}

#[test]
fn an_orphan_that_does_not_verify_is_never_adopted() {
    let env = Env::new();
    let app = env.small_app("app");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    let copy = env.home().join("backups/app/app-2001-01-01-000000.tar.zst");
    let mut bytes = std::fs::read(archive(&env, &id)).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 40);
    std::fs::write(&copy, bytes).unwrap();
    env.cmd()
        .args(["reconcile", "--apply"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("does not verify"))
        .stdout(predicate::str::contains("left as it is"));
    assert_eq!(env.list().len(), 1);
}

#[test]
fn a_damaged_catalog_is_rebuilt_from_the_archives() {
    let env = Env::new();
    let app = env.small_app("app");
    let ids: Vec<String> = (0..2)
        .map(|i| {
            std::fs::write(app.join("data/n"), i.to_string()).unwrap();
            env.backup(&app, &["-m", "kept in the manifest"])["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let catalog = env.home().join("catalog.db");
    std::fs::write(&catalog, vec![0x42u8; 8192]).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(env.home().join(format!("catalog.db{suffix}")));
    }
    env.cmd()
        .args(["list"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("damaged"))
        .stderr(predicate::str::contains("reconcile --apply"));
    env.cmd()
        .args(["reconcile"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains("reconcile --apply"));
    env.cmd()
        .args(["reconcile", "--apply"])
        .assert()
        .success()
        .stdout(predicate::str::contains("rebuilt from the archives"));
    let rows = env.list();
    let mut got: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    got.sort();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    assert!(rows.iter().all(|r| r["message"] == "kept in the manifest"));
    assert!(
        Env::files_in(&env.home())
            .iter()
            .any(|n| n.starts_with("catalog.db.damaged-"))
    );
    // And restores work from the rebuilt catalog.
    env.cmd()
        .args(["restore", &ids[0], "--yes"])
        .assert()
        .success();
}

#[test]
fn an_interrupted_reconcile_is_finished_by_the_next() {
    let env = Env::new();
    let app = env.small_app("app");
    let other = Env::new();
    let foreign = other.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    // An orphan without its sidecar, and a missing archive.
    std::fs::copy(
        other.home().join(format!("backups/app/{foreign}.tar.zst")),
        archive(&env, &foreign),
    )
    .unwrap();
    std::fs::remove_file(archive(&env, &id)).unwrap();
    for point in [
        "reconcile.before-status",
        "reconcile.before-adopt",
        "reconcile.before-row",
    ] {
        env.cmd()
            .env("BACKSTOP_FAILPOINTS", format!("{point}=abort"))
            .args(["reconcile", "--apply"])
            .assert()
            .failure();
    }
    env.cmd().args(["reconcile", "--apply"]).assert().success();
    assert_eq!(status(&env, &id), "missing");
    assert_eq!(status(&env, &foreign), "available");
    assert!(with_sidecar(&archive(&env, &foreign))[1].exists());
    let again = env.json(&["reconcile", "--apply"]);
    assert!(
        again["reconcile"]["findings"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{again}"
    );
    env.cmd().args(["verify", &foreign]).assert().success();
}

#[test]
fn reconcile_takes_the_instance_as_abssctl_spells_it() {
    let env = Env::new();
    let app = env.small_app("app");
    let web = env.small_app("web");
    let app_id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    let web_id = env.backup(&web, &[])["id"].as_str().unwrap().to_string();
    for (name, id) in [("app", &app_id), ("web", &web_id)] {
        let file = env.home().join(format!("backups/{name}/{id}.tar.zst"));
        std::fs::remove_file(file).unwrap();
    }
    let findings = |doc: &serde_json::Value| -> Vec<String> {
        doc["reconcile"]["findings"]
            .as_array()
            .unwrap_or_else(|| panic!("{doc}"))
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect()
    };
    let positional = env.json(&["reconcile", "app"]);
    let flag = env.json(&["reconcile", "--instance", "app"]);
    assert_eq!(findings(&positional), std::slice::from_ref(&app_id));
    assert_eq!(findings(&flag), findings(&positional));
    env.cmd()
        .args(["reconcile", "--instance", "app", "--apply"])
        .assert()
        .success();
    assert_eq!(status(&env, &app_id), "missing");
    assert_eq!(
        status(&env, &web_id),
        "available",
        "only app was asked about"
    );
    env.cmd()
        .args(["reconcile", "web", "--instance", "app"])
        .assert()
        .code(2);
    env.cmd()
        .args(["reconcile", "--help"])
        .assert()
        .stdout(predicate::str::contains("--instance <NAME>"));
}
