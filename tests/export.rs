//! `scripts/export_model.py` on a Hugging Face checkpoint that the test builds itself with
//! transformers' own classes and `save_pretrained` (small, seeded, no download; class order
//! pro, anti, neutral — unlike the demo's): the export maps the labels in the checkpoint's order,
//! records hashes, and passes its own parity check through the Rust serving path; each kind of
//! unusable checkpoint is refused with a message that says what is wrong; a checkpoint with
//! `type_vocab_size = 2` (transformers' default) exports too, and so does one shaped like a 2020
//! fine-tune (sentencepiece.bpe.model only, pytorch_model.bin, LABEL_0..2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn python() -> Command {
    Command::new("python3")
}

fn export(ckpt: &Path, out: &Path, extra: &[&str]) -> Output {
    python()
        .arg(Path::new(ROOT).join("scripts/export_model.py"))
        .arg(ckpt)
        .arg("--out")
        .arg(out)
        .args(["--vaxpulse", env!("CARGO_BIN_EXE_vaxpulse")])
        .args(extra)
        .output()
        .expect("python3 runs (scripts/setup.sh puts the venv first on PATH)")
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A copy of `ckpt` whose config.json went through `edit` (and without `drop`, when given).
fn variant(
    ckpt: &Path,
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut serde_json::Value),
    drop: Option<&str>,
) -> PathBuf {
    let v = dir.join(name);
    std::fs::create_dir_all(&v).unwrap();
    for e in std::fs::read_dir(ckpt).unwrap() {
        let e = e.unwrap();
        if Some(e.file_name().to_str().unwrap()) != drop {
            std::fs::copy(e.path(), v.join(e.file_name())).unwrap();
        }
    }
    let path = v.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    v
}

/// (name, edit of config.json, file left out, expected message).
type Case = (
    &'static str,
    Box<dyn Fn(&mut serde_json::Value)>,
    Option<&'static str>,
    &'static str,
);

#[test]
fn a_users_checkpoint_is_exported_checked_and_bad_ones_are_refused() {
    let dir = std::env::temp_dir().join(format!("vaxpulse-export-{:08x}", rand::random::<u32>()));
    let ckpt = dir.join("checkpoint");
    let made = python()
        .arg(Path::new(ROOT).join("tests/fixtures/make_checkpoint.py"))
        .arg(Path::new(ROOT).join("models/demo/1/tokenizer.json"))
        .arg(&ckpt)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", said(&made));

    let out = dir.join("models/mine/2");
    let ok = export(&ckpt, &out, &[]);
    let text = said(&ok);
    assert!(ok.status.success(), "{text}");
    assert!(
        text.contains("models check: mine@2") && text.contains("same label 10/10"),
        "the Rust parity check ran and is printed: {text}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["labels"],
        serde_json::json!(["favour", "against", "neutral"]),
        "labels in the checkpoint's own order"
    );
    assert_eq!(manifest["max_length"], 128, "within the position table");
    assert_eq!(manifest["pad_id"], 1);
    assert_eq!(
        manifest["source"]["weights_sha256"].as_str().map(str::len),
        Some(64)
    );
    let recheck = Command::new(env!("CARGO_BIN_EXE_vaxpulse"))
        .args(["models", "check"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(recheck.status.success(), "{}", said(&recheck));
    // What the worker loads: its manifest and checksums hold.
    let m = vaxpulse::model::Manifest::load(&out).unwrap();
    m.verify(&out).unwrap();
    assert_eq!(m.model_version(), "mine@2");

    let cases: [Case; 4] = [
        (
            "no-tokenizer",
            Box::new(|_| {}),
            Some("tokenizer.json"),
            "missing tokenizer files",
        ),
        (
            "masked-lm",
            Box::new(|c| c["architectures"] = serde_json::json!(["CamembertForMaskedLM"])),
            None,
            "not a sequence classifier",
        ),
        (
            "generic-labels",
            Box::new(|c| {
                c["id2label"] = serde_json::json!({"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"})
            }),
            None,
            "cannot map class 0 ('LABEL_0')",
        ),
        (
            "bert",
            Box::new(|c| {
                c["model_type"] = "bert".into();
                c["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
            }),
            None,
            "unsupported architecture",
        ),
    ];
    for (name, edit, drop, message) in cases {
        let v = variant(&ckpt, &dir, name, edit, drop);
        let out = dir.join(format!("models/{name}/1"));
        let bad = export(&v, &out, &[]);
        let text = said(&bad);
        assert_eq!(bad.status.code(), Some(2), "{name}: {text}");
        assert!(
            text.contains(message),
            "{name}: expected {message:?} in {text}"
        );
        assert!(!out.exists(), "{name}: nothing is written");
    }
    // Generic names are fine once the user says what they mean.
    let generic = dir.join("generic-labels");
    let named = export(
        &generic,
        &dir.join("models/generic/1"),
        &["--labels", "pour,contre,neutre"],
    );
    assert!(named.status.success(), "{}", said(&named));

    // A config built from scratch has transformers' default `type_vocab_size = 2`: a
    // single-text classifier uses token type 0 only, so it exports (row 0) and keeps parity.
    let two = dir.join("checkpoint-type-vocab-2");
    let made = python()
        .arg(Path::new(ROOT).join("tests/fixtures/make_checkpoint.py"))
        .arg(Path::new(ROOT).join("models/demo/1/tokenizer.json"))
        .arg(&two)
        .arg("2")
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", said(&made));
    let ok = export(&two, &dir.join("models/two/1"), &[]);
    let text = said(&ok);
    assert!(
        ok.status.success() && text.contains("same label 10/10"),
        "type_vocab_size = 2 exports with parity: {text}"
    );

    // A checkpoint shaped like a 2020 fine-tune: only the slow tokenizer's
    // sentencepiece.bpe.model, weights in pytorch_model.bin, LABEL_0..2, type_vocab_size 2. The
    // export converts the tokenizer itself (checked against SentencePiece) and keeps parity.
    let old = dir.join("checkpoint-2020");
    let made = python()
        .arg(Path::new(ROOT).join("tests/fixtures/make_checkpoint_2020.py"))
        .arg(&old)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", said(&made));
    assert!(!old.join("tokenizer.json").exists() && old.join("pytorch_model.bin").exists());
    let ok = export(
        &old,
        &dir.join("models/old/1"),
        &["--labels", "contre,neutre,pour"],
    );
    let text = said(&ok);
    assert!(
        ok.status.success()
            && text.contains("converted sentencepiece.bpe.model (400 pieces)")
            && text.contains("same label 10/10"),
        "the 2020 shape exports with a converted tokenizer and parity: {text}"
    );
    assert!(dir.join("models/old/1/tokenizer.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
