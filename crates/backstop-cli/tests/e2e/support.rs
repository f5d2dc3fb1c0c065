//! Helpers for driving the binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;

/// The path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_backstop"))
}

/// A scratch directory with a backstop home inside, isolated from any config
/// on the machine.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    fn isolate(&self, cmd: &mut StdCommand, home: &Path) {
        cmd.current_dir(self.dir.path())
            .env_remove("BACKSTOP_CONFIG")
            .env_remove("BACKSTOP_HOME")
            .env_remove("BACKSTOP_FAILPOINTS")
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("NO_COLOR", "1")
            .arg("--home")
            .arg(home);
    }

    /// `backstop --home <home> …` in this scratch directory, for a home
    /// other than [`Env::home`].
    pub fn cmd_with_home(&self, home: &Path) -> StdCommand {
        let mut std = StdCommand::new(bin());
        self.isolate(&mut std, home);
        std
    }

    /// `backstop --home <home> …`
    pub fn cmd(&self) -> Command {
        let mut std = StdCommand::new(bin());
        self.isolate(&mut std, &self.home());
        Command::from_std(std)
    }

    /// The same as a plain `std` command, for processes run in the background.
    pub fn std_cmd(&self) -> StdCommand {
        let mut std = StdCommand::new(bin());
        self.isolate(&mut std, &self.home());
        std
    }

    /// A directory `name` holding a few files.
    pub fn small_app(&self, name: &str) -> PathBuf {
        let app = self.path(name);
        std::fs::create_dir_all(app.join("config")).unwrap();
        std::fs::create_dir_all(app.join("data")).unwrap();
        std::fs::write(app.join("config/.env"), b"TOKEN=secret\n").unwrap();
        std::fs::write(app.join("config/app.toml"), b"port = 8080\n").unwrap();
        std::fs::write(app.join("data/db.sqlite"), vec![7u8; 100_000]).unwrap();
        app
    }

    /// Runs a command expecting JSON on stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cmd().arg("--json").args(args).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Backs up `dir` and returns the backup record as JSON.
    pub fn backup(&self, dir: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["backup", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let doc = self.json(&args);
        assert_eq!(doc["command"], "backup", "{doc}");
        doc["report"]["backup"].clone()
    }

    /// Every row of the catalog, newest first.
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.json(&["list"])["backups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The files in `dir` (names), sorted.
    pub fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// A failure point that pauses the binary until the test releases it.
pub struct Pause {
    gate: PathBuf,
}

impl Pause {
    pub fn new(env: &Env, name: &str) -> Pause {
        Pause {
            gate: env.path(&format!("gate-{name}")),
        }
    }

    /// The `BACKSTOP_FAILPOINTS` value that pauses at `point`.
    pub fn at(&self, point: &str) -> String {
        format!("{point}=wait:{}", self.gate.display())
    }

    /// Waits until the process reached the failure point.
    pub fn wait_reached(&self, child: &mut Child) {
        let marker = PathBuf::from(format!("{}.reached", self.gate.display()));
        let start = Instant::now();
        while !marker.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("process ended ({status}) before reaching the failure point");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "failure point never reached"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn release(&self) {
        std::fs::write(&self.gate, b"").unwrap();
    }
}

/// Runs backstop with `args`, pausing it at failure point `point`; `during`
/// runs while it waits there, then it is let go and its output returned.
pub fn run_paused(
    env: &Env,
    point: &str,
    args: &[&std::ffi::OsStr],
    during: impl FnOnce(&Child),
) -> std::process::Output {
    let pause = Pause::new(env, point);
    let mut cmd = env.std_cmd();
    cmd.env("BACKSTOP_FAILPOINTS", pause.at(point)).args(args);
    let mut child = spawn(cmd);
    pause.wait_reached(&mut child);
    during(&child);
    pause.release();
    child.wait_with_output().unwrap()
}

/// Starts `cmd` in the background with its output captured.
pub fn spawn(mut cmd: StdCommand) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backstop")
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}

/// Flips one bit at `offset` of `file`.
pub fn flip_byte(file: &Path, offset: u64) {
    let mut data = std::fs::read(file).unwrap();
    data[offset as usize] ^= 0x01;
    std::fs::write(file, data).unwrap();
}

/// Every path below `dir` (not following symlinks).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Runs `sql` on the database `db` with the real sqlite3 and returns its
/// output, trimmed.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let out = StdCommand::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Copies a tree exactly (as a reference to compare with later), with GNU cp.
pub fn copy_tree(from: &Path, to: &Path) {
    let ok = StdCommand::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a failed");
}

/// `s` quoted for `sh`.
pub fn sh_quote(s: &std::ffi::OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
}

/// What a run on a pseudo-terminal gave: its exit code and everything the
/// terminal showed (stdout and stderr together, with the typed input echoed).
pub struct TermRun {
    pub code: Option<i32>,
    pub screen: String,
}

/// Runs `backstop --home <home> args…` with stdin, stdout and stderr on a
/// pseudo-terminal (util-linux `script`), `input` typed into it; `None` when
/// `script` is not installed (reported as a skip).
pub fn on_terminal(env: &Env, args: &[&std::ffi::OsStr], input: &str) -> Option<TermRun> {
    if !backstop_test_support::have("script") {
        return None;
    }
    let mut line = sh_quote(bin().as_os_str());
    for a in [std::ffi::OsStr::new("--home"), env.home().as_os_str()]
        .into_iter()
        .chain(args.iter().copied())
    {
        line.push(' ');
        line.push_str(&sh_quote(a));
    }
    let mut cmd = StdCommand::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .current_dir(env.dir.path())
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("BACKSTOP_HOME")
        .env_remove("BACKSTOP_FAILPOINTS")
        .env("XDG_CONFIG_HOME", env.path("xdg-config"))
        .env("NO_COLOR", "1")
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn script");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Some(TermRun {
        code: out.status.code(),
        screen: String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
    })
}

/// A command running on a terminal of its own in a private tmux server,
/// for what reads a terminal only (a passphrase prompt): wait for the
/// screen to show something, type, wait for the exit code. `None` when
/// tmux is not installed (reported as a skip).
pub struct Tmux {
    socket: PathBuf,
    rc: PathBuf,
}

impl Tmux {
    /// Starts `command` (run by `sh -c` in the scratch directory, with the
    /// variables that would reach the machine's config removed).
    pub fn start(env: &Env, name: &str, command: &str) -> Option<Tmux> {
        if !backstop_test_support::have("tmux") {
            return None;
        }
        let socket = env.path(&format!("tmux-{name}.sock"));
        let rc = env.path(&format!("tmux-{name}.rc"));
        let script = format!(
            "unset BACKSTOP_CONFIG BACKSTOP_HOME BACKSTOP_FAILPOINTS BACKSTOP_IDENTITY; \
             export NO_COLOR=1 XDG_CONFIG_HOME={xdg}; {command}; echo $? > {rc}.tmp; \
             mv {rc}.tmp {rc}; sleep 600",
            xdg = sh_quote(env.path("xdg-config").as_os_str()),
            rc = sh_quote(rc.as_os_str()),
        );
        let status = StdCommand::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
                "-c",
            ])
            .arg(env.dir.path())
            .args(["sh", "-c", &script])
            .env("TERM", "xterm")
            .status()
            .expect("start tmux");
        assert!(status.success(), "tmux new-session failed");
        Some(Tmux { socket, rc })
    }

    fn tmux(&self) -> StdCommand {
        let mut cmd = StdCommand::new("tmux");
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-J", "-S", "-200"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (up to a minute) until the terminal shows `text`.
    pub fn wait_for(&self, text: &str) -> String {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < until,
                "the terminal never showed {text:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` and Enter.
    pub fn type_line(&self, text: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-l", text])
            .status()
            .expect("tmux send-keys")
            .success()
            && self
                .tmux()
                .args(["send-keys", "Enter"])
                .status()
                .expect("tmux send-keys")
                .success();
        assert!(ok, "tmux send-keys failed");
    }

    /// Waits (up to two minutes) for the command to end: its exit code
    /// and the final screen.
    pub fn wait_exit(&self) -> (i32, String) {
        let until = Instant::now() + Duration::from_secs(120);
        while !self.rc.exists() {
            assert!(
                Instant::now() < until,
                "the command never ended:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let code = std::fs::read_to_string(&self.rc).unwrap();
        (code.trim().parse().unwrap(), self.screen())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The paths a restore plan keeps, below its destination, each with why.
pub fn kept_why(plan: &serde_json::Value) -> Vec<String> {
    let top = plan["restore"]["plan"]["destination"]
        .as_str()
        .map(str::to_string);
    plan["restore"]["plan"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "keep")
        .map(|a| {
            let path = a["path"].as_str().unwrap();
            let below = top
                .as_deref()
                .and_then(|t| path.strip_prefix(t))
                .unwrap_or(path)
                .trim_start_matches('/');
            format!("{below} ({})", a["why"].as_str().unwrap_or("?"))
        })
        .collect()
}
