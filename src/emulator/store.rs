//! The in-memory `tokens` and `users` tables, with gorm's soft delete and new-api's key rules.

use ring::rand::{SecureRandom, SystemRandom};

use super::config::User;

/// One row of new-api's `tokens` table (every column, key unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Primary key, assigned from 1 upwards.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// 48 characters of `[0-9a-zA-Z]`, without `sk-`.
    pub key: String,
    /// 1 enabled, 2 disabled, 3 expired, 4 exhausted; any integer can be stored.
    pub status: i64,
    /// Display name (at most 50 bytes through the API).
    pub name: String,
    /// Unix seconds.
    pub created_time: i64,
    /// Unix seconds.
    pub accessed_time: i64,
    /// Unix seconds, or -1 for never.
    pub expired_time: i64,
    /// Quota left.
    pub remain_quota: i64,
    /// Whether quota checks are skipped.
    pub unlimited_quota: bool,
    /// Whether `model_limits` applies.
    pub model_limits_enabled: bool,
    /// Comma-separated model names.
    pub model_limits: String,
    /// Newline-separated IPs/CIDRs; `None` is SQL NULL (JSON `null`).
    pub allow_ips: Option<String>,
    /// Quota used so far.
    pub used_quota: i64,
    /// Group name; "" is the user's own group.
    pub group: String,
    /// Only meaningful with group "auto".
    pub cross_group_retry: bool,
    /// The fork column of
    /// [`EmulatorConfig::fork_billing_type`](super::EmulatorConfig::fork_billing_type). With that
    /// switch off the API neither shows nor writes it, so it keeps what was seeded
    /// (`""` for tokens created through the API).
    pub billing_type: String,
    /// E3: the groups of an "auto" token (`None` is JSON `null`).
    pub auto_groups: Option<Vec<String>>,
    /// gorm soft delete: the row stays, every query skips it.
    pub deleted: bool,
}

/// A token to seed with [`Emulator::insert_token`](super::Emulator::insert_token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// `None` generates a key as new-api does.
    pub key: Option<String>,
    /// Default 1 (enabled).
    pub status: i64,
    /// Default "".
    pub name: String,
    /// `None` means now.
    pub created_time: Option<i64>,
    /// `None` means now.
    pub accessed_time: Option<i64>,
    /// Default -1 (never).
    pub expired_time: i64,
    /// Default 0.
    pub remain_quota: i64,
    /// Default false.
    pub unlimited_quota: bool,
    /// Default false.
    pub model_limits_enabled: bool,
    /// Default "".
    pub model_limits: String,
    /// Default `Some("")`, as gorm's column default.
    pub allow_ips: Option<String>,
    /// Default 0.
    pub used_quota: i64,
    /// Default "".
    pub group: String,
    /// Default false.
    pub cross_group_retry: bool,
    /// Default "". Only visible through the API with
    /// [`EmulatorConfig::fork_billing_type`](super::EmulatorConfig::fork_billing_type) on.
    pub billing_type: String,
    /// Default `None`.
    pub auto_groups: Option<Vec<String>>,
    /// Seed an already soft-deleted row.
    pub deleted: bool,
}

impl Default for NewToken {
    fn default() -> Self {
        NewToken {
            key: None,
            status: 1,
            name: String::new(),
            created_time: None,
            accessed_time: None,
            expired_time: -1,
            remain_quota: 0,
            unlimited_quota: false,
            model_limits_enabled: false,
            model_limits: String::new(),
            allow_ips: Some(String::new()),
            used_quota: 0,
            group: String::new(),
            cross_group_retry: false,
            billing_type: String::new(),
            auto_groups: None,
            deleted: false,
        }
    }
}

/// `common.TokenStatusEnabled`.
const STATUS_ENABLED: i64 = 1;
/// `common.TokenStatusExhausted`.
const STATUS_EXHAUSTED: i64 = 4;

/// The database: users and tokens, plus usage waiting for a read (a test hook).
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) users: Vec<User>,
    pub(crate) tokens: Vec<StoredToken>,
    /// `(token id, amount)` to apply with [`use_quota`](Self::use_quota) right after a
    /// successful single-token read of that id, one per read, oldest first.
    pub(crate) usage_after_read: Vec<(i64, i64)>,
}

impl Store {
    /// The user whose access token is exactly `token`.
    pub(crate) fn user_by_access_token(&self, token: &str) -> Option<&User> {
        if token.is_empty() {
            return None;
        }
        self.users.iter().find(|u| u.access_token == token)
    }

    /// Add or replace a user (by id).
    pub(crate) fn put_user(&mut self, user: User) {
        self.users.retain(|u| u.id != user.id);
        self.users.push(user);
    }

    /// Live tokens of `owner` (every user's when `None`), in id order.
    pub(crate) fn live(&self, owner: Option<i64>) -> impl Iterator<Item = &StoredToken> {
        self.tokens
            .iter()
            .filter(move |t| !t.deleted && owner.is_none_or(|o| t.user_id == o))
    }

    /// A live token by id, restricted to `owner` unless `None`.
    pub(crate) fn find_mut(&mut self, id: i64, owner: Option<i64>) -> Option<&mut StoredToken> {
        self.tokens
            .iter_mut()
            .find(|t| !t.deleted && t.id == id && owner.is_none_or(|o| t.user_id == o))
    }

    /// Insert a row built from `new`, returning its id.
    pub(crate) fn insert(&mut self, user_id: i64, new: NewToken, now: i64) -> i64 {
        let id = self.tokens.last().map_or(1, |t| t.id + 1);
        let key = match new.key {
            Some(k) => k,
            None => self.fresh_key(),
        };
        self.tokens.push(StoredToken {
            id,
            user_id,
            key,
            status: new.status,
            name: new.name,
            created_time: new.created_time.unwrap_or(now),
            accessed_time: new.accessed_time.unwrap_or(now),
            expired_time: new.expired_time,
            remain_quota: new.remain_quota,
            unlimited_quota: new.unlimited_quota,
            model_limits_enabled: new.model_limits_enabled,
            model_limits: new.model_limits,
            allow_ips: new.allow_ips,
            used_quota: new.used_quota,
            group: new.group,
            cross_group_retry: new.cross_group_retry,
            billing_type: new.billing_type,
            auto_groups: new.auto_groups,
            deleted: new.deleted,
        });
        id
    }

    /// Relay usage of a live token, as new-api records it; `false` when there is no such token.
    ///
    /// Billing (`decreaseTokenQuota`) subtracts from `remain_quota`, adds to `used_quota` and
    /// sets `accessed_time`, for unlimited tokens too (so theirs goes negative,
    /// `upstream-new-api.md` §3); a negative `amount` is a refund (`increaseTokenQuota`, the same
    /// columns the other way). new-api marks a limited token exhausted (status 4) when relay auth
    /// (`ValidateUserToken`, Redis off) next finds `remain_quota <= 0` on it; the emulator has no
    /// relay, so it does that here at once, as if the next relay request had already come. Relay
    /// auth only gets that far for an enabled, unexpired token (a disabled one is refused
    /// earlier, an expired one gets status 3, which this does not model), so other tokens keep
    /// their status. Arithmetic saturates rather than overflowing.
    pub(crate) fn use_quota(&mut self, id: i64, amount: i64, now: i64) -> bool {
        let Some(t) = self.find_mut(id, None) else {
            return false;
        };
        t.remain_quota = t.remain_quota.saturating_sub(amount);
        t.used_quota = t.used_quota.saturating_add(amount);
        t.accessed_time = now;
        let unexpired = t.expired_time == -1 || t.expired_time >= now;
        if t.status == STATUS_ENABLED && unexpired && !t.unlimited_quota && t.remain_quota <= 0 {
            t.status = STATUS_EXHAUSTED;
        }
        true
    }

    /// Apply (and disarm) the oldest usage waiting for a read of token `id`, if any.
    pub(crate) fn read_happened(&mut self, id: i64, now: i64) {
        let due = self
            .usage_after_read
            .iter()
            .position(|(armed, _)| *armed == id);
        if let Some(index) = due {
            let (_, amount) = self.usage_after_read.remove(index);
            self.use_quota(id, amount, now);
        }
    }

    /// A key not used by any row (the column has a unique index).
    fn fresh_key(&self) -> String {
        loop {
            let key = generate_key();
            if !self.tokens.iter().any(|t| t.key == key) {
                return key;
            }
        }
    }
}

/// `common.GenerateKey`: 48 characters of `[0-9a-zA-Z]`.
pub(crate) fn generate_key() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let rng = SystemRandom::new();
    let mut key = String::with_capacity(48);
    let mut buf = [0u8; 64];
    while key.len() < 48 {
        if rng.fill(&mut buf).is_err() {
            continue;
        }
        // 248 = 4 × 62: reject the tail so every character is equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if key.len() < 48 {
                key.push(char::from(ALPHABET[usize::from(*b) % 62]));
            }
        }
    }
    key
}

/// `MaskTokenKey`: how list, get, search and update show a key.
pub(crate) fn mask_key(key: &str) -> String {
    let b = key.as_bytes();
    let n = b.len();
    let s = |r: std::ops::Range<usize>| String::from_utf8_lossy(&b[r]).into_owned();
    match n {
        0 => String::new(),
        1..=4 => "*".repeat(n),
        5..=8 => format!("{}****{}", s(0..2), s(n - 2..n)),
        _ => format!("{}**********{}", s(0..4), s(n - 4..n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_new_api() {
        assert_eq!(mask_key(""), "");
        assert_eq!(mask_key("abcd"), "****");
        assert_eq!(mask_key("abcdefgh"), "ab****gh");
        assert_eq!(mask_key("abcdefghij"), "abcd**********ghij");
        let k = generate_key();
        assert_eq!(k.len(), 48);
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
