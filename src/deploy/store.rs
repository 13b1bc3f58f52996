//! The model store (`model.store_dir/NAME/VERSION/`) and the gate every version passes before
//! it takes traffic: manifest, checksums, the weights hash the deployment names, tokenizer,
//! load on the serving device, warm-up, and parity against the export's reference
//! (`parity.json`) or, without one, a sane forward pass. Guarantee: a [`LoadedModel`] exists only
//! for a version that passed all of it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::deploy::Deployment;
use crate::model::check::{check_parity, ParityBounds};
use crate::model::load::ClassifierFactory;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::{warm_up, warmup_shapes, Classifier, Manifest, ModelId, PaddedBatch};

/// A version ready to score: checked, loaded and warmed up.
pub struct LoadedModel {
    pub id: ModelId,
    pub manifest: Manifest,
    pub tokenizer: Arc<TweetTokenizer>,
    /// sha256 of `tokenizer.json`: versions with the same one can score the same padded batch.
    pub tokenizer_hash: String,
    pub labels: Vec<String>,
    /// Locked by whichever inference thread runs it (the model thread as champion, a shadow
    /// thread as shadow; a promotion hands it over without reloading).
    pub model: Mutex<Box<dyn Classifier>>,
    pub load_seconds: f64,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel").field("id", &self.id).finish()
    }
}

/// Where a deployed version lives. `id`'s parts are plain directory names ([`ModelId`]), so the
/// path is below `store`; [`confined_version_dir`] also follows links.
pub fn version_dir(store: &Path, id: &ModelId) -> PathBuf {
    store.join(&id.name).join(&id.version)
}

fn not_in_store(store: &Path, id: &ModelId, dir: &Path) -> String {
    format!(
        "{} is not in the model store {} (export it there: scripts/export_model.py CHECKPOINT --out {})",
        id.version_label(),
        store.display(),
        dir.display()
    )
}

/// [`version_dir`] after following links: refused unless it is still inside the store (a link
/// in the store cannot make a replica load a version from elsewhere on disk).
pub fn confined_version_dir(store: &Path, id: &ModelId) -> anyhow::Result<PathBuf> {
    let dir = version_dir(store, id);
    let root = store
        .canonicalize()
        .with_context(|| format!("cannot open the model store {}", store.display()))?;
    let real = dir
        .canonicalize()
        .with_context(|| not_in_store(store, id, &dir))?;
    anyhow::ensure!(
        real.starts_with(&root) && real != root,
        "{} resolves to {}, outside the model store {}: refused (copy the export into the store instead of linking it)",
        dir.display(),
        real.display(),
        root.display()
    );
    Ok(real)
}

/// Completes `NAME@VERSION` with the weights hash of the store's copy (checked against the
/// files), or checks a given hash against it.
pub fn resolve(store: &Path, id: &ModelId) -> anyhow::Result<(ModelId, Manifest)> {
    let dir = confined_version_dir(store, id)?;
    let manifest = Manifest::load(&dir).with_context(|| not_in_store(store, id, &dir))?;
    manifest.verify(&dir)?;
    let found = manifest.id();
    anyhow::ensure!(
        found.name == id.name && found.version == id.version,
        "{} holds {}: its manifest names another version (move it to {})",
        dir.display(),
        found.version_label(),
        version_dir(store, &found).display()
    );
    anyhow::ensure!(
        id.hash.is_empty() || found.hash == id.hash,
        "{} in {} has weights {}, but {} was asked for: copy the same export to every replica's model store",
        id.version_label(),
        dir.display(),
        found.hash,
        id
    );
    Ok((found, manifest))
}

/// Pins the manifest of every version `d` names that has no pin yet, from the store's copy
/// (checked against its files); the previous champion is pinned when the store still has it.
pub fn pin_missing(store: &Path, d: &mut Deployment) -> anyhow::Result<()> {
    let required: Vec<ModelId> = d.versions().cloned().collect();
    for id in required.iter().chain(&d.previous_champion.clone()) {
        if !d.manifest_sha256(id).is_empty() {
            continue;
        }
        match resolve(store, id) {
            Ok((_, m)) => {
                d.manifests.insert(id.version_label(), m.digest);
            }
            Err(e) if required.contains(id) => {
                return Err(e.context(format!("cannot pin {id}'s manifest in the record")))
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// Every version in the store (`NAME/VERSION/manifest.json`), sorted; unreadable ones come back
/// as errors so `models list` can show them.
pub fn list(store: &Path) -> anyhow::Result<Vec<(PathBuf, anyhow::Result<Manifest>)>> {
    let mut out = Vec::new();
    let names = std::fs::read_dir(store)
        .with_context(|| format!("cannot read the model store {}", store.display()))?;
    for name in names.flatten().filter(|e| e.path().is_dir()) {
        for version in std::fs::read_dir(name.path())?
            .flatten()
            .filter(|e| e.path().join("manifest.json").exists())
        {
            let dir = version.path();
            let m = Manifest::load(&dir)
                .map_err(anyhow::Error::from)
                .and_then(|m| m.verify(&dir).map(|()| m).map_err(Into::into));
            out.push((dir, m));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What a deployment record pins of a version: its identity and the sha256 of its manifest.
#[derive(Debug, Clone, Copy)]
pub struct Pinned<'a> {
    pub id: &'a ModelId,
    /// 64 hex digits ([`Manifest::digest`]); empty only for the configured `model.dir`.
    pub manifest_sha256: &'a str,
}

impl Pinned<'_> {
    /// Whether `manifest` (read from `dir`) is the version pinned: same name and version, the
    /// same weights hash when one is named, the same manifest sha256 when one is pinned.
    pub fn matches(&self, dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
        let (id, w) = (manifest.id(), self.id);
        anyhow::ensure!(
            id.name == w.name && id.version == w.version && (w.hash.is_empty() || id.hash == w.hash),
            "{} holds {id}, but the deployment names {w}: copy the same export to every replica's model store",
            dir.display()
        );
        anyhow::ensure!(
            self.manifest_sha256.is_empty() || manifest.digest == self.manifest_sha256,
            "{}: its manifest has sha256 {}, but the deployment pins {} (the store's copy of {w} differs from the one deployed, e.g. labels or tokenizer changed): copy the same export to every replica's model store",
            dir.display(),
            manifest.digest,
            self.manifest_sha256
        );
        Ok(())
    }
}

/// Loads `dir` as `expected` (when given) and runs every check. The caller runs this on a
/// loader thread: it may take seconds for a base-sized model. The weights and tokenizer are
/// built from the bytes that were hashed, so a file swapped after the check is never loaded.
pub fn load_checked(
    cfg: &Config,
    dir: &Path,
    expected: Option<Pinned<'_>>,
    factory: &ClassifierFactory,
) -> anyhow::Result<LoadedModel> {
    let started = Instant::now();
    let manifest = Manifest::load(dir)?;
    let files = manifest.read_files(dir, expected.is_some() || cfg.model.verify_checksums)?;
    let id = manifest.id();
    if let Some(want) = expected {
        want.matches(dir, &manifest)?;
    }
    let tokenizer = TweetTokenizer::from_bytes(&files.tokenizer, manifest.max_length)?;
    let mut model = factory(dir, &manifest, &files)?;
    drop(files);
    anyhow::ensure!(
        model.labels() == manifest.labels.as_slice(),
        "{id}: the model's labels {:?} differ from the manifest's {:?}",
        model.labels(),
        manifest.labels
    );
    if cfg.model.warmup {
        let shapes = warmup_shapes(
            cfg.batch.max_batch_size,
            cfg.batch.max_batch_tokens,
            manifest.max_length,
        );
        warm_up(model.as_mut(), &shapes).with_context(|| format!("{id}: warm-up failed"))?;
    }
    if dir.join("parity.json").exists() {
        let bounds = ParityBounds::for_model(&cfg.model, &manifest, cfg.model.precision);
        let p = check_parity(dir, &manifest, &tokenizer, model.as_mut(), bounds)
            .with_context(|| format!("{id}: parity against the export's reference failed"))?;
        tracing::info!(model = %id, cases = p.cases, max_abs_diff = p.max_abs_diff, same_label = p.same_label, "parity against parity.json passed");
    } else {
        sane_forward_pass(&tokenizer, &manifest, model.as_mut())
            .with_context(|| format!("{id}: forward pass check failed"))?;
    }
    Ok(LoadedModel {
        tokenizer_hash: manifest.files.tokenizer.sha256.clone(),
        labels: manifest.labels.clone(),
        tokenizer: Arc::new(tokenizer),
        model: Mutex::new(model),
        load_seconds: started.elapsed().as_secs_f64(),
        id,
        manifest,
    })
}

/// Without a reference: one batch of real tweets must give one finite probability vector per
/// row, summing to 1.
fn sane_forward_pass(
    tok: &TweetTokenizer,
    manifest: &Manifest,
    model: &mut dyn Classifier,
) -> anyhow::Result<()> {
    let ids = tok.encode_batch(&crate::model::samples::texts(8))?;
    let batch = PaddedBatch::new(ids.iter().map(Vec::as_slice), manifest.pad_id);
    let probs = model.classify(&batch)?;
    anyhow::ensure!(
        probs.len() == batch.rows,
        "{} rows in, {} out",
        batch.rows,
        probs.len()
    );
    for p in &probs {
        let sum: f32 = p.iter().sum();
        anyhow::ensure!(
            p.len() == manifest.labels.len()
                && p.iter().all(|x| x.is_finite())
                && (sum - 1.0).abs() < 1e-3,
            "the model gave {p:?} for a tweet: expected {} finite probabilities summing to 1",
            manifest.labels.len()
        );
    }
    Ok(())
}
