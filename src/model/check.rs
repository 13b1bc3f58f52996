//! `vaxpulse models check DIR`: an exported model directory, run through the worker's own serving
//! path (normalisation, `tokenizer.json`, TorchScript on the CPU in fp32, softmax), must give the
//! token ids and probabilities recorded in its `parity.json` (written by the export from the
//! reference implementation, e.g. transformers) within a bound. The export script runs it and
//! fails when it does not hold.

use std::path::Path;

use anyhow::Context;

use super::tokenizer::TweetTokenizer;
use super::torch::{TorchClassifier, TorchOptions};
use super::{argmax, Classifier, DeviceSpec, Manifest, PaddedBatch, Precision};

/// What the check found.
#[derive(Debug)]
pub struct ParityCheck {
    pub model: String,
    pub cases: usize,
    pub max_abs_diff: f64,
    pub same_label: usize,
}

/// How close to `parity.json` a version must be.
#[derive(Debug, Clone, Copy)]
pub struct ParityBounds {
    pub max_abs_diff: f64,
    /// Share of parity texts that must keep the reference's label (0 = not checked).
    pub min_label_agreement: f64,
}

impl ParityBounds {
    /// The bounds for `manifest` served in `precision`: a quantised export gets the int8
    /// bounds, a float one the fp32 bound (or the half-precision one in half precision).
    pub fn for_model(
        cfg: &crate::config::ModelConfig,
        manifest: &Manifest,
        precision: Precision,
    ) -> Self {
        if manifest.quantization.is_some() {
            return ParityBounds {
                max_abs_diff: cfg.int8_parity_max_abs_diff,
                min_label_agreement: cfg.int8_min_label_agreement,
            };
        }
        ParityBounds {
            max_abs_diff: match precision {
                Precision::Fp32 => cfg.parity_max_abs_diff,
                _ => f64::from(cfg.half_parity_max_abs_diff),
            },
            min_label_agreement: 0.0,
        }
    }
}

/// Runs the check on the CPU in fp32; an error when the directory is unusable, ids differ, or
/// the probabilities are outside the bounds: `model.parity_max_abs_diff` (or `max_abs_diff`
/// when given) for a float export, the int8 bounds for a quantised one.
pub fn check_dir(
    dir: &Path,
    cfg: &crate::config::ModelConfig,
    max_abs_diff: Option<f64>,
) -> anyhow::Result<(ParityCheck, ParityBounds)> {
    let manifest = Manifest::load(dir)?;
    // This check runs in fp32 whatever precision the replicas serve in.
    let mut bounds = ParityBounds::for_model(cfg, &manifest, Precision::Fp32);
    if let Some(m) = max_abs_diff {
        bounds.max_abs_diff = m;
    }
    let files = manifest.read_files(dir, true)?;
    let tok = TweetTokenizer::from_bytes(&files.tokenizer, manifest.max_length)?;
    let opts = TorchOptions {
        device: DeviceSpec::Cpu,
        intra_op_threads: 1,
        precision: Precision::Fp32,
        half_parity_max_abs_diff: 0.02,
        parity_batch: None,
    };
    let mut model = TorchClassifier::load(&files.weights, &manifest, opts)?;
    drop(files);
    Ok((
        check_parity(dir, &manifest, &tok, &mut model, bounds)?,
        bounds,
    ))
}

/// Runs `dir/parity.json` through `tok` and `model` (already loaded, on whatever device and
/// precision it serves with); an error when ids differ or a probability differs by more than
/// `bounds.max_abs_diff` from the reference, or too few texts keep the reference's label.
pub fn check_parity(
    dir: &Path,
    manifest: &Manifest,
    tok: &TweetTokenizer,
    model: &mut dyn Classifier,
    bounds: ParityBounds,
) -> anyhow::Result<ParityCheck> {
    let max_abs_diff = bounds.max_abs_diff;
    let path = dir.join("parity.json");
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let cases = fixture["cases"]
        .as_array()
        .filter(|c| !c.is_empty())
        .with_context(|| format!("{} has no cases", path.display()))?;
    let texts: Vec<&str> = cases
        .iter()
        .map(|c| c["text"].as_str().context("a case without text"))
        .collect::<anyhow::Result<_>>()?;
    let ids = tok.encode_batch(&texts)?;
    for (c, got) in cases.iter().zip(&ids) {
        let want: Vec<u32> = c["ids"]
            .as_array()
            .context("a case without ids")?
            .iter()
            .map(|v| v.as_u64().map(|x| x as u32).context("a token id"))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(
            *got == want,
            "token ids differ for {:?}: reference {want:?}, vaxpulse {got:?} (is tokenizer.json the checkpoint's fast tokenizer?)",
            c["text"]
        );
    }
    let batch = PaddedBatch::new(ids.iter().map(Vec::as_slice), manifest.pad_id);
    let probs = model.classify(&batch)?;
    let mut worst = 0f64;
    let mut same_label = 0;
    for (c, got) in cases.iter().zip(&probs) {
        let want: Vec<f64> = c["probabilities"]
            .as_array()
            .context("a case without probabilities")?
            .iter()
            .map(|v| v.as_f64().context("a probability"))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(
            want.len() == got.len(),
            "the reference has {} classes, the model {}",
            want.len(),
            got.len()
        );
        for (w, g) in want.iter().zip(got) {
            worst = worst.max((w - f64::from(*g)).abs());
        }
        let want32: Vec<f32> = want.iter().map(|&x| x as f32).collect();
        same_label += usize::from(argmax(&want32) == argmax(got));
    }
    let report = ParityCheck {
        model: manifest.model_version(),
        cases: cases.len(),
        max_abs_diff: worst,
        same_label,
    };
    anyhow::ensure!(
        worst <= max_abs_diff,
        "{}: max |Δp| = {worst:.2e} over {} texts exceeds {max_abs_diff:.0e}",
        report.model,
        report.cases
    );
    let agreement = same_label as f64 / cases.len() as f64;
    anyhow::ensure!(
        agreement >= bounds.min_label_agreement,
        "{}: {same_label} of {} parity texts keep the reference's label, below {:.0} % (model.int8_min_label_agreement)",
        report.model,
        report.cases,
        bounds.min_label_agreement * 100.0
    );
    Ok(report)
}
