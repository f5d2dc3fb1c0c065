//! A restore costs what changed: files already in place as the backup has
//! them are linked into the staged tree, not written again, and the
//! restore stays all or nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use backstop_test_support::{
    Compare, assert_same_tree, posix_acl, root, skip, snapshot, supports_acls, supports_user_xattrs,
};

use crate::support::{Env, copy_tree, run_paused};

const FILES: usize = 100;

/// A tree of `FILES` files of 20 KiB in ten directories, backed up, with a
/// reference copy; returns (app, reference, backup id).
fn backed_up(env: &Env) -> (PathBuf, PathBuf, String) {
    let app = env.path("app");
    for i in 0..FILES {
        let dir = app.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        let body: Vec<u8> = (0..20_000u32).map(|k| (k * 7 + i as u32) as u8).collect();
        std::fs::write(dir.join(format!("f{i:03}")), body).unwrap();
    }
    let reference = env.path("reference");
    copy_tree(&app, &reference);
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    (app, reference, id)
}

fn file(app: &Path, i: usize) -> PathBuf {
    app.join(format!("d{}/f{i:03}", i % 10))
}

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().ino()
}

/// Changes two files: one grows, one keeps its size and time but not its
/// content (as a careless tool or a bit flip would leave it).
fn change_two(app: &Path) {
    let grown = file(app, 3);
    let mut body = std::fs::read(&grown).unwrap();
    body.extend_from_slice(b"upgrade");
    std::fs::write(&grown, body).unwrap();
    let sneaky = file(app, 42);
    let mtime = std::fs::metadata(&sneaky).unwrap().modified().unwrap();
    let mut body = std::fs::read(&sneaky).unwrap();
    body[15_000] ^= 0xff;
    std::fs::write(&sneaky, body).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&sneaky)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// `restore ID --yes --no-pre-backup`, for [`run_paused`].
fn restore_args(id: &str) -> [&std::ffi::OsStr; 4] {
    ["restore", id, "--yes", "--no-pre-backup"].map(std::ffi::OsStr::new)
}

fn compare() -> Compare {
    Compare {
        dir_mtimes: true,
        xattrs: false,
        sparse: false,
    }
}

#[test]
fn an_exact_restore_after_a_small_change_rewrites_only_what_changed() {
    let env = Env::new();
    let (app, reference, id) = backed_up(&env);
    change_two(&app);
    let before: Vec<u64> = (0..FILES).map(|i| inode(&file(&app, i))).collect();
    let doc = env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    let report = &doc["restore"];
    assert_eq!(report["outcome"], "restored", "{doc}");
    assert_same_tree(&reference, &app, compare());
    assert_eq!(report["linked_files"], (FILES - 2) as u64, "{report}");
    for (i, ino) in before.iter().enumerate() {
        let same_inode = inode(&file(&app, i)) == *ino;
        assert_eq!(same_inode, i != 3 && i != 42, "file {i}");
    }
    // The file changed behind its time's back is reported as replaced.
    let replaced: Vec<&str> = report["plan"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "replace")
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert!(
        replaced.iter().any(|p| p.ends_with("/f042")),
        "{replaced:?}"
    );
    // Nothing of the live tree is shared with anything else afterwards.
    for i in 0..FILES {
        assert_eq!(std::fs::metadata(file(&app, i)).unwrap().nlink(), 1);
    }
}

#[test]
fn merge_and_safe_restores_leave_unchanged_files_untouched_for_the_next_backup() {
    // What a merge or safe restore finds as the backup has it stays where
    // it is, its change time too: the next incremental backup finds every
    // file but the restored one as it was, and reads none of them again.
    for mode in ["merge", "safe"] {
        let env = Env::new();
        let (app, _reference, id) = backed_up(&env);
        std::fs::remove_file(file(&app, 3)).unwrap();
        let stamp = |i: usize| {
            let m = std::fs::symlink_metadata(file(&app, i)).unwrap();
            (m.ino(), m.ctime(), m.ctime_nsec())
        };
        let before: Vec<_> = (0..FILES).filter(|i| *i != 3).map(stamp).collect();
        let doc = env.json(&["restore", &id, "--yes", "--no-pre-backup", "--mode", mode]);
        let report = &doc["restore"];
        assert_eq!(report["outcome"], "restored", "{mode}: {doc}");
        assert_eq!(report["plan"]["totals"]["create"], 1, "{mode}: {report}");
        assert_eq!(
            report["plan"]["totals"]["unchanged"].as_u64().unwrap(),
            FILES as u64 - 1 + 11,
            "{mode}: the other files and the 11 directories: {report}"
        );
        assert_eq!(
            report["linked_files"],
            (FILES - 1) as u64,
            "{mode}: {report}"
        );
        let after: Vec<_> = (0..FILES).filter(|i| *i != 3).map(stamp).collect();
        assert_eq!(before, after, "{mode}: inodes and change times");
        assert!(file(&app, 3).is_file(), "{mode}");
        let inc = env.json(&["backup", app.to_str().unwrap(), "--incremental"]);
        assert_eq!(
            inc["report"]["unchanged_files"].as_u64(),
            Some(FILES as u64 - 1),
            "{mode}: {inc}"
        );
    }
}

#[test]
fn a_restore_killed_after_linking_leaves_the_live_tree_as_it_was() {
    for point in ["restore.after-stage", "restore.before-commit"] {
        let env = Env::new();
        let (app, _reference, id) = backed_up(&env);
        change_two(&app);
        let changed = env.path("changed");
        copy_tree(&app, &changed);
        let before = snapshot(&app, compare());
        let out = env
            .cmd()
            .env("BACKSTOP_FAILPOINTS", format!("{point}=abort"))
            .args(["restore", &id, "--yes", "--no-pre-backup"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the restore was not killed");
        // The next command that takes the lock undoes the restore: the
        // live tree is the changed one, its files no longer shared with a
        // staged copy.
        env.cmd().args(["recover"]).assert().success();
        assert_eq!(snapshot(&app, compare()), before, "{point}");
        assert_same_tree(&changed, &app, compare());
        for i in 0..FILES {
            assert_eq!(
                std::fs::metadata(file(&app, i)).unwrap().nlink(),
                1,
                "{point}: file {i} still shared"
            );
        }
    }
}

#[test]
fn a_file_written_while_the_restore_runs_is_noticed() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    change_two(&app);
    // Written after it was found equal and linked: the staged copy is the
    // live inode, so the write would slip into the restored tree.
    let victim = file(&app, 7);
    let out = run_paused(&env, "restore.after-stage", &restore_args(&id), |_| {
        let mut body = std::fs::read(&victim).unwrap();
        body[0] ^= 1;
        std::fs::write(&victim, body).unwrap();
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while the restore"), "{stderr}");
    // Refused before any step: the grown file is still grown.
    assert!(std::fs::read(file(&app, 3)).unwrap().ends_with(b"upgrade"));
}

#[test]
fn an_entry_put_where_staging_left_one_is_noticed() {
    // Found as the backup has it, a file (or a whole directory) is left
    // where it is. Something put in its place meanwhile has another
    // inode: taken for an entry only the live tree has, it would be
    // deleted, and the backup's, never staged, would not come back either.
    // (d3 holds a changed file, so it is staged and its own change time is
    // not what tells; the top never is.)
    type Race = fn(&Path) -> PathBuf;
    let cases: [(&str, Race); 2] = [
        ("a file renamed over one left in place", |app| {
            std::fs::write(app.join("d3/new"), b"the service's own").unwrap();
            std::fs::rename(app.join("d3/new"), file(app, 13)).unwrap();
            file(app, 13)
        }),
        ("a directory made again where one was left whole", |app| {
            std::fs::remove_dir_all(app.join("d5")).unwrap();
            std::fs::create_dir(app.join("d5")).unwrap();
            std::fs::write(app.join("d5/new"), b"the service's own").unwrap();
            app.join("d5/new")
        }),
    ];
    for (case, race) in cases {
        let env = Env::new();
        let (app, _reference, id) = backed_up(&env);
        change_two(&app);
        let mut put = PathBuf::new();
        let out = run_paused(&env, "restore.after-stage", &restore_args(&id), |_| {
            put = race(&app);
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(
            stderr.contains("changed while the restore"),
            "{case}: {stderr}"
        );
        // Refused before any step: what the race put there is there.
        assert_eq!(std::fs::read(&put).unwrap(), b"the service's own", "{case}");
        assert!(std::fs::read(file(&app, 3)).unwrap().ends_with(b"upgrade"));
    }
}

#[test]
fn an_entry_left_in_place_and_gone_meanwhile_is_noticed() {
    // Left where it is, a file (or a whole directory) is in no staged tree:
    // deleted or moved away meanwhile, the restored tree would lack it and
    // the restore would say it had put the backup back.
    type Race = fn(&Path);
    let cases: [(&str, Race); 3] = [
        ("a file deleted", |app| {
            std::fs::remove_file(file(app, 13)).unwrap();
        }),
        ("a file moved out of the tree", |app| {
            std::fs::rename(file(app, 23), app.with_file_name("f023")).unwrap();
        }),
        ("a directory left whole, deleted", |app| {
            std::fs::remove_dir_all(app.join("d5")).unwrap();
        }),
    ];
    for (case, race) in cases {
        let env = Env::new();
        let (app, _reference, id) = backed_up(&env);
        change_two(&app);
        let out = run_paused(&env, "restore.after-stage", &restore_args(&id), |_| {
            race(&app)
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains("went while it ran"), "{case}: {stderr}");
        // Refused before any step.
        assert!(
            std::fs::read(file(&app, 3)).unwrap().ends_with(b"upgrade"),
            "{case}"
        );
    }
}

#[test]
fn an_entry_replaced_while_the_steps_run_is_never_moved_aside_for_it() {
    // d3/f003 is to be moved aside and replaced. Another process saves a
    // new version of it (written, then renamed over it) once the steps have
    // begun: that version is not the entry the steps were decided on, and
    // must stay where it is, the restore rolled back.
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    change_two(&app);
    let out = run_paused(&env, "restore.apply-step", &restore_args(&id), |_| {
        std::fs::write(app.join("d3/new"), b"the service's own").unwrap();
        std::fs::rename(app.join("d3/new"), file(&app, 3)).unwrap();
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("changed while the restore"), "{stderr}");
    assert_eq!(std::fs::read(file(&app, 3)).unwrap(), b"the service's own");
}

#[test]
fn a_symlinks_own_owner_and_time_are_the_backups_after_an_exact_restore_in_place() {
    if !root("give a symlink another owner") {
        return;
    }
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    let link = app.join("d1/l");
    std::os::unix::fs::symlink("f001", &link).unwrap();
    let id2 = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    assert_ne!(id, id2);
    let before = std::fs::symlink_metadata(&link).unwrap();
    rustix::fs::chownat(
        CWD,
        &link,
        Some(rustix::process::Uid::from_raw(65534)),
        Some(rustix::process::Gid::from_raw(65534)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let old = Timespec {
        tv_sec: 978_307_200,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: old,
        last_modification: old,
    };
    rustix::fs::utimensat(CWD, &link, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    let out = env.std_cmd().args(restore_args(&id2)).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::symlink_metadata(&link).unwrap();
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
}

#[test]
fn files_named_like_a_staging_directory_are_restored_like_any_other() {
    // Only this restore's own staging directories are passed over by its
    // walks: a tree's own `.backstop-staging-*` files are the backup's.
    for deleted in [true, false] {
        let env = Env::new();
        let app = env.path("app");
        std::fs::create_dir_all(app.join("d")).unwrap();
        for (p, body) in [
            (".backstop-staging-notes", "i"),
            ("d/.backstop-staging-x", "k"),
            ("z", "z"),
            ("d/y", "y"),
            ("same", "s"),
        ] {
            std::fs::write(app.join(p), body).unwrap();
        }
        let reference = env.path("reference");
        copy_tree(&app, &reference);
        let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
        if deleted {
            std::fs::remove_file(app.join(".backstop-staging-notes")).unwrap();
            std::fs::remove_file(app.join("d/.backstop-staging-x")).unwrap();
        }
        std::fs::write(app.join("z"), "changed").unwrap();
        let out = env.std_cmd().args(restore_args(&id)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "deleted {deleted}: {stderr}");
        assert_same_tree(&reference, &app, compare());
    }
}

#[test]
fn a_live_file_written_before_its_equal_part_is_copied_is_noticed() {
    // A large file that differs only past its first megabyte: the staged
    // copy takes its equal first part from the live file. Written between
    // the comparison and that copy, the live file's bytes are no longer
    // the backup's, and must not slip into the restored tree.
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(&app).unwrap();
    let big = app.join("big.bin");
    let body: Vec<u8> = (0..3u32 << 20).map(|k| (k % 251) as u8).collect();
    std::fs::write(&big, &body).unwrap();
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    // Changed late in the file, size and time kept: compared, not skipped.
    let mtime = std::fs::metadata(&big).unwrap().modified().unwrap();
    let mut changed = body.clone();
    changed[(5 << 20) / 2] ^= 0xff;
    std::fs::write(&big, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let out = run_paused(
        &env,
        "restore.before-prefix-copy",
        &restore_args(&id),
        |_| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::options().write(true).open(&big).unwrap();
            f.write_all_at(b"written meanwhile", 10).unwrap();
        },
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while the restore"), "{stderr}");
    // Refused before any step: the live file is as the service left it.
    let now = std::fs::read(&big).unwrap();
    assert_eq!(&now[10..27], b"written meanwhile");
    assert_eq!(now[(5 << 20) / 2], changed[(5 << 20) / 2]);
}

#[test]
fn a_restore_into_an_empty_directory_links_nothing() {
    let env = Env::new();
    let (_app, reference, id) = backed_up(&env);
    let fresh = env.path("fresh");
    let doc = env.json(&["restore", &id, "--dest", fresh.to_str().unwrap(), "--yes"]);
    assert_eq!(doc["restore"]["linked_files"], 0, "{doc}");
    assert_same_tree(&reference, &fresh, compare());
}

/// More than two files' worth of difference: files added, deleted and
/// changed, a directory added, one's mode and another's time changed.
fn disturb(app: &Path) {
    change_two(app);
    std::fs::write(app.join("d1/added"), b"added").unwrap();
    std::fs::remove_file(file(app, 5)).unwrap();
    std::fs::create_dir_all(app.join("extra/sub")).unwrap();
    std::fs::write(app.join("extra/sub/x"), b"x").unwrap();
    std::fs::set_permissions(
        app.join("d2"),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    std::fs::File::open(app.join("d4"))
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
}

#[test]
fn an_exact_restore_in_place_moves_only_what_differs() {
    let env = Env::new();
    let (app, reference, id) = backed_up(&env);
    disturb(&app);
    let dirs: Vec<u64> = (0..10).map(|d| inode(&app.join(format!("d{d}")))).collect();
    let top = inode(&app);
    let doc = env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    assert_eq!(doc["restore"]["outcome"], "restored", "{doc}");
    // Every entry as backed up, directories' modes and times included.
    assert_same_tree(&reference, &app, compare());
    // The tree was not replaced: the same directories, still there.
    assert_eq!(inode(&app), top);
    for (d, ino) in dirs.iter().enumerate() {
        assert_eq!(inode(&app.join(format!("d{d}"))), *ino, "d{d} was replaced");
    }
    assert_eq!(doc["restore"]["linked_files"], (FILES - 3) as u64, "{doc}");
    let parent = app.parent().unwrap();
    assert!(
        std::fs::read_dir(parent).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".backstop-staging-")),
        "staging left beside app"
    );
}

#[test]
fn a_failure_at_any_step_in_place_puts_every_entry_and_time_back() {
    let mut failed = 0;
    for n in 1..=40 {
        for action in ["error", "abort"] {
            let env = Env::new();
            let (app, reference, id) = backed_up(&env);
            disturb(&app);
            let before = snapshot(&app, compare());
            let out = env
                .cmd()
                .env(
                    "BACKSTOP_FAILPOINTS",
                    format!("restore.apply-step={action}@{n}"),
                )
                .args(["restore", &id, "--yes", "--no-pre-backup"])
                .output()
                .unwrap();
            if out.status.success() {
                // Past the last step: the restore went through.
                assert_same_tree(&reference, &app, compare());
                assert!(failed >= 10, "only {failed} steps failed");
                return;
            }
            if action == "error" {
                assert_eq!(out.status.code(), Some(5), "step {n}: {out:?}");
            } else {
                env.cmd().args(["recover"]).assert().success();
            }
            assert_eq!(snapshot(&app, compare()), before, "{action} at step {n}");
            assert!(!env.home().join("journal/app.json").exists(), "step {n}");
            failed += 1;
        }
    }
    panic!("the restore never got past its 40th step");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// Extended attributes changed since the backup, and nothing else but one
/// file's content: on a directory that had one (changed), on a directory
/// and a file that had none (added). An ACL given to someone after the
/// backup is one of these.
fn disturb_xattrs(app: &Path) {
    change_two(app);
    set_xattr(&app.join("d1"), "user.note", b"changed");
    set_xattr(&app.join("d3"), "user.added", b"since");
    set_xattr(&file(app, 7), "user.added", b"since");
}

/// [`backed_up`], with attributes that stay as they are on a directory
/// (d9) and a file (f009), and one that changes on d1.
fn backed_up_with_xattrs(env: &Env) -> (PathBuf, PathBuf, String) {
    let app = env.path("app");
    for d in ["d1", "d9"] {
        std::fs::create_dir_all(app.join(d)).unwrap();
    }
    set_xattr(&app.join("d1"), "user.note", b"original");
    set_xattr(&app.join("d9"), "user.note", b"stays");
    std::fs::write(file(&app, 9), b"").unwrap();
    set_xattr(&file(&app, 9), "user.note", b"stays");
    backed_up(env)
}

/// An exact restore in place gives every entry exactly the backup's
/// extended attributes (security labels aside), directories that stay in
/// place too, and a failure at any of its steps puts back the ones there
/// were. A file whose attributes are still the backup's stays in place.
#[test]
fn extended_attributes_are_the_backups_after_an_exact_restore_in_place() {
    let probe = Env::new();
    if !supports_user_xattrs(probe.dir.path()) {
        skip("the test directory's filesystem takes no user. extended attributes");
        return;
    }
    let with_xattrs = Compare {
        xattrs: true,
        ..compare()
    };
    for n in 1..=40 {
        let env = Env::new();
        let (app, reference, id) = backed_up_with_xattrs(&env);
        assert_eq!(
            snapshot(&reference, with_xattrs),
            snapshot(&app, with_xattrs)
        );
        disturb_xattrs(&app);
        let kept = inode(&file(&app, 9));
        let before = snapshot(&app, with_xattrs);
        let out = env
            .cmd()
            .env(
                "BACKSTOP_FAILPOINTS",
                format!("restore.apply-step=error@{n}"),
            )
            .args(["restore", &id, "--yes", "--no-pre-backup"])
            .output()
            .unwrap();
        if out.status.success() {
            assert_same_tree(&reference, &app, with_xattrs);
            assert_eq!(inode(&file(&app, 9)), kept, "f009 was rewritten");
            assert!(n > 3, "only {} steps failed", n - 1);
            return;
        }
        assert_eq!(out.status.code(), Some(5), "step {n}: {out:?}");
        assert_eq!(snapshot(&app, with_xattrs), before, "error at step {n}");
    }
    panic!("the restore never got past its 40th step");
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Every entry of `app` with the attribute `name`.
fn entries_with(app: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![app.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p.clone());
            }
            if get_xattr(&p, name).is_some() {
                found.push(p);
            }
        }
    }
    found
}

/// A default ACL on the directory the tree sits in, set after the backup:
/// what a restore stages beside the tree must not inherit it, or the
/// restored entries come out with access neither the backup nor the live
/// tree gave.
#[test]
fn a_default_acl_above_the_tree_is_not_inherited_by_what_is_restored() {
    let env = Env::new();
    if !supports_acls(env.dir.path()) {
        skip("the test directory's filesystem takes no POSIX ACLs");
        return;
    }
    let (app, reference, id) = backed_up(&env);
    change_two(&app);
    std::fs::create_dir(app.join("d1/new")).unwrap();
    let parent = app.parent().unwrap();
    let default = posix_acl(7, &[(1, 7)], 5, 5);
    rustix::fs::lsetxattr(
        parent,
        "system.posix_acl_default",
        &default,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    assert_same_tree(&reference, &app, compare());
    let granted = entries_with(&app, "system.posix_acl_access");
    assert!(granted.is_empty(), "ACLs the backup had not: {granted:?}");
    let defaults = entries_with(&app, "system.posix_acl_default");
    assert!(
        defaults.is_empty(),
        "default ACLs the backup had not: {defaults:?}"
    );
}

/// A directory's default ACL is restored, but only once what is inside it
/// is: a file the backup holds without an ACL does not come out with one
/// inherited from it.
#[test]
fn a_restored_default_acl_is_not_inherited_by_the_restored_files() {
    let env = Env::new();
    if !supports_acls(env.dir.path()) {
        skip("the test directory's filesystem takes no POSIX ACLs");
        return;
    }
    let app = env.path("app");
    std::fs::create_dir_all(app.join("shared")).unwrap();
    std::fs::write(app.join("shared/plain"), b"no ACL").unwrap();
    let default = posix_acl(7, &[(1, 7)], 5, 5);
    set_xattr(&app.join("shared"), "system.posix_acl_default", &default);
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    let dest = env.path("dest");
    env.json(&[
        "restore",
        &id,
        "--dest",
        dest.to_str().unwrap(),
        "--yes",
        "--no-pre-backup",
    ]);
    assert_eq!(
        get_xattr(&dest.join("shared"), "system.posix_acl_default"),
        Some(default)
    );
    assert_eq!(
        get_xattr(&dest.join("shared/plain"), "system.posix_acl_access"),
        None
    );
}

/// File capabilities are the file's own, not a security label: given to a
/// file since the backup, they go; taken from one since, they come back.
#[test]
fn file_capabilities_are_the_backups_after_an_exact_restore_in_place() {
    if !root("set file capabilities") {
        return;
    }
    // cap_net_bind_service, permitted and effective (VFS_CAP_REVISION_2).
    let cap: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let env = Env::new();
    let (app, _reference, _) = backed_up(&env);
    set_xattr(&file(&app, 8), "security.capability", &cap);
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    // Neither changes the file's time.
    rustix::fs::lremovexattr(file(&app, 8), "security.capability").unwrap();
    set_xattr(&file(&app, 9), "security.capability", &cap);
    change_two(&app);
    env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    assert_eq!(
        get_xattr(&file(&app, 8), "security.capability").as_deref(),
        Some(&cap[..])
    );
    assert_eq!(get_xattr(&file(&app, 9), "security.capability"), None);
}

/// `trusted.*` attributes, which a backup made by an ordinary user cannot
/// see, are kept where the backup holds none: on a directory and a file
/// that stay in place, and on a directory whose other attributes change.
#[test]
fn trusted_attributes_the_backup_does_not_hold_are_kept() {
    if !root("set trusted. extended attributes") {
        return;
    }
    let env = Env::new();
    if !supports_user_xattrs(env.dir.path()) {
        skip("the test directory's filesystem takes no user. extended attributes");
        return;
    }
    let (app, reference, id) = backed_up(&env);
    change_two(&app);
    for p in [app.join("d5"), app.join("d1"), file(&app, 9)] {
        set_xattr(&p, "trusted.keep", b"overlay's");
    }
    set_xattr(&app.join("d1"), "user.note", b"since");
    let kept = inode(&file(&app, 9));
    env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    assert_same_tree(
        &reference,
        &app,
        Compare {
            xattrs: true,
            ..compare()
        },
    );
    for p in [app.join("d5"), app.join("d1"), file(&app, 9)] {
        assert_eq!(
            get_xattr(&p, "trusted.keep").as_deref(),
            Some(&b"overlay's"[..]),
            "{}",
            p.display()
        );
    }
    assert_eq!(inode(&file(&app, 9)), kept, "f009 was rewritten");
}

#[test]
fn a_directory_added_to_an_unchanged_one_meanwhile_is_noticed() {
    let env = Env::new();
    let (app, _reference, id) = backed_up(&env);
    change_two(&app);
    let intruder = app.join("d5/intruder");
    let out = run_paused(&env, "restore.after-stage", &restore_args(&id), |_| {
        std::fs::write(&intruder, b"written meanwhile").unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("d5 changed while the restore"), "{stderr}");
    assert!(intruder.exists());
    assert!(std::fs::read(file(&app, 3)).unwrap().ends_with(b"upgrade"));
}

#[test]
fn a_deleted_directory_keeps_what_is_kept_inside_it() {
    let env = Env::new();
    let (app, reference, id) = backed_up(&env);
    for p in ["new/keep/deep", "new/gone"] {
        std::fs::create_dir_all(app.join(p)).unwrap();
    }
    std::fs::write(app.join("new/keep/deep/x"), b"kept").unwrap();
    std::fs::write(app.join("new/junk"), b"junk").unwrap();
    std::fs::write(app.join("new/gone/y"), b"y").unwrap();
    let doc = env.json(&[
        "restore",
        &id,
        "--yes",
        "--no-pre-backup",
        "--exclude",
        "new/keep/",
    ]);
    assert_eq!(doc["restore"]["outcome"], "restored", "{doc}");
    assert_eq!(std::fs::read(app.join("new/keep/deep/x")).unwrap(), b"kept");
    assert!(!app.join("new/junk").exists() && !app.join("new/gone").exists());
    std::fs::remove_dir_all(app.join("new")).unwrap();
    assert_same_tree(&reference, &app, compare());
}

#[test]
fn a_hard_link_to_a_file_left_in_place_is_made_again() {
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("a")).unwrap();
    std::fs::write(app.join("a/first"), vec![7u8; 50_000]).unwrap();
    std::fs::hard_link(app.join("a/first"), app.join("a/second")).unwrap();
    std::fs::hard_link(app.join("a/first"), app.join("third")).unwrap();
    let reference = env.path("reference");
    copy_tree(&app, &reference);
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::fs::remove_file(app.join("a/second")).unwrap();
    std::fs::remove_file(app.join("third")).unwrap();
    env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    let first = inode(&app.join("a/first"));
    assert_eq!(inode(&app.join("a/second")), first);
    assert_eq!(inode(&app.join("third")), first);
    assert_same_tree(&reference, &app, compare());
}

#[test]
fn a_file_left_in_place_written_before_a_further_name_links_it_is_noticed() {
    // a/second comes back as a further name of a/first, left in place; the
    // writer links it later than staging found a/first as the backup has
    // it. A write in between must not pass for the backup's content.
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("a")).unwrap();
    std::fs::write(app.join("a/first"), vec![7u8; 50_000]).unwrap();
    std::fs::hard_link(app.join("a/first"), app.join("a/second")).unwrap();
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::fs::remove_file(app.join("a/second")).unwrap();
    let out = run_paused(&env, "restore.before-link", &restore_args(&id), |_| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .write(true)
            .open(app.join("a/first"))
            .unwrap();
        f.write_all_at(b"written meanwhile", 100).unwrap();
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while the restore"), "{stderr}");
    // Refused before any step: as the service left it, no second name.
    let now = std::fs::read(app.join("a/first")).unwrap();
    assert_eq!(&now[100..117], b"written meanwhile");
    assert!(!app.join("a/second").exists());
}

#[test]
fn a_merge_leaves_a_file_in_place_and_notices_a_write_before_a_further_name_links_it() {
    // A merge leaves a/first, as the backup has it, where it is, then
    // links it into the staged tree as a/second. A write to the live file
    // in between must not come back under the second name.
    let env = Env::new();
    let app = env.path("app");
    std::fs::create_dir_all(app.join("a")).unwrap();
    std::fs::write(app.join("a/first"), vec![7u8; 50_000]).unwrap();
    std::fs::hard_link(app.join("a/first"), app.join("a/second")).unwrap();
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    std::fs::remove_file(app.join("a/second")).unwrap();
    let mut args = restore_args(&id).to_vec();
    args.extend(["--mode", "merge"].map(std::ffi::OsStr::new));
    let out = run_paused(&env, "restore.before-link", &args, |_| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .write(true)
            .open(app.join("a/first"))
            .unwrap();
        f.write_all_at(b"written meanwhile", 100).unwrap();
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while the restore"), "{stderr}");
    assert!(!app.join("a/second").exists());
}

#[test]
fn a_directory_in_which_every_file_changed_moves_whole() {
    let env = Env::new();
    let (app, reference, id) = backed_up(&env);
    // Every file of d3 changed (as ransomware would leave it), one of d4.
    for i in (3..FILES).step_by(10) {
        std::fs::write(file(&app, i), b"encrypted").unwrap();
    }
    std::fs::write(file(&app, 4), b"encrypted").unwrap();
    let (d3, d4) = (inode(&app.join("d3")), inode(&app.join("d4")));
    let doc = env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    assert_eq!(doc["restore"]["outcome"], "restored", "{doc}");
    assert_same_tree(&reference, &app, compare());
    // d3 came in whole from staging; d4, where most files stayed, did not.
    assert_ne!(inode(&app.join("d3")), d3);
    assert_eq!(inode(&app.join("d4")), d4);
    // Everything changed: the staged tree takes the live one's place.
    for i in 0..FILES {
        std::fs::write(file(&app, i), b"encrypted").unwrap();
    }
    let top = inode(&app);
    let before = snapshot(&app, compare());
    env.cmd()
        .env("BACKSTOP_FAILPOINTS", "restore.apply-step=error@1")
        .args(["restore", &id, "--yes", "--no-pre-backup"])
        .assert()
        .code(5);
    assert_eq!(snapshot(&app, compare()), before);
    env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    assert_same_tree(&reference, &app, compare());
    assert_ne!(inode(&app), top);
}

/// `len` bytes no compressor shrinks (xorshift), so that they lie in the
/// archive as they are.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tree with large files: 40 MiB of noise (`big.bin`), 24 MiB more
/// (`sneaky.bin`), 20 MiB of log text and a small file; backed up whole,
/// with a reference copy. Returns (app, reference, backup id).
fn backed_up_large(env: &Env) -> (PathBuf, PathBuf, String) {
    let app = env.path("app");
    std::fs::create_dir_all(app.join("data")).unwrap();
    std::fs::write(app.join("data/big.bin"), noise(40 << 20, 7)).unwrap();
    std::fs::write(app.join("data/sneaky.bin"), noise(24 << 20, 11)).unwrap();
    let log: String = (0..650_000)
        .map(|i| format!("{i:08} GET /api/items/{} 200\n", i % 977))
        .collect();
    std::fs::write(app.join("data/service.log"), log).unwrap();
    std::fs::write(app.join("settings.toml"), "port = 8080\n").unwrap();
    let reference = env.path("reference");
    copy_tree(&app, &reference);
    let id = env.backup(&app, &[])["id"].as_str().unwrap().to_string();
    (app, reference, id)
}

/// Changes `file`'s byte at `at`, keeping its size and time.
fn flip_keeping_time(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
    let f = std::fs::File::options()
        .write(true)
        .read(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    f.set_modified(mtime).unwrap();
}

#[test]
fn large_files_in_place_are_checked_against_their_checksums_not_decoded() {
    let env = Env::new();
    let (app, reference, id) = backed_up_large(&env);
    std::fs::write(app.join("settings.toml"), "port = 9090\n").unwrap();
    // Same size and time, one byte different, past where the decoder can
    // have got to: hashing the live file tells, and it is restored.
    flip_keeping_time(&app.join("data/sneaky.bin"), 20 << 20);
    let kept = ["data/big.bin", "data/service.log"].map(|p| inode(&app.join(p)));
    let sneaky = inode(&app.join("data/sneaky.bin"));
    let doc = env.json(&["restore", &id, "--yes", "--no-pre-backup"]);
    let report = &doc["restore"];
    assert_eq!(report["outcome"], "restored", "{doc}");
    assert_same_tree(&reference, &app, compare());
    assert_eq!(
        kept,
        ["data/big.bin", "data/service.log"].map(|p| inode(&app.join(p)))
    );
    assert_ne!(
        inode(&app.join("data/sneaky.bin")),
        sneaky,
        "sneaky.bin is replaced"
    );
    // Most of big.bin's and the log's frames were never decoded: the
    // decoder runs at most some megabytes ahead of the comparison.
    let undecoded = report["undecoded_bytes"].as_u64().expect("undecoded_bytes");
    assert!(undecoded >= 24 << 20, "{report}");
    assert!(undecoded <= 60 << 20, "{report}");
    // A restore into an empty directory decodes everything.
    let elsewhere = env.path("elsewhere");
    let doc = env.json(&[
        "restore",
        &id,
        "--dest",
        elsewhere.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(doc["restore"]["undecoded_bytes"], 0, "{doc}");
    assert_same_tree(&reference, &elsewhere, compare());
}

#[test]
fn a_byte_changed_in_a_frame_passed_over_is_caught_by_the_archives_checksum() {
    let env = Env::new();
    let (app, _reference, id) = backed_up_large(&env);
    std::fs::write(app.join("settings.toml"), "port = 9090\n").unwrap();
    let before = snapshot(&app, compare());
    let archive = PathBuf::from(
        env.list().iter().find(|r| r["id"] == id.as_str()).unwrap()["location"]
            .as_str()
            .unwrap(),
    );
    // big.bin's bytes lie in the archive as they are (stored frames): flip
    // one 32 MiB into the file, in a frame the restore passes over.
    let bytes = std::fs::read(&archive).unwrap();
    let big = std::fs::read(app.join("data/big.bin")).unwrap();
    let window = &big[32 << 20..(32 << 20) + 64];
    let at = bytes
        .windows(64)
        .position(|w| w == window)
        .expect("big.bin's bytes are stored as they are");
    drop(bytes);
    crate::support::flip_byte(&archive, at as u64 + 10);
    env.cmd()
        .args(["restore", &id, "--yes", "--no-pre-backup"])
        .assert()
        .code(4)
        .stderr(predicates::str::contains("SHA-256"));
    assert_eq!(snapshot(&app, compare()), before, "the tree is untouched");
}

#[test]
fn a_large_file_written_after_it_was_vouched_for_is_noticed() {
    // Vouched for once its live copy hashed to the checksum, big.bin's
    // frames are passed over, not compared: a write into it after that
    // must still stop the restore (its change time moved).
    let env = Env::new();
    let (app, _reference, id) = backed_up_large(&env);
    std::fs::write(app.join("settings.toml"), "port = 9090\n").unwrap();
    let big = app.join("data/big.bin");
    let out = run_paused(&env, "restore.after-vouch", &restore_args(&id), |_| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options().write(true).open(&big).unwrap();
        f.write_all_at(b"written meanwhile", 30 << 20).unwrap();
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while the restore"), "{stderr}");
    let f = std::fs::File::open(&big).unwrap();
    let mut got = [0u8; 17];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 30 << 20).unwrap();
    assert_eq!(&got, b"written meanwhile", "the write is kept");
    assert_eq!(
        std::fs::read_to_string(app.join("settings.toml")).unwrap(),
        "port = 9090\n",
        "refused before any step"
    );
}

#[test]
fn a_merge_restore_links_large_files_in_place_without_decoding_them() {
    // Merge mode stages a whole tree and links the live files found as
    // the backup has them into it: large ones are vouched for and their
    // frames passed over there too, and what is only in the live tree
    // stays.
    let env = Env::new();
    let (app, reference, id) = backed_up_large(&env);
    std::fs::remove_file(app.join("settings.toml")).unwrap();
    std::fs::write(app.join("notes.txt"), "mine\n").unwrap();
    let doc = env.json(&[
        "restore",
        &id,
        "--mode",
        "merge",
        "--yes",
        "--no-pre-backup",
    ]);
    let report = &doc["restore"];
    assert_eq!(report["outcome"], "restored", "{doc}");
    assert!(
        report["undecoded_bytes"].as_u64().unwrap() >= 24 << 20,
        "{report}"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("notes.txt")).unwrap(),
        "mine\n"
    );
    std::fs::remove_file(app.join("notes.txt")).unwrap();
    assert_same_tree(&reference, &app, compare());
}
