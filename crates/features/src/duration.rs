//! Durations as users write them in TOML and on the command line: `90s`, `15m`, `2h`, `30d`,
//! `1h30m`, `500ms`; `0` means none.

/// Parses a duration into microseconds.
pub fn parse_micros(s: &str) -> Result<i64, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(0);
    }
    let bad = || format!("'{s}' is not a duration (use e.g. 90s, 15m, 2h, 30d, 1h30m; 0 for none)");
    let mut total: i64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let per: i64 = match &rest[..unit_len] {
            "us" => 1,
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            "w" => 7 * 86_400_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n.checked_mul(per).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_micros;

    #[test]
    fn durations() {
        assert_eq!(parse_micros("0"), Ok(0));
        assert_eq!(parse_micros("90s"), Ok(90_000_000));
        assert_eq!(parse_micros("1h30m"), Ok(5_400_000_000));
        assert_eq!(parse_micros("30d"), Ok(30 * 86_400_000_000));
        assert_eq!(parse_micros("250ms"), Ok(250_000));
        for bad in ["", "h", "10", "5x", "1.5h", "99999999999999999999d", "-1h"] {
            assert!(parse_micros(bad).is_err(), "{bad}");
        }
    }
}
