//! `scripts/quantize_model.py` on the demo model: a dynamic-int8 version of its own (own hash,
//! `quantization` in the manifest), really quantised (its probabilities move, within the int8
//! bound), accepted by the worker's check with the int8 bounds and refused by a tight one, and
//! refused on a CUDA replica with a message that says what to do.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn an_int8_version_is_its_own_checked_model_for_the_cpu() {
    let store = std::env::temp_dir().join(format!("vaxpulse-int8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let src = store.join("demo/1");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["model.pt", "tokenizer.json", "parity.json", "manifest.json"] {
        std::fs::copy(Path::new(ROOT).join("models/demo/1").join(f), src.join(f)).unwrap();
    }
    let out = Command::new("python3")
        .arg(Path::new(ROOT).join("scripts/quantize_model.py"))
        .arg(&src)
        .args(["--vaxpulse", env!("CARGO_BIN_EXE_vaxpulse")])
        .output()
        .expect("python3 runs (scripts/setup.sh puts the venv first on PATH)");
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    let dir = store.join("demo/1-int8");
    let manifest = vaxpulse::model::Manifest::load(&dir).unwrap();
    let q = manifest
        .quantization
        .as_ref()
        .expect("quantization recorded");
    assert_eq!(q.kind, "dynamic-int8");
    let fp32 = vaxpulse::model::Manifest::load(&src).unwrap();
    assert_eq!(q.from, fp32.id().to_string());
    assert_ne!(
        manifest.id().hash,
        fp32.id().hash,
        "its own weights, its own identity"
    );
    manifest.verify(&dir).unwrap();

    // The worker's check with the int8 bounds: moved (really int8), but within 0.05.
    let cfg = vaxpulse::config::Config::default();
    let (r, bounds) = vaxpulse::model::check::check_dir(&dir, &cfg.model, None).unwrap();
    assert_eq!(bounds.max_abs_diff, cfg.model.int8_parity_max_abs_diff);
    assert!(
        r.max_abs_diff > 1e-5 && r.max_abs_diff <= 0.05,
        "max |Δp| {} ({text})",
        r.max_abs_diff
    );
    assert_eq!(r.same_label, r.cases);
    let e = vaxpulse::model::check::check_dir(&dir, &cfg.model, Some(1e-6))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds"), "{e}");

    // CUDA replicas refuse it, saying what to do.
    let mut gpu = cfg.clone();
    gpu.model.device = vaxpulse::model::DeviceSpec::Cuda(0);
    let e = vaxpulse::model::load::load_torch(
        &gpu,
        &dir,
        &manifest,
        &manifest.read_files(&dir, true).unwrap(),
    )
    .err()
    .expect("refused on cuda")
    .to_string();
    assert!(
        e.contains("runs on the CPU") && e.contains("device = \"cpu\""),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&store);
}
