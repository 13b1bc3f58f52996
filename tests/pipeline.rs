//! End to end on the real broker and ClickHouse: mixed traffic in, every valid tweet out exactly
//! once (topic + table + aggregates), every malformed one in the DLQ with its reason, offsets
//! committed to the end; a clean restart reprocesses nothing and a full replay changes no
//! aggregate.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use vaxpulse::synthetic::{v1_payload, Generator};

struct Traffic {
    messages: Vec<Vec<u8>>,
    valid_ids: HashSet<String>,
    /// Delete notices among the control messages (each yields an output-topic tombstone).
    deletes: usize,
    /// payload → expected DLQ reason
    malformed: HashMap<Vec<u8>, &'static str>,
}

fn mixed_traffic(n: usize) -> Traffic {
    let start = DateTime::<Utc>::from_timestamp(1_625_097_600, 0).unwrap();
    let mut g = Generator::new(99, start, 4);
    let controls: Vec<&str> = include_str!("fixtures/control.jsonl").lines().collect();
    let mut t = Traffic {
        messages: Vec::new(),
        valid_ids: HashSet::new(),
        deletes: 0,
        malformed: HashMap::new(),
    };
    for i in 0..n {
        match i % 10 {
            0 => {
                let line = controls[i / 10 % controls.len()];
                t.deletes += usize::from(line.starts_with("{\"delete\""));
                t.messages.push(line.as_bytes().to_vec());
            }
            1 => {
                let mut v = v1_payload(&g.tweet());
                v["lang"] = "en".into();
                t.messages.push(serde_json::to_vec(&v).unwrap());
            }
            2 => {
                let (payload, reason): (Vec<u8>, &str) = match i / 10 % 6 {
                    0 => (
                        format!("{{\"id\": \"{i}\", \"text\": ").into_bytes(),
                        "invalid_json",
                    ),
                    1 => (
                        [b"\xff\xfe".as_slice(), i.to_string().as_bytes()].concat(),
                        "invalid_utf8",
                    ),
                    2 => (
                        format!("{{\"text\": \"pas d'identifiant {i}\", \"lang\": \"fr\"}}")
                            .into_bytes(),
                        "missing_id",
                    ),
                    3 => (
                        format!("{{\"id\": \"m{i}\", \"text\": \"   \", \"lang\": \"fr\"}}")
                            .into_bytes(),
                        "missing_text",
                    ),
                    4 => (
                        format!("[{i}, \"not an object\"]").into_bytes(),
                        "unsupported_shape",
                    ),
                    _ => (
                        format!("{{\"id\": \"{i}\", \"text\": \"{}\"}}", "x".repeat(5000))
                            .into_bytes(),
                        "too_large",
                    ),
                };
                t.malformed.insert(payload.clone(), reason);
                t.messages.push(payload);
            }
            _ => {
                let (tw, payload) = g.payload();
                t.valid_ids.insert(tw.id);
                t.messages.push(payload);
            }
        }
    }
    t
}

fn committed_total(names: &Names, group: &str, partitions: i32) -> (i64, i64) {
    let cfg = names.test_config("");
    committed_offsets(&cfg.kafka, group, &names.input, partitions)
        .expect("committed offsets readable")
        .into_iter()
        .fold((0, 0), |(c, h), (_, done, high)| {
            (c + done.unwrap_or(0), h + high)
        })
}

async fn run_worker_until<F, Fut>(cfg: vaxpulse::config::Config, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    vaxpulse::telemetry::init_logging();
    let stop = tokio_util::sync::CancellationToken::new();
    let factory = vaxpulse::model::load::torch_factory(&cfg);
    let worker = tokio::spawn(vaxpulse::app::run(cfg, factory, stop.clone()));
    wait_until(
        "the worker to finish the traffic",
        Duration::from_secs(180),
        || {
            // A worker that stopped on its own fails the test at once, with its error.
            assert!(!worker.is_finished(), "the worker stopped early");
            done()
        },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_traffic_is_classified_once_dead_lettered_with_reasons_and_committed_to_the_end() {
    const PARTITIONS: i32 = 4;
    let names = Names::fresh("it");
    let cfg = names.test_config("[decode]\nmax_message_bytes = 4096\n");
    create_topics(&cfg.kafka, &names, PARTITIONS)
        .await
        .expect("topics created (scripts/services.sh start)");
    let traffic = mixed_traffic(2000);
    let valid = traffic.valid_ids.len();
    assert_eq!(valid, 1400);
    produce_payloads(&names.input, None, &traffic.messages)
        .await
        .expect("traffic produced");

    let db = names.database.clone();
    run_worker_until(cfg.clone(), || {
        let db = db.clone();
        async move {
            ch_try(&format!("SELECT count() FROM {db}.classified_tweets"))
                .await
                .ok()
                == Some(valid.to_string())
        }
    })
    .await;

    // Output topic: every valid tweet exactly once, keyed by its id, with the documented fields,
    // and a tombstone per delete notice.
    let all = read_topic(
        &names.output,
        valid + traffic.deletes,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let (tombstones, out): (Vec<_>, Vec<_>) = all.into_iter().partition(|m| m.payload.is_empty());
    assert!(traffic.deletes > 0);
    assert_eq!(tombstones.len(), traffic.deletes);
    assert!(tombstones
        .iter()
        .all(|m| m.key.as_deref() == Some(b"1414512376543211520".as_slice())));
    assert_eq!(
        out.len(),
        valid,
        "no duplicates and nothing missing in the output topic"
    );
    let mut seen = HashSet::new();
    for m in &out {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let id = v["tweet_id"].as_str().unwrap().to_string();
        assert_eq!(m.key.as_deref(), Some(id.as_bytes()));
        for f in [
            "created_at",
            "lang",
            "text",
            "label",
            "model_version",
            "classified_at",
        ] {
            assert!(v[f].is_string(), "field {f} in {v}");
        }
        let scores = v["scores"].as_object().unwrap();
        assert_eq!(scores.len(), 3);
        let sum: f64 = scores.values().map(|s| s.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4);
        assert_eq!(v["model_version"], "demo@1");
        assert!(seen.insert(id));
    }
    assert_eq!(seen, traffic.valid_ids);

    // ClickHouse: one row per valid tweet, and hourly aggregates that add up.
    let db = &names.database;
    assert_eq!(
        ch_scalar(&format!(
            "SELECT uniqExact(tweet_id) FROM {db}.classified_tweets"
        ))
        .await,
        valid.to_string()
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT sum(tweets) FROM {db}.opinion_hourly_counts"
        ))
        .await,
        valid.to_string()
    );

    // DLQ: each malformed message, original bytes, typed reason, source coordinates.
    let dlq = read_topic(
        &names.dlq,
        traffic.malformed.len(),
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert_eq!(dlq.len(), traffic.malformed.len());
    for m in &dlq {
        // Oversized messages keep their first `max_message_bytes` bytes and say how large they
        // were; every other dead letter holds the original bytes.
        let original = match m.headers.get("vaxpulse.truncated_from_bytes") {
            Some(n) => {
                assert_eq!(m.payload.len(), 4096, "cut to decode.max_message_bytes");
                traffic
                    .malformed
                    .keys()
                    .find(|k| k.len().to_string() == *n && k.starts_with(&m.payload))
                    .expect("a truncated dead letter is the start of an oversized message")
                    .clone()
            }
            None => m.payload.clone(),
        };
        let want = traffic
            .malformed
            .get(&original)
            .expect("DLQ holds the original bytes");
        assert_eq!(
            m.headers.get("vaxpulse.error").map(String::as_str),
            Some(*want)
        );
        assert!(!m.headers["vaxpulse.detail"].is_empty());
        assert!(m.headers["vaxpulse.source"].starts_with(&format!("{}/", names.input)));
    }

    // Offsets: committed up to the end of every partition.
    let (committed, high) = committed_total(&names, &names.group, PARTITIONS);
    assert_eq!(high, 2000);
    assert_eq!(committed, high, "committed offsets reach the end");

    // A clean restart of the same group reprocesses nothing: 10 new tweets arrive (which proves
    // the restarted worker consumed) and the output topic grows by exactly those 10.
    let mut later = Generator::new(
        7,
        DateTime::<Utc>::from_timestamp(1_625_097_600, 0).unwrap(),
        1,
    );
    let fresh: Vec<Vec<u8>> = (0..10).map(|_| later.payload().1).collect();
    produce_payloads(&names.input, None, &fresh)
        .await
        .expect("new tweets produced");
    let total = valid + fresh.len();
    let dbt = db.clone();
    run_worker_until(cfg.clone(), || {
        let dbt = dbt.clone();
        async move {
            ch_try(&format!(
                "SELECT uniqExact(tweet_id) FROM {dbt}.classified_tweets"
            ))
            .await
            .ok()
                == Some(total.to_string())
        }
    })
    .await;
    let out = read_topic(
        &names.output,
        total + traffic.deletes,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.len(),
        total + traffic.deletes,
        "only the 10 new tweets were published after the restart"
    );

    // A full replay (new group, same model) changes no aggregate and keeps one row per tweet.
    let mut replay = cfg.clone();
    replay.kafka.group_id = unique("replay");
    let group = replay.kafka.group_id.clone();
    let names = &names;
    run_worker_until(replay, || {
        let group = group.clone();
        async move {
            let (committed, high) =
                tokio::task::block_in_place(|| committed_total(names, &group, PARTITIONS));
            committed == high
        }
    })
    .await;
    assert!(
        ch_scalar(&format!("SELECT count() FROM {db}.classified_tweets"))
            .await
            .parse::<usize>()
            .unwrap()
            >= total
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT sum(tweets) FROM {db}.opinion_hourly_counts"
        ))
        .await,
        total.to_string()
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT count() FROM {db}.predictions FINAL WHERE role = 'champion'"
        ))
        .await,
        total.to_string()
    );
}

/// Delete notices on the real broker and ClickHouse: a tweet deleted after it was stored loses
/// its row, one whose delete came first is never stored; both get an output-topic tombstone;
/// the champion counts keep them (anonymous); the offsets commit to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_notices_remove_tweets_stored_before_and_arriving_after() {
    deletes(false).await;
}

/// The same with `retention.delete_counts`: the deleted tweets also leave the champion series
/// and the per-version aggregates (tombstones on their predictions and champion labels).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_delete_counts_deleted_tweets_also_leave_the_counts() {
    deletes(true).await;
}

async fn deletes(delete_counts: bool) {
    let names = Names::fresh("del");
    let mut cfg = names.test_config("");
    cfg.retention.delete_counts = delete_counts;
    create_topics(&cfg.kafka, &names, 1)
        .await
        .expect("topics created (scripts/services.sh start)");
    let mut g = Generator::new(3, Utc::now(), 1);
    let (a, b, c) = (g.tweet(), g.tweet(), g.tweet());
    let v1_delete = |id: &str| {
        format!("{{\"delete\":{{\"status\":{{\"id_str\":\"{id}\",\"user_id_str\":\"1\"}},\"timestamp_ms\":\"1626090000000\"}}}}")
            .into_bytes()
    };
    let v2_delete = |id: &str| {
        format!("{{\"data\":{{\"delete\":{{\"tweet\":{{\"id\":\"{id}\",\"author_id\":\"1\"}},\"event_at\":\"2021-07-12T09:15:02.000Z\"}}}}}}")
            .into_bytes()
    };
    let payload =
        |t: &vaxpulse::synthetic::SyntheticTweet| serde_json::to_vec(&v1_payload(t)).unwrap();
    // One partition, in this order: a, delete a; delete b (v2), b; c.
    let messages = vec![
        payload(&a),
        v1_delete(&a.id),
        v2_delete(&b.id),
        payload(&b),
        payload(&c),
    ];
    let db = names.database.clone();
    let deleted = |db: String| async move {
        ch_try(&format!("SELECT count() FROM {db}.deleted_tweets FINAL"))
            .await
            .ok()
            .as_deref()
            == Some("2")
    };
    produce_payloads(&names.input, Some(0), &messages)
        .await
        .expect("produced");
    // Without delete_counts all three predictions stay; with it only c's.
    let (stored, kept) = if delete_counts {
        (c.id.clone(), "1")
    } else {
        let mut ids = [a.id.clone(), b.id.clone(), c.id.clone()];
        ids.sort();
        (ids.join(","), "3")
    };
    run_worker_until(cfg.clone(), || {
        let (db, stored) = (db.clone(), stored.clone());
        async move {
            deleted(db.clone()).await
                && ch_try(&format!(
                    "SELECT arrayStringConcat(arraySort(groupArray(tweet_id)), ',') FROM {db}.predictions FINAL WHERE role = 'champion'"
                ))
                .await
                .ok()
                    == Some(stored)
        }
    })
    .await;
    let db = &names.database;
    assert_eq!(
        ch_scalar(&format!(
            "SELECT arrayStringConcat(groupArray(tweet_id), ',') FROM (SELECT tweet_id FROM {db}.tweets FINAL ORDER BY tweet_id)"
        ))
        .await,
        c.id,
        "only the tweet nobody deleted keeps its text"
    );
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.classified_tweets")).await,
        "1"
    );
    assert_eq!(
        ch_scalar(&format!("SELECT sum(tweets) FROM {db}.champion_hourly")).await,
        kept,
        "the counts keep deleted tweets, anonymously, unless retention.delete_counts"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT sum(tweets) FROM {db}.opinion_hourly_counts"
        ))
        .await,
        kept
    );
    // Deletes are tombstones found by primary key: no mutation ever ran on the database.
    assert_eq!(
        ch_scalar(&format!(
            "SELECT count() FROM system.mutations WHERE database = '{db}'"
        ))
        .await,
        "0"
    );
    let out = read_topic(
        &names.output,
        5,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let tombstones: HashSet<String> = out
        .iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| String::from_utf8(m.key.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(tombstones, HashSet::from([a.id.clone(), b.id.clone()]));
    assert!(out.iter().filter(|m| m.payload.is_empty()).all(|m| m
        .headers
        .get("vaxpulse.deleted")
        .map(String::as_str)
        == Some("true")));
    assert_eq!(
        committed_total(&names, &names.group, 1),
        (5, 5),
        "every message, deletes included, committed"
    );
}
