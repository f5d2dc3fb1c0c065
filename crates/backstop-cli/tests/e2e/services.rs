//! Services around a restore, with real podman containers: what backstop
//! says while it stops and starts them, the archive checked before any of
//! them stops, the journal that a `kill -9` in the middle of stopping
//! leaves for recovery.

use std::path::{Path, PathBuf};

use backstop_test_support::podman::{self, Container};
use sha2::Digest;

use crate::support::Env;
use crate::volumes::{Bs, config, started_at, stderr};

/// Instance `web`, a file in its root, and `containers` as its services.
fn instance(env: &Env, containers: &[&Container]) {
    let names: Vec<String> = containers
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    config(
        env,
        &format!(
            "\n[instances.web.services]\ncontainers = [{}]\n",
            names.join(", ")
        ),
    );
    std::fs::write(env.path("app/settings.conf"), b"port = 80\n").unwrap();
}

#[test]
fn stopping_and_starting_a_service_says_what_and_for_how_long() {
    if !podman::containers_available() {
        return;
    }
    let env = Env::new();
    let ctr = Container::run("say", None);
    instance(&env, &[&ctr]);
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();
    std::fs::write(env.path("app/settings.conf"), b"port = 81\n").unwrap();

    let out = bs.run(&["restore", &id, "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let stopping = format!("stopping container {} (up to 30s)…", ctr.name);
    let starting = format!("starting container {}…", ctr.name);
    assert!(err.contains(&stopping), "no `{stopping}` in:\n{err}");
    assert!(err.contains(&starting), "no `{starting}` in:\n{err}");
    assert!(
        err.find(&stopping) < err.find(&starting),
        "started before stopped:\n{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  the application was down for "),
        "the report does not say how long the application was down:\n{text}"
    );
    assert!(ctr.running());

    // -q silences the messages; the JSON report has the downtime.
    let quiet = bs.run(&["-q", "restore", &id, "--yes"]);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(!stderr(&quiet).contains("stopping"), "{}", stderr(&quiet));
    let doc = bs.json(&["restore", &id, "--yes"]);
    let down = &doc["restore"]["downtime_ms"];
    assert!(down.as_u64().is_some(), "no downtime in {doc}");
}

/// The SHA-256 of `file`, in hex.
fn sha256(file: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(file).unwrap()))
}

#[test]
fn a_tampered_archive_is_refused_before_any_service_stops() {
    if !podman::containers_available() {
        return;
    }
    let env = Env::new();
    let ctr = Container::run("tamper", None);
    instance(&env, &[&ctr]);
    let bs = Bs::new(&env).logged_podman(&[]);
    let backup = bs.backup();
    let id = backup["id"].as_str().unwrap().to_string();
    let archive = PathBuf::from(backup["location"].as_str().unwrap());
    let sidecar = PathBuf::from(format!("{}.sha256", archive.display()));
    let (good, good_sidecar) = (
        std::fs::read(&archive).unwrap(),
        std::fs::read(&sidecar).unwrap(),
    );
    std::fs::write(env.path("app/settings.conf"), b"port = 81\n").unwrap();
    let started = started_at(&ctr);

    for rewrite_sidecar in [false, true] {
        for extra in [&[][..], &["--no-pre-backup"][..]] {
            crate::support::flip_byte(&archive, good.len() as u64 / 2);
            if rewrite_sidecar {
                // The sidecar agrees with the tampered file; the catalog does not.
                let name = archive.file_name().unwrap().to_string_lossy().into_owned();
                std::fs::write(&sidecar, format!("{}  {name}\n", sha256(&archive))).unwrap();
            }
            let rows = env.list().len();
            std::fs::write(env.path("podman.log"), b"").unwrap();
            let mut args = vec!["restore", id.as_str(), "--yes"];
            args.extend_from_slice(extra);
            let out = bs.run(&args);
            let what = format!("sidecar rewritten: {rewrite_sidecar}, {extra:?}");
            assert_eq!(out.status.code(), Some(4), "{what}: {}", stderr(&out));
            let log = bs.podman_log();
            assert!(
                !log.iter().any(|l| l.starts_with("stop")),
                "{what}: a service was stopped for a tampered archive: {log:#?}"
            );
            assert_eq!(
                started_at(&ctr),
                started,
                "{what}: the container was restarted"
            );
            assert_eq!(env.list().len(), rows, "{what}: a safety backup was taken");
            assert!(
                !stderr(&out).contains("stopping container"),
                "{what}: {}",
                stderr(&out)
            );
            assert_eq!(
                std::fs::read(env.path("app/settings.conf")).unwrap(),
                b"port = 81\n"
            );
            std::fs::write(&archive, &good).unwrap();
            std::fs::write(&sidecar, &good_sidecar).unwrap();
        }
    }
}

#[test]
fn a_kill_during_the_service_stop_leaves_a_journal_that_recovery_acts_on() {
    if !podman::containers_available() {
        return;
    }
    let env = Env::new();
    let first = Container::run("first", None);
    let second = Container::run("second", None);
    instance(&env, &[&first, &second]);
    let bs = Bs::new(&env);
    let id = bs.backup()["id"].as_str().unwrap().to_string();
    std::fs::write(env.path("app/settings.conf"), b"port = 81\n").unwrap();

    // Services stop in reverse order: `second` is stopped, then the process
    // dies before `first` is.
    let killed = Bs::new(&env)
        .var("BACKSTOP_FAILPOINTS", "service.after-stop=abort")
        .run(&["restore", &id, "--yes"]);
    assert_eq!(
        killed.status.code(),
        None,
        "not killed: {}",
        stderr(&killed)
    );
    assert!(!second.running(), "the stop did not happen before the kill");
    let journal = env.home().join("journal/web.json");
    let text = std::fs::read_to_string(&journal)
        .unwrap_or_else(|e| panic!("no journal after the kill ({e})"));
    assert!(text.contains(&second.name), "{text}");

    let doc = bs.json(&["recover", "web"]);
    let report = &doc["recovered"][0];
    assert_eq!(report["recovered"], "rolled-back", "{doc}");
    let restarted: Vec<&str> = report["restarted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(restarted.contains(&second.name.as_str()), "{doc}");
    assert!(
        second.running(),
        "recovery did not start the container again"
    );
    assert!(first.running());
    assert!(!journal.exists());
    assert_eq!(
        std::fs::read(env.path("app/settings.conf")).unwrap(),
        b"port = 81\n",
        "the kill came before any change"
    );
}
