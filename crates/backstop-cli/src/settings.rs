//! Raw flags and the config file merged into the values the core takes.
//! Precedence is always: command line, then environment, then config file,
//! then built-in defaults.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backstop_core::Error;
use backstop_core::archive::{BackupKind, Codec, CompressionSpec, Description};
use backstop_core::chain::ChainRequest;
use backstop_core::config::{Config, Layout, absolute};
use backstop_core::instance::Instance;
use backstop_core::ops::backup::{BackupRequest, Output};

use backstop_core::command::{CommandEnv, CommandLine};
use backstop_core::encryption::{EncryptMode, EncryptRequest, IdentitySet, Keys, SecretString};

use crate::args::{BackupArgs, CodecArg, CompressionArg, Global, IdentityArgs};

/// The config and the layout that follows from it and the flags.
pub struct Settings {
    pub config: Config,
    pub layout: Layout,
    /// The identities given, and the config's `identity_file`s (read only
    /// when an encrypted archive is opened).
    pub keys: Keys,
}

impl Settings {
    /// Loads the config and resolves the layout.
    ///
    /// # Errors
    ///
    /// Fails on a missing or invalid config file.
    pub fn load(global: &Global) -> Result<Settings, Error> {
        let config = Config::load(global.config.as_deref())?;
        let layout = Layout::resolve(global.home.as_deref(), &config)?;
        let keys = keys(Vec::new(), &config);
        Ok(Settings {
            config,
            layout,
            keys,
        })
    }

    /// Loads the config, and reads the identities given with `--identity`
    /// (or `$BACKSTOP_IDENTITY`) before anything else happens.
    ///
    /// # Errors
    ///
    /// Fails on a bad config, or an identity file that cannot be used.
    pub fn load_with_identities(global: &Global, ids: &IdentityArgs) -> Result<Settings, Error> {
        let mut settings = Settings::load(global)?;
        let given = ids
            .identities
            .iter()
            .map(|p| IdentitySet::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        settings.keys = keys(given, &settings.config);
        Ok(settings)
    }
}

/// The keys an operation decrypts with: `given`, the config's identity
/// files and passphrase commands, and the terminal prompt.
fn keys(given: Vec<IdentitySet>, config: &Config) -> Keys {
    Keys::new(given, configured_identities(config))
        .with_passphrase_commands(passphrase_commands(config))
        .with_prompt(Box::new(ask_passphrase))
}

/// Every `passphrase_command` of the config, once each: each instance's
/// (its own, else `[defaults.encryption]`'s), run with that instance's
/// variables (the first instance's, for a command several share), then
/// `[defaults.encryption]`'s when no instance uses it.
fn passphrase_commands(config: &Config) -> Vec<(CommandLine, CommandEnv)> {
    let mut out: Vec<(CommandLine, CommandEnv)> = Vec::new();
    let per_instance = config.instances.values().filter_map(|i| {
        let merged = i.encryption.or_defaults(&config.encryption);
        merged.passphrase_command.map(|c| (c, i.env()))
    });
    let defaults = config
        .encryption
        .passphrase_command
        .clone()
        .map(|c| (c, CommandEnv::default()));
    for (command, env) in per_instance.chain(defaults) {
        if !out.iter().any(|(c, _)| *c == command) {
            out.push((command, env));
        }
    }
    out
}

/// Asks for the passphrase of `archive` on the terminal, without echo;
/// `Ok(None)` when stdin or stderr is not a terminal.
fn ask_passphrase(archive: &Path) -> std::io::Result<Option<SecretString>> {
    let term = console::Term::stderr();
    if !term.is_term() || !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    term.write_str(&format!(
        "{} is encrypted to a passphrase.\nPassphrase: ",
        archive.display()
    ))?;
    let typed = term.read_secure_line()?;
    if typed.is_empty() {
        return Err(std::io::Error::other("nothing was typed"));
    }
    Ok(Some(SecretString::from(typed)))
}

/// Every `identity_file` of the config: `[defaults.encryption]`'s, then
/// each instance's, once each.
fn configured_identities(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    let all =
        std::iter::once(&config.encryption).chain(config.instances.values().map(|i| &i.encryption));
    for file in all.filter_map(|e| e.identity_file.clone()) {
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// What `--encrypt`, `--no-encrypt` and `--recipient` ask for.
fn encryption(args: &BackupArgs) -> EncryptRequest {
    let mode = if args.no_encrypt {
        EncryptMode::Off
    } else if args.encrypt || !args.recipients.is_empty() {
        EncryptMode::Required
    } else {
        EncryptMode::AsConfigured
    };
    EncryptRequest {
        mode,
        extra: args.recipients.clone(),
    }
}

impl From<CodecArg> for Codec {
    fn from(c: CodecArg) -> Codec {
        match c {
            CodecArg::Zstd => Codec::Zstd,
            CodecArg::Gzip => Codec::Gzip,
            CodecArg::None => Codec::None,
        }
    }
}

/// Parses `--wait`'s value: `forever`, or a duration such as `90s`, `10m`, `1h 30m`.
///
/// # Errors
///
/// Fails on anything else.
pub fn parse_wait(text: &str) -> Result<Duration, Error> {
    if text == "forever" {
        return Ok(Duration::MAX);
    }
    backstop_core::time::parse_duration(text).map_err(|message| Error::usage(message, None))
}

/// The compression for a backup: the flag, else what `--output FILE`'s name
/// says, else the config's default, else zstd; the level likewise, the
/// config's level applying only to the config's codec.
fn compression(args: &BackupArgs, config: &Config) -> Result<CompressionSpec, Error> {
    let from_name = args
        .output
        .as_ref()
        .filter(|p| !p.is_dir() && p.as_os_str() != "-")
        .and_then(|p| p.file_name())
        .and_then(|n| Codec::from_file_name(&n.to_string_lossy()));
    let (flag, flag_level) = match args.compression {
        Some(CompressionArg::Codec(c)) => (Some(Codec::from(c)), None),
        Some(CompressionArg::Level(n)) => (None, Some(n)),
        None => (None, None),
    };
    if let (Some(n), Some(level)) = (flag_level, args.level) {
        return Err(Error::usage(
            format!("--compression {n} is a level, and --level {level} is another"),
            Some("give the level once".into()),
        ));
    }
    if let (Some(flag), Some(named)) = (flag, from_name)
        && flag != named
    {
        return Err(Error::usage(
            format!(
                "--compression {flag} does not match the output name, which ends in {}",
                named.extension()
            ),
            Some(format!(
                "name the file …{} or drop --compression",
                flag.extension()
            )),
        ));
    }
    let codec = flag
        .or(from_name)
        .or(config.compression)
        .unwrap_or(Codec::Zstd);
    let config_level = match config.compression {
        Some(c) if c != codec => None,
        _ => config.level,
    };
    let level = args.level.or(flag_level).or(config_level);
    CompressionSpec::new(codec, level).map_err(|m| Error::usage(m, None))
}

/// Where `--output` sends the archive.
fn output(arg: Option<&Path>, json: bool) -> Result<Output, Error> {
    let Some(arg) = arg else {
        return Ok(Output::Store);
    };
    if arg.as_os_str() == "-" {
        if json {
            return Err(Error::usage(
                "--json and --output - both want stdout",
                Some("write the archive to a file, or drop --json".into()),
            ));
        }
        refuse_terminal(std::io::stdout().is_terminal())?;
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating", "stdout", e))?;
        let stream: Box<dyn Write + Send> = Box::new(std::fs::File::from(fd));
        return Ok(Output::Stream(stream));
    }
    let path = absolute(arg);
    if path.is_dir() {
        return Ok(Output::Dir(path));
    }
    if arg.as_os_str().to_string_lossy().ends_with('/') {
        return Err(Error::usage(
            format!("directory {} does not exist", arg.display()),
            Some("create it first, or give a file name".into()),
        ));
    }
    let parent = backstop_core::fsutil::parent_dir(&path);
    if !parent.is_dir() {
        return Err(Error::usage(
            format!("directory {} does not exist", parent.display()),
            Some("create it first, or choose another --output".into()),
        ));
    }
    Ok(Output::File(path))
}

/// Refuses to stream an archive to a terminal, as `zstd` and `gzip` do:
/// binary on a screen helps nobody and can leave the terminal garbled.
fn refuse_terminal(stdout_is_terminal: bool) -> Result<(), Error> {
    if !stdout_is_terminal {
        return Ok(());
    }
    Err(Error::usage(
        "refusing to write the archive to a terminal (--output -)",
        Some(
            "redirect stdout to a file or a pipe (`backstop backup … --output - > app.tar.zst`), \
             or give --output FILE"
                .into(),
        ),
    ))
}

/// Builds the backup request from `args`.
///
/// # Errors
///
/// Fails on contradictory flags, bad values, and paths that do not exist.
pub fn backup_request(
    args: &BackupArgs,
    settings: &Settings,
    json: bool,
) -> Result<BackupRequest, Error> {
    let compression = compression(args, &settings.config)?;
    let mut instance = match args.paths.as_slice() {
        [] => {
            let names: Vec<&str> = settings
                .config
                .instances
                .keys()
                .map(String::as_str)
                .collect();
            return Err(Error::usage(
                "nothing to back up",
                Some(if names.is_empty() {
                    "give a directory: `backstop backup /srv/myapp`".into()
                } else {
                    format!("give an instance ({}) or a directory", names.join(", "))
                }),
            ));
        }
        [one] => resolve_instance(&settings.config, one)?,
        many => Instance::ad_hoc(many)?,
    };
    let profile = args
        .profile
        .clone()
        .or_else(|| instance.default_profile.clone());
    if let Some(name) = &profile {
        instance = instance.with_profile(name)?;
    }
    let wait = args.wait.as_deref().map(parse_wait).transpose()?;
    let mut excludes = settings.config.exclude.clone();
    excludes.extend(args.excludes.iter().cloned());
    let output = if args.dry_run {
        // A dry run opens nothing: only the destination's name is shown.
        match args.output.as_deref() {
            Some(p) if p.as_os_str() == "-" => Output::Stream(Box::new(std::io::sink())),
            Some(p) if absolute(p).is_dir() => Output::Dir(absolute(p)),
            Some(p) => Output::File(absolute(p)),
            None => Output::Store,
        }
    } else {
        output(args.output.as_deref(), json)?
    };
    Ok(BackupRequest {
        instance,
        about: Description {
            kind: BackupKind::Manual,
            reason: args.reason.clone(),
            message: args.message.clone(),
            labels: args.labels.iter().cloned().collect(),
            profile: profile.clone(),
            app_version: None,
            upgraded_to: None,
        },
        excludes,
        compression,
        encryption: encryption(args),
        output,
        wait,
        chain: if args.full {
            ChainRequest::Full
        } else if args.incremental {
            ChainRequest::Incremental
        } else {
            ChainRequest::Auto
        },
    })
}

/// An instance named on the command line: a configured instance when the
/// argument is one's name (and not a path: no `/`), else an ad-hoc one.
///
/// # Errors
///
/// Fails when it is neither.
pub fn resolve_instance(config: &Config, arg: &Path) -> Result<Instance, Error> {
    let text = arg.to_string_lossy();
    if !text.contains('/')
        && let Some(inst) = config.instances.get(text.as_ref())
    {
        return Ok(inst.clone());
    }
    Instance::ad_hoc(&[arg.to_path_buf()]).map_err(|e| {
        if !text.contains('/') && !arg.exists() {
            let names: Vec<&str> = config.instances.keys().map(String::as_str).collect();
            Error::usage(
                format!("`{text}` is neither a configured instance nor a path"),
                Some(if names.is_empty() {
                    "no instances are configured: `backstop init NAME --root DIR` adds one".into()
                } else {
                    format!("the configured instances are: {}", names.join(", "))
                }),
            )
        } else {
            e
        }
    })
}

/// Whether `path` is the stdout marker.
pub fn is_stdout(path: Option<&PathBuf>) -> bool {
    path.is_some_and(|p| p.as_os_str() == "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> BackupArgs {
        let mut argv = vec!["backstop", "backup"];
        argv.extend_from_slice(extra);
        let cli = crate::args::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            crate::args::Command::Backup(b) => b.args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn an_archive_is_never_streamed_to_a_terminal() {
        let err = refuse_terminal(true).unwrap_err();
        assert_eq!(err.kind(), backstop_core::ErrorKind::Usage);
        assert!(err.hint().unwrap().contains("--output FILE"));
        assert!(refuse_terminal(false).is_ok());
    }

    #[test]
    fn wait_durations() {
        assert_eq!(parse_wait("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_wait("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_wait("forever").unwrap(), Duration::MAX);
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn compression_follows_the_output_name() {
        let config = Config::default();
        let spec = compression(&args(&["--output", "/tmp/x.tar.gz"]), &config).unwrap();
        assert_eq!((spec.codec, spec.level), (Codec::Gzip, Some(6)));
        assert!(
            compression(
                &args(&["--output", "/tmp/x.tar.gz", "--compression", "zstd"]),
                &config
            )
            .is_err()
        );
    }

    #[test]
    fn a_compression_level_applies_to_the_codec_otherwise_chosen() {
        let config = Config::default();
        let spec = compression(&args(&["--compression", "9"]), &config).unwrap();
        assert_eq!((spec.codec, spec.level), (Codec::Zstd, Some(9)));
        let named = ["--compression", "9", "--output", "/tmp/x.tar.gz"];
        let spec = compression(&args(&named), &config).unwrap();
        assert_eq!((spec.codec, spec.level), (Codec::Gzip, Some(9)));
        assert!(
            compression(
                &args(&["--compression", "19", "--output", "/tmp/x.tar.gz"]),
                &config
            )
            .is_err()
        );
        assert!(compression(&args(&["--compression", "9", "--level", "3"]), &config).is_err());
    }

    #[test]
    fn config_level_applies_to_its_own_codec_only() {
        let config = Config {
            compression: Some(Codec::Gzip),
            level: Some(9),
            ..Config::default()
        };
        assert_eq!(compression(&args(&[]), &config).unwrap().level, Some(9));
        let zstd = compression(&args(&["--compression", "zstd"]), &config).unwrap();
        assert_eq!(zstd.level, Some(3));
    }
}
