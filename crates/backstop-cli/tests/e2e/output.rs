//! Where archives go and what they look like to other tools; what the human
//! output looks like.

use std::process::{Command, Stdio};

use backstop_test_support::{Compare, assert_same_tree, awkward_tree, have};
use predicates::prelude::*;

use crate::support::{Env, on_terminal};

#[test]
fn output_to_a_file_infers_gzip_and_writes_a_sidecar() {
    if !have("gzip") || !have("tar") || !have("sha256sum") {
        return;
    }
    let env = Env::new();
    let app = env.small_app("svc");
    let target = env.path("exports/test-backup.tar.gz");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let b = env.backup(&app, &["--output", target.to_str().unwrap()]);
    assert_eq!(b["compression"], "gzip");
    assert_eq!(b["location"], target.to_str().unwrap());
    assert_eq!(
        Env::files_in(target.parent().unwrap()),
        ["test-backup.tar.gz", "test-backup.tar.gz.sha256"]
    );
    let check = Command::new("sha256sum")
        .args(["-c", "test-backup.tar.gz.sha256"])
        .current_dir(target.parent().unwrap())
        .status()
        .unwrap();
    assert!(check.success());
    assert!(
        Command::new("gzip")
            .arg("-t")
            .arg(&target)
            .status()
            .unwrap()
            .success()
    );
    let x = env.path("x");
    std::fs::create_dir_all(&x).unwrap();
    assert!(
        Command::new("tar")
            .arg("xzf")
            .arg(&target)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        std::fs::read(x.join("svc/config/.env")).unwrap(),
        b"TOKEN=secret\n"
    );
    // The file is recorded where it was written.
    env.cmd().arg("verify").arg(&target).assert().success();
    env.cmd()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("svc-20"));
    // It never overwrites.
    env.cmd()
        .arg("backup")
        .arg(&app)
        .arg("--output")
        .arg(&target)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
}

#[test]
fn output_to_a_directory_uses_the_id() {
    let env = Env::new();
    let app = env.small_app("svc");
    let dir = env.path("usb");
    std::fs::create_dir_all(&dir).unwrap();
    let b = env.backup(
        &app,
        &["--output", dir.to_str().unwrap(), "--compression", "none"],
    );
    let name = format!("{}.tar", b["id"].as_str().unwrap());
    assert_eq!(
        Env::files_in(&dir),
        [name.clone(), format!("{name}.sha256")]
    );
}

#[test]
fn output_to_stdout_streams_a_valid_archive() {
    if !have("tar") || !have("zstd") {
        return;
    }
    let env = Env::new();
    let app = env.path("app");
    awkward_tree(&app);
    let out = env
        .cmd()
        .args(["backup", "--output", "-"])
        .arg(&app)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("written to stdout"));
    let x = env.path("x");
    std::fs::create_dir_all(&x).unwrap();
    let mut tar = Command::new("tar")
        .args([
            "--zstd",
            "--xattrs",
            "--xattrs-include=user.*",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(&x)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(tar.wait().unwrap().success());
    assert_same_tree(
        &app,
        &x.join("app"),
        Compare {
            dir_mtimes: true,
            xattrs: false,
            sparse: true,
        },
    );
    // A stream cannot be found again: it is not in the catalog.
    assert!(env.list().is_empty());
    // The stream verifies like any archive once saved.
    let saved = env.path("saved.tar.zst");
    std::fs::write(&saved, &out.stdout).unwrap();
    env.cmd()
        .arg("verify")
        .arg(&saved)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("no .sha256 sidecar"));
}

#[test]
fn json_and_stdout_output_conflict() {
    let env = Env::new();
    let app = env.small_app("svc");
    env.cmd()
        .args(["--json", "backup", "--output", "-"])
        .arg(&app)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("stdout"));
}

#[test]
fn errors_under_json_are_a_json_document() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["--json", "backup", "/no/such/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["command"], "error");
    assert_eq!(doc["error"]["exit_code"], 2);
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

#[test]
fn human_output_of_the_main_commands() {
    let env = Env::new();
    let app = env.small_app("svc");
    let backup = env
        .cmd()
        .args(["backup", "--compression", "none", "-m", "first"])
        .arg(&app)
        .output()
        .unwrap();
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    let list = env.cmd().arg("list").output().unwrap();
    let show = env.cmd().args(["show", &id]).output().unwrap();
    let verify = env.cmd().args(["verify", &id]).output().unwrap();

    let tmp = regex_escape(env.dir.path().to_str().unwrap());
    let host = format!(" on {}", regex_escape(&backstop_core::lock::hostname()));
    insta::with_settings!({filters => vec![
        (tmp.as_str(), "[TMP]"),
        (host.as_str(), " on [HOST]"),
        (r"\d{4}-\d{2}-\d{2}-\d{6}", "[STAMP]"),
        (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "[DATE TIME]"),
        (r"[0-9a-f]{64}", "[SHA256]"),
        (r"in \d+(\.\d)? m?s \([^)]*\)", "in [DURATION]"),
        (r"checked in \d+(\.\d)? m?s", "checked in [DURATION]"),
        (r"backstop \d+\.\d+\.\d+", "backstop [VERSION]"),
    ]}, {
        insta::assert_snapshot!("backup", String::from_utf8_lossy(&backup.stdout));
        insta::assert_snapshot!("list", String::from_utf8_lossy(&list.stdout));
        insta::assert_snapshot!("show", String::from_utf8_lossy(&show.stdout));
        insta::assert_snapshot!("verify", String::from_utf8_lossy(&verify.stdout));
    });
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$-".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

#[test]
fn output_dash_refuses_to_write_an_archive_to_a_terminal() {
    let env = Env::new();
    let app = env.small_app("svc");
    let args = [
        "backup".as_ref(),
        app.as_os_str(),
        "--output".as_ref(),
        "-".as_ref(),
    ];
    let Some(run) = on_terminal(&env, &args, "") else {
        return;
    };
    assert_eq!(run.code, Some(2), "{}", run.screen);
    assert!(
        run.screen
            .contains("refusing to write the archive to a terminal"),
        "{}",
        run.screen
    );
    assert!(run.screen.contains("hint:"), "{}", run.screen);
    assert!(
        !run.screen.contains("backstop-manifest.json"),
        "{}",
        run.screen
    );
    assert!(!env.home().exists(), "nothing was started");
    // Into a pipe, the same command streams the archive.
    let out = env
        .cmd()
        .args(["backup", app.to_str().unwrap(), "--output", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(&out.stdout[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
}

#[test]
fn quiet_dry_runs_print_only_their_summary_line() {
    let env = Env::new();
    let app = env.small_app("svc");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    env.backup(&app, &["--full"]);
    std::fs::write(app.join("config/new.txt"), b"new").unwrap();
    let lines = |args: &[&str]| -> Vec<String> {
        let out = env.cmd().arg("-q").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let restore = lines(&["restore", &id, "--dry-run"]);
    assert_eq!(restore.len(), 1, "{restore:?}");
    assert!(
        restore[0].starts_with(&format!("Would restore {id} into")),
        "{restore:?}"
    );
    assert!(restore[0].contains("1 deleted"), "{restore:?}");
    let backup = lines(&["backup", "--dry-run", app.to_str().unwrap()]);
    assert_eq!(backup.len(), 1, "{backup:?}");
    assert!(backup[0].starts_with("Would back up svc to"), "{backup:?}");
    let prune = lines(&["prune", "--keep", "1", "--dry-run"]);
    assert_eq!(prune.len(), 1, "{prune:?}");
    assert!(
        prune[0].starts_with("svc: would remove 1 of 2 backups"),
        "{prune:?}"
    );
    // Without -q the plan is there in full.
    let full = env
        .cmd()
        .args(["restore", &id, "--dry-run"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&full.stdout).contains("config/new.txt"));
}

#[test]
fn a_list_filter_with_no_match_says_so_rather_than_no_backups_yet() {
    let env = Env::new();
    let app = env.small_app("svc");
    env.backup(&app, &[]);
    for filter in [
        &["list", "--status", "missing"][..],
        &["list", "--reason", "pre-upgrade"],
        &["list", "other"],
    ] {
        env.cmd()
            .args(filter)
            .assert()
            .success()
            .stdout(predicate::str::contains("No backups match"))
            .stdout(predicate::str::contains("No backups yet").not());
    }
    Env::new()
        .cmd()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("No backups yet"));
}

#[test]
fn a_restore_shows_an_unpacking_bar_that_stays_within_its_total() {
    let env = Env::new();
    let app = env.small_app("svc");
    // Incompressible, so the archive is as large as the files in it.
    let noise: Vec<u8> = (0..8_000_000u64)
        .map(|i| (i.wrapping_mul(6364136223846793005) >> 33) as u8)
        .collect();
    std::fs::write(app.join("data/noise.bin"), noise).unwrap();
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::fs::remove_file(app.join("data/noise.bin")).unwrap();
    let args = ["restore".as_ref(), id.as_ref(), "--yes".as_ref()];
    let Some(run) = on_terminal(&env, &args, "") else {
        return;
    };
    assert_eq!(run.code, Some(0), "{:?}", run.screen);
    assert!(run.screen.contains("unpacking ["), "{:?}", run.screen);
    for frame in run.screen.split("unpacking [").skip(1) {
        // `…] 1.50 MiB/7.63 MiB 12 MiB/s, 0s left`
        let counts = frame.split_once(']').expect("a bar").1;
        let (done, rest) = counts.split_once('/').expect("done/total");
        let total: Vec<&str> = rest.split_whitespace().take(2).collect();
        assert!(
            mib(done.trim()) <= mib(&total.join(" ")),
            "the bar passed its total in {frame:?}"
        );
    }
}

/// `1.50 MiB`-style sizes as indicatif prints them, in MiB.
fn mib(text: &str) -> f64 {
    let number: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let unit = &text[number.len()..];
    let n: f64 = number.parse().unwrap_or(0.0);
    match unit.trim() {
        "B" => n / 1048576.0,
        "KiB" => n / 1024.0,
        "MiB" => n,
        "GiB" => n * 1024.0,
        _ => panic!("unit {unit:?} in {text:?}"),
    }
}

/// Issue 11, item 10: Ctrl-C during a backup on a terminal clears the
/// progress bar before the error is printed, so the error stands on a line
/// of its own (checked on the terminal's raw output: after the last bar
/// drawn, its line is erased before `error: interrupted`).
#[test]
fn ctrl_c_clears_the_progress_bar_before_the_error() {
    if !have("script") {
        return;
    }
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    for i in 0..200u64 {
        let data: Vec<u8> = (0..100_000u64)
            .map(|j| ((i * 100_000 + j).wrapping_mul(6364136223846793005) >> 33) as u8)
            .collect();
        std::fs::write(app.join(format!("f{i:03}")), data).unwrap();
    }
    let q = |s: &std::path::Path| crate::support::sh_quote(s.as_os_str());
    // Each file read waits 100 ms, so the backup is still running (bar
    // drawn) when the interrupt comes.
    let line = format!(
        "BACKSTOP_FAILPOINTS='backup.read-file=sleep:100' {} --home {} backup {} & pid=$!; \
         sleep 2; kill -INT $pid; wait $pid; echo \"exit=$?\"",
        q(&crate::support::bin()),
        q(&env.home()),
        q(&app)
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(env.dir.path())
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("BACKSTOP_HOME")
        .env("XDG_CONFIG_HOME", env.path("xdg-config"))
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(screen.contains("exit=130"), "{screen:?}");
    let last_bar = screen.rfind("backing up [").expect("a bar was drawn");
    let after = &screen[last_bar..];
    let error = after.find("error:").expect("the error after the bar");
    let between = &after[..error];
    let bar_end = between.find("left").map_or(0, |i| i + 4);
    assert!(
        between[bar_end..].contains("\x1b[2K"),
        "the bar's line was not erased before the error: {:?}",
        &after[..error + 20]
    );
}
