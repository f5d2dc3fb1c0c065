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
