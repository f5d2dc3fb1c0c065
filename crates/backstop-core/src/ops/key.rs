//! `key new` and `key check`: make an age identity, and prove that the
//! identities a person holds open what backstop encrypts.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;

use crate::command::CommandEnv;
use crate::encryption::{self, EncryptMode, EncryptRequest, Recipients};
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::{Context, fsutil, time};

/// A new identity.
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    /// The recipient line to put in the config (public).
    pub recipient: String,
    /// Where the identity was written (mode 0600).
    pub file: Option<String>,
    /// The identity file's content, when it was not written to a file: the
    /// caller hands it to the person, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Makes a new X25519 identity and writes it to `out` (created with mode
/// 0600, never over an existing file), or returns it when `out` is `None`.
///
/// # Errors
///
/// Fails when `out` exists or cannot be written and flushed.
pub fn new_key(out: Option<&Path>) -> Result<NewKey> {
    let (text, recipient) = encryption::new_identity(&time::now_rfc3339());
    let Some(path) = out else {
        return Ok(NewKey {
            recipient,
            file: None,
            identity: Some(text),
        });
    };
    let mut file = fsutil::create_private(path).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Error::usage(
                format!("{} already exists", path.display()),
                Some("backstop never overwrites a key: choose another --out FILE".into()),
            )
        }
        other => other,
    })?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(Error::io("writing", path, e));
    }
    fsutil::fsync_dir(&fsutil::parent_dir(path))?;
    Ok(NewKey {
        recipient,
        file: Some(path.display().to_string()),
        identity: None,
    })
}

/// Whether one identity opens the test stream.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityCheck {
    pub identity: String,
    pub opens: bool,
}

/// What `key check` found.
#[derive(Debug, Clone, Serialize)]
pub struct KeyCheck {
    /// The recipients the test stream was encrypted to: those backups go to.
    pub recipients: Vec<String>,
    pub identities: Vec<IdentityCheck>,
}

impl KeyCheck {
    /// Whether every identity given opens what backups are encrypted to.
    pub fn all_open(&self) -> bool {
        self.identities.iter().all(|i| i.opens)
    }
}

/// Encrypts a fresh test stream, as a backup's archive is encrypted, to
/// the recipients backups of `instance` (or, without one, of
/// `[defaults.encryption]`) go to, plus `extra`; then tries to open it
/// with each identity of `ctx.keys`, one at a time.
///
/// # Errors
///
/// Fails when there are no recipients or no identities, or when a
/// configured recipient or identity cannot be used.
pub fn check_keys(
    ctx: &Context<'_>,
    instance: Option<&Instance>,
    extra: &[String],
) -> Result<KeyCheck> {
    let config = match instance {
        Some(i) => i.encryption.or_defaults(&ctx.config.encryption),
        None => ctx.config.encryption.clone(),
    };
    let request = EncryptRequest {
        mode: EncryptMode::Required,
        extra: extra.to_vec(),
    };
    if config.passphrase_command.is_some() {
        return Err(Error::usage(
            "`key check` tests identities, and this encryption table has a \
             `passphrase_command` instead of recipients",
            Some(
                "test the passphrase by verifying a backup (`backstop verify INSTANCE`), which \
                 decrypts it with what the command prints"
                    .into(),
            ),
        ));
    }
    let env = instance.map_or_else(CommandEnv::default, Instance::env);
    let recipients = Recipients::resolve(&config, &request, &env)?
        .expect("a required encryption has recipients or fails");
    let sets = ctx.keys.all()?;
    if sets.is_empty() {
        return Err(Error::usage(
            "no identity to check",
            Some(
                "give --identity FILE (repeatable), $BACKSTOP_IDENTITY, or `identity_file` in \
                 the [encryption] table of the config"
                    .into(),
            ),
        ));
    }
    let sealed = test_stream(&recipients)?;
    Ok(KeyCheck {
        recipients: recipients.shown.clone(),
        identities: sets
            .iter()
            .map(|set| IdentityCheck {
                identity: set.name.clone(),
                opens: encryption::opens(&sealed, set),
            })
            .collect(),
    })
}

/// A few age chunks of fresh random bytes, encrypted to `recipients`.
fn test_stream(recipients: &Recipients) -> Result<Vec<u8>> {
    let mut plain = vec![0u8; 200 << 10];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut plain))
        .map_err(|e| Error::io("reading", "/dev/urandom", e))?;
    let mut sealed = Vec::with_capacity(plain.len() + 4096);
    let mut w = recipients
        .wrap(&mut sealed)
        .map_err(|e| Error::io("encrypting", "the test stream", e))?;
    w.write_all(&plain)
        .and_then(|()| w.finish().map(drop))
        .map_err(|e| Error::io("encrypting", "the test stream", e))?;
    Ok(sealed)
}
