//! What the emulator is started with: the era it imitates, the account, and its users.

use std::fmt;
use std::str::FromStr;

/// Which generation of new-api to imitate (see `upstream-new-api.md`, "eras").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Era {
    /// new-api v0.10 to v1.0.0-rc.x: access token plus a mandatory `New-Api-User`; auth failures
    /// mostly answer HTTP 200 with `success:false`.
    #[default]
    E2,
    /// The newest variant: `Authorization` only (any-case `Bearer`), no `New-Api-User` check,
    /// 401/403 with a `code` field, root manages every user's tokens, `auto_groups`.
    E3,
}

impl FromStr for Era {
    type Err = UnknownEra;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("e2") {
            Ok(Era::E2)
        } else if s.eq_ignore_ascii_case("e3") {
            Ok(Era::E3)
        } else {
            Err(UnknownEra(s.to_owned()))
        }
    }
}

impl fmt::Display for Era {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Era::E2 => "e2",
            Era::E3 => "e3",
        })
    }
}

/// An era name other than `e2` or `e3`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown new-api era {0:?} (expected \"e2\" or \"e3\")")]
pub struct UnknownEra(pub String);

/// How to start an [`Emulator`](super::Emulator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatorConfig {
    /// The account's system access token (what goes in `Authorization`).
    pub access_token: String,
    /// The account's user id (role 1, a common user; username `emulator`).
    pub user_id: i64,
    /// The era to imitate.
    pub era: Era,
    /// Emulate new-api's rate limits: GlobalAPIRateLimit (180 per 180 s per client IP on `/api`),
    /// GlobalWebRateLimit (60 per 180 s per IP on unknown routes), SearchRateLimit (10 per 60 s
    /// per user), CriticalRateLimit (20 per 1200 s per IP on key reveals). Blocked → bare 429.
    pub rate_limits: bool,
    /// Imitate a version or fork whose token model has a `billing_type` string (default `""`;
    /// `upstream-new-api.md` §3, "others"). On: every token view shows it after
    /// `cross_group_retry` (before E3's `auto_groups` and `DeletedAt`), create and update bind it
    /// like the other string fields, and a full update writes it unconditionally, `""` when the
    /// body lacks it, like every other editable field (§4.2 step 7). That is why the switch
    /// exists: a client that rebuilds the full PUT from a field list without `billing_type`
    /// resets it, and a test can see that. Off (the default): the field exists nowhere in the API.
    pub fork_billing_type: bool,
}

impl EmulatorConfig {
    /// A common-user account in era E2, rate limits off, no fork fields.
    pub fn new(access_token: impl Into<String>, user_id: i64) -> Self {
        EmulatorConfig {
            access_token: access_token.into(),
            user_id,
            era: Era::E2,
            rate_limits: false,
            fork_billing_type: false,
        }
    }
}

/// A row of new-api's `users` table, as far as authentication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id (what `New-Api-User` must carry).
    pub id: i64,
    /// The user's system access token; empty means none (never matches).
    pub access_token: String,
    /// 0 guest, 1 common user, 10 admin, 100 root; anything else is "invalid user info".
    pub role: i64,
    /// 1 enabled, 2 banned.
    pub status: i64,
    /// Login name; an empty one makes the access token invalid.
    pub username: String,
}

impl User {
    /// A common, enabled user.
    pub fn new(id: i64, access_token: impl Into<String>) -> Self {
        User {
            id,
            access_token: access_token.into(),
            role: 1,
            status: 1,
            username: format!("user{id}"),
        }
    }

    /// new-api's `validUserInfo`: a username and a known role.
    pub(crate) fn is_valid(&self) -> bool {
        !self.username.trim().is_empty() && matches!(self.role, 0 | 1 | 10 | 100)
    }
}
