//! The schema on a ClickHouse cluster: two chdb servers started here form a two-shard cluster
//! (`remote_servers`, `Distributed` tables over plain MergeTree local tables; no Keeper, so the
//! schema is applied to each server through `clickhouse.schema_urls`). The same batches — champion
//! results over several hours, a replay with other batch boundaries, a replay straddling a
//! promotion, a shadow, delete notices before and after their tweets — go through the worker's
//! sink to the cluster and to a single server; every analyst view answers the same on both, and
//! both shards hold rows.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use vaxpulse::config::Config;
use vaxpulse::sink::clickhouse::ClickHouseSink;
use vaxpulse::work::{Classification, ClassifiedBatch, Role};

/// Every row of `sql` on the server at `url`, one line each (the comparison's unit).
async fn rows(url: &str, sql: &str) -> String {
    clickhouse::Client::default()
        .with_url(url)
        .query(&format!(
            "SELECT arrayStringConcat(groupArray(toString(tuple(*))), '\\n') FROM ({sql})"
        ))
        .fetch_one::<String>()
        .await
        .unwrap_or_else(|e| panic!("{sql} on {url}: {e}"))
}

fn result(id: u64, version: &str, role: Role, classified_after_s: i64) -> Classification {
    let created =
        Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap() + Duration::minutes(7 * id as i64);
    let label = ["against", "neutral", "favour"][(id % 3) as usize];
    // The shadow disagrees on every fourth tweet.
    let label = if role == Role::Shadow && id % 4 == 0 {
        "favour"
    } else {
        label
    };
    Classification {
        tweet_id: format!("{}", 1_000_000 + id),
        created_at: created,
        lang: "fr".into(),
        text: format!("tweet {id} sur le vaccin"),
        label: label.into(),
        scores: [(
            label.to_string(),
            serde_json::Value::from(0.5 + (id % 5) as f64 / 10.0),
        )]
        .into_iter()
        .collect(),
        model_version: version.into(),
        model_hash: "aaaaaaaaaaaa".into(),
        role,
        deployment_epoch: if version == "demo@2" { 2 } else { 1 },
        classified_at: created + Duration::seconds(classified_after_s),
        source_partition: (id % 2) as i32,
        source_offset: id as i64,
        source_timestamp_ms: None,
    }
}

fn batch(rows: Vec<Classification>, deleted: &[u64]) -> ClassifiedBatch {
    ClassifiedBatch {
        rows,
        deleted: deleted
            .iter()
            .map(|i| format!("{}", 1_000_000 + i))
            .collect(),
        acks: Vec::new(),
        received: Vec::new(),
    }
}

/// The same writes, in the same order, through `sink`.
async fn write(sink: &ClickHouseSink) {
    sink.apply_schema().await.expect("schema applied");
    // A delete notice for tweet 7 before the tweet arrives.
    sink.insert(&batch(Vec::new(), &[7])).await.unwrap();
    let champion = |ids: std::ops::Range<u64>, v: &str, after: i64| {
        ids.map(|i| result(i, v, Role::Champion, after))
            .collect::<Vec<_>>()
    };
    for chunk in [0..50, 50..120, 120..200] {
        sink.insert(&batch(champion(chunk, "demo@1", 1), &[]))
            .await
            .unwrap();
    }
    // Replay with other boundaries: nothing changes.
    sink.insert(&batch(champion(30..90, "demo@1", 1), &[]))
        .await
        .unwrap();
    // A replay after a promotion: demo@2 scores tweets 150..200 again, later; demo@1's labels
    // stay the champion's (the first stored).
    sink.insert(&batch(champion(150..200, "demo@2", 3_600), &[]))
        .await
        .unwrap();
    let shadow: Vec<Classification> = (100..200)
        .map(|i| result(i, "demo@3", Role::Shadow, 2))
        .collect();
    sink.insert_shadows(&[batch(shadow, &[])]).await.unwrap();
    // Deletes after the tweets, in a batch of their own.
    sink.insert(&batch(Vec::new(), &[3, 42, 160]))
        .await
        .unwrap();
}

fn cluster_config(names: &Names, a: u16, b: u16) -> Config {
    let mut cfg = names.test_config("");
    cfg.clickhouse.url = format!("http://127.0.0.1:{a}");
    cfg.clickhouse.cluster = "vp_two".into();
    cfg.clickhouse.schema_urls = vec![
        format!("http://127.0.0.1:{a}"),
        format!("http://127.0.0.1:{b}"),
    ];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_shard_cluster_answers_every_view_as_one_server_does() {
    let names = Names::fresh("cluster");
    let dir = std::env::temp_dir().join(unique("vaxpulse-cluster"));
    std::fs::create_dir_all(&dir).unwrap();
    let (a_http, a_tcp, b_http, b_tcp) = (free_port(), free_port(), free_port(), free_port());
    let cluster = (
        "VAXPULSE_CH_CLUSTER",
        format!("vp_two=127.0.0.1:{a_tcp},127.0.0.1:{b_tcp}"),
    );
    let _a = Service::clickhouse(&dir, a_http, a_tcp, std::slice::from_ref(&cluster));
    let _b = Service::clickhouse(&dir, b_http, b_tcp, &[cluster]);

    let single_cfg = names.test_config("");
    let cluster_cfg = cluster_config(&names, a_http, b_http);
    let single = ClickHouseSink::from_config(&single_cfg).unwrap();
    let sharded = ClickHouseSink::from_config(&cluster_cfg).unwrap();
    write(&single).await;
    write(&sharded).await;

    let db = &names.database;
    let (one, two) = (
        single_cfg.clickhouse.url.clone(),
        cluster_cfg.clickhouse.url,
    );
    let other = format!("http://127.0.0.1:{b_http}");
    for (what, sql) in [
        ("champion series", format!("SELECT hour, label, tweets FROM {db}.champion_hourly ORDER BY hour, label")),
        ("champion labels", format!("SELECT tweet_id, label, model_version, deployment_epoch FROM {db}.champion_predictions ORDER BY tweet_id")),
        ("per-version aggregates", format!("SELECT hour, model_version, label, tweets FROM {db}.opinion_hourly_counts ORDER BY hour, model_version, label")),
        ("tweets with labels", format!("SELECT tweet_id, text, label FROM {db}.classified_tweets ORDER BY tweet_id")),
        ("stability", format!("SELECT day, model_version, predictions, labels, round(mean_confidence, 6) FROM {db}.model_daily_stats ORDER BY day, model_version")),
        ("agreement", format!("SELECT window, shadow_version, tweets, round(agreement, 6), round(kappa, 6) FROM {db}.champion_shadow_agreement_hourly ORDER BY window, shadow_version")),
    ] {
        let expected = rows(&one, &sql).await;
        assert!(!expected.is_empty(), "{what}: the single server has rows");
        assert_eq!(rows(&two, &sql).await, expected, "{what}, read on shard A");
        assert_eq!(rows(&other, &sql).await, expected, "{what}, read on shard B");
    }
    // What the writes mean, on the cluster: 200 tweets, 7 never arrived stored, 3 deleted after.
    let count = |sql: String| {
        let two = two.clone();
        async move { rows(&two, &sql).await }
    };
    assert_eq!(
        count(format!("SELECT count() FROM {db}.classified_tweets")).await,
        "(196)",
        "200 tweets less 7 (deleted first) and 3, 42, 160 (deleted after)"
    );
    assert_eq!(
        count(format!("SELECT sum(tweets) FROM {db}.champion_hourly")).await,
        "(200)",
        "the counts keep deleted tweets (retention.delete_counts is off)"
    );
    assert_eq!(
        count(format!(
            "SELECT count() FROM {db}.champion_predictions WHERE model_version = 'demo@2'"
        ))
        .await,
        "(0)",
        "the replay after the promotion did not change a champion label"
    );
    // Both shards hold part of every tweet table.
    for table in ["tweets", "predictions", "champion_labels", "tweet_hours"] {
        for url in [&two, &other] {
            let n: u64 = rows(url, &format!("SELECT count() FROM {db}.{table}_local"))
                .await
                .trim_matches(|c| c == '(' || c == ')')
                .parse()
                .unwrap();
            assert!(n > 0, "{table}_local on {url} is empty");
        }
    }
    drop((_a, _b));
    let _ = std::fs::remove_dir_all(&dir);
}
