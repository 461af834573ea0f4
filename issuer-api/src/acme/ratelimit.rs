//! Token-bucket rate limits per account (new orders) and per client IP (all ACME requests).
//! Buckets live in memory, per replica: with N replicas a client gets at most N times the rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::problem::AcmeProblem;

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

/// `[acme.rate_limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// New orders per account (Let's Encrypt: 300 per 3 hours).
    pub new_orders_per_account: Bucket,
    /// Requests per client IP.
    pub requests_per_ip: Bucket,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            new_orders_per_account: Bucket { burst: 300, period: Duration::from_secs(3 * 3600) },
            requests_per_ip: Bucket { burst: 20_000, period: Duration::from_secs(10) },
        }
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

/// A set of buckets keyed by `K`.
#[derive(Debug)]
struct Buckets<K> {
    shape: Bucket,
    map: Mutex<HashMap<K, State>>,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(shape: Bucket) -> Self {
        Buckets { shape, map: Mutex::new(HashMap::new()) }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.shape.burst) / self.shape.period.as_secs_f64().max(1e-9);
        let Ok(mut map) = self.map.lock() else { return Ok(()) };
        if map.len() > 100_000 {
            // Forget full buckets so the map cannot grow without bound.
            let burst = f64::from(self.shape.burst);
            map.retain(|_, s| s.tokens + now.duration_since(s.last).as_secs_f64() * rate < burst);
        }
        let s = map.entry(key.clone()).or_insert(State { tokens: f64::from(self.shape.burst), last: now });
        s.tokens = (s.tokens + now.duration_since(s.last).as_secs_f64() * rate).min(f64::from(self.shape.burst));
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.tokens) / rate))
        }
    }
}

/// All of an ACME server's limits.
#[derive(Debug)]
pub struct Limiter {
    orders: Buckets<String>,
    ips: Buckets<IpAddr>,
}

impl Limiter {
    /// Limits with the given shapes.
    pub fn new(cfg: RateLimitConfig) -> Self {
        Limiter { orders: Buckets::new(cfg.new_orders_per_account), ips: Buckets::new(cfg.requests_per_ip) }
    }

    /// One new order for `account`.
    pub fn check_order(&self, account: &str) -> Result<(), Duration> {
        self.orders.take(&account.to_owned(), Instant::now())
    }

    /// One request from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.ips.take(&ip, Instant::now())
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

    #[test]
    fn bucket_refills_at_its_rate() {
        let b = Buckets::new(Bucket { burst: 2, period: Duration::from_secs(10) });
        let t0 = Instant::now();
        assert!(b.take(&1, t0).is_ok());
        assert!(b.take(&1, t0).is_ok());
        let wait = b.take(&1, t0).expect_err("empty");
        assert!(wait <= Duration::from_secs(5) && wait > Duration::from_secs(4), "{wait:?}");
        assert!(b.take(&2, t0).is_ok(), "keys are independent");
        assert!(b.take(&1, t0 + Duration::from_secs(5)).is_ok(), "one token back after period/burst");
        assert!(b.take(&1, t0 + Duration::from_secs(5)).is_err());
    }
}
