//! Encryption: an archive wrapped as one age stream (`<id>.tar.zst.age`).
//!
//! The host that backs up holds only *recipients* (public keys); the
//! *identities* (private keys) that open an archive are needed only to
//! restore or to verify the content, and may live elsewhere. Only X25519
//! (`age1…`) and SSH (`ssh-ed25519 …`, `ssh-rsa …`) recipients are
//! accepted: Debian's `age` 1.1.1 opens every archive backstop writes.
//! An instance may instead encrypt to a passphrase (age's scrypt
//! recipient, alone: age allows no other recipient beside it), which a
//! configured `passphrase_command` prints; to open such an archive the
//! command runs again, or the front end asks (see [`Keys::with_prompt`]).
//!
//! The writer wraps its output in [`Recipients::wrap`]; the reader wraps
//! its input in [`decrypt`] before the decompressor. Everything else (the
//! sidecar, the catalog's checksum) sees the ciphertext.

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};

use age::secrecy::ExposeSecret;
pub use age::secrecy::SecretString;
use age_core::format::{FileKey, Stanza};
use serde::Deserialize;

mod payload;

pub use payload::Payload;

use crate::command::{CommandEnv, CommandLine, Run};
use crate::error::{Error, ErrorKind, Result};

/// The scrypt work factor (log2 N) of a passphrase archive: the `age`
/// CLI's own, which every age implementation opens without complaint.
const SCRYPT_WORK_FACTOR: u8 = 18;
/// The highest work factor a passphrase archive may ask for (age's Go
/// implementation refuses more by default).
const SCRYPT_MAX_WORK_FACTOR: u8 = 22;
/// How long a `passphrase_command` may take.
const PASSPHRASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// What reports show for a passphrase "recipient" (never the passphrase).
pub const PASSPHRASE_SHOWN: &str = "passphrase (scrypt)";

/// The first bytes of every age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// What an encrypted archive's name ends with, after the codec's suffix.
pub const EXTENSION: &str = ".age";

/// Whether `head` (the first bytes of a file) is an age file.
pub fn is_age(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC)
}

/// A problem with keys or with an encrypted archive.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptionError {
    /// A configured or given recipient cannot be parsed.
    #[error("`{recipient}` is not a recipient backstop can encrypt to: {detail}")]
    BadRecipient { recipient: String, detail: String },
    /// A recipients file cannot be read.
    #[error("cannot read the recipients file {}: {detail}", path.display())]
    RecipientsFile { path: PathBuf, detail: String },
    /// Encryption was asked for and there is nobody to encrypt to.
    #[error("encryption is asked for, but no recipients are configured or given")]
    NoRecipients,
    /// An identity file cannot be read or holds no usable identity.
    #[error("cannot use the identity {name}: {detail}")]
    BadIdentity { name: String, detail: String },
    /// An encrypted archive and no identity to open it.
    #[error("{} is encrypted, and no identity was given to open it", path.display())]
    NoIdentity { path: PathBuf },
    /// None of the identities given is one the archive was encrypted to.
    #[error("none of the identities given ({}) opens {}", tried.join(", "), path.display())]
    WrongIdentity { path: PathBuf, tried: Vec<String> },
    /// A passphrase archive, no `passphrase_command`, and no terminal to
    /// ask on.
    #[error("{} is encrypted to a passphrase, and there is no passphrase_command and no terminal to ask for it", path.display())]
    NoPassphrase { path: PathBuf },
    /// The passphrases tried do not open the archive.
    #[error("the passphrase ({}) does not open {}", tried.join(", "), path.display())]
    WrongPassphrase { path: PathBuf, tried: Vec<String> },
    /// A `passphrase_command` failed or printed nothing.
    #[error("{command} gave no passphrase: {detail}")]
    PassphraseCommand { command: String, detail: String },
    /// `passphrase_command` together with `--recipient`: age encrypts to a
    /// passphrase alone.
    #[error("a backup encrypted to a passphrase cannot have other recipients ({})", extra.join(", "))]
    PassphraseWithRecipients { extra: Vec<String> },
    /// The age header or the ciphertext failed age's authentication, or is
    /// cut short.
    #[error("{}: the encryption is damaged or the file was changed: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
}

impl EncryptionError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            EncryptionError::Damaged { .. } => ErrorKind::Integrity,
            EncryptionError::PassphraseCommand { .. } => ErrorKind::Failed,
            _ => ErrorKind::Usage,
        }
    }

    pub(crate) fn hint(&self) -> Option<String> {
        Some(match self {
            EncryptionError::BadRecipient { .. } => {
                "give an X25519 recipient (`age1…`, from `backstop key new` or `age-keygen -y`) \
                 or an SSH public key (`ssh-ed25519 …`); post-quantum and plugin recipients \
                 are not supported"
                    .into()
            }
            EncryptionError::RecipientsFile { .. } => {
                "fix `recipients_file` in the [encryption] table of the config".into()
            }
            EncryptionError::NoRecipients => {
                "add `recipients = [\"age1…\"]` to [instances.NAME.encryption] or \
                 [defaults.encryption], or give --recipient; `backstop key new` makes a key"
                    .into()
            }
            EncryptionError::BadIdentity { .. } => {
                "give an age identity file (`AGE-SECRET-KEY-1…` lines, as `backstop key new` \
                 writes) or an unencrypted SSH private key"
                    .into()
            }
            EncryptionError::NoIdentity { .. } => {
                "give the identity with --identity FILE (or $BACKSTOP_IDENTITY), or set \
                 `identity_file` in the [encryption] table of the config"
                    .into()
            }
            EncryptionError::WrongIdentity { .. } => {
                "give the identity whose recipient the backup was encrypted to (your offline \
                 recovery key, if the admin key is not it); `backstop key check` tests a key"
                    .into()
            }
            EncryptionError::NoPassphrase { .. } => {
                "set `passphrase_command = \"…\"` (a command printing the passphrase) in the \
                 [encryption] table of the config, or run backstop on a terminal to be asked"
                    .into()
            }
            EncryptionError::WrongPassphrase { .. } => {
                "give the passphrase the backup was made with (check what `passphrase_command` \
                 prints); nothing was written"
                    .into()
            }
            EncryptionError::PassphraseCommand { .. } => {
                "run the command by hand: its first line of output is the passphrase (at the \
                 terminal prompt, type the passphrase and Enter)"
                    .into()
            }
            EncryptionError::PassphraseWithRecipients { .. } => {
                "drop --recipient, or encrypt to keys instead of `passphrase_command`".into()
            }
            EncryptionError::Damaged { .. } => {
                "do not restore from this archive; restore another backup (`backstop list`)".into()
            }
        })
    }
}

/// The `[encryption]` table of an instance or of `[defaults]`, with its
/// paths resolved against the config file's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Recipient lines (`age1…`, `ssh-ed25519 …`).
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of recipient lines (`#` comments and blank lines allowed),
    /// read at each backup.
    pub recipients_file: Option<PathBuf>,
    /// An identity file this machine may use to restore and verify.
    pub identity_file: Option<PathBuf>,
    /// A command whose first line of output is the passphrase to encrypt
    /// to (scrypt) and to decrypt with; instead of recipients.
    pub passphrase_command: Option<CommandLine>,
}

impl EncryptionConfig {
    /// Resolves relative paths against `base` and checks every recipient.
    ///
    /// # Errors
    ///
    /// Fails with a message for the config when a recipient does not parse.
    pub(crate) fn checked(mut self, base: &Path) -> std::result::Result<Self, String> {
        if self.passphrase_command.is_some()
            && (!self.recipients.is_empty() || self.recipients_file.is_some())
        {
            return Err("`passphrase_command` cannot be used with `recipients` or \
                 `recipients_file`: age encrypts to a passphrase alone; keep one of them"
                .into());
        }
        for r in &self.recipients {
            parse_recipient(r).map_err(|e| e.to_string())?;
        }
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        self.recipients_file = self.recipients_file.map(resolve);
        self.identity_file = self.identity_file.map(resolve);
        Ok(self)
    }

    /// This table with what it leaves out taken from `defaults`: what to
    /// encrypt to (the recipients list and file, or the passphrase command,
    /// together) and the identity file each fall back separately.
    pub fn or_defaults(&self, defaults: &EncryptionConfig) -> EncryptionConfig {
        let own_recipients = !self.recipients.is_empty()
            || self.recipients_file.is_some()
            || self.passphrase_command.is_some();
        let from = if own_recipients { self } else { defaults };
        EncryptionConfig {
            recipients: from.recipients.clone(),
            recipients_file: from.recipients_file.clone(),
            passphrase_command: from.passphrase_command.clone(),
            identity_file: self
                .identity_file
                .clone()
                .or_else(|| defaults.identity_file.clone()),
        }
    }
}

/// Whether a backup is encrypted: as the config says, or as a flag says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EncryptMode {
    /// Encrypted when the instance (or `[defaults]`) has recipients.
    #[default]
    AsConfigured,
    /// Encrypted, or refused when there are no recipients (`--encrypt`).
    Required,
    /// Not encrypted, whatever the config says (`--no-encrypt`).
    Off,
}

/// What a backup request says about encryption.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptRequest {
    pub mode: EncryptMode,
    /// Recipients on top of the configured ones (`--recipient`); they make
    /// the backup encrypted.
    pub extra: Vec<String>,
}

/// Parsed recipients, ready to encrypt to.
pub struct Recipients {
    list: Vec<Box<dyn age::Recipient + Send + Sync>>,
    /// The recipient lines, for reports (public keys: not secret).
    pub shown: Vec<String>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipients")
            .field("shown", &self.shown)
            .finish()
    }
}

impl Recipients {
    /// Parses recipient lines.
    ///
    /// # Errors
    ///
    /// Fails on the first line that is not an X25519 or SSH recipient.
    pub fn parse(lines: &[String]) -> Result<Recipients> {
        let list = lines
            .iter()
            .map(|l| parse_recipient(l))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Recipients {
            list,
            shown: lines.to_vec(),
        })
    }

    /// The recipients a backup is encrypted to: the configured ones (the
    /// list and the file), and the request's; or the passphrase that
    /// `passphrase_command` prints (run with `env`); `None` when it is not
    /// encrypted.
    ///
    /// # Errors
    ///
    /// Fails when encryption is required and there are no recipients, when
    /// the recipients file cannot be read, a recipient does not parse, the
    /// passphrase command fails, or recipients are given beside it.
    pub fn resolve(
        config: &EncryptionConfig,
        req: &EncryptRequest,
        env: &CommandEnv,
    ) -> Result<Option<Recipients>> {
        if req.mode == EncryptMode::Off {
            return Ok(None);
        }
        if let Some(command) = &config.passphrase_command {
            if !req.extra.is_empty() {
                return Err(EncryptionError::PassphraseWithRecipients {
                    extra: req.extra.clone(),
                }
                .into());
            }
            let mut recipient = age::scrypt::Recipient::new(run_passphrase_command(command, env)?);
            recipient.set_work_factor(SCRYPT_WORK_FACTOR);
            return Ok(Some(Recipients {
                list: vec![Box::new(recipient)],
                shown: vec![PASSPHRASE_SHOWN.to_string()],
            }));
        }
        let mut lines = config.recipients.clone();
        if let Some(file) = &config.recipients_file {
            lines.extend(read_recipients_file(file)?);
        }
        lines.extend(req.extra.iter().cloned());
        if lines.is_empty() {
            return match req.mode {
                EncryptMode::Required => Err(EncryptionError::NoRecipients.into()),
                _ => Ok(None),
            };
        }
        Recipients::parse(&lines).map(Some)
    }

    /// Wraps `out` so that what is written to it is encrypted to these
    /// recipients. The caller must call `finish()` on the result.
    ///
    /// # Errors
    ///
    /// Fails when the header cannot be written to `out`.
    pub fn wrap<W: Write>(&self, out: W) -> io::Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(self.list.iter().map(|r| r.as_ref() as _))
            .map_err(|e| io::Error::other(e.to_string()))?;
        encryptor.wrap_output(out)
    }
}

fn parse_recipient(
    line: &str,
) -> std::result::Result<Box<dyn age::Recipient + Send + Sync>, Error> {
    let line = line.trim();
    let bad = |detail: String| EncryptionError::BadRecipient {
        recipient: line.to_string(),
        detail,
    };
    if line.starts_with("age1") {
        age::x25519::Recipient::from_str(line)
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send + Sync>)
            .map_err(|e| bad(format!("not an X25519 recipient ({e})")).into())
    } else if line.starts_with("ssh-") {
        age::ssh::Recipient::from_str(line)
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send + Sync>)
            .map_err(|e| bad(format!("not a usable SSH public key ({e:?})")).into())
    } else {
        Err(bad("it is neither `age1…` nor `ssh-ed25519 …` / `ssh-rsa …`".into()).into())
    }
}

fn read_recipients_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| EncryptionError::RecipientsFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Runs a `passphrase_command`: the first line of what it prints (without
/// its line ending) is the passphrase. Neither the output nor the
/// passphrase ever enters a message.
fn run_passphrase_command(command: &CommandLine, env: &CommandEnv) -> Result<SecretString> {
    let failed = |detail: String| EncryptionError::PassphraseCommand {
        command: format!("the passphrase_command `{command}`"),
        detail,
    };
    let mut run = Run::new("the passphrase_command", env);
    run.timeout = Some(PASSPHRASE_TIMEOUT);
    let out = run.output(command).map_err(|e| match e {
        Error::Interrupted => Error::Interrupted,
        other => failed(other.to_string()).into(),
    })?;
    let line = out.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(failed("it printed an empty first line".into()).into());
    }
    Ok(SecretString::from(line.to_string()))
}

/// A passphrase tried against a passphrase archive, under the name shown
/// for it (where it came from, never the passphrase itself).
struct Passphrase {
    name: String,
    secret: SecretString,
}

/// An scrypt identity that steps aside when its passphrase is wrong, so
/// that age tries the next one (age stops at the first error).
struct ScryptIdentity(age::scrypt::Identity);

impl age::Identity for ScryptIdentity {
    fn unwrap_stanza(
        &self,
        stanza: &Stanza,
    ) -> Option<std::result::Result<FileKey, age::DecryptError>> {
        match self.0.unwrap_stanza(stanza) {
            Some(Err(age::DecryptError::DecryptionFailed)) => None,
            other => other,
        }
    }
}

/// File keys unwrapped from an age header, each with the stanza it was
/// unwrapped from. Held in memory only, for one command: its `FileKey`s
/// are zeroed when dropped.
type Opened = Mutex<Vec<(Stanza, FileKey)>>;

fn copy_stanza(stanza: &Stanza) -> Stanza {
    Stanza {
        tag: stanza.tag.clone(),
        args: stanza.args.clone(),
        body: stanza.body.clone(),
    }
}

fn copy_file_key(key: &FileKey) -> FileKey {
    FileKey::init_with_mut(|k| k.copy_from_slice(key.expose_secret()))
}

/// The identity tried first: the file key of a stanza these keys
/// unwrapped before. A command may open one archive more than once (a
/// restore reads the manifest, then the whole archive), and a passphrase
/// archive's scrypt costs about a second of CPU each time. The file key
/// still has to pass the header's MAC, as any identity's does.
struct Remembered<'a>(&'a Opened);

impl age::Identity for Remembered<'_> {
    fn unwrap_stanza(
        &self,
        stanza: &Stanza,
    ) -> Option<std::result::Result<FileKey, age::DecryptError>> {
        let opened = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        opened
            .iter()
            .find(|(known, _)| known == stanza)
            .map(|(_, key)| Ok(copy_file_key(key)))
    }
}

/// An identity whose every unwrapped file key is remembered in `opened`.
struct Remembering<'a> {
    inner: &'a dyn age::Identity,
    opened: &'a Opened,
}

impl age::Identity for Remembering<'_> {
    fn unwrap_stanza(
        &self,
        stanza: &Stanza,
    ) -> Option<std::result::Result<FileKey, age::DecryptError>> {
        let got = self.inner.unwrap_stanza(stanza);
        if let Some(Ok(key)) = &got {
            let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
            opened.push((copy_stanza(stanza), copy_file_key(key)));
        }
        got
    }
}

/// Asks a person for the passphrase of the archive at the path given: the
/// front end's terminal prompt. `Ok(None)` when there is nobody to ask.
pub type PassphrasePrompt = dyn Fn(&Path) -> io::Result<Option<SecretString>> + Send + Sync;

type Identity = Box<dyn age::Identity + Send + Sync>;

/// Identities read from one file (or stdin), under the name shown for it.
pub struct IdentitySet {
    pub name: String,
    list: Vec<Identity>,
}

impl IdentitySet {
    /// Parses an age identity file (`AGE-SECRET-KEY-1…` lines, `#`
    /// comments) or an unencrypted SSH private key. The content is never
    /// part of an error message.
    ///
    /// # Errors
    ///
    /// Fails when `data` holds neither.
    pub fn parse(name: &str, data: &[u8]) -> Result<IdentitySet> {
        let bad = |detail: &str| EncryptionError::BadIdentity {
            name: name.to_string(),
            detail: detail.to_string(),
        };
        let list = if data.starts_with(b"-----BEGIN") {
            let ssh = age::ssh::Identity::from_buffer(data, Some(name.to_string()))
                .map_err(|_| bad("not an SSH private key age can use"))?;
            if !matches!(ssh, age::ssh::Identity::Unencrypted(_)) {
                return Err(bad("only unencrypted SSH private keys can be used").into());
            }
            vec![Box::new(ssh.with_callbacks(age::NoCallbacks)) as Identity]
        } else {
            age::IdentityFile::from_buffer(data)
                .ok()
                .and_then(|f| f.into_identities().ok())
                .ok_or_else(|| bad("not an age identity file"))?
        };
        if list.is_empty() {
            return Err(bad("it holds no identity").into());
        }
        Ok(IdentitySet {
            name: name.to_string(),
            list,
        })
    }

    /// Reads an identity file; `-` reads stdin.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be read or holds no identity.
    pub fn read(path: &Path) -> Result<IdentitySet> {
        let mut data = Vec::new();
        let (name, read) = if path.as_os_str() == "-" {
            (
                "stdin".to_string(),
                io::stdin().lock().read_to_end(&mut data),
            )
        } else {
            let name = path.display().to_string();
            (
                name,
                std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut data)),
            )
        };
        read.map_err(|e| EncryptionError::BadIdentity {
            name: name.clone(),
            detail: e.to_string(),
        })?;
        IdentitySet::parse(&name, &data)
    }
}

/// The identities an operation may decrypt with: those given (flags,
/// environment), read before the operation starts, and the config's
/// `identity_file`s, read only when an encrypted archive must be opened.
pub struct Keys {
    given: Vec<IdentitySet>,
    configured: Vec<PathBuf>,
    loaded: OnceLock<std::result::Result<Vec<IdentitySet>, EncryptionError>>,
    /// The config's `passphrase_command`s, each with the variables of the
    /// instance it belongs to; run only when a passphrase archive is met.
    commands: Vec<(CommandLine, CommandEnv)>,
    prompt: Option<Box<PassphrasePrompt>>,
    passphrases: OnceLock<std::result::Result<Vec<Passphrase>, EncryptionError>>,
    /// The file keys unwrapped so far, so each header is unwrapped once.
    opened: Opened,
}

/// No identities at all: encrypted archives cannot be opened.
pub static NO_KEYS: Keys = Keys::none();

impl Keys {
    /// No identities.
    pub const fn none() -> Keys {
        Keys {
            given: Vec::new(),
            configured: Vec::new(),
            loaded: OnceLock::new(),
            commands: Vec::new(),
            prompt: None,
            passphrases: OnceLock::new(),
            opened: Mutex::new(Vec::new()),
        }
    }

    /// Keys from identities given and identity files from the config.
    pub fn new(given: Vec<IdentitySet>, configured: Vec<PathBuf>) -> Keys {
        Keys {
            given,
            configured,
            ..Keys::none()
        }
    }

    /// These keys, with the `passphrase_command`s of the config (each with
    /// the variables it runs with) for passphrase archives.
    pub fn with_passphrase_commands(mut self, commands: Vec<(CommandLine, CommandEnv)>) -> Keys {
        self.commands = commands;
        self
    }

    /// These keys, with a way to ask for the passphrase of a passphrase
    /// archive when the config has no `passphrase_command`.
    pub fn with_prompt(mut self, prompt: Box<PassphrasePrompt>) -> Keys {
        self.prompt = Some(prompt);
        self
    }

    /// The passphrases to try on the passphrase archive `path`: what each
    /// `passphrase_command` prints, else what the prompt is told; got once
    /// for the whole operation.
    fn passphrases(&self, path: &Path) -> Result<&[Passphrase]> {
        let got = self.passphrases.get_or_init(|| {
            if !self.commands.is_empty() {
                return self
                    .commands
                    .iter()
                    .map(|(command, env)| {
                        Ok(Passphrase {
                            name: "from the passphrase_command".into(),
                            secret: run_passphrase_command(command, env)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map_err(|e| match e {
                        Error::Encryption(e) => e,
                        other => EncryptionError::PassphraseCommand {
                            command: "a passphrase_command".into(),
                            detail: other.to_string(),
                        },
                    });
            }
            let no = || EncryptionError::NoPassphrase {
                path: path.to_path_buf(),
            };
            let Some(prompt) = &self.prompt else {
                return Err(no());
            };
            match prompt(path) {
                Ok(Some(secret)) => Ok(vec![Passphrase {
                    name: "typed at the prompt".into(),
                    secret,
                }]),
                Ok(None) => Err(no()),
                Err(e) => Err(EncryptionError::PassphraseCommand {
                    command: "the terminal prompt".into(),
                    detail: e.to_string(),
                }),
            }
        });
        got.as_ref()
            .map(Vec::as_slice)
            .map_err(|e| Error::Encryption(e.clone()))
    }

    /// The identities given on the command line or in the environment.
    pub fn given(&self) -> &[IdentitySet] {
        &self.given
    }

    /// Every identity: those given, then the configured files'.
    ///
    /// # Errors
    ///
    /// Fails when a configured identity file cannot be used.
    pub fn all(&self) -> Result<Vec<&IdentitySet>> {
        let loaded = self.loaded.get_or_init(|| {
            self.configured
                .iter()
                .map(|p| IdentitySet::read(p))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| match e {
                    Error::Encryption(e) => e,
                    other => EncryptionError::BadIdentity {
                        name: "identity_file".into(),
                        detail: other.to_string(),
                    },
                })
        });
        let loaded = loaded.as_ref().map_err(|e| Error::Encryption(e.clone()))?;
        Ok(self.given.iter().chain(loaded.iter()).collect())
    }
}

/// Opens the age stream `input` (the file `path`) with `keys`: the
/// plaintext, as a reader whose every chunk is authenticated. A header
/// these keys opened before is opened with the file key they unwrapped
/// then (see `Remembered`), so a passphrase costs one scrypt a command.
///
/// # Errors
///
/// [`EncryptionError::NoIdentity`] when there are no keys,
/// [`EncryptionError::WrongIdentity`] when none fits, and
/// [`EncryptionError::Damaged`] when the header is not a valid age header.
pub fn decrypt<R: BufRead>(
    path: &Path,
    input: R,
    keys: &Keys,
) -> Result<age::stream::StreamReader<R>> {
    decrypt_with(path, input, keys, None)
}

/// Opens the age stream `input` (the file `path`) with `keys`, as
/// [`decrypt`] does, and reads its header and the payload's nonce, no more:
/// the rest of `input` is the sealed payload, which the [`Payload`] given
/// decrypts. The header's MAC has been checked.
///
/// # Errors
///
/// As [`decrypt`].
pub fn open_payload<R: BufRead>(path: &Path, input: &mut R, keys: &Keys) -> Result<Payload> {
    let unwrapped = Mutex::new(None);
    let mut read = Tail {
        inner: input,
        last: [0; 16],
        seen: 0,
    };
    drop(decrypt_with(path, &mut read, keys, Some(&unwrapped))?);
    let key = unwrapped
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let (Some(key), true) = (key, read.seen >= 16) else {
        return Err(EncryptionError::Damaged {
            path: path.to_path_buf(),
            detail: "the age header opened without a file key or a nonce".into(),
        }
        .into());
    };
    let mut payload_key = age_core::primitives::hkdf(&read.last, b"payload", key.expose_secret());
    let payload = Payload::new(&payload_key);
    // The cipher keeps (and zeroes when dropped) a copy of its own.
    zeroize::Zeroize::zeroize(&mut payload_key);
    Ok(payload)
}

/// A reader that keeps the last 16 bytes taken from it: what follows an
/// age header is the payload's nonce, which the `age` crate reads but does
/// not give.
struct Tail<'a, R> {
    inner: &'a mut R,
    last: [u8; 16],
    seen: u64,
}

impl<R: BufRead> BufRead for Tail<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if n > 0
            && let Ok(buf) = self.inner.fill_buf()
        {
            let took = &buf[..n.min(buf.len())];
            let k = took.len().min(16);
            self.last.copy_within(k.., 0);
            self.last[16 - k..].copy_from_slice(&took[took.len() - k..]);
            self.seen += took.len() as u64;
        }
        self.inner.consume(n);
    }
}

impl<R: BufRead> Read for Tail<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// An identity whose file key, once unwrapped, is kept in `into` as well.
struct Keeping<'a> {
    inner: &'a dyn age::Identity,
    into: &'a Mutex<Option<FileKey>>,
}

impl Keeping<'_> {
    fn keep(
        &self,
        got: Option<std::result::Result<FileKey, age::DecryptError>>,
    ) -> Option<std::result::Result<FileKey, age::DecryptError>> {
        if let Some(Ok(key)) = &got {
            *self.into.lock().unwrap_or_else(PoisonError::into_inner) = Some(copy_file_key(key));
        }
        got
    }
}

impl age::Identity for Keeping<'_> {
    fn unwrap_stanza(
        &self,
        stanza: &Stanza,
    ) -> Option<std::result::Result<FileKey, age::DecryptError>> {
        self.keep(self.inner.unwrap_stanza(stanza))
    }

    fn unwrap_stanzas(
        &self,
        stanzas: &[Stanza],
    ) -> Option<std::result::Result<FileKey, age::DecryptError>> {
        self.keep(self.inner.unwrap_stanzas(stanzas))
    }
}

/// Unwraps `decryptor`'s header with the first of `identities` that fits,
/// keeping its file key in `keep` when given.
fn unwrap_with<'a, R: BufRead>(
    decryptor: age::Decryptor<R>,
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    keep: Option<&Mutex<Option<FileKey>>>,
) -> std::result::Result<age::stream::StreamReader<R>, age::DecryptError> {
    let Some(into) = keep else {
        return decryptor.decrypt(identities);
    };
    let keeping: Vec<Keeping<'_>> = identities.map(|inner| Keeping { inner, into }).collect();
    decryptor.decrypt(keeping.iter().map(|k| k as &dyn age::Identity))
}

fn decrypt_with<R: BufRead>(
    path: &Path,
    input: R,
    keys: &Keys,
    keep: Option<&Mutex<Option<FileKey>>>,
) -> Result<age::stream::StreamReader<R>> {
    let damaged = |detail: String| EncryptionError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    let decryptor =
        age::Decryptor::new_buffered(input).map_err(|e| damaged(format!("the age header: {e}")))?;
    let remembered = Remembered(&keys.opened);
    if decryptor.is_scrypt() {
        let passphrases = keys.passphrases(path)?;
        let identities: Vec<ScryptIdentity> = passphrases
            .iter()
            .map(|p| {
                let mut id = age::scrypt::Identity::new(p.secret.clone());
                id.set_max_work_factor(SCRYPT_MAX_WORK_FACTOR);
                ScryptIdentity(id)
            })
            .collect();
        let tried: Vec<Remembering<'_>> = identities
            .iter()
            .map(|inner| Remembering {
                inner,
                opened: &keys.opened,
            })
            .collect();
        let identities = std::iter::once(&remembered as _).chain(tried.iter().map(|i| i as _));
        return unwrap_with(decryptor, identities, keep).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => EncryptionError::WrongPassphrase {
                path: path.to_path_buf(),
                tried: passphrases.iter().map(|p| p.name.clone()).collect(),
            }
            .into(),
            other => Error::from(damaged(other.to_string())),
        });
    }
    let sets = keys.all()?;
    if sets.iter().all(|s| s.list.is_empty()) {
        return Err(EncryptionError::NoIdentity {
            path: path.to_path_buf(),
        }
        .into());
    }
    let tried: Vec<Remembering<'_>> = sets
        .iter()
        .flat_map(|s| {
            s.list.iter().map(|inner| Remembering {
                inner: inner.as_ref(),
                opened: &keys.opened,
            })
        })
        .collect();
    let identities = std::iter::once(&remembered as _).chain(tried.iter().map(|i| i as _));
    unwrap_with(decryptor, identities, keep).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => EncryptionError::WrongIdentity {
            path: path.to_path_buf(),
            tried: sets.iter().map(|s| s.name.clone()).collect(),
        }
        .into(),
        other => Error::from(damaged(other.to_string())),
    })
}

/// Checks that `keys` open the age file `path`: its header is unwrapped,
/// and the file key kept with `keys` for the rest of the command; nothing
/// is decrypted.
///
/// # Errors
///
/// As [`decrypt`]; and when the file cannot be opened.
pub fn check_opens(path: &Path, keys: &Keys) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    decrypt(path, io::BufReader::new(file), keys).map(drop)
}

/// Whether the age stream `data` opens with the identities of `set`.
pub fn opens(data: &[u8], set: &IdentitySet) -> bool {
    let Ok(decryptor) = age::Decryptor::new_buffered(data) else {
        return false;
    };
    let Ok(mut reader) = decryptor.decrypt(set.list.iter().map(|i| i.as_ref() as _)) else {
        return false;
    };
    let mut sink = Vec::new();
    reader.read_to_end(&mut sink).is_ok()
}

/// A new X25519 identity: its file content (as `age-keygen` writes it:
/// creation time, public key, secret key) and its recipient.
pub fn new_identity(created_at: &str) -> (String, String) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let text = format!(
        "# created: {created_at}\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    (text, recipient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(recipients: &Recipients, keys: &Keys, plain: &[u8]) -> Result<Vec<u8>> {
        let mut sealed = Vec::new();
        let mut w = recipients.wrap(&mut sealed).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        let mut out = Vec::new();
        decrypt(Path::new("x.age"), &sealed[..], keys)?
            .read_to_end(&mut out)
            .map_err(|e| Error::io("reading", "x.age", e))?;
        Ok(out)
    }

    #[test]
    fn an_identity_opens_what_is_encrypted_to_its_recipient_and_no_other() {
        let (text, recipient) = new_identity("now");
        let (other, _) = new_identity("now");
        let recipients = Recipients::parse(&[recipient]).unwrap();
        let right = Keys::new(
            vec![IdentitySet::parse("k", text.as_bytes()).unwrap()],
            vec![],
        );
        assert_eq!(
            round_trip(&recipients, &right, b"secret").unwrap(),
            b"secret"
        );
        let wrong = Keys::new(
            vec![IdentitySet::parse("o", other.as_bytes()).unwrap()],
            vec![],
        );
        let err = round_trip(&recipients, &wrong, b"secret").unwrap_err();
        assert!(matches!(
            err,
            Error::Encryption(EncryptionError::WrongIdentity { .. })
        ));
        let none = round_trip(&recipients, &NO_KEYS, b"secret").unwrap_err();
        assert!(matches!(
            none,
            Error::Encryption(EncryptionError::NoIdentity { .. })
        ));
    }

    fn passphrase_config(command: &str) -> EncryptionConfig {
        EncryptionConfig {
            passphrase_command: Some(CommandLine::Shell(command.into())),
            ..EncryptionConfig::default()
        }
    }

    #[test]
    fn a_passphrase_archive_opens_with_the_passphrase_from_any_configured_command() {
        let req = EncryptRequest {
            mode: EncryptMode::AsConfigured,
            extra: vec![],
        };
        let env = CommandEnv::default();
        let recipients =
            Recipients::resolve(&passphrase_config("printf 'pw one\\nx\\n'"), &req, &env)
                .unwrap()
                .unwrap();
        assert_eq!(recipients.shown, vec![PASSPHRASE_SHOWN.to_string()]);
        let shell = |c: &str| (CommandLine::Shell(c.into()), CommandEnv::default());
        // The wrong passphrase first: age goes on to the next one.
        let keys = Keys::none()
            .with_passphrase_commands(vec![shell("echo 'pw two'"), shell("echo 'pw one'")]);
        assert_eq!(round_trip(&recipients, &keys, b"data").unwrap(), b"data");
        let wrong = Keys::none().with_passphrase_commands(vec![shell("echo 'pw two'")]);
        let err = round_trip(&recipients, &wrong, b"data").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Encryption(EncryptionError::WrongPassphrase { .. })
            ),
            "{err}"
        );
        assert!(!err.to_string().contains("pw"), "{err}");
        // No command: the prompt is asked, once; without one, a clear error.
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        let prompted = Keys::none().with_prompt(Box::new(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(SecretString::from("pw one".to_string())))
        }));
        assert_eq!(round_trip(&recipients, &prompted, b"a").unwrap(), b"a");
        assert_eq!(round_trip(&recipients, &prompted, b"b").unwrap(), b"b");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        let none = round_trip(&recipients, &NO_KEYS, b"data").unwrap_err();
        assert!(matches!(
            none,
            Error::Encryption(EncryptionError::NoPassphrase { .. })
        ));
    }

    #[test]
    fn a_header_is_unwrapped_once_a_command_however_often_it_is_opened() {
        let env = CommandEnv::default();
        let recipients = Recipients::resolve(
            &passphrase_config("echo 'pw one'"),
            &EncryptRequest::default(),
            &env,
        )
        .unwrap()
        .unwrap();
        let mut sealed = Vec::new();
        let mut w = recipients.wrap(&mut sealed).unwrap();
        w.write_all(b"data").unwrap();
        w.finish().unwrap();
        let keys = Keys::none().with_passphrase_commands(vec![(
            CommandLine::Shell("echo 'pw one'".into()),
            CommandEnv::default(),
        )]);
        for _ in 0..3 {
            let mut out = Vec::new();
            decrypt(Path::new("x.age"), &sealed[..], &keys)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, b"data");
        }
        // One scrypt: the later opens took the remembered file key.
        assert_eq!(keys.opened.lock().unwrap().len(), 1);
        // A changed header still fails its MAC with the remembered key.
        let mac = sealed.windows(4).position(|w| w == b"--- ").unwrap() + 4;
        let mut tampered = sealed.clone();
        tampered[mac] = if tampered[mac] == b'A' { b'B' } else { b'A' };
        let err = decrypt(Path::new("x.age"), &tampered[..], &keys)
            .err()
            .unwrap();
        assert!(
            matches!(err, Error::Encryption(EncryptionError::Damaged { .. })),
            "{err}"
        );
    }

    #[test]
    fn a_passphrase_command_that_fails_or_prints_nothing_is_an_error() {
        let req = EncryptRequest::default();
        let env = CommandEnv::default();
        for command in ["exit 3", "printf '\\n'", "true"] {
            let err = Recipients::resolve(&passphrase_config(command), &req, &env).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Encryption(EncryptionError::PassphraseCommand { .. })
                ),
                "{command}: {err}"
            );
        }
        let off = EncryptRequest {
            mode: EncryptMode::Off,
            extra: vec![],
        };
        assert!(
            Recipients::resolve(&passphrase_config("exit 3"), &off, &env)
                .unwrap()
                .is_none()
        );
        assert!(passphrase_config("true").checked(Path::new("/")).is_ok());
        let both = EncryptionConfig {
            recipients: vec!["age1x".into()],
            ..passphrase_config("true")
        };
        assert!(both.checked(Path::new("/")).is_err());
    }

    #[test]
    fn recipients_that_debian_age_cannot_open_are_refused() {
        for bad in ["age1pqxyz", "gpg:ops@example.org", "age1yubikey1abc"] {
            assert!(parse_recipient(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_instance_table_falls_back_to_the_defaults_key_by_key() {
        let defaults = EncryptionConfig {
            recipients: vec!["d".into()],
            identity_file: Some("/d/key".into()),
            ..EncryptionConfig::default()
        };
        let own = EncryptionConfig {
            recipients: vec!["i".into()],
            ..EncryptionConfig::default()
        };
        let merged = own.or_defaults(&defaults);
        assert_eq!(merged.recipients, vec!["i".to_string()]);
        assert_eq!(merged.identity_file, Some(PathBuf::from("/d/key")));
        assert_eq!(EncryptionConfig::default().or_defaults(&defaults), defaults);
    }

    #[test]
    fn an_identity_error_never_shows_the_file() {
        let err = IdentitySet::parse("k", b"AGE-SECRET-KEY-1NOTAKEY\n")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("NOTAKEY"), "{err}");
    }
}
