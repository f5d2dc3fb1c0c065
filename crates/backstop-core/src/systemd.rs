//! The systemd units of a quadlet deployment: which ran when a backup was
//! made, and bringing them back up after a restore put their unit files
//! back — or, where systemd cannot be used, the command that does.
//!
//! systemd is used only when it runs this machine (`/run/systemd/system`
//! exists, as `sd_booted()` checks) and `systemctl` can reach the service
//! manager of the scope; otherwise nothing is asked or started, and the
//! report says why.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::archive::format::QuadletUnits;
use crate::command::{CommandEnv, CommandLine, Run, shell_quote};
use crate::error::Result;

/// How long `systemctl` may take to answer a question or reload.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `systemctl start` may take.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// Which service manager a deployment's units belong to: the user's
/// (`systemctl --user`, rootless quadlets) or the system's (root's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    System,
}

impl Scope {
    /// The scope of this process's quadlet units: root's are system units,
    /// everyone else's user units (as podman's quadlet generator places
    /// them).
    pub fn of_this_process() -> Scope {
        if rustix::process::geteuid().is_root() {
            Scope::System
        } else {
            Scope::User
        }
    }

    /// The `systemctl` arguments that select the scope.
    fn args(self) -> &'static [&'static str] {
        match self {
            Scope::User => &["--user"],
            Scope::System => &[],
        }
    }
}

/// The shell command that loads unit files again and starts `units`:
/// `systemctl [--user] daemon-reload && systemctl [--user] start UNIT…`.
pub fn start_command(scope: Scope, units: &[String]) -> String {
    let systemctl = |rest: &str| match scope {
        Scope::User => format!("systemctl --user {rest}"),
        Scope::System => format!("systemctl {rest}"),
    };
    let names: Vec<String> = units.iter().map(|u| shell_quote(u)).collect();
    format!(
        "{} && {}",
        systemctl("daemon-reload"),
        systemctl(&format!("start {}", names.join(" ")))
    )
}

/// A service manager backstop may use.
#[derive(Debug, Clone)]
pub struct Systemd {
    scope: Scope,
    /// The `systemctl` program (replaced in tests).
    program: PathBuf,
}

/// Where systemd says it runs the machine.
const BOOTED_MARK: &str = "/run/systemd/system";

impl Systemd {
    /// The service manager of `scope`, when it can be used: systemd runs
    /// this machine and `systemctl` reaches the manager.
    ///
    /// # Errors
    ///
    /// `Err` says, in words, why it cannot be used.
    pub fn detect(scope: Scope) -> std::result::Result<Systemd, String> {
        Systemd::detect_with(
            scope,
            PathBuf::from(BOOTED_MARK),
            PathBuf::from("systemctl"),
        )
    }

    /// [`Systemd::detect`] with the booted mark and the program given.
    fn detect_with(
        scope: Scope,
        mark: PathBuf,
        program: PathBuf,
    ) -> std::result::Result<Systemd, String> {
        if !mark.is_dir() {
            return Err(format!(
                "systemd does not run this machine: there is no {}",
                mark.display()
            ));
        }
        let systemd = Systemd { scope, program };
        let line = systemd.line(&["show", "--property=Version"]);
        let env = CommandEnv::default();
        let mut run = Run::new("asking systemd for its version", &env);
        run.timeout = Some(ASK_TIMEOUT);
        match run.output(&line) {
            Ok(_) => Ok(systemd),
            Err(e) => Err(format!(
                "`{line}` cannot reach the service manager ({})",
                crate::ops::backup::error_chain(&e)
            )),
        }
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// `systemctl [--user] ARGS…`.
    fn line(&self, args: &[&str]) -> CommandLine {
        let mut argv = vec![self.program.to_string_lossy().into_owned()];
        argv.extend(self.scope.args().iter().map(|a| a.to_string()));
        argv.extend(args.iter().map(|a| a.to_string()));
        CommandLine::Argv(argv)
    }

    /// Those of `units` that are active now.
    ///
    /// # Errors
    ///
    /// Fails when `systemctl` cannot run or its answers cannot be read.
    pub fn active(&self, units: &[String]) -> Result<Vec<String>> {
        let mut active = Vec::new();
        let env = CommandEnv::default();
        for unit in units {
            let line = self.line(&["is-active", "--quiet", "--", unit]);
            let what = format!("asking systemd whether {unit} is active");
            let mut run = Run::new(&what, &env);
            run.timeout = Some(ASK_TIMEOUT);
            if run.succeeds(&line)? {
                active.push(unit.clone());
            }
        }
        Ok(active)
    }

    /// `systemctl [--user] daemon-reload`: the unit files put back are
    /// read, and quadlet's generator runs again.
    ///
    /// # Errors
    ///
    /// Fails when the reload fails, quoting systemctl.
    pub fn daemon_reload(&self) -> Result<()> {
        let env = CommandEnv::default();
        let mut run = Run::new("reloading systemd's units", &env);
        run.timeout = Some(ASK_TIMEOUT);
        run.output(&self.line(&["daemon-reload"])).map(drop)
    }

    /// `systemctl [--user] start UNIT`.
    ///
    /// # Errors
    ///
    /// Fails when the unit does not start, quoting systemctl.
    pub fn start(&self, unit: &str) -> Result<()> {
        let env = CommandEnv::default();
        let what = format!("starting {unit}");
        let mut run = Run::new(&what, &env);
        run.timeout = Some(START_TIMEOUT);
        run.output(&self.line(&["start", "--", unit])).map(drop)
    }
}

/// What a restore did about the systemd services of the quadlet files it
/// put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitsReport {
    pub scope: Scope,
    /// The services to bring up: those that ran when the backup was made
    /// and whose unit files are back (every one the files give when which
    /// ran is not known).
    pub units: Vec<String>,
    /// Whether `units` are those that ran at backup time.
    pub ran_at_backup: bool,
    /// Those started (after `systemctl daemon-reload`).
    pub started: Vec<String>,
    /// Those that failed to start, with systemctl's words.
    pub failed: Vec<UnitFailure>,
    /// Why none was started, when none was tried.
    pub not_started: Option<String>,
    /// The command that starts what was not started; `None` when all were.
    pub command: Option<String>,
}

/// A service that did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitFailure {
    pub unit: String,
    pub error: String,
}

/// Brings up again the services of `recorded` (the backup's) that the
/// quadlet files put back give (`now`): reloads systemd and starts them
/// when it can be used (`detect`), else says why not and how. `None` when
/// there is nothing to start.
pub fn bring_up(
    recorded: &QuadletUnits,
    now: &[String],
    detect: impl FnOnce(Scope) -> std::result::Result<Systemd, String>,
) -> Option<UnitsReport> {
    let scope = recorded.scope;
    let units: Vec<String> = match &recorded.active {
        Some(active) => now.iter().filter(|u| active.contains(u)).cloned().collect(),
        None => now.to_vec(),
    };
    if units.is_empty() {
        return None;
    }
    let mut report = UnitsReport {
        scope,
        command: Some(start_command(scope, &units)),
        units,
        ran_at_backup: recorded.active.is_some(),
        started: Vec::new(),
        failed: Vec::new(),
        not_started: None,
    };
    if !report.ran_at_backup {
        report.not_started = Some(format!(
            "which of them ran when the backup was made is not known ({})",
            recorded
                .unknown
                .as_deref()
                .unwrap_or("systemd could not be asked")
        ));
        return Some(report);
    }
    let reloaded = detect(scope).and_then(|systemd| {
        systemd
            .daemon_reload()
            .map(|()| systemd)
            .map_err(|e| crate::ops::backup::error_chain(&e))
    });
    let systemd = match reloaded {
        Ok(systemd) => systemd,
        Err(why) => {
            report.not_started = Some(why);
            return Some(report);
        }
    };
    for unit in &report.units {
        match systemd.start(unit) {
            Ok(()) => report.started.push(unit.clone()),
            Err(e) => report.failed.push(UnitFailure {
                unit: unit.clone(),
                error: crate::ops::backup::error_chain(&e),
            }),
        }
    }
    let failed: Vec<String> = report.failed.iter().map(|f| f.unit.clone()).collect();
    report.command = (!failed.is_empty()).then(|| start_command(scope, &failed));
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_start_command_reloads_then_starts_every_unit() {
        let units = vec!["web.service".to_string(), "db-pod.service".to_string()];
        assert_eq!(
            start_command(Scope::User, &units),
            "systemctl --user daemon-reload && systemctl --user start web.service db-pod.service"
        );
        assert_eq!(
            start_command(Scope::System, &units[..1]),
            "systemctl daemon-reload && systemctl start web.service"
        );
        // A unit name with a character the shell reads is quoted.
        assert_eq!(
            start_command(Scope::System, &["a b.service".to_string()]),
            "systemctl daemon-reload && systemctl start 'a b.service'"
        );
    }

    /// A fake `systemctl` in `dir` logging its arguments to `dir/log`;
    /// `UNIT.up` files say which units are active; `nobus` makes every call
    /// fail as without a service manager.
    fn fake(dir: &std::path::Path) -> PathBuf {
        let script = dir.join("systemctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncd '{}'\necho \"$*\" >> log\n\
                 if [ -e nobus ]; then echo 'Failed to connect to bus' >&2; exit 1; fi\n\
                 [ \"$1\" = --user ] && shift\n\
                 case \"$1\" in\n\
                 show) echo Version=252 ;;\n\
                 is-active) test -e \"$4.up\" || exit 3 ;;\n\
                 start) touch \"$3.up\" ;;\n\
                 daemon-reload) ;;\n\
                 *) exit 64 ;;\nesac\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    fn recorded(active: Option<&[&str]>) -> QuadletUnits {
        QuadletUnits {
            scope: Scope::User,
            units: vec!["db-pod.service".into(), "web.service".into()],
            active: active.map(|a| a.iter().map(|u| u.to_string()).collect()),
            unknown: active.is_none().then(|| "no systemd".into()),
        }
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn without_systemd_the_units_that_ran_are_named_with_their_command() {
        let now = strings(&["db-pod.service", "extra.service", "web.service"]);
        let report = bring_up(
            &recorded(Some(&["web.service", "gone.service"])),
            &now,
            |_| Err("systemd does not run this machine".into()),
        )
        .unwrap();
        assert_eq!(report.units, ["web.service"]);
        assert!(report.ran_at_backup && report.started.is_empty());
        assert_eq!(
            report.not_started.as_deref(),
            Some("systemd does not run this machine")
        );
        assert_eq!(
            report.command.as_deref(),
            Some("systemctl --user daemon-reload && systemctl --user start web.service")
        );
        // Nothing ran at backup time: nothing to bring up.
        assert_eq!(
            bring_up(&recorded(Some(&[])), &now, |_| unreachable!()),
            None
        );
    }

    #[test]
    fn when_which_ran_is_unknown_nothing_is_started() {
        let now = strings(&["db-pod.service", "web.service"]);
        let report = bring_up(&recorded(None), &now, |_| unreachable!()).unwrap();
        assert!(!report.ran_at_backup);
        assert_eq!(report.units, now);
        assert!(
            report
                .not_started
                .unwrap()
                .contains("is not known (no systemd)")
        );
        assert_eq!(
            report.command.as_deref(),
            Some(
                "systemctl --user daemon-reload && systemctl --user start db-pod.service web.service"
            )
        );
    }

    #[test]
    fn with_systemd_the_units_are_reloaded_and_started() {
        let dir = tempfile::tempdir().unwrap();
        let program = fake(dir.path());
        let mark = dir.path().join("booted");
        std::fs::create_dir(&mark).unwrap();
        let now = strings(&["db-pod.service", "web.service"]);
        let report = bring_up(
            &recorded(Some(&["db-pod.service", "web.service"])),
            &now,
            |scope| Systemd::detect_with(scope, mark, program),
        )
        .unwrap();
        assert_eq!(report.started, now);
        assert_eq!(report.command, None);
        assert!(dir.path().join("web.service.up").exists());
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(
            log.contains("--user daemon-reload\n--user start -- db-pod.service"),
            "{log}"
        );
    }

    #[test]
    fn systemd_is_used_only_when_it_runs_the_machine_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let program = fake(dir.path());
        let mark = dir.path().join("run-systemd-system");
        let why = Systemd::detect_with(Scope::User, mark.clone(), program.clone()).unwrap_err();
        assert!(why.contains("does not run this machine"), "{why}");
        assert!(
            !dir.path().join("log").exists(),
            "systemctl ran without systemd"
        );

        std::fs::create_dir(&mark).unwrap();
        std::fs::write(dir.path().join("nobus"), "").unwrap();
        let why = Systemd::detect_with(Scope::User, mark.clone(), program.clone()).unwrap_err();
        assert!(why.contains("cannot reach the service manager"), "{why}");

        std::fs::remove_file(dir.path().join("nobus")).unwrap();
        let systemd = Systemd::detect_with(Scope::User, mark, program).unwrap();
        std::fs::write(dir.path().join("web.service.up"), "").unwrap();
        let units = vec!["web.service".to_string(), "db-pod.service".to_string()];
        assert_eq!(systemd.active(&units).unwrap(), ["web.service"]);
        systemd.daemon_reload().unwrap();
        systemd.start("db-pod.service").unwrap();
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            [
                // Asked without a bus, then with one.
                "--user show --property=Version",
                "--user show --property=Version",
                "--user is-active --quiet -- web.service",
                "--user is-active --quiet -- db-pod.service",
                "--user daemon-reload",
                "--user start -- db-pod.service",
            ]
        );
    }
}
