//! Sources: what goes into a backup, found by a scan with exclude rules.

pub mod capture;
pub mod exclude;
pub mod scan;
