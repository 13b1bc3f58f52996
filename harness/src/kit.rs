//! The test kit shared by `tests/` and the harness: service addresses (env, loopback defaults),
//! fresh random names per test or run, topics, producing, reading topics back, committed
//! offsets, and ClickHouse counts. Every caller gets its own topics, group and database, so
//! tests and runs never see each other's data.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;
use vaxpulse::config::{Config, KafkaConfig};
use vaxpulse::kafka::{client_config, TopicSpec};
use vaxpulse::produce::{produce, Input, ProduceOptions};
use vaxpulse::sink::clickhouse::ClickHouseSink;

/// `VAXPULSE_KAFKA_BROKERS`, default the local broker of `scripts/services.sh`.
pub fn brokers() -> String {
    std::env::var("VAXPULSE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// `VAXPULSE_CLICKHOUSE_URL`, default the local ClickHouse of `scripts/services.sh`.
pub fn clickhouse_url() -> String {
    std::env::var("VAXPULSE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// `prefix_` + 8 random hex digits.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// The repository root (models, scripts, config).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// One test's or run's topics, group and database.
#[derive(Debug, Clone)]
pub struct Names {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub control: String,
    pub group: String,
    pub database: String,
}

impl Names {
    pub fn fresh(prefix: &str) -> Self {
        let id = unique(prefix);
        Names {
            input: format!("{id}.raw"),
            output: format!("{id}.classified"),
            dlq: format!("{id}.dlq"),
            control: format!("{id}.control"),
            group: format!("{id}-group"),
            database: id,
        }
    }

    /// `cfg` with these names.
    pub fn apply(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        c.kafka.input_topic = self.input.clone();
        c.kafka.output_topic = self.output.clone();
        c.kafka.dlq_topic = self.dlq.clone();
        c.kafka.control_topic = self.control.clone();
        c.kafka.group_id = self.group.clone();
        c.clickhouse.database = self.database.clone();
        c
    }

    /// The environment that points a worker process at these names (on top of `config_path`).
    pub fn env(&self, config_path: Option<&Path>) -> Vec<(String, String)> {
        let mut env = vec![
            ("VAXPULSE_KAFKA_INPUT_TOPIC".to_string(), self.input.clone()),
            ("VAXPULSE_KAFKA_OUTPUT_TOPIC".into(), self.output.clone()),
            ("VAXPULSE_KAFKA_DLQ_TOPIC".into(), self.dlq.clone()),
            ("VAXPULSE_KAFKA_CONTROL_TOPIC".into(), self.control.clone()),
            ("VAXPULSE_KAFKA_GROUP_ID".into(), self.group.clone()),
            ("VAXPULSE_CLICKHOUSE_DATABASE".into(), self.database.clone()),
        ];
        if let Some(p) = config_path {
            env.push(("VAXPULSE_CONFIG".into(), p.display().to_string()));
        }
        env
    }

    /// A worker config for tests: these names, the services from the environment, the demo
    /// model on one CPU thread, metrics off, short timings; `extra` is TOML appended.
    pub fn test_config(&self, extra: &str) -> Config {
        let toml = format!(
            r#"
[kafka]
brokers = "{}"
group_id = "{}"
input_topic = "{}"
output_topic = "{}"
dlq_topic = "{}"
control_topic = "{}"
fetch_wait_max_ms = 10
commit_interval_ms = 200
[clickhouse]
url = "{}"
database = "{}"
[model]
dir = "{}/models/demo/1"
device = "cpu"
intra_op_threads = 1
[metrics]
listen = ""
{extra}
"#,
            brokers(),
            self.group,
            self.input,
            self.output,
            self.dlq,
            self.control,
            clickhouse_url(),
            self.database,
            repo_root().display(),
        );
        Config::from_toml_with_env(&toml, "test", std::iter::empty()).expect("test config is valid")
    }

    /// [`Self::test_config`] serving from the model store `store`, starting on `demo/1`.
    pub fn store_config(&self, store: &Path) -> Config {
        let mut cfg = self.test_config("");
        cfg.model.store_dir = store.to_path_buf();
        cfg.model.dir = store.join("demo/1");
        cfg
    }

    /// Environment for a worker process of the tests: [`Self::test_config`]'s settings.
    pub fn test_env(&self) -> Vec<(String, String)> {
        let mut env = self.env(None);
        env.extend(
            [
                ("VAXPULSE_KAFKA_BROKERS", brokers()),
                ("VAXPULSE_KAFKA_FETCH_WAIT_MAX_MS", "10".into()),
                ("VAXPULSE_KAFKA_COMMIT_INTERVAL_MS", "200".into()),
                ("VAXPULSE_CLICKHOUSE_URL", clickhouse_url()),
                (
                    "VAXPULSE_MODEL_DIR",
                    repo_root().join("models/demo/1").display().to_string(),
                ),
                ("VAXPULSE_MODEL_DEVICE", "cpu".into()),
                ("VAXPULSE_MODEL_INTRA_OP_THREADS", "1".into()),
                (
                    "VAXPULSE_MONITOR_PROBE_FILE",
                    repo_root()
                        .join("data/probe_fr.jsonl")
                        .display()
                        .to_string(),
                ),
                ("VAXPULSE_METRICS_LISTEN", String::new()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    }
}

/// A model store under `root` holding copies of the demo model as `demo/VERSION` for each of
/// `versions` (same weights, published as distinct versions), and `demo/V` for each of
/// `corrupt` whose weights do not match its manifest. Returns `root`.
pub fn demo_store(root: &Path, versions: &[&str], corrupt: &[&str]) -> PathBuf {
    let demo = repo_root().join("models/demo/1");
    for v in versions.iter().chain(corrupt) {
        let dir = root.join("demo").join(v);
        std::fs::create_dir_all(&dir).expect("model store writable");
        for f in ["model.pt", "tokenizer.json", "parity.json"] {
            std::fs::copy(demo.join(f), dir.join(f)).expect("demo model readable");
        }
        let m = std::fs::read_to_string(demo.join("manifest.json"))
            .expect("demo manifest readable")
            .replace("\"version\": \"1\"", &format!("\"version\": \"{v}\""));
        std::fs::write(dir.join("manifest.json"), m).expect("model store writable");
    }
    for v in corrupt {
        std::fs::write(
            root.join("demo").join(v).join("model.pt"),
            b"truncated upload",
        )
        .expect("model store writable");
    }
    root.to_path_buf()
}

/// Largest input message the harness produces (hostile 2 MB payloads and some room).
pub const MAX_INPUT_MESSAGE_BYTES: usize = 4 << 20;

/// Creates `topic` with `partitions` and topic-level `configs` (e.g. `max.message.bytes`).
pub async fn create_topic(
    cfg: &KafkaConfig,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let spec = configs
        .iter()
        .fold(TopicSpec::new(topic, partitions), |t, (k, v)| t.with(k, v));
    vaxpulse::kafka::create_topics(cfg, &[spec]).await?;
    Ok(())
}

/// Creates the worker's topics of `names` (input messages up to [`MAX_INPUT_MESSAGE_BYTES`],
/// the control topic one compacted partition, as `vaxpulse topics` makes it).
pub async fn create_topics(
    cfg: &KafkaConfig,
    names: &Names,
    partitions: i32,
) -> anyhow::Result<()> {
    let mut k = cfg.clone();
    k.input_topic = names.input.clone();
    k.output_topic = names.output.clone();
    k.dlq_topic = names.dlq.clone();
    k.control_topic = names.control.clone();
    k.shadow_topic = String::new();
    let max = MAX_INPUT_MESSAGE_BYTES.to_string();
    let topics: Vec<TopicSpec> = vaxpulse::kafka::worker_topics(&k, partitions)
        .into_iter()
        .map(|t| {
            if t.name == names.input {
                t.with("max.message.bytes", &max)
            } else {
                t
            }
        })
        .collect();
    vaxpulse::kafka::create_topics(cfg, &topics).await?;
    Ok(())
}

/// Produces keyed messages (as fast as the broker takes them, or at `rate` per second), riding
/// out a broker restart: 5 min per message and 30 resends. A resent message may be stored
/// twice; the checks count distinct keys.
pub async fn produce_keyed(
    cfg: &KafkaConfig,
    topic: &str,
    messages: Vec<(String, Vec<u8>)>,
    rate: Option<f64>,
) -> anyhow::Result<u64> {
    let opts = ProduceOptions {
        rate,
        message_timeout_ms: 300_000,
        resends: 30,
        max_message_bytes: MAX_INPUT_MESSAGE_BYTES,
        ..ProduceOptions::to(topic)
    };
    let input = Input::Messages(messages.into_iter().map(|(k, p)| (Some(k), p)).collect());
    produce(cfg, input, &opts).await
}

/// Produces unkeyed payloads as fast as possible (to `partition` when given), with the local
/// broker's defaults.
pub async fn produce_payloads(
    topic: &str,
    partition: Option<i32>,
    payloads: &[Vec<u8>],
) -> anyhow::Result<u64> {
    let cfg = KafkaConfig {
        brokers: brokers(),
        ..Default::default()
    };
    let opts = ProduceOptions {
        max_message_bytes: 10_000_000,
        partition,
        ..ProduceOptions::to(topic)
    };
    let input = Input::Messages(payloads.iter().map(|p| (None, p.clone())).collect());
    produce(&cfg, input, &opts).await
}

/// What a [`TopicReader`] saw.
#[derive(Default)]
pub struct Seen {
    pub ids: HashSet<String>,
    /// Messages whose key was already seen.
    pub duplicates: usize,
    /// (when read, seconds since the `vaxpulse.source_timestamp_ms` header) of new keys.
    pub latencies: Vec<(Instant, f64)>,
}

/// Reads a topic from the beginning on its own thread, counting distinct keys.
pub struct TopicReader {
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TopicReader {
    pub fn start(cfg: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client_config(
            cfg,
            &[
                ("group.id", unique("reader")),
                ("auto.offset.reset", "earliest".into()),
                ("enable.auto.commit", "false".into()),
                ("fetch.wait.max.ms", "10".into()),
            ],
        )
        .create()
        .context("cannot create a topic reader")?;
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
        Ok(TopicReader {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Distinct keys read so far.
    pub fn count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .len()
    }

    /// Waits until `n` distinct keys arrived (calling `tick` with the count); false on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration, tick: impl Fn(usize)) -> bool {
        let started = Instant::now();
        loop {
            let c = self.count();
            tick(c);
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

impl Drop for TopicReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A message read back whole.
pub struct Read {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `expected` messages arrived and nothing more came for
/// `quiet`, or `timeout` passed.
pub fn read_topic(topic: &str, expected: usize, quiet: Duration, timeout: Duration) -> Vec<Read> {
    let cfg = KafkaConfig {
        brokers: brokers(),
        ..Default::default()
    };
    let consumer: BaseConsumer = client_config(
        &cfg,
        &[
            ("group.id", unique("reader")),
            ("auto.offset.reset", "earliest".into()),
            ("enable.auto.commit", "false".into()),
            ("fetch.wait.max.ms", "10".into()),
        ],
    )
    .create()
    .expect("a consumer can be created");
    consumer.subscribe(&[topic]).expect("subscribed");
    let started = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < timeout && (out.len() < expected || last.elapsed() < quiet) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Read {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
            last = Instant::now();
        }
    }
    out
}

/// Per partition of `topic`: (partition, committed offset of `group` or `None`, high watermark).
pub fn committed_offsets(
    cfg: &KafkaConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<(i32, Option<i64>, i64)>> {
    let c: BaseConsumer = client_config(cfg, &[("group.id", group.to_string())])
        .create()
        .context("cannot create the offset reader")?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(30))?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (_, high) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(30))?;
        let done = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        out.push((e.partition(), done, high));
    }
    Ok(out)
}

/// Input messages not yet covered by `group`'s committed offsets.
pub fn uncommitted(
    cfg: &KafkaConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<i64> {
    Ok(committed_offsets(cfg, group, topic, partitions)?
        .into_iter()
        .map(|(_, done, high)| high - done.unwrap_or(0))
        .sum())
}

/// What ClickHouse holds for one database.
pub struct Counts {
    pub clickhouse_ids: HashSet<String>,
    /// Champion rows of `predictions FINAL` (one per tweet × model identity).
    pub final_rows: u64,
    /// Sum over hours × labels of `champion_hourly` (what analysts read).
    pub aggregate_total: u64,
    /// Per model identity (`NAME@VERSION#HASH`): sum over hours × labels of `opinion_hourly`.
    pub per_version: std::collections::BTreeMap<String, u64>,
}

pub async fn clickhouse_counts(cfg: &Config) -> anyhow::Result<Counts> {
    let sink = ClickHouseSink::new(&cfg.clickhouse, &cfg.clickhouse_password()?);
    let db = &cfg.clickhouse.database;
    let ids: Vec<String> = sink
        .client()
        .query(&format!(
            "SELECT DISTINCT tweet_id FROM {db}.predictions WHERE role = 'champion'"
        ))
        .fetch_all()
        .await?;
    let final_rows: u64 = sink
        .client()
        .query(&format!(
            "SELECT count() FROM {db}.predictions FINAL WHERE role = 'champion'"
        ))
        .fetch_one()
        .await?;
    let aggregate_total: u64 = sink
        .client()
        .query(&format!(
            "SELECT toUInt64(sum(tweets)) FROM {db}.champion_hourly"
        ))
        .fetch_one()
        .await?;
    let per_version: Vec<(String, u64)> = sink
        .client()
        .query(&format!(
            "SELECT concat(model_version, '#', model_hash), toUInt64(sum(tweets)) FROM {db}.opinion_hourly_counts GROUP BY model_version, model_hash"
        ))
        .fetch_all()
        .await?;
    Ok(Counts {
        clickhouse_ids: ids.into_iter().collect(),
        final_rows,
        aggregate_total,
        per_version: per_version.into_iter().collect(),
    })
}

/// Distinct tweet ids with a champion prediction.
pub async fn clickhouse_distinct(cfg: &Config) -> anyhow::Result<u64> {
    let sink = ClickHouseSink::new(&cfg.clickhouse, &cfg.clickhouse_password()?);
    Ok(sink
        .client()
        .query(&format!(
            "SELECT uniqExact(tweet_id) FROM {}.predictions WHERE role = 'champion'",
            cfg.clickhouse.database
        ))
        .fetch_one::<u64>()
        .await?)
}

/// Runs a scalar query against the ClickHouse of [`clickhouse_url`]; the trimmed text answer.
pub async fn ch_scalar(sql: &str) -> String {
    ch_try(sql)
        .await
        .expect("ClickHouse reachable and the query valid")
}

/// Like [`ch_scalar`], but an error (e.g. the database does not exist yet) is returned.
pub async fn ch_try(sql: &str) -> Result<String, clickhouse::error::Error> {
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    let rows: Vec<String> = client
        .query(&format!("SELECT ifNull(toString(({sql})), '')"))
        .fetch_all()
        .await?;
    Ok(rows.into_iter().next().unwrap_or_default())
}

/// A child process (a test's own broker or ClickHouse) killed when the test ends, however it
/// ends.
pub struct Service(pub std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Service {
    /// Waits up to 60 s (chdb's start-up on a busy machine) for `port` to accept connections;
    /// if the process exits first, panics with its log.
    pub fn listening(mut self, port: u16, what: &str, log: &Path) -> Self {
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return self;
            }
            if let Ok(Some(status)) = self.0.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("{what} exited ({status}): {log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} did not listen on {port} within 60 s");
    }

    /// A ClickHouse (chdb, `scripts/clickhouse_server.py`) of its own under `dir`, with `env`
    /// (`VAXPULSE_CH_USERS`, `VAXPULSE_CH_CLUSTER`); answering on HTTP `http`, TCP `tcp`.
    pub fn clickhouse(dir: &Path, http: u16, tcp: u16, env: &[(&str, String)]) -> Self {
        let log = dir.join(format!("clickhouse-{http}.log"));
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(repo_root().join("scripts/clickhouse_server.py"))
            .arg(dir.join(format!("clickhouse-{http}")))
            .args([http.to_string(), tcp.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Service(
            cmd.spawn()
                .expect("python3 with chdb (source .state/env.sh)"),
        )
        .listening(http, "ClickHouse", &log)
    }
}

/// A TCP port free on loopback right now (for a worker's metrics endpoint).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("loopback has a free port")
        .port()
}

/// The body of `GET path` on `127.0.0.1:port` (HTTP/1.0), or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// A worker of `cfg` in this process with the real model, on the current runtime; cancel the
/// token to stop it (the handle then gives its result).
pub fn start_worker(
    cfg: Config,
) -> (
    tokio::task::JoinHandle<anyhow::Result<vaxpulse::app::RunReport>>,
    tokio_util::sync::CancellationToken,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let factory = vaxpulse::model::load::torch_factory(&cfg);
    (
        tokio::spawn(vaxpulse::app::run(cfg, factory, stop.clone())),
        stop,
    )
}

/// Polls `check` every 250 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pins in `d` the manifest of each version the store at `store` holds a readable manifest for,
/// as `vaxpulse models` does when it publishes (versions it cannot read stay unpinned).
pub fn pin_from_store(store: &Path, d: &mut vaxpulse::deploy::Deployment) {
    for v in d.versions().cloned().collect::<Vec<_>>() {
        if let Ok(m) = vaxpulse::model::Manifest::load(&store.join(&v.name).join(&v.version)) {
            d.manifests.insert(v.version_label(), m.digest);
        }
    }
}
