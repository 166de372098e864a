//! Meta's send limits, enforced before each Graph call (DESIGN invariant 7):
//!
//! - **per phone number**: a governor keyed limiter per distinct rate, keyed
//!   by `phone_number_id`, at the config's `max_mps` less a little headroom
//!   (Meta measures at its end, after network jitter), with a burst of one
//!   so no one-second window ever holds more than `max_mps` sends;
//! - **per recipient pair** (number, customer): about one message per 6 s
//!   with a small burst, Meta's pair limit;
//! - **cool-downs** after Meta itself said "too fast": 130429 holds the
//!   number back, 131056 only that recipient.
//!
//! A send never waits long here: at most `max_wait` (about 100 ms) in total.
//! Beyond that [`Limits::acquire`] answers [`RateLimited`] and the worker
//! returns a retryable error, so the delay is spent in the broker's delay
//! queue and the consumer slot is free for other recipients.
//!
//! Limits are per process: run the outbound role in one process per number,
//! or divide `max_mps` between processes.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Sends held back by a limit (a short wait or a deferral), by `limit`:
/// `number`, `pair`, `number_cooldown`, `pair_cooldown`.
pub const METRIC_RATE_LIMITED_TOTAL: &str = "wapipe_outbound_rate_limited_total";

/// How often stale limiter state is dropped (`retain_recent`).
const GC_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Pair limit: one message per this period per (number, customer).
    pub pair_period: Duration,
    /// Pair limit: messages allowed at once before the period applies.
    pub pair_burst: u32,
    /// Longest total wait inside one attempt before deferring to the broker.
    pub max_wait: Duration,
    /// Share of `max_mps` actually used (0 < h <= 1).
    pub headroom: f64,
    /// Hold-back of a number after Meta's 130429 / 80007 / 4.
    pub number_cooldown: Duration,
    /// Hold-back of a recipient after Meta's 131056.
    pub pair_cooldown: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            pair_period: Duration::from_secs(6),
            pair_burst: 5,
            max_wait: Duration::from_millis(100),
            headroom: 0.97,
            number_cooldown: Duration::from_secs(1),
            pair_cooldown: Duration::from_secs(6),
        }
    }
}

/// Over a limit: try again in about `retry_after`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limited ({limit}); retry in {retry_after:?}")]
pub struct RateLimited {
    pub limit: &'static str,
    pub retry_after: Duration,
}

type Keyed = DefaultKeyedRateLimiter<String>;

pub struct Limits {
    settings: LimitSettings,
    clock: DefaultClock,
    /// One keyed limiter per distinct send interval (nanoseconds), keyed by
    /// phone number id: governor quotas are per limiter, rates per config.
    numbers: Mutex<HashMap<u64, Arc<Keyed>>>,
    pairs: Keyed,
    number_hold: Mutex<HashMap<String, Instant>>,
    pair_hold: Mutex<HashMap<String, Instant>>,
    /// When each number's limiter was last seen to free up: a hint for
    /// [`Limits::precheck`], which must not take slots.
    number_next: Mutex<HashMap<String, Instant>>,
    last_gc: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert or remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `{phone_number_id}:{wa_id}`: the pair key is the job's lane key.
pub use wapipe_shared::jobs::lane_key as pair_key;

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        let burst = NonZeroU32::new(settings.pair_burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let pair_quota = Quota::with_period(settings.pair_period.max(Duration::from_millis(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            settings,
            clock: DefaultClock::default(),
            numbers: Mutex::new(HashMap::new()),
            pairs: RateLimiter::keyed(pair_quota),
            number_hold: Mutex::new(HashMap::new()),
            pair_hold: Mutex::new(HashMap::new()),
            number_next: Mutex::new(HashMap::new()),
            last_gc: Mutex::new(Instant::now()),
        }
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// The interval between two sends of a number at `max_mps`.
    fn interval(&self, max_mps: u32) -> Duration {
        let mps = f64::from(max_mps.max(1)) * self.settings.headroom.clamp(0.01, 1.0);
        Duration::from_secs_f64(1.0 / mps)
    }

    fn number_limiter(&self, max_mps: u32) -> Arc<Keyed> {
        let interval = self.interval(max_mps);
        let nanos = interval.as_nanos() as u64;
        lock(&self.numbers)
            .entry(nanos)
            .or_insert_with(|| {
                let quota = Quota::with_period(interval.max(Duration::from_nanos(1)))
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
                Arc::new(RateLimiter::keyed(quota))
            })
            .clone()
    }

    fn held(map: &Mutex<HashMap<String, Instant>>, key: &str) -> Option<Duration> {
        let mut m = lock(map);
        match m.get(key) {
            Some(until) => {
                let now = Instant::now();
                if *until > now {
                    Some(*until - now)
                } else {
                    m.remove(key);
                    None
                }
            }
            None => None,
        }
    }

    fn hold(map: &Mutex<HashMap<String, Instant>>, key: &str, d: Duration) {
        let until = Instant::now() + d;
        let mut m = lock(map);
        let e = m.entry(key.to_owned()).or_insert(until);
        if *e < until {
            *e = until;
        }
    }

    /// Holds a number back (Meta answered 130429, 80007 or 4).
    pub fn cool_down_number(&self, phone_number_id: &str) {
        Self::hold(
            &self.number_hold,
            phone_number_id,
            self.settings.number_cooldown,
        );
    }

    /// Holds one recipient back (Meta answered 131056).
    pub fn cool_down_pair(&self, phone_number_id: &str, recipient: &str) {
        Self::hold(
            &self.pair_hold,
            &pair_key(phone_number_id, recipient),
            self.settings.pair_cooldown,
        );
    }

    /// A cheap look before the message is claimed, taking no slot: turns
    /// the attempt away when a hold is on, or when the number's limiter was
    /// last seen busy for longer than `max_wait`. Saves a claim (a database
    /// write) and its release for attempts that could not send anyway.
    pub fn precheck(&self, phone_number_id: &str, recipient: &str) -> Result<(), RateLimited> {
        self.maybe_gc();
        if let Some(d) = Self::held(&self.number_hold, phone_number_id) {
            return Err(limited("number_cooldown", d));
        }
        if let Some(d) = Self::held(&self.pair_hold, &pair_key(phone_number_id, recipient)) {
            return Err(limited("pair_cooldown", d));
        }
        if let Some(d) = Self::held(&self.number_next, phone_number_id)
            && d > self.settings.max_wait
        {
            return Err(limited("number", d));
        }
        Ok(())
    }

    /// Takes a send slot of the number and of the pair, waiting at most
    /// `max_wait` in all. Call it right before the Graph call (after the
    /// claim is committed): Meta counts requests as they arrive, so nothing
    /// slow may sit between the slot and the request. Order matters: holds
    /// first (free), then the number (a wasted number slot costs
    /// 1/max_mps), then the pair (whose slots cost seconds, so it is only
    /// taken once the number said yes).
    pub async fn acquire(
        &self,
        phone_number_id: &str,
        max_mps: u32,
        recipient: &str,
    ) -> Result<(), RateLimited> {
        self.precheck(phone_number_id, recipient)?;
        let pair = pair_key(phone_number_id, recipient);
        let mut waited = Duration::ZERO;
        let number = self.number_limiter(max_mps);
        let number_key = phone_number_id.to_owned();
        let taken = self.take(&number, &number_key, "number", &mut waited).await;
        let next = match &taken {
            Ok(()) => self.interval(max_mps),
            Err(e) => e.retry_after,
        };
        lock(&self.number_next).insert(number_key.clone(), Instant::now() + next);
        taken?;
        if let Err(e) = self.take(&self.pairs, &pair, "pair", &mut waited).await {
            // Remember the verdict so the next attempts for this recipient
            // are turned away without touching (and wasting) number slots.
            Self::hold(&self.pair_hold, &pair, e.retry_after);
            return Err(e);
        }
        Ok(())
    }

    async fn take(
        &self,
        limiter: &Keyed,
        key: &String,
        limit: &'static str,
        waited: &mut Duration,
    ) -> Result<(), RateLimited> {
        let mut counted = false;
        loop {
            match limiter.check_key(key) {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if !counted {
                        metrics::counter!(METRIC_RATE_LIMITED_TOTAL, "limit" => limit).increment(1);
                        counted = true;
                    }
                    if *waited + wait > self.settings.max_wait {
                        return Err(RateLimited {
                            limit,
                            retry_after: wait,
                        });
                    }
                    // A short wait is cheaper than a trip through a delay
                    // queue; another lane may still take the slot first, so
                    // check again after it.
                    tokio::time::sleep(wait).await;
                    *waited += wait;
                }
            }
        }
    }

    /// Drops limiter state of keys idle long enough to be back at full
    /// burst, and expired holds, at most once a minute.
    fn maybe_gc(&self) {
        {
            let mut last = lock(&self.last_gc);
            if last.elapsed() < GC_EVERY {
                return;
            }
            *last = Instant::now();
        }
        self.retain_recent();
    }

    /// `retain_recent` on every limiter, and drops expired holds.
    pub fn retain_recent(&self) {
        for l in lock(&self.numbers).values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.pairs.retain_recent();
        self.pairs.shrink_to_fit();
        let now = Instant::now();
        lock(&self.number_hold).retain(|_, until| *until > now);
        lock(&self.pair_hold).retain(|_, until| *until > now);
        lock(&self.number_next).retain(|_, until| *until > now);
    }

    /// Keys currently tracked by the pair limiter (for tests).
    pub fn tracked_pairs(&self) -> usize {
        self.pairs.len()
    }
}

fn limited(limit: &'static str, retry_after: Duration) -> RateLimited {
    metrics::counter!(METRIC_RATE_LIMITED_TOTAL, "limit" => limit).increment(1);
    RateLimited { limit, retry_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            pair_period: Duration::from_secs(6),
            pair_burst: 2,
            max_wait: Duration::from_millis(50),
            headroom: 1.0,
            number_cooldown: Duration::from_millis(200),
            pair_cooldown: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn pair_limit_holds_one_recipient_only() {
        let l = Limits::new(settings());
        assert!(l.acquire("1", 10_000, "a").await.is_ok());
        assert!(l.acquire("1", 10_000, "a").await.is_ok());
        let e = l.acquire("1", 10_000, "a").await.expect_err("third to a");
        assert_eq!(e.limit, "pair");
        assert!(e.retry_after > Duration::from_secs(1));
        // Turned away by the hold now, without touching the limiters.
        assert_eq!(
            l.acquire("1", 10_000, "a").await.expect_err("held").limit,
            "pair_cooldown"
        );
        assert!(l.acquire("1", 10_000, "b").await.is_ok());
    }

    #[tokio::test]
    async fn number_limit_waits_briefly_then_defers() {
        // 50 ms apart at 20/s: with 60 ms of patience the second send waits.
        let l = Limits::new(LimitSettings {
            max_wait: Duration::from_millis(60),
            ..settings()
        });
        let t = Instant::now();
        assert!(l.acquire("1", 20, "a").await.is_ok());
        assert!(l.acquire("1", 20, "b").await.is_ok());
        assert!(t.elapsed() >= Duration::from_millis(40));
        // With 30 ms it defers instead, and says when to come back.
        let l = Limits::new(LimitSettings {
            max_wait: Duration::from_millis(30),
            ..settings()
        });
        assert!(l.acquire("1", 20, "a").await.is_ok());
        let e = l.acquire("1", 20, "b").await.expect_err("deferred");
        assert_eq!(e.limit, "number");
        assert!(e.retry_after <= Duration::from_millis(50));
        // Another number is not affected.
        assert!(l.acquire("2", 20, "b").await.is_ok());
    }

    #[tokio::test]
    async fn cool_downs_expire() {
        let l = Limits::new(settings());
        l.cool_down_number("1");
        assert_eq!(
            l.acquire("1", 100, "a").await.expect_err("held").limit,
            "number_cooldown"
        );
        assert!(l.acquire("2", 100, "a").await.is_ok());
        tokio::time::sleep(Duration::from_millis(220)).await;
        assert!(l.acquire("1", 100, "a").await.is_ok());
        l.retain_recent();
    }
}
