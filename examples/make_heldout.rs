//! Writes `data/heldout_synthetic.jsonl`: labelled tweets for `vaxpulse eval` of the demo model,
//! from the synthetic generator with a seed the demo model was not trained on. Synthetic,
//! in-distribution data: it checks the serving path and the metrics, not real-world accuracy.
//! Run: `cargo run --release --example make_heldout`.

use chrono::{TimeZone, Utc};

fn main() -> std::io::Result<()> {
    let start = Utc.with_ymd_and_hms(2021, 7, 1, 0, 0, 0).unwrap();
    let mut g = vaxpulse::synthetic::Generator::new(20_261_201, start, 30);
    let mut out = String::new();
    for _ in 0..1000 {
        let t = g.tweet();
        out.push_str(&serde_json::json!({"text": t.text, "label": t.label}).to_string());
        out.push('\n');
    }
    std::fs::write("data/heldout_synthetic.jsonl", out)
}
