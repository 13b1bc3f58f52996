//! The one typed configuration of the worker: TOML file + `VAXPULSE_<SECTION>_<KEY>` environment
//! overrides, validated once at start-up so that a bad value fails fast with a clear message.
//!
//! Environment values are read as the type of the field they override (a string field stays a
//! string even when it looks like a number, `VAXPULSE_KAFKA_GROUP_INSTANCE_ID=1` included); the
//! types come from the configuration's own defaults, not from the look of the value. Layering
//! libraries such as figment guess a value's type from its text, which is the bug this avoids.

mod env;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

/// Errors found while loading or validating the configuration; none is retriable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config value {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

/// A string that never shows up in logs, errors or `Debug` output.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value itself: only for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Serialised as `***` (or empty): the effective configuration can be printed as it is.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Root of the configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka source, result and dead-letter topics.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// ClickHouse sink.
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    /// Model location and inference settings.
    #[serde(default)]
    pub model: ModelConfig,
    /// Micro-batching of tweets for inference.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Which messages are accepted.
    #[serde(default)]
    pub decode: DecodeConfig,
    /// Bounded queues between stages and shutdown timing.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Probe set and the worker's drift/agreement gauges.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// What deletions remove.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// What a replica accepts from the control topic.
    #[serde(default)]
    pub deploy: DeployConfig,
    /// Annotation samples, live quality estimates and the promotion gate.
    #[serde(default)]
    pub quality: QualityConfig,
    /// The annotation page (`vaxpulse annotate serve`).
    #[serde(default)]
    pub annotate: AnnotateConfig,
}

/// Where a consumer group without committed offsets starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    /// The librdkafka value of `auto.offset.reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// Kafka settings; `properties` passes any librdkafka setting through (SASL, TLS, ...).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Env: `VAXPULSE_KAFKA_BROKERS`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group shared by all replicas.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topic of raw tweets.
    #[serde(default = "default_input_topic")]
    pub input_topic: String,
    /// Topic receiving one JSON result per classified tweet, keyed by tweet id.
    #[serde(default = "default_output_topic")]
    pub output_topic: String,
    /// Dead-letter topic for messages that cannot be decoded (original bytes + reason headers).
    #[serde(default = "default_dlq_topic")]
    pub dlq_topic: String,
    /// Compacted control topic (one partition) holding the group's model deployment, keyed by
    /// `group_id`: every replica reads it at start and follows it (`vaxpulse models ...`).
    #[serde(default = "default_control_topic")]
    pub control_topic: String,
    /// Optional topic receiving the shadows' results too (same JSON, `role` = `shadow`); empty =
    /// shadows go to ClickHouse only.
    #[serde(default)]
    pub shadow_topic: String,
    /// Where a new group starts reading: `earliest` or `latest`.
    #[serde(default = "default_offset_reset")]
    pub auto_offset_reset: OffsetReset,
    /// How long a broker may hold a fetch waiting for data (librdkafka `fetch.wait.max.ms`).
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u64,
    /// How often finished offsets are committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Consumer session timeout (librdkafka `session.timeout.ms`).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Static group membership (librdkafka `group.instance.id`): a stable, unique name per
    /// replica (e.g. the compose or StatefulSet replica index). A replica restarted under the same
    /// name gets its partitions back at once, without a group-wide rebalance; empty = dynamic
    /// membership. Env: `VAXPULSE_KAFKA_GROUP_INSTANCE_ID`.
    #[serde(default)]
    pub group_instance_id: String,
    /// How long a produce may take before it fails (librdkafka `message.timeout.ms`).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// SASL password, kept out of logs; use instead of `sasl.password` in `properties`.
    /// Env: `VAXPULSE_KAFKA_SASL_PASSWORD`.
    #[serde(default)]
    pub sasl_password: Secret,
    /// File holding the SASL password (a mounted secret), read at start-up into
    /// `sasl_password`. Env: `VAXPULSE_KAFKA_SASL_PASSWORD_FILE`.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// Extra librdkafka properties for consumer and producers (e.g. `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`). Values of keys that name a
    /// password, secret, key, token or OAuth config are shown as `***`. A key ending in
    /// `_file` is read from that file at start-up (`"ssl.key.password_file" = "/run/secrets/k"`
    /// sets `ssl.key.password`), so secrets need not be in the TOML.
    #[serde(default, serialize_with = "redacted_properties")]
    pub properties: BTreeMap<String, String>,
}

/// Whether a setting's value is a secret (never shown): by its name, any case.
pub(crate) fn hide_property(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key",
        "token",
        "oauthbearer",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn redacted(props: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    props
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                if hide_property(k) { "***" } else { v.as_str() },
            )
        })
        .collect()
}

fn redacted_properties<S: Serializer>(
    props: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    redacted(props).serialize(s)
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props = redacted(&self.properties);
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topic", &self.input_topic)
            .field("output_topic", &self.output_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("control_topic", &self.control_topic)
            .field("shadow_topic", &self.shadow_topic)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("group_instance_id", &self.group_instance_id)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("sasl_password", &self.sasl_password)
            .field("sasl_password_file", &self.sasl_password_file)
            .field("properties", &props)
            .finish()
    }
}

/// ClickHouse settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint. Env: `VAXPULSE_CLICKHOUSE_URL`.
    #[serde(default = "default_clickhouse_url")]
    pub url: String,
    /// Database holding `classified_tweets` and the other tables and views.
    #[serde(default = "default_database")]
    pub database: String,
    /// User name. Env: `VAXPULSE_CLICKHOUSE_USER`.
    #[serde(default = "default_ch_user")]
    pub user: String,
    /// Password. Env: `VAXPULSE_CLICKHOUSE_PASSWORD`; or `password_file`.
    #[serde(default)]
    pub password: Secret,
    /// File holding the password (e.g. a mounted secret); wins over `password` when set.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Per-request timeout for inserts.
    #[serde(default = "default_insert_timeout_ms")]
    pub insert_timeout_ms: u64,
    /// Group commit: classified batches stored within this many ms of each other go to
    /// ClickHouse as one insert (up to `insert_max_rows`). Each insert costs ClickHouse a part
    /// per table (ClickHouse asks for about one insert a second): at 100 ms chdb spent 0.7 of a
    /// core on 106 tweets/s, at 1 000 ms 0.1. The output topic is not delayed (its writes do not
    /// wait for ClickHouse), only the offset commit. 0 = one insert per batch.
    #[serde(default = "default_insert_linger_ms")]
    pub insert_linger_ms: u64,
    /// Largest insert: a group goes out as soon as it holds this many rows. Tweets waiting for
    /// the sinks are bounded by twice this (so one group fills while the previous is written).
    #[serde(default = "default_insert_max_rows")]
    pub insert_max_rows: usize,
    /// Largest insert in bytes of tweets (texts, ids and a fixed cost per row): a group also goes
    /// out once it holds this much, and tweets waiting for the sinks are bounded by twice this
    /// too, so long texts cannot make the rows budget gigabytes.
    #[serde(default = "default_insert_max_bytes")]
    pub insert_max_bytes: usize,
    /// ClickHouse cluster (a `remote_servers` name) the tables live on; empty = one server.
    /// Set: each table is a local table on every server plus a `Distributed` table of the same
    /// name over them (tweet tables sharded by `cityHash64(tweet_id)`, so every row of one tweet
    /// is on one shard and the per-shard deduplication stays exact); the worker inserts through
    /// the distributed tables and waits for the shards (`distributed_foreground_insert`). Env:
    /// `VAXPULSE_CLICKHOUSE_CLUSTER`.
    #[serde(default)]
    pub cluster: String,
    /// With `cluster`: local tables are `Replicated*MergeTree` (paths
    /// `/clickhouse/tables/{shard}/{database}/{table}`, replica `{replica}`: the servers'
    /// macros), which needs ClickHouse Keeper or ZooKeeper.
    #[serde(default)]
    pub replicated: bool,
    /// With `cluster`: HTTP URLs of every server, for a cluster without Keeper, where `ON
    /// CLUSTER` DDL cannot run: the schema is applied to each of them in turn. Empty = DDL runs
    /// once, `ON CLUSTER`.
    #[serde(default)]
    pub schema_urls: Vec<String>,
}

/// Model settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Directory with `manifest.json`, `model.pt` (TorchScript) and `tokenizer.json`: the
    /// champion while no deployment has been published to `kafka.control_topic` (`vaxpulse
    /// models deploy`); from then on the control topic decides.
    #[serde(default = "default_model_dir")]
    pub dir: PathBuf,
    /// Model store: deployed versions `NAME@VERSION` are read from `store_dir/NAME/VERSION/`
    /// (every replica needs the same export there, checked by the weights hash).
    #[serde(default = "default_store_dir")]
    pub store_dir: PathBuf,
    /// Largest |Δprobability| between a newly deployed fp32 version and its `parity.json`
    /// (the reference implementation's output) before it may take traffic.
    #[serde(default = "default_parity_max_abs_diff")]
    pub parity_max_abs_diff: f64,
    /// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: DeviceSpec,
    /// libtorch intra-op threads; 0 keeps libtorch's default.
    #[serde(default)]
    pub intra_op_threads: usize,
    /// Verify the sha256 of the model files against the manifest at load.
    #[serde(default = "default_true")]
    pub verify_checksums: bool,
    /// `fp32`, or on CUDA `fp16` / `bf16` (weights and activations in half precision).
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// With half precision: the largest |Δprobability| against fp32 accepted by the start-up
    /// parity check; above it the worker refuses to start.
    #[serde(default = "default_half_parity_max_abs_diff")]
    pub half_parity_max_abs_diff: f32,
    /// For a quantised (int8) version: the largest |Δprobability| against its fp32 source's
    /// parity reference accepted at load; above it the version is refused.
    #[serde(default = "default_int8_parity_max_abs_diff")]
    pub int8_parity_max_abs_diff: f64,
    /// For a quantised (int8) version: the share of parity texts that must keep the fp32
    /// reference's label.
    #[serde(default = "default_int8_min_label_agreement")]
    pub int8_min_label_agreement: f64,
    /// Run the model on typical batch shapes before consuming, so the first real batches do not
    /// pay for allocator growth, kernel selection and lazy initialisation.
    #[serde(default = "default_true")]
    pub warmup: bool,
}

/// Micro-batcher settings. A batch closes on whichever limit is reached first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most tweets in one batch.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// Most padded tokens (longest row × rows) in one batch.
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// Longest time the oldest waiting tweet waits before its batch is sent.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Group tweets of similar length into the same batch to reduce padding.
    #[serde(default = "default_true")]
    pub length_bucketing: bool,
    /// Send what waits the moment the model thread is free (and no batch is queued), instead
    /// of after `max_wait_ms`: a batch then holds what arrived while the model ran the last one
    /// — large under load, small when quiet — and `max_wait_ms` is not used. Full batches are
    /// sent at once either way. Off by default: measured here it lowers the p99 at 10 % load
    /// (48–54 vs 72–79 ms) but raises it from 50 % on (497–565 vs 210–386 ms), where the
    /// queued partial batch of the clock-driven mode keeps the model fed
    /// (docs/performance.md).
    #[serde(default)]
    pub dispatch_when_idle: bool,
    /// Run a batch as several forwards of similar lengths where padding it as one costs more
    /// than another call (the model thread sorts it by length and takes the cheapest cut); the
    /// batch stays one unit downstream (one write per sink). The call's cost in padded tokens
    /// is fitted from the champion's own forwards after ~32 of them (gauge
    /// `vaxpulse_batch_overhead_tokens`); until then, and wherever a call costs more than the
    /// padding (a GPU), a batch is one forward. Measured here (demo model, 2 cores, same
    /// offered rates): p99 at 800 tweets/s 133–159 ms against 205–536 off, backlog throughput
    /// not lower (docs/performance.md). Off = always one padded forward per batch.
    #[serde(default = "default_true")]
    pub split_by_cost: bool,
    /// The per-call cost of a model forward, in padded tokens, for `split_by_cost`, instead of
    /// measuring it (e.g. where timings are noisy). Absent = measured.
    #[serde(default, deserialize_with = "number_or_text")]
    pub overhead_tokens: Option<u32>,
}

/// Message acceptance rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Tweet languages classified; others are counted and skipped. Empty = all.
    #[serde(default = "default_langs")]
    pub langs: Vec<String>,
    /// Messages larger than this go to the dead-letter topic as `too_large`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Relevance filter: a tweet is classified only if its full text matches one entry (a word
    /// or phrase at a word start, `#hashtag`, or `re:REGEX`; case- and accent-insensitive);
    /// others are skipped as `off_topic` and committed. Empty = keep all.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Threads decoding and filtering what the Kafka client already holds, in chunks of up to
    /// 256 messages (results handled in arrival order, offsets unchanged); 1 = on the consumer
    /// thread alone, which decodes ~240 000 firehose messages/s. More only pays where a core is
    /// free beside the broker client: a chunk is split only when it has at least 32 messages.
    #[serde(default = "default_decode_threads")]
    pub threads: usize,
}

/// Queue sizes and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Tokenizer threads (each runs `encode_batch` on chunks of the queue, overlapped with
    /// inference).
    #[serde(default = "default_tokenizer_threads")]
    pub tokenizer_threads: usize,
    /// Capacity (tweets) of the queue from the consumer to the tokenizer.
    #[serde(default = "default_queue_tweets")]
    pub queue_tweets: usize,
    /// Batches waiting for the sinks; when full, inference (and then consumption) stops.
    #[serde(default = "default_sink_queue_batches")]
    pub sink_queue_batches: usize,
    /// Threads scoring shadow versions (off the champion's model thread, so a slow shadow never
    /// slows the champion).
    #[serde(default = "default_shadow_threads")]
    pub shadow_threads: usize,
    /// Shadow batches waiting for a shadow thread (or for ClickHouse); when full, a shadow's
    /// batch is skipped and counted, never waited for.
    #[serde(default = "default_shadow_queue_batches")]
    pub shadow_queue_batches: usize,
    /// Longest wait for in-flight tweets at shutdown.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Longest wait, inside a rebalance, for already-inferred tweets of revoked partitions to be
    /// stored (queued ones are dropped at once and read again by the next owner). Must stay well
    /// under `kafka.session_timeout_ms`: the whole group waits for the slowest member here.
    #[serde(default = "default_revoke_drain_timeout_ms")]
    pub revoke_drain_timeout_ms: u64,
    /// `/health/live` fails (so an orchestrator restarts the replica) once tweets are pending
    /// and none finished for this long while no sink write is being retried; 0 = never.
    /// Well above the slowest batch (a base-sized model on one CPU thread: ~15 s).
    #[serde(default = "default_wedged_after_ms")]
    pub wedged_after_ms: u64,
}

/// Metrics/health HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address of `/metrics`, `/health/live`, `/health/ready`; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

/// Stability checks run by every replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Fixed texts (JSONL, `{"id": ..., "text": ...}`) that each replica scores with every
    /// deployed version at start, at each deployment and every `probe_interval_s`; results go to
    /// ClickHouse `probe_runs`. Empty = no probes.
    #[serde(default = "default_probe_file")]
    pub probe_file: PathBuf,
    /// Seconds between probe runs (besides start and deployments); 0 = only those.
    #[serde(default = "default_probe_interval_s")]
    pub probe_interval_s: u64,
    /// A version whose probe probabilities differ from its first stored run (or its previous
    /// one) by more than this is flagged: a library, device or precision changed its outputs.
    #[serde(default = "default_probe_max_abs_diff")]
    pub probe_max_abs_diff: f64,
    /// Seconds between the queries behind the drift/agreement gauges
    /// (`vaxpulse_drift_psi`, `vaxpulse_shadow_agreement_ratio`), run by the one replica of the
    /// group holding input partition 0, which also refreshes the monitor's hourly rollup then;
    /// 0 = no gauges.
    #[serde(default = "default_gauges_interval_s")]
    pub gauges_interval_s: u64,
    /// Reference of those gauges: the first N days of each series (as `vaxpulse monitor`).
    #[serde(default = "default_reference_days")]
    pub reference_days: u32,
}

/// Deletions (delete notices of the stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Also remove deleted tweets from the counts (`champion_hourly`, `opinion_hourly_counts`,
    /// the predictions). Off: the tweet and its text leave `tweets`/`classified_tweets`, the
    /// counts keep it as an anonymous number.
    #[serde(default)]
    pub delete_counts: bool,
    /// Days a delete notice's id is remembered (TTL of `deleted_tweets`): a tweet arriving
    /// within that time after its delete is not stored. Keep it above the input topic's
    /// retention, or a replay from old offsets can store a deleted tweet again; 0 = forever.
    #[serde(default = "default_deleted_ids_days")]
    pub deleted_ids_days: u32,
    /// Days tweets (and their texts) are kept after `created_at` (TTL of `tweets` and
    /// `tweet_hours`); 0 = forever.
    #[serde(default)]
    pub tweets_days: u32,
    /// Days predictions are kept after the tweet's `created_at` (TTL of `predictions` and
    /// `champion_labels`, so the series and the aggregates end there too); 0 = forever.
    #[serde(default)]
    pub predictions_days: u32,
}

/// Limits on deployment records read from the control topic (checked before anything is
/// opened).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Most shadow versions one deployment may name (each costs a model in memory and a share
    /// of the CPU); a record with more is refused.
    #[serde(default = "default_max_shadows")]
    pub max_shadows: usize,
    /// Public keys (64 hex digits each, as `vaxpulse models keygen` prints them) whose
    /// signatures this replica accepts on deployment records; several during a rotation. Once
    /// any is set, unsigned and badly signed records are refused. Env:
    /// `VAXPULSE_DEPLOY_TRUSTED_KEYS=k1,k2`.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Refuse to start without `trusted_keys` (the production setting): a replica that would
    /// take unsigned records from anyone who can write the control topic is a mistake there.
    #[serde(default)]
    pub require_signed: bool,
    /// Private key file `vaxpulse models` signs its records with (`vaxpulse models keygen`
    /// writes one, mode 0600). Empty = unsigned records. Env:
    /// `VAXPULSE_DEPLOY_SIGNING_KEY_FILE`.
    #[serde(default)]
    pub signing_key_file: PathBuf,
}

/// How tweets are drawn for annotation and what evidence a promotion needs
/// (docs/analysts.md → Which version is best).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityConfig {
    /// Tweets a sample aims at (its expected size: each tweet is drawn independently).
    #[serde(default = "default_sample_size")]
    pub sample_size: u64,
    /// Share of a sample drawn uniformly from the window; the rest over-samples the
    /// informative strata (champion–shadow disagreements, low champion confidence).
    #[serde(default = "default_uniform_share")]
    pub uniform_share: f64,
    /// A champion top probability below this puts a tweet in the `low_confidence` stratum.
    #[serde(default = "default_low_confidence_below")]
    pub low_confidence_below: f64,
    /// Share of sampled tweets served to two annotators (inter-annotator agreement).
    #[serde(default = "default_double_share")]
    pub double_share: f64,
    /// Level of the confidence intervals (0.95 = 95 %).
    #[serde(default = "default_confidence_level")]
    pub confidence_level: f64,
    /// McNemar p-value a candidate must beat the champion with.
    #[serde(default = "default_significance")]
    pub significance: f64,
    /// Power at which `quality` says how many paired labels a decision still needs.
    #[serde(default = "default_power")]
    pub power: f64,
    /// Paired labels (annotated tweets both versions scored) a promotion needs at least.
    #[serde(default = "default_min_paired_labels")]
    pub min_paired_labels: u64,
    /// Accuracy a candidate may lose against the champion and still pass (non-inferiority:
    /// the interval's lower bound of candidate − champion above −margin). 0 = it must beat
    /// the champion.
    #[serde(default)]
    pub non_inferiority_margin: f64,
    /// Days of annotations the gate and the worker's quality gauges read.
    #[serde(default = "default_quality_days")]
    pub window_days: u32,
    /// Let the worker group propose a promotion when a shadow passes the gate: an event, a
    /// log line and the `vaxpulse_promotion_proposed` gauge; it never promotes by itself.
    #[serde(default)]
    pub propose_promotions: bool,
}

/// The annotation page: where it listens and who may label.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateConfig {
    /// Address of the page (loopback by default: put a TLS proxy in front to open it wider).
    #[serde(default = "default_annotate_listen")]
    pub listen: String,
    /// File of `NAME:SHA256_HEX_OF_TOKEN` lines (`vaxpulse annotate token NAME` prints one);
    /// annotators sign in with their token (or HTTP basic, the token as password).
    #[serde(default)]
    pub tokens_file: PathBuf,
}

fn default_sample_size() -> u64 {
    200
}
fn default_uniform_share() -> f64 {
    0.5
}
fn default_low_confidence_below() -> f64 {
    0.6
}
fn default_double_share() -> f64 {
    0.1
}
fn default_confidence_level() -> f64 {
    0.95
}
fn default_significance() -> f64 {
    0.05
}
fn default_power() -> f64 {
    0.8
}
fn default_min_paired_labels() -> u64 {
    100
}
fn default_quality_days() -> u32 {
    30
}
fn default_annotate_listen() -> String {
    "127.0.0.1:8470".into()
}

fn default_max_shadows() -> usize {
    4
}

fn default_int8_parity_max_abs_diff() -> f64 {
    0.05
}
fn default_int8_min_label_agreement() -> f64 {
    0.9
}
fn default_probe_file() -> PathBuf {
    "data/probe_fr.jsonl".into()
}
fn default_probe_interval_s() -> u64 {
    3600
}
fn default_probe_max_abs_diff() -> f64 {
    1e-3
}
fn default_gauges_interval_s() -> u64 {
    300
}
fn default_reference_days() -> u32 {
    1
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group() -> String {
    "vaxpulse".into()
}
fn default_input_topic() -> String {
    "tweets.raw".into()
}
fn default_output_topic() -> String {
    "tweets.classified".into()
}
fn default_dlq_topic() -> String {
    "tweets.dlq".into()
}
fn default_control_topic() -> String {
    "vaxpulse.deployments".into()
}
fn default_offset_reset() -> OffsetReset {
    OffsetReset::Earliest
}
fn default_fetch_wait_max_ms() -> u64 {
    100
}
fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_session_timeout_ms() -> u64 {
    10_000
}
fn default_message_timeout_ms() -> u64 {
    30_000
}
fn default_clickhouse_url() -> String {
    "http://127.0.0.1:8123".into()
}
fn default_database() -> String {
    "vaxpulse".into()
}
fn default_ch_user() -> String {
    "default".into()
}
fn default_insert_timeout_ms() -> u64 {
    10_000
}
fn default_insert_linger_ms() -> u64 {
    1_000
}
fn default_insert_max_rows() -> usize {
    10_000
}
fn default_insert_max_bytes() -> usize {
    16 << 20
}
fn default_deleted_ids_days() -> u32 {
    30
}
fn default_model_dir() -> PathBuf {
    "models/demo/1".into()
}
fn default_store_dir() -> PathBuf {
    "models".into()
}
fn default_parity_max_abs_diff() -> f64 {
    1e-4
}
fn default_device() -> DeviceSpec {
    DeviceSpec::Auto
}
fn default_precision() -> Precision {
    Precision::Fp32
}
fn default_half_parity_max_abs_diff() -> f32 {
    0.02
}
fn default_true() -> bool {
    true
}

/// An optional number, also read from text: a key without a default has no type to read an
/// environment override by, so `VAXPULSE_BATCH_OVERHEAD_TOKENS=512` arrives as a string.
fn number_or_text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText<T> {
        Number(T),
        Text(String),
    }
    match Option::<NumberOrText<T>>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrText::Number(n)) => Ok(Some(n)),
        Some(NumberOrText::Text(s)) => s.trim().parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a valid number here ({e})"))
        }),
    }
}
fn default_max_batch_size() -> usize {
    64
}
fn default_max_batch_tokens() -> usize {
    4096
}
fn default_max_wait_ms() -> u64 {
    20
}
fn default_langs() -> Vec<String> {
    vec!["fr".into()]
}
fn default_decode_threads() -> usize {
    1
}
fn default_max_message_bytes() -> usize {
    64 * 1024
}
fn default_tokenizer_threads() -> usize {
    2
}
fn default_queue_tweets() -> usize {
    4096
}
fn default_sink_queue_batches() -> usize {
    4
}
fn default_shadow_threads() -> usize {
    1
}
fn default_shadow_queue_batches() -> usize {
    64
}
fn default_drain_timeout_ms() -> u64 {
    10_000
}
fn default_revoke_drain_timeout_ms() -> u64 {
    3_000
}
fn default_wedged_after_ms() -> u64 {
    300_000
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("empty section deserialises to defaults; this is a bug")
            }
        }
    )*};
}
default_from_serde!(
    KafkaConfig,
    ClickHouseConfig,
    ModelConfig,
    BatchConfig,
    DecodeConfig,
    PipelineConfig,
    MetricsConfig,
    MonitorConfig,
    RetentionConfig,
    DeployConfig,
    QualityConfig,
    AnnotateConfig
);

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("empty config deserialises to defaults; this is a bug")
    }
}

impl Config {
    /// The ClickHouse password: `password_file` contents when set, else `password`.
    pub fn clickhouse_password(&self) -> Result<Secret, ConfigError> {
        match &self.clickhouse.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
                .map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                }),
            None => Ok(self.clickhouse.password.clone()),
        }
    }
}

/// Numeric precision of the weights and activations (`model.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("`{s}`: use fp32, fp16 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Where to run the model (`model.device`): `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("`{s}`: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        DeviceSpec::parse(&s)
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn toml_errors_never_quote_the_file() {
        let e = Config::from_toml_with_env(
            "[kafka]\nbrokers = \"b:9092\"\nsasl_password = \"hunter2-secret\n",
            "t.toml",
            std::iter::empty(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3") && !e.contains("hunter2"), "{e}");
        let e = Config::from_toml_with_env(
            "[clickhouse]\npassword = 987654321\n",
            "t.toml",
            std::iter::empty(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`clickhouse.password`: invalid type") && !e.contains("987654321"),
            "{e}"
        );
        let e = Config::from_toml_with_env("[kafka]\nbrokerz = 1\n", "t.toml", std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains("brokerz"), "unknown keys are still named: {e}");
    }

    #[test]
    fn secrets_come_from_files_and_never_show_in_errors() {
        let dir = std::env::temp_dir().join(format!("vaxpulse-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sasl"), "s3cr3t\n").unwrap();
        std::fs::write(dir.join("keypw"), "k3y-pw").unwrap();
        let toml = format!(
            "[kafka]\nsasl_password_file = \"{}\"\n[kafka.properties]\n\"ssl.key.password_file\" = \"{}\"\n",
            dir.join("sasl").display(),
            dir.join("keypw").display()
        );
        let c = Config::from_toml_with_env(&toml, "t", Vec::new()).unwrap();
        assert_eq!(c.kafka.sasl_password.expose(), "s3cr3t");
        assert_eq!(c.kafka.properties["ssl.key.password"], "k3y-pw");
        assert!(!c.kafka.properties.contains_key("ssl.key.password_file"));
        let shown = format!("{:?} {}", c.kafka, c.to_redacted_toml());
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("k3y-pw"),
            "{shown}"
        );
        for k in [
            "SASL.OAUTHBEARER.CONFIG",
            "sasl.oauthbearer.config",
            "ssl.Key.Password",
        ] {
            assert!(hide_property(k), "{k}");
        }
        let e = Config::from_toml_with_env(
            "",
            "t",
            env(&[("VAXPULSE_KAFKA_PROPERTIES", "{ \"sasl.password\" = hunter2")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("VAXPULSE_KAFKA_PROPERTIES") && !e.contains("hunter2"),
            "{e}"
        );
        let e = Config::from_toml_with_env(
            "[clickhouse]\nurl = \"http://admin:hunter2@ch:8123\"",
            "t",
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("clickhouse.url") && !e.contains("hunter2"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn defaults_point_at_loopback_services() {
        let c = Config::from_toml_with_env("", "t", env(&[])).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(c.metrics.listen, "127.0.0.1:9464");
        assert_eq!(c.decode.langs, vec!["fr".to_string()]);
    }

    #[test]
    fn env_overrides_file_values_with_typed_parsing() {
        let c = Config::from_toml_with_env(
            "[batch]\nmax_wait_ms = 5\n[kafka]\nbrokers = \"a:1\"\n",
            "t",
            env(&[
                ("VAXPULSE_KAFKA_BROKERS", "b:2"),
                ("VAXPULSE_BATCH_MAX_WAIT_MS", "7"),
                ("VAXPULSE_DECODE_LANGS", "[\"fr\", \"en\"]"),
                ("VAXPULSE_HOME", "/ignored/not/a/section"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:2");
        assert_eq!(c.batch.max_wait_ms, 7);
        assert_eq!(c.decode.langs, vec!["fr", "en"]);
    }

    #[test]
    fn env_values_take_the_type_of_their_field() {
        let c = Config::from_toml_with_env(
            "",
            "t",
            env(&[
                // Integer-looking values for string fields stay strings.
                ("VAXPULSE_KAFKA_GROUP_INSTANCE_ID", "1"),
                ("VAXPULSE_KAFKA_INPUT_TOPIC", "2024"),
                ("VAXPULSE_KAFKA_DLQ_TOPIC", "true"),
                ("VAXPULSE_CLICKHOUSE_DATABASE", "42"),
                ("VAXPULSE_MODEL_DIR", "7"),
                // An optional path without a default is a string too.
                ("VAXPULSE_CLICKHOUSE_PASSWORD_FILE", "123"),
                // Enums from their names.
                ("VAXPULSE_KAFKA_AUTO_OFFSET_RESET", "latest"),
                ("VAXPULSE_MODEL_DEVICE", "cuda:1"),
                ("VAXPULSE_MODEL_PRECISION", "bf16"),
                ("VAXPULSE_MODEL_WARMUP", "0"),
                ("VAXPULSE_MODEL_HALF_PARITY_MAX_ABS_DIFF", "1"),
                ("VAXPULSE_DECODE_LANGS", "fr, en"),
                (
                    "VAXPULSE_KAFKA_PROPERTIES",
                    "{ \"security.protocol\" = \"SSL\" }",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.group_instance_id, "1");
        assert_eq!(c.kafka.input_topic, "2024");
        assert_eq!(c.kafka.dlq_topic, "true");
        assert_eq!(c.clickhouse.database, "42");
        assert_eq!(c.model.dir, PathBuf::from("7"));
        assert_eq!(c.clickhouse.password_file, Some(PathBuf::from("123")));
        assert_eq!(c.kafka.auto_offset_reset, OffsetReset::Latest);
        assert_eq!(c.model.device, DeviceSpec::Cuda(1));
        assert_eq!(c.model.precision, Precision::Bf16);
        assert!(!c.model.warmup);
        assert_eq!(c.model.half_parity_max_abs_diff, 1.0);
        assert_eq!(c.decode.langs, vec!["fr", "en"]);
        assert_eq!(c.kafka.properties["security.protocol"], "SSL");
    }

    #[test]
    fn an_optional_number_without_a_default_takes_an_env_override() {
        let c =
            Config::from_toml_with_env("", "t", env(&[("VAXPULSE_BATCH_OVERHEAD_TOKENS", "1024")]))
                .unwrap();
        assert_eq!(c.batch.overhead_tokens, Some(1024));
        let c =
            Config::from_toml_with_env("[batch]\noverhead_tokens = 7\n", "t", env(&[])).unwrap();
        assert_eq!(c.batch.overhead_tokens, Some(7));
        assert_eq!(
            Config::from_toml_with_env("", "t", env(&[]))
                .unwrap()
                .batch
                .overhead_tokens,
            None
        );
        let err =
            Config::from_toml_with_env("", "t", env(&[("VAXPULSE_BATCH_OVERHEAD_TOKENS", "lots")]))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("overhead_tokens") && err.contains("lots"),
            "{err}"
        );
    }

    #[test]
    fn env_values_of_the_wrong_type_name_the_variable() {
        let err =
            Config::from_toml_with_env("", "t", env(&[("VAXPULSE_BATCH_MAX_WAIT_MS", "soon")]))
                .unwrap_err();
        assert!(
            err.to_string().contains("VAXPULSE_BATCH_MAX_WAIT_MS")
                && err.to_string().contains("soon"),
            "{err}"
        );
        let err = Config::from_toml_with_env(
            "",
            "t",
            env(&[("VAXPULSE_KAFKA_AUTO_OFFSET_RESET", "beginning")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("beginning"), "{err}");
    }

    #[test]
    fn the_effective_config_prints_without_secrets() {
        let c = Config::from_toml_with_env(
            "[kafka.properties]\n\"ssl.key.password\" = \"hunter2\"\n",
            "t",
            env(&[("VAXPULSE_CLICKHOUSE_PASSWORD", "s3cr3t")]),
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(shown.contains("password = \"***\""), "{shown}");
        assert!(shown.contains("device = \"auto\""), "{shown}");
    }

    #[test]
    fn a_revoke_drain_longer_than_half_the_session_is_refused() {
        let err = Config::from_toml_with_env(
            "[pipeline]\nrevoke_drain_timeout_ms = 6000\n[kafka]\nsession_timeout_ms = 10000\n",
            "t",
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("revoke_drain_timeout_ms"), "{err}");
    }

    #[test]
    fn a_clickhouse_linger_not_shorter_than_the_revoke_drain_is_refused() {
        // Inferred tweets of revoked partitions would wait out the drain in the group commit.
        let err = Config::from_toml_with_env(
            "[clickhouse]\ninsert_linger_ms = 3000\n[pipeline]\nrevoke_drain_timeout_ms = 3000\n",
            "t",
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("insert_linger_ms"), "{err}");
        let err = Config::from_toml_with_env(
            "[clickhouse]\ninsert_max_rows = 10\n[batch]\nmax_batch_size = 64\n",
            "t",
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("insert_max_rows"), "{err}");
        let ok = Config::from_toml_with_env("", "t", env(&[])).expect("the defaults are valid");
        assert!(ok.clickhouse.insert_linger_ms < ok.pipeline.revoke_drain_timeout_ms);
    }

    #[test]
    fn unknown_keys_are_rejected_with_a_hint() {
        let err = Config::from_toml_with_env("[batch]\nmax_wait = 5\n", "t", env(&[])).unwrap_err();
        assert!(err.to_string().contains("max_wait"), "{err}");
        let err = Config::from_toml_with_env("", "t", env(&[("VAXPULSE_BATCH_MAXWAIT", "1")]))
            .unwrap_err();
        assert!(err.to_string().contains("maxwait"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err =
            Config::from_toml_with_env("[model]\ndevice = \"tpu\"\n", "t", env(&[])).unwrap_err();
        assert!(err.to_string().contains("model.device"), "{err}");
        let err =
            Config::from_toml_with_env("[kafka]\noutput_topic = \"tweets.raw\"\n", "t", env(&[]))
                .unwrap_err();
        assert!(err.to_string().contains("input_topic"), "{err}");
        let err = Config::from_toml_with_env(
            "[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n",
            "t",
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let c = Config::from_toml_with_env(
            "[kafka.properties]\n\"sasl.username\" = \"bob\"\n\"ssl.key.password\" = \"hunter2\"\n",
            "t",
            env(&[
                ("VAXPULSE_CLICKHOUSE_PASSWORD", "s3cr3t-ch"),
                ("VAXPULSE_KAFKA_SASL_PASSWORD", "s3cr3t-kafka"),
            ]),
        )
        .unwrap();
        assert_eq!(c.clickhouse.password.expose(), "s3cr3t-ch");
        assert_eq!(c.kafka.sasl_password.expose(), "s3cr3t-kafka");
        let shown = format!("{c:?}");
        for secret in ["s3cr3t-ch", "s3cr3t-kafka", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("bob"));
    }
}
