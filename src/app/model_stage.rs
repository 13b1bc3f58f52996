//! The model thread (champion) and the shadow threads: each batch is scored by the versions of
//! exactly one deployment, and its result rows are built here.
//!
//! Guarantees: a new deployment is swapped in between batches, only after the loader checked
//! and warmed it up; shadows score the champion's very forwards when their tokenizer is the
//! same, on their own threads, and a busy or failing shadow is skipped and counted — it never
//! delays the champion or its offsets; work of partitions this replica no longer owns is
//! dropped before inference and handed back to the offset tracker unfinished, so the next owner
//! reads it again; a retriable champion error is retried a few times before the stage fails.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::batching::SharedTokenizer;
use super::forwards::{forwards, ForwardCost};
use super::inference::Encoded;
use super::loader::{deployment_event, Active, EventSender, ReplicaInfo};
use crate::batch::offsets::OffsetTracker;
use crate::deploy::store::LoadedModel;
use crate::model::{argmax, Classifier, PaddedBatch};
use crate::probe::{ProbeSender, ProbeSet};
use crate::telemetry::{BatchInferred, ShadowSkipped};
use crate::work::{Classification, ClassifiedBatch, Role};

/// Attempts of a batch whose inference fails with a retriable error.
const INFERENCE_ATTEMPTS: u64 = 4;

/// Probe runs of the model thread: the set, where runs go, how often besides start and each
/// deployment.
pub struct Probes {
    pub set: Arc<ProbeSet>,
    pub tx: ProbeSender,
    pub interval: Option<Duration>,
}

/// Runs `model` on `padded`, retrying retriable failures with a short growing pause. Also
/// returns the seconds of the forward that succeeded: the batcher's cost fit must not see
/// failed attempts or the pauses between them.
fn classify_with_retries(
    model: &Mutex<Box<dyn Classifier>>,
    padded: &PaddedBatch,
) -> anyhow::Result<(Vec<Vec<f32>>, f64)> {
    let mut model = model.lock().unwrap_or_else(PoisonError::into_inner);
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        match model.classify(padded) {
            Ok(p) => return Ok((p, started.elapsed().as_secs_f64())),
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
pub(super) struct RowMeta {
    tweet_id: String,
    created_at: DateTime<Utc>,
    lang: String,
    text: String,
    partition: i32,
    offset: i64,
    source_timestamp_ms: Option<i64>,
}

/// Result rows of `model` for `metas` (same order as `probs`).
pub(super) fn results(
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
pub(super) struct ShadowJob {
    pub(super) model: Arc<LoadedModel>,
    pub(super) epoch: u64,
    /// The champion's forwards, when the shadow's tokenizer is the champion's.
    pub(super) padded: Option<Arc<Vec<PaddedBatch>>>,
    pub(super) rows: Arc<Vec<RowMeta>>,
}

pub(super) struct ModelStage {
    pub(super) live: Option<Arc<OffsetTracker>>,
    pub(super) tokenizer: SharedTokenizer,
    pub(super) who: ReplicaInfo,
    pub(super) events: Option<EventSender>,
    pub(super) tx: tokio::sync::mpsc::Sender<ClassifiedBatch>,
    pub(super) shadow_tx: Sender<ShadowJob>,
    pub(super) probes: Option<Probes>,
    /// Tells the batcher when this thread waits for a batch (`batch.dispatch_when_idle`).
    pub(super) idle: Option<super::batching::ModelIdle>,
    /// What a forward costs, to cut batches by (`batch.split_by_cost`).
    pub(super) cost: Option<ForwardCost>,
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

    pub(super) fn run(
        mut self,
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
            if let Some(i) = &self.idle {
                i.waiting();
            }
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
            if let Some(i) = &self.idle {
                i.busy();
            }
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
    fn score(&mut self, active: &Active, batch: Vec<Encoded>) -> anyhow::Result<bool> {
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
        let overhead = self.cost.as_ref().and_then(ForwardCost::overhead_tokens);
        let padded = forwards(&mut batch, overhead, champion.manifest.pad_id);
        let version = champion.id.version_label();
        let started = Instant::now();
        let mut probs = Vec::with_capacity(batch.len());
        for f in &padded {
            let (p, forward_seconds) = classify_with_retries(&champion.model, f)?;
            if let Some(cost) = &mut self.cost {
                cost.observe(&version, f.padded_tokens(), forward_seconds);
            }
            probs.extend(p);
        }
        BatchInferred {
            model: &version,
            role: Role::Champion.as_str(),
            rows: batch.len(),
            forwards: padded.len(),
            real_tokens: batch.iter().map(|e| e.ids.len()).sum(),
            padded_tokens: padded.iter().map(PaddedBatch::padded_tokens).sum(),
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
pub(super) fn shadow_stage(
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
                    Ok(ids) => Arc::new(vec![PaddedBatch::new(
                        ids.iter().map(Vec::as_slice),
                        job.model.manifest.pad_id,
                    )]),
                    Err(e) => {
                        skipped("failed", &e);
                        continue;
                    }
                }
            }
        };
        let started = Instant::now();
        let probs: Result<Vec<Vec<f32>>, crate::model::ModelError> = {
            let mut model = job
                .model
                .model
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            padded.iter().try_fold(Vec::new(), |mut all, f| {
                all.extend(model.classify(f)?);
                Ok(all)
            })
        };
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
            rows: job.rows.len(),
            forwards: padded.len(),
            real_tokens: padded
                .iter()
                .map(|f| f.mask.iter().filter(|&&m| m == 1).count())
                .sum(),
            padded_tokens: padded.iter().map(PaddedBatch::padded_tokens).sum(),
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
