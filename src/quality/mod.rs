//! Live ground truth: samples of the stream drawn for annotation ([`sample`]), quality per
//! version estimated from the labels with honest intervals ([`report`]), and the promotion
//! gate that rests on them ([`gate`]). Reads what the worker stored and writes only its own
//! tables (`annotation_samples`, `promotion_decisions`); the annotation page that writes
//! `annotations` is `crate::annotate`.

pub mod gate;
pub mod report;
pub mod sample;

use chrono::{Duration, Utc};

use crate::analytics::monitor::{self, Span};
use crate::config::Config;
use crate::sink::clickhouse::ClickHouseSink;

/// The gate's verdict on promoting `candidate` over `champion` (`NAME@VERSION#HASH`), on the
/// labels of the last `quality.window_days` and the monitor's probe and drift status.
pub async fn check_promotion(
    cfg: &Config,
    sink: &ClickHouseSink,
    candidate: &str,
    champion: &str,
) -> anyhow::Result<gate::Verdict> {
    let since = Utc::now() - Duration::days(i64::from(cfg.quality.window_days));
    let report = report::quality(sink, &cfg.quality, since, None, Some(champion)).await?;
    let span = Span {
        daily: false,
        reference_days: cfg.monitor.reference_days,
        pinned: None,
        windows: 24,
    };
    let monitored = monitor::monitor(sink, span)
        .await
        .map_err(|e| format!("{e:#}"));
    Ok(gate::judge(
        &report,
        monitored.as_ref().map_err(Clone::clone),
        candidate,
        champion,
        &cfg.quality,
    ))
}
