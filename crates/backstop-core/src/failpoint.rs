//! Named failure points, compiled in only with the `failpoints` feature.
//!
//! Tests set `BACKSTOP_FAILPOINTS` to `name=action[;name=action…]` where an
//! action is one of:
//!
//! - `error`: the operation fails there with an injected I/O error;
//! - `abort`: the process dies on the spot, as with `kill -9`;
//! - `sleep:MS`: a pause of MS milliseconds;
//! - `wait:PATH`: a pause until PATH exists, so a test can act at that
//!   moment; `PATH.reached` is created first to tell the test it may.
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
        let action = action.trim();
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
