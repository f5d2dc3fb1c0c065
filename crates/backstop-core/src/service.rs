//! An instance's services: how backstop stops, starts, checks and
//! health-checks the application around a restore, a rollback or a cold
//! backup.
//!
//! The rules: a restore or a rollback stops the services only if they run,
//! and starts again exactly those that ran, on every exit path (failures and
//! panics included): [`Services::stop_running`] returns a [`Stopped`] guard
//! that starts them when told to or, failing that, when it is dropped. After
//! a restore, [`Services::health`] runs the health check until it passes or
//! times out; the caller undoes the restore when it fails.
//!
//! Services are controlled in one of three styles ([`Control`]): commands
//! from the config, named podman containers, or systemd units. Every
//! external program runs through [`crate::command::Run`] or
//! [`crate::podman::Podman`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::command::{CommandEnv, CommandLine, Run};
use crate::error::{Error, Result};
use crate::podman::Podman;
use crate::progress::{Cancel, Progress, ServiceAction, ServiceEvent};

/// How long a stop may take unless the config says otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a health check is tried unless the config says otherwise.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between health-check tries unless the config says otherwise.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// How long a status command (or `systemctl is-active`) may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a start command (or `systemctl start`) may take. Starts ignore
/// the cancel flag (they run on the way out of an interrupted operation), so
/// this bound is what keeps a hanging start from hanging backstop.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// The least time one health-check try gets, even close to the deadline, so
/// that the last try reports the check's own failure rather than a timeout.
const MIN_HEALTH_TRY: Duration = Duration::from_secs(1);
/// How often a pause between health-check tries looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// The name [`Services::running`] gives the single service of the
/// [`Control::Commands`] style.
pub const COMMANDS_SERVICE: &str = "service";

/// How an instance's services are controlled. Exactly one style.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "style", rename_all = "lowercase")]
pub enum Control {
    /// Commands. `status` exits 0 when the service runs; without one the
    /// service is taken to be running (so it is always stopped and started
    /// again).
    Commands {
        /// Stops the service; must return once it has stopped.
        stop: CommandLine,
        /// Starts the service.
        start: CommandLine,
        /// Exits 0 when the service runs.
        status: Option<CommandLine>,
    },
    /// Named podman containers, stopped in reverse order and started in
    /// order.
    Containers {
        /// The containers, in the order they start.
        names: Vec<String>,
    },
    /// systemd units, via `systemctl` (`--user` when `user`); stopped in
    /// reverse order, started in order.
    Units {
        /// The units, in the order they start.
        names: Vec<String>,
        /// Whether they are units of the user's service manager.
        user: bool,
    },
}

impl Control {
    /// Checks the names of containers and units: present, not repeated, and
    /// not taken for options by the programs they are passed to.
    ///
    /// # Errors
    ///
    /// Returns a message naming the first bad name, for the config parser
    /// to wrap.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (names, what) = match self {
            Control::Commands { .. } => return Ok(()),
            Control::Containers { names } => (names, "container"),
            Control::Units { names, .. } => (names, "unit"),
        };
        if names.is_empty() {
            return Err(format!("the list of {what}s is empty: name at least one"));
        }
        for (i, name) in names.iter().enumerate() {
            match self {
                Control::Containers { .. } => check_container_name(name)?,
                _ => check_unit_name(name)?,
            }
            if names[..i].contains(name) {
                return Err(format!("{what} `{name}` is listed twice"));
            }
        }
        Ok(())
    }

    /// The names of the services, in start order.
    fn names(&self) -> Vec<String> {
        match self {
            Control::Commands { .. } => vec![COMMANDS_SERVICE.to_string()],
            Control::Containers { names } | Control::Units { names, .. } => names.clone(),
        }
    }
}

fn check_container_name(name: &str) -> std::result::Result<(), String> {
    if name.starts_with('-') {
        return Err(format!(
            "container name `{name}` starts with `-`: podman would take it for an option"
        ));
    }
    crate::podman::check_name("container", name)
}

fn check_unit_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("a unit name is empty".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "unit name `{name}` contains white space or control characters"
        ));
    }
    if name.starts_with('-') {
        return Err(format!(
            "unit name `{name}` starts with `-`: systemctl would take it for an option"
        ));
    }
    Ok(())
}

/// The health check run after a restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// Exits 0 when the application is healthy.
    pub command: CommandLine,
    /// Tried until it passes or this much time has gone by (default 60 s).
    pub timeout: Duration,
    /// Pause between tries (default 2 s).
    pub interval: Duration,
}

impl Health {
    /// A health check with the default timeout and interval.
    pub fn new(command: CommandLine) -> Health {
        Health {
            command,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            interval: DEFAULT_HEALTH_INTERVAL,
        }
    }
}

/// An instance's services and its health check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Services {
    /// How the services are stopped and started; `None`: there is nothing
    /// to stop.
    pub control: Option<Control>,
    /// The health check run after a restore, if any.
    pub health: Option<Health>,
    /// How long a stop may take (default 30 s; podman stop -t, command
    /// timeout).
    pub stop_timeout: Duration,
    /// The `systemctl` program (replaced in tests).
    #[serde(skip)]
    pub systemctl: PathBuf,
    /// How podman is run (replaced in tests).
    #[serde(skip)]
    pub podman: Podman,
}

// By hand because `Podman` is not `PartialEq`: it compares by its fields.
impl PartialEq for Services {
    fn eq(&self, other: &Services) -> bool {
        self.control == other.control
            && self.health == other.health
            && self.stop_timeout == other.stop_timeout
            && self.systemctl == other.systemctl
            && self.podman.program == other.podman.program
            && self.podman.env == other.podman.env
    }
}

impl Eq for Services {}

impl Default for Services {
    /// No services and no health check.
    fn default() -> Services {
        Services {
            control: None,
            health: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            systemctl: PathBuf::from("systemctl"),
            podman: Podman::default(),
        }
    }
}

/// What every call needs: the environment for commands, the cancel flag,
/// and where to say that a service is being stopped or started.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The `BACKSTOP_*` variables commands see.
    pub env: &'a CommandEnv,
    /// The working directory of commands (the instance root as a rule).
    pub cwd: Option<&'a Path>,
    /// Stops status checks, health checks and further stops; never starts.
    pub cancel: Option<&'a Cancel>,
    /// The instance's name, for messages.
    pub instance: &'a str,
    /// Told before each stop and start.
    pub progress: &'a dyn Progress,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("env", self.env)
            .field("cwd", &self.cwd)
            .field("cancel", &self.cancel)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    fn check_cancel(&self) -> Result<()> {
        self.cancel.map_or(Ok(()), Cancel::check)
    }

    fn run<'r>(&'r self, what: &'r str, timeout: Duration, cancel: bool) -> Run<'r> {
        Run {
            what,
            env: self.env,
            cwd: self.cwd,
            timeout: Some(timeout),
            cancel: if cancel { self.cancel } else { None },
        }
    }
}

impl Services {
    /// How a restore treats the services, in words, for its plan.
    pub fn describe(&self) -> String {
        let control = match &self.control {
            None => "no service control".to_string(),
            Some(Control::Commands { .. }) => {
                "the service is stopped if it runs, and started again after".into()
            }
            Some(Control::Containers { names }) => format!(
                "containers {} are stopped if they run, and started again after",
                names.join(", ")
            ),
            Some(Control::Units { names, user }) => format!(
                "{}units {} are stopped if they run, and started again after",
                if *user { "user " } else { "" },
                names.join(", ")
            ),
        };
        match &self.health {
            Some(h) => format!(
                "{control}; then `{}` must pass within {}, or the restore is undone",
                h.command,
                crate::time::human_duration(h.timeout)
            ),
            None => control,
        }
    }

    /// Which of the services run now, by name, in start order (for
    /// [`Control::Commands`]: the single name [`COMMANDS_SERVICE`]).
    ///
    /// # Errors
    ///
    /// Fails when a name is invalid, when a status cannot be learnt
    /// (podman or `systemctl` fails, a status command cannot start or
    /// times out), or when interrupted.
    pub fn running(&self, ctx: &Ctx<'_>) -> Result<Vec<String>> {
        let Some(control) = &self.control else {
            return Ok(Vec::new());
        };
        self.validate(ctx)?;
        let mut running = Vec::new();
        for name in control.names() {
            ctx.check_cancel()?;
            if self.is_running(control, ctx, &name)? {
                running.push(name);
            }
        }
        Ok(running)
    }

    /// Stops the services that run, in reverse order, and returns a guard
    /// that starts exactly those again, in order, when [`Stopped::start`] is
    /// called or, failing that, when it is dropped.
    ///
    /// Stopping is all or nothing: when a stop fails, the services already
    /// stopped are started again (and the failing one too, if it no longer
    /// runs) before the error is returned. The cancel flag is looked at
    /// before each stop, not during one: a stop cut short would leave its
    /// service half stopped, and each is bounded by
    /// [`Services::stop_timeout`] anyway. An interrupted stop sequence is
    /// undone like a failed one and returns [`Error::Interrupted`].
    ///
    /// # Errors
    ///
    /// Fails when a name is invalid, a status cannot be learnt, a stop
    /// fails or times out, or when interrupted; nothing is left stopped
    /// then, unless starting again failed too, which the error says.
    pub fn stop_running<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Stopped<'a>> {
        let running = self.running(ctx)?;
        self.stop_named(ctx, &running)
    }

    /// Stops `running` (names from [`Services::running`], in start order)
    /// as [`Services::stop_running`] does; a restore learns which run
    /// first, to journal them before the first stop.
    ///
    /// # Errors
    ///
    /// As [`Services::stop_running`].
    pub fn stop_named<'a>(&'a self, ctx: &Ctx<'a>, running: &[String]) -> Result<Stopped<'a>> {
        let mut stopped = Stopped {
            services: self,
            ctx: *ctx,
            names: Vec::new(),
            armed: true,
            report: DropReport::default(),
        };
        let Some(control) = &self.control else {
            return Ok(stopped);
        };
        for name in running.iter().rev() {
            let result = ctx
                .check_cancel()
                .and_then(|()| self.stop_one(control, ctx, name))
                .and_then(|()| crate::failpoint::hit("service.after-stop"));
            let Err(err) = result else {
                // `names` is kept in start order.
                stopped.names.insert(0, name.clone());
                continue;
            };
            if !matches!(err, Error::Interrupted) {
                // A stop that failed may still have stopped its service; if
                // it no longer runs, it is started again with the others.
                let quiet = Ctx {
                    cancel: None,
                    ..*ctx
                };
                if let Ok(false) = self.is_running(control, &quiet, name) {
                    stopped.names.insert(0, name.clone());
                }
            }
            return Err(match stopped.start() {
                Ok(()) => err,
                Err(start_err) => Error::Command {
                    what: format!("stopping the services of instance {}", ctx.instance),
                    detail: format!(
                        "{err}; then starting again what had been stopped failed too: {start_err}"
                    ),
                    hint: start_err.hint(),
                },
            });
        }
        Ok(stopped)
    }

    /// Runs the health check (if any), again every
    /// [`Health::interval`], until it passes or [`Health::timeout`] has
    /// gone by.
    ///
    /// Returns `Ok(Ok(()))` when it passed or there is none, `Ok(Err(e))`
    /// when it did not pass in time (`e` quotes the last try's error
    /// output).
    ///
    /// # Errors
    ///
    /// Fails only when the check cannot run at all (its program cannot
    /// start) or is interrupted.
    pub fn health(&self, ctx: &Ctx<'_>) -> Result<std::result::Result<(), Error>> {
        let Some(health) = &self.health else {
            return Ok(Ok(()));
        };
        let what = format!("the health check of instance {}", ctx.instance);
        let started = Instant::now();
        let deadline = started + health.timeout;
        let mut tries = 0u32;
        loop {
            ctx.check_cancel()?;
            tries += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let budget = remaining.max(MIN_HEALTH_TRY.min(health.timeout));
            let last = match ctx.run(&what, budget, true).check(&health.command) {
                Ok(Ok(())) => return Ok(Ok(())),
                Ok(Err(failed)) => failed,
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                // A try cut short by its timeout is a failed check; any
                // other error comes at once, from a check that cannot run.
                Err(err) if Instant::now() >= deadline => err,
                Err(err) => return Err(err),
            };
            if Instant::now() + health.interval > deadline {
                let last = match last {
                    Error::Command { detail, .. } => detail,
                    other => other.to_string(),
                };
                return Ok(Err(Error::Command {
                    what,
                    detail: format!(
                        "it did not pass within {} ({tries} {}); the last try: {last}",
                        crate::time::human_duration(health.timeout),
                        if tries == 1 { "try" } else { "tries" },
                    ),
                    hint: Some(
                        "see the application's logs for why it is unhealthy, or raise the \
                         health check's timeout in the config if it only needs longer to start"
                            .into(),
                    ),
                }));
            }
            pause(health.interval, ctx.cancel)?;
        }
    }

    fn validate(&self, ctx: &Ctx<'_>) -> Result<()> {
        match &self.control {
            Some(control) => control.validate().map_err(|message| {
                Error::usage(
                    format!("the services of instance {}: {message}", ctx.instance),
                    Some("correct the names in the instance's config".into()),
                )
            }),
            None => Ok(()),
        }
    }

    fn is_running(&self, control: &Control, ctx: &Ctx<'_>, name: &str) -> Result<bool> {
        let what = format!("checking whether {} runs", label(control, ctx, name));
        match control {
            Control::Commands { status: None, .. } => Ok(true),
            Control::Commands {
                status: Some(status),
                ..
            } => ctx.run(&what, STATUS_TIMEOUT, true).succeeds(status),
            Control::Containers { .. } => {
                let running = self
                    .podman
                    .container_exists(name)
                    .and_then(|exists| Ok(exists && self.podman.container_running(name)?));
                running.map_err(|e| {
                    reword(
                        e,
                        what,
                        format!("check that podman works: `podman inspect {name}`"),
                    )
                })
            }
            Control::Units { user, .. } => {
                let line = self.systemctl(*user, &["is-active", "--quiet", name]);
                match ctx.run(&what, STATUS_TIMEOUT, true).check(&line)? {
                    Ok(()) => Ok(true),
                    // `is-active --quiet` prints nothing for a unit that is
                    // merely inactive; error output means systemctl itself
                    // failed (no bus, no user session), and taking the unit
                    // for stopped would restore under a running application.
                    Err(err) if quoted_output(&err, &line) => Err(reword(
                        err,
                        what,
                        format!(
                            "check that `{line}` works for the user backstop runs as{}",
                            if *user {
                                " (user units need a user session: `loginctl enable-linger`)"
                            } else {
                                ""
                            }
                        ),
                    )),
                    Err(_) => Ok(false),
                }
            }
        }
    }

    fn stop_one(&self, control: &Control, ctx: &Ctx<'_>, name: &str) -> Result<()> {
        ctx.progress.service(&ServiceEvent {
            action: ServiceAction::Stopping,
            service: subject(control, ctx, name),
            timeout: Some(self.stop_timeout),
        });
        let subject = label(control, ctx, name);
        let what = format!("stopping {subject}");
        let (result, by_hand) = match control {
            Control::Commands { stop, .. } => (
                ctx.run(&what, self.stop_timeout, false)
                    .output(stop)
                    .map(drop),
                stop.to_string(),
            ),
            Control::Containers { .. } => (
                self.podman.container_stop(name, self.stop_timeout),
                format!("podman stop {}", crate::command::shell_quote(name)),
            ),
            Control::Units { user, .. } => {
                let line = self.systemctl(*user, &["stop", name]);
                (
                    ctx.run(&what, self.stop_timeout, false)
                        .output(&line)
                        .map(drop),
                    line.to_string(),
                )
            }
        };
        result.map_err(|e| {
            reword(
                e,
                what,
                format!(
                    "nothing was changed; find out why {subject} does not stop \
                     (try `{by_hand}`), then run backstop again"
                ),
            )
        })
    }

    fn start_one(&self, control: &Control, ctx: &Ctx<'_>, name: &str) -> Result<()> {
        ctx.progress.service(&ServiceEvent {
            action: ServiceAction::Starting,
            service: subject(control, ctx, name),
            // `podman start` returns once the container runs; commands and
            // `systemctl start` are bounded.
            timeout: match control {
                Control::Containers { .. } => None,
                _ => Some(START_TIMEOUT),
            },
        });
        let subject = label(control, ctx, name);
        let what = format!("starting {subject}");
        let (result, by_hand) = match control {
            Control::Commands { start, .. } => (
                ctx.run(&what, START_TIMEOUT, false).output(start).map(drop),
                start.to_string(),
            ),
            Control::Containers { .. } => (
                self.podman.container_start(name),
                format!("podman start {}", crate::command::shell_quote(name)),
            ),
            Control::Units { user, .. } => {
                let line = self.systemctl(*user, &["start", name]);
                (
                    ctx.run(&what, START_TIMEOUT, false).output(&line).map(drop),
                    line.to_string(),
                )
            }
        };
        result.map_err(|e| {
            reword(
                e,
                what,
                format!("{subject} is stopped: start it by hand with `{by_hand}`"),
            )
        })
    }

    /// Starts `names` in order, going on after a failure so that as much as
    /// possible runs. Recovery uses it for the services an interrupted
    /// restore had stopped.
    ///
    /// # Errors
    ///
    /// Fails when a service does not start; the error names each.
    pub fn start_names(&self, ctx: &Ctx<'_>, names: &[String]) -> Result<()> {
        let Some(control) = &self.control else {
            return Ok(());
        };
        let mut failures: Vec<Error> = Vec::new();
        for name in names {
            if let Err(err) = self.start_one(control, ctx, name) {
                failures.push(err);
            }
        }
        if failures.len() <= 1 {
            return failures.pop().map_or(Ok(()), Err);
        }
        let hint = failures
            .iter()
            .filter_map(Error::hint)
            .collect::<Vec<_>>()
            .join("; ");
        Err(Error::Command {
            what: format!("starting the services of instance {}", ctx.instance),
            detail: failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            hint: (!hint.is_empty()).then_some(hint),
        })
    }

    /// `systemctl [--user] ARGS…`.
    fn systemctl(&self, user: bool, args: &[&str]) -> CommandLine {
        let mut argv = vec![self.systemctl.to_string_lossy().into_owned()];
        if user {
            argv.push("--user".into());
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        CommandLine::Argv(argv)
    }
}

/// "container gitea-db of instance gitea", for messages.
/// A service as a person calls it: `container nginx`.
fn subject(control: &Control, ctx: &Ctx<'_>, name: &str) -> String {
    match control {
        Control::Commands { .. } => format!("the service of instance {}", ctx.instance),
        Control::Containers { .. } => format!("container {name}"),
        Control::Units { user: true, .. } => format!("user unit {name}"),
        Control::Units { user: false, .. } => format!("unit {name}"),
    }
}

fn label(control: &Control, ctx: &Ctx<'_>, name: &str) -> String {
    let instance = ctx.instance;
    match control {
        Control::Commands { .. } => format!("the service of instance {instance}"),
        Control::Containers { .. } => format!("container {name} of instance {instance}"),
        Control::Units { user: true, .. } => format!("user unit {name} of instance {instance}"),
        Control::Units { user: false, .. } => format!("unit {name} of instance {instance}"),
    }
}

/// Gives a command's error our own subject, and `hint` when it has none.
fn reword(err: Error, what: String, hint: String) -> Error {
    match err {
        Error::Command {
            detail, hint: own, ..
        } => Error::Command {
            what,
            detail,
            hint: own.or(Some(hint)),
        },
        other => other,
    }
}

/// Whether a failure of `line` (from [`Run::check`]) quotes error output,
/// as opposed to reporting a bare exit status.
fn quoted_output(err: &Error, line: &CommandLine) -> bool {
    let Error::Command { detail, .. } = err else {
        return true;
    };
    match detail.strip_prefix(&format!("`{line}` ended with ")) {
        Some(how) => how.contains(": "),
        None => true,
    }
}

/// Sleeps for `pause`, returning early with [`Error::Interrupted`] when
/// cancelled.
fn pause(pause: Duration, cancel: Option<&Cancel>) -> Result<()> {
    let until = Instant::now() + pause;
    loop {
        cancel.map_or(Ok(()), Cancel::check)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(CANCEL_POLL));
    }
}

/// Services that were stopped and must be started again.
///
/// Dropping the guard without calling [`Stopped::start`] starts them (a
/// failed operation returning early, or a panic unwinding). The core prints
/// nothing, so an error of that start is kept in the guard's
/// [`DropReport`], which the caller takes beforehand with
/// [`Stopped::report`] and reads afterwards; a caller that does not is
/// choosing to ignore it.
#[must_use = "dropping the guard starts the services again at once"]
#[derive(Debug)]
pub struct Stopped<'a> {
    services: &'a Services,
    ctx: Ctx<'a>,
    /// In start order.
    names: Vec<String>,
    /// Whether the services still have to be started.
    armed: bool,
    report: DropReport,
}

impl Stopped<'_> {
    /// The names that were stopped, in start order (empty: nothing ran,
    /// nothing will be started).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A handle on the outcome of the start that dropping the guard does.
    pub fn report(&self) -> DropReport {
        self.report.clone()
    }

    /// Starts the stopped services again, in order, whatever the cancel
    /// flag says; consumes the guard.
    ///
    /// # Errors
    ///
    /// Fails when a service does not start (the others are started all the
    /// same); the error names each that failed.
    pub fn start(mut self) -> Result<()> {
        self.armed = false;
        self.services.start_names(&self.ctx, &self.names)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.armed || self.names.is_empty() {
            return;
        }
        self.armed = false;
        if let Err(err) = self.services.start_names(&self.ctx, &self.names) {
            self.report.put(err);
        }
    }
}

/// Where a dropped [`Stopped`] guard leaves the error of starting its
/// services again. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct DropReport(Arc<Mutex<Option<Error>>>);

impl DropReport {
    /// The error of the start the guard's drop did, once (`None`: it
    /// succeeded, has not happened, or was taken already).
    pub fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, err: Error) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    /// A directory with the environment commands run in (their working
    /// directory, so state files can be named relatively).
    struct Fixture {
        dir: tempfile::TempDir,
        env: CommandEnv,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let env = CommandEnv::new("app", dir.path());
            Fixture { dir, env }
        }

        fn ctx<'a>(&'a self, cancel: Option<&'a Cancel>) -> Ctx<'a> {
            Ctx {
                env: &self.env,
                cwd: Some(self.dir.path()),
                cancel,
                instance: "app",
                progress: &crate::progress::NoProgress,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn read(&self, name: &str) -> String {
            fs::read_to_string(self.path(name)).unwrap_or_default()
        }

        fn write(&self, name: &str, text: &str) {
            fs::write(self.path(name), text).unwrap();
        }
    }

    fn sh(s: &str) -> CommandLine {
        CommandLine::Shell(s.into())
    }

    /// A service whose state is the file `state` ("up" or "down"), with
    /// every stop and start logged to `log`.
    fn commands(stop: &str, status: bool) -> Services {
        Services {
            control: Some(Control::Commands {
                stop: sh(stop),
                start: sh("echo up > state; echo start >> log"),
                status: status.then(|| sh("test \"$(cat state)\" = up")),
            }),
            stop_timeout: Duration::from_secs(5),
            ..Services::default()
        }
    }

    const STOP: &str = "echo down > state; echo stop >> log";

    #[test]
    fn commands_stop_a_running_service_and_start_it_again() {
        let f = Fixture::new();
        f.write("state", "up\n");
        let services = commands(STOP, true);
        assert_eq!(services.running(&f.ctx(None)).unwrap(), ["service"]);
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        assert_eq!(stopped.names(), ["service"]);
        assert_eq!(f.read("state"), "down\n");
        assert!(services.running(&f.ctx(None)).unwrap().is_empty());
        stopped.start().unwrap();
        assert_eq!(f.read("state"), "up\n");
        assert_eq!(f.read("log"), "stop\nstart\n");
    }

    #[test]
    fn commands_leave_a_stopped_service_stopped() {
        let f = Fixture::new();
        f.write("state", "down\n");
        let services = commands(STOP, true);
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        assert!(stopped.names().is_empty());
        stopped.start().unwrap();
        assert_eq!(f.read("state"), "down\n");
        assert_eq!(f.read("log"), "", "neither stopped nor started");
    }

    #[test]
    fn commands_without_status_always_stop_and_start() {
        let f = Fixture::new();
        f.write("state", "down\n");
        let services = commands(STOP, false);
        assert_eq!(services.running(&f.ctx(None)).unwrap(), ["service"]);
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        assert_eq!(stopped.names(), ["service"]);
        stopped.start().unwrap();
        assert_eq!(f.read("state"), "up\n");
        assert_eq!(f.read("log"), "stop\nstart\n");
    }

    #[test]
    fn a_failing_stop_is_named_and_leaves_nothing_stopped() {
        let f = Fixture::new();
        f.write("state", "up\n");
        let services = commands("echo 'device busy' >&2; exit 1", true);
        let err = services.stop_running(&f.ctx(None)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("stopping the service of instance app failed"),
            "{msg}"
        );
        assert!(msg.contains("device busy"), "{msg}");
        assert!(
            err.hint().unwrap().contains("run backstop again"),
            "{err:?}"
        );
        assert_eq!(f.read("state"), "up\n");
        assert_eq!(f.read("log"), "", "still running, so not started");

        // A stop that stops the service but then fails: it is started again.
        let services = commands("echo down > state; exit 1", true);
        services.stop_running(&f.ctx(None)).unwrap_err();
        assert_eq!(f.read("state"), "up\n");
        assert_eq!(f.read("log"), "start\n");
    }

    #[test]
    fn a_stop_that_hangs_times_out() {
        let f = Fixture::new();
        f.write("state", "up\n");
        let mut services = commands("sleep 5", true);
        services.stop_timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = services.stop_running(&f.ctx(None)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn dropping_the_guard_starts_the_services_again() {
        let f = Fixture::new();
        f.write("state", "up\n");
        let services = commands(STOP, true);

        // An operation that fails after the stop and returns early.
        let operation = || -> Result<()> {
            let _stopped = services.stop_running(&f.ctx(None))?;
            assert_eq!(f.read("state"), "down\n");
            Err(Error::Interrupted)
        };
        assert!(matches!(operation(), Err(Error::Interrupted)));
        assert_eq!(f.read("state"), "up\n");

        // A panic while the services are stopped.
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let _stopped = services.stop_running(&f.ctx(None)).unwrap();
            assert_eq!(f.read("state"), "down\n");
            panic!("simulated failure during the restore");
        }));
        assert!(panicked.is_err());
        assert_eq!(f.read("state"), "up\n");
        assert_eq!(f.read("log"), "stop\nstart\nstop\nstart\n");
    }

    #[test]
    fn a_failed_start_on_drop_is_kept_in_the_report() {
        let f = Fixture::new();
        f.write("state", "up\n");
        let mut services = commands(STOP, true);
        if let Some(Control::Commands { start, .. }) = &mut services.control {
            *start = sh("echo 'port in use' >&2; exit 2");
        }
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        let report = stopped.report();
        assert!(report.take().is_none());
        drop(stopped);
        let err = report.take().expect("the start failed");
        assert!(
            err.to_string()
                .starts_with("starting the service of instance app failed"),
            "{err}"
        );
        assert!(err.to_string().contains("port in use"), "{err}");
        assert!(err.hint().unwrap().contains("start it by hand"), "{err:?}");
        assert!(report.take().is_none(), "taken once");

        // The explicit start returns the same error.
        f.write("state", "up\n");
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        let err = stopped.start().unwrap_err();
        assert!(err.to_string().contains("port in use"), "{err}");
        assert!(report.take().is_none());
    }

    #[test]
    fn a_cancel_stops_nothing_and_never_prevents_a_start() {
        let f = Fixture::new();
        f.write("state", "up\n");
        let services = commands(STOP, true);
        let cancel = Cancel::default();
        let stopped = services.stop_running(&f.ctx(Some(&cancel))).unwrap();
        cancel.cancel();
        stopped.start().unwrap();
        assert_eq!(f.read("state"), "up\n");

        assert!(matches!(
            services.stop_running(&f.ctx(Some(&cancel))),
            Err(Error::Interrupted)
        ));
        assert_eq!(f.read("state"), "up\n");
        assert_eq!(f.read("log"), "stop\nstart\n");
    }

    /// Keeps the service events it is told.
    #[derive(Default)]
    struct Events(Mutex<Vec<ServiceEvent>>);

    impl Progress for Events {
        fn service(&self, event: &ServiceEvent) {
            self.0.lock().unwrap().push(event.clone());
        }
    }

    #[test]
    fn each_stop_and_start_is_announced_with_its_bound() {
        let f = Fixture::new();
        f.write("state", "up\n");
        let mut services = commands(STOP, true);
        services.stop_timeout = Duration::from_secs(7);
        let events = Events::default();
        let ctx = Ctx {
            progress: &events,
            ..f.ctx(None)
        };
        services.stop_running(&ctx).unwrap().start().unwrap();
        let seen = events.0.lock().unwrap().clone();
        let what = "the service of instance app".to_string();
        assert_eq!(
            seen,
            [
                ServiceEvent {
                    action: ServiceAction::Stopping,
                    service: what.clone(),
                    timeout: Some(Duration::from_secs(7)),
                },
                ServiceEvent {
                    action: ServiceAction::Starting,
                    service: what,
                    timeout: Some(START_TIMEOUT),
                },
            ]
        );
    }

    #[test]
    fn no_control_means_nothing_to_do() {
        let f = Fixture::new();
        let services = Services::default();
        assert!(services.running(&f.ctx(None)).unwrap().is_empty());
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        assert!(stopped.names().is_empty());
        stopped.start().unwrap();
        assert!(matches!(services.health(&f.ctx(None)), Ok(Ok(()))));
    }

    /// A fake `systemctl` that logs its arguments to `log` and keeps unit
    /// `U`'s state in the file `U.up`. A file `U.fail` makes stopping `U`
    /// fail; `U.wait` makes it create `U.stopping` and wait for `go`;
    /// `nobus` makes every call fail as without a service manager.
    fn fake_systemctl(f: &Fixture) -> PathBuf {
        let script = f.path("systemctl");
        let dir = f.dir.path().display();
        fs::write(
            &script,
            format!(
                r#"#!/bin/sh
cd '{dir}'
echo "$*" >> log
if [ -e nobus ]; then echo "Failed to connect to bus: No medium found" >&2; exit 1; fi
[ "$1" = --user ] && shift
case "$1" in
is-active) [ "$2" = --quiet ] || exit 64; test -e "$3.up" || exit 3 ;;
stop)
    if [ -e "$2.fail" ]; then echo "Job for $2 failed" >&2; exit 1; fi
    if [ -e "$2.wait" ]; then
        touch "$2.stopping"
        while [ ! -e go ]; do sleep 0.01; done
    fi
    rm -f "$2.up" ;;
start) touch "$2.up" ;;
*) echo "unexpected: $*" >&2; exit 64 ;;
esac
"#
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    fn units(f: &Fixture, names: &[&str], user: bool) -> Services {
        Services {
            control: Some(Control::Units {
                names: names.iter().map(|n| n.to_string()).collect(),
                user,
            }),
            systemctl: fake_systemctl(f),
            stop_timeout: Duration::from_secs(5),
            ..Services::default()
        }
    }

    fn log_lines(f: &Fixture) -> Vec<String> {
        let lines = f.read("log").lines().map(String::from).collect();
        fs::remove_file(f.path("log")).unwrap();
        lines
    }

    #[test]
    fn user_units_stop_in_reverse_and_start_in_order() {
        let f = Fixture::new();
        f.write("a.service.up", "");
        f.write("c.service.up", "");
        let services = units(&f, &["a.service", "b.service", "c.service"], true);
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        assert_eq!(stopped.names(), ["a.service", "c.service"]);
        assert_eq!(
            log_lines(&f),
            [
                "--user is-active --quiet a.service",
                "--user is-active --quiet b.service",
                "--user is-active --quiet c.service",
                "--user stop c.service",
                "--user stop a.service",
            ]
        );
        assert!(!f.path("a.service.up").exists());
        stopped.start().unwrap();
        assert_eq!(
            log_lines(&f),
            ["--user start a.service", "--user start c.service"]
        );
        assert!(f.path("a.service.up").exists());
        assert!(!f.path("b.service.up").exists(), "b did not run");
        assert!(f.path("c.service.up").exists());
    }

    #[test]
    fn system_units_are_controlled_without_user() {
        let f = Fixture::new();
        f.write("web.service.up", "");
        let services = units(&f, &["db.service", "web.service"], false);
        assert_eq!(services.running(&f.ctx(None)).unwrap(), ["web.service"]);
        services
            .stop_running(&f.ctx(None))
            .unwrap()
            .start()
            .unwrap();
        assert_eq!(
            log_lines(&f),
            [
                "is-active --quiet db.service",
                "is-active --quiet web.service",
                "is-active --quiet db.service",
                "is-active --quiet web.service",
                "stop web.service",
                "start web.service",
            ]
        );
    }

    #[test]
    fn a_unit_that_fails_to_stop_gets_the_others_started_again() {
        let f = Fixture::new();
        for unit in ["a", "b", "c"] {
            f.write(&format!("{unit}.up"), "");
        }
        f.write("b.fail", "");
        let services = units(&f, &["a", "b", "c"], true);
        let err = services.stop_running(&f.ctx(None)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("stopping user unit b of instance app failed"),
            "{msg}"
        );
        assert!(msg.contains("Job for b failed"), "{msg}");
        assert_eq!(
            log_lines(&f)[3..],
            [
                "--user stop c",
                "--user stop b",
                "--user is-active --quiet b",
                "--user start c",
            ]
        );
        for unit in ["a", "b", "c"] {
            assert!(f.path(&format!("{unit}.up")).exists(), "{unit} runs");
        }
    }

    #[test]
    fn a_cancel_between_stops_starts_the_stopped_units_again() {
        let f = Fixture::new();
        for unit in ["a", "b", "c"] {
            f.write(&format!("{unit}.up"), "");
        }
        f.write("b.wait", "");
        let services = units(&f, &["a", "b", "c"], false);
        let cancel = Cancel::default();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                while !f.path("b.stopping").exists() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                cancel.cancel();
                f.write("go", "");
            });
            services
                .stop_running(&f.ctx(Some(&cancel)))
                .map(|s| s.names().to_vec())
        });
        assert!(matches!(result, Err(Error::Interrupted)), "{result:?}");
        assert_eq!(
            log_lines(&f)[3..],
            ["stop c", "stop b", "start b", "start c"],
            "a was never stopped; b finished stopping, then both started again"
        );
        for unit in ["a", "b", "c"] {
            assert!(f.path(&format!("{unit}.up")).exists(), "{unit} runs");
        }
    }

    #[test]
    fn systemctl_that_cannot_reach_systemd_is_an_error_not_a_stopped_unit() {
        let f = Fixture::new();
        f.write("nobus", "");
        let services = units(&f, &["a.service"], true);
        let err = services.stop_running(&f.ctx(None)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("checking whether user unit a.service of instance app runs failed"),
            "{msg}"
        );
        assert!(msg.contains("Failed to connect to bus"), "{msg}");
        assert!(err.hint().unwrap().contains("enable-linger"), "{err:?}");
        assert_eq!(log_lines(&f), ["--user is-active --quiet a.service"]);
    }

    #[test]
    fn bad_unit_names_are_refused_before_anything_runs() {
        let f = Fixture::new();
        for names in [&["-a"][..], &["a b"], &[""], &["a", "a"], &[]] {
            let services = units(&f, names, false);
            let err = services.stop_running(&f.ctx(None)).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Usage, "{names:?}: {err}");
            assert!(err.to_string().contains("instance app"), "{err}");
        }
        assert_eq!(f.read("log"), "");
    }

    #[test]
    fn bad_container_names_are_refused() {
        let bad = |name: &str| {
            Control::Containers {
                names: vec![name.into()],
            }
            .validate()
            .is_err()
        };
        assert!(bad("-rm"));
        assert!(bad(""));
        assert!(!bad("gitea-db"));
    }

    fn podman() -> Podman {
        Podman {
            env: vec![(
                "CONTAINERS_CONF".into(),
                backstop_test_support::podman::containers_conf()
                    .display()
                    .to_string(),
            )],
            ..Default::default()
        }
    }

    #[test]
    fn containers_that_run_are_stopped_and_started_again() {
        use backstop_test_support::podman::{Container, containers_available, unique};
        if !containers_available() {
            return;
        }
        let f = Fixture::new();
        let running = Container::run("svc", None);
        let idle = Container::run("idle", None);
        let podman = podman();
        podman.container_stop(&idle.name, Duration::ZERO).unwrap();
        let services = Services {
            control: Some(Control::Containers {
                names: vec![idle.name.clone(), running.name.clone(), unique("absent")],
            }),
            // busybox's sleep ignores SIGTERM: kill it at once.
            stop_timeout: Duration::ZERO,
            podman,
            ..Services::default()
        };
        assert_eq!(
            services.running(&f.ctx(None)).unwrap(),
            [running.name.as_str()]
        );
        let stopped = services.stop_running(&f.ctx(None)).unwrap();
        assert_eq!(stopped.names(), [running.name.as_str()]);
        assert!(!running.running());
        stopped.start().unwrap();
        assert!(running.running());
        assert!(!idle.running(), "a stopped container stays stopped");
    }

    fn health(command: &str, timeout_ms: u64, interval_ms: u64) -> Services {
        Services {
            health: Some(Health {
                command: sh(command),
                timeout: Duration::from_millis(timeout_ms),
                interval: Duration::from_millis(interval_ms),
            }),
            ..Services::default()
        }
    }

    /// Counts its tries in `count`; says which try it is on stderr.
    const COUNT: &str = "n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); echo $n > count; \
                         echo \"try $n: not ready\" >&2";

    #[test]
    fn a_health_check_is_tried_until_it_passes() {
        let f = Fixture::new();
        let services = health(&format!("{COUNT}; test $n -ge 3"), 10_000, 10);
        assert!(matches!(services.health(&f.ctx(None)), Ok(Ok(()))));
        assert_eq!(f.read("count"), "3\n");
    }

    #[test]
    fn a_health_check_fails_after_its_timeout_quoting_the_last_try() {
        let f = Fixture::new();
        let services = health(&format!("{COUNT}; exit 7"), 300, 20);
        let started = Instant::now();
        let err = services.health(&f.ctx(None)).unwrap().unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(250));
        let tries = f.read("count");
        let tries = tries.trim();
        assert!(tries.parse::<u32>().unwrap() > 1, "{tries}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("the health check of instance app failed"),
            "{msg}"
        );
        assert!(msg.contains(&format!("({tries} tries)")), "{msg}");
        assert!(msg.contains(&format!("try {tries}: not ready")), "{msg}");
        assert!(msg.contains("exit status 7"), "{msg}");
        assert!(err.hint().is_some());
    }

    #[test]
    fn a_health_check_that_hangs_fails_at_its_timeout() {
        let f = Fixture::new();
        let services = health("sleep 5", 300, 20);
        let started = Instant::now();
        // One try, killed at the timeout (shorter here than MIN_HEALTH_TRY).
        let err = services.health(&f.ctx(None)).unwrap().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn a_health_check_that_cannot_run_or_is_cancelled_is_an_error() {
        let f = Fixture::new();
        let mut services = health("true", 300, 20);
        services.health.as_mut().unwrap().command = CommandLine::argv(["/no/such/check"]);
        let err = services.health(&f.ctx(None)).unwrap_err();
        assert!(err.to_string().contains("cannot start"), "{err}");

        let services = health("false", 10_000, 10);
        let cancel = Cancel::default();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                cancel.cancel();
            });
            services.health(&f.ctx(Some(&cancel)))
        });
        assert!(matches!(result, Err(Error::Interrupted)), "{result:?}");
    }
}
