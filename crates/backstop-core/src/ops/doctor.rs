//! `doctor [INSTANCE]`: checks what backstop depends on and says what is
//! wrong, each finding with the next step. Reads only: it changes nothing,
//! runs no service control, and takes no lock.
//!
//! A config that does not parse never gets here: loading it fails first
//! with the file, line and key (exit 2).

use std::path::Path;

use serde::Serialize;

use crate::Context;
use crate::access::{self, Need};
use crate::catalog::{Catalog, ListFilter, Status};
use crate::command::CommandLine;
use crate::error::Result;
use crate::instance::{Instance, SourceSpec, VersionProbe};
use crate::ops::reconcile::Problem;
use crate::service::Control;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One thing checked.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What it is about: `config`, `store`, `catalog`, `instance gitea`…
    pub subject: String,
    pub level: Level,
    pub detail: String,
    pub hint: Option<String>,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub findings: Vec<Finding>,
    /// The worst level found.
    pub worst: Level,
}

struct Out(Vec<Finding>);

impl Out {
    fn add(&mut self, subject: &str, level: Level, detail: String, hint: Option<&str>) {
        self.0.push(Finding {
            subject: subject.to_string(),
            level,
            detail,
            hint: hint.map(str::to_string),
        });
    }
    fn ok(&mut self, subject: &str, detail: String) {
        self.add(subject, Level::Ok, detail, None);
    }
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn check_program(out: &mut Out, subject: &str, what: &str, line: &CommandLine) {
    if let CommandLine::Argv(argv) = line
        && !on_path(&argv[0])
    {
        out.add(
            subject,
            Level::Error,
            format!("{what}: `{}` is not installed or not on the PATH", argv[0]),
            Some("install it, or fix the command in the config"),
        );
    }
}

/// Runs every check (for one instance when `only` is given).
///
/// # Errors
///
/// Fails only when `only` names an instance the config does not define.
pub fn doctor(ctx: &Context<'_>, only: Option<&str>) -> Result<DoctorReport> {
    let mut out = Out(Vec::new());
    match &ctx.config.path {
        Some(p) => out.ok(
            "config",
            format!(
                "{} is valid: {} instance(s)",
                p.display(),
                ctx.config.instances.len()
            ),
        ),
        None => out.add(
            "config",
            Level::Ok,
            "no config file: backstop works on paths given on the command line".into(),
            Some("`backstop init NAME --root DIR` writes one for an application"),
        ),
    }
    let instances: Vec<&Instance> = match only {
        Some(name) => vec![ctx.config.instance(name)?],
        None => ctx.config.instances.values().collect(),
    };
    for inst in &instances {
        check_instance(ctx, &mut out, inst);
    }
    check_store(ctx, &mut out);
    check_named_stores(ctx, &mut out);
    check_catalog(ctx, &mut out);
    let worst = out.0.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    Ok(DoctorReport {
        findings: out.0,
        worst,
    })
}

fn check_instance(ctx: &Context<'_>, out: &mut Out, inst: &Instance) {
    let subject = format!("instance {}", inst.name);
    let s = subject.as_str();
    if !inst.root.is_dir() {
        out.add(
            s,
            Level::Error,
            format!("the root {} does not exist", inst.root.display()),
            Some("fix `root` in the config, or restore the instance with `backstop restore ID`"),
        );
        return;
    }
    if inst.configured_root == inst.root {
        out.ok(s, format!("root {}", inst.root.display()));
    } else {
        // Said so that nobody wonders which directory is backed up.
        out.ok(
            s,
            format!(
                "root {} resolves to {}: the directory there is what is backed up and restored",
                inst.configured_root.display(),
                inst.root.display()
            ),
        );
    }
    let (sources, notes) = match inst.expanded_sources() {
        Ok(x) => x,
        Err(e) => {
            out.add(s, Level::Error, e.to_string(), e.hint().as_deref());
            (inst.sources.clone(), Vec::new())
        }
    };
    for n in notes {
        out.add(
            s,
            Level::Warning,
            n,
            Some("back it up another way, or change the unit"),
        );
    }
    let podman = crate::podman::Podman::default();
    for src in &sources {
        let name = &src.name;
        match &src.spec {
            SourceSpec::Path(p) => {
                let path = inst.resolve(p);
                if path.symlink_metadata().is_err() {
                    out.add(
                        s,
                        Level::Error,
                        format!("source {name}: {} does not exist", path.display()),
                        Some("create it, or remove the source from the config"),
                    );
                }
            }
            SourceSpec::Sqlite(p) => {
                let path = inst.resolve(p);
                let ok = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .and_then(|c| c.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)));
                if let Err(e) = ok {
                    out.add(
                        s,
                        Level::Error,
                        format!(
                            "source {name}: {} is not a readable SQLite database: {e}",
                            path.display()
                        ),
                        Some("fix `sqlite` in the config"),
                    );
                }
            }
            SourceSpec::Volume(v) => match podman.volume_exists(v) {
                Ok(true) => {}
                Ok(false) => out.add(
                    s,
                    Level::Error,
                    format!("source {name}: podman volume {v} does not exist"),
                    Some("start the application once, or remove the volume from the config"),
                ),
                Err(e) => out.add(
                    s,
                    Level::Error,
                    format!("source {name}: cannot ask podman about volume {v}: {e}"),
                    Some("install podman, or remove the volume from the config"),
                ),
            },
            SourceSpec::Command { dump, restore, .. } => {
                check_program(out, s, &format!("source {name}'s dump command"), dump);
                match restore {
                    Some(r) => check_program(out, s, &format!("source {name}'s restore command"), r),
                    None => out.add(
                        s,
                        Level::Warning,
                        format!("source {name} has no restore command: a restore can only write its dump as a file"),
                        Some("add `restore = \"...\"` to the source"),
                    ),
                }
            }
        }
    }
    out.ok(
        s,
        format!(
            "{} source(s): {}",
            sources.len(),
            sources
                .iter()
                .map(|x| format!("{} ({})", x.name, x.spec.kind()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    if let Some(probe) = &inst.version {
        if let VersionProbe::Command { command, .. } = probe {
            check_program(out, s, "the version command", command);
        }
        match inst.detect_version() {
            Ok(Some(v)) => out.ok(s, format!("version {v}")),
            Ok(None) => {}
            Err(e) => out.add(
                s,
                Level::Warning,
                format!("the version cannot be read: {e}"),
                Some("backups will record no version, and rollback by version will not find them"),
            ),
        }
    } else {
        out.add(
            s,
            Level::Ok,
            "no version probe: backups record no version".into(),
            Some("add `version = { file = ... }` for rollbacks by version"),
        );
    }
    if let Some(services) = &inst.services {
        match &services.control {
            Some(Control::Containers { .. }) if !on_path("podman") => out.add(
                s,
                Level::Error,
                "services are podman containers, and podman is not installed".into(),
                None,
            ),
            Some(Control::Units { .. }) if !on_path("systemctl") => out.add(
                s,
                Level::Error,
                "services are systemd units, and systemctl is not installed".into(),
                None,
            ),
            Some(Control::Commands {
                stop,
                start,
                status,
            }) => {
                check_program(out, s, "the stop command", stop);
                check_program(out, s, "the start command", start);
                if let Some(st) = status {
                    check_program(out, s, "the status command", st);
                }
            }
            _ => {}
        }
        if let Some(h) = &services.health {
            check_program(out, s, "the health check", &h.command);
        }
        let env = inst.env();
        let sctx = crate::service::Ctx {
            env: &env,
            cwd: Some(inst.root.as_path()),
            cancel: Some(ctx.cancel),
            instance: &inst.name,
            progress: ctx.progress,
        };
        match services.running(&sctx) {
            Ok(r) if r.is_empty() && services.control.is_some() => {
                out.ok(s, "services: none running".into())
            }
            Ok(r) if !r.is_empty() => out.ok(s, format!("services running: {}", r.join(", "))),
            Ok(_) => {}
            Err(e) => out.add(
                s,
                Level::Warning,
                format!("cannot tell whether the services run: {e}"),
                Some("check the status command or the names in the config"),
            ),
        }
    }
    // Staging directories beside the sources that no journal owns.
    let journal = crate::restore::journal::Journal::load(&ctx.layout.home, &inst.name)
        .ok()
        .flatten();
    let mut parents: Vec<std::path::PathBuf> = sources
        .iter()
        .filter_map(|x| inst.source_path(x))
        .map(|p| crate::fsutil::parent_dir(&p))
        .collect();
    parents.dedup();
    for dir in parents {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(crate::restore::stage::STAGING_PREFIX)
                && !journal
                    .as_ref()
                    .is_some_and(|j| j.staging.contains(&e.path()))
            {
                out.add(
                    s,
                    Level::Warning,
                    format!(
                        "{} is a staging directory left by an old restore",
                        e.path().display()
                    ),
                    Some("nothing refers to it: remove it"),
                );
            }
        }
    }
}

fn check_store(ctx: &Context<'_>, out: &mut Out) {
    let store = &ctx.layout.store;
    let mut existing = store.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let writable = rustix::fs::access(existing, rustix::fs::Access::WRITE_OK).is_ok();
    if !writable {
        out.add(
            "store",
            Level::Error,
            format!("{} is not writable", existing.display()),
            Some("run as a user who may write there, or set `store` in the config"),
        );
        return;
    }
    let free = crate::fsutil::available_space(existing).unwrap_or(0);
    let last = crate::ops::list::open_existing(ctx)
        .ok()
        .flatten()
        .and_then(|c| {
            c.list(&ListFilter {
                status: Some(Status::Available),
                ..ListFilter::default()
            })
            .ok()
        })
        .map(|rows| rows.iter().filter_map(|r| r.size).max().unwrap_or(0))
        .unwrap_or(0);
    if last > 0 && free < last.saturating_mul(2) {
        out.add(
            "store",
            Level::Warning,
            format!(
                "{} MiB free on {}; the largest backup is {} MiB",
                free >> 20,
                existing.display(),
                last >> 20
            ),
            Some("free some space, prune old backups, or move the store"),
        );
    } else {
        out.ok(
            "store",
            format!("{} is writable, {} MiB free", store.display(), free >> 20),
        );
    }
}

/// Each `[stores.NAME]`: connected (a bucket is asked once, so refused
/// credentials, a missing bucket or a skewed clock show here), and the
/// uploads dead backups left there.
fn check_named_stores(ctx: &Context<'_>, out: &mut Out) {
    for (name, def) in ctx.config.stores.defs() {
        let subject = format!("store {name}");
        let store = match ctx.config.stores.get(name) {
            Ok(store) => store,
            Err(e) => {
                let hint = e.hint();
                out.0.push(Finding {
                    subject,
                    level: Level::Error,
                    detail: format!(
                        "{}: {}",
                        def.describe(),
                        crate::ops::backup::error_chain(&e)
                    ),
                    hint,
                });
                continue;
            }
        };
        match store.pending(None) {
            Ok(p) if p.is_empty() => out.ok(&subject, format!("{} is reachable", def.describe())),
            Ok(p) => out.add(
                &subject,
                Level::Warning,
                format!(
                    "{} is reachable; {} unfinished upload(s) of dead backups are there",
                    def.describe(),
                    p.len()
                ),
                Some("the next backup of each instance removes its own"),
            ),
            Err(e) => out.add(
                &subject,
                Level::Error,
                format!(
                    "{}: {}",
                    def.describe(),
                    crate::ops::backup::error_chain(&e)
                ),
                None,
            ),
        }
    }
}

fn check_catalog(ctx: &Context<'_>, out: &mut Out) {
    check_interrupted(ctx, out);
    let path = ctx.layout.catalog();
    let usable = access::check(&ctx.layout.home, Need::List)
        .and_then(|_| access::check(&path, Need::ReadWrite));
    match usable {
        Ok(true) => {}
        Ok(false) => return check_untracked(ctx, out),
        Err(e) => {
            // Unreadable is not absent: nothing can be said about backups.
            out.add("catalog", Level::Error, e.to_string(), e.hint().as_deref());
            return;
        }
    }
    let catalog = match Catalog::open_checked(&path) {
        Ok(c) => c,
        Err(e) => {
            // Damaged: nothing it says can be compared with the store.
            out.add("catalog", Level::Error, e.to_string(), e.hint().as_deref());
            return;
        }
    };
    out.ok(
        "catalog",
        format!("{} passes SQLite's check", path.display()),
    );
    check_reconcile(ctx, out);
    check_creating(&catalog, out);
}

/// Archives in the store that a missing catalog cannot know: a directory
/// listing, no archive opened.
fn check_untracked(ctx: &Context<'_>, out: &mut Out) {
    let path = ctx.layout.catalog();
    match crate::ops::list::untracked_archives(ctx, None, None) {
        Ok(files) if files.is_empty() => out.ok(
            "catalog",
            format!("{} does not exist yet (no backups)", path.display()),
        ),
        Ok(files) => out.add(
            "catalog",
            Level::Warning,
            format!(
                "{} does not exist, but the store {} holds {} archive(s) it would list",
                path.display(),
                ctx.layout.store.display(),
                files.len()
            ),
            Some("`backstop reconcile --apply` rebuilds the catalog from the archives"),
        ),
        Err(e) => out.add("catalog", Level::Error, e.to_string(), e.hint().as_deref()),
    }
}

/// An interrupted migration or restore.
fn check_interrupted(ctx: &Context<'_>, out: &mut Out) {
    if let Some((from, to)) = crate::ops::migrate::pending(&ctx.layout.home) {
        out.add(
            "store",
            Level::Error,
            format!(
                "moving the store from {} to {} was interrupted",
                from.display(),
                to.display()
            ),
            Some(&format!(
                "finish it: `backstop migrate --to {}`",
                to.display()
            )),
        );
    }
    if let Ok(pending) = crate::ops::recover::pending(ctx) {
        for instance in pending {
            out.add(
                "catalog",
                Level::Error,
                format!("a restore of {instance} was interrupted"),
                Some(&format!(
                    "run `backstop recover {instance}` (any backup or restore of it does too)"
                )),
            );
        }
    }
}

/// The reconcile summary: rows against archives.
fn check_reconcile(ctx: &Context<'_>, out: &mut Out) {
    match crate::ops::reconcile::reconcile(ctx, None, None, false, None) {
        Ok(r) if r.findings.is_empty() => out.ok(
            "catalog",
            format!("matches the store ({} archives)", r.consistent),
        ),
        Ok(r) => {
            for f in &r.findings {
                out.add(
                    "catalog",
                    Level::Warning,
                    format!(
                        "{} archive {}: {}",
                        match f.problem {
                            Problem::Missing => "missing",
                            Problem::Mismatched => "mismatched",
                            Problem::Corrupt => "corrupt",
                            Problem::Orphaned => "orphaned",
                            Problem::Broken => "incomplete chain of",
                        },
                        f.id.as_deref().unwrap_or(&f.path),
                        f.detail
                    ),
                    Some(if f.action.is_some() {
                        "`backstop reconcile --apply` makes the catalog match the store"
                    } else if f.problem == Problem::Broken {
                        "put the missing archive back and run `backstop reconcile --apply`, or \
                         restore an older backup whose chain is whole"
                    } else {
                        "look at this archive by hand; reconcile cannot adopt it"
                    }),
                );
            }
        }
        Err(e) => out.add("catalog", Level::Error, e.to_string(), e.hint().as_deref()),
    }
}

/// Rows left `creating`.
fn check_creating(catalog: &Catalog, out: &mut Out) {
    let creating = catalog
        .list(&ListFilter {
            status: Some(Status::Creating),
            ..ListFilter::default()
        })
        .unwrap_or_default();
    for r in creating {
        out.add(
            "catalog",
            Level::Warning,
            format!("backup {} has been `creating` since {}", r.id, r.created_at),
            Some("if no backup is running, the next backup of the instance marks it failed"),
        );
    }
}
