//! The token handlers of new-api's `controller/token.go`, over the in-memory store.

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;
use serde::Serialize;

use super::auth::{Caller, ROLE_ROOT};
use super::bind::{bind_ids, bind_token, TokenInput};
use super::config::Era;
use super::encode::{fail, ok_data, ok_empty, Reply, TokenView};
use super::gostr::{atoi, atoi_ok, query_value};
use super::messages::{
    max_tokens_reached, Lang, Msg, ID_EMPTY, MAX_BATCH_KEYS, MAX_QUOTA, RECORD_NOT_FOUND,
};
use super::routes::Route;
use super::search;
use super::store::{NewToken, Store, StoredToken};

/// `token_setting.max_user_tokens` (default).
pub(crate) const MAX_USER_TOKENS: usize = 1000;
/// Limit of `len(name)` in bytes.
const MAX_NAME_BYTES: usize = 50;
/// E3 `MaxTokenAutoGroups`.
const MAX_AUTO_GROUPS: usize = 5;
/// E3: the groups an emulated user may pick for an "auto" token.
const SELECTABLE_GROUPS: &[&str] = &["default"];

/// Everything a handler needs besides the store.
pub(crate) struct Ctx<'a> {
    pub(crate) era: Era,
    /// [`EmulatorConfig::fork_billing_type`](super::EmulatorConfig::fork_billing_type).
    pub(crate) billing_type: bool,
    pub(crate) caller: Caller,
    pub(crate) lang: Lang,
    pub(crate) query: Option<&'a str>,
    pub(crate) body: &'a [u8],
    pub(crate) now: i64,
}

impl Ctx<'_> {
    fn error(&self, msg: Msg) -> Reply {
        fail(StatusCode::OK, &msg.text(self.lang))
    }

    fn is_e3_root(&self) -> bool {
        self.era == Era::E3 && self.caller.role >= ROLE_ROOT
    }

    /// Whose tokens an id-based call may touch (E3 root: anyone's).
    fn owner(&self) -> Option<i64> {
        (!self.is_e3_root()).then_some(self.caller.id)
    }

    /// Whose tokens list and search show (E3 root: everyone's, or `?user_id=`).
    pub(crate) fn list_owner(&self) -> Option<i64> {
        if self.is_e3_root() {
            atoi_ok(&query_value(self.query, "user_id"))
        } else {
            Some(self.caller.id)
        }
    }

    pub(crate) fn query(&self, name: &str) -> String {
        query_value(self.query, name)
    }

    /// How this era (and fork) shows `t`.
    pub(crate) fn view<'t>(&self, t: &'t StoredToken) -> TokenView<'t> {
        TokenView::masked(t, self.era, self.billing_type)
    }
}

/// Run the handler of `route`.
pub(crate) fn handle(store: &mut Store, route: Route, ctx: &Ctx<'_>) -> Reply {
    match route {
        Route::List => search::list(store, ctx),
        Route::Search => search::search(store, ctx),
        Route::AutoGroups => auto_groups(),
        Route::Get(id) => get(store, ctx, &id, false),
        Route::RevealKey(id) => get(store, ctx, &id, true),
        Route::Create => create(store, ctx),
        Route::Update => update(store, ctx),
        Route::Delete(id) => delete(store, ctx, &id),
        Route::BatchDelete => batch_delete(store, ctx),
        Route::BatchKeys => batch_keys(store, ctx),
    }
}

#[derive(Serialize)]
struct AutoGroups {
    groups: &'static [&'static str],
    max_count: usize,
}

fn auto_groups() -> Reply {
    ok_data(&AutoGroups {
        groups: SELECTABLE_GROUPS,
        max_count: MAX_AUTO_GROUPS,
    })
}

#[derive(Serialize)]
struct KeyData<'a> {
    key: &'a str,
}

fn get(store: &mut Store, ctx: &Ctx<'_>, raw_id: &str, reveal: bool) -> Reply {
    let id = match atoi(raw_id) {
        Ok(id) => id,
        Err(e) => return fail(StatusCode::OK, &e),
    };
    let owner = ctx.owner();
    if id == 0 || owner == Some(0) {
        return fail(StatusCode::OK, ID_EMPTY);
    }
    let reply = match store.find_mut(id, owner) {
        None => return fail(StatusCode::OK, RECORD_NOT_FOUND),
        Some(t) if reveal => return ok_data(&KeyData { key: &t.key }),
        Some(t) => ok_data(&ctx.view(t)),
    };
    // The answer is already written: usage armed for this read lands after it (a test hook).
    store.read_happened(id, ctx.now);
    reply
}

/// The checks create and update share: name length, then quota unless unlimited.
fn check_fields(t: &TokenInput, ctx: &Ctx<'_>) -> Result<(), Reply> {
    if t.name.len() > MAX_NAME_BYTES {
        return Err(ctx.error(Msg::NameTooLong));
    }
    if !t.unlimited_quota {
        if t.remain_quota < 0 {
            return Err(ctx.error(Msg::QuotaNegative));
        }
        if t.remain_quota > MAX_QUOTA {
            return Err(ctx.error(Msg::QuotaExceedMax));
        }
    }
    Ok(())
}

/// E3: "auto" tokens keep a checked `auto_groups`; others drop it and `cross_group_retry`.
fn check_auto_groups(t: &mut TokenInput, ctx: &Ctx<'_>) -> Result<(), Reply> {
    if ctx.era != Era::E3 {
        t.auto_groups = None;
        return Ok(());
    }
    if t.group != "auto" {
        t.cross_group_retry = false;
        t.auto_groups = None;
        return Ok(());
    }
    let groups = t.auto_groups.as_deref().unwrap_or_default();
    let distinct: BTreeSet<&String> = groups.iter().collect();
    let known = groups
        .iter()
        .all(|g| SELECTABLE_GROUPS.contains(&g.as_str()));
    if groups.len() > MAX_AUTO_GROUPS || distinct.len() != groups.len() || !known {
        return Err(ctx.error(Msg::InvalidParams));
    }
    Ok(())
}

fn create(store: &mut Store, ctx: &Ctx<'_>) -> Reply {
    let mut t = match bind_token(ctx.body, ctx.era, ctx.billing_type) {
        Ok(t) => t,
        Err(e) => return fail(StatusCode::OK, &e),
    };
    let mut owner = ctx.caller.id;
    if ctx.is_e3_root() && t.user_id != 0 {
        if !store.users.iter().any(|u| u.id == t.user_id) {
            return ctx.error(Msg::InvalidParams);
        }
        owner = t.user_id;
    }
    if let Err(reply) = check_fields(&t, ctx) {
        return reply;
    }
    if store.live(Some(owner)).count() >= MAX_USER_TOKENS {
        return fail(StatusCode::OK, &max_tokens_reached(MAX_USER_TOKENS));
    }
    if let Err(reply) = check_auto_groups(&mut t, ctx) {
        return reply;
    }
    let new = NewToken {
        key: None,
        status: 1,
        name: t.name,
        created_time: Some(ctx.now),
        accessed_time: Some(ctx.now),
        // gorm: a zero value falls back to the column default.
        expired_time: if t.expired_time == 0 {
            -1
        } else {
            t.expired_time
        },
        remain_quota: t.remain_quota,
        unlimited_quota: t.unlimited_quota,
        model_limits_enabled: t.model_limits_enabled,
        model_limits: t.model_limits,
        allow_ips: Some(t.allow_ips.unwrap_or_default()),
        used_quota: 0,
        group: t.group,
        cross_group_retry: t.cross_group_retry,
        billing_type: t.billing_type,
        auto_groups: t.auto_groups,
        deleted: false,
    };
    store.insert(owner, new, ctx.now);
    ok_empty()
}

fn update(store: &mut Store, ctx: &Ctx<'_>) -> Reply {
    let mut t = match bind_token(ctx.body, ctx.era, ctx.billing_type) {
        Ok(t) => t,
        Err(e) => return fail(StatusCode::OK, &e),
    };
    if let Err(reply) = check_fields(&t, ctx) {
        return reply;
    }
    let owner = ctx.owner();
    if t.id == 0 || owner == Some(0) {
        return fail(StatusCode::OK, ID_EMPTY);
    }
    let status_only = !ctx.query("status_only").is_empty();
    if !status_only {
        if let Err(reply) = check_auto_groups(&mut t, ctx) {
            return reply;
        }
    }
    let Some(stored) = store.find_mut(t.id, owner) else {
        return fail(StatusCode::OK, RECORD_NOT_FOUND);
    };
    if t.status == 1 {
        if stored.status == 3 && stored.expired_time <= ctx.now && stored.expired_time != -1 {
            return ctx.error(Msg::ExpiredCannotEnable);
        }
        if stored.status == 4 && stored.remain_quota <= 0 && !stored.unlimited_quota {
            return ctx.error(Msg::ExhaustedCannotEnable);
        }
    }
    if status_only {
        stored.status = t.status;
    } else {
        stored.name = t.name;
        stored.expired_time = t.expired_time;
        stored.remain_quota = t.remain_quota;
        stored.unlimited_quota = t.unlimited_quota;
        stored.model_limits_enabled = t.model_limits_enabled;
        stored.model_limits = t.model_limits;
        stored.allow_ips = t.allow_ips;
        stored.group = t.group;
        stored.cross_group_retry = t.cross_group_retry;
        if ctx.billing_type {
            // Unconditional like the rest: a body without it writes "".
            stored.billing_type = t.billing_type;
        }
        if ctx.era == Era::E3 && (stored.group != "auto" || t.auto_groups_present) {
            stored.auto_groups = t.auto_groups;
        }
    }
    ok_data(&ctx.view(stored))
}

fn delete(store: &mut Store, ctx: &Ctx<'_>, raw_id: &str) -> Reply {
    let id = atoi_ok(raw_id).unwrap_or(0);
    let owner = ctx.owner();
    if id == 0 || owner == Some(0) {
        return fail(StatusCode::OK, ID_EMPTY);
    }
    match store.find_mut(id, owner) {
        None => fail(StatusCode::OK, RECORD_NOT_FOUND),
        Some(t) => {
            t.deleted = true;
            ok_empty()
        }
    }
}

/// The `ids` of a batch body, or the invalid_params answer.
fn batch_ids(ctx: &Ctx<'_>) -> Result<Vec<i64>, Reply> {
    match bind_ids(ctx.body) {
        Ok(ids) if !ids.is_empty() => Ok(ids),
        _ => Err(ctx.error(Msg::InvalidParams)),
    }
}

fn batch_delete(store: &mut Store, ctx: &Ctx<'_>) -> Reply {
    let ids = match batch_ids(ctx) {
        Ok(ids) => ids,
        Err(reply) => return reply,
    };
    let owner = ctx.owner();
    let mut deleted = 0usize;
    for id in ids.into_iter().collect::<BTreeSet<_>>() {
        if let Some(t) = store.find_mut(id, owner) {
            t.deleted = true;
            deleted += 1;
        }
    }
    ok_data(&deleted)
}

#[derive(Serialize)]
struct Keys {
    keys: BTreeMap<String, String>,
}

fn batch_keys(store: &mut Store, ctx: &Ctx<'_>) -> Reply {
    let ids = match batch_ids(ctx) {
        Ok(ids) => ids,
        Err(reply) => return reply,
    };
    if ids.len() > MAX_BATCH_KEYS {
        return ctx.error(Msg::BatchTooMany);
    }
    let owner = ctx.owner();
    let keys = ids
        .into_iter()
        .filter_map(|id| {
            store
                .find_mut(id, owner)
                .map(|t| (id.to_string(), t.key.clone()))
        })
        .collect();
    ok_data(&Keys { keys })
}
