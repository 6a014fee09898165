//! Byte counts (K, M, G, T: powers of 1024) and durations (`90s`, `2m`, `1h30m`) as people
//! write and read them.

use std::time::Duration;

/// Bytes with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 500G, 10M, 4096)"))?;
    if n.is_nan() || n < 0.0 {
        return Err(format!("{s:?} is not a size"));
    }
    Ok((n * mult as f64) as u64)
}

/// A byte count with a binary unit, one decimal past bytes ("3.5 MiB").
pub fn human_bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// A duration as people write it: numbers each with a unit (`250ms`, `90s`, `2m`, `1h30m`,
/// `1.5h`, `2d`), or a bare number of seconds (`600`, `0.5`), which is what the options took
/// before units were accepted, so scripts that give seconds keep working.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // The value itself is not repeated: clap's error names it and the option.
    let bad = || {
        "expected a duration such as 90s, 2m, 1h30m or 250ms (a bare number is seconds)".to_string()
    };
    let t = s.trim();
    let secs = match t.parse::<f64>() {
        Ok(v) => v,
        Err(_) if t.is_empty() => return Err(bad()),
        Err(_) => {
            let mut total = 0.0;
            let mut rest = t;
            while !rest.is_empty() {
                let n = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(rest.len());
                let u = rest[n..]
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .map_or(rest.len(), |i| n + i);
                let num: f64 = rest[..n].parse().map_err(|_| bad())?;
                let unit = match &rest[n..u] {
                    "ms" => 0.001,
                    "s" => 1.0,
                    "m" | "min" => 60.0,
                    "h" => 3600.0,
                    "d" => 86400.0,
                    _ => return Err(bad()),
                };
                total += num * unit;
                rest = &rest[u..];
            }
            total
        }
    };
    // `inf`, `NaN` and negative numbers parse as numbers but are no duration.
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_both_ways() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("10M"), Ok(10 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("fast").is_err());
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(3.5 * 1048576.0), "3.5 MiB");
    }

    #[test]
    fn durations_with_and_without_units() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("600"), Ok(600.0));
        assert_eq!(secs("0.5"), Ok(0.5));
        assert_eq!(secs("0"), Ok(0.0));
        assert_eq!(secs("90s"), Ok(90.0));
        assert_eq!(secs("2m"), Ok(120.0));
        assert_eq!(secs("1h30m"), Ok(5400.0));
        assert_eq!(secs("1.5h"), Ok(5400.0));
        assert_eq!(secs("250ms"), Ok(0.25));
        assert_eq!(secs("2d"), Ok(172_800.0));
        for bad in [
            "", "fast", "-1", "-1s", "inf", "NaN", "10x", "s", "1h 30m", "1..5s", "m5",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
