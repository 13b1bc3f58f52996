//! The ClickHouse reads behind a report: champion and per-version cells, agreement, flips and
//! probe runs, turned into a [`MonitorReport`].

use super::*;

/// Reads the series per `day` (else hour) window; each reference is `[from, to)` when pinned,
/// else the first `reference_days` days of that series.
pub async fn monitor(
    sink: &ClickHouseSink,
    day: bool,
    reference_days: u32,
    pinned: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> anyhow::Result<MonitorReport> {
    let bucket = if day {
        "toStartOfDay(created_at)"
    } else {
        "toStartOfHour(created_at)"
    };
    // Per window, label and confidence bin: tweets and the sum of their top probabilities.
    let cell = format!(
        "toString({bucket}) AS window, toString(label) AS label,
         toUInt8(least(floor(arrayMax(mapValues(scores)) * {CONFIDENCE_BINS}), {})) AS bin,
         count() AS tweets, sum(toFloat64(arrayMax(mapValues(scores)))) AS confidence",
        CONFIDENCE_BINS - 1
    );
    let champion: Vec<Cell> = sink
        .client()
        .query(&format!(
            "SELECT 'champion' AS series, {cell}
             FROM {CHAMPION_PREDICTIONS} GROUP BY window, label, bin ORDER BY window, label, bin"
        ))
        .fetch_all()
        .await?;
    anyhow::ensure!(
        !champion.is_empty(),
        "no champion predictions in database {} yet: nothing to monitor",
        sink.database()
    );
    // One prediction per tweet and version, whichever role produced it.
    let versions: Vec<Cell> = sink
        .client()
        .query(&format!(
            "SELECT concat(model_version, '#', model_hash) AS series, {cell}
             FROM (SELECT model_version, model_hash, tweet_id, any(created_at) AS created_at,
                          any(label) AS label, any(scores) AS scores
                   FROM {PREDICTIONS} GROUP BY model_version, model_hash, tweet_id)
             GROUP BY series, window, label, bin ORDER BY series, window, label, bin"
        ))
        .fetch_all()
        .await?;
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
        reference_days,
        pinned,
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
        .map(|(s, cells)| series_status(s.to_string(), &cells, &labels, reference_days, pinned))
        .collect();

    let view = if day {
        AGREEMENT_DAILY
    } else {
        AGREEMENT_HOURLY
    };
    let agreement: Vec<AgreementCell> = sink
        .client()
        .query(&format!(
            "SELECT toString(window) AS window, shadow_version, shadow_hash, tweets, agreement, kappa
             FROM {view} ORDER BY window, shadow_version, shadow_hash"
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
    let flips: Vec<FlipCell> = match agreement.last() {
        None => Vec::new(),
        Some(last) => {
            sink.client()
                .query(&format!(
                    "SELECT concat(s.model_version, '#', s.model_hash) AS shadow,
                            toString(c.label) AS champion_label, toString(s.label) AS shadow_label,
                            count() AS tweets
                     FROM {CHAMPION_PREDICTIONS} AS c
                     INNER JOIN (SELECT tweet_id, model_version, model_hash, label
                                 FROM {PREDICTIONS} FINAL WHERE role = 'shadow') AS s
                     USING (tweet_id)
                     WHERE toString({}) = ?
                     GROUP BY shadow, champion_label, shadow_label
                     ORDER BY shadow, champion_label, shadow_label",
                    bucket.replace("created_at", "c.created_at"),
                ))
                .bind(&last.window)
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
        period: if day { "day" } else { "hour" },
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
