//! The wiring without services: a fake classifier and fake sinks (no broker, no ClickHouse, no
//! libtorch call) drive the real inference stages and the real store-and-ack stage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::acks::store_and_ack;
use super::inference::{start_inference, Observers};
use crate::batch::offsets::OffsetTracker;
use crate::config::Config;
use std::path::{Path, PathBuf};

use super::loader::load_active;
use crate::deploy::Deployment;
use crate::model::load::ClassifierFactory;
use crate::model::{Classifier, Manifest, ModelError, ModelFiles, ModelId, PaddedBatch};
use crate::sink::clickhouse::DeploymentEventRow;
use crate::sink::{ResultSink, SinkError};
use crate::telemetry::Health;
use crate::tweet::Tweet;
use crate::work::{ClassifiedBatch, Role, Work};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/1");

/// Answers every row with the same probabilities; passes the load-time check (its first call),
/// then fails the first `transient_failures` calls with a retriable error; records the rows and
/// token ids of each call after the check.
struct FakeModel {
    labels: Vec<String>,
    probs: Vec<f32>,
    checked: bool,
    transient_failures: usize,
    calls: Calls,
}

/// (model name, rows, ids) of every classify call, in order.
type Calls = Arc<Mutex<Vec<(String, usize, Vec<i64>)>>>;

impl Classifier for FakeModel {
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn classify(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, ModelError> {
        if !std::mem::replace(&mut self.checked, true) {
            return Ok(vec![self.probs.clone(); batch.rows]);
        }
        let name = if self.probs[0] > 0.5 { "alt" } else { "demo" };
        self.calls
            .lock()
            .unwrap()
            .push((name.into(), batch.rows, batch.ids.clone()));
        if self.transient_failures > 0 {
            self.transient_failures -= 1;
            return Err(ModelError::Inference("CUDA out of memory (fake)".into()));
        }
        Ok(vec![self.probs.clone(); batch.rows])
    }
}

/// A fake classifier per model directory: `alt` says "against", every other "favour"; `failing`
/// fails every call for good; the first `transient_failures` calls of the first model built fail
/// with a retriable error.
fn fake_factory(transient_failures: usize) -> (ClassifierFactory, Calls) {
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let first = Arc::new(AtomicUsize::new(transient_failures));
    let c = calls.clone();
    let factory: ClassifierFactory = Arc::new(move |_: &Path, m: &Manifest, _: &ModelFiles| {
        let probs = if m.name == "alt" {
            vec![0.8, 0.1, 0.1]
        } else {
            vec![0.2, 0.3, 0.5]
        };
        Ok(Box::new(FakeModel {
            labels: vec!["against".into(), "neutral".into(), "favour".into()],
            probs,
            checked: false,
            transient_failures: if m.name == "failing" {
                usize::MAX
            } else {
                first.swap(0, Ordering::SeqCst)
            },
            calls: c.clone(),
        }) as _)
    });
    (factory, calls)
}

/// A model store of copies of the demo model (without `parity.json`: the fakes are not the
/// demo model): `demo/1`, `alt/1`, `failing/1`, and `corrupt/1` whose weights do not match its
/// manifest.
fn fake_store() -> PathBuf {
    let root = std::env::temp_dir().join(format!(
        "vaxpulse-store-{}-{}",
        std::process::id(),
        STORES.fetch_add(1, Ordering::SeqCst)
    ));
    for name in ["demo", "alt", "failing", "corrupt"] {
        let dir = root.join(name).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["model.pt", "tokenizer.json"] {
            std::fs::copy(Path::new(DEMO).join(f), dir.join(f)).unwrap();
        }
        let manifest = std::fs::read_to_string(Path::new(DEMO).join("manifest.json"))
            .unwrap()
            .replace("\"name\": \"demo\"", &format!("\"name\": \"{name}\""));
        std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    }
    std::fs::write(root.join("corrupt/1/model.pt"), b"not the exported weights").unwrap();
    root
}
static STORES: AtomicUsize = AtomicUsize::new(0);

fn config() -> Config {
    let mut cfg = Config::default();
    let store = fake_store();
    cfg.model.dir = store.join("demo/1");
    cfg.model.store_dir = store;
    cfg.model.warmup = false;
    cfg.batch.max_wait_ms = 1;
    // Room for every batch of a test: a shadow skipped for being busy would be a flaky count.
    cfg.pipeline.shadow_queue_batches = 256;
    cfg
}

fn work(tracker: &OffsetTracker, partition: i32, offset: i64) -> Work {
    let tweet = Tweet {
        id: format!("{partition}-{offset}"),
        text: format!("Le vaccin numéro {offset} arrive en pharmacie"),
        created_at: chrono::Utc::now(),
        lang: "fr".into(),
    };
    Work::new(tweet, tracker.track(partition, offset))
}

fn id_in(cfg: &Config, name: &str) -> ModelId {
    Manifest::load(&cfg.model.store_dir.join(name).join("1"))
        .unwrap()
        .id()
}

/// The bootstrap deployment of `cfg` plus `shadows` (names in the fake store).
fn deployment(cfg: &Config, shadows: &[&str]) -> Deployment {
    let mut d = Deployment::bootstrap(id_in(cfg, "demo"));
    if !shadows.is_empty() {
        d.epoch = 1;
        d.shadows = shadows.iter().map(|s| id_in(cfg, s)).collect();
    }
    pinned(cfg, d)
}

/// `d` with each version's manifest pinned as the fake store has it (as `vaxpulse models`
/// would publish it; `corrupt` included: its manifest reads, its weights do not match).
fn pinned(cfg: &Config, mut d: Deployment) -> Deployment {
    if d.epoch > 0 {
        for v in d.versions().cloned().collect::<Vec<_>>() {
            let m = Manifest::load(&cfg.model.store_dir.join(&v.name).join(&v.version)).unwrap();
            d.manifests.insert(v.version_label(), m.digest);
        }
    }
    d
}

/// What a test may do halfway through [`run_stages`].
struct During<'a> {
    deploy: &'a crossbeam_channel::Sender<Deployment>,
    seen: &'a mut Vec<ClassifiedBatch>,
    output: &'a mut tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    events: &'a mut tokio::sync::mpsc::Receiver<DeploymentEventRow>,
}

impl During<'_> {
    /// Waits for the event of `epoch` (events seen on the way are kept in `kept`).
    fn wait_event(&mut self, epoch: u64, kept: &mut Vec<DeploymentEventRow>) {
        loop {
            let e = self
                .events
                .blocking_recv()
                .expect("the stages report every deployment");
            let done = e.epoch == epoch;
            kept.push(e);
            if done {
                return;
            }
        }
    }
}

/// Everything that came out of one run of the inference stages.
struct Out {
    champion: Vec<ClassifiedBatch>,
    shadows: Vec<ClassifiedBatch>,
    events: Vec<DeploymentEventRow>,
}

/// Feeds `works` through the real inference stages serving `start`; `during` runs after the
/// first `works.len() / 2` tweets went in (e.g. to publish a deployment).
fn run_stages(
    cfg: &Config,
    start: &Deployment,
    factory: ClassifierFactory,
    tracker: &Arc<OffsetTracker>,
    works: Vec<Work>,
    during: impl FnOnce(&mut During) -> Vec<DeploymentEventRow>,
) -> anyhow::Result<Out> {
    let active = load_active(cfg, start, &factory, None)?;
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(super::loader::EVENTS_QUEUE);
    let mut inf = start_inference(
        cfg,
        active,
        factory,
        Some(tracker.clone()),
        Observers {
            events: Some(events_tx),
            ..Default::default()
        },
    );
    let half = works.len() / 2;
    let mut champion = Vec::new();
    let mut works = works.into_iter();
    for w in works.by_ref().take(half) {
        inf.input.send(w).unwrap();
    }
    let mut events = during(&mut During {
        deploy: &inf.deployments,
        seen: &mut champion,
        output: &mut inf.output,
        events: &mut events_rx,
    });
    for w in works {
        inf.input.send(w).unwrap();
    }
    drop(inf.input);
    drop(inf.deployments);
    let mut shadow_output = inf.shadow_output;
    let shadows = std::thread::spawn(move || {
        let mut out = Vec::new();
        while let Some(b) = shadow_output.blocking_recv() {
            out.push(b);
        }
        out
    });
    while let Some(b) = inf.output.blocking_recv() {
        champion.push(b);
    }
    let mut first_error = None;
    for t in inf.threads.into_iter().chain([inf.loader]) {
        if let Err(e) = t.join().expect("no stage panics") {
            first_error.get_or_insert(e);
        }
    }
    let shadows = shadows.join().unwrap();
    while let Ok(e) = events_rx.try_recv() {
        events.push(e);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(Out {
            champion,
            shadows,
            events,
        }),
    }
}

/// Feeds `works` through the real inference stages serving the configured model; returns every
/// classified batch.
fn infer(
    factory: ClassifierFactory,
    tracker: &Arc<OffsetTracker>,
    works: Vec<Work>,
) -> anyhow::Result<Vec<ClassifiedBatch>> {
    let cfg = config();
    let start = deployment(&cfg, &[]);
    Ok(run_stages(&cfg, &start, factory, tracker, works, |_| Vec::new())?.champion)
}

#[test]
fn work_of_revoked_partitions_is_dropped_before_inference_and_read_again() {
    let tracker = Arc::new(OffsetTracker::new());
    tracker.assign(0);
    tracker.assign(1);
    let works: Vec<Work> = (0..10)
        .flat_map(|o| [work(&tracker, 0, o), work(&tracker, 1, o)])
        .collect();
    tracker.release(&[1]);
    let (factory, calls) = fake_factory(0);
    let out = infer(factory, &tracker, works).unwrap();
    let rows: Vec<i32> = out
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| r.source_partition))
        .collect();
    assert_eq!(
        rows,
        vec![0; 10],
        "only the kept partition's tweets come out"
    );
    assert_eq!(
        calls.lock().unwrap().iter().map(|c| c.1).sum::<usize>(),
        10,
        "the model never saw a tweet of the revoked partition"
    );
    assert_eq!(
        tracker.in_flight(Some(&[1])),
        0,
        "nothing left to drain there"
    );
    assert_eq!(
        tracker.positions(&[1]),
        vec![(1, 0)],
        "its commit position stays at the first dropped tweet"
    );
}

#[test]
fn a_retriable_inference_error_is_retried() {
    let tracker = Arc::new(OffsetTracker::new());
    let works: Vec<Work> = (0..5).map(|o| work(&tracker, 0, o)).collect();
    let (factory, calls) = fake_factory(2);
    let out = infer(factory, &tracker, works).unwrap();
    assert_eq!(out.iter().map(|b| b.rows.len()).sum::<usize>(), 5);
    let calls = calls.lock().unwrap();
    assert!(calls.len() >= 3, "two failures, then success: {calls:?}");
    assert_eq!(calls[0], calls[1], "the failed batch itself is retried");
}

#[test]
fn inference_failing_for_good_stops_the_stage_without_results() {
    let tracker = Arc::new(OffsetTracker::new());
    let works: Vec<Work> = (0..3).map(|o| work(&tracker, 0, o)).collect();
    let (factory, _) = fake_factory(usize::MAX);
    let err = match infer(factory, &tracker, works) {
        Ok(out) => panic!("expected an error, got {} batches", out.len()),
        Err(e) => e,
    };
    assert!(format!("{err:#}").contains("stay uncommitted"), "{err:#}");
    assert_eq!(tracker.in_flight(None), 3, "nothing was acknowledged");
}

/// Stores after `gate` opens (when given); fails for good when `fail`.
struct FakeSink {
    name: &'static str,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    fail: bool,
    stored: AtomicUsize,
}

impl FakeSink {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(FakeSink {
            name,
            gate: None,
            fail: false,
            stored: AtomicUsize::new(0),
        })
    }
}

impl ResultSink for FakeSink {
    fn name(&self) -> &'static str {
        self.name
    }
    fn store<'a>(&'a self, batch: &'a ClassifiedBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(g) = &self.gate {
                let _ = g.acquire().await.unwrap();
            }
            if self.fail {
                let bad = serde_json::from_str::<u8>("not a number").unwrap_err();
                return Err(SinkError::Encode(bad));
            }
            self.stored.fetch_add(batch.rows.len(), Ordering::SeqCst);
            Ok(())
        })
    }
}

fn classified(tracker: &OffsetTracker, offsets: std::ops::Range<i64>) -> ClassifiedBatch {
    let works: Vec<Work> = offsets.map(|o| work(tracker, 0, o)).collect();
    ClassifiedBatch {
        deleted: Vec::new(),
        rows: works
            .iter()
            .map(|w| crate::work::Classification {
                tweet_id: w.tweet.id.clone(),
                created_at: w.tweet.created_at,
                lang: "fr".into(),
                text: w.tweet.text.clone(),
                label: "neutral".into(),
                scores: Default::default(),
                model_version: "demo@1".into(),
                model_hash: "aaaaaaaaaaaa".into(),
                role: crate::work::Role::Champion,
                deployment_epoch: 0,
                classified_at: chrono::Utc::now(),
                source_partition: 0,
                source_offset: w.ack.offset,
                source_timestamp_ms: None,
            })
            .collect(),
        acks: works.iter().map(|w| w.ack).collect(),
        received: works.iter().map(|w| w.received).collect(),
    }
}

const IN_FLIGHT_ROWS: usize = 4;

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The ack stage over a fast sink and a slow one that stores a batch only when `gate` gets a
/// permit (ClickHouse's group commit, say), fed through `tx`.
struct Gated {
    tracker: Arc<OffsetTracker>,
    fast: Arc<FakeSink>,
    gate: Arc<tokio::sync::Semaphore>,
    tx: tokio::sync::mpsc::Sender<ClassifiedBatch>,
    stage: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gated {
    /// Lets the slow sink store `permits` more batches, waits until every offset is
    /// acknowledged, then closes the input and waits for the stage to end cleanly.
    async fn open_gate_and_finish(self, permits: usize) -> Arc<OffsetTracker> {
        self.gate.add_permits(permits);
        eventually("the acks", || self.tracker.in_flight(None) == 0).await;
        drop(self.tx);
        self.stage.await.unwrap().unwrap();
        self.tracker
    }

    /// Sends the batch of `offsets` and waits until the fast sink stored it (one write each:
    /// two batches sent together could be merged into one).
    async fn send_seen_by_fast_sink(&self, offsets: std::ops::Range<i64>) {
        let before = self.fast.stored.load(Ordering::SeqCst);
        let n = offsets.clone().count();
        self.tx
            .send(classified(&self.tracker, offsets))
            .await
            .unwrap();
        eventually("the fast sink", || {
            self.fast.stored.load(Ordering::SeqCst) == before + n
        })
        .await;
    }
}

fn gated_stage(queue: usize, max_in_flight_rows: usize) -> Gated {
    gated_stage_with(
        queue,
        super::acks::Budget {
            rows: max_in_flight_rows,
            bytes: 1 << 30,
        },
    )
}

fn gated_stage_with(queue: usize, budget: super::acks::Budget) -> Gated {
    let tracker = Arc::new(OffsetTracker::new());
    let fast = FakeSink::new("fast");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = Arc::new(FakeSink {
        gate: Some(gate.clone()),
        ..Arc::into_inner(FakeSink::new("slow")).unwrap()
    });
    let (tx, rx) = tokio::sync::mpsc::channel(queue);
    let stage = tokio::spawn(store_and_ack(
        rx,
        vec![fast.clone(), slow],
        tracker.clone(),
        Arc::new(Health::default()),
        budget,
        CancellationToken::new(),
    ));
    Gated {
        tracker,
        fast,
        gate,
        tx,
        stage,
    }
}

#[tokio::test]
async fn an_offset_is_acknowledged_only_after_both_sinks_stored_its_batch() {
    let g = gated_stage(4, IN_FLIGHT_ROWS);
    g.send_seen_by_fast_sink(0..3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        g.tracker.in_flight(None),
        3,
        "one sink stored it, the other not yet: nothing acknowledged"
    );
    let tracker = g.open_gate_and_finish(1).await;
    assert_eq!(tracker.positions(&[0]), vec![(0, 3)]);
}

#[tokio::test]
async fn later_batches_reach_a_fast_sink_while_a_slow_one_holds_earlier_ones() {
    // ClickHouse's group commit holds batches up to a second; the output topic must not wait.
    let g = gated_stage(1, 1_000);
    for b in 0..10 {
        g.send_seen_by_fast_sink(b * 3..b * 3 + 3).await;
    }
    assert_eq!(
        g.tracker.in_flight(None),
        30,
        "none stored by the slow sink yet"
    );
    let tracker = g.open_gate_and_finish(10).await;
    assert_eq!(tracker.positions(&[0]), vec![(0, 30)]);
}

/// With room for two 3-tweet batches in `g`'s budget, the third waits until the slow sink
/// stores one, whatever the fast sink could do.
async fn the_third_batch_waits_for_room(g: Gated) {
    g.send_seen_by_fast_sink(0..3).await;
    g.send_seen_by_fast_sink(3..6).await;
    g.tx.send(classified(&g.tracker, 6..9)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        g.fast.stored.load(Ordering::SeqCst),
        6,
        "the third batch waited"
    );
    g.gate.add_permits(1);
    eventually("room for the third batch", || {
        g.fast.stored.load(Ordering::SeqCst) == 9
    })
    .await;
    g.open_gate_and_finish(2).await;
}

#[tokio::test]
async fn tweets_in_flight_to_the_sinks_are_bounded() {
    the_third_batch_waits_for_room(gated_stage(1, 6)).await;
}

#[tokio::test]
async fn bytes_in_flight_to_the_sinks_are_bounded_too() {
    // Rows would allow a thousand tweets; two batches' worth of bytes (1 KiB each at least)
    // holds the third back.
    let budget = super::acks::Budget {
        rows: 1_000,
        bytes: 2 * 1024,
    };
    the_third_batch_waits_for_room(gated_stage_with(1, budget)).await;
}

#[tokio::test]
async fn a_sink_failing_for_good_stops_the_worker_without_acknowledging() {
    let tracker = Arc::new(OffsetTracker::new());
    let ok = FakeSink::new("ok");
    let broken = Arc::new(FakeSink {
        fail: true,
        ..Arc::into_inner(FakeSink::new("broken")).unwrap()
    });
    let health = Arc::new(Health::default());
    health.sinks_ok.store(true, Ordering::Relaxed);
    let cancel = CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(classified(&tracker, 0..3)).await.unwrap();
    let err = store_and_ack(
        rx,
        vec![ok, broken],
        tracker.clone(),
        health.clone(),
        super::acks::Budget {
            rows: IN_FLIGHT_ROWS,
            bytes: 1 << 30,
        },
        cancel.clone(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("broken"), "{err}");
    assert!(cancel.is_cancelled(), "the whole worker is told to stop");
    assert!(
        !health.sinks_ok.load(Ordering::Relaxed),
        "and reports not ready"
    );
    assert_eq!(tracker.in_flight(None), 3, "nothing acknowledged");
    assert_eq!(
        tracker.positions(&[0]),
        vec![(0, 0)],
        "so nothing is committed"
    );
}

#[test]
fn shadows_score_the_champions_padded_batch_and_never_hold_it_back() {
    let mut cfg = config();
    cfg.pipeline.shadow_threads = 2;
    let tracker = Arc::new(OffsetTracker::new());
    let works: Vec<Work> = (0..40).map(|o| work(&tracker, 0, o)).collect();
    let (factory, calls) = fake_factory(0);
    let start = deployment(&cfg, &["alt", "failing"]);
    let out = run_stages(&cfg, &start, factory, &tracker, works, |_| Vec::new()).unwrap();
    let champion_rows: Vec<_> = out.champion.iter().flat_map(|b| &b.rows).collect();
    assert_eq!(champion_rows.len(), 40, "a failing shadow stops nothing");
    assert!(champion_rows
        .iter()
        .all(|r| r.role == Role::Champion && r.model_version == "demo@1" && r.label == "favour"));
    let shadow_rows: Vec<_> = out.shadows.iter().flat_map(|b| &b.rows).collect();
    assert_eq!(
        shadow_rows.len(),
        40,
        "the working shadow scored every tweet"
    );
    assert!(shadow_rows
        .iter()
        .all(|r| r.role == Role::Shadow && r.model_version == "alt@1" && r.label == "against"));
    assert!(out.champion.iter().all(|b| !b.acks.is_empty()));
    assert!(
        out.shadows.iter().all(|b| b.acks.is_empty()),
        "shadows acknowledge nothing"
    );
    // Same tokenizer: each shadow call saw exactly the ids of a champion call.
    let calls = calls.lock().unwrap();
    let champion_ids: Vec<&Vec<i64>> = calls
        .iter()
        .filter(|c| c.0 == "demo")
        .map(|c| &c.2)
        .collect();
    let alt_ids: Vec<&Vec<i64>> = calls
        .iter()
        .filter(|c| c.0 == "alt")
        .map(|c| &c.2)
        .collect();
    assert!(!alt_ids.is_empty());
    assert!(alt_ids.iter().all(|ids| champion_ids.contains(ids)));
    assert_eq!(
        tracker.in_flight(None),
        40,
        "nothing acknowledged before the sinks"
    );
}

#[test]
fn a_deployment_takes_effect_between_batches_and_a_broken_one_is_refused() {
    let cfg = config();
    let tracker = Arc::new(OffsetTracker::new());
    let works: Vec<Work> = (0..60).map(|o| work(&tracker, 0, o)).collect();
    let (factory, _) = fake_factory(0);
    let start = deployment(&cfg, &[]);
    let (demo, alt, corrupt) = (
        id_in(&cfg, "demo"),
        id_in(&cfg, "alt"),
        id_in(&cfg, "corrupt"),
    );
    let out = run_stages(&cfg, &start, factory, &tracker, works, |d| {
        // Wait until the first half came out, then promote `alt` through a shadow step, and
        // publish a broken deployment last.
        while d.seen.iter().map(|b| b.rows.len()).sum::<usize>() < 30 {
            let b = d.output.blocking_recv().unwrap();
            d.seen.push(b);
        }
        let mut events = Vec::new();
        let d1 = start
            .apply(
                &crate::deploy::Change::Deploy {
                    model: alt.clone(),
                    champion: false,
                },
                "t",
                "",
            )
            .unwrap();
        let d2 = d1
            .apply(&crate::deploy::Change::Promote(alt.clone()), "t", "")
            .unwrap();
        d.deploy.send(pinned(&cfg, d1)).unwrap();
        d.deploy.send(pinned(&cfg, d2.clone())).unwrap();
        d.wait_event(2, &mut events);
        let d3 = d2
            .apply(
                &crate::deploy::Change::Deploy {
                    model: corrupt.clone(),
                    champion: true,
                },
                "t",
                "",
            )
            .unwrap();
        d.deploy.send(pinned(&cfg, d3)).unwrap();
        d.wait_event(3, &mut events);
        events
    })
    .unwrap();
    let rows: Vec<_> = out.champion.iter().flat_map(|b| &b.rows).collect();
    assert_eq!(rows.len(), 60);
    for b in &out.champion {
        let versions: std::collections::BTreeSet<_> = b
            .rows
            .iter()
            .map(|r| (&r.model_version, r.deployment_epoch))
            .collect();
        assert_eq!(versions.len(), 1, "no batch mixes versions: {versions:?}");
    }
    assert!(rows[..30]
        .iter()
        .all(|r| r.model_version == "demo@1" && r.deployment_epoch == 0));
    assert!(
        rows[30..]
            .iter()
            .all(|r| r.model_version == "alt@1" && r.deployment_epoch == 2),
        "after the promotion every batch is the new champion's, also after the refused epoch 3"
    );
    // The demoted champion became a shadow: it scored the second half.
    let shadow_rows: Vec<_> = out.shadows.iter().flat_map(|b| &b.rows).collect();
    assert_eq!(shadow_rows.len(), 30);
    assert!(shadow_rows
        .iter()
        .all(|r| r.model_hash == demo.hash && r.role == Role::Shadow));
    // Epoch 1 may be applied on its own or skipped for the newer 2 (both are fine).
    let outcomes: Vec<(u64, &str)> = out
        .events
        .iter()
        .map(|e| (e.epoch, e.outcome.as_str()))
        .filter(|e| e.0 != 1)
        .collect();
    assert_eq!(outcomes, [(0, "applied"), (2, "applied"), (3, "refused")]);
    let refused = out.events.last().unwrap();
    assert!(refused.message.contains("checksum"), "{}", refused.message);
}

/// The real inference stages serving the configured model with a fake classifier, no
/// observers: the stages, their offset tracker and the classifier's call count.
fn started(cfg: &Config) -> (super::inference::Inference, Arc<OffsetTracker>, Calls) {
    let start = deployment(cfg, &[]);
    let (factory, calls) = fake_factory(0);
    let tracker = Arc::new(OffsetTracker::new());
    let active = load_active(cfg, &start, &factory, None).unwrap();
    let inf = start_inference(
        cfg,
        active,
        factory,
        Some(tracker.clone()),
        Observers::default(),
    );
    (inf, tracker, calls)
}

#[test]
fn with_dispatch_when_idle_a_lone_tweet_leaves_at_once_whatever_max_wait() {
    let mut cfg = config();
    // An hour: if the batch waited for the clock, this test would time out.
    cfg.batch.max_wait_ms = 3_600_000;
    cfg.batch.dispatch_when_idle = true;
    let (inf, tracker, calls) = started(&cfg);
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let mut output = inf.output;
    let forward = std::thread::spawn(move || {
        while let Some(b) = output.blocking_recv() {
            let _ = seen_tx.send(b);
        }
    });
    for o in 0..5 {
        inf.input.send(work(&tracker, 0, o)).unwrap();
        let b = seen_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a lone tweet is sent as soon as the model waits, not after max_wait");
        assert_eq!(
            b.rows.iter().map(|r| r.source_offset).collect::<Vec<_>>(),
            vec![o]
        );
    }
    drop(inf.input);
    drop(inf.deployments);
    forward.join().unwrap();
    for t in inf.threads.into_iter().chain([inf.loader]) {
        t.join().expect("no stage panics").unwrap();
    }
    assert_eq!(calls.lock().unwrap().len(), 5, "one batch per tweet");
}

/// The batches (tweet offsets each) the stage sends downstream and the forwards (rows, padded
/// length each) the model ran for four short and four long tweets that arrive together and
/// wait for the clock.
fn forwards_of_mixed_lengths(split_by_cost: bool) -> (Vec<Vec<i64>>, Vec<(usize, usize)>) {
    let mut cfg = config();
    // Long enough that all eight are waiting when the oldest expires, on any machine.
    cfg.batch.max_wait_ms = 2_000;
    cfg.batch.split_by_cost = split_by_cost;
    // Fixed, so the test does not wait for 32 timed forwards: one call costs one token.
    cfg.batch.overhead_tokens = Some(1);
    let (inf, tracker, calls) = started(&cfg);
    let long = "le vaccin arrive en pharmacie demain matin ".repeat(8);
    for o in 0..8 {
        let text = if o % 2 == 0 { "vaccin" } else { long.as_str() };
        let tweet = Tweet {
            id: format!("0-{o}"),
            text: text.into(),
            created_at: chrono::Utc::now(),
            lang: "fr".into(),
        };
        inf.input
            .send(Work::new(tweet, tracker.track(0, o)))
            .unwrap();
    }
    // Input stays open until all eight are out: closing it would flush them as one batch.
    let mut output = inf.output;
    let mut batches = Vec::new();
    while batches.iter().map(Vec::len).sum::<usize>() < 8 {
        let b = output
            .blocking_recv()
            .expect("the stage runs until input closes");
        let mut offsets: Vec<i64> = b.rows.iter().map(|r| r.source_offset).collect();
        offsets.sort_unstable();
        batches.push(offsets);
    }
    drop(inf.input);
    drop(inf.deployments);
    assert!(
        output.blocking_recv().is_none(),
        "nothing more once all are out"
    );
    for t in inf.threads.into_iter().chain([inf.loader]) {
        t.join().expect("no stage panics").unwrap();
    }
    let forwards = calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, rows, ids)| (*rows, ids.len() / rows))
        .collect();
    (batches, forwards)
}

#[test]
fn with_a_known_call_cost_a_batch_of_mixed_lengths_runs_as_a_forward_per_length() {
    let all: Vec<i64> = (0..8).collect();
    let (batches, forwards) = forwards_of_mixed_lengths(true);
    assert_eq!(batches, vec![all.clone()], "still one batch downstream");
    assert_eq!(forwards.len(), 2, "{forwards:?}");
    assert_eq!((forwards[0].0, forwards[1].0), (4, 4), "{forwards:?}");
    assert!(
        forwards[0].1 < forwards[1].1,
        "short ones first: {forwards:?}"
    );
    let (batches, one) = forwards_of_mixed_lengths(false);
    assert_eq!(batches, vec![all]);
    assert_eq!(
        one,
        vec![(8, forwards[1].1)],
        "without the split: one padded forward"
    );
}

#[test]
fn a_new_champion_starts_its_own_cost_fit() {
    let mut cfg = config();
    cfg.batch.split_by_cost = true;
    cfg.batch.overhead_tokens = None;
    let mut cost = super::forwards::ForwardCost::from_config(&cfg.batch).expect("split on: a cost");
    // 2 ms a call + 10 µs a token: a call costs 200 tokens.
    fn timed(cost: &mut super::forwards::ForwardCost, model: &str, per_call: f64, n: u64) {
        for i in 0..n {
            let tokens = 100 + (i * 37 % 40) as usize * 50;
            cost.observe(model, tokens, per_call + 1e-5 * tokens as f64);
        }
    }
    timed(&mut cost, "a@1", 0.002, 200);
    let a = cost.overhead_tokens().expect("a fit for a@1");
    assert!((a - 200.0).abs() < 1.0, "{a}");
    // A champion with a 20 ms call: the old fit is dropped, not averaged into the new one.
    timed(&mut cost, "b@1", 0.020, 1);
    assert_eq!(
        cost.overhead_tokens(),
        None,
        "b@1 has no fit of its own yet"
    );
    timed(&mut cost, "b@1", 0.020, 199);
    let b = cost.overhead_tokens().expect("a fit for b@1");
    assert!((b - 2000.0).abs() < 10.0, "{b}");
}
