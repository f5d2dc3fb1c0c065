//! Configured instances: the config file, services around restores, health
//! checks that undo, versions and rollback, guarded commands, command and
//! SQLite sources, secrets, init and doctor.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use predicates::prelude::*;

use crate::support::{Env, sqlite};

/// An application with versions/, a `current` symlink, config with a
/// secret, data with a live SQLite database, and a service whose state is
/// a file (every call to it is logged).
struct App {
    root: PathBuf,
    state: PathBuf,
    calls: PathBuf,
}

impl App {
    fn new(env: &Env) -> App {
        let root = env.path("app");
        for v in ["0.1.11", "0.1.12"] {
            std::fs::create_dir_all(root.join("versions").join(v)).unwrap();
            std::fs::write(root.join("versions").join(v).join("app.py"), v).unwrap();
        }
        std::os::unix::fs::symlink("versions/0.1.11", root.join("current")).unwrap();
        std::fs::create_dir_all(root.join("config")).unwrap();
        std::fs::write(root.join("config/.env"), "TOKEN=s3cret\n").unwrap();
        std::fs::write(root.join("config/app.toml"), "port = 8080\n").unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        sqlite(
            &root.join("data/app.db"),
            "CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        );
        let state = env.path("service.state");
        std::fs::write(&state, "running\n").unwrap();
        App {
            root,
            state,
            calls: env.path("service.calls"),
        }
    }

    /// The config, with `extra` appended inside `[instances.app]`'s tables.
    fn config(&self, env: &Env, services: &str, extra: &str) {
        let text = format!(
            r#"
[instances.app]
root = "{root}"
secrets = ["config/.env"]
never_restore = ["data/.marker"]
version = {{ symlink = "current" }}
activate = "ln -sfn versions/$BACKSTOP_VERSION current"

[instances.app.sources]
code = "versions"
current = "current"
config = "config"
data = "data"
db = {{ sqlite = "data/app.db" }}

[instances.app.profiles.config-only]
sources = ["config"]

[instances.app.services]
stop = "echo stop >> {calls}; echo stopped > {state}"
start = "echo start >> {calls}; echo running > {state}"
status = "echo status >> {calls}; grep -q running {state}"
{services}
{extra}
"#,
            root = self.root.display(),
            calls = self.calls.display(),
            state = self.state.display(),
        );
        std::fs::write(env.path("backstop.toml"), text).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(&self.calls);
    }

    fn running(&self) -> bool {
        std::fs::read_to_string(&self.state).unwrap().trim() == "running"
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn backup_id(env: &Env, args: &[&str]) -> String {
    let doc = env.json(args);
    doc["report"]["backup"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup in {doc}"))
        .to_string()
}

#[test]
fn a_config_error_names_the_file_line_and_key() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    std::fs::write(
        env.path("backstop.toml"),
        "[instances.app]\nroot = \"/srv/app\"\n\n[instances.app.services]\nstop = \"x\"\nstrat = \"y\"\n",
    )
    .unwrap();
    env.cmd()
        .args(["backup", "app"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("backstop.toml"))
        .stderr(predicate::str::contains("line 6"))
        .stderr(predicate::str::contains("strat"));
    // A value that parses but makes no sense is refused with the instance.
    std::fs::write(
        env.path("backstop.toml"),
        "[instances.app]\nroot = \"/srv/app\"\n[instances.app.sources]\ndata = \"../etc\"\n",
    )
    .unwrap();
    env.cmd()
        .args(["doctor"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("[instances.app] (line 1)"))
        .stderr(predicate::str::contains("`..`"));
}

#[test]
fn a_running_service_is_stopped_and_started_around_a_restore() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(&env, "", "");
    let id = backup_id(&env, &["backup", "app"]);
    std::fs::write(app.root.join("config/app.toml"), "port = 9090\n").unwrap();
    app.clear_calls();
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
    assert_eq!(
        std::fs::read_to_string(app.root.join("config/app.toml")).unwrap(),
        "port = 8080\n"
    );
    // Asked, stopped for the safety backup and the swap, started after.
    assert_eq!(app.calls(), ["status", "stop", "start"]);
    assert!(app.running());
}

#[test]
fn a_stopped_service_stays_stopped() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(&env, "", "");
    let id = backup_id(&env, &["backup", "app"]);
    std::fs::write(&app.state, "stopped\n").unwrap();
    app.clear_calls();
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
    assert_eq!(app.calls(), ["status"]);
    assert!(!app.running());
}

#[test]
fn a_dry_run_calls_no_service_and_changes_nothing() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(&env, "health = \"false\"", "");
    let id = backup_id(&env, &["backup", "app"]);
    std::fs::write(app.root.join("config/app.toml"), "port = 9090\n").unwrap();
    app.clear_calls();
    let rows = env.list().len();
    env.cmd()
        .args(["restore", &id, "--dry-run", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("replace"));
    env.cmd()
        .args(["rollback", "--dry-run", "--yes"])
        .assert()
        .failure(); // no pre-upgrade backup yet: nothing to roll back to
    assert!(app.calls().is_empty(), "{:?}", app.calls());
    assert_eq!(env.list().len(), rows, "no safety backup");
    assert_eq!(
        std::fs::read_to_string(app.root.join("config/app.toml")).unwrap(),
        "port = 9090\n"
    );
}

#[test]
fn a_failing_health_check_undoes_the_restore() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    // Healthy only while the config says port 9090: the backup's 8080 fails.
    let health = format!(
        "health = \"grep -q 9090 {}\"\nhealth_timeout = \"1s\"\nhealth_interval = \"100ms\"",
        app.root.join("config/app.toml").display()
    );
    app.config(&env, &health, "");
    let id = backup_id(&env, &["backup", "app"]);
    std::fs::write(app.root.join("config/app.toml"), "port = 9090\n").unwrap();
    std::fs::write(app.root.join("data/new.txt"), "added").unwrap();
    app.clear_calls();
    env.cmd()
        .args(["restore", &id, "--yes"])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("rolled back"))
        .stderr(predicate::str::contains("health check"));
    // Exactly the state before, and the service running again.
    assert_eq!(
        std::fs::read_to_string(app.root.join("config/app.toml")).unwrap(),
        "port = 9090\n"
    );
    assert!(app.root.join("data/new.txt").exists());
    assert!(app.running());
    assert_eq!(
        app.calls(),
        ["status", "stop", "start", "status", "stop", "start"]
    );
    let leftovers: Vec<String> = Env::files_in(&app.root)
        .into_iter()
        .filter(|n| n.starts_with(".backstop"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let show = env.json(&["show", &id]);
    assert_eq!(show["show"]["restores"][0]["outcome"], "rolled-back");
}

#[test]
fn guard_then_rollback_by_version() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(&env, "", "");
    // The upgrade: 0.1.11 → 0.1.12, run by guard with the BACKSTOP_* variables.
    let script = format!(
        "cd {} && ln -sfn versions/$BACKSTOP_TARGET_VERSION current && echo \"$BACKSTOP_INSTANCE $BACKSTOP_VERSION $BACKSTOP_TARGET_VERSION $BACKSTOP_BACKUP_ID\" > {}",
        app.root.display(),
        env.path("guard.env").display()
    );
    env.cmd()
        .args(["guard", "app", "--to", "0.1.12", "--", "sh", "-c", &script])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_link(app.root.join("current")).unwrap(),
        Path::new("versions/0.1.12")
    );
    let seen = std::fs::read_to_string(env.path("guard.env")).unwrap();
    let backups = env.list();
    let pre = &backups[0];
    assert_eq!(pre["reason"], "pre-upgrade");
    assert_eq!(pre["kind"], "automatic");
    assert_eq!(pre["app_version"], "0.1.11");
    assert_eq!(pre["upgraded_to"], "0.1.12");
    assert_eq!(
        seen.trim(),
        format!("app 0.1.11 0.1.12 {}", pre["id"].as_str().unwrap())
    );
    let show = env.json(&["show", pre["id"].as_str().unwrap()]);
    assert_eq!(show["show"]["guards"][0]["outcome"], "succeeded");

    // After the upgrade, the config changes and the database too.
    let mut env_file = std::fs::read_to_string(app.root.join("config/.env")).unwrap();
    env_file.push_str("TEST=true\n");
    std::fs::write(app.root.join("config/.env"), env_file).unwrap();
    sqlite(&app.root.join("data/app.db"), "INSERT INTO t VALUES (2);");
    std::fs::write(app.root.join("data/.marker"), "kept").unwrap();
    env.cmd()
        .args(["rollback", "0.1.11", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("back to version 0.1.11"));
    assert_eq!(
        std::fs::read_link(app.root.join("current")).unwrap(),
        Path::new("versions/0.1.11")
    );
    let env_file = std::fs::read_to_string(app.root.join("config/.env")).unwrap();
    assert!(!env_file.contains("TEST"), "{env_file}");
    // Secrets are 0600 whatever the archive says; never-restore stays.
    assert_eq!(mode(&app.root.join("config/.env")), 0o600);
    assert_eq!(
        std::fs::read_to_string(app.root.join("data/.marker")).unwrap(),
        "kept"
    );
    assert_eq!(
        sqlite(&app.root.join("data/app.db"), "PRAGMA integrity_check"),
        "ok"
    );
    assert_eq!(
        sqlite(
            &app.root.join("data/app.db"),
            "SELECT group_concat(x) FROM t"
        ),
        "1"
    );
    assert!(app.running());
    // The rollback's own safety backup holds the state it replaced.
    let latest = &env.list()[0];
    assert_eq!(latest["reason"], "pre-rollback");
    assert_eq!(latest["app_version"], "0.1.12");
    // `list --version` finds backups by version.
    let v11 = env.json(&["list", "--version", "0.1.11"]);
    assert!(
        v11["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["app_version"] == "0.1.11")
    );
}

#[test]
fn rollback_of_an_unknown_version_names_the_ones_there_are() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(&env, "", "");
    env.cmd()
        .args(["guard", "app", "--to", "0.1.12", "--", "true"])
        .assert()
        .success();
    env.cmd()
        .args(["rollback", "9.9.9", "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no available pre-upgrade backup of version 9.9.9",
        ))
        .stderr(predicate::str::contains("0.1.11"));
}

#[test]
fn a_failed_guarded_command_prints_the_way_back() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(&env, "", "");
    let script = format!(
        "echo broken > {}/config/app.toml; exit 3",
        app.root.display()
    );
    let out = env
        .cmd()
        .args(["guard", "app", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    assert!(stderr.contains("exited with status 3"), "{stderr}");
    assert!(
        stderr.contains(&format!("backstop restore {id}")),
        "{stderr}"
    );
    // Nothing was undone.
    assert_eq!(
        std::fs::read_to_string(app.root.join("config/app.toml")).unwrap(),
        "broken\n"
    );
    let show = env.json(&["show", &id]);
    assert_eq!(show["show"]["guards"][0]["outcome"], "failed");
    assert_eq!(show["show"]["guards"][0]["exit_code"], 3);
}

#[test]
fn a_failed_guarded_command_is_rolled_back_on_request() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(&env, "", "");
    let script = format!(
        "echo broken > {root}/config/app.toml; touch {root}/config/stray; exit 1",
        root = app.root.display()
    );
    let doc = {
        let out = env
            .cmd()
            .args([
                "--json",
                "guard",
                "app",
                "--rollback-on-failure",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(doc["guard"]["outcome"], "rolled-back");
    assert_eq!(
        std::fs::read_to_string(app.root.join("config/app.toml")).unwrap(),
        "port = 8080\n"
    );
    assert!(!app.root.join("config/stray").exists());
    assert!(app.running());
    let id = doc["guard"]["backup"].as_str().unwrap();
    assert_eq!(
        env.json(&["show", id])["show"]["guards"][0]["outcome"],
        "rolled-back"
    );
}

#[test]
fn guard_refuses_to_run_when_its_backup_fails_and_records_no_backup() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    app.config(
        &env,
        "",
        "[instances.app.sources.dump]\ncommand = \"echo partial; echo 'pg_dump: connection refused' >&2; exit 2\"",
    );
    let marker = env.path("ran");
    let touch = format!("touch {}", marker.display());
    env.cmd()
        .args(["guard", "app", "--", "sh", "-c", &touch])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("was not run"))
        .stderr(predicate::str::contains("connection refused"));
    assert!(!marker.exists());
    // The failed backup is recorded, with no archive left.
    let rows = env.list();
    assert_eq!(rows[0]["status"], "failed");
    assert!(rows[0]["error"].as_str().unwrap().contains("exit status 2"));
    assert!(Env::files_in(&env.home().join("backups/app")).is_empty());
    // --no-backup runs it anyway, and says so in the record.
    env.cmd()
        .args(["guard", "app", "--no-backup", "--", "sh", "-c", &touch])
        .assert()
        .success();
    assert!(marker.exists());
    // Both runs are in the catalog: the refusal, and the run without a backup.
    let guards = sqlite(
        &env.home().join("catalog.db"),
        "SELECT outcome || ':' || no_backup || ':' || coalesce(backup_id, '-') FROM guards ORDER BY id",
    );
    assert_eq!(guards, "refused:0:-\nsucceeded:1:-");
}

#[test]
fn command_sources_are_captured_and_fed_back() {
    let env = Env::new();
    let root = env.path("svc");
    std::fs::create_dir_all(&root).unwrap();
    let live = env.path("database.txt");
    std::fs::write(&live, "row 1\n").unwrap();
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.svc]\nroot = \"{}\"\n[instances.svc.sources.db]\ncommand = \"cat {live}\"\nrestore = \"cat > {live}\"\nfile = \"db.sql\"\n",
            root.display(),
            live = live.display()
        ),
    )
    .unwrap();
    let id = backup_id(&env, &["backup", "svc"]);
    let archive = env.home().join(format!("backups/svc/{id}.tar.zst"));
    let listing = std::process::Command::new("tar")
        .arg("-I")
        .arg("zstd")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("db/db.sql"));
    std::fs::write(&live, "row 1\nrow 2\n").unwrap();
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
    assert_eq!(std::fs::read_to_string(&live).unwrap(), "row 1\n");
    // The safety backup captured the state it replaced.
    let safety = &env.list()[0];
    assert_eq!(safety["reason"], "pre-restore");
    // Elsewhere, the dump is written as a file.
    let dr = env.path("dr");
    env.cmd()
        .args(["restore", &id, "--dest", dr.to_str().unwrap(), "--yes"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(dr.join("db/db.sql")).unwrap(),
        "row 1\n"
    );
}

#[test]
fn a_live_sqlite_database_is_captured_consistently_under_writes() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let root = env.path("svc");
    std::fs::create_dir_all(&root).unwrap();
    let db = root.join("app.db");
    sqlite(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t(n INTEGER PRIMARY KEY, pad TEXT);",
    );
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.svc]\nroot = \"{}\"\n[instances.svc.sources]\ndb = {{ sqlite = \"app.db\" }}\n",
            root.display()
        ),
    )
    .unwrap();
    // A writer inserting rows in transactions of ten, the whole time.
    let stop = env.path("stop");
    let script = format!(
        "while [ ! -e {stop} ]; do sqlite3 {db} \"PRAGMA busy_timeout=5000; BEGIN; {inserts} COMMIT;\" || exit 1; done",
        stop = stop.display(),
        db = db.display(),
        inserts = "INSERT INTO t(pad) VALUES (hex(randomblob(300)));".repeat(10)
    );
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let id = backup_id(&env, &["backup", "svc"]);
    std::fs::write(&stop, "").unwrap();
    assert!(writer.wait().unwrap().success(), "the writer kept working");
    let total: u64 = sqlite(&db, "SELECT count(*) FROM t").parse().unwrap();
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
    let rows: u64 = sqlite(&db, "SELECT count(*) FROM t").parse().unwrap();
    // A snapshot between two transactions: whole transactions only.
    assert!(rows > 0 && rows <= total, "{rows} of {total}");
    assert_eq!(rows % 10, 0, "a transaction was cut: {rows} rows");
    assert!(!root.join("app.db-wal").exists() || sqlite(&db, "SELECT 1") == "1");
}

#[test]
fn init_writes_a_config_doctor_accepts_and_profiles_select_sources() {
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let app = App::new(&env);
    let config = env.path("backstop.toml");
    env.cmd()
        .args([
            "--config",
            config.to_str().unwrap(),
            "init",
            "app",
            "--root",
        ])
        .arg(&app.root)
        .assert()
        .success()
        .stdout(predicate::str::contains("Wrote instance app"));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("symlink = \"current\""), "{text}");
    assert!(text.contains("config/.env"), "{text}");
    env.cmd()
        .args(["doctor"])
        .assert()
        .success()
        .stdout(predicate::str::contains("version 0.1.11"))
        .stdout(predicate::str::contains("All checks passed"));
    env.cmd()
        .args(["init", "app", "--root"])
        .arg(&app.root)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already defines instance app"));

    // Profiles back up a selection.
    app.config(&env, "", "");
    let doc = env.json(&["backup", "app", "--profile", "config-only"]);
    assert_eq!(doc["report"]["backup"]["profile"], "config-only");
    let id = doc["report"]["backup"]["id"].as_str().unwrap();
    let show = env.json(&["show", id]);
    let names: Vec<&str> = show["show"]["manifest"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config"]);
    env.cmd()
        .args(["backup", "app", "--profile", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("config-only"));
}

#[test]
fn doctor_says_what_is_wrong() {
    let env = Env::new();
    let root = env.path("gone");
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.gone]\nroot = \"{}\"\n[instances.here]\nroot = \"{}\"\n[instances.here.sources]\nmissing = \"nope\"\n",
            root.display(),
            env.dir.path().display()
        ),
    )
    .unwrap();
    env.cmd()
        .args(["doctor"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("the root"))
        .stdout(predicate::str::contains("does not exist"))
        .stdout(predicate::str::contains("source missing"));
    let doc = env.json(&["doctor", "here"]);
    assert_eq!(doc["doctor"]["worst"], "error");
}

/// An instance with a tree and a dump whose "database" is a file, and a
/// service whose state is a file.
fn dump_instance(env: &Env, extra_services: &str) -> (PathBuf, PathBuf, PathBuf) {
    let root = env.path("svc");
    std::fs::create_dir_all(root.join("conf")).unwrap();
    std::fs::write(root.join("conf/app.conf"), "v1\n").unwrap();
    let live = env.path("database.txt");
    std::fs::write(&live, "row 1\n").unwrap();
    let state = env.path("svc.state");
    std::fs::write(&state, "running\n").unwrap();
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            r#"[instances.svc]
root = "{root}"
[instances.svc.sources]
conf = "conf"
db = {{ command = "cat {live}", restore = "cat > {live}" }}
[instances.svc.services]
stop = "echo stopped > {state}"
start = "echo running > {state}"
status = "grep -q running {state}"
{extra_services}
"#,
            root = root.display(),
            live = live.display(),
            state = state.display(),
        ),
    )
    .unwrap();
    (root, live, state)
}

#[test]
fn a_failure_after_an_import_puts_the_dump_back_too() {
    let env = Env::new();
    let (root, live, state) = dump_instance(&env, "");
    let id = backup_id(&env, &["backup", "svc"]);
    std::fs::write(&live, "row 1\nrow 2\n").unwrap();
    std::fs::write(root.join("conf/app.conf"), "v2\n").unwrap();
    // Every step applied, the dump imported; then a failure before the
    // health check: all of it is undone.
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "restore.before-health=error")
        .args(["restore", &id, "--yes"])
        .assert()
        .code(5);
    assert_eq!(std::fs::read_to_string(&live).unwrap(), "row 1\nrow 2\n");
    assert_eq!(
        std::fs::read_to_string(root.join("conf/app.conf")).unwrap(),
        "v2\n"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "running\n");

    // The same point with the process killed: recovery undoes it.
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "restore.before-health=abort")
        .args(["restore", &id, "--yes"])
        .assert()
        .failure();
    assert_eq!(
        std::fs::read_to_string(&live).unwrap(),
        "row 1\n",
        "imported before the kill"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "stopped\n");
    env.cmd()
        .args(["recover", "svc"])
        .assert()
        .success()
        .stdout(predicate::str::contains("rolled back"))
        .stdout(predicate::str::contains(
            "started again what it had stopped: service",
        ));
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "running\n");
    assert_eq!(std::fs::read_to_string(&live).unwrap(), "row 1\nrow 2\n");
    assert_eq!(
        std::fs::read_to_string(root.join("conf/app.conf")).unwrap(),
        "v2\n"
    );
    // Killed during the safety backup, with the service stopped: the next
    // command that takes the lock starts it again.
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "backup.after-scan=abort")
        .args(["restore", &id, "--yes"])
        .assert()
        .failure();
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "stopped\n");
    env.cmd().args(["backup", "svc"]).assert().success();
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "running\n");
    assert_eq!(std::fs::read_to_string(&live).unwrap(), "row 1\nrow 2\n");
    // And a restore that completes gives both back.
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
    assert_eq!(std::fs::read_to_string(&live).unwrap(), "row 1\n");
    assert_eq!(
        std::fs::read_to_string(root.join("conf/app.conf")).unwrap(),
        "v1\n"
    );
}

#[test]
fn a_cold_backup_stops_the_services_and_starts_them_again() {
    let env = Env::new();
    let (_root, live, state) = dump_instance(&env, "cold_backup = true");
    // The dump only succeeds while the service is stopped.
    let config = std::fs::read_to_string(env.path("backstop.toml"))
        .unwrap()
        .replace(
            &format!("command = \"cat {}\"", live.display()),
            &format!(
                "command = \"grep -q stopped {} && cat {}\"",
                state.display(),
                live.display()
            ),
        );
    std::fs::write(env.path("backstop.toml"), config).unwrap();
    env.cmd().args(["backup", "svc"]).assert().success();
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "running\n");
    // Started again after a failed backup too.
    std::fs::write(&live, "").unwrap();
    std::fs::remove_file(&live).unwrap();
    env.cmd().args(["backup", "svc"]).assert().code(1);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "running\n");
}

/// A site whose version probe reads `VERSION` at its root, set to
/// `version`, with one more file; its config in the scratch directory.
fn versioned_site(env: &Env, version: &str) -> PathBuf {
    let root = env.path("site");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("VERSION"), format!("{version}\n")).unwrap();
    std::fs::write(root.join("page.html"), format!("made by {version}")).unwrap();
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.site]\nroot = \"{}\"\nversion = {{ file = \"VERSION\" }}\n\n\
             [instances.site.sources]\nfiles = \".\"\n",
            root.display()
        ),
    )
    .unwrap();
    root
}

/// The plan's check named `name`.
fn plan_check<'a>(plan: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    plan["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {plan}"))
}

#[test]
fn restore_across_a_major_version_is_refused_without_force() {
    let env = Env::new();
    let root = versioned_site(&env, "1.4.0");
    let id = backup_id(&env, &["backup", "site"]);
    // The upgrade to 2.x.
    std::fs::write(root.join("VERSION"), "v2.0.1\n").unwrap();
    std::fs::write(root.join("page.html"), "made by 2.0.1").unwrap();

    // Refused, the dry run too (exit 1), naming both versions and the way out.
    for extra in [&["--dry-run"][..], &["--yes"][..]] {
        let mut args = vec!["restore", id.as_str()];
        args.extend_from_slice(extra);
        let out = env.cmd().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("1.4.0 (major version 1)")
                && err.contains("v2.0.1 (major version 2)")
                && err.contains("backstop rollback")
                && err.contains("--force"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(root.join("page.html")).unwrap(),
        "made by 2.0.1",
        "a refused restore changed the instance"
    );
    assert_eq!(
        env.list().len(),
        1,
        "a refused restore took a safety backup"
    );

    // With --force: the plan shows the check overridden, and so does the
    // restore; the way back crosses the gate again, so it is forced too.
    let plan = env.json(&["restore", &id, "--dry-run", "--force"]);
    let check = plan_check(&plan["restore"]["plan"], "version");
    assert_eq!(check["outcome"], "overridden", "{plan}");
    assert_eq!(check["ok"], false, "{plan}");
    let out = env
        .cmd()
        .args(["restore", &id, "--force", "--yes"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("check    version (overridden by --force)"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("page.html")).unwrap(),
        "made by 1.4.0"
    );
    let restores = env.json(&["show", &id]);
    let undo_id = restores["show"]["restores"][0]["safety_backup"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains(&format!("`backstop restore {undo_id} --force`")),
        "{text}"
    );
    env.cmd()
        .args(["restore", &undo_id, "--force", "--yes"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(root.join("page.html")).unwrap(),
        "made by 2.0.1"
    );
}

#[test]
fn restore_within_a_major_version_shows_the_version_check_passed() {
    let env = Env::new();
    let root = versioned_site(&env, "0.3.1");
    let id = backup_id(&env, &["backup", "site"]);
    std::fs::write(root.join("VERSION"), "0.3.7\n").unwrap();
    let plan = env.json(&["restore", &id, "--dry-run"]);
    let check = plan_check(&plan["restore"]["plan"], "version");
    assert_eq!(check["outcome"], "passed", "{plan}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("major version 0.3"),
        "{plan}"
    );

    // Below 1.0 the minor counts: 0.3 → 0.4 is another major version.
    std::fs::write(root.join("VERSION"), "0.4.0\n").unwrap();
    env.cmd().args(["restore", &id, "--yes"]).assert().code(1);

    // A version that is not one (a git hash) is shown, never blocks.
    std::fs::write(root.join("VERSION"), "git-4f2a9c\n").unwrap();
    let plan = env.json(&["restore", &id, "--dry-run"]);
    let check = plan_check(&plan["restore"]["plan"], "version");
    assert_eq!(check["outcome"], "not-compared", "{plan}");
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
}

#[test]
fn rollback_crosses_major_versions_without_force() {
    let env = Env::new();
    let root = versioned_site(&env, "1.9.0");
    env.cmd()
        .args(["backup", "site", "--reason", "pre-upgrade"])
        .assert()
        .success();
    std::fs::write(root.join("VERSION"), "2.0.0\n").unwrap();
    let out = env.cmd().args(["rollback", "--yes"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("VERSION")).unwrap(),
        "1.9.0\n"
    );
    // The way back to 2.0.0 is a plain restore across major versions.
    let text = String::from_utf8_lossy(&out.stdout);
    let undo = text
        .split('`')
        .find(|s| s.starts_with("backstop restore "))
        .unwrap_or_else(|| panic!("no undo command in {text}"));
    assert!(undo.ends_with(" --force"), "{text}");
    let mut args: Vec<&str> = undo.split(' ').skip(1).collect();
    args.push("--yes");
    env.cmd().args(&args).assert().success();
    assert_eq!(
        std::fs::read_to_string(root.join("VERSION")).unwrap(),
        "2.0.0\n"
    );
}

#[test]
fn an_exact_restore_gives_a_databases_directory_its_time_back() {
    // data/app.db is its own source inside the tree: its exchange, and its
    // staging directory in data/, moved data/'s time. Exact means the
    // backup's time, for data/ too, and for the undo the one it had.
    if !backstop_test_support::have("sqlite3") {
        return;
    }
    let env = Env::new();
    let root = env.path("app");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("conf")).unwrap();
    std::fs::write(root.join("conf/c"), b"c").unwrap();
    std::fs::write(root.join("data/notes"), b"n").unwrap();
    sqlite(
        &root.join("data/app.db"),
        "create table t(x); insert into t values (1);",
    );
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.app]\nroot = \"{}\"\n[instances.app.sources]\nall = \".\"\ndb = {{ sqlite = \"data/app.db\" }}\n",
            root.display()
        ),
    )
    .unwrap();
    let then = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    let set_time = |dir: &Path| {
        std::fs::File::open(dir)
            .unwrap()
            .set_modified(then)
            .unwrap();
    };
    let time_of = |dir: &Path| std::fs::metadata(dir).unwrap().modified().unwrap();
    set_time(&root.join("data"));
    let id = backup_id(&env, &["backup", "app"]);
    sqlite(&root.join("data/app.db"), "insert into t values (2);");
    set_time(&root.join("data"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    env.cmd()
        .args(["restore", &id, "--yes", "--no-pre-backup"])
        .assert()
        .success();
    assert_eq!(
        sqlite(&root.join("data/app.db"), "select count(*) from t;"),
        "1"
    );
    assert_eq!(time_of(&root.join("data")), then, "the backup's time");
    // Undone (a failed health check): the time it had before.
    sqlite(&root.join("data/app.db"), "insert into t values (3);");
    let before = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    std::fs::File::open(root.join("data"))
        .unwrap()
        .set_modified(before)
        .unwrap();
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "restore.before-commit=error")
        .args(["restore", &id, "--yes", "--no-pre-backup"])
        .assert()
        .failure();
    assert_eq!(
        sqlite(&root.join("data/app.db"), "select count(*) from t;"),
        "2"
    );
    assert_eq!(time_of(&root.join("data")), before, "the time it had");
    // Killed right after the commit point: recovery finishes the cleanup,
    // the time included.
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "restore.after-commit=abort")
        .args(["restore", &id, "--yes", "--no-pre-backup"])
        .assert()
        .failure();
    env.cmd().args(["recover", "app"]).assert().success();
    assert_eq!(
        sqlite(&root.join("data/app.db"), "select count(*) from t;"),
        "1"
    );
    assert_eq!(time_of(&root.join("data")), then, "the backup's time");
}
