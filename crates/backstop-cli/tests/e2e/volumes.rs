//! Podman volumes, for real: a volume is one tar in the archive, an exact
//! restore makes it what it was (re-creating it if it was removed), the
//! containers using it are stopped around the import, quadlet files give
//! their volumes and bind mounts as sources, and `--dest` and `--dry-run`
//! leave the volume alone.
//!
//! Every backstop process here sees the test `CONTAINERS_CONF`, and most a
//! `podman` on `PATH` that logs its arguments (and, at a `volume import`,
//! whether the watched containers run) before running the real podman.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use backstop_test_support::podman::{self, Container, IMAGE, Volume, containers_conf, podman};

use crate::support::Env;

/// Runs backstop in `env` with extra environment variables.
pub(crate) struct Bs<'a> {
    env: &'a Env,
    vars: Vec<(String, OsString)>,
}

impl<'a> Bs<'a> {
    pub(crate) fn new(env: &'a Env) -> Bs<'a> {
        Bs {
            env,
            vars: vec![("CONTAINERS_CONF".into(), containers_conf().into())],
        }
    }

    pub(crate) fn var(mut self, key: &str, value: impl Into<OsString>) -> Bs<'a> {
        self.vars.push((key.into(), value.into()));
        self
    }

    /// A podman on `PATH` that logs its calls to `podman.log`, and at each
    /// `volume import` whether each of `watched` is running then. While a
    /// file `fail-import` exists, the next `volume import` fails (and
    /// removes the file).
    pub(crate) fn logged_podman(self, watched: &[&str]) -> Bs<'a> {
        let real = find_program("podman");
        let bin = self.env.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = self.env.path("podman.log");
        let script = format!(
            "#!/bin/sh\n\
             echo \"$*\" >> '{log}'\n\
             if [ \"$1\" = volume ] && [ \"$2\" = import ]; then\n\
             \tfor c in {watched}; do\n\
             \t\techo \"at-import $c $('{real}' inspect --format '{{{{.State.Running}}}}' \"$c\" </dev/null)\" >> '{log}'\n\
             \tdone\n\
             \tif [ -e '{fail}' ]; then\n\
             \t\trm -f '{fail}'\n\
             \t\tcat >/dev/null\n\
             \t\techo 'Error: injected import failure' >&2\n\
             \t\texit 125\n\
             \tfi\n\
             fi\n\
             exec '{real}' \"$@\"\n",
            log = log.display(),
            fail = self.env.path("fail-import").display(),
            real = real.display(),
            watched = watched.join(" "),
        );
        let wrapper = bin.join("podman");
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut joined = OsString::from(bin.as_os_str());
        joined.push(":");
        joined.push(path);
        self.var("PATH", joined)
    }

    /// The lines the logging podman wrote so far.
    pub(crate) fn podman_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.env.path("podman.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.env.cmd();
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd.args(args).output().unwrap()
    }

    /// Runs with `--json`, expecting success, and returns the document.
    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "backstop {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `backup web`: the backup's record.
    pub(crate) fn backup(&self) -> serde_json::Value {
        self.json(&["backup", "web"])["report"]["backup"].clone()
    }
}

fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

/// Writes the config with instance `web` rooted at `<env>/app`; `body` is
/// the rest of its table (and any subtables).
pub(crate) fn config(env: &Env, body: &str) {
    std::fs::create_dir_all(env.path("app")).unwrap();
    std::fs::write(
        env.path("backstop.toml"),
        format!("[instances.web]\nroot = \"app\"\n{body}"),
    )
    .unwrap();
}

/// Fills `dir` with files, directories, a symlink and an empty directory.
pub(crate) fn fill(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(dir.join("sub/b.txt"), b"beta\n").unwrap();
    std::fs::set_permissions(
        dir.join("sub/b.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("sub/deeper/c.bin"), bytes).unwrap();
    std::os::unix::fs::symlink("sub/b.txt", dir.join("link")).unwrap();
    // Files of the container's users, not the host's.
    std::os::unix::fs::lchown(dir.join("sub/deeper"), Some(1234), Some(4321)).unwrap();
    std::os::unix::fs::lchown(dir.join("sub/deeper/c.bin"), Some(1234), Some(4321)).unwrap();
}

/// Changes of every kind an exact restore must undo.
fn disturb(dir: &Path) {
    std::fs::write(dir.join("a.txt"), b"changed\n").unwrap();
    std::fs::remove_file(dir.join("sub/b.txt")).unwrap();
    std::fs::write(dir.join("added.txt"), b"new\n").unwrap();
    std::fs::create_dir_all(dir.join("added-dir/inner")).unwrap();
    std::fs::write(dir.join("added-dir/inner/x"), b"x").unwrap();
    std::fs::remove_dir(dir.join("empty")).unwrap();
}

/// What is in `dir`: each entry's relative path, kind, mode and content.
pub(crate) fn contents(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let owner = format!("{}:{}", meta.uid(), meta.gid());
            let what = if meta.is_symlink() {
                format!(
                    "link {owner} -> {}",
                    std::fs::read_link(&path).unwrap().display()
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o} {owner}")
            } else {
                let data = std::fs::read(&path).unwrap();
                format!(
                    "file {mode:o} {owner} {} bytes {:?}",
                    data.len(),
                    String::from_utf8_lossy(&data[..data.len().min(40)])
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

/// The member names of a zstd-compressed archive, by GNU tar.
fn archive_members(archive: &Path) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .arg("-I")
        .arg("zstd")
        .arg("-tf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -tf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// One member of a zstd-compressed archive, by GNU tar.
fn archive_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .arg("-I")
        .arg("zstd")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -xOf {member} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The names in a plain tar file, without a leading `./`, sorted.
fn tar_names(tar: &Path) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -tf {} failed: {}",
        tar.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect();
    names.sort();
    names
}

/// The names `fill` makes, as `tar_names` gives them.
fn filled_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "a.txt",
        "empty",
        "link",
        "sub",
        "sub/b.txt",
        "sub/deeper",
        "sub/deeper/c.bin",
    ]
    .map(String::from)
    .to_vec();
    names.sort();
    names
}

/// A volume filled with [`fill`], and what it holds.
pub(crate) fn filled_volume(what: &str) -> (Volume, BTreeMap<String, String>) {
    let volume = Volume::create(what);
    let mp = volume.mountpoint();
    fill(&mp);
    let reference = contents(&mp);
    (volume, reference)
}

pub(crate) fn started_at(ctr: &Container) -> String {
    podman(
        Some(&containers_conf()),
        &["inspect", "--format", "{{.State.StartedAt}}", &ctr.name],
    )
    .trim()
    .to_string()
}

/// What [`backstop_core`]'s slug does to a path: runs of other characters
/// than letters, digits, `_`, `-` and `.` become one `-`; `-` and `.` are
/// trimmed from the ends.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() || "_-.".contains(ch) {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(|c| c == '-' || c == '.').to_string()
}

/// `(name, kind, origin)` of each source in a plan or manifest, sorted.
fn sources(list: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = list
        .as_array()
        .unwrap_or_else(|| panic!("no source list: {list}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                s["origin"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_volume_is_stored_as_one_tar_of_its_contents() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let (volume, _) = filled_volume("store");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);
    let backup = bs.backup();
    assert_eq!(backup["status"], "available", "{backup}");
    let archive = PathBuf::from(backup["location"].as_str().unwrap());

    let source = format!("volume-{}", volume.name);
    let member = format!("{source}/{}.tar", volume.name);
    let members = archive_members(&archive);
    assert!(members.contains(&member), "{members:?}");
    let under: Vec<&String> = members
        .iter()
        .filter(|m| m.starts_with(&format!("{source}/")) && !m.ends_with('/'))
        .collect();
    assert_eq!(under, [&member], "the volume is one file: {members:?}");

    // The file is a plain tar of what the volume holds.
    let inner = env.path("inner.tar");
    std::fs::write(&inner, archive_member(&archive, &member)).unwrap();
    assert_eq!(tar_names(&inner), filled_names());

    let id = backup["id"].as_str().unwrap();
    let show = bs.json(&["show", id]);
    assert_eq!(
        sources(&show["show"]["manifest"]["sources"]),
        [(
            source,
            "volume".to_string(),
            format!("podman volume {}", volume.name)
        )]
    );
}

#[test]
fn an_exact_restore_makes_the_volume_what_it_was() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let (volume, reference) = filled_volume("exact");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();

    let mp = volume.mountpoint();
    disturb(&mp);
    let disturbed = contents(&mp);
    assert_ne!(disturbed, reference);

    let doc = bs.json(&["restore", &id, "--yes"]);
    assert_eq!(doc["restore"]["outcome"], "restored", "{doc}");
    assert_eq!(doc["restore"]["plan"]["mode"], "exact", "{doc}");
    assert_eq!(contents(&volume.mountpoint()), reference);

    // The safety backup holds the disturbed volume, and undoes the restore.
    let safety = doc["restore"]["safety_backup"]
        .as_str()
        .unwrap_or_else(|| panic!("no safety backup: {doc}"))
        .to_string();
    bs.json(&["restore", &safety, "--yes"]);
    assert_eq!(contents(&volume.mountpoint()), disturbed);

    // And the first backup again.
    bs.json(&["restore", &id, "--yes"]);
    assert_eq!(contents(&volume.mountpoint()), reference);
}

#[test]
fn a_removed_volume_is_created_again_and_filled() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let (volume, reference) = filled_volume("removed");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();

    podman(None, &["volume", "rm", &volume.name]);
    assert!(!volume.exists());

    let out = bs.run(&["restore", &id, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(volume.exists(), "the restore did not create the volume");
    assert_eq!(contents(&volume.mountpoint()), reference);
}

#[test]
fn containers_using_the_volume_are_stopped_for_the_import_and_started_again() {
    if !podman::containers_available() {
        return;
    }
    let env = Env::new();
    let (volume, reference) = filled_volume("ctrs");
    let running = Container::run("running", Some(&volume.name));
    let stopped = Container::run("stopped", Some(&volume.name));
    podman(Some(&containers_conf()), &["stop", &stopped.name]);
    // A service container that does not use the volume: stopped around the
    // whole restore by the services settings.
    let service = Container::run("service", None);
    config(
        &env,
        &format!(
            "volumes = [\"{}\"]\n\n[instances.web.services]\ncontainers = [\"{}\", \"{}\"]\n",
            volume.name, service.name, stopped.name
        ),
    );
    let bs = Bs::new(&env).logged_podman(&[&running.name, &stopped.name, &service.name]);
    let id = bs.backup()["id"].as_str().unwrap().to_string();
    assert!(running.running() && service.running() && !stopped.running());

    disturb(&volume.mountpoint());
    let before_running = started_at(&running);
    let before_service = started_at(&service);
    let before_stopped = started_at(&stopped);
    std::fs::write(env.path("podman.log"), b"").unwrap();

    let out = bs.run(&["restore", &id, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(contents(&volume.mountpoint()), reference);

    let log = bs.podman_log();
    let at_import = |name: &str| -> Vec<&str> {
        log.iter()
            .filter_map(|l| l.strip_prefix(&format!("at-import {name} ")))
            .collect()
    };
    assert_eq!(
        at_import(&running.name),
        ["false"],
        "the container using the volume ran during the import: {log:#?}"
    );
    assert_eq!(
        at_import(&service.name),
        ["false"],
        "the service container ran during the import: {log:#?}"
    );
    assert_eq!(at_import(&stopped.name), ["false"], "{log:#?}");

    // Running again afterwards (a new start), the stopped one never started.
    assert!(running.running(), "{log:#?}");
    assert!(service.running(), "{log:#?}");
    assert!(!stopped.running(), "{log:#?}");
    assert_ne!(started_at(&running), before_running);
    assert_ne!(started_at(&service), before_service);
    assert_eq!(started_at(&stopped), before_stopped);
    assert!(
        !log.iter()
            .any(|l| l.starts_with("start") && l.contains(&stopped.name)),
        "the stopped container was started: {log:#?}"
    );
    // The container sees the restored data.
    let seen = podman(
        Some(&containers_conf()),
        &["exec", &running.name, "busybox", "cat", "/data/a.txt"],
    );
    assert_eq!(seen, "alpha\n");
}

#[test]
fn a_dry_run_restore_touches_neither_the_volume_nor_its_container() {
    if !podman::containers_available() {
        return;
    }
    let env = Env::new();
    let (volume, _) = filled_volume("dry");
    let ctr = Container::run("dry", Some(&volume.name));
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env).logged_podman(&[&ctr.name]);
    let id = bs.backup()["id"].as_str().unwrap().to_string();

    let mp = volume.mountpoint();
    disturb(&mp);
    let disturbed = contents(&mp);
    let started = started_at(&ctr);
    let rows = env.list().len();
    std::fs::write(env.path("podman.log"), b"").unwrap();

    let doc = bs.json(&["restore", &id, "--dry-run", "--yes"]);
    assert_eq!(doc["restore"]["outcome"], "dry-run", "{doc}");
    let actions = doc["restore"]["plan"]["actions"].as_array().unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a["kind"] == "volume" && a["path"] == format!("podman volume {}", volume.name)),
        "the plan does not name the volume: {doc}"
    );

    assert_eq!(contents(&volume.mountpoint()), disturbed);
    assert!(ctr.running());
    assert_eq!(started_at(&ctr), started, "the container was restarted");
    let log = bs.podman_log();
    for word in ["stop", "start", "kill", "restart"] {
        assert!(
            !log.iter().any(|l| l.split(' ').next() == Some(word)),
            "the dry run ran podman {word}: {log:#?}"
        );
    }
    for action in ["volume import", "volume create", "volume rm", "unshare"] {
        assert!(
            !log.iter().any(|l| l.starts_with(action)),
            "the dry run ran podman {action}: {log:#?}"
        );
    }
    assert_eq!(env.list().len(), rows, "the dry run made a backup");
}

#[test]
fn a_restore_elsewhere_writes_the_tar_and_leaves_the_volume_alone() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let (volume, _) = filled_volume("elsewhere");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env).logged_podman(&[]);
    let backup = bs.backup();
    let id = backup["id"].as_str().unwrap().to_string();
    let archive = PathBuf::from(backup["location"].as_str().unwrap());

    let mp = volume.mountpoint();
    disturb(&mp);
    let disturbed = contents(&mp);
    std::fs::write(env.path("podman.log"), b"").unwrap();

    let dest = env.path("recovered");
    let out = bs.run(&["restore", &id, "--dest", dest.to_str().unwrap(), "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let source = format!("volume-{}", volume.name);
    let tar = dest.join(&source).join(format!("{}.tar", volume.name));
    let meta = std::fs::symlink_metadata(&tar)
        .unwrap_or_else(|e| panic!("{} is missing: {e}", tar.display()));
    assert!(meta.is_file(), "{} is not a plain file", tar.display());
    assert_eq!(Env::files_in(&dest), std::slice::from_ref(&source));
    assert_eq!(
        std::fs::read(&tar).unwrap(),
        archive_member(&archive, &format!("{source}/{}.tar", volume.name))
    );
    assert_eq!(tar_names(&tar), filled_names());

    assert!(volume.exists());
    assert_eq!(contents(&volume.mountpoint()), disturbed);
    let log = bs.podman_log();
    assert!(
        !log.iter()
            .any(|l| l.starts_with("volume import") || l.starts_with("volume create")),
        "the restore elsewhere touched a volume: {log:#?}"
    );
}

#[test]
fn a_backup_of_a_missing_volume_fails_and_leaves_no_archive() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let volume = Volume::absent("missing");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);

    let out = bs.run(&["backup", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&volume.name),
        "the error does not name the volume: {}",
        stderr(&out)
    );
    assert!(!volume.exists(), "the backup created the volume");

    let store = env.home().join("backups/web");
    assert_eq!(
        Env::files_in(&store),
        Vec::<String>::new(),
        "something is left in the store"
    );
    let rows = env.list();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["status"], "failed", "{rows:#?}");
    assert!(rows[0]["location"].is_null(), "{rows:#?}");
    assert!(
        rows[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&volume.name)),
        "{rows:#?}"
    );
}

#[test]
fn a_failed_health_check_puts_the_volume_back_as_it_was() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let (volume, reference) = filled_volume("health");
    config(
        &env,
        &format!(
            "volumes = [\"{}\"]\n\n[instances.web.services]\nhealth = \"sh -c 'exit 1'\"\n\
             health_timeout = \"1s\"\nhealth_interval = \"200ms\"\n",
            volume.name
        ),
    );
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();

    let mp = volume.mountpoint();
    disturb(&mp);
    let disturbed = contents(&mp);
    assert_ne!(disturbed, reference);

    let out = bs.run(&["restore", &id, "--yes"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(
        contents(&volume.mountpoint()),
        disturbed,
        "the volume was not put back after the failed health check"
    );
}

#[test]
fn quadlet_files_their_volume_and_bind_mount_are_backed_up_and_come_back() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let home = env.path("home");
    let bind = home.join("some/dir");
    std::fs::create_dir_all(bind.join("nested")).unwrap();
    std::fs::write(bind.join("f.txt"), b"bound\n").unwrap();
    std::fs::write(bind.join("nested/g.txt"), b"deeper\n").unwrap();
    let bind_reference = contents(&bind);

    let (volume, reference) = filled_volume("quadlet");
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    let container_unit = format!(
        "[Unit]\nDescription=web\n\n[Container]\nImage={IMAGE}\n\
         Volume=data.volume:/data\nVolume=%h/some/dir:/x\n\n[Install]\nWantedBy=default.target\n"
    );
    let volume_unit = format!("[Volume]\nVolumeName={}\n", volume.name);
    std::fs::write(app.join("web.container"), &container_unit).unwrap();
    std::fs::write(app.join("data.volume"), &volume_unit).unwrap();
    config(&env, "quadlets = \".\"\n");
    let bs = Bs::new(&env).var("HOME", &home);

    let volume_source = format!("volume-{}", volume.name);
    let bind_source = format!("bind-{}", slug(&bind.to_string_lossy()));
    let expected = {
        let mut v = vec![
            (
                bind_source.clone(),
                "path".to_string(),
                bind.to_string_lossy().into_owned(),
            ),
            (
                "quadlets".to_string(),
                "path".to_string(),
                app.to_string_lossy().into_owned(),
            ),
            (
                volume_source.clone(),
                "volume".to_string(),
                format!("podman volume {}", volume.name),
            ),
        ];
        v.sort();
        v
    };

    let plan = bs.json(&["backup", "--dry-run", "web"]);
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(sources(&plan["plan"]["sources"]), expected, "{plan}");

    let backup = bs.backup();
    let id = backup["id"].as_str().unwrap().to_string();
    let show = bs.json(&["show", &id]);
    assert_eq!(sources(&show["show"]["manifest"]["sources"]), expected);
    let members = archive_members(Path::new(backup["location"].as_str().unwrap()));
    for member in [
        "quadlets/web.container".to_string(),
        "quadlets/data.volume".to_string(),
        format!("{volume_source}/{}.tar", volume.name),
        format!("{bind_source}/f.txt"),
        format!("{bind_source}/nested/g.txt"),
    ] {
        assert!(members.contains(&member), "{member} missing: {members:?}");
    }

    // Everything goes: the unit files, the volume, the bind-mounted data.
    std::fs::remove_file(app.join("web.container")).unwrap();
    std::fs::remove_file(app.join("data.volume")).unwrap();
    podman(None, &["volume", "rm", &volume.name]);
    std::fs::remove_dir_all(home.join("some")).unwrap();

    let out = bs.run(&["restore", &id, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(app.join("web.container")).unwrap(),
        container_unit
    );
    assert_eq!(
        std::fs::read_to_string(app.join("data.volume")).unwrap(),
        volume_unit
    );
    assert!(volume.exists(), "the volume was not created again");
    assert_eq!(contents(&volume.mountpoint()), reference);
    assert_eq!(contents(&bind), bind_reference);
}

#[test]
fn an_empty_volume_is_restored_empty() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let volume = Volume::create("empty");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();

    fill(&volume.mountpoint());
    let out = bs.run(&["restore", &id, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(contents(&volume.mountpoint()), BTreeMap::new());
}

#[test]
fn a_failed_import_puts_the_volume_back_and_starts_its_container_again() {
    if !podman::containers_available() {
        return;
    }
    let env = Env::new();
    let (volume, _) = filled_volume("failed-import");
    let ctr = Container::run("failed-import", Some(&volume.name));
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env).logged_podman(&[&ctr.name]);
    let id = bs.backup()["id"].as_str().unwrap().to_string();

    let mp = volume.mountpoint();
    disturb(&mp);
    let disturbed = contents(&mp);
    let started = started_at(&ctr);
    std::fs::write(env.path("podman.log"), b"").unwrap();
    std::fs::write(env.path("fail-import"), b"").unwrap();

    let out = bs.run(&["restore", &id, "--yes"]);
    let log = bs.podman_log();
    assert_eq!(out.status.code(), Some(5), "{}\n{log:#?}", stderr(&out));
    assert!(
        stderr(&out).contains("injected import failure"),
        "podman's error is not quoted: {}",
        stderr(&out)
    );
    assert!(
        !env.path("fail-import").exists(),
        "no import was tried: {log:#?}"
    );
    assert_eq!(
        contents(&volume.mountpoint()),
        disturbed,
        "the volume was not put back: {log:#?}"
    );
    assert!(ctr.running(), "the container was left stopped: {log:#?}");
    assert_ne!(started_at(&ctr), started, "{log:#?}");
    let rows = env.json(&["show", &id]);
    let restores = rows["show"]["restores"].as_array().unwrap();
    assert_eq!(restores.len(), 1, "{rows}");
    assert_eq!(restores[0]["outcome"], "rolled-back", "{rows}");
}

#[test]
fn a_quadlet_naming_note_is_a_note_not_a_warning() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    // `other.volume` is not among the quadlet files: backstop assumes
    // podman's default name, `systemd-other…`, and says so in a note.
    let stem = podman::unique("note");
    let volume = Volume {
        name: format!("systemd-{stem}"),
    };
    podman(None, &["volume", "create", &volume.name]);
    fill(&volume.mountpoint());
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("web.container"),
        format!("[Container]\nImage={IMAGE}\nVolume={stem}.volume:/data\n"),
    )
    .unwrap();
    config(&env, "quadlets = \".\"\n");
    let bs = Bs::new(&env);

    let out = bs.run(&["backup", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("note: quadlet:")
            && stderr(&out).contains("assuming podman's default name"),
        "the note is not shown: {}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("warning:"), "{}", stderr(&out));

    let doc = bs.json(&["backup", "web"]);
    let report = &doc["report"];
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    let notes = report["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{report}");
    assert_eq!(notes[0]["kind"], "quadlet", "{report}");
    assert_eq!(report["backup"]["warnings"], 0, "{report}");

    let plan = bs.json(&["backup", "--dry-run", "web"]);
    assert_eq!(plan["plan"]["warnings"], serde_json::json!([]), "{plan}");
    assert_eq!(plan["plan"]["notes"].as_array().unwrap().len(), 1, "{plan}");

    let id = report["backup"]["id"].as_str().unwrap();
    let show = bs.run(&["show", id]);
    assert!(show.status.success(), "{}", stderr(&show));
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        !text.contains("vanished"),
        "show claims vanished files the trailer does not list:\n{text}"
    );
}

#[test]
fn a_dry_run_backup_of_a_missing_volume_fails_naming_it() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let volume = Volume::absent("dry-missing");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);

    let out = bs.run(&["backup", "--dry-run", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("podman volume {} ", volume.name))
            && stderr(&out).contains("does not exist"),
        "the error does not name the missing volume: {}",
        stderr(&out)
    );
    assert!(!volume.exists(), "the dry run created the volume");
    assert!(!env.home().exists(), "the dry run created the home");
}

#[test]
fn a_restore_plan_creates_a_removed_volume_rather_than_replacing_it() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let (volume, reference) = filled_volume("plan-create");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();
    podman(None, &["volume", "rm", &volume.name]);

    let shown = format!("podman volume {}", volume.name);
    let action_of = |doc: &serde_json::Value| -> Vec<String> {
        doc["restore"]["plan"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["path"] == shown.as_str())
            .map(|a| a["action"].as_str().unwrap().to_string())
            .collect()
    };
    let plan = bs.json(&["restore", &id, "--dry-run"]);
    assert_eq!(action_of(&plan), ["create"], "{plan}");
    let sources = plan["restore"]["plan"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["exists"], false, "{plan}");
    let out = bs.run(&["restore", &id, "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("  create   {shown}\n")),
        "the plan does not say the volume is created:\n{text}"
    );
    assert!(!text.contains(&format!("replace  {shown}")), "{text}");
    assert!(!volume.exists(), "the dry run created the volume");

    let done = bs.json(&["restore", &id, "--yes"]);
    assert_eq!(action_of(&done), ["create"], "{done}");
    assert_eq!(contents(&volume.mountpoint()), reference);

    // A volume that is there is replaced.
    let again = bs.json(&["restore", &id, "--dry-run"]);
    assert_eq!(action_of(&again), ["replace"], "{again}");
}

/// A volume's labels and options, as `podman volume inspect` gives them.
fn labels_and_options(volume: &Volume) -> (serde_json::Value, serde_json::Value) {
    let out = podman(None, &["volume", "inspect", &volume.name]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    (doc[0]["Labels"].clone(), doc[0]["Options"].clone())
}

#[test]
fn a_removed_volume_comes_back_with_its_labels_and_options() {
    if !podman::available() {
        return;
    }
    let env = Env::new();
    let volume = Volume::absent("labels");
    podman(
        None,
        &[
            "volume",
            "create",
            "--label",
            "app=web",
            "--label",
            "tier=data",
            "--opt",
            "o=uid=1234,gid=4321",
            &volume.name,
        ],
    );
    fill(&volume.mountpoint());
    let reference = contents(&volume.mountpoint());
    let before = labels_and_options(&volume);
    assert_eq!(before.0["app"], "web", "{before:?}");
    config(&env, &format!("volumes = [\"{}\"]\n", volume.name));
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();
    let show = bs.json(&["show", &id]);
    let recorded = &show["show"]["manifest"]["sources"][0]["volume"];
    assert_eq!(recorded["labels"]["tier"], "data", "{show}");
    assert_eq!(recorded["options"]["o"], "uid=1234,gid=4321", "{show}");

    podman(None, &["volume", "rm", &volume.name]);
    let out = bs.run(&["restore", &id, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(labels_and_options(&volume), before);
    assert_eq!(contents(&volume.mountpoint()), reference);
}
