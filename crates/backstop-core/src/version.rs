//! Application versions as a restore compares them: only their major
//! version, read the way semantic versioning counts it.
//!
//! A version is whatever an instance's probe reads (a file, a symlink's
//! target, a command's output), so it is free text; what is not a version
//! this module can read is never compared, and so never blocks anything.

use std::fmt;

/// The part of a version whose change may break compatibility: the first
/// number, or for a `0.` version the first two (semver: "anything may
/// change" below 1.0, so each minor release counts as a major one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Major {
    major: u64,
    /// Set only when `major` is 0 and a minor number follows.
    minor: Option<u64>,
}

impl Major {
    /// The major version of `version`: `1.2.3` → 1, `v2.0` → 2,
    /// `0.3.1` → 0.3, `2024.05` → 2024, `3.0.0-rc1` → 3. `None` when it does
    /// not begin with a number (after an optional `v`): `latest`, `git-abc`.
    pub fn of(version: &str) -> Option<Major> {
        let text = version.trim();
        let text = text
            .strip_prefix('v')
            .or_else(|| text.strip_prefix('V'))
            .unwrap_or(text);
        let mut parts = text.split('.');
        let major = leading_number(parts.next()?, true)?;
        let minor = match major {
            0 => parts.next().and_then(|p| leading_number(p, false)),
            _ => None,
        };
        Some(Major { major, minor })
    }
}

/// A backup of another major version than the instance runs: what a plain
/// restore refuses without `--force`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "backup {backup} was made by {instance} {backup_version} (major version {backup_major}), \
     and {instance} reports {current} (major version {current_major}) now: restoring it would \
     put the files of another major version under the running one"
)]
pub struct Mismatch {
    pub backup: String,
    pub instance: String,
    pub backup_version: String,
    pub backup_major: Major,
    pub current: String,
    pub current_major: Major,
}

/// The number a version component is: all of it when `whole` (the first
/// component, so that `1x` is not read as 1), else its leading digits
/// (`3-rc1` → 3).
fn leading_number(part: &str, whole: bool) -> Option<u64> {
    let digits = part
        .find(|c: char| !c.is_ascii_digit())
        .map_or(part, |end| &part[..end]);
    let rest = &part[digits.len()..];
    let ends_well = rest.is_empty() || rest.starts_with(['-', '+', '~', '_']);
    if digits.is_empty() || (whole && !ends_well) {
        return None;
    }
    digits.parse().ok()
}

impl fmt::Display for Major {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.minor {
            Some(minor) => write!(f, "{}.{minor}", self.major),
            None => write!(f, "{}", self.major),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn major(v: &str) -> Option<String> {
        Major::of(v).map(|m| m.to_string())
    }

    #[test]
    fn semver_versions_give_their_first_number() {
        assert_eq!(major("1.2.3").as_deref(), Some("1"));
        assert_eq!(major("10.0").as_deref(), Some("10"));
        assert_eq!(major("2").as_deref(), Some("2"));
        assert_eq!(major("3.0.0-rc1").as_deref(), Some("3"));
        assert_eq!(major("4-beta").as_deref(), Some("4"));
        assert_eq!(major("5+build7").as_deref(), Some("5"));
        assert_eq!(major("2024.05.1").as_deref(), Some("2024"));
        assert_eq!(major(" 1.2.3\n").as_deref(), Some("1"));
    }

    #[test]
    fn a_leading_v_is_skipped() {
        assert_eq!(major("v2.0").as_deref(), Some("2"));
        assert_eq!(major("V1").as_deref(), Some("1"));
    }

    #[test]
    fn below_one_the_minor_counts() {
        assert_eq!(major("0.1.12").as_deref(), Some("0.1"));
        assert_eq!(major("v0.3").as_deref(), Some("0.3"));
        assert_eq!(major("0.3-rc1").as_deref(), Some("0.3"));
        assert_eq!(major("0").as_deref(), Some("0"));
        assert_ne!(Major::of("0.1.12"), Major::of("0.2.0"));
        assert_eq!(Major::of("0.1.11"), Major::of("0.1.12"));
        assert_eq!(Major::of("1.2.0"), Major::of("v1.9"));
    }

    #[test]
    fn what_is_not_a_version_has_no_major() {
        for v in ["", "latest", "git-4f2a9c", "v", "1x.2", "release-1.2", ".5"] {
            assert_eq!(Major::of(v), None, "{v:?}");
        }
    }
}
