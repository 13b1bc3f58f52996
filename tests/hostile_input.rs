//! No single input message can stop a partition's commits: a message with a 1.5 MB key and an
//! invalid value (the input topic takes 4 MiB records, as the compose broker does) is
//! dead-lettered with its key cut to 1 KiB and its size in a header; a delete notice with an
//! untrimmed id deletes the tweet, one with a 60 000-character id is a dead letter; thousands
//! of ordinary tweets behind them on the same partition are classified and committed to the end;
//! a burst of 20 000 delete notices with 64-digit ids (1.3 MB of ids, five times ClickHouse's
//! default `max_query_size`) is applied in bounded statements.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use vaxpulse::sink::kafka::DLQ_KEY_MAX_BYTES;
use vaxpulse::synthetic::Generator;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_key_or_a_huge_delete_id_never_stalls_its_partition() {
    vaxpulse::telemetry::init_logging();
    let names = Names::fresh("hostin");
    let cfg = names.test_config("");
    create_topics(&cfg.kafka, &names, 1)
        .await
        .expect("topics created (scripts/services.sh start)");
    let mut g = Generator::new(21, Utc::now(), 1);
    let (kept, kept_payload) = g.payload();
    let first: Vec<(String, Vec<u8>)> = vec![
        ("k".repeat(1_500_000), b"{not json".to_vec()),
        ("kept".into(), kept_payload),
    ];
    produce_keyed(&cfg.kafka, &names.input, first, None)
        .await
        .unwrap();
    let deletes = vec![
        format!(r#"{{"delete":{{"status":{{"id_str":" {} "}}}}}}"#, kept.id).into_bytes(),
        format!(
            r#"{{"delete":{{"status":{{"id_str":"{}"}}}}}}"#,
            "9".repeat(60_000)
        )
        .into_bytes(),
    ];
    produce_payloads(&names.input, Some(0), &deletes)
        .await
        .unwrap();
    let burst: Vec<Vec<u8>> = (0..20_000u64)
        .map(|i| format!(r#"{{"delete":{{"status":{{"id_str":"{i:064}"}}}}}}"#).into_bytes())
        .collect();
    produce_payloads(&names.input, Some(0), &burst)
        .await
        .unwrap();
    let tweets: Vec<Vec<u8>> = (0..2_000).map(|_| g.payload().1).collect();
    produce_payloads(&names.input, Some(0), &tweets)
        .await
        .unwrap();

    let (worker, stop) = start_worker(cfg.clone());
    let (k, group, input) = (cfg.kafka.clone(), names.group.clone(), names.input.clone());
    wait_until(
        "every input offset committed",
        Duration::from_secs(120),
        || {
            let (k, group, input) = (k.clone(), group.clone(), input.clone());
            async move {
                tokio::task::spawn_blocking(move || uncommitted(&k, &group, &input, 1))
                    .await
                    .unwrap()
                    .is_ok_and(|n| n == 0)
            }
        },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");

    let dlq = read_topic(
        &names.dlq,
        2,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    assert_eq!(dlq.len(), 2, "the bad message and the bad delete");
    let big = dlq
        .iter()
        .find(|d| d.headers.get("vaxpulse.error").map(String::as_str) == Some("invalid_json"))
        .expect("the invalid message is dead-lettered");
    assert_eq!(big.key.as_ref().map(Vec::len), Some(DLQ_KEY_MAX_BYTES));
    assert_eq!(
        big.headers
            .get("vaxpulse.key_truncated_from_bytes")
            .map(String::as_str),
        Some("1500000")
    );
    assert!(dlq
        .iter()
        .any(|d| d.headers.get("vaxpulse.error").map(String::as_str) == Some("missing_id")));
    let db = &names.database;
    assert_eq!(
        ch_scalar(&format!(
            "SELECT uniqExact(tweet_id) FROM {db}.predictions WHERE role = 'champion'"
        ))
        .await,
        "2001"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT count() FROM {db}.tweets FINAL WHERE tweet_id = '{}'",
            kept.id
        ))
        .await,
        "0",
        "the delete with an untrimmed id removed its tweet"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT uniqExact(tweet_id) FROM {db}.deleted_tweets"
        ))
        .await,
        "20001",
        "the burst and the untrimmed delete are all remembered"
    );
}
