//! Survivor takeover after a crash, on the real local broker and ClickHouse: two worker
//! processes (this package's binary, demo model) in one group; once both own partitions and
//! work is under way, one is SIGKILLed. The broker expires the dead member's session and hands
//! its partitions to the survivor, which must finish every tweet — nothing lost, nothing
//! double-counted in ClickHouse — and, stopped with SIGTERM, exit 0, which it only does once
//! every finished offset is committed (checked here against the high watermarks).
//!
//! Deterministic on a loaded machine: the backlog is produced only after both replicas joined
//! (so neither can finish it alone before the kill), and every wait is on an observed state,
//! never on a fixed sleep.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use vaxpulse::synthetic::Generator;
use vaxpulse_harness::fleet::{Fleet, WorkerCmd};

use common::*;

const PARTITIONS: i32 = 4;
const TWEETS: usize = 12_000;

fn log_says(path: &std::path::Path, what: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(what))
}

/// The "partitions assigned" lines of a worker log.
fn assignments(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("partitions assigned"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_partitions_are_taken_over_and_nothing_is_lost_or_double_counted() {
    let names = Names::fresh("failover");
    let cfg = names.test_config("");
    create_topics(&cfg.kafka, &names, PARTITIONS)
        .await
        .expect("topics created (scripts/services.sh start)");
    let mut g = Generator::new(11, Utc::now() - chrono::Duration::days(2), 2);
    let tweets: Vec<(String, Vec<u8>)> = (0..TWEETS)
        .map(|_| {
            let (t, payload) = g.payload();
            (t.id, payload)
        })
        .collect();
    let expected: HashSet<String> = tweets.iter().map(|(id, _)| id.clone()).collect();

    let logs = std::env::temp_dir().join(unique("failover"));
    let mut env = names.test_env();
    // Takeover waits out the dead member's session: keep it short.
    env.push(("VAXPULSE_KAFKA_SESSION_TIMEOUT_MS".into(), "6000".into()));
    let mut fleet = Fleet::new(
        WorkerCmd::Vaxpulse(env!("CARGO_BIN_EXE_vaxpulse").into()),
        env,
        &logs,
        None,
    )
    .unwrap();
    let log_a = fleet.spawn(0).unwrap();
    let log_b = fleet.spawn(1).unwrap();
    let started = Instant::now();
    // B's assignment comes from the rebalance its join caused, in which A took part too.
    fleet
        .wait_while_running(
            Duration::from_secs(180),
            || log_says(&log_a, "partitions assigned") && log_says(&log_b, "partitions assigned"),
            || "replicas did not both join".into(),
        )
        .await
        .unwrap();
    let output = TopicReader::start(&cfg.kafka, &names.output).unwrap();
    produce_keyed(&cfg.kafka, &names.input, tweets, None)
        .await
        .expect("backlog produced");

    while output.count() < TWEETS / 10 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress before the kill (logs in {})",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let assigned_before_kill = assignments(&log_b).len();
    fleet.sigkill(0);
    let at_kill = output.count();
    assert!(
        at_kill < TWEETS * 9 / 10,
        "the run was nearly over at the kill ({at_kill}); the test would prove nothing"
    );

    fleet
        .wait_while_running(
            Duration::from_secs(420).saturating_sub(started.elapsed()),
            || output.count() >= TWEETS,
            || format!("{} of {TWEETS} results after the kill", output.count()),
        )
        .await
        .unwrap();
    let after = assignments(&log_b);
    assert!(
        after.len() > assigned_before_kill && after.last().unwrap().contains("[0, 1, 2, 3]"),
        "the survivor took over every partition after the kill: {after:?}"
    );
    let seen = output.seen.lock().unwrap().ids.clone();
    assert_eq!(seen, expected, "every tweet has a result, and only those");

    let db = &names.database;
    wait_until(
        "ClickHouse to hold every tweet",
        Duration::from_secs(60),
        || async {
            ch_try(&format!(
                "SELECT uniqExact(tweet_id) FROM {db}.classified_tweets"
            ))
            .await
            .ok()
                == Some(TWEETS.to_string())
        },
    )
    .await;
    assert_eq!(
        ch_scalar(&format!(
            "SELECT count() FROM {db}.predictions FINAL WHERE role = 'champion'"
        ))
        .await,
        TWEETS.to_string(),
        "one row per tweet after FINAL"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT sum(tweets) FROM {db}.opinion_hourly_counts"
        ))
        .await,
        TWEETS.to_string(),
        "aggregates count every tweet once"
    );

    // A clean stop of the survivor commits everything, its own and the dead replica's; exit 0
    // is its word that the final commit went through.
    let clean = tokio::task::block_in_place(|| fleet.sigterm(1, Duration::from_secs(60)));
    assert!(clean, "survivor stops cleanly (log: {})", log_b.display());
    for (p, committed, high) in
        committed_offsets(&cfg.kafka, &names.group, &names.input, PARTITIONS).unwrap()
    {
        assert_eq!(committed, Some(high), "partition {p} committed to its end");
    }
    let _ = std::fs::remove_dir_all(&logs);
}
