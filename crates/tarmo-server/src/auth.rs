//! Who may call what: one table of every route's requirement, one
//! middleware that enforces it before any handler runs, and rate limits.
//!
//! A route missing from the table is refused (fail closed), so a new route
//! cannot be reachable by accident. Handlers get the caller as a
//! [`Principal`]; the store's views of a person take its [`Grant`], which is
//! where purpose binding and data kinds are applied.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarmo_core::codes::Code;
use tarmo_core::ids::{KeyId, ProfileId};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use lru::LruCache;
use tarmo_core::access::{Grant, Permission, Role};
use tarmo_store::keys::ApiKey;

use crate::{ApiError, AppState};

/// What a route needs. Each route's is in `routes::ROUTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone (health, docs, the console's pages, which check their
    /// session themselves).
    Public,
    /// Anyone, limited per client address: the pages people open from
    /// messages.
    Page,
    /// Anyone, under the sign-in limits (per address and per account).
    SignIn,
    /// A write key; checked by the ingestion handler, which also reads it
    /// from the body (Segment's Python SDK sends it there).
    Ingest,
    /// A staff key holding this permission.
    Staff(Permission),
    /// Any valid staff key, whatever it may do (signing itself out).
    AnyStaffKey,
}

impl Need {
    /// Whether anyone may call the route, without a key.
    pub fn is_public(self) -> bool {
        matches!(self, Need::Public | Need::Page | Need::SignIn)
    }
}

/// The requirement of `method route` (a matched route template), from the
/// one route table; `None` for a path that is not a route.
pub fn need(method: &Method, route: &str) -> Option<Need> {
    crate::routes::need(method, route)
}

/// The authenticated caller of a staff route.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: Arc<ApiKey>,
    pub grant: Arc<Grant>,
    /// The route template, for the access log (shared, not copied).
    pub route: MatchedPath,
}

impl Principal {
    /// Refuse a purpose the key is not bound to (a bound key acts only for
    /// its purposes).
    pub fn may_act_for(&self, purpose: impl AsRef<str>) -> Result<(), ApiError> {
        if !self.grant.serves(purpose.as_ref()) {
            return Err(ApiError::new(
                Code::PurposeNotPermitted,
                format!("this key acts for {} only", self.grant.purposes.join(", ")),
            ));
        }
        Ok(())
    }

    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.grant.may(p) {
            Ok(())
        } else {
            Err(forbidden(p))
        }
    }

    /// An access log record for people read through this route.
    pub fn access(
        &self,
        action: &'static str,
        profiles: Vec<ProfileId>,
    ) -> tarmo_store::access_log::AccessRecord {
        tarmo_store::access_log::AccessRecord {
            at_ms: tarmo_store::now_ms(),
            key_id: self.key.id,
            user_id: self.key.user_id,
            roles: self.key.roles.clone(),
            purposes: self.key.purposes.clone(),
            route: self.route.as_str().to_owned(),
            action,
            count: profiles.len() as i64,
            profiles,
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // Only the guard puts it there: a handler asking for it on a route
        // the guard let through without a key is refused, not opened.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("a key is required: Authorization: Bearer <key>"))
    }
}

fn forbidden(p: Permission) -> ApiError {
    ApiError::new(
        Code::Forbidden,
        format!("this key's roles do not include the permission `{p}`"),
    )
}

/// The roles a key may hold: the built-in ones and those configured.
#[derive(Debug, Clone)]
pub struct Roles(pub HashMap<String, Role>);

impl Default for Roles {
    fn default() -> Self {
        Self(
            tarmo_core::access::BUILTIN_ROLES
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        tarmo_core::access::builtin_role(n).expect("built in"),
                    )
                })
                .collect(),
        )
    }
}

impl Roles {
    /// The grant of a key; an unknown role (removed from the configuration)
    /// grants nothing.
    pub fn grant(&self, key: &ApiKey) -> Grant {
        let roles: Vec<Role> = key
            .roles
            .iter()
            .filter_map(|r| self.0.get(r).cloned())
            .collect();
        Grant::new(&roles, key.purposes.clone())
    }
}

// ------------------------------------------------------------- rate limits

/// A token bucket: `rate` a second, bursts of `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Per staff or write key.
    pub per_key: Limit,
    /// Per client IP address, on routes without a key (the pages).
    pub per_ip: Limit,
    /// Per client address (IPv4) or /64 (IPv6), on the login route.
    pub login: Limit,
    /// Per key, on `/metrics` (each scrape counts the outbox and requests).
    pub metrics: Limit,
    /// Per account name, on the login route, from whatever address: what
    /// stops guessing from many addresses (IPv6 gives each client plenty)
    /// and does not punish everyone behind one proxy for one account.
    pub login_account: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            // A safety valve, not a quota: well above what one service
            // asking for decisions needs (the decision benchmark runs at
            // 30,000-40,000 a second with one key).
            per_key: Limit {
                rate: 100_000.0,
                burst: 200_000.0,
            },
            per_ip: Limit {
                rate: 20.0,
                burst: 60.0,
            },
            login: Limit {
                rate: 0.2,
                burst: 5.0,
            },
            // Prometheus scrapes every 15 s or so.
            metrics: Limit {
                rate: 2.0,
                burst: 10.0,
            },
            login_account: Limit {
                rate: 0.1,
                burst: 10.0,
            },
        }
    }
}

/// Token buckets, each map bounded: when full, the bucket used least
/// recently is forgotten (a bucket refills in seconds, so forgetting an idle
/// one changes nothing), never all at once, which anyone could trigger by
/// sending from many addresses.
pub struct Buckets {
    keys: Mutex<LruCache<KeyId, (f64, Instant)>>,
    ips: Mutex<LruCache<(IpAddr, bool), (f64, Instant)>>,
    accounts: Mutex<LruCache<String, (f64, Instant)>>,
    metrics: Mutex<LruCache<KeyId, (f64, Instant)>>,
}

impl Default for Buckets {
    fn default() -> Self {
        Self::with_capacity(100_000)
    }
}

impl Buckets {
    pub fn with_capacity(n: usize) -> Self {
        let n = NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            keys: Mutex::new(LruCache::new(n)),
            ips: Mutex::new(LruCache::new(n)),
            accounts: Mutex::new(LruCache::new(n)),
            metrics: Mutex::new(LruCache::new(n)),
        }
    }
}

/// Where a client is, for rate limits: its IPv4 address, or the /64 of its
/// IPv6 address (one subscriber's network: each client has 2^64 addresses
/// to rotate through inside it).
pub fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// Take one token; the seconds to wait when there is none.
fn take<K: std::hash::Hash + Eq>(
    map: &Mutex<LruCache<K, (f64, Instant)>>,
    k: K,
    l: Limit,
) -> Option<u32> {
    let mut m = map.lock().expect("rate limits");
    let now = Instant::now();
    let (tokens, last) = m.get_or_insert_mut(k, || (l.burst, now));
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * l.rate).min(l.burst);
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        None
    } else {
        Some(((1.0 - *tokens) / l.rate).ceil().max(1.0) as u32)
    }
}

fn too_many(wait: u32) -> Response {
    let mut e = ApiError::new(
        Code::RateLimited,
        "too many requests; retry after the delay in Retry-After",
    );
    e.retry_after = Some(wait);
    e.into_response()
}

impl AppState {
    pub(crate) fn limit_key(&self, key_id: KeyId) -> Result<(), ApiError> {
        match take(&self.buckets.keys, key_id, self.limits.per_key) {
            None => Ok(()),
            Some(wait) => {
                let mut e = ApiError::new(
                    Code::RateLimited,
                    "too many requests for this key; retry after the delay in Retry-After",
                );
                e.retry_after = Some(wait);
                Err(e)
            }
        }
    }

    /// One login attempt for this account name (limited per account, from
    /// whatever address).
    pub(crate) fn limit_login_account(&self, name: &str) -> Result<(), ApiError> {
        let account = name.trim().to_lowercase();
        match take(&self.buckets.accounts, account, self.limits.login_account) {
            None => Ok(()),
            Some(wait) => {
                let mut e = ApiError::new(
                    Code::RateLimited,
                    "too many login attempts for this account; retry after the delay in Retry-After",
                );
                e.retry_after = Some(wait);
                Err(e)
            }
        }
    }

    /// The key a bearer secret names and what it grants, from a short cache
    /// keyed by the secret's hash (never by the secret itself).
    pub(crate) async fn key_for(&self, secret: &str) -> Result<Option<KeyGrant>, ApiError> {
        if secret.is_empty() || secret.len() > 128 {
            return Ok(None);
        }
        // One point read a request: a revocation by any process or node on
        // this store changes the epoch, and no cached key outlives it.
        // Off the async workers when it may wait: a database that does not
        // answer must not stall the runtime. The embedded store's, with a
        // connection idle, is a point read of a local file (a WAL reader
        // does not wait for the writer) and runs here: a hop to a blocking
        // thread and back cost more than the read (`perf`, BENCHMARKS.md).
        let epoch = match self.store.keys_epoch_now() {
            Some(e) => e?,
            None => {
                let store = self.store.clone();
                crate::blocking(move || store.keys_epoch()).await?
            }
        };
        // The cache is found by a keyed 64-bit hash of the secret (cheap, and
        // random per process), then the secret is compared in constant time.
        let h = std::hash::BuildHasher::hash_one(&self.key_hasher, secret.as_bytes());
        let now = Instant::now();
        let cached = self
            .keys
            .lock()
            .expect("key cache")
            .get(h, secret.as_bytes(), &epoch, now);
        if let Some(k) = cached {
            return Ok(k.filter(|(k, _)| k.expires_ms.is_none_or(|e| tarmo_store::now_ms() < e)));
        }
        let store = self.store.clone();
        let s = secret.to_owned();
        let key = tokio::task::spawn_blocking(move || store.authenticate(&s))
            .await
            .map_err(|_| ApiError::from(tarmo_store::Error::WriterGone))??
            .map(|k| {
                let g = self.roles.grant(&k);
                (Arc::new(k), Arc::new(g))
            });
        self.keys
            .lock()
            .expect("key cache")
            .put(h, secret.as_bytes(), key.clone(), epoch, now);
        Ok(key)
    }

    /// Forget cached keys (after a revocation here: it bites at once).
    pub fn keys_changed(&self) {
        self.keys.lock().expect("key cache").clear();
    }
}

/// Key lookups, kept for [`KEY_CACHE_TTL`]: the keys found apart from the
/// secrets that name no key, so that a flood of made-up secrets (each a
/// store lookup, and each remembered) can never push the real keys out.
/// Real keys enter only from the store, so their map cannot be flooded.
#[derive(Default)]
pub struct KeyCache {
    valid: HashMap<u64, CachedKey>,
    /// Secrets that named no active key, by keyed hash.
    unknown: HashMap<u64, (Box<[u8]>, Instant)>,
}

/// A key found by a keyed hash: the secret, the key, when it was read, and
/// the revocation epoch read before it.
type CachedKey = (Box<[u8]>, KeyGrant, Instant, Vec<u8>);

/// The most entries each map of the key cache holds.
const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    /// `Some(Some(key))` for a key found lately under the same epoch,
    /// `Some(None)` for a secret known lately to name no key, `None` when
    /// the store must be asked.
    pub fn get(
        &self,
        h: u64,
        secret: &[u8],
        epoch: &[u8],
        now: Instant,
    ) -> Option<Option<KeyGrant>> {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < KEY_CACHE_TTL;
        if let Some((stored, k, t, e)) = self.valid.get(&h)
            && fresh(t)
            && e.as_slice() == epoch
            && tarmo_store::vault::ct_eq(stored, secret)
        {
            return Some(Some(k.clone()));
        }
        if let Some((stored, t)) = self.unknown.get(&h)
            && fresh(t)
            && tarmo_store::vault::ct_eq(stored, secret)
        {
            return Some(None);
        }
        None
    }

    pub fn put(
        &mut self,
        h: u64,
        secret: &[u8],
        key: Option<KeyGrant>,
        epoch: Vec<u8>,
        now: Instant,
    ) {
        match key {
            Some(k) => {
                if self.valid.len() >= KEY_CACHE_MAX {
                    self.valid.retain(|_, (_, _, t, _)| {
                        now.saturating_duration_since(*t) < KEY_CACHE_TTL
                    });
                }
                if self.valid.len() < KEY_CACHE_MAX {
                    self.unknown.remove(&h);
                    self.valid.insert(h, (secret.into(), k, now, epoch));
                }
            }
            None => {
                if self.unknown.len() >= KEY_CACHE_MAX {
                    // Forgetting made-up secrets costs a store lookup each
                    // when they come again, and touches no real key.
                    self.unknown.clear();
                }
                self.valid.remove(&h);
                self.unknown.insert(h, (secret.into(), now));
            }
        }
    }

    pub fn clear(&mut self) {
        self.valid.clear();
        self.unknown.clear();
    }
}

/// A key and what it grants, shared between requests.
pub type KeyGrant = (Arc<ApiKey>, Arc<Grant>);

/// How long a key lookup is trusted before the store is asked again.
/// Revocations do not wait for it (the key epoch is read on every request);
/// it bounds how long a key's other changes (an account's roles) take.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Whether an `Origin` header names the origin of `public_url` (scheme,
/// host and port; the default port may be left out on either side).
fn same_origin(origin: &[u8], public_url: &str) -> bool {
    fn parts(url: &str) -> Option<(String, String)> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let default = match scheme.as_str() {
            "http" => ":80",
            "https" => ":443",
            _ => return None,
        };
        let authority = authority
            .strip_suffix(default)
            .map(str::to_owned)
            .unwrap_or(authority);
        Some((scheme, authority))
    }
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    // An origin is exactly scheme://host[:port], nothing after it.
    // An origin is exactly scheme://host[:port], nothing after it.
    if origin
        .split_once("://")
        .is_none_or(|(_, rest)| rest.contains(['/', '?', '#']))
    {
        return false;
    }

    match (parts(origin), parts(public_url)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn peer_ip(req: &Request) -> Option<IpAddr> {
    crate::tls::peer_of(req.extensions()).map(|a| a.ip())
}

/// The access check as its own layer (`app()` shows it): each route's
/// need comes from `routes::ROUTES`. A hand-written service rather than
/// `axum::middleware::from_fn`: one boxed future a request and no boxed
/// `Next`, which is what kept a decision within the instructions it cost
/// before the check had a layer of its own (see BENCHMARKS.md).
#[derive(Clone)]
pub struct GuardLayer(pub Arc<AppState>);

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            state: self.0.clone(),
            inner,
        }
    }
}

/// A route's service behind the access check ([`GuardLayer`]).
#[derive(Clone)]
pub struct Guard<S> {
    state: Arc<AppState>,
    inner: S,
}

impl<S> tower_service::Service<Request> for Guard<S>
where
    S: tower_service::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Unpin,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Guarded<S>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The service polled ready serves this request; a clone stays for
        // the next one (tower's rule for services called from a future).
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let state = self.state.clone();
        Guarded::Checking(
            Box::pin(async move { check(&state, req).await }),
            Some(inner),
        )
    }
}

/// The check's own future: boxed, and small (the route's future is not in it).
type Checking =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Request, Response>> + Send>>;

/// A request through the access check: checked first, then the route's
/// own future, which runs in place (not boxed again).
pub enum Guarded<S: tower_service::Service<Request>> {
    Checking(Checking, Option<S>),
    Calling(S::Future),
    Done,
}

impl<S> std::future::Future for Guarded<S>
where
    S: tower_service::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Unpin,
    S::Future: Unpin,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::{Poll, ready};
        let this = self.get_mut();
        loop {
            match this {
                Guarded::Checking(check, inner) => match ready!(check.as_mut().poll(cx)) {
                    Ok(req) => {
                        let mut inner = inner.take().expect("a request is checked once");
                        *this = Guarded::Calling(inner.call(req));
                    }
                    Err(refused) => {
                        *this = Guarded::Done;
                        return Poll::Ready(Ok(refused));
                    }
                },
                Guarded::Calling(f) => return std::pin::Pin::new(f).poll(cx),
                Guarded::Done => panic!("a guarded request polled after it was answered"),
            }
        }
    }
}

/// The one place routes are guarded: the request, let through (with its
/// `Principal` for staff routes), or the answer that refuses it.
async fn check(s: &AppState, mut req: Request) -> Result<Request, Response> {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let Some(matched) = matched else {
        // No route matched: the fallback answers 404.
        return Ok(req);
    };
    let route = matched.as_str();
    let Some(need) = need(req.method(), route) else {
        tracing::error!(route, "a route has no entry in the access table; refused");
        return Err(
            ApiError::new(Code::Forbidden, "this route is not open to any role").into_response(),
        );
    };
    match need {
        Need::Public | Need::Page | Need::SignIn | Need::Ingest => {
            let limit = match need {
                Need::Page => Some(s.limits.per_ip),
                Need::SignIn => Some(s.limits.login),
                _ => None,
            };
            if let Some(limit) = limit
                && let Some(ip) = peer_ip(&req)
                && let Some(wait) = take(
                    &s.buckets.ips,
                    (address_bucket(ip), need == Need::SignIn),
                    limit,
                )
            {
                return Err(too_many(wait));
            }
            // A form on another site must not press a person's buttons: a
            // browser's POST names its origin, which must be ours, exactly
            // (a prefix would let `https://shop.example.evil` through, and
            // `null` is what a sandboxed frame anywhere sends). Mail clients
            // posting one-click unsubscribes send no Origin.
            if need.is_public()
                && req.method() == Method::POST
                && let Some(origin) = req.headers().get(header::ORIGIN)
                && !same_origin(origin.as_bytes(), &s.config.public_url)
            {
                return Err(ApiError::new(
                    Code::CrossOrigin,
                    "this form may only be sent from this site's own pages",
                )
                .into_response());
            }
            Ok(req)
        }
        Need::Staff(_) | Need::AnyStaffKey => {
            let secret = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|v| v.trim().to_owned());
            let Some(secret) = secret else {
                return Err(ApiError::unauthorized(
                    "a key is required: Authorization: Bearer <key>",
                )
                .into_response());
            };
            let (key, grant) = match s.key_for(&secret).await {
                Ok(Some(k)) => k,
                Ok(None) => {
                    return Err(
                        ApiError::unauthorized("the key is unknown, revoked or expired")
                            .into_response(),
                    );
                }
                Err(e) => return Err(e.into_response()),
            };
            if let Err(e) = s.limit_key(key.id) {
                return Err(e.into_response());
            }
            if let Need::Staff(p) = need {
                if p == Permission::MetricsRead
                    && let Some(wait) = take(&s.buckets.metrics, key.id, s.limits.metrics)
                {
                    return Err(too_many(wait));
                }
                if !grant.may(p) {
                    return Err(forbidden(p).into_response());
                }
                if grant.bound() && p.unbound_only() {
                    return Err(ApiError::new(
                        Code::PurposeNotPermitted,
                        format!("a key bound to purposes cannot use the permission `{p}`"),
                    )
                    .into_response());
                }
            }
            req.extensions_mut().insert(Principal {
                key,
                grant,
                route: matched,
            });
            Ok(req)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64) -> KeyGrant {
        let k = ApiKey {
            id: KeyId(id),
            roles: vec!["admin".into()],
            purposes: vec![],
            name: String::new(),
            user_id: None,
            created_ms: 0,
            revoked_ms: None,
            expires_ms: None,
            trust: None,
        };
        let g = Roles::default().grant(&k);
        (Arc::new(k), Arc::new(g))
    }

    #[test]
    fn a_flood_of_unknown_secrets_does_not_push_out_a_real_key() {
        let mut c = KeyCache::default();
        let now = Instant::now();
        c.put(1, b"tka_real", Some(key(7)), vec![], now);
        for i in 0..(3 * KEY_CACHE_MAX as u64) {
            c.put(
                100 + i,
                format!("tka_made_up_{i}").as_bytes(),
                None,
                vec![],
                now,
            );
        }
        let hit = c.get(1, b"tka_real", &[], now);
        assert_eq!(hit.flatten().map(|(k, _)| k.id), Some(KeyId(7)));
        assert!(matches!(
            c.get(
                100 + 3 * KEY_CACHE_MAX as u64 - 1,
                format!("tka_made_up_{}", 3 * KEY_CACHE_MAX - 1).as_bytes(),
                &[],
                now
            ),
            Some(None)
        ));
        // Another secret under the same hash is not the key.
        assert!(c.get(1, b"tka_other", &[], now).is_none());
    }

    #[test]
    fn a_new_revocation_epoch_or_age_makes_a_cached_key_be_read_again() {
        let mut c = KeyCache::default();
        let now = Instant::now();
        c.put(1, b"tka_real", Some(key(7)), b"e1".to_vec(), now);
        assert!(c.get(1, b"tka_real", b"e1", now).is_some());
        assert!(c.get(1, b"tka_real", b"e2", now).is_none());
        assert!(c.get(1, b"tka_real", b"e1", now + KEY_CACHE_TTL).is_none());
    }

    #[test]
    fn only_our_exact_origin_is_the_same_origin() {
        let ours = "https://shop.example/tarmo";
        assert!(same_origin(b"https://shop.example", ours));
        assert!(same_origin(b"HTTPS://Shop.Example:443", ours));
        for other in [
            "null",
            "https://shop.example.evil",
            "https://shop.exampl",
            "http://shop.example",
            "https://shop.example:8443",
            "https://shop.example/",
            "https://evil@shop.example",
            "",
        ] {
            assert!(!same_origin(other.as_bytes(), ours), "{other}");
        }
        assert!(same_origin(
            b"http://127.0.0.1:8080",
            "http://127.0.0.1:8080"
        ));
        assert!(!same_origin(
            b"http://127.0.0.1:80",
            "http://127.0.0.1:8080"
        ));
    }

    const LOGIN: Limit = Limit {
        rate: 0.001,
        burst: 2.0,
    };

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_bucket(a), address_bucket(b));
        assert_ne!(address_bucket(a), address_bucket(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_bucket(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_bucket(mapped), v4);
        assert_ne!(
            address_bucket(v4),
            address_bucket("192.0.2.8".parse().unwrap())
        );
        // Rotating addresses inside one /64 does not buy attempts.
        let buckets = Buckets::default();
        let mut refused = 0;
        for i in 0..10u128 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from("2001:db8:1:2::".parse::<std::net::Ipv6Addr>().unwrap()) + i,
            ));
            if take(&buckets.ips, (address_bucket(ip), true), LOGIN).is_some() {
                refused += 1;
            }
        }
        assert_eq!(refused, 8);
    }

    #[test]
    fn a_flood_of_new_buckets_does_not_reset_a_busy_one() {
        let buckets = Buckets::with_capacity(100);
        let victim: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(take(&buckets.ips, (victim, true), LOGIN).is_none());
        assert!(take(&buckets.ips, (victim, true), LOGIN).is_none());
        assert!(take(&buckets.ips, (victim, true), LOGIN).is_some());
        // The attacker comes from many addresses; between their requests
        // the limited client keeps trying, and stays limited: only the
        // least recently used buckets are forgotten, not all of them.
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            take(&buckets.ips, (ip, true), LOGIN);
            if i % 50 == 0 {
                assert!(
                    take(&buckets.ips, (victim, true), LOGIN).is_some(),
                    "reset after {i} new addresses"
                );
            }
        }
        assert!(buckets.ips.lock().unwrap().len() <= 100);
    }
}
