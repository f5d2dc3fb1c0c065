//! Human-readable rendering of the core's results. JSON rendering is the
//! results serialised as they are, inside a versioned envelope (see
//! `docs/json.md`).

use std::fmt::Write as _;

use backstop_core::catalog::{BackupRecord, Status};
use backstop_core::ops::backup::{
    BackupPlan, BackupReport, ExcludedSummary, Note, NoteKind, Warning,
};
use backstop_core::ops::doctor::{DoctorReport, Level};
use backstop_core::ops::guard::{GuardOutcome, GuardReport};
use backstop_core::ops::init::InitReport;
use backstop_core::ops::key::{KeyCheck, NewKey};
use backstop_core::ops::list::Listing;
use backstop_core::ops::prune::PrunePlan;
use backstop_core::ops::reconcile::{Problem as ReconcileProblem, ReconcileReport};
use backstop_core::ops::recover::RecoverReport;
use backstop_core::ops::restore::{Check, CheckOutcome, RestoreOutcome, RestorePlan};
use backstop_core::ops::show::ShowReport;
use backstop_core::ops::verify::{Verified, VerifyReport};
use backstop_core::restore::diff::{Actions, PlannedAction, Totals};
use backstop_core::restore::journal::Recovered;
use backstop_core::systemd::UnitsReport;
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets};
use console::style;

/// The version of the JSON documents; bumped on incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// `value` inside `{"version": 1, "command": …}`.
pub fn envelope(command: &str, value: serde_json::Value) -> serde_json::Value {
    let mut doc = serde_json::json!({ "version": JSON_VERSION, "command": command });
    if let (Some(doc), serde_json::Value::Object(fields)) = (doc.as_object_mut(), value) {
        doc.extend(fields);
    }
    doc
}

/// The envelope around one value, serialised straight to a writer: a
/// restore's plan of a million paths is never built as a JSON tree in
/// memory first.
pub struct Streamed<'a, T: serde::Serialize> {
    pub command: &'a str,
    pub key: &'a str,
    pub value: &'a T,
}

impl<T: serde::Serialize> serde::Serialize for Streamed<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("version", &JSON_VERSION)?;
        map.serialize_entry("command", self.command)?;
        map.serialize_entry(self.key, self.value)?;
        map.end()
    }
}

/// `1.00 GiB`
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// `41,713`
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2026-11-21 23:01:02` from an RFC 3339 UTC timestamp.
pub fn when(ts: &str) -> String {
    ts.get(..19).unwrap_or(ts).replacen('T', " ", 1)
}

/// `zstd level 3`, `gzip level 6` or `uncompressed`.
fn codec(c: backstop_core::archive::Codec, level: Option<i32>) -> String {
    match (c, level) {
        (backstop_core::archive::Codec::None, _) => "uncompressed".into(),
        (c, Some(l)) => format!("{c} level {l}"),
        (c, None) => c.to_string(),
    }
}

/// `850 ms`, `2.4 s`
fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn status_cell(status: Status) -> String {
    match status {
        Status::Available => style("available").green().to_string(),
        Status::Failed => style("failed").red().to_string(),
        Status::Corrupt => style("corrupt").red().bold().to_string(),
        Status::Missing => style("missing").yellow().to_string(),
        Status::Creating => style("creating").cyan().to_string(),
    }
}

fn excluded_lines(out: &mut String, excluded: &[ExcludedSummary], verbose: bool) {
    for e in excluded {
        let noun = if e.count == 1 { "path" } else { "paths" };
        let _ = write!(
            out,
            "  excluded {} {noun} by {}",
            count(e.count as u64),
            e.rule
        );
        if verbose || e.count <= 3 {
            let _ = write!(out, ": {}", e.examples.join(", "));
            if e.count > e.examples.len() {
                out.push_str(", …");
            }
        }
        out.push('\n');
    }
}

/// The summary of a finished backup.
pub fn backup(report: &BackupReport, verbose: bool) -> String {
    let b = &report.backup;
    let mut out = String::new();
    let _ = writeln!(out, "Backed up {} ({})", style(&b.id).bold(), b.origin);
    if let Some(r) = &report.renamed {
        renamed(&mut out, r);
    }
    let content = b.bytes.unwrap_or(0);
    let size = b.size.unwrap_or(0);
    let ratio = if content > 0 && b.parent.is_none() {
        format!(
            ", {:.0}% of the content",
            size as f64 * 100.0 / content as f64
        )
    } else {
        String::new()
    };
    let secs = report.duration_ms.max(1) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "  {} entries, {} files, {} read in {} ({}/s)",
        count(b.entries.unwrap_or(0)),
        count(b.files.unwrap_or(0)),
        bytes(content),
        seconds(report.duration_ms),
        bytes((content as f64 / secs) as u64),
    );
    let _ = writeln!(
        out,
        "  archive  {} ({}{ratio})",
        bytes(size),
        codec(b.compression, b.level)
    );
    if let (Some(parent), Some(base)) = (&b.parent, &b.base) {
        let _ = writeln!(
            out,
            "  chain    incremental {} on {parent} (full backup {base}): {} unchanged \
             files, {}, not read again",
            b.chain_position,
            count(report.unchanged_files),
            bytes(report.unchanged_bytes)
        );
    }
    match &b.location {
        Some(loc) => {
            let what = if loc.starts_with("s3://") {
                "object"
            } else {
                "file  "
            };
            let _ = writeln!(out, "  {what}   {loc}");
        }
        None => {
            let _ = writeln!(
                out,
                "  file     written to stdout (not recorded in the catalog)"
            );
        }
    }
    let _ = writeln!(out, "  sha256   {}", b.sha256.as_deref().unwrap_or("-"));
    for c in report.copies.iter().filter(|c| c.id == b.id) {
        let _ = writeln!(out, "  copy     {} (read back and verified)", c.location);
    }
    encrypted_line(&mut out, &report.encrypted_to);
    excluded_lines(&mut out, &report.excluded, verbose);
    out
}

/// `  encrypted to age1…, ssh-ed25519 …` (public keys), or to a passphrase,
/// when encrypted.
fn encrypted_line(out: &mut String, recipients: &[String]) {
    if recipients.is_empty() {
        return;
    }
    if recipients == [backstop_core::encryption::PASSPHRASE_SHOWN] {
        let _ = writeln!(out, "  age      encrypted to a passphrase (scrypt)");
        return;
    }
    let shown: Vec<String> = recipients.iter().map(|r| short_recipient(r)).collect();
    let _ = writeln!(
        out,
        "  age      encrypted to {} ({})",
        match recipients.len() {
            1 => "1 recipient".to_string(),
            n => format!("{n} recipients"),
        },
        shown.join(", ")
    );
}

/// A recipient cut to what a person compares: `age1abcd…wxyz`, or an SSH
/// key's type and comment.
fn short_recipient(r: &str) -> String {
    if let Some(rest) = r.strip_prefix("ssh-") {
        let mut parts = rest.split_whitespace();
        let kind = parts.next().unwrap_or_default();
        let comment = parts.nth(1).unwrap_or_default();
        return format!("ssh-{kind} {comment}").trim_end().to_string();
    }
    if r.len() > 16 {
        format!("{}…{}", &r[..9], &r[r.len() - 6..])
    } else {
        r.to_string()
    }
}

/// Warning lines for stderr.
pub fn warnings(list: &[Warning], verbose: bool) -> String {
    let mut out = String::new();
    let shown = if verbose {
        list.len()
    } else {
        list.len().min(10)
    };
    for w in &list[..shown] {
        let _ = writeln!(
            out,
            "{} {} {}: {}",
            style("warning:").for_stderr().yellow().bold(),
            w.kind,
            w.path,
            w.detail
        );
    }
    if shown < list.len() {
        let _ = writeln!(
            out,
            "{} … and {} more (all of them with -v, or in the archive's trailer)",
            style("warning:").for_stderr().yellow().bold(),
            list.len() - shown
        );
    }
    out
}

/// Note lines for stderr: what a backup assumed, not what it lacks.
pub fn notes(list: &[Note]) -> String {
    let mut out = String::new();
    for n in list {
        let kind = match n.kind {
            NoteKind::Quadlet => "quadlet",
            NoteKind::Version => "version",
            NoteKind::Catalog => "catalog",
            NoteKind::Chain => "chain",
        };
        let _ = writeln!(
            out,
            "{} {kind}: {}",
            style("note:").for_stderr().cyan().bold(),
            n.detail
        );
    }
    out
}

/// Why a directory is not backed up under its own name.
fn renamed(out: &mut String, r: &backstop_core::naming::Renamed) {
    let _ = writeln!(
        out,
        "  instance {}: {} already holds the backups of {}",
        style(&r.name).bold(),
        r.wanted,
        r.taken_by
    );
}

/// The answer to `backup --dry-run`.
pub fn plan(plan: &BackupPlan, quiet: bool, verbose: bool) -> String {
    let mut out = String::new();
    if !quiet {
        for e in &plan.entries {
            out.push_str(&e.path);
            if e.kind == "dir" {
                out.push('/');
            }
            out.push('\n');
        }
    }
    let dest = plan.destination.as_deref().unwrap_or("stdout");
    if quiet {
        let _ = writeln!(
            out,
            "Would back up {} to {dest}: {} entries, {}; estimated archive {} (dry run)",
            style(&plan.instance).bold(),
            count(plan.totals.entries),
            bytes(plan.totals.bytes),
            bytes(plan.estimated_size),
        );
        return out;
    }
    let _ = writeln!(
        out,
        "Would back up {} ({}) to {dest}",
        style(&plan.instance).bold(),
        plan.root
    );
    if let Some(r) = &plan.renamed {
        renamed(&mut out, r);
    }
    let _ = writeln!(
        out,
        "  {} entries, {} files, {}; estimated archive {} ({})",
        count(plan.totals.entries),
        count(plan.totals.files),
        bytes(plan.totals.bytes),
        bytes(plan.estimated_size),
        codec(plan.compression, plan.level),
    );
    encrypted_line(&mut out, &plan.encrypted_to);
    match (&plan.chain, &plan.full_because) {
        (Some(links), _) => {
            let _ = writeln!(
                out,
                "  chain    incremental {} on {} (full backup {}): only new and changed \
                 files would be read; the estimate is a full backup's",
                links.position, links.parent.id, links.base.id
            );
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "  chain    a full backup: {why}");
        }
        (None, None) => {}
    }
    excluded_lines(&mut out, &plan.excluded, verbose);
    if verbose {
        for p in &plan.excluded_paths {
            let _ = writeln!(out, "  excluded {p}");
        }
    }
    let _ = writeln!(out, "Nothing was written (dry run).");
    out
}

/// The table of `list`, and a note about archives the catalog does not know.
pub fn list(listing: &Listing, filtered: bool) -> String {
    let records = &listing.backups;
    if records.is_empty() && listing.untracked.is_empty() {
        return if filtered {
            "No backups match these filters; `backstop list` with none shows them all.\n"
        } else {
            "No backups yet. Make one with `backstop backup DIR`.\n"
        }
        .to_string();
    }
    if records.is_empty() {
        return untracked_note(&listing.untracked);
    }
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header([
            "ID",
            "VERSION",
            "CREATED (UTC)",
            "KIND",
            "REASON",
            "TYPE",
            "SIZE",
            "STATUS",
        ]);
    for r in records {
        table.add_row(vec![
            Cell::new(&r.id),
            Cell::new(r.about.app_version.as_deref().unwrap_or("-")),
            Cell::new(when(&r.created_at)),
            Cell::new(r.about.kind),
            Cell::new(&r.about.reason),
            Cell::new(chain_type(r)),
            Cell::new(r.size.map_or_else(|| "-".into(), bytes)).set_alignment(CellAlignment::Right),
            Cell::new(status_cell(r.status)),
        ]);
    }
    // comfy-table pads every cell with a space on each side; trim the edges.
    let mut out: String = table
        .lines()
        .map(|l| format!("{}\n", l.trim_end().strip_prefix(' ').unwrap_or(&l)))
        .collect();
    let failed = records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    if failed > 0 {
        let _ = writeln!(
            out,
            "\n{failed} failed attempt{}: `backstop show ID` says why.",
            if failed == 1 { "" } else { "s" }
        );
    }
    if !listing.untracked.is_empty() {
        out.push('\n');
        out.push_str(&untracked_note(&listing.untracked));
    }
    out
}

/// What `show` says of a backup's place in its chain.
fn chain_line(b: &BackupRecord) -> String {
    let (Some(parent), Some(base)) = (&b.parent, &b.base) else {
        return "full".into();
    };
    let total = b
        .chain_size
        .map_or_else(|| "unknown: a link is not in the catalog".into(), bytes);
    format!(
        "incremental {} of the chain of {base}, on {parent}; a restore reads {total}",
        b.chain_position
    )
}

/// `full`, or `incr N` for the Nth incremental of a chain.
fn chain_type(r: &BackupRecord) -> String {
    if r.parent.is_some() {
        format!("incr {}", r.chain_position)
    } else {
        "full".into()
    }
}

/// Archives in the store that are not in the catalog (it was lost, or
/// files were copied in).
fn untracked_note(files: &[std::path::PathBuf]) -> String {
    let (noun, verb) = if files.len() == 1 {
        ("archive", "is")
    } else {
        ("archives", "are")
    };
    let mut out = format!(
        "{} {noun} in the store {verb} not in the catalog:\n",
        files.len()
    );
    for f in files {
        let _ = writeln!(out, "  {}", f.display());
    }
    out.push_str("`backstop reconcile --apply` adds them from their own manifests.\n");
    out
}

fn field(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {name:<12}{value}");
}

/// Everything about one backup.
pub fn show(report: &ShowReport) -> String {
    let mut out = String::new();
    let id = report
        .backup
        .as_ref()
        .map(|b| b.id.clone())
        .or_else(|| report.manifest.as_ref().map(|m| m.id.clone()))
        .unwrap_or_else(|| "(unknown)".into());
    let _ = writeln!(out, "Backup {}", style(&id).bold());
    if let Some(b) = &report.backup {
        let mut status = status_cell(b.status);
        if let Some(at) = &b.verified_at {
            let verdict = match (b.verify_ok, &b.verify_error) {
                (Some(true), _) => "ok".to_string(),
                (_, Some(e)) => format!("failed: {e}"),
                _ => "failed".to_string(),
            };
            status.push_str(&format!(" (verified {}: {verdict})", when(at)));
        }
        field(&mut out, "status", status);
        if let Some(e) = &b.error {
            field(&mut out, "error", e);
        }
        field(&mut out, "instance", &b.instance);
        field(&mut out, "origin", format!("{} on {}", b.origin, b.host));
        field(
            &mut out,
            "created",
            format!("{} UTC by {}", when(&b.created_at), b.created_by),
        );
        field(
            &mut out,
            "kind",
            format!("{} (reason: {})", b.about.kind, b.about.reason),
        );
        if let Some(m) = &b.about.message {
            field(&mut out, "message", m);
        }
        if !b.about.labels.is_empty() {
            let labels: Vec<String> = b
                .about
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            field(&mut out, "labels", labels.join(", "));
        }
        field(
            &mut out,
            "version",
            b.about.app_version.as_deref().unwrap_or("-"),
        );
        if let Some(to) = &b.about.upgraded_to {
            field(&mut out, "upgraded to", to);
        }
        if let Some(p) = &b.about.profile {
            field(&mut out, "profile", p);
        }
        if let Some(size) = b.size {
            field(
                &mut out,
                "size",
                format!("{} ({})", bytes(size), codec(b.compression, b.level)),
            );
        }
        field(&mut out, "type", chain_line(b));
        for copy in &report.copies {
            field(
                &mut out,
                "copy",
                format!("{} ({}, {})", copy.location, copy.store, copy.copied_at),
            );
        }
        if !report.dependants.is_empty() {
            field(
                &mut out,
                "needed by",
                format!(
                    "{} (incremental backups built on it)",
                    report.dependants.join(", ")
                ),
            );
        }
        if let (Some(e), Some(f), Some(by)) = (b.entries, b.files, b.bytes) {
            field(
                &mut out,
                "contents",
                format!("{} entries, {} files, {}", count(e), count(f), bytes(by)),
            );
        }
        if b.warnings > 0 {
            field(
                &mut out,
                "warnings",
                format!("{} files vanished, changed or were unreadable", b.warnings),
            );
        }
        if let Some(s) = &b.sha256 {
            field(&mut out, "sha256", s);
        }
        if b.encrypted {
            field(
                &mut out,
                "encrypted",
                "yes (age; an identity is needed to restore or to check the content)",
            );
        }
        field(&mut out, "pinned", if b.pinned { "yes" } else { "no" });
    } else {
        field(&mut out, "catalog", "not in the catalog");
    }
    if let Some(p) = &report.path {
        field(&mut out, "archive", p);
    }
    if let Some(m) = &report.manifest {
        if report.backup.is_none() {
            field(&mut out, "instance", &m.instance);
            field(&mut out, "origin", format!("{} on {}", m.root, m.host));
            field(
                &mut out,
                "created",
                format!("{} UTC by {}", when(&m.created_at), m.created_by),
            );
            field(
                &mut out,
                "kind",
                format!("{} (reason: {})", m.about.kind, m.about.reason),
            );
            field(
                &mut out,
                "contents",
                format!(
                    "{} entries, {} files, {} (as scanned)",
                    count(m.totals.entries),
                    count(m.totals.files),
                    bytes(m.totals.bytes)
                ),
            );
        }
        let _ = writeln!(out, "\nSources");
        for s in &m.sources {
            let _ = writeln!(out, "  {:<12}{} {} ← {}", s.name, s.kind, s.path, s.origin);
        }
        let _ = writeln!(out, "\nExcludes: {}", m.excludes.join(", "));
        if !m.never_restore.is_empty() {
            let _ = writeln!(out, "Never restored: {}", m.never_restore.join(", "));
        }
    } else if let Some(e) = &report.manifest_error {
        let _ = writeln!(out, "\nThe archive's manifest could not be read: {e}");
    }
    for g in &report.guards {
        let _ = writeln!(
            out,
            "\nTaken before `{}` at {}: {}{}{}",
            g.command,
            when(&g.started_at),
            g.outcome,
            g.exit_code
                .map(|c| format!(" (exit status {c})"))
                .unwrap_or_default(),
            g.detail
                .as_ref()
                .map(|d| format!("\n  {d}"))
                .unwrap_or_default()
        );
    }
    if report.restores.is_empty() {
        let _ = writeln!(out, "\nRestore history: none");
    } else {
        let _ = writeln!(out, "\nRestore history");
        for r in &report.restores {
            let _ = writeln!(
                out,
                "  {}  {} to {} ({} mode) by {} on {}{}",
                when(&r.started_at),
                r.outcome,
                r.destination,
                r.mode,
                r.user,
                r.host,
                r.safety_backup
                    .as_ref()
                    .map(|s| format!(", safety backup {s}"))
                    .unwrap_or_default()
            );
        }
    }
    out
}

/// One line (or a few) per verified archive.
pub fn verify(verified: &Verified) -> String {
    let reports = &verified.archives;
    let mut out = String::new();
    if reports.is_empty() && verified.skipped_missing == 0 {
        return "Nothing to verify: the catalog has no backups with archives.\n".into();
    }
    for r in reports {
        verdict(&mut out, r);
    }
    let bad = reports.iter().filter(|r| !r.ok).count();
    if reports.len() > 1 {
        let _ = writeln!(
            out,
            "{} of {} archives verified",
            reports.len() - bad,
            reports.len()
        );
    }
    if verified.skipped_missing > 0 {
        let _ = writeln!(
            out,
            "Skipped {} already known to be missing (`backstop list --status missing` shows \
             them; `backstop reconcile --apply` or `backstop delete ID` settles them)",
            match verified.skipped_missing {
                1 => "1 backup".to_string(),
                n => format!("{n} backups"),
            }
        );
    }
    out
}

/// One archive's verdict: `ok` with its totals, or `FAIL` with its problems.
fn verdict(out: &mut String, r: &VerifyReport) {
    let name = r.id.clone().unwrap_or_else(|| r.path.clone());
    if r.ok && !r.content_checked {
        let _ = writeln!(
            out,
            "{}  {name}: whole-file checksum and age header only, {} checked in {}",
            style("part").yellow().bold(),
            bytes(r.size),
            seconds(r.duration_ms)
        );
    } else if r.ok {
        let _ = writeln!(
            out,
            "{}  {name}: {} entries, {} files, {} checked in {}",
            style("ok  ").green().bold(),
            count(r.entries),
            count(r.files),
            bytes(r.bytes),
            seconds(r.duration_ms)
        );
    } else {
        let _ = writeln!(out, "{}  {name}", style("FAIL").red().bold());
        for p in &r.problems {
            let _ = writeln!(out, "      {p}");
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "      {} {w}", style("warning:").yellow());
    }
}

/// The answer to `key new`: the recipient on stdout (the identity too
/// when it went nowhere else); the warning goes to stderr, separately.
pub fn key_new(key: &NewKey) -> String {
    let mut out = String::new();
    if let Some(identity) = &key.identity {
        out.push_str(identity);
    }
    if let Some(file) = &key.file {
        let _ = writeln!(out, "Wrote a new identity to {file} (mode 0600)");
        let _ = writeln!(
            out,
            "Recipient (put it in the config's [encryption] recipients):"
        );
    }
    let _ = writeln!(out, "{}", key.recipient);
    out
}

/// The warning `key new` prints on stderr.
pub fn key_warning(key: &NewKey) -> String {
    let place = key
        .file
        .as_deref()
        .map_or("this identity".to_string(), |f| {
            format!("the identity in {f}")
        });
    format!(
        "{} {place} is the only way to open backups encrypted to {}. Lose it and those \
         backups are lost; anyone who has it can read them. Keep a copy offline (paper or a \
         USB key in a drawer), away from this machine, and add a second recipient (an offline \
         recovery key) to the config.\n",
        style("warning:").for_stderr().yellow().bold(),
        key.recipient
    )
}

/// The answer to `key check`: one line per identity.
pub fn key_check(check: &KeyCheck) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Encrypted a test archive to {} recipient(s): {}",
        check.recipients.len(),
        check
            .recipients
            .iter()
            .map(|r| short_recipient(r))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for i in &check.identities {
        if i.opens {
            let _ = writeln!(
                out,
                "{}  {} opens it",
                style("ok  ").green().bold(),
                i.identity
            );
        } else {
            let _ = writeln!(
                out,
                "{}  {} does not open it: it is not the identity of any of these recipients",
                style("FAIL").red().bold(),
                i.identity
            );
        }
    }
    out
}

/// The question asked before a restore writes anything.
pub fn restore_question(plan: &RestorePlan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Restore {} (taken {} UTC) into {} in {} mode?",
        style(&plan.backup).for_stderr().bold(),
        when(&plan.created_at),
        plan.destination,
        plan.mode
    );
    for s in &plan.sources {
        let _ = writeln!(
            out,
            "  {} → {}{}",
            s.name,
            s.target,
            if s.exists { " (replaced)" } else { " (new)" }
        );
    }
    for c in plan
        .checks
        .iter()
        .filter(|c| c.outcome != CheckOutcome::Passed)
    {
        let _ = writeln!(out, "{}", check_line(c));
    }
    let _ = writeln!(out, "  safety backup: {}", plan.safety_backup_note);
    if !plan.changes.actions.is_empty() || plan.changes.totals.unchanged > 0 {
        action_lines(&mut out, &plan.changes.actions, false, true);
        let _ = writeln!(out, "  {}", totals_line(&plan.changes.totals));
    }
    out.push_str("Continue? [y/N] ");
    out
}

/// What a restore did about the quadlet units it put back.
fn units_lines(out: &mut String, u: &UnitsReport) {
    if !u.started.is_empty() {
        let _ = writeln!(out, "  started quadlet units: {}", u.started.join(", "));
    }
    for f in &u.failed {
        let _ = writeln!(out, "  quadlet unit {} did not start: {}", f.unit, f.error);
    }
    if let Some(why) = &u.not_started {
        let which = if u.ran_at_backup {
            "that ran at backup time"
        } else {
            "the restored files give"
        };
        let _ = writeln!(
            out,
            "  quadlet units {which} were not started ({}): {why}",
            u.units.join(", ")
        );
    }
    if let Some(command) = &u.command {
        let _ = writeln!(out, "  start them with: {command}");
    }
}

/// A plan's check, with how it ended when it did not simply pass.
fn check_line(c: &Check) -> String {
    let outcome = match c.outcome {
        CheckOutcome::Passed => "",
        CheckOutcome::NotCompared => " (not compared)",
        CheckOutcome::Overridden => " (overridden by --force)",
    };
    format!("  check    {}{outcome}: {}", c.name, c.detail)
}

fn totals_line(t: &Totals) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (t.create, "created"),
        (t.replace, "replaced"),
        (t.delete, "deleted"),
        (t.unchanged, "unchanged"),
        (t.keep, "kept"),
        (t.skip, "left alone"),
        (t.conflict, "conflicts"),
    ] {
        if n > 0 {
            parts.push(format!("{} {what}", count(n)));
        }
    }
    if parts.is_empty() {
        "nothing to do".into()
    } else {
        parts.join(", ")
    }
}

fn action_lines(out: &mut String, actions: &Actions, verbose: bool, dry_run: bool) {
    action_lines_of(out, actions, (verbose, dry_run), None);
}

/// [`action_lines`], of the actions `only` when given.
fn action_lines_of(
    out: &mut String,
    actions: &Actions,
    (verbose, dry_run): (bool, bool),
    only: Option<backstop_core::restore::diff::Action>,
) {
    use backstop_core::restore::diff::{Action, Kind};
    for (action, label) in [
        (Action::Create, if dry_run { "create" } else { "created" }),
        (
            Action::Replace,
            if dry_run { "replace" } else { "replaced" },
        ),
        (Action::Delete, if dry_run { "delete" } else { "deleted" }),
        // Each with why: never-restore, --exclude, what the backup left
        // out or could not read, and what no backup holds.
        (Action::Keep, "keep"),
        (Action::Conflict, "conflict"),
    ] {
        if only.is_some_and(|o| o != action) {
            continue;
        }
        let paths: Vec<PlannedAction> = actions.iter().filter(|a| a.action == action).collect();
        let shown = if verbose {
            paths.len()
        } else {
            paths.len().min(10)
        };
        for a in &paths[..shown] {
            let _ = write!(
                out,
                "  {label:<8} {}{}",
                a.path,
                if a.kind == Kind::Dir { "/" } else { "" }
            );
            match a.why {
                Some(why) => {
                    let _ = writeln!(out, "  ({})", why.as_str());
                }
                None => out.push('\n'),
            }
        }
        if shown < paths.len() {
            let _ = writeln!(
                out,
                "  {label:<8} … and {} more (-v lists them all)",
                paths.len() - shown
            );
        }
    }
}

/// The result of `restore`: a plan, a refusal to go on, or what was done.
pub fn restore(outcome: &RestoreOutcome, quiet: bool, verbose: bool) -> String {
    let mut out = String::new();
    match outcome {
        RestoreOutcome::DryRun { plan } if quiet => {
            let _ = writeln!(
                out,
                "Would restore {} into {} ({} mode): {} (dry run)",
                style(&plan.backup).bold(),
                plan.destination,
                plan.mode,
                totals_line(&plan.changes.totals)
            );
        }
        RestoreOutcome::DryRun { plan } => {
            let _ = writeln!(
                out,
                "Would restore {} into {} ({} mode)",
                style(&plan.backup).bold(),
                plan.destination,
                plan.mode
            );
            for c in &plan.checks {
                let _ = writeln!(out, "{}", check_line(c));
            }
            let _ = writeln!(out, "  safety backup: {}", plan.safety_backup_note);
            action_lines(&mut out, &plan.changes.actions, verbose, true);
            let _ = writeln!(out, "  {}", totals_line(&plan.changes.totals));
            let _ = writeln!(out, "Nothing was changed (dry run).");
        }
        RestoreOutcome::Declined { plan } => {
            let _ = writeln!(out, "Not restored: {} was left as it is.", plan.destination);
        }
        RestoreOutcome::Restored(report) => {
            let plan = &report.plan;
            let _ = writeln!(
                out,
                "Restored {} into {} ({} mode) in {}",
                style(&plan.backup).bold(),
                plan.destination,
                plan.mode,
                seconds(report.duration_ms)
            );
            let _ = writeln!(out, "  {}", totals_line(&plan.changes.totals));
            // What a check could not settle, or --force overrode, stays
            // in the report of the restore it let through.
            for c in plan
                .checks
                .iter()
                .filter(|c| c.outcome != CheckOutcome::Passed)
            {
                let _ = writeln!(out, "{}", check_line(c));
            }
            if let Some(ms) = report.downtime_ms {
                let _ = writeln!(out, "  the application was down for {}", seconds(ms));
            }
            if let Some(units) = &report.quadlet_units {
                units_lines(&mut out, units);
            }
            if report.linked_files > 0 {
                let _ = writeln!(
                    out,
                    "  {} files ({}) were already in place and were kept, not rewritten",
                    count(report.linked_files),
                    bytes(report.linked_bytes)
                );
            }
            if report.undecoded_bytes > 0 {
                let _ = writeln!(
                    out,
                    "  {} of them were checked against their checksums without decoding the archive's copy",
                    bytes(report.undecoded_bytes)
                );
            }
            if verbose {
                action_lines(&mut out, &plan.changes.actions, true, false);
            } else {
                // What a safe restore left alone, differing: always named.
                let conflicts = Some(backstop_core::restore::diff::Action::Conflict);
                action_lines_of(&mut out, &plan.changes.actions, (false, false), conflicts);
            }
            match (&report.safety_backup, &report.undo) {
                (Some(id), Some(undo)) => {
                    let _ = writeln!(out, "  safety backup {id} (`{undo}` undoes this restore)");
                }
                _ => {
                    let _ = writeln!(out, "  safety backup: {}", plan.safety_backup_note);
                }
            }
        }
    }
    out
}

/// What `recover` did.
pub fn recover(reports: &[RecoverReport]) -> String {
    let mut out = String::new();
    for r in reports {
        match &r.recovered {
            None => {
                let _ = writeln!(out, "{}: nothing to recover", r.instance);
            }
            Some(how) => {
                let what = match how {
                    Recovered::RolledBack => "was rolled back: the previous state is back",
                    Recovered::Completed => "was completed",
                };
                let _ = writeln!(
                    out,
                    "{}: the interrupted restore of {} into {} {what}",
                    r.instance,
                    r.backup.as_deref().unwrap_or("?"),
                    r.destination.as_deref().unwrap_or("?")
                );
                if !r.restarted.is_empty() {
                    let _ = writeln!(
                        out,
                        "{}: started again what it had stopped: {}",
                        r.instance,
                        r.restarted.join(", ")
                    );
                }
                if let Some(e) = &r.restart_error {
                    let _ = writeln!(out, "{}: the services it had stopped: {e}", r.instance);
                }
            }
        }
    }
    if reports.is_empty() {
        out.push_str("Nothing to recover: no restore was interrupted.\n");
    }
    out
}

/// The result of `rollback`: which backup, then the restore's result.
pub fn rollback(
    backup: &BackupRecord,
    outcome: &RestoreOutcome,
    quiet: bool,
    verbose: bool,
) -> String {
    let mut out = String::new();
    let version = backup
        .about
        .app_version
        .as_deref()
        .unwrap_or("(no version recorded)");
    let verb = match outcome {
        RestoreOutcome::DryRun { .. } => "Would roll",
        RestoreOutcome::Declined { .. } => "Did not roll",
        RestoreOutcome::Restored(_) => "Rolled",
    };
    // Quiet, only a dry run prints: its one summary line names the backup.
    if quiet {
        return restore(outcome, quiet, verbose);
    }
    let _ = writeln!(
        out,
        "{verb} {} back to version {} (pre-upgrade backup {}, taken {} UTC)",
        backup.instance,
        style(version).bold(),
        backup.id,
        when(&backup.created_at)
    );
    out.push_str(&restore(outcome, quiet, verbose));
    out
}

/// The verdict of `guard`, printed after the command's own output.
pub fn guard(report: &GuardReport) -> String {
    let mut out = String::new();
    let backup = match &report.backup {
        Some(id) => format!("backup {id}"),
        None => "no backup (--no-backup)".into(),
    };
    match report.outcome {
        GuardOutcome::Succeeded => {
            let _ = writeln!(
                out,
                "{} `{}` succeeded; {backup} was taken before it",
                style("guard:").for_stderr().green().bold(),
                report.command
            );
        }
        GuardOutcome::Failed => {
            let _ = writeln!(
                out,
                "{} {}; nothing was undone",
                style("guard:").for_stderr().red().bold(),
                report.failure.as_deref().unwrap_or("the command failed")
            );
            match &report.undo {
                Some(cmd) => {
                    let _ = writeln!(
                        out,
                        "{} to go back to the state before it, run: {cmd}",
                        style("hint:").for_stderr().cyan().bold()
                    );
                }
                None => {
                    let _ = writeln!(out, "  there is no backup to go back to (--no-backup)");
                }
            }
        }
        GuardOutcome::RolledBack => {
            let _ = writeln!(
                out,
                "{} {}; rolled back to {}",
                style("guard:").for_stderr().yellow().bold(),
                report.failure.as_deref().unwrap_or("the command failed"),
                report.backup.as_deref().unwrap_or("?")
            );
            if let Some(id) = &report.rollback_safety_backup {
                let _ = writeln!(out, "  the failed state is kept as backup {id}");
            }
        }
    }
    out
}

/// What `init` wrote.
pub fn init(report: &InitReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} instance {} (root {}) to {}",
        if report.appended { "Added" } else { "Wrote" },
        style(&report.instance).bold(),
        report.root,
        report.path.as_deref().unwrap_or("-")
    );
    for f in &report.found {
        let _ = writeln!(out, "  found {f}");
    }
    let _ = writeln!(
        out,
        "Check it with `backstop doctor {}`, then `backstop backup {}`.",
        report.instance, report.instance
    );
    out
}

/// What `doctor` found, every check with its level, hints for problems
/// (for passing checks too with `verbose`), and a summary line.
pub fn doctor(report: &DoctorReport, verbose: bool) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let mark = match f.level {
            Level::Ok => style("ok     ").green(),
            Level::Warning => style("warning").yellow().bold(),
            Level::Error => style("error  ").red().bold(),
        };
        let _ = writeln!(out, "{mark} {}: {}", f.subject, f.detail);
        if let Some(h) = &f.hint
            && (f.level != Level::Ok || verbose)
        {
            let _ = writeln!(out, "        {} {h}", style("hint:").cyan());
        }
    }
    let errors = report
        .findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .count();
    let warnings = report
        .findings
        .iter()
        .filter(|f| f.level == Level::Warning)
        .count();
    let _ = writeln!(
        out,
        "{}",
        match (errors, warnings) {
            (0, 0) => "All checks passed.".to_string(),
            (e, w) => format!("{e} error(s), {w} warning(s)."),
        }
    );
    out
}

/// What `prune` decided (a dry run) or did: every backup, kept or removed,
/// with the rule that decided.
pub fn prune(plans: &[PrunePlan], quiet: bool) -> String {
    let mut out = String::new();
    if plans.is_empty() {
        out.push_str("Nothing to prune: the catalog has no backups.\n");
    }
    for p in plans {
        let removed = p.decisions.iter().filter(|d| !d.keep).count();
        let mut table = Table::new();
        table
            .load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(["ID", "CREATED (UTC)", "KIND", "SIZE", "", "WHY"]);
        for d in &p.decisions {
            table.add_row([
                Cell::new(&d.id),
                Cell::new(when(&d.created_at)),
                Cell::new(d.kind),
                Cell::new(d.size.map(bytes).unwrap_or_default())
                    .set_alignment(CellAlignment::Right),
                Cell::new(match (d.keep, p.applied) {
                    (true, _) => "keep",
                    (false, false) => "remove",
                    (false, true) => "removed",
                }),
                Cell::new(d.reasons.join(", ")),
            ]);
        }
        let _ = write!(out, "{}", style(&p.instance).bold());
        if let Some(store) = &p.store {
            let _ = write!(out, " (the copies in {store})");
        }
        out.push(':');
        out.push(if quiet { ' ' } else { '\n' });
        if p.other_hosts > 0 && !quiet {
            let _ = writeln!(
                out,
                "  {} backups of other hosts left alone (--all-hosts prunes them too)",
                p.other_hosts
            );
        }
        if !quiet && !p.decisions.is_empty() {
            // As in `list`: no padding at the edges.
            for l in table.lines() {
                let _ = writeln!(out, "{}", l.trim_end().strip_prefix(' ').unwrap_or(&l));
            }
        }
        let verb = if p.applied { "removed" } else { "would remove" };
        let _ = writeln!(
            out,
            "{verb} {removed} of {} backups ({}){}",
            p.decisions.len(),
            bytes(p.freed),
            if p.failed_dropped.is_empty() {
                String::new()
            } else {
                format!(
                    ", and {} failed attempt(s) from the catalog",
                    p.failed_dropped.len()
                )
            }
        );
        if !p.applied && !quiet {
            let _ = writeln!(out, "Nothing was changed (dry run).");
        }
    }
    out
}

/// What `copy` did: one line a backup, links first.
pub fn copied(report: &backstop_core::ops::copy::CopyReport) -> String {
    let mut out = String::new();
    for c in &report.copied {
        let size = if c.size > 0 {
            format!(" ({})", bytes(c.size))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:<14} {}  {}{size}\n",
            c.outcome, c.id, c.location
        ));
    }
    let sent: u64 = report.copied.iter().map(|c| c.size).sum();
    let n = report.copied.iter().filter(|c| c.size > 0).count();
    out.push_str(&format!(
        "{n} copied to {} ({}), each read back and verified there\n",
        report.to,
        bytes(sent)
    ));
    out
}

/// What `reconcile` found, and did with `--apply`.
pub fn reconcile(report: &ReconcileReport) -> String {
    let mut out = String::new();
    if let Some(aside) = &report.catalog_moved_to {
        let _ = writeln!(
            out,
            "The catalog was damaged ({}): moved to {aside} and rebuilt from the archives.",
            report.catalog_damage.as_deref().unwrap_or("unreadable")
        );
    }
    for f in &report.findings {
        let what = match f.problem {
            ReconcileProblem::Missing => "missing",
            ReconcileProblem::Mismatched => "mismatched",
            ReconcileProblem::Corrupt => "corrupt",
            ReconcileProblem::Orphaned => "orphaned",
            ReconcileProblem::Broken => "broken",
        };
        let _ = writeln!(
            out,
            "{what:<11}{}  {}",
            f.id.as_deref().unwrap_or("-"),
            f.path
        );
        let _ = writeln!(out, "           {}", f.detail);
        match (&f.action, report.applied) {
            (Some(a), true) => {
                let _ = writeln!(out, "           → {a}");
            }
            (Some(a), false) => {
                let _ = writeln!(out, "           --apply: {a}");
            }
            (None, _) if f.problem == ReconcileProblem::Broken => {
                let _ = writeln!(
                    out,
                    "           left as it is: put the missing archive back, or restore an \
                     older backup"
                );
            }
            (None, _) => {
                let _ = writeln!(out, "           left as it is: look at it by hand");
            }
        }
    }
    let _ = writeln!(
        out,
        "{} consistent, {} finding(s){}",
        report.consistent,
        report.findings.len(),
        match (report.findings.is_empty(), report.applied) {
            (true, _) => String::new(),
            (false, true) => "; the catalog now matches the store".into(),
            (false, false) => "; nothing was changed (run with --apply)".into(),
        }
    );
    out
}

/// The backups a restore or rollback given none could restore, numbered
/// from 1, newest first.
pub fn candidates(rows: &[BackupRecord]) -> String {
    let mut out = String::new();
    let width = rows.iter().map(|r| r.id.len()).max().unwrap_or(0);
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>2}  {:<width$}  {}  {} UTC  {}",
            i + 1,
            r.id,
            r.about.app_version.as_deref().unwrap_or("-"),
            when(&r.created_at),
            r.about.reason
        );
    }
    out
}

/// The index an answer to the numbered list picks: a number from 1 to
/// `count`, surrounding blanks allowed.
pub fn pick(answer: &str, count: usize) -> Option<usize> {
    match answer.trim().parse::<usize>() {
        Ok(n) if (1..=count).contains(&n) => Some(n - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pick_is_a_number_on_the_list() {
        assert_eq!(pick(" 2\n", 3), Some(1));
        assert_eq!(pick("1", 1), Some(0));
        assert_eq!(pick("0", 3), None);
        assert_eq!(pick("4", 3), None);
        assert_eq!(pick("", 3), None);
        assert_eq!(pick("gitea-2026", 3), None);
    }

    #[test]
    fn counts_have_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(41713), "41,713");
        assert_eq!(count(1234567), "1,234,567");
    }

    #[test]
    fn the_restore_question_lists_the_changes() {
        use backstop_core::restore::diff::{Action, Changes, Kind};
        let mut changes = Changes::default();
        changes.push("/srv/app/added.txt", Action::Delete, Kind::File, 0);
        changes.push("/srv/app/config.toml", Action::Replace, Kind::File, 2);
        changes.push("/srv/app/same.txt", Action::Unchanged, Kind::File, 0);
        let plan = RestorePlan {
            backup: "app-2026-12-01-000000".into(),
            archive: "/x.tar.zst".into(),
            instance: "app".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            destination: "/srv/app".into(),
            mode: backstop_core::ops::restore::Mode::Exact,
            sources: Vec::new(),
            checks: Vec::new(),
            safety_backup: true,
            safety_backup_note: "of /srv/app".into(),
            changes,
        };
        let text = console::strip_ansi_codes(&restore_question(&plan)).into_owned();
        assert!(text.contains("delete   /srv/app/added.txt"), "{text}");
        assert!(text.contains("replace  /srv/app/config.toml"), "{text}");
        assert!(
            text.contains("1 replaced, 1 deleted, 1 unchanged"),
            "{text}"
        );
        assert!(text.ends_with("Continue? [y/N] "), "{text}");
    }

    #[test]
    fn envelope_adds_version_and_command() {
        let doc = envelope("list", serde_json::json!({"backups": []}));
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["command"], "list");
        assert!(doc["backups"].is_array());
    }
}
