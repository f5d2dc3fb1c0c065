//! End-to-end tests of the `backstop` binary: real processes, real files,
//! real `tar`, `zstd`, `gzip` and `sha256sum`, failure points, signals and
//! `kill -9`, full and read-only filesystems.

mod backup;
mod catalog;
mod chains;
mod confinement;
mod craft;
mod encryption;
mod failures;
mod instances;
mod load;
mod migrate;
mod names;
mod offsite;
mod output;
mod proportional;
mod prune;
mod quadlet_units;
mod reconcile;
mod restore;
mod roots;
mod seeds;
mod services;
mod support;
mod verify;
mod volumes;
