//! The library behind backstop: archives, the catalog, locks, and the
//! operations the command line offers.
//!
//! This crate never touches the terminal: operations take a [`Context`]
//! (where state lives, how to report progress, when to stop) and return plain
//! values that the caller renders. See ARCHITECTURE.md for the map.

#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod access;
pub mod archive;
pub mod catalog;
pub mod chain;
pub mod command;
pub mod config;
pub mod encryption;
pub mod error;
pub mod failpoint;
pub mod fsutil;
pub mod handle;
pub mod instance;
pub mod lock;
pub mod meta;
pub mod naming;
pub mod ops;
pub mod podman;
pub mod progress;
pub mod quadlet;
pub mod restore;
pub mod service;
pub mod source;
pub mod store;
pub mod stores;
pub mod systemd;
pub mod time;
pub mod version;

#[cfg(test)]
mod testutil;

pub use error::{Error, ErrorKind, Result};

/// What every operation needs besides its own request.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// Where backstop keeps its state.
    pub layout: &'a config::Layout,
    /// The config file's contents (instances, defaults).
    pub config: &'a config::Config,
    /// Where progress goes.
    pub progress: &'a dyn progress::Progress,
    /// Set by a signal handler to stop the operation.
    pub cancel: &'a progress::Cancel,
    /// The identities that may open encrypted archives.
    pub keys: &'a encryption::Keys,
}

impl<'a> Context<'a> {
    /// The same context with the store as `lock` resolved it.
    pub fn under<'b>(&self, lock: &'b lock::StoreLock) -> Context<'b>
    where
        'a: 'b,
    {
        Context {
            layout: lock.layout(),
            ..*self
        }
    }
}

/// `backstop <version>`, as recorded in manifests and the catalog.
pub fn created_by() -> String {
    format!("backstop {}", env!("CARGO_PKG_VERSION"))
}
