//! The wiring without services: a fake classifier and fake sinks (no broker, no ClickHouse, no
//! libtorch call) drive the real inference stages and the real store-and-ack stage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::acks::store_and_ack;
use super::inference::start_inference;
use crate::batch::offsets::OffsetTracker;
use crate::config::Config;
use crate::model::load::ClassifierFactory;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::{Classifier, Manifest, ModelError, PaddedBatch};
use crate::sink::{ClassifiedBatch, ResultSink, SinkError};
use crate::source::kafka::Work;
use crate::telemetry::Health;
use crate::tweet::Tweet;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/1");

/// Answers every row with the same probabilities; fails the first `transient_failures` calls
/// with a retriable error; records the rows of each call.
struct FakeModel {
    labels: Vec<String>,
    transient_failures: usize,
    calls: Arc<Mutex<Vec<usize>>>,
}

impl Classifier for FakeModel {
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn classify(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, ModelError> {
        self.calls.lock().unwrap().push(batch.rows);
        if self.transient_failures > 0 {
            self.transient_failures -= 1;
            return Err(ModelError::Inference("CUDA out of memory (fake)".into()));
        }
        Ok(vec![vec![0.2, 0.3, 0.5]; batch.rows])
    }
}

fn fake_factory(transient_failures: usize) -> (ClassifierFactory, Arc<Mutex<Vec<usize>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let model = FakeModel {
        labels: vec!["against".into(), "neutral".into(), "favour".into()],
        transient_failures,
        calls: calls.clone(),
    };
    let factory: ClassifierFactory = Box::new(move |_: &Manifest| Ok(Box::new(model) as _));
    (factory, calls)
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.model.dir = DEMO.into();
    cfg.model.warmup = false;
    cfg.batch.max_wait_ms = 1;
    cfg
}

fn work(tracker: &OffsetTracker, partition: i32, offset: i64) -> Work {
    Work {
        tweet: Tweet {
            id: format!("{partition}-{offset}"),
            text: format!("Le vaccin numéro {offset} arrive en pharmacie"),
            created_at: chrono::Utc::now(),
            lang: "fr".into(),
        },
        ack: tracker.track(partition, offset),
        source_timestamp_ms: None,
        received: Instant::now(),
    }
}

/// Feeds `works` through the real inference stages; returns every classified batch.
fn infer(
    factory: ClassifierFactory,
    tracker: &Arc<OffsetTracker>,
    works: Vec<Work>,
) -> anyhow::Result<Vec<ClassifiedBatch>> {
    let cfg = config();
    let manifest = Manifest::load(&cfg.model.dir).unwrap();
    let tok = TweetTokenizer::load(
        &cfg.model.dir.join(&manifest.files.tokenizer.path),
        manifest.max_length,
    )
    .unwrap();
    let mut inf = start_inference(&cfg, tok, &manifest, factory, Some(tracker.clone()));
    for w in works {
        inf.input.send(w).unwrap();
    }
    drop(inf.input);
    let mut out = Vec::new();
    while let Some(b) = inf.output.blocking_recv() {
        out.push(b);
    }
    for t in inf.threads {
        t.join().expect("no stage panics")?;
    }
    Ok(out)
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
        calls.lock().unwrap().iter().sum::<usize>(),
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
        rows: works
            .iter()
            .map(|w| crate::sink::Classification {
                tweet_id: w.tweet.id.clone(),
                created_at: w.tweet.created_at,
                lang: "fr".into(),
                text: w.tweet.text.clone(),
                label: "neutral".into(),
                scores: Default::default(),
                model_version: "demo@1".into(),
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

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_offset_is_acknowledged_only_after_both_sinks_stored_its_batch() {
    let tracker = Arc::new(OffsetTracker::new());
    let fast = FakeSink::new("fast");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = Arc::new(FakeSink {
        gate: Some(gate.clone()),
        ..Arc::into_inner(FakeSink::new("slow")).unwrap()
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stage = tokio::spawn(store_and_ack(
        rx,
        vec![fast.clone(), slow.clone()],
        tracker.clone(),
        Arc::new(Health::default()),
        4,
        CancellationToken::new(),
    ));
    tx.send(classified(&tracker, 0..3)).await.unwrap();
    eventually("the fast sink to store", || {
        fast.stored.load(Ordering::SeqCst) == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        tracker.in_flight(None),
        3,
        "one sink stored it, the other not yet: nothing acknowledged"
    );
    gate.add_permits(1);
    eventually("the acks", || tracker.in_flight(None) == 0).await;
    assert_eq!(tracker.positions(&[0]), vec![(0, 3)]);
    drop(tx);
    stage.await.unwrap().unwrap();
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
        4,
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
