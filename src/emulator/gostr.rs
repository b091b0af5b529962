//! Go standard-library string helpers whose exact output appears in new-api answers:
//! `strconv.Atoi` (and its error text), `strconv.Quote`, and `path.Clean`.

/// `strconv.Atoi`: optional sign, decimal digits, within `i64`; the error is Go's text.
pub(crate) fn atoi(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "strconv.Atoi: parsing {}: invalid syntax",
            quote(s)
        ));
    }
    let negative = s.starts_with('-');
    let mut value: i64 = 0;
    for b in digits.bytes() {
        let d = i64::from(b - b'0');
        let next = value.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(d)
            } else {
                v.checked_add(d)
            }
        });
        match next {
            Some(v) => value = v,
            None => {
                return Err(format!(
                    "strconv.Atoi: parsing {}: value out of range",
                    quote(s)
                ))
            }
        }
    }
    Ok(value)
}

/// `strconv.Atoi` without the error, as `c.Query` callers use it (`if v, err := ...; err == nil`).
pub(crate) fn atoi_ok(s: &str) -> Option<i64> {
    atoi(s).ok()
}

/// The body of `strconv.Quote` for one character (no surrounding quotes).
pub(crate) fn quote_char_body(c: char, quote: char) -> String {
    match c {
        '\x07' => "\\a".into(),
        '\x08' => "\\b".into(),
        '\x0c' => "\\f".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        '\x0b' => "\\v".into(),
        '\\' => "\\\\".into(),
        c if c == quote => format!("\\{c}"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("\\x{:02x}", c as u32),
        c if (0x80..0xa0).contains(&(c as u32)) || c as u32 == 0xad => {
            format!("\\u{:04x}", c as u32)
        }
        c => c.to_string(),
    }
}

/// `strconv.Quote`: a double-quoted Go string literal.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        out.push_str(&quote_char_body(c, '"'));
    }
    out.push('"');
    out
}

/// `path.Clean`: the shortest equivalent slash path (`"."` for an empty one).
pub(crate) fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Percent-decode a URL path the way Go fills `URL.Path`; `None` for a malformed escape.
pub(crate) fn unescape_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Percent-decode a query component (`+` is a space), as `url.QueryUnescape`.
pub(crate) fn unescape_query(raw: &str) -> Option<String> {
    unescape_path(&raw.replace('+', " "))
}

/// Re-escape a decoded path for a `Location` header (Go's `URL.EscapedPath` for plain paths).
pub(crate) fn escape_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The first value of each query parameter, decoded (`c.Query`).
pub(crate) fn query_value(query: Option<&str>, name: &str) -> String {
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (unescape_query(k), unescape_query(v)) else {
            continue;
        };
        if k == name {
            return v;
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_matches_go() {
        assert_eq!(atoi("+42"), Ok(42));
        assert_eq!(atoi("042"), Ok(42));
        assert_eq!(atoi("-7"), Ok(-7));
        assert_eq!(
            atoi("batch").unwrap_err(),
            "strconv.Atoi: parsing \"batch\": invalid syntax"
        );
        assert_eq!(
            atoi("99999999999999999999").unwrap_err(),
            "strconv.Atoi: parsing \"99999999999999999999\": value out of range"
        );
        assert_eq!(
            atoi("").unwrap_err(),
            "strconv.Atoi: parsing \"\": invalid syntax"
        );
        assert_eq!(atoi("-9223372036854775808"), Ok(i64::MIN));
    }

    #[test]
    fn clean_path_matches_go() {
        assert_eq!(clean_path("/a//b/../c/"), "/a/c");
        assert_eq!(clean_path(""), ".");
        assert_eq!(clean_path("/"), "/");
    }
}
