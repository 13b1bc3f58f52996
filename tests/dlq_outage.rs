//! A dead-letter outage pauses only the partitions whose dead letters cannot be written; the
//! consumer thread never blocks, so the other partitions keep flowing and the replica keeps its
//! group membership; nothing past an unwritten dead letter is committed. The outage is real: the
//! dead-letter topic's `max.message.bytes` is smaller than any dead letter, so the broker
//! refuses every one (and the worker retries them without end).

mod common;

use std::time::Duration;

use chrono::Utc;
use vaxpulse::sink::kafka::DLQ_IN_FLIGHT;
use vaxpulse::synthetic::Generator;
use vaxpulse_harness::fleet::{Fleet, WorkerCmd};

use common::*;

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_outage_pauses_its_partition_while_the_others_flow() {
    let names = Names::fresh("dlqout");
    let cfg = names.test_config("");
    let k = &cfg.kafka;
    create_topic(k, &names.input, 2, &[]).await.unwrap();
    create_topic(k, &names.output, 1, &[]).await.unwrap();
    create_topic(k, &names.control, 1, &[]).await.unwrap();
    create_topic(k, &names.dlq, 1, &[("max.message.bytes", "100")])
        .await
        .unwrap();
    // More bad messages than may be in flight, all on partition 0; good tweets on partition 1.
    let bad: Vec<Vec<u8>> = (0..DLQ_IN_FLIGHT + 100)
        .map(|i| format!("{{\"id\": \"{i}\", \"text\": \"{}", "x".repeat(300)).into_bytes())
        .collect();
    produce_payloads(&names.input, Some(0), &bad).await.unwrap();
    let mut g = Generator::new(3, Utc::now(), 1);
    let good: Vec<Vec<u8>> = (0..300).map(|_| g.payload().1).collect();
    produce_payloads(&names.input, Some(1), &good)
        .await
        .unwrap();

    let port = free_port();
    let logs = std::env::temp_dir().join(unique("dlqout"));
    let mut env = names.test_env();
    env.push(("VAXPULSE_PIPELINE_DRAIN_TIMEOUT_MS".into(), "2000".into()));
    let mut fleet = Fleet::new(
        WorkerCmd::Vaxpulse(env!("CARGO_BIN_EXE_vaxpulse").into()),
        env,
        &logs,
        Some(port),
    )
    .unwrap();
    let log = fleet.spawn(0).unwrap();
    let output = TopicReader::start(k, &names.output).unwrap();
    let mut text = String::new();
    let paused = |text: &str| gauge(text, "vaxpulse_consumer_paused_partitions");
    fleet
        .wait_while_running(
            Duration::from_secs(180),
            || {
                text = http_get(port, "/metrics").unwrap_or_default();
                output.count() >= good.len() && paused(&text) == Some(1.0)
            },
            || {
                format!(
                    "{} of {} results, paused partitions {:?}",
                    output.count(),
                    good.len(),
                    paused(&http_get(port, "/metrics").unwrap_or_default())
                )
            },
        )
        .await
        .unwrap();
    assert_eq!(
        http_get(port, "/health/ready").as_deref(),
        Some("not ready"),
        "dead letters being retried make the replica not ready"
    );
    let clean = tokio::task::block_in_place(|| fleet.sigterm(0, Duration::from_secs(60)));
    assert!(clean, "the worker stops cleanly (log: {})", log.display());
    let committed = committed_offsets(k, &names.group, &names.input, 2).unwrap();
    assert!(
        matches!(committed[0], (0, None | Some(0), _)),
        "nothing committed past an unwritten dead letter: {committed:?}"
    );
    assert_eq!(
        committed[1],
        (1, Some(good.len() as i64), good.len() as i64),
        "the healthy partition is committed to its end"
    );
    let _ = std::fs::remove_dir_all(&logs);
}
