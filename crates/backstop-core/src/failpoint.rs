//! Named failure points, compiled in only with the `failpoints` feature.
//!
//! Tests set `BACKSTOP_FAILPOINTS` to `name=action[;name=action…]` where an
//! action is one of:
//!
//! - `error`: the operation fails there with an injected I/O error;
//! - `abort`: the process dies on the spot, as with `kill -9`;
//! - `sleep:MS`: a pause of MS milliseconds;
//! - `wait:PATH`: a pause until PATH exists, so a test can act at that
//!   moment; `PATH.reached` is created first to tell the test it may;
//! - `error@N`, `abort@N`: as `error` and `abort`, at the point's N-th
//!   pass only (from 1), for points passed many times (a restore's steps).
//!
//! Without the feature, [`hit`] is an empty inline function.

use crate::error::Result;

/// Passes a failure point named `name`.
///
/// # Errors
///
/// Returns an injected error when the point is set to `error`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) -> Result<()> {
    let Ok(spec) = std::env::var("BACKSTOP_FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(';') {
        let Some((point, action)) = item.split_once('=') else {
            continue;
        };
        if point.trim() != name {
            continue;
        }
        let mut action = action.trim();
        if let Some((what, nth)) = action.split_once('@') {
            if !nth_pass(name, nth.parse().unwrap_or(0)) {
                continue;
            }
            action = what;
        }
        if action == "error" {
            return Err(crate::error::Error::io(
                "failure point",
                name,
                std::io::Error::other(format!("injected failure at {name}")),
            ));
        } else if action == "abort" {
            std::process::abort();
        } else if let Some(ms) = action.strip_prefix("sleep:") {
            let ms = ms.parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        } else if let Some(path) = action.strip_prefix("wait:") {
            let _ = std::fs::write(format!("{path}.reached"), b"");
            while !std::path::Path::new(path).exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

/// Counts a pass of `name`: whether it is the `nth`.
#[cfg(feature = "failpoints")]
fn nth_pass(name: &str, nth: u64) -> bool {
    static PASSES: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());
    let mut passes = PASSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = match passes.iter_mut().find(|(n, _)| n == name) {
        Some((_, c)) => c,
        None => {
            passes.push((name.to_string(), 0));
            &mut passes.last_mut().expect("just pushed").1
        }
    };
    *count += 1;
    *count == nth
}

/// Passes a failure point named `name` (no-op without the `failpoints` feature).
///
/// # Errors
///
/// Never fails in this build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) -> Result<()> {
    Ok(())
}
