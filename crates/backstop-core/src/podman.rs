//! Podman volumes and containers, driven through the `podman` command.
//!
//! Every call goes through [`crate::command::Run`], so a failure quotes
//! podman's own error output. Names are checked with [`check_name`] before
//! they reach a command line, so nothing a config says can pass as an
//! option.
//!
//! Restoring a volume never removes it (`podman volume rm --force` would
//! delete the containers that use it too): the volume is emptied in place
//! and the archive imported into it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::archive::format::VolumeSettings;
use crate::command::{CommandEnv, CommandLine, Run};
use crate::error::{Error, IoContext, Result};

/// How long past a stop's own timeout podman may take before it is killed:
/// podman waits `timeout` and then sends SIGKILL, which needs a moment too.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// How backstop calls podman.
#[derive(Debug, Clone)]
pub struct Podman {
    /// The program, `podman` by default.
    pub program: PathBuf,
    /// Extra environment for podman (tests pass `CONTAINERS_CONF` here).
    pub env: Vec<(String, String)>,
}

impl Default for Podman {
    fn default() -> Self {
        Podman {
            program: PathBuf::from("podman"),
            env: Vec::new(),
        }
    }
}

/// What `podman volume inspect` says about a volume, as far as a restore
/// needs it.
#[derive(Debug, Deserialize)]
struct VolumeInfo {
    #[serde(rename = "Driver", default)]
    driver: String,
    #[serde(rename = "Mountpoint", default)]
    mountpoint: String,
    #[serde(rename = "Options", default)]
    options: Option<std::collections::BTreeMap<String, String>>,
    #[serde(rename = "Labels", default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

impl Podman {
    /// Whether a volume named `name` exists.
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid volume name or podman fails.
    pub fn volume_exists(&self, name: &str) -> Result<bool> {
        checked("volume", name)?;
        // `podman volume exists` answers "no" and "podman is broken" with
        // the same kind of non-zero exit; a listing tells them apart.
        let out = self.output(
            &format!("podman volume ls (looking for volume {name})"),
            &["volume", "ls", "--format", "{{.Name}}"],
        )?;
        Ok(out.lines().any(|l| l.trim() == name))
    }

    /// Creates the volume `name` with the default (`local`) driver.
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid volume name, or podman fails (for
    /// one, when the volume exists already).
    pub fn volume_create(&self, name: &str) -> Result<()> {
        self.volume_create_with(name, &VolumeSettings::default())
    }

    /// Creates the volume `name` with the labels and options of `settings`
    /// (`--label K=V`, `--opt K=V`).
    ///
    /// # Errors
    ///
    /// As [`Podman::volume_create`]; also, before anything runs, when a
    /// label or option has an empty name or one with `=`, or an option
    /// makes the volume a mount of a device (`device`, `type`), which a
    /// restore does not fill.
    pub fn volume_create_with(&self, name: &str, settings: &VolumeSettings) -> Result<()> {
        checked("volume", name)?;
        let what = format!("podman volume create of {name}");
        let mut args = vec!["volume".to_string(), "create".to_string()];
        for (flag, map) in [("--label", &settings.labels), ("--opt", &settings.options)] {
            for (k, v) in map {
                check_setting(&what, flag, k)?;
                args.push(flag.to_string());
                args.push(format!("{k}={v}"));
            }
        }
        args.push(name.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.output(&what, &args)?;
        Ok(())
    }

    /// The labels and driver options of the volume `name`.
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid volume name, or podman fails or
    /// describes no volume.
    pub fn volume_settings(&self, name: &str) -> Result<VolumeSettings> {
        checked("volume", name)?;
        let info = self.volume_info(name)?;
        Ok(VolumeSettings {
            labels: info.labels.unwrap_or_default(),
            options: info.options.unwrap_or_default(),
        })
    }

    /// `podman volume export NAME` into `out` (a tar of the volume's
    /// contents).
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid volume name or the export fails;
    /// what was written to `out` is then incomplete.
    pub fn volume_export(&self, name: &str, out: File) -> Result<()> {
        checked("volume", name)?;
        let env = self.command_env();
        let what = format!("podman volume export of {name}");
        Run::new(&what, &env).to_file(&self.line(&["volume", "export", name]), out)
    }

    /// Makes the volume's contents exactly the tar at `tar`: creates the
    /// volume if it is missing, clears what is inside it (never `podman
    /// volume rm`, which with `--force` deletes containers), then `podman
    /// volume import NAME TAR` (which merges, hence the clearing). Returns
    /// whether the volume was created.
    ///
    /// The containers using the volume should be stopped first: a running
    /// one would see the volume empty, then filling up.
    ///
    /// # Errors
    ///
    /// Fails before changing anything when `name` is invalid, `tar` cannot
    /// be read or does not start like a tar archive, or the volume uses
    /// another driver than `local` or is mounted from a device. Fails
    /// after clearing the volume when the import fails (the volume then
    /// holds part of the archive).
    pub fn volume_restore(&self, name: &str, tar: &Path) -> Result<bool> {
        self.volume_restore_with(name, tar, &VolumeSettings::default())
    }

    /// [`Podman::volume_restore`], creating a missing volume with
    /// `settings` (its labels and options at backup time).
    ///
    /// # Errors
    ///
    /// As [`Podman::volume_restore`] and [`Podman::volume_create_with`].
    pub fn volume_restore_with(
        &self,
        name: &str,
        tar: &Path,
        settings: &VolumeSettings,
    ) -> Result<bool> {
        checked("volume", name)?;
        let what = format!("podman volume import of {name}");
        let file = open_tar(&what, tar)?;
        let created = if self.volume_exists(name)? {
            false
        } else {
            self.volume_create_with(name, settings)?;
            true
        };
        let mountpoint = self.local_mountpoint(name)?;
        self.clear(name, &mountpoint)?;
        // The tar goes in on standard input (`-`), so its path need not be
        // UTF-8 and cannot be taken for an option.
        let env = self.command_env();
        Run::new(&what, &env).from_file(&self.line(&["volume", "import", name, "-"]), file)?;
        Ok(created)
    }

    /// Names of the containers (running or not) that mount the volume:
    /// `podman ps -a --filter volume=NAME`. Sorted.
    ///
    /// # Errors
    ///
    /// Fails when `volume` is not a valid volume name or podman fails.
    pub fn containers_using(&self, volume: &str) -> Result<Vec<String>> {
        checked("volume", volume)?;
        let filter = format!("volume={volume}");
        let out = self.output(
            &format!("podman ps (looking for containers using volume {volume})"),
            &["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
        )?;
        let mut names: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Whether a container named `name` exists (running or not).
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid container name or podman fails.
    pub fn container_exists(&self, name: &str) -> Result<bool> {
        checked("container", name)?;
        let out = self.output(
            &format!("podman ps (looking for container {name})"),
            &["ps", "-a", "--format", "{{.Names}}"],
        )?;
        Ok(out.lines().any(|l| l.trim() == name))
    }

    /// Whether the container `name` is running.
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid container name, the container
    /// does not exist, or podman fails.
    pub fn container_running(&self, name: &str) -> Result<bool> {
        checked("container", name)?;
        let what = format!("podman container inspect of {name}");
        let out = self.output(
            &what,
            &[
                "container",
                "inspect",
                "--format",
                "{{.State.Running}}",
                name,
            ],
        )?;
        match out.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(Error::Command {
                what,
                detail: format!("podman answered `{other}` where it should say true or false"),
                hint: None,
            }),
        }
    }

    /// Stops the container `name`: `podman stop --time SECS`, which kills
    /// it when it has not stopped after `timeout`. Stopping a stopped
    /// container succeeds.
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid container name, the container
    /// does not exist, or podman fails or hangs well past `timeout`.
    pub fn container_stop(&self, name: &str, timeout: Duration) -> Result<()> {
        checked("container", name)?;
        // podman takes whole seconds; round up so the container gets at
        // least the time it was promised.
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let secs = secs.to_string();
        let env = self.command_env();
        let what = format!("podman stop of container {name}");
        let mut run = Run::new(&what, &env);
        run.timeout = Some(timeout.saturating_add(STOP_GRACE));
        run.output(&self.line(&["stop", "--time", &secs, name]))?;
        Ok(())
    }

    /// Starts the container `name`. Starting a running container
    /// succeeds.
    ///
    /// # Errors
    ///
    /// Fails when `name` is not a valid container name, the container
    /// does not exist or cannot start.
    pub fn container_start(&self, name: &str) -> Result<()> {
        checked("container", name)?;
        self.output(
            &format!("podman start of container {name}"),
            &["start", name],
        )?;
        Ok(())
    }

    /// The mountpoint of the `local` volume `name`, refusing volumes whose
    /// contents podman does not keep in that directory.
    fn local_mountpoint(&self, name: &str) -> Result<PathBuf> {
        let what = format!("podman volume inspect of {name}");
        let info = self.volume_info(name)?;
        let restore = format!("the restore of volume {name}");
        if !info.driver.is_empty() && info.driver != "local" {
            return Err(Error::Command {
                what: restore,
                detail: format!(
                    "it uses the volume driver `{}`; backstop restores only `local` volumes",
                    info.driver
                ),
                hint: Some(format!(
                    "restore its contents with the tools of the `{}` driver, or recreate it \
                     as a local volume (`podman volume create {name}`)",
                    info.driver
                )),
            });
        }
        let options = info.options.unwrap_or_default();
        if let Some(device) = options.get("device").or_else(|| options.get("type")) {
            // Such a volume is a mount of `device`, made only while a
            // container uses it: its directory is not where its data is.
            return Err(Error::Command {
                what: restore,
                detail: format!(
                    "it is mounted from `{device}` by podman; backstop restores only plain \
                     local volumes"
                ),
                hint: Some(format!(
                    "back up and restore `{device}` itself instead of volume {name}"
                )),
            });
        }
        let mountpoint = PathBuf::from(info.mountpoint);
        if !mountpoint.is_absolute() {
            return Err(Error::Command {
                what,
                detail: format!(
                    "podman gave `{}` as its mountpoint, not an absolute path",
                    mountpoint.display()
                ),
                hint: None,
            });
        }
        let meta = std::fs::symlink_metadata(&mountpoint).at("inspect", &mountpoint)?;
        if !meta.is_dir() {
            return Err(Error::Command {
                what: restore,
                detail: format!("its mountpoint {} is not a directory", mountpoint.display()),
                hint: None,
            });
        }
        Ok(mountpoint)
    }

    /// What `podman volume inspect` says about the volume `name`.
    fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let what = format!("podman volume inspect of {name}");
        let out = self.output(&what, &["volume", "inspect", name])?;
        let parsed: Vec<VolumeInfo> = serde_json::from_str(&out).map_err(|e| Error::Command {
            what: what.clone(),
            detail: format!("its output is not the JSON expected: {e}"),
            hint: None,
        })?;
        parsed.into_iter().next().ok_or_else(|| Error::Command {
            what,
            detail: "podman described no volume".into(),
            hint: None,
        })
    }

    /// Removes everything inside the volume's directory, keeping the
    /// directory itself (its mode and owner).
    fn clear(&self, name: &str, mountpoint: &Path) -> Result<()> {
        if rustix::process::geteuid().is_root() {
            return clear_dir(mountpoint);
        }
        // A rootless volume's files belong to sub-uids the user cannot
        // remove directly; inside podman's user namespace they are the
        // user's. `find` does not follow symlinks, nor does `rm -rf`.
        let dir = mountpoint.to_string_lossy();
        self.output(
            &format!("the clearing of volume {name}"),
            &[
                "unshare",
                "find",
                &dir,
                "-mindepth",
                "1",
                "-maxdepth",
                "1",
                "-exec",
                "rm",
                "-rf",
                "--",
                "{}",
                "+",
            ],
        )?;
        Ok(())
    }

    /// Runs podman with `args` and returns its standard output.
    fn output(&self, what: &str, args: &[&str]) -> Result<String> {
        let env = self.command_env();
        Run::new(what, &env).output(&self.line(args))
    }

    fn line(&self, args: &[&str]) -> CommandLine {
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(self.program.to_string_lossy().into_owned());
        argv.extend(args.iter().map(|a| (*a).to_string()));
        CommandLine::Argv(argv)
    }

    fn command_env(&self) -> CommandEnv {
        let mut env = CommandEnv::default();
        for (k, v) in &self.env {
            env.set(k, v);
        }
        env
    }
}

/// Refuses a label or option name (from an archive's manifest) that
/// podman would read differently, and options that make a volume a mount
/// of a device: a restore fills only plain local volumes.
fn check_setting(what: &str, flag: &str, key: &str) -> Result<()> {
    let device = flag == "--opt" && ["device", "type"].contains(&key.to_ascii_lowercase().as_str());
    if key.is_empty() || key.contains('=') || device {
        return Err(Error::Command {
            what: what.to_string(),
            detail: format!(
                "the recorded {flag} `{}` cannot be given to a volume backstop fills",
                key.escape_debug()
            ),
            hint: Some(
                "create the volume by hand (`podman volume create …`), then restore again".into(),
            ),
        });
    }
    Ok(())
}

/// Checks a volume or container name before it goes on a command line:
/// podman's own rule `[a-zA-Z0-9][a-zA-Z0-9_.-]*` (so nothing can pass as
/// an option). `what` says which kind of name it is ("volume").
///
/// # Errors
///
/// Returns the message to show when the name breaks the rule.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid {what} name: podman names start with a letter or digit \
             and hold only letters, digits, `_`, `.` and `-`"
        ))
    }
}

/// [`check_name`] as a usage error.
fn checked(what: &str, name: &str) -> Result<()> {
    check_name(what, name).map_err(|message| Error::usage(message, None))
}

/// Opens the tar to import, refusing before the volume is touched a file
/// that cannot be read or does not start like an archive `podman volume
/// import` takes (a tar, possibly compressed, or nothing at all). podman's
/// own message for a non-tar is a bare "unexpected EOF", after the volume
/// was cleared. The file is returned at its start.
fn open_tar(what: &str, tar: &Path) -> Result<File> {
    let mut file = File::open(tar).at("open", tar)?;
    let mut block = [0u8; 512];
    let mut len = 0;
    while len < block.len() {
        let n = file.read(&mut block[len..]).at("read", tar)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = &block[..len];
    let compressed: [&[u8]; 4] = [b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ\x00"];
    let ok = head.is_empty()
        || (len == block.len() && (head.iter().all(|&b| b == 0) || tar_checksum_ok(&block)))
        || compressed.iter().any(|m| head.starts_with(m));
    if ok {
        file.seek(SeekFrom::Start(0)).at("read", tar)?;
        Ok(file)
    } else {
        Err(Error::Command {
            what: what.to_string(),
            detail: format!("{} is not a tar archive", tar.display()),
            hint: Some("give the tar a `podman volume export` wrote".into()),
        })
    }
}

/// Whether a 512-byte block is a tar header with a correct checksum.
fn tar_checksum_ok(block: &[u8; 512]) -> bool {
    let field = String::from_utf8_lossy(&block[148..156]);
    let Ok(stored) = i64::from_str_radix(field.trim_matches([' ', '\0']), 8) else {
        return false;
    };
    // The checksum counts its own field as spaces; old writers summed
    // signed bytes.
    let in_field = |i: usize| (148..156).contains(&i);
    let unsigned: i64 = (0..512)
        .map(|i| if in_field(i) { 32 } else { i64::from(block[i]) })
        .sum();
    let signed: i64 = (0..512)
        .map(|i| {
            if in_field(i) {
                32
            } else {
                i64::from(block[i] as i8)
            }
        })
        .sum();
    stored == unsigned || stored == signed
}

/// Removes the children of `dir` without following symlinks: directories
/// with `remove_dir_all` (which removes a symlink, not its target), all else
/// with `remove_file`.
fn clear_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).at("read", dir)? {
        let entry = entry.at("read", dir)?;
        let path = entry.path();
        let kind = entry.file_type().at("inspect", &path)?;
        if kind.is_dir() {
            std::fs::remove_dir_all(&path).at("remove", &path)?;
        } else {
            std::fs::remove_file(&path).at("remove", &path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_podmans_rule() {
        for good in ["gitea-data", "a", "0x", "a.b_c-d", "systemd-app"] {
            assert!(check_name("volume", good).is_ok(), "{good}");
        }
        for bad in [
            "", "-rf", "--all", ".x", "_x", "a b", "a/b", "a:b", "é", "a\n",
        ] {
            let err = check_name("volume", bad).unwrap_err();
            assert!(err.contains("not a valid volume name"), "{err}");
        }
    }

    #[test]
    fn a_bad_name_is_refused_before_podman_runs() {
        let podman = Podman {
            program: PathBuf::from("/no/such/podman"),
            env: Vec::new(),
        };
        let err = podman.volume_exists("-x").unwrap_err();
        assert!(matches!(err, Error::Usage { .. }), "{err}");
        let err = podman.container_start("a b").unwrap_err();
        assert!(
            err.to_string().contains("not a valid container name"),
            "{err}"
        );
    }

    #[test]
    fn only_tar_like_files_are_imported() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(open_tar("import", &empty).is_ok());
        let end = dir.path().join("end");
        std::fs::write(&end, [0u8; 1024]).unwrap();
        assert!(open_tar("import", &end).is_ok());
        let text = dir.path().join("text");
        std::fs::write(&text, b"hello\n").unwrap();
        let err = open_tar("the import of v", &text).unwrap_err();
        assert!(err.to_string().contains("not a tar archive"), "{err}");

        let tar = dir.path().join("a.tar");
        let mut builder = tar::Builder::new(File::create(&tar).unwrap());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, "f", &b"hi"[..]).unwrap();
        builder.finish().unwrap();
        drop(builder);
        assert!(open_tar("import", &tar).is_ok());
    }

    #[test]
    fn clearing_keeps_the_directory_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("sub/deeper")).unwrap();
        std::fs::write(vol.join("sub/deeper/f"), b"f").unwrap();
        std::fs::write(vol.join("top"), b"t").unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("sub/link")).unwrap();
        clear_dir(&vol).unwrap();
        assert!(vol.is_dir());
        assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn recorded_settings_that_would_mislead_podman_are_refused() {
        let ok = |flag: &str, key: &str| check_setting("create", flag, key).is_ok();
        assert!(ok("--label", "app"));
        assert!(ok("--opt", "o"));
        assert!(ok("--opt", "UID"));
        assert!(ok("--label", "device"), "a label may be called anything");
        for key in ["device", "Type", ""] {
            assert!(!ok("--opt", key), "{key}");
        }
        assert!(!ok("--label", "a=b"));
    }
}
