//! How long operations report progress and learn that they must stop.
//!
//! The core never prints. It calls a [`Progress`] that the caller injects (the
//! CLI draws bars on a terminal, tests pass [`NoProgress`]) and polls a
//! [`Cancel`] flag that a signal handler may set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};

/// The phases a long operation goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Reading files and writing the archive.
    Backup,
    /// Reading an archive back and checking it.
    Verify,
    /// Reading an archive and writing its files into a restore's staging
    /// directories.
    Unpack,
    /// Fetching an archive from a store once, before a restore reads it.
    Fetch,
}

/// What is being done to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceAction {
    /// The service is being stopped.
    Stopping,
    /// The service is being started.
    Starting,
}

/// A service is about to be stopped or started: what, and how long
/// backstop may wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEvent {
    pub action: ServiceAction,
    /// The service as a person calls it: `container nginx`, `user unit
    /// web.service`, `the service of instance web`.
    pub service: String,
    /// How long backstop waits before it gives up (or, for a stop, the
    /// program kills the service); `None` when there is no bound.
    pub timeout: Option<Duration>,
}

/// Receives progress reports. Every method has an empty default, and all may
/// be called from several threads.
pub trait Progress: Send + Sync {
    /// The scan has found `entries` entries holding `bytes` bytes so far.
    fn scanned(&self, entries: u64, bytes: u64) {
        let _ = (entries, bytes);
    }
    /// A phase starts that will process about `total` bytes.
    fn start(&self, phase: Phase, total: u64) {
        let _ = (phase, total);
    }
    /// `bytes` more bytes were processed.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
    /// The current phase is over.
    fn finish(&self) {}
    /// A service is about to be stopped or started (it may take a while:
    /// the event says how long at most).
    fn service(&self, event: &ServiceEvent) {
        let _ = event;
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A flag that asks a running operation to stop at the next safe point.
#[derive(Debug, Default, Clone)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks the operation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Returns [`Error::Interrupted`] once a stop was asked for.
    ///
    /// # Errors
    ///
    /// Fails exactly when the flag is set.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}
