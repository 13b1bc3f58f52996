//! The annotation page in a real browser: `vaxpulse annotate serve` (the binary) on a sample of
//! tweets in the real ClickHouse, driven in headless Chromium by Playwright
//! (`tests/browser/annotate.cjs`): a wrong token is refused, tweets are labelled with a click and
//! with keys, one label is undone (the tweet comes back) and relabelled, one is skipped. The
//! labels in ClickHouse are exactly those, and a tweet's markup is shown as text.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::{Duration, TimeZone, Utc};
use common::*;
use vaxpulse::sink::clickhouse::ClickHouseSink;

fn node_path() -> String {
    std::env::var("NODE_PATH").unwrap_or_else(|_| {
        format!(
            "{}/.cache/vaxpulse/node/node_modules",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotator_labels_undoes_and_skips_in_a_real_browser_and_clickhouse_has_exactly_that() {
    let names = Names::fresh("annotate");
    let mut cfg = names.test_config("");
    cfg.quality.sample_size = 100;
    let sink = ClickHouseSink::from_config(&cfg).unwrap();
    sink.apply_schema().await.unwrap();
    let db = &names.database;
    sink.client()
        .query(&format!(
            "INSERT INTO {db}.ingest (tweet_id, created_at, lang, text, source_partition, source_offset,
                                      model_version, model_hash, role, deployment_epoch, label, scores, classified_at)
             SELECT toString(7000 + number), toDateTime64('2026-11-21 08:00:00', 3, 'UTC') + toIntervalMinute(number * 3),
                    'fr', concat('Tweet ', toString(number), ' : <b>le vaccin</b> & moi'), 0, toInt64(number),
                    'demo@1', 'aaaaaaaaaaaa', 'champion', 1, 'neutral', map('neutral', toFloat32(0.8)), now64(3)
             FROM numbers(20)"
        ))
        .execute()
        .await
        .unwrap();
    let from = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
    vaxpulse::quality::sample::draw(
        &sink,
        &cfg.quality,
        "page",
        from,
        from + Duration::hours(24),
    )
    .await
    .unwrap();
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.annotation_samples")).await,
        "20"
    );

    let dir = std::env::temp_dir().join(format!("vaxpulse-annotate-{}", unique("t")));
    std::fs::create_dir_all(&dir).unwrap();
    let (token, line) = vaxpulse::annotate::tokens::new_token("alice").unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{line}\n")).unwrap();
    let port = free_port();
    let log = dir.join("serve.log");
    let _server = Service(
        Command::new(env!("CARGO_BIN_EXE_vaxpulse"))
            .args(["annotate", "serve"])
            .env("VAXPULSE_CLICKHOUSE_URL", clickhouse_url())
            .env("VAXPULSE_CLICKHOUSE_DATABASE", db)
            .env("VAXPULSE_ANNOTATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("VAXPULSE_ANNOTATE_TOKENS_FILE", &tokens)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    )
    .listening(port, "vaxpulse annotate serve", &log);

    let shot: PathBuf = dir.join("annotate.png");
    let run = Command::new("node")
        .arg(repo_root().join("tests/browser/annotate.cjs"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&token)
        .arg(&shot)
        .env("NODE_PATH", node_path())
        .output()
        .expect("node runs (scripts/setup.sh installs playwright-core and Chromium)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "the browser run failed: {said}");
    let out: serde_json::Value = serde_json::from_str(said.lines().last().unwrap()).unwrap();
    println!("{out}");
    let refused = out["refused"].as_str().unwrap();
    assert!(
        refused.contains("tokens file") && !refused.contains("not-a-token"),
        "{refused}"
    );
    assert!(out["annotator"].as_str().unwrap().contains("alice"));
    assert!(
        out["first_text"]
            .as_str()
            .unwrap()
            .contains("<b>le vaccin</b> & moi")
            && out["elements_in_text"] == 0,
        "the tweet's markup is shown as text: {out}"
    );
    let steps = out["steps"].as_array().unwrap();
    let tweet = |i: usize| steps[i]["tweet"].as_str().unwrap().to_string();
    let actions: Vec<&str> = steps
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["click:against", "key:3", "key:o", "key:2", "click:skip"]
    );
    assert!(steps.iter().all(|s| s["text_seen"] == true));
    // Undo brought back the tweet labelled off-topic, which was then labelled neutral.
    assert_eq!(out["undone"].as_str().unwrap(), tweet(2));
    assert_eq!(tweet(3), tweet(2));
    // The server read the withdrawn label back from ClickHouse before writing its tombstone.
    assert!(out["undo_status"].as_str().unwrap().contains("off_topic"));
    assert!(
        out["progress"].as_str().unwrap().starts_with("4 / 20"),
        "{}",
        out["progress"]
    );

    let labels: Vec<(String, String)> = sink
        .client()
        .query(&format!(
            "SELECT tweet_id, label FROM {db}.annotations FINAL WHERE annotator = 'alice' ORDER BY annotated_at"
        ))
        .fetch_all()
        .await
        .unwrap();
    let want = [
        (tweet(0), "against"),
        (tweet(1), "favour"),
        (tweet(2), "neutral"),
        (tweet(4), "skip"),
    ]
    .map(|(t, l)| (t, l.to_string()));
    assert_eq!(labels, want);
    let png = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let info = png.read_info().unwrap();
    assert_eq!((info.info().width, info.info().height), (900, 560));
    if let Ok(keep) = std::env::var("VAXPULSE_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
