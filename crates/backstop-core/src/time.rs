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

/// Parses a duration such as `90s`, `10m`, `1h 30m`, `14d` or `2w`
/// (days and weeks are 24 and 168 hours; anything jiff reads, such as
/// `PT1H`, works too).
///
/// # Errors
///
/// Returns a message for anything else, negative durations included.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("`{text}` is not a duration: write it like 30s, 10m, 1h 30m or 14d");
    if let Some(d) = parse_units(text) {
        return Ok(d);
    }
    let parsed: jiff::SignedDuration = text.parse().map_err(|_| invalid())?;
    std::time::Duration::try_from(parsed).map_err(|_| invalid())
}

/// `<number><unit>` groups (s, m, h, d, w and their long names), with
/// optional spaces.
fn parse_units(text: &str) -> Option<std::time::Duration> {
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(secs)?)?;
        rest = rest[unit_len..].trim_start_matches([' ', ',']);
    }
    Some(std::time::Duration::from_secs(total))
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

    #[test]
    fn durations_people_write() {
        use std::time::Duration;
        let d = |t| parse_duration(t).unwrap();
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("1h 30m"), Duration::from_secs(5400));
        assert_eq!(d("14d"), Duration::from_secs(14 * 86_400));
        assert_eq!(d("2w"), Duration::from_secs(14 * 86_400));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("PT2S"), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5x").is_err());
        assert_eq!(human_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(human_duration(Duration::from_secs(86_400 + 7200)), "1d 2h");
    }
}
