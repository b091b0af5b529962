//! List and search with E2 pagination (`common.GetPageQuery`) and the search pattern rules.
//!
//! Patterns use SQL `LIKE ... ESCAPE '!'`: `%` is the only wildcard (`_` and `!` are escaped), so
//! a pattern without `%` is an exact match. Matching ignores ASCII case, as SQLite's and MySQL's
//! default `LIKE` do (PostgreSQL would not).

use http::StatusCode;

use super::encode::{fail, ok_data, Page, Reply};
use super::gostr::atoi_ok;
use super::handlers::{Ctx, MAX_USER_TOKENS};
use super::messages::{
    SEARCH_DOUBLE_PERCENT, SEARCH_TOO_MANY_PERCENT, SEARCH_TOO_MANY_TOKENS, SEARCH_TOO_SHORT,
};
use super::store::{Store, StoredToken};

const ITEMS_PER_PAGE: i64 = 10;
const MAX_PAGE_SIZE: i64 = 100;

/// The effective page and page size (`p`; `page_size`, else `ps`, else `size`).
fn page_query(ctx: &Ctx<'_>) -> (i64, i64) {
    let num = |name: &str| atoi_ok(&ctx.query(name)).unwrap_or(0);
    let page = num("p").max(1);
    let mut size = num("page_size");
    if size == 0 {
        size = num("ps");
    }
    if size == 0 {
        size = num("size");
    }
    if size <= 0 {
        size = ITEMS_PER_PAGE;
    }
    (page, size.min(MAX_PAGE_SIZE))
}

/// One page of `matches` (already filtered), newest id first.
fn paginate(ctx: &Ctx<'_>, mut matches: Vec<&StoredToken>) -> Reply {
    let (page, page_size) = page_query(ctx);
    matches.sort_by_key(|t| std::cmp::Reverse(t.id));
    let total = matches.len();
    let start = usize::try_from((page - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let items = matches
        .into_iter()
        .skip(start)
        .take(usize::try_from(page_size).unwrap_or(0))
        .map(|t| ctx.view(t))
        .collect();
    ok_data(&Page {
        page,
        page_size,
        total,
        items,
    })
}

/// `GET /api/token/`.
pub(crate) fn list(store: &Store, ctx: &Ctx<'_>) -> Reply {
    paginate(ctx, store.live(ctx.list_owner()).collect())
}

/// Check one pattern; `Ok(true)` when it is fuzzy (contains `%`).
fn check_pattern(pattern: &str) -> Result<bool, &'static str> {
    if pattern.contains("%%") {
        return Err(SEARCH_DOUBLE_PERCENT);
    }
    let wildcards = pattern.matches('%').count();
    if wildcards > 2 {
        return Err(SEARCH_TOO_MANY_PERCENT);
    }
    if wildcards > 0 && pattern.len() - wildcards < 2 {
        return Err(SEARCH_TOO_SHORT);
    }
    Ok(wildcards > 0)
}

/// SQL `LIKE` where only `%` is special, ignoring ASCII case.
fn like(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'%', rest)) => (0..=text.len()).any(|i| like(rest, &text[i..])),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, tail)| t.eq_ignore_ascii_case(c) && like(rest, tail)),
    }
}

/// `GET /api/token/search?keyword=&token=`.
pub(crate) fn search(store: &Store, ctx: &Ctx<'_>) -> Reply {
    let keyword = ctx.query("keyword");
    let token = ctx.query("token");
    let token = token.strip_prefix("sk-").unwrap_or(&token).to_owned();
    let mut fuzzy = false;
    for pattern in [&keyword, &token].into_iter().filter(|p| !p.is_empty()) {
        match check_pattern(pattern) {
            Ok(f) => fuzzy |= f,
            Err(msg) => return fail(StatusCode::OK, msg),
        }
    }
    let owner = ctx.list_owner();
    if fuzzy && store.live(owner).count() > MAX_USER_TOKENS {
        return fail(StatusCode::OK, SEARCH_TOO_MANY_TOKENS);
    }
    let matches = store
        .live(owner)
        .filter(|t| keyword.is_empty() || like(keyword.as_bytes(), t.name.as_bytes()))
        .filter(|t| token.is_empty() || like(token.as_bytes(), t.key.as_bytes()))
        .collect();
    paginate(ctx, matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_rules() {
        assert!(like(b"ab_c", b"AB_C"));
        assert!(!like(b"ab_c", b"abxc"));
        assert!(like(b"%bc%", b"abcd"));
        assert!(!like(b"bc", b"abcd"));
        assert_eq!(check_pattern("a%%b"), Err(SEARCH_DOUBLE_PERCENT));
        assert_eq!(check_pattern("%a%b%"), Err(SEARCH_TOO_MANY_PERCENT));
        assert_eq!(check_pattern("%a"), Err(SEARCH_TOO_SHORT));
        assert_eq!(check_pattern("%ab"), Ok(true));
        assert_eq!(check_pattern("ab"), Ok(false));
    }
}
