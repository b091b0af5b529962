//! The times `--since` and `--until` take, and the records' `ts`: RFC 3339 or a span before now.

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-22T15:20:01Z`, fractions and offsets allowed,
/// or a date alone for its midnight UTC) or a span before `now_ms`: digits then `s`, `m`, `h` or
/// `d` (`45s`, `30m`, `12h`, `7d`). Milliseconds since the Unix epoch.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(unit) = text.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let digits = &text[..text.len() - 1];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let unit_ms: i64 = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                _ => {
                    return Err(format!(
                        "{text:?}: a span ends in s, m, h or d (45s, 30m, 12h, 7d)"
                    ))
                }
            };
            return digits
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
                .and_then(|span| now_ms.checked_sub(span))
                .ok_or_else(|| format!("{text:?}: the span is too long"));
        }
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!("{text:?} is neither a time in RFC 3339 (2026-11-22T15:20:01Z) nor a span before now (45s, 30m, 12h, 7d)")
    })
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`2026-11-22T15:20:01.123Z`, `t` or a
/// space for `T`, `z` for `Z`, any fraction (to the millisecond), `+hh:mm`/`-hh:mm` offsets, a
/// leap second's `:60`), or of a date alone (`2026-11-22`, its midnight UTC); `None` if `text`
/// is neither. Record times (`ts`) are read with it too.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let number = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let byte = |at: usize| b.get(at).copied();
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    if byte(4) != Some(b'-') || byte(7) != Some(b'-') {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(byte(10), Some(b'T' | b't' | b' '))
        || byte(13) != Some(b':')
        || byte(16) != Some(b':')
    {
        return None;
    }
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if byte(at) == Some(b'.') {
        at += 1;
        let start = at;
        while byte(at).is_some_and(|d| d.is_ascii_digit()) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(byte(at)? - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start).min(3)..3 {
            millis *= 10;
        }
    }
    let offset = match byte(at)? {
        b'Z' | b'z' if b.len() == at + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == at + 6 && byte(at + 3) == Some(b':') => {
            let (hours, minutes) = (number(at + 1, 2)?, number(at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm, the inverse of the one in
/// [`super::writer::timestamp`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
