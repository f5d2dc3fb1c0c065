//! The seed systems' own workflows, replayed with backstop and the example
//! configs under `examples/` exactly as written (only the root is pointed
//! at a temporary directory).

use std::path::{Path, PathBuf};

use predicates::prelude::*;

use crate::support::Env;

/// `examples/<name>.toml` with its `root = "…"` lines replaced by `roots`,
/// in order, written as the test's config.
fn example(env: &Env, name: &str, roots: &[&Path]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut next = roots.iter();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("root = ") {
                let root = next.next().expect("a root for each instance");
                format!("root = \"{}\"\n", root.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(next.next().is_none(), "{name}: fewer instances than roots");
    std::fs::write(env.path("backstop.toml"), text).unwrap();
}

fn members(archive: &Path) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .arg("-I")
        .arg("zstd")
        .arg("-tf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// SyrvisCore's "Simulation Test" and "Disaster Recovery Test".
#[test]
fn syrviscore_upgrade_rollback_and_disaster_recovery() {
    let env = Env::new();
    let home = env.path("syrviscore");
    for v in ["0.1.11", "0.1.12"] {
        write(
            &home.join(format!("versions/{v}/syrviscore-{v}-py3-none-any.whl")),
            &format!("wheel {v}"),
        );
    }
    std::os::unix::fs::symlink("versions/0.1.11", home.join("current")).unwrap();
    write(&home.join("config/.env"), "DOMAIN=nas.local\n");
    write(&home.join("data/traefik/acme.json"), "{}");
    example(&env, "syrviscore", &[&home]);

    // 1–2. Upgrade 0.1.11 → 0.1.12 under guard: a backup appears.
    let install = format!("ln -sfn versions/0.1.12 {}/current", home.display());
    env.cmd()
        .args([
            "guard",
            "syrviscore",
            "--to",
            "0.1.12",
            "--",
            "sh",
            "-c",
            &install,
        ])
        .assert()
        .success();
    // 3. The backup exists, with the version it was taken of.
    let list = env.json(&["list", "syrviscore", "--version", "0.1.11"]);
    assert_eq!(list["backups"][0]["reason"], "pre-upgrade");
    assert_eq!(list["backups"][0]["upgraded_to"], "0.1.12");
    // 4. Modify config.
    let mut env_file = std::fs::read_to_string(home.join("config/.env")).unwrap();
    env_file.push_str("TEST=true\n");
    std::fs::write(home.join("config/.env"), env_file).unwrap();
    // 5. Roll back (offline: the wheel is in the backup).
    env.cmd()
        .args(["rollback", "0.1.11", "--yes"])
        .assert()
        .success();
    // 6. TEST is gone, `current` points at 0.1.11.
    let env_file = std::fs::read_to_string(home.join("config/.env")).unwrap();
    assert!(!env_file.contains("TEST"), "{env_file}");
    assert_eq!(
        std::fs::read_link(home.join("current")).unwrap(),
        Path::new("versions/0.1.11")
    );

    // Disaster recovery: a manual backup to a file, the home removed,
    // restored from the file alone.
    let file = env.path("test-backup.tar.zst");
    env.cmd()
        .args(["backup", "syrviscore", "--output", file.to_str().unwrap()])
        .assert()
        .success();
    let before = backstop_test_support::snapshot(&home, Default::default());
    std::fs::remove_dir_all(&home).unwrap();
    env.cmd()
        .args([
            "restore",
            file.to_str().unwrap(),
            "--path",
            home.to_str().unwrap(),
            "--yes",
        ])
        .assert()
        .success();
    assert_eq!(
        backstop_test_support::snapshot(&home, Default::default()),
        before
    );
    env.cmd()
        .args(["doctor", "syrviscore"])
        .assert()
        .success()
        .stdout(predicate::str::contains("version 0.1.11"));
}

/// Sindri's profiles, always-excluded caches, never-restored markers, and
/// its three restore modes with a dry run.
#[test]
fn sindri_profiles_markers_and_restore_modes() {
    let env = Env::new();
    let home = env.path("developer");
    for (p, t) in [
        ("workspace/projects/app/main.rs", "fn main() {}"),
        ("workspace/projects/app/node_modules/x.js", "cache"),
        ("workspace/scripts/deploy.sh", "echo deploy"),
        ("workspace/.system/bootstrap.yaml", "installed: [a]"),
        (".claude/settings.json", "{}"),
        (".ssh/host_keys/ssh_host_ed25519_key", "KEY"),
        (".ssh/authorized_keys", "injected"),
        (".gitconfig", "[user]\nname = dev\n"),
        (".bashrc", "alias ll='ls -l'"),
        (".config/app/app.toml", "x = 1"),
        (".config/mise/shims/node", "shim"),
        (".local/bin/tool", "tool"),
        (".local/share/mise/installs/node/bin", "node"),
        (".local/state/mise/state", "s"),
        (".cache/pip/wheel", "cache"),
        (".initialized", "1"),
        ("notes.txt", "full only"),
    ] {
        write(&home.join(p), t);
    }
    example(&env, "sindri", &[&home]);

    let backup = |profile: &str| -> (String, Vec<String>) {
        let doc = env.json(&["backup", "sindri", "--profile", profile]);
        let id = doc["report"]["backup"]["id"].as_str().unwrap().to_string();
        let archive = PathBuf::from(doc["report"]["backup"]["location"].as_str().unwrap());
        (id, members(&archive))
    };
    let has = |m: &[String], p: &str| m.iter().any(|x| x == &format!("home/{p}"));

    let (_, user) = backup("user-data");
    for p in [
        "workspace/projects/app/main.rs",
        ".claude/settings.json",
        ".ssh/host_keys/ssh_host_ed25519_key",
        ".gitconfig",
    ] {
        assert!(has(&user, p), "user-data lacks {p}: {user:?}");
    }
    for p in [
        ".bashrc",
        ".config/app/app.toml",
        "workspace/.system/bootstrap.yaml",
        ".ssh/authorized_keys",
        ".initialized",
        "notes.txt",
        "workspace/projects/app/node_modules/x.js",
    ] {
        assert!(!has(&user, p), "user-data has {p}");
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The default profile is standard.
    let doc = env.json(&["backup", "sindri"]);
    assert_eq!(doc["report"]["backup"]["profile"], "standard");
    let standard = members(Path::new(
        doc["report"]["backup"]["location"].as_str().unwrap(),
    ));
    for p in [".bashrc", ".config/app/app.toml", ".local/bin/tool"] {
        assert!(has(&standard, p), "standard lacks {p}");
    }
    for p in [
        ".config/mise/shims/node",
        ".local/state/mise/state",
        "notes.txt",
    ] {
        assert!(!has(&standard, p), "standard has {p}");
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (full_id, full) = backup("full");
    assert!(has(&full, "notes.txt"));
    for p in [
        ".cache/pip/wheel",
        ".local/share/mise/installs/node/bin",
        ".local/state/mise/state",
        "workspace/projects/app/node_modules/x.js",
    ] {
        assert!(!has(&full, p), "full has {p}");
    }

    // The instance changes; markers change too.
    write(&home.join(".gitconfig"), "[user]\nname = changed\n");
    write(&home.join("workspace/projects/new.rs"), "new");
    write(&home.join(".initialized"), "2");
    write(
        &home.join("workspace/.system/bootstrap.yaml"),
        "installed: [a, b]",
    );

    // Safe: only what is missing, conflicts listed, nothing overwritten.
    std::fs::remove_file(home.join("workspace/scripts/deploy.sh")).unwrap();
    env.cmd()
        .args(["restore", &full_id, "--mode", "safe", "--yes"])
        .assert()
        .success();
    assert!(home.join("workspace/scripts/deploy.sh").exists());
    assert!(
        std::fs::read_to_string(home.join(".gitconfig"))
            .unwrap()
            .contains("changed")
    );
    // Merge: backup files over the live ones, replaced ones kept as .bak.
    let dry = env.json(&["restore", &full_id, "--mode", "merge", "--dry-run"]);
    assert!(
        dry["restore"]["plan"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |a| a["action"] == "replace" && a["path"].as_str().unwrap().ends_with(".gitconfig")
            )
    );
    assert!(
        std::fs::read_to_string(home.join(".gitconfig"))
            .unwrap()
            .contains("changed")
    );
    env.cmd()
        .args(["restore", &full_id, "--mode", "merge", "--yes"])
        .assert()
        .success();
    assert!(
        std::fs::read_to_string(home.join(".gitconfig"))
            .unwrap()
            .contains("name = dev")
    );
    assert!(
        Env::files_in(&home)
            .iter()
            .any(|n| n.starts_with(".gitconfig.bak-"))
    );
    assert!(home.join("workspace/projects/new.rs").exists());
    // Exact: added files go; markers are never touched.
    env.cmd()
        .args(["restore", &full_id, "--mode", "exact", "--yes"])
        .assert()
        .success();
    assert!(!home.join("workspace/projects/new.rs").exists());
    assert_eq!(
        std::fs::read_to_string(home.join(".initialized")).unwrap(),
        "2"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("workspace/.system/bootstrap.yaml")).unwrap(),
        "installed: [a, b]"
    );
    assert_eq!(
        std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
        "injected"
    );
    // Caches were never in the backup, and an exact restore leaves them.
    assert!(home.join(".cache/pip/wheel").exists());
}

/// Leger: a quadlet deployment with a named volume — backup create, list,
/// info; the unit files and the volume removed; restore; a guarded remove;
/// a corrupted backup refused with the deployment left as it was.
#[test]
fn leger_quadlet_deployment_backup_remove_restore() {
    use backstop_test_support::podman::{self, Volume};
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let dir = env.path("systemd/web");
    let volume = Volume::create("leger-data");
    write(
        &dir.join("web.container"),
        "[Unit]\nDescription=web\n\n[Container]\nImage=localhost/web:1\nVolume=data.volume:/var/lib/web\n",
    );
    write(
        &dir.join("data.volume"),
        &format!("[Volume]\nVolumeName={}\n", volume.name),
    );
    let mp = volume.mountpoint();
    write(&mp.join("db/records.json"), "[1, 2, 3]");
    write(&mp.join("uploads/a.png"), "png");
    example(&env, "leger", &[&dir]);

    // backup create / list / info
    let doc = env.json(&["backup", "create", "web"]);
    let id = doc["report"]["backup"]["id"].as_str().unwrap().to_string();
    let list = env.json(&["backup", "list", "web"]);
    assert_eq!(list["backups"][0]["id"], id.as_str());
    let info = env.json(&["backup", "info", &id]);
    let kinds: Vec<(String, String)> = info["show"]["manifest"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("quadlets".into(), "path".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(format!("volume-{}", volume.name), "volume".into())),
        "{kinds:?}"
    );

    // Remove the quadlet files and the volume; restore brings both back.
    std::fs::remove_file(dir.join("web.container")).unwrap();
    std::fs::remove_file(dir.join("data.volume")).unwrap();
    podman::podman(None, &["volume", "rm", &volume.name]);
    env.cmd()
        .args(["backup", "restore", &id, "--yes"])
        .assert()
        .success();
    assert!(dir.join("web.container").exists() && dir.join("data.volume").exists());
    let mp = volume.mountpoint();
    assert_eq!(
        std::fs::read_to_string(mp.join("db/records.json")).unwrap(),
        "[1, 2, 3]"
    );
    assert!(mp.join("uploads/a.png").exists());

    // A guarded remove makes an automatic backup first.
    let remove = format!("rm {}/web.container", dir.display());
    env.cmd()
        .args([
            "guard",
            "web",
            "--reason",
            "pre-remove",
            "--",
            "sh",
            "-c",
            &remove,
        ])
        .assert()
        .success();
    let newest = &env.json(&["list", "web"])["backups"][0];
    assert_eq!(newest["reason"], "pre-remove");
    assert_eq!(newest["kind"], "automatic");
    env.cmd()
        .args(["restore", newest["id"].as_str().unwrap(), "--yes"])
        .assert()
        .success();
    assert!(dir.join("web.container").exists());

    // A corrupted backup: refused, the deployment as it was.
    write(&mp.join("db/records.json"), "[1, 2, 3, 4]");
    let archive = PathBuf::from(list["backups"][0]["location"].as_str().unwrap());
    let len = std::fs::metadata(&archive).unwrap().len();
    crate::support::flip_byte(&archive, len / 2);
    env.cmd().args(["restore", &id, "--yes"]).assert().code(4);
    assert_eq!(
        std::fs::read_to_string(mp.join("db/records.json")).unwrap(),
        "[1, 2, 3, 4]"
    );
    assert!(dir.join("web.container").exists());
}

/// abssctl: two instances with service assets; restore with `--dry-run
/// --json`, `--dest`, `--no-pre-backup`, `--backup-message`; reconcile
/// with a missing, an orphaned and a mismatched archive, applied twice.
#[test]
fn abssctl_two_instances_restore_options_and_reconcile() {
    let env = Env::new();
    let roots: Vec<PathBuf> = ["alpha", "beta"].iter().map(|n| env.path(n)).collect();
    for (root, name) in roots.iter().zip(["alpha", "beta"]) {
        write(&root.join("data/site.db"), &format!("{name} data"));
        write(&root.join("config/app.toml"), &format!("name = \"{name}\""));
        write(&root.join("config/secrets.env"), "KEY=1");
        write(
            &root.join(format!("service/{name}.service")),
            "[Service]\nExecStart=/usr/bin/app",
        );
        write(
            &root.join(format!("service/nginx/{name}.conf")),
            "server {}",
        );
    }
    example(&env, "abssctl", &[&roots[0], &roots[1]]);
    let alpha = env.json(&["backup", "alpha"])["report"]["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let beta = env.json(&["backup", "beta"])["report"]["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // --instance asserts; --dry-run --json shows the plan and changes nothing.
    write(&roots[0].join("data/site.db"), "changed");
    env.cmd()
        .args([
            "backup",
            "restore",
            &alpha,
            "--instance",
            "beta",
            "--dry-run",
        ])
        .assert()
        .code(2);
    let plan = env.json(&["restore", &alpha, "--instance", "alpha", "--dry-run"]);
    assert_eq!(plan["restore"]["outcome"], "dry-run");
    assert_eq!(plan["restore"]["plan"]["totals"]["replace"], 1);
    assert_eq!(
        std::fs::read_to_string(roots[0].join("data/site.db")).unwrap(),
        "changed"
    );
    // --dest: a test copy elsewhere, the live instance untouched.
    let test = env.path("restore-test");
    env.cmd()
        .args(["restore", &alpha, "--dest", test.to_str().unwrap(), "--yes"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(test.join("data/site.db")).unwrap(),
        "alpha data"
    );
    assert!(test.join("service/nginx/alpha.conf").exists());
    // --backup-message names the safety backup; --no-pre-backup skips it.
    env.cmd()
        .args([
            "restore",
            &alpha,
            "--backup-message",
            "before the fix",
            "--yes",
        ])
        .assert()
        .success();
    let safety = &env.json(&["list", "alpha"])["backups"][0];
    assert_eq!(safety["reason"], "pre-restore");
    assert_eq!(safety["message"], "before the fix");
    let rows = env.list().len();
    env.cmd()
        .args(["restore", &beta, "--no-pre-backup", "--yes"])
        .assert()
        .success();
    assert_eq!(env.list().len(), rows, "no safety backup");
    let show = env.json(&["show", &beta]);
    assert_eq!(
        show["show"]["restores"][0]["safety_backup"],
        serde_json::Value::Null
    );

    // Reconcile: one archive missing, one orphaned, one mismatched.
    let store = env.home().join("backups");
    let missing = PathBuf::from(env.json(&["show", &beta])["show"]["path"].as_str().unwrap());
    std::fs::rename(&missing, env.path("aside.tar.zst")).unwrap();
    // An orphan: made with another home a second later (its own id),
    // copied in with its sidecar.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let other = Env::new();
    let orphan = other.backup(&roots[1], &[]);
    let orphan_file = PathBuf::from(orphan["location"].as_str().unwrap());
    let orphan_id = orphan["id"].as_str().unwrap().to_string();
    std::fs::copy(
        &orphan_file,
        store.join("beta").join(orphan_file.file_name().unwrap()),
    )
    .unwrap();
    let doc = env.json(&["reconcile", "--apply"]);
    let problems: Vec<&str> = doc["reconcile"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["problem"].as_str().unwrap())
        .collect();
    let mut sorted = problems.clone();
    sorted.sort();
    assert_eq!(sorted, ["missing", "orphaned"], "{doc}");
    // The archive comes back: mismatched.
    std::fs::rename(env.path("aside.tar.zst"), &missing).unwrap();
    let doc = env.json(&["reconcile", "--apply"]);
    assert_eq!(doc["reconcile"]["findings"][0]["problem"], "mismatched");
    let again = env.json(&["reconcile", "--apply"]);
    assert!(
        again["reconcile"]["findings"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{again}"
    );
    assert!(env.list().iter().any(|r| r["id"] == orphan_id.as_str()));
    env.cmd().args(["verify", "--all"]).assert().success();
}

/// Duck: a compose-style app — a pre-upgrade backup via guard, a data-only
/// restore that keeps the current config, failed attempts on record, and the
/// store moved to another filesystem.
#[test]
fn duck_upgrade_data_only_restore_failed_records_and_a_moved_store() {
    let env = Env::new();
    let root = env.path("duck");
    write(
        &root.join("docker-compose.yml"),
        "services:\n  duck:\n    image: duck:0.8.0\n",
    );
    write(&root.join(".env"), "TOKEN=abc\n");
    write(&root.join("VERSION"), "0.8.0\n");
    write(&root.join("config/duck.toml"), "theme = \"light\"\n");
    write(&root.join("data/records.db"), "records v1");
    example(&env, "duck", &[&root]);
    // `docker compose` is not what this test is about: stand-ins that keep
    // the service's state in a file.
    let bin = env.path("bin");
    write(
        &bin.join("docker"),
        &format!(
            "#!/bin/sh\nstate={}\ncase \"$2\" in\n  stop) echo stopped > $state ;;\n  start) echo running > $state ;;\n  ps) grep -q running $state && echo abc123 ;;\nesac\n",
            env.path("duck.state").display()
        ),
    );
    std::fs::write(env.path("duck.state"), "running\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("docker"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // A pre-upgrade backup via guard; the upgrade changes compose and VERSION.
    let upgrade = format!(
        "cd {} && sed -i s/0.8.0/0.9.0/ docker-compose.yml && echo 0.9.0 > VERSION",
        root.display()
    );
    env.cmd()
        .env("PATH", &path)
        .args(["guard", "duck", "--to", "0.9.0", "--", "sh", "-c", &upgrade])
        .assert()
        .success();
    let pre = env.json(&["list", "duck", "--reason", "pre-upgrade"])["backups"][0].clone();
    assert_eq!(pre["app_version"], "0.8.0");
    let id = pre["id"].as_str().unwrap().to_string();

    // New data and a new config after the upgrade; the data goes bad.
    write(&root.join("config/duck.toml"), "theme = \"dark\"\n");
    write(&root.join("data/records.db"), "records corrupted");
    // 0.8 data under 0.9 (below 1.0 a minor release is a major one): the
    // version gate asks for --force, and changes nothing without it.
    env.cmd()
        .env("PATH", &path)
        .args(["restore", &id, "--only", "data", "--yes"])
        .assert()
        .code(1);
    assert_eq!(
        std::fs::read_to_string(root.join("data/records.db")).unwrap(),
        "records corrupted"
    );
    env.cmd()
        .env("PATH", &path)
        .args(["restore", &id, "--only", "data", "--yes", "--force"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(root.join("data/records.db")).unwrap(),
        "records v1"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("config/duck.toml")).unwrap(),
        "theme = \"dark\"\n",
        "the current config is kept"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("VERSION")).unwrap(),
        "0.9.0\n"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("duck.state")).unwrap(),
        "running\n"
    );

    // A failed attempt is recorded, with why.
    std::fs::remove_dir_all(root.join("config")).unwrap();
    env.cmd()
        .env("PATH", &path)
        .args(["backup", "duck"])
        .assert()
        .code(1);
    let failed = env.json(&["list", "duck", "--status", "failed"]);
    assert!(
        failed["backups"][0]["error"]
            .as_str()
            .unwrap()
            .contains("config"),
        "{failed}"
    );
    write(&root.join("config/duck.toml"), "theme = \"dark\"\n");

    // The store moves to another directory (another filesystem when root).
    let fs = if rustix::process::geteuid().is_root() {
        Some(backstop_test_support::Tmpfs::mount(64 << 20))
    } else {
        None
    };
    let to = match &fs {
        Some(fs) => fs.path().join("backstop"),
        None => env.path("external/backstop"),
    };
    env.cmd()
        .args(["migrate", "--to", to.to_str().unwrap()])
        .assert()
        .success();
    env.cmd().args(["verify", "--all"]).assert().success();
    env.cmd()
        .env("PATH", &path)
        .args(["restore", &id, "--only", "data", "--yes", "--force"])
        .assert()
        .success();
    let newest = &env.json(&["list", "duck"])["backups"][0];
    assert!(
        newest["location"]
            .as_str()
            .unwrap()
            .starts_with(to.to_str().unwrap())
    );
}
