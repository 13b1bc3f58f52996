//! Survivor takeover after a crash: two worker processes (this package's binary, demo model) in
//! one group on rdkafka's MockCluster (in this process, real TCP on loopback; unlike the local
//! tansu broker it reassigns a dead member's partitions after its session times out) and the real
//! ClickHouse. One replica is SIGKILLed mid-backlog; the survivor must finish every tweet, with
//! nothing lost and nothing double-counted in ClickHouse, and commit to the end.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use vaxpulse::synthetic::Generator;

use common::{ch_scalar, clickhouse_url, unique, TestNames};

const PARTITIONS: i32 = 4;
const TWEETS: usize = 12_000;

fn spawn_worker(names: &TestNames, brokers: &str, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vaxpulse"))
        .arg("run")
        .env("VAXPULSE_KAFKA_BROKERS", brokers)
        .env("VAXPULSE_KAFKA_GROUP_ID", &names.group)
        .env("VAXPULSE_KAFKA_INPUT_TOPIC", &names.input)
        .env("VAXPULSE_KAFKA_OUTPUT_TOPIC", &names.output)
        .env("VAXPULSE_KAFKA_DLQ_TOPIC", &names.dlq)
        .env("VAXPULSE_KAFKA_FETCH_WAIT_MAX_MS", "10")
        .env("VAXPULSE_KAFKA_COMMIT_INTERVAL_MS", "200")
        .env("VAXPULSE_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("VAXPULSE_CLICKHOUSE_URL", clickhouse_url())
        .env("VAXPULSE_CLICKHOUSE_DATABASE", &names.database)
        .env(
            "VAXPULSE_MODEL_DIR",
            format!("{}/models/demo/1", env!("CARGO_MANIFEST_DIR")),
        )
        .env("VAXPULSE_MODEL_DEVICE", "cpu")
        .env("VAXPULSE_MODEL_INTRA_OP_THREADS", "1")
        .env("VAXPULSE_METRICS_LISTEN", "")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .stdin(Stdio::null())
        .spawn()
        .expect("the vaxpulse binary starts")
}

fn log_says(path: &std::path::Path, what: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_partitions_are_taken_over_and_nothing_is_lost_or_double_counted() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let names = TestNames::new();
    for (topic, partitions) in [
        (&names.input, PARTITIONS),
        (&names.output, 1),
        (&names.dlq, 1),
    ] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut g = Generator::new(11, Utc::now() - chrono::Duration::days(2), 2);
    let tweets: Vec<(String, Vec<u8>)> = (0..TWEETS)
        .map(|_| {
            let (t, payload) = g.payload();
            (t.id, payload)
        })
        .collect();
    let expected: HashSet<String> = tweets.iter().map(|(id, _)| id.clone()).collect();
    let sends = tweets.iter().enumerate().map(|(i, (id, payload))| {
        producer.send(
            FutureRecord::to(&names.input)
                .key(id.as_bytes())
                .payload(payload)
                .partition(i as i32 % PARTITIONS),
            Duration::from_secs(30),
        )
    });
    for r in futures::future::join_all(sends).await {
        r.expect("backlog produced");
    }

    let dir = std::env::temp_dir().join(unique("failover"));
    std::fs::create_dir_all(&dir).unwrap();
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let mut a = spawn_worker(&names, &brokers, &log_a);
    let mut b = spawn_worker(&names, &brokers, &log_b);

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[&names.output]).unwrap();
    let mut seen = HashSet::new();
    let poll_for = |seen: &mut HashSet<String>, d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
                seen.insert(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
            }
        }
    };

    // Kill A once both replicas own partitions and work is under way, but far from done.
    let started = Instant::now();
    while !(log_says(&log_a, "partitions assigned")
        && log_says(&log_b, "partitions assigned")
        && seen.len() >= TWEETS / 10)
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "replicas did not both start consuming (logs in {})",
            dir.display()
        );
        poll_for(&mut seen, Duration::from_millis(200));
    }
    a.kill().unwrap();
    a.wait().unwrap();
    let at_kill = seen.len();
    assert!(
        at_kill < TWEETS * 9 / 10,
        "the run was nearly over at the kill ({at_kill}); the test would prove nothing"
    );

    while seen.len() < TWEETS {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {TWEETS} results after the kill (survivor log: {})",
            seen.len(),
            log_b.display()
        );
        assert!(b.try_wait().unwrap().is_none(), "the survivor exited");
        poll_for(&mut seen, Duration::from_millis(500));
    }
    assert_eq!(seen, expected, "every tweet has a result, and only those");

    let db = &names.database;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ch_scalar(&format!(
        "SELECT uniqExact(tweet_id) FROM {db}.classified_tweets"
    ))
    .await
    .parse::<usize>()
    .unwrap()
        < TWEETS
    {
        assert!(
            Instant::now() < deadline,
            "ClickHouse did not get every tweet"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let final_rows = ch_scalar(&format!("SELECT count() FROM {db}.classified_tweets FINAL")).await;
    let aggregate = ch_scalar(&format!(
        "SELECT sum(n) FROM (SELECT uniqExactMerge(tweets) AS n FROM {db}.opinion_hourly GROUP BY hour, model_version, label)"
    ))
    .await;
    assert_eq!(
        final_rows,
        TWEETS.to_string(),
        "one row per tweet after FINAL"
    );
    assert_eq!(
        aggregate,
        TWEETS.to_string(),
        "aggregates count every tweet once"
    );

    // A clean stop of the survivor commits everything, its own and the dead replica's.
    Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    let status = b.wait().unwrap();
    assert!(status.success(), "survivor stops cleanly: {status:?}");
    let offsets: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &names.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&names.input, p);
    }
    let committed = offsets
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for e in committed.elements() {
        let (_, high) = offsets
            .fetch_watermarks(&names.input, e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            Offset::Offset(high),
            "partition {} committed to its end",
            e.partition()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
