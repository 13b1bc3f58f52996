//! The ClickHouse reads behind a report: champion and per-version cells, agreement, flips and
//! probe runs — from the hourly rollup ([`rollup`]) — turned into a [`MonitorReport`]. Each read
//! is bounded to the reference windows and the last [`Span::windows`] windows (a filter on the
//! hour the rollup's key starts with), so a report costs the same after a year as after a week.

use super::*;

/// What a report covers.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Daily windows (else hourly).
    pub daily: bool,
    /// Reference = the first N days of each series, unless `pinned`.
    pub reference_days: u32,
    /// Pinned reference `[from, to)`.
    pub pinned: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Windows reported, ending with the newest (at least 1).
    pub windows: u32,
}

/// `SELECT min(hour), max(hour)` answered from the parts' min/max indices, not the rows.
#[derive(Row, Deserialize)]
struct Extent {
    first: u32,
    last: u32,
}

#[derive(Row, Deserialize)]
struct SpanRow {
    model_version: String,
    model_hash: String,
    first: u32,
}

fn at(secs: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(secs), 0).unwrap_or_default()
}

fn sql_time(t: DateTime<Utc>) -> String {
    format!("toDateTime('{}', 'UTC')", t.format("%Y-%m-%d %H:%M:%S"))
}

impl Span {
    fn window_start(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::{DurationRound, TimeDelta};
        let unit = if self.daily {
            TimeDelta::days(1)
        } else {
            TimeDelta::hours(1)
        };
        t.duration_trunc(unit).unwrap_or(t)
    }

    fn window(&self) -> chrono::Duration {
        if self.daily {
            chrono::Duration::days(1)
        } else {
            chrono::Duration::hours(1)
        }
    }

    /// The reference of a series whose first prediction is in hour `first`.
    fn reference(&self, first: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        self.pinned.unwrap_or_else(|| {
            let from = self.window_start(first);
            (
                from,
                from + chrono::Duration::days(i64::from(self.reference_days)),
            )
        })
    }

    /// Start of the oldest reported window, given the newest hour.
    fn recent_from(&self, newest: DateTime<Utc>) -> DateTime<Utc> {
        self.window_start(newest) - self.window() * (self.windows.max(1) as i32 - 1)
    }
}

/// `vaxpulse monitor`: refreshes the hourly rollup (the hours written since the last refresh
/// are recomputed; a read-only user reads it as the worker group last left it), then [`read`]s
/// it.
pub async fn monitor(sink: &ClickHouseSink, span: Span) -> anyhow::Result<MonitorReport> {
    if let Err(e) = rollup::refresh(sink).await {
        let readonly = e.to_string().contains("READONLY") || e.to_string().contains("Code: 164");
        if !readonly {
            return Err(e.context("refreshing the monitor's hourly rollup"));
        }
        tracing::warn!(error = %e, "read-only: the monitor's rollup is read as the worker group last refreshed it");
    }
    read(sink, span).await
}

/// Reads the series per `span` from the hourly rollup as it stands: the champion's and each
/// version's reference and recent windows, the agreement of the recent windows, the flips of the
/// latest, the probe runs.
pub async fn read(sink: &ClickHouseSink, span: Span) -> anyhow::Result<MonitorReport> {
    let extent: Extent = sink
        .client()
        .query(&format!(
            "SELECT toUInt32(min(hour)) AS first, toUInt32(max(hour)) AS last FROM {CHAMPION_LABELS}"
        ))
        .fetch_one()
        .await?;
    // An empty table's max is the epoch.
    anyhow::ensure!(
        extent.last > 0,
        "no champion predictions in database {} yet: nothing to monitor",
        sink.database()
    );
    let recent = span.recent_from(at(extent.last));
    let (ref_from, ref_to) = span.reference(at(extent.first));
    // Each version against its own first days: where each starts comes from `model_spans`.
    let spans: Vec<SpanRow> = sink
        .client()
        .query(&format!(
            "SELECT toString(model_version) AS model_version, toString(model_hash) AS model_hash,
                    toUInt32(toStartOfHour(min(first_created))) AS first
             FROM {MODEL_SPANS} GROUP BY model_version, model_hash ORDER BY model_version, model_hash"
        ))
        .fetch_all()
        .await?;
    let range = |(from, to): (DateTime<Utc>, DateTime<Utc>)| {
        format!("hour >= {} AND hour < {}", sql_time(from), sql_time(to))
    };
    let mut references = BTreeMap::new();
    let mut filter = vec![
        format!("(kind = 'champion' AND {})", range((ref_from, ref_to))),
        format!("(kind = 'input' AND {})", range((ref_from, ref_to))),
        format!("hour >= {}", sql_time(recent)),
    ];
    for s in &spans {
        let series = format!("{}#{}", s.model_version, s.model_hash);
        let r = span.reference(at(s.first));
        filter.push(format!(
            "(kind = 'version' AND series = ? AND {})",
            range(r)
        ));
        references.insert(series, r);
    }
    let mut q = sink.client().query(&format!(
        "SELECT toUInt32(hour) AS hour, toString(kind) AS kind, series, cells
         FROM {MONITOR_HOURLY} FINAL WHERE {} ORDER BY hour, kind, series",
        filter.join(" OR ")
    ));
    for s in references.keys() {
        q = q.bind(s);
    }
    let stored: Vec<rollup::Stored> = q.fetch_all().await?;
    let window_of = |hour: u32| {
        span.window_start(at(hour))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    // Label cells of the champion and of each version, summed over the hours of a window.
    let mut cells: BTreeMap<(String, String, String, u8), (u64, f64)> = BTreeMap::new();
    // Agreement pairs of each shadow, per window.
    let mut pairs: BTreeMap<(String, String), BTreeMap<(String, String), u64>> = BTreeMap::new();
    // Text descriptor buckets: (descriptor → bucket → tweets) of the reference and per window.
    let mut input_ref: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut input: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for row in &stored {
        let window = window_of(row.hour);
        for (key, (tweets, confidence)) in &row.cells {
            let (a, b) = key.split_once('|').unwrap_or((key.as_str(), ""));
            match row.kind.as_str() {
                "input" => {
                    let t = at(row.hour);
                    if t >= ref_from && t < ref_to {
                        *input_ref
                            .entry(a.into())
                            .or_default()
                            .entry(b.into())
                            .or_default() += tweets;
                    }
                    if t >= recent {
                        *input
                            .entry((window.clone(), a.into()))
                            .or_default()
                            .entry(b.into())
                            .or_default() += tweets;
                    }
                }
                "pairs" => {
                    if at(row.hour) >= recent {
                        *pairs
                            .entry((window.clone(), row.series.clone()))
                            .or_default()
                            .entry((a.to_string(), b.to_string()))
                            .or_default() += tweets;
                    }
                }
                kind => {
                    let series = if kind == "champion" {
                        "champion".to_string()
                    } else {
                        row.series.clone()
                    };
                    let bin = b.parse().unwrap_or(0);
                    let c = cells
                        .entry((series, window.clone(), a.to_string(), bin))
                        .or_default();
                    c.0 += tweets;
                    c.1 += confidence;
                }
            }
        }
    }
    let all: Vec<Cell> = cells
        .into_iter()
        .map(
            |((series, window, label, bin), (tweets, confidence))| Cell {
                series,
                window,
                label,
                bin,
                tweets,
                confidence,
            },
        )
        .collect();
    let labels: Vec<String> = all
        .iter()
        .map(|c| c.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut by_series: BTreeMap<&str, Vec<&Cell>> = BTreeMap::new();
    for c in &all {
        by_series.entry(c.series.as_str()).or_default().push(c);
    }
    let champion_status = series_status(
        "champion".into(),
        by_series.remove("champion").as_deref().unwrap_or(&[]),
        &labels,
        span.reference_days,
        Some((ref_from, ref_to)),
    );
    anyhow::ensure!(
        champion_status.reference_tweets > 0,
        "the reference {} holds no champion predictions: pin another with --reference-from/--reference-to",
        champion_status.reference
    );
    let versions = by_series
        .into_iter()
        .map(|(s, cells)| {
            series_status(
                s.to_string(),
                &cells,
                &labels,
                span.reference_days,
                references.get(s).copied(),
            )
        })
        .collect();
    let agreement: Vec<AgreementStatus> = pairs
        .iter()
        .map(|((window, shadow), m)| agreement_of(window, shadow, m))
        .collect();
    let flips = match agreement.last() {
        None => Vec::new(),
        Some(last) => pairs
            .iter()
            .filter(|((w, _), _)| *w == last.window)
            .flat_map(|((_, shadow), m)| {
                m.iter()
                    .map(move |((c, s), n)| (shadow.clone(), c.clone(), s.clone(), *n))
            })
            .collect(),
    };
    let probes: Vec<ProbeCell> = sink
        .client()
        .query(&format!(
            "SELECT toString(max(at)) AS last_at, concat(model_version, '#', model_hash) AS model,
                    toString(device) AS device, uniqExact(replica) AS replicas,
                    max(greatest(max_deviation, max_deviation_previous)) AS max_deviation,
                    max(flagged) AS flagged
             FROM {PROBE_RUNS} WHERE at >= now() - INTERVAL {PROBE_WINDOW_HOURS} HOUR
             GROUP BY model, device ORDER BY model, device"
        ))
        .fetch_all()
        .await?;
    let input = input
        .iter()
        .map(|((window, descriptor), actual)| {
            let reference = input_ref.get(descriptor).cloned().unwrap_or_default();
            let buckets: BTreeSet<&String> = reference.keys().chain(actual.keys()).collect();
            let count = |m: &BTreeMap<String, u64>| -> Vec<u64> {
                buckets
                    .iter()
                    .map(|b| m.get(*b).copied().unwrap_or(0))
                    .collect()
            };
            let v = psi(&count(&reference), &count(actual));
            InputDrift {
                window: window.clone(),
                descriptor: descriptor.clone(),
                psi: v,
                level: level(v),
            }
        })
        .collect();
    Ok(MonitorReport {
        input,
        period: if span.daily { "day" } else { "hour" },
        champion: champion_status,
        versions,
        agreement,
        flips,
        probes: probes
            .into_iter()
            .map(|p| ProbeStatus {
                at: p.last_at,
                model: p.model,
                device: p.device,
                replicas: p.replicas,
                max_deviation: p.max_deviation,
                flagged: p.flagged != 0,
            })
            .collect(),
    })
}

/// Agreement and Cohen's kappa of one shadow in one window from its (champion label, shadow
/// label) counts — what the `champion_shadow_agreement_*` views compute from the rows.
fn agreement_of(
    window: &str,
    shadow: &str,
    pairs: &BTreeMap<(String, String), u64>,
) -> AgreementStatus {
    let tweets: u64 = pairs.values().sum();
    let n = tweets.max(1) as f64;
    let same: u64 = pairs
        .iter()
        .filter(|((c, s), _)| c == s)
        .map(|(_, k)| k)
        .sum();
    let mut champion: BTreeMap<&str, u64> = BTreeMap::new();
    let mut shadow_side: BTreeMap<&str, u64> = BTreeMap::new();
    for ((c, s), k) in pairs {
        *champion.entry(c).or_default() += k;
        *shadow_side.entry(s).or_default() += k;
    }
    let chance: f64 = champion
        .iter()
        .map(|(l, k)| (*k as f64 / n) * (shadow_side.get(l).copied().unwrap_or(0) as f64 / n))
        .sum();
    let agreement = same as f64 / n;
    let kappa = if chance < 1.0 {
        (agreement - chance) / (1.0 - chance)
    } else {
        1.0
    };
    AgreementStatus {
        window: window.to_string(),
        shadow: shadow.to_string(),
        tweets,
        agreement,
        kappa,
    }
}
