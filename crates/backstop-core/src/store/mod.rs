//! Where archives live: a local directory or an S3-compatible bucket,
//! behind one synchronous trait.
//!
//! A [`Store`] holds objects under [`Key`]s. Writes stream through a
//! [`StoreWriter`] and appear under their key only when
//! [`StoreWriter::finish`] succeeds; they never replace an existing object.
//! Reads stream ([`Store::open`]) or fetch a range ([`Store::read_range`]).
//! A writer that dies before it finishes leaves a *pending* write (a
//! temporary file, a multipart upload) that [`Store::pending`] lists and
//! [`Store::cleanup_abandoned`] removes.
//!
//! [`LocalStore`] is a directory reached through descriptors;
//! [`S3Store`] speaks the portable subset of S3 (put, multipart, ranged
//! get, head, list v2, delete) with `object_store` on a small tokio runtime
//! that the store owns. The trait is synchronous because the rest of
//! backstop is: its pipelines are threads and channels, and the async
//! runtime stays an implementation detail of the S3 store.

use std::io::{Read, Write};

use crate::error::Result;

mod credentials;
mod error;
mod key;
mod local;
mod s3;
mod s3_classify;
mod s3_read;
mod s3_wire;
mod s3_write;
mod url;

pub use credentials::Credentials;
pub use error::StoreError;
pub use key::{Key, MAX_COMPONENT, MAX_KEY};
pub use local::LocalStore;
pub use s3::{S3Config, S3Store, Transfer};

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: Key,
    /// Its size in bytes.
    pub size: u64,
}

/// A write that was started and neither finished nor aborted: a
/// temporary file of a [`LocalStore`], a multipart upload of an
/// [`S3Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The key the write was for.
    pub key: Key,
    /// The temporary file's name, or the upload's id.
    pub id: String,
}

/// A write in progress. Bytes go in through [`Write`]; nothing is visible
/// under the key until [`StoreWriter::finish`] returns `Ok`.
///
/// Dropping a writer without finishing it aborts the write, as
/// [`StoreWriter::abort`] does (its errors are then lost). A write error
/// leaves the writer failed: later writes fail too, and `finish` aborts
/// and returns the first error. An S3 store's write errors are
/// `io::Error`s that carry their [`StoreError`] ([`StoreError::from_io`]).
pub trait StoreWriter: Write + Send {
    /// Makes the object appear under its key, complete, and returns its
    /// size. It never replaces an object that appeared meanwhile.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] when an object took the key first;
    /// any error of the store. The write is aborted on every error.
    fn finish(self: Box<Self>) -> Result<u64>;

    /// Discards everything written, leaving no trace under the key.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot be told (the write then stays
    /// pending, for [`Store::cleanup_abandoned`]).
    fn abort(self: Box<Self>) -> Result<()>;
}

/// A place that holds objects under keys. Object-safe, so the rest of
/// backstop holds a `Box<dyn Store>` and does not care which it is.
pub trait Store: Send + Sync {
    /// The store as messages name it: its directory, or
    /// `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Starts writing a new object under `key`.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] when an object is there already; any
    /// error of the store.
    fn create(&self, key: &Key) -> Result<Box<dyn StoreWriter>>;

    /// Opens `key` for reading from the start. Errors while reading are
    /// `io::Error`s carrying a [`StoreError`] ([`StoreError::from_io`]);
    /// an object that turns out shorter than it was is an error, never a
    /// silent end.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when there is no such object.
    fn open(&self, key: &Key) -> Result<Box<dyn Read + Send>>;

    /// Reads `len` bytes of `key` from offset `start`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when there is no such object,
    /// [`StoreError::Short`] when it ends before `start + len`.
    fn read_range(&self, key: &Key, start: u64, len: u64) -> Result<Vec<u8>>;

    /// The size of `key`, or `None` when there is no such object.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot be asked.
    fn head(&self, key: &Key) -> Result<Option<u64>>;

    /// Every object at or below `prefix` (everything when `None`), in key
    /// order. Names in the store that are not [`Key`]s (someone else's
    /// files) and pending writes are left out.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot be listed.
    fn list(&self, prefix: Option<&Key>) -> Result<Vec<ObjectInfo>>;

    /// Removes `key`; nothing there is not an error.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot remove it.
    fn delete(&self, key: &Key) -> Result<()>;

    /// The pending writes at or below `prefix`, in key order.
    ///
    /// # Errors
    ///
    /// Fails when the store cannot be listed.
    fn pending(&self, prefix: Option<&Key>) -> Result<Vec<Pending>>;

    /// Removes every pending write at or below `prefix` (aborts multipart
    /// uploads, removes temporary files) and returns how many there were.
    /// Only for a caller that knows no live writer works there: one that
    /// holds the lock of the instance whose keys the prefix holds.
    ///
    /// # Errors
    ///
    /// Fails when one cannot be removed; the rest are still tried.
    fn cleanup_abandoned(&self, prefix: Option<&Key>) -> Result<usize>;
}
