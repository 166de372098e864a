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
//! *defers* the job (not a failed attempt: it never climbs the backoff nor
//! reaches the dead-letter queue), so the delay is spent in the broker's
//! delay queue and the consumer slot is free for other recipients.
//!
//! # Pacing a burst
//!
//! A burst (a campaign queues 10,000 sends at once) must leave at the
//! number's rate, not bounce: had every refused job come back at the next
//! free slot, they would all come back together, and all but one be
//! refused again. So a job turned away by the number's limit is given a
//! *slot* of its own: each number keeps a schedule (the time its next
//! deferred send may go, advanced by one send interval per job deferred),
//! the job is deferred until its slot and holds a reservation for it.
//! While a schedule runs ahead of now, a new job queues behind it (it is
//! deferred to the end, never jumping the ones that wait); a job coming
//! back for its reservation skips that check and takes the limiter's slot,
//! which is free then because deferred sends were spaced by the limiter's
//! own interval. The limiter stays the only authority on sending: the
//! schedule only decides when to come back. Jobs of one recipient share a
//! lane and take slots in lane order, so they keep their order.
//!
//! Limits are per process: run the outbound role in one process per number,
//! or divide `max_mps` between processes.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

/// Sends held back by a limit (a short wait or a deferral), by `limit`:
/// `number`, `pair`, `number_cooldown`, `pair_cooldown`, `order` (behind an
/// earlier job of the same recipient).
pub const METRIC_RATE_LIMITED_TOTAL: &str = "wapipe_outbound_rate_limited_total";

/// Sends each number's limiter let through, by `phone_number_id`. Over
/// [`METRIC_NUMBER_LIMIT`] it is the number's saturation: near 1, sends
/// queue behind Meta's throughput and a campaign's reach is set by it.
pub const METRIC_NUMBER_SENDS_TOTAL: &str = "wapipe_outbound_number_sends_total";
/// The sends per second a number's limiter allows (its `max_mps` less the
/// headroom), by `phone_number_id`.
pub const METRIC_NUMBER_LIMIT: &str = "wapipe_outbound_number_limit_per_second";

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

/// When the next deferred send of a number may go, and its interval.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    next: Instant,
    interval: Duration,
}

/// How far apart a recipient's waiting jobs come back (see
/// `Limits::wait_turn`): well above the broker's timer resolution.
const ORDER_STEP: Duration = Duration::from_millis(5);

/// A recipient's jobs held back, in lane order, and when the first is due
/// back.
#[derive(Debug)]
struct Line {
    queue: VecDeque<Uuid>,
    due: Instant,
}

/// A reservation not claimed this long after its slot is forgotten (its
/// job went to another process, or was finished by a sweep).
const RESERVATION_TTL: Duration = Duration::from_secs(120);

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
    number_next: Mutex<HashMap<String, (Instant, Duration)>>,
    /// Each number's schedule of deferred sends (see the module's notes).
    schedules: Mutex<HashMap<String, Schedule>>,
    /// The slot each deferred job holds, by its message id.
    reservations: Mutex<HashMap<Uuid, Instant>>,
    /// Per recipient, its jobs held back, in lane order.
    lines: Mutex<HashMap<String, Line>>,
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
            schedules: Mutex::new(HashMap::new()),
            reservations: Mutex::new(HashMap::new()),
            lines: Mutex::new(HashMap::new()),
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
    /// the attempt away when a hold is on, when the number's schedule of
    /// deferred sends runs ahead (the job then reserves the next slot, at
    /// the end of it, unless it comes back for one it holds), or when the
    /// number's limiter was last seen busy for longer than `max_wait`.
    /// Saves a claim (a database write) and its release for attempts that
    /// could not send anyway.
    pub fn precheck(
        &self,
        phone_number_id: &str,
        recipient: &str,
        job: Uuid,
    ) -> Result<(), RateLimited> {
        self.maybe_gc();
        let pair = pair_key(phone_number_id, recipient);
        let checked = self.check(phone_number_id, &pair, job);
        if let Err(e) = &checked {
            self.turned_away(&pair, job, e.retry_after);
        }
        checked
    }

    fn check(&self, phone_number_id: &str, pair: &str, job: Uuid) -> Result<(), RateLimited> {
        if let Some(d) = Self::held(&self.number_hold, phone_number_id) {
            return Err(limited("number_cooldown", d));
        }
        if let Some(wait) = self.wait_turn(pair, job) {
            return Err(limited("order", wait));
        }
        if lock(&self.reservations).contains_key(&job) {
            return Ok(());
        }
        if let Some(d) = Self::held(&self.pair_hold, pair) {
            return Err(limited("pair_cooldown", d));
        }
        if let Some(wait) = self.behind_schedule(phone_number_id, job) {
            return Err(limited("number", wait));
        }
        let busy = lock(&self.number_next)
            .get(phone_number_id)
            .map(|(until, interval)| (until.saturating_duration_since(Instant::now()), *interval));
        if let Some((d, interval)) = busy
            && d > self.settings.max_wait
        {
            let wait = self.reserve(phone_number_id, interval, d, job);
            return Err(limited("number", wait));
        }
        Ok(())
    }

    /// A recipient's jobs leave in lane order: while one of them is held
    /// back, the ones after it wait their turn behind it. `None` when it is
    /// `job`'s turn; else how long to stay away (until the first is due
    /// back, plus a step per place in the line, so they return in order).
    fn wait_turn(&self, pair: &str, job: Uuid) -> Option<Duration> {
        let mut lines = lock(&self.lines);
        let line = lines.get_mut(pair)?;
        let place = match line.queue.iter().position(|j| *j == job) {
            Some(0) => return None,
            Some(place) => place,
            None => {
                line.queue.push_back(job);
                line.queue.len() - 1
            }
        };
        let due = line.due.saturating_duration_since(Instant::now());
        Some(due + ORDER_STEP * u32::try_from(place).unwrap_or(u32::MAX))
    }

    /// `job` was turned away for `wait`: it joins its recipient's line (the
    /// first in line sets when the line moves again).
    fn turned_away(&self, pair: &str, job: Uuid, wait: Duration) {
        let now = Instant::now();
        let mut lines = lock(&self.lines);
        let line = lines.entry(pair.to_owned()).or_insert_with(|| Line {
            queue: VecDeque::new(),
            due: now,
        });
        if !line.queue.contains(&job) {
            line.queue.push_back(job);
        }
        if line.queue.front() == Some(&job) {
            line.due = now + wait;
        }
    }

    /// `job` got its slots: the next of its recipient's line may go.
    fn went(&self, pair: &str, job: Uuid) {
        let mut lines = lock(&self.lines);
        if let Some(line) = lines.get_mut(pair) {
            line.queue.retain(|j| *j != job);
            if line.queue.is_empty() {
                lines.remove(pair);
            }
        }
    }

    /// While the number's schedule runs more than `max_wait` ahead, a new
    /// job reserves the slot at its end: how long until then.
    fn behind_schedule(&self, phone_number_id: &str, job: Uuid) -> Option<Duration> {
        let now = Instant::now();
        let mut schedules = lock(&self.schedules);
        let s = schedules.get_mut(phone_number_id)?;
        if s.next <= now + self.settings.max_wait {
            return None;
        }
        let slot = s.next;
        s.next += s.interval;
        drop(schedules);
        lock(&self.reservations).insert(job, slot);
        Some(slot - now)
    }

    /// Reserves the number's next deferred slot for `job` (no earlier than
    /// `earliest` from now): how long until it.
    fn reserve(
        &self,
        phone_number_id: &str,
        interval: Duration,
        earliest: Duration,
        job: Uuid,
    ) -> Duration {
        let now = Instant::now();
        let mut schedules = lock(&self.schedules);
        let s = schedules
            .entry(phone_number_id.to_owned())
            .or_insert(Schedule {
                next: now,
                interval,
            });
        s.interval = interval;
        let slot = s.next.max(now + earliest);
        s.next = slot + interval;
        drop(schedules);
        lock(&self.reservations).insert(job, slot);
        slot - now
    }

    /// Jobs holding a reservation now (for tests).
    pub fn reserved(&self) -> usize {
        lock(&self.reservations).len()
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
        job: Uuid,
    ) -> Result<(), RateLimited> {
        self.precheck(phone_number_id, recipient, job)?;
        // A job back for its slot may wait a little longer for the
        // limiter: the broker's timer is not exact, and going to the end
        // of the schedule again would cost it its place.
        let interval = self.interval(max_mps);
        let reserved = lock(&self.reservations).remove(&job).is_some();
        let max_wait = if reserved {
            self.settings.max_wait.max(interval * 4)
        } else {
            self.settings.max_wait
        };
        let pair = pair_key(phone_number_id, recipient);
        let mut waited = Duration::ZERO;
        metrics::gauge!(METRIC_NUMBER_LIMIT, "phone_number_id" => phone_number_id.to_owned())
            .set(1.0 / interval.as_secs_f64());
        let number = self.number_limiter(max_mps);
        let number_key = phone_number_id.to_owned();
        let taken = self
            .take(&number, &number_key, "number", &mut waited, max_wait)
            .await;
        let next = match &taken {
            Ok(()) => interval,
            Err(e) => e.retry_after,
        };
        lock(&self.number_next).insert(number_key.clone(), (Instant::now() + next, interval));
        if let Err(e) = taken {
            // Refused by the number: come back at a slot of the schedule.
            let wait = self.reserve(phone_number_id, interval, e.retry_after, job);
            self.turned_away(&pair, job, wait);
            return Err(limited("number", wait));
        }
        if let Err(e) = self
            .take(
                &self.pairs,
                &pair,
                "pair",
                &mut waited,
                self.settings.max_wait,
            )
            .await
        {
            // Remember the verdict so the next attempts for this recipient
            // are turned away without touching (and wasting) number slots.
            Self::hold(&self.pair_hold, &pair, e.retry_after);
            self.turned_away(&pair, job, e.retry_after);
            return Err(e);
        }
        self.went(&pair, job);
        metrics::counter!(METRIC_NUMBER_SENDS_TOTAL, "phone_number_id" => phone_number_id.to_owned())
            .increment(1);
        Ok(())
    }

    async fn take(
        &self,
        limiter: &Keyed,
        key: &String,
        limit: &'static str,
        waited: &mut Duration,
        max_wait: Duration,
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
                    if *waited + wait > max_wait {
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
        lock(&self.number_next).retain(|_, (until, _)| *until > now);
        lock(&self.schedules).retain(|_, s| s.next > now);
        lock(&self.reservations).retain(|_, slot| *slot + RESERVATION_TTL > now);
        // A line whose first job never came back (finished elsewhere).
        lock(&self.lines).retain(|_, l| l.due + RESERVATION_TTL > now);
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

    fn job() -> Uuid {
        Uuid::now_v7()
    }

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
        assert!(l.acquire("1", 10_000, "a", job()).await.is_ok());
        assert!(l.acquire("1", 10_000, "a", job()).await.is_ok());
        let third = job();
        let e = l
            .acquire("1", 10_000, "a", third)
            .await
            .expect_err("third to a");
        assert_eq!(e.limit, "pair");
        assert!(e.retry_after > Duration::from_secs(1));
        // Back early, it is turned away by the hold, without touching the
        // limiters.
        assert_eq!(
            l.acquire("1", 10_000, "a", third)
                .await
                .expect_err("held")
                .limit,
            "pair_cooldown"
        );
        // A later job for the same recipient waits its turn behind it.
        let fourth = l
            .acquire("1", 10_000, "a", job())
            .await
            .expect_err("behind");
        assert_eq!(fourth.limit, "order");
        assert!(fourth.retry_after > e.retry_after.saturating_sub(Duration::from_millis(100)));
        assert!(l.acquire("1", 10_000, "b", job()).await.is_ok());
    }

    #[tokio::test]
    async fn number_limit_waits_briefly_then_defers() {
        // 50 ms apart at 20/s: with 60 ms of patience the second send waits.
        let l = Limits::new(LimitSettings {
            max_wait: Duration::from_millis(60),
            ..settings()
        });
        let t = Instant::now();
        assert!(l.acquire("1", 20, "a", job()).await.is_ok());
        assert!(l.acquire("1", 20, "b", job()).await.is_ok());
        assert!(t.elapsed() >= Duration::from_millis(40));
        // With 30 ms it defers instead, and says when to come back.
        let l = Limits::new(LimitSettings {
            max_wait: Duration::from_millis(30),
            ..settings()
        });
        assert!(l.acquire("1", 20, "a", job()).await.is_ok());
        let e = l.acquire("1", 20, "b", job()).await.expect_err("deferred");
        assert_eq!(e.limit, "number");
        assert!(e.retry_after <= Duration::from_millis(50));
        // Another number is not affected.
        assert!(l.acquire("2", 20, "b", job()).await.is_ok());
    }

    #[tokio::test]
    async fn cool_downs_expire() {
        let l = Limits::new(settings());
        l.cool_down_number("1");
        let held = job();
        assert_eq!(
            l.acquire("1", 100, "a", held)
                .await
                .expect_err("held")
                .limit,
            "number_cooldown"
        );
        assert!(l.acquire("2", 100, "a", job()).await.is_ok());
        tokio::time::sleep(Duration::from_millis(220)).await;
        assert!(l.acquire("1", 100, "a", held).await.is_ok());
        // Its recipient's line is gone with it: the next job goes at once.
        assert!(l.acquire("1", 100, "a", job()).await.is_ok());
        l.retain_recent();
    }

    /// A burst is paced: jobs refused by the number get slots one interval
    /// apart, new jobs queue behind them, and a job back at its slot sends.
    #[tokio::test]
    async fn a_burst_gets_slots_one_interval_apart() {
        let l = Limits::new(LimitSettings {
            max_wait: Duration::from_millis(30),
            ..settings()
        });
        // 20/s: one send each 50 ms.
        assert!(l.acquire("1", 20, "r0", job()).await.is_ok());
        let jobs: Vec<Uuid> = (0..5).map(|_| job()).collect();
        let mut waits = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            let e = l
                .acquire("1", 20, &format!("r{}", i + 1), *j)
                .await
                .expect_err("deferred");
            assert_eq!(e.limit, "number");
            waits.push(e.retry_after);
        }
        // Each later than the one before by about one interval, not all at
        // the next free slot.
        for w in waits.windows(2) {
            let gap = w[1].saturating_sub(w[0]);
            assert!(
                gap >= Duration::from_millis(40) && gap <= Duration::from_millis(60),
                "{waits:?}"
            );
        }
        assert_eq!(l.reserved(), 5);
        // A new job queues behind them, even before it is claimed.
        let late = job();
        let e = l
            .precheck("1", "r9", late)
            .expect_err("behind the schedule");
        assert!(e.retry_after > waits[4], "{e:?} vs {waits:?}");
        // The first deferred job, back at its slot, sends; its reservation
        // is used up.
        tokio::time::sleep(waits[0]).await;
        assert!(l.acquire("1", 20, "r1", jobs[0]).await.is_ok());
        assert_eq!(l.reserved(), 5, "four deferred plus the late one");
    }
}
