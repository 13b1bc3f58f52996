//! What `vaxpulse models list|status|deploy|promote|rollback|retire` do. A change is checked
//! here first (the version is in the model store, its checksums hold, its parity against the
//! export's reference holds), then published on the control topic, confirmed by reading the
//! topic back (a concurrent change is detected, not silently overwritten), and recorded in
//! ClickHouse `deployment_changes`. Replicas check it again before it takes traffic.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::control::{publish, ControlReader};
use super::store::{list as list_store, resolve};
use super::{actor, Change, Deployment};
use crate::config::Config;
use crate::model::{Manifest, ModelId};
use crate::output::Table;
use crate::sink::clickhouse::schema::{DEPLOYMENT_CHANGES, DEPLOYMENT_EVENTS};
use crate::sink::clickhouse::{ClickHouseSink, DeploymentChangeRow};

/// Every published record a replica would admit, newest epoch first.
async fn admissible(cfg: &Config) -> anyhow::Result<Vec<Deployment>> {
    let k = cfg.kafka.clone();
    let published = tokio::task::spawn_blocking(move || {
        ControlReader::open(&k)?.catch_up(Duration::from_secs(20))
    })
    .await??;
    let admission = super::Admission::from_config(cfg).map_err(anyhow::Error::msg)?;
    let mut ok: Vec<Deployment> = published
        .into_iter()
        .filter(|d| admission.admit(d, 0).is_ok())
        .collect();
    ok.sort_by_key(|d| std::cmp::Reverse(d.epoch));
    Ok(ok)
}

fn bootstrap(cfg: &Config) -> anyhow::Result<Deployment> {
    let m = Manifest::load(&cfg.model.dir)
        .with_context(|| "no deployment published yet, and model.dir is unusable")?;
    Ok(Deployment::bootstrap(m.id()))
}

/// The group's deployment now: the highest admissible epoch on the control topic (what
/// replicas adopt, not the last record by offset), or the configured model.
pub async fn current(cfg: &Config) -> anyhow::Result<Deployment> {
    match admissible(cfg).await?.into_iter().next() {
        Some(d) => Ok(d),
        None => bootstrap(cfg),
    }
}

/// Whether this store holds every version of `d` as the record pins it (manifest only, no
/// weights hashing): what a replica with the same store could load.
fn loadable(store: &std::path::Path, d: &Deployment) -> anyhow::Result<()> {
    for id in d.versions() {
        let dir = super::store::confined_version_dir(store, id)?;
        let pinned = super::store::Pinned {
            id,
            manifest_sha256: d.manifest_sha256(id),
        };
        pinned.matches(&dir, &Manifest::load(&dir)?)?;
    }
    Ok(())
}

/// What a change builds on. `retire`, `promote` and `rollback` act on the published record as
/// it is (an operator retires the broken shadow `models status` shows). A `deploy` builds on the
/// newest admissible record this store could load — one that passes every check but names what
/// no store holds (a hand-written record) is skipped, so it cannot poison the new deployment —
/// carrying the highest admissible epoch: replicas followed that epoch and take only a newer one.
async fn base(cfg: &Config, skip_unloadable: bool) -> anyhow::Result<Deployment> {
    if !skip_unloadable {
        return current(cfg).await;
    }
    let records = admissible(cfg).await?;
    let Some(top) = records.first().map(|d| d.epoch) else {
        return bootstrap(cfg);
    };
    let store = &cfg.model.store_dir;
    let mut skipped = Vec::new();
    let mut chosen = None;
    for d in records {
        if d.epoch == 0 {
            chosen = Some(d);
            break;
        }
        match loadable(store, &d) {
            Ok(()) => {
                chosen = Some(d);
                break;
            }
            Err(why) => skipped.push(format!("epoch {}: {why:#}", d.epoch)),
        }
    }
    let mut base = match chosen {
        Some(d) => d,
        None => bootstrap(cfg)?,
    };
    if !skipped.is_empty() {
        eprintln!(
            "warning: skipped published records this model store cannot load ({}); building on epoch {}",
            skipped.join("; "),
            base.epoch
        );
    }
    base.epoch = top;
    Ok(base)
}

/// `models list`: every version in the store, with its role in the current deployment.
pub async fn list(cfg: &Config) -> anyhow::Result<String> {
    let deployment = current(cfg).await.ok();
    let mut t = Table::new(&["version", "weights", "labels", "max_length", "role", "dir"]);
    for (dir, m) in list_store(&cfg.model.store_dir)? {
        match m {
            Ok(m) => {
                let id = m.id();
                let role = match &deployment {
                    Some(d) if d.champion == id => "champion",
                    Some(d) if d.shadows.contains(&id) => "shadow",
                    _ => "-",
                };
                t.row(vec![
                    id.version_label(),
                    id.hash.clone(),
                    m.labels.join(","),
                    m.max_length.to_string(),
                    role.into(),
                    dir.display().to_string(),
                ]);
            }
            Err(e) => t.row(vec![
                "(unusable)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("{}: {e:#}", dir.display()),
            ]),
        }
    }
    Ok(format!(
        "model store {}\n\n{}",
        cfg.model.store_dir.display(),
        t.render()
    ))
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct EventLine {
    replica: String,
    epoch: u64,
    outcome: String,
    since_change_ms: i64,
    message: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ChangeLine {
    changed_at: String,
    epoch: u64,
    action: String,
    actor: String,
    from_champion: String,
    to_champion: String,
    to_shadows: Vec<String>,
}

/// `models status`: the deployment, the last changes and what each replica did with them.
pub async fn status(cfg: &Config) -> anyhow::Result<String> {
    let d = current(cfg).await?;
    let mut out = format!(
        "group {}: {}\nlast change: {} by {} at {}{}\n\n",
        cfg.kafka.group_id,
        d.summary(),
        d.action,
        d.actor,
        d.changed_at.to_rfc3339(),
        if d.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", d.reason)
        }
    );
    let ch = ClickHouseSink::from_config(cfg)?;
    let changes = ch
        .client()
        .query(&format!(
            "SELECT toString(changed_at) AS changed_at, epoch, action, actor, from_champion, to_champion, to_shadows
             FROM {DEPLOYMENT_CHANGES} WHERE group_id = ? ORDER BY epoch DESC, changed_at DESC LIMIT 10"
        ))
        .bind(&cfg.kafka.group_id)
        .fetch_all::<ChangeLine>()
        .await;
    match changes {
        Ok(rows) => {
            let mut t = Table::new(&["epoch", "when", "action", "who", "champion", "shadows"]);
            for r in rows {
                t.row(vec![
                    r.epoch.to_string(),
                    r.changed_at,
                    r.action,
                    r.actor,
                    format!("{} → {}", r.from_champion, r.to_champion),
                    r.to_shadows.join(", "),
                ]);
            }
            out.push_str("### changes (ClickHouse deployment_changes)\n\n");
            out.push_str(&t.render());
        }
        Err(e) => out.push_str(&format!("(ClickHouse not readable: {e})\n")),
    }
    let events = ch
        .client()
        .query(&format!(
            "SELECT replica, argMax(epoch, at) AS epoch, argMax(outcome, at) AS outcome,
                    argMax(since_change_ms, at) AS since_change_ms, argMax(message, at) AS message
             FROM {DEPLOYMENT_EVENTS} WHERE group_id = ? AND at > now() - INTERVAL 1 DAY
             GROUP BY replica ORDER BY replica"
        ))
        .bind(&cfg.kafka.group_id)
        .fetch_all::<EventLine>()
        .await;
    if let Ok(rows) = events {
        let mut t = Table::new(&["replica", "epoch", "outcome", "after change", "message"]);
        for r in rows {
            t.row(vec![
                r.replica,
                r.epoch.to_string(),
                r.outcome,
                if r.since_change_ms < 0 {
                    "-".into()
                } else {
                    format!("{} ms", r.since_change_ms)
                },
                r.message,
            ]);
        }
        out.push_str(
            "\n### replicas (latest event in the last day, ClickHouse deployment_events)\n\n",
        );
        out.push_str(&t.render());
    }
    Ok(out)
}

/// Options of a change.
#[derive(Debug, Clone, Default)]
pub struct ChangeOptions {
    pub reason: String,
    /// Wait until this many replicas applied the new epoch (0 = do not wait).
    pub wait_replicas: usize,
    pub wait_timeout: Duration,
}

/// What a published change came to.
#[derive(Debug)]
pub struct ChangeOutcome {
    pub before: Deployment,
    pub after: Deployment,
    /// (replica, ms from the change to scoring with it), when asked to wait.
    pub applied: Vec<(String, i64)>,
}

/// Completes `model` with its weights hash from the store (and checks parity for a version
/// about to be deployed).
async fn resolve_checked(
    cfg: &Config,
    model: &ModelId,
    parity: bool,
) -> anyhow::Result<(ModelId, String)> {
    let (store, m, model_cfg) = (
        cfg.model.store_dir.clone(),
        model.clone(),
        cfg.model.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let (id, manifest) = resolve(&store, &m)?;
        let dir = super::store::version_dir(&store, &id);
        if parity && dir.join("parity.json").exists() {
            let (r, bounds) = crate::model::check::check_dir(&dir, &model_cfg, None)?;
            println!(
                "checked {id}: {} parity texts, max |Δp| {:.2e} ≤ {:.0e}, same label {}/{}",
                r.cases, r.max_abs_diff, bounds.max_abs_diff, r.same_label, r.cases
            );
        }
        Ok((id, manifest.digest))
    })
    .await?
}

/// Makes `change`, publishes it and records it.
pub async fn change(
    cfg: &Config,
    change: Change,
    opts: &ChangeOptions,
) -> anyhow::Result<ChangeOutcome> {
    let before = base(cfg, matches!(change, Change::Deploy { .. })).await?;
    let mut deployed_pin = None;
    let change = match change {
        Change::Deploy { model, champion } => {
            let (model, pin) = resolve_checked(cfg, &model, true).await?;
            deployed_pin = Some((model.version_label(), pin));
            Change::Deploy { model, champion }
        }
        // Named versions must be the deployed ones: complete the hash from the deployment.
        Change::Promote(m) => Change::Promote(deployed(&before, &m)?),
        Change::Retire(m) => Change::Retire(deployed(&before, &m)?),
        Change::Rollback => Change::Rollback,
    };
    let mut after = before
        .apply(&change, &actor(), &opts.reason)
        .map_err(anyhow::Error::new)?;
    after.manifests.extend(deployed_pin);
    let store = cfg.model.store_dir.clone();
    after = tokio::task::spawn_blocking(move || {
        super::store::pin_missing(&store, &mut after).map(|()| after)
    })
    .await??;
    if cfg.deploy.signing_key_file.as_os_str().is_empty() {
        anyhow::ensure!(
            cfg.deploy.trusted_keys.is_empty(),
            "replicas of this config trust only signed records: set deploy.signing_key_file (env VAXPULSE_DEPLOY_SIGNING_KEY_FILE) to the private key of one of deploy.trusted_keys"
        );
    } else {
        let key = super::sign::read_signing_key(&cfg.deploy.signing_key_file)?;
        after.signature = Some(super::sign::sign(&key, &cfg.kafka.group_id, &after));
    }
    publish(&cfg.kafka, &after).await?;
    let confirmed = current(cfg).await?;
    anyhow::ensure!(
        confirmed == after,
        "another change was published at the same time ({}); this one ({}) may not be in effect: check `vaxpulse models status` and repeat if needed",
        confirmed.summary(),
        after.summary()
    );
    tracing::info!(action = %after.action, actor = %after.actor, from = %before.summary(), to = %after.summary(), "deployment change published");
    let ch = ClickHouseSink::from_config(cfg)?;
    let row = DeploymentChangeRow {
        changed_at: after.changed_at,
        group_id: cfg.kafka.group_id.clone(),
        epoch: after.epoch,
        action: after.action.clone(),
        actor: after.actor.clone(),
        reason: after.reason.clone(),
        from_champion: before.champion.to_string(),
        to_champion: after.champion.to_string(),
        from_shadows: before.shadow_names(),
        to_shadows: after.shadow_names(),
        key_id: after
            .signature
            .as_ref()
            .map(|s| s.key_id.clone())
            .unwrap_or_default(),
    };
    if let Err(e) = async {
        ch.apply_schema().await?;
        ch.record(&row).await
    }
    .await
    {
        eprintln!(
            "warning: the change is published, but recording it in ClickHouse failed ({e}); replicas still record when they apply it"
        );
    }
    let applied = if opts.wait_replicas > 0 {
        wait_applied(&ch, cfg, after.epoch, opts.wait_replicas, opts.wait_timeout).await?
    } else {
        Vec::new()
    };
    Ok(ChangeOutcome {
        before,
        after,
        applied,
    })
}

/// The shadow `m` names and the champion it would replace, in the group's deployment now.
pub async fn promotion_pair(cfg: &Config, m: &ModelId) -> anyhow::Result<(ModelId, ModelId)> {
    let d = current(cfg).await?;
    let candidate = deployed(&d, m)?;
    anyhow::ensure!(
        d.shadows.contains(&candidate),
        "{candidate} is not a shadow of this deployment ({}): only a shadow is promoted",
        d.summary()
    );
    Ok((candidate, d.champion.clone()))
}

fn deployed(d: &Deployment, m: &ModelId) -> anyhow::Result<ModelId> {
    d.versions()
        .find(|v| {
            v.name == m.name && v.version == m.version && (m.hash.is_empty() || v.hash == m.hash)
        })
        .cloned()
        .with_context(|| format!("{m} is not deployed ({})", d.summary()))
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Applied {
    replica: String,
    outcome: String,
    since_change_ms: i64,
    message: String,
}

/// Waits until `n` replicas applied `epoch` (or one refused it).
async fn wait_applied(
    ch: &ClickHouseSink,
    cfg: &Config,
    epoch: u64,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, i64)>> {
    let started = Instant::now();
    loop {
        let rows = ch
            .client()
            .query(&format!("SELECT replica, outcome, since_change_ms, message FROM {DEPLOYMENT_EVENTS} WHERE group_id = ? AND epoch = ? ORDER BY at"))
            .bind(&cfg.kafka.group_id)
            .bind(epoch)
            .fetch_all::<Applied>()
            .await
            .unwrap_or_default();
        if let Some(r) = rows.iter().find(|r| r.outcome == "refused") {
            anyhow::bail!(
                "replica {} refused epoch {epoch}: {}; the previous deployment keeps serving there: fix the version and deploy again, or roll back",
                r.replica,
                r.message
            );
        }
        let applied: Vec<(String, i64)> = rows
            .into_iter()
            .map(|r| (r.replica, r.since_change_ms))
            .collect();
        if applied.len() >= n {
            return Ok(applied);
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "only {} of {n} replicas applied epoch {epoch} within {timeout:?} (are they running? vaxpulse models status)",
            applied.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
