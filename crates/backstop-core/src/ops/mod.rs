//! The operations the command line offers, one module each. Every operation
//! takes a [`crate::Context`] and a request, and returns a plain value.

pub mod backup;
pub mod copy;
pub mod doctor;
pub mod guard;
pub mod init;
pub mod key;
pub mod list;
pub mod migrate;
pub mod migrate_store;
pub mod prune;
pub mod reconcile;
pub mod recover;
pub mod restore;
pub mod rollback;
pub mod show;
pub mod verify;
