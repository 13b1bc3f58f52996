//! `vaxpulse-harness bench analytics`: what analysts' and the worker's queries cost as the
//! history grows. Fills a fresh database, through the real schema (`ingest` and its views),
//! with a synthetic history built server-side (`INSERT … SELECT FROM numbers()`): champion
//! predictions over several months, a promotion in the middle, one shadow on the last quarter,
//! a share of deleted tweets. Then times each query (median of 3) and reports the rows and
//! bytes it read (from ClickHouse's `X-ClickHouse-Summary`, machine-independent: for a
//! time-bounded query it must not grow with the history).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use vaxpulse::config::Config;
use vaxpulse::output::Table;
use vaxpulse::sink::clickhouse::ClickHouseSink;

#[derive(Args, Debug, Clone)]
pub struct AnalyticsArgs {
    /// History sizes in predictions (champion + shadow rows), e.g. `1M,10M`.
    #[arg(long, value_delimiter = ',', default_value = "100k,1M")]
    pub predictions: Vec<String>,
    /// Months of `created_at` the history spans.
    #[arg(long, default_value_t = 6)]
    pub months: u32,
    /// Share of tweets deleted by their authors (their ids in `deleted_tweets`).
    #[arg(long, default_value_t = 0.01)]
    pub deleted_share: f64,
    /// Deleted ids remembered when the 64-tweet insert is timed (one measure per count).
    #[arg(long, value_delimiter = ',', default_value = "0,1M,10M")]
    pub deleted_ids: Vec<String>,
    /// Keep the databases (named in the output) instead of dropping them.
    #[arg(long)]
    pub keep: bool,
    /// Also time the queries of the layout before per-hour champion labels (its views,
    /// verbatim, over the same `predictions` and `tweets`): the "before" of the same run; one
    /// run each (they scan the history).
    #[arg(long)]
    pub baseline: bool,
    #[arg(long, default_value = "bench-results/analytics.json")]
    pub json: std::path::PathBuf,
}

/// One query at one history size.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub predictions: u64,
    pub query: String,
    pub median_ms: f64,
    pub read_rows: u64,
    pub read_bytes: u64,
    /// `read_rows` over the rows of `predictions` (1.0 = a full scan of the history).
    pub read_share: f64,
}

fn parse_count(s: &str) -> anyhow::Result<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1_000),
        Some('m') => (&s[..s.len() - 1], 1_000_000),
        Some('g') | Some('b') => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s.as_str(), 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("`{s}`: a count such as 100k, 1M or 10M"))?;
    Ok((n * mult as f64) as u64)
}

/// POSTs `sql` to ClickHouse's HTTP interface and waits for the end of the query; the body and
/// the summary's (read_rows, read_bytes).
fn post(url: &str, sql: &str) -> anyhow::Result<(String, u64, u64)> {
    let hostport = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = std::net::TcpStream::connect(&hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(1800)))?;
    write!(
        s,
        "POST /?wait_end_of_query=1 HTTP/1.0\r\nHost: {hostport}\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "ClickHouse refused `{}`: {}",
        sql.chars().take(120).collect::<String>(),
        body.chars().take(600).collect::<String>()
    );
    let summary = head
        .lines()
        .find_map(|l| l.strip_prefix("X-ClickHouse-Summary: "))
        .unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(summary).unwrap_or_default();
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str().and_then(|s| s.parse().ok()).or(x.as_u64()))
            .unwrap_or(0)
    };
    Ok((body.to_string(), num("read_rows"), num("read_bytes")))
}

/// Fills `db` with `n` predictions; returns the newest `created_at` (the history's "now").
fn fill(url: &str, db: &str, n: u64, months: u32) -> anyhow::Result<String> {
    // 4 of 5 predictions are the champion's (one per tweet), the last quarter of the tweets
    // also has a shadow's.
    let tweets = n * 4 / 5;
    let span = i64::from(months) * 30 * 86_400;
    let start = "toDateTime64('2026-01-01 00:00:00', 3, 'UTC')";
    let half = tweets / 2;
    let row = |role: &str, version: &str| {
        format!(
            "SELECT toString(number) AS tweet_id,
                    {start} + toIntervalSecond(intDiv(number * {span}, {tweets})) AS created_at,
                    'fr' AS lang, concat('tweet ', toString(number)) AS text,
                    toInt32(number % 4) AS source_partition, toInt64(number) AS source_offset,
                    {version} AS model_version, 'aaaaaaaaaaaa' AS model_hash, '{role}' AS role,
                    if(number < {half}, 1, 2) AS deployment_epoch,
                    arrayElement(['against', 'neutral', 'favour'], number % 3 + 1) AS label,
                    map('against', 0.2, 'neutral', 0.3, 'favour', 0.5) AS scores,
                    created_at + toIntervalSecond(1) AS classified_at, 0 AS deleted"
        )
    };
    // Tweets `[from, tweets)` as `role` rows, in inserts of at most a million rows.
    let insert = |from: u64, role: &str, version: &str| -> anyhow::Result<()> {
        let mut from = from;
        while from < tweets {
            let count = 1_000_000u64.min(tweets - from);
            let rows = row(role, version);
            post(
                url,
                &format!("INSERT INTO {db}.ingest {rows} FROM numbers({from}, {count})"),
            )?;
            from += count;
        }
        Ok(())
    };
    insert(
        0,
        "champion",
        &format!("if(number < {half}, 'demo@1', 'demo@2')"),
    )?;
    insert(
        tweets * 3 / 4,
        "shadow",
        &format!("if(number < {half}, 'demo@2', 'demo@1')"),
    )?;
    let (now, _, _) = post(
        url,
        &format!("SELECT max(created_at) FROM {db}.predictions FORMAT TSV"),
    )?;
    Ok(now.trim().to_string())
}

/// The earlier layout's reads, verbatim over the same tables: its `champion_predictions` view
/// grouped every champion prediction by tweet before anything could filter on the hour, and its
/// `tweets_mv` filtered each insert with `NOT IN (SELECT tweet_id FROM deleted_tweets)`.
fn baseline_queries(db: &str, now: &str) -> Vec<(&'static str, String)> {
    let now = format!("toDateTime64('{now}', 3, 'UTC')");
    let champion = format!(
        "(SELECT tweet_id, first_created AS created_at,
                 tupleElement(first_champion, 1) AS label, tupleElement(first_champion, 2) AS model_version,
                 tupleElement(first_champion, 4) AS scores
          FROM (SELECT tweet_id, min(created_at) AS first_created,
                       argMin((label, model_version, model_hash, scores, deployment_epoch),
                              (classified_at, model_version, model_hash)) AS first_champion
                FROM {db}.predictions WHERE role = 'champion' GROUP BY tweet_id))"
    );
    let hourly = format!(
        "(SELECT toStartOfHour(created_at) AS hour, label, count() AS tweets FROM {champion} GROUP BY hour, label)"
    );
    vec![
        (
            "champion series, last 24 h (hourly)",
            format!("SELECT hour, label, tweets FROM {hourly} WHERE hour >= {now} - INTERVAL 24 HOUR ORDER BY hour, label"),
        ),
        (
            "champion series, last 30 days (daily)",
            format!("SELECT toStartOfDay(hour) AS day, label, sum(tweets) FROM {hourly} WHERE hour >= {now} - INTERVAL 30 DAY GROUP BY day, label ORDER BY day, label"),
        ),
        (
            "champion–shadow agreement, last 30 days (daily)",
            format!("SELECT toStartOfDay(c.created_at) AS window, s.model_version, count(), avg(c.label = s.label)
                     FROM {champion} AS c
                     INNER JOIN (SELECT tweet_id, model_version, label FROM {db}.predictions FINAL WHERE role = 'shadow') AS s
                     USING (tweet_id) GROUP BY window, s.model_version HAVING window >= {now} - INTERVAL 30 DAY"),
        ),
        (
            "one tweet by id (classified_tweets, id only)",
            format!("SELECT t.tweet_id, c.label FROM (SELECT tweet_id, any(text) AS text FROM {db}.tweets GROUP BY tweet_id) AS t
                     INNER JOIN {champion} AS c USING (tweet_id) WHERE tweet_id = '12345'"),
        ),
        (
            "monitor (champion cells, every window)",
            format!("SELECT toStartOfDay(created_at) AS window, label, toUInt8(least(floor(arrayMax(mapValues(scores)) * 10), 9)) AS bin, count()
                     FROM {champion} GROUP BY window, label, bin"),
        ),
        (
            "insert filter (64 ids NOT IN deleted_tweets)",
            format!("SELECT count() FROM numbers(64) WHERE concat('new-', toString(number)) NOT IN (SELECT tweet_id FROM {db}.deleted_tweets)"),
        ),
    ]
}

/// Deletes `share` of the `tweets` tweets of [`fill`] as the worker does (their ids remembered,
/// tombstones on their tweets), server-side.
fn delete_share(url: &str, db: &str, tweets: u64, share: f64) -> anyhow::Result<()> {
    let every = ((1.0 / share.max(1e-9)).round() as u64).max(1);
    post(
        url,
        &format!(
            "INSERT INTO {db}.deleted_tweets SELECT toString(number * {every}), now64(3) FROM numbers(intDiv({tweets}, {every}))"
        ),
    )?;
    post(
        url,
        &format!(
            "INSERT INTO {db}.tweets (tweet_id, created_at, stored_at, is_deleted)
             SELECT tweet_id, hour, now64(3), 1 FROM {db}.tweet_hours
             WHERE tweet_id IN (SELECT tweet_id FROM {db}.deleted_tweets)"
        ),
    )?;
    Ok(())
}

/// The queries an analyst runs in SQL, each bounded in time the way its chart is.
fn queries(db: &str, now: &str) -> Vec<(&'static str, String)> {
    let now = format!("toDateTime64('{now}', 3, 'UTC')");
    vec![
        (
            "champion series, last 24 h (hourly)",
            format!("SELECT hour, label, tweets FROM {db}.champion_hourly WHERE hour >= {now} - INTERVAL 24 HOUR ORDER BY hour, label"),
        ),
        (
            "champion series, last 30 days (daily)",
            format!("SELECT toStartOfDay(hour) AS day, label, sum(tweets) FROM {db}.champion_hourly WHERE hour >= {now} - INTERVAL 30 DAY GROUP BY day, label ORDER BY day, label"),
        ),
        (
            "per-version opinion, last 24 h",
            format!("SELECT hour, model_version, label, tweets FROM {db}.opinion_hourly_counts WHERE hour >= {now} - INTERVAL 24 HOUR ORDER BY hour"),
        ),
        (
            "per-version aggregates, whole history",
            format!("SELECT model_version, label, sum(tweets) FROM {db}.opinion_hourly_counts GROUP BY model_version, label ORDER BY model_version, label"),
        ),
        (
            "stability per version, last 30 days (daily)",
            format!("SELECT day, model_version, predictions, mean_confidence FROM {db}.model_daily_stats WHERE day >= {now} - INTERVAL 30 DAY ORDER BY day"),
        ),
        (
            "champion–shadow agreement, last 30 days (daily)",
            format!("SELECT window, shadow_version, tweets, agreement, kappa FROM {db}.champion_shadow_agreement_daily WHERE window >= {now} - INTERVAL 30 DAY ORDER BY window"),
        ),
        (
            "one tweet by id (classified_tweets, hour from tweet_hours)",
            format!("SELECT tweet_id, label, model_version FROM {db}.classified_tweets WHERE hour IN (SELECT hour FROM {db}.tweet_hours WHERE tweet_id = '12345') AND tweet_id = '12345'"),
        ),
        (
            "one tweet by id (classified_tweets, id only)",
            format!("SELECT tweet_id, label, model_version FROM {db}.classified_tweets WHERE tweet_id = '12345'"),
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The server's running totals of rows and bytes read by queries (`system.events`): what a
/// code path that is not one HTTP request (the worker's insert, `monitor`) read is the
/// difference, less what reading the totals costs.
fn selected(url: &str) -> anyhow::Result<(u64, u64)> {
    let (body, _, _) = post(
        url,
        "SELECT sumIf(value, event = 'SelectedRows'), sumIf(value, event = 'SelectedBytes') FROM system.events FORMAT TSV",
    )?;
    let mut it = body
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

/// Times `op` three times (median) and reads what its last run read from the server's totals.
async fn measure<F, Fut>(url: &str, op: F) -> anyhow::Result<(f64, u64, u64)>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    measure_runs(url, 3, op).await
}

/// [`measure`] with `runs` runs.
async fn measure_runs<F, Fut>(url: &str, runs: u64, mut op: F) -> anyhow::Result<(f64, u64, u64)>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // What reading the totals itself reads.
    let (a, b) = selected(url)?;
    let (c, d) = selected(url)?;
    let (own_rows, own_bytes) = (c - a, d - b);
    let mut times = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    for k in 0..runs {
        let (r0, b0) = selected(url)?;
        let t = Instant::now();
        op(k).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let (r1, b1) = selected(url)?;
        rows = (r1 - r0).saturating_sub(own_rows);
        bytes = (b1 - b0).saturating_sub(own_bytes);
    }
    Ok((median(times), rows, bytes))
}

/// 64 new champion results at the history's newest time, as the worker stores them.
fn batch(
    k: u64,
    deleted: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> vaxpulse::work::ClassifiedBatch {
    use vaxpulse::work::{Classification, ClassifiedBatch, Role};
    let rows = (0..64)
        .map(|i| Classification {
            tweet_id: format!("new-{deleted}-{k}-{i}"),
            created_at: now,
            lang: "fr".into(),
            text: format!("nouveau tweet {i} sur la vaccination"),
            label: "neutral".into(),
            scores: [("neutral".to_string(), serde_json::Value::from(1.0))]
                .into_iter()
                .collect(),
            model_version: "demo@2".into(),
            model_hash: "aaaaaaaaaaaa".into(),
            role: Role::Champion,
            deployment_epoch: 2,
            classified_at: now,
            source_partition: 0,
            source_offset: i,
            source_timestamp_ms: None,
        })
        .collect();
    ClassifiedBatch {
        rows,
        deleted: Vec::new(),
        acks: Vec::new(),
        received: Vec::new(),
    }
}

pub async fn bench(cfg: Config, args: AnalyticsArgs) -> anyhow::Result<()> {
    use vaxpulse::analytics::monitor::{monitor, Span};
    let url = cfg.clickhouse.url.clone();
    let sizes: Vec<u64> = args
        .predictions
        .iter()
        .map(|s| parse_count(s))
        .collect::<anyhow::Result<_>>()?;
    let deleted_sizes: Vec<u64> = args
        .deleted_ids
        .iter()
        .map(|s| parse_count(s))
        .collect::<anyhow::Result<_>>()?;
    let mut all = Vec::new();
    for &n in &sizes {
        let mut c = cfg.clone();
        c.clickhouse.database = format!("bench_analytics_{}_{n}", std::process::id());
        let db = c.clickhouse.database.clone();
        let sink = ClickHouseSink::from_config(&c)?;
        sink.apply_schema().await?;
        let started = Instant::now();
        let now = {
            let (u, d) = (url.clone(), db.clone());
            let months = args.months;
            tokio::task::spawn_blocking(move || fill(&u, &d, n, months)).await??
        };
        let (rows, _, _) = post(
            &url,
            &format!("SELECT count() FROM {db}.predictions FORMAT TSV"),
        )?;
        let total: u64 = rows.trim().parse().unwrap_or(n);
        println!(
            "analytics bench: {db}: {total} predictions over {} months, filled in {:.1} s (newest {now})",
            args.months,
            started.elapsed().as_secs_f64()
        );
        let mut record = |query: String, (ms, rows, bytes): (f64, u64, u64)| {
            all.push(Measured {
                predictions: total,
                query,
                median_ms: ms,
                read_rows: rows,
                read_bytes: bytes,
                read_share: rows as f64 / total.max(1) as f64,
            })
        };
        let newest = chrono::NaiveDateTime::parse_from_str(&now, "%Y-%m-%d %H:%M:%S%.3f")
            .map(|t| t.and_utc())
            .unwrap_or_else(|_| chrono::Utc::now());
        // The insert path, as the worker runs it (screening, insert, the check after it), with
        // this many deleted ids remembered; none first, then the history's own deletions.
        // The insert path, as the worker runs it (screening, insert, the check after it), with
        // `want` deleted ids remembered: the same table refilled for each count, merged, and
        // the server otherwise idle, so the counts compare alike. Median of 5.
        let insert = |want: u64| {
            let (sink, url, db) = (&sink, url.clone(), db.clone());
            async move {
                post(&url, &format!("TRUNCATE TABLE {db}.deleted_tweets"))?;
                if want > 0 {
                    post(
                        &url,
                        &format!(
                            "INSERT INTO {db}.deleted_tweets SELECT concat('gone-', toString(number)), now64(3) FROM numbers({want})"
                        ),
                    )?;
                    post(&url, &format!("OPTIMIZE TABLE {db}.deleted_tweets FINAL"))?;
                }
                let m = measure_runs(&url, 5, |k| {
                    let b = batch(k, want, newest);
                    async move {
                        sink.insert(&b).await?;
                        Ok(())
                    }
                })
                .await?;
                anyhow::Ok((format!("insert 64 tweets ({want} deleted ids)"), m))
            }
        };
        delete_share(&url, &db, total * 4 / 5, args.deleted_share)?;
        if args.baseline {
            for (name, sql) in baseline_queries(&db, &now) {
                let m = measure_runs(&url, 1, |_| {
                    let (u, q) = (url.clone(), sql.clone());
                    async move { post(&u, &q).map(|_| ()) }
                })
                .await?;
                record(format!("before: {name}"), m);
            }
        }
        for (name, sql) in queries(&db, &now) {
            let m = measure(&url, |_| {
                let (u, q) = (url.clone(), sql.clone());
                async move { post(&u, &q).map(|_| ()) }
            })
            .await?;
            record(name.into(), m);
        }
        let since = newest - chrono::Duration::days(30);
        let m = measure(&url, |_| async {
            vaxpulse::analytics::report::opinion(&sink, false, None, Some(since)).await?;
            Ok(())
        })
        .await?;
        record("report --since (30 days, daily)".into(), m);
        let chart = std::env::temp_dir().join(format!("bench-opinion-{}.svg", std::process::id()));
        let m = measure(&url, |_| async {
            let o = vaxpulse::analytics::report::opinion(&sink, false, None, Some(since)).await?;
            vaxpulse::analytics::chart::opinion(&o, &chart)
        })
        .await?;
        record("report --since --chart (30 days)".into(), m);
        let m = measure(&url, |_| async {
            vaxpulse::analytics::report::opinion(&sink, false, None, None).await?;
            Ok(())
        })
        .await?;
        record("report (whole history, daily)".into(), m);
        // The rollup of the whole history, one run (what the first refresh after an upgrade, or
        // on a new database with history, costs); then the history counts as written long
        // ago: `touched_hours` is emptied, as its TTL and the watermark leave it in a running
        // deployment, and each refresh below finds only the hours the inserts touched.
        let m = measure_runs(&url, 1, |k| {
            let (sink, url, db) = (&sink, url.clone(), db.clone());
            async move {
                if k > 0 {
                    // Each run starts from no rollup at all.
                    post(&url, &format!("TRUNCATE TABLE {db}.monitor_rollups"))?;
                }
                vaxpulse::analytics::monitor::rollup::refresh(sink).await?;
                Ok(())
            }
        })
        .await?;
        record("monitor rollup, whole history (first refresh)".into(), m);
        post(&url, &format!("TRUNCATE TABLE {db}.touched_hours"))?;
        sink.insert(&batch(99, 0, newest)).await?;
        let m = measure(&url, |_| async {
            vaxpulse::analytics::monitor::rollup::refresh(&sink).await?;
            Ok(())
        })
        .await?;
        record("monitor rollup refresh after a 64-tweet insert".into(), m);
        for (label, daily, windows) in [
            ("monitor (hourly, 48 h)", false, 48),
            ("monitor --daily (30 days)", true, 30),
            ("drift-gauge refresh (latest hour)", false, 1),
        ] {
            let span = Span {
                daily,
                reference_days: 1,
                pinned: None,
                windows,
            };
            let m = measure(&url, |_| async {
                monitor(&sink, span).await?;
                Ok(())
            })
            .await?;
            record(label.into(), m);
        }
        for &want in &deleted_sizes {
            let (name, m) = insert(want).await?;
            record(name, m);
        }
        if !args.keep {
            post(&url, &format!("DROP DATABASE IF EXISTS {db}"))?;
        }
    }
    let mut t = Table::new(&[
        "predictions",
        "query",
        "median ms",
        "rows read",
        "MiB read",
        "rows read / predictions",
    ]);
    for m in &all {
        t.row(vec![
            m.predictions.to_string(),
            m.query.clone(),
            format!("{:.1}", m.median_ms),
            m.read_rows.to_string(),
            format!("{:.1}", m.read_bytes as f64 / (1 << 20) as f64),
            format!("{:.4}", m.read_share),
        ]);
    }
    println!("\n{}", t.render());
    // How each query's cost grows with the history: the ratio between the largest and the
    // smallest size (1.0 = independent of history).
    if sizes.len() > 1 {
        let (lo, hi) = (all[0].predictions, all[all.len() - 1].predictions);
        let mut g = Table::new(&["query", "history ×", "time ×", "rows read ×"]);
        for m in all.iter().filter(|m| m.predictions == lo) {
            if let Some(h) = all
                .iter()
                .find(|x| x.predictions == hi && x.query == m.query)
            {
                g.row(vec![
                    m.query.clone(),
                    format!("{:.1}", hi as f64 / lo as f64),
                    format!("{:.2}", h.median_ms / m.median_ms.max(1e-3)),
                    format!("{:.2}", h.read_rows as f64 / m.read_rows.max(1) as f64),
                ]);
            }
        }
        println!("{}", g.render());
    }
    // The insert with the most deleted ids against the one with the fewest, at each size.
    for &n in &sizes {
        let inserts: Vec<&Measured> = all
            .iter()
            .filter(|m| m.query.starts_with("insert") && m.predictions.abs_diff(n) <= n / 10)
            .collect();
        if let (Some(first), Some(last)) = (inserts.first(), inserts.last()) {
            if inserts.len() > 1 {
                println!(
                    "{} predictions: insert latency with {} vs {}: {:.2}×",
                    last.predictions,
                    last.query,
                    first.query,
                    last.median_ms / first.median_ms.max(1e-3)
                );
            }
        }
    }
    vaxpulse::output::write_json(&args.json, &all)?;
    Ok(())
}
