//! Several commands at once on one home: each one succeeds, or says the
//! lock is held (exit 6), and the home is consistent afterwards.

use std::path::Path;
use std::process::Output;

use backstop_test_support::snapshot;

use crate::support::{Env, spawn};

/// What the `round`-th mix of commands is, run at once: backups (some
/// waiting for the lock), a restore in place, verifies, lists, a prune
/// and a reconcile.
fn commands(app: &Path, first: &str, round: usize) -> Vec<(String, Vec<String>)> {
    let app = app.to_str().unwrap().to_string();
    let mut cmds = vec![
        ("backup", vec!["backup".into(), app.clone()]),
        (
            "backup --wait",
            vec!["backup".into(), app.clone(), "--wait".into(), "60s".into()],
        ),
        ("backup", vec!["backup".into(), app.clone()]),
        (
            "restore",
            vec![
                "restore".into(),
                first.into(),
                "--yes".into(),
                "--no-pre-backup".into(),
            ],
        ),
        ("verify --all", vec!["verify".into(), "--all".into()]),
        ("list", vec!["list".into()]),
        ("prune", vec!["prune".into(), "--keep".into(), "3".into()]),
        ("reconcile", vec!["reconcile".into()]),
        ("verify --all", vec!["verify".into(), "--all".into()]),
    ];
    // A different order each round: which one wins the lock varies.
    let n = cmds.len();
    cmds.rotate_left(round % n);
    cmds.into_iter().map(|(n, a)| (n.to_string(), a)).collect()
}

fn run_all(env: &Env, cmds: &[(String, Vec<String>)]) -> Vec<(String, Output)> {
    let children: Vec<_> = cmds
        .iter()
        .map(|(name, args)| {
            let mut cmd = env.std_cmd();
            cmd.arg("-q").args(args);
            (name.clone(), spawn(cmd))
        })
        .collect();
    children
        .into_iter()
        .map(|(name, child)| (name, child.wait_with_output().unwrap()))
        .collect()
}

#[test]
fn several_commands_at_once_on_one_home_each_succeed_or_find_the_lock_held() {
    let env = Env::new();
    let app = env.small_app("app");
    let first = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    // The prunes must leave the one the restores put back.
    env.cmd().args(["-q", "pin", &first]).assert().success();
    let backed_up = snapshot(&app, Default::default());
    for round in 0..6 {
        // Changed since the backup: a restore that runs puts it back.
        std::fs::write(app.join("config/app.toml"), format!("port = {round}\n")).unwrap();
        let changed = snapshot(&app, Default::default());
        let mut restored = None;
        for (name, out) in run_all(&env, &commands(&app, &first, round)) {
            let code = out.status.code();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                matches!(code, Some(0 | 6)),
                "round {round}: {name} exited {code:?}: {stderr}"
            );
            if code == Some(6) {
                assert!(stderr.contains("locked"), "round {round}: {name}: {stderr}");
            }
            if name == "restore" {
                restored = Some(code == Some(0));
            }
        }
        // The tree is the backup's or, the restore refused, as it was.
        let now = snapshot(&app, Default::default());
        let want = if restored == Some(true) {
            &backed_up
        } else {
            &changed
        };
        assert_eq!(&now, want, "round {round}");
        // Every backup recorded is whole, and the store holds no other.
        let rows = env.list();
        assert!(
            rows.iter().all(|r| r["status"] == "available"),
            "round {round}: {rows:?}"
        );
        env.cmd().args(["-q", "verify", "--all"]).assert().success();
        let report = env.json(&["reconcile"]);
        assert_eq!(
            report["reconcile"]["findings"],
            serde_json::json!([]),
            "round {round}: {report}"
        );
    }
}
