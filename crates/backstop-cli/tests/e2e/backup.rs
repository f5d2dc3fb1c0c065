//! The main workflow: backup, list, show, verify, with and without config.

use predicates::prelude::*;

use crate::support::Env;

#[test]
fn backup_list_show_verify_round_trip() {
    let env = Env::new();
    let app = env.small_app("myapp");
    let b = env.backup(
        &app,
        &[
            "-m",
            "before the move",
            "--label",
            "env=prod",
            "--reason",
            "scheduled",
        ],
    );
    let id = b["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("myapp-20"), "{id}");
    assert_eq!(b["status"], "available");
    assert_eq!(b["instance"], "myapp");
    assert_eq!(b["origin"], app.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(b["message"], "before the move");
    assert_eq!(b["labels"]["env"], "prod");
    assert_eq!(b["reason"], "scheduled");
    assert_eq!(b["files"], 3);
    let location = b["location"].as_str().unwrap();
    assert!(
        location.starts_with(env.home().join("backups/myapp").to_str().unwrap()),
        "{location}"
    );

    let rows = env.list();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], id.as_str());

    env.cmd()
        .args(["show", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("available"))
        .stdout(predicate::str::contains("before the move"))
        .stdout(predicate::str::contains("Sources"))
        .stdout(predicate::str::contains("Restore history: none"));

    env.cmd()
        .args(["verify", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("ok"));
    let row = &env.list()[0];
    assert_eq!(row["verify_ok"], true);
    assert!(row["verified_at"].is_string());
}

#[test]
fn seed_spellings_do_the_same() {
    let env = Env::new();
    let app = env.small_app("svc");
    env.cmd()
        .args(["backup", "create"])
        .arg(&app)
        .assert()
        .success();
    env.cmd()
        .args(["backup", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("svc-20"));
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    env.cmd().args(["backup", "info", &id]).assert().success();
    env.cmd().args(["info", &id]).assert().success();
    env.cmd().args(["backup", "verify", &id]).assert().success();
}

#[test]
fn second_backup_in_the_same_second_gets_a_suffix() {
    let env = Env::new();
    let app = env.small_app("svc");
    let ids: Vec<String> = (0..3)
        .map(|_| env.backup(&app, &[])["id"].as_str().unwrap().to_string())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ids:?}");
}

#[test]
fn dry_run_lists_entries_and_changes_nothing() {
    let env = Env::new();
    let app = env.small_app("svc");
    let out = env.path("out.tar.zst");
    env.cmd()
        .args(["backup", "--dry-run", "--output"])
        .arg(&out)
        .arg(&app)
        .assert()
        .success()
        .stdout(predicate::str::contains("svc/config/.env"))
        .stdout(predicate::str::contains("svc/data/\n"))
        .stdout(predicate::str::contains("Would back up svc"))
        .stdout(predicate::str::contains("estimated archive"));
    assert!(!env.home().exists(), "a dry run must not create the home");
    assert!(!out.exists());
    let doc = env.json(&["backup", "--dry-run", app.to_str().unwrap()]);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["plan"]["totals"]["files"], 3);
    assert!(doc["plan"]["estimated_size"].as_u64().unwrap() > 0);
    assert!(!env.home().exists());
}

#[test]
fn excludes_from_flags_config_and_builtins() {
    let env = Env::new();
    let app = env.small_app("svc");
    std::fs::create_dir_all(app.join("node_modules/x")).unwrap();
    std::fs::write(app.join("node_modules/x/a.js"), b"x").unwrap();
    std::fs::write(app.join("data/trace.log"), b"log").unwrap();
    std::fs::write(app.join("data/tmp.swp"), b"swap").unwrap();
    let config = env.path("backstop.toml");
    std::fs::write(&config, "[defaults]\nexclude = [\"*.swp\"]\n").unwrap();
    let doc = env.json(&[
        "--config",
        config.to_str().unwrap(),
        "backup",
        app.to_str().unwrap(),
        "--exclude",
        "*.log",
    ]);
    let rules: Vec<String> = doc["report"]["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rules, ["*.log", "*.swp", "node_modules/"]);
    assert_eq!(doc["report"]["backup"]["files"], 3);
}

#[test]
fn config_sets_store_and_compression() {
    let env = Env::new();
    let app = env.small_app("svc");
    let store = env.path("elsewhere");
    let config = env.path("cfg.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"{}\"\n[defaults]\ncompression = \"gzip\"\nlevel = 4\n",
            store.display()
        ),
    )
    .unwrap();
    // Found through $BACKSTOP_CONFIG this time.
    let out = env
        .cmd()
        .env("BACKSTOP_CONFIG", &config)
        .arg("--json")
        .arg("backup")
        .arg(&app)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &doc["report"]["backup"];
    assert_eq!(b["compression"], "gzip");
    assert_eq!(b["level"], 4);
    assert!(
        b["location"]
            .as_str()
            .unwrap()
            .starts_with(store.to_str().unwrap())
    );
    assert!(b["location"].as_str().unwrap().ends_with(".tar.gz"));
}

#[test]
fn config_in_the_current_directory_is_found() {
    let env = Env::new();
    let app = env.small_app("svc");
    std::fs::write(
        env.path("backstop.toml"),
        "[defaults]\ncompression = \"none\"\n",
    )
    .unwrap();
    let b = env.backup(&app, &[]);
    assert_eq!(b["compression"], "none");
    assert!(b["location"].as_str().unwrap().ends_with(".tar"));
}

#[test]
fn bad_config_is_exit_2_naming_file_and_line() {
    let env = Env::new();
    let app = env.small_app("svc");
    let config = env.path("bad.toml");
    std::fs::write(
        &config,
        "store = \"/x\"\n\n[defaults]\ncompresion = \"zstd\"\n",
    )
    .unwrap();
    env.cmd()
        .arg("--config")
        .arg(&config)
        .arg("backup")
        .arg(&app)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.toml"))
        .stderr(predicate::str::contains("line 4"))
        .stderr(predicate::str::contains("compresion"))
        .stderr(predicate::str::contains("hint:"));
    env.cmd()
        .args(["--config", "/no/such/file.toml", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not exist"));
}

#[test]
fn usage_errors_are_exit_2_with_hints() {
    let env = Env::new();
    env.cmd()
        .args(["backup", "/definitely/not/here"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not exist"))
        .stderr(predicate::str::contains("hint:"));
    env.cmd()
        .arg("backup")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nothing to back up"));
    let app = env.small_app("svc");
    env.cmd()
        .args(["backup", "--compression", "none", "--level", "3"])
        .arg(&app)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no effect"));
    env.cmd()
        .args(["backup", "--level", "42"])
        .arg(&app)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("out of range"));
    env.cmd()
        .args(["backup", "--label", "novalue"])
        .arg(&app)
        .assert()
        .code(2);
    env.cmd()
        .args(["show", "nope-2020-01-01-000000"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("backstop list"));
    assert!(
        !env.home().join("backups/svc").exists()
            || Env::files_in(&env.home().join("backups/svc")).is_empty()
    );
}

#[test]
fn several_paths_make_one_instance() {
    let env = Env::new();
    let app = env.small_app("svc");
    let b = env.backup(&app.join("config"), &[app.join("data").to_str().unwrap()]);
    assert_eq!(b["instance"], "svc");
    let show = env.json(&["show", b["id"].as_str().unwrap()]);
    let sources: Vec<&str> = show["show"]["manifest"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["config", "data"]);
}

#[test]
fn list_filters_and_shows_failures() {
    let env = Env::new();
    let a = env.small_app("alpha");
    let b = env.small_app("beta");
    env.backup(&a, &["--reason", "pre-upgrade"]);
    env.backup(&b, &[]);
    let only_alpha = env.json(&["list", "alpha"]);
    assert_eq!(only_alpha["backups"].as_array().unwrap().len(), 1);
    let upgrades = env.json(&["list", "--reason", "pre-upgrade"]);
    assert_eq!(upgrades["backups"][0]["instance"], "alpha");
    let none = env.json(&["list", "--status", "failed"]);
    assert_eq!(none["backups"].as_array().unwrap().len(), 0);
    env.cmd()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("ID"))
        .stdout(predicate::str::contains("STATUS"))
        .stdout(predicate::str::contains("alpha-20"))
        .stdout(predicate::str::contains("beta-20"));
}

#[test]
fn list_on_a_fresh_machine_creates_nothing() {
    let env = Env::new();
    env.cmd()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("No backups yet"));
    assert!(!env.home().exists());
}

#[test]
fn concurrent_backups_of_different_instances_all_succeed() {
    let env = Env::new();
    let apps: Vec<_> = (0..4).map(|i| env.small_app(&format!("app{i}"))).collect();
    let children: Vec<_> = apps
        .iter()
        .map(|app| {
            let mut cmd = env.std_cmd();
            cmd.arg("-q").arg("backup").arg(app);
            crate::support::spawn(cmd)
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = env.list();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["status"] == "available"));
}

#[test]
fn completions_are_printed() {
    let env = Env::new();
    env.cmd()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("backstop"));
}

#[test]
fn help_documents_exit_codes() {
    let env = Env::new();
    env.cmd()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("6 lock held"));
}

/// Issue 12, step one: every directory entry carries GNU tar's
/// `GNU.dumpdir` record listing what it holds, so stock GNU tar extracting
/// with `--listed-incremental=/dev/null` makes each directory hold exactly
/// that: over a destination with stale files and directories, the result is
/// the backed-up tree, nothing more (the base any chain of incrementals
/// will build on).
#[test]
fn gnu_tar_with_listed_incremental_restores_a_full_backup_exactly() {
    if !backstop_test_support::have("tar") || !backstop_test_support::have("zstd") {
        return;
    }
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(app.join("empty")).unwrap();
    std::fs::write(app.join("a.txt"), b"alpha").unwrap();
    std::fs::write(app.join("sub/b"), b"beta").unwrap();
    std::fs::write(app.join("sub/deeper/c"), b"gamma").unwrap();
    std::fs::write(app.join("name with\nnewline"), b"odd").unwrap();
    std::os::unix::fs::symlink("a.txt", app.join("link")).unwrap();
    let b = env.backup(&app, &[]);
    let archive = b["location"].as_str().unwrap().to_string();

    // What an earlier state left behind, which the dumpdirs do not list.
    let dest = env.path("dest");
    std::fs::create_dir_all(dest.join("app/sub/old-dir")).unwrap();
    std::fs::create_dir_all(dest.join("app/empty")).unwrap();
    std::fs::write(dest.join("app/stale"), b"x").unwrap();
    std::fs::write(dest.join("app/sub/stale"), b"x").unwrap();
    std::fs::write(dest.join("app/sub/old-dir/f"), b"x").unwrap();
    std::fs::write(dest.join("app/empty/stale"), b"x").unwrap();
    let out = std::process::Command::new("tar")
        .args(["-I", "zstd", "-x", "--listed-incremental=/dev/null", "-f"])
        .arg(&archive)
        .arg("-C")
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rel = |root: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = crate::support::walk(root)
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(rel(&dest.join("app")), rel(&app));
    assert_eq!(
        std::fs::read(dest.join("app/sub/deeper/c")).unwrap(),
        b"gamma"
    );
}

#[test]
fn compression_takes_a_level_as_sindri_spells_it() {
    let env = Env::new();
    let app = env.small_app("app");
    let b = env.backup(&app, &["--compression", "9"]);
    assert_eq!(
        (&b["compression"], &b["level"]),
        (&"zstd".into(), &9.into())
    );
    // The codec the output's name implies, at that level.
    let out = env.path("backup.tar.gz");
    env.cmd()
        .args(["backup", "--compression", "9", "-o"])
        .arg(&out)
        .arg(&app)
        .assert()
        .success();
    let show = env.json(&["show", out.to_str().unwrap()]);
    let m = &show["show"]["manifest"];
    assert_eq!(
        (&m["compression"], &m["level"]),
        (&"gzip".into(), &9.into())
    );
    env.cmd()
        .args(["backup", "--compression", "0"])
        .arg(&app)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("out of range"));
    env.cmd()
        .args(["backup", "--help"])
        .assert()
        .stdout(predicate::str::contains("--compression <CODEC|LEVEL>"))
        .stdout(predicate::str::contains("a level 1-19"));
}
