//! The `vaxpulse` command line: parse, start logging, call into the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use vaxpulse::config::Config;
use vaxpulse::produce::{produce, Input, ProduceOptions};
use vaxpulse::sink::clickhouse::ClickHouseSink;

#[derive(Parser)]
#[command(
    name = "vaxpulse",
    version,
    about = "Opinion on vaccination in French tweets: Kafka → CamemBERT → Kafka + ClickHouse"
)]
struct Cli {
    /// Config file (TOML); `VAXPULSE_<SECTION>_<KEY>` variables override it.
    #[arg(long, short, global = true, env = "VAXPULSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM/SIGINT.
    Run,
    /// Create the ClickHouse database, tables and views (idempotent).
    Schema,
    /// Create the input, output, dead-letter and control (and shadow) topics if missing.
    Topics {
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Push tweets into the input topic.
    Produce {
        /// JSONL file, one payload per line.
        #[arg(long, conflicts_with = "synthetic")]
        file: Option<PathBuf>,
        /// Generate N synthetic French tweets.
        #[arg(long)]
        synthetic: Option<u64>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Days the synthetic tweets' timestamps spread over (ending now).
        #[arg(long, default_value_t = 5)]
        days: u32,
        /// Messages per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Topic (default: kafka.input_topic).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Checks a deployment before it starts: configuration, model directory (manifest,
    /// checksums, one forward pass), broker and ClickHouse reachable; prints the effective
    /// configuration (secrets as ***) and exits non-zero on the first problem.
    Validate,
    /// Model directories.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Benchmarks: raw model and in-process pipeline (Markdown tables + JSON). The end-to-end
    /// bench and the fault-injection suite are in `vaxpulse-harness`.
    Bench(vaxpulse::bench::BenchArgs),
    /// Evaluate a model version on labelled tweets (JSONL[.gz]: a payload or {"text": ...} plus
    /// "label"), through the worker's tokenizer, batcher and model; table, JSON and a row per
    /// model in ClickHouse `model_evaluations`.
    Eval {
        /// NAME@VERSION in model.store_dir.
        #[arg(long)]
        model: String,
        #[arg(long)]
        data: PathBuf,
        /// A second version scored on the same items, with McNemar's test on the disagreements.
        #[arg(long)]
        compare: Option<String>,
        /// Fail on the first unreadable line instead of counting and skipping it.
        #[arg(long)]
        strict: bool,
        #[arg(long, default_value = "bench-results/eval.json")]
        json: PathBuf,
        /// Do not write the result to ClickHouse.
        #[arg(long)]
        no_store: bool,
    },
    /// Prediction stability: the champion's label distribution per window, its PSI against a
    /// reference (watch ≥ 0.1, alert ≥ 0.25), champion–shadow agreement; exits 2 on an alert.
    Monitor {
        /// Daily windows (default hourly).
        #[arg(long)]
        daily: bool,
        /// Reference = the first N days of data (unless pinned).
        #[arg(long, default_value_t = 1)]
        reference_days: u32,
        /// Pinned reference start (RFC 3339), with --reference-to.
        #[arg(long, requires = "reference_to")]
        reference_from: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, requires = "reference_from")]
        reference_to: Option<chrono::DateTime<chrono::Utc>>,
        /// Windows reported, ending with the newest (default 48 hours, or 30 days with
        /// --daily); only those and the reference are read.
        #[arg(long)]
        windows: Option<u32>,
        #[arg(long, default_value = "bench-results/monitor.json")]
        json: PathBuf,
        /// Also write the drift chart (PSI per window with the thresholds, agreement with each
        /// shadow) to this .svg or .png file.
        #[arg(long)]
        chart: Option<PathBuf>,
    },
    /// Annotation: draw samples of recent traffic, serve the annotation page, make tokens.
    Annotate {
        #[command(subcommand)]
        command: AnnotateCommand,
    },
    /// Live quality per version from the annotations: weighted accuracy and macro-F1 with
    /// intervals, recall, each shadow against the champion (McNemar), labels still needed.
    Quality {
        /// Samples drawn from this time on (RFC 3339); default quality.window_days ago.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only this sample.
        #[arg(long)]
        sample: Option<String>,
        /// The champion to compare with (NAME@VERSION#HASH); default the identity whose
        /// newest prediction of these tweets was a champion one.
        #[arg(long)]
        champion: Option<String>,
        /// Store the temperature fitted per version on these labels (`calibrations`): CBPE
        /// and later reports use it.
        #[arg(long)]
        calibrate: bool,
        #[arg(long, default_value = "bench-results/quality.json")]
        json: PathBuf,
    },
    /// Tweets per day (or hour) × label from ClickHouse: the champion series, or one version's
    /// own predictions; as a table, CSV or JSON, and optionally a chart.
    Report {
        #[arg(long)]
        hourly: bool,
        #[arg(long)]
        model_version: Option<String>,
        /// Only from this time on (RFC 3339, e.g. 2026-11-01T00:00:00Z); default the whole
        /// history.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, value_enum, default_value = "table")]
        format: vaxpulse::analytics::report::Format,
        /// Also write the opinion chart (share per label with the volume beneath) to this
        /// .svg or .png file.
        #[arg(long)]
        chart: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Runs DIR's parity.json through the worker's serving path (CPU, fp32): token ids must be
    /// equal and probabilities within the bound of the reference (model.parity_max_abs_diff,
    /// 1e-4; for a quantised export the int8 bounds); exits non-zero otherwise.
    Check {
        dir: PathBuf,
        /// Overrides the bound on |Δp|.
        #[arg(long)]
        max_abs_diff: Option<f64>,
    },
    /// Versions in the model store (model.store_dir) and their role in the group's deployment.
    List,
    /// The group's deployment (control topic), its last changes and each replica's state.
    Status,
    /// Add NAME@VERSION from the model store as a shadow (or, with --champion, make it the
    /// champion at once). Checked here first (checksums, parity), then by every replica.
    Deploy {
        model: String,
        #[arg(long)]
        champion: bool,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Make a shadow the champion; the old champion stays on as a shadow. The quality gate
    /// decides first (live labels, McNemar, probes, drift: `vaxpulse quality`); `--force
    /// --reason WHY` overrides it, and the override is recorded.
    Promote {
        model: String,
        /// Promote although the quality gate refuses (needs --reason).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Return to the champion before the last promotion.
    Rollback {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Stop scoring a shadow.
    Retire {
        model: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Make a signing key for deployment records: writes the private key to OUT (mode 0600,
    /// never overwritten; give it as deploy.signing_key_file) and prints the public key for
    /// every replica's deploy.trusted_keys.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AnnotateCommand {
    /// Draw a sample of the champion's tweets of the last hours for annotation (uniform part
    /// plus over-sampled disagreements and low confidence; quality.* sets the sizes).
    Sample {
        /// Hours of traffic, ending at the start of this hour.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// End of the window (RFC 3339, rounded down to the hour); default now.
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Sample id (default: the window's end and this moment).
        #[arg(long)]
        id: Option<String>,
    },
    /// Serve the annotation page on annotate.listen until SIGTERM/SIGINT.
    Serve,
    /// Make a token for annotator NAME: prints the token (give it to them) and the line to
    /// append to annotate.tokens_file (it holds only the token's hash).
    Token { name: String },
    /// Label a sample from the synthetic generator's own ground truth (the demo's annotator):
    /// the same --seed/--days as `produce --synthetic` regenerate each tweet's true opinion.
    Simulate {
        /// COUNT:SEED of each `produce --synthetic COUNT --seed SEED` run (repeat the flag).
        #[arg(long, value_name = "COUNT:SEED", required = true)]
        synthetic: Vec<String>,
        /// The `--days` those runs used.
        #[arg(long, default_value_t = 5)]
        days: u32,
        #[arg(long, default_value = "demo-annotator")]
        annotator: String,
        /// Share of labels given wrong on purpose (a careless annotator).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Stop after this many labels.
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        sample: Option<String>,
    },
}

#[derive(clap::Args)]
struct ChangeArgs {
    /// Why (recorded with the change).
    #[arg(long, default_value = "")]
    reason: String,
    /// Wait until this many replicas applied the change, and print how long each took.
    #[arg(long, default_value_t = 0)]
    wait_replicas: usize,
    /// How long --wait-replicas waits.
    #[arg(long, default_value_t = 60)]
    wait_timeout_s: u64,
}

impl ChangeArgs {
    fn options(&self) -> vaxpulse::deploy::ops::ChangeOptions {
        vaxpulse::deploy::ops::ChangeOptions {
            reason: self.reason.clone(),
            wait_replicas: self.wait_replicas,
            wait_timeout: Duration::from_secs(self.wait_timeout_s),
        }
    }
}

fn model_id(s: &str) -> anyhow::Result<vaxpulse::model::ModelId> {
    vaxpulse::model::ModelId::parse(s).map_err(anyhow::Error::msg)
}

async fn models_change(
    cfg: &Config,
    change: vaxpulse::deploy::Change,
    args: &ChangeArgs,
) -> anyhow::Result<()> {
    let o = vaxpulse::deploy::ops::change(cfg, change, &args.options()).await?;
    println!(
        "{} published to {} for group {}
  before: {}
  after:  {}",
        o.after.action,
        cfg.kafka.control_topic,
        cfg.kafka.group_id,
        o.before.summary(),
        o.after.summary()
    );
    for (replica, ms) in &o.applied {
        println!("  applied by {replica} {ms} ms after the change");
    }
    Ok(())
}

/// The quality gate before a promotion: prints the verdict, stores the decision, and returns
/// the reason to record with the change (an override says so); refuses unless it passed or
/// `force` (with a reason).
async fn gate(
    cfg: &Config,
    m: &vaxpulse::model::ModelId,
    force: bool,
    reason: &str,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        !force || !reason.trim().is_empty(),
        "--force needs --reason WHY: the override is recorded with the change"
    );
    let (candidate, champion) = vaxpulse::deploy::ops::promotion_pair(cfg, m).await?;
    let sink = ClickHouseSink::from_config(cfg)?;
    let actor = vaxpulse::deploy::actor();
    let verdict = vaxpulse::quality::check_promotion(
        cfg,
        &sink,
        &candidate.to_string(),
        &champion.to_string(),
    )
    .await;
    let v = match verdict {
        Ok(v) => v,
        Err(e) if force => {
            eprintln!("the quality gate could not be evaluated ({e:#}); forced");
            return Ok(format!(
                "forced past the quality gate (not evaluated: {e:#}): {reason}"
            ));
        }
        Err(e) => anyhow::bail!(
            "the quality gate could not be evaluated: {e:#}; fix that, or pass --force --reason WHY"
        ),
    };
    print!("{}", v.render());
    let outcome = match (v.passed, force) {
        (true, _) => "passed",
        (false, true) => "forced",
        (false, false) => "refused",
    };
    v.record(&sink, &cfg.kafka.group_id, outcome, &actor, reason)
        .await
        .context("storing the gate's decision in promotion_decisions")?;
    match outcome {
        "passed" => Ok(reason.to_string()),
        "forced" => Ok(format!(
            "forced past the quality gate ({}): {reason}",
            v.reasons.join("; ")
        )),
        _ => anyhow::bail!(
            "promotion of {candidate} refused by the quality gate (above); annotate more, or pass --force --reason WHY"
        ),
    }
}

async fn annotate(cfg: &Config, command: AnnotateCommand) -> anyhow::Result<()> {
    use vaxpulse::annotate;
    match command {
        AnnotateCommand::Token { name } => {
            let (token, line) = annotate::tokens::new_token(&name)?;
            println!("token for {name} (give it to them; it is not stored): {token}");
            println!("line for annotate.tokens_file:\n{line}");
        }
        AnnotateCommand::Sample { hours, until, id } => {
            use chrono::{DurationRound, TimeDelta};
            anyhow::ensure!(hours > 0, "--hours must be at least 1");
            let now = chrono::Utc::now();
            let to = until.unwrap_or(now).duration_trunc(TimeDelta::hours(1))?;
            let to = if until.is_none() {
                to + TimeDelta::hours(1)
            } else {
                to
            };
            let from = to - TimeDelta::hours(i64::from(hours));
            let id = id.unwrap_or_else(|| format!("s{}", now.format("%Y%m%dT%H%M%S")));
            let sink = ClickHouseSink::from_config(cfg)?;
            let d = vaxpulse::quality::sample::draw(&sink, &cfg.quality, &id, from, to).await?;
            println!(
                "sample {} of tweets created {} – {}: expected {:.0} tweets",
                d.sample_id,
                d.from.format("%Y-%m-%d %H:%M"),
                d.to.format("%Y-%m-%d %H:%M"),
                d.design.expected_size()
            );
            for (name, n, p) in &d.design.strata {
                let drawn = d.drawn.iter().find(|(s, _)| s == name).map_or(0, |x| x.1);
                println!("  {name:<15} {n:>9} tweets, inclusion probability {p:.5}, drawn {drawn}");
            }
        }
        AnnotateCommand::Serve => {
            let annotators = annotate::tokens::Annotators::load(&cfg.annotate.tokens_file)?;
            let sink = ClickHouseSink::from_config(cfg)?;
            let listener = tokio::net::TcpListener::bind(&cfg.annotate.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on annotate.listen {}", cfg.annotate.listen)
                })?;
            println!("annotation page on http://{}/", listener.local_addr()?);
            let cancel = tokio_util::sync::CancellationToken::new();
            cancel_on_signal(cancel.clone(), Duration::from_secs(10));
            annotate::serve(listener, sink, annotators, async move {
                cancel.cancelled().await
            })
            .await?;
        }
        AnnotateCommand::Simulate {
            synthetic,
            days,
            annotator,
            error_rate,
            limit,
            sample,
        } => {
            let generated = synthetic
                .iter()
                .map(|s| {
                    let (n, seed) = s.split_once(':').unwrap_or((s, ""));
                    Ok((n.parse::<u64>()?, seed.parse::<u64>()?))
                })
                .collect::<Result<Vec<_>, std::num::ParseIntError>>()
                .context("--synthetic takes COUNT:SEED, e.g. 20000:42")?;
            let sink = ClickHouseSink::from_config(cfg)?;
            let n = annotate::simulate(
                &sink,
                &annotate::Simulation {
                    generated,
                    days,
                    annotator,
                    error_rate,
                    limit,
                    sample,
                },
            )
            .await?;
            println!("labelled {n} tweets from the generator's ground truth");
        }
    }
    Ok(())
}

/// Cancels `token` on SIGTERM or SIGINT; from then on the process has `grace` to finish.
fn cancel_on_signal(token: tokio_util::sync::CancellationToken, grace: Duration) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        token.cancel();
        // A shutdown is bounded: draining has `drain_timeout_ms`, and if the broker is gone for
        // good the client's own close can block for ever. Past the grace the process exits
        // non-zero; whatever it had not committed is read again by the next owner.
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::error!(
                grace_s = grace.as_secs(),
                "shutdown did not finish within its grace; exiting without a final commit"
            );
            std::process::exit(3);
        });
    });
}

fn main() -> anyhow::Result<()> {
    vaxpulse::telemetry::init_logging();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref()).context("configuration")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        )
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Run => {
                tracing::info!(config = ?cfg, "starting");
                let factory = vaxpulse::model::load::torch_factory(&cfg);
                let cancel = tokio_util::sync::CancellationToken::new();
                let grace =
                    Duration::from_millis(cfg.pipeline.drain_timeout_ms) + Duration::from_secs(30);
                cancel_on_signal(cancel.clone(), grace);
                let report = vaxpulse::app::run(cfg, factory, cancel).await?;
                tracing::info!(model = %report.model_version, "stopped cleanly");
            }
            Command::Validate => vaxpulse::validate::validate(&cfg).await?,
            Command::Models { command } => match command {
            ModelsCommand::Check { dir, max_abs_diff } => {
                let model_cfg = cfg.model.clone();
                let (r, bounds) = tokio::task::spawn_blocking(move || {
                    vaxpulse::model::check::check_dir(&dir, &model_cfg, max_abs_diff)
                })
                .await??;
                println!(
                    "models check: {} — {} texts through the Rust serving path, max |Δp| vs reference = {:.2e} (bound {:.0e}), same label {}/{}",
                    r.model, r.cases, r.max_abs_diff, bounds.max_abs_diff, r.same_label, r.cases
                );
            }
            ModelsCommand::Keygen { out } => {
                let key = vaxpulse::deploy::sign::generate();
                vaxpulse::deploy::sign::write_signing_key(&out, &key)?;
                let (public, id) = vaxpulse::deploy::sign::public_key(&key);
                println!(
                    "private key written to {} (keep it secret: deploy.signing_key_file)\nkey id {id}\npublic key (deploy.trusted_keys, or VAXPULSE_DEPLOY_TRUSTED_KEYS):\n{public}",
                    out.display()
                );
            }
            ModelsCommand::List => print!("{}", vaxpulse::deploy::ops::list(&cfg).await?),
            ModelsCommand::Status => print!("{}", vaxpulse::deploy::ops::status(&cfg).await?),
            ModelsCommand::Deploy {
                model,
                champion,
                change,
            } => {
                let c = vaxpulse::deploy::Change::Deploy {
                    model: model_id(&model)?,
                    champion,
                };
                models_change(&cfg, c, &change).await?
            }
            ModelsCommand::Promote {
                model,
                force,
                mut change,
            } => {
                let m = model_id(&model)?;
                change.reason = gate(&cfg, &m, force, &change.reason).await?;
                let c = vaxpulse::deploy::Change::Promote(m);
                models_change(&cfg, c, &change).await?
            }
            ModelsCommand::Rollback { change } => {
                models_change(&cfg, vaxpulse::deploy::Change::Rollback, &change).await?
            }
            ModelsCommand::Retire { model, change } => {
                let c = vaxpulse::deploy::Change::Retire(model_id(&model)?);
                models_change(&cfg, c, &change).await?
            }
            },
            Command::Schema => {
                let sink = ClickHouseSink::from_config(&cfg)?;
                sink.apply_schema()
                    .await
                    .with_context(|| format!("applying the schema at {}", cfg.clickhouse.url))?;
                println!("schema applied to database {}", cfg.clickhouse.database);
            }
            Command::Topics { partitions } => {
                let topics = vaxpulse::kafka::worker_topics(&cfg.kafka, partitions);
                for (t, created) in vaxpulse::kafka::create_topics(&cfg.kafka, &topics).await? {
                    if created {
                        println!("created topic {t}");
                    } else {
                        println!("topic {t} exists");
                    }
                }
            }
            Command::Produce {
                file,
                synthetic,
                seed,
                days,
                rate,
                topic,
            } => {
                let input = match (file, synthetic) {
                    (Some(f), _) => Input::Jsonl(f),
                    (None, Some(count)) => Input::Synthetic { count, seed, days },
                    (None, None) => anyhow::bail!("give --file PATH or --synthetic N"),
                };
                let opts = ProduceOptions {
                    rate,
                    progress: true,
                    ..ProduceOptions::to(topic.unwrap_or_else(|| cfg.kafka.input_topic.clone()))
                };
                let n = produce(&cfg.kafka, input, &opts).await?;
                println!("produced {n} messages to {}", opts.topic);
            }
            Command::Bench(args) => {
                vaxpulse::bench::run(cfg, args).await?;
            }
            Command::Eval {
                model,
                data,
                compare,
                strict,
                json,
                no_store,
            } => {
                let model = model_id(&model)?;
                let compare = compare.as_deref().map(model_id).transpose()?;
                let factory = vaxpulse::model::load::torch_factory(&cfg);
                let c = cfg.clone();
                let report = tokio::task::spawn_blocking(move || {
                    vaxpulse::eval::run(&c, &model, compare.as_ref(), &data, strict, &factory)
                })
                .await??;
                print!("{}", report.render());
                vaxpulse::output::write_json(&json, &report)?;
                if !no_store {
                    vaxpulse::eval::store(&cfg, &report).await?;
                }
            }
            Command::Monitor {
                daily,
                reference_days,
                reference_from,
                reference_to,
                windows,
                json,
                chart,
            } => {
                let sink = ClickHouseSink::from_config(&cfg)?;
                let span = vaxpulse::analytics::monitor::Span {
                    daily,
                    reference_days,
                    pinned: reference_from.zip(reference_to),
                    windows: windows.unwrap_or(if daily { 30 } else { 48 }),
                };
                let report = vaxpulse::analytics::monitor::monitor(&sink, span).await?;
                print!("{}", report.render());
                // Live quality next to the drift: what the labels of the window say.
                let since = chrono::Utc::now()
                    - chrono::Duration::days(i64::from(cfg.quality.window_days));
                match vaxpulse::quality::report::quality(&sink, &cfg.quality, since, None, None).await {
                    Ok(q) if q.annotated > 0 => print!("\n### live quality (annotations, `vaxpulse quality` for more)\n\n{}", q.render()),
                    Ok(_) => println!("\nlive quality: no annotations in the last {} days (`vaxpulse annotate sample`, then `annotate serve`)", cfg.quality.window_days),
                    Err(e) => println!("\nlive quality not read: {e:#}"),
                }
                vaxpulse::output::write_json(&json, &report)?;
                if let Some(path) = chart {
                    vaxpulse::analytics::chart::drift(&report.drift_chart(), &path)
                        .with_context(|| format!("writing the drift chart {}", path.display()))?;
                    eprintln!("drift chart written to {}", path.display());
                }
                if report.worst() == "alert" {
                    std::process::exit(2);
                }
            }
            Command::Annotate { command } => annotate(&cfg, command).await?,
            Command::Quality {
                since,
                sample,
                champion,
                calibrate,
                json,
            } => {
                let sink = ClickHouseSink::from_config(&cfg)?;
                let since = since.unwrap_or_else(|| {
                    chrono::Utc::now() - chrono::Duration::days(i64::from(cfg.quality.window_days))
                });
                let report = vaxpulse::quality::report::quality_with_estimates(
                    &sink,
                    &cfg.quality,
                    since,
                    sample.as_deref(),
                    champion.as_deref(),
                    calibrate,
                )
                .await?;
                print!("{}", report.render());
                vaxpulse::output::write_json(&json, &report)?;
            }
            Command::Report {
                hourly,
                model_version,
                since,
                format,
                chart,
            } => {
                let sink = ClickHouseSink::from_config(&cfg)?;
                let opinion =
                    vaxpulse::analytics::report::opinion(&sink, hourly, model_version.as_deref(), since)
                        .await?;
                print!("{}", opinion.render(format)?);
                if let Some(path) = chart {
                    vaxpulse::analytics::chart::opinion(&opinion, &path)
                        .with_context(|| format!("writing the opinion chart {}", path.display()))?;
                    eprintln!("opinion chart written to {}", path.display());
                }
            }
        }
        Ok(())
    })
}
