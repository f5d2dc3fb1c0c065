//! The command line as clap parses it: raw flags, before config and defaults
//! are merged in (see `settings.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// backstop: backups, restores and rollbacks for self-hosted applications.
///
/// Backs up an application's state into archives that plain `tar` can open,
/// keeps a catalog of them, verifies them end to end, and restores or rolls
/// back all or nothing, with a safety backup before anything destructive.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about, long_about = None, max_term_width = 100)]
#[command(
    after_help = "Exit codes: 0 success, 1 error, 2 usage or config error, 3 done with \
    warnings, 4 integrity failure, 5 rolled back, 6 lock held, 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and warnings: no progress bars, service messages or notes
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (every excluded path, every warning)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Use this config file instead of looking one up
    #[arg(long, global = true, env = "BACKSTOP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Keep the catalog, locks and (by default) archives here
    #[arg(long, global = true, env = "BACKSTOP_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
}

// Parsed once per run: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up a directory or files into an archive
    ///
    /// With one directory, the instance is named after it (NAME-2, NAME-3…
    /// when another directory already has that name) and a later restore
    /// knows where it came from. The seed spellings `backup create`,
    /// `backup list`, `backup info` and `backup verify` work too.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Backup(BackupCommand),
    /// List backups, newest first
    List(ListArgs),
    /// Show everything about one backup
    #[command(visible_alias = "info")]
    Show(ShowArgs),
    /// Check archives completely: sidecar, every file's checksum, structure
    Verify(VerifyArgs),
    /// Put a backup back, all or nothing
    ///
    /// Verifies the archive, takes a safety backup of the current state,
    /// unpacks what differs into a staging directory beside the destination
    /// checking every checksum, then moves it into place through a journal.
    /// Any failure leaves the previous state; an interrupted restore is
    /// repaired by the next command.
    Restore(RestoreArgs),
    /// Put an instance back as it was before an upgrade
    ///
    /// Restores, exactly, the newest pre-upgrade backup of VERSION (or the
    /// newest pre-upgrade backup), after a safety backup; then runs the
    /// instance's activate command with that version and its health check.
    /// Any failure puts the state from before the rollback back (exit 5).
    Rollback(RollbackArgs),
    /// Back up, run a risky command, and roll back if it fails
    ///
    /// Takes an automatic backup (reason pre-upgrade), runs CMD with the
    /// terminal and the BACKSTOP_* environment, then the health check. On a
    /// failure it rolls back (--rollback-on-failure, exit 5) or prints the
    /// command that would.
    Guard(GuardArgs),
    /// Remove old backups by retention rules
    ///
    /// A backup is kept when at least one rule keeps it; pinned backups and
    /// the newest one always are. Rules given here replace the config's
    /// [instances.NAME.retention] one by one.
    #[command(visible_alias = "cleanup")]
    Prune(PruneArgs),
    /// Compare the catalog with the store, and with --apply make it true
    ///
    /// Finds archives that are missing, archives nobody recorded (adopted
    /// from their own manifest after a full verification), and archives
    /// whose size or sidecar disagrees. A damaged catalog is rebuilt.
    Reconcile(ReconcileArgs),
    /// Move the store to another directory, also on another filesystem
    ///
    /// Copies every archive (a hard link on the same filesystem), checks
    /// each copy against its sidecar, points the config's `store` and the
    /// catalog at the new place, then removes the old files. Interrupted,
    /// it loses nothing; the same command finishes it.
    Migrate(MigrateArgs),
    /// Delete backups: archive, sidecar and catalog entry
    Delete(DeleteArgs),
    /// Copy backups to another store (a second, verified copy)
    Copy(CopyArgs),
    /// Keep a backup whatever the retention rules say
    Pin(PinArgs),
    /// Let the retention rules decide about a backup again
    Unpin(PinArgs),
    /// Finish or undo an interrupted restore
    Recover(RecoverArgs),
    /// Write a starter config for an instance
    Init(InitArgs),
    /// Check the config, the store and the catalog, and say what is wrong
    Doctor(DoctorArgs),
    /// Make an age identity, or prove that identities open encrypted backups
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print shell completions
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct BackupCommand {
    #[command(subcommand)]
    pub seed: Option<BackupSeed>,
    #[command(flatten)]
    pub args: BackupArgs,
}

/// The `backup <verb>` spellings of the systems backstop replaces.
#[derive(Debug, Subcommand)]
pub enum BackupSeed {
    /// Same as `backstop backup`
    Create(BackupArgs),
    /// Same as `backstop list`
    List(ListArgs),
    /// Same as `backstop show`
    Info(ShowArgs),
    /// Same as `backstop verify`
    Verify(VerifyArgs),
    /// Same as `backstop restore`
    Restore(RestoreArgs),
    /// Same as `backstop prune`
    #[command(visible_alias = "prune")]
    Cleanup(PruneArgs),
    /// Same as `backstop reconcile`
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CodecArg {
    Zstd,
    Gzip,
    None,
}

/// `backup --compression`: a codec, or a level for the codec otherwise
/// chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionArg {
    Codec(CodecArg),
    Level(i32),
}

/// Parses `--compression`: `zstd`, `gzip`, `none`, or a level 1 to 19.
fn parse_compression(s: &str) -> Result<CompressionArg, String> {
    if let Ok(level) = s.parse::<i32>() {
        return if (1..=19).contains(&level) {
            Ok(CompressionArg::Level(level))
        } else {
            Err(format!("level {level} is out of range (use 1 to 19)"))
        };
    }
    CodecArg::from_str(s, true)
        .map(CompressionArg::Codec)
        .map_err(|_| format!("`{s}` is not zstd, gzip, none or a level 1 to 19"))
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A configured instance, or directories or files to back up
    #[arg(value_name = "INSTANCE|PATH")]
    pub paths: Vec<PathBuf>,
    /// Back up the instance's profile NAME (a selection of its sources)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Why the backup is made (manual, pre-upgrade, pre-restore, scheduled…)
    #[arg(long, default_value = "manual")]
    pub reason: String,
    /// A note to keep with the backup
    #[arg(short, long)]
    pub message: Option<String>,
    /// A label to attach, as KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Leave out paths matching GLOB (.gitignore syntax; repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Compression: zstd, gzip or none; or a level 1-19 (Sindri's spelling)
    /// for the codec otherwise chosen, e.g. `--compression 9` [default: zstd,
    /// or what the --output name or the config says]
    #[arg(long, value_name = "CODEC|LEVEL", value_parser = parse_compression)]
    pub compression: Option<CompressionArg>,
    /// Compression level (zstd 1-19, default 3; gzip 1-9, default 6)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub level: Option<i32>,
    /// Write the archive to FILE, into DIR, or to stdout (`-`) instead of the store
    #[arg(short, long, value_name = "FILE|DIR|-")]
    pub output: Option<PathBuf>,
    /// Encrypt, and refuse if no recipients are configured or given [default:
    /// encrypt when the config's `[encryption]` table has recipients]
    #[arg(long, conflicts_with = "no_encrypt")]
    pub encrypt: bool,
    /// Do not encrypt, whatever the config says
    #[arg(long, conflicts_with = "recipients")]
    pub no_encrypt: bool,
    /// Also encrypt to this age recipient (`age1…`) or SSH public key
    /// (`ssh-ed25519 …`), besides the configured ones (repeatable)
    #[arg(long = "recipient", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
    /// Make a full backup, even where an incremental could build on the last one
    #[arg(long, conflicts_with = "incremental")]
    pub full: bool,
    /// Make an incremental backup (only what changed since the last one), and
    /// fail when there is none to build on [default: incremental when the
    /// chain allows, see `[chain]` in the config]
    #[arg(long)]
    pub incremental: bool,
    /// Show what would be backed up and the estimated size; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another operation on the instance to finish (for up to DURATION, e.g. 10m)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Creating,
    Available,
    Failed,
    Missing,
    Corrupt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Manual,
    Automatic,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this instance's backups
    pub instance: Option<String>,
    /// Only backups made for this reason
    #[arg(long)]
    pub reason: Option<String>,
    /// Only backups in this state
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Only backups of this application version
    #[arg(long = "version", value_name = "VERSION")]
    pub app_version: Option<String>,
    /// Only manual or only automatic backups
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// At most N backups
    #[arg(short = 'n', long, value_name = "N")]
    pub limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A backup id, or the path of an archive file
    #[arg(value_name = "ID|FILE")]
    pub target: String,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// The identities that open encrypted archives.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Decrypt with the age identity (or unencrypted SSH private key) in
    /// FILE; `-` reads it from stdin (repeatable) [default: the config's
    /// `identity_file`s]. A passphrase archive takes its passphrase from
    /// the config's `passphrase_command`, else from a terminal prompt
    #[arg(long = "identity", value_name = "FILE", env = "BACKSTOP_IDENTITY")]
    pub identities: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new X25519 identity and print its recipient
    ///
    /// Writes the identity to FILE (mode 0600, never over an existing file),
    /// or prints it on stdout. Put the recipient in the config's
    /// `[encryption]` recipients, and keep the identity away from the machine
    /// that backs up: losing it loses the backups encrypted to it.
    New(KeyNewArgs),
    /// Prove that identities open what backups are encrypted to
    ///
    /// Encrypts a fresh test archive to the recipients of INSTANCE (or of
    /// [defaults.encryption]) and --recipient, then opens it with each
    /// identity given; exit 2 when one does not open it.
    Check(KeyCheckArgs),
}

#[derive(Debug, Args)]
pub struct KeyNewArgs {
    /// Write the identity to FILE instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeyCheckArgs {
    /// A configured instance whose recipients to test [default: [defaults.encryption]]
    pub instance: Option<String>,
    /// Also encrypt the test archive to this recipient (repeatable)
    #[arg(long = "recipient", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup ids or archive files
    #[arg(value_name = "ID|FILE", required_unless_present = "all")]
    pub targets: Vec<String>,
    /// Verify every backup in the catalog that has an archive
    #[arg(long, conflicts_with = "targets")]
    pub all: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Wait for a migration of the store to finish (for up to DURATION, e.g. 10m)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The destination becomes the backup (`full` is the same)
    #[value(alias = "full")]
    Exact,
    /// Write over the destination, keeping replaced files as .bak
    Merge,
    /// Write only missing files; list conflicts
    Safe,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A backup id, an archive file, or an application version [default: on
    /// a terminal, pick from a numbered list of the instance's backups]
    #[arg(value_name = "ID|FILE|VERSION")]
    pub backup: Option<String>,
    /// Restore into DIR instead of where the backup was taken from
    #[arg(long, visible_aliases = ["path", "target"], value_name = "DIR")]
    pub dest: Option<PathBuf>,
    /// exact (also spelled full; default into the backup's own root), merge,
    /// or safe (default elsewhere)
    #[arg(short, long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Restore only this source (repeatable)
    #[arg(long, value_name = "SOURCE")]
    pub only: Vec<String>,
    /// Leave paths matching GLOB as they are (.gitignore syntax; repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Refuse unless the backup belongs to instance NAME
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Allow an exact restore over a directory the backup was not taken
    /// from, and a backup of another major version than the instance
    /// reports now
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub common: ChangeArgs,
}

/// What restore and rollback share: how carefully they change things.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Show what would change; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not take a safety backup of the current state first
    #[arg(long)]
    pub no_pre_backup: bool,
    /// A note for the safety backup
    #[arg(long, value_name = "TEXT")]
    pub backup_message: Option<String>,
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub yes: bool,
    /// Wait for another operation on the instance to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The version to go back to [default: on a terminal, pick from a
    /// numbered list of pre-upgrade backups; elsewhere the newest one]
    pub version: Option<String>,
    /// The instance [default: the config's only instance]
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub common: ChangeArgs,
}

#[derive(Debug, Args)]
pub struct GuardArgs {
    /// A configured instance, or a directory
    pub instance: String,
    /// Why the backup is made
    #[arg(long, default_value = "pre-upgrade")]
    pub reason: String,
    /// The version the command upgrades to (recorded on the backup)
    #[arg(long = "to", value_name = "VERSION")]
    pub to_version: Option<String>,
    /// Restore the backup if the command or the health check fails
    #[arg(long)]
    pub rollback_on_failure: bool,
    /// Run the command without a backup first (recorded)
    #[arg(long, conflicts_with = "rollback_on_failure")]
    pub no_backup: bool,
    /// A note for the backup
    #[arg(short, long)]
    pub message: Option<String>,
    /// Wait for another operation on the instance to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
    /// For a rollback of an encrypted backup
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// The command to run, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only this instance [default: every instance with backups]
    pub instance: Option<String>,
    /// Keep the N newest backups
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Keep the N newest manual backups
    #[arg(long, value_name = "N")]
    pub keep_manual: Option<usize>,
    /// Keep the N newest automatic backups
    #[arg(long, value_name = "N")]
    pub keep_automatic: Option<usize>,
    /// Keep the newest backup of each of the last N days that have one
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<usize>,
    /// … of each of the last N ISO weeks
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<usize>,
    /// … of each of the last N months
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<usize>,
    /// … of each of the last N years
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<usize>,
    /// Keep every backup made within DURATION (e.g. 14d, 36h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Show every backup with kept or removed and the rule that decided; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Prune only the copies in this store (a `[stores.NAME]`, or `local`
    /// for the home's own); a backup still held elsewhere stays there
    #[arg(long, value_name = "NAME")]
    pub store: Option<String>,
    /// Also prune other hosts' backups (a catalog rebuilt from a shared
    /// bucket holds every host's; by default each host prunes its own)
    #[arg(long)]
    pub all_hosts: bool,
    /// Wait for another operation on the instance to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this instance [default: every instance in the catalog or the store]
    #[arg(value_name = "INSTANCE")]
    pub instance: Option<String>,
    /// Only this instance (abssctl's spelling of the positional INSTANCE)
    #[arg(long = "instance", value_name = "NAME", conflicts_with = "instance")]
    pub instance_flag: Option<String>,
    /// Change the catalog to match the store (otherwise only report); a
    /// damaged or lost catalog is rebuilt from the archives, the damaged file
    /// kept as catalog.db.damaged-TIMESTAMP
    #[arg(long)]
    pub apply: bool,
    /// Compare the catalog with this `[stores.NAME]` store (every host's
    /// archives in it) instead of the home's own store (`local`)
    #[arg(long, value_name = "NAME")]
    pub store: Option<String>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Wait for another operation on the instance to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

impl ReconcileArgs {
    /// The instance asked about, however it was spelled.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref().or(self.instance_flag.as_deref())
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The new store directory (empty or new), or the name of a
    /// `[stores.NAME]` store to move every backup into (write `./NAME` for
    /// a directory of that name)
    #[arg(long, value_name = "DIR|STORE")]
    pub to: PathBuf,
    /// Wait for other operations to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Backup ids (each copied with the backups its chain needs)
    #[arg(
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub ids: Vec<String>,
    /// Every available backup
    #[arg(long)]
    pub all: bool,
    /// The store to copy to: a `[stores.NAME]` of the config, or `local`
    /// for the home's own store
    #[arg(long, value_name = "STORE")]
    pub to: String,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Wait for another operation on the instance to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Backup ids
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
    /// Also delete the incremental backups built on them, which cannot be
    /// restored without them
    #[arg(long)]
    pub with_dependants: bool,
    /// Wait for another operation on the instance to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// A backup id
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The instance's name [default: the root directory's name]
    pub name: Option<String>,
    /// The application's directory
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Print the config instead of writing it
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check only this instance
    pub instance: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The instance to recover; every instance with an interrupted restore when omitted
    pub instance: Option<String>,
    /// Wait for another operation on the instance to finish (for up to DURATION)
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print completions for
    pub shell: clap_complete::Shell,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seed_spellings_parse() {
        let cli = Cli::try_parse_from(["backstop", "backup", "list", "app"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Backup(BackupCommand {
                seed: Some(BackupSeed::List(_)),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["backstop", "backup", "/srv/app", "--dry-run"]).unwrap();
        let Command::Backup(b) = cli.command else {
            panic!()
        };
        assert!(b.seed.is_none());
        assert_eq!(b.args.paths, [PathBuf::from("/srv/app")]);
    }

    #[test]
    fn restore_m_is_the_mode_and_full_is_exact() {
        let mode = |argv: &[&str]| match Cli::try_parse_from(argv).unwrap().command {
            Command::Restore(r) => (r.mode, r.common.backup_message),
            _ => unreachable!(),
        };
        assert_eq!(
            mode(&["backstop", "restore", "x", "-m", "merge"]),
            (Some(ModeArg::Merge), None)
        );
        assert_eq!(
            mode(&["backstop", "restore", "x", "--mode", "full"]).0,
            Some(ModeArg::Exact)
        );
        assert_eq!(
            mode(&["backstop", "restore", "x", "--backup-message", "hi"]).1,
            Some("hi".into())
        );
        assert!(Cli::try_parse_from(["backstop", "restore", "x", "-m", "a note"]).is_err());
    }

    #[test]
    fn compression_is_a_codec_or_a_level() {
        assert_eq!(parse_compression("9"), Ok(CompressionArg::Level(9)));
        assert_eq!(
            parse_compression("GZIP"),
            Ok(CompressionArg::Codec(CodecArg::Gzip))
        );
        assert!(parse_compression("0").is_err());
        assert!(parse_compression("20").is_err());
        assert!(parse_compression("lz4").is_err());
    }

    #[test]
    fn labels_need_a_key() {
        assert!(parse_label("=x").is_err());
        assert_eq!(
            parse_label("env=prod=1").unwrap(),
            ("env".into(), "prod=1".into())
        );
    }
}
