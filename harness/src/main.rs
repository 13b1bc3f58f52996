//! `vaxpulse-harness`: end-to-end bench and fault-injection suite against the services of
//! `scripts/services.sh` (or those named by the config and `VAXPULSE_*` variables).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vaxpulse::config::Config;

#[derive(Parser)]
#[command(
    name = "vaxpulse-harness",
    version,
    about = "vaxpulse end-to-end bench and fault injection"
)]
struct Cli {
    /// Config file (TOML) of the workers; `VAXPULSE_<SECTION>_<KEY>` variables override it.
    #[arg(long, short, global = true, env = "VAXPULSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks through broker and ClickHouse.
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
    /// Fault-injection suite: replicas killed, ClickHouse and broker restarted, hostile input,
    /// rebalances; checks that nothing was lost or counted twice (needs scripts/services.sh).
    Chaos(vaxpulse_harness::chaos::ChaosArgs),
}

#[derive(Subcommand)]
enum BenchKind {
    /// Worker processes in one group: backlog capacity, RSS, paced latency.
    E2e(vaxpulse_harness::e2e::E2eArgs),
    /// Analysts' and the worker's ClickHouse queries over a synthetic history of N
    /// predictions: time and rows/bytes read, per size.
    Analytics(vaxpulse_harness::analytics::AnalyticsArgs),
}

fn main() -> anyhow::Result<()> {
    vaxpulse::telemetry::init_logging();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref()).context("configuration")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Ctrl-C ends the harness at once (also where a non-interactive shell started it with
        // SIGINT ignored); its worker processes go with it (see `fleet`).
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("vaxpulse-harness: interrupted");
                std::process::exit(130);
            }
        });
        match cli.command {
            Command::Bench {
                which: BenchKind::E2e(mut args),
            } => {
                args.config_path = cli.config;
                vaxpulse_harness::e2e::bench(cfg, args).await?;
            }
            Command::Bench {
                which: BenchKind::Analytics(args),
            } => vaxpulse_harness::analytics::bench(cfg, args).await?,
            Command::Chaos(mut args) => {
                args.config_path = cli.config;
                vaxpulse_harness::chaos::run(cfg, args).await?;
            }
        }
        Ok(())
    })
}
