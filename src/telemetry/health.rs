//! Health: readiness (consuming, sinks writing, the group's deployment served), liveness (the
//! pipeline moves), and the HTTP endpoints `/metrics`, `/health/live`, `/health/ready`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;

/// Readiness as seen by `/health/ready`: consuming, no sink failed for good, and no sink write
/// currently failing (a ClickHouse or broker outage turns the replica not-ready until the
/// retried write goes through).
#[derive(Default)]
pub struct Health {
    pub consuming: AtomicBool,
    pub sinks_ok: AtomicBool,
    failing_writes: std::sync::atomic::AtomicUsize,
    /// Why the group's newest deployment is not served here (this replica serves an older one
    /// or `model.dir`); cleared when a deployment is applied.
    deployment_refused: Mutex<Option<String>>,
    /// What `/health/live` judges: work pending, and when the pipeline last moved.
    liveness: Mutex<Liveness>,
}

/// Whether the pipeline moves. Wedged: work pending, nothing finished and no sink write being
/// retried for `wedged_after` — a retried write is a dependency down (readiness says so, and a
/// restart would not help), not a wedge.
#[derive(Debug, Clone, Copy, Default)]
pub struct Liveness {
    pub pending: usize,
    pub finished: u64,
    pub last_progress: Option<std::time::Instant>,
    /// Zero: never wedged (`pipeline.wedged_after_ms = 0`).
    pub wedged_after: Duration,
}

impl Liveness {
    /// Records what the consumer sees at `now`: `pending` messages in flight, `finished` so far.
    pub fn observe(&mut self, pending: usize, finished: u64, now: std::time::Instant) {
        if finished != self.finished || pending == 0 || self.last_progress.is_none() {
            self.last_progress = Some(now);
        }
        self.pending = pending;
        self.finished = finished;
    }

    /// How long the pipeline has been stuck at `now`, when it is wedged.
    pub fn wedged(&self, now: std::time::Instant, writes_retrying: bool) -> Option<Duration> {
        let since = now.saturating_duration_since(self.last_progress?);
        (!self.wedged_after.is_zero()
            && self.pending > 0
            && !writes_retrying
            && since >= self.wedged_after)
            .then_some(since)
    }
}

impl Health {
    pub fn ready(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
            && self.sinks_ok.load(Ordering::Relaxed)
            && self.failing_writes.load(Ordering::Relaxed) == 0
            && self.refused().is_none()
    }

    /// Judges the replica wedged once nothing moved for `after` while work was pending.
    pub fn set_wedged_after(&self, after: Duration) {
        self.liveness_mut().wedged_after = after;
    }

    /// Called by the consumer thread each round: messages in flight and finished so far.
    pub fn observe_pipeline(&self, pending: usize, finished: u64) {
        self.liveness_mut()
            .observe(pending, finished, std::time::Instant::now());
    }

    fn liveness_mut(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(why)` when the pipeline is wedged (`/health/live` answers 503: restart it).
    pub fn live(&self) -> Result<(), String> {
        let retrying = self.failing_writes.load(Ordering::Relaxed) > 0;
        let l = *self.liveness_mut();
        match l.wedged(std::time::Instant::now(), retrying) {
            Some(since) => Err(format!(
                "wedged: {} messages pending and none finished for {} s (pipeline.wedged_after_ms)",
                l.pending,
                since.as_secs()
            )),
            None => Ok(()),
        }
    }

    /// Marks the replica not ready because the group's deployment could not be served
    /// (`Some(reason)`), or clears that.
    pub fn set_deployment_refused(&self, reason: Option<String>) {
        *self
            .deployment_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    fn refused(&self) -> Option<String> {
        self.deployment_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The body of `/health/ready`: `ready`, or why not.
    pub fn describe(&self) -> String {
        if self.ready() {
            return "ready".into();
        }
        match self.refused() {
            Some(r) => format!("not ready: the group's deployment is not served here: {r}"),
            None => "not ready".into(),
        }
    }

    /// Marks one sink write as failing until the returned guard is dropped (when it succeeds or
    /// gives up).
    pub fn write_failing(&self) -> FailingWrite<'_> {
        self.failing_writes.fetch_add(1, Ordering::Relaxed);
        FailingWrite(self)
    }
}

/// See [`Health::write_failing`].
pub struct FailingWrite<'a>(&'a Health);

impl Drop for FailingWrite<'_> {
    fn drop(&mut self) {
        self.0.failing_writes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `/metrics`, `/health/live`, `/health/ready` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let addr = listener.local_addr()?;
    let scraped = health.clone();
    let alive = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                // Readiness as a metric too, read at scrape time: dashboards count ready
                // replicas and alerts fire on a replica not ready for minutes.
                gauge!("vaxpulse_ready").set(f64::from(u8::from(scraped.ready())));
                let memory = crate::alloc::memory();
                if let Some(b) = memory.resident {
                    gauge!("vaxpulse_memory_resident_bytes").set(b as f64);
                }
                if let Some(b) = memory.allocated {
                    gauge!("vaxpulse_memory_allocated_bytes").set(b as f64);
                }
                let text = metrics.render();
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .route(
            "/health/live",
            get(move || {
                let live = alive.live();
                async move {
                    match live {
                        Ok(()) => (StatusCode::OK, "ok".to_string()),
                        Err(why) => {
                            tracing::error!(
                                "{why}; /health/live fails so that the replica is restarted"
                            );
                            (StatusCode::SERVICE_UNAVAILABLE, why)
                        }
                    }
                }
            }),
        )
        .route(
            "/health/ready",
            get(move || {
                let (ready, body) = (health.ready(), health.describe());
                async move {
                    if ready {
                        (StatusCode::OK, body)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, body)
                    }
                }
            }),
        );
    tracing::info!(%addr, "metrics and health endpoints listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_pipeline_is_wedged_only_when_work_waits_and_nothing_moves() {
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let mut l = Liveness {
            wedged_after: 5 * min,
            ..Liveness::default()
        };
        l.observe(10, 0, t0);
        assert_eq!(l.wedged(t0 + 4 * min, false), None);
        assert_eq!(l.wedged(t0 + 6 * min, false), Some(6 * min));
        assert_eq!(
            l.wedged(t0 + 6 * min, true),
            None,
            "a retried write is an outage, not a wedge"
        );
        l.observe(10, 3, t0 + 6 * min);
        assert_eq!(l.wedged(t0 + 10 * min, false), None, "something finished");
        l.observe(0, 3, t0 + 20 * min);
        assert_eq!(
            l.wedged(t0 + 40 * min, false),
            None,
            "nothing pending: idle"
        );
        l.wedged_after = Duration::ZERO;
        l.observe(5, 3, t0 + 41 * min);
        assert_eq!(l.wedged(t0 + 99 * min, false), None, "disabled");
    }
}
