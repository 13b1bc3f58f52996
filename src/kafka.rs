//! Kafka client settings shared by every client of the worker and its commands (the source's
//! consumer, the result and dead-letter producers, the control topic, `produce`, `validate`,
//! the benches), and the topics the worker needs. One place decides how the operator's
//! `kafka.properties` and secrets reach librdkafka, so no client can forget them.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::config::KafkaConfig;

/// librdkafka settings shared by the consumer and producers: brokers, the caller's `defaults`,
/// then the operator's pass-through properties (security, tuning; they win over the defaults),
/// and the SASL password kept out of the config's `Debug`.
pub fn client_config(cfg: &KafkaConfig, defaults: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    if !cfg.sasl_password.is_empty() {
        c.set("sasl.password", cfg.sasl_password.expose());
    }
    c
}

/// Records what librdkafka reports while a [`preflight`] connects (authentication and TLS
/// failures arrive here, not as the metadata call's error).
#[derive(Default)]
struct SeenErrors(std::sync::Mutex<Vec<String>>);

impl rdkafka::client::ClientContext for SeenErrors {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() < 8 {
            seen.push(format!("{error} ({reason})"));
        }
    }
}
impl rdkafka::consumer::ConsumerContext for SeenErrors {}

/// Connects once and reads the cluster's metadata, so that a wrong address, password or CA
/// stops start-up with what to fix, instead of a replica that retries in silence. librdkafka's
/// messages name the broker and mechanism, never the password.
pub fn preflight(cfg: &KafkaConfig, timeout: Duration) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer<SeenErrors> = client_config(cfg, &[])
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning)
        .create_with_context(SeenErrors::default())
        .context("cannot create a Kafka client (check kafka.properties)")?;
    // Logs and errors reach the context only while the client is polled (rust-rdkafka sends
    // them through the consumer's queue), so ask in short rounds and poll between them.
    let started = std::time::Instant::now();
    let (e, seen) = loop {
        let e = match consumer.fetch_metadata(None, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let _ = consumer.poll(Duration::from_millis(100));
        let seen = consumer
            .context()
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("; ");
        // Neither a refused login nor a failed TLS handshake gets better by waiting.
        let lower = seen.to_ascii_lowercase();
        let fatal = lower.contains("authentication") || lower.contains("handshake failed");
        if fatal || started.elapsed() >= timeout {
            break (e, seen);
        }
    };
    let all = format!("{e} {seen}").to_ascii_lowercase();
    let hint = if all.contains("ssl error")
        || all.contains("certificate")
        || all.contains("handshake")
    {
        "the TLS connection failed: check `security.protocol` and `ssl.ca.location` in kafka.properties (the CA that signed the broker's certificate)"
    } else if all.contains("authentication") {
        "the broker refused the login: check kafka.properties `sasl.mechanism` and `sasl.username`, and the password (kafka.sasl_password_file or VAXPULSE_KAFKA_SASL_PASSWORD)"
    } else {
        "is it up, and is kafka.brokers right? (scripts/services.sh start locally)"
    };
    anyhow::bail!(
        "cannot connect to the Kafka cluster at {}: {hint}. librdkafka said: {e}{}{seen}",
        cfg.brokers,
        if seen.is_empty() { "" } else { "; " }
    )
}

/// Consumer settings an operator may override in `kafka.properties`. librdkafka (≥ 2.4) waits
/// `fetch.queue.backoff.ms` (default 1 000 ms) before fetching again once its prefetch queue is
/// full: a consumer slower than the broker then idles most of each second. The firehose bench
/// measured 23 000 messages/s with the default and 59 500 with 10 ms (same broker, same run).
///
/// Fetch sizes follow `decode.max_message_bytes`: a partition fetch holds at least one record
/// of the largest size decoded (larger ones are fetched whole by the broker anyway, then
/// dead-lettered as `too_large`), and one fetch response stays a few of them, so what the
/// consumer buffers is bounded by the decode limit and `queued.max.messages.kbytes`.
pub fn consumer_defaults(max_message_bytes: usize) -> Vec<(&'static str, String)> {
    let partition = max_message_bytes.max(1 << 20);
    let fetch = (4 * partition).max(16 << 20);
    vec![
        ("fetch.queue.backoff.ms", "10".into()),
        ("max.partition.fetch.bytes", partition.to_string()),
        ("fetch.max.bytes", fetch.to_string()),
        ("receive.message.max.bytes", (fetch + (1 << 20)).to_string()),
    ]
}

/// A topic to create: name, partitions and topic-level settings (e.g. `cleanup.policy`).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: &str, partitions: i32) -> Self {
        TopicSpec {
            name: name.to_string(),
            partitions,
            configs: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.configs.push((key.to_string(), value.to_string()));
        self
    }
}

/// The topics of a worker with `cfg`: input, output and dead letters with `partitions`, the
/// shadow topic when configured, and the control topic with one compacted partition (the
/// latest deployment per group survives compaction, and one partition keeps them in order).
pub fn worker_topics(cfg: &KafkaConfig, partitions: i32) -> Vec<TopicSpec> {
    let mut topics: Vec<TopicSpec> = [&cfg.input_topic, &cfg.output_topic, &cfg.dlq_topic]
        .into_iter()
        .map(|n| TopicSpec::new(n, partitions))
        .collect();
    topics.push(TopicSpec::new(&cfg.control_topic, 1).with("cleanup.policy", "compact"));
    if !cfg.shadow_topic.is_empty() {
        topics.push(TopicSpec::new(&cfg.shadow_topic, partitions));
    }
    topics
}

/// Creates `topics` (replication 1: the local broker and tests; production topics come from
/// the deployment's own tooling); a topic that already exists is not an error. Returns each
/// name with `true` when it was created here.
pub async fn create_topics(
    cfg: &KafkaConfig,
    topics: &[TopicSpec],
) -> anyhow::Result<Vec<(String, bool)>> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, &[])
        .create()
        .context("cannot create the admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let answers = admin.create_topics(&new, &opts).await.with_context(|| {
        format!(
            "the broker at {} does not answer (locally: scripts/services.sh start)",
            cfg.brokers
        )
    })?;
    answers
        .into_iter()
        .map(|r| match r {
            Ok(t) => Ok((t, true)),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => Ok((t, false)),
            Err((t, e)) => Err(anyhow::anyhow!("cannot create topic {t}: {e}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_topic_is_one_compacted_partition_and_the_shadow_topic_is_optional() {
        let mut cfg = crate::config::Config::default().kafka;
        let names = |t: &[TopicSpec]| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let topics = worker_topics(&cfg, 4);
        let control = topics.iter().find(|t| t.name == cfg.control_topic).unwrap();
        assert_eq!(control.partitions, 1);
        assert_eq!(
            control.configs,
            [("cleanup.policy".into(), "compact".into())]
        );
        assert_eq!(topics.len(), 4, "{:?}", names(&topics));
        cfg.shadow_topic = "tweets.shadow".into();
        let topics = worker_topics(&cfg, 4);
        assert!(names(&topics).contains(&"tweets.shadow".to_string()));
        assert!(topics
            .iter()
            .filter(|t| t.name != cfg.control_topic)
            .all(|t| t.partitions == 4));
    }
}
