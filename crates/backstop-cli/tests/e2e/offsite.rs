//! Off-site stores through the real binary: backups streamed into a real
//! S3-protocol server (moto, on loopback), restored, verified, shown and
//! deleted from it; damaged objects, refused credentials, a server that
//! goes away mid-upload and `kill -9` mid-upload.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use backstop_test_support::s3::{Moto, Proxy, unique_bucket};

use crate::support::{Env, Pause, signal, spawn};

/// A scratch environment with a bucket on a moto server and a config
/// whose instance `app` keeps its backups there.
struct Offsite {
    env: Env,
    moto: Moto,
    bucket: String,
    app: PathBuf,
    config: PathBuf,
}

impl Offsite {
    /// `None` (a reported skip) when moto_server is not installed.
    fn new() -> Option<Offsite> {
        Some(Offsite::with(Moto::start()?, None))
    }

    /// Reached through a [`Proxy`] (which counts and cuts); `None` as
    /// [`Offsite::new`].
    fn proxied() -> Option<(Offsite, Proxy)> {
        let moto = Moto::start()?;
        let proxy = Proxy::start(moto.port());
        Some((Offsite::with(moto, Some(proxy.endpoint())), proxy))
    }

    /// On `moto`, reached at `endpoint` (a proxy in front of it) or
    /// directly.
    fn with(moto: Moto, endpoint: Option<String>) -> Offsite {
        let bucket = unique_bucket("offsite");
        moto.create_bucket(&bucket);
        let env = Env::new();
        let app = env.small_app("app");
        let config = env.path("backstop.toml");
        let endpoint = endpoint.unwrap_or_else(|| moto.endpoint());
        std::fs::write(
            &config,
            format!(
                r#"[stores.offsite]
url = "s3://{bucket}/backstop"
endpoint = "{endpoint}"
region = "us-east-1"
allow_http = true
part_size_mib = 5

[instances.app]
root = "{}"
store = "offsite"

[instances.app.sources]
config = "config"
data = "data"
"#,
                app.display()
            ),
        )
        .unwrap();
        Offsite {
            env,
            moto,
            bucket,
            app,
            config,
        }
    }

    fn cmd(&self) -> StdCommand {
        let mut cmd = self.env.std_cmd();
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .arg("--config")
            .arg(&self.config);
        cmd
    }

    /// Runs backstop with `args`; its exit code, stdout and stderr.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd().args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.run(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("not JSON ({e}), exit {code}: {out}\nstderr: {err}"))
    }

    fn backup(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["backup", "app"];
        args.extend_from_slice(extra);
        let doc = self.json(&args);
        assert_eq!(doc["command"], "backup", "{doc}");
        doc["report"]["backup"].clone()
    }

    /// The keys in the bucket, in order, but for the ids' claims.
    fn keys(&self) -> Vec<String> {
        self.all_keys()
            .into_iter()
            .filter(|k| !k.starts_with("backstop/.ids/"))
            .collect()
    }

    /// Every key in the bucket, in order.
    fn all_keys(&self) -> Vec<String> {
        let answer = self
            .moto
            .s3_request("GET", &format!("/{}?list-type=2", self.bucket), b"");
        assert_eq!(answer.status, 200, "{}", answer.body);
        tags(&answer.body, "Key")
    }

    /// The multipart uploads under way in the bucket.
    fn uploads(&self) -> Vec<String> {
        let answer = self
            .moto
            .s3_request("GET", &format!("/{}?uploads", self.bucket), b"");
        assert_eq!(answer.status, 200, "{}", answer.body);
        tags(&answer.body, "UploadId")
    }

    /// The bucket path of the object `key`.
    fn object(&self, key: &str) -> String {
        format!("/{}/{key}", self.bucket)
    }
}

/// The texts of every `<tag>…</tag>` in `xml`.
fn tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

/// The key of `location` (`s3://bucket/key`) in its bucket.
fn key_of(location: &str, bucket: &str) -> String {
    location
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap_or_else(|| panic!("{location} is not in {bucket}"))
        .to_string()
}

fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = crate::support::walk(root)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn backups_go_to_the_bucket_and_come_back_from_it() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let original = files(&s.app);
    let full = s.backup(&[]);
    let location = full["location"].as_str().unwrap().to_string();
    let host = backstop_core::lock::hostname();
    let key = key_of(&location, &s.bucket);
    assert!(
        key.starts_with(&format!("backstop/{host}/app/")) && key.ends_with(".tar.zst"),
        "{key}"
    );
    assert_eq!(s.keys(), vec![key.clone(), format!("{key}.sha256")]);
    assert!(
        !s.env.home().join("backups").exists(),
        "nothing is written to the home's store"
    );
    // The sidecar object is a sha256sum line for the archive's name.
    let sidecar = s
        .moto
        .s3_request("GET", &s.object(&format!("{key}.sha256")), b"");
    let name = key.rsplit('/').next().unwrap();
    assert_eq!(
        sidecar.body,
        format!("{}  {name}\n", full["sha256"].as_str().unwrap())
    );

    // A change, and an incremental built on the backup in the bucket.
    std::fs::write(s.app.join("config/app.toml"), b"port = 9090\n").unwrap();
    std::fs::remove_file(s.app.join("config/.env")).unwrap();
    let changed = files(&s.app);
    let inc = s.backup(&[]);
    assert_eq!(inc["parent"], full["id"], "{inc}");
    assert_eq!(inc["chain_position"], 1);

    let verified = s.json(&["verify", inc["id"].as_str().unwrap()]);
    assert_eq!(verified["archives"][0]["ok"], true, "{verified}");
    let shown = s.json(&["show", inc["id"].as_str().unwrap()]);
    assert_eq!(shown["show"]["manifest"]["id"], inc["id"], "{shown}");

    // Restore the full backup in place (its safety backup goes to the
    // bucket too), then the incremental: the tree each held.
    let (code, _, err) = s.run(&["restore", full["id"].as_str().unwrap(), "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&s.app), original);
    let (code, _, err) = s.run(&["restore", inc["id"].as_str().unwrap(), "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&s.app), changed);
    let rows = s.json(&["list"]);
    let rows = rows["backups"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        4,
        "two backups and two safety backups: {rows:?}"
    );
    assert!(rows.iter().all(|r| {
        r["location"]
            .as_str()
            .is_some_and(|l| l.starts_with(&format!("s3://{}/", s.bucket)))
    }));

    // Deleting the chain removes its objects.
    let (code, _, err) = s.run(&["delete", full["id"].as_str().unwrap(), "--with-dependants"]);
    assert_eq!(code, 0, "{err}");
    let left = s.keys();
    assert!(
        !left
            .iter()
            .any(|k| k.contains(full["id"].as_str().unwrap())),
        "{left:?}"
    );
}

#[test]
fn an_altered_object_is_refused_and_nothing_is_restored() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let b = s.backup(&[]);
    let key = key_of(b["location"].as_str().unwrap(), &s.bucket);
    std::fs::write(s.app.join("config/app.toml"), b"port = 1\n").unwrap();
    let before = files(&s.app);
    // The object replaced by one a byte shorter (its sidecar unchanged).
    let raw = download(&s, &key);
    replace(&s, &key, &raw[..raw.len() - 1]);
    let (code, _, err) = s.run(&["verify", b["id"].as_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = s.run(&["restore", b["id"].as_str().unwrap(), "--yes"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("SHA-256") || err.contains("checksum"), "{err}");
    assert_eq!(files(&s.app), before, "nothing was restored");
}

/// The bucket as a store of its own, outside backstop's config.
fn bucket(s: &Offsite) -> backstop_core::store::S3Store {
    let mut config = backstop_core::store::S3Config::new(s.bucket.clone(), "");
    config.endpoint = Some(s.moto.endpoint());
    config.allow_http = true;
    config.region = Some("us-east-1".into());
    let credentials = backstop_core::store::Credentials::new("testing", "testing", None);
    backstop_core::store::S3Store::connect(&config, &credentials).unwrap()
}

/// The bytes of object `key`.
fn download(s: &Offsite, key: &str) -> Vec<u8> {
    use backstop_core::store::{Key, Store};
    let mut data = Vec::new();
    bucket(s)
        .open(&Key::new(key).unwrap())
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    data
}

/// Replaces object `key` with `data`.
fn replace(s: &Offsite, key: &str, data: &[u8]) {
    use backstop_core::store::{Key, Store};
    let store = bucket(s);
    let key = Key::new(key).unwrap();
    store.delete(&key).unwrap();
    let mut w = store.create(&key).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap();
}

#[test]
fn refused_credentials_are_named_and_nothing_is_recorded() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let _ = s.moto.create_user("someone");
    s.moto.require_auth();
    let (code, _, err) = s.run(&["backup", "app"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(err.contains("hint"), "the next step is named: {err}");
    let (_, out, _) = s.run(&["--json", "list"]);
    assert!(!out.contains("\"id\""), "no row: {out}");
    let (code, out, err) = s.run(&["doctor"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("store offsite") && out.contains("refused the credentials"),
        "{out}{err}"
    );
}

#[test]
fn a_server_gone_mid_upload_leaves_no_archive_and_the_next_backup_cleans_up() {
    let Some((s, proxy)) = Offsite::proxied() else {
        return;
    };
    // Enough incompressible data for several 5 MiB parts.
    let data = backstop_test_support::noise(14 << 20, 0x9E3779B97F4A7C15);
    std::fs::write(s.app.join("data/blob"), &data).unwrap();

    // Paused with every part but the last uploaded; the server goes away.
    let pause = Pause::new(&s.env, "cut");
    let mut cmd = s.cmd();
    cmd.env("BACKSTOP_FAILPOINTS", pause.at("backup.before-commit"))
        .args(["backup", "app"]);
    let mut child = spawn(cmd);
    pause.wait_reached(&mut child);
    assert_eq!(s.uploads().len(), 1, "one upload under way");
    proxy.cut();
    pause.release();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
    assert!(
        !s.keys().iter().any(|k| k.ends_with(".tar.zst")),
        "no archive named"
    );

    // kill -9 with an upload under way: nothing named either.
    proxy.restore();
    let pause = Pause::new(&s.env, "kill");
    let mut cmd = s.cmd();
    cmd.env("BACKSTOP_FAILPOINTS", pause.at("backup.before-commit"))
        .args(["backup", "app"]);
    let mut child = spawn(cmd);
    pause.wait_reached(&mut child);
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    assert!(!s.keys().iter().any(|k| k.ends_with(".tar.zst")));
    assert!(!s.uploads().is_empty(), "the killed upload is pending");
    let (_, out, err) = s.run(&["doctor"]);
    assert!(
        out.contains("unfinished upload(s) of dead backups"),
        "{out}{err}"
    );

    // The next backup aborts what the dead ones left, and succeeds.
    let b = s.backup(&[]);
    assert_eq!(b["status"], "available", "{b}");
    assert!(s.uploads().is_empty(), "{:?}", s.uploads());
    let rows = s.json(&["list"]);
    let failed = rows["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "failed")
        .count();
    assert_eq!(failed, 2, "{rows}");
    let (code, _, err) = s.run(&["verify", b["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_fresh_home_rebuilds_its_catalog_from_the_bucket_and_restores() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let full = s.backup(&[]);
    std::fs::write(s.app.join("config/app.toml"), b"port = 7070\n").unwrap();
    let inc = s.backup(&[]);
    let latest = files(&s.app);
    let (code, _, err) = s.run(&["pin", full["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // A new machine: nothing but the config and the bucket's credentials.
    std::fs::remove_dir_all(s.env.home()).unwrap();
    let (code, out, err) = s.run(&["reconcile", "--store", "offsite"]);
    assert_eq!(code, 3, "orphans are reported, not adopted: {out}{err}");
    assert!(
        !s.env.home().join("catalog.db").exists(),
        "a report creates nothing"
    );
    let doc = s.json(&["reconcile", "--store", "offsite", "--apply"]);
    let findings = doc["reconcile"]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2, "{doc}");
    assert!(findings.iter().all(|f| f["action"].is_string()), "{doc}");
    // Adopted from their two ends, not downloaded whole.
    assert!(
        findings
            .iter()
            .all(|f| f["detail"].as_str().unwrap().contains("ranged GETs")),
        "{doc}"
    );
    let rows = s.json(&["list"]);
    let rows = rows["backups"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![inc["id"].as_str().unwrap(), full["id"].as_str().unwrap()]
    );
    assert_eq!(rows[0]["parent"], full["id"]);
    assert_eq!(rows[0]["location"], inc["location"]);
    assert_eq!(rows[1]["pinned"], true, "the pin came back from the bucket");
    assert_eq!(rows[0]["pinned"], false);
    // And their frame tables, for restores of one source.
    assert_eq!(rows[0]["frames_sha256"], inc["frames_sha256"]);
    assert_eq!(rows[1]["frames_sha256"], full["frames_sha256"]);
    assert!(rows[1]["frames_sha256"].is_string());
    // Everything agrees now, the content verifies, and the chain restores
    // into a new directory.
    let (code, out, err) = s.run(&["reconcile", "--store", "offsite"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = s.run(&["verify", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    let dest = s.env.path("recovered");
    let (code, _, err) = s.run(&[
        "restore",
        inc["id"].as_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), latest);
    let config = s.env.path("config-only");
    let (code, out, err) = s.run(&[
        "restore",
        inc["id"].as_str().unwrap(),
        "--only",
        "config",
        "--dest",
        config.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(files(&config.join("config")), files(&s.app.join("config")));
}

/// The config of [`Offsite`] with `app` kept in the home's store and
/// copied to the bucket after each backup.
fn copied_to_the_bucket(s: &Offsite) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replace("store = \"offsite\"", "copies = [\"offsite\"]");
    std::fs::write(&s.config, text).unwrap();
}

#[test]
fn every_backup_is_copied_and_the_copy_restores_when_the_first_is_gone() {
    let Some(s) = Offsite::new() else {
        return;
    };
    copied_to_the_bucket(&s);
    let doc = s.json(&["backup", "app", "--full"]);
    let report = &doc["report"];
    let b = &report["backup"];
    let local = PathBuf::from(b["location"].as_str().unwrap());
    assert!(local.starts_with(s.env.home().join("backups")), "{b}");
    let copies = report["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{report}");
    let copy = copies[0]["location"].as_str().unwrap();
    let key = key_of(copy, &s.bucket);
    assert_eq!(s.keys(), vec![key.clone(), format!("{key}.sha256")]);
    let shown = s.json(&["show", b["id"].as_str().unwrap()]);
    assert_eq!(shown["show"]["copies"][0]["store"], "offsite", "{shown}");
    let (_, text, _) = s.run(&["show", b["id"].as_str().unwrap()]);
    assert!(
        text.contains(&format!("copy        {copy} (offsite, ")),
        "{text}"
    );

    // The home's archive lost: the restore reads the copy.
    let original = files(&s.app);
    std::fs::remove_file(&local).unwrap();
    let dest = s.env.path("from-copy");
    let (code, _, err) = s.run(&[
        "restore",
        b["id"].as_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), original);
}

#[test]
fn copy_brings_the_chain_along_and_prune_applies_per_store() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("store = \"offsite\"\n", "")).unwrap();
    let full = s.backup(&[]);
    std::fs::write(s.app.join("config/app.toml"), b"port = 1\n").unwrap();
    let inc = s.backup(&[]);
    assert_eq!(inc["parent"], full["id"]);
    assert!(s.keys().is_empty(), "nothing in the bucket yet");

    // Copying the incremental copies its full backup first.
    let doc = s.json(&["copy", inc["id"].as_str().unwrap(), "--to", "offsite"]);
    let copied = doc["copy"]["copied"].as_array().unwrap();
    let ids: Vec<&str> = copied.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![full["id"].as_str().unwrap(), inc["id"].as_str().unwrap()]
    );
    assert!(copied.iter().all(|c| c["outcome"] == "copied"), "{doc}");
    assert_eq!(s.keys().len(), 4, "two archives, two sidecars");
    let again = s.json(&["copy", "--all", "--to", "offsite"]);
    assert!(
        again["copy"]["copied"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["outcome"] == "already there"),
        "{again}"
    );
    // An unknown store is named.
    let (code, _, err) = s.run(&["copy", "--all", "--to", "nowhere"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no store named `nowhere`"), "{err}");

    // A third, full backup, copied by hand; then the bucket keeps one.
    let third = s.backup(&["--full"]);
    s.json(&["copy", third["id"].as_str().unwrap(), "--to", "offsite"]);
    let (code, out, err) = s.run(&["prune", "app", "--store", "offsite", "--keep", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(the copies in offsite)"), "{out}");
    let keys = s.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].contains(third["id"].as_str().unwrap()), "{keys:?}");
    // The home still holds all three.
    let rows = s.json(&["list"]);
    assert_eq!(rows["backups"].as_array().unwrap().len(), 3, "{rows}");
    // Pruning the home's store to one: the two held nowhere else go whole,
    // and the third stays, in both stores.
    let (code, out, err) = s.run(&["prune", "app", "--store", "local", "--keep", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = s.json(&["list"]);
    let rows = rows["backups"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], third["id"]);
    assert_eq!(s.keys().len(), 2);
    // Deleting it removes every copy.
    let (code, _, err) = s.run(&["delete", third["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(s.keys().is_empty(), "{:?}", s.keys());
}

/// `backstop` run on another host: a UTS namespace of its own named
/// `host` (root only; `None` when namespaces cannot be made here).
fn on_host(s: &Offsite, host: &str, home: &Path, args: &[&str]) -> Option<StdCommand> {
    let probe = StdCommand::new("unshare")
        .args(["--uts", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        backstop_test_support::skip(&format!(
            "two hosts need `unshare --uts` (root): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
        return None;
    }
    let mut cmd = StdCommand::new("unshare");
    cmd.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", host])
        .arg(crate::support::bin())
        .arg("--home")
        .arg(home)
        .arg("--config")
        .arg(&s.config)
        .args(args)
        .current_dir(s.env.dir.path())
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("BACKSTOP_HOME")
        .env("XDG_CONFIG_HOME", s.env.path("xdg-config"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    Some(cmd)
}

#[test]
fn two_hosts_share_a_bucket_and_each_prunes_its_own() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let other_home = s.env.path("other-home");
    let Some(mut other) = on_host(&s, "other-host", &other_home, &["backup", "app"]) else {
        return;
    };
    // Both back up at once.
    let mut mine = s.cmd();
    mine.args(["backup", "app"]);
    let (a, b) = (
        spawn(mine),
        spawn({
            other.stdout(std::process::Stdio::piped());
            other.stderr(std::process::Stdio::piped());
            std::mem::replace(&mut other, StdCommand::new("true"))
        }),
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let host = backstop_core::lock::hostname();
    let keys = s.keys();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("backstop/other-host/app/"))
            .count(),
        2,
        "{keys:?}"
    );
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with(&format!("backstop/{host}/app/")))
            .count(),
        2,
        "{keys:?}"
    );
    // The two backups were made in the same second: the ids' claims gave
    // them two ids.
    let claims: Vec<String> = s
        .all_keys()
        .into_iter()
        .filter(|k| k.starts_with("backstop/.ids/app/"))
        .collect();
    assert_eq!(claims.len(), 2, "{claims:?}");
    // This host adopts the other's backup too, and prunes only its own.
    let doc = s.json(&["reconcile", "--store", "offsite", "--apply"]);
    assert_eq!(
        doc["reconcile"]["findings"].as_array().unwrap().len(),
        1,
        "{doc}"
    );
    s.backup(&["--full"]);
    let (code, out, err) = s.run(&["prune", "app", "--keep", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 backups of other hosts left alone"),
        "{out}{doc}{}",
        s.json(&["list"])
    );
    let keys = s.keys();
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("backstop/other-host/"))
            .count(),
        2,
        "the other host's backup stays: {keys:?}"
    );
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[test]
fn migrate_moves_the_home_store_into_the_bucket_and_resumes_after_a_kill() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, text.replace("store = \"offsite\"\n", "")).unwrap();
    let full = s.backup(&[]);
    std::fs::write(s.app.join("config/app.toml"), b"port = 2\n").unwrap();
    let inc = s.backup(&[]);
    let latest = files(&s.app);

    // Killed after the first backup's copy is made, before the switch.
    let pause = Pause::new(&s.env, "migrate");
    let mut cmd = s.cmd();
    cmd.env("BACKSTOP_FAILPOINTS", pause.at("migrate.before-switch"))
        .args(["migrate", "--to", "offsite"]);
    let mut child = spawn(cmd);
    pause.wait_reached(&mut child);
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    let rows = s.json(&["list"]);
    assert!(
        rows["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["location"].as_str().unwrap().starts_with("s3://")),
        "nothing switched yet: {rows}"
    );

    // The same command finishes it.
    let (code, out, err) = s.run(&["migrate", "--to", "offsite"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Moved 2 backups to offsite"), "{out}");
    assert!(
        out.contains("new backups still go to the home's store"),
        "{out}"
    );
    let rows = s.json(&["list"]);
    let rows = rows["backups"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r["location"].as_str().unwrap().starts_with("s3://")),
        "{rows:?}"
    );
    let left = crate::support::walk(&s.env.home().join("backups"));
    assert!(
        !left.iter().any(|p| p.to_string_lossy().contains(".tar")),
        "{left:?}"
    );
    assert_eq!(s.keys().len(), 4, "{:?}", s.keys());
    let (code, out, _) = s.run(&["migrate", "--to", "offsite"]);
    assert_eq!(code, 0);
    assert!(out.contains("Moved 0 backups"), "{out}");
    let dest = s.env.path("after-migrate");
    let (code, _, err) = s.run(&[
        "restore",
        inc["id"].as_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), latest);
    let _ = full;
}

#[test]
fn with_the_bucket_unreachable_a_restore_reads_the_local_copy() {
    let Some((s, proxy)) = Offsite::proxied() else {
        return;
    };
    let b = s.backup(&[]);
    let (code, _, err) = s.run(&["copy", b["id"].as_str().unwrap(), "--to", "local"]);
    assert_eq!(code, 0, "{err}");
    let original = files(&s.app);
    proxy.cut();
    let dest = s.env.path("offline");
    let started = std::time::Instant::now();
    let (code, _, err) = s.run(&[
        "restore",
        b["id"].as_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest), original);
    eprintln!("restored from the copy in {:?}", started.elapsed());
}

#[test]
fn a_missing_bucket_and_missing_credentials_are_named_with_the_way_out() {
    let Some(s) = Offsite::new() else {
        return;
    };
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace(&format!("s3://{}/", s.bucket), "s3://no-such-bucket-here/"),
    )
    .unwrap();
    let (code, _, err) = s.run(&["backup", "app"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-bucket-here does not exist"), "{err}");
    assert!(err.contains("create the bucket"), "{err}");
    let out = s
        .cmd()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", s.env.path("none"))
        .args(["backup", "app"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    assert!(
        !s.env.home().join("catalog.db").exists()
            || !s.run(&["--json", "list"]).1.contains("\"id\""),
        "nothing recorded"
    );
}

#[test]
fn a_restore_fetches_the_archive_from_the_bucket_once() {
    let Some((s, proxy)) = Offsite::proxied() else {
        return;
    };
    let noise = backstop_test_support::noise(6 << 20, 0x853C49E6748FEA9B);
    std::fs::write(s.app.join("data/noise"), &noise).unwrap();
    let b = s.backup(&["--full"]);
    let size = b["size"].as_u64().unwrap();
    let before = proxy.bytes_down();
    let dest = s.env.path("once");
    let (code, _, err) = s.run(&[
        "restore",
        b["id"].as_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code, 0, "{err}");
    let fetched = proxy.bytes_down() - before;
    assert!(
        fetched < size + size / 4,
        "{fetched} bytes fetched for an archive of {size}: it was read from the bucket more than once"
    );
    assert_eq!(std::fs::read(dest.join("data/noise")).unwrap(), noise);
    // `show` reads the manifest alone; `verify` the archive once.
    let before = proxy.bytes_down();
    let (code, _, err) = s.run(&["show", b["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let shown = proxy.bytes_down() - before;
    assert!(shown < 512 << 10, "show fetched {shown} bytes");
    let before = proxy.bytes_down();
    let (code, _, err) = s.run(&["verify", b["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let verified = proxy.bytes_down() - before;
    assert!(
        verified < size + size / 4,
        "verify fetched {verified} of {size}"
    );
}

/// Restores `id --only config` into a new directory `name`: exit code,
/// stderr, the directory, and the bytes fetched from the bucket.
fn restore_config(s: &Offsite, proxy: &Proxy, id: &str, name: &str) -> (i32, String, PathBuf, u64) {
    let dest = s.env.path(name);
    let before = proxy.bytes_down();
    let (code, _, err) = s.run(&[
        "restore",
        id,
        "--only",
        "config",
        "--dest",
        dest.to_str().unwrap(),
        "--yes",
    ]);
    (code, err, dest, proxy.bytes_down() - before)
}

#[test]
fn a_restore_of_one_source_fetches_only_the_frames_it_needs() {
    let Some((s, proxy)) = Offsite::proxied() else {
        return;
    };
    // `data` holds 24 MiB that do not compress (six 4 MiB frames), after
    // `config` in the archive.
    let big = backstop_test_support::noise(24 << 20, 0x853C49E6748FEA9B);
    std::fs::write(s.app.join("data/big"), &big).unwrap();
    let full = s.backup(&["--full"]);
    let size = full["size"].as_u64().unwrap();
    assert!(full["frames_sha256"].is_string(), "{full}");
    let id = full["id"].as_str().unwrap();

    let (code, err, dest, fetched) = restore_config(&s, &proxy, id, "only-config");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        files(&dest.join("config")),
        files(&s.app.join("config")),
        "config restored"
    );
    assert!(!dest.join("data").exists(), "data was not asked for");
    // The first frame (manifest, config) and the last (the checksums,
    // index and trailer), not the four between.
    assert!(
        fetched < size / 2,
        "{fetched} bytes fetched of a {size}-byte archive for its small source"
    );

    // An incremental: its own frames and its full backup's, for config.
    std::fs::write(s.app.join("config/app.toml"), b"port = 9090\n").unwrap();
    let inc = s.backup(&[]);
    assert_eq!(inc["parent"], full["id"], "{inc}");
    let chain = size + inc["size"].as_u64().unwrap();
    let (code, err, dest, fetched) =
        restore_config(&s, &proxy, inc["id"].as_str().unwrap(), "inc-config");
    assert_eq!(code, 0, "{err}");
    assert_eq!(files(&dest.join("config")), files(&s.app.join("config")));
    assert!(fetched < chain / 2, "{fetched} of a {chain}-byte chain");

    // A frame altered in the bucket (the sidecar as it was) is refused,
    // and nothing is written.
    let key = key_of(full["location"].as_str().unwrap(), &s.bucket);
    let raw = download(&s, &key);
    let mut altered = raw.clone();
    altered[700] ^= 0x55;
    replace(&s, &key, &altered);
    let (code, err, dest, _) = restore_config(&s, &proxy, id, "altered-frame");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("frame 0"), "{err}");
    assert!(!dest.join("config").exists(), "nothing restored: {dest:?}");
    // So is a frame table that is not the one the catalog recorded.
    let mut table = raw.clone();
    let at = table.len() - 13;
    table[at] = if table[at] == b'0' { b'1' } else { b'0' };
    replace(&s, &key, &table);
    let (code, err, dest, _) = restore_config(&s, &proxy, id, "altered-table");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("frame table"), "{err}");
    assert!(!dest.join("config").exists());
    // The whole archive back, a whole restore reads it whole.
    replace(&s, &key, &raw);
    let dest = s.env.path("whole");
    let (code, _, err) = s.run(&["restore", id, "--dest", dest.to_str().unwrap(), "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(dest.join("data/big")).unwrap(), big);
}
