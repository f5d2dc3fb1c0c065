//! Encrypted archives: one age stream around the archive, checked both
//! ways with the real `age` CLI; keys, refusals, damage, and the commands
//! that must keep working without a key.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backstop_test_support::{Compare, assert_same_tree, have};
use predicates::prelude::*;

use crate::support::{Env, flip_byte, walk};

/// A file's content that must never appear in plaintext outside the tree.
const SECRET: &[u8] = b"PLAINTEXT-NEEDLE-5d41402abc4b2a76b9719d911017c592";

/// `backstop key new --out NAME`: the identity file and its recipient.
fn key(env: &Env, name: &str) -> (PathBuf, String) {
    let file = env.path(name);
    let doc = env.json(&["key", "new", "--out", file.to_str().unwrap()]);
    let recipient = doc["key"]["recipient"].as_str().unwrap().to_string();
    assert!(recipient.starts_with("age1"), "{doc}");
    (file, recipient)
}

/// An app whose `config/.env` holds [`SECRET`], in a file big enough to
/// span several age chunks.
fn app(env: &Env) -> PathBuf {
    let app = env.small_app("app");
    std::fs::write(app.join("config/.env"), SECRET).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(app.join("data/big.bin"), big).unwrap();
    app
}

/// A config with instance `app` at `root` and `encryption` as its table.
fn config(env: &Env, root: &Path, encryption: &str) {
    let text = format!(
        "[instances.app]\nroot = \"{}\"\n\n[instances.app.encryption]\n{encryption}\n",
        root.display()
    );
    std::fs::write(env.path("backstop.toml"), text).unwrap();
}

fn tools() -> bool {
    have("age") && have("tar") && have("zstd") && have("gzip") && have("sha256sum")
}

fn exact() -> Compare {
    Compare {
        dir_mtimes: true,
        xattrs: false,
        sparse: false,
    }
}

/// Runs a shell pipeline in `dir`, asserting it succeeds.
fn sh(dir: &Path, script: &str) -> std::process::Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_archive_opens_with_age_and_tar_for_every_codec() {
    if !tools() {
        return;
    }
    for (codec, unpack) in [("zstd", "zstd -dc"), ("gzip", "gzip -dc"), ("none", "cat")] {
        let env = Env::new();
        let (identity, recipient) = key(&env, "key.txt");
        let app = app(&env);
        let b = env.backup(&app, &["--recipient", &recipient, "--compression", codec]);
        assert_eq!(b["encrypted"], true, "{b}");
        let archive = PathBuf::from(b["location"].as_str().unwrap());
        let name = archive.file_name().unwrap().to_string_lossy().into_owned();
        let suffix = match codec {
            "zstd" => ".tar.zst.age",
            "gzip" => ".tar.gz.age",
            _ => ".tar.age",
        };
        assert!(name.ends_with(suffix), "{name}");
        let head = std::fs::read(&archive).unwrap();
        assert!(head.starts_with(b"age-encryption.org/v1\n"), "{codec}");
        let dir = archive.parent().unwrap();
        sh(dir, &format!("sha256sum -c '{name}.sha256'"));
        let out = env.path("by-hand");
        std::fs::create_dir(&out).unwrap();
        sh(
            dir,
            &format!(
                "age -d -i '{}' '{name}' | {unpack} | tar -x -C '{}'",
                identity.display(),
                out.display()
            ),
        );
        assert_eq!(std::fs::read(out.join("app/config/.env")).unwrap(), SECRET);
        sh(&out, "sha256sum -c --quiet backstop-checksums.sha256");
    }
}

#[test]
fn backstop_restores_an_archive_the_age_cli_encrypted() {
    if !tools() || !have("age-keygen") {
        return;
    }
    let env = Env::new();
    let app = app(&env);
    sh(env.dir.path(), "age-keygen -o cli-key.txt 2>/dev/null");
    let recipient = String::from_utf8(sh(env.dir.path(), "age-keygen -y cli-key.txt").stdout)
        .unwrap()
        .trim()
        .to_string();
    let plain = env.path("plain.tar.zst");
    env.cmd()
        .args(["backup", app.to_str().unwrap(), "--output"])
        .arg(&plain)
        .assert()
        .success();
    sh(
        env.dir.path(),
        &format!("age -e -r {recipient} -o plain.tar.zst.age plain.tar.zst"),
    );
    let sealed = env.path("plain.tar.zst.age");
    env.cmd()
        .args([
            "verify",
            sealed.to_str().unwrap(),
            "--identity",
            "cli-key.txt",
        ])
        .assert()
        // No sidecar beside it: everything else checks out.
        .code(3)
        .stdout(predicate::str::contains("ok    app-"))
        .stdout(predicate::str::contains("no .sha256 sidecar"));
    let dest = env.path("restored");
    env.cmd()
        .args(["restore", sealed.to_str().unwrap(), "--yes", "--dest"])
        .arg(&dest)
        .args(["--identity", "cli-key.txt"])
        .assert()
        .success();
    assert_same_tree(&app, &dest, exact());
}

#[test]
fn the_plaintext_and_the_identity_appear_nowhere_in_the_store_catalog_or_output() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let secret_key = std::fs::read_to_string(&identity).unwrap();
    let secret_key = secret_key
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let app = app(&env);
    config(&env, &app, &format!("recipients = [\"{recipient}\"]"));
    let mut output = Vec::new();
    for args in [
        vec!["-v", "backup", "app"],
        vec!["-v", "list"],
        vec!["-v", "verify", "--all", "--identity", "key.txt"],
    ] {
        let out = env.cmd().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        output.extend(out.stdout);
        output.extend(out.stderr);
    }
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    std::fs::write(app.join("config/.env"), b"changed").unwrap();
    let out = env
        .cmd()
        .args(["-v", "restore", &id, "--yes", "--identity", "key.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    output.extend(out.stdout);
    output.extend(out.stderr);
    assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), SECRET);
    assert!(
        !contains(&output, secret_key.as_bytes()),
        "the identity was printed"
    );
    // The store, the catalog, the safety backup, and anything else in the home.
    let files: Vec<PathBuf> = walk(&env.home())
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(files.iter().any(|p| p.to_string_lossy().ends_with(".age")));
    for f in files {
        let data = std::fs::read(&f).unwrap();
        assert!(!contains(&data, SECRET), "plaintext in {}", f.display());
        assert!(
            !contains(&data, secret_key.as_bytes()),
            "identity in {}",
            f.display()
        );
    }
}

#[test]
fn restore_with_the_right_identity_gives_the_exact_tree_from_a_flag_the_environment_or_stdin() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let reference = env.path("reference");
    crate::support::copy_tree(&app, &reference);
    config(&env, &app, &format!("recipients = [\"{recipient}\"]"));
    env.cmd().args(["backup", "app"]).assert().success();
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    let damage = || {
        std::fs::write(app.join("config/.env"), b"changed").unwrap();
        std::fs::write(app.join("data/new.txt"), b"added since").unwrap();
        std::fs::remove_file(app.join("config/app.toml")).unwrap();
    };
    damage();
    env.cmd()
        .args(["restore", &id, "--yes", "--identity"])
        .arg(&identity)
        .assert()
        .success();
    assert_same_tree(&reference, &app, exact());
    damage();
    env.cmd()
        .args(["restore", &id, "--yes"])
        .env("BACKSTOP_IDENTITY", &identity)
        .assert()
        .success();
    assert_same_tree(&reference, &app, exact());
    damage();
    env.cmd()
        .args(["restore", &id, "--yes", "--identity", "-"])
        .write_stdin(std::fs::read(&identity).unwrap())
        .assert()
        .success();
    assert_same_tree(&reference, &app, exact());
    // Merge mode: a file the backup does not hold stays; replaced ones get a .bak.
    std::fs::write(app.join("config/.env"), b"changed").unwrap();
    std::fs::write(app.join("data/new.txt"), b"added since").unwrap();
    env.cmd()
        .args(["restore", &id, "--yes", "--mode", "merge", "--identity"])
        .arg(&identity)
        .assert()
        .success();
    assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), SECRET);
    assert!(app.join("data/new.txt").exists());
}

#[test]
fn a_configured_identity_file_restores_and_safety_backups_are_encrypted_too() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    config(
        &env,
        &app,
        &format!(
            "recipients = [\"{recipient}\"]\nidentity_file = \"{}\"",
            identity.display()
        ),
    );
    env.cmd().args(["backup", "app"]).assert().success();
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    std::fs::write(app.join("config/.env"), b"changed").unwrap();
    env.cmd().args(["restore", &id, "--yes"]).assert().success();
    assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), SECRET);
    let rows = env.list();
    let safety = rows
        .iter()
        .find(|r| r["reason"] == "pre-restore")
        .expect("a safety backup");
    assert_eq!(safety["encrypted"], true, "{safety}");
    assert!(
        safety["location"]
            .as_str()
            .unwrap()
            .ends_with(".tar.zst.age")
    );
    // It holds what was there before the restore, and opens with the key.
    let out = sh(
        env.dir.path(),
        &format!(
            "age -d -i key.txt '{}' | zstd -dc | tar -xO app/config/.env",
            safety["location"].as_str().unwrap()
        ),
    );
    assert_eq!(out.stdout, b"changed");
}

#[test]
fn no_identity_or_the_wrong_one_refuses_and_writes_nothing() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (_, recipient) = key(&env, "key.txt");
    let (wrong, _) = key(&env, "other.txt");
    let app = app(&env);
    let b = env.backup(&app, &["--recipient", &recipient]);
    let id = b["id"].as_str().unwrap();
    let dest = env.path("dest");
    env.cmd()
        .args(["restore", id, "--yes", "--dest"])
        .arg(&dest)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no identity was given"))
        .stderr(predicate::str::contains(
            "hint: give the identity with --identity",
        ));
    assert!(!dest.exists());
    env.cmd()
        .args(["restore", id, "--yes", "--dest"])
        .arg(&dest)
        .arg("--identity")
        .arg(&wrong)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("none of the identities given"));
    assert!(!dest.exists());
    // In place: the live tree stays, and no safety backup is taken.
    std::fs::write(app.join("config/.env"), b"live").unwrap();
    env.cmd()
        .args(["restore", id, "--yes", "--identity"])
        .arg(&wrong)
        .assert()
        .code(2);
    assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), b"live");
    assert_eq!(env.list().len(), 1);
}

#[test]
fn a_flipped_byte_in_the_ciphertext_is_caught_by_the_sidecar_and_by_age() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let b = env.backup(&app, &["--recipient", &recipient]);
    let id = b["id"].as_str().unwrap().to_string();
    let archive = PathBuf::from(b["location"].as_str().unwrap());
    // A copy without its sidecar: only age's authentication can catch it.
    let lone = env.path("lone.tar.zst.age");
    std::fs::copy(&archive, &lone).unwrap();
    let len = std::fs::metadata(&archive).unwrap().len();
    flip_byte(&archive, len / 2);
    flip_byte(&lone, len / 2);
    env.cmd()
        .args(["verify", &id, "--identity"])
        .arg(&identity)
        .assert()
        .code(4)
        .stdout(predicate::str::contains("sidecar"))
        .stdout(predicate::str::contains("the encryption is damaged"));
    env.cmd()
        .args(["verify", lone.to_str().unwrap(), "--identity"])
        .arg(&identity)
        .assert()
        .code(4)
        .stdout(predicate::str::contains("the encryption is damaged"));
    let dest = env.path("dest");
    env.cmd()
        .args(["restore", lone.to_str().unwrap(), "--yes", "--dest"])
        .arg(&dest)
        .arg("--identity")
        .arg(&identity)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("the encryption is damaged"));
    assert!(
        !dest.exists() || walk(&dest).is_empty(),
        "{:?}",
        walk(&dest)
    );
    // The real age CLI refuses it too.
    let status = Command::new("age")
        .args(["-d", "-i"])
        .arg(&identity)
        .arg(&lone)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
}

#[test]
fn a_truncated_ciphertext_is_refused_as_an_integrity_failure() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let b = env.backup(&app, &["--recipient", &recipient]);
    let archive = PathBuf::from(b["location"].as_str().unwrap());
    let cut = env.path("cut.tar.zst.age");
    let data = std::fs::read(&archive).unwrap();
    // Cut at a 64 KiB chunk boundary plus the header: the tail of the
    // stream is missing, which age itself must notice.
    std::fs::write(&cut, &data[..data.len() - 1000]).unwrap();
    let dest = env.path("dest");
    env.cmd()
        .args(["restore", cut.to_str().unwrap(), "--yes", "--dest"])
        .arg(&dest)
        .arg("--identity")
        .arg(&identity)
        .assert()
        .code(4);
    assert!(!dest.exists() || walk(&dest).is_empty());
}

#[test]
fn verify_without_an_identity_checks_the_sidecar_and_says_it_could_not_check_more() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (_, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let b = env.backup(&app, &["--recipient", &recipient]);
    let id = b["id"].as_str().unwrap().to_string();
    env.cmd()
        .args(["verify", &id])
        .assert()
        .code(3)
        .stdout(predicate::str::contains(
            "whole-file checksum and age header only",
        ))
        .stdout(predicate::str::contains("not the content"));
    let row = &env.list()[0];
    assert!(
        row["verified_at"].is_null(),
        "a partial check is not recorded: {row}"
    );
    let archive = PathBuf::from(b["location"].as_str().unwrap());
    let len = std::fs::metadata(&archive).unwrap().len();
    flip_byte(&archive, len - 10);
    env.cmd()
        .args(["verify", &id])
        .assert()
        .code(4)
        .stdout(predicate::str::contains("sidecar"));
    assert_eq!(env.list()[0]["status"], "corrupt");
}

#[test]
fn list_show_and_prune_of_encrypted_backups_need_no_key() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let first = env.backup(&app, &["--recipient", &recipient]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = env.backup(&app, &["--full", "--recipient", &recipient]);
    let rows = env.list();
    assert!(rows.iter().all(|r| r["encrypted"] == true));
    env.cmd()
        .args(["show", second["id"].as_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::contains("encrypted   yes"))
        .stdout(predicate::str::contains("no identity was given"))
        .stdout(predicate::str::contains("Sources").not());
    // With the key, the manifest inside is read too.
    env.cmd()
        .args(["show", second["id"].as_str().unwrap(), "--identity"])
        .arg(&identity)
        .assert()
        .success()
        .stdout(predicate::str::contains("Sources"))
        .stdout(predicate::str::contains("no identity was given").not());
    let old = PathBuf::from(first["location"].as_str().unwrap());
    env.cmd().args(["prune", "--keep", "1"]).assert().success();
    assert!(!old.exists());
    assert!(!PathBuf::from(format!("{}.sha256", old.display())).exists());
    assert_eq!(env.list().len(), 1);
}

#[test]
fn reconcile_reports_an_orphaned_encrypted_archive_and_adopts_it_with_a_key() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let b = env.backup(&app, &["--recipient", &recipient]);
    let archive = PathBuf::from(b["location"].as_str().unwrap());
    let other = env.path("other-home");
    let store = other.join("backups/app");
    std::fs::create_dir_all(&store).unwrap();
    let name = archive.file_name().unwrap();
    std::fs::copy(&archive, store.join(name)).unwrap();
    let without = env
        .cmd_with_home(&other)
        .args(["reconcile", "--apply"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&without.stdout);
    assert!(text.contains("--identity"), "{text}");
    let rows = env
        .cmd_with_home(&other)
        .args(["--json", "list"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&rows.stdout).unwrap();
    assert_eq!(rows["backups"].as_array().map_or(0, Vec::len), 0);
    let with = env
        .cmd_with_home(&other)
        .args(["reconcile", "--apply", "--identity"])
        .arg(&identity)
        .output()
        .unwrap();
    assert!(with.status.success(), "{with:?}");
    let rows = env
        .cmd_with_home(&other)
        .args(["--json", "list"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&rows.stdout).unwrap();
    assert_eq!(rows["backups"][0]["id"], b["id"]);
    assert_eq!(rows["backups"][0]["encrypted"], true);
    assert!(
        store
            .join(format!("{}.sha256", name.to_string_lossy()))
            .exists()
    );
}

#[test]
fn migrate_carries_encrypted_archives_and_their_sidecars() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    // migrate records the new store in the config: it must be this one,
    // never a system-wide file.
    config(&env, &app, &format!("recipients = [\"{recipient}\"]"));
    let b = env.backup(Path::new("app"), &[]);
    assert_eq!(b["encrypted"], true, "{b}");
    let to = env.path("new-store");
    env.cmd()
        .args(["migrate", "--to", to.to_str().unwrap()])
        .assert()
        .success();
    let moved = to.join("app").join(
        PathBuf::from(b["location"].as_str().unwrap())
            .file_name()
            .unwrap(),
    );
    assert!(moved.exists());
    assert!(PathBuf::from(format!("{}.sha256", moved.display())).exists());
    assert_eq!(env.list()[0]["location"], moved.to_str().unwrap());
    let config = std::fs::read_to_string(env.path("backstop.toml")).unwrap();
    assert!(config.contains("new-store"), "{config}");
    env.cmd()
        .args(["verify", "--all", "--identity"])
        .arg(&identity)
        .assert()
        .success();
}

#[test]
fn output_dash_streams_ciphertext() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let out = env
        .cmd()
        .args([
            "backup",
            app.to_str().unwrap(),
            "--output",
            "-",
            "--recipient",
            &recipient,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.starts_with(b"age-encryption.org/v1\n"));
    assert!(!contains(&out.stdout, SECRET));
    std::fs::write(env.path("s.tar.zst.age"), &out.stdout).unwrap();
    let plain = sh(
        env.dir.path(),
        &format!(
            "age -d -i '{}' s.tar.zst.age | zstd -dc | tar -xO app/config/.env",
            identity.display()
        ),
    );
    assert_eq!(plain.stdout, SECRET);
}

#[test]
fn config_turns_encryption_on_and_the_flags_turn_it_off_or_require_it() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (_, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let recipients_file = env.path("recipients.txt");
    std::fs::write(&recipients_file, format!("# admin\n{recipient}\n\n")).unwrap();
    config(
        &env,
        &app,
        &format!("recipients_file = \"{}\"", recipients_file.display()),
    );
    let on = env.json(&["backup", "app"]);
    assert_eq!(on["report"]["backup"]["encrypted"], true, "{on}");
    assert_eq!(on["report"]["encrypted_to"][0], recipient.as_str());
    let off = env.json(&["backup", "app", "--no-encrypt"]);
    assert_eq!(off["report"]["backup"]["encrypted"], false, "{off}");
    assert!(
        off["report"]["backup"]["location"]
            .as_str()
            .unwrap()
            .ends_with(".tar.zst")
    );
    // A plaintext name for ciphertext, and the other way round, are refused.
    env.cmd()
        .args(["backup", "app", "--output"])
        .arg(env.path("x.tar.zst"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not end in .age"));
    env.cmd()
        .args(["backup", "app", "--no-encrypt", "--output"])
        .arg(env.path("x.tar.zst.age"))
        .assert()
        .code(2);
    // --encrypt with nobody to encrypt to, and a bad recipient.
    std::fs::remove_file(env.path("backstop.toml")).unwrap();
    env.cmd()
        .args(["backup", app.to_str().unwrap(), "--encrypt"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no recipients"));
    env.cmd()
        .args([
            "backup",
            app.to_str().unwrap(),
            "--recipient",
            "age1notakey",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("hint:"));
    config(&env, &app, "recipients = [\"age1pq1notsupported\"]");
    env.cmd()
        .args(["list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("[instances.app]"));
    // No failed rows were recorded for the refusals.
    std::fs::remove_file(env.path("backstop.toml")).unwrap();
    assert!(env.list().iter().all(|r| r["status"] == "available"));
}

#[test]
fn defaults_encryption_applies_to_ad_hoc_directories() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (_, recipient) = key(&env, "key.txt");
    let app = app(&env);
    std::fs::write(
        env.path("backstop.toml"),
        format!("[defaults.encryption]\nrecipients = [\"{recipient}\"]\n"),
    )
    .unwrap();
    let b = env.backup(&app, &[]);
    assert_eq!(b["encrypted"], true, "{b}");
}

#[test]
fn key_new_writes_a_private_identity_and_never_overwrites_one() {
    if !tools() || !have("age-keygen") {
        return;
    }
    let env = Env::new();
    let file = env.path("key.txt");
    let out = env
        .cmd()
        .args(["key", "new", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let from_age = String::from_utf8(sh(env.dir.path(), "age-keygen -y key.txt").stdout).unwrap();
    assert!(stdout.contains(from_age.trim()), "{stdout}");
    assert!(!stdout.contains("AGE-SECRET-KEY-"), "{stdout}");
    assert!(
        stderr.contains("Lose it and those backups are lost"),
        "{stderr}"
    );
    let before = std::fs::read(&file).unwrap();
    env.cmd()
        .args(["key", "new", "--out"])
        .arg(&file)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
    assert_eq!(std::fs::read(&file).unwrap(), before);
    // Without --out the identity goes to stdout, for a password manager.
    env.cmd()
        .args(["key", "new"])
        .assert()
        .success()
        .stdout(predicate::str::contains("AGE-SECRET-KEY-1"));
}

#[test]
fn key_check_proves_which_identities_open_the_configured_recipients() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (admin, admin_r) = key(&env, "admin.txt");
    let (recovery, recovery_r) = key(&env, "recovery.txt");
    let (stranger, _) = key(&env, "stranger.txt");
    let app = app(&env);
    config(
        &env,
        &app,
        &format!("recipients = [\"{admin_r}\", \"{recovery_r}\"]"),
    );
    env.cmd()
        .args(["key", "check", "app", "--identity"])
        .arg(&admin)
        .arg("--identity")
        .arg(&recovery)
        .assert()
        .success()
        .stdout(predicate::str::contains("2 recipient(s)"))
        .stdout(predicate::str::contains("admin.txt opens it"))
        .stdout(predicate::str::contains("recovery.txt opens it"));
    env.cmd()
        .args(["key", "check", "app", "--identity"])
        .arg(&stranger)
        .assert()
        .code(2)
        .stdout(predicate::str::contains("FAIL"));
    env.cmd()
        .args(["key", "check", "app"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no identity to check"));
    // Both keys open a real backup, each on its own.
    env.cmd().args(["backup", "app"]).assert().success();
    for k in [&admin, &recovery] {
        env.cmd()
            .args(["verify", "--all", "--identity"])
            .arg(k)
            .assert()
            .success();
    }
}

#[test]
fn an_ssh_ed25519_key_encrypts_and_opens_both_with_backstop_and_age() {
    if !tools() || !have("ssh-keygen") {
        return;
    }
    let env = Env::new();
    sh(
        env.dir.path(),
        "ssh-keygen -q -t ed25519 -N '' -C ops@nas -f id_ed25519",
    );
    let public = std::fs::read_to_string(env.path("id_ed25519.pub")).unwrap();
    let app = app(&env);
    let b = env.backup(&app, &["--recipient", public.trim()]);
    let archive = b["location"].as_str().unwrap().to_string();
    let out = sh(
        env.dir.path(),
        &format!("age -d -i id_ed25519 '{archive}' | zstd -dc | tar -xO app/config/.env"),
    );
    assert_eq!(out.stdout, SECRET);
    let dest = env.path("dest");
    env.cmd()
        .args([
            "restore",
            &archive,
            "--yes",
            "--identity",
            "id_ed25519",
            "--dest",
        ])
        .arg(&dest)
        .assert()
        .success();
    assert_same_tree(&app, &dest, exact());
}

/// A passphrase that must never appear outside the file it is kept in.
const PASSPHRASE: &str = "PASS-NEEDLE-correct horse battery 7f3a";

/// Writes [`PASSPHRASE`] (and a second line, which is ignored) to
/// `pass.txt`, and returns a config line whose command prints it.
fn passphrase_file(env: &Env) -> String {
    let file = env.path("pass.txt");
    std::fs::write(&file, format!("{PASSPHRASE}\nnot the passphrase\n")).unwrap();
    format!("passphrase_command = \"cat '{}'\"", file.display())
}

/// `backstop --home H --config C args…` quoted for a shell line.
fn line_of(env: &Env, args: &[&str]) -> String {
    let mut line = crate::support::sh_quote(crate::support::bin().as_os_str());
    for a in ["--home", env.home().to_str().unwrap()].iter().chain(args) {
        line.push(' ');
        line.push_str(&crate::support::sh_quote(std::ffi::OsStr::new(a)));
    }
    line
}

#[test]
fn a_passphrase_archive_round_trips_through_passphrase_command_and_opens_with_age_by_hand() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let app = app(&env);
    config(&env, &app, &passphrase_file(&env));
    let mut output = Vec::new();
    let out = env.cmd().args(["-v", "backup", "app"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("encrypted to a passphrase (scrypt)"),
        "{out:?}"
    );
    output.extend(out.stdout);
    output.extend(out.stderr);
    let listed = env.list();
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let archive = PathBuf::from(listed[0]["location"].as_str().unwrap());
    assert!(archive.to_string_lossy().ends_with(".tar.zst.age"));
    let header = std::fs::read(&archive).unwrap();
    assert!(
        contains(&header[..200], b"-> scrypt "),
        "not an scrypt stanza"
    );
    for args in [
        vec!["-v", "verify", id.as_str()],
        vec!["-v", "show", id.as_str()],
    ] {
        let out = env.cmd().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        output.extend(out.stdout);
        output.extend(out.stderr);
    }
    let dest = env.path("restored");
    let out = env
        .cmd()
        .args(["-v", "restore", &id, "--yes", "--dest"])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    output.extend(out.stdout);
    output.extend(out.stderr);
    assert_same_tree(&app, &dest, exact());
    // The passphrase is nowhere: not in any output, the store, the
    // catalog or anything else in the home; nor the plaintext.
    assert!(
        !contains(&output, PASSPHRASE.as_bytes()),
        "passphrase printed"
    );
    for f in walk(&env.home()).into_iter().filter(|p| p.is_file()) {
        let data = std::fs::read(&f).unwrap();
        assert!(
            !contains(&data, PASSPHRASE.as_bytes()),
            "in {}",
            f.display()
        );
        assert!(!contains(&data, SECRET), "plaintext in {}", f.display());
    }
    // And a wrong passphrase from the command is refused, nothing written.
    std::fs::write(env.path("pass.txt"), "not it\n").unwrap();
    let wrong = env.path("wrong");
    env.cmd()
        .args(["restore", &id, "--yes", "--dest"])
        .arg(&wrong)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not open"))
        .stderr(predicate::str::contains("nothing was written"));
    assert!(!wrong.exists());

    // By hand: the age CLI asks on the terminal only.
    let Some(term) = crate::support::Tmux::start(
        &env,
        "age",
        &format!(
            "age -d -o by-hand.tar.zst {}",
            crate::support::sh_quote(archive.as_os_str())
        ),
    ) else {
        return;
    };
    term.wait_for("passphrase");
    term.type_line(PASSPHRASE);
    let (code, screen) = term.wait_exit();
    assert_eq!(code, 0, "{screen}");
    std::fs::create_dir(env.path("by-hand")).unwrap();
    sh(
        env.dir.path(),
        "zstd -dc by-hand.tar.zst | tar -x -C by-hand",
    );
    assert_eq!(
        std::fs::read(env.path("by-hand/app/config/.env")).unwrap(),
        SECRET
    );
    sh(
        &env.path("by-hand"),
        "sha256sum -c --quiet backstop-checksums.sha256",
    );
    assert!(!screen.contains(PASSPHRASE), "age echoed it:\n{screen}");
}

#[test]
fn passphrase_command_beside_recipients_is_refused_naming_the_line() {
    let env = Env::new();
    let (_, recipient) = key(&env, "key.txt");
    let app = app(&env);
    let both = format!("recipients = [\"{recipient}\"]\npassphrase_command = \"cat pass.txt\"");
    config(&env, &app, &both);
    env.cmd()
        .args(["backup", "app"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("(line 4)"))
        .stderr(predicate::str::contains(
            "`passphrase_command` cannot be used with `recipients`",
        ));
    let text = format!(
        "[defaults.encryption]\npassphrase_command = \"cat pass.txt\"\nrecipients_file = \"r.txt\"\n\n\
         [instances.app]\nroot = \"{}\"\n",
        app.display()
    );
    std::fs::write(env.path("backstop.toml"), text).unwrap();
    env.cmd()
        .args(["backup", "app"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("[defaults.encryption] (line 1)"));
    // --recipient beside a configured passphrase: refused before the backup.
    config(&env, &app, &passphrase_file(&env));
    env.cmd()
        .args(["backup", "app", "--recipient", &recipient])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot have other recipients"));
    assert!(env.list().is_empty());
    // key check tests identities: it says so rather than test nothing.
    env.cmd()
        .args(["key", "check", "app", "--identity", "key.txt"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`key check` tests identities"))
        .stderr(predicate::str::contains("backstop verify"));
}

#[test]
fn the_terminal_prompt_asks_for_the_passphrase_without_echo_and_a_wrong_one_writes_nothing() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let app = app(&env);
    config(&env, &app, &passphrase_file(&env));
    env.cmd().args(["backup", "app"]).assert().success();
    let archive = env.list()[0]["location"].as_str().unwrap().to_string();
    // From here on there is no passphrase_command: an empty config.
    std::fs::remove_file(env.path("pass.txt")).unwrap();
    let empty = env.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();

    // Without a terminal: refused, naming passphrase_command.
    let dest = env.path("dest");
    env.cmd()
        .args(["--config", empty, "restore", &archive, "--yes", "--dest"])
        .arg(&dest)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "no passphrase_command and no terminal",
        ))
        .stderr(predicate::str::contains("hint: set `passphrase_command"));
    assert!(!dest.exists());
    // verify without a terminal checks what it can without the passphrase.
    env.cmd()
        .args(["--config", empty, "verify", &archive])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("age header only"))
        .stdout(predicate::str::contains("encrypted to a passphrase"));

    let restore = line_of(
        &env,
        &[
            "--config", empty, "restore", &archive, "--yes", "--dest", "dest",
        ],
    );
    // A wrong passphrase: refused, nothing written.
    let Some(term) = crate::support::Tmux::start(&env, "wrong", &restore) else {
        return;
    };
    term.wait_for("Passphrase:");
    term.type_line("not the passphrase");
    let (code, screen) = term.wait_exit();
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("does not open"), "{screen}");
    assert!(!screen.contains("not the passphrase"), "echoed:\n{screen}");
    assert!(!dest.exists());
    drop(term);

    // The right one restores the exact tree, and is not echoed either.
    let term = crate::support::Tmux::start(&env, "right", &restore).unwrap();
    term.wait_for("is encrypted to a passphrase.");
    term.type_line(PASSPHRASE);
    let (code, screen) = term.wait_exit();
    assert_eq!(code, 0, "{screen}");
    assert!(!screen.contains(PASSPHRASE), "echoed:\n{screen}");
    assert_same_tree(&app, &dest, exact());
}

/// [`app`] with versions: `current` links to `versions/0.1.11`, and the
/// instance `app` encrypts to `recipient`, reads its version from the
/// link and activates the version a rollback goes back to.
fn versioned_app(env: &Env, recipient: &str) -> PathBuf {
    let app = app(env);
    for v in ["0.1.11", "0.1.12"] {
        std::fs::create_dir_all(app.join("versions").join(v)).unwrap();
        std::fs::write(app.join("versions").join(v).join("app.py"), v).unwrap();
    }
    std::os::unix::fs::symlink("versions/0.1.11", app.join("current")).unwrap();
    let text = format!(
        "[instances.app]\nroot = \"{}\"\nversion = {{ symlink = \"current\" }}\n\
         activate = \"ln -sfn versions/$BACKSTOP_VERSION current\"\n\n\
         [instances.app.encryption]\nrecipients = [\"{recipient}\"]\n",
        app.display()
    );
    std::fs::write(env.path("backstop.toml"), text).unwrap();
    app
}

/// The upgrade a guard runs: to 0.1.12, with `config/.env` changed, a
/// stray file added, and exit status `status`.
fn upgrade(app: &Path, status: i32) -> String {
    format!(
        "cd '{}' && ln -sfn versions/0.1.12 current && echo broken > config/.env && \
         touch stray && exit {status}",
        app.display()
    )
}

/// What `config/.env` holds in the archive `location` (decrypted with the
/// real age CLI and `key.txt`).
fn env_file_in(env: &Env, location: &str) -> Vec<u8> {
    sh(
        env.dir.path(),
        &format!("age -d -i key.txt '{location}' | zstd -dc | tar -xO app/config/.env"),
    )
    .stdout
}

/// The one catalog row of `reason`.
fn row_of(env: &Env, reason: &str) -> serde_json::Value {
    let rows = env.list();
    let found: Vec<&serde_json::Value> = rows.iter().filter(|r| r["reason"] == reason).collect();
    assert_eq!(found.len(), 1, "{reason}: {rows:?}");
    found[0].clone()
}

#[test]
fn guard_on_an_encrypted_instance_backs_up_encrypted_and_rolls_a_failure_back_with_the_identity() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = versioned_app(&env, &recipient);
    let out = env
        .cmd()
        .args(["--json", "guard", "app", "--to", "0.1.12"])
        .args(["--rollback-on-failure", "--identity"])
        .arg(&identity)
        .args(["--", "sh", "-c", &upgrade(&app, 3)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["guard"]["outcome"], "rolled-back", "{doc}");
    // Back as before the command: the secret, no stray file, the version.
    assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), SECRET);
    assert!(!app.join("stray").exists());
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap(),
        Path::new("versions/0.1.11")
    );
    // The guard's backup is encrypted, and the age CLI opens it.
    let pre = row_of(&env, "pre-upgrade");
    assert_eq!(pre["id"], doc["guard"]["backup"]);
    assert_eq!(pre["encrypted"], true, "{pre}");
    let location = pre["location"].as_str().unwrap();
    assert!(location.ends_with(".tar.zst.age"), "{location}");
    assert!(!contains(&std::fs::read(location).unwrap(), SECRET));
    let listing = sh(
        env.dir.path(),
        &format!("age -d -i key.txt '{location}' | zstd -dc | tar -t"),
    );
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.lines().any(|l| l == "app/config/.env"), "{listing}");
    assert_eq!(env_file_in(&env, location), SECRET);
    // The rollback's safety backup of the failed state is encrypted too.
    let failed = row_of(&env, "pre-rollback");
    assert_eq!(failed["encrypted"], true, "{failed}");
    let location = failed["location"].as_str().unwrap();
    assert!(location.ends_with(".tar.zst.age"), "{location}");
    assert_eq!(env_file_in(&env, location), b"broken\n");
}

#[test]
fn guard_rollback_on_failure_without_an_identity_refuses_before_running_the_command() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (_, recipient) = key(&env, "key.txt");
    let app = versioned_app(&env, &recipient);
    let marker = env.path("ran");
    let touch = format!("touch '{}'", marker.display());
    env.cmd()
        .args(["guard", "app", "--rollback-on-failure", "--"])
        .args(["sh", "-c", &touch])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("was not run"))
        .stderr(predicate::str::contains("--identity"));
    assert!(!marker.exists(), "the command ran");
    assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), SECRET);
    // Without --rollback-on-failure no key is needed: the failure prints
    // the way back.
    let out = env
        .cmd()
        .args(["guard", "app", "--", "sh", "-c", &upgrade(&app, 1)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("backstop restore"), "{stderr}");
    assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), b"broken\n");
}

#[test]
fn rollback_of_an_encrypted_instance_takes_the_identity_from_a_flag_or_the_environment() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = versioned_app(&env, &recipient);
    env.cmd()
        .args(["guard", "app", "--to", "0.1.12", "--"])
        .args(["sh", "-c", &upgrade(&app, 0)])
        .assert()
        .success();
    assert_eq!(row_of(&env, "pre-upgrade")["encrypted"], true);
    let upgraded = env.path("upgraded");
    crate::support::copy_tree(&app, &upgraded);
    let rows = env.list().len();
    // No identity: refused as a missing key, nothing in the live tree
    // changed, no safety backup taken.
    env.cmd()
        .args(["rollback", "0.1.11", "--yes"])
        .env_remove("BACKSTOP_IDENTITY")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no identity was given"))
        .stderr(predicate::str::contains(
            "hint: give the identity with --identity",
        ));
    assert_same_tree(&upgraded, &app, exact());
    assert_eq!(env.list().len(), rows);
    // --identity, then $BACKSTOP_IDENTITY: each rolls back.
    for by_env in [false, true] {
        let mut cmd = env.cmd();
        cmd.args(["rollback", "0.1.11", "--yes"]);
        if by_env {
            cmd.env("BACKSTOP_IDENTITY", &identity);
        } else {
            cmd.arg("--identity").arg(&identity);
        }
        cmd.assert()
            .success()
            .stdout(predicate::str::contains("back to version 0.1.11"));
        assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), SECRET);
        assert!(!app.join("stray").exists());
        assert_eq!(
            std::fs::read_link(app.join("current")).unwrap(),
            Path::new("versions/0.1.11")
        );
        // Upgrade again by hand for the next round.
        sh(
            &app,
            "ln -sfn versions/0.1.12 current && echo broken > config/.env && touch stray",
        );
    }
    // Each rollback's safety backup holds the upgraded state, encrypted.
    for s in encrypted_rows(&env, "pre-rollback", 2) {
        assert_eq!(
            env_file_in(&env, s["location"].as_str().unwrap()),
            b"broken\n"
        );
    }
}

/// The catalog rows made for `reason`: `count` of them, each encrypted.
fn encrypted_rows(env: &Env, reason: &str, count: usize) -> Vec<serde_json::Value> {
    let rows: Vec<serde_json::Value> = env
        .list()
        .into_iter()
        .filter(|r| r["reason"] == reason)
        .collect();
    assert_eq!(rows.len(), count, "{rows:?}");
    for r in &rows {
        assert_eq!(r["encrypted"], true, "{r}");
    }
    rows
}

#[test]
fn the_safety_backup_before_restoring_an_encrypted_instance_is_encrypted() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let (identity, recipient) = key(&env, "key.txt");
    let app = app(&env);
    config(&env, &app, &format!("recipients = [\"{recipient}\"]"));
    env.cmd().args(["backup", "app"]).assert().success();
    let id = env.list()[0]["id"].as_str().unwrap().to_string();
    std::fs::write(app.join("config/.env"), b"changed since").unwrap();
    // By id, then by archive file, each in place with the identity given.
    let location = env.list()[0]["location"].as_str().unwrap().to_string();
    for what in [id.as_str(), location.as_str()] {
        env.cmd()
            .args(["restore", what, "--yes", "--identity"])
            .arg(&identity)
            .assert()
            .success();
        assert_eq!(std::fs::read(app.join("config/.env")).unwrap(), SECRET);
        std::fs::write(app.join("config/.env"), b"changed since").unwrap();
    }
    for s in encrypted_rows(&env, "pre-restore", 2) {
        let location = s["location"].as_str().unwrap();
        assert!(location.ends_with(".tar.zst.age"), "{location}");
        assert!(!contains(&std::fs::read(location).unwrap(), SECRET));
        assert_eq!(env_file_in(&env, location), b"changed since");
    }
    // Restored over a copy elsewhere (--dest): that directory's safety
    // backup is encrypted like the instance's backups.
    let dest = env.path("elsewhere");
    crate::support::copy_tree(&app, &dest);
    env.cmd()
        .args(["restore", &id, "--yes", "--mode", "exact", "--force"])
        .arg("--identity")
        .arg(&identity)
        .arg("--dest")
        .arg(&dest)
        .assert()
        .success();
    assert_eq!(std::fs::read(dest.join("config/.env")).unwrap(), SECRET);
    let rows = env.list();
    let newest = &rows[0];
    assert_eq!(newest["reason"], "pre-restore", "{rows:?}");
    assert_eq!(newest["encrypted"], true, "{newest}");
    let location = newest["location"].as_str().unwrap();
    assert_eq!(env_file_in(&env, location), b"changed since");
}
