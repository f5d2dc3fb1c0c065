//! S3 credentials from the usual AWS places: the environment, or a profile
//! in the shared credentials file. They are held in memory only and never
//! shown: `Debug` prints the key id alone.

use std::fmt;
use std::path::{Path, PathBuf};

use super::StoreError;

/// An access key, its secret, and a session token for temporary keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub(crate) key_id: String,
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("secret", &"<hidden>")
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Credentials {
    /// Credentials given directly.
    pub fn new(
        key_id: impl Into<String>,
        secret: impl Into<String>,
        token: Option<String>,
    ) -> Self {
        Credentials {
            key_id: key_id.into(),
            secret: secret.into(),
            token,
        }
    }

    /// The access key id (not secret: it names the key).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Credentials from this process's environment: `AWS_ACCESS_KEY_ID`
    /// and `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN` if set);
    /// otherwise the profile `AWS_PROFILE` names (`default` when unset) in
    /// `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoCredentials`] when neither gives a key and secret,
    /// naming what was looked at (never a value).
    pub fn from_env() -> Result<Credentials, StoreError> {
        Credentials::resolve(&|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`Credentials::from_env`] with the environment given as `var`.
    pub(crate) fn resolve(var: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, StoreError> {
        let none = |detail: String| StoreError::NoCredentials { detail };
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(key_id), Some(secret)) => {
                return Ok(Credentials::new(key_id, secret, var("AWS_SESSION_TOKEN")));
            }
            (Some(_), None) => {
                return Err(none(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(none(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
                ));
            }
            (None, None) => {}
        }
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let file = match var("AWS_SHARED_CREDENTIALS_FILE") {
            Some(file) => PathBuf::from(file),
            None => match var("HOME") {
                Some(home) => Path::new(&home).join(".aws/credentials"),
                None => {
                    return Err(none(
                        "AWS_ACCESS_KEY_ID is not set, and HOME is not set".into(),
                    ));
                }
            },
        };
        from_file(&file, &profile)
    }
}

/// The profile `profile` of the credentials file `file`.
fn from_file(file: &Path, profile: &str) -> Result<Credentials, StoreError> {
    let none = |detail: String| StoreError::NoCredentials { detail };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(none(format!(
                "AWS_ACCESS_KEY_ID is not set, and there is no {}",
                file.display()
            )));
        }
        Err(e) => return Err(none(format!("cannot read {}: {e}", file.display()))),
    };
    let values = profile_values(&text, profile)
        .ok_or_else(|| none(format!("{} has no profile [{profile}]", file.display())))?;
    let get = |name: &str| {
        values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(key_id), Some(secret)) => {
            Ok(Credentials::new(key_id, secret, get("aws_session_token")))
        }
        _ => Err(none(format!(
            "profile [{profile}] of {} lacks aws_access_key_id or aws_secret_access_key",
            file.display()
        ))),
    }
}

/// The `key = value` lines of section `[profile]` of an INI text, keys
/// lower-cased; `None` when there is no such section. Comments (`#`, `;`)
/// and blank lines are skipped; a later section of the same name adds to
/// the first, as the AWS tools read it.
fn profile_values(text: &str, profile: &str) -> Option<Vec<(String, String)>> {
    let mut values = Vec::new();
    let mut found = false;
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == profile;
            found |= inside;
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            values.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    found.then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_environment_comes_first() {
        let c = Credentials::resolve(&env(&[
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_SESSION_TOKEN", "sess-9"),
            ("AWS_PROFILE", "other"),
        ]))
        .unwrap();
        assert_eq!(
            c,
            Credentials::new("AKIA1", "s3cr3t", Some("sess-9".into()))
        );
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIA1") && !shown.contains("s3cr3t") && !shown.contains("sess-9"));
        let half = Credentials::resolve(&env(&[("AWS_ACCESS_KEY_ID", "AKIA1")])).unwrap_err();
        assert!(half.to_string().contains("AWS_SECRET_ACCESS_KEY is not"));
    }

    #[test]
    fn profiles_are_read_from_the_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "# keys\n[default]\naws_access_key_id = AKIAD\naws_secret_access_key=sd\n\n\
             [backup]\n; the off-site key\nAWS_ACCESS_KEY_ID = AKIAB \naws_secret_access_key = sb=x\n\
             aws_session_token = tb\n[broken]\naws_access_key_id = only\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let with = |profile: Option<&str>| {
            let mut pairs = vec![("AWS_SHARED_CREDENTIALS_FILE", path)];
            pairs.extend(profile.map(|p| ("AWS_PROFILE", p)));
            Credentials::resolve(&env(&pairs))
        };
        assert_eq!(with(None).unwrap(), Credentials::new("AKIAD", "sd", None));
        assert_eq!(
            with(Some("backup")).unwrap(),
            Credentials::new("AKIAB", "sb=x", Some("tb".into()))
        );
        let missing = with(Some("nope")).unwrap_err().to_string();
        assert!(missing.contains("no profile [nope]"), "{missing}");
        let broken = with(Some("broken")).unwrap_err().to_string();
        assert!(
            broken.contains("lacks") && !broken.contains("only"),
            "{broken}"
        );
        let home = Credentials::resolve(&env(&[("HOME", dir.path().to_str().unwrap())]));
        assert!(home.unwrap_err().to_string().contains(".aws/credentials"));
    }
}
