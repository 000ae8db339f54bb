//! Duration values on the command line: `10s`, `1m30s`, `250ms`, or a bare number of seconds.

use std::time::Duration;

/// Parses `10s`, `1m30s`, `250ms` (humantime syntax) or a bare number of seconds (`10`).
///
/// # Errors
/// Returns a message naming the value when it is neither.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. 10s, 500ms, 1m)"))
}

/// Parses a positive duration (zero is refused).
///
/// # Errors
/// As [`parse`], and when the value is zero.
pub fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("10s", Some(Duration::from_secs(10))),
            ("10", Some(Duration::from_secs(10))),
            ("250ms", Some(Duration::from_millis(250))),
            ("1m30s", Some(Duration::from_secs(90))),
            (" 5s ", Some(Duration::from_secs(5))),
            ("abc", None),
            ("-1s", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).ok(), *want, "input {input:?}");
        }
    }

    #[test]
    fn positive_refuses_zero_and_names_value() {
        let err = parse_positive("0s").unwrap_err();
        assert!(err.contains("\"0s\""), "{err}");
        assert_eq!(parse_positive("1s"), Ok(Duration::from_secs(1)));
    }
}
