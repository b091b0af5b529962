//! gin's router for the `/api/token` group: route matching, trailing-slash redirects, NoRoute.
//!
//! Static segments win over `:id` (gin backtracks, so `POST /api/token/batch/key` reaches the
//! `/:id/key` route with id `batch`). A path that misses only by a trailing slash is redirected
//! before any middleware runs. Paths outside the token routes are NoRoute (404) here, even
//! where the real new-api serves other routes or its web UI.

use http::{HeaderMap, Method};

use super::config::Era;
use super::gostr::{clean_path, escape_path};

/// A matched token route; path parameters are kept as text (handlers parse them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    List,
    Search,
    AutoGroups,
    Get(String),
    RevealKey(String),
    Create,
    Update,
    Delete(String),
    BatchDelete,
    BatchKeys,
}

/// What the router does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    Route(Route),
    /// Trailing-slash redirect to this decoded path.
    Redirect(String),
    NotFound,
}

fn is_param(seg: &str) -> bool {
    !seg.is_empty() && !seg.contains('/')
}

/// The route registered for `method` and the decoded `path`, if any.
pub(crate) fn match_route(era: Era, method: &Method, path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/api/token/")?;
    let route = match *method {
        Method::GET => match rest {
            "" => Route::List,
            "search" => Route::Search,
            "auto-groups" if era == Era::E3 => Route::AutoGroups,
            id if is_param(id) => Route::Get(id.to_owned()),
            _ => return None,
        },
        Method::POST => match rest {
            "" => Route::Create,
            "batch" => Route::BatchDelete,
            "batch/keys" => Route::BatchKeys,
            other => match other.strip_suffix("/key") {
                Some(id) if is_param(id) => Route::RevealKey(id.to_owned()),
                _ => return None,
            },
        },
        Method::PUT if rest.is_empty() => Route::Update,
        Method::DELETE if is_param(rest) => Route::Delete(rest.to_owned()),
        _ => return None,
    };
    Some(route)
}

/// Route, redirect, or NotFound for a request (gin's `handleHTTPRequest`).
pub(crate) fn resolve(era: Era, method: &Method, path: &str) -> Resolved {
    if let Some(route) = match_route(era, method, path) {
        return Resolved::Route(route);
    }
    if path != "/" && method != Method::CONNECT {
        let toggled = match path.strip_suffix('/') {
            Some(p) => p.to_owned(),
            None => format!("{path}/"),
        };
        if match_route(era, method, &toggled).is_some() {
            return Resolved::Redirect(toggled);
        }
    }
    Resolved::NotFound
}

/// The `Location` of a trailing-slash redirect: gin's `X-Forwarded-Prefix` handling, then
/// `http.Redirect`'s `path.Clean` (keeping a trailing slash) and the original query.
pub(crate) fn redirect_location(target: &str, query: Option<&str>, headers: &HeaderMap) -> String {
    let mut path = target.to_owned();
    if let Some(prefix) = headers.get("x-forwarded-prefix") {
        let prefix = clean_path(&String::from_utf8_lossy(prefix.as_bytes()));
        if prefix != "." {
            let safe: String = prefix
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '/' || *c == '-')
                .collect();
            let mut collapsed = String::with_capacity(safe.len());
            for c in safe.chars() {
                if !(c == '/' && collapsed.ends_with('/')) {
                    collapsed.push(c);
                }
            }
            path = format!("{collapsed}/{target}");
        }
    }
    let trailing = path.ends_with('/');
    let mut cleaned = clean_path(&path);
    if trailing && !cleaned.ends_with('/') {
        cleaned.push('/');
    }
    let mut location = escape_path(&cleaned);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    location
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_table() {
        let r = |m: Method, p: &str| resolve(Era::E2, &m, p);
        assert_eq!(r(Method::GET, "/api/token/"), Resolved::Route(Route::List));
        assert_eq!(
            r(Method::GET, "/api/token"),
            Resolved::Redirect("/api/token/".into())
        );
        assert_eq!(
            r(Method::DELETE, "/api/token/7/"),
            Resolved::Redirect("/api/token/7".into())
        );
        assert_eq!(r(Method::DELETE, "/api/token/"), Resolved::NotFound);
        assert_eq!(r(Method::PUT, "/api/token/batch"), Resolved::NotFound);
        assert_eq!(r(Method::POST, "/api/token/5"), Resolved::NotFound);
        assert_eq!(
            r(Method::POST, "/api/token/batch/key"),
            Resolved::Route(Route::RevealKey("batch".into()))
        );
        assert_eq!(r(Method::OPTIONS, "/api/token/"), Resolved::NotFound);
        assert_eq!(
            r(Method::GET, "/api/token/auto-groups"),
            Resolved::Route(Route::Get("auto-groups".into()))
        );
    }

    #[test]
    fn location_with_prefix() {
        let mut h = HeaderMap::new();
        assert_eq!(
            redirect_location("/api/token/", Some("p=2"), &h),
            "/api/token/?p=2"
        );
        h.insert("x-forwarded-prefix", "/gw".parse().unwrap());
        assert_eq!(redirect_location("/api/token/", None, &h), "/gw/api/token/");
    }
}
