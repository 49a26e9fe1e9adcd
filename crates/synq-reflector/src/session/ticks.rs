//! Time: the session clock, its scale (TICKS), and the idle ticks between messages.

use super::*;

/// The session clock: integer ms since the session started, never decreasing.
#[derive(Debug)]
pub(super) struct Clock {
    start: Instant,
    base: u64,
    scale: f64,
    last: u64,
}

impl Clock {
    pub(super) fn new(base: u64, now: Instant) -> Clock {
        Clock {
            start: now,
            base,
            scale: 1.0,
            last: base,
        }
    }

    pub(super) fn now(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let t = self.base + (elapsed * 1000.0 * self.scale) as u64;
        self.last = self.last.max(t);
        self.last
    }

    /// Unscaled ms since the clock started (for the `rawtime` flag).
    pub(super) fn raw(&self, now: Instant) -> u64 {
        self.base + now.saturating_duration_since(self.start).as_millis() as u64
    }

    pub(super) fn set_scale(&mut self, scale: f64, now: Instant) {
        self.base = self.now(now);
        self.start = now;
        self.scale = scale;
    }
}

/// The idle tick period for a requested one in ms: none for absent, zero, negative or NaN;
/// otherwise clamped to [`min`, `MAX_TICK_MS`] (a huge value once made the conversion to a
/// `Duration` panic and killed the session; a tiny one cost a core for 50 sessions).
pub(super) fn tick_period(ms: Option<f64>, min: Duration) -> Option<Duration> {
    let min_ms = min.as_millis() as f64;
    ms.filter(|t| *t > 0.0)
        .map(|t| Duration::from_millis(t.clamp(min_ms, synq_protocol::MAX_TICK_MS) as u64))
}

/// A client-supplied delay in ms as a `Duration`, clamped to [0, 60 s].
pub(super) fn clamped_ms(ms: Option<f64>) -> Duration {
    let ms = ms.filter(|d| *d > 0.0).unwrap_or(0.0).min(60_000.0);
    Duration::from_millis(ms as u64)
}

impl Session {
    pub(super) fn ticks(&mut self, conn: ConnId, cfg: TickConfig, now: Instant) {
        if !self.is_participant(conn) {
            return;
        }
        if let (Some(d), Some(h)) = (cfg.delay, &mut self.header)
            && d > 0.0
        {
            h.delay_ms = Some(clamped_ms(Some(d)).as_millis() as f64);
        }
        let scale = cfg
            .scale
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(1.0, |s| s.clamp(1.0 / 64.0, 64.0));
        self.clock.set_scale(scale, now);
        if let Some(p) = tick_period(cfg.tick, self.config.min_tick) {
            self.tick = Some(p);
            self.next_tick = Some(now + p);
        }
    }

    pub(super) fn tick(&mut self, now: Instant, audience: bool) {
        let Some(period) = self.tick else {
            self.next_tick = None;
            return;
        };
        self.next_tick = Some(now + period);
        if !audience {
            return;
        }
        let time = self.clock.now(now);
        self.outbox
            .push(Out::Broadcast(Shared::Tick(Utf8Bytes::from(frames::tick(
                &self.id_json,
                time,
            )))));
        Metrics::add(&self.metrics.ticks, 1);
        if time >= self.last_time_record + 1000 {
            self.last_time_record = time;
            self.records.time(time);
        }
    }
}
