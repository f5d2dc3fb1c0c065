//! Restores: staging an archive beneath a confined directory, verifying it
//! as it is written, and swapping it into place all or nothing.

pub mod confine;
