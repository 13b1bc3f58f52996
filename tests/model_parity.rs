//! The Rust serving path (normalisation, tokenizer, TorchScript model) gives the same
//! probabilities as the Python training side for the fixed texts in `parity.json`.

use std::path::Path;

use vaxpulse::model::tokenizer::TweetTokenizer;
use vaxpulse::model::torch::{TorchClassifier, TorchOptions};
use vaxpulse::model::{Classifier, DeviceSpec, Manifest, PaddedBatch, Precision};

fn options(
    device: DeviceSpec,
    precision: Precision,
    parity_batch: Option<PaddedBatch>,
) -> TorchOptions {
    TorchOptions {
        device,
        intra_op_threads: 1,
        precision,
        half_parity_max_abs_diff: 0.02,
        parity_batch,
    }
}

#[test]
fn rust_probabilities_match_python_within_1e_4() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/1");
    let manifest = Manifest::load(&dir).unwrap();
    manifest.verify(&dir).unwrap();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let tok = TweetTokenizer::load(&dir.join("tokenizer.json"), manifest.max_length).unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let ids = tok.encode_batch(&texts).unwrap();
    for (c, got) in cases.iter().zip(&ids) {
        assert_eq!(
            vaxpulse::tweet::normalize(c["text"].as_str().unwrap()),
            c["normalized"].as_str().unwrap()
        );
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got, &want, "token ids differ for {:?}", c["text"]);
    }
    assert!(
        ids.iter().any(|i| i.len() == manifest.max_length),
        "the long text is truncated at max_length"
    );

    let mut model = TorchClassifier::load(
        &weights(&dir),
        &manifest,
        options(DeviceSpec::Cpu, Precision::Fp32, None),
    )
    .unwrap();
    // One padded batch (as the worker runs it) and one row at a time must both match.
    let batch = PaddedBatch::new(ids.iter().map(Vec::as_slice), manifest.pad_id);
    let batched = model.classify(&batch).unwrap();
    let mut worst = 0f64;
    for (i, c) in cases.iter().enumerate() {
        let single = model
            .classify(&PaddedBatch::new(
                std::iter::once(ids[i].as_slice()),
                manifest.pad_id,
            ))
            .unwrap();
        let want: Vec<f64> = c["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (k, w) in want.iter().enumerate() {
            worst = worst
                .max((f64::from(batched[i][k]) - w).abs())
                .max((f64::from(single[0][k]) - w).abs());
        }
    }
    println!(
        "max |Δp| Rust vs Python over {} texts: {worst:.2e}",
        cases.len()
    );
    assert!(worst <= 1e-4, "max |Δp| = {worst}");
}

#[test]
fn a_tampered_model_file_is_refused_with_a_clear_error() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/1");
    let tmp = std::env::temp_dir().join(format!("vaxpulse-tamper-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["manifest.json", "tokenizer.json", "model.pt"] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(tmp.join("tokenizer.json")).unwrap();
    bytes.push(b' ');
    std::fs::write(tmp.join("tokenizer.json"), bytes).unwrap();
    let err = Manifest::load(&tmp)
        .unwrap()
        .verify(&tmp)
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&tmp).ok();
    assert!(
        err.contains("checksum mismatch") && err.contains("re-export"),
        "{err}"
    );
}

#[test]
fn half_precision_on_cpu_is_refused_with_a_way_out() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/1");
    let manifest = Manifest::load(&dir).unwrap();
    let err = TorchClassifier::load(
        &weights(&dir),
        &manifest,
        options(DeviceSpec::Cpu, Precision::Fp16, None),
    )
    .err()
    .expect("fp16 on CPU must be refused");
    let msg = err.to_string();
    assert!(msg.contains("CUDA") && msg.contains("fp32"), "{msg}");
}

/// Runs where a GPU is present (the device machine); elsewhere it says so and checks nothing.
#[test]
fn half_precision_on_cuda_passes_parity_and_agrees_with_fp32() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: half-precision parity not checked on this machine");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/1");
    let manifest = Manifest::load(&dir).unwrap();
    let tok = TweetTokenizer::load(&dir.join("tokenizer.json"), manifest.max_length).unwrap();
    let texts = [
        "Je viens de recevoir ma deuxième dose 💉",
        "Le pass sanitaire est une dictature",
        "ok",
    ];
    let ids = tok.encode_batch(&texts).unwrap();
    let batch = PaddedBatch::new(ids.iter().map(Vec::as_slice), manifest.pad_id);
    let mut fp32 = TorchClassifier::load(
        &weights(&dir),
        &manifest,
        options(DeviceSpec::Cuda(0), Precision::Fp32, None),
    )
    .unwrap();
    let want = fp32.classify(&batch).unwrap();
    for p in [Precision::Fp16, Precision::Bf16] {
        let mut half = TorchClassifier::load(
            &weights(&dir),
            &manifest,
            options(DeviceSpec::Cuda(0), p, Some(batch.clone())),
        )
        .unwrap();
        let parity = half.parity().expect("half precision records its parity");
        assert!(parity.max_abs_diff <= 0.02, "{p:?}: {parity:?}");
        let got = half.classify(&batch).unwrap();
        for (a, b) in want.iter().zip(&got) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 0.02, "{p:?}: {x} vs {y}");
            }
        }
    }
}

/// The bytes of `dir/model.pt`, as the store hands them to the loader.
fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.pt")).expect("model.pt readable")
}
