//! `vaxpulse-harness chaos`: the fault-injection suite. Each scenario runs real worker processes
//! (`vaxpulse run`) in one consumer group on fresh topics and a fresh database, injects its fault
//! (SIGKILL and restart, ClickHouse down, broker restart, hostile input, a replica joining and
//! leaving), waits until every tweet is accounted for, and checks, from the outside, that none
//! was lost and none counted twice: output-topic ids, ClickHouse rows, `opinion_hourly`
//! aggregates, dead letters and committed offsets.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;
use vaxpulse::config::Config;
use vaxpulse::deploy::ops::{self, ChangeOptions};
use vaxpulse::deploy::Change;
use vaxpulse::model::ModelId;
use vaxpulse::output::Table;
use vaxpulse::synthetic::{hostile_payload, Generator};

use crate::fleet::{Fleet, WorkerCmd};
use crate::kit::{
    ch_scalar, clickhouse_counts, clickhouse_distinct, create_topics, demo_store, produce_keyed,
    uncommitted, Names, TopicReader,
};

/// Which broker the `kill` and `hostile` scenarios run on (the others need the local one: they
/// stop and restart services).
#[derive(clap::ValueEnum, Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Broker {
    /// The local broker of `scripts/services.sh` (nisshi).
    Local,
    /// rdkafka's MockCluster in this process (real protocol over loopback TCP).
    Mock,
}

#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Scenarios to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,clickhouse,broker,hostile,rebalance,deploy,hostile-control"
    )]
    pub scenarios: Vec<Scenario>,
    /// Tweets of the SIGKILL scenario.
    #[arg(long, default_value_t = 100_000)]
    pub kill_tweets: u64,
    /// SIGKILL + restart cycles in the SIGKILL scenario.
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Valid tweets of every other scenario.
    #[arg(long, default_value_t = 30_000)]
    pub tweets: u64,
    /// Hostile messages mixed into the hostile scenario.
    #[arg(long, default_value_t = 10_000)]
    pub hostile: u64,
    /// How long ClickHouse stays down.
    #[arg(long, default_value_t = 60)]
    pub outage_seconds: u64,
    /// Over how many seconds the paced scenarios offer their tweets.
    #[arg(long, default_value_t = 100)]
    pub paced_seconds: u64,
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Starts and stops the local services (`SCRIPT start|stop broker|clickhouse`).
    #[arg(long, default_value = "scripts/services.sh")]
    pub services: PathBuf,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Longest wait for a scenario to settle.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,
    /// Broker of the `kill` and `hostile` scenarios.
    #[arg(long, value_enum, default_value = "local")]
    pub broker: Broker,
    #[arg(long, default_value = "bench-results/chaos.json")]
    pub json: PathBuf,
    #[arg(skip)]
    pub config_path: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// 2 replicas, one SIGKILLed and restarted `--kills` times at random moments.
    Kill,
    /// ClickHouse stopped for `--outage-seconds` mid-run, then restarted.
    Clickhouse,
    /// The broker stopped and restarted mid-run.
    Broker,
    /// `--hostile` malformed messages (10 of them 2 MB) mixed into valid traffic, plus
    /// messages with 1.5 MB keys, delete notices with 60 000-character ids and a burst of
    /// 20 000 deletes.
    Hostile,
    /// A third replica joins, then leaves (SIGTERM), during the run.
    Rebalance,
    /// Model versions mid-run: a shadow added, promoted to champion, then rolled back.
    Deploy,
    /// Hostile control records mid-run (absolute path, `..`, a link out of the store,
    /// `u64::MAX` epoch, 1 000 duplicate shadows, unpinned, unsigned and wrongly signed), a
    /// replica SIGKILLed and restarted on them, then a valid signed change.
    HostileControl,
}

/// Figures of one scenario; `lost` and `double_counted` must be 0.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub broker: String,
    pub faults: String,
    pub input_valid: u64,
    pub input_hostile: u64,
    pub output_distinct: u64,
    pub output_duplicates: u64,
    pub clickhouse_distinct: u64,
    /// Rows of `classified_tweets FINAL` (one per tweet × model version).
    pub clickhouse_final_rows: u64,
    /// Sum over hours × labels of `opinion_hourly` (what analysts read).
    pub aggregate_total: u64,
    pub dlq: u64,
    /// Valid tweets missing from the output topic or from ClickHouse.
    pub lost: u64,
    /// Aggregate or `FINAL` rows beyond one per distinct tweet.
    pub double_counted: u64,
    /// Input messages after the committed offsets once the replicas stopped cleanly.
    pub uncommitted: i64,
    /// Whether `/health/ready` answered "not ready" on some replica during the fault.
    pub not_ready_seen: Option<bool>,
    pub peak_worker_rss_mib: f64,
    pub seconds: f64,
    /// Scenario-specific figures (the deploy scenario: champion conflicts, shadow coverage,
    /// time to apply each change).
    pub notes: String,
    /// Scenario-specific requirements that did not hold.
    pub failed_checks: Vec<String>,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.double_counted == 0
            && self.dlq == self.input_hostile
            && self.failed_checks.is_empty()
    }
}

pub fn render(reports: &[ScenarioReport]) -> String {
    let mut t = Table::new(&[
        "scenario",
        "broker",
        "faults",
        "input",
        "hostile",
        "output ids",
        "dup. in topic",
        "ClickHouse ids",
        "aggregate total",
        "DLQ",
        "lost",
        "double-counted",
        "uncommitted",
        "not-ready seen",
        "peak RSS MiB",
        "s",
        "notes",
    ]);
    for r in reports {
        t.row(vec![
            format!("{:?}", r.scenario).to_lowercase(),
            r.broker.clone(),
            r.faults.clone(),
            r.input_valid.to_string(),
            r.input_hostile.to_string(),
            r.output_distinct.to_string(),
            r.output_duplicates.to_string(),
            r.clickhouse_distinct.to_string(),
            r.aggregate_total.to_string(),
            r.dlq.to_string(),
            r.lost.to_string(),
            r.double_counted.to_string(),
            r.uncommitted.to_string(),
            r.not_ready_seen
                .map_or("–".into(), |b| if b { "yes" } else { "no" }.into()),
            format!("{:.0}", r.peak_worker_rss_mib),
            format!("{:.0}", r.seconds),
            r.notes.clone(),
        ]);
    }
    t.render()
}

/// Replica `i` serves metrics (readiness probes) on this port + `i`.
const METRICS_PORT_BASE: u16 = 19_400;

/// Partitions of the topics on the mock broker (see `Run::new`).
const MOCK_PARTITIONS: i32 = 16;

/// How long a replica may take to drain and commit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(60);

fn services(args: &ChaosArgs, action: &str, which: &str) -> anyhow::Result<()> {
    let status = Command::new(&args.services)
        .args([action, which])
        .status()
        .with_context(|| format!("cannot run {}", args.services.display()))?;
    anyhow::ensure!(
        status.success(),
        "`{} {action} {which}` failed",
        args.services.display()
    );
    Ok(())
}

/// Valid synthetic tweets (their ids) interleaved with `hostile` hostile ones, keyed so the
/// dead-letter topic can be counted by distinct key.
fn traffic(seed: u64, valid: u64, hostile: u64) -> (Vec<(String, Vec<u8>)>, HashSet<String>) {
    let mut g = Generator::new(seed, Utc::now() - chrono::Duration::days(5), 5);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity((valid + hostile) as usize);
    let (mut v, mut h) = (0, 0);
    while v < valid || h < hostile {
        let take_hostile =
            h < hostile && (v >= valid || rng.random_range(0..valid + hostile) < hostile);
        if take_hostile {
            out.push((format!("hostile-{h}"), hostile_payload(h).2));
            h += 1;
        } else {
            let (t, p) = g.payload();
            ids.insert(t.id.clone());
            out.push((t.id, p));
            v += 1;
        }
    }
    (out, ids)
}

/// The hostile scenario's extra messages: `keys` invalid messages with 1.5 MB keys and
/// `long_ids` delete notices with 60 000-character ids (each a dead letter, keyed uniquely in
/// its first KiB), and a burst of `burst` delete notices of 64-digit ids no tweet has (applied,
/// never dead-lettered).
fn hostile_extras(keys: u64, long_ids: u64, burst: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..keys {
        let key = format!("hostile-key-{i}-{}", "k".repeat(1_500_000));
        out.push((key, format!("{{\"id\": \"{i}\", \"text\": ").into_bytes()));
    }
    for i in 0..long_ids {
        let id = "9".repeat(60_000);
        let p = format!(r#"{{"delete":{{"status":{{"id_str":"{id}"}}}}}}"#);
        out.push((format!("hostile-delid-{i}"), p.into_bytes()));
    }
    for i in 0..burst {
        let p = format!(
            r#"{{"delete":{{"status":{{"id_str":"{:064}"}}}}}}"#,
            10u128.pow(30) + i as u128
        );
        out.push((format!("delete-{i}"), p.into_bytes()));
    }
    out
}

struct Run<'a> {
    /// The kill scenario's broker (see [`Scenario::Kill`]); dropped last.
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    args: &'a ChaosArgs,
    cfg: Config,
    names: Names,
    fleet: Fleet,
    output: TopicReader,
    dlq: TopicReader,
    expected: HashSet<String>,
    hostile: u64,
    partitions: i32,
    started: Instant,
    not_ready_seen: Option<bool>,
}

impl<'a> Run<'a> {
    async fn new(
        cfg: &Config,
        args: &'a ChaosArgs,
        scenario: Scenario,
        valid: u64,
        hostile: u64,
    ) -> anyhow::Result<(Self, Vec<(String, Vec<u8>)>)> {
        let names = Names::fresh("chaos");
        let mut cfg = cfg.clone();
        let mock = if args.broker == Broker::Mock
            && matches!(scenario, Scenario::Kill | Scenario::Hostile)
        {
            let mock = MockCluster::new(1).context("cannot start the mock cluster")?;
            // The mock keeps only the last ~5 MB of each partition (older segments are deleted,
            // as a too-short retention would in Kafka): spread 100 000 tweets (~45 MB) over
            // enough partitions that nothing is deleted before it is read.
            let partitions = args.partitions.max(MOCK_PARTITIONS);
            for t in [&names.input, &names.output, &names.dlq] {
                mock.create_topic(t, partitions, 1)?;
            }
            mock.create_topic(&names.control, 1, 1)?;
            cfg.kafka.brokers = mock.bootstrap_servers();
            Some(mock)
        } else {
            create_topics(&cfg.kafka, &names, args.partitions).await?;
            None
        };
        let cfg = &cfg;
        let ncfg = names.apply(cfg);
        let (messages, expected) = traffic(args.seed, valid, hostile);
        let logs = PathBuf::from(format!("bench-results/chaos-logs/{scenario:?}").to_lowercase());
        std::fs::create_dir_all(&logs)?;
        let mut ncfg = ncfg;
        let mut env = names.env(args.config_path.as_deref());
        if matches!(scenario, Scenario::Deploy | Scenario::HostileControl) {
            // Two versions of the demo model to deploy, promote and roll back.
            let store = std::env::current_dir()?
                .join(format!("bench-results/chaos-store/{}", names.database));
            demo_store(&store, &["1", "2"], &[]);
            ncfg.model.store_dir = store.clone();
            ncfg.model.dir = store.join("demo/1");
            env.push((
                "VAXPULSE_MODEL_STORE_DIR".into(),
                store.display().to_string(),
            ));
            env.push((
                "VAXPULSE_MODEL_DIR".into(),
                store.join("demo/1").display().to_string(),
            ));
            if scenario == Scenario::HostileControl {
                // A real export outside the store under another name, linked into the store:
                // a record naming it must not load it.
                let outside = store.with_extension("outside");
                let evil = demo_store(&outside, &["1"], &[]).join("demo");
                let m = std::fs::read_to_string(evil.join("1/manifest.json"))?;
                std::fs::write(
                    evil.join("1/manifest.json"),
                    m.replace("\"name\": \"demo\"", "\"name\": \"evil\""),
                )?;
                std::os::unix::fs::symlink(&evil, store.join("evil"))?;
                // Replicas trust one key; the CLI (this run's config) signs with it.
                let key = vaxpulse::deploy::sign::generate();
                let key_file = store.with_extension("key");
                let _ = std::fs::remove_file(&key_file);
                vaxpulse::deploy::sign::write_signing_key(&key_file, &key)?;
                let (public, _) = vaxpulse::deploy::sign::public_key(&key);
                ncfg.deploy.trusted_keys = vec![public.clone()];
                ncfg.deploy.signing_key_file = key_file;
                env.push(("VAXPULSE_DEPLOY_TRUSTED_KEYS".into(), public));
            }
        }
        env.push(("VAXPULSE_KAFKA_BROKERS".into(), cfg.kafka.brokers.clone()));
        if mock.is_some() {
            // Takeover waits out the dead member's session: keep it short.
            env.push(("VAXPULSE_KAFKA_SESSION_TIMEOUT_MS".into(), "6000".into()));
        }
        let fleet = Fleet::new(WorkerCmd::vaxpulse()?, env, &logs, Some(METRICS_PORT_BASE))?;
        let partitions = if mock.is_some() {
            args.partitions.max(MOCK_PARTITIONS)
        } else {
            args.partitions
        };
        let output = TopicReader::start(&cfg.kafka, &names.output)?;
        let dlq = TopicReader::start(&cfg.kafka, &names.dlq)?;
        Ok((
            Run {
                _mock: mock,
                args,
                cfg: ncfg,
                names,
                fleet,
                output,
                dlq,
                expected,
                hostile,
                partitions,
                started: Instant::now(),
                not_ready_seen: None,
            },
            messages,
        ))
    }

    fn progress(&self) -> u64 {
        self.output.count() as u64
    }

    /// Waits (checking that no replica died on its own) until the output topic holds `n` ids.
    async fn wait_output(&mut self, n: u64, deadline: Instant) -> anyhow::Result<()> {
        while self.progress() < n {
            if let Some(slot) = self.fleet.exited() {
                anyhow::bail!(
                    "replica {slot} exited on its own (logs in {})",
                    self.fleet.logs.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "timed out with {} of {} results (logs in {})",
                self.progress(),
                self.expected.len(),
                self.fleet.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits for every tweet to be in the output topic and ClickHouse and every hostile message
    /// in the dead-letter topic, stops the replicas cleanly, then counts.
    async fn settle(
        mut self,
        scenario: Scenario,
        faults: String,
    ) -> anyhow::Result<ScenarioReport> {
        let deadline = self.started + Duration::from_secs(self.args.timeout_seconds);
        self.wait_output(self.expected.len() as u64, deadline)
            .await?;
        loop {
            let stored = clickhouse_distinct(&self.cfg).await? as usize;
            let dlq = self.dlq.count() as u64;
            if stored >= self.expected.len() && dlq >= self.hostile {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "timed out: ClickHouse has {} of {} tweets, the DLQ {dlq} of {}",
                stored,
                self.expected.len(),
                self.hostile
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let clean = tokio::task::block_in_place(|| self.fleet.stop_all(STOP_GRACE));
        anyhow::ensure!(
            clean,
            "a replica did not stop cleanly on SIGTERM (logs in {})",
            self.fleet.logs.display()
        );
        // Late duplicates (replays) would arrive now; give them a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ch = clickhouse_counts(&self.cfg).await?;
        let seen = self.output.seen.lock().unwrap_or_else(|p| p.into_inner());
        let lost = self
            .expected
            .iter()
            .filter(|id| !seen.ids.contains(*id) || !ch.clickhouse_ids.contains(*id))
            .count() as u64;
        let distinct = ch.clickhouse_ids.len() as u64;
        let double_counted =
            ch.aggregate_total.saturating_sub(distinct) + ch.final_rows.saturating_sub(distinct);
        let dlq = self.dlq.seen.lock().unwrap_or_else(|p| p.into_inner());
        let broker = if self._mock.is_some() {
            "MockCluster"
        } else {
            "local (nisshi)"
        };
        let report = ScenarioReport {
            scenario,
            broker: format!("{broker}, {} part.", self.partitions),
            faults,
            input_valid: self.expected.len() as u64,
            input_hostile: self.hostile,
            output_distinct: seen.ids.len() as u64,
            output_duplicates: seen.duplicates as u64,
            clickhouse_distinct: distinct,
            clickhouse_final_rows: ch.final_rows,
            aggregate_total: ch.aggregate_total,
            dlq: dlq.ids.len() as u64,
            lost,
            double_counted,
            uncommitted: uncommitted(
                &self.cfg.kafka,
                &self.names.group,
                &self.names.input,
                self.partitions,
            )?,
            not_ready_seen: self.not_ready_seen,
            peak_worker_rss_mib: self.fleet.peak_mib(),
            seconds,
            notes: String::new(),
            failed_checks: Vec::new(),
        };
        Ok(report)
    }
}

/// Runs `ms` milliseconds of waiting while probing readiness; records whether a replica said
/// "not ready".
async fn watch_readiness(run: &mut Run<'_>, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let not_ready = tokio::task::block_in_place(|| run.fleet.any_not_ready());
        if not_ready {
            run.not_ready_seen = Some(true);
        } else if run.not_ready_seen.is_none() {
            run.not_ready_seen = Some(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn scenario(
    cfg: &Config,
    args: &ChaosArgs,
    which: Scenario,
) -> anyhow::Result<ScenarioReport> {
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let paced_rate = args.tweets as f64 / args.paced_seconds as f64;
    match which {
        Scenario::Kill => {
            let (mut run, messages) = Run::new(cfg, args, which, args.kill_tweets, 0).await?;
            println!("chaos kill: producing {} tweets", messages.len());
            produce_keyed(&run.cfg.kafka, &run.names.input, messages, None).await?;
            run.started = Instant::now();
            for slot in 0..args.replicas {
                run.fleet.spawn(slot)?;
            }
            let total = run.expected.len() as u64;
            let mut marks: Vec<u64> = (0..args.kills)
                .map(|_| (total as f64 * rng.random_range(0.05..0.85)) as u64)
                .collect();
            marks.sort_unstable();
            let deadline = run.started + Duration::from_secs(args.timeout_seconds);
            for (k, mark) in marks.iter().enumerate() {
                run.wait_output(*mark, deadline).await?;
                let slot = rng.random_range(0..args.replicas);
                run.fleet.sigkill(slot);
                let down_ms = rng.random_range(200..3000);
                println!(
                    "chaos kill: SIGKILL {}/{}: replica {slot} at {} results, restarting in {down_ms} ms",
                    k + 1,
                    args.kills,
                    run.progress()
                );
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                run.fleet.spawn(slot)?;
            }
            run.settle(which, format!("{} × SIGKILL + restart", args.kills))
                .await
        }
        Scenario::Clickhouse | Scenario::Broker | Scenario::Rebalance => {
            let (mut run, messages) = Run::new(cfg, args, which, args.tweets, 0).await?;
            for slot in 0..args.replicas {
                run.fleet.spawn(slot)?;
            }
            println!(
                "chaos {which:?}: offering {} tweets at {paced_rate:.0}/s",
                messages.len()
            );
            let producer = tokio::spawn({
                let (cfg, topic) = (cfg.clone(), run.names.input.clone());
                async move { produce_keyed(&cfg.kafka, &topic, messages, Some(paced_rate)).await }
            });
            let lead = args.paced_seconds / 5;
            tokio::time::sleep(Duration::from_secs(lead)).await;
            let faults = match which {
                Scenario::Clickhouse => {
                    println!(
                        "chaos clickhouse: stopping ClickHouse for {} s",
                        args.outage_seconds
                    );
                    services(args, "stop", "clickhouse")?;
                    watch_readiness(&mut run, args.outage_seconds).await;
                    println!("chaos clickhouse: starting ClickHouse again");
                    services(args, "start", "clickhouse")?;
                    format!("ClickHouse down {} s", args.outage_seconds)
                }
                Scenario::Broker => {
                    println!("chaos broker: restarting the broker");
                    let t = Instant::now();
                    services(args, "stop", "broker")?;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    services(args, "start", "broker")?;
                    format!("broker down {:.0} s", t.elapsed().as_secs_f64())
                }
                _ => {
                    let extra = args.replicas;
                    println!("chaos rebalance: replica {extra} joins");
                    run.fleet.spawn(extra)?;
                    tokio::time::sleep(Duration::from_secs(args.paced_seconds / 3)).await;
                    println!("chaos rebalance: replica {extra} leaves (SIGTERM)");
                    let clean =
                        tokio::task::block_in_place(|| run.fleet.sigterm(extra, STOP_GRACE));
                    anyhow::ensure!(clean, "the leaving replica did not stop cleanly");
                    "3rd replica joined, then left".into()
                }
            };
            producer.await??;
            run.settle(which, faults).await
        }
        Scenario::Deploy => {
            let (mut run, messages) = Run::new(cfg, args, which, args.tweets, 0).await?;
            for slot in 0..args.replicas {
                run.fleet.spawn(slot)?;
            }
            println!(
                "chaos deploy: offering {} tweets at {paced_rate:.0}/s",
                messages.len()
            );
            let producer = tokio::spawn({
                let (cfg, topic) = (cfg.clone(), run.names.input.clone());
                async move { produce_keyed(&cfg.kafka, &topic, messages, Some(paced_rate)).await }
            });
            let opts = ChangeOptions {
                reason: "chaos deploy scenario".into(),
                wait_replicas: args.replicas,
                wait_timeout: Duration::from_secs(120),
            };
            let v2 = ModelId::parse("demo@2").map_err(anyhow::Error::msg)?;
            let steps = [
                (
                    0.15,
                    Change::Deploy {
                        model: v2.clone(),
                        champion: false,
                    },
                ),
                (0.45, Change::Promote(v2)),
                (0.75, Change::Rollback),
            ];
            let started = Instant::now();
            let mut applied = Vec::new();
            for (at, change) in steps {
                let due = started + Duration::from_secs_f64(args.paced_seconds as f64 * at);
                tokio::time::sleep_until(due.into()).await;
                let action = change.action();
                let o = ops::change(&run.cfg, change, &opts).await?;
                let worst = o.applied.iter().map(|a| a.1).max().unwrap_or(-1);
                println!(
                    "chaos deploy: {action} → {} applied by {} replicas, slowest {worst} ms after the change",
                    o.after.summary(),
                    o.applied.len()
                );
                applied.push((action, worst));
            }
            producer.await??;
            let db = run.cfg.clickhouse.database.clone();
            let mut r = run
                .settle(which, "shadow added, promoted, rolled back".into())
                .await?;
            let conflicts: u64 = ch_scalar(&format!(
                "SELECT count() FROM (SELECT tweet_id FROM {db}.predictions WHERE role = 'champion' GROUP BY tweet_id HAVING uniqExact(model_version, model_hash) > 1)"
            ))
            .await
            .parse()?;
            let champion_rows: u64 =
                ch_scalar(&format!("SELECT count() FROM {db}.champion_predictions"))
                    .await
                    .parse()?;
            // Tweets first scored once the shadow was deployed (epoch ≥ 1), and how many of them
            // have demo@2's prediction (as shadow, or as champion after the promotion).
            let after: u64 = ch_scalar(&format!(
                "SELECT count() FROM {db}.champion_predictions WHERE deployment_epoch >= 1"
            ))
            .await
            .parse()?;
            let with_v2: u64 = ch_scalar(&format!(
                "SELECT uniqExact(tweet_id) FROM {db}.predictions WHERE model_version = 'demo@2' AND tweet_id IN (SELECT tweet_id FROM {db}.champion_predictions WHERE deployment_epoch >= 1)"
            ))
            .await
            .parse()?;
            let coverage = with_v2 as f64 / after.max(1) as f64;
            r.notes = format!(
                "champion rows {champion_rows}, conflicts {conflicts}; demo@2 on {with_v2}/{after} = {:.2} % after it was deployed; applied ≤ {}",
                coverage * 100.0,
                applied
                    .iter()
                    .map(|(a, ms)| format!("{a} {ms} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if conflicts > 0 {
                r.failed_checks
                    .push(format!("{conflicts} tweets have two champion labels"));
            }
            if champion_rows != r.input_valid {
                r.failed_checks.push(format!(
                    "{champion_rows} champion predictions for {} tweets",
                    r.input_valid
                ));
            }
            if coverage < 0.99 || after == 0 {
                r.failed_checks.push(format!(
                    "the shadow scored {:.2} % of the tweets after its deployment (< 99 %)",
                    coverage * 100.0
                ));
            }
            if applied.iter().any(|(_, ms)| *ms > 5_000 || *ms < 0) {
                r.failed_checks
                    .push("a change took more than 5 s to apply".into());
            }
            Ok(r)
        }
        Scenario::HostileControl => hostile_control(cfg, args, &mut rng).await,
        Scenario::Hostile => {
            // Besides `--hostile` malformed messages: 10 with 1.5 MB keys, 10 deletes with
            // 60 000-character ids (dead letters too), and a burst of 20 000 deletes.
            let (keys, long_ids, burst) = (10, 10, 20_000);
            let hostile = args.hostile + keys + long_ids;
            let (mut run, mut messages) =
                Run::new(cfg, args, which, args.tweets, args.hostile).await?;
            run.hostile = hostile;
            // Spread through the traffic (seeded), not in one block.
            messages.extend(hostile_extras(keys, long_ids, burst));
            rand::seq::SliceRandom::shuffle(messages.as_mut_slice(), &mut rng);
            let db = run.cfg.clickhouse.database.clone();
            for slot in 0..args.replicas {
                run.fleet.spawn(slot)?;
            }
            println!(
                "chaos hostile: {} valid + {} hostile messages",
                args.tweets, args.hostile
            );
            // Paced, so that the mock broker's ~5 MB per partition never has to hold a backlog
            // of 2 MB messages.
            let rate = messages.len() as f64 / args.paced_seconds as f64;
            produce_keyed(&run.cfg.kafka, &run.names.input, messages, Some(rate)).await?;
            let mut r = run
                .settle(
                    which,
                    format!(
                        "{} hostile messages, {keys} 1.5 MB keys, {long_ids} huge delete ids, {burst} deletes",
                        args.hostile
                    ),
                )
                .await?;
            let deleted: u64 = ch_scalar(&format!(
                "SELECT uniqExact(tweet_id) FROM {db}.deleted_tweets"
            ))
            .await
            .parse()?;
            r.notes = format!(
                "deleted ids stored {deleted}/{burst} (the output topic forwards each delete notice: output ids = tweets + deletes)"
            );
            if deleted != burst {
                r.failed_checks
                    .push(format!("{deleted} of {burst} deletes stored"));
            }
            if r.uncommitted != 0 {
                r.failed_checks
                    .push(format!("{} input messages left uncommitted", r.uncommitted));
            }
            Ok(r)
        }
    }
}

/// The hostile-control scenario: paced traffic on 2 replicas that trust one signing key;
/// hostile records at 20 % (each must be refused, with its reason in `deployment_events`); a
/// replica SIGKILLed and restarted at 40 % (it meets them all again at start-up and must not
/// exit); a valid signed change at 60 %, applied by every replica.
async fn hostile_control(
    cfg: &Config,
    args: &ChaosArgs,
    rng: &mut StdRng,
) -> anyhow::Result<ScenarioReport> {
    use vaxpulse::deploy::{sign, Deployment};
    let which = Scenario::HostileControl;
    let (mut run, messages) = Run::new(cfg, args, which, args.tweets, 0).await?;
    for slot in 0..args.replicas {
        run.fleet.spawn(slot)?;
    }
    let paced_rate = args.tweets as f64 / args.paced_seconds as f64;
    println!(
        "chaos hostile-control: offering {} tweets at {paced_rate:.0}/s",
        messages.len()
    );
    let producer = tokio::spawn({
        let (cfg, topic) = (cfg.clone(), run.names.input.clone());
        async move { produce_keyed(&cfg.kafka, &topic, messages, Some(paced_rate)).await }
    });
    let started = Instant::now();
    let at = |share: f64| started + Duration::from_secs_f64(args.paced_seconds as f64 * share);

    tokio::time::sleep_until(at(0.2).into()).await;
    let store = run.cfg.model.store_dir.clone();
    let group = run.cfg.kafka.group_id.clone();
    let key = sign::read_signing_key(&run.cfg.deploy.signing_key_file)?;
    let id = |v: &str| -> anyhow::Result<ModelId> {
        Ok(vaxpulse::model::Manifest::load(&store.join("demo").join(v))?.id())
    };
    let (v1, v2) = (id("1")?, id("2")?);
    // Each record as the CLI would write it (pinned, signed), then spoiled one way.
    let record = |epoch: u64, shadows: Vec<ModelId>| -> anyhow::Result<Deployment> {
        let mut d = Deployment {
            epoch,
            shadows,
            action: "deploy-shadow".into(),
            actor: "chaos".into(),
            changed_at: Utc::now(),
            ..Deployment::bootstrap(v1.clone())
        };
        crate::kit::pin_from_store(&store, &mut d);
        d.signature = Some(sign::sign(&key, &group, &d));
        Ok(d)
    };
    let json = |d: &Deployment| serde_json::to_value(d).expect("a record serialises");
    let mut hostile: Vec<(&str, serde_json::Value)> = Vec::new();
    let mut renamed = |why: &'static str, name: String| -> anyhow::Result<()> {
        let mut j = json(&record(1, vec![])?);
        j["champion"]["name"] = name.into();
        hostile.push((why, j));
        Ok(())
    };
    renamed("directory names", store.display().to_string())?;
    renamed("directory names", "../outside".into())?;
    let mut far = record(u64::MAX, vec![v2.clone()])?;
    far.signature = Some(sign::sign(&key, &group, &far));
    hostile.push(("jumps more than", json(&far)));
    hostile.push(("max_shadows", json(&record(1, vec![v2.clone(); 1000])?)));
    let mut unpinned = record(1, vec![v2.clone()])?;
    unpinned.manifests.clear();
    unpinned.signature = Some(sign::sign(&key, &group, &unpinned));
    hostile.push(("no manifest sha256", json(&unpinned)));
    let mut unsigned = record(1, vec![v2.clone()])?;
    unsigned.signature = None;
    hostile.push(("unsigned", json(&unsigned)));
    let mut foreign = record(1, vec![v2.clone()])?;
    foreign.signature = Some(sign::sign(&sign::generate(), &group, &foreign));
    hostile.push(("does not trust", json(&foreign)));
    let mut tampered = record(1, vec![v2.clone()])?;
    tampered.reason = "changed after signing".into();
    hostile.push(("does not match the record", json(&tampered)));
    // Last: it passes every record check and fails at load (outside the store).
    let mut evil = record(1, vec![])?;
    evil.champion = ModelId {
        name: "evil".into(),
        ..v1.clone()
    };
    evil.manifests.clear();
    evil.manifests.insert(
        "evil@1".into(),
        vaxpulse::model::Manifest::load(&store.join("evil/1"))?.digest,
    );
    evil.signature = Some(sign::sign(&key, &group, &evil));
    hostile.push(("outside the model store", json(&evil)));
    let keyed = hostile
        .iter()
        .map(|(_, j)| (group.clone(), serde_json::to_vec(j).expect("JSON")))
        .collect();
    produce_keyed(&run.cfg.kafka, &run.cfg.kafka.control_topic, keyed, None).await?;
    println!(
        "chaos hostile-control: {} hostile records published",
        hostile.len()
    );

    tokio::time::sleep_until(at(0.4).into()).await;
    let slot = rng.random_range(0..args.replicas);
    println!("chaos hostile-control: SIGKILL replica {slot} and restart it on those records");
    run.fleet.sigkill(slot);
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.fleet.spawn(slot)?;

    tokio::time::sleep_until(at(0.6).into()).await;
    let opts = ChangeOptions {
        reason: "chaos hostile-control: the valid change after the hostile ones".into(),
        wait_replicas: args.replicas,
        wait_timeout: Duration::from_secs(120),
    };
    let change = Change::Deploy {
        model: ModelId::parse("demo@2").map_err(anyhow::Error::msg)?,
        champion: false,
    };
    let o = ops::change(&run.cfg, change, &opts).await?;
    println!(
        "chaos hostile-control: valid signed change → {} applied by {} replicas",
        o.after.summary(),
        o.applied.len()
    );
    producer.await??;
    let db = run.cfg.clickhouse.database.clone();
    let mut r = run
        .settle(
            which,
            format!(
                "{} hostile control records, 1 × SIGKILL + restart, 1 valid change",
                hostile.len()
            ),
        )
        .await?;
    let reasons = ch_scalar(&format!(
        "SELECT arrayStringConcat(groupUniqArray(message), '\n') FROM {db}.deployment_events WHERE outcome = 'refused'"
    ))
    .await;
    let missing: Vec<&str> = hostile
        .iter()
        .map(|(why, _)| *why)
        .filter(|why| !reasons.contains(why))
        .collect();
    let applied: u64 = ch_scalar(&format!(
        "SELECT uniqExact(replica) FROM {db}.deployment_events WHERE outcome = 'applied' AND epoch = {}",
        o.after.epoch
    ))
    .await
    .parse()?;
    r.notes = format!(
        "{} of {} hostile records refused with their reason; epoch {} applied by {applied} replicas",
        hostile.len() - missing.len(),
        hostile.len(),
        o.after.epoch
    );
    if !missing.is_empty() {
        r.failed_checks
            .push(format!("no refusal saying: {}", missing.join(", ")));
    }
    // The `evil` record (epoch 1) passed the record checks, so replicas followed its epoch:
    // the change takes epoch 2, built on what the store can load (not on `evil`).
    if o.after.epoch != 2 || o.after.champion != v1 {
        r.failed_checks.push(format!(
            "the valid change became {} (expected epoch 2 on champion {v1}): a hostile record moved the group",
            o.after.summary()
        ));
    }
    if (applied as usize) < args.replicas || o.applied.len() < args.replicas {
        r.failed_checks
            .push(format!("the valid change applied by {applied} replicas"));
    }
    if r.uncommitted != 0 {
        r.failed_checks
            .push(format!("{} input messages left uncommitted", r.uncommitted));
    }
    Ok(r)
}

pub async fn run(cfg: Config, args: ChaosArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for &which in &args.scenarios {
        println!("\n## chaos: {which:?}");
        match scenario(&cfg, &args, which).await {
            Ok(r) => {
                if !r.passed() {
                    failed.push(format!(
                        "{which:?}: lost {} double-counted {} DLQ {}/{} {}",
                        r.lost,
                        r.double_counted,
                        r.dlq,
                        r.input_hostile,
                        r.failed_checks.join("; ")
                    ));
                }
                println!("{}", render(std::slice::from_ref(&r)));
                reports.push(r);
            }
            Err(e) => {
                println!("chaos {which:?} failed: {e:#}");
                failed.push(format!("{which:?}: {e:#}"));
                // A stopped service must not leak into the next scenario.
                let _ = services(&args, "start", "all");
            }
        }
    }
    println!("\n## chaos: all scenarios\n\n{}", render(&reports));
    vaxpulse::output::write_json(&args.json, &reports)?;
    anyhow::ensure!(failed.is_empty(), "chaos failed: {}", failed.join("; "));
    Ok(())
}
