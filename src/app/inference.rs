//! The in-process inference stages: tokenizer pool → micro-batcher → model thread (champion) →
//! shadow threads, on OS threads joined by bounded channels (no libtorch call ever runs on the
//! async runtime), and the loader thread that prepares new deployments off the hot path.
//!
//! Guarantees: exactly one batch waits while the model runs the current one; every batch is
//! scored by the versions of exactly one deployment (a new one is swapped in between batches,
//! only after the loader checked and warmed it up; a broken one is refused and the old one keeps
//! serving); shadows score the champion's very padded batch when their tokenizer is the same,
//! on their own threads, and a busy or failing shadow is skipped and counted — it never delays
//! the champion or its offsets; work of partitions this replica no longer owns is dropped
//! before inference and handed back to the offset tracker unfinished, so the next owner reads it
//! again; a retriable champion error is retried a few times before the stage fails.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::batch::offsets::OffsetTracker;
use crate::batch::{Batcher, Limits};
use crate::config::Config;
use crate::deploy::store::{load_checked, version_dir, LoadedModel};
use crate::deploy::Deployment;
use crate::model::load::ClassifierFactory;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::{argmax, Classifier, PaddedBatch};
use crate::probe::{ProbeSender, ProbeSet};
use crate::sink::clickhouse::DeploymentEventRow;
use crate::sink::{Classification, ClassifiedBatch, Role};
use crate::source::kafka::Work;
use crate::telemetry::{BatchInferred, DeploymentChanged, ShadowSkipped};

struct Encoded {
    work: Work,
    ids: Vec<u32>,
    /// sha256 of the tokenizer that produced `ids`.
    tokenizer: Arc<str>,
}

pub(crate) fn spawn<F: FnOnce() -> anyhow::Result<()> + Send + 'static>(
    name: &str,
    f: F,
) -> JoinHandle<anyhow::Result<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("cannot spawn a thread; the process is out of resources")
}

/// Tweets per `encode_batch` call: large enough to amortise its parallel dispatch, small enough
/// that the batcher sees a steady stream rather than bursts.
const TOKENIZER_CHUNK: usize = 128;

/// Attempts of a batch whose inference fails with a retriable error.
const INFERENCE_ATTEMPTS: u64 = 4;

/// The versions one batch is scored by: one deployment, loaded and checked.
pub struct Active {
    pub deployment: Deployment,
    pub champion: Arc<LoadedModel>,
    pub shadows: Vec<Arc<LoadedModel>>,
}

impl Active {
    fn roles(&self) -> Vec<(String, &'static str)> {
        std::iter::once((self.champion.id.version_label(), Role::Champion.as_str()))
            .chain(
                self.shadows
                    .iter()
                    .map(|s| (s.id.version_label(), Role::Shadow.as_str())),
            )
            .collect()
    }
}

/// Loads and checks every version of `deployment` not already loaded in `current` (those are
/// shared, not reloaded). Epoch 0 is the configured `model.dir`; published deployments come from
/// `model.store_dir`. Runs on the calling thread: call it off the async runtime.
pub fn load_active(
    cfg: &Config,
    deployment: &Deployment,
    factory: &ClassifierFactory,
    current: Option<&Active>,
) -> anyhow::Result<Active> {
    let mut load = |id: &crate::model::ModelId| -> anyhow::Result<Arc<LoadedModel>> {
        if let Some(m) = current.and_then(|a| {
            std::iter::once(&a.champion)
                .chain(&a.shadows)
                .find(|m| m.id == *id)
        }) {
            return Ok(m.clone());
        }
        let dir = if deployment.epoch == 0 {
            cfg.model.dir.clone()
        } else {
            version_dir(&cfg.model.store_dir, id)
        };
        let expected = (deployment.epoch > 0).then_some(id);
        let m = load_checked(cfg, &dir, expected, factory)
            .with_context(|| format!("cannot deploy {id} from {}", dir.display()))?;
        tracing::info!(model = %m.id, seconds = m.load_seconds, "model version loaded, warmed up and checked");
        Ok(Arc::new(m))
    };
    let champion = load(&deployment.champion)?;
    let shadows = deployment
        .shadows
        .iter()
        .map(&mut load)
        .collect::<anyhow::Result<_>>()?;
    Ok(Active {
        deployment: deployment.clone(),
        champion,
        shadows,
    })
}

/// The tokenizer the pool uses: the champion's, switched by the model thread with the champion.
type SharedTokenizer = Arc<RwLock<(Arc<str>, Arc<TweetTokenizer>)>>;

fn tokenizer_stage(
    tok: SharedTokenizer,
    rx: Receiver<Work>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    while let Ok(first) = rx.recv() {
        let mut works = vec![first];
        while works.len() < TOKENIZER_CHUNK {
            match rx.try_recv() {
                Ok(w) => works.push(w),
                Err(_) => break,
            }
        }
        let (hash, tokenizer) = tok.read().unwrap_or_else(PoisonError::into_inner).clone();
        let texts: Vec<&str> = works
            .iter()
            .filter(|w| !w.delete)
            .map(|w| w.tweet.text.as_str())
            .collect();
        let mut encoded = tokenizer.encode_batch(&texts)?.into_iter();
        // Delete notices carry no text: no ids, and no room taken in a batch's token budget.
        let ids: Vec<Vec<u32>> = works
            .iter()
            .map(|w| {
                if w.delete {
                    Vec::new()
                } else {
                    encoded.next().unwrap_or_default()
                }
            })
            .collect();
        let encoded = works
            .into_iter()
            .zip(ids)
            .map(|(work, ids)| Encoded {
                work,
                ids,
                tokenizer: hash.clone(),
            })
            .collect();
        if tx.send(encoded).is_err() {
            break;
        }
    }
    Ok(())
}

fn push_all(batcher: &mut Batcher<Encoded>, items: impl Iterator<Item = Encoded>) {
    let now = Instant::now();
    for e in items {
        let len = e.ids.len();
        batcher.push(e, len, now);
    }
}

fn batcher_stage(
    limits: Limits,
    rx: Receiver<Vec<Encoded>>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    let mut batcher = Batcher::new(limits);
    loop {
        let now = Instant::now();
        let input = match batcher.deadline() {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match input {
            Ok(items) => {
                // Take whatever else is already there before deciding: a backlog fills batches.
                push_all(
                    &mut batcher,
                    items.into_iter().chain(rx.try_iter().flatten()),
                );
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for b in batcher.flush() {
                    if tx.send(b).is_err() {
                        break;
                    }
                }
                return Ok(());
            }
        }
        while let Some(b) = batcher.next_batch(Instant::now()) {
            if tx.send(b).is_err() {
                return Ok(());
            }
            // Top the window up before choosing the next batch: under a backlog the send above
            // waited for the model, and a window drained to one batch leaves no lengths to pick.
            push_all(&mut batcher, rx.try_iter().flatten());
        }
    }
}

/// Runs `model` on `padded`, retrying retriable failures with a short growing pause.
fn classify_with_retries(
    model: &Mutex<Box<dyn Classifier>>,
    padded: &PaddedBatch,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut model = model.lock().unwrap_or_else(PoisonError::into_inner);
    let mut attempt = 1;
    loop {
        match model.classify(padded) {
            Ok(p) => return Ok(p),
            Err(e) if e.is_retriable() && attempt < INFERENCE_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "inference failed; retrying");
                std::thread::sleep(Duration::from_millis(100 * attempt));
                attempt += 1;
            }
            Err(e) => {
                return Err(e)
                    .context("inference failed for good; the batch's offsets stay uncommitted")
            }
        }
    }
}

/// What a result row needs of its tweet (kept for the shadows after the champion's rows took
/// the originals).
#[derive(Clone)]
struct RowMeta {
    tweet_id: String,
    created_at: DateTime<Utc>,
    lang: String,
    text: String,
    partition: i32,
    offset: i64,
    source_timestamp_ms: Option<i64>,
}

/// Result rows of `model` for `metas` (same order as `probs`).
fn results(
    metas: Vec<RowMeta>,
    probs: Vec<Vec<f32>>,
    model: &LoadedModel,
    role: Role,
    epoch: u64,
) -> Vec<Classification> {
    let classified_at = Utc::now();
    let version = model.id.version_label();
    metas
        .into_iter()
        .zip(probs)
        .map(|(m, p)| Classification {
            tweet_id: m.tweet_id,
            created_at: m.created_at,
            lang: m.lang,
            text: m.text,
            label: model.labels[argmax(&p)].clone(),
            scores: model
                .labels
                .iter()
                .zip(&p)
                .map(|(l, s)| (l.clone(), serde_json::Value::from(f64::from(*s))))
                .collect(),
            model_version: version.clone(),
            model_hash: model.id.hash.clone(),
            role,
            deployment_epoch: epoch,
            classified_at,
            source_partition: m.partition,
            source_offset: m.offset,
            source_timestamp_ms: m.source_timestamp_ms,
        })
        .collect()
}

/// One batch for one shadow version.
struct ShadowJob {
    model: Arc<LoadedModel>,
    epoch: u64,
    /// The champion's padded batch, when the shadow's tokenizer is the champion's.
    padded: Option<Arc<PaddedBatch>>,
    rows: Arc<Vec<RowMeta>>,
}

/// Who this replica is, for deployment events.
#[derive(Clone, Debug)]
pub struct ReplicaInfo {
    pub group_id: String,
    pub replica: String,
}

impl ReplicaInfo {
    /// `kafka.group_instance_id` when set, else `host-pid`.
    pub fn of(cfg: &Config) -> Self {
        let replica = if cfg.kafka.group_instance_id.is_empty() {
            format!("{}-{}", crate::deploy::hostname(), std::process::id())
        } else {
            cfg.kafka.group_instance_id.clone()
        };
        ReplicaInfo {
            group_id: cfg.kafka.group_id.clone(),
            replica,
        }
    }
}

/// Where deployment events go besides the log and the metrics (ClickHouse, through the app).
pub type EventSender = tokio::sync::mpsc::UnboundedSender<DeploymentEventRow>;

/// Probe runs of the model thread: the set, where runs go, how often besides start and each
/// deployment.
pub struct Probes {
    pub set: Arc<ProbeSet>,
    pub tx: ProbeSender,
    pub interval: Option<Duration>,
}

/// Where the inference stages report besides the log and the metrics.
#[derive(Default)]
pub struct Observers {
    /// A row per deployment applied or refused.
    pub events: Option<EventSender>,
    /// Probe runs of every deployed version.
    pub probes: Option<Probes>,
}

fn deployment_event(
    who: &ReplicaInfo,
    events: Option<&EventSender>,
    deployment: &Deployment,
    applied: Result<(&Active, Option<&Active>), &str>,
) {
    let since_change = (deployment.epoch > 0)
        .then(|| (Utc::now() - deployment.changed_at).num_milliseconds() as f64 / 1e3);
    let summary = deployment.summary();
    let (serving, retired, load_seconds) = match applied {
        Ok((new, old)) => {
            let serving = new.roles();
            let retired = old
                .map(|o| o.roles())
                .unwrap_or_default()
                .into_iter()
                .filter(|r| !serving.contains(r))
                .collect();
            let load = std::iter::once(&new.champion)
                .chain(&new.shadows)
                .filter(|m| {
                    old.is_none_or(|o| {
                        !std::iter::once(&o.champion)
                            .chain(&o.shadows)
                            .any(|x| x.id == m.id)
                    })
                })
                .map(|m| m.load_seconds)
                .fold(0.0, |a, b| a + b);
            (serving, retired, load)
        }
        Err(_) => (Vec::new(), Vec::new(), 0.0),
    };
    let error = applied.err();
    DeploymentChanged {
        epoch: deployment.epoch,
        applied: error.is_none(),
        summary: &summary,
        retired: &retired,
        serving: &serving,
        since_change_seconds: since_change,
        load_seconds,
        error,
    }
    .emit();
    if let Some(tx) = events {
        let _ = tx.send(DeploymentEventRow {
            at: Utc::now(),
            group_id: who.group_id.clone(),
            replica: who.replica.clone(),
            epoch: deployment.epoch,
            outcome: if error.is_none() {
                "applied"
            } else {
                "refused"
            }
            .into(),
            champion: deployment.champion.to_string(),
            shadows: deployment.shadow_names(),
            load_seconds,
            since_change_ms: since_change.map_or(-1, |s| (s * 1e3) as i64),
            message: error.unwrap_or_default().to_string(),
        });
    }
}

/// Prepares each published deployment newer than the one served, then hands it to the model
/// thread; a version that fails any check makes the whole deployment refused.
fn loader_stage(
    cfg: Config,
    factory: ClassifierFactory,
    who: ReplicaInfo,
    events: Option<EventSender>,
    mut current: Arc<Active>,
    rx: Receiver<Deployment>,
    tx: Sender<Arc<Active>>,
) -> anyhow::Result<()> {
    while let Ok(mut next) = rx.recv() {
        // Only the newest matters when several changes came in while loading.
        while let Ok(newer) = rx.try_recv() {
            next = newer;
        }
        if next.epoch <= current.deployment.epoch {
            continue;
        }
        match load_active(&cfg, &next, &factory, Some(&current)) {
            Ok(a) => {
                let a = Arc::new(a);
                current = a.clone();
                if tx.send(a).is_err() {
                    break;
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                deployment_event(&who, events.as_ref(), &next, Err(&msg));
            }
        }
    }
    Ok(())
}

struct ModelStage {
    live: Option<Arc<OffsetTracker>>,
    tokenizer: SharedTokenizer,
    who: ReplicaInfo,
    events: Option<EventSender>,
    tx: tokio::sync::mpsc::Sender<ClassifiedBatch>,
    shadow_tx: Sender<ShadowJob>,
    probes: Option<Probes>,
}

impl ModelStage {
    /// Scores the probe set with every version of `active`, here between batches: the model
    /// thread is where the champion runs, so the probe sees exactly what the traffic sees.
    fn probe(&self, active: &Active) {
        let Some(p) = &self.probes else { return };
        for m in std::iter::once(&active.champion).chain(&active.shadows) {
            match crate::probe::score(&p.set, m) {
                Ok(run) => {
                    if p.tx.try_send(run).is_err() {
                        tracing::warn!(model = %m.id, "probe run dropped: the recorder is behind or gone");
                    }
                }
                Err(e) => tracing::warn!(model = %m.id, error = %e, "probe run failed"),
            }
        }
    }

    fn swap(&self, active: &mut Arc<Active>, new: Arc<Active>) {
        *self
            .tokenizer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (
            Arc::from(new.champion.tokenizer_hash.as_str()),
            new.champion.tokenizer.clone(),
        );
        deployment_event(
            &self.who,
            self.events.as_ref(),
            &new.deployment,
            Ok((&new, Some(active))),
        );
        *active = new;
    }

    fn run(
        self,
        mut active: Arc<Active>,
        swaps: Receiver<Arc<Active>>,
        rx: Receiver<Vec<Encoded>>,
    ) -> anyhow::Result<()> {
        deployment_event(
            &self.who,
            self.events.as_ref(),
            &active.deployment,
            Ok((&active, None)),
        );
        self.probe(&active);
        let tick = match self.probes.as_ref().and_then(|p| p.interval) {
            Some(every) => crossbeam_channel::tick(every),
            None => crossbeam_channel::never(),
        };
        let mut swaps = swaps;
        loop {
            // A deployment takes effect between batches, also while no tweet arrives.
            let mut batch = crossbeam_channel::select! {
                recv(swaps) -> a => {
                    match a {
                        Ok(a) => {
                            self.swap(&mut active, a);
                            self.probe(&active);
                        }
                        Err(_) => swaps = crossbeam_channel::never(),
                    }
                    continue;
                }
                recv(tick) -> _ => {
                    self.probe(&active);
                    continue;
                }
                recv(rx) -> b => match b {
                    Ok(b) => b,
                    Err(_) => break,
                },
            };
            while let Ok(a) = swaps.try_recv() {
                self.swap(&mut active, a);
                self.probe(&active);
            }
            if let Some(t) = &self.live {
                batch.retain(|e| {
                    let current = t.is_current(&e.work.ack);
                    if !current {
                        // Unfinished: the commit position stays at or below it.
                        t.untrack(e.work.ack);
                    }
                    current
                });
                if batch.is_empty() {
                    continue;
                }
            }
            if !self.score(&active, batch)? {
                break;
            }
        }
        Ok(())
    }

    /// Scores `batch` with the champion and hands it to the shadows (delete notices pass
    /// through unscored); false once the sinks are gone.
    fn score(&self, active: &Active, batch: Vec<Encoded>) -> anyhow::Result<bool> {
        let (deletes, mut batch): (Vec<Encoded>, Vec<Encoded>) =
            batch.into_iter().partition(|e| e.work.delete);
        let mut deleted = Vec::with_capacity(deletes.len());
        let mut delete_acks = Vec::with_capacity(deletes.len());
        for d in deletes {
            deleted.push(d.work.tweet.id);
            delete_acks.push(d.work.ack);
        }
        if batch.is_empty() {
            let out = ClassifiedBatch {
                rows: Vec::new(),
                deleted,
                acks: delete_acks,
                received: Vec::new(),
            };
            return Ok(self.tx.blocking_send(out).is_ok());
        }
        let champion = &active.champion;
        // Tokenised before a champion with another tokenizer took over: encode again.
        let stale: Vec<usize> = (0..batch.len())
            .filter(|&i| *batch[i].tokenizer != *champion.tokenizer_hash)
            .collect();
        if !stale.is_empty() {
            let texts: Vec<&str> = stale
                .iter()
                .map(|&i| batch[i].work.tweet.text.as_str())
                .collect();
            let ids = champion.tokenizer.encode_batch(&texts)?;
            for (&i, ids) in stale.iter().zip(ids) {
                batch[i].ids = ids;
            }
        }
        let padded = PaddedBatch::new(
            batch.iter().map(|e| e.ids.as_slice()),
            champion.manifest.pad_id,
        );
        let started = Instant::now();
        let probs = classify_with_retries(&champion.model, &padded)?;
        let version = champion.id.version_label();
        BatchInferred {
            model: &version,
            role: Role::Champion.as_str(),
            rows: padded.rows,
            real_tokens: batch.iter().map(|e| e.ids.len()).sum(),
            padded_tokens: padded.padded_tokens(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit();
        let mut acks = Vec::with_capacity(batch.len());
        let mut received = Vec::with_capacity(batch.len());
        let metas: Vec<RowMeta> = batch
            .into_iter()
            .map(|e| {
                acks.push(e.work.ack);
                received.push(e.work.received);
                let t = e.work.tweet;
                RowMeta {
                    tweet_id: t.id,
                    created_at: t.created_at,
                    lang: t.lang,
                    text: t.text,
                    partition: e.work.ack.partition,
                    offset: e.work.ack.offset,
                    source_timestamp_ms: e.work.source_timestamp_ms,
                }
            })
            .collect();
        if !active.shadows.is_empty() {
            let rows = Arc::new(metas.clone());
            let padded = Arc::new(padded);
            for s in &active.shadows {
                let job = ShadowJob {
                    model: s.clone(),
                    epoch: active.deployment.epoch,
                    padded: (s.tokenizer_hash == champion.tokenizer_hash).then(|| padded.clone()),
                    rows: rows.clone(),
                };
                if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
                    self.shadow_tx.try_send(job)
                {
                    ShadowSkipped {
                        model: &job.model.id.version_label(),
                        reason: "busy",
                        rows: job.rows.len(),
                        error: None,
                    }
                    .emit();
                }
            }
        }
        acks.extend(delete_acks);
        let out = ClassifiedBatch {
            rows: results(
                metas,
                probs,
                champion,
                Role::Champion,
                active.deployment.epoch,
            ),
            deleted,
            acks,
            received,
        };
        Ok(self.tx.blocking_send(out).is_ok())
    }
}

/// Scores shadow jobs; every failure is counted and skipped, never propagated.
fn shadow_stage(
    intra_op_threads: usize,
    rx: Receiver<ShadowJob>,
    tx: tokio::sync::mpsc::Sender<ClassifiedBatch>,
) -> anyhow::Result<()> {
    crate::model::torch::configure_thread(intra_op_threads);
    while let Ok(job) = rx.recv() {
        let version = job.model.id.version_label();
        let skipped = |reason, error: &dyn std::fmt::Display| {
            ShadowSkipped {
                model: &version,
                reason,
                rows: job.rows.len(),
                error: Some(error),
            }
            .emit()
        };
        let padded = match &job.padded {
            Some(p) => p.clone(),
            None => {
                let texts: Vec<&str> = job.rows.iter().map(|r| r.text.as_str()).collect();
                match job.model.tokenizer.encode_batch(&texts) {
                    Ok(ids) => Arc::new(PaddedBatch::new(
                        ids.iter().map(Vec::as_slice),
                        job.model.manifest.pad_id,
                    )),
                    Err(e) => {
                        skipped("failed", &e);
                        continue;
                    }
                }
            }
        };
        let started = Instant::now();
        let probs = job
            .model
            .model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .classify(&padded);
        let probs = match probs {
            Ok(p) => p,
            Err(e) => {
                skipped("failed", &e);
                continue;
            }
        };
        BatchInferred {
            model: &version,
            role: Role::Shadow.as_str(),
            rows: padded.rows,
            real_tokens: padded.mask.iter().filter(|&&m| m == 1).count(),
            padded_tokens: padded.padded_tokens(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit();
        let batch = ClassifiedBatch {
            rows: results(
                job.rows.as_ref().clone(),
                probs,
                &job.model,
                Role::Shadow,
                job.epoch,
            ),
            deleted: Vec::new(),
            acks: Vec::new(),
            received: Vec::new(),
        };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(b)) => ShadowSkipped {
                model: &version,
                reason: "busy",
                rows: b.rows.len(),
                error: None,
            }
            .emit(),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    Ok(())
}

/// The running inference stages. Feed `input`; champion batches come out of `output`, shadow
/// batches out of `shadow_output`; send newer deployments to `deployments`. Dropping `input`
/// flushes everything in flight, then the threads end (the loader once `deployments` is
/// dropped too).
pub struct Inference {
    pub input: Sender<Work>,
    pub output: tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    pub shadow_output: tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    pub deployments: Sender<Deployment>,
    /// Tokenizer, batcher, model and shadow threads: any of them ending early is a failure.
    pub threads: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Ends when `deployments` is dropped; not a failure.
    pub loader: JoinHandle<anyhow::Result<()>>,
}

/// Starts the inference stages of `cfg` (`pipeline`, `batch`) serving `active` (see
/// [`load_active`]). `live`, when given, lets the model stage drop work of partitions this
/// replica no longer owns: their next owner reads them again, so computing them here would only
/// produce duplicates — after a rebalance that is up to `pipeline.queue_tweets` tweets of wasted
/// compute, and a revocation would wait for all of it. `observers.events` receives a row per deployment
/// applied or refused.
pub fn start_inference(
    cfg: &Config,
    active: Active,
    factory: ClassifierFactory,
    live: Option<Arc<OffsetTracker>>,
    observers: Observers,
) -> Inference {
    let Observers { events, probes } = observers;
    let (work_tx, work_rx) = bounded::<Work>(cfg.pipeline.queue_tweets);
    // Room for about eight full batches of encoded tweets: the batcher picks similar lengths
    // out of what waits here, so a window of a single batch would leave nothing to choose from.
    let window_chunks = (8 * cfg.batch.max_batch_size)
        .div_ceil(TOKENIZER_CHUNK)
        .max(4);
    let (enc_tx, enc_rx) = bounded::<Vec<Encoded>>(window_chunks);
    // Capacity 1: exactly one batch waits while the model runs the current one.
    let (batch_tx, batch_rx) = bounded::<Vec<Encoded>>(1);
    let (out_tx, out_rx) =
        tokio::sync::mpsc::channel::<ClassifiedBatch>(cfg.pipeline.sink_queue_batches);
    let (shadow_tx, shadow_rx) = bounded::<ShadowJob>(cfg.pipeline.shadow_queue_batches);
    let (shadow_out_tx, shadow_out_rx) =
        tokio::sync::mpsc::channel::<ClassifiedBatch>(cfg.pipeline.shadow_queue_batches);
    let (deploy_tx, deploy_rx) = bounded::<Deployment>(16);
    let (swap_tx, swap_rx) = bounded::<Arc<Active>>(1);
    let active = Arc::new(active);
    let tokenizer: SharedTokenizer = Arc::new(RwLock::new((
        Arc::from(active.champion.tokenizer_hash.as_str()),
        active.champion.tokenizer.clone(),
    )));
    let limits = Limits::from(&cfg.batch);
    let who = ReplicaInfo::of(cfg);
    let mut threads = Vec::new();
    for i in 0..cfg.pipeline.tokenizer_threads {
        let (tok, rx, tx) = (tokenizer.clone(), work_rx.clone(), enc_tx.clone());
        threads.push(spawn(&format!("vaxpulse-tokenize-{i}"), move || {
            tokenizer_stage(tok, rx, tx)
        }));
    }
    drop((work_rx, enc_tx));
    threads.push(spawn("vaxpulse-batch", move || {
        batcher_stage(limits, enc_rx, batch_tx)
    }));
    for i in 0..cfg.pipeline.shadow_threads {
        let (rx, tx, n) = (
            shadow_rx.clone(),
            shadow_out_tx.clone(),
            cfg.model.intra_op_threads,
        );
        threads.push(spawn(&format!("vaxpulse-shadow-{i}"), move || {
            shadow_stage(n, rx, tx)
        }));
    }
    drop((shadow_rx, shadow_out_tx));
    let stage = ModelStage {
        live,
        tokenizer,
        who: who.clone(),
        events: events.clone(),
        tx: out_tx,
        shadow_tx,
        probes,
    };
    let (first, threads_n) = (active.clone(), cfg.model.intra_op_threads);
    threads.push(spawn("vaxpulse-model", move || {
        crate::model::torch::configure_thread(threads_n);
        stage.run(first, swap_rx, batch_rx)
    }));
    let loader_cfg = cfg.clone();
    let loader = spawn("vaxpulse-loader", move || {
        loader_stage(loader_cfg, factory, who, events, active, deploy_rx, swap_tx)
    });
    Inference {
        input: work_tx,
        output: out_rx,
        shadow_output: shadow_out_rx,
        deployments: deploy_tx,
        threads,
        loader,
    }
}
