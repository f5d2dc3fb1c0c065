//! The restore journal: what a restore is about to do to the live tree,
//! written and flushed before it does it, so that a crash at any instant can
//! be repaired by the next command that takes the instance lock.
//!
//! Steps are renames, a directory's mode and time set (undone by setting
//! the ones it had), and imports of captured sources (volumes, dumps).
//! Each rename records the inode of what it moves, so whether it happened is
//! decided by looking at the filesystem, never guessed; an import is undone
//! by importing the live state captured just before it:
//! before the commit point every step that happened is undone in reverse;
//! after it, what is left is cleanup (the old trees parked in the staging
//! directories).

use std::path::{Path, PathBuf};

use rustix::fs::RenameFlags;
use serde::{Deserialize, Serialize};

use crate::archive::format::VolumeSettings;
use crate::command::{CommandEnv, CommandLine, Run};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::handle::{self, remove_tree};

/// How far a restore got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Unpacking into staging: the live tree is untouched.
    Staging,
    /// Renaming into place: to be undone if interrupted.
    Applying,
    /// Past the commit point: only cleanup is left.
    Committed,
}

/// One rename, undoable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// The staged tree takes `target`'s place. With `existed`, the two were
    /// exchanged atomically (the old tree is now at `staged`); without, the
    /// staged tree was renamed to `target`.
    Swap {
        target: PathBuf,
        staged: PathBuf,
        staged_ino: u64,
        existed: bool,
    },
    /// A file or directory moved from `from` to `to` (a never-restore path
    /// carried into the staged tree, a file merged into place, a replaced
    /// file kept as `.bak`).
    Move {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
        /// A directory that this user may not write, which moving to
        /// another directory needs: it is made writable for the rename and
        /// given this mode back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reopen: Option<u32>,
    },
    /// A directory created in the live tree to hold what is restored.
    MakeDir { path: PathBuf },
    /// A live directory's mode, owner and time set (an exact restore in
    /// place: around the moves into and out of it, first opened up for
    /// them, then given the backup's). Undone by setting `before`.
    Meta {
        path: PathBuf,
        ino: u64,
        // Boxed, as the import's target: a step is as large as its
        // largest kind, and a restore of many changes holds many moves.
        before: Box<Attrs>,
        after: Box<Attrs>,
        /// Its extended attributes too, where they differ from the backup's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        xattrs: Option<Box<XattrChange>>,
    },
    /// A captured source put back by a program: a podman volume imported,
    /// a dump fed to its restore command. Undone by putting back `undo`,
    /// captured from the live state just before.
    Import {
        into: Box<ImportTarget>,
        data: PathBuf,
        undo: PathBuf,
    },
}

/// A directory's mode, owner and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
}

impl Attrs {
    /// What `st` says.
    pub fn of(st: &rustix::fs::Stat) -> Attrs {
        Attrs {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime, st.st_mtime_nsec.clamp(0, 999_999_999) as u32),
        }
    }

    /// Sets these on the directory `path` if it is still inode `ino`
    /// (the owner only as root, and only where it differs).
    fn set(&self, path: &Path, ino: u64) -> std::io::Result<()> {
        let st = handle::lstat(path)?;
        if st.st_ino != ino || !handle::is_dir(&st) {
            return Err(std::io::Error::other("it was replaced meanwhile"));
        }
        handle::set_attrs(path, self.mode, (self.uid, self.gid), self.mtime)
    }
}

/// Extended attributes as names and values.
pub type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

/// What a [`Step::Meta`] does to a directory's extended attributes: all
/// of them but security labels, before and after. Labels (an SELinux
/// policy's, set by relabelling) are the system's and are left as they
/// are. In the journal, names and values are hex strings: as arrays of
/// numbers, a value took nineteen times its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XattrChange {
    #[serde(with = "hex_pairs")]
    pub before: XattrList,
    #[serde(with = "hex_pairs")]
    pub after: XattrList,
}

/// An [`XattrList`] as `[["<name hex>", "<value hex>"], …]`; a journal
/// written before (arrays of numbers) still loads.
mod hex_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::XattrList;

    pub fn serialize<S: Serializer>(list: &XattrList, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(String, String)> = list
            .iter()
            .map(|(n, v)| (hex::encode(n), hex::encode(v)))
            .collect();
        pairs.serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bytes {
        Hex(String),
        Numbers(Vec<u8>),
    }

    impl Bytes {
        fn decode<E: serde::de::Error>(self) -> Result<Vec<u8>, E> {
            match self {
                Bytes::Hex(h) => hex::decode(h).map_err(E::custom),
                Bytes::Numbers(v) => Ok(v),
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<XattrList, D::Error> {
        Vec::<(Bytes, Bytes)>::deserialize(d)?
            .into_iter()
            .map(|(n, v)| Ok((n.decode()?, v.decode()?)))
            .collect()
    }
}

/// Whether `name` is a security label, which restores in place leave
/// alone. Other `security.*` attributes (a file's capabilities) are the
/// file's own and restored like the rest.
pub fn is_label(name: &[u8]) -> bool {
    const LABELS: [&[u8]; 5] = [
        b"security.selinux",
        b"security.SMACK64",
        b"security.apparmor",
        b"security.ima",
        b"security.evm",
    ];
    LABELS.iter().any(|l| name.starts_with(l))
}

/// Whether `name` is in the `trusted.*` namespace, which only a
/// privileged process can list: a backup made by an ordinary user never
/// holds them, so a restore in place keeps the ones it does not hold.
pub fn is_trusted(name: &[u8]) -> bool {
    name.starts_with(b"trusted.")
}

/// The extended attributes of `path` (not following a symlink there) but
/// its security labels.
///
/// # Errors
///
/// Fails when `path` cannot be pinned or its attributes read.
pub fn own_xattrs(path: &Path) -> std::io::Result<XattrList> {
    handle::with_pinned(path, |magic, _| {
        let mut all = crate::archive::read_entry::pinned_xattrs(magic)?;
        all.retain(|(name, _)| !is_label(name));
        Ok(all)
    })
}

/// Makes the extended attributes of the directory `path`, if it is still
/// inode `ino`, exactly `want` (labels aside): what is not in `want` is
/// removed, the rest set. Taken again after a crash half way, it ends the
/// same.
fn set_xattrs(path: &Path, ino: u64, want: &XattrList) -> std::io::Result<()> {
    use rustix::fs::XattrFlags;
    handle::with_pinned(path, |magic, st| {
        if st.st_ino != ino || !handle::is_dir(st) {
            return Err(std::io::Error::other("it was replaced meanwhile"));
        }
        for (name, _) in crate::archive::read_entry::pinned_xattrs(magic)? {
            if is_label(&name) || want.iter().any(|(n, _)| *n == name) {
                continue;
            }
            match rustix::fs::removexattr(magic, name.as_slice()) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // ACLs last: an access ACL sets the mode's bits, and without its
        // write bit the owner may set no other attribute.
        let is_acl = |n: &[u8]| n.starts_with(b"system.posix_acl_");
        let (acls, rest): (Vec<_>, Vec<_>) = want
            .iter()
            .filter(|(n, _)| !is_label(n))
            .partition(|(n, _)| is_acl(n));
        for (name, value) in rest.into_iter().chain(acls) {
            rustix::fs::setxattr(magic, name.as_slice(), value, XattrFlags::empty())?;
        }
        Ok(())
    })
}

/// Where an [`Step::Import`] goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ImportTarget {
    /// A podman volume: emptied, then `podman volume import`; the
    /// containers using it are stopped around it. Created with `settings`
    /// (its labels and options at backup time) when missing.
    Volume {
        name: String,
        #[serde(default)]
        settings: VolumeSettings,
    },
    /// A command fed the file on its standard input.
    Command {
        /// The source's name, for messages.
        source: String,
        command: CommandLine,
        cwd: Option<PathBuf>,
        env: Vec<(String, String)>,
    },
}

impl ImportTarget {
    /// Puts `data` in place.
    ///
    /// # Errors
    ///
    /// Fails when podman or the restore command fails.
    pub fn import(&self, data: &Path) -> Result<()> {
        match self {
            ImportTarget::Volume { name, settings } => {
                let podman = crate::podman::Podman::default();
                let mut stopped = Vec::new();
                let result = (|| {
                    if podman.volume_exists(name)? {
                        for c in podman.containers_using(name)? {
                            if podman.container_running(&c)? {
                                podman.container_stop(&c, std::time::Duration::from_secs(30))?;
                                stopped.push(c);
                            }
                        }
                    }
                    podman.volume_restore_with(name, data, settings).map(|_| ())
                })();
                let mut restarted = Ok(());
                for c in &stopped {
                    if let Err(e) = podman.container_start(c) {
                        restarted = Err(e);
                    }
                }
                result.and(restarted)
            }
            ImportTarget::Command {
                source,
                command,
                cwd,
                env,
            } => {
                let mut vars = CommandEnv::default();
                for (k, v) in env {
                    vars.set(k, v);
                }
                let what = format!("the restore command of source {source}");
                let mut run = Run::new(&what, &vars);
                run.cwd = cwd.as_deref().filter(|c| c.is_dir());
                let file = std::fs::File::open(data).map_err(|e| Error::io("reading", data, e))?;
                run.from_file(command, file)
            }
        }
    }
}

/// The journal of one restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    /// The catalog's restore record, to complete after a crash.
    pub restore_id: Option<i64>,
    pub backup: String,
    pub instance: String,
    pub destination: PathBuf,
    pub phase: Phase,
    /// Staging directories to remove at the end, whatever happens.
    pub staging: Vec<PathBuf>,
    pub steps: Vec<Step>,
    /// The instance's services the restore stopped: recovery starts them
    /// again.
    #[serde(default)]
    pub services_stopped: Vec<String>,
    /// The directories of the restored trees that staging directories are
    /// made in (a database's, inside a tree restored exactly), as they
    /// were before: making and removing a staging directory moves its
    /// directory's time, which is given back (see
    /// [`Journal::remove_staging`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staging_parents: Vec<StagingParent>,
}

/// A directory a staging directory is made in, and its attributes before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingParent {
    pub path: PathBuf,
    pub ino: u64,
    pub attrs: Attrs,
}

/// What recovery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recovered {
    /// The restore had not reached its commit point: the previous state is back.
    RolledBack,
    /// The restore had committed: its cleanup was finished.
    Completed,
}

impl Journal {
    /// The journal file of `instance`.
    pub fn path(home: &Path, instance: &str) -> PathBuf {
        home.join("journal").join(format!("{instance}.json"))
    }

    /// Writes the journal durably (atomic replace, flushed), streamed: a
    /// restore of many changes journals as many steps, and their text is
    /// never held in memory beside them.
    ///
    /// # Errors
    ///
    /// Fails when it cannot be written: then the step it announces must not
    /// be taken.
    pub fn save(&self, home: &Path) -> Result<()> {
        let path = Journal::path(home, &self.instance);
        fsutil::create_private_dir_all(&fsutil::parent_dir(&path))?;
        fsutil::atomic_write_with(&path, 0o600, &mut |out| {
            serde_json::to_writer_pretty(out, self).map_err(std::io::Error::from)
        })
    }

    /// Reads the journal of `instance`, if there is one.
    ///
    /// # Errors
    ///
    /// Fails when it exists but cannot be read or parsed.
    pub fn load(home: &Path, instance: &str) -> Result<Option<Journal>> {
        let path = Journal::path(home, instance);
        match std::fs::File::open(&path) {
            Ok(file) => {
                let reader = std::io::BufReader::with_capacity(1 << 16, file);
                serde_json::from_reader(reader).map(Some).map_err(|e| {
                    if e.is_io() {
                        return Error::io("reading", &path, e.into());
                    }
                    Error::usage(
                        format!("the restore journal {} is damaged: {e}", path.display()),
                        Some(
                            "inspect it by hand; it lists the renames of an interrupted restore"
                                .into(),
                        ),
                    )
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &path, e)),
        }
    }

    /// Removes the journal file.
    ///
    /// # Errors
    ///
    /// Fails when it exists and cannot be removed.
    pub fn remove(home: &Path, instance: &str) -> Result<()> {
        let path = Journal::path(home, instance);
        match std::fs::remove_file(&path) {
            Ok(()) => fsutil::fsync_dir(&fsutil::parent_dir(&path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &path, e)),
        }
    }

    /// Finishes or undoes whatever this journal describes, and removes it.
    ///
    /// # Errors
    ///
    /// Fails when a step cannot be undone; the journal is then kept, so a
    /// later attempt can continue.
    pub fn recover(&self, home: &Path) -> Result<Recovered> {
        let outcome = match self.phase {
            Phase::Committed => Recovered::Completed,
            Phase::Staging | Phase::Applying => {
                for step in self.steps.iter().rev() {
                    undo(step)?;
                }
                for dir in self.touched_dirs() {
                    let _ = handle::fsync_dir(&dir);
                }
                Recovered::RolledBack
            }
        };
        self.remove_staging(outcome == Recovered::Completed)?;
        Journal::remove(home, &self.instance)?;
        Ok(outcome)
    }

    /// Removes the staging directories, then gives each of
    /// [`Journal::staging_parents`] the attributes the steps gave it (the
    /// last `Meta` step's, `committed`), else the ones it had before.
    ///
    /// # Errors
    ///
    /// Fails when a staging directory cannot be removed.
    pub fn remove_staging(&self, committed: bool) -> Result<()> {
        for dir in &self.staging {
            remove_tree(dir)?;
        }
        for parent in &self.staging_parents {
            let given = committed.then(|| self.last_attrs(&parent.path)).flatten();
            // Best effort: the restore is done (or undone) already.
            let _ = given.unwrap_or(parent.attrs).set(&parent.path, parent.ino);
        }
        Ok(())
    }

    /// The attributes the last `Meta` step of directory `dir` gives it.
    fn last_attrs(&self, dir: &Path) -> Option<Attrs> {
        self.steps.iter().rev().find_map(|step| match step {
            Step::Meta { path, after, .. } if path == dir => Some(**after),
            _ => None,
        })
    }

    /// The directories whose entries (or, for `Meta`, own attributes) the
    /// steps changed, to flush.
    pub fn touched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for step in &self.steps {
            let paths: Vec<&Path> = match step {
                Step::Swap { target, staged, .. } => vec![target, staged],
                Step::Move { from, to, .. } => vec![from, to],
                Step::MakeDir { path } => vec![path],
                Step::Meta { path, .. } => {
                    // Its own attributes changed, not its parent's entries.
                    if seen.insert(path.clone()) {
                        dirs.push(path.clone());
                    }
                    vec![]
                }
                Step::Import { .. } => vec![],
            };
            for p in paths {
                let d = crate::fsutil::parent_dir(p);
                if seen.insert(d.clone()) {
                    dirs.push(d);
                }
            }
        }
        dirs
    }
}

fn ino(path: &Path) -> Option<u64> {
    handle::ino(path)
}

fn rename(from: &Path, to: &Path, flags: RenameFlags) -> Result<()> {
    handle::rename(from, to, flags).map_err(|e| Error::io("moving back", from, e))
}

/// Moves `from` to `to`; with `reopen`, a directory we may not write is
/// made writable around the rename (a move to another directory rewrites
/// its `..`) and given its mode back at its new place.
fn move_entry(from: &Path, to: &Path, reopen: Option<u32>) -> std::io::Result<()> {
    let Some(mode) = reopen else {
        return handle::rename(from, to, RenameFlags::NOREPLACE);
    };
    handle::chmod(from, mode | 0o700)?;
    match handle::rename(from, to, RenameFlags::NOREPLACE) {
        Ok(()) => handle::chmod(to, mode),
        Err(e) => {
            let _ = handle::chmod(from, mode);
            Err(e)
        }
    }
}

/// Undoes `step` if it happened; does nothing if it did not.
fn undo(step: &Step) -> Result<()> {
    match step {
        Step::Swap {
            target,
            staged,
            staged_ino,
            existed,
        } => {
            if ino(target) != Some(*staged_ino) {
                return Ok(());
            }
            if *existed {
                rename(target, staged, RenameFlags::EXCHANGE)
            } else {
                rename(target, staged, RenameFlags::NOREPLACE)
            }
        }
        Step::Move {
            from,
            to,
            ino: moved,
            reopen,
        } => {
            if ino(to) != Some(*moved) || ino(from).is_some() {
                // Not moved, or moved back: only a mode opened up for the
                // move and not yet given back can be left.
                if let Some(mode) = reopen
                    && ino(from) == Some(*moved)
                {
                    handle::chmod(from, *mode)
                        .map_err(|e| Error::io("restoring the mode of", from, e))?;
                }
                return Ok(());
            }
            move_entry(to, from, *reopen).map_err(|e| Error::io("moving back", to, e))
        }
        Step::MakeDir { path } => match handle::rmdir(path) {
            // Not created after all, or something the user put there since.
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            Err(e) => Err(Error::io("removing", path, e)),
        },
        // Setting the old attributes again is harmless if they were never
        // changed; a directory gone or replaced is not ours to touch.
        Step::Meta {
            path,
            ino,
            before,
            xattrs,
            ..
        } => {
            if handle::ino(path) != Some(*ino) {
                return Ok(());
            }
            // The mode first: back to opened up, so that this user may
            // set the attributes (the step before gives the mode back).
            let mode = || {
                before
                    .set(path, *ino)
                    .map_err(|e| Error::io("setting back the mode and time of", path, e))
            };
            mode()?;
            if let Some(x) = xattrs {
                set_xattrs(path, *ino, &x.before)
                    .map_err(|e| Error::io("setting back the extended attributes of", path, e))?;
                // An access ACL sets the mode's bits as it says: opened up
                // again, or the moves into the directory cannot be undone.
                mode()?;
            }
            Ok(())
        }
        // Whether it ran cannot be seen from outside: the live state
        // captured before is put back either way, which is harmless if the
        // import never started.
        Step::Import { into, undo, .. } => into.import(undo),
    }
}

/// Takes `step` (the journal announcing it must already be saved).
///
/// # Errors
///
/// Fails when the rename fails; nothing has then changed.
pub fn apply(step: &Step) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| Error::io("moving into place", p, e)
    };
    match step {
        Step::Swap {
            target,
            staged,
            existed,
            ..
        } => {
            let flags = if *existed {
                RenameFlags::EXCHANGE
            } else {
                RenameFlags::NOREPLACE
            };
            handle::rename(staged, target, flags).map_err(io(target))
        }
        Step::Move {
            from,
            to,
            reopen,
            ino: moved,
        } => {
            // Another entry at `from` than the one decided on (put there by
            // another process since): moved aside and then not recognised
            // by the undo, it would go with the staging directory.
            if ino(from) != Some(*moved) {
                return Err(crate::restore::stage::changed_meanwhile(from));
            }
            move_entry(from, to, *reopen).map_err(io(to))?;
            if ino(to) != Some(*moved) {
                // Renamed there between the look and the move: put back.
                move_entry(to, from, *reopen).map_err(|e| Error::io("moving back", to, e))?;
                return Err(crate::restore::stage::changed_meanwhile(from));
            }
            Ok(())
        }
        Step::MakeDir { path } => {
            handle::mkdir(path, 0o777).map_err(|e| Error::io("creating", path, e))
        }
        Step::Meta {
            path,
            ino,
            after,
            xattrs,
            ..
        } => {
            // The attributes first: setting an access ACL changes the
            // mode's group bits, which the mode set after puts right.
            if let Some(x) = xattrs {
                set_xattrs(path, *ino, &x.after)
                    .map_err(|e| Error::io("setting the extended attributes of", path, e))?;
            }
            after
                .set(path, *ino)
                .map_err(|e| Error::io("setting the mode and time of", path, e))
        }
        Step::Import { into, data, .. } => into.import(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path, steps: Vec<Step>, phase: Phase) -> Journal {
        Journal {
            version: 1,
            restore_id: None,
            backup: "b".into(),
            instance: "app".into(),
            destination: dir.join("live"),
            phase,
            staging: vec![dir.join("staging")],
            steps,
            services_stopped: Vec::new(),
            staging_parents: Vec::new(),
        }
    }

    fn setup() -> (tempfile::TempDir, Step) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("live")).unwrap();
        std::fs::write(dir.path().join("live/old"), b"old").unwrap();
        std::fs::create_dir_all(dir.path().join("staging/app")).unwrap();
        std::fs::write(dir.path().join("staging/app/new"), b"new").unwrap();
        let step = Step::Swap {
            target: dir.path().join("live"),
            staged: dir.path().join("staging/app"),
            staged_ino: ino(&dir.path().join("staging/app")).unwrap(),
            existed: true,
        };
        (dir, step)
    }

    #[test]
    fn an_interrupted_swap_is_undone_whether_or_not_it_happened() {
        for happened in [false, true] {
            let (dir, step) = setup();
            let home = dir.path().join("home");
            let j = journal(dir.path(), vec![step.clone()], Phase::Applying);
            j.save(&home).unwrap();
            if happened {
                apply(&step).unwrap();
                assert!(dir.path().join("live/new").exists());
            }
            let loaded = Journal::load(&home, "app").unwrap().unwrap();
            assert_eq!(loaded.recover(&home).unwrap(), Recovered::RolledBack);
            assert_eq!(std::fs::read(dir.path().join("live/old")).unwrap(), b"old");
            assert!(!dir.path().join("live/new").exists());
            assert!(!dir.path().join("staging").exists());
            assert!(Journal::load(&home, "app").unwrap().is_none());
        }
    }

    #[test]
    fn a_damaged_journal_is_named_and_an_unreadable_one_is_a_read_error() {
        let (dir, step) = setup();
        let home = dir.path().join("home");
        let j = journal(dir.path(), vec![step.clone(); 3], Phase::Applying);
        j.save(&home).unwrap();
        let path = Journal::path(&home, "app");
        let text = std::fs::read(&path).unwrap();
        assert_eq!(Journal::load(&home, "app").unwrap().unwrap(), j);
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let damaged = Journal::load(&home, "app").unwrap_err().to_string();
        assert!(damaged.contains("is damaged"), "{damaged}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let unreadable = Journal::load(&home, "app").unwrap_err().to_string();
        assert!(
            unreadable.contains("reading") && !unreadable.contains("damaged"),
            "{unreadable}"
        );
    }

    #[test]
    fn a_step_is_no_larger_than_a_move() {
        // A restore in place of many changes holds two moves a changed
        // file: larger kinds of step keep their bulk behind a box.
        assert!(
            std::mem::size_of::<Step>() <= 72,
            "{}",
            std::mem::size_of::<Step>()
        );
    }

    #[test]
    fn extended_attributes_are_written_as_hex_and_old_journals_still_load() {
        let attrs = Attrs {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: (1, 2),
        };
        let value = vec![0xabu8; 4000];
        let step = Step::Meta {
            path: PathBuf::from("/srv/app/d"),
            ino: 7,
            before: Box::new(attrs),
            after: Box::new(attrs),
            xattrs: Some(Box::new(XattrChange {
                before: vec![(b"user.big".to_vec(), value.clone())],
                after: Vec::new(),
            })),
        };
        let json = serde_json::to_string_pretty(&step).unwrap();
        // Two hex digits a byte, and little else.
        assert!(json.len() < 2 * value.len() + 400, "{} bytes", json.len());
        assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step);
        let old = r#"{"kind": "meta", "path": "/d", "ino": 1,
            "before": {"mode": 493, "uid": 0, "gid": 0, "mtime": [1, 2]},
            "after": {"mode": 493, "uid": 0, "gid": 0, "mtime": [1, 2]},
            "xattrs": {"before": [[[117, 46, 97], [1, 2]]], "after": []}}"#;
        let Step::Meta { xattrs, .. } = serde_json::from_str::<Step>(old).unwrap() else {
            panic!("not a Meta step");
        };
        assert_eq!(xattrs.unwrap().before, vec![(b"u.a".to_vec(), vec![1, 2])]);
    }

    #[test]
    fn only_security_labels_are_labels() {
        assert!(is_label(b"security.selinux"));
        assert!(is_label(b"security.SMACK64EXEC"));
        assert!(!is_label(b"security.capability"));
        assert!(!is_label(b"user.security.selinux"));
    }

    #[test]
    fn a_committed_restore_is_completed() {
        let (dir, step) = setup();
        let home = dir.path().join("home");
        apply(&step).unwrap();
        let j = journal(dir.path(), vec![step], Phase::Committed);
        j.save(&home).unwrap();
        assert_eq!(j.recover(&home).unwrap(), Recovered::Completed);
        assert_eq!(std::fs::read(dir.path().join("live/new")).unwrap(), b"new");
        assert!(!dir.path().join("live/old").exists());
        assert!(!dir.path().join("staging").exists());
    }

    #[test]
    fn moves_are_undone_only_if_they_happened() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        std::fs::write(dir.path().join("c"), b"c").unwrap();
        let m1 = Step::Move {
            from: dir.path().join("a"),
            to: dir.path().join("b"),
            ino: ino(&dir.path().join("a")).unwrap(),
            reopen: None,
        };
        let m2 = Step::Move {
            from: dir.path().join("c"),
            to: dir.path().join("d"),
            ino: ino(&dir.path().join("c")).unwrap(),
            reopen: None,
        };
        apply(&m1).unwrap();
        let j = Journal {
            staging: vec![],
            ..journal(dir.path(), vec![m1, m2], Phase::Applying)
        };
        j.save(&home).unwrap();
        j.recover(&home).unwrap();
        assert!(dir.path().join("a").exists() && !dir.path().join("b").exists());
        assert!(dir.path().join("c").exists() && !dir.path().join("d").exists());
    }
}
