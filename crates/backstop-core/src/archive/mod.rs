//! The archive: format version 1, its writer and its reader.

pub mod compress;
pub mod ends;
pub mod format;
pub mod frames;
mod hashing;
pub mod holders;
pub mod index;
pub mod read_entry;
pub mod reader;
pub mod skip;
pub mod tarfmt;
pub mod tarread;
pub mod writer;

pub use format::{
    ArchiveError, BackupKind, Codec, CompressionSpec, Description, Manifest, TakenOf, Trailer,
};
