//! Running the commands a config names: dumps and their restores, service
//! controls, health checks, version probes, activate commands, guarded
//! commands.
//!
//! A command is written either as one string, run by `sh -c` (pipes and
//! `$VARS` work), or as a list, run directly. Every command gets the
//! `BACKSTOP_*` variables of [`CommandEnv`]. Captured commands run in their
//! own process group, so a timeout or Ctrl-C stops the whole pipeline; their
//! error output is kept (its end) for the message when they fail.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::progress::Cancel;

/// How much of a failed command's error output a message quotes.
const STDERR_TAIL: usize = 2000;
/// How much output a captured command (a version probe, a status) may print.
const OUTPUT_LIMIT: usize = 1 << 20;

/// A command as the config writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CommandLine {
    /// Run by `sh -c`.
    Shell(String),
    /// Run directly: the program, then its arguments.
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CommandLine;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a string (run by sh -c) or a list of arguments")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("the command is empty"));
                }
                Ok(CommandLine::Shell(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return Err(serde::de::Error::custom(
                        "the command list is empty: name the program first",
                    ));
                }
                Ok(CommandLine::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLine::Shell(s) => f.write_str(s),
            CommandLine::Argv(argv) => {
                for (i, arg) in argv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    f.write_str(&shell_quote(arg))?;
                }
                Ok(())
            }
        }
    }
}

impl CommandLine {
    /// A direct command from its program and arguments.
    pub fn argv<I, S>(args: I) -> CommandLine
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandLine::Argv(args.into_iter().map(Into::into).collect())
    }

    fn command(&self) -> Command {
        match self {
            CommandLine::Shell(s) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(s);
                c
            }
            CommandLine::Argv(argv) => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        }
    }
}

/// `arg` quoted for a POSIX shell when it needs to be.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The `BACKSTOP_*` variables commands and hooks see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandEnv {
    vars: BTreeMap<String, String>,
}

impl CommandEnv {
    /// The variables every command of `instance` gets: `BACKSTOP_INSTANCE`,
    /// `BACKSTOP_ROOT`, and `BACKSTOP_HOME`, `BACKSTOP_STORE`,
    /// `BACKSTOP_CONFIG` when known.
    pub fn new(instance: &str, root: &Path) -> CommandEnv {
        let mut env = CommandEnv::default();
        env.set("BACKSTOP_INSTANCE", instance);
        env.set("BACKSTOP_ROOT", root.to_string_lossy());
        env
    }

    /// Sets `BACKSTOP_<NAME>`-style variable `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl AsRef<str>) -> &mut Self {
        self.vars
            .insert(key.to_string(), value.as_ref().to_string());
        self
    }

    /// Sets `key` when `value` is known.
    pub fn set_opt(&mut self, key: &str, value: Option<impl AsRef<str>>) -> &mut Self {
        if let Some(v) = value {
            self.set(key, v);
        }
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Every variable, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// How one command runs.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// What the command is for, for messages: "the health check of gitea".
    pub what: &'a str,
    pub env: &'a CommandEnv,
    /// The working directory; the instance root as a rule.
    pub cwd: Option<&'a Path>,
    /// Killed (with its whole process group) after this long.
    pub timeout: Option<Duration>,
    /// Stops (kills) the command when set.
    pub cancel: Option<&'a Cancel>,
}

impl<'a> Run<'a> {
    /// A run with no working directory, timeout or cancellation.
    pub fn new(what: &'a str, env: &'a CommandEnv) -> Run<'a> {
        Run {
            what,
            env,
            cwd: None,
            timeout: None,
            cancel: None,
        }
    }

    fn prepare(&self, line: &CommandLine, own_group: bool) -> Command {
        let mut cmd = line.command();
        for (k, v) in self.env.iter() {
            cmd.env(k, v);
        }
        if let Some(cwd) = self.cwd {
            cmd.current_dir(cwd);
        }
        if own_group {
            cmd.process_group(0);
        }
        cmd
    }

    fn spawn_error(&self, line: &CommandLine, err: std::io::Error) -> Error {
        Error::Command {
            what: self.what.to_string(),
            detail: format!("cannot start `{line}`: {err}"),
            hint: Some(match self.cwd {
                Some(cwd) if !cwd.is_dir() => {
                    format!("its working directory {} does not exist", cwd.display())
                }
                _ => "check that the program is installed and on the PATH".into(),
            }),
        }
    }

    /// Waits for `child`, killing its process group on timeout or
    /// cancellation.
    fn wait(&self, line: &CommandLine, child: &mut Child) -> Result<ExitStatus> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| self.spawn_error(line, e))? {
                return Ok(status);
            }
            let cancelled = self.cancel.is_some_and(Cancel::is_cancelled);
            let timed_out = self.timeout.is_some_and(|t| started.elapsed() >= t);
            if cancelled || timed_out {
                kill_group(child);
                let _ = child.wait();
                if cancelled {
                    return Err(Error::Interrupted);
                }
                return Err(Error::Command {
                    what: self.what.to_string(),
                    detail: format!(
                        "`{line}` did not finish within {}",
                        crate::time::human_duration(self.timeout.unwrap_or_default())
                    ),
                    hint: Some("raise the timeout in the config, or fix the command".into()),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn failed(&self, line: &CommandLine, status: ExitStatus, stderr: &[u8]) -> Error {
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "an unknown status".into(),
        };
        let text = String::from_utf8_lossy(stderr);
        let text = text.trim();
        let detail = if text.is_empty() {
            format!("`{line}` ended with {how}")
        } else {
            format!("`{line}` ended with {how}: {text}")
        };
        Error::Command {
            what: self.what.to_string(),
            detail,
            hint: None,
        }
    }

    /// Runs `line` and returns its standard output; a non-zero exit is an
    /// error quoting its error output.
    ///
    /// # Errors
    ///
    /// Fails when the command cannot start, exits non-zero, times out or is
    /// interrupted.
    pub fn output(&self, line: &CommandLine) -> Result<String> {
        let (status, out, err) = self.capture(line, Stdio::null())?;
        if !status.success() {
            return Err(self.failed(line, status, &err));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs `line` and says whether it exited 0 (a status or health check).
    ///
    /// # Errors
    ///
    /// Fails only when the command cannot start, times out or is
    /// interrupted: a non-zero exit is `Ok(false)`.
    pub fn succeeds(&self, line: &CommandLine) -> Result<bool> {
        Ok(self.capture(line, Stdio::null())?.0.success())
    }

    /// Like [`Run::succeeds`], but returns the error output of a failure.
    ///
    /// # Errors
    ///
    /// As [`Run::succeeds`].
    pub fn check(&self, line: &CommandLine) -> Result<std::result::Result<(), Error>> {
        let (status, _, err) = self.capture(line, Stdio::null())?;
        Ok(if status.success() {
            Ok(())
        } else {
            Err(self.failed(line, status, &err))
        })
    }

    /// Runs `line` with its standard output going into `out` (a dump).
    ///
    /// # Errors
    ///
    /// Fails when the command cannot start, exits non-zero, times out or is
    /// interrupted; what it wrote is then incomplete.
    pub fn to_file(&self, line: &CommandLine, out: File) -> Result<()> {
        let mut cmd = self.prepare(line, true);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(line, e))?;
        let stderr = drain(child.stderr.take());
        let status = self.wait(line, &mut child)?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(self.failed(line, status, &err));
        }
        Ok(())
    }

    /// Runs `line` with `input` as its standard input (a dump's restore).
    ///
    /// # Errors
    ///
    /// As [`Run::to_file`].
    pub fn from_file(&self, line: &CommandLine, input: File) -> Result<()> {
        let (status, _, err) = self.capture(line, Stdio::from(input))?;
        if !status.success() {
            return Err(self.failed(line, status, &err));
        }
        Ok(())
    }

    /// Runs `line` with the terminal's standard input, output and error (a
    /// guarded command), in the foreground process group so Ctrl-C and
    /// prompts reach it.
    ///
    /// # Errors
    ///
    /// Fails only when the command cannot start.
    pub fn inherit(&self, line: &CommandLine) -> Result<ExitStatus> {
        let mut cmd = self.prepare(line, false);
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(line, e))?;
        child.wait().map_err(|e| self.spawn_error(line, e))
    }

    fn capture(&self, line: &CommandLine, stdin: Stdio) -> Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
        let mut cmd = self.prepare(line, true);
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(line, e))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = self.wait(line, &mut child)?;
        let mut out = stdout.join().unwrap_or_default();
        out.truncate(OUTPUT_LIMIT);
        Ok((status, out, stderr.join().unwrap_or_default()))
    }
}

/// Reads a pipe to its end on a thread, keeping at most
/// `OUTPUT_LIMIT` bytes (stdout) or the last `STDERR_TAIL` bytes (stderr).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut pipe) = pipe else {
            return kept;
        };
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > OUTPUT_LIMIT + STDERR_TAIL {
                kept.drain(..kept.len() - OUTPUT_LIMIT);
            }
        }
        kept
    })
}

fn kill_group(child: &Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Where a command's relative paths resolve: `cwd` when it exists.
pub fn working_dir(root: &Path) -> Option<PathBuf> {
    root.is_dir().then(|| root.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> CommandEnv {
        let mut env = CommandEnv::new("app", Path::new("/srv/app"));
        env.set("BACKSTOP_VERSION", "1.2.3");
        env
    }

    #[test]
    fn commands_parse_from_strings_and_lists() {
        #[derive(Deserialize)]
        struct T {
            a: CommandLine,
            b: CommandLine,
        }
        let t: T = toml::from_str("a = \"echo hi | wc -c\"\nb = [\"pg_dump\", \"-Fc\"]").unwrap();
        assert_eq!(t.a, CommandLine::Shell("echo hi | wc -c".into()));
        assert_eq!(t.b, CommandLine::argv(["pg_dump", "-Fc"]));
        assert!(toml::from_str::<T>("a = \"\"\nb = []").is_err());
        assert_eq!(
            CommandLine::argv(["a b", "it's"]).to_string(),
            r"'a b' 'it'\''s'"
        );
    }

    #[test]
    fn commands_see_the_environment() {
        let env = env();
        let out = Run::new("probe", &env)
            .output(&CommandLine::Shell(
                "echo $BACKSTOP_INSTANCE $BACKSTOP_VERSION $BACKSTOP_ROOT".into(),
            ))
            .unwrap();
        assert_eq!(out, "app 1.2.3 /srv/app\n");
    }

    #[test]
    fn failures_quote_the_error_output() {
        let env = env();
        let err = Run::new("the dump of db", &env)
            .output(&CommandLine::Shell(
                "echo 'no such database' >&2; exit 3".into(),
            ))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("the dump of db failed"), "{msg}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("no such database"), "{msg}");
        assert!(
            !Run::new("s", &env)
                .succeeds(&CommandLine::Shell("false".into()))
                .unwrap()
        );
    }

    #[test]
    fn a_missing_program_is_named() {
        let env = env();
        let err = Run::new("status", &env)
            .succeeds(&CommandLine::argv(["/no/such/program"]))
            .unwrap_err();
        assert!(err.to_string().contains("cannot start"), "{err}");
    }

    #[test]
    fn a_timeout_kills_the_whole_pipeline() {
        let env = env();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let mut run = Run::new("slow", &env);
        run.timeout = Some(Duration::from_millis(200));
        let started = Instant::now();
        let err = run
            .output(&CommandLine::Shell(format!(
                "(sleep 1; touch {}) & sleep 5",
                marker.display()
            )))
            .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(1300));
        assert!(!marker.exists(), "the background child was killed too");
    }

    #[test]
    fn dumps_stream_to_files_and_back() {
        let env = env();
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("dump");
        let run = Run::new("dump", &env);
        run.to_file(
            &CommandLine::Shell("seq 1 100000".into()),
            File::create(&dump).unwrap(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&dump).unwrap().lines().count(),
            100000
        );
        let back = dir.path().join("back");
        run.from_file(
            &CommandLine::Shell(format!("cat > {}", back.display())),
            File::open(&dump).unwrap(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&dump).unwrap(), std::fs::read(&back).unwrap());
        let err = run
            .to_file(
                &CommandLine::Shell("echo partial; exit 1".into()),
                File::create(&dump).unwrap(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("exit status 1"), "{err}");
    }
}
