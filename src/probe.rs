//! The probe set: fixed texts every replica scores with every deployed version (at start, at
//! each deployment, every `monitor.probe_interval_s`). The same weights on the same texts must
//! give the same probabilities; a run that moves by more than `monitor.probe_max_abs_diff` from
//! the version's first stored run (or its previous one) is flagged — a changed library, device
//! or precision changed its predictions. Scoring happens on the model thread between batches
//! (no libtorch off it); comparing and storing happens on the runtime (ClickHouse `probe_runs`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::deploy::store::LoadedModel;
use crate::model::PaddedBatch;
use crate::sink::clickhouse::schema::PROBE_RUNS;
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::SinkError;

/// The texts, by id, and the sha256 of the file (runs compare only within one probe set).
#[derive(Debug, Clone)]
pub struct ProbeSet {
    pub sha256: String,
    pub ids: Vec<String>,
    pub texts: Vec<String>,
}

#[derive(Deserialize)]
struct ProbeLine {
    id: String,
    text: String,
}

impl ProbeSet {
    /// Reads a JSONL file of `{"id": ..., "text": ...}` lines.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the probe set {} (monitor.probe_file; set it to \"\" to run without probes)",
                path.display()
            )
        })?;
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        let (mut ids, mut texts) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let p: ProbeLine = serde_json::from_str(line).with_context(|| {
                format!(
                    "{} line {}: expected {{\"id\": ..., \"text\": ...}}",
                    path.display(),
                    i + 1
                )
            })?;
            anyhow::ensure!(
                !ids.contains(&p.id),
                "{} line {}: probe id {} appears twice",
                path.display(),
                i + 1,
                p.id
            );
            ids.push(p.id);
            texts.push(p.text);
        }
        anyhow::ensure!(!ids.is_empty(), "the probe set {} is empty", path.display());
        Ok(ProbeSet {
            sha256: format!("{:x}", Sha256::digest(&bytes)),
            ids,
            texts,
        })
    }
}

/// One version's probabilities on the probe set, as scored on one replica.
#[derive(Debug, Clone)]
pub struct ProbeRun {
    pub at: DateTime<Utc>,
    pub model_version: String,
    pub model_hash: String,
    pub labels: Vec<String>,
    pub scores: Vec<Vec<f32>>,
}

/// Scores the probe set with `model` (its own tokenizer, one padded batch). Call it where that
/// model may run: an inference thread.
pub fn score(set: &ProbeSet, model: &LoadedModel) -> anyhow::Result<ProbeRun> {
    let texts: Vec<&str> = set.texts.iter().map(String::as_str).collect();
    let ids = model.tokenizer.encode_batch(&texts)?;
    let padded = PaddedBatch::new(ids.iter().map(Vec::as_slice), model.manifest.pad_id);
    let scores = model
        .model
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .classify(&padded)?;
    Ok(ProbeRun {
        at: Utc::now(),
        model_version: model.id.version_label(),
        model_hash: model.id.hash.clone(),
        labels: model.labels.clone(),
        scores,
    })
}

/// Largest absolute difference between two score matrices; infinite when their shapes differ
/// (a different label set or probe set cannot be "close").
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())))
        .fold(0.0, f64::max)
}

/// A row of `probe_runs`.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct ProbeRow {
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub at: DateTime<Utc>,
    pub group_id: String,
    pub replica: String,
    pub device: String,
    pub model_version: String,
    pub model_hash: String,
    pub probe_set: String,
    pub probe_ids: Vec<String>,
    pub labels: Vec<String>,
    pub scores: Vec<Vec<f32>>,
    pub max_deviation: f64,
    pub max_deviation_previous: f64,
    pub flagged: u8,
}

/// The version's first and latest stored runs (empty when `runs` is 0).
impl crate::sink::clickhouse::StoredRow for ProbeRow {
    const TABLE: &'static str = crate::sink::clickhouse::schema::PROBE_RUNS;
}

#[derive(Row, Deserialize)]
struct StoredRuns {
    runs: u64,
    first: Vec<Vec<f32>>,
    previous: Vec<Vec<f32>>,
}

/// Compares `run` with the version's first and latest stored runs on this probe set (any
/// replica), stores it, and returns the row. The first run of a version is its reference.
pub async fn record(
    sink: &ClickHouseSink,
    set: &ProbeSet,
    group_id: &str,
    replica: &str,
    device: &str,
    bound: f64,
    run: ProbeRun,
) -> anyhow::Result<ProbeRow> {
    let stored: StoredRuns = sink
        .client()
        .query(&format!(
            "SELECT count() AS runs, argMin(scores, at) AS first, argMax(scores, at) AS previous
             FROM {PROBE_RUNS}
             WHERE model_version = ? AND model_hash = ? AND probe_set = ? AND labels = ?"
        ))
        .bind(&run.model_version)
        .bind(&run.model_hash)
        .bind(&set.sha256)
        .bind(&run.labels)
        .fetch_one()
        .await
        .map_err(SinkError::from)?;
    let dev = |s: &[Vec<f32>]| {
        if stored.runs == 0 {
            0.0
        } else {
            max_abs_diff(s, &run.scores)
        }
    };
    let (max_deviation, max_deviation_previous) = (dev(&stored.first), dev(&stored.previous));
    let flagged = max_deviation.max(max_deviation_previous) > bound;
    let row = ProbeRow {
        at: run.at,
        group_id: group_id.to_string(),
        replica: replica.to_string(),
        device: device.to_string(),
        model_version: run.model_version,
        model_hash: run.model_hash,
        probe_set: set.sha256.clone(),
        probe_ids: set.ids.clone(),
        labels: run.labels,
        scores: run.scores,
        // ClickHouse stores no infinity in a way analysts expect to read: a shape change is 1.0.
        max_deviation: max_deviation.min(1.0),
        max_deviation_previous: max_deviation_previous.min(1.0),
        flagged: u8::from(flagged),
    };
    sink.record(&row).await?;
    Ok(row)
}

/// What the model thread hands to the probe recorder.
pub type ProbeSender = tokio::sync::mpsc::Sender<ProbeRun>;

/// Where the probe ran: the resolved device and the precision (`cpu fp32`, `cuda:0 fp16`).
pub fn device_label(cfg: &crate::config::Config) -> String {
    let device = match cfg.model.device {
        crate::model::DeviceSpec::Auto if tch::Cuda::is_available() => "cuda:0".to_string(),
        crate::model::DeviceSpec::Auto => "cpu".to_string(),
        d => d.to_string(),
    };
    format!("{device} {}", cfg.model.precision)
}

/// The probe set when `monitor.probe_file` is set.
pub fn configured(cfg: &crate::config::Config) -> anyhow::Result<Option<Arc<ProbeSet>>> {
    if cfg.monitor.probe_file.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(ProbeSet::load(&cfg.monitor.probe_file)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deviation_is_the_largest_probability_change_and_shapes_must_match() {
        let a = vec![vec![0.2f32, 0.8], vec![0.5, 0.5]];
        let b = vec![vec![0.2005f32, 0.7995], vec![0.5, 0.5]];
        let d = max_abs_diff(&a, &b);
        assert!((d - 5e-4).abs() < 1e-6, "{d}");
        assert_eq!(max_abs_diff(&a, &a), 0.0);
        assert!(max_abs_diff(&a, &a[..1]).is_infinite());
        assert!(max_abs_diff(&a, &[vec![0.2, 0.8], vec![1.0]]).is_infinite());
    }

    #[test]
    fn the_shipped_probe_set_loads_and_bad_files_say_what_is_wrong() {
        let set = ProbeSet::load(Path::new("data/probe_fr.jsonl")).unwrap();
        assert!(set.ids.len() >= 20 && set.ids.len() == set.texts.len());
        assert_eq!(set.sha256.len(), 64);
        let dir = std::env::temp_dir().join(format!("vaxpulse-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dup = dir.join("dup.jsonl");
        std::fs::write(
            &dup,
            "{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"a\",\"text\":\"y\"}\n",
        )
        .unwrap();
        let e = ProbeSet::load(&dup).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"text\":\"no id\"}\n").unwrap();
        let e = ProbeSet::load(&bad).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = ProbeSet::load(&dir.join("missing.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("monitor.probe_file"), "{e}");
    }
}
