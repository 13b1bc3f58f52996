//! `vaxpulse bench`: measured throughput and latency of the model alone (`raw`) and the
//! in-process pipeline (`pipeline`). Every figure is also given as a ratio to `raw` measured in
//! the same process, on the same machine; results print as Markdown and are written as JSON.
//! The end-to-end bench through broker and ClickHouse lives in the harness crate
//! (`vaxpulse-harness bench e2e`), which reuses these tables and the raw run.

pub mod firehose;
pub mod pipeline;
pub mod raw;

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::output::write_json;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Raw,
    Pipeline,
    /// raw and pipeline.
    All,
    /// The decoder and relevance filter on firehose payloads, in process and through the broker
    /// (no model).
    Firehose,
}

/// The raw model run every ratio refers to (also used by the harness's e2e bench).
#[derive(Debug, Clone, clap::Args)]
pub struct RawGrid {
    /// Batch sizes of the raw grid (and of the synthetic-distribution raw run).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64,128")]
    pub batch_sizes: Vec<usize>,
    /// Sequence lengths (tokens) of the raw grid.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    pub seq_lens: Vec<usize>,
    /// Time spent on each raw cell, after its warm-up.
    #[arg(long, default_value_t = 2.0)]
    pub cell_seconds: f64,
}

/// Offered loads of the paced runs (in-process and e2e).
#[derive(Debug, Clone, clap::Args)]
pub struct Paced {
    /// Offered loads for the paced runs, as fractions of the measured full-backlog capacity;
    /// `--loads` with no value runs none.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "0.5,0.9")]
    pub loads: Vec<f64>,
    /// Length of each paced run.
    #[arg(long, default_value_t = 15.0)]
    pub paced_seconds: f64,
}

/// Options of `vaxpulse bench` (model, batching and services come from the config).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// raw, pipeline or all (both).
    #[arg(value_enum)]
    pub mode: Mode,
    #[command(flatten)]
    pub grid: RawGrid,
    /// Tweets through the in-process pipeline at full backlog.
    #[arg(long, default_value_t = 20_000)]
    pub tweets: usize,
    #[command(flatten)]
    pub paced: Paced,
    /// Numbers of shadow versions (copies of the model) for extra backlog runs, reported as
    /// ratios to the run without shadows; 0 alone = no shadow runs.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub shadows: Vec<usize>,
    #[command(flatten)]
    pub firehose: firehose::FirehoseArgs,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results/bench.json")]
    pub json: PathBuf,
}

/// The machine the figures were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub gpu: Option<String>,
    pub device: String,
    pub precision: String,
    pub intra_op_threads: usize,
}

impl Machine {
    pub fn detect(cfg: &Config) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let gpu = if tch::Cuda::is_available() {
            std::process::Command::new("nvidia-smi")
                .args(["--query-gpu=name", "--format=csv,noheader"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|s| !s.is_empty())
                .or_else(|| Some("CUDA device".into()))
        } else {
            None
        };
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            gpu,
            device: cfg.model.device.to_string(),
            precision: cfg.model.precision.to_string(),
            intra_op_threads: cfg.model.intra_op_threads,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({} cores){}; model.device = {}, precision = {}, intra_op_threads = {}",
            self.cpu,
            self.cores,
            self.gpu
                .as_ref()
                .map(|g| format!(", GPU {g}"))
                .unwrap_or_default(),
            self.device,
            self.precision,
            self.intra_op_threads
        )
    }
}

/// Everything one `vaxpulse bench` run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub model: String,
    pub raw: raw::RawReport,
    pub pipeline: Option<pipeline::PipelineReport>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From latencies in seconds (sorted here).
    pub fn of(mut seconds: Vec<f64>) -> Option<Self> {
        if seconds.is_empty() {
            return None;
        }
        seconds.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((seconds.len() as f64 * q).ceil() as usize).clamp(1, seconds.len()) - 1;
            seconds[i] * 1e3
        };
        Some(Percentiles {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

pub fn fmt_ms(p: Option<Percentiles>) -> [String; 3] {
    match p {
        Some(p) => [
            format!("{:.1}", p.p50_ms),
            format!("{:.1}", p.p95_ms),
            format!("{:.1}", p.p99_ms),
        ],
        None => ["–".into(), "–".into(), "–".into()],
    }
}

pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{pos}}/{{len}} [{{elapsed_precise}}] {{per_sec}}"
        ))
        .expect("static template; this is a bug"),
    );
    bar
}

/// Runs the benchmark of `args.mode`, prints its tables and writes its JSON.
pub async fn run(cfg: Config, args: BenchArgs) -> anyhow::Result<()> {
    if args.mode == Mode::Firehose {
        let report = firehose::run(&cfg, &args.firehose).await?;
        return write_json(&args.json, &report);
    }
    run_model(cfg, args).await.map(|_| ())
}

/// The model benchmarks (raw, pipeline).
async fn run_model(cfg: Config, args: BenchArgs) -> anyhow::Result<Report> {
    let machine = Machine::detect(&cfg);
    let manifest = crate::model::Manifest::load(&cfg.model.dir)?;
    println!(
        "## vaxpulse bench {:?}: {} on {}\n",
        args.mode,
        manifest.model_version(),
        machine.describe()
    );
    let (cfg2, grid) = (cfg.clone(), args.grid.clone());
    let raw = tokio::task::spawn_blocking(move || raw::run(&cfg2, &grid)).await??;
    print!("{}", raw.render());
    let pipeline = if matches!(args.mode, Mode::Pipeline | Mode::All) {
        let (cfg2, args2, best) = (cfg.clone(), args.clone(), raw.clone());
        let p = tokio::task::spawn_blocking(move || pipeline::run(&cfg2, &args2, &best)).await??;
        print!("{}", p.render());
        Some(p)
    } else {
        None
    };
    let report = Report {
        machine,
        model: manifest.model_version(),
        raw,
        pipeline,
    };
    write_json(&args.json, &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).map(|i| i as f64 / 1e3).collect()).unwrap();
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        assert!(Percentiles::of(vec![]).is_none());
    }
}
