//! Restore behaviour that needs what only the core API sets today:
//! never-restore paths and application versions in the manifest.

use std::path::Path;

use backstop_core::archive::{BackupKind, Codec, CompressionSpec, Description};
use backstop_core::instance::Instance;
use backstop_core::ops::backup::{BackupRequest, Output, backup};
use backstop_core::ops::restore::{Mode, RestoreOutcome, RestoreRequest, restore};

use crate::support::Env;

/// A restore request that waits a little for the instance lock: another
/// test of this process may fork a child in the moment a backup's lock
/// file is open, and the child holds the lock until it execs.
fn request(target: &str) -> RestoreRequest {
    RestoreRequest {
        wait: Some(std::time::Duration::from_secs(10)),
        ..RestoreRequest::new(target)
    }
}

fn backup_with(env: &Env, dir: &Path, never_restore: &[&str], version: Option<&str>) -> String {
    let mut instance = Instance::ad_hoc(&[dir.to_path_buf()]).unwrap();
    instance.never_restore = never_restore.iter().map(|s| s.to_string()).collect();
    let report = backup(
        &env.ctx(),
        BackupRequest {
            instance,
            about: Description {
                kind: BackupKind::Automatic,
                reason: "pre-upgrade".into(),
                message: None,
                labels: Default::default(),
                app_version: version.map(str::to_string),
                upgraded_to: None,
                profile: None,
            },
            excludes: vec![],
            compression: CompressionSpec::new(Codec::Zstd, None).unwrap(),
            encryption: backstop_core::encryption::EncryptRequest::default(),
            output: Output::Store,
            wait: Some(std::time::Duration::from_secs(10)),
            chain: backstop_core::chain::ChainRequest::Full,
        },
    )
    .unwrap();
    report.backup.id
}

#[test]
fn never_restore_paths_are_left_as_they_are_in_every_mode() {
    for mode in [Mode::Exact, Mode::Merge, Mode::Safe] {
        let env = Env::new();
        let ws = env.path("workspace");
        std::fs::create_dir_all(ws.join(".system")).unwrap();
        std::fs::write(ws.join(".initialized"), b"old marker").unwrap();
        std::fs::write(ws.join(".system/bootstrap.yaml"), b"old state").unwrap();
        std::fs::write(ws.join("project.txt"), b"v1").unwrap();
        let id = backup_with(&env, &ws, &[".initialized", ".system/"], None);
        std::fs::write(ws.join(".initialized"), b"new marker").unwrap();
        std::fs::write(ws.join(".system/bootstrap.yaml"), b"new state").unwrap();
        std::fs::remove_file(ws.join("project.txt")).unwrap();
        let mut req = request(&id);
        req.mode = Some(mode);
        let outcome = restore(&env.ctx(), &req, &mut |_| true).unwrap();
        assert!(matches!(outcome, RestoreOutcome::Restored(_)), "{mode}");
        assert_eq!(
            std::fs::read(ws.join(".initialized")).unwrap(),
            b"new marker",
            "{mode}"
        );
        assert_eq!(
            std::fs::read(ws.join(".system/bootstrap.yaml")).unwrap(),
            b"new state",
            "{mode}"
        );
        assert_eq!(
            std::fs::read(ws.join("project.txt")).unwrap(),
            b"v1",
            "{mode}"
        );
    }
}

#[test]
fn a_version_names_its_newest_available_backup() {
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("v"), b"0.1.11").unwrap();
    let old = backup_with(&env, &app, &[], Some("0.1.11"));
    std::fs::write(app.join("v"), b"0.1.12").unwrap();
    let _new = backup_with(&env, &app, &[], Some("0.1.12"));
    let outcome = restore(&env.ctx(), &request("0.1.11"), &mut |_| true).unwrap();
    let RestoreOutcome::Restored(report) = outcome else {
        panic!()
    };
    assert_eq!(report.plan.backup, old);
    assert_eq!(std::fs::read(app.join("v")).unwrap(), b"0.1.11");
}

#[test]
fn a_declined_confirmation_changes_nothing() {
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("f"), b"backed up").unwrap();
    let id = backup_with(&env, &app, &[], None);
    std::fs::write(app.join("f"), b"live").unwrap();
    let outcome = restore(&env.ctx(), &request(&id), &mut |_| false).unwrap();
    assert!(matches!(outcome, RestoreOutcome::Declined { .. }));
    assert_eq!(std::fs::read(app.join("f")).unwrap(), b"live");
}

#[test]
fn the_question_a_person_is_asked_shows_every_change() {
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("kept.txt"), b"same").unwrap();
    std::fs::write(app.join("config.toml"), b"v1").unwrap();
    let id = backup_with(&env, &app, &[], None);
    std::fs::write(app.join("config.toml"), b"v2").unwrap();
    std::fs::write(app.join("added.txt"), b"new").unwrap();
    let mut req = request(&id);
    req.preview = true;
    let mut asked = Vec::new();
    let outcome = restore(&env.ctx(), &req, &mut |plan| {
        asked = plan
            .changes
            .actions
            .iter()
            .map(|a| format!("{:?} {}", a.action, a.path.rsplit('/').next().unwrap_or("")))
            .collect();
        false
    })
    .unwrap();
    assert!(matches!(outcome, RestoreOutcome::Declined { .. }));
    assert_eq!(asked, ["Delete added.txt", "Replace config.toml"]);
    // Declined: nothing changed.
    assert_eq!(std::fs::read(app.join("config.toml")).unwrap(), b"v2");
    assert!(app.join("added.txt").exists());
}
