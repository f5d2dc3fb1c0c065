//! Object keys: relative, `/`-separated names, checked once.

use std::fmt;
use std::str::FromStr;

use super::StoreError;
use crate::fsutil::TEMP_PREFIX;

/// The longest key, in bytes: S3 allows 1024, and a store prefix comes
/// before it.
pub const MAX_KEY: usize = 768;

/// The longest component, in bytes: a local file name (255 at most) must
/// still fit once a writer's temporary prefix and suffix surround it.
pub const MAX_COMPONENT: usize = 200;

/// An object's name in a [`Store`](super::Store): components separated by
/// `/`, none of them empty, `.` or `..`, no leading or trailing `/`.
///
/// Components hold only ASCII letters, digits, `.`, `_`, `-` and `~`, the
/// characters that need no escaping in a URL and mean the same on every
/// filesystem, so a key names the same object in a directory and in a
/// bucket. A component may not start with backstop's temporary-file prefix
/// (`.backstop-tmp-`), which marks unfinished writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Checks `key`.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidKey`] saying what is wrong with it.
    pub fn new(key: &str) -> Result<Key, StoreError> {
        check(key).map_err(|reason| StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })?;
        Ok(Key(key.to_string()))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This key with `name` (one or more components) below it.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidKey`] when the result is not a key.
    pub fn join(&self, name: &str) -> Result<Key, StoreError> {
        Key::new(&format!("{}/{name}", self.0))
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Whether this key is `prefix` itself or lies below it.
    pub fn is_within(&self, prefix: &Key) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0) && self.0.as_bytes()[prefix.0.len()] == b'/')
    }
}

/// Why `key` is not a key.
fn check(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("it is empty");
    }
    if key.len() > MAX_KEY {
        return Err("it is longer than 768 bytes");
    }
    if key.starts_with('/') {
        return Err("it starts with `/`");
    }
    key.split('/').try_for_each(check_component)
}

/// Why `part` is not a component of a key.
fn check_component(part: &str) -> Result<(), &'static str> {
    match part {
        "" => Err("it has an empty component (`//` or a trailing `/`)"),
        "." | ".." => Err("it has a `.` or `..` component"),
        _ if part.len() > MAX_COMPONENT => Err("a component is longer than 200 bytes"),
        _ if part.starts_with(TEMP_PREFIX) => {
            Err("a component starts with `.backstop-tmp-`, which marks unfinished writes")
        }
        _ if !part.bytes().all(allowed) => {
            Err("it holds a character other than ASCII letters, digits, `.`, `_`, `-`, `~`")
        }
        _ => Ok(()),
    }
}

/// The bytes a component may hold: URL-unreserved characters.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-~".contains(&b)
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Key {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Key, StoreError> {
        Key::new(s)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_names_without_dot_components() {
        for good in [
            "a",
            "host/inst/20261202-1.tar.zst",
            "a.b/c_d/e-f~g",
            ".hidden/x",
        ] {
            assert_eq!(Key::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/..",
            "a/../b",
            "a b",
            "a%20b",
            "a\\b",
            "ä",
            "a/.backstop-tmp-x",
        ] {
            assert!(Key::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Key::new(&"x".repeat(201)).is_err());
        assert!(Key::new(&["y"; 400].join("/")).is_err());
    }

    #[test]
    fn within_means_below_a_component_boundary() {
        let k = Key::new("a/bc/d").unwrap();
        assert!(k.is_within(&Key::new("a").unwrap()));
        assert!(k.is_within(&Key::new("a/bc").unwrap()));
        assert!(k.is_within(&k));
        assert!(!k.is_within(&Key::new("a/b").unwrap()));
        assert_eq!(k.name(), "d");
        assert_eq!(k.components().count(), 3);
        assert_eq!(
            Key::new("a").unwrap().join("b/c").unwrap().as_str(),
            "a/b/c"
        );
    }
}
