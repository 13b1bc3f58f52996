//! Loading a production model: the TorchScript file of a model directory on the configured
//! device and precision. Guarantee: a half-precision model is only returned after it passed the
//! parity check against fp32 on real tweets (else loading fails and the version is refused).

use std::path::Path;

use anyhow::Context;

use super::tokenizer::TweetTokenizer;
use super::torch::{TorchClassifier, TorchOptions};
use super::{Classifier, Manifest, ModelFiles, PaddedBatch, Precision};
use crate::config::Config;

/// Builds the classifier of a model directory; called on the loader thread, once per version
/// deployed (the inference threads configure libtorch for themselves, see
/// [`super::torch::configure_thread`]).
pub type ClassifierFactory = std::sync::Arc<
    dyn Fn(&Path, &Manifest, &ModelFiles) -> anyhow::Result<Box<dyn Classifier>> + Send + Sync,
>;

/// Real tweets for the half-precision parity check ([`super::samples`]), tokenised like traffic.
fn parity_batch(files: &ModelFiles, manifest: &Manifest) -> anyhow::Result<PaddedBatch> {
    let tok = TweetTokenizer::from_bytes(&files.tokenizer, manifest.max_length)?;
    let ids = tok.encode_batch(&super::samples::texts(usize::MAX))?;
    Ok(PaddedBatch::new(
        ids.iter().map(Vec::as_slice),
        manifest.pad_id,
    ))
}

/// Loads the TorchScript model of `dir` (from `files`, its bytes as read and hashed) with the
/// settings of `cfg.model` (device, threads, precision + parity check).
pub fn load_torch(
    cfg: &Config,
    dir: &Path,
    manifest: &Manifest,
    files: &ModelFiles,
) -> anyhow::Result<TorchClassifier> {
    let precision = cfg.model.precision;
    let mut device = cfg.model.device;
    if let Some(q) = &manifest.quantization {
        // Dynamically quantised Linear layers have CPU kernels only (fbgemm/qnnpack).
        anyhow::ensure!(
            precision == Precision::Fp32 && !matches!(device, super::DeviceSpec::Cuda(_)),
            "{} is quantised ({}, from {}): it runs on the CPU in fp32 only, but this replica has model.device = {device}, precision = {precision}; deploy the fp32 version here, or run this replica with device = \"cpu\"",
            manifest.model_version(),
            q.kind,
            q.from
        );
        device = super::DeviceSpec::Cpu;
    }
    let opts = TorchOptions {
        device,
        intra_op_threads: cfg.model.intra_op_threads,
        precision,
        half_parity_max_abs_diff: cfg.model.half_parity_max_abs_diff,
        parity_batch: match precision {
            Precision::Fp32 => None,
            _ => Some(parity_batch(files, manifest)?),
        },
    };
    let c = TorchClassifier::load(&files.weights, manifest, opts)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    match c.parity() {
        Some(p) => tracing::info!(
            device = ?c.device(), %precision, model = %manifest.model_version(),
            parity_max_abs_diff = p.max_abs_diff, parity_rows = p.rows, parity_same_label = p.label_agreement,
            "model loaded; half precision passed the parity check against fp32"
        ),
        None => {
            tracing::info!(device = ?c.device(), %precision, model = %manifest.model_version(), "model loaded")
        }
    }
    Ok(c)
}

/// The production classifier: TorchScript models with the settings of `cfg.model`.
pub fn torch_factory(cfg: &Config) -> ClassifierFactory {
    let cfg = cfg.clone();
    std::sync::Arc::new(move |dir: &Path, m: &Manifest, files: &ModelFiles| {
        Ok(Box::new(load_torch(&cfg, dir, m, files)?) as Box<dyn Classifier>)
    })
}
