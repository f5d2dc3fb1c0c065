//! `backstop_core::podman` against real podman: volume export and exact
//! restore, containers found by the volumes they mount, stop and start.
//! Each test creates its own uniquely named volumes and containers, which
//! the support types remove when dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backstop_core::Error;
use backstop_core::podman::Podman;
use backstop_test_support::podman::{
    Container, Volume, available, containers_available, containers_conf,
};

/// Every path under `dir` (relative) with its content (`None` for a
/// directory, the target for a symlink).
fn contents(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.expect("walk the volume");
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("beneath")
            .to_path_buf();
        let kind = entry.file_type();
        let content = if kind.is_dir() {
            None
        } else if kind.is_symlink() {
            Some(
                std::fs::read_link(entry.path())
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            Some(std::fs::read(entry.path()).expect("read"))
        };
        out.insert(rel, content);
    }
    out
}

/// Podman as the library runs it, with the settings containers need here.
fn podman_for_containers() -> Podman {
    Podman {
        env: vec![(
            "CONTAINERS_CONF".into(),
            containers_conf().to_string_lossy().into_owned(),
        )],
        ..Podman::default()
    }
}

#[test]
fn a_restored_volume_holds_exactly_the_export() {
    if !available() {
        return;
    }
    let podman = Podman::default();
    let volume = Volume::create("exact");
    let mount = volume.mountpoint();
    std::fs::create_dir_all(mount.join("sub/deeper")).unwrap();
    std::fs::write(mount.join("a.txt"), b"alpha").unwrap();
    std::fs::write(mount.join("sub/b.txt"), b"bravo").unwrap();
    std::fs::write(mount.join("sub/deeper/c.bin"), [0u8, 1, 2, 255]).unwrap();
    std::os::unix::fs::symlink("a.txt", mount.join("link")).unwrap();
    let before = contents(&mount);

    assert!(podman.volume_exists(&volume.name).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("export.tar");
    podman
        .volume_export(&volume.name, File::create(&tar).unwrap())
        .unwrap();

    // Change the volume: new files and directories, one file changed, one
    // removed, and a symlink pointing out of the volume.
    std::fs::write(mount.join("a.txt"), b"changed").unwrap();
    std::fs::write(mount.join("extra.txt"), b"extra").unwrap();
    std::fs::create_dir_all(mount.join("newdir/inner")).unwrap();
    std::fs::write(mount.join("newdir/inner/x"), b"x").unwrap();
    std::fs::remove_file(mount.join("sub/b.txt")).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    std::os::unix::fs::symlink(&outside, mount.join("escape")).unwrap();
    assert_ne!(contents(&mount), before);

    let created = podman.volume_restore(&volume.name, &tar).unwrap();
    assert!(!created);
    assert_eq!(contents(&mount), before);
    assert!(
        outside.join("keep").exists(),
        "clearing followed a symlink out of the volume"
    );
}

#[test]
fn restoring_into_a_missing_volume_creates_it() {
    if !available() {
        return;
    }
    let podman = Podman::default();
    let source = Volume::create("src");
    std::fs::write(source.mountpoint().join("f"), b"from the source").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("export.tar");
    podman
        .volume_export(&source.name, File::create(&tar).unwrap())
        .unwrap();

    let target = Volume::absent("new");
    assert!(!podman.volume_exists(&target.name).unwrap());
    assert!(podman.volume_restore(&target.name, &tar).unwrap());
    assert!(target.exists());
    assert_eq!(
        contents(&target.mountpoint()),
        contents(&source.mountpoint())
    );
}

#[test]
fn an_empty_export_empties_the_volume() {
    if !available() {
        return;
    }
    let podman = Podman::default();
    let empty = Volume::create("empty");
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("empty.tar");
    podman
        .volume_export(&empty.name, File::create(&tar).unwrap())
        .unwrap();
    let full = Volume::create("full");
    std::fs::create_dir(full.mountpoint().join("d")).unwrap();
    std::fs::write(full.mountpoint().join("d/f"), b"f").unwrap();
    assert!(!podman.volume_restore(&full.name, &tar).unwrap());
    assert!(contents(&full.mountpoint()).is_empty());
    assert!(full.mountpoint().is_dir());
}

#[test]
fn containers_are_found_by_the_volumes_they_mount_and_stopped_and_started() {
    if !containers_available() {
        return;
    }
    let podman = podman_for_containers();
    let volume = Volume::create("used");
    let other = Volume::create("other");
    let container = Container::run("user", Some(&volume.name));
    let _bystander = Container::run("bystander", Some(&other.name));

    assert_eq!(
        podman.containers_using(&volume.name).unwrap(),
        [container.name.as_str()]
    );
    let unused = Volume::create("unused");
    assert!(podman.containers_using(&unused.name).unwrap().is_empty());

    assert!(podman.container_exists(&container.name).unwrap());
    assert!(!podman.container_exists("bstest-no-such-container").unwrap());
    assert!(podman.container_running(&container.name).unwrap());

    podman
        .container_stop(&container.name, Duration::from_secs(1))
        .unwrap();
    assert!(!podman.container_running(&container.name).unwrap());
    assert!(!container.running());
    // A stopped container is still found by its volume.
    assert_eq!(
        podman.containers_using(&volume.name).unwrap(),
        [container.name.as_str()]
    );
    // Stopping twice is fine.
    podman
        .container_stop(&container.name, Duration::from_secs(1))
        .unwrap();

    podman.container_start(&container.name).unwrap();
    assert!(podman.container_running(&container.name).unwrap());
    assert!(container.running());

    let err = podman
        .container_running("bstest-no-such-container")
        .unwrap_err();
    assert!(
        err.to_string().contains("bstest-no-such-container"),
        "{err}"
    );
}

#[test]
fn a_bad_name_is_refused_before_podman_runs() {
    // No podman is needed: the program does not even exist.
    let podman = Podman {
        program: PathBuf::from("/no/such/podman"),
        env: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("x.tar");
    std::fs::write(&tar, [0u8; 1024]).unwrap();
    for bad in ["--all", "-f", "", "a b", "../x", "a/b"] {
        let checks = [
            podman.volume_exists(bad).map(drop),
            podman.volume_create(bad),
            podman.volume_restore(bad, &tar).map(drop),
            podman.containers_using(bad).map(drop),
            podman.container_exists(bad).map(drop),
            podman.container_running(bad).map(drop),
            podman.container_stop(bad, Duration::from_secs(1)),
            podman.container_start(bad),
            podman.volume_export(bad, File::create(dir.path().join("out")).unwrap()),
        ];
        for result in checks {
            let err = result.unwrap_err();
            assert!(matches!(err, Error::Usage { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("is not a valid"), "{err}");
        }
    }
}

#[test]
fn importing_a_non_tar_fails_naming_the_volume() {
    if !available() {
        return;
    }
    let podman = Podman::default();
    let volume = Volume::create("nontar");
    std::fs::write(volume.mountpoint().join("precious"), b"keep me").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"this is not a tar archive at all\n").unwrap();

    let err = podman.volume_restore(&volume.name, &text).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Command { .. }), "{msg}");
    assert!(msg.contains(&volume.name), "{msg}");
    assert!(msg.contains("not a tar archive"), "{msg}");
    // Refused before anything changed.
    assert_eq!(
        std::fs::read(volume.mountpoint().join("precious")).unwrap(),
        b"keep me"
    );

    let missing = Volume::absent("never");
    let err = podman
        .volume_restore(&missing.name, &dir.path().join("no-such.tar"))
        .unwrap_err();
    assert!(err.to_string().contains("no-such.tar"), "{err}");
    assert!(!missing.exists(), "a failed restore created the volume");
}

#[test]
fn a_failed_import_quotes_podman() {
    if !available() {
        return;
    }
    let podman = Podman::default();
    let volume = Volume::create("truncated");
    // A tar whose first header is sound but whose file data stops short:
    // podman itself finds the fault.
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.tar");
    let mut builder = tar::Builder::new(File::create(&full).unwrap());
    let data = vec![7u8; 100_000];
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "big", &data[..]).unwrap();
    builder.into_inner().unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..5000]).unwrap();

    let err = podman.volume_restore(&volume.name, &truncated).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("podman volume import of {} failed", volume.name)),
        "{msg}"
    );
    assert!(msg.contains("exit status"), "{msg}");
}

#[test]
fn a_missing_volume_is_not_there() {
    if !available() {
        return;
    }
    let podman = Podman::default();
    let volume = Volume::absent("missing");
    assert!(!podman.volume_exists(&volume.name).unwrap());
    podman.volume_create(&volume.name).unwrap();
    assert!(podman.volume_exists(&volume.name).unwrap());
    assert!(volume.exists());
    let err = podman.volume_create(&volume.name).unwrap_err();
    assert!(err.to_string().contains(&volume.name), "{err}");
}
