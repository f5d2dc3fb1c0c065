//! Integration tests of the core: whole operations against real
//! filesystems, checked with real `tar`, `zstd`, `gzip` and `sha256sum`.

mod archive;
mod damage;
mod podman;
mod restore;
mod roundtrip;
mod store;
mod support;
