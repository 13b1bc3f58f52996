//! `bench e2e`: the whole system through the broker and ClickHouse. Worker processes (this
//! binary's `run`, or another command such as the TorchServe bridge) form one consumer group on
//! fresh topics; a backlog measures capacity and worker RSS, then an open-loop producer offers
//! fractions of that capacity and the output topic gives end-to-end latency (the input record's
//! timestamp, carried in the `vaxpulse.source_timestamp_ms` header, to the moment the bench
//! reads the result).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde::Serialize;

use super::raw::RawReport;
use super::{fmt_ms, progress, BenchArgs, Percentiles, Table};
use crate::config::Config;
use crate::produce::{produce, Input, ProduceOptions};
use crate::sink::kafka::client_config;

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
                r.output_duplicates.to_string(),
                r.clickhouse_distinct.map_or("–".into(), |n| n.to_string()),
            ]);
        }
        out.push_str(&t.render());
        out.push_str(&format!(
            "\nratios: tweets/s over raw best ({:.0} texts/s, this process, same intra-op threads as one replica).\n\n",
            self.raw_best_texts_per_second
        ));
        out
    }
}

#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) ids: HashSet<String>,
    pub(crate) duplicates: usize,
    /// (received, latency seconds) of results whose key is new.
    latencies: Vec<(Instant, f64)>,
}

/// Reads the output topic from the beginning on its own thread.
pub(crate) struct OutputReader {
    pub(crate) seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutputReader {
    pub(crate) fn start(cfg: &Config, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client_config(
            &cfg.kafka,
            &[
                (
                    "group.id",
                    format!("bench-reader-{}", rand::random::<u32>()),
                ),
                ("auto.offset.reset", "earliest".into()),
                ("enable.auto.commit", "false".into()),
                ("fetch.wait.max.ms", "10".into()),
            ],
        )
        .create()
        .context("cannot create the output reader")?;
        consumer.subscribe(&[topic])?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let now = Instant::now();
                let now_ms = chrono::Utc::now().timestamp_millis();
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let source_ms = m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == "vaxpulse.source_timestamp_ms")
                        .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse::<i64>().ok())
                });
                let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
                if seen.ids.insert(key) {
                    if let Some(src) = source_ms {
                        seen.latencies.push((now, (now_ms - src) as f64 / 1e3));
                    }
                } else {
                    seen.duplicates += 1;
                }
            }
        });
        Ok(OutputReader {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .len()
    }

    /// Waits until `n` distinct results arrived; false on timeout.
    fn wait_for(&self, n: usize, timeout: Duration, bar: &indicatif::ProgressBar) -> bool {
        let started = Instant::now();
        loop {
            let c = self.count();
            bar.set_position(c as u64);
            if c >= n {
                return true;
            }
            if started.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OutputReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Worker processes, their RSS sampled every 200 ms.
struct Workers {
    children: Vec<Child>,
    peak_rss_kib: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

/// SIGTERM: the worker drains, commits and exits (`Child::kill` is SIGKILL).
pub(crate) fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Sends a worker's stdout and stderr to `log`, with `RUST_LOG` (else `default_level`), no stdin.
pub(crate) fn log_to(
    cmd: &mut Command,
    log: &std::path::Path,
    default_level: &str,
) -> std::io::Result<()> {
    let file = std::fs::File::create(log)?;
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or(default_level.into()),
    )
    .stdout(Stdio::from(file.try_clone()?))
    .stderr(Stdio::from(file))
    .stdin(Stdio::null());
    Ok(())
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Workers {
    fn start(
        args: &BenchArgs,
        env: &[(String, String)],
        logs: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        for i in 0..args.replicas {
            let mut cmd = match &args.worker_cmd {
                Some(c) => {
                    let mut cmd = Command::new("sh");
                    cmd.arg("-c").arg(format!("exec {c}"));
                    cmd
                }
                None => {
                    let mut cmd = Command::new(std::env::current_exe()?);
                    cmd.arg("run");
                    cmd
                }
            };
            cmd.envs(env.iter().cloned())
                .env("VAXPULSE_METRICS_LISTEN", "");
            log_to(&mut cmd, &logs.join(format!("worker-{i}.log")), "warn")?;
            children.push(cmd.spawn().context("cannot start a worker process")?);
        }
        let peak_rss_kib = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let pids: Vec<u32> = children.iter().map(Child::id).collect();
        let (peak, st) = (peak_rss_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                for &pid in &pids {
                    if let Some(r) = rss_kib(pid) {
                        let mut p = peak.lock().unwrap_or_else(|p| p.into_inner());
                        *p = (*p).max(r);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Ok(Workers {
            children,
            peak_rss_kib,
            stop,
        })
    }

    /// Peak RSS since the last call, in MiB, and resets it.
    fn take_peak_mib(&self) -> f64 {
        let mut p = self.peak_rss_kib.lock().unwrap_or_else(|p| p.into_inner());
        let v = *p as f64 / 1024.0;
        *p = 0;
        v
    }

    fn any_exited(&mut self) -> bool {
        self.children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// SIGTERM, then up to 30 s for a clean drain, then SIGKILL.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.children.iter().for_each(sigterm);
        let deadline = Instant::now() + Duration::from_secs(30);
        for c in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) struct Names {
    pub(crate) input: String,
    pub(crate) output: String,
    pub(crate) dlq: String,
    pub(crate) group: String,
    pub(crate) database: String,
}

impl Names {
    pub(crate) fn fresh() -> Self {
        let id = format!("{:08x}", rand::random::<u32>());
        Names {
            input: format!("bench-{id}-in"),
            output: format!("bench-{id}-out"),
            dlq: format!("bench-{id}-dlq"),
            group: format!("bench-{id}"),
            database: format!("bench_{id}"),
        }
    }

    pub(crate) fn env(&self, config_path: Option<&std::path::Path>) -> Vec<(String, String)> {
        let mut env = vec![
            ("VAXPULSE_KAFKA_INPUT_TOPIC".to_string(), self.input.clone()),
            ("VAXPULSE_KAFKA_OUTPUT_TOPIC".into(), self.output.clone()),
            ("VAXPULSE_KAFKA_DLQ_TOPIC".into(), self.dlq.clone()),
            ("VAXPULSE_KAFKA_GROUP_ID".into(), self.group.clone()),
            ("VAXPULSE_CLICKHOUSE_DATABASE".into(), self.database.clone()),
        ];
        if let Some(p) = config_path {
            env.push(("VAXPULSE_CONFIG".into(), p.display().to_string()));
        }
        env
    }

    pub(crate) fn config(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        c.kafka.input_topic = self.input.clone();
        c.kafka.output_topic = self.output.clone();
        c.kafka.dlq_topic = self.dlq.clone();
        c.clickhouse.database = self.database.clone();
        c
    }
}

pub(crate) async fn create_topics(
    cfg: &Config,
    names: &Names,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(&cfg.kafka, &[]).create()?;
    let topics: Vec<NewTopic> = [&names.input, &names.output, &names.dlq]
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&topics, &opts).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    Ok(())
}

pub(crate) async fn clickhouse_distinct(cfg: &Config) -> anyhow::Result<u64> {
    let sink =
        crate::sink::clickhouse::ClickHouseSink::new(&cfg.clickhouse, &cfg.clickhouse_password()?);
    Ok(sink
        .client()
        .query(&format!(
            "SELECT uniqExact(tweet_id) FROM {}.classified_tweets",
            cfg.clickhouse.database
        ))
        .fetch_one::<u64>()
        .await?)
}

fn latencies_since(
    reader: &OutputReader,
    since: Instant,
) -> (Vec<f64>, Option<(Instant, Instant)>) {
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

pub async fn run(cfg: &Config, args: &BenchArgs, raw: &RawReport) -> anyhow::Result<E2eReport> {
    let raw_best = raw.best_texts_per_second();
    let logs = PathBuf::from("bench-results/logs");
    std::fs::create_dir_all(&logs)?;
    let mut runs = Vec::new();
    let last = args.backlogs.len().saturating_sub(1);
    for (i, &backlog) in args.backlogs.iter().enumerate() {
        let names = Names::fresh();
        let ncfg = names.config(cfg);
        create_topics(cfg, &names, args.partitions).await?;
        println!(
            "e2e: producing a backlog of {backlog} tweets into {}",
            names.input
        );
        let opts = ProduceOptions {
            topic: names.input.clone(),
            rate: None,
            progress: true,
        };
        let input = Input::Synthetic {
            count: backlog as u64,
            seed: 10 + i as u64,
            days: 5,
        };
        produce(&cfg.kafka, input, &opts).await?;
        let reader = OutputReader::start(cfg, &names.output)?;
        let started = Instant::now();
        let mut workers = Workers::start(args, &names.env(args.config_path.as_deref()), &logs)?;
        let bar = progress(backlog as u64, "results");
        let timeout = Duration::from_secs_f64((backlog as f64 / 20.0).max(300.0));
        let ok = {
            let (reader, bar) = (&reader, bar.clone());
            tokio::task::block_in_place(|| reader.wait_for(backlog, timeout, &bar))
        };
        bar.finish_and_clear();
        if !ok || workers.any_exited() {
            workers.stop();
            anyhow::bail!(
                "only {} of {backlog} results arrived within {timeout:?} (worker logs: {})",
                reader.count(),
                logs.display()
            );
        }
        let (lat, span) = latencies_since(&reader, started);
        let (first, end) = span.expect("results arrived");
        let steady = backlog as f64 / end.duration_since(first).as_secs_f64().max(1e-3);
        let from_start = backlog as f64 / end.duration_since(started).as_secs_f64();
        let capacity = steady;
        let peak = workers.take_peak_mib();
        let ch = if args.worker_cmd.is_none() {
            Some(wait_clickhouse(&ncfg, backlog as u64).await?)
        } else {
            None
        };
        let dup = reader
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .duplicates;
        runs.push(E2eRun {
            name: format!("backlog {backlog}"),
            backlog: Some(backlog),
            offered_per_second: None,
            tweets: backlog,
            tweets_per_second: steady,
            tweets_per_second_from_start: Some(from_start),
            ratio_to_raw: steady / raw_best,
            latency: Percentiles::of(lat),
            peak_worker_rss_mib: Some(peak),
            output_distinct: reader.count(),
            output_duplicates: dup,
            clickhouse_distinct: ch,
        });
        if i != last {
            workers.stop();
            continue;
        }
        let mut total = backlog;
        for (j, &load) in args.loads.iter().enumerate() {
            let rate = capacity * load;
            let n = ((rate * args.paced_seconds) as usize).max(50);
            println!("e2e: {:.0} % load: {n} tweets at {rate:.0}/s", load * 100.0);
            let since = Instant::now();
            let opts = ProduceOptions {
                topic: names.input.clone(),
                rate: Some(rate),
                progress: false,
            };
            let input = Input::Synthetic {
                count: n as u64,
                seed: 100 + j as u64,
                days: 5,
            };
            produce(&cfg.kafka, input, &opts).await?;
            total += n;
            let bar = progress(total as u64, "results");
            let ok = {
                let (reader, bar) = (&reader, bar.clone());
                tokio::task::block_in_place(|| {
                    reader.wait_for(total, Duration::from_secs(300), &bar)
                })
            };
            bar.finish_and_clear();
            anyhow::ensure!(
                ok,
                "paced run at {rate:.0}/s: results missing (worker logs: {})",
                logs.display()
            );
            let (lat, span) = latencies_since(&reader, since);
            let (first, end) = span.expect("results arrived");
            let tps = n as f64 / end.duration_since(first).as_secs_f64().max(1e-3);
            let ch = if args.worker_cmd.is_none() {
                Some(wait_clickhouse(&ncfg, total as u64).await?)
            } else {
                None
            };
            let dup = reader
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .duplicates;
            runs.push(E2eRun {
                name: format!("{:.0} % load", load * 100.0),
                backlog: None,
                offered_per_second: Some(rate),
                tweets: n,
                tweets_per_second: tps,
                tweets_per_second_from_start: None,
                ratio_to_raw: tps / raw_best,
                latency: Percentiles::of(lat),
                peak_worker_rss_mib: Some(workers.take_peak_mib()),
                output_distinct: reader.count(),
                output_duplicates: dup,
                clickhouse_distinct: ch,
            });
        }
        workers.stop();
    }
    Ok(E2eReport {
        system: args.system.clone(),
        replicas: args.replicas,
        partitions: args.partitions,
        raw_best_texts_per_second: raw_best,
        runs,
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
