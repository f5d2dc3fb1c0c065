//! Real podman for tests: unique volume names removed on drop, and a local
//! busybox image (there is no registry to pull from) with the runtime
//! settings containers need on this kind of machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The image tests run containers from, built from Debian's busybox-static.
pub const IMAGE: &str = "localhost/backstop-test-busybox:2";

/// Whether podman is installed and answers; if not, reports a skip. Asked
/// once a process, a few times: a `volume ls` can fail while other tests
/// remove the volumes it is listing.
pub fn available() -> bool {
    if !crate::have("podman") {
        return false;
    }
    static ANSWERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ANSWERS.get_or_init(|| {
        (0..5).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Command::new("podman")
                .args(["volume", "ls", "-q"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    });
    if !ok {
        crate::skip("`podman volume ls` fails on this machine");
    }
    ok
}

/// A name no other test uses: `bstest-<pid>-<n>-<what>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bstest-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs podman with `args` and returns its stdout; panics on failure.
pub fn podman(conf: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = Command::new("podman");
    if let Some(conf) = conf {
        cmd.env("CONTAINERS_CONF", conf);
    }
    let out = cmd.args(args).output().expect("podman runs");
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A podman volume that is removed (with any test container using it) when
/// dropped.
pub struct Volume {
    pub name: String,
}

impl Volume {
    /// Creates a volume with a unique name.
    pub fn create(what: &str) -> Volume {
        let name = unique(what);
        podman(None, &["volume", "create", &name]);
        Volume { name }
    }

    /// A unique name for a volume that does not exist yet (removed on drop
    /// if something creates it).
    pub fn absent(what: &str) -> Volume {
        Volume { name: unique(what) }
    }

    /// The volume's directory on the host.
    pub fn mountpoint(&self) -> PathBuf {
        PathBuf::from(
            podman(
                None,
                &[
                    "volume",
                    "inspect",
                    "--format",
                    "{{.Mountpoint}}",
                    &self.name,
                ],
            )
            .trim(),
        )
    }

    /// Whether the volume exists.
    pub fn exists(&self) -> bool {
        Command::new("podman")
            .args(["volume", "exists", &self.name])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["volume", "rm", "--force", &self.name])
            .output();
    }
}

/// Settings under which containers run here (runc; no ulimits), written
/// once into the system temp directory. Pass it as `CONTAINERS_CONF` to the
/// processes that run containers.
pub fn containers_conf() -> PathBuf {
    let path = std::env::temp_dir().join("backstop-test-containers.conf");
    if !path.exists() {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(
            &tmp,
            "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n",
        )
        .expect("write containers.conf");
        std::fs::rename(&tmp, &path).expect("install containers.conf");
    }
    path
}

/// Whether containers can run here; builds [`IMAGE`] if needed. Reports a
/// skip when they cannot.
pub fn containers_available() -> bool {
    if !available() {
        return false;
    }
    let conf = containers_conf();
    let exists = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            crate::skip("/bin/busybox (Debian busybox-static) is needed to build a test image");
            return false;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::create_dir_all(rootfs.join("data")).expect("rootfs");
        std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in [
            "sh", "true", "false", "sleep", "cat", "echo", "ls", "touch", "rm", "mkdir", "test",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("symlink");
        }
        let tar = dir.path().join("rootfs.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tar of the test rootfs failed");
        // Two test processes may import at once; the same content gives
        // the same image, so both succeed.
        podman(Some(&conf), &["import", tar.to_str().unwrap(), IMAGE]);
    }
    let probe = unique("probe");
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--name",
            &probe,
            IMAGE,
            "true",
        ])
        .output();
    let ok = out.as_ref().is_ok_and(|o| o.status.success());
    if !ok {
        crate::skip(&format!(
            "containers do not run here: {}",
            out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default()
        ));
    }
    ok
}

/// A container removed when dropped.
pub struct Container {
    pub name: String,
}

impl Container {
    /// Starts `sleep` in a detached container with `volume` mounted at
    /// `/data` (if given).
    pub fn run(what: &str, volume: Option<&str>) -> Container {
        let name = unique(what);
        let conf = containers_conf();
        // busybox `sleep` as PID 1 ignores SIGTERM: stop with KILL at once.
        // No network: the tests need none, and a fresh machine's network
        // stack must not decide whether they run.
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--stop-signal",
            "KILL",
            "--network",
            "none",
        ];
        let mount;
        if let Some(v) = volume {
            mount = format!("{v}:/data");
            args.extend(["-v", &mount]);
        }
        args.extend([IMAGE, "sleep", "100000"]);
        podman(Some(&conf), &args);
        Container { name }
    }

    /// Whether the container is running.
    pub fn running(&self) -> bool {
        podman(
            Some(&containers_conf()),
            &["inspect", "--format", "{{.State.Running}}", &self.name],
        )
        .trim()
            == "true"
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", containers_conf())
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}
