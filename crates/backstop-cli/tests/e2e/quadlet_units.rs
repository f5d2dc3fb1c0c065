//! The systemd units of a quadlet deployment around a restore: which ran is
//! recorded at backup time, and a restore that puts the unit files back
//! starts them again — or, where systemd does not run the machine (as
//! here), says so and gives the command that does.

use std::path::{Path, PathBuf};

use backstop_core::archive::format::QuadletUnits;
use backstop_core::systemd::Scope;

use crate::craft::{Raw, craft_with, manifest, path_source};
use crate::support::Env;

const WEB: &str = "[Container]\nImage=localhost/web:1\n\n[Install]\nWantedBy=default.target\n";
const POD: &str = "[Pod]\nPodName=site\n";

/// Whether systemd runs this machine, in which case the tests of the path
/// without it cannot run (and say so).
fn systemd_runs() -> bool {
    let runs = Path::new("/run/systemd/system").is_dir();
    if runs {
        backstop_test_support::skip("systemd runs this machine: the path without it is not taken");
    }
    runs
}

/// Instance `web`: the quadlet directory under `$XDG_CONFIG_HOME`
/// (`containers/systemd`, where rootless quadlets live) with a container
/// and a pod unit.
fn deployment(env: &Env) -> PathBuf {
    let dir = env.path("xdg-config/containers/systemd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("web.container"), WEB).unwrap();
    std::fs::write(dir.join("site.pod"), POD).unwrap();
    std::fs::write(
        env.path("backstop.toml"),
        format!(
            "[instances.web]\nroot = \"{}\"\nquadlets = \".\"\n",
            dir.display()
        ),
    )
    .unwrap();
    dir
}

/// `systemctl` of this process's scope.
fn systemctl() -> &'static str {
    if rustix::process::geteuid().is_root() {
        "systemctl"
    } else {
        "systemctl --user"
    }
}

fn remove_units(dir: &Path) {
    std::fs::remove_file(dir.join("web.container")).unwrap();
    std::fs::remove_file(dir.join("site.pod")).unwrap();
}

#[test]
fn a_restored_quadlet_deployment_says_how_to_start_its_units_without_systemd() {
    if systemd_runs() {
        return;
    }
    let env = Env::new();
    let dir = deployment(&env);
    let doc = env.json(&["backup", "web"]);
    let id = doc["report"]["backup"]["id"].as_str().unwrap().to_string();
    let show = env.json(&["show", &id]);
    let units = &show["show"]["manifest"]["quadlet_units"];
    assert_eq!(
        units["units"],
        serde_json::json!(["site-pod.service", "web.service"]),
        "{show}"
    );
    // Which ran could not be asked: recorded as not known, and why.
    assert_eq!(units["active"], serde_json::Value::Null, "{show}");
    assert!(
        units["unknown"]
            .as_str()
            .unwrap()
            .contains("/run/systemd/system"),
        "{show}"
    );

    remove_units(&dir);
    let out = env.cmd().args(["restore", &id, "--yes"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("web.container")).unwrap(),
        WEB
    );
    let command = format!(
        "{0} daemon-reload && {0} start site-pod.service web.service",
        systemctl()
    );
    assert!(
        text.contains("were not started (site-pod.service, web.service)")
            && text.contains(&format!("start them with: {command}\n")),
        "{text}"
    );

    remove_units(&dir);
    let doc = env.json(&["restore", &id, "--yes"]);
    let report = &doc["restore"]["quadlet_units"];
    assert_eq!(report["command"], command.as_str(), "{doc}");
    assert_eq!(report["ran_at_backup"], false, "{doc}");
    assert_eq!(report["started"], serde_json::json!([]), "{doc}");
}

#[test]
fn a_restore_names_the_quadlet_units_that_ran_at_backup_time() {
    if systemd_runs() {
        return;
    }
    let env = Env::new();
    let dir = deployment(&env);
    remove_units(&dir);
    // Made where systemd ran: the web container's unit ran, the pod's did
    // not, and a unit whose file is not in the backup ran too.
    let mut m = manifest(
        "web-2026-01-01-000000",
        "web",
        &dir,
        vec![path_source("quadlets", ".", &dir)],
    );
    m.quadlet_units = Some(QuadletUnits {
        scope: Scope::User,
        units: vec!["site-pod.service".into(), "web.service".into()],
        active: Some(vec!["web.service".into(), "elsewhere.service".into()]),
        unknown: None,
    });
    std::fs::create_dir_all(env.path("files")).unwrap();
    let archive = craft_with(
        &env.path("files"),
        &m,
        &[
            Raw::Dir(b"quadlets"),
            Raw::File(b"quadlets/site.pod", POD.as_bytes()),
            Raw::File(b"quadlets/web.container", WEB.as_bytes()),
        ],
    );
    let doc = env.json(&[
        "restore",
        archive.to_str().unwrap(),
        "--yes",
        "--no-pre-backup",
    ]);
    assert_eq!(
        std::fs::read_to_string(dir.join("site.pod")).unwrap(),
        POD,
        "{doc}"
    );
    let report = &doc["restore"]["quadlet_units"];
    assert_eq!(report["units"], serde_json::json!(["web.service"]), "{doc}");
    assert_eq!(report["ran_at_backup"], true, "{doc}");
    assert!(
        report["not_started"]
            .as_str()
            .unwrap()
            .contains("systemd does not run this machine"),
        "{doc}"
    );
    assert_eq!(
        report["command"], "systemctl --user daemon-reload && systemctl --user start web.service",
        "{doc}"
    );
}
