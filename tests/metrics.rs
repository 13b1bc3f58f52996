//! `/metrics` of a running worker process (real broker and ClickHouse, demo model) passes
//! `promtool check metrics` without a lint problem, and carries what operators scale and alert
//! on: consumer lag per partition and the model version on classified counts.

mod common;

use std::io::Write;
use std::time::Duration;

use chrono::Utc;
use vaxpulse::synthetic::Generator;
use vaxpulse_harness::fleet::{Fleet, WorkerCmd};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_running_worker_pass_promtool_and_carry_lag_and_model_version() {
    let names = Names::fresh("metrics");
    let cfg = names.test_config("");
    create_topics(&cfg.kafka, &names, 2)
        .await
        .expect("topics created");
    let mut g = Generator::new(5, Utc::now(), 1);
    let tweets: Vec<(String, Vec<u8>)> = (0..300)
        .map(|_| {
            let (t, p) = g.payload();
            (t.id, p)
        })
        .collect();
    produce_keyed(&cfg.kafka, &names.input, tweets, None)
        .await
        .unwrap();
    let port = free_port();
    let logs = std::env::temp_dir().join(unique("metrics"));
    let mut env = names.test_env();
    // The drift gauges are read from ClickHouse on this timer (300 s by default).
    env.push(("VAXPULSE_MONITOR_GAUGES_INTERVAL_S".into(), "1".into()));
    let mut fleet = Fleet::new(
        WorkerCmd::Vaxpulse(env!("CARGO_BIN_EXE_vaxpulse").into()),
        env,
        &logs,
        Some(port),
    )
    .unwrap();
    let log = fleet.spawn(0).unwrap();
    let output = TopicReader::start(&cfg.kafka, &names.output).unwrap();
    // Lag gauges are written on the commit timer, after the results.
    let mut text = String::new();
    fleet
        .wait_while_running(
            Duration::from_secs(180),
            || {
                text = http_get(port, "/metrics").unwrap_or_default();
                output.count() >= 300
                    && text.contains("vaxpulse_consumer_lag_messages{")
                    && text.contains("vaxpulse_probe_runs_total{")
                    && text.contains("\nvaxpulse_drift_alert ")
                    // This one replica holds partition 0: it computes the group's gauges.
                    && text.contains("\nvaxpulse_monitor_leader 1")
                    && text.contains("vaxpulse_tweets_classified_total{")
            },
            || format!("{} of 300 tweets, metrics on :{port}", output.count()),
        )
        .await
        .unwrap();
    assert_eq!(http_get(port, "/health/ready").as_deref(), Some("ready"));

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool on PATH (Debian package prometheus; scripts/setup.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );

    // Every metric is present but those of events this run does not have: dead letters (no
    // bad input), shadow skips and agreement (no shadow), deployment apply times (no change
    // published), drift PSI (one day of tweets: all of it is the reference, no window after it),
    // live quality (no annotations).
    for (name, _, _) in vaxpulse::telemetry::METRICS {
        if [
            "vaxpulse_messages_dead_lettered_total",
            "vaxpulse_shadow_skipped_tweets_total",
            "vaxpulse_deployment_apply_seconds",
            "vaxpulse_drift_psi",
            "vaxpulse_shadow_agreement_ratio",
            "vaxpulse_shadow_kappa",
            // No annotations in this run; the page is another process.
            "vaxpulse_quality_accuracy_ratio",
            "vaxpulse_quality_macro_f1_ratio",
            "vaxpulse_quality_labels",
            "vaxpulse_promotion_proposed",
            "vaxpulse_annotations_total",
        ]
        .contains(name)
        {
            continue;
        }
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("vaxpulse_probe_runs_total{model=\"demo@1\",outcome=\"stable\"}")
        ),
        "the probe set ran at start and was stable:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("vaxpulse_tweets_classified_total{")
                && l.contains("model=\"demo@1\"")
                && l.contains("role=\"champion\"")),
        "classified counts carry the model version and role:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("vaxpulse_model_deployed{")
                && l.contains("model=\"demo@1\"")
                && l.ends_with(" 1")),
        "the deployed version is exported:\n{text}"
    );
    // The worker's memory, as the scrape read it: a live heap, inside what the process holds
    // (libtorch alone maps ~200 MiB), so a leak and mere retention can be told apart.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} sample:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (resident, allocated) = (
        value("vaxpulse_memory_resident_bytes"),
        value("vaxpulse_memory_allocated_bytes"),
    );
    assert!(
        allocated > 1e6 && allocated < resident && resident > 100e6,
        "heap {allocated} B, resident {resident} B"
    );
    let clean = tokio::task::block_in_place(|| fleet.sigterm(0, Duration::from_secs(60)));
    assert!(clean, "worker stops cleanly (log: {})", log.display());
    let _ = std::fs::remove_dir_all(&logs);
}
