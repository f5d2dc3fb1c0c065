//! The `backstop` command: parse, resolve settings, call one core operation,
//! render its result, exit with the documented code.

mod args;
mod progress;
mod render;
mod settings;

use std::io::Write;
use std::process::ExitCode;

use backstop_core::archive::BackupKind;
use backstop_core::catalog::{ListFilter, Status};
use backstop_core::ops::{
    backup, doctor, guard, init, key, list, migrate, prune, reconcile, recover, restore, rollback,
    show, verify,
};
use backstop_core::progress::Cancel;
use backstop_core::{Context, Error, ErrorKind};
use clap::{CommandFactory, Parser};
use console::style;

use args::{
    BackupArgs, BackupSeed, Cli, Command, CopyArgs, DeleteArgs, DoctorArgs, Global, GuardArgs,
    InitArgs, KeyCheckArgs, KeyCommand, KeyNewArgs, KindArg, ListArgs, MigrateArgs, ModeArg,
    PinArgs, PruneArgs, ReconcileArgs, RecoverArgs, RestoreArgs, RollbackArgs, ShowArgs, StatusArg,
    VerifyArgs,
};
use settings::Settings;

/// Exit codes (DESIGN.md).
mod code {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const WARNINGS: u8 = 3;
    pub const INTEGRITY: u8 = 4;
    pub const ROLLED_BACK: u8 = 5;
    pub const LOCKED: u8 = 6;
    pub const INTERRUPTED: u8 = 130;
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Usage => code::USAGE,
        ErrorKind::Integrity => code::INTEGRITY,
        ErrorKind::LockHeld => code::LOCKED,
        ErrorKind::Interrupted => code::INTERRUPTED,
        ErrorKind::RolledBack => code::ROLLED_BACK,
        _ => code::ERROR,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cancel = Cancel::default();
    let handler_cancel = cancel.clone();
    // The first interrupt asks the operation to stop cleanly; a second one
    // ends the process at once (any partial archive is an unnamed file that
    // the kernel removes; the catalog row is repaired by the next command).
    let _ = ctrlc::set_handler(move || {
        if handler_cancel.is_cancelled() {
            std::process::exit(i32::from(code::INTERRUPTED));
        }
        handler_cancel.cancel();
    });
    let json = cli.global.json;
    match run(cli, &cancel) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            report_error(&err, json);
            ExitCode::from(exit_code(err.kind()))
        }
    }
}

/// Prints `error: …`, its causes and a hint on stderr; with `--json`, also a
/// JSON document on stdout.
fn report_error(err: &Error, json: bool) {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let hint = err.hint();
    let mut text = format!("{} {err}\n", style("error:").for_stderr().red().bold());
    for c in &causes {
        text.push_str(&format!("  caused by: {c}\n"));
    }
    if let Some(h) = &hint {
        text.push_str(&format!(
            "{} {h}\n",
            style("hint:").for_stderr().cyan().bold()
        ));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
    if json {
        let doc = render::envelope(
            "error",
            serde_json::json!({
                "error": {
                    "message": err.to_string(),
                    "causes": causes,
                    "hint": hint,
                    "exit_code": exit_code(err.kind()),
                }
            }),
        );
        print_json(&doc);
    }
}

fn print_json(doc: &serde_json::Value) {
    let mut text = serde_json::to_string_pretty(doc).expect("JSON serialises");
    text.push('\n');
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn print_json_streamed(doc: &impl serde::Serialize) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if serde_json::to_writer_pretty(&mut out, doc).is_ok() {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

fn print_stdout(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn print_stderr(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

fn run(cli: Cli, cancel: &Cancel) -> Result<u8, Error> {
    let g = cli.global;
    match cli.command {
        Command::Backup(b) => match b.seed {
            None => cmd_backup(&g, &b.args, cancel),
            Some(BackupSeed::Create(a)) => cmd_backup(&g, &a, cancel),
            Some(BackupSeed::List(a)) => cmd_list(&g, &a, cancel),
            Some(BackupSeed::Info(a)) => cmd_show(&g, &a, cancel),
            Some(BackupSeed::Verify(a)) => cmd_verify(&g, &a, cancel),
            Some(BackupSeed::Restore(a)) => cmd_restore(&g, &a, cancel),
            Some(BackupSeed::Cleanup(a)) => cmd_prune(&g, &a, cancel),
            Some(BackupSeed::Reconcile(a)) => cmd_reconcile(&g, &a, cancel),
        },
        Command::List(a) => cmd_list(&g, &a, cancel),
        Command::Show(a) => cmd_show(&g, &a, cancel),
        Command::Verify(a) => cmd_verify(&g, &a, cancel),
        Command::Restore(a) => cmd_restore(&g, &a, cancel),
        Command::Recover(a) => cmd_recover(&g, &a, cancel),
        Command::Rollback(a) => cmd_rollback(&g, &a, cancel),
        Command::Prune(a) => cmd_prune(&g, &a, cancel),
        Command::Reconcile(a) => cmd_reconcile(&g, &a, cancel),
        Command::Migrate(a) => cmd_migrate(&g, &a, cancel),
        Command::Delete(a) => cmd_delete(&g, &a, cancel),
        Command::Copy(a) => cmd_copy(&g, &a, cancel),
        Command::Pin(a) => cmd_pin(&g, &a, true, cancel),
        Command::Unpin(a) => cmd_pin(&g, &a, false, cancel),
        Command::Guard(a) => cmd_guard(&g, &a, cancel),
        Command::Init(a) => cmd_init(&g, &a),
        Command::Doctor(a) => cmd_doctor(&g, &a, cancel),
        Command::Key(KeyCommand::New(a)) => cmd_key_new(&g, &a),
        Command::Key(KeyCommand::Check(a)) => cmd_key_check(&g, &a, cancel),
        Command::Completions(a) => {
            clap_complete::generate(
                a.shell,
                &mut Cli::command(),
                "backstop",
                &mut std::io::stdout(),
            );
            Ok(code::OK)
        }
    }
}

/// Runs `f` with a context whose progress is drawn when appropriate.
fn with_context<T>(
    g: &Global,
    settings: &Settings,
    cancel: &Cancel,
    f: impl FnOnce(&Context<'_>) -> Result<T, Error>,
) -> Result<T, Error> {
    let reporter = progress::Reporter::new(g.quiet);
    let ctx = Context {
        layout: &settings.layout,
        config: &settings.config,
        progress: &reporter,
        cancel,
        keys: &settings.keys,
    };
    f(&ctx)
}

fn cmd_backup(g: &Global, a: &BackupArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let request = settings::backup_request(a, &settings, g.json)?;
    if a.dry_run {
        let plan = with_context(g, &settings, cancel, |ctx| backup::plan(ctx, &request))?;
        if g.json {
            print_json(&render::envelope(
                "backup",
                serde_json::json!({ "dry_run": true, "plan": plan }),
            ));
        } else {
            print_stdout(&render::plan(&plan, g.quiet, g.verbose > 0));
            let text = render::warnings(&plan.warnings, g.verbose > 0);
            print_stderr(&text);
            if !g.quiet {
                print_stderr(&render::notes(&plan.notes));
            }
        }
        return Ok(code::OK);
    }
    let to_stdout = settings::is_stdout(a.output.as_ref());
    let report = with_context(g, &settings, cancel, |ctx| backup::backup(ctx, request))?;
    if g.json {
        print_json(&render::envelope(
            "backup",
            serde_json::json!({ "dry_run": false, "report": report }),
        ));
    } else if !g.quiet {
        let text = render::backup(&report, g.verbose > 0);
        // With the archive on stdout, the summary must not mix into it.
        if to_stdout {
            print_stderr(&text);
        } else {
            print_stdout(&text);
        }
    }
    print_stderr(&render::warnings(&report.warnings, g.verbose > 0));
    if !g.quiet {
        print_stderr(&render::notes(&report.notes));
    }
    for e in &report.copy_errors {
        print_stderr(&format!(
            "warning: the backup was made, but a copy failed: {e}\n  hint: `backstop copy {} --to STORE` tries again\n",
            report.backup.id
        ));
    }
    Ok(
        if report.warnings.iter().any(|w| w.is_incomplete()) || !report.copy_errors.is_empty() {
            code::WARNINGS
        } else {
            code::OK
        },
    )
}

fn cmd_key_new(g: &Global, a: &KeyNewArgs) -> Result<u8, Error> {
    let out = a.out.as_deref().map(backstop_core::config::absolute);
    let key = key::new_key(out.as_deref())?;
    if g.json {
        print_json(&render::envelope(
            "key-new",
            serde_json::json!({ "key": key }),
        ));
    } else {
        print_stdout(&render::key_new(&key));
    }
    print_stderr(&render::key_warning(&key));
    Ok(code::OK)
}

fn cmd_key_check(g: &Global, a: &KeyCheckArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    let instance = a
        .instance
        .as_deref()
        .map(|n| settings.config.instance(n).cloned())
        .transpose()?;
    let check = with_context(g, &settings, cancel, |ctx| {
        key::check_keys(ctx, instance.as_ref(), &a.recipients)
    })?;
    if g.json {
        print_json(&render::envelope(
            "key-check",
            serde_json::json!({ "ok": check.all_open(), "check": check }),
        ));
    } else {
        print_stdout(&render::key_check(&check));
    }
    if check.all_open() {
        return Ok(code::OK);
    }
    if !g.json {
        print_stderr(&format!(
            "{} an identity that does not open the test archive will not open your backups \
             either: find the identity of one of the recipients above\n",
            style("hint:").for_stderr().cyan().bold()
        ));
    }
    Ok(code::USAGE)
}

fn cmd_list(g: &Global, a: &ListArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let filter = ListFilter {
        instance: a.instance.clone(),
        reason: a.reason.clone(),
        status: a.status.map(|s| match s {
            StatusArg::Creating => Status::Creating,
            StatusArg::Available => Status::Available,
            StatusArg::Failed => Status::Failed,
            StatusArg::Missing => Status::Missing,
            StatusArg::Corrupt => Status::Corrupt,
        }),
        version: a.app_version.clone(),
        kind: a.kind.map(|k| match k {
            KindArg::Manual => BackupKind::Manual,
            KindArg::Automatic => BackupKind::Automatic,
        }),
        limit: a.limit,
    };
    let listing = with_context(g, &settings, cancel, |ctx| list::list(ctx, &filter))?;
    if g.json {
        print_json(&render::envelope(
            "list",
            serde_json::json!({ "backups": listing.backups, "untracked": listing.untracked }),
        ));
    } else {
        print_stdout(&render::list(&listing, filter.narrows()));
    }
    Ok(code::OK)
}

fn cmd_show(g: &Global, a: &ShowArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    let report = with_context(g, &settings, cancel, |ctx| show::show(ctx, &a.target))?;
    if g.json {
        print_json(&render::envelope(
            "show",
            serde_json::json!({ "show": report }),
        ));
    } else {
        print_stdout(&render::show(&report));
    }
    Ok(code::OK)
}

fn cmd_verify(g: &Global, a: &VerifyArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    let targets = if a.all {
        verify::VerifyTargets::All
    } else {
        verify::VerifyTargets::Named(a.targets.clone())
    };
    let wait = a.wait.as_deref().map(settings::parse_wait).transpose()?;
    let verified = with_context(g, &settings, cancel, |ctx| {
        verify::verify(ctx, &targets, wait)
    })?;
    let reports = &verified.archives;
    let failed = reports.iter().any(|r| !r.ok);
    let warned = reports.iter().any(|r| !r.warnings.is_empty());
    if g.json {
        print_json(&render::envelope(
            "verify",
            serde_json::json!({
                "ok": !failed,
                "archives": reports,
                "skipped_missing": verified.skipped_missing,
            }),
        ));
    } else {
        print_stdout(&render::verify(&verified));
    }
    if failed {
        if !g.json {
            print_stderr(&format!(
                "{} do not restore from an archive that failed verification; `backstop list` shows the others\n",
                style("hint:").for_stderr().cyan().bold()
            ));
        }
        return Ok(code::INTEGRITY);
    }
    Ok(if warned { code::WARNINGS } else { code::OK })
}

fn cmd_restore(g: &Global, a: &RestoreArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    let target = match &a.backup {
        Some(t) => t.clone(),
        None => {
            let which = Which::Restore(a.instance.as_deref());
            choose_backup(g, &settings, cancel, which, a.common.yes)?.id
        }
    };
    let mut request = restore::RestoreRequest::new(target);
    request.dest = a.dest.clone();
    request.mode = a.mode.map(|m| match m {
        ModeArg::Exact => restore::Mode::Exact,
        ModeArg::Merge => restore::Mode::Merge,
        ModeArg::Safe => restore::Mode::Safe,
    });
    request.only = a.only.clone();
    request.excludes = a.excludes.clone();
    request.dry_run = a.common.dry_run;
    request.pre_backup = !a.common.no_pre_backup;
    request.backup_message = a.common.backup_message.clone();
    request.instance = a.instance.clone();
    request.force = a.force;
    request.wait = a
        .common
        .wait
        .as_deref()
        .map(settings::parse_wait)
        .transpose()?;
    // A person asked sees every change first, as a dry run shows them.
    request.preview = will_ask(a.common.yes) && !request.dry_run;
    let mut confirm = confirmer(a.common.yes);
    let outcome = with_context(g, &settings, cancel, |ctx| {
        restore::restore(ctx, &request, &mut confirm)
    })?;
    if g.json {
        // Streamed: a plan lists every changed path.
        print_json_streamed(&render::Streamed {
            command: "restore",
            key: "restore",
            value: &outcome,
        });
    } else if !g.quiet || matches!(outcome, restore::RestoreOutcome::DryRun { .. }) {
        // A dry run's plan is its result: -q leaves its summary line.
        print_stdout(&render::restore(&outcome, g.quiet, g.verbose > 0));
    }
    print_cd_note(g, &outcome);
    if let restore::RestoreOutcome::Restored(report) = &outcome
        && !report.warnings.is_empty()
    {
        print_warnings(&report.warnings);
        return Ok(code::WARNINGS);
    }
    Ok(code::OK)
}

fn cmd_recover(g: &Global, a: &RecoverArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let wait = a.wait.as_deref().map(settings::parse_wait).transpose()?;
    let reports = with_context(g, &settings, cancel, |ctx| {
        let instances = match &a.instance {
            Some(i) => vec![i.clone()],
            None => recover::pending(ctx)?,
        };
        instances
            .iter()
            .map(|i| recover::recover(ctx, i, wait))
            .collect::<Result<Vec<_>, Error>>()
    })?;
    if g.json {
        print_json(&render::envelope(
            "recover",
            serde_json::json!({ "recovered": reports }),
        ));
    } else {
        print_stdout(&render::recover(&reports));
    }
    Ok(code::OK)
}

/// The command asking which backup, and the instance it was given.
#[derive(Clone, Copy)]
enum Which<'a> {
    Restore(Option<&'a str>),
    Rollback(Option<&'a str>),
}

/// The backup a restore or rollback given none acts on: picked by number
/// from the instance's candidates on a terminal; elsewhere (or with
/// `--yes`, which answers no such question) a usage error showing them.
fn choose_backup(
    g: &Global,
    settings: &Settings,
    cancel: &Cancel,
    which: Which<'_>,
    yes: bool,
) -> Result<backstop_core::catalog::BackupRecord, Error> {
    let (command, named, pre_upgrade) = match which {
        Which::Restore(i) => ("restore", i, false),
        Which::Rollback(i) => ("rollback", i, true),
    };
    let (instance, rows) = with_context(g, settings, cancel, |ctx| {
        let instance = rollback::pick_instance(ctx, named)?;
        let rows = rollback::candidates(ctx, &instance, pre_upgrade)?;
        Ok((instance, rows))
    })?;
    let list = render::candidates(&rows);
    if !will_ask(yes) {
        return Err(Error::usage(
            format!(
                "which backup of {instance}? newest first:\n{}",
                list.trim_end()
            ),
            Some(format!(
                "name it: `backstop {command} {}` restores the newest",
                rows[0].id
            )),
        ));
    }
    print_stderr(&format!(
        "Backups of {instance}, newest first:\n{list}Which one to {}? [1-{}] ",
        if command == "rollback" {
            "roll back to"
        } else {
            command
        },
        rows.len()
    ));
    let answer = console::Term::stderr().read_line().unwrap_or_default();
    match render::pick(&answer, rows.len()) {
        Some(i) => Ok(rows[i].clone()),
        None => Err(Error::usage(
            format!(
                "`{}` is not a number from 1 to {}",
                answer.trim(),
                rows.len()
            ),
            Some(format!(
                "run `backstop {command}` again, or name the backup"
            )),
        )),
    }
}

/// Whether the restore question will be asked: stdin and stderr are
/// terminals, and `--yes` was not given.
fn will_ask(yes: bool) -> bool {
    !yes && console::Term::stderr().is_term() && std::io::IsTerminal::is_terminal(&std::io::stdin())
}

/// Asks the restore question where a person can answer it (stdin and
/// stderr are terminals, and `--yes` was not given); elsewhere the answer is
/// yes.
fn confirmer(yes: bool) -> impl FnMut(&restore::RestorePlan) -> bool {
    let interactive = will_ask(yes);
    move |plan: &restore::RestorePlan| {
        if !interactive {
            return true;
        }
        print_stderr(&render::restore_question(plan));
        let answer = console::Term::stderr().read_line().unwrap_or_default();
        matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
    }
}

/// Tells a person whose shell sits in a directory the restore moved away
/// (the backup has no directory there) that it is gone: the shell still
/// shows it, empty.
fn print_cd_note(g: &Global, outcome: &restore::RestoreOutcome) {
    if let restore::RestoreOutcome::Restored(report) = outcome
        && let Some(dir) = &report.replaced_cwd
        && !g.json
    {
        print_stderr(&format!(
            "{} this shell's current directory was removed by the restore (the backup \
             has no directory at {}): `cd` out of it\n",
            style("note:").for_stderr().cyan().bold(),
            backstop_core::command::shell_quote(dir)
        ));
    }
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        print_stderr(&format!(
            "{} {w}\n",
            style("warning:").for_stderr().yellow().bold()
        ));
    }
}

fn cmd_rollback(g: &Global, a: &RollbackArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    // On a terminal a person picks; elsewhere the newest, as documented.
    let backup = match &a.version {
        None if will_ask(a.common.yes) => {
            let which = Which::Rollback(a.instance.as_deref());
            Some(choose_backup(g, &settings, cancel, which, a.common.yes)?.id)
        }
        _ => None,
    };
    let request = rollback::RollbackRequest {
        instance: a.instance.clone(),
        version: a.version.clone(),
        backup,
        dry_run: a.common.dry_run,
        pre_backup: !a.common.no_pre_backup,
        backup_message: a.common.backup_message.clone(),
        wait: a
            .common
            .wait
            .as_deref()
            .map(settings::parse_wait)
            .transpose()?,
    };
    let mut confirm = confirmer(a.common.yes);
    let (backup, outcome) = with_context(g, &settings, cancel, |ctx| {
        rollback::rollback(ctx, &request, &mut confirm)
    })?;
    if g.json {
        print_json(&render::envelope(
            "rollback",
            serde_json::json!({ "backup": backup, "restore": outcome }),
        ));
    } else if !g.quiet || matches!(outcome, restore::RestoreOutcome::DryRun { .. }) {
        print_stdout(&render::rollback(&backup, &outcome, g.quiet, g.verbose > 0));
    }
    print_cd_note(g, &outcome);
    if let restore::RestoreOutcome::Restored(report) = &outcome
        && !report.warnings.is_empty()
    {
        print_warnings(&report.warnings);
        return Ok(code::WARNINGS);
    }
    Ok(code::OK)
}

fn cmd_guard(g: &Global, a: &GuardArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    let instance = settings::resolve_instance(&settings.config, std::path::Path::new(&a.instance))?;
    let request = guard::GuardRequest {
        instance,
        reason: a.reason.clone(),
        to_version: a.to_version.clone(),
        rollback_on_failure: a.rollback_on_failure,
        no_backup: a.no_backup,
        message: a.message.clone(),
        command: a.command.clone(),
        wait: a.wait.as_deref().map(settings::parse_wait).transpose()?,
    };
    let report = with_context(g, &settings, cancel, |ctx| guard::guard(ctx, &request))?;
    if g.json {
        print_json(&render::envelope(
            "guard",
            serde_json::json!({ "guard": report }),
        ));
    } else {
        // The command owned the terminal; the verdict goes to stderr.
        print_stderr(&render::guard(&report));
    }
    Ok(match report.outcome {
        guard::GuardOutcome::Succeeded => code::OK,
        guard::GuardOutcome::RolledBack => code::ROLLED_BACK,
        guard::GuardOutcome::Failed => code::ERROR,
    })
}

fn cmd_init(g: &Global, a: &InitArgs) -> Result<u8, Error> {
    let path = match &g.config {
        Some(p) => p.clone(),
        None => init::default_path(),
    };
    let report = init::init(a.name.as_deref(), &a.root, &path, a.print)?;
    if g.json {
        print_json(&render::envelope(
            "init",
            serde_json::json!({ "init": report }),
        ));
    } else if a.print {
        print_stdout(&report.text);
    } else if !g.quiet {
        print_stdout(&render::init(&report));
    }
    Ok(code::OK)
}

fn cmd_doctor(g: &Global, a: &DoctorArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let report = with_context(g, &settings, cancel, |ctx| {
        doctor::doctor(ctx, a.instance.as_deref())
    })?;
    if g.json {
        print_json(&render::envelope(
            "doctor",
            serde_json::json!({ "doctor": report }),
        ));
    } else {
        print_stdout(&render::doctor(&report, g.verbose > 0));
    }
    Ok(match report.worst {
        doctor::Level::Ok => code::OK,
        doctor::Level::Warning => code::WARNINGS,
        doctor::Level::Error => code::ERROR,
    })
}

fn cmd_prune(g: &Global, a: &PruneArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let rules = prune::Retention {
        keep: a.keep,
        keep_manual: a.keep_manual,
        keep_automatic: a.keep_automatic,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within: a
            .keep_within
            .as_deref()
            .map(|t| {
                backstop_core::time::parse_duration(t)
                    .map_err(|e| Error::usage(format!("--keep-within: {e}"), None))
            })
            .transpose()?,
    };
    let wait = a.wait.as_deref().map(settings::parse_wait).transpose()?;
    let scope = prune::Scope {
        store: a.store.clone(),
        all_hosts: a.all_hosts,
    };
    let plans = with_context(g, &settings, cancel, |ctx| {
        let instances = match &a.instance {
            Some(i) => {
                list::require_known(ctx, i)?;
                vec![i.clone()]
            }
            None => list::instances(ctx)?,
        };
        instances
            .iter()
            .map(|i| prune::prune(ctx, i, (&rules, &scope), a.dry_run, wait))
            .collect::<Result<Vec<_>, Error>>()
    })?;
    if g.json {
        print_json(&render::envelope(
            "prune",
            serde_json::json!({ "dry_run": a.dry_run, "prune": plans }),
        ));
    } else if !g.quiet || a.dry_run {
        print_stdout(&render::prune(&plans, g.quiet));
    }
    Ok(code::OK)
}

fn cmd_delete(g: &Global, a: &DeleteArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let wait = a.wait.as_deref().map(settings::parse_wait).transpose()?;
    let deleted = with_context(g, &settings, cancel, |ctx| {
        prune::delete(ctx, &a.ids, a.with_dependants, wait)
    })?;
    if g.json {
        print_json(&render::envelope(
            "delete",
            serde_json::json!({ "deleted": deleted }),
        ));
    } else if !g.quiet {
        for d in &deleted {
            print_stdout(&format!(
                "Deleted {}{}\n",
                d.id,
                d.location
                    .as_ref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(code::OK)
}

fn cmd_copy(g: &Global, a: &CopyArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    let wait = a.wait.as_deref().map(settings::parse_wait).transpose()?;
    let report = with_context(g, &settings, cancel, |ctx| {
        backstop_core::ops::copy::copy(ctx, (&a.ids, a.all), &a.to, wait)
    })?;
    if g.json {
        print_json(&render::envelope(
            "copy",
            serde_json::json!({ "copy": report }),
        ));
    } else if !g.quiet {
        print_stdout(&render::copied(&report));
    }
    Ok(code::OK)
}

fn cmd_pin(g: &Global, a: &PinArgs, pinned: bool, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let record = with_context(g, &settings, cancel, |ctx| {
        prune::set_pinned(ctx, &a.id, pinned)
    })?;
    if g.json {
        print_json(&render::envelope(
            if pinned { "pin" } else { "unpin" },
            serde_json::json!({ "backup": record }),
        ));
    } else if !g.quiet {
        print_stdout(&format!(
            "{} {}{}\n",
            if pinned { "Pinned" } else { "Unpinned" },
            record.id,
            if pinned {
                ": no retention rule will remove it"
            } else {
                ": the retention rules decide about it again"
            }
        ));
    }
    Ok(code::OK)
}

fn cmd_reconcile(g: &Global, a: &ReconcileArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load_with_identities(g, &a.identity)?;
    let wait = a.wait.as_deref().map(settings::parse_wait).transpose()?;
    let report = with_context(g, &settings, cancel, |ctx| {
        // In another store (a bucket on a fresh machine) an instance may
        // be known to nothing here yet: that is what reconcile finds out.
        if let (Some(name), None) = (a.instance(), a.store.as_deref()) {
            list::require_known(ctx, name)?;
        }
        reconcile::reconcile(ctx, a.instance(), a.store.as_deref(), a.apply, wait)
    })?;
    if g.json {
        print_json(&render::envelope(
            "reconcile",
            serde_json::json!({ "reconcile": report }),
        ));
    } else {
        print_stdout(&render::reconcile(&report));
    }
    // Left as it was: drift not applied, or an archive nothing can adopt.
    let unresolved = report
        .findings
        .iter()
        .any(|f| !report.applied || f.action.is_none());
    Ok(if unresolved { code::WARNINGS } else { code::OK })
}

fn cmd_migrate_to_store(
    g: &Global,
    settings: &Settings,
    name: &str,
    wait: Option<std::time::Duration>,
    cancel: &Cancel,
) -> Result<u8, Error> {
    let report = with_context(g, settings, cancel, |ctx| {
        backstop_core::ops::migrate_store::migrate_to_store(ctx, name, wait)
    })?;
    if g.json {
        print_json(&render::envelope(
            "migrate",
            serde_json::json!({ "migrate": report }),
        ));
    } else if !g.quiet {
        let mut text = format!(
            "Moved {} backups to {} ({}, {}), each read back and verified there\n",
            report.moved.len(),
            report.to,
            report.url,
            render::bytes(report.bytes)
        );
        if !report.new_backups_go_there {
            text.push_str(&format!(
                "  new backups still go to the home's store: set `store = \"{}\"` in [defaults] \
                 (or in each instance) to send them there too\n",
                report.to
            ));
        }
        print_stdout(&text);
    }
    Ok(code::OK)
}

fn cmd_migrate(g: &Global, a: &MigrateArgs, cancel: &Cancel) -> Result<u8, Error> {
    let settings = Settings::load(g)?;
    let wait = a.wait.as_deref().map(settings::parse_wait).transpose()?;
    if let Some(name) =
        a.to.to_str()
            .filter(|n| settings.config.stores.defs().contains_key(*n))
    {
        return cmd_migrate_to_store(g, &settings, name, wait, cancel);
    }
    let report = with_context(g, &settings, cancel, |ctx| {
        migrate::migrate(ctx, &a.to, wait)
    })?;
    if g.json {
        print_json(&render::envelope(
            "migrate",
            serde_json::json!({ "migrate": report }),
        ));
    } else if !g.quiet {
        print_stdout(&format!(
            "{} the store from {} to {}: {} archives ({}, {})\n  {} now says `store = \"{}\"`\n",
            if report.resumed {
                "Finished moving"
            } else {
                "Moved"
            },
            report.from,
            report.to,
            report.archives,
            render::bytes(report.bytes),
            if report.linked {
                "linked: same filesystem"
            } else {
                "copied and checked against their sidecars"
            },
            report.config,
            report.to
        ));
    }
    Ok(code::OK)
}
