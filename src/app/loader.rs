//! The loader thread and what it loads: each published deployment newer than the one served
//! is loaded, warmed up and checked here, off the hot path, then handed to the model thread.
//! Every deployment applied or refused becomes one event (log line, metrics, a ClickHouse row).
//!
//! Guarantee: a deployment is handed on only when every one of its versions loaded and passed
//! its checks; a version that fails any check makes the whole deployment refused, and the one
//! served before keeps serving.

use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::deploy::store::{confined_version_dir, load_checked, LoadedModel, Pinned};
use crate::deploy::Deployment;
use crate::model::load::ClassifierFactory;
use crate::sink::clickhouse::DeploymentEventRow;
use crate::telemetry::{DeploymentChanged, Health};
use crate::work::Role;

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
            std::iter::once(&a.champion).chain(&a.shadows).find(|m| {
                let pin = deployment.manifest_sha256(id);
                m.id == *id && (pin.is_empty() || m.manifest.digest == pin)
            })
        }) {
            return Ok(m.clone());
        }
        let dir = if deployment.epoch == 0 {
            cfg.model.dir.clone()
        } else {
            confined_version_dir(&cfg.model.store_dir, id)
                .with_context(|| format!("cannot deploy {id}"))?
        };
        let expected = (deployment.epoch > 0).then(|| Pinned {
            id,
            manifest_sha256: deployment.manifest_sha256(id),
        });
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
/// Bounded ([`EVENTS_QUEUE`]): a flood of refused records costs a counter, not memory.
pub type EventSender = tokio::sync::mpsc::Sender<DeploymentEventRow>;

/// Event rows waiting for ClickHouse before new ones are dropped (and counted).
pub const EVENTS_QUEUE: usize = 1024;

fn send_event(tx: &EventSender, row: DeploymentEventRow) {
    let epoch = row.epoch;
    if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(row) {
        crate::telemetry::DeploymentEventDropped { epoch }.emit();
    }
}

/// A record refused before it was loaded (unreadable, or failing [`Deployment::check`]): the
/// same event as a refused deployment (log line, metric, `deployment_events` row).
pub(super) fn refusal_event(
    who: &ReplicaInfo,
    events: Option<&EventSender>,
    r: crate::deploy::control::Refusal<'_>,
) {
    match r.deployment {
        Some(d) => deployment_event(who, events, d, Err(&r.reason)),
        None => {
            DeploymentChanged {
                epoch: r.epoch,
                applied: false,
                summary: "(unreadable record)",
                retired: &[],
                serving: &[],
                since_change_seconds: None,
                load_seconds: 0.0,
                error: Some(&r.reason),
            }
            .emit();
            if let Some(tx) = events {
                send_event(tx, event_row(who, r.epoch, "refused", r.reason));
            }
        }
    }
}

/// A `deployment_events` row of this replica with nothing loaded (the caller fills in more).
fn event_row(who: &ReplicaInfo, epoch: u64, outcome: &str, message: String) -> DeploymentEventRow {
    DeploymentEventRow {
        at: Utc::now(),
        group_id: who.group_id.clone(),
        replica: who.replica.clone(),
        epoch,
        outcome: outcome.into(),
        champion: String::new(),
        shadows: Vec::new(),
        load_seconds: 0.0,
        since_change_ms: -1,
        message,
        key_id: String::new(),
    }
}

pub(super) fn deployment_event(
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
        let outcome = if error.is_none() {
            "applied"
        } else {
            "refused"
        };
        let message = error.unwrap_or_default().to_string();
        send_event(
            tx,
            DeploymentEventRow {
                champion: deployment.champion.to_string(),
                // A refused record may name thousands: the row keeps the first few.
                shadows: deployment.shadow_names().into_iter().take(16).collect(),
                load_seconds,
                since_change_ms: since_change.map_or(-1, |s| (s * 1e3) as i64),
                key_id: deployment
                    .signature
                    .as_ref()
                    .map(|s| crate::deploy::sign::short(&s.key_id))
                    .unwrap_or_default(),
                ..event_row(who, deployment.epoch, outcome, message)
            },
        );
    }
}

/// Prepares each published deployment newer than the one served, then hands it to the model
/// thread. A record is checked ([`Deployment::check`]) before anything it names is opened; a
/// record that fails the check, or a version that fails any loading check, makes the whole
/// deployment refused (an event with the reason) while the served one keeps serving.
#[allow(clippy::too_many_arguments)]
pub(super) fn loader_stage(
    cfg: Config,
    factory: ClassifierFactory,
    who: ReplicaInfo,
    events: Option<EventSender>,
    health: Option<Arc<Health>>,
    mut current: Arc<Active>,
    rx: Receiver<Deployment>,
    tx: Sender<Arc<Active>>,
) -> anyhow::Result<()> {
    while let Ok(first) = rx.recv() {
        // Only the newest valid record matters when several came in while loading; each
        // refused one still gets its event.
        let mut next: Option<Deployment> = None;
        for d in std::iter::once(first).chain(rx.try_iter()) {
            let base = next.as_ref().map_or(current.deployment.epoch, |n| n.epoch);
            match d.check(base, cfg.deploy.max_shadows) {
                Ok(()) => next = Some(d),
                Err(e) if e.is_stale() => tracing::debug!(epoch = d.epoch, "{e}"),
                Err(e) => deployment_event(&who, events.as_ref(), &d, Err(&e.to_string())),
            }
        }
        let Some(next) = next else { continue };
        match load_active(&cfg, &next, &factory, Some(&current)) {
            Ok(a) => {
                let a = Arc::new(a);
                current = a.clone();
                if let Some(h) = &health {
                    h.set_deployment_refused(None);
                }
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

/// What a replica serves when it starts, and the records it refused on the way.
pub struct Startup {
    pub active: Active,
    /// Published records newer than the one served, each with why it was refused.
    pub refused: Vec<(Deployment, String)>,
    /// The newest record that passed its checks but could not be loaded here (epoch, why):
    /// the group's deployment is not what this replica serves.
    pub unserved: Option<(u64, String)>,
}

/// The newest published record (by epoch, not by offset: a replayed old record cannot split
/// the group) that passes its checks and loads; else the configured `model.dir`. A record the
/// replica cannot serve never makes it exit: a restart would meet the same record and loop.
/// Only a broken `model.dir` with nothing else to serve is an error.
pub fn load_startup(
    cfg: &Config,
    published: Vec<Deployment>,
    factory: &ClassifierFactory,
) -> anyhow::Result<Startup> {
    // Newest epoch first; of two records with one epoch, the later one by offset.
    let admission = crate::deploy::Admission::from_config(cfg).map_err(anyhow::Error::msg)?;
    let mut candidates = published;
    candidates.reverse();
    candidates.sort_by_key(|d| std::cmp::Reverse(d.epoch));
    candidates.dedup_by(|a, b| a == b);
    let (mut refused, mut unserved) = (Vec::new(), None);
    for d in candidates {
        if let Err(e) = admission.admit(&d, 0) {
            tracing::error!(epoch = d.epoch, "deployment record refused: {e}");
            refused.push((d, e.to_string()));
            continue;
        }
        tracing::info!(deployment = %d.summary(), "loading the group's deployment");
        match load_active(cfg, &d, factory, None) {
            Ok(active) => {
                return Ok(Startup {
                    active,
                    refused,
                    unserved,
                })
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(deployment = %d.summary(), error = why, "cannot serve the published deployment; trying an older one");
                unserved.get_or_insert((d.epoch, why.clone()));
                refused.push((d, why));
            }
        }
    }
    let manifest = crate::model::Manifest::load(&cfg.model.dir)?;
    let d = Deployment::bootstrap(manifest.id());
    if !refused.is_empty() {
        tracing::error!(model_dir = %cfg.model.dir.display(), "no published deployment can be served; serving the configured model.dir until a working one is published (vaxpulse models)");
    }
    let active = load_active(cfg, &d, factory, None).with_context(|| {
        format!(
            "cannot serve the configured model.dir {} either; fix it or publish a working deployment with vaxpulse models",
            cfg.model.dir.display()
        )
    })?;
    Ok(Startup {
        active,
        refused,
        unserved,
    })
}
