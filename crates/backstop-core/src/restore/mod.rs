//! Restores: staging an archive beneath confined directories, verifying it
//! as it is written, and swapping it into place all or nothing, with a
//! journal that lets any later command finish or undo an interrupted one.

pub mod confine;
pub mod diff;
pub mod handle;
pub mod journal;
pub mod listing;
pub mod preview;
pub mod stage;
pub mod steps;
