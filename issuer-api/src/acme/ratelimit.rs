//! Rate limits (GCRA, by the `governor` crate): new orders per account, new accounts per client
//! address, and all ACME requests per client address. Client addresses are bucketed the way an
//! attacker's resources are counted: one IPv4 address, or one IPv6 /64 (a single host commonly
//! holds a whole /64, so per-address IPv6 buckets would be no limit at all).
//!
//! The keyed maps are sharded (`dashmap`), so a check locks one shard, never the whole map. They
//! stay bounded without a scan on the request path: a background sweep every
//! [`SWEEP_INTERVAL`] drops every key whose bucket has refilled (it is indistinguishable from a
//! fresh one), and when more than `max_tracked_clients` keys are live anyway (a flood from very
//! many addresses), addresses not yet tracked share one overflow bucket until the sweep has made
//! room. Buckets live in memory, per replica: with N replicas a client gets at most N times the
//! rate.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use super::problem::AcmeProblem;

/// How often full buckets are forgotten.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// One bucket's shape: `burst` tokens, refilled at `burst` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Capacity.
    pub burst: u32,
    /// Time to refill the whole capacity.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

impl Bucket {
    /// The GCRA quota of this shape, or why there is none.
    fn quota(&self, name: &str) -> Result<Quota, String> {
        let burst =
            NonZeroU32::new(self.burst).ok_or_else(|| format!("acme.rate_limits.{name}: burst must be >= 1"))?;
        let per_token = self.period / self.burst;
        Quota::with_period(per_token)
            .map(|q| q.allow_burst(burst))
            .ok_or_else(|| format!("acme.rate_limits.{name}: period must be longer than zero"))
    }
}

/// `[acme.rate_limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// New orders per account (Let's Encrypt: 300 per 3 hours).
    pub new_orders_per_account: Bucket,
    /// New accounts per client address (IPv4 address or IPv6 /64). Let's Encrypt allows 10 per 3
    /// hours; an internal CA sees whole nodes of workload agents enrolling from one address after
    /// a restart, so the default is 500 per hour.
    pub new_accounts_per_ip: Bucket,
    /// Requests per client address (IPv4 address or IPv6 /64).
    pub requests_per_ip: Bucket,
    /// Client addresses tracked per limit before new ones share an overflow bucket.
    pub max_tracked_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            new_orders_per_account: Bucket { burst: 300, period: Duration::from_secs(3 * 3600) },
            new_accounts_per_ip: Bucket { burst: 500, period: Duration::from_secs(3600) },
            requests_per_ip: Bucket { burst: 20_000, period: Duration::from_secs(10) },
            max_tracked_clients: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// Checks every bucket; the server refuses to start on an error.
    pub fn validate(&self) -> Result<(), String> {
        self.new_orders_per_account.quota("new_orders_per_account")?;
        self.new_accounts_per_ip.quota("new_accounts_per_ip")?;
        self.requests_per_ip.quota("requests_per_ip")?;
        if self.max_tracked_clients == 0 {
            return Err("acme.rate_limits.max_tracked_clients must be >= 1".into());
        }
        Ok(())
    }
}

/// The key of a client address: an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One keyed limit with its overflow bucket.
#[derive(Debug)]
struct Keyed<K: Hash + Eq + Clone> {
    name: &'static str,
    keys: DefaultKeyedRateLimiter<K>,
    overflow: DefaultDirectRateLimiter,
    max_keys: usize,
    /// Set when the map was found full; the next sweep clears it.
    full: AtomicBool,
    limited: AtomicU64,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(name: &'static str, shape: &Bucket, max_keys: usize) -> Result<Self, String> {
        let quota = shape.quota(name)?;
        Ok(Keyed {
            name,
            keys: RateLimiter::keyed(quota),
            overflow: RateLimiter::direct(quota),
            max_keys,
            full: AtomicBool::new(false),
            limited: AtomicU64::new(0),
        })
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self, key: &K) -> Result<(), Duration> {
        // `len` visits the shards' counters, not the entries.
        let full = self.full.load(Ordering::Relaxed) || {
            let f = self.keys.len() >= self.max_keys;
            if f {
                self.full.store(true, Ordering::Relaxed);
                tracing::warn!(
                    limit = self.name,
                    max = self.max_keys,
                    "rate-limit table full; new clients share one bucket"
                );
            }
            f
        };
        let r = if full {
            self.overflow.check().map_err(|n| n.wait_time_from(self.overflow.clock().now()))
        } else {
            self.keys.check_key(key).map_err(|n| n.wait_time_from(self.keys.clock().now()))
        };
        if r.is_err() {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Forgets refilled buckets; says what remains.
    fn sweep(&self) -> LimitStats {
        self.keys.retain_recent();
        self.keys.shrink_to_fit();
        let tracked = self.keys.len();
        if tracked < self.max_keys {
            self.full.store(false, Ordering::Relaxed);
        }
        LimitStats { name: self.name, tracked, limited: self.limited.load(Ordering::Relaxed) }
    }
}

/// What the sweep and the metrics see of one limit.
#[derive(Debug, Clone, Copy)]
pub struct LimitStats {
    /// The limit's name, as in the config.
    pub name: &'static str,
    /// Keys tracked after the last sweep.
    pub tracked: usize,
    /// Requests refused by it since start.
    pub limited: u64,
}

/// All of an ACME server's limits.
#[derive(Debug)]
pub struct Limiter {
    orders: Keyed<String>,
    accounts: Keyed<IpAddr>,
    ips: Keyed<IpAddr>,
}

impl Limiter {
    /// Limits with the given shapes; an error names the first invalid one.
    pub fn new(cfg: &RateLimitConfig) -> Result<Self, String> {
        cfg.validate()?;
        let max = cfg.max_tracked_clients;
        Ok(Limiter {
            orders: Keyed::new("new_orders_per_account", &cfg.new_orders_per_account, max)?,
            accounts: Keyed::new("new_accounts_per_ip", &cfg.new_accounts_per_ip, max)?,
            ips: Keyed::new("requests_per_ip", &cfg.requests_per_ip, max)?,
        })
    }

    /// One new order for `account`.
    pub fn check_order(&self, account: &str) -> Result<(), Duration> {
        self.orders.take(&account.to_owned())
    }

    /// One new account from `ip`.
    pub fn check_new_account(&self, ip: IpAddr) -> Result<(), Duration> {
        self.accounts.take(&client_key(ip))
    }

    /// One request from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.ips.take(&client_key(ip))
    }

    /// Forgets refilled buckets of every limit.
    pub fn sweep(&self) -> [LimitStats; 3] {
        [self.orders.sweep(), self.accounts.sweep(), self.ips.sweep()]
    }
}

/// The `rateLimited` answer with `Retry-After` (RFC 8555 section 6.6).
pub fn limited(wait: Duration, detail: &str) -> Response {
    let secs = wait.as_secs() + 1;
    let mut r =
        AcmeProblem::new(StatusCode::TOO_MANY_REQUESTS, "rateLimited", format!("{detail}; retry after {secs}s"))
            .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, period: Duration, max: usize) -> Limiter {
        let cfg = RateLimitConfig {
            requests_per_ip: Bucket { burst, period },
            new_accounts_per_ip: Bucket { burst, period },
            max_tracked_clients: max,
            ..RateLimitConfig::default()
        };
        Limiter::new(&cfg).expect("valid")
    }

    #[test]
    fn bucket_allows_its_burst_then_says_how_long_to_wait() {
        let l = limiter(2, Duration::from_secs(10), 100);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(l.check_ip(ip).is_ok());
        assert!(l.check_ip(ip).is_ok());
        let wait = l.check_ip(ip).expect_err("empty");
        assert!(wait <= Duration::from_secs(5) && wait > Duration::from_secs(4), "{wait:?}");
        assert!(l.check_ip("192.0.2.2".parse().expect("ip")).is_ok(), "keys are independent");
        assert!(l.check_new_account(ip).is_ok(), "limits are independent");
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_slash_64() {
        let l = limiter(1, Duration::from_secs(60), 100);
        assert!(l.check_new_account("2001:db8:1:2::1".parse().expect("ip")).is_ok());
        assert!(l.check_new_account("2001:db8:1:2:ffff::9".parse().expect("ip")).is_err(), "same /64");
        assert!(l.check_new_account("2001:db8:1:3::1".parse().expect("ip")).is_ok(), "next /64");
        assert!(l.check_new_account("::ffff:192.0.2.7".parse().expect("ip")).is_ok());
        assert!(l.check_new_account("192.0.2.7".parse().expect("ip")).is_err(), "mapped IPv4 is the IPv4 key");
    }

    #[test]
    fn a_full_table_puts_new_clients_into_one_overflow_bucket_until_swept() {
        let l = limiter(1, Duration::from_millis(50), 3);
        for i in 1..=3u8 {
            assert!(l.check_ip(IpAddr::from([198, 51, 100, i])).is_ok());
        }
        // Table full: the next two unknown clients share the overflow bucket.
        assert!(l.check_ip(IpAddr::from([203, 0, 113, 1])).is_ok());
        assert!(l.check_ip(IpAddr::from([203, 0, 113, 2])).is_err(), "overflow bucket is shared");
        assert_eq!(l.ips.keys.len(), 3, "no key was added while full");
        std::thread::sleep(Duration::from_millis(120));
        let stats = l.sweep();
        assert_eq!(stats[2].tracked, 0, "refilled buckets are forgotten");
        assert!(stats[2].limited >= 1);
        assert!(l.check_ip(IpAddr::from([203, 0, 113, 2])).is_ok(), "room again after the sweep");
        assert_eq!(l.ips.keys.len(), 1);
    }

    #[test]
    fn invalid_shapes_are_refused() {
        let mut cfg = RateLimitConfig::default();
        cfg.new_accounts_per_ip.burst = 0;
        assert!(cfg.validate().expect_err("zero burst").contains("new_accounts_per_ip"));
        let mut cfg = RateLimitConfig::default();
        cfg.requests_per_ip.period = Duration::ZERO;
        assert!(cfg.validate().is_err());
    }
}
