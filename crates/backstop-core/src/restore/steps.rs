//! What a restore does to each path: a pure decision per path
//! ([`decide`]), and the merge of the backup's entries with the live tree,
//! both in archive order ([`Merger`]), which applies it to whole trees in
//! one pass with memory for neither.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::restore::diff::{Action, Changes, Kind, Node, Why, same};
use crate::restore::listing::Walk;

/// How a restore treats what is already at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The destination becomes the backup: added files go, missing ones come
    /// back, by a staged swap.
    Exact,
    /// The backup's files are written over the destination; replaced files
    /// are kept as `<name>.bak-<time>`; other files stay.
    Merge,
    /// Only missing files are written; conflicts are listed and left alone.
    Safe,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Exact => "exact",
            Mode::Merge => "merge",
            Mode::Safe => "safe",
        })
    }
}

/// What the apply phase does for one path, beyond what the mode's swap
/// does anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Nothing.
    None,
    /// Exact: the live entry is carried into the staged tree unchanged, so
    /// the swap keeps it.
    CarryOver,
    /// Merge and safe: the staged entry (and all below it) moves in where
    /// nothing is.
    MoveIn,
    /// Merge: the live entry is kept as `.bak`, the staged one moves in.
    BackUpThenMoveIn,
}

/// The decision for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The backup's entries below this one are not looked at separately
    /// (they go, or stay out, with it).
    pub block: bool,
    /// The live tree below this entry is listed (false: kept whole).
    pub descend_live: bool,
    pub step: Move,
}

/// Decides one path from what the backup has (`want`), what is there
/// (`have`), whether a keep rule covers it, and (when both exist and no
/// rule keeps it) whether the two are the same.
pub fn decide(
    mode: Mode,
    want: Option<&Node>,
    have: Option<&Node>,
    kept: bool,
    same: bool,
) -> Decision {
    let d = |action, block, descend_live, step| Decision {
        action,
        block,
        descend_live,
        step,
    };
    let carry = if mode == Mode::Exact {
        Move::CarryOver
    } else {
        Move::None
    };
    match (want, have) {
        (Some(_), None) => {
            let step = if mode == Mode::Exact {
                Move::None
            } else {
                Move::MoveIn
            };
            d(Action::Create, false, false, step)
        }
        (_, Some(_)) if kept => d(Action::Keep, true, false, carry),
        (Some(_), Some(_)) if same => d(Action::Unchanged, false, true, Move::None),
        (Some(_), Some(_)) if mode == Mode::Safe => d(Action::Conflict, true, true, Move::None),
        (Some(w), Some(h)) => {
            let step = if mode == Mode::Merge {
                Move::BackUpThenMoveIn
            } else {
                Move::None
            };
            d(Action::Replace, w.kind != h.kind, true, step)
        }
        (None, Some(_)) if mode == Mode::Exact => d(Action::Delete, false, true, Move::None),
        (None, Some(_)) => d(Action::Skip, false, true, Move::None),
        (None, None) => d(Action::Skip, false, false, Move::None),
    }
}

/// The paths an apply must move, found by the merge.
#[derive(Debug, Default)]
pub struct Moves {
    /// Exact: live paths (relative) carried into the staged tree.
    pub carry: Vec<PathBuf>,
    /// Merge and safe: relative paths moved in, and whether the live
    /// entry is kept as `.bak` first.
    pub move_in: Vec<(PathBuf, bool)>,
    /// Exact in place: what moves, the rest staying where it is.
    pub in_place: Option<InPlace>,
}

/// An exact restore in place: the live tree stays, and only what differs
/// from the backup moves: the live entry aside (into the staging
/// directory, removed at the commit), the staged one in. Files found the
/// same were never staged and are not touched. A directory in which
/// nothing stays (everything inside changed, or went) moves whole instead
/// of entry by entry, so that the steps follow the directories that
/// changed, not the files. Fed every path's decision in archive order
/// ([`InPlace::step`]).
#[derive(Debug, Default)]
pub struct InPlace {
    /// Live paths moved aside (replaced or deleted), in order; `None`
    /// where a deleted directory stays because something kept lies
    /// inside it (its other entries are moved aside one by one).
    pub aside: Vec<Option<PathBuf>>,
    /// Staged paths moved in (a directory with everything below it).
    pub move_in: Vec<PathBuf>,
    /// Directories of the backup already in the live tree, which take
    /// their staged copy's mode, owner and time.
    pub touch: Vec<PathBuf>,
    /// The directories being listed, outermost first.
    frames: Vec<Frame>,
    /// A live directory replaced whole by something else.
    replaced: Option<PathBuf>,
    /// A staged directory moving in whole.
    moved: Option<PathBuf>,
}

/// A directory whose entries are being decided, and whose steps may fold
/// into one move of it.
#[derive(Debug)]
struct Frame {
    rel: PathBuf,
    /// Only in the live tree (else in both).
    deleted: bool,
    /// Where the steps of its entries start in `aside`, `move_in` and
    /// `touch` (a deleted one's own aside is at `aside`'s).
    at: (usize, usize, usize),
    /// Something inside it stays where it is.
    stays: bool,
}

impl InPlace {
    /// Records the decision on `rel`: its action, the backup's and the
    /// live entry's kinds, and whether a staged copy of it exists.
    /// `Err` names a kept path inside a directory the backup replaces with
    /// something else, which an exact restore cannot keep.
    pub fn step(
        &mut self,
        rel: &Path,
        action: Action,
        want: Option<Kind>,
        have: Option<Kind>,
        staged: bool,
    ) -> std::result::Result<(), PathBuf> {
        self.close(Some(rel));
        if strictly_below(rel, &self.moved) {
            return Ok(());
        }
        let under_replaced = strictly_below(rel, &self.replaced);
        match action {
            Action::Keep if under_replaced => return Err(rel.to_path_buf()),
            Action::Keep => self.stays(),
            Action::Create => self.bring_in(rel, want),
            Action::Replace | Action::Unchanged if staged => match (want, have) {
                (Some(Kind::Dir), Some(Kind::Dir)) => {
                    self.open(rel, false);
                    self.touch.push(rel.to_path_buf());
                }
                (Some(Kind::Symlink), Some(Kind::Symlink)) if action == Action::Unchanged => {}
                _ => {
                    self.aside.push(Some(rel.to_path_buf()));
                    if have == Some(Kind::Dir) {
                        self.replaced = Some(rel.to_path_buf());
                    }
                    self.bring_in(rel, want);
                }
            },
            // The backup's, as it is.
            Action::Unchanged => self.stays(),
            Action::Delete if !under_replaced => {
                if have == Some(Kind::Dir) {
                    self.open(rel, true);
                }
                self.aside.push(Some(rel.to_path_buf()));
            }
            _ => {}
        }
        Ok(())
    }

    /// A live entry left where it is for another reason (another source's
    /// file, such as a database restored on its own).
    pub fn leave(&mut self, rel: &Path) {
        self.close(Some(rel));
        self.stays();
    }

    fn stays(&mut self) {
        if let Some(top) = self.frames.last_mut() {
            top.stays = true;
        }
    }

    fn open(&mut self, rel: &Path, deleted: bool) {
        self.frames.push(Frame {
            rel: rel.to_path_buf(),
            deleted,
            at: (self.aside.len(), self.move_in.len(), self.touch.len()),
            stays: false,
        });
    }

    fn bring_in(&mut self, rel: &Path, want: Option<Kind>) {
        self.move_in.push(rel.to_path_buf());
        if want == Some(Kind::Dir) {
            self.moved = Some(rel.to_path_buf());
        }
    }

    /// Ends the directories that `rel` is not below (all of them with
    /// `None`). One in which nothing stays moves whole: a deleted one
    /// aside, one in both aside and in again from staging, its entries'
    /// steps dropped. One in which something stays is left, and so are the
    /// directories around it.
    fn close(&mut self, rel: Option<&Path>) {
        while let Some(top) = self.frames.last() {
            if rel.is_some_and(|r| r.starts_with(&top.rel) && r != top.rel) {
                return;
            }
            let frame = self.frames.pop().expect("just seen");
            let (aside, move_in, touch) = frame.at;
            match (frame.stays, frame.deleted) {
                (true, deleted) => {
                    if deleted {
                        self.aside[aside] = None;
                    }
                    self.stays();
                }
                (false, true) => self.aside.truncate(aside + 1),
                (false, false) => {
                    self.aside.truncate(aside);
                    self.move_in.truncate(move_in);
                    self.touch.truncate(touch);
                    self.aside.push(Some(frame.rel.clone()));
                    self.move_in.push(frame.rel);
                }
            }
        }
    }
}

/// The merge of one target's backup entries with its live tree. Feed it
/// the backup's entries in archive order ([`Merger::backup_entry`]); the
/// live tree is walked alongside.
pub struct Merger<'a> {
    mode: Mode,
    /// The live target, for messages and content comparisons.
    target: &'a Path,
    /// The target as plans show it.
    shown_top: String,
    /// The staged tree (a real restore), whose files compare by content.
    staged_top: Option<&'a Path>,
    live: Walk,
    /// Why a keep rule covers a relative path, if one does.
    kept: &'a dyn Fn(&Path, bool) -> Option<Why>,
    /// Whether a live path is another source's (a database in the tree).
    other: &'a dyn Fn(&Path) -> bool,
    /// Inodes linked from the live tree, with their change time once
    /// linked.
    linked: Option<&'a HashMap<u64, u64>>,
    blocked: Option<PathBuf>,
    /// Exact: the last live directory the backup replaces with something
    /// else (that kind), inside which nothing can be kept.
    replaced: Option<(PathBuf, Kind)>,
    moved: Option<PathBuf>,
    last: Option<PathBuf>,
    /// Exact in place: the moves, and `linked` holds the live files and
    /// directories found as the backup has them (never staged).
    in_place: Option<InPlace>,
    /// Exact in place: whether staging left the live entry at a relative
    /// path where it was, found as the backup has it.
    left: Option<&'a dyn Fn(&Path) -> bool>,
    /// How many entries staging left, and how many of them the walk of
    /// the live tree has met so far.
    left_count: (u64, u64),
    /// Kept directories the live walk did not list: left entries inside
    /// are counted there if some were not met.
    kept_dirs: Vec<PathBuf>,
    pub changes: Changes,
    pub moves: Moves,
}

impl<'a> Merger<'a> {
    /// A merge of backup entries with the live tree at `target`.
    ///
    /// # Errors
    ///
    /// Fails when the live tree cannot be walked.
    pub fn new(
        mode: Mode,
        target: &'a Path,
        staged_top: Option<&'a Path>,
        kept: &'a dyn Fn(&Path, bool) -> Option<Why>,
        other: &'a dyn Fn(&Path) -> bool,
        linked: Option<&'a HashMap<u64, u64>>,
    ) -> Result<Merger<'a>> {
        Ok(Merger {
            mode,
            target,
            shown_top: target.display().to_string(),
            staged_top,
            live: Walk::new(target, false)?,
            kept,
            other,
            linked,
            blocked: None,
            replaced: None,
            moved: None,
            last: None,
            in_place: None,
            left: None,
            left_count: (0, 0),
            kept_dirs: Vec::new(),
            changes: Changes::default(),
            moves: Moves::default(),
        })
    }

    /// Makes this a restore over a live tree in which staging left what
    /// it found as the backup has it: the live entries whose inodes
    /// `linked` holds are the backup's, unstaged. `left` says which
    /// relative paths staging left where they were, and `count` how many
    /// there are: an entry found there with another inode was put there
    /// meanwhile, and one not found at all went.
    #[must_use]
    pub fn leaving(mut self, left: &'a dyn Fn(&Path) -> bool, count: u64) -> Self {
        self.left = Some(left);
        self.left_count = (count, 0);
        self
    }

    /// [`Merger::leaving`] for an exact restore in place, which moves
    /// what changes (see [`InPlace`]).
    #[must_use]
    pub fn in_place(mut self, left: &'a dyn Fn(&Path) -> bool, count: u64) -> Self {
        self.in_place = Some(InPlace::default());
        self.leaving(left, count)
    }

    /// Notes that the live walk met `rel`.
    fn met(&mut self, rel: &Path) {
        if self.left.is_some_and(|left| left(rel)) {
            self.left_count.1 += 1;
        }
    }

    /// Takes the live entry peeked at, descending into it or not; a kept
    /// directory not descended into is noted (see [`Merger::check_left`]).
    fn take_live(&mut self, rel: &Path, have: &Node, descend: bool, kept: bool) {
        self.live.take(descend);
        if !descend && kept && have.kind == Kind::Dir && self.left.is_some() {
            self.kept_dirs.push(rel.to_path_buf());
        }
    }

    /// The live target.
    pub fn target(&self) -> &Path {
        self.target
    }

    /// Records the action on `rel`, the target's path kept once, and why
    /// it is kept when it is.
    fn plan(&mut self, rel: &Path, (action, kind): (Action, Kind), bytes: u64, why: Option<Why>) {
        let below = rel.display().to_string();
        match (action, why) {
            (Action::Keep, Some(why)) => {
                self.changes.keep_below(&self.shown_top, &below, kind, why)
            }
            _ => self
                .changes
                .push_below(&self.shown_top, &below, action, kind, bytes),
        }
    }

    /// One entry of the backup (relative to the target), in archive order.
    ///
    /// # Errors
    ///
    /// Fails on entries out of order, a linked file written meanwhile, or
    /// a live tree that cannot be read.
    pub fn backup_entry(&mut self, rel: PathBuf, want: &Node) -> Result<Option<Action>> {
        if self.last.as_ref().is_some_and(|last| rel <= *last) {
            return Err(Error::Archive(crate::archive::ArchiveError::Corrupt {
                path: self.target.to_path_buf(),
                detail: format!("entry {} is out of order", rel.display()),
            }));
        }
        self.last = Some(rel.clone());
        self.live_before(Some(&rel))?;
        let have = match self.live.peek()? {
            Some((r, n)) if *r == rel => Some(n.clone()),
            _ => None,
        };
        if have.is_some() {
            self.met(&rel);
        }
        if strictly_below(&rel, &self.blocked) {
            // Goes, or stays out, with the entry above it.
            if have.is_some() {
                self.live.take(true);
            }
            return Ok(None);
        }
        if let Some(linked) = self.linked
            && want.kind == Kind::File
            && linked.get(&want.ino).is_some_and(|c| *c != want.ctime)
        {
            return Err(crate::restore::stage::changed_meanwhile(
                &self.target.join(&rel),
            ));
        }
        let why = have
            .as_ref()
            .and_then(|_| (self.kept)(&rel, want.kind == Kind::Dir));
        let is_kept = why.is_some();
        let is_same = match (&have, is_kept) {
            (Some(h), false) => {
                let staged = self.staged_top.map(|s| s.join(&rel));
                same(want, h, &self.target.join(&rel), staged.as_deref())
            }
            _ => false,
        };
        let d = decide(self.mode, Some(want), have.as_ref(), is_kept, is_same);
        if let Some(have) = &have {
            self.take_live(&rel, have, d.descend_live, is_kept);
        }
        if d.block {
            self.blocked = Some(rel.clone());
        }
        if self.mode == Mode::Exact
            && d.action == Action::Replace
            && want.kind != Kind::Dir
            && have.as_ref().is_some_and(|h| h.kind == Kind::Dir)
        {
            self.replaced = Some((rel.clone(), want.kind));
        }
        self.plan(&rel, (d.action, want.kind), want.size, why);
        self.step_in_place(
            &rel,
            d.action,
            (Some(want.kind), have.as_ref().map(|h| h.kind)),
            why,
        )?;
        self.record(rel, d.step);
        Ok(Some(d.action))
    }

    /// Exact in place: records the decision's moves.
    fn step_in_place(
        &mut self,
        rel: &Path,
        action: Action,
        (want, have): (Option<Kind>, Option<Kind>),
        why: Option<Why>,
    ) -> Result<()> {
        let Some(in_place) = self.in_place.as_mut() else {
            return Ok(());
        };
        let replacing = self.replaced.as_ref().map_or(Kind::File, |(_, k)| *k);
        in_place
            .step(rel, action, want, have, want.is_some())
            .map_err(|kept| kept_inside_replaced(&self.target.join(&kept), why, replacing))
    }

    /// Exact: refuses a path kept inside a live directory the backup
    /// replaces with something else, which cannot hold it. The plan (a dry
    /// run) refuses it as the restore does.
    fn check_not_inside_replaced(&self, rel: &Path, why: Option<Why>) -> Result<()> {
        match (&self.replaced, why) {
            (Some((dir, kind)), Some(_)) if rel.starts_with(dir) && rel != dir.as_path() => {
                Err(kept_inside_replaced(&self.target.join(rel), why, *kind))
            }
            _ => Ok(()),
        }
    }

    /// Exact in place: a live entry that staging found as the backup has
    /// it (and never staged), unless it changed since. Another inode where
    /// staging left one (a file renamed over it) changed too: taken for an
    /// entry only the live tree has, it would go, and the backup's with it.
    fn unchanged_in_place(&self, rel: &Path, have: &Node) -> Result<bool> {
        if self.left.is_none() {
            return Ok(false);
        }
        let Some(ctime) = self.linked.and_then(|l| l.get(&have.ino)) else {
            if self.left.is_some_and(|left| left(rel)) {
                return Err(crate::restore::stage::changed_meanwhile(
                    &self.target.join(rel),
                ));
            }
            return Ok(false);
        };
        if *ctime != have.ctime {
            return Err(crate::restore::stage::changed_meanwhile(
                &self.target.join(rel),
            ));
        }
        Ok(true)
    }

    /// Records the move a decision asks for; nothing below a subtree that
    /// moves in whole.
    fn record(&mut self, rel: PathBuf, step: Move) {
        if self.staged_top.is_none() || self.in_place.is_some() {
            return;
        }
        match step {
            Move::None => {}
            Move::CarryOver => {
                if !rel.as_os_str().is_empty() {
                    self.moves.carry.push(rel);
                }
            }
            Move::MoveIn | Move::BackUpThenMoveIn => {
                if !strictly_below(&rel, &self.moved) {
                    self.moved = Some(rel.clone());
                    self.moves
                        .move_in
                        .push((rel, step == Move::BackUpThenMoveIn));
                }
            }
        }
    }

    /// Takes the live entries before `until` (all, with `None`): only in
    /// the live tree.
    fn live_before(&mut self, until: Option<&PathBuf>) -> Result<()> {
        loop {
            let Some((rel, have)) = self.live.peek()? else {
                return Ok(());
            };
            if until.is_some_and(|u| rel >= u) {
                return Ok(());
            }
            let (rel, have) = (rel.clone(), have.clone());
            self.met(&rel);
            if (self.other)(&self.target.join(&rel)) {
                self.live.take(true);
                if let Some(in_place) = self.in_place.as_mut() {
                    in_place.leave(&rel);
                }
                continue;
            }
            // FIFOs, sockets and devices, which no backup holds, stay.
            let why = if have.kind == Kind::Other {
                Some(Why::Special)
            } else {
                (self.kept)(&rel, have.kind == Kind::Dir)
            };
            if why.is_none() && self.unchanged_in_place(&rel, &have)? {
                self.live.take(true);
                self.plan(&rel, (Action::Unchanged, have.kind), have.size, None);
                self.step_in_place(&rel, Action::Unchanged, (None, Some(have.kind)), None)?;
                continue;
            }
            // So does a directory tagged as a cache, which the backup left
            // out (looked for only here, in what only the live tree has).
            let why = why.or_else(|| {
                (have.kind == Kind::Dir
                    && crate::source::exclude::has_cachedir_tag_at(&self.target.join(&rel)))
                .then_some(Why::Cache)
            });
            self.check_not_inside_replaced(&rel, why)?;
            let is_kept = why.is_some();
            let d = decide(self.mode, None, Some(&have), is_kept, false);
            self.take_live(&rel, &have, d.descend_live, is_kept);
            self.plan(&rel, (d.action, have.kind), 0, why);
            self.step_in_place(&rel, d.action, (None, Some(have.kind)), why)?;
            if d.step == Move::CarryOver
                && !rel.as_os_str().is_empty()
                && self.staged_top.is_some()
                && self.in_place.is_none()
            {
                self.moves.carry.push(rel);
            }
        }
    }

    /// Takes what is left of the live tree; the plan and the moves.
    ///
    /// # Errors
    ///
    /// Fails when the live tree cannot be read.
    pub fn finish(mut self) -> Result<(Changes, Moves)> {
        self.live_before(None)?;
        self.check_left()?;
        let Merger {
            live,
            changes,
            mut moves,
            in_place,
            ..
        } = self;
        live.finish()?;
        moves.in_place = in_place.map(|mut p| {
            p.close(None);
            p
        });
        Ok((changes, moves))
    }
}

impl Merger<'_> {
    /// Exact in place: refuses when an entry staging left where it was is
    /// gone (deleted, or moved away, meanwhile). The backup's copy of it
    /// was never staged, so the restored tree would lack it. Left entries
    /// inside kept directories, which the merge does not list, are counted
    /// there, and only when some were not met.
    fn check_left(&self) -> Result<()> {
        let (Some(left), (count, mut met)) = (self.left, self.left_count) else {
            return Ok(());
        };
        for dir in &self.kept_dirs {
            if met >= count {
                break;
            }
            // One that cannot be listed counts nothing: refused below.
            met += self.left_below(dir, left).unwrap_or(0);
        }
        if met >= count {
            return Ok(());
        }
        Err(Error::Refused {
            message: format!(
                "{}: {} of the entries the restore found as the backup has them, and left in \
                 place, went while it ran: something is deleting or moving things in the \
                 destination",
                self.target.display(),
                count - met,
            ),
            hint: Some(
                "stop what writes there (the instance's services, a sync job) and restore again"
                    .into(),
            ),
        })
    }

    /// How many entries below the kept directory `dir` staging left.
    fn left_below(&self, dir: &Path, left: &dyn Fn(&Path) -> bool) -> Result<u64> {
        let mut walk = Walk::new(&self.target.join(dir), false)?;
        let mut met = 0;
        while let Some(rel) = walk.peek()?.map(|(rel, _)| rel.clone()) {
            walk.take(true);
            if !rel.as_os_str().is_empty() && left(&dir.join(&rel)) {
                met += 1;
            }
        }
        walk.finish()?;
        Ok(met)
    }
}

/// Whether `rel` lies below (not at) `top`.
/// The refusal of a path kept (for `why`) inside a directory the backup
/// has a `kind` in place of.
fn kept_inside_replaced(path: &Path, why: Option<Why>, kind: Kind) -> Error {
    Error::Refused {
        message: format!(
            "{} is kept ({}), but the backup has a {} where the directory around it is",
            path.display(),
            why.map_or("a keep rule", Why::as_str),
            kind.as_str(),
        ),
        hint: Some("restore with --mode merge, or move the kept path out of the way first".into()),
    }
}

fn strictly_below(rel: &Path, top: &Option<PathBuf>) -> bool {
    top.as_ref()
        .is_some_and(|t| rel.starts_with(t) && rel != t.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: Kind) -> Node {
        Node {
            kind,
            size: 1,
            mode: 0o644,
            mtime: (0, 0),
            link: None,
            sha256: None,
            ino: 0,
            ctime: 0,
            owner: None,
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn every_case_of_every_mode() {
        let (f, d) = (node(Kind::File), node(Kind::Dir));
        use Action::*;
        use Mode::*;
        // (mode, want, have, kept, same) → (action, block, descend, step)
        let cases: &[(
            Mode,
            Option<&Node>,
            Option<&Node>,
            bool,
            bool,
            Action,
            bool,
            bool,
            Move,
        )] = &[
            (
                Exact,
                Some(&f),
                None,
                false,
                false,
                Create,
                false,
                false,
                Move::None,
            ),
            (
                Merge,
                Some(&f),
                None,
                false,
                false,
                Create,
                false,
                false,
                Move::MoveIn,
            ),
            (
                Safe,
                Some(&d),
                None,
                false,
                false,
                Create,
                false,
                false,
                Move::MoveIn,
            ),
            (
                Exact,
                Some(&f),
                Some(&f),
                false,
                true,
                Unchanged,
                false,
                true,
                Move::None,
            ),
            (
                Exact,
                Some(&f),
                Some(&f),
                false,
                false,
                Replace,
                false,
                true,
                Move::None,
            ),
            (
                Exact,
                Some(&d),
                Some(&f),
                false,
                false,
                Replace,
                true,
                true,
                Move::None,
            ),
            (
                Merge,
                Some(&f),
                Some(&f),
                false,
                false,
                Replace,
                false,
                true,
                Move::BackUpThenMoveIn,
            ),
            (
                Safe,
                Some(&f),
                Some(&f),
                false,
                false,
                Conflict,
                true,
                true,
                Move::None,
            ),
            (
                Exact,
                Some(&d),
                Some(&d),
                true,
                false,
                Keep,
                true,
                false,
                Move::CarryOver,
            ),
            (
                Merge,
                Some(&d),
                Some(&d),
                true,
                false,
                Keep,
                true,
                false,
                Move::None,
            ),
            (
                Exact,
                None,
                Some(&f),
                false,
                false,
                Delete,
                false,
                true,
                Move::None,
            ),
            (
                Merge,
                None,
                Some(&f),
                false,
                false,
                Skip,
                false,
                true,
                Move::None,
            ),
            (
                Exact,
                None,
                Some(&d),
                true,
                false,
                Keep,
                true,
                false,
                Move::CarryOver,
            ),
            (
                Safe,
                None,
                Some(&d),
                true,
                false,
                Keep,
                true,
                false,
                Move::None,
            ),
        ];
        for &(mode, want, have, kept, same, action, block, descend, step) in cases {
            let got = decide(mode, want, have, kept, same);
            assert_eq!(
                got,
                Decision {
                    action,
                    block,
                    descend_live: descend,
                    step
                },
                "{mode} want {:?} have {:?} kept {kept} same {same}",
                want.map(|n| n.kind),
                have.map(|n| n.kind)
            );
        }
    }

    #[test]
    fn a_merge_in_one_pass_matches_the_backup_with_the_live_tree() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        for p in ["a", "keep/deep", "gone"] {
            std::fs::create_dir_all(live.join(p)).unwrap();
        }
        std::fs::write(live.join("a/same"), b"1").unwrap();
        std::fs::write(live.join("gone/x"), b"x").unwrap();
        let kept = |rel: &Path, _: bool| (rel == Path::new("keep")).then_some(Why::NeverRestore);
        let other = |_: &Path| false;
        let mut m = Merger::new(Mode::Exact, &live, None, &kept, &other, None).unwrap();
        let mut file = node(Kind::File);
        use sha2::Digest;
        file.sha256 = Some(sha2::Sha256::digest(b"1").into());
        for (rel, n) in [
            ("", node(Kind::Dir)),
            ("a", node(Kind::Dir)),
            ("a/new", node(Kind::File)),
            ("a/same", file),
        ] {
            m.backup_entry(PathBuf::from(rel), &n).unwrap();
        }
        let (changes, _) = m.finish().unwrap();
        let got: Vec<(String, Action)> = changes
            .actions
            .iter()
            .map(|a| {
                let rel = a
                    .path
                    .strip_prefix(&live.display().to_string())
                    .unwrap_or("");
                (rel.trim_start_matches('/').to_string(), a.action)
            })
            .collect();
        // Unchanged paths are counted, not listed.
        assert_eq!(changes.totals.unchanged, 3);
        let want: Vec<(String, Action)> = [
            ("a/new", Action::Create),
            ("gone", Action::Delete),
            ("gone/x", Action::Delete),
            ("keep", Action::Keep),
        ]
        .iter()
        .map(|(p, a)| (p.to_string(), *a))
        .collect();
        assert_eq!(got, want);
    }

    /// One call of [`InPlace::step`]: path, action, want, have, staged.
    type Step<'a> = (&'a str, Action, Option<Kind>, Option<Kind>, bool);

    /// Runs [`InPlace::step`] over `steps`.
    fn in_place(steps: &[Step<'_>]) -> InPlace {
        let mut p = InPlace::default();
        for &(rel, action, want, have, staged) in steps {
            p.step(Path::new(rel), action, want, have, staged).unwrap();
        }
        p.close(None);
        p
    }

    fn paths(v: &[PathBuf]) -> Vec<&str> {
        v.iter().map(|p| p.to_str().unwrap()).collect()
    }

    fn asides(p: &InPlace) -> Vec<Option<&str>> {
        p.aside
            .iter()
            .map(|a| a.as_deref().map(|p| p.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn in_place_only_what_differs_moves() {
        use Action::*;
        let (d, f, l) = (Some(Kind::Dir), Some(Kind::File), Some(Kind::Symlink));
        let p = in_place(&[
            ("", Unchanged, d, d, true),
            ("a", Replace, f, f, true),
            ("b", Unchanged, f, f, false),
            ("c", Unchanged, f, f, true),
            ("link", Unchanged, l, l, true),
            ("n", Create, d, None, true),
            ("n/x", Create, f, None, true),
            ("to-dir", Replace, d, f, true),
            ("to-file", Replace, f, d, true),
            ("to-file/x", Delete, None, f, false),
        ]);
        // A staged file found equal in content but not in mode or time
        // ("c") still moves in; an equal symlink does not.
        assert_eq!(
            asides(&p),
            [Some("a"), Some("c"), Some("to-dir"), Some("to-file")]
        );
        assert_eq!(paths(&p.move_in), ["a", "c", "n", "to-dir", "to-file"]);
        assert_eq!(paths(&p.touch), [""]);
    }

    #[test]
    fn in_place_a_directory_in_which_nothing_stays_moves_whole() {
        use Action::*;
        let (d, f) = (Some(Kind::Dir), Some(Kind::File));
        let p = in_place(&[
            ("", Unchanged, d, d, true),
            ("all", Unchanged, d, d, true),
            ("all/a", Replace, f, f, true),
            ("all/gone", Delete, None, f, false),
            ("all/sub", Unchanged, d, d, true),
            ("all/sub/c", Replace, f, f, true),
            ("kept", Unchanged, d, d, true),
            ("kept/a", Replace, f, f, true),
            ("kept/cache", Keep, None, d, false),
            ("mixed", Unchanged, d, d, true),
            ("mixed/a", Replace, f, f, true),
            ("mixed/same", Unchanged, f, f, false),
        ]);
        assert_eq!(asides(&p), [Some("all"), Some("kept/a"), Some("mixed/a")]);
        assert_eq!(paths(&p.move_in), ["all", "kept/a", "mixed/a"]);
        assert_eq!(paths(&p.touch), ["", "kept", "mixed"]);
        // Everything changed: the whole tree moves, in one step.
        let p = in_place(&[
            ("", Unchanged, d, d, true),
            ("a", Replace, f, f, true),
            ("b", Delete, None, f, false),
        ]);
        assert_eq!(asides(&p), [Some("")]);
        assert_eq!(paths(&p.move_in), [""]);
        assert!(p.touch.is_empty());
    }

    #[test]
    fn in_place_a_left_entry_gone_is_refused_and_those_in_kept_directories_count() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        for p in ["a", "keep"] {
            std::fs::create_dir_all(live.join(p)).unwrap();
        }
        for p in ["a/f", "a/g", "keep/k"] {
            std::fs::write(live.join(p), p).unwrap();
        }
        let left_paths = ["a", "a/f", "a/g", "keep", "keep/k"];
        let left = |rel: &Path| left_paths.iter().any(|p| rel == Path::new(p));
        let kept = |rel: &Path, _: bool| (rel == Path::new("keep")).then_some(Why::Excluded);
        let other = |_: &Path| false;
        let merge = || {
            let linked: HashMap<u64, u64> = ["", "a", "a/f", "a/g", "keep", "keep/k"]
                .iter()
                .filter_map(|p| rustix::fs::lstat(live.join(p)).ok())
                .map(|st| (st.st_ino, crate::restore::stage::change_time(&st)))
                .collect();
            let m = Merger::new(Mode::Exact, &live, None, &kept, &other, Some(&linked)).unwrap();
            m.in_place(&left, left_paths.len() as u64)
                .finish()
                .map(|_| ())
        };
        // keep/ is not listed by the merge; what was left in it counts.
        merge().unwrap();
        std::fs::remove_file(live.join("a/g")).unwrap();
        let err = merge().unwrap_err().to_string();
        assert!(err.contains("1 of the entries"), "{err}");
        // Gone from the kept directory too: still one short.
        std::fs::write(live.join("a/g"), "a/g").unwrap();
        std::fs::remove_file(live.join("keep/k")).unwrap();
        let err = merge().unwrap_err().to_string();
        assert!(err.contains("1 of the entries"), "{err}");
    }

    #[test]
    fn in_place_a_deleted_directory_goes_whole_unless_something_kept_is_inside() {
        use Action::*;
        let (d, f) = (Some(Kind::Dir), Some(Kind::File));
        let p = in_place(&[
            ("g", Delete, None, d, false),
            ("g/x", Delete, None, f, false),
            ("h", Delete, None, d, false),
            ("h/a", Delete, None, f, false),
            ("h/deep", Delete, None, d, false),
            ("h/deep/keep", Keep, None, d, false),
            ("h/gone", Delete, None, d, false),
            ("h/gone/y", Delete, None, f, false),
            ("h/z", Delete, None, f, false),
        ]);
        assert_eq!(
            asides(&p),
            [
                Some("g"),
                None,
                Some("h/a"),
                None,
                Some("h/gone"),
                Some("h/z")
            ]
        );
        assert!(p.move_in.is_empty() && p.touch.is_empty());
    }

    #[test]
    fn in_place_a_kept_path_inside_a_replaced_directory_is_refused() {
        use Action::*;
        let mut p = InPlace::default();
        p.step(
            Path::new("d"),
            Replace,
            Some(Kind::File),
            Some(Kind::Dir),
            true,
        )
        .unwrap();
        let err = p
            .step(Path::new("d/keep"), Keep, None, Some(Kind::Dir), false)
            .unwrap_err();
        assert_eq!(err, Path::new("d/keep"));
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kept = |_: &Path, _: bool| None;
        let other = |_: &Path| false;
        let mut m = Merger::new(Mode::Exact, dir.path(), None, &kept, &other, None).unwrap();
        m.backup_entry(PathBuf::from("b"), &node(Kind::File))
            .unwrap();
        assert!(
            m.backup_entry(PathBuf::from("a"), &node(Kind::File))
                .is_err()
        );
    }
}
