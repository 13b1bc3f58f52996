//! The in-process inference stages, wired: tokenizer pool → micro-batcher → model thread
//! (champion) → shadow threads, on OS threads joined by bounded channels (no libtorch call ever
//! runs on the async runtime), and the loader thread that prepares new deployments off the hot
//! path. Each stage lives in its own module ([`super::batching`], [`super::model_stage`],
//! [`super::loader`]); this one owns the channels between them and their sizes.

use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use super::batching::{
    batcher_stage, tokenizer_stage, ModelIdle, SharedTokenizer, TOKENIZER_CHUNK,
};
use super::loader::{loader_stage, Active, EventSender, ReplicaInfo};
use super::model_stage::{shadow_stage, ModelStage, Probes, ShadowJob};
use crate::batch::offsets::OffsetTracker;
use crate::batch::Limits;
use crate::config::Config;
use crate::deploy::Deployment;
use crate::model::load::ClassifierFactory;
use crate::telemetry::Health;
use crate::work::{ClassifiedBatch, Work};

/// A tweet with its token ids, between the tokenizer pool and the model thread.
pub(super) struct Encoded {
    pub(super) work: Work,
    pub(super) ids: Vec<u32>,
    /// sha256 of the tokenizer that produced `ids`.
    pub(super) tokenizer: Arc<str>,
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

/// Where the inference stages report besides the log and the metrics.
#[derive(Default)]
pub struct Observers {
    /// A row per deployment applied or refused.
    pub events: Option<EventSender>,
    /// Probe runs of every deployed version.
    pub probes: Option<Probes>,
    /// Marked ready again once a deployment is applied after a refused one.
    pub health: Option<Arc<Health>>,
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
    let Observers {
        events,
        probes,
        health,
    } = observers;
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
    let idle = cfg.batch.dispatch_when_idle.then(ModelIdle::new);
    let model_idle = idle.clone();
    threads.push(spawn("vaxpulse-batch", move || {
        batcher_stage(limits, idle, enc_rx, batch_tx)
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
        idle: model_idle,
        cost: super::forwards::ForwardCost::from_config(&cfg.batch),
    };
    let (first, threads_n) = (active.clone(), cfg.model.intra_op_threads);
    threads.push(spawn("vaxpulse-model", move || {
        crate::model::torch::configure_thread(threads_n);
        stage.run(first, swap_rx, batch_rx)
    }));
    let loader_cfg = cfg.clone();
    let loader = spawn("vaxpulse-loader", move || {
        loader_stage(
            loader_cfg, factory, who, events, health, active, deploy_rx, swap_tx,
        )
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
