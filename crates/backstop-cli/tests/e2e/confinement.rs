//! A restore stays inside its destination and leaves alone what it does not
//! know: what the backup could not read, what another user put there, a
//! symlink swapped in while it runs, a manifest that points out of the root
//! or the home; and a home, catalog or store another user may not read is
//! an error, never "no backups". Each test guards one way this went wrong.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use backstop_core::archive::format::SourceManifest;
use backstop_test_support::{have, posix_acl, root, skip, supports_acls, supports_user_xattrs};

use crate::craft::{Raw, craft_with, manifest, path_source};
use crate::support::{Env, bin, kept_why, run_paused, sqlite, walk};

// ---------------------------------------------------------------------------
// Helpers

/// Collects every expectation that does not hold, so that one run reports
/// all of them rather than the first.
#[derive(Default)]
struct Expect {
    wrong: Vec<String>,
}

impl Expect {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.wrong.push(what.into());
        }
    }

    fn finish(self, context: &str) {
        assert!(
            self.wrong.is_empty(),
            "{} expectation(s) failed:\n  - {}\n{context}",
            self.wrong.len(),
            self.wrong.join("\n  - ")
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn context(out: &Output) -> String {
    format!(
        "exit: {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

fn mode(path: &Path) -> Option<u32> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The third field of `getent DATABASE NAME`.
fn getent_id(database: &str, name: &str) -> u32 {
    let out = Command::new("getent")
        .args([database, name])
        .output()
        .expect("getent runs");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':')
        .nth(2)
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {database} entry for {name}: {line:?}"))
}

/// The numbers of user `nobody` and group `nogroup`, as `setpriv` below
/// takes them by name.
fn nobody() -> (rustix::process::Uid, rustix::process::Gid) {
    (
        rustix::process::Uid::from_raw(getent_id("passwd", "nobody")),
        rustix::process::Gid::from_raw(getent_id("group", "nogroup")),
    )
}

/// `setpriv` arguments that run the rest as nobody.
const AS_NOBODY: [&str; 3] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

/// Whether the test can run things as nobody; reports a skip if not.
fn can_be_nobody() -> bool {
    root("run backstop as another user") && have("setpriv") && have("getent")
}

/// Gives `path` and everything below it to nobody.
fn chown_tree_to_nobody(path: &Path) {
    let (u, g) = nobody();
    rustix::fs::chown(path, Some(u), Some(g)).unwrap();
    for p in walk(path) {
        rustix::fs::chownat(
            rustix::fs::CWD,
            &p,
            Some(u),
            Some(g),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// The scratch directory opened for others to pass through (a tempdir is
/// 0700), and a backstop home nobody owns inside it.
fn nobody_home(env: &Env) -> PathBuf {
    set_mode(env.dir.path(), 0o755);
    let parent = env.path("nobody-owned");
    std::fs::create_dir_all(&parent).unwrap();
    chown_tree_to_nobody(&parent);
    parent.join("home")
}

/// Runs backstop as nobody with `home` as its home.
fn backstop_as_nobody(env: &Env, home: &Path, args: &[&OsStr]) -> Output {
    backstop_as_nobody_at(env, home, args, None)
}

/// [`backstop_as_nobody`], with `failpoints` as `BACKSTOP_FAILPOINTS`.
fn backstop_as_nobody_at(
    env: &Env,
    home: &Path,
    args: &[&OsStr],
    failpoints: Option<&str>,
) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.env_remove("BACKSTOP_FAILPOINTS");
    if let Some(points) = failpoints {
        cmd.env("BACKSTOP_FAILPOINTS", points);
    }
    cmd.args(AS_NOBODY)
        .arg(bin())
        .arg("--home")
        .arg(home)
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("BACKSTOP_HOME")
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", env.path("xdg-config"))
        .args(args)
        .current_dir(env.dir.path())
        .output()
        .unwrap()
}

/// Runs `sh -c script` as nobody.
fn sh_as_nobody(env: &Env, script: &str) -> Output {
    Command::new("setpriv")
        .args(AS_NOBODY)
        .args(["sh", "-c", script])
        .current_dir(env.dir.path())
        .output()
        .unwrap()
}

/// What is below `dir`: each relative path with its kind and content (a
/// file's bytes, a symlink's target). Read as root, unreadable places too.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("symlink {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                "dir".to_string()
            } else {
                format!(
                    "file {}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default())
                )
            };
            (rel, what)
        })
        .collect()
}

/// Staging directories left anywhere below `dir`.
fn staging_left(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".backstop-staging-")
        })
        .collect()
}

/// Paths below `dir` whose name starts with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

fn backup_id(doc: &serde_json::Value) -> String {
    doc["report"]["backup"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup in {doc}"))
        .to_string()
}

/// Writes a config file for `instance` rooted at `root` with `sources` (the
/// lines of its `[instances.NAME.sources]` table); returns its path.
fn write_config(env: &Env, instance: &str, root: &Path, sources: &str) -> PathBuf {
    let config = env.path("backstop.toml");
    std::fs::write(
        &config,
        format!(
            "[instances.{instance}]\nroot = \"{}\"\n\n[instances.{instance}.sources]\n{sources}\n",
            root.display()
        ),
    )
    .unwrap();
    config
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn exact_restore_keeps_what_the_backup_could_not_read_or_excluded() {
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    let home = nobody_home(&env);
    let parent = env.path("r");
    let app = parent.join("app");
    let dirs: Vec<PathBuf> = (1..=6).map(|i| app.join(format!("d{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d.join("node_modules/p")).unwrap();
        std::fs::write(d.join("node_modules/p/i.js"), b"module.exports = 1;\n").unwrap();
        std::fs::create_dir_all(d.join("locked")).unwrap();
        std::fs::write(d.join("locked/s"), b"secret").unwrap();
        std::fs::write(d.join("main.txt"), b"src").unwrap();
    }
    chown_tree_to_nobody(&parent);
    for d in &dirs {
        set_mode(&d.join("locked"), 0o000);
    }
    // The backup cannot read the locked directories: done with warnings.
    let out = backstop_as_nobody(
        &env,
        &home,
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(3), "{}", context(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = backup_id(&doc);
    for d in &dirs {
        std::fs::write(d.join("main.txt"), b"changed").unwrap();
    }

    let out = backstop_as_nobody(
        &env,
        &home,
        &[
            "restore".as_ref(),
            id.as_ref(),
            "--yes".as_ref(),
            "--no-pre-backup".as_ref(),
        ],
    );
    let mut expect = Expect::default();
    expect.check(
        matches!(out.status.code(), Some(0 | 3)),
        format!("the restore failed with {:?}", out.status.code()),
    );
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy();
        expect.check(
            read(&d.join("main.txt")).as_deref() == Some(b"src"),
            format!("{name}/main.txt was not restored"),
        );
        expect.check(
            d.join("node_modules/p/i.js").is_file(),
            format!("{name}/node_modules/p/i.js (excluded from the backup) is gone"),
        );
        // Checked as root: nobody cannot look inside.
        expect.check(
            read(&d.join("locked/s")).as_deref() == Some(b"secret"),
            format!("{name}/locked/s (unreadable to the backup) is gone or changed"),
        );
        expect.check(
            mode(&d.join("locked")) == Some(0o000),
            format!(
                "{name}/locked has mode {:?}, not 000",
                mode(&d.join("locked")).map(|m| format!("{m:o}"))
            ),
        );
    }
    expect.finish(&context(&out));
}

/// As nobody: backs up a small tree, changes `a.txt`, and lets `foreign`
/// put a directory of root's into it (returning it, and the mode it must
/// keep); then a restore must refuse (exit 1) naming `named`, and change
/// nothing. Gives the env, nobody's home, the tree, the backup and the
/// directory.
fn refused_over_a_foreign_directory(
    foreign: &dyn Fn(&Path) -> (PathBuf, u32),
    named: &str,
) -> Option<(Env, PathBuf, PathBuf, String, PathBuf)> {
    if !can_be_nobody() {
        return None;
    }
    let env = Env::new();
    let home = nobody_home(&env);
    let parent = env.path("n");
    let app = parent.join("app");
    std::fs::create_dir_all(app.join("deep/er")).unwrap();
    std::fs::write(app.join("a.txt"), b"original").unwrap();
    std::fs::write(app.join("deep/er/b.txt"), b"b").unwrap();
    chown_tree_to_nobody(&parent);
    let out = backstop_as_nobody(
        &env,
        &home,
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", context(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = backup_id(&doc);
    // After the backup: a change the restore would undo, and the directory.
    std::fs::write(app.join("a.txt"), b"modified").unwrap();
    let (dir, dir_mode) = foreign(&app);
    let before = listing(&app);

    let out = backstop_as_nobody(
        &env,
        &home,
        &[
            "restore".as_ref(),
            id.as_ref(),
            "--yes".as_ref(),
            "--no-pre-backup".as_ref(),
        ],
    );
    let err = stderr(&out);
    let mut expect = Expect::default();
    expect.check(
        out.status.code() == Some(1),
        format!("exit {:?}, not 1 (refused)", out.status.code()),
    );
    expect.check(err.contains(named), format!("stderr does not name {named}"));
    expect.check(
        read(&app.join("a.txt")).as_deref() == Some(b"modified"),
        "a.txt was changed: the restore went ahead",
    );
    let after = listing(&app);
    expect.check(
        after == before,
        format!("the tree changed:\n    before {before:?}\n    after  {after:?}"),
    );
    expect.check(mode(&dir) == Some(dir_mode), "the directory's mode changed");
    let left = staging_left(env.dir.path());
    expect.check(left.is_empty(), format!("staging left behind: {left:?}"));
    expect.finish(&context(&out));
    Some((env, home, app, id, dir))
}

#[test]
fn an_unreadable_directory_is_refused_before_the_safety_backup() {
    // With a safety backup to take first, the restore refuses what it
    // cannot read before taking it: the catalog holds the one backup.
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    let home = nobody_home(&env);
    let parent = env.path("n");
    let app = parent.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a.txt"), b"original").unwrap();
    chown_tree_to_nobody(&parent);
    let nobody = |args: &[&str]| {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        backstop_as_nobody(&env, &home, &args)
    };
    let out = nobody(&["--json", "backup", app.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", context(&out));
    let id = backup_id(&serde_json::from_slice(&out.stdout).unwrap());
    std::fs::write(app.join("a.txt"), b"modified").unwrap();
    let foreign = app.join("rootonly");
    std::fs::create_dir(&foreign).unwrap();
    set_mode(&foreign, 0o700);
    let out = nobody(&["restore", &id, "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", context(&out));
    assert!(stderr(&out).contains("rootonly"), "{}", context(&out));
    let out = nobody(&["--json", "list"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["backups"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(std::fs::read(app.join("a.txt")).unwrap(), b"modified");
}

#[test]
fn restore_refuses_an_unreadable_directory_it_knows_nothing_of() {
    // A directory of root's that nobody can neither read nor remove.
    let rootonly = |app: &Path| {
        let foreign = app.join("rootonly");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("secret"), b"root's").unwrap();
        set_mode(&foreign, 0o700);
        (foreign, 0o700)
    };
    let Some((env, home, app, id, foreign)) =
        refused_over_a_foreign_directory(&rootonly, "rootonly")
    else {
        return;
    };
    assert_eq!(
        read(&foreign.join("secret")).as_deref(),
        Some(&b"root's"[..])
    );

    // Kept by --exclude, it stays where it is: an exact restore in place
    // moves only what differs from the backup, never root's directory.
    let restore_as_nobody = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec!["restore".as_ref(), id.as_ref(), "--yes".as_ref()];
        args.push("--no-pre-backup".as_ref());
        args.extend(extra.iter().map(|a| OsStr::new(*a)));
        backstop_as_nobody(&env, &home, &args)
    };
    let out = restore_as_nobody(&["--exclude", "rootonly/"]);
    let mut expect = Expect::default();
    expect.check(
        out.status.success(),
        format!(
            "the exact restore keeping root's directory failed: {}",
            stderr(&out)
        ),
    );
    expect.check(
        read(&app.join("a.txt")).as_deref() == Some(b"original"),
        "the exact restore did not restore a.txt",
    );
    expect.check(
        read(&foreign.join("secret")).as_deref() == Some(b"root's"),
        "the exact restore touched rootonly",
    );
    expect.check(mode(&foreign) == Some(0o700), "rootonly's mode changed");
    // A merge leaves it where it is too.
    std::fs::write(app.join("a.txt"), b"modified").unwrap();
    let merged = restore_as_nobody(&["--exclude", "rootonly/", "--mode", "merge"]);
    expect.check(
        merged.status.success(),
        format!("the merge restore failed: {}", stderr(&merged)),
    );
    expect.check(
        read(&app.join("a.txt")).as_deref() == Some(b"original"),
        "the merge did not restore a.txt",
    );
    expect.check(
        read(&foreign.join("secret")).as_deref() == Some(b"root's"),
        "the merge touched rootonly",
    );
    expect.finish(&context(&out));
}

/// A directory another user may list but not search (`r` without `x`),
/// deep in the tree: what its entries are cannot be known, so neither can
/// what to keep there, and the restore refuses before it changes anything,
/// naming the directory.
#[test]
fn restore_refuses_a_directory_it_may_list_but_not_search() {
    let listonly = |app: &Path| {
        let dir = app.join("deep/er/listonly");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("x"), b"root's").unwrap();
        std::fs::write(dir.join("y"), b"root's").unwrap();
        set_mode(&dir, 0o744);
        (dir, 0o744)
    };
    refused_over_a_foreign_directory(&listonly, "deep/er/listonly in the destination");
}

/// `user.note` of `path`, if it has one.
fn note(path: &Path) -> Option<Vec<u8>> {
    xattr(path, "user.note")
}

/// The extended attribute `name` of `path`, if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    Some(buf[..n].to_vec())
}

const ACL: &str = "system.posix_acl_access";

fn set_note(path: &Path, value: &[u8]) {
    rustix::fs::lsetxattr(path, "user.note", value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// As an ordinary user, an exact restore in place moves files into and out
/// of directories that user made read-only: each is opened up around the
/// moves and given the backup's mode, time and extended attributes again,
/// and a failure at any step gives them back their own: an ACL given to
/// one of them since too, whose undo would make it read-only again before
/// the moves out of it are undone.
#[test]
fn an_in_place_restore_as_another_user_opens_read_only_directories_and_closes_them() {
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    let home = nobody_home(&env);
    let parent = env.path("ro");
    let app = parent.join("app");
    std::fs::create_dir_all(app.join("locked/inner")).unwrap();
    std::fs::write(app.join("locked/f"), b"v1").unwrap();
    // Unchanged, so that locked/ stays (a directory in which nothing stays
    // moves whole).
    std::fs::write(app.join("locked/same"), b"same").unwrap();
    std::fs::write(app.join("locked/inner/g"), b"g").unwrap();
    chown_tree_to_nobody(&parent);
    let locked = app.join("locked");
    let xattrs = supports_user_xattrs(env.dir.path());
    if xattrs {
        set_note(&locked, b"v1");
    } else {
        skip("no user. extended attributes here: checking the rest only");
    }
    set_mode(&app.join("locked/inner"), 0o555);
    set_mode(&app.join("locked"), 0o555);
    let out = backstop_as_nobody(
        &env,
        &home,
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", context(&out));
    let id = backup_id(&serde_json::from_slice(&out.stdout).unwrap());
    let times = |p: &Path| {
        let md = std::fs::symlink_metadata(p).unwrap();
        (md.mtime(), md.mtime_nsec())
    };
    let (locked_time, inner_time) = (times(&app.join("locked")), times(&app.join("locked/inner")));
    // Changed behind the modes' back (as root), a file added and one gone,
    // and locked/'s extended attribute.
    std::fs::write(app.join("locked/f"), b"v2").unwrap();
    std::fs::write(app.join("locked/added"), b"new").unwrap();
    std::fs::remove_file(app.join("locked/inner/g")).unwrap();
    if xattrs {
        set_note(&locked, b"v2");
    }
    let acls = supports_acls(env.dir.path());
    if acls {
        // r-x for its owner, as its mode 0555 says, and for daemon.
        let acl = posix_acl(5, &[(1, 5)], 5, 5);
        rustix::fs::lsetxattr(&locked, ACL, &acl, rustix::fs::XattrFlags::empty()).unwrap();
    } else {
        skip("no POSIX ACLs here: checking the rest only");
    }
    let restore = |failpoints: Option<&str>| {
        let args: Vec<&OsStr> = vec![
            "restore".as_ref(),
            id.as_ref(),
            "--yes".as_ref(),
            "--no-pre-backup".as_ref(),
        ];
        backstop_as_nobody_at(&env, &home, &args, failpoints)
    };
    let before = (listing(&app), note(&locked), xattr(&locked, ACL));
    let mut expect = Expect::default();
    // A failure at each step in turn, up to the one that goes through.
    let mut out = restore(Some("restore.apply-step=error@1"));
    for n in 2..=20 {
        if out.status.success() {
            break;
        }
        expect.check(
            out.status.code() == Some(5),
            format!("exit {:?}, not 5", out.status.code()),
        );
        expect.check(
            (listing(&app), note(&locked), xattr(&locked, ACL)) == before,
            format!("a failure at step {} did not put the tree back", n - 1),
        );
        expect.check(
            mode(&app.join("locked")) == Some(0o555),
            format!("locked/ stayed opened up after a failure at step {}", n - 1),
        );
        out = restore(Some(&format!("restore.apply-step=error@{n}")));
    }
    expect.check(
        out.status.success(),
        format!("the restore failed: {}", stderr(&out)),
    );
    expect.check(
        read(&app.join("locked/f")).as_deref() == Some(b"v1"),
        "locked/f not restored",
    );
    expect.check(
        !app.join("locked/added").exists(),
        "locked/added is still there",
    );
    expect.check(
        read(&app.join("locked/inner/g")).as_deref() == Some(b"g"),
        "locked/inner/g not back",
    );
    if xattrs {
        expect.check(
            note(&locked).as_deref() == Some(b"v1"),
            "locked/ has not the backup's extended attribute",
        );
    }
    expect.check(
        xattr(&locked, ACL).is_none(),
        "locked/ kept the ACL it was given after the backup",
    );
    for (dir, time) in [("locked", locked_time), ("locked/inner", inner_time)] {
        expect.check(
            mode(&app.join(dir)) == Some(0o555),
            format!("{dir} is not 0555 again"),
        );
        expect.check(
            times(&app.join(dir)) == time,
            format!("{dir} has not the backup's time"),
        );
    }
    expect.finish(&context(&out));
}

#[test]
fn restore_refuses_a_symlink_in_the_destination_path() {
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("data/sub")).unwrap();
    std::fs::create_dir_all(app.join("conf")).unwrap();
    std::fs::write(app.join("data/sub/state"), b"backed up").unwrap();
    std::fs::write(app.join("conf/app.toml"), b"port = 1\n").unwrap();
    let config = write_config(&env, "app", &app, "sub = \"data/sub\"\nconf = \"conf\"");
    let cfg = config.to_str().unwrap();
    let id = backup_id(&env.json(&["--config", cfg, "backup", "app"]));
    // `data` is now a symlink to a directory outside the root.
    let outside = env.path("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("sub/precious"), b"precious").unwrap();
    std::fs::rename(app.join("data"), env.path("data-moved-away")).unwrap();
    std::os::unix::fs::symlink(&outside, app.join("data")).unwrap();
    let before = listing(&outside);

    let out = env
        .cmd()
        .args(["--config", cfg, "restore", &id, "--yes", "--no-pre-backup"])
        .output()
        .unwrap();
    let mut expect = Expect::default();
    expect.check(
        read(&outside.join("sub/precious")).as_deref() == Some(b"precious"),
        "outside/sub/precious was removed or changed through the symlink",
    );
    let after = listing(&outside);
    expect.check(
        after == before,
        format!("outside/ changed:\n    before {before:?}\n    after  {after:?}"),
    );
    expect.check(
        out.status.code() == Some(1),
        format!("exit {:?}, not 1 (refused)", out.status.code()),
    );
    expect.check(
        stderr(&out).contains("symlink"),
        "stderr does not mention the symlink",
    );
    expect.finish(&context(&out));
}

#[test]
fn merge_restore_never_writes_through_a_directory_swapped_for_a_symlink() {
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    set_mode(env.dir.path(), 0o755);
    let app = env.path("app");
    std::fs::create_dir_all(app.join("sub")).unwrap();
    for f in ["a", "b", "c"] {
        std::fs::write(app.join("sub").join(f), f.as_bytes()).unwrap();
    }
    std::fs::write(app.join("top.txt"), b"v1").unwrap();
    chown_tree_to_nobody(&app);
    let id = backup_id(&env.json(&["backup", app.to_str().unwrap()]));
    // The merge will move the three files back in, and replace top.txt.
    for f in ["a", "b", "c"] {
        std::fs::remove_file(app.join("sub").join(f)).unwrap();
    }
    std::fs::write(app.join("top.txt"), b"v2").unwrap();
    // Root's, and empty.
    let victim = env.path("victim");
    std::fs::create_dir(&victim).unwrap();
    set_mode(&victim, 0o755);
    let before = listing(&app);

    let swap = format!(
        "mv '{app}/sub' '{app}/sub.gone' && ln -s '{victim}' '{app}/sub'",
        app = app.display(),
        victim = victim.display()
    );
    let out = run_paused(
        &env,
        "restore.apply-step",
        &[
            "restore".as_ref(),
            id.as_ref(),
            "--mode".as_ref(),
            "merge".as_ref(),
            "--yes".as_ref(),
            "--no-pre-backup".as_ref(),
        ],
        |_| {
            // The owner of the tree swaps a directory for a symlink to one
            // it may not write to.
            let done = sh_as_nobody(&env, &swap);
            assert!(done.status.success(), "the swap failed: {}", stderr(&done));
        },
    );
    let mut expect = Expect::default();
    let in_victim = Env::files_in(&victim);
    expect.check(
        in_victim.is_empty(),
        format!("wrote into victim/ through the symlink: {in_victim:?}"),
    );
    expect.check(
        matches!(out.status.code(), Some(1 | 5)),
        format!("exit {:?}, not 5 (rolled back) or 1", out.status.code()),
    );
    // As before the restore, with only the swap made meanwhile.
    let mut expected: BTreeMap<String, String> = before
        .into_iter()
        .map(|(rel, what)| match rel.strip_prefix("sub") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                (format!("sub.gone{rest}"), what)
            }
            _ => (rel, what),
        })
        .collect();
    expected.insert("sub".into(), format!("symlink {}", victim.display()));
    let after = listing(&app);
    expect.check(
        after == expected,
        format!("app/ is not as before:\n    expected {expected:?}\n    found    {after:?}"),
    );
    expect.finish(&context(&out));
}

#[test]
fn exact_restore_cleanup_never_follows_a_swapped_symlink() {
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    set_mode(env.dir.path(), 0o755);
    let app = env.path("app");
    std::fs::create_dir_all(app.join("d/inner")).unwrap();
    std::fs::write(app.join("d/inner/f"), b"inner file").unwrap();
    std::fs::write(app.join("top.txt"), b"v1").unwrap();
    chown_tree_to_nobody(&app);
    let victim = env.path("victim");
    std::fs::create_dir(&victim).unwrap();
    set_mode(&victim, 0o755);
    std::fs::write(victim.join("keep"), b"keep").unwrap();
    let id = backup_id(&env.json(&["backup", app.to_str().unwrap()]));
    std::fs::write(app.join("top.txt"), b"v2").unwrap();
    // Not in the backup: the exact restore moves it aside into its staging
    // directory, which the cleanup removes.
    std::fs::create_dir_all(app.join("gone/inner")).unwrap();
    std::fs::write(app.join("gone/inner/f"), b"added").unwrap();
    chown_tree_to_nobody(&app);

    let parent = env.dir.path().to_path_buf();
    let out = run_paused(
        &env,
        "restore.cleanup-descend",
        &[
            "restore".as_ref(),
            id.as_ref(),
            "--yes".as_ref(),
            "--no-pre-backup".as_ref(),
        ],
        |_| {
            // What the restore moved aside is parked in a staging
            // directory beside app: its gone/inner becomes a symlink to
            // victim/.
            let staging: Vec<PathBuf> = Env::files_in(&parent)
                .into_iter()
                .filter(|n| n.starts_with(".backstop-staging-"))
                .map(|n| parent.join(n))
                .collect();
            assert!(!staging.is_empty(), "no staging directory beside app");
            let inner = staging
                .iter()
                .flat_map(|s| walk(s))
                .find(|p| {
                    p.ends_with("inner") && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                })
                .unwrap_or_else(|| panic!("no gone/inner moved aside under {staging:?}"));
            std::fs::rename(&inner, inner.with_file_name("inner.moved")).unwrap();
            std::os::unix::fs::symlink(&victim, &inner).unwrap();
        },
    );
    let mut expect = Expect::default();
    expect.check(
        victim.join("keep").is_file(),
        "victim/keep was removed through the symlink",
    );
    expect.check(
        out.status.code() == Some(0),
        format!("exit {:?}, not 0", out.status.code()),
    );
    expect.check(
        read(&app.join("top.txt")).as_deref() == Some(b"v1"),
        "app/top.txt was not restored",
    );
    expect.check(
        read(&app.join("d/inner/f")).as_deref() == Some(b"inner file"),
        "app/d/inner/f is not there",
    );
    expect.check(
        std::fs::symlink_metadata(app.join("gone")).is_err(),
        "app/gone (not in the backup) is still there",
    );
    expect.finish(&context(&out));
}

/// A scratch directory with a crafted archive whose manifest points out, a
/// root and a destination each with a `victim2/` beside it.
struct Escape {
    env: Env,
    home: PathBuf,
    root: PathBuf,
    dest: PathBuf,
    victims: [PathBuf; 2],
    archive: PathBuf,
}

impl Escape {
    fn new(case: &str) -> Escape {
        let env = Env::new();
        // Deep enough that anything climbing out of them stays inside the
        // scratch directory, where the walks look.
        let home = env.path("h1/h2/h3/home");
        let root = env.path("x1/x2/app");
        let dest = env.path("y1/y2/dest");
        let archives = env.path("archives");
        for d in [&root, &dest, &archives] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(root.join("live"), b"live").unwrap();
        let victims = [env.path("x1/x2/victim2"), env.path("y1/y2/victim2")];
        for v in &victims {
            std::fs::create_dir_all(v).unwrap();
            std::fs::write(v.join("file"), b"victim's").unwrap();
        }
        let (instance, sources, items): (&str, Vec<SourceManifest>, Vec<Raw>) = match case {
            "path" => (
                "app",
                vec![path_source("app", "../victim2", &root)],
                vec![Raw::Dir(b"app"), Raw::File(b"app/pwned", b"x")],
            ),
            "sqlite" => (
                "app",
                vec![SourceManifest {
                    name: "db".into(),
                    kind: "sqlite".into(),
                    path: "../../escaped.db".into(),
                    origin: root.join("../../escaped.db").display().to_string(),
                    restore: "replace the database file".into(),
                    file: Some("app.db".into()),
                    volume: None,
                }],
                vec![
                    Raw::Dir(b"db"),
                    Raw::File(b"db/app.db", b"SQLite format 3\0not really"),
                ],
            ),
            "instance" => (
                "../../../pwninst",
                vec![path_source("app", ".", &root)],
                vec![Raw::Dir(b"app"), Raw::File(b"app/pwned", b"x")],
            ),
            other => panic!("no case {other}"),
        };
        let m = manifest(&format!("app-escape-{case}"), instance, &root, sources);
        let archive = craft_with(&archives, &m, &items);
        Escape {
            env,
            home,
            root,
            dest,
            victims,
            archive,
        }
    }

    fn run(&self, args: &[&OsStr]) -> Output {
        self.env
            .cmd_with_home(&self.home)
            .args(args)
            .output()
            .unwrap()
    }

    /// Everything that must hold after a refused restore.
    fn nothing_escaped(
        &self,
        what: &str,
        root_before: &BTreeMap<String, String>,
        expect: &mut Expect,
    ) {
        let all = self.env.dir.path();
        for v in &self.victims {
            let found = listing(v);
            expect.check(
                found == BTreeMap::from([("file".into(), "file victim's".into())]),
                format!("{what}: {} changed: {found:?}", v.display()),
            );
        }
        let escaped = named(all, "escaped.db");
        expect.check(escaped.is_empty(), format!("{what}: wrote {escaped:?}"));
        let pwned = named(all, "pwninst");
        expect.check(pwned.is_empty(), format!("{what}: created {pwned:?}"));
        expect.check(
            listing(&self.root) == *root_before,
            format!("{what}: the root changed: {:?}", listing(&self.root)),
        );
        let in_dest = Env::files_in(&self.dest);
        expect.check(
            in_dest.is_empty(),
            format!("{what}: wrote into the destination: {in_dest:?}"),
        );
        let left = staging_left(all);
        expect.check(
            left.is_empty(),
            format!("{what}: staging left behind: {left:?}"),
        );
    }
}

#[test]
fn a_crafted_manifest_cannot_escape_the_root_or_the_home() {
    let mut expect = Expect::default();
    let cases = [
        ("path", "a path source ../victim2"),
        ("sqlite", "a sqlite source ../../escaped.db"),
        ("instance", "instance ../../../pwninst"),
    ];
    for (case, about) in cases {
        let x = Escape::new(case);
        let root_before = listing(&x.root);
        let out = x.run(&["verify".as_ref(), x.archive.as_os_str()]);
        expect.check(
            out.status.code() == Some(4),
            format!(
                "{about}: verify exits {:?}, not 4: {}",
                out.status.code(),
                stderr(&out).trim()
            ),
        );
        x.nothing_escaped(&format!("{about}: verify"), &root_before, &mut expect);
        for with_dest in [false, true] {
            // A fresh copy of everything for each restore.
            let x = Escape::new(case);
            let mut args: Vec<&OsStr> = vec![
                "restore".as_ref(),
                x.archive.as_os_str(),
                "--yes".as_ref(),
                "--no-pre-backup".as_ref(),
            ];
            if with_dest {
                args.extend(["--dest".as_ref(), x.dest.as_os_str()]);
            }
            let how = if with_dest {
                "restore --dest"
            } else {
                "restore"
            };
            let out = x.run(&args);
            expect.check(
                out.status.code() == Some(4),
                format!(
                    "{about}: {how} exits {:?}, not 4: {}",
                    out.status.code(),
                    stderr(&out).trim()
                ),
            );
            x.nothing_escaped(&format!("{about}: {how}"), &root_before, &mut expect);
        }
    }
    expect.finish("");
}

/// An instance `app` whose one source is the SQLite database
/// `data/app.db`, holding `rows` in table `t`, backed up: (its root, the
/// config, the backup's id).
fn backed_up_database(env: &Env, rows: &str) -> (PathBuf, PathBuf, String) {
    let app = env.path("app");
    std::fs::create_dir_all(app.join("data")).unwrap();
    sqlite(
        &app.join("data/app.db"),
        &format!("CREATE TABLE t(x); INSERT INTO t VALUES {rows};"),
    );
    let config = write_config(env, "app", &app, "db = { sqlite = \"data/app.db\" }");
    let cfg = config.to_str().unwrap();
    let id = backup_id(&env.json(&["--config", cfg, "backup", "app"]));
    (app, config, id)
}

#[test]
fn restore_into_dest_puts_a_database_below_dest() {
    if !have("sqlite3") {
        return;
    }
    let env = Env::new();
    let (_app, config, id) = backed_up_database(&env, "('hello'), ('world')");
    let cfg = config.to_str().unwrap();
    let fresh = env.path("fresh");
    let out = env
        .cmd()
        .args(["--config", cfg, "restore", &id, "--dest"])
        .arg(&fresh)
        .arg("--yes")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", context(&out));
    let db = fresh.join("data/app.db");
    assert!(db.is_file(), "no {}: {:?}", db.display(), listing(&fresh));
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(sqlite(&db, "SELECT x FROM t ORDER BY x"), "hello\nworld");
}

#[test]
fn a_never_restore_path_added_to_the_config_after_the_backup_is_kept() {
    let env = Env::new();
    let app = env.small_app("app");
    let config = env.path("backstop.toml");
    let root = format!("[instances.app]\nroot = \"{}\"\n", app.display());
    std::fs::write(&config, &root).unwrap();
    let cfg = config.to_str().unwrap();
    let id = backup_id(&env.json(&["--config", cfg, "backup", "app"]));
    std::fs::write(
        &config,
        format!("{root}never_restore = [\"data/.initialized\"]\n"),
    )
    .unwrap();
    std::fs::write(app.join("data/.initialized"), b"set up").unwrap();
    std::fs::write(app.join("config/app.toml"), b"changed").unwrap();
    let plan = env.json(&["--config", cfg, "restore", &id, "--dry-run"]);
    assert_eq!(plan["restore"]["plan"]["totals"]["delete"], 0, "{plan}");
    assert_eq!(kept_why(&plan), ["data/.initialized (never-restore)"]);
    env.cmd()
        .args(["--config", cfg, "restore", &id, "--yes", "--no-pre-backup"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(app.join("data/.initialized")).unwrap(),
        b"set up"
    );
    assert_eq!(
        std::fs::read(app.join("config/app.toml")).unwrap(),
        b"port = 8080\n"
    );
}

#[test]
fn a_symlink_put_where_the_backed_up_root_was_is_refused() {
    // Root backs up a directory nobody owns; nobody swaps it for a symlink
    // to a directory of root's. The restore with no --dest goes where the
    // backup was taken: not through the symlink into the victim.
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    let owner = env.path("owner");
    let victim = env.path("victim");
    std::fs::create_dir_all(owner.join("app")).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("canary"), b"root's").unwrap();
    std::fs::write(owner.join("app/f"), b"data").unwrap();
    chown_tree_to_nobody(&owner);
    let app = owner.join("app");
    let id = backup_id(&env.json(&["backup", app.to_str().unwrap()]));
    std::fs::rename(&app, owner.join("app.moved")).unwrap();
    std::os::unix::fs::symlink(&victim, &app).unwrap();
    for extra in ["--dry-run", "--yes"] {
        let out = env
            .cmd()
            .args(["restore", &id, extra, "--no-pre-backup"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra}: {}", context(&out));
        assert!(stderr(&out).contains("now leads to"), "{}", context(&out));
    }
    assert_eq!(std::fs::read(victim.join("canary")).unwrap(), b"root's");
    assert!(!victim.join("f").exists());
}

#[test]
fn what_the_backup_could_not_read_is_kept_by_the_dry_run_and_the_restore() {
    // A directory and a file of root's, shut to nobody, in nobody's tree:
    // the backup lists them as unreadable; the plan (the safety backup's
    // estimate included) and the restore keep them, never refuse them.
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    let home = nobody_home(&env);
    let parent = env.path("r");
    let app = parent.join("notes");
    std::fs::create_dir_all(app.join("private")).unwrap();
    std::fs::write(app.join("private/s"), b"secret").unwrap();
    std::fs::write(app.join("rootfile"), b"root's").unwrap();
    std::fs::write(app.join("n"), b"note").unwrap();
    let (u, g) = nobody();
    for p in [&parent, &app, &app.join("n")] {
        rustix::fs::chown(p.as_path(), Some(u), Some(g)).unwrap();
    }
    set_mode(&app.join("private"), 0o700);
    set_mode(&app.join("rootfile"), 0o600);
    let out = backstop_as_nobody(
        &env,
        &home,
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(3), "{}", context(&out));
    let id = backup_id(&serde_json::from_slice(&out.stdout).unwrap());
    std::fs::write(app.join("n"), b"changed").unwrap();
    let plan = backstop_as_nobody(
        &env,
        &home,
        &[
            "--json".as_ref(),
            "restore".as_ref(),
            id.as_ref(),
            "--dry-run".as_ref(),
        ],
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        kept_why(&plan),
        ["private (not-read)", "rootfile (not-read)"]
    );
    for (extra, codes) in [("--dry-run", [0, 0]), ("--yes", [0, 3])] {
        let out = backstop_as_nobody(
            &env,
            &home,
            &["restore".as_ref(), id.as_ref(), extra.as_ref()],
        );
        let code = out.status.code().unwrap_or(-1);
        assert!(codes.contains(&code), "{extra}: {}", context(&out));
    }
    assert_eq!(std::fs::read(app.join("n")).unwrap(), b"note");
    assert_eq!(std::fs::read(app.join("private/s")).unwrap(), b"secret");
    assert_eq!(std::fs::read(app.join("rootfile")).unwrap(), b"root's");
}

#[test]
fn a_restore_whose_staging_place_is_not_writable_is_refused_before_anything() {
    // The staged copy goes beside the tree; a tree of nobody's in a
    // directory only root may write: the plan must say so, not pass its
    // checks and then fail (and roll back) after a safety backup.
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    let home = nobody_home(&env);
    let parent = env.path("r");
    let app = parent.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("main.txt"), b"src").unwrap();
    chown_tree_to_nobody(&app);
    set_mode(&parent, 0o755);
    let out = backstop_as_nobody(
        &env,
        &home,
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", context(&out));
    let id = backup_id(&serde_json::from_slice(&out.stdout).unwrap());
    std::fs::write(app.join("main.txt"), b"changed").unwrap();
    let list = |env: &Env| {
        let out = backstop_as_nobody(env, &home, &["--json".as_ref(), "list".as_ref()]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["backups"].as_array().unwrap().len()
    };
    for extra in ["--dry-run", "--yes"] {
        let out = backstop_as_nobody(
            &env,
            &home,
            &["restore".as_ref(), id.as_ref(), extra.as_ref()],
        );
        assert_eq!(out.status.code(), Some(1), "{extra}: {}", context(&out));
        assert!(
            stderr(&out).contains("stages its copy"),
            "{extra}: {}",
            context(&out)
        );
    }
    assert_eq!(list(&env), 1, "no safety backup");
    assert_eq!(std::fs::read(app.join("main.txt")).unwrap(), b"changed");
}

#[test]
fn a_database_restored_in_place_is_planned_as_replaced() {
    // The tree's backup leaves the database out (it is captured whole, as
    // its own source): that exclude must not make the plan say the
    // database is kept while the restore replaces it.
    if !have("sqlite3") {
        return;
    }
    let env = Env::new();
    let (app, config, id) = backed_up_database(&env, "('hello')");
    let cfg = config.to_str().unwrap();
    sqlite(&app.join("data/app.db"), "UPDATE t SET x = 'changed'");
    let plan = env.json(&["--config", cfg, "restore", &id, "--dry-run"]);
    let actions = plan["restore"]["plan"]["actions"].as_array().unwrap();
    let db = app.join("data/app.db").display().to_string();
    let of_db: Vec<_> = actions
        .iter()
        .filter(|a| a["path"] == db.as_str())
        .collect();
    assert_eq!(of_db.len(), 1, "{plan}");
    assert_eq!(of_db[0]["action"], "replace", "{plan}");
    let done = env.json(&["--config", cfg, "restore", &id, "--yes"]);
    assert_eq!(done["restore"]["plan"]["totals"]["replace"], 1, "{done}");
    assert_eq!(sqlite(&app.join("data/app.db"), "SELECT x FROM t"), "hello");
}

#[test]
fn a_backup_between_plan_and_apply_is_refused_with_exit_6() {
    let env = Env::new();
    let app = env.small_app("svc");
    let id = backup_id(&env.json(&["backup", app.to_str().unwrap()]));
    let out = run_paused(
        &env,
        "restore.planned",
        &[
            "restore".as_ref(),
            id.as_ref(),
            "--yes".as_ref(),
            "--no-pre-backup".as_ref(),
        ],
        |_| {
            let backup = env.cmd().arg("backup").arg(&app).output().unwrap();
            assert_eq!(
                backup.status.code(),
                Some(6),
                "a backup while the restore holds the instance: {}",
                context(&backup)
            );
        },
    );
    assert_eq!(out.status.code(), Some(0), "{}", context(&out));
}

/// Issue 10, item 3: a directory of the source that its owner swaps for a
/// symlink to root's files while the backup runs (after the scan, before a
/// byte is read) is never read through. The backup holds the symlink, not
/// what it points at, says the entries below it vanished, and what it calls
/// available verifies and restores.
#[test]
fn a_directory_swapped_for_a_symlink_during_a_backup_is_never_read_through() {
    if !can_be_nobody() || !have("tar") || !have("zstd") {
        return;
    }
    let env = Env::new();
    set_mode(env.dir.path(), 0o755);
    let app = env.path("app");
    std::fs::create_dir_all(app.join("sub")).unwrap();
    for f in ["a", "b"] {
        std::fs::write(app.join("sub").join(f), b"public").unwrap();
    }
    std::fs::write(app.join("top.txt"), b"top").unwrap();
    chown_tree_to_nobody(&app);
    // Root's, with the same names.
    let secret = env.path("secret");
    std::fs::create_dir(&secret).unwrap();
    for f in ["a", "b"] {
        std::fs::write(secret.join(f), b"SECRET-of-root").unwrap();
    }
    set_mode(&secret, 0o700);

    let swap = format!(
        "mv '{app}/sub' '{app}/sub.gone' && ln -s '{secret}' '{app}/sub'",
        app = app.display(),
        secret = secret.display()
    );
    let out = run_paused(
        &env,
        "backup.after-scan",
        &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
        |_| {
            let done = sh_as_nobody(&env, &swap);
            assert!(done.status.success(), "the swap failed: {}", stderr(&done));
        },
    );
    let mut expect = Expect::default();
    expect.check(
        matches!(out.status.code(), Some(0 | 3)),
        format!("backup exit {:?}, not 0 or 3", out.status.code()),
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let id = backup_id(&doc);
    let file = doc["report"]["backup"]["location"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no location in {doc}"));
    let plain = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -tvf -", file.display()))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&plain.stdout).into_owned();
    let raw = Command::new("zstd").arg("-dc").arg(&file).output().unwrap();
    expect.check(
        !raw.stdout.windows(6).any(|w| w == b"SECRET"),
        "the archive holds root's files, read through the symlink",
    );
    expect.check(
        listed
            .lines()
            .any(|l| l.starts_with('l') && l.contains("app/sub ->")),
        format!("app/sub is not stored as the symlink it became:\n{listed}"),
    );
    expect.check(
        !listed.contains("app/sub/"),
        format!("entries stored below a symlink:\n{listed}"),
    );
    let verify = env.cmd().args(["verify", &id]).output().unwrap();
    expect.check(
        verify.status.success(),
        format!("verify refused the backup: {}", stderr(&verify)),
    );
    let dest = env.path("restored");
    let restore = env
        .cmd()
        .args(["restore", &id, "--yes", "--dest"])
        .arg(&dest)
        .output()
        .unwrap();
    expect.check(
        restore.status.success(),
        format!("restore refused the backup: {}", stderr(&restore)),
    );
    let back = listing(&dest);
    expect.check(
        back.iter()
            .any(|(rel, what)| rel.ends_with("top.txt") && what == "file top"),
        format!("the restored tree lacks top.txt: {back:?}"),
    );
    expect.check(
        !back.values().any(|v| v.contains("SECRET")),
        format!("root's files were restored: {back:?}"),
    );
    expect.finish(&context(&out));
}

// ---------------------------------------------------------------------------
// Permissions on backstop's own state

/// stdout and stderr together, as a person at the terminal reads them.
fn screen(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

#[test]
fn an_unreadable_home_is_an_error_never_no_backups() {
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    set_mode(env.dir.path(), 0o755);
    let app = env.small_app("svc");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    assert_eq!(mode(&env.home()), Some(0o700), "root's home is private");
    let dest = nobody_home(&env).parent().unwrap().join("restored");
    let home = env.home().display().to_string();
    let app = app.as_os_str();
    let runs: [&[&OsStr]; 7] = [
        &["list".as_ref()],
        &["show".as_ref(), id.as_ref()],
        &["verify".as_ref(), "--all".as_ref()],
        &["doctor".as_ref()],
        &["backup".as_ref(), app],
        &[
            "restore".as_ref(),
            id.as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ],
        &["prune".as_ref(), "--keep".as_ref(), "1".as_ref()],
    ];
    let mut expect = Expect::default();
    let mut seen = String::new();
    for args in runs {
        let out = backstop_as_nobody(&env, &env.home(), args);
        let text = screen(&out);
        let cmd = args[0].to_string_lossy();
        expect.check(out.status.code() == Some(1), format!("{cmd}: exit 1"));
        expect.check(
            text.contains("permission denied") && text.contains(&home),
            format!("{cmd}: names the home and the refused permission"),
        );
        expect.check(
            text.contains("r-x"),
            format!("{cmd}: says which permission"),
        );
        expect.check(
            !text.contains("No backups yet") && !text.contains("does not exist yet"),
            format!("{cmd}: does not pretend there is nothing"),
        );
        seen.push_str(&format!("--- {cmd}\n{}\n", context(&out)));
    }
    expect.finish(&seen);
    assert_eq!(env.list().len(), 1, "root's backup is untouched");
}

#[test]
fn an_unreadable_catalog_is_an_error_naming_it() {
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    set_mode(env.dir.path(), 0o755);
    let app = env.small_app("svc");
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    set_mode(&env.home(), 0o755);
    let catalog = env.home().join("catalog.db");
    assert_eq!(mode(&catalog), Some(0o600));
    let mut expect = Expect::default();
    let mut seen = String::new();
    for args in [&["list"][..], &["show", &id], &["doctor"]] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let out = backstop_as_nobody(&env, &env.home(), &args);
        let text = screen(&out);
        expect.check(
            out.status.code() == Some(1),
            format!("{:?}: exit 1", args[0]),
        );
        expect.check(
            text.contains("permission denied")
                && text.contains(&catalog.display().to_string())
                && text.contains("read and write"),
            format!("{:?}: names the catalog and the permission", args[0]),
        );
        seen.push_str(&format!("--- {:?}\n{}\n", args[0], context(&out)));
    }
    expect.finish(&seen);
}

/// A chain made by another user in a home of its own: incremental, its
/// index cache private to that user, restored by that user; and root's
/// backup of the same directory into root's home never builds on it.
#[test]
fn another_users_chain_stays_in_its_home() {
    if !can_be_nobody() {
        return;
    }
    let env = Env::new();
    let home = nobody_home(&env);
    let app = env.path("nobody-owned/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("a.txt"), b"one").unwrap();
    std::fs::write(app.join("b.txt"), b"two").unwrap();
    chown_tree_to_nobody(&env.path("nobody-owned"));
    let backup = |extra: &str| {
        let out = sh_as_nobody(&env, &format!("echo {extra} >> {}/b.txt", app.display()));
        assert!(out.status.success(), "{}", context(&out));
        let out = backstop_as_nobody(
            &env,
            &home,
            &["--json".as_ref(), "backup".as_ref(), app.as_os_str()],
        );
        assert!(out.status.success(), "{}", context(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["report"]["backup"].clone()
    };
    let first = backup("x");
    let second = backup("y");
    assert_eq!(second["parent"], first["id"], "{second}");
    assert_eq!(second["files"], 1, "only b.txt changed: {second}");
    let cache = home.join("index/app.zst");
    let st = std::fs::metadata(&cache).unwrap();
    assert_eq!(
        (st.permissions().mode() & 0o777, st.uid()),
        (0o600, nobody().0.as_raw())
    );
    let dest = env.path("nobody-owned/dest");
    let out = backstop_as_nobody(
        &env,
        &home,
        &[
            "restore".as_ref(),
            second["id"].as_str().unwrap().as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "--yes".as_ref(),
        ],
    );
    assert!(out.status.success(), "{}", context(&out));
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"one");
    // Root's own home knows nothing of nobody's chain: a full backup.
    let mine = env.backup(&app, &[]);
    assert_eq!(mine["parent"], serde_json::Value::Null, "{mine}");
}
