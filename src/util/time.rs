//! Wall-clock time as the journal records it, and the calendar (UTC) for dated names.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, as the journal records times.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Today's date (UTC) as YYYY-MM-DD, for the dated trash directory.
pub fn today() -> String {
    let (y, m, d) = civil_from_days((now() / 86400.0).floor() as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a (year, month, day) (H. Hinnant's days-from-civil).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A journal time (seconds since the epoch) as RFC 3339 in UTC, to the microsecond:
/// `2026-12-03T20:12:53.123456Z`.
pub fn rfc3339(t: f64) -> String {
    let us = (t * 1e6).round() as i64;
    let (secs, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let (days, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// A point in time as an operator gives it, in seconds since the epoch: RFC 3339 / ISO 8601
/// (`2026-12-03T20:12:53Z`, `2026-12-03 20:12:53.5+01:00`; without a zone, UTC), a date alone
/// (`2026-12-03`, midnight UTC), `@SECONDS` since the epoch, or a time ago: a number with `s`,
/// `m`, `h`, `d` or `w` (`90s`, `15m`, `2h`, `1.5d`), counted back from `now`.
pub fn parse_when(s: &str, now: f64) -> Result<f64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "{s:?}: not a time (RFC 3339 such as 2026-12-03T20:12:53Z, a date, @EPOCH-SECONDS, or an age such as 15m, 2h, 3d)"
        )
    };
    if let Some(e) = t.strip_prefix('@') {
        return e
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(bad);
    }
    if let Some((unit, secs)) = [
        ('s', 1.0),
        ('m', 60.0),
        ('h', 3600.0),
        ('d', 86400.0),
        ('w', 604800.0),
    ]
    .iter()
    .find(|(u, _)| t.ends_with(*u))
    {
        if let Ok(v) = t[..t.len() - unit.len_utf8()].parse::<f64>() {
            if v.is_finite() && v >= 0.0 {
                return Ok(now - v * secs);
            }
        }
    }
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let p = t.get(r)?;
        p.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| p.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (
        num(0..4).ok_or_else(bad)?,
        num(5..7).ok_or_else(bad)?,
        num(8..10).ok_or_else(bad)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, mo, d) as f64 * 86400.0;
    if b.len() == 10 {
        return Ok(secs);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (h, mi, se) = (
        num(11..13).ok_or_else(bad)?,
        num(14..16).ok_or_else(bad)?,
        num(17..19).ok_or_else(bad)?,
    );
    if h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    secs += (h * 3600 + mi * 60 + se) as f64;
    let mut rest = &t[19..];
    if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        secs += format!("0.{}", &f[..n]).parse::<f64>().map_err(|_| bad())?;
        rest = &f[n..];
    }
    match rest {
        "" | "Z" | "z" => Ok(secs),
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let (zh, zm) = (
                z[1..3].parse::<i64>().map_err(|_| bad())?,
                z[4..6].parse::<i64>().map_err(|_| bad())?,
            );
            let off = (zh * 3600 + zm * 60) as f64;
            Ok(if z.starts_with('+') {
                secs - off
            } else {
                secs + off
            })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_round_trips_and_ages_count_back() {
        use super::*;
        let t = 1_796_327_214.123_456;
        let s = rfc3339(t);
        assert_eq!(s, "2026-12-03T19:46:54.123456Z");
        assert!((parse_when(&s, 0.0).unwrap() - t).abs() < 1e-6);
        assert_eq!(parse_when("1970-01-02", 0.0), Ok(86400.0));
        assert_eq!(parse_when("1970-01-01T01:00:00+01:00", 0.0), Ok(0.0));
        assert_eq!(parse_when("1970-01-01 00:00:10", 0.0), Ok(10.0));
        assert_eq!(parse_when("2h", 10_000.0), Ok(10_000.0 - 7200.0));
        assert_eq!(parse_when("15m", 1000.0), Ok(100.0));
        assert_eq!(parse_when("@42.5", 0.0), Ok(42.5));
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-12-03T20:12",
            "2h ago",
            "-5m",
            "",
        ] {
            assert!(parse_when(bad, 0.0).is_err(), "{bad}");
        }
        for days in [-800_000, -1, 0, 59, 11_016, 20_790] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn calendar_around_epochs() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(59), (1970, 3, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(super::civil_from_days(-1), (1969, 12, 31));
    }
}
