//! The routes of SPEC §2: which inbound (method, path, query) is which operation, and the
//! canonical upstream request it becomes.
//!
//! The gateway holds a credential that opens the whole upstream account, so it must never be an
//! open proxy. Two rules make sure of it: a path is matched only after anything ambiguous (dot
//! segments, empty segments, encoded `/ \ .`, non-ASCII) is refused, and the upstream path is
//! *built* from the parsed [`Endpoint`], never copied from the caller.

use std::fmt;

use http::{Method, Uri};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// An operation as named in `allow` lists, metrics and the audit trail (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `GET /api/token/`
    List,
    /// `GET /api/token/search`
    Search,
    /// `GET /api/token/{id}`
    Get,
    /// `GET /api/token/auto-groups` (the newest new-api: the groups a token may route to)
    AutoGroups,
    /// `POST /api/token/`
    Create,
    /// `PUT /api/token/`
    Update,
    /// `PUT /api/token/batch`: fanned out per token, or forwarded to a fork that serves it.
    BatchUpdate,
    /// `DELETE /api/token/{id}`
    Delete,
    /// `POST /api/token/batch`
    BatchDelete,
    /// `POST /api/token/{id}/key` and `POST /api/token/batch/keys`
    RevealKey,
}

impl Operation {
    /// Every operation, in SPEC order.
    pub const ALL: [Operation; 10] = [
        Operation::List,
        Operation::Search,
        Operation::Get,
        Operation::AutoGroups,
        Operation::Create,
        Operation::Update,
        Operation::BatchUpdate,
        Operation::Delete,
        Operation::BatchDelete,
        Operation::RevealKey,
    ];

    /// Whether it only reads (list, search, get, auto_groups): the reads rate-limit class, and
    /// not audited unless `audit.reads`.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Operation::List | Operation::Search | Operation::Get | Operation::AutoGroups
        )
    }

    /// The policy name, as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::List => "list",
            Operation::Search => "search",
            Operation::Get => "get",
            Operation::AutoGroups => "auto_groups",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::BatchUpdate => "batch_update",
            Operation::Delete => "delete",
            Operation::BatchDelete => "batch_delete",
            Operation::RevealKey => "reveal_key",
        }
    }

    /// A bit of its own, for [`OperationSet`].
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of operations (a client's `allow` list), checked without allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationSet(u16);

impl OperationSet {
    /// Every operation (pass-through mode allows them all).
    pub fn all() -> OperationSet {
        Operation::ALL.into_iter().collect()
    }

    /// Whether `op` is in the set.
    pub fn contains(self, op: Operation) -> bool {
        self.0 & op.bit() != 0
    }

    /// The operations in the set, in SPEC order.
    pub fn iter(self) -> impl Iterator<Item = Operation> {
        Operation::ALL
            .into_iter()
            .filter(move |op| self.contains(*op))
    }
}

impl FromIterator<Operation> for OperationSet {
    fn from_iter<I: IntoIterator<Item = Operation>>(ops: I) -> Self {
        OperationSet(ops.into_iter().fold(0, |bits, op| bits | op.bit()))
    }
}

/// A token id: 1 to [`TokenId::MAX`] (2^53-1), written in plain decimal digits (no sign, no
/// leading zero).
///
/// The bound is 2^53-1 rather than what new-api's `int` holds because every id the gateway
/// accepts ends up as a number in an audit record, and a record must stay checkable by any
/// RFC 8785 tool (SPEC §2, §6): those read numbers as IEEE doubles, which are exact only up to
/// 2^53-1, so a larger id would be rewritten (…993 becomes …992) and its record's hash would not
/// verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(u64);

impl TokenId {
    /// The largest id: 2^53-1, the largest integer every JSON reader holds exactly.
    pub const MAX: u64 = (1 << 53) - 1;

    /// Parses an id as SPEC §2 writes it.
    pub fn parse(text: &str) -> Option<TokenId> {
        let bytes = text.as_bytes();
        if bytes.is_empty()
            || bytes.len() > 16
            || bytes[0] == b'0'
            || !bytes.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        let value: u64 = text.parse().ok()?;
        TokenId::new(value)
    }

    /// The id `value`, if it is within 1 to [`TokenId::MAX`].
    pub fn new(value: u64) -> Option<TokenId> {
        (1..=TokenId::MAX)
            .contains(&value)
            .then_some(TokenId(value))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One route of SPEC §2, with what it needs to build the upstream request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /api/token/`
    List,
    /// `GET /api/token/search`
    Search,
    /// `GET /api/token/{id}`
    Get(TokenId),
    /// `GET /api/token/auto-groups`
    AutoGroups,
    /// `POST /api/token/`
    Create,
    /// `PUT /api/token/`, `?status_only=true` when `status_only` is set (SPEC §4.4).
    Update {
        /// Whether only `status` changes.
        status_only: bool,
    },
    /// `PATCH /api/token/{id}`: read, merge, full `PUT` (SPEC §4.5).
    Patch(TokenId),
    /// `DELETE /api/token/{id}`
    Delete(TokenId),
    /// `PUT /api/token/batch` (SPEC §4.6).
    BatchUpdate,
    /// `POST /api/token/batch`
    BatchDelete,
    /// `POST /api/token/{id}/key`
    RevealKey(TokenId),
    /// `POST /api/token/batch/keys`
    RevealKeys,
}

impl Endpoint {
    /// The operation this route performs.
    pub fn operation(&self) -> Operation {
        match self {
            Endpoint::List => Operation::List,
            Endpoint::Search => Operation::Search,
            Endpoint::Get(_) => Operation::Get,
            Endpoint::AutoGroups => Operation::AutoGroups,
            Endpoint::Create => Operation::Create,
            Endpoint::Update { .. } | Endpoint::Patch(_) => Operation::Update,
            Endpoint::BatchUpdate => Operation::BatchUpdate,
            Endpoint::Delete(_) => Operation::Delete,
            Endpoint::BatchDelete => Operation::BatchDelete,
            Endpoint::RevealKey(_) | Endpoint::RevealKeys => Operation::RevealKey,
        }
    }

    /// The HTTP method of the upstream request.
    pub fn method(&self) -> Method {
        match self {
            Endpoint::List | Endpoint::Search | Endpoint::Get(_) | Endpoint::AutoGroups => {
                Method::GET
            }
            Endpoint::Create
            | Endpoint::BatchDelete
            | Endpoint::RevealKey(_)
            | Endpoint::RevealKeys => Method::POST,
            Endpoint::Update { .. } | Endpoint::Patch(_) | Endpoint::BatchUpdate => Method::PUT,
            Endpoint::Delete(_) => Method::DELETE,
        }
    }

    /// The token id in the path, if the route has one.
    pub fn token_id(&self) -> Option<TokenId> {
        match self {
            Endpoint::Get(id)
            | Endpoint::Patch(id)
            | Endpoint::Delete(id)
            | Endpoint::RevealKey(id) => Some(*id),
            _ => None,
        }
    }

    /// Whether the route carries a request body (the others refuse one, whatever its type: a
    /// single key reveal takes none, and a body there would be forwarded unchecked).
    pub fn takes_body(&self) -> bool {
        !matches!(
            self,
            Endpoint::List
                | Endpoint::Search
                | Endpoint::Get(_)
                | Endpoint::AutoGroups
                | Endpoint::Delete(_)
                | Endpoint::RevealKey(_)
        )
    }

    /// The canonical upstream path (new-api redirects any other spelling).
    pub fn upstream_path(&self) -> String {
        match self {
            // A PATCH is sent as the full update it becomes.
            Endpoint::List | Endpoint::Create | Endpoint::Update { .. } | Endpoint::Patch(_) => {
                "/api/token/".into()
            }
            Endpoint::Search => "/api/token/search".into(),
            Endpoint::AutoGroups => "/api/token/auto-groups".into(),
            Endpoint::Get(id) | Endpoint::Delete(id) => format!("/api/token/{id}"),
            Endpoint::BatchUpdate | Endpoint::BatchDelete => "/api/token/batch".into(),
            Endpoint::RevealKey(id) => format!("/api/token/{id}/key"),
            Endpoint::RevealKeys => "/api/token/batch/keys".into(),
        }
    }

    /// The query parameters a read passes on (SPEC §2 table); writes take none but `status_only`.
    fn accepted_query(&self) -> &'static [&'static str] {
        match self {
            Endpoint::List => &["p", "page_size", "ps", "size", "user_id"],
            Endpoint::Search => &["keyword", "token", "p", "page_size", "ps", "size"],
            Endpoint::Update { .. } => &["status_only"],
            _ => &[],
        }
    }
}

/// A routed request: the endpoint and the query to pass on, both checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Which route of SPEC §2.
    pub endpoint: Endpoint,
    /// The checked query string to send upstream, without `?`.
    pub query: Option<String>,
}

impl Route {
    /// The operation this route performs.
    pub fn operation(&self) -> Operation {
        self.endpoint.operation()
    }

    /// The value of query parameter `name` as the upstream reads it (percent-escapes decoded, `+`
    /// a space), when the query has it. The query was checked: every escape in it is valid.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| decode_query_value(value))
        })
    }

    /// The canonical upstream path and query.
    pub fn upstream_path_and_query(&self) -> String {
        let mut path = self.endpoint.upstream_path();
        if let Some(query) = &self.query {
            path.push('?');
            path.push_str(query);
        }
        path
    }
}

/// Maps an inbound request line to a [`Route`], or to the refusal SPEC §2 prescribes.
pub fn route(method: &Method, uri: &Uri) -> Result<Route, GatewayError> {
    let segments = segments(uri.path())?;
    let endpoint = endpoint(method, &segments)?;
    let query = query(&endpoint, uri.query())?;
    let endpoint = match endpoint {
        Endpoint::Update { .. } => Endpoint::Update {
            status_only: query.is_some(),
        },
        other => other,
    };
    Ok(Route { endpoint, query })
}

/// Splits a path into segments after refusing every ambiguous spelling. One trailing slash is
/// tolerated (and dropped); `/api/token` and `/api/token/` are the same route.
fn segments(path: &str) -> Result<Vec<&str>, GatewayError> {
    if !path.is_ascii() {
        return Err(bad_path("the path must be plain ASCII"));
    }
    if path.contains('\\') {
        return Err(bad_path("the path must not contain a backslash"));
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e"]
        .iter()
        .any(|encoded| lower.contains(encoded))
    {
        return Err(bad_path(
            "the path must not contain an encoded `/`, `\\` or `.`",
        ));
    }
    if path.contains("//") {
        return Err(bad_path(
            "the path must not contain an empty segment (`//`)",
        ));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(GatewayError::NotFound);
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(GatewayError::NotFound);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(bad_path(
            "the path must not contain an empty segment (`//`)",
        ));
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(bad_path("the path must not contain `.` or `..` segments"));
    }
    Ok(segments)
}

fn bad_path(why: &str) -> GatewayError {
    GatewayError::BadRequest(format!("invalid path: {why}"))
}

/// Matches the segments and method against the SPEC §2 table.
fn endpoint(method: &Method, segments: &[&str]) -> Result<Endpoint, GatewayError> {
    let ["api", "token", rest @ ..] = segments else {
        return Err(GatewayError::NotFound);
    };
    let allow = |allow: &'static str| Err(GatewayError::MethodNotAllowed { allow });
    match *rest {
        [] => match *method {
            Method::GET => Ok(Endpoint::List),
            Method::POST => Ok(Endpoint::Create),
            Method::PUT => Ok(Endpoint::Update { status_only: false }),
            _ => allow("GET, POST, PUT"),
        },
        ["search"] => match *method {
            Method::GET => Ok(Endpoint::Search),
            _ => allow("GET"),
        },
        ["auto-groups"] => match *method {
            Method::GET => Ok(Endpoint::AutoGroups),
            _ => allow("GET"),
        },
        ["batch"] => match *method {
            Method::POST => Ok(Endpoint::BatchDelete),
            Method::PUT => Ok(Endpoint::BatchUpdate),
            _ => allow("POST, PUT"),
        },
        ["batch", "keys"] => match *method {
            Method::POST => Ok(Endpoint::RevealKeys),
            _ => allow("POST"),
        },
        [id] => {
            let id = token_id(id)?;
            match *method {
                Method::GET => Ok(Endpoint::Get(id)),
                Method::PATCH => Ok(Endpoint::Patch(id)),
                Method::DELETE => Ok(Endpoint::Delete(id)),
                _ => allow("GET, PATCH, DELETE"),
            }
        }
        [id, "key"] => {
            let id = token_id(id)?;
            match *method {
                Method::POST => Ok(Endpoint::RevealKey(id)),
                _ => allow("POST"),
            }
        }
        _ => Err(GatewayError::NotFound),
    }
}

fn token_id(text: &str) -> Result<TokenId, GatewayError> {
    TokenId::parse(text).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "invalid token id `{}`: an id is a whole number from 1 to {} (2^53-1), without sign or leading zero",
            text.escape_debug(),
            TokenId::MAX
        ))
    })
}

/// Checks the query string against what the route passes on, and returns what to forward.
fn query(endpoint: &Endpoint, raw: Option<&str>) -> Result<Option<String>, GatewayError> {
    let raw = match raw {
        None | Some("") => return Ok(None),
        Some(raw) => raw,
    };
    if !raw.is_ascii() {
        return Err(GatewayError::BadRequest(
            "the query must be plain ASCII: percent-encode other characters".into(),
        ));
    }
    if raw.contains(';') {
        // Old Go versions split on `;` too, which would smuggle a parameter past this check.
        return Err(GatewayError::BadRequest(
            "the query must not contain `;`: separate parameters with `&` and percent-encode `;` in a value".into(),
        ));
    }
    let accepted = endpoint.accepted_query();
    let op = endpoint.operation();
    let mut seen: Vec<&str> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !valid_escapes(name) || !valid_escapes(value) {
            // Go's url.ParseQuery drops such a parameter: a search would become a list of every
            // token, and a script acting on the matches would act on all of them.
            return Err(GatewayError::BadRequest(format!(
                "query parameter `{}` has a `%` that is not followed by two hex digits: write a literal `%` as `%25` (the upstream would drop the parameter)",
                name.escape_debug()
            )));
        }
        if !accepted.contains(&name) {
            let message = if accepted.is_empty() {
                format!(
                    "`{op}` takes no query parameters (got `{}`)",
                    name.escape_debug()
                )
            } else {
                format!(
                    "query parameter `{}` is not accepted by `{op}`; accepted: {}",
                    name.escape_debug(),
                    accepted.join(", ")
                )
            };
            return Err(GatewayError::BadRequest(message));
        }
        if seen.contains(&name) {
            return Err(GatewayError::BadRequest(format!(
                "query parameter `{name}` is given twice"
            )));
        }
        if name == "status_only" && value != "true" && value != "1" {
            return Err(GatewayError::BadRequest(
                "`status_only` must be `true` or `1` (the upstream treats any other non-empty value as true too)".into(),
            ));
        }
        seen.push(name);
    }
    if seen.is_empty() {
        return Ok(None);
    }
    let kept: Vec<&str> = raw.split('&').filter(|p| !p.is_empty()).collect();
    Ok(Some(kept.join("&")))
}

/// Whether every `%` in `text` starts a valid escape (`%` and two hex digits).
fn valid_escapes(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|b| *b == b'%') {
        let escape = bytes.get(i + at + 1..i + at + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return false;
        }
        i += at + 3;
    }
    true
}

/// A query value as Go's `url.ParseQuery` decodes it: `+` is a space, `%XX` a byte (an invalid
/// sequence of bytes is replaced, which a checked query never holds for the values read here).
fn decode_query_value(value: &str) -> String {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail) {
            (b'+', _) => bytes.push(b' '),
            (b'%', [h, l, ..]) => match (hex_digit(*h), hex_digit(*l)) {
                (Some(h), Some(l)) => {
                    bytes.push(h << 4 | l);
                    rest = &tail[2..];
                    continue;
                }
                _ => bytes.push(b'%'),
            },
            (b, _) => bytes.push(b),
        }
        rest = tail;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: Method, uri: &str) -> Result<Route, GatewayError> {
        route(&method, &uri.parse::<Uri>().unwrap())
    }

    fn code(result: Result<Route, GatewayError>) -> &'static str {
        result.unwrap_err().code()
    }

    #[test]
    fn every_route_with_or_without_trailing_slash() {
        let cases = [
            (Method::GET, "/api/token", Endpoint::List, "/api/token/"),
            (Method::GET, "/api/token/", Endpoint::List, "/api/token/"),
            (
                Method::GET,
                "/api/token/search/",
                Endpoint::Search,
                "/api/token/search",
            ),
            (
                Method::GET,
                "/api/token/7/",
                Endpoint::Get(TokenId(7)),
                "/api/token/7",
            ),
            (
                Method::GET,
                "/api/token/auto-groups/",
                Endpoint::AutoGroups,
                "/api/token/auto-groups",
            ),
            (Method::POST, "/api/token", Endpoint::Create, "/api/token/"),
            (
                Method::PUT,
                "/api/token",
                Endpoint::Update { status_only: false },
                "/api/token/",
            ),
            (
                Method::DELETE,
                "/api/token/7/",
                Endpoint::Delete(TokenId(7)),
                "/api/token/7",
            ),
            (
                Method::POST,
                "/api/token/batch/",
                Endpoint::BatchDelete,
                "/api/token/batch",
            ),
            (
                Method::POST,
                "/api/token/7/key/",
                Endpoint::RevealKey(TokenId(7)),
                "/api/token/7/key",
            ),
            (
                Method::POST,
                "/api/token/batch/keys",
                Endpoint::RevealKeys,
                "/api/token/batch/keys",
            ),
        ];
        for (method, uri, endpoint, upstream) in cases {
            let route = r(method.clone(), uri).unwrap();
            assert_eq!(route.endpoint, endpoint, "{method} {uri}");
            assert_eq!(route.upstream_path_and_query(), upstream, "{method} {uri}");
        }
    }

    #[test]
    fn ids_are_plain_decimal_in_range() {
        assert_eq!(
            TokenId::parse("9007199254740991"),
            Some(TokenId(9_007_199_254_740_991))
        );
        assert_eq!(TokenId::MAX, 9_007_199_254_740_991);
        assert_eq!(
            TokenId::new(TokenId::MAX).map(TokenId::get),
            Some(TokenId::MAX)
        );
        assert_eq!(TokenId::new(TokenId::MAX + 1), None);
        assert_eq!(TokenId::new(0), None);
        for bad in [
            "0",
            "007",
            "-1",
            "+1",
            // 2^53 and 2^53+1 (which a double reads as 2^53): beyond what JSON keeps exact.
            "9007199254740992",
            "9007199254740993",
            "9223372036854775807",
            "9223372036854775808",
            "1e3",
            "",
            "abc",
            "99999999999999999999",
        ] {
            assert_eq!(TokenId::parse(bad), None, "{bad}");
        }
        assert_eq!(code(r(Method::GET, "/api/token/abc")), "bad_request");
        assert_eq!(code(r(Method::GET, "/api/token/0")), "bad_request");
        assert_eq!(code(r(Method::POST, "/api/token/01/key")), "bad_request");
        let Err(too_big) = r(Method::DELETE, "/api/token/9007199254740993") else {
            panic!("an id above 2^53-1 is refused");
        };
        assert_eq!(too_big.code(), "bad_request");
        assert!(
            too_big.to_string().contains("9007199254740991"),
            "the message says the bound: {too_big}"
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for uri in [
            "/api/token/../user",
            "/api/token/./1",
            "/api/token/%2e%2e/x",
            "/api/token/%2E%2E/x",
            "/api//token/",
            "/api/token//",
            "/api/token%2F1",
            "/api/token/%5c1",
            "//",
            "//api/token/",
        ] {
            assert_eq!(code(r(Method::GET, uri)), "bad_request", "{uri}");
        }
    }

    #[test]
    fn nothing_outside_the_table_is_routed() {
        for uri in [
            "/api/user/self",
            "/api/token/1/key/x",
            "/",
            "/API/token/",
            "/api/tokens",
            "/api/token/auto-groups/x",
        ] {
            assert_eq!(code(r(Method::GET, uri)), "not_found", "{uri}");
        }
    }

    #[test]
    fn wrong_methods_are_405_with_allow() {
        for (method, uri, allow) in [
            (Method::OPTIONS, "/api/token/", "GET, POST, PUT"),
            (Method::HEAD, "/api/token/", "GET, POST, PUT"),
            (Method::DELETE, "/api/token/", "GET, POST, PUT"),
            (Method::GET, "/api/token/batch", "POST, PUT"),
            (Method::DELETE, "/api/token/batch", "POST, PUT"),
            (Method::PUT, "/api/token/5", "GET, PATCH, DELETE"),
            (Method::GET, "/api/token/5/key", "POST"),
            (Method::PUT, "/api/token/auto-groups", "GET"),
            (Method::DELETE, "/api/token/auto-groups", "GET"),
        ] {
            match r(method.clone(), uri) {
                Err(GatewayError::MethodNotAllowed { allow: got }) => {
                    assert_eq!(got, allow, "{method} {uri}")
                }
                other => panic!("{method} {uri}: {other:?}"),
            }
        }
    }

    #[test]
    fn queries_are_checked_and_passed_on() {
        let route = r(Method::GET, "/api/token/?p=2&page_size=5").unwrap();
        assert_eq!(
            route.upstream_path_and_query(),
            "/api/token/?p=2&page_size=5"
        );
        let route = r(Method::GET, "/api/token/search?keyword=a%25&token=x").unwrap();
        assert_eq!(
            route.upstream_path_and_query(),
            "/api/token/search?keyword=a%25&token=x"
        );
        let route = r(Method::PUT, "/api/token/?status_only=true").unwrap();
        assert_eq!(route.endpoint, Endpoint::Update { status_only: true });
        assert_eq!(
            route.upstream_path_and_query(),
            "/api/token/?status_only=true"
        );
        assert_eq!(
            r(Method::GET, "/api/token/?")
                .unwrap()
                .upstream_path_and_query(),
            "/api/token/"
        );

        for uri in [
            "/api/token/?page_sise=5",
            "/api/token/?p=1&p=2",
            "/api/token/search?user_id=1",
            "/api/token/auto-groups?p=1",
            "/api/token/5?p=1",
            "/api/token/?p=1;user_id=3",
            "/api/token/search?keyword=a;b",
        ] {
            assert_eq!(code(r(Method::GET, uri)), "bad_request", "{uri}");
        }
        for uri in [
            "/api/token/?status_only=false",
            "/api/token/?status_only=0",
            "/api/token/?status_only=",
        ] {
            assert_eq!(code(r(Method::PUT, uri)), "bad_request", "{uri}");
        }
        assert_eq!(code(r(Method::POST, "/api/token/?x=1")), "bad_request");
        // A `%` that starts no escape: new-api (Go) would drop the whole parameter.
        for uri in [
            "/api/token/search?keyword=auto%",
            "/api/token/search?keyword=vic%zz",
            "/api/token/search?keyword=a%2",
            "/api/token/search?token=%&keyword=x",
            "/api/token/?p=1%",
        ] {
            let error = r(Method::GET, uri).unwrap_err();
            assert_eq!(error.code(), "bad_request", "{uri}");
            assert!(error.to_string().contains("%25"), "{error}");
        }
        let route = r(
            Method::GET,
            "/api/token/search?keyword=auto%25&token=ab+c%2Bd",
        )
        .unwrap();
        assert_eq!(route.query_param("keyword").as_deref(), Some("auto%"));
        assert_eq!(route.query_param("token").as_deref(), Some("ab c+d"));
        assert_eq!(route.query_param("p"), None);
        assert_eq!(
            code(r(Method::DELETE, "/api/token/5?force=1")),
            "bad_request"
        );
    }
}
