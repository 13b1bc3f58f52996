//! The ClickHouse reads behind a report: champion and per-version cells, agreement, flips and
//! probe runs, turned into a [`MonitorReport`]. Each read is bounded to the reference windows
//! and the last [`Span::windows`] windows (a filter on the hour every table's key holds), so a
//! report costs the same after a year as after a week.

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

/// Reads the series per `span`: the champion's and each version's reference and recent
/// windows, the agreement of the recent windows, the flips of the latest, the probe runs.
pub async fn monitor(sink: &ClickHouseSink, span: Span) -> anyhow::Result<MonitorReport> {
    let bucket = if span.daily {
        "toStartOfDay(hour)"
    } else {
        "hour"
    };
    // Per window, label and confidence bin: tweets and the sum of their top probabilities.
    let cell = format!(
        "toString({bucket}) AS window, toString(label) AS label,
         toUInt8(least(floor(arrayMax(mapValues(scores)) * {CONFIDENCE_BINS}), {})) AS bin,
         count() AS tweets, sum(toFloat64(arrayMax(mapValues(scores)))) AS confidence",
        CONFIDENCE_BINS - 1
    );
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
    let in_span = |from: DateTime<Utc>, to: DateTime<Utc>, hour: &str| {
        format!(
            "({hour} >= {} AND {hour} < {}) OR {hour} >= {}",
            sql_time(from),
            sql_time(to),
            sql_time(recent)
        )
    };
    let champion: Vec<Cell> = sink
        .client()
        .query(&format!(
            "SELECT 'champion' AS series, {cell}
             FROM {CHAMPION_LABELS} FINAL WHERE {}
             GROUP BY window, label, bin ORDER BY window, label, bin",
            in_span(ref_from, ref_to, "hour")
        ))
        .fetch_all()
        .await?;
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
    let mut references = BTreeMap::new();
    let mut versions: Vec<Cell> = Vec::new();
    if !spans.is_empty() {
        let hour = "toStartOfHour(created_at)";
        let mut filter = Vec::new();
        for s in &spans {
            let (from, to) = span.reference(at(s.first));
            references.insert(format!("{}#{}", s.model_version, s.model_hash), (from, to));
            filter.push(format!(
                "(model_version = ? AND model_hash = ? AND {hour} >= {} AND {hour} < {})",
                sql_time(from),
                sql_time(to)
            ));
        }
        filter.push(format!("{hour} >= {}", sql_time(recent)));
        // One prediction per tweet and version, whichever role produced it.
        let mut q = sink.client().query(&format!(
            "SELECT concat(model_version, '#', model_hash) AS series, {cell}
             FROM (SELECT model_version, model_hash, tweet_id, {hour} AS hour,
                          any(label) AS label, any(scores) AS scores
                   FROM {PREDICTIONS} FINAL WHERE {}
                   GROUP BY model_version, model_hash, hour, tweet_id)
             GROUP BY series, window, label, bin ORDER BY series, window, label, bin",
            filter.join(" OR ")
        ));
        for s in &spans {
            q = q.bind(&s.model_version).bind(&s.model_hash);
        }
        versions = q.fetch_all().await?;
    }
    let labels: Vec<String> = champion
        .iter()
        .chain(&versions)
        .map(|c| c.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let champion_status = series_status(
        "champion".into(),
        &champion.iter().collect::<Vec<_>>(),
        &labels,
        span.reference_days,
        Some((ref_from, ref_to)),
    );
    anyhow::ensure!(
        champion_status.reference_tweets > 0,
        "the reference {} holds no champion predictions: pin another with --reference-from/--reference-to",
        champion_status.reference
    );
    let mut by_version: BTreeMap<&str, Vec<&Cell>> = BTreeMap::new();
    for c in &versions {
        by_version.entry(c.series.as_str()).or_default().push(c);
    }
    let versions = by_version
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

    let view = if span.daily {
        AGREEMENT_DAILY
    } else {
        AGREEMENT_HOURLY
    };
    let agreement: Vec<AgreementCell> = sink
        .client()
        .query(&format!(
            "SELECT toString(window) AS window, shadow_version, shadow_hash, tweets, agreement, kappa
             FROM (SELECT * FROM {view} WHERE window >= {})
             ORDER BY window, shadow_version, shadow_hash",
            sql_time(recent)
        ))
        .fetch_all()
        .await?;
    let agreement: Vec<AgreementStatus> = agreement
        .into_iter()
        .map(|a| AgreementStatus {
            window: a.window,
            shadow: format!("{}#{}", a.shadow_version, a.shadow_hash),
            tweets: a.tweets,
            agreement: a.agreement,
            kappa: a.kappa,
        })
        .collect();
    let flips: Vec<FlipCell> = match agreement.last().and_then(|a| parse_window(&a.window)) {
        None => Vec::new(),
        Some(from) => {
            let (from, to) = (sql_time(from), sql_time(from + span.window()));
            sink.client()
                .query(&format!(
                    "SELECT concat(s.model_version, '#', s.model_hash) AS shadow,
                            toString(c.label) AS champion_label, toString(s.label) AS shadow_label,
                            count() AS tweets
                     FROM (SELECT hour, tweet_id, label FROM {CHAMPION_LABELS} FINAL) AS c
                     INNER JOIN (SELECT toStartOfHour(created_at) AS hour, tweet_id, model_version,
                                        model_hash, label
                                 FROM {PREDICTIONS} FINAL WHERE role = 'shadow') AS s
                     USING (hour, tweet_id)
                     WHERE hour >= {from} AND hour < {to}
                     GROUP BY shadow, champion_label, shadow_label
                     ORDER BY shadow, champion_label, shadow_label"
                ))
                .fetch_all()
                .await?
        }
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
    Ok(MonitorReport {
        period: if span.daily { "day" } else { "hour" },
        champion: champion_status,
        versions,
        agreement,
        flips: flips
            .into_iter()
            .map(|f| (f.shadow, f.champion_label, f.shadow_label, f.tweets))
            .collect(),
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
