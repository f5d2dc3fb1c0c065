//! Restores: staging an archive beneath confined directories, verifying it
//! as it is written, and swapping it into place all or nothing, with a
//! journal that lets any later command finish or undo an interrupted one.
//!
//! - [`plan`]: the backup found, where each source goes, the checks, the
//!   safety backup's sources; the plan a dry run prints.
//! - [`apply`]: the confirmed plan carried out: services, journal, safety
//!   backup, staging, steps, health check, commit.
//! - [`listing`]: a tree on disk as a sorted stream, in archive order.
//! - [`preview`]: the archive side of a dry run.
//! - [`steps`]: what to do with each path, and the merge of the backup's
//!   entries with the live tree.
//! - [`diff`]: what a restore would change, path by path.
//! - [`stage`]: the archive unpacked beside each target, verified.
//! - [`journal`]: the steps written down before they are taken, and undone.
//! - [`confine`]: writes confined to one directory.

pub mod apply;
pub mod confine;
pub mod diff;
pub mod journal;
pub mod listing;
pub mod plan;
pub mod preview;
pub mod stage;
pub mod steps;
