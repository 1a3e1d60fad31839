//! Ironic's timestamps (`2026-11-24T20:59:36.190370+00:00`) as Unix seconds.

/// Seconds since the epoch, offset applied; `None` if it is not an ISO 8601 date-time.
pub fn seconds(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { ts.get(r)?.parse().ok() };
    if b.len() < 19 || b.get(4) != Some(&b'-') || b.get(10) != Some(&b'T') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Skip fractional seconds, then read an optional offset.
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        None | Some(b'Z') => 0,
        Some(b'+') | Some(b'-') => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ironic_timestamps() {
        assert_eq!(seconds("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(
            seconds("2026-11-24T20:59:36.190370+00:00"),
            Some(1_795_553_976)
        );
        assert_eq!(seconds("2026-11-24T21:59:36+01:00"), Some(1_795_553_976));
        assert_eq!(seconds("2026-11-24T20:59:36Z"), Some(1_795_553_976));
        assert_eq!(seconds("2000-03-01T00:00:00"), Some(951_868_800));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00",
            "2026-11-24 20:59:36",
        ] {
            assert_eq!(seconds(bad), None, "{bad}");
        }
    }
}
