//! The Rust serving path (normalisation, tokenizer, TorchScript model) gives the same
//! probabilities as the Python training side for the fixed texts in `parity.json`.

use std::path::Path;

use vaxpulse::model::tokenizer::TweetTokenizer;
use vaxpulse::model::torch::TorchClassifier;
use vaxpulse::model::{Classifier, DeviceSpec, Manifest, PaddedBatch};

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

    let mut model = TorchClassifier::load(&dir, &manifest, DeviceSpec::Cpu, 1).unwrap();
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
