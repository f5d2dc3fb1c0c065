//! Instance names bound to where their backups come from.
//!
//! A name is what `list`, `prune` and the store directory go by, so two
//! directories must never share one: `prune data --keep 1` would remove
//! the other directory's backups. An instance's *origin* is the machine and
//! the resolved root its backups were taken from, which every catalog row
//! records (`host`, `origin`). An ad-hoc instance takes the first of
//! `data`, `data-2`, `data-3`… that is already its own or claimed by
//! nobody, so the same directory always comes back to the same name; a
//! configured instance whose name holds another origin's backups is
//! refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::Context;
use crate::catalog::{Catalog, Claim};
use crate::error::{Error, Result};
use crate::instance::{Instance, InstanceOrigin, MAX_NAME};

/// An ad-hoc instance that could not keep the name of its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renamed {
    /// The name the directory would have had.
    pub wanted: String,
    /// The name it has.
    pub name: String,
    /// Where the backups under `wanted` come from.
    pub taken_by: String,
}

/// Whether `claim` is a backup of `instance` from `host`: its resolved
/// root, or the root as configured (backups taken before roots were
/// resolved recorded that spelling).
fn is_ours(claim: &Claim, instance: &Instance, host: &str) -> bool {
    claim.host == host && same_root(claim, instance)
}

/// Whether `claim` was taken from `instance`'s root, on whatever machine: a
/// configured instance keeps its name when the machine is renamed or the
/// home moves to a new one with the same paths.
fn same_root(claim: &Claim, instance: &Instance) -> bool {
    Path::new(&claim.origin) == instance.root
        || Path::new(&claim.origin) == instance.configured_root
}

/// `name`, or `name-n` for n ≥ 2, kept within [`MAX_NAME`] bytes.
fn candidate(base: &str, n: u32) -> String {
    if n == 1 {
        return base.to_string();
    }
    let suffix = format!("-{n}");
    let mut stem = base.to_string();
    while stem.len() + suffix.len() > MAX_NAME {
        stem.pop();
    }
    format!("{}{suffix}", stem.trim_end_matches(['-', '.']))
}

/// The name an ad-hoc `instance` gets, given the catalog's claims on its
/// name and the names like it, and the configured instances (each claims
/// its own name for its root): the first candidate with a claim of its
/// own, else the first no one claims.
pub fn ad_hoc_name(
    instance: &Instance,
    host: &str,
    claims: &[Claim],
    configured: &BTreeMap<String, Instance>,
) -> String {
    let claimed_by = |name: &str| {
        let rows: Vec<&Claim> = claims.iter().filter(|c| c.instance == name).collect();
        let config = configured.get(name);
        let ours = rows.iter().any(|c| is_ours(c, instance, host))
            || config.is_some_and(|c| c.root == instance.root);
        (ours, rows.is_empty() && config.is_none())
    };
    let mut first_free = None;
    // Every name beyond the claims is free: the search ends there.
    for n in 1..=(claims.len() + configured.len() + 1) as u32 {
        let name = candidate(&instance.name, n);
        let (ours, free) = claimed_by(&name);
        if ours {
            return name;
        }
        if free && first_free.is_none() {
            first_free = Some(name);
        }
    }
    first_free.expect("one more name than there are claims is free")
}

/// Where `claims` say the backups of `name` come from, for a message.
fn shown_origins(claims: &[&Claim]) -> String {
    let mut shown: Vec<String> = claims
        .iter()
        .map(|c| format!("{} on {}", c.origin, c.host))
        .collect();
    shown.sort();
    shown.dedup();
    match shown.len() {
        0 | 1 => shown.concat(),
        n => format!("{} and {} other(s)", shown[0], n - 1),
    }
}

/// Settles the name `instance` is backed up under: an ad-hoc instance may
/// be renamed (the new name is returned), a configured one is checked.
/// Reads the catalog only if it exists, so a dry run creates nothing.
///
/// # Errors
///
/// [`Error::NameTaken`] when a configured instance's name holds backups of
/// another origin only; a catalog error.
pub fn settle(ctx: &Context<'_>, instance: &mut Instance) -> Result<Option<Renamed>> {
    let path = ctx.layout.catalog();
    let claims = if path.exists() {
        Catalog::open(&path)?.claims(&instance.name)?
    } else {
        Vec::new()
    };
    let host = crate::lock::hostname();
    match instance.origin {
        InstanceOrigin::Config(_) => {
            let rows: Vec<&Claim> = claims
                .iter()
                .filter(|c| c.instance == instance.name)
                .collect();
            if rows.is_empty() || rows.iter().any(|c| same_root(c, instance)) {
                return Ok(None);
            }
            Err(Error::NameTaken {
                name: instance.name.clone(),
                ours: format!("{} on {host}", instance.root.display()),
                theirs: shown_origins(&rows),
            })
        }
        InstanceOrigin::AdHoc => {
            let name = ad_hoc_name(instance, &host, &claims, &ctx.config.instances);
            if name == instance.name {
                return Ok(None);
            }
            let wanted = std::mem::replace(&mut instance.name, name.clone());
            let taken: Vec<&Claim> = claims.iter().filter(|c| c.instance == wanted).collect();
            let taken_by = match ctx.config.instances.get(&wanted) {
                Some(c) if taken.is_empty() => {
                    format!("the configured instance at {}", c.root.display())
                }
                _ => shown_origins(&taken),
            };
            Ok(Some(Renamed {
                wanted,
                name,
                taken_by,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn claim(instance: &str, origin: &str) -> Claim {
        Claim {
            instance: instance.into(),
            host: "h".into(),
            origin: origin.into(),
        }
    }

    fn data_at(root: &str) -> Instance {
        Instance::bare("data", PathBuf::from(root), Vec::new())
    }

    #[test]
    fn a_second_origin_gets_the_next_free_name_and_keeps_it() {
        let none = BTreeMap::new();
        let p1 = data_at("/p1/data");
        let p2 = data_at("/p2/data");
        assert_eq!(ad_hoc_name(&p1, "h", &[], &none), "data");
        let claims = [claim("data", "/p1/data")];
        assert_eq!(ad_hoc_name(&p1, "h", &claims, &none), "data");
        assert_eq!(ad_hoc_name(&p2, "h", &claims, &none), "data-2");
        let claims = [claim("data", "/p1/data"), claim("data-2", "/p2/data")];
        assert_eq!(ad_hoc_name(&p2, "h", &claims, &none), "data-2");
        assert_eq!(
            ad_hoc_name(&data_at("/p3/data"), "h", &claims, &none),
            "data-3"
        );
        // The same path on another machine is another origin.
        assert_eq!(ad_hoc_name(&p1, "other", &claims, &none), "data-3");
        // p2 keeps its name even once p1's backups are gone, and a name
        // freed below it is not taken instead.
        let claims = [claim("data-2", "/p2/data")];
        assert_eq!(ad_hoc_name(&p2, "h", &claims, &none), "data-2");
        assert_eq!(ad_hoc_name(&p1, "h", &claims, &none), "data");
    }

    #[test]
    fn a_configured_name_is_claimed_by_its_root() {
        let mut configured = BTreeMap::new();
        configured.insert("data".to_string(), data_at("/srv/data"));
        assert_eq!(
            ad_hoc_name(&data_at("/p1/data"), "h", &[], &configured),
            "data-2"
        );
        assert_eq!(
            ad_hoc_name(&data_at("/srv/data"), "h", &[], &configured),
            "data"
        );
    }

    #[test]
    fn suffixed_names_stay_within_the_bound() {
        let long = "x".repeat(MAX_NAME);
        assert_eq!(candidate(&long, 12).len(), MAX_NAME);
        assert!(candidate(&long, 12).ends_with("x-12"));
    }
}
