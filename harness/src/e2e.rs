//! `vaxpulse-harness bench e2e`: the whole system through the broker and ClickHouse. Worker
//! processes (the `vaxpulse run` binary, or another command such as the TorchServe bridge) form
//! one consumer group on fresh topics; a backlog measures capacity and worker RSS, then an
//! open-loop producer offers fractions of that capacity and the output topic gives end-to-end
//! latency (the input record's timestamp, carried in the `vaxpulse.source_timestamp_ms` header,
//! to the moment the bench reads the result). Ratios are to the raw model measured in this
//! process on the same machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use vaxpulse::bench::raw::RawReport;
use vaxpulse::bench::{fmt_ms, progress, Machine, Paced, Percentiles, RawGrid};
use vaxpulse::config::Config;
use vaxpulse::output::{write_json, Table};
use vaxpulse::produce::{produce, Input, ProduceOptions};

use crate::cpu::{CpuSnapshot, CpuUse};
use crate::fleet::{Fleet, WorkerCmd};
use crate::kit::{clickhouse_distinct, create_topics, Names, TopicReader};

/// Options of `vaxpulse-harness bench e2e` (model, batching and services come from the config).
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub grid: RawGrid,
    #[command(flatten)]
    pub paced: Paced,
    /// Worker processes in the consumer group.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Backlogs (tweets produced before the workers start); peak RSS is reported for each.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub backlogs: Vec<usize>,
    /// Partitions of the bench topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The worker command (run through `sh -c` with the bench's VAXPULSE_* variables);
    /// default: `vaxpulse run`. scripts/bench_torchserve.sh passes its Kafka→HTTP bridge.
    #[arg(long)]
    pub worker_cmd: Option<String>,
    /// Name of the system under test, for the tables.
    #[arg(long, default_value = "vaxpulse")]
    pub system: String,
    /// `linger.ms` of the bench's own producer (the tweets' source), apart from the workers'
    /// result producer (which follows the config): producers outside the system batch as they
    /// like, and a local broker that stores every request in a transaction needs them to.
    #[arg(long)]
    pub feeder_linger_ms: Option<u64>,
    /// Tweets/s the paced loads are fractions of, instead of the capacity the backlog run
    /// measured: A/B runs of two settings then offer the very same rates (a backlog's
    /// throughput moves by 10–20 % between runs on a shared VM).
    #[arg(long)]
    pub capacity: Option<f64>,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results/e2e.json")]
    pub json: PathBuf,
    /// The config file of this process, handed to the workers (set from `--config`).
    #[arg(skip)]
    pub config_path: Option<PathBuf>,
}

/// Everything one e2e bench measured.
#[derive(Debug, Serialize)]
pub struct E2eBench {
    pub machine: Machine,
    pub model: String,
    pub raw: RawReport,
    pub e2e: E2eReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct E2eRun {
    pub name: String,
    pub backlog: Option<usize>,
    pub offered_per_second: Option<f64>,
    pub tweets: usize,
    /// Steady state: tweets between the first and the last result, over that time.
    pub tweets_per_second: f64,
    /// Including worker start-up (model load, group join) for backlog runs.
    pub tweets_per_second_from_start: Option<f64>,
    pub ratio_to_raw: f64,
    pub latency: Option<Percentiles>,
    /// Largest resident set of any worker process during the run.
    pub peak_worker_rss_mib: Option<f64>,
    pub output_distinct: usize,
    pub output_duplicates: usize,
    pub clickhouse_distinct: Option<u64>,
    /// Where the time went inside the workers during this run (their own histograms).
    pub worker: Vec<Stage>,
    /// Cores in use during the run: machine, workers, the bench, the rest (broker, ClickHouse).
    pub cpu: Option<CpuUse>,
}

/// One worker histogram over one run, summed over the replicas.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub what: String,
    pub count: f64,
    pub mean_ms: f64,
    /// Upper bounds of the buckets holding the 50th and 99th percentiles.
    pub p50_le_ms: f64,
    pub p99_le_ms: f64,
}

/// Cumulative buckets (le → count), sum and count of histogram `name` whose label text
/// contains `filter`, summed over series.
#[derive(Debug, Clone, Default)]
struct Hist {
    buckets: std::collections::BTreeMap<u64, f64>,
    sum: f64,
    count: f64,
}

fn parse_hist(text: &str, name: &str, filter: &str) -> Hist {
    let mut h = Hist::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if !series.contains(filter) {
            continue;
        }
        if let Some(rest) = series.strip_prefix(&format!("{name}_bucket{{")) {
            // The exporter writes `le` last; `role="…"` also contains `le="`, so from the right.
            let le = rest
                .rsplit_once("le=\"")
                .and_then(|(_, x)| x.split('"').next())
                .and_then(|x| x.parse::<f64>().ok())
                .unwrap_or(f64::INFINITY);
            // Keyed by nanoseconds-ish so the map orders; +Inf last.
            let key = if le.is_finite() {
                (le * 1e9) as u64
            } else {
                u64::MAX
            };
            *h.buckets.entry(key).or_default() += v;
        } else if series.starts_with(&format!("{name}_sum")) {
            h.sum += v;
        } else if series.starts_with(&format!("{name}_count")) {
            h.count += v;
        }
    }
    h
}

fn stage(what: &str, before: &Hist, after: &Hist, scale_ms: f64) -> Option<Stage> {
    let count = after.count - before.count;
    if count <= 0.0 {
        return None;
    }
    let delta: Vec<(u64, f64)> = after
        .buckets
        .iter()
        .map(|(le, n)| (*le, n - before.buckets.get(le).copied().unwrap_or(0.0)))
        .collect();
    let at = |q: f64| {
        delta
            .iter()
            .find(|(_, n)| *n >= q * count)
            .map_or(f64::INFINITY, |(le, _)| {
                if *le == u64::MAX {
                    f64::INFINITY
                } else {
                    *le as f64 / 1e9 * scale_ms
                }
            })
    };
    Some(Stage {
        what: what.into(),
        count,
        mean_ms: (after.sum - before.sum) / count * scale_ms,
        p50_le_ms: at(0.5),
        p99_le_ms: at(0.99),
    })
}

/// The histograms a latency breakdown needs, scraped from every replica.
fn scrape(ports: &[u16]) -> Vec<(String, Hist)> {
    let texts: Vec<String> = ports
        .iter()
        .filter_map(|p| crate::kit::http_get(*p, "/metrics"))
        .collect();
    let all = texts.join("\n");
    [
        (
            "read → stored by every sink",
            "vaxpulse_tweet_latency_seconds",
            "",
        ),
        (
            "inference per batch",
            "vaxpulse_inference_duration_seconds",
            "role=\"champion\"",
        ),
        (
            "Kafka write per batch",
            "vaxpulse_sink_write_duration_seconds",
            "sink=\"kafka\"",
        ),
        (
            "ClickHouse write per batch",
            "vaxpulse_sink_write_duration_seconds",
            "sink=\"clickhouse\"",
        ),
        (
            "batch size (tweets, not ms)",
            "vaxpulse_batch_size_tweets",
            "",
        ),
    ]
    .into_iter()
    .map(|(what, name, filter)| (what.to_string(), parse_hist(&all, name, filter)))
    .collect()
}

fn stages(before: &[(String, Hist)], after: &[(String, Hist)]) -> Vec<Stage> {
    before
        .iter()
        .zip(after)
        .filter_map(|((what, b), (_, a))| {
            let scale = if what.starts_with("batch size") {
                1e-3
            } else {
                1.0
            };
            stage(what, b, a, 1e3 * scale)
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    pub system: String,
    pub replicas: usize,
    pub partitions: i32,
    pub raw_best_texts_per_second: f64,
    pub runs: Vec<E2eRun>,
}

impl E2eReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "### e2e: {} × {} replica(s), broker + ClickHouse, {} partitions\n\n",
            self.system, self.replicas, self.partitions
        );
        let mut t = Table::new(&[
            "run",
            "tweets",
            "offered/s",
            "tweets/s",
            "× raw best",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "peak RSS MiB",
            "CPU cores: all / workers / bench / rest",
            "dup. in topic",
            "ClickHouse ids",
        ]);
        for r in &self.runs {
            let [p50, p95, p99] = fmt_ms(r.latency);
            t.row(vec![
                r.name.clone(),
                r.tweets.to_string(),
                r.offered_per_second
                    .map_or("backlog".into(), |o| format!("{o:.0}")),
                match r.tweets_per_second_from_start {
                    Some(s) => format!("{:.0} ({:.0} from start)", r.tweets_per_second, s),
                    None => format!("{:.0}", r.tweets_per_second),
                },
                format!("{:.2}", r.ratio_to_raw),
                p50,
                p95,
                p99,
                r.peak_worker_rss_mib
                    .map_or("–".into(), |m| format!("{m:.0}")),
                r.cpu.map_or("–".into(), |c| {
                    format!(
                        "{:.2} / {:.2} / {:.2} / {:.2}",
                        c.machine, c.workers, c.bench, c.other
                    )
                }),
                r.output_duplicates.to_string(),
                r.clickhouse_distinct.map_or("–".into(), |n| n.to_string()),
            ]);
        }
        out.push_str(&t.render());
        for r in self.runs.iter().filter(|r| !r.worker.is_empty()) {
            let mut t = Table::new(&["stage", "count", "mean ms", "p50 ≤ ms", "p99 ≤ ms"]);
            for s in &r.worker {
                t.row(vec![
                    s.what.clone(),
                    format!("{:.0}", s.count),
                    format!("{:.1}", s.mean_ms),
                    format!("{}", s.p50_le_ms),
                    format!("{}", s.p99_le_ms),
                ]);
            }
            out.push_str(&format!(
                "\nwhere the time went inside the workers, {} (their histograms; percentiles are bucket bounds):\n\n{}",
                r.name,
                t.render()
            ));
        }
        if let Some(c) = self.runs.iter().find_map(|r| r.cpu) {
            out.push_str(&format!(
                "\nCPU: busy cores of the machine's {} over each run (/proc): the workers, this bench (producer, reader), and the rest (broker, ClickHouse, anything else).\n",
                c.cores
            ));
        }
        out.push_str(&format!(
            "\nratios: tweets/s over raw best ({:.0} texts/s, this process, same intra-op threads as one replica).\n\n",
            self.raw_best_texts_per_second
        ));
        out
    }
}

fn latencies_since(reader: &TopicReader, since: Instant) -> (Vec<f64>, Option<(Instant, Instant)>) {
    let seen = reader.seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = Vec::new();
    let mut span: Option<(Instant, Instant)> = None;
    for &(at, l) in &seen.latencies {
        if at >= since {
            lat.push(l);
            span = Some(match span {
                None => (at, at),
                Some((a, b)) => (a.min(at), b.max(at)),
            });
        }
    }
    (lat, span)
}

pub async fn run(cfg: &Config, args: &E2eArgs, raw: &RawReport) -> anyhow::Result<E2eReport> {
    let raw_best = raw.best_texts_per_second();
    let logs = PathBuf::from("bench-results/logs");
    std::fs::create_dir_all(&logs)?;
    let mut runs = Vec::new();
    let last = args.backlogs.len().saturating_sub(1);
    let mut feeder = cfg.kafka.clone();
    if let Some(ms) = args.feeder_linger_ms {
        feeder.properties.insert("linger.ms".into(), ms.to_string());
    }
    for (i, &backlog) in args.backlogs.iter().enumerate() {
        let names = Names::fresh("bench");
        let ncfg = names.apply(cfg);
        // A foreign worker command (the TorchServe bridge) does not write ClickHouse.
        let clickhouse_cfg = args.worker_cmd.is_none().then_some(&ncfg);
        create_topics(&cfg.kafka, &names, args.partitions).await?;
        println!(
            "e2e: producing a backlog of {backlog} tweets into {}",
            names.input
        );
        let opts = ProduceOptions {
            progress: true,
            ..ProduceOptions::to(names.input.clone())
        };
        let input = Input::Synthetic {
            count: backlog as u64,
            seed: 10 + i as u64,
            days: 5,
        };
        produce(&feeder, input, &opts).await?;
        let reader = TopicReader::start(&cfg.kafka, &names.output)?;
        let started = Instant::now();
        let cmd = match &args.worker_cmd {
            Some(c) => WorkerCmd::Shell(c.clone()),
            None => WorkerCmd::vaxpulse()?,
        };
        let port_base = crate::kit::free_port();
        let ports: Vec<u16> = (0..args.replicas).map(|s| port_base + s as u16).collect();
        let mut workers = Fleet::new(
            cmd,
            names.env(args.config_path.as_deref()),
            &logs,
            Some(port_base),
        )?;
        for slot in 0..args.replicas {
            workers.spawn(slot)?;
        }
        let cpu_start = CpuSnapshot::take(&workers.pids());
        let bar = progress(backlog as u64, "results");
        // Base-sized models on a few cores run at a handful of tweets per second.
        let timeout = Duration::from_secs_f64((backlog as f64 / 2.0).max(300.0));
        let ok = {
            let (reader, bar) = (&reader, bar.clone());
            tokio::task::block_in_place(|| {
                reader.wait_for(backlog, timeout, |n| bar.set_position(n as u64))
            })
        };
        bar.finish_and_clear();
        let cpu = CpuSnapshot::take(&workers.pids()).since(&cpu_start);
        if !ok || workers.exited().is_some() {
            workers.stop_all(Duration::from_secs(30));
            anyhow::bail!(
                "only {} of {backlog} results arrived within {timeout:?} (worker logs: {})",
                reader.count(),
                logs.display()
            );
        }
        let o = observe(&reader, started, backlog, clickhouse_cfg).await?;
        let from_start = backlog as f64 / o.end.duration_since(started).as_secs_f64();
        let capacity = args.capacity.unwrap_or(o.tweets_per_second);
        runs.push(E2eRun {
            worker: Vec::new(),
            cpu,
            name: format!("backlog {backlog}"),
            backlog: Some(backlog),
            offered_per_second: None,
            tweets: backlog,
            tweets_per_second: o.tweets_per_second,
            tweets_per_second_from_start: Some(from_start),
            ratio_to_raw: o.tweets_per_second / raw_best,
            latency: o.latency,
            peak_worker_rss_mib: Some(workers.take_peak_mib()),
            output_distinct: reader.count(),
            output_duplicates: o.duplicates,
            clickhouse_distinct: o.clickhouse,
        });
        if i != last {
            workers.stop_all(Duration::from_secs(30));
            continue;
        }
        let mut total = backlog;
        for (j, &load) in args.paced.loads.iter().enumerate() {
            let rate = capacity * load;
            let n = ((rate * args.paced.paced_seconds) as usize).max(50);
            println!("e2e: {:.0} % load: {n} tweets at {rate:.0}/s", load * 100.0);
            let since = Instant::now();
            let before = scrape(&ports);
            let cpu_before = CpuSnapshot::take(&workers.pids());
            let opts = ProduceOptions {
                rate: Some(rate),
                ..ProduceOptions::to(names.input.clone())
            };
            let input = Input::Synthetic {
                count: n as u64,
                seed: 100 + j as u64,
                days: 5,
            };
            produce(&feeder, input, &opts).await?;
            total += n;
            let bar = progress(total as u64, "results");
            let ok = {
                let (reader, bar) = (&reader, bar.clone());
                tokio::task::block_in_place(|| {
                    reader.wait_for(total, Duration::from_secs(300), |n| {
                        bar.set_position(n as u64)
                    })
                })
            };
            bar.finish_and_clear();
            let cpu = CpuSnapshot::take(&workers.pids()).since(&cpu_before);
            anyhow::ensure!(
                ok,
                "paced run at {rate:.0}/s: results missing (worker logs: {})",
                logs.display()
            );
            let o = observe(&reader, since, n, clickhouse_cfg).await?;
            let worker = stages(&before, &scrape(&ports));
            runs.push(E2eRun {
                worker,
                cpu,
                name: match args.capacity {
                    Some(c) => format!("{:.0} % of {c:.0}/s", load * 100.0),
                    None => format!("{:.0} % load", load * 100.0),
                },
                backlog: None,
                offered_per_second: Some(rate),
                tweets: n,
                tweets_per_second: o.tweets_per_second,
                tweets_per_second_from_start: None,
                ratio_to_raw: o.tweets_per_second / raw_best,
                latency: o.latency,
                peak_worker_rss_mib: Some(workers.take_peak_mib()),
                output_distinct: reader.count(),
                output_duplicates: o.duplicates,
                clickhouse_distinct: o.clickhouse,
            });
        }
        workers.stop_all(Duration::from_secs(30));
    }
    Ok(E2eReport {
        system: args.system.clone(),
        replicas: args.replicas,
        partitions: args.partitions,
        raw_best_texts_per_second: raw_best,
        runs,
    })
}

/// What the results read since a run started show.
struct Observed {
    /// When the last result arrived.
    end: Instant,
    /// Results between the first and the last one, over that time.
    tweets_per_second: f64,
    latency: Option<Percentiles>,
    /// Distinct ids in ClickHouse, once it holds every result so far (`None`: not asked).
    clickhouse: Option<u64>,
    duplicates: usize,
}

async fn observe(
    reader: &TopicReader,
    since: Instant,
    tweets: usize,
    clickhouse: Option<&Config>,
) -> anyhow::Result<Observed> {
    let (lat, span) = latencies_since(reader, since);
    let (first, end) = span.expect("results arrived");
    let total = reader.count() as u64;
    let clickhouse = match clickhouse {
        Some(cfg) => Some(wait_clickhouse(cfg, total).await?),
        None => None,
    };
    let duplicates = reader
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .duplicates;
    Ok(Observed {
        end,
        tweets_per_second: tweets as f64 / end.duration_since(first).as_secs_f64().max(1e-3),
        latency: Percentiles::of(lat),
        clickhouse,
        duplicates,
    })
}

/// ClickHouse distinct ids, once it reached `expected` (inserts are acknowledged before the
/// output topic is read, but the bench may look first), or after 30 s whatever it holds.
async fn wait_clickhouse(cfg: &Config, expected: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = clickhouse_distinct(cfg).await?;
        if n >= expected || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Measures raw in this process, then the e2e runs; prints the tables and writes the JSON.
pub async fn bench(cfg: Config, args: E2eArgs) -> anyhow::Result<E2eBench> {
    let machine = Machine::detect(&cfg);
    let manifest = vaxpulse::model::Manifest::load(&cfg.model.dir)?;
    println!(
        "## vaxpulse-harness bench e2e: {} on {}\n",
        manifest.model_version(),
        machine.describe()
    );
    let (cfg2, grid) = (cfg.clone(), args.grid.clone());
    let raw =
        tokio::task::spawn_blocking(move || vaxpulse::bench::raw::run(&cfg2, &grid)).await??;
    print!("{}", raw.render());
    let e2e = run(&cfg, &args, &raw).await?;
    print!("{}", e2e.render());
    let out = E2eBench {
        machine,
        model: manifest.model_version(),
        raw,
        e2e,
    };
    write_json(&args.json, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape holding the champion's inference histogram (cumulative `(le, count)` buckets)
    /// beside a shadow's, which the filter must leave out.
    fn scrape_text(champion: &[(&str, u64)], sum: f64, count: u64) -> String {
        let name = "vaxpulse_inference_duration_seconds";
        let mut out = format!("# TYPE {name} histogram\n");
        let series = [
            (
                "model=\"demo@1\",role=\"champion\"",
                champion.to_vec(),
                sum,
                count,
            ),
            (
                "model=\"demo@2\",role=\"shadow\"",
                vec![("0.004", 0), ("0.008", 0), ("0.016", 9), ("+Inf", 9)],
                0.1,
                9,
            ),
        ];
        for (labels, buckets, sum, count) in series {
            for (le, n) in buckets {
                out.push_str(&format!("{name}_bucket{{{labels},le=\"{le}\"}} {n}\n"));
            }
            out.push_str(&format!("{name}_sum{{{labels}}} {sum}\n"));
            out.push_str(&format!("{name}_count{{{labels}}} {count}\n"));
        }
        out
    }

    #[test]
    fn a_stage_is_the_difference_of_two_scrapes_of_one_series() {
        let name = "vaxpulse_inference_duration_seconds";
        let filter = "role=\"champion\"";
        let before = scrape_text(
            &[("0.004", 0), ("0.008", 1), ("0.016", 1), ("+Inf", 1)],
            0.006,
            1,
        );
        let after = scrape_text(
            &[("0.004", 60), ("0.008", 99), ("0.016", 101), ("+Inf", 101)],
            0.506,
            101,
        );
        let s = stage(
            "inference",
            &parse_hist(&before, name, filter),
            &parse_hist(&after, name, filter),
            1e3,
        )
        .expect("100 new batches");
        assert_eq!(s.count, 100.0);
        assert!((s.mean_ms - 5.0).abs() < 1e-9, "{s:?}");
        // 60 of 100 within 4 ms, 98 within 8 ms, all within 16 ms.
        assert_eq!(s.p50_le_ms, 4.0);
        assert_eq!(s.p99_le_ms, 16.0);
    }
}
