//! `bench raw`: the model alone, on the inference thread's own code path (`Classifier`), with
//! tokenisation done beforehand: fixed shapes (batch × length) and the synthetic tweet length
//! distribution in arrival order. Its best figure is the ceiling the other modes are divided by.

use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use super::{progress, RawGrid};
use crate::config::Config;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::{warm_up, Classifier, Manifest, PaddedBatch};
use crate::output::Table;
use crate::synthetic::Generator;

/// One fixed shape.
#[derive(Debug, Clone, Serialize)]
pub struct GridCell {
    pub batch_size: usize,
    pub seq_len: usize,
    pub texts_per_second: f64,
    pub tokens_per_second: f64,
    pub ms_per_batch: f64,
}

/// Synthetic tweets in arrival order, padded to each batch's longest.
#[derive(Debug, Clone, Serialize)]
pub struct SyntheticCell {
    pub batch_size: usize,
    pub texts_per_second: f64,
    pub ms_per_batch: f64,
    /// Share of computed token positions that are padding.
    pub padding_waste: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawReport {
    pub mean_tokens_per_tweet: f64,
    pub grid: Vec<GridCell>,
    pub synthetic: Vec<SyntheticCell>,
    /// The best synthetic cell: the denominator of every ratio.
    pub best: SyntheticCell,
}

impl RawReport {
    pub fn best_texts_per_second(&self) -> f64 {
        self.best.texts_per_second
    }

    /// Model time of one batch of `batch_size` synthetic tweets (closest measured size).
    pub fn batch_ms(&self, batch_size: usize) -> f64 {
        self.synthetic
            .iter()
            .min_by_key(|c| c.batch_size.abs_diff(batch_size))
            .map_or(self.best.ms_per_batch, |c| c.ms_per_batch)
    }

    pub fn render(&self) -> String {
        let mut out = String::from("### raw: model only, fixed shapes\n\n");
        let mut t = Table::new(&["batch", "tokens", "texts/s", "tokens/s", "ms/batch"]);
        for c in &self.grid {
            t.row(vec![
                c.batch_size.to_string(),
                c.seq_len.to_string(),
                format!("{:.0}", c.texts_per_second),
                format!("{:.0}", c.tokens_per_second),
                format!("{:.2}", c.ms_per_batch),
            ]);
        }
        out.push_str(&t.render());
        out.push_str(&format!(
            "\n### raw: model only, synthetic tweets in arrival order ({:.1} tokens/tweet)\n\n",
            self.mean_tokens_per_tweet
        ));
        let mut t = Table::new(&["batch", "texts/s", "ms/batch", "padding waste", "× best"]);
        for c in &self.synthetic {
            t.row(vec![
                c.batch_size.to_string(),
                format!("{:.0}", c.texts_per_second),
                format!("{:.2}", c.ms_per_batch),
                format!("{:.1} %", c.padding_waste * 100.0),
                format!("{:.2}", c.texts_per_second / self.best.texts_per_second),
            ]);
        }
        out.push_str(&t.render());
        out.push_str(&format!(
            "\nraw best: {:.0} texts/s at batch {} — the denominator of every ratio below.\n\n",
            self.best.texts_per_second, self.best.batch_size
        ));
        out
    }
}

/// Tokenised synthetic tweets (seeded), as the pipeline would see them.
pub fn corpus(
    cfg: &Config,
    manifest: &Manifest,
    n: usize,
    seed: u64,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let tok = TweetTokenizer::load(
        &cfg.model.dir.join(&manifest.files.tokenizer.path),
        manifest.max_length,
    )?;
    let mut g = Generator::new(seed, Utc::now(), 5);
    let texts: Vec<String> = (0..n).map(|_| g.tweet().text).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(tok.encode_batch(&refs)?)
}

/// Runs `batches` cyclically for at least `seconds` and two batches; returns (batches, seconds).
fn time_batches(
    model: &mut dyn Classifier,
    batches: &[PaddedBatch],
    seconds: f64,
) -> anyhow::Result<(usize, f64)> {
    let started = Instant::now();
    let mut n = 0;
    while n < 2 || started.elapsed().as_secs_f64() < seconds {
        model.classify(&batches[n % batches.len()])?;
        n += 1;
    }
    Ok((n, started.elapsed().as_secs_f64()))
}

pub fn run(cfg: &Config, args: &RawGrid) -> anyhow::Result<RawReport> {
    let manifest = Manifest::load(&cfg.model.dir)?;
    let files = manifest.read_files(&cfg.model.dir, cfg.model.verify_checksums)?;
    let mut model = crate::model::load::load_torch(cfg, &cfg.model.dir, &manifest, &files)?;
    drop(files);
    let max_b = args.batch_sizes.iter().copied().max().unwrap_or(64);
    let ids = corpus(cfg, &manifest, (max_b * 8).max(1024), 1)?;
    let mean_tokens = ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len() as f64;
    let stream: Vec<u32> = ids.iter().flatten().copied().collect();
    let bar = progress(
        (args.batch_sizes.len() * (args.seq_lens.len() + 1)) as u64,
        "raw cells",
    );

    let mut grid = Vec::new();
    for &b in &args.batch_sizes {
        for &l in &args.seq_lens {
            let l = l.min(manifest.max_length);
            let rows: Vec<&[u32]> = (0..b)
                .map(|r| {
                    let start = (r * l) % (stream.len() - l);
                    &stream[start..start + l]
                })
                .collect();
            let batch = PaddedBatch::new(rows.into_iter(), manifest.pad_id);
            warm_up(&mut model, &[(b, l)])?;
            let (n, secs) =
                time_batches(&mut model, std::slice::from_ref(&batch), args.cell_seconds)?;
            grid.push(GridCell {
                batch_size: b,
                seq_len: l,
                texts_per_second: (n * b) as f64 / secs,
                tokens_per_second: (n * b * l) as f64 / secs,
                ms_per_batch: secs * 1e3 / n as f64,
            });
            bar.inc(1);
        }
    }

    let mut synthetic = Vec::new();
    for &b in &args.batch_sizes {
        let batches: Vec<PaddedBatch> = ids
            .chunks(b)
            .filter(|c| c.len() == b)
            .map(|c| PaddedBatch::new(c.iter().map(Vec::as_slice), manifest.pad_id))
            .collect();
        model.classify(&batches[0])?;
        let (n, secs) = time_batches(&mut model, &batches, args.cell_seconds)?;
        let (real, padded) = batches.iter().cycle().take(n).fold((0, 0), |(r, p), x| {
            (
                r + x.mask.iter().filter(|&&m| m == 1).count(),
                p + x.padded_tokens(),
            )
        });
        synthetic.push(SyntheticCell {
            batch_size: b,
            texts_per_second: (n * b) as f64 / secs,
            ms_per_batch: secs * 1e3 / n as f64,
            padding_waste: 1.0 - real as f64 / padded as f64,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let best = synthetic
        .iter()
        .max_by(|a, b| a.texts_per_second.total_cmp(&b.texts_per_second))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("give at least one --batch-sizes value"))?;
    Ok(RawReport {
        mean_tokens_per_tweet: mean_tokens,
        grid,
        synthetic,
        best,
    })
}
