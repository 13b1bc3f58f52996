//! `bench pipeline`: tokenizer pool + batcher + model in this process, exactly the stages the
//! worker runs (`app::start_inference`), fed synthetic tweets at full backlog (bucketing on and
//! off) and then open-loop at fractions of the measured capacity. No broker, no ClickHouse.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use super::raw::RawReport;
use super::{fmt_ms, progress, BenchArgs, Percentiles};
use crate::output::Table;
use std::sync::Arc;

use crate::app::{start_inference, Active};
use crate::batch::offsets::OffsetTracker;
use crate::config::Config;
use crate::deploy::store::load_checked;
use crate::deploy::Deployment;
use crate::model::load::torch_factory;
use crate::synthetic::Generator;
use crate::tweet::Tweet;
use crate::work::Work;

#[derive(Debug, Clone, Serialize)]
pub struct PipelineRun {
    pub name: String,
    pub length_bucketing: bool,
    /// Offered tweets/s for paced runs; `None` at full backlog.
    pub offered_per_second: Option<f64>,
    pub tweets: usize,
    /// Shadow versions scored beside the champion (copies of the same model).
    pub shadows: usize,
    /// Shadow results that came out, as a share of `tweets × shadows` (the rest was skipped).
    pub shadow_coverage: Option<f64>,
    pub texts_per_second: f64,
    pub ratio_to_raw: f64,
    /// Share of computed token positions that are padding.
    pub padding_waste: f64,
    pub mean_batch_size: f64,
    /// From handing a tweet to the pipeline to its classified batch coming out.
    pub latency: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub tokenizer_threads: usize,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_wait_ms: u64,
    /// Raw model time of one full batch (`max_batch_size` synthetic tweets).
    pub batch_compute_ms: f64,
    /// The latency target at 50 % load: `max_wait_ms + 2 × batch_compute_ms`.
    pub p99_target_ms: f64,
    pub runs: Vec<PipelineRun>,
}

impl PipelineReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "### pipeline: tokenizer ({} threads) + batcher (≤ {} tweets, ≤ {} padded tokens, ≤ {} ms) + model, in process\n\n",
            self.tokenizer_threads, self.max_batch_size, self.max_batch_tokens, self.max_wait_ms
        );
        let mut t = Table::new(&[
            "run",
            "bucketing",
            "shadows",
            "shadow coverage",
            "offered/s",
            "tweets/s",
            "× raw best",
            "padding waste",
            "mean batch",
            "p50 ms",
            "p95 ms",
            "p99 ms",
        ]);
        for r in &self.runs {
            let [p50, p95, p99] = fmt_ms(r.latency);
            t.row(vec![
                r.name.clone(),
                if r.length_bucketing { "on" } else { "off" }.into(),
                r.shadows.to_string(),
                r.shadow_coverage
                    .map_or("-".into(), |c| format!("{:.1} %", c * 100.0)),
                r.offered_per_second
                    .map_or("backlog".into(), |o| format!("{o:.0}")),
                format!("{:.0}", r.texts_per_second),
                format!("{:.2}", r.ratio_to_raw),
                format!("{:.1} %", r.padding_waste * 100.0),
                format!("{:.1}", r.mean_batch_size),
                p50,
                p95,
                p99,
            ]);
        }
        out.push_str(&t.render());
        let base = self
            .runs
            .iter()
            .find(|r| r.shadows == 0 && r.offered_per_second.is_none() && r.length_bucketing);
        if let Some(base) = base {
            for r in self.runs.iter().filter(|r| r.shadows > 0) {
                out.push_str(&format!(
                    "\nshadow cost: {} shadow(s) = {:.2} × the throughput without shadows ({:.0} vs {:.0} tweets/s)",
                    r.shadows,
                    r.texts_per_second / base.texts_per_second,
                    r.texts_per_second,
                    base.texts_per_second
                ));
            }
        }
        out.push_str(&format!(
            "\nlatency target at 50 % load: p99 ≤ max_wait_ms + 2 × batch compute = {} + 2 × {:.1} = {:.1} ms\n\n",
            self.max_wait_ms, self.batch_compute_ms, self.p99_target_ms
        ));
        out
    }
}

/// The configured model as champion, plus `shadows` more copies of it as shadow versions
/// (named `VERSION-shadowN`), each loaded and checked like a deployment.
fn active_with_shadows(cfg: &Config, shadows: usize) -> anyhow::Result<Active> {
    let factory = torch_factory(cfg);
    let champion = load_checked(cfg, &cfg.model.dir, None, &factory)?;
    let deployment = Deployment::bootstrap(champion.id.clone());
    let shadows = (1..=shadows)
        .map(|i| {
            let mut m = load_checked(cfg, &cfg.model.dir, None, &factory)?;
            m.id.version = format!("{}-shadow{i}", m.id.version);
            Ok(Arc::new(m))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Active {
        deployment,
        champion: Arc::new(champion),
        shadows,
    })
}

fn one_run(
    cfg: &Config,
    tweets: &[Tweet],
    rate: Option<f64>,
    shadows: usize,
    name: &str,
    raw_best: f64,
) -> anyhow::Result<PipelineRun> {
    let active = active_with_shadows(cfg, shadows)?;
    let mut inf = start_inference(cfg, active, torch_factory(cfg), None, Default::default());
    drop(inf.deployments);
    let mut shadow_output = inf.shadow_output;
    let shadow_rows = std::thread::spawn(move || {
        let mut n = 0usize;
        while let Some(b) = shadow_output.blocking_recv() {
            n += b.rows.len();
        }
        n
    });
    let tracker = OffsetTracker::new();
    let work = |i: usize, t: &Tweet| Work::new(t.clone(), tracker.track(0, i as i64));
    // Model loaded and warmed up before the clock starts.
    inf.input.send(work(usize::MAX >> 1, &tweets[0]))?;
    inf.output
        .blocking_recv()
        .ok_or_else(|| anyhow::anyhow!("the pipeline stopped during start-up"))?;
    let (real0, pad0) = crate::telemetry::model_tokens();
    let bar = progress(tweets.len() as u64, name);
    let started = Instant::now();
    let feeder = {
        let input = inf.input.clone();
        let tweets = tweets.to_vec();
        let tracker_acks: Vec<_> = (0..tweets.len())
            .map(|i| tracker.track(0, i as i64))
            .collect();
        std::thread::spawn(move || {
            for (i, (t, ack)) in tweets.into_iter().zip(tracker_acks).enumerate() {
                if let Some(r) = rate {
                    let due = started + Duration::from_secs_f64(i as f64 / r);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                if input.send(Work::new(t, ack)).is_err() {
                    break;
                }
            }
        })
    };
    drop(inf.input);
    let mut latencies = Vec::with_capacity(tweets.len());
    let mut batches = 0usize;
    let mut last = started;
    while latencies.len() < tweets.len() {
        let Some(b) = inf.output.blocking_recv() else {
            break;
        };
        last = Instant::now();
        batches += 1;
        latencies.extend(
            b.received
                .iter()
                .map(|r| last.saturating_duration_since(*r).as_secs_f64()),
        );
        bar.set_position(latencies.len() as u64);
    }
    bar.finish_and_clear();
    let _ = feeder.join();
    drop(inf.output);
    for t in inf.threads.into_iter().chain([inf.loader]) {
        t.join()
            .map_err(|_| anyhow::anyhow!("a pipeline thread panicked"))??;
    }
    let shadow_rows = shadow_rows
        .join()
        .map_err(|_| anyhow::anyhow!("the shadow drain panicked"))?;
    anyhow::ensure!(
        latencies.len() == tweets.len(),
        "{} of {} tweets came out of the pipeline",
        latencies.len(),
        tweets.len()
    );
    let secs = last.duration_since(started).as_secs_f64();
    let (real1, pad1) = crate::telemetry::model_tokens();
    let (real, pad) = (real1 - real0, pad1 - pad0);
    let texts_per_second = tweets.len() as f64 / secs;
    Ok(PipelineRun {
        name: name.into(),
        length_bucketing: cfg.batch.length_bucketing,
        offered_per_second: rate,
        tweets: tweets.len(),
        shadows,
        // The start-up tweet was scored by the shadows too.
        shadow_coverage: (shadows > 0)
            .then(|| shadow_rows.saturating_sub(shadows) as f64 / (tweets.len() * shadows) as f64),
        texts_per_second,
        ratio_to_raw: texts_per_second / raw_best,
        padding_waste: pad as f64 / (real + pad).max(1) as f64,
        mean_batch_size: tweets.len() as f64 / batches.max(1) as f64,
        latency: Percentiles::of(latencies),
    })
}

pub fn run(cfg: &Config, args: &BenchArgs, raw: &RawReport) -> anyhow::Result<PipelineReport> {
    let mut g = Generator::new(2, Utc::now(), 5);
    let tweets: Vec<Tweet> = (0..args.tweets)
        .map(|_| {
            let t = g.tweet();
            Tweet {
                id: t.id,
                text: t.text,
                created_at: t.created_at,
                lang: "fr".into(),
            }
        })
        .collect();
    let raw_best = raw.best_texts_per_second();
    let mut runs = Vec::new();
    for bucketing in [true, false] {
        let mut c = cfg.clone();
        c.batch.length_bucketing = bucketing;
        let name = format!(
            "backlog, bucketing {}",
            if bucketing { "on" } else { "off" }
        );
        runs.push(one_run(&c, &tweets, None, 0, &name, raw_best)?);
    }
    for &n in args.shadows.iter().filter(|&&n| n > 0) {
        let name = format!("backlog, {n} shadow{}", if n == 1 { "" } else { "s" });
        runs.push(one_run(cfg, &tweets, None, n, &name, raw_best)?);
    }
    let capacity = runs[0].texts_per_second;
    for &load in &args.paced.loads {
        let rate = capacity * load;
        let n = ((rate * args.paced.paced_seconds) as usize).clamp(100, tweets.len());
        let name = format!("{:.0} % load", load * 100.0);
        runs.push(one_run(cfg, &tweets[..n], Some(rate), 0, &name, raw_best)?);
    }
    let batch_compute_ms = raw.batch_ms(cfg.batch.max_batch_size);
    Ok(PipelineReport {
        tokenizer_threads: cfg.pipeline.tokenizer_threads,
        max_batch_size: cfg.batch.max_batch_size,
        max_batch_tokens: cfg.batch.max_batch_tokens,
        max_wait_ms: cfg.batch.max_wait_ms,
        batch_compute_ms,
        p99_target_ms: cfg.batch.max_wait_ms as f64 + 2.0 * batch_compute_ms,
        runs,
    })
}
