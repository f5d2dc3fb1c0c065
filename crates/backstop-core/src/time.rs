//! Timestamps as backstop writes them: RFC 3339 in UTC with milliseconds,
//! which sort as text, and the compact form used in backup ids.

use jiff::{Timestamp, Unit};

/// Now, to the millisecond.
pub fn now() -> Timestamp {
    Timestamp::now()
        .round(Unit::Millisecond)
        .unwrap_or_else(|_| Timestamp::now())
}

/// `2026-11-21T22:46:00.123Z`
pub fn rfc3339(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// [`rfc3339`] of now.
pub fn now_rfc3339() -> String {
    rfc3339(now())
}

/// The time part of a backup id: `2026-11-21-224600` (UTC).
pub fn id_stamp(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%d-%H%M%S").to_string()
}

/// A duration as people write it: `1.5s`, `90s`, `2m 5s`, `1h 3m`, `30d`.
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs < 10 && d.subsec_millis() != 0 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ if secs.is_multiple_of(86400) => format!("{}d", secs / 86400),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Parses a duration such as `90s`, `10m` or `1h 30m`.
///
/// # Errors
///
/// Returns a message for anything else, negative durations included.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("`{text}` is not a duration: write it like 30s, 10m or 1h 30m");
    let parsed: jiff::SignedDuration = text.parse().map_err(|_| invalid())?;
    std::time::Duration::try_from(parsed).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_fixed_width_utc() {
        let ts: Timestamp = "2026-11-21T22:46:05.5+01:00".parse().unwrap();
        assert_eq!(rfc3339(ts), "2026-11-21T21:46:05.500Z");
        assert_eq!(id_stamp(ts), "2026-11-21-214605");
    }
}
