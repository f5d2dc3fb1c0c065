//! `prune`: old backups go by rules a person can predict.
//!
//! Every available backup of an instance is kept if at least one rule keeps
//! it, and the decision names that rule; the others are removed. Pinned
//! backups and the newest available backup are always kept. Rules come from
//! the command line, else from the instance's `[retention]` in the config;
//! with none at all, nothing is removed and the command says so.
//!
//! Calendar rules (daily, weekly, monthly, yearly) keep the newest backup of
//! each of the N most recent days (ISO weeks, months, years) that have one,
//! in UTC, as restic and borg do.
//!
//! Plan, then apply: the plan is a value (`--dry-run` shows it); applying
//! it takes the instance lock, removes each archive and sidecar, then the
//! catalog row. Failed attempts older than `failed_max_age` leave the
//! catalog too.
//!
//! `delete` (explicit removal, by the same steps) and `pin`/`unpin` live
//! here as well.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::archive::BackupKind;
use crate::archive::reader::sidecar_path;
use crate::catalog::{BackupRecord, Catalog, ListFilter, Status};
use crate::error::{Error, Result};
use crate::lock::{InstanceLock, StoreLock};
use crate::ops::list::open_existing;
use crate::{Context, fsutil, time};

/// How many backups to keep, by rule. `None` is "this rule keeps nothing".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub keep: Option<usize>,
    pub keep_manual: Option<usize>,
    pub keep_automatic: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    /// Keep everything made within this long of now.
    #[serde(with = "duration_secs")]
    pub keep_within: Option<Duration>,
}

mod duration_secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&crate::time::human_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

impl Retention {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }

    /// `self`, with every rule `other` sets taking its place.
    pub fn overridden_by(&self, other: &Retention) -> Retention {
        Retention {
            keep: other.keep.or(self.keep),
            keep_manual: other.keep_manual.or(self.keep_manual),
            keep_automatic: other.keep_automatic.or(self.keep_automatic),
            keep_daily: other.keep_daily.or(self.keep_daily),
            keep_weekly: other.keep_weekly.or(self.keep_weekly),
            keep_monthly: other.keep_monthly.or(self.keep_monthly),
            keep_yearly: other.keep_yearly.or(self.keep_yearly),
            keep_within: other.keep_within.or(self.keep_within),
        }
    }
}

/// The instance's retention settings from the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    pub rules: Retention,
    /// Prune after each automatic backup (guarded commands, safety backups).
    pub auto_prune: bool,
    /// Failed attempts older than this leave the catalog (default 30 days).
    pub failed_max_age: Duration,
}

/// The default age after which failed attempts are dropped.
pub const DEFAULT_FAILED_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// One backup in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub created_at: String,
    pub kind: BackupKind,
    pub size: Option<u64>,
    pub keep: bool,
    /// The rules that keep it (`pinned`, `newest`, `last 5`, `daily`…), or
    /// why it goes.
    pub reasons: Vec<String>,
}

/// Which of an instance's backups a prune looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// Only the copies in this store (`local` for the home's own), which
    /// are all a prune removes; `None`: every backup, from every store.
    pub store: Option<String>,
    /// Other hosts' backups too (by default each host prunes only its own,
    /// though a catalog rebuilt from a shared bucket holds them all).
    pub all_hosts: bool,
}

/// What `prune` decided, or did, for one instance.
#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    pub instance: String,
    /// The store it is limited to, if any.
    pub store: Option<String>,
    /// Backups of other hosts left alone.
    pub other_hosts: usize,
    pub rules: Retention,
    /// Newest first.
    pub decisions: Vec<Decision>,
    /// Failed attempts that leave the catalog.
    pub failed_dropped: Vec<String>,
    /// Bytes of archive that go.
    pub freed: u64,
    /// Whether it was carried out.
    pub applied: bool,
}

/// Decides, for `backups` (one instance, any order), which are kept and by
/// which rules. Only `available` backups are considered.
pub fn decide(backups: &[BackupRecord], rules: &Retention, now: Timestamp) -> Vec<Decision> {
    let mut list: Vec<&BackupRecord> = backups
        .iter()
        .filter(|b| b.status == Status::Available)
        .collect();
    // Newest first; ids break ties (`-2` is later).
    list.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.len().cmp(&a.id.len()))
            .then_with(|| b.id.cmp(&a.id))
    });
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); list.len()];
    for (i, b) in list.iter().enumerate() {
        if b.pinned {
            reasons[i].push("pinned".into());
        }
    }
    if !list.is_empty() {
        reasons[0].push("newest".into());
    }
    if let Some(n) = rules.keep {
        for r in reasons.iter_mut().take(n) {
            r.push(format!("last {n}"));
        }
    }
    for (kind, limit, label) in [
        (BackupKind::Manual, rules.keep_manual, "manual"),
        (BackupKind::Automatic, rules.keep_automatic, "automatic"),
    ] {
        let Some(n) = limit else { continue };
        for (i, _) in list
            .iter()
            .enumerate()
            .filter(|(_, b)| b.about.kind == kind)
            .take(n)
        {
            reasons[i].push(format!("last {n} {label}"));
        }
    }
    let bucket_rules: [(Option<usize>, &str, Bucket); 4] = [
        (rules.keep_daily, "daily", |d| {
            d.strftime("%Y-%m-%d").to_string()
        }),
        (rules.keep_weekly, "weekly", |d| {
            let w = d.date().iso_week_date();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        (rules.keep_monthly, "monthly", |d| {
            d.strftime("%Y-%m").to_string()
        }),
        (rules.keep_yearly, "yearly", |d| {
            d.strftime("%Y").to_string()
        }),
    ];
    for (limit, label, bucket) in bucket_rules {
        let Some(n) = limit else { continue };
        let mut seen = HashSet::new();
        for (i, b) in list.iter().enumerate() {
            if seen.len() == n {
                break;
            }
            let Some(when) = civil(&b.created_at) else {
                continue;
            };
            if seen.insert(bucket(&when)) {
                reasons[i].push(label.to_string());
            }
        }
    }
    if let Some(within) = rules.keep_within {
        let limit = jiff::SignedDuration::try_from(within).unwrap_or(jiff::SignedDuration::MAX);
        for (i, b) in list.iter().enumerate() {
            let made: Option<Timestamp> = b.created_at.parse().ok();
            if made.is_some_and(|t| now.duration_since(t) <= limit) {
                reasons[i].push(format!("within {}", time::human_duration(within)));
            }
        }
    }
    keep_chains(&list, &mut reasons);
    list.iter()
        .zip(reasons)
        .map(|(b, r)| Decision {
            id: b.id.clone(),
            created_at: b.created_at.clone(),
            kind: b.about.kind,
            size: b.size,
            keep: !r.is_empty(),
            reasons: if r.is_empty() {
                vec!["no rule keeps it".into()]
            } else {
                r
            },
        })
        .collect()
}

/// Keeps what every kept incremental needs: each backup of its chain, down
/// to its full backup, kept as `base of <id>` (the newest kept backup that
/// needs it). `list` is newest first.
fn keep_chains(list: &[&BackupRecord], reasons: &mut [Vec<String>]) {
    let at: std::collections::HashMap<&str, usize> = list
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();
    let mut needed_by: Vec<Option<String>> = vec![None; list.len()];
    for i in 0..list.len() {
        if reasons[i].is_empty() && needed_by[i].is_none() {
            continue;
        }
        let mut next = list[i].parent.as_deref();
        while let Some(parent) = next {
            let Some(&j) = at.get(parent) else { break };
            if needed_by[j].is_some() {
                break;
            }
            needed_by[j] = Some(list[i].id.clone());
            next = list[j].parent.as_deref();
        }
    }
    for (r, by) in reasons.iter_mut().zip(needed_by) {
        if let Some(id) = by {
            r.push(format!("base of {id}"));
        }
    }
}

/// The calendar bucket (day, ISO week, month, year) of a UTC time.
type Bucket = fn(&jiff::civil::DateTime) -> String;

fn civil(rfc3339: &str) -> Option<jiff::civil::DateTime> {
    let ts: Timestamp = rfc3339.parse().ok()?;
    Some(ts.to_zoned(jiff::tz::TimeZone::UTC).datetime())
}

/// Plans (and unless `dry_run`, carries out) the pruning of `instance`.
/// `rules` from the command line override the config's.
///
/// # Errors
///
/// Fails when no rule is set at all, the lock is held, or a file or the
/// catalog cannot be changed (what was removed before stays removed; the
/// rest is left for the next run).
pub fn prune(
    ctx: &Context<'_>,
    instance: &str,
    (rules, scope): (&Retention, &Scope),
    dry_run: bool,
    wait: Option<Duration>,
) -> Result<PrunePlan> {
    if let Some(name) = &scope.store
        && name != crate::stores::HOME_STORE
    {
        ctx.config.stores.def(name)?;
    }
    if dry_run {
        return plan(ctx, instance, (rules, scope));
    }
    fsutil::create_private_dir_all(&ctx.layout.home)?;
    let store = StoreLock::shared(ctx.layout, wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let lock = InstanceLock::acquire(
        &ctx.layout.locks(),
        instance,
        &format!("prune {instance}"),
        wait,
        ctx.cancel,
    )?;
    crate::ops::recover::recover_locked(ctx, &lock)?;
    prune_locked(ctx, &lock, (rules, scope))
}

/// The config's retention for `instance`, if it has an instance and rules.
pub fn configured(ctx: &Context<'_>, instance: &str) -> RetentionConfig {
    ctx.config
        .instances
        .get(instance)
        .map(|i| i.retention.clone())
        .unwrap_or(RetentionConfig {
            failed_max_age: DEFAULT_FAILED_MAX_AGE,
            ..RetentionConfig::default()
        })
}

fn plan(
    ctx: &Context<'_>,
    instance: &str,
    (rules, scope): (&Retention, &Scope),
) -> Result<PrunePlan> {
    let config = configured(ctx, instance);
    let rules = config.rules.overridden_by(rules);
    if rules.is_empty() {
        return Err(Error::usage(
            format!("no retention rule for instance {instance}: nothing would be removed"),
            Some(format!(
                "give one, e.g. `--keep 10` or `--keep-daily 7 --keep-weekly 4`, or set [instances.{instance}.retention] in the config"
            )),
        ));
    }
    let Some(catalog) = open_existing(ctx)? else {
        return Ok(PrunePlan {
            instance: instance.to_string(),
            store: scope.store.clone(),
            other_hosts: 0,
            rules,
            decisions: Vec::new(),
            failed_dropped: Vec::new(),
            freed: 0,
            applied: false,
        });
    };
    let mut rows = catalog.list(&ListFilter {
        instance: Some(instance.to_string()),
        ..ListFilter::default()
    })?;
    let host = crate::lock::hostname();
    let before = rows.len();
    rows.retain(|r| scope.all_hosts || r.host == host);
    let other_hosts = before - rows.len();
    if let Some(name) = &scope.store {
        let mut held = Vec::new();
        for r in rows {
            if in_store(ctx, &catalog, &r, name)?.is_some() {
                held.push(r);
            }
        }
        rows = held;
    }
    let now = time::now();
    let decisions = decide(&rows, &rules, now);
    let max_age =
        jiff::SignedDuration::try_from(config.failed_max_age).unwrap_or(jiff::SignedDuration::MAX);
    let failed_dropped = rows
        .iter()
        .filter(|r| r.status == Status::Failed)
        .filter(|r| {
            r.created_at
                .parse::<Timestamp>()
                .is_ok_and(|t| now.duration_since(t) > max_age)
        })
        .map(|r| r.id.clone())
        .collect();
    let freed = decisions
        .iter()
        .filter(|d| !d.keep)
        .filter_map(|d| d.size)
        .sum();
    Ok(PrunePlan {
        instance: instance.to_string(),
        store: scope.store.clone(),
        other_hosts,
        rules,
        decisions,
        failed_dropped,
        freed,
        applied: false,
    })
}

/// Prunes while the caller holds the instance's lock (auto-pruning after a
/// restore or a guarded command's backup).
///
/// # Errors
///
/// As [`prune`], but for the lock.
pub fn prune_locked(
    ctx: &Context<'_>,
    lock: &InstanceLock,
    (rules, scope): (&Retention, &Scope),
) -> Result<PrunePlan> {
    let mut plan = plan(ctx, lock.instance(), (rules, scope))?;
    let catalog = Catalog::open(&ctx.layout.catalog())?;
    for d in plan.decisions.iter().filter(|d| !d.keep) {
        ctx.cancel.check()?;
        match &scope.store {
            Some(name) => remove_from_store(ctx, &catalog, &d.id, name)?,
            None => remove_backup(ctx, &catalog, &d.id)?,
        }
    }
    for id in &plan.failed_dropped {
        catalog.delete_row(id)?;
    }
    plan.applied = true;
    Ok(plan)
}

/// Removes one backup: its sidecar, its archive, then its row. A crash in
/// between leaves a row whose archive is missing, which the next prune or
/// `delete` finishes.
fn remove_backup(ctx: &Context<'_>, catalog: &Catalog, id: &str) -> Result<()> {
    if let Some(row) = catalog.get(id)? {
        // The further copies first, then the first location: a crash in
        // between leaves rows whose archives are missing, never an
        // archive no row names.
        for copy in catalog.copies_of(id)? {
            remove_archive(ctx, &copy.location)?;
        }
        if let Some(loc) = &row.location {
            remove_archive(ctx, loc)?;
        }
    }
    catalog.delete_row(id)?;
    Ok(())
}

/// Where backup `row` is in store `name` (its first location, or a
/// further copy), if it is there.
fn in_store(
    ctx: &Context<'_>,
    catalog: &Catalog,
    row: &BackupRecord,
    name: &str,
) -> Result<Option<(bool, String)>> {
    let store_of = |loc: &str| {
        ctx.config
            .stores
            .name_of(loc)
            .unwrap_or(crate::stores::HOME_STORE)
            .to_string()
    };
    if let Some(loc) = &row.location
        && store_of(loc) == name
    {
        return Ok(Some((true, loc.clone())));
    }
    Ok(catalog
        .copies_of(&row.id)?
        .into_iter()
        .find(|c| c.store == name)
        .map(|c| (false, c.location)))
}

/// Removes backup `id` from store `name` only: its copy there, or, when
/// that is its first location, that archive, a further copy taking its
/// place; a backup held nowhere else is removed whole.
fn remove_from_store(ctx: &Context<'_>, catalog: &Catalog, id: &str, name: &str) -> Result<()> {
    let Some(row) = catalog.get(id)? else {
        return Ok(());
    };
    let copies = catalog.copies_of(id)?;
    match in_store(ctx, catalog, &row, name)? {
        None => Ok(()),
        Some((false, loc)) => {
            remove_archive(ctx, &loc)?;
            Ok(catalog.remove_copy(id, name)?)
        }
        Some((true, loc)) => match copies.first() {
            None => remove_backup(ctx, catalog, id),
            Some(next) => {
                // The catalog first: a crash after it leaves an archive
                // no row names, which reconcile reports.
                catalog.promote_copy(id, &next.store, &next.location)?;
                remove_archive(ctx, &loc)
            }
        },
    }
}

/// Removes an archive with its sidecar and metadata, wherever it is.
pub(crate) fn remove_archive(ctx: &Context<'_>, loc: &str) -> Result<()> {
    if loc.starts_with("s3://") {
        let at = ctx.config.stores.locate(loc)?;
        at.sidecar().remove()?;
        crate::meta::remove(&at)?;
        return at.remove();
    }
    let archive = Path::new(loc);
    let meta = crate::meta::meta_path(archive);
    for path in [sidecar_path(archive), meta, archive.to_path_buf()] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &path, e)),
        }
    }
    fsutil::fsync_dir(&fsutil::parent_dir(archive))
}

/// What `delete` removed.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub id: String,
    pub location: Option<String>,
    pub size: Option<u64>,
}

/// Deletes backups by id: archive, sidecar and catalog row. Pinned ones are
/// refused (unpin them first), and so is a backup that incrementals not
/// being deleted need, unless `with_dependants` deletes them too (newest
/// first, so a chain never loses a link its remaining backups need).
///
/// # Errors
///
/// Fails on an unknown or pinned id, or a backup others need (before
/// anything is removed), a held lock, or a file that cannot be removed.
pub fn delete(
    ctx: &Context<'_>,
    ids: &[String],
    with_dependants: bool,
    wait: Option<Duration>,
) -> Result<Vec<Deleted>> {
    let store = StoreLock::shared(ctx.layout, wait, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let catalog = open_existing(ctx)?.ok_or_else(|| Error::NotFound {
        message: "there are no backups: the catalog does not exist".into(),
        hint: None,
    })?;
    let mut rows: Vec<BackupRecord> = Vec::new();
    for id in ids {
        let row = catalog.get(id)?.ok_or_else(|| Error::NotFound {
            message: format!("there is no backup {id}"),
            hint: Some("`backstop list` shows the backups there are".into()),
        })?;
        rows.push(row);
    }
    let rows = with_needed(&catalog, rows, with_dependants)?;
    let mut out = Vec::new();
    for row in rows {
        let lock = InstanceLock::acquire(
            &ctx.layout.locks(),
            &row.instance,
            &format!("delete {}", row.id),
            wait,
            ctx.cancel,
        )?;
        crate::ops::recover::recover_locked(ctx, &lock)?;
        remove_backup(ctx, &catalog, &row.id)?;
        out.push(Deleted {
            id: row.id,
            location: row.location,
            size: row.size,
        });
    }
    Ok(out)
}

/// The backups to delete for `rows`: refused when one is pinned, or when
/// backups outside the set need one (unless `with_dependants` adds them);
/// newest first.
fn with_needed(
    catalog: &Catalog,
    rows: Vec<BackupRecord>,
    with_dependants: bool,
) -> Result<Vec<BackupRecord>> {
    let mut all = rows;
    let asked: Vec<String> = all.iter().map(|r| r.id.clone()).collect();
    for id in &asked {
        let outside: Vec<BackupRecord> = catalog
            .dependants(id)?
            .into_iter()
            .filter(|d| !all.iter().any(|r| r.id == d.id))
            .collect();
        if outside.is_empty() {
            continue;
        }
        if !with_dependants {
            let names: Vec<&str> = outside.iter().map(|d| d.id.as_str()).collect();
            return Err(Error::usage(
                format!(
                    "backup {id} is needed by {}: incremental backups built on it",
                    names.join(", ")
                ),
                Some(format!(
                    "delete those too with `backstop delete {id} --with-dependants`, or keep it"
                )),
            ));
        }
        all.extend(outside);
    }
    if let Some(pinned) = all.iter().find(|r| r.pinned) {
        return Err(Error::usage(
            format!("backup {} is pinned", pinned.id),
            Some(format!(
                "`backstop unpin {}` first, if it really should go",
                pinned.id
            )),
        ));
    }
    all.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    Ok(all)
}

/// Pins or unpins a backup; returns its record.
///
/// # Errors
///
/// Fails on an unknown id.
pub fn set_pinned(ctx: &Context<'_>, id: &str, pinned: bool) -> Result<BackupRecord> {
    // The pin is also written beside the archive: not into a store that
    // is being moved.
    let store = StoreLock::shared(ctx.layout, None, ctx.cancel)?;
    let ctx = &ctx.under(&store);
    let catalog = open_existing(ctx)?.ok_or_else(|| Error::NotFound {
        message: format!("there is no backup {id}"),
        hint: Some("`backstop list` shows the backups there are".into()),
    })?;
    let row = catalog.get(id)?.ok_or_else(|| Error::NotFound {
        message: format!("there is no backup {id}"),
        hint: Some("`backstop list` shows the backups there are".into()),
    })?;
    // The file beside the archive first: if the catalog then fails, a
    // rebuild keeps what was asked for.
    if let Some(loc) = &row.location {
        let at = ctx.config.stores.locate(loc)?;
        if at.size()?.is_some() {
            crate::meta::write(&at, &crate::meta::BackupMeta::new(id, pinned))?;
        }
    }
    catalog.set_pinned(id, pinned)?;
    Ok(catalog.get(id)?.expect("the row exists"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Description;
    use crate::catalog::Status;

    fn rec(id: &str, at: &str, kind: BackupKind, pinned: bool) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            instance: "app".into(),
            origin: "/srv/app".into(),
            host: "h".into(),
            created_at: at.into(),
            finished_at: None,
            about: Description::new(kind, "manual"),
            location: None,
            size: Some(100),
            entries: None,
            files: None,
            bytes: None,
            compression: crate::archive::Codec::Zstd,
            encrypted: false,
            level: None,
            sha256: None,
            frames_sha256: None,
            status: Status::Available,
            error: None,
            warnings: 0,
            verified_at: None,
            verify_ok: None,
            verify_error: None,
            pinned,
            created_by: "backstop".into(),
            last_restored_at: None,
            last_restored_to: None,
            last_restored_by: None,
            parent: None,
            base: None,
            chain_position: 0,
            chain_size: None,
        }
    }

    fn kept(list: &[BackupRecord], rules: Retention, now: &str) -> Vec<(String, bool, String)> {
        decide(list, &rules, now.parse().unwrap())
            .into_iter()
            .map(|d| (d.id, d.keep, d.reasons.join(", ")))
            .collect()
    }

    use BackupKind::{Automatic as A, Manual as M};

    /// The table of cases: each backup with the rules that keep it, or none.
    #[test]
    fn retention_decisions() {
        let list = vec![
            rec("a1", "2026-01-01T10:00:00.000Z", M, false),
            rec("a2", "2026-01-01T18:00:00.000Z", A, false),
            rec("b1", "2026-01-02T09:00:00.000Z", A, true),
            rec("c1", "2026-01-09T09:00:00.000Z", M, false),
            rec("d1", "2026-02-01T09:00:00.000Z", A, false),
            rec("d2", "2026-02-01T12:00:00.000Z", A, false),
            rec("e1", "2027-03-01T09:00:00.000Z", M, false),
        ];
        let now = "2027-03-02T00:00:00Z";
        type Want = Vec<(&'static str, bool, &'static str)>;
        let cases: Vec<(Retention, Want)> = vec![
            (
                Retention {
                    keep: Some(2),
                    ..Retention::default()
                },
                vec![
                    ("e1", true, "newest, last 2"),
                    ("d2", true, "last 2"),
                    ("d1", false, "no rule keeps it"),
                    ("c1", false, "no rule keeps it"),
                    ("b1", true, "pinned"),
                    ("a2", false, "no rule keeps it"),
                    ("a1", false, "no rule keeps it"),
                ],
            ),
            (
                Retention {
                    keep_manual: Some(2),
                    keep_automatic: Some(1),
                    ..Retention::default()
                },
                vec![
                    ("e1", true, "newest, last 2 manual"),
                    ("d2", true, "last 1 automatic"),
                    ("d1", false, "no rule keeps it"),
                    ("c1", true, "last 2 manual"),
                    ("b1", true, "pinned"),
                    ("a2", false, "no rule keeps it"),
                    ("a1", false, "no rule keeps it"),
                ],
            ),
            (
                Retention {
                    keep_daily: Some(3),
                    ..Retention::default()
                },
                vec![
                    ("e1", true, "newest, daily"),
                    ("d2", true, "daily"),
                    ("d1", false, "no rule keeps it"),
                    ("c1", true, "daily"),
                    ("b1", true, "pinned"),
                    ("a2", false, "no rule keeps it"),
                    ("a1", false, "no rule keeps it"),
                ],
            ),
            (
                Retention {
                    keep_weekly: Some(10),
                    keep_monthly: Some(2),
                    keep_yearly: Some(5),
                    ..Retention::default()
                },
                vec![
                    ("e1", true, "newest, weekly, monthly, yearly"),
                    ("d2", true, "weekly, monthly, yearly"),
                    ("d1", false, "no rule keeps it"),
                    // 2026-01-09 is ISO week 2, 2026-01-01 and -02 week 1.
                    ("c1", true, "weekly"),
                    ("b1", true, "pinned, weekly"),
                    ("a2", false, "no rule keeps it"),
                    ("a1", false, "no rule keeps it"),
                ],
            ),
            (
                Retention {
                    keep_within: Some(Duration::from_secs(400 * 24 * 3600)),
                    ..Retention::default()
                },
                vec![
                    ("e1", true, "newest, within 400d"),
                    ("d2", true, "within 400d"),
                    ("d1", true, "within 400d"),
                    ("c1", false, "no rule keeps it"),
                    ("b1", true, "pinned"),
                    ("a2", false, "no rule keeps it"),
                    ("a1", false, "no rule keeps it"),
                ],
            ),
        ];
        for (rules, want) in cases {
            let got = kept(&list, rules.clone(), now);
            let want: Vec<(String, bool, String)> = want
                .into_iter()
                .map(|(a, b, c)| (a.to_string(), b, c.to_string()))
                .collect();
            assert_eq!(got, want, "{rules:?}");
        }
    }

    #[test]
    fn only_available_backups_count_and_the_newest_stays() {
        let mut failed = rec("z9", "2027-01-01T00:00:00.000Z", M, false);
        failed.status = Status::Failed;
        let list = vec![rec("a1", "2026-01-01T00:00:00.000Z", A, false), failed];
        let got = kept(
            &list,
            Retention {
                keep_manual: Some(0),
                ..Retention::default()
            },
            "2027-02-01T00:00:00Z",
        );
        assert_eq!(got, [("a1".to_string(), true, "newest".to_string())]);
    }

    #[test]
    fn same_second_ids_order_by_their_suffix() {
        let list = vec![
            rec(
                "app-2026-01-01-000000",
                "2026-01-01T00:00:00.000Z",
                M,
                false,
            ),
            rec(
                "app-2026-01-01-000000-2",
                "2026-01-01T00:00:00.000Z",
                M,
                false,
            ),
        ];
        let got = kept(
            &list,
            Retention {
                keep: Some(1),
                ..Retention::default()
            },
            "2026-01-02T00:00:00Z",
        );
        assert_eq!(got[0].0, "app-2026-01-01-000000-2");
        assert!(!got[1].1);
    }
}
