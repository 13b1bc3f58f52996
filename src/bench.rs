//! `vaxpulse bench-raw`: the model alone on synthetic tweets at a fixed batch size — the ceiling
//! the pipeline's throughput is compared against (same process, same machine).

use std::time::Instant;

use anyhow::Context;
use chrono::Utc;

use crate::config::Config;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::{Classifier, DeviceSpec, Manifest, PaddedBatch};
use crate::synthetic::Generator;

/// Result of a raw model run.
#[derive(Debug, serde::Serialize)]
pub struct RawResult {
    pub batch_size: usize,
    pub texts: usize,
    pub mean_tokens: f64,
    pub seconds: f64,
    pub texts_per_second: f64,
}

/// Runs `texts` synthetic tweets through the model in batches of `batch_size` (arrival order,
/// padded to each batch's longest), after one warm-up batch.
pub fn raw(cfg: &Config, batch_size: usize, texts: usize) -> anyhow::Result<RawResult> {
    let dir = &cfg.model.dir;
    let manifest = Manifest::load(dir)?;
    let tok = TweetTokenizer::load(
        &dir.join(&manifest.files.tokenizer.path),
        manifest.max_length,
    )?;
    let device = DeviceSpec::parse(&cfg.model.device).map_err(anyhow::Error::msg)?;
    let mut model = crate::model::torch::TorchClassifier::load(
        dir,
        &manifest,
        device,
        cfg.model.intra_op_threads,
    )
    .context("loading the model")?;
    let mut g = Generator::new(1, Utc::now(), 5);
    let corpus: Vec<String> = (0..texts).map(|_| g.tweet().text).collect();
    let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let ids = tok.encode_batch(&refs)?;
    let batches: Vec<PaddedBatch> = ids
        .chunks(batch_size)
        .map(|c| PaddedBatch::new(c.iter().map(Vec::as_slice), manifest.pad_id))
        .collect();
    model.classify(&batches[0])?;
    let started = Instant::now();
    for b in &batches {
        model.classify(b)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RawResult {
        batch_size,
        texts,
        mean_tokens: ids.iter().map(Vec::len).sum::<usize>() as f64 / texts as f64,
        seconds,
        texts_per_second: texts as f64 / seconds,
    })
}
