//! Reading the configuration text with every fault collected (SPEC §7: `check` names every
//! fault at once). serde stops at the first value it refuses, so each refused fault is recorded
//! with its key, line and column, the smallest piece of the document that holds it is blanked,
//! and the document is read again.

use std::cell::Cell;

use super::{Config, ConfigError, ConfigErrors};

/// [`Config::parse`]: a TOML syntax error alone (nothing after it can be trusted); otherwise
/// every fault serde refuses ([`read_collecting`]), then the rules of `Config::check` on what is
/// left, except their faults about a key already reported (a wrong-typed `key_sha256` is not
/// "required" as well); in the order of the file.
pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let root = toml::de::DeTable::parse(text)
        .map_err(|error| ConfigErrors(vec![syntax_error(text, &error, None)]))?;
    // Each fault with where the file has it, to list them in file order.
    let mut faults: Vec<(usize, ConfigError)> = Vec::new();
    if let Some(config) = read_collecting(text, &mut faults) {
        let refused = faults.len();
        for mut fault in config.check() {
            if faults[..refused]
                .iter()
                .any(|(_, f)| covers(&f.key, &fault.key))
            {
                continue;
            }
            let at = match position_of(root.get_ref(), &fault.key) {
                Some((at, true)) => {
                    let (line, column) = line_column(text, at);
                    fault
                        .message
                        .push_str(&format!(" (line {line}, column {column})"));
                    at
                }
                Some((at, false)) => at,
                None => usize::MAX,
            };
            faults.push((at, fault));
        }
        if faults.is_empty() {
            return Ok(config);
        }
    }
    if faults.is_empty() {
        // Not expected (reading stops only after a fault), but never an empty list of faults.
        if let Err(error) = toml::from_str::<Config>(text) {
            faults.push((0, syntax_error(text, &error, None)));
        }
    }
    faults.sort_by_key(|(at, _)| *at);
    Err(ConfigErrors(faults.into_iter().map(|(_, f)| f).collect()))
}

/// A TOML syntax or type error, named by the dotted key it stands at (`server.listen`,
/// `clients[1].allow`) when the parser points at one, with the parser's message and the line and
/// column. The source line itself is never quoted: it may hold a secret pasted into the file by
/// mistake, and this text reaches logs.
///
/// The key is that of the line of `key_offset` when given (the line of the key of a value written
/// over several lines), else of the fault's own line.
fn syntax_error(text: &str, error: &toml::de::Error, key_offset: Option<usize>) -> ConfigError {
    let Some(span) = error.span() else {
        return ConfigError {
            key: String::new(),
            message: error.message().trim_end().to_string(),
        };
    };
    let key = key_at(text, key_offset.unwrap_or(span.start));
    let (line, column) = line_column(text, span.start);
    let mut message = error.message().trim_end().to_string();
    // serde quotes the offending value (`invalid type: string "…"`): a value long enough to be a
    // credential is not repeated. Short ones (a misspelt `"lst"`) stay, since they help.
    let value = text
        .get(span.clone())
        .unwrap_or("")
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    if value.len() >= REDACT_FROM {
        message = message.replace(value, "<value hidden>");
    }
    message.push_str(&format!(" (line {line}, column {column})"));
    let leaf = key.rsplit('.').next().unwrap_or("");
    if SECRET_WORDS.iter().any(|word| leaf.contains(word))
        && !leaf.ends_with("_env")
        && !leaf.ends_with("_file")
    {
        message.push_str(
            ". Secrets are never written in the configuration: name an environment variable with \
             `*_env` or a file with `*_file` (upstream.access_token_env, upstream.access_token_file)",
        );
    }
    ConfigError { key, message }
}

/// How many faults serde refuses are collected from one file before the rest is left unread.
pub(super) const MAX_REFUSED: usize = 100;

/// Reads `text`, a TOML document, into a [`Config`], adding to `faults` every fault serde refuses,
/// with its offset in the file. Serde stops at the first one, so each is recorded, the smallest
/// piece of the document that holds it is blanked ([`piece_to_blank`], [`blank`]), and the
/// document is read again, until it reads. Blanking replaces bytes with spaces and keeps
/// newlines, so every offset, line and column stays that of the file as written, and so does
/// every key ([`key_at`] reads the file as written).
///
/// The config read from what is left is returned when the rules of [`Config::check`] can judge it:
/// not when reading stopped (a fault that comes back, a piece that cannot be blanked, more than
/// [`MAX_REFUSED`] faults), and not when a table lacking a required key was left out whole: a
/// client left out shifts the index of every client after it (the rules would name the wrong
/// ones), a `[server.tls]` left out makes every `cert_subject` look wrong.
fn read_collecting(text: &str, faults: &mut Vec<(usize, ConfigError)>) -> Option<Config> {
    let mut current = text.to_string();
    let mut whole = true;
    let mut seen: Vec<(usize, String)> = Vec::new();
    for _ in 0..MAX_REFUSED {
        let error = match toml::from_str::<Config>(&current) {
            Ok(config) => return whole.then_some(config),
            Err(error) => error,
        };
        let Some(span) = error.span() else {
            faults.push((usize::MAX, syntax_error(text, &error, None)));
            return None;
        };
        let this = (span.start, error.message().to_string());
        if seen.contains(&this) {
            return None;
        }
        seen.push(this);
        let piece = piece_to_blank(&current, &span);
        let mut fault = syntax_error(text, &error, piece.as_ref().and_then(|p| p.key));
        if let Some(field) = missing_field(error.message()) {
            // A required key is absent (serde points at its table). When that key was blanked
            // here, its fault is already reported: its absence is not another one. Either way
            // nothing can stand in for it, so its whole table is blanked and the rules are not run.
            // Its table's other keys were all read before serde noticed.
            fault.key = format!("{}.{field}", table_at(text, span.start));
            whole = false;
            if !faults.iter().any(|(_, f)| covers(&f.key, &fault.key)) {
                faults.push((span.start, fault));
            }
        } else {
            faults.push((span.start, fault));
        }
        let piece = piece?;
        let blanked = blank(&current, &piece.span);
        if blanked == current || toml::de::DeTable::parse(&blanked).is_err() {
            return None;
        }
        current = blanked;
    }
    faults.push((
        usize::MAX,
        ConfigError {
            key: String::new(),
            message: format!("reading stopped after {MAX_REFUSED} faults: more may follow"),
        },
    ));
    None
}

/// The field of serde's "missing field `allow`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// Whether a fault at `key` is about the `reported` key or lies under it (`clients[0].groups[1]`
/// under `clients[0].groups`, anything of `clients[0]` under `clients[0]`).
fn covers(reported: &str, key: &str) -> bool {
    key.strip_prefix(reported)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// A byte range of the configuration text.
type Span = std::ops::Range<usize>;

/// What [`read_collecting`] blanks to get past a fault.
struct Piece {
    span: Span,
    /// Where the key of the entry holding the fault starts, when it is not on the fault's line (an
    /// element of an array written over several lines).
    key: Option<usize>,
}

/// The smallest piece of `text` (a TOML document) whose blanking removes the fault serde reported
/// at `fault`:
/// - when the fault is an element of an array (the `"lst"` of `allow = ["list", "lst"]`), that
///   element with a comma next to it, so that the array stays valid TOML;
/// - when it is in a table header (an unknown `[audt]`, or `[[clients]]` lacking a required key),
///   that table's whole section, up to the next header, so that its keys do not fall into the
///   table before it;
/// - otherwise the `key = value` entry that holds it (a wrong type, an unknown key), dotted prefix
///   included, with a comma next to it inside an inline table.
fn piece_to_blank(text: &str, fault: &Span) -> Option<Piece> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut headers = Vec::new();
    for (_, value) in root.get_ref().iter() {
        header_starts(text, value, &mut headers);
    }
    headers.sort_unstable();
    let finder = PieceFinder {
        text,
        fault,
        headers,
        key: Cell::new(None),
    };
    let span = finder.in_table(root.get_ref())?;
    Some(Piece {
        span,
        key: finder.key.get(),
    })
}

/// A value of the parsed document, with its span in the text.
type DeSpanned<'i> = toml::Spanned<toml::de::DeValue<'i>>;

/// Whether `value` is a table opened by a header (`[server]`, each `[[clients]]`): the parser
/// gives such a table the span of its header, and its keys follow on the lines below.
fn is_header(text: &str, value: &DeSpanned<'_>) -> bool {
    value.get_ref().is_table()
        && text
            .get(value.span().start..)
            .is_some_and(|rest| rest.starts_with('['))
}

/// Adds the start of every table header in `value` to `out`.
fn header_starts(text: &str, value: &DeSpanned<'_>, out: &mut Vec<usize>) {
    match value.get_ref() {
        toml::de::DeValue::Table(table) => {
            if is_header(text, value) {
                out.push(value.span().start);
            }
            for (_, inner) in table.iter() {
                header_starts(text, inner, out);
            }
        }
        toml::de::DeValue::Array(items) => {
            for item in items.iter() {
                header_starts(text, item, out);
            }
        }
        _ => {}
    }
}

/// The search of [`piece_to_blank`].
struct PieceFinder<'a> {
    text: &'a str,
    fault: &'a Span,
    /// Where every table header starts, in order: a section ends where the next one starts.
    headers: Vec<usize>,
    /// The start of the key of the outermost `key = value` entry holding the fault.
    key: Cell<Option<usize>>,
}

impl PieceFinder<'_> {
    /// Whether `span` holds the fault.
    fn holds(&self, span: &Span) -> bool {
        span.start <= self.fault.start && self.fault.end <= span.end
    }

    fn in_table(&self, table: &toml::de::DeTable<'_>) -> Option<Span> {
        table
            .iter()
            .find_map(|(key, value)| self.in_entry(key.span(), value))
    }

    fn in_entry(&self, key: Span, value: &DeSpanned<'_>) -> Option<Span> {
        match value.get_ref() {
            toml::de::DeValue::Table(table) if is_header(self.text, value) => {
                self.in_section(value.span(), table)
            }
            // `[[clients]]`: every element is a header table.
            toml::de::DeValue::Array(items) if items.iter().any(|i| is_header(self.text, i)) => {
                items
                    .iter()
                    .find_map(|item| self.in_section(item.span(), item.get_ref().as_table()?))
            }
            // A table without header or braces: the `server` of `server.listen = …` or of
            // `[server.tls]`. Its entries carry the dotted prefix with them.
            toml::de::DeValue::Table(table)
                if !self
                    .text
                    .get(value.span().start..)
                    .is_some_and(|rest| rest.starts_with('{')) =>
            {
                self.in_table(table)
            }
            _ => {
                let entry = self.entry(key, value);
                if self.holds(&entry) {
                    if self.key.get().is_none() {
                        self.key.set(Some(entry.start));
                    }
                    Some(self.in_value(value).unwrap_or(entry))
                } else {
                    None
                }
            }
        }
    }

    /// The section of the table whose header is `header` when the fault is in that header, else
    /// the piece inside its keys.
    fn in_section(&self, header: Span, table: &toml::de::DeTable<'_>) -> Option<Span> {
        if self.holds(&header) {
            let end = self.headers.iter().find(|&&start| start > header.start);
            return Some(header.start..end.copied().unwrap_or(self.text.len()));
        }
        self.in_table(table)
    }

    /// The piece inside an inline array or table that holds the fault, if one does.
    fn in_value(&self, value: &DeSpanned<'_>) -> Option<Span> {
        match value.get_ref() {
            toml::de::DeValue::Array(items) => {
                let i = items.iter().position(|item| self.holds(&item.span()))?;
                let item = items.get(i)?;
                if let Some(piece) = self.in_value(item) {
                    return Some(piece);
                }
                let previous = i.checked_sub(1).and_then(|p| items.get(p));
                Some(self.with_comma(item.span(), previous.map(|p| p.span().end)))
            }
            toml::de::DeValue::Table(table) => {
                let piece = self.in_table(table)?;
                let mut entries: Vec<Span> =
                    table.iter().map(|(k, v)| self.entry(k.span(), v)).collect();
                entries.sort_by_key(|entry| entry.start);
                match entries.iter().position(|entry| *entry == piece) {
                    Some(i) => {
                        let previous = i.checked_sub(1).and_then(|p| entries.get(p));
                        Some(self.with_comma(piece, previous.map(|p| p.end)))
                    }
                    // A piece deeper inside one of its values.
                    None => Some(piece),
                }
            }
            _ => None,
        }
    }

    /// The `key = value` entry of `key`, from the start of its dotted prefix.
    fn entry(&self, key: Span, value: &DeSpanned<'_>) -> Span {
        dotted_start(self.text, key.start)..value.span().end
    }

    /// `piece` of an array or inline table, with the comma after it, or else the comma before it
    /// (after the previous piece, which ends at `previous_end`): the list stays valid without it.
    fn with_comma(&self, piece: Span, previous_end: Option<usize>) -> Span {
        if let Some(comma) = comma_after(self.text, piece.end) {
            return piece.start..comma + 1;
        }
        match previous_end.and_then(|end| comma_after(self.text, end)) {
            Some(comma) => comma..piece.end,
            None => piece,
        }
    }
}

/// The offset of the comma that comes next after `from`, past white space and comments, if what
/// comes next is a comma.
fn comma_after(text: &str, mut from: usize) -> Option<usize> {
    loop {
        let rest = text.get(from..)?;
        let next = rest.trim_start();
        from += rest.len() - next.len();
        if next.starts_with('#') {
            from += next.find('\n').unwrap_or(next.len());
        } else {
            return next.starts_with(',').then_some(from);
        }
    }
}

/// Where the key whose last part starts at `start` begins: before its dotted prefix (the
/// `server.` of `server.listen = …`), which a blanked entry must take with it.
fn dotted_start(text: &str, mut start: usize) -> usize {
    loop {
        let Some(before) = text.get(..start) else {
            return start;
        };
        let Some(before) = before.trim_end_matches([' ', '\t']).strip_suffix('.') else {
            return start;
        };
        let before = before.trim_end_matches([' ', '\t']);
        let rest = match before.chars().next_back() {
            Some(quote @ ('"' | '\'')) => {
                let inner = &before[..before.len() - 1];
                match inner.rfind(quote) {
                    Some(open) => &inner[..open],
                    None => return start,
                }
            }
            _ => before
                .trim_end_matches(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')),
        };
        if rest.len() == before.len() {
            return start;
        }
        start = rest.len();
    }
}

/// `text` with the bytes of `piece` replaced by spaces, newlines kept: every offset, line and
/// column stays where it was.
fn blank(text: &str, piece: &Span) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        if piece.contains(&i) && c != '\n' && c != '\r' {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    out
}

/// Where the dotted key (`clients[1].key_sha256`, `upstream.extra_fields[0]`) of a fault found by
/// [`Config::check`] is written in the file, and `true`; or where its closest table is, and
/// `false` (a required key left out); `None` when neither is in the file.
fn position_of(root: &toml::de::DeTable<'_>, dotted: &str) -> Option<(usize, bool)> {
    let mut table = Some(root);
    let mut at = None;
    for part in dotted.split('.') {
        let (name, index) = match part.strip_suffix(']').and_then(|p| p.split_once('[')) {
            Some((name, index)) => (name, index.parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((key, mut value)) =
            table.and_then(|t| t.iter().find(|(key, _)| key.get_ref() == name))
        else {
            return at.map(|at| (at, false));
        };
        at = Some(key.span().start);
        if let Some(index) = index {
            match value
                .get_ref()
                .as_array()
                .and_then(|items| items.get(index))
            {
                Some(item) => value = item,
                None => return at.map(|at| (at, false)),
            }
            at = Some(value.span().start);
        }
        table = value.get_ref().as_table();
    }
    at.map(|at| (at, true))
}

/// The line and column (from 1, column in bytes) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Values at least this long are not repeated in error messages.
const REDACT_FROM: usize = 12;

/// Key names that suggest a secret was written into the file itself.
const SECRET_WORDS: [&str; 4] = ["token", "key", "secret", "password"];

/// The dotted key of the `key = value` line holding byte `offset`, after the table header above it.
fn key_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if let Some(header) = line.strip_prefix('[') {
        // The fault is a table header itself (an unknown section such as `[audit]`).
        return header
            .trim_matches(|c| c == '[' || c == ']' || c == ' ')
            .to_string();
    }
    let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
    let table = table_of(&before[..line_start]);
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key.to_string(),
        (false, false) => format!("{table}.{key}"),
    }
}

/// The table that the value at `offset` is: the table of a header on that line, with its index in
/// an array of tables (`clients[1]`), or else the key of an inline table (`server.tls`).
fn table_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text
        .get(offset..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| offset + i);
    match text.get(line_start..line_end) {
        Some(line) if line.trim_start().starts_with('[') => table_of(&text[..line_end]),
        _ => key_at(text, offset),
    }
}

/// The table in force after the lines of `lines`, by their headers: `server.tls`, `clients[1]`.
fn table_of(lines: &str) -> String {
    let mut table = String::new();
    let mut arrays: Vec<(String, usize)> = Vec::new();
    for header in lines.lines().map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.split("]]").next()) {
            let name = name.trim().to_string();
            let index = match arrays.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    arrays.push((name.clone(), 1));
                    0
                }
            };
            table = format!("{name}[{index}]");
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where serde points for each kind of fault, as [`read_collecting`] relies on it.
    #[test]
    fn serde_points_at_the_fault() {
        let client = "[[clients]]\nname = \"a\"\n";
        for (text, pointed, start) in [
            // an unknown key: the key
            (
                "[server]\nlisen = 1\n".to_string(),
                "lisen",
                "unknown field `lisen`",
            ),
            (
                format!("{client}allow = []\nmax_quota = 1\n"),
                "max_quota",
                "unknown field",
            ),
            (
                "server.lisen = 1\n".into(),
                "lisen",
                "unknown field `lisen`",
            ),
            // an unknown table: its name in the header
            ("[audt]\nx = 1\n".into(), "audt", "unknown field `audt`"),
            (
                "[serve.tls]\nx = 1\n".into(),
                "serve",
                "unknown field `serve`",
            ),
            // a wrong type: the value
            (
                "[upstream]\ntimeout_ms = \"fast\"\n".into(),
                "\"fast\"",
                "invalid type",
            ),
            (
                format!("{client}allow = \"list\"\n"),
                "\"list\"",
                "invalid type",
            ),
            (
                "[[clients]]\nname = 5\nallow = []\n".into(),
                "5",
                "invalid type",
            ),
            // an unknown operation: the element, on one line or several
            (
                format!("{client}allow = [\"list\", \"lst\"]\n"),
                "\"lst\"",
                "unknown variant `lst`",
            ),
            (
                format!("{client}allow = [\n  \"list\",\n  \"lst\",\n]\n"),
                "\"lst\"",
                "unknown variant",
            ),
            // a value refused by a conversion (`Cidr`): the whole array, not the element
            (
                "[server]\ntrusted_proxies = [\"::1\", \"x\"]\n".into(),
                "[\"::1\", \"x\"]",
                "an entry is not an IP address",
            ),
            // a missing required key: the header of its table, or the inline table
            (
                "[[clients]]\nname = \"a\"\n".into(),
                "[[clients]]",
                "missing field `allow`",
            ),
            (
                "[server]\ntls = { cert_file = \"c\" }\n".into(),
                "{ cert_file = \"c\" }",
                "missing field `key_file`",
            ),
        ] {
            let error = toml::from_str::<Config>(&text).unwrap_err();
            let span = error.span().unwrap();
            assert_eq!(&text[span], pointed, "{text}");
            assert!(
                error.message().starts_with(start),
                "{text}: {}",
                error.message()
            );
        }
    }

    /// The text left after blanking the first fault serde finds in `text`.
    fn blank_first(text: &str) -> String {
        let span = toml::from_str::<Config>(text).unwrap_err().span().unwrap();
        let piece = piece_to_blank(text, &span).unwrap();
        let blanked = blank(text, &piece.span);
        assert_eq!(blanked.len(), text.len());
        toml::de::DeTable::parse(&blanked).unwrap();
        blanked
    }

    #[test]
    fn blanking_takes_the_smallest_piece_and_keeps_every_offset() {
        let client = "[[clients]]\nname = \"a\"\n";
        for (text, left) in [
            // an element, with the comma after it, or before it when it is the last
            (
                format!("{client}allow = [\"lst\", \"list\"]\n"),
                format!("{client}allow = [       \"list\"]\n"),
            ),
            (
                format!("{client}allow = [\"list\", \"lst\"]\n"),
                format!("{client}allow = [\"list\"       ]\n"),
            ),
            (
                format!("{client}allow = [\n  \"list\", # reads\n  \"lst\"\n]\n"),
                format!("{client}allow = [\n  \"list\"         \n       \n]\n"),
            ),
            // an entry, its dotted prefix included
            (
                "[upstream]\ntimeout_ms = \"fast\"\nuser_id = 2\n".into(),
                "[upstream]\n                   \nuser_id = 2\n".into(),
            ),
            ("server.lisen = 1\n".into(), "                \n".into()),
            // an unknown table: its whole section, up to the next header
            (
                "[audt]\npath = \"x\"\n\n[log]\nformat = \"text\"\n".into(),
                "      \n          \n\n[log]\nformat = \"text\"\n".into(),
            ),
            // an entry of an inline table, with its comma
            (
                "[server]\ntls = { cert_file = 5, key_file = \"k\" }\n".into(),
                "[server]\ntls = {                key_file = \"k\" }\n".into(),
            ),
        ] {
            assert_eq!(blank_first(&text), left, "{text}");
        }
        // Multi-byte characters blank to as many spaces as they have bytes.
        let text = "[upstream]\nuser_id = \"éé\" # é\n";
        let left = format!("[upstream]\n{} # é\n", " ".repeat(16));
        assert_eq!(blank_first(text), left);
    }
}
