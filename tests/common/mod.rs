//! Helpers for integration tests against the real broker and ClickHouse started by
//! `scripts/services.sh`; addresses come from `VAXPULSE_KAFKA_BROKERS` and
//! `VAXPULSE_CLICKHOUSE_URL` (loopback defaults). Every test uses its own random names.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use vaxpulse::config::Config;

pub fn brokers() -> String {
    std::env::var("VAXPULSE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn clickhouse_url() -> String {
    std::env::var("VAXPULSE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::rng().random::<u32>())
}

/// Names of one test's topics, group and database.
pub struct TestNames {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
    pub database: String,
}

impl TestNames {
    pub fn new() -> Self {
        let id = unique("it");
        TestNames {
            input: format!("{id}.raw"),
            output: format!("{id}.classified"),
            dlq: format!("{id}.dlq"),
            group: format!("{id}-group"),
            database: id,
        }
    }

    /// A worker config for these names (metrics server off, short timings for tests).
    pub fn config(&self, extra: &str) -> Config {
        let toml = format!(
            r#"
[kafka]
brokers = "{}"
group_id = "{}"
input_topic = "{}"
output_topic = "{}"
dlq_topic = "{}"
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
            clickhouse_url(),
            self.database,
            env!("CARGO_MANIFEST_DIR"),
        );
        Config::from_toml_with_env(&toml, "test", std::iter::empty()).expect("test config is valid")
    }

    pub async fn create_topics(&self, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let topics: Vec<NewTopic> = [&self.input, &self.output, &self.dlq]
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("broker reachable (scripts/services.sh start)")
        {
            r.expect("topic created");
        }
    }
}

pub async fn produce_all(topic: &str, messages: &[Vec<u8>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    let futs = messages.iter().map(|m| {
        producer.send(
            FutureRecord::<(), _>::to(topic).payload(m),
            Duration::from_secs(30),
        )
    });
    for r in futures::future::join_all(futs).await {
        r.expect("produced");
    }
}

/// A message read back from a topic.
pub struct Read {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until `expected` messages arrived and nothing more came for
/// `quiet`, or `timeout` passed.
pub fn read_topic(topic: &str, expected: usize, quiet: Duration, timeout: Duration) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
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

/// Runs a scalar ClickHouse query over HTTP and returns the trimmed text answer.
pub async fn ch_scalar(sql: &str) -> String {
    ch_try(sql)
        .await
        .expect("ClickHouse reachable and the query valid")
}

/// Like [`ch_scalar`], but an error (e.g. the database does not exist yet) is `None`.
pub async fn ch_try(sql: &str) -> Result<String, clickhouse::error::Error> {
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    let rows: Vec<String> = client
        .query(&format!("SELECT ifNull(toString(({sql})), '')"))
        .fetch_all()
        .await?;
    Ok(rows.into_iter().next().unwrap_or_default())
}

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
