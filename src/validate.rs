//! `vaxpulse validate`: what operators and the deploy pipeline run before starting a worker.
//! Checks, in order, and stops at the first problem with a message saying what to do: the
//! configuration (already loaded and validated), the model directory (manifest, checksums,
//! tokenizer, one forward pass on a real tweet), the probe set, the broker (metadata and the three topics), and
//! ClickHouse (a query with the configured credentials). Prints the effective configuration
//! with secrets as `***`.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::kafka::client_config;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::{argmax, Classifier, Manifest, PaddedBatch};
use crate::sink::clickhouse::ClickHouseSink;

fn ok(what: &str, detail: impl std::fmt::Display) {
    println!("ok    {what}: {detail}");
}

/// Loads the model like the worker does and classifies one tweet (on a thread of its own: no
/// libtorch call on the async runtime).
fn check_model(cfg: &Config) -> anyhow::Result<String> {
    let dir = &cfg.model.dir;
    let manifest = Manifest::load(dir)?;
    let files = manifest.read_files(dir, cfg.model.verify_checksums)?;
    let tok = TweetTokenizer::from_bytes(&files.tokenizer, manifest.max_length)?;
    let text = "La vaccination contre la grippe commence lundi en pharmacie.";
    let ids = tok.encode_batch(&[text])?;
    let batch = PaddedBatch::new(ids.iter().map(Vec::as_slice), manifest.pad_id);
    let mut model = crate::model::load::load_torch(cfg, dir, &manifest, &files)?;
    let probs = model
        .classify(&batch)
        .context("the model loaded but its forward pass failed")?;
    let p = probs
        .first()
        .context("the model returned no row for one input; the export is broken")?;
    anyhow::ensure!(
        p.len() == model.labels().len() && (p.iter().sum::<f32>() - 1.0).abs() < 1e-3,
        "the model returned {} scores summing to {} for {} labels; re-export it",
        p.len(),
        p.iter().sum::<f32>(),
        model.labels().len()
    );
    Ok(format!(
        "{} in {} on {:?}: one tweet -> {} ({:.3})",
        manifest.model_version(),
        dir.display(),
        model.device(),
        model.labels()[argmax(p)],
        p[argmax(p)]
    ))
}

fn check_broker(cfg: &Config) -> anyhow::Result<String> {
    // The worker's own start-up check first: it says whether the login or TLS failed.
    crate::kafka::preflight(&cfg.kafka, Duration::from_secs(10))?;
    let consumer: BaseConsumer = client_config(&cfg.kafka, &[])
        .create()
        .context("cannot create a Kafka client (check kafka.properties)")?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "the broker at {} does not answer (is it up? scripts/services.sh start locally)",
                cfg.kafka.brokers
            )
        })?;
    let k = &cfg.kafka;
    let mut found = Vec::new();
    let mut topics = vec![
        &k.input_topic,
        &k.output_topic,
        &k.dlq_topic,
        &k.control_topic,
    ];
    if !k.shadow_topic.is_empty() {
        topics.push(&k.shadow_topic);
    }
    for topic in topics {
        let t = md.topics().iter().find(|t| t.name() == topic.as_str());
        match t {
            Some(t) if t.error().is_none() => found.push(format!("{topic} ({} partitions)", t.partitions().len())),
            _ => anyhow::bail!(
                "topic {topic} does not exist on {} (create it: `vaxpulse topics`, or the compose topic-init job)",
                k.brokers
            ),
        }
    }
    Ok(format!(
        "{} broker(s) at {}; {}",
        md.brokers().len(),
        k.brokers,
        found.join(", ")
    ))
}

async fn check_clickhouse(cfg: &Config) -> anyhow::Result<String> {
    let sink = ClickHouseSink::from_config(cfg)?;
    let version: String = sink
        .client()
        .clone()
        .with_database("default")
        .query("SELECT version()")
        .fetch_one()
        .await
        .with_context(|| {
            format!(
                "ClickHouse at {} does not answer as user {} (is it up? right password?)",
                cfg.clickhouse.url, cfg.clickhouse.user
            )
        })?;
    Ok(format!(
        "ClickHouse {version} at {} (database {} is created by the worker if missing)",
        cfg.clickhouse.url, cfg.clickhouse.database
    ))
}

/// Runs every check; the first failure is returned as the error.
pub async fn validate(cfg: &Config) -> anyhow::Result<()> {
    println!("# effective configuration (secrets shown as ***)\n");
    println!("{}", cfg.to_redacted_toml());
    ok("config", "parsed and validated");
    let c = cfg.clone();
    let model = tokio::task::spawn_blocking(move || check_model(&c))
        .await?
        .context("model check failed")?;
    ok("model", model);
    match crate::probe::configured(cfg).context("probe set check failed")? {
        Some(set) => ok(
            "probe set",
            format!(
                "{} texts in {} (sha256 {:.12})",
                set.ids.len(),
                cfg.monitor.probe_file.display(),
                set.sha256
            ),
        ),
        None => ok("probe set", "none (monitor.probe_file is empty)"),
    }
    let c = cfg.clone();
    let broker = tokio::task::spawn_blocking(move || check_broker(&c))
        .await?
        .context("broker check failed")?;
    ok("broker", broker);
    ok(
        "clickhouse",
        check_clickhouse(cfg)
            .await
            .context("ClickHouse check failed")?,
    );
    println!("valid: this configuration can start a worker");
    Ok(())
}
