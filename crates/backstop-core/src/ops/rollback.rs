//! `rollback [VERSION]`: put an instance back as it was before an upgrade.
//!
//! Finds the newest available pre-upgrade backup (of `VERSION`, when given),
//! restores it exactly through the restore pipeline (safety backup, staging,
//! journal, services stopped and started), runs the instance's activate
//! command with the version, then its health check; any failure before the
//! commit point puts the pre-rollback state back (exit 5).

use crate::Context;
use crate::catalog::{BackupRecord, ListFilter, Status};
use crate::error::{Error, Result};
use crate::ops::list::open_existing;
use crate::ops::restore::{Mode, Purpose, RestoreOutcome, RestorePlan, RestoreRequest, restore};

/// What to roll back.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    /// The instance; the config's only instance when `None`.
    pub instance: Option<String>,
    /// The version to go back to; the newest pre-upgrade backup when `None`.
    pub version: Option<String>,
    /// The pre-upgrade backup to restore, chosen by id (from
    /// [`candidates`]); `version` is then not consulted.
    pub backup: Option<String>,
    pub dry_run: bool,
    pub pre_backup: bool,
    pub backup_message: Option<String>,
    pub wait: Option<std::time::Duration>,
}

/// The instance a command acts on: the one named, or the config's only one.
///
/// # Errors
///
/// Fails when none is named and the config has none or several.
pub fn pick_instance(ctx: &Context<'_>, named: Option<&str>) -> Result<String> {
    if let Some(name) = named {
        return Ok(name.to_string());
    }
    let names: Vec<&String> = ctx.config.instances.keys().collect();
    match names.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::usage(
            "no instance given, and the config defines none",
            Some("name the instance with --instance NAME".into()),
        )),
        many => Err(Error::usage(
            "no instance given, and the config defines several",
            Some(format!(
                "name one with --instance: {}",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        )),
    }
}

/// What a restore or rollback given no backup could restore: the
/// available backups of `instance` (pre-upgrade ones only for a rollback),
/// newest first.
///
/// # Errors
///
/// Fails when the catalog cannot be read, or there is no candidate (the
/// hint says how to make one).
pub fn candidates(
    ctx: &Context<'_>,
    instance: &str,
    pre_upgrade: bool,
) -> Result<Vec<BackupRecord>> {
    let filter = ListFilter {
        instance: Some(instance.to_string()),
        reason: pre_upgrade.then(|| "pre-upgrade".to_string()),
        status: Some(Status::Available),
        ..ListFilter::default()
    };
    let rows = match open_existing(ctx)? {
        Some(c) => c.list(&filter)?,
        None => Vec::new(),
    };
    if rows.is_empty() {
        let what = if pre_upgrade {
            "pre-upgrade backup"
        } else {
            "backup"
        };
        return Err(Error::NotFound {
            message: format!("instance {instance} has no available {what} to restore"),
            hint: Some(format!(
                "`backstop backup {instance}` makes one (`backstop guard {instance} -- CMD` \
                 before an upgrade); `backstop list {instance}` shows every backup"
            )),
        });
    }
    Ok(rows)
}

/// The backup a rollback of `instance` to `version` restores.
///
/// # Errors
///
/// Fails when there is none, naming the versions there are.
pub fn find_backup(
    ctx: &Context<'_>,
    instance: &str,
    version: Option<&str>,
) -> Result<BackupRecord> {
    let filter = ListFilter {
        instance: Some(instance.to_string()),
        reason: Some("pre-upgrade".into()),
        status: Some(Status::Available),
        ..ListFilter::default()
    };
    let rows = match open_existing(ctx)? {
        Some(c) => c.list(&filter)?,
        None => Vec::new(),
    };
    let found = rows
        .iter()
        .find(|r| version.is_none() || r.about.app_version.as_deref() == version);
    if let Some(r) = found {
        return Ok(r.clone());
    }
    let mut versions: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.about.app_version.as_deref())
        .collect();
    versions.dedup();
    let hint = if versions.is_empty() {
        format!(
            "instance {instance} has no pre-upgrade backups; `backstop guard {instance} -- CMD` makes one before an upgrade, and `backstop list {instance}` shows the others"
        )
    } else {
        format!("pre-upgrade backups exist of: {}", versions.join(", "))
    };
    Err(Error::NotFound {
        message: match version {
            Some(v) => {
                format!("instance {instance} has no available pre-upgrade backup of version {v}")
            }
            None => format!("instance {instance} has no available pre-upgrade backup"),
        },
        hint: Some(hint),
    })
}

/// Rolls an instance back; the outcome is the restore's.
///
/// # Errors
///
/// As [`restore`]; and when no matching backup exists.
pub fn rollback(
    ctx: &Context<'_>,
    req: &RollbackRequest,
    confirm: &mut dyn FnMut(&RestorePlan) -> bool,
) -> Result<(BackupRecord, RestoreOutcome)> {
    let instance = pick_instance(ctx, req.instance.as_deref())?;
    let backup = match &req.backup {
        Some(id) => candidates(ctx, &instance, true)?
            .into_iter()
            .find(|r| &r.id == id)
            .ok_or_else(|| Error::NotFound {
                message: format!("{id} is not an available pre-upgrade backup of {instance}"),
                hint: Some(format!(
                    "`backstop list {instance} --reason pre-upgrade` shows them"
                )),
            })?,
        None => find_backup(ctx, &instance, req.version.as_deref())?,
    };
    let mut request = RestoreRequest::new(backup.id.clone());
    request.mode = Some(Mode::Exact);
    request.instance = Some(instance);
    request.dry_run = req.dry_run;
    request.pre_backup = req.pre_backup;
    request.backup_message = req.backup_message.clone().or_else(|| {
        Some(format!(
            "before rolling back to {}",
            backup.about.app_version.as_deref().unwrap_or(&backup.id)
        ))
    });
    request.wait = req.wait;
    request.activate =
        Some(backup.about.app_version.clone().unwrap_or_default()).filter(|v| !v.is_empty());
    request.safety_reason = "pre-rollback".into();
    request.purpose = Purpose::Rollback;
    let outcome = restore(ctx, &request, confirm)?;
    Ok((backup, outcome))
}
