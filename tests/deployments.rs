//! Model versions on the real broker and ClickHouse: a running worker follows the group's
//! deployment on the control topic — a shadow is added (scored on the same batches, stored with
//! its role), promoted, then rolled back, each at a batch boundary; a broken version is refused
//! by the CLI check and by the replica (which keeps serving); every change is recorded; a replica
//! started later joins with the current deployment; every tweet has exactly one champion label.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use common::*;
use vaxpulse::deploy::ops::{change, ChangeOptions};
use vaxpulse::deploy::{control, Change};
use vaxpulse::model::{Manifest, ModelId};
use vaxpulse::synthetic::Generator;

fn opts() -> ChangeOptions {
    ChangeOptions {
        reason: "integration test".into(),
        wait_replicas: 1,
        wait_timeout: Duration::from_secs(60),
    }
}

/// Produces `n` tweets and returns their ids.
async fn produce(names: &Names, g: &mut Generator, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let (t, p) = g.payload();
            ids.insert(t.id);
            p
        })
        .collect();
    produce_payloads(&names.input, None, &payloads)
        .await
        .expect("tweets produced");
    ids
}

async fn wait_rows(db: &str, sql_where: &str, n: usize) {
    let q = format!("SELECT uniqExact(tweet_id) FROM {db}.predictions WHERE {sql_where}");
    wait_until(&q, Duration::from_secs(120), || {
        let q = q.clone();
        async move { ch_try(&q).await.ok() == Some(n.to_string()) }
    })
    .await;
}

fn id_list(ids: &HashSet<String>) -> String {
    ids.iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Champion and shadow (version, role) of the given tweets, as `version:role` → tweets.
async fn roles_of(db: &str, ids: &HashSet<String>) -> Vec<(String, String, u64)> {
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    client
        .query(&format!(
            "SELECT model_version, role, uniqExact(tweet_id) FROM {db}.predictions WHERE tweet_id IN ({}) GROUP BY model_version, role ORDER BY model_version, role",
            id_list(ids)
        ))
        .fetch_all()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_promotion_rollback_and_a_refused_version_on_a_running_worker() {
    vaxpulse::telemetry::init_logging();
    let names = Names::fresh("dep");
    let root = std::env::temp_dir().join(unique("vaxpulse-store"));
    let store = demo_store(&root, &["1", "2"], &["3"]);
    let cfg = names.store_config(&store);
    create_topics(&cfg.kafka, &names, 2)
        .await
        .expect("topics created (scripts/services.sh start)");
    let db = names.database.clone();
    let v1: ModelId = Manifest::load(&store.join("demo/1")).unwrap().id();
    let mut g = Generator::new(5, Utc::now(), 2);

    let (worker, stop) = start_worker(cfg.clone());
    // Phase 0: the configured model alone.
    let p0 = produce(&names, &mut g, 200).await;
    wait_rows(&db, "role = 'champion'", 200).await;

    // The CLI's own check refuses a version whose weights do not match its manifest.
    let err = change(
        &cfg,
        Change::Deploy {
            model: ModelId::parse("demo@3").unwrap(),
            champion: false,
        },
        &opts(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("checksum"), "{err:#}");

    // Phase 1: demo@2 as a shadow.
    let o = change(
        &cfg,
        Change::Deploy {
            model: ModelId::parse("demo@2").unwrap(),
            champion: false,
        },
        &opts(),
    )
    .await
    .expect("shadow deployed");
    assert_eq!(o.after.epoch, 1);
    assert_eq!(o.applied.len(), 1);
    let p1 = produce(&names, &mut g, 200).await;
    wait_rows(&db, "model_version = 'demo@2' AND role = 'shadow'", 200).await;

    // Phase 2: promoted.
    let o = change(
        &cfg,
        Change::Promote(ModelId::parse("demo@2").unwrap()),
        &opts(),
    )
    .await
    .expect("promoted");
    assert_eq!(o.after.champion.version, "2");
    assert_eq!(o.after.shadows, vec![v1.clone()]);
    let p2 = produce(&names, &mut g, 200).await;
    wait_rows(&db, "model_version = 'demo@1' AND role = 'shadow'", 200).await;

    // A broken deployment published around the CLI: the replica refuses it and keeps serving.
    let mut broken = o.after.clone();
    broken.epoch += 1;
    broken.shadows.push(ModelId {
        name: "demo".into(),
        version: "3".into(),
        hash: "0123456789ab".into(),
    });
    // Pinned like a CLI record, so it passes the record checks and fails at load.
    broken.manifests.insert("demo@3".into(), "0".repeat(64));
    broken.action = "deploy-shadow".into();
    broken.changed_at = Utc::now();
    control::publish(&cfg.kafka, &broken).await.unwrap();
    wait_until(
        "the replica to refuse epoch 3",
        Duration::from_secs(60),
        || {
            let q = format!(
            "SELECT count() FROM {db}.deployment_events WHERE epoch = 3 AND outcome = 'refused'"
        );
            async move { ch_try(&q).await.ok().as_deref() == Some("1") }
        },
    )
    .await;
    assert!(!worker.is_finished(), "a refused deployment stops nothing");

    // The operator retires the broken shadow (the CLI completes its hash from the deployment).
    let o = change(
        &cfg,
        Change::Retire(ModelId::parse("demo@3").unwrap()),
        &opts(),
    )
    .await
    .expect("broken shadow retired");
    assert_eq!((o.after.epoch, o.after.shadows.len()), (4, 1));

    // Phase 3: rolled back to demo@1; demo@2 stays on as a shadow.
    let o = change(&cfg, Change::Rollback, &opts())
        .await
        .expect("rolled back");
    assert_eq!(o.after.epoch, 5);
    assert_eq!(o.after.champion, v1);
    let p3 = produce(&names, &mut g, 200).await;
    wait_rows(&db, "role = 'champion'", 800).await;
    wait_rows(&db, "model_version = 'demo@2' AND role = 'shadow'", 400).await;
    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");

    // Who scored what, phase by phase.
    let expect = |pairs: &[(&str, &str)]| -> Vec<(String, String, u64)> {
        pairs
            .iter()
            .map(|(v, r)| (v.to_string(), r.to_string(), 200))
            .collect()
    };
    assert_eq!(roles_of(&db, &p0).await, expect(&[("demo@1", "champion")]));
    assert_eq!(
        roles_of(&db, &p1).await,
        expect(&[("demo@1", "champion"), ("demo@2", "shadow")])
    );
    assert_eq!(
        roles_of(&db, &p2).await,
        expect(&[("demo@1", "shadow"), ("demo@2", "champion")])
    );
    assert_eq!(
        roles_of(&db, &p3).await,
        expect(&[("demo@1", "champion"), ("demo@2", "shadow")])
    );

    // Stability views: demo@1 and demo@2 are the same weights, so they agree on every tweet
    // (agreement 1, kappa 1) in every window; 600 tweets had a shadow.
    for (view, col) in [
        ("champion_shadow_agreement_hourly", "agreement"),
        ("champion_shadow_agreement_hourly", "kappa"),
        ("champion_shadow_agreement_daily", "kappa"),
    ] {
        assert_eq!(
            ch_scalar(&format!("SELECT toString(min({col})) FROM {db}.{view}")).await,
            "1",
            "{view}.{col}"
        );
    }
    assert_eq!(
        ch_scalar(&format!(
            "SELECT sum(tweets) FROM {db}.champion_shadow_agreement_daily"
        ))
        .await,
        "600"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT concat(toString(sum(predictions)), ' ', toString(min(mean_confidence) > 0.3 AND max(mean_confidence) <= 1 AND min(mean_entropy) >= 0)) FROM {db}.model_hourly_stats"
        ))
        .await,
        "1400 1"
    );

    // Exactly one champion label per tweet, and the champion series counts each once.
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.champion_predictions")).await,
        "800"
    );
    assert_eq!(
        ch_scalar(&format!("SELECT sum(tweets) FROM {db}.champion_hourly")).await,
        "800"
    );
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.tweets FINAL")).await,
        "800",
        "tweets are stored once, whatever the number of versions"
    );
    // Per-version aggregates: both versions scored phases 1–3.
    assert_eq!(
        ch_scalar(&format!(
            "SELECT sum(tweets) FROM {db}.opinion_hourly_counts WHERE model_version = 'demo@2'"
        ))
        .await,
        "600"
    );
    // No batch mixes versions: every (partition, offset) range of a batch has one epoch; weaker
    // but checkable here: each tweet's champion row carries the epoch its phase was in.
    assert_eq!(
        ch_scalar(&format!(
            "SELECT groupUniqArray(deployment_epoch) FROM {db}.predictions WHERE role = 'champion' AND tweet_id IN ({})",
            id_list(&p2)
        ))
        .await,
        "[2]"
    );

    // Every change recorded (who, what, from → to), every replica event too.
    assert_eq!(
        ch_scalar(&format!(
            "SELECT arrayStringConcat(groupArray(action), ',') FROM (SELECT action FROM {db}.deployment_changes ORDER BY epoch)"
        ))
        .await,
        "deploy-shadow,promote,retire,rollback"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT arrayStringConcat(groupArray(concat(toString(epoch), outcome)), ',') FROM (SELECT epoch, outcome FROM {db}.deployment_events ORDER BY epoch)"
        ))
        .await,
        "0applied,1applied,2applied,3refused,4applied,5applied"
    );

    // A replica started later joins with the current deployment (epoch 5), not model.dir's.
    let (late, stop) = start_worker(cfg.clone());
    wait_until(
        "the late replica to apply epoch 5",
        Duration::from_secs(60),
        || {
            let q = format!(
            "SELECT count() FROM {db}.deployment_events WHERE epoch = 5 AND outcome = 'applied'"
        );
            async move { ch_try(&q).await.ok().as_deref() == Some("2") }
        },
    )
    .await;
    stop.cancel();
    late.await.unwrap().expect("late worker stops cleanly");
    // Both versions were probed (at start and at each deployment: 1 + 2 + 2 + ... runs), and the
    // same weights on the same machine gave the same probabilities every time.
    assert_eq!(
        ch_scalar(&format!(
            "SELECT concat(arrayStringConcat(arraySort(groupUniqArray(model_version)), ','), ' ',
                           toString(count() >= 6), ' ', toString(max(flagged)), ' ',
                           toString(max(greatest(max_deviation, max_deviation_previous)) <= 1e-6))
             FROM {db}.probe_runs"
        ))
        .await,
        "demo@1,demo@2 1 0 1"
    );
    let status = vaxpulse::deploy::ops::status(&cfg).await.unwrap();
    assert!(status.contains("epoch 5: champion demo@1#"), "{status}");
    let _ = std::fs::remove_dir_all(&root);
}

/// Fresh names and a ClickHouse sink on their (new) database, schema applied.
async fn fresh_database(prefix: &str) -> (Names, vaxpulse::sink::clickhouse::ClickHouseSink) {
    let names = Names::fresh(prefix);
    let cfg = names.test_config("");
    let sink = vaxpulse::sink::clickhouse::ClickHouseSink::from_config(&cfg).unwrap();
    sink.apply_schema()
        .await
        .expect("ClickHouse up (scripts/services.sh start)");
    (names, sink)
}

/// A replay that straddles a promotion leaves two champion predictions for one tweet: the views
/// still give exactly one label (the first stored), count it once in the champion series, and
/// once per version in the per-version aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_straddling_a_promotion_keeps_one_champion_label() {
    use vaxpulse::work::{Classification, ClassifiedBatch, Role};
    let (names, sink) = fresh_database("straddle").await;
    let first = Utc::now();
    let row = |version: &str, hash: &str, label: &str, epoch: u64, secs: i64| Classification {
        tweet_id: "t1".into(),
        created_at: first,
        lang: "fr".into(),
        text: "Le vaccin est disponible".into(),
        label: label.into(),
        scores: Default::default(),
        model_version: version.into(),
        model_hash: hash.into(),
        role: Role::Champion,
        deployment_epoch: epoch,
        classified_at: first + chrono::Duration::seconds(secs),
        source_partition: 0,
        source_offset: 7,
        source_timestamp_ms: None,
    };
    let batch = |r: Classification| ClassifiedBatch {
        rows: vec![r],
        deleted: Vec::new(),
        acks: Vec::new(),
        received: Vec::new(),
    };
    // Scored by demo@1 as champion; replayed after demo@2 was promoted.
    sink.insert(&batch(row("demo@1", "aaaaaaaaaaaa", "favour", 1, 0)))
        .await
        .unwrap();
    sink.insert(&batch(row("demo@2", "bbbbbbbbbbbb", "against", 2, 30)))
        .await
        .unwrap();
    let db = &names.database;
    assert_eq!(
        ch_scalar(&format!(
            "SELECT concat(label, ' ', model_version) FROM {db}.champion_predictions"
        ))
        .await,
        "favour demo@1"
    );
    assert_eq!(
        ch_scalar(&format!("SELECT sum(tweets) FROM {db}.champion_hourly")).await,
        "1"
    );
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.classified_tweets")).await,
        "1"
    );
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.tweets FINAL")).await,
        "1"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT arrayStringConcat(groupArray(concat(model_version, ':', toString(tweets))), ',') FROM (SELECT model_version, sum(tweets) AS tweets FROM {db}.opinion_hourly_counts GROUP BY model_version ORDER BY model_version)"
        ))
        .await,
        "demo@1:1,demo@2:1"
    );
}

/// The monitor reads an hourly rollup; every hour written to is recomputed whole from the
/// deduplicated tables before the next report: a late tweet in an hour already rolled up
/// counts, a replay with other batch boundaries adds nothing, and a delete (with
/// `retention.delete_counts`) leaves — the report always equals the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_rollup_follows_late_writes_replays_and_deletes() {
    use vaxpulse::analytics::monitor::{monitor, Span};
    use vaxpulse::work::{Classification, ClassifiedBatch, Role};
    let (names, sink) = fresh_database("rollup").await;
    let sink = sink.with_delete_counts(true);
    let day0 = chrono::DateTime::parse_from_rfc3339("2021-07-01T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let row = |day: i64, i: i64, label: &str| Classification {
        tweet_id: format!("r{day}-{i}"),
        created_at: day0 + chrono::Duration::days(day),
        lang: "fr".into(),
        text: "t".into(),
        label: label.into(),
        scores: [(label.to_string(), serde_json::Value::from(0.8))]
            .into_iter()
            .collect(),
        model_version: "demo@1".into(),
        model_hash: "aaaaaaaaaaaa".into(),
        role: Role::Champion,
        deployment_epoch: 0,
        classified_at: Utc::now(),
        source_partition: 0,
        source_offset: day * 1000 + i,
        source_timestamp_ms: None,
    };
    let batch = |rows, deleted: Vec<String>| ClassifiedBatch {
        rows,
        deleted,
        acks: Vec::new(),
        received: Vec::new(),
    };
    let label = |i: i64| if i % 2 == 0 { "favour" } else { "against" };
    let day = |d: i64, ids: std::ops::Range<i64>| ids.map(|i| row(d, i, label(i))).collect();
    sink.insert(&batch(day(0, 0..100), vec![])).await.unwrap();
    sink.insert(&batch(day(1, 0..100), vec![])).await.unwrap();
    let span = Span {
        daily: true,
        reference_days: 1,
        pinned: None,
        windows: 30,
    };
    let day1 = |r: &vaxpulse::analytics::monitor::MonitorReport| {
        let w = &r.champion.windows[0];
        assert_eq!(w.window, "2021-07-02 00:00:00");
        (
            w.tweets,
            (w.shares["favour"] * w.tweets as f64).round() as u64,
        )
    };
    assert_eq!(day1(&monitor(&sink, span).await.unwrap()), (100, 50));
    // 20 late `favour` tweets in day 1, already rolled up.
    let late: Vec<Classification> = (100..120).map(|i| row(1, i, "favour")).collect();
    sink.insert(&batch(late.clone(), vec![])).await.unwrap();
    assert_eq!(day1(&monitor(&sink, span).await.unwrap()), (120, 70));
    // The same tweets again with other boundaries (another deduplication token): no change.
    sink.insert(&batch(late[5..].to_vec(), vec![]))
        .await
        .unwrap();
    assert_eq!(day1(&monitor(&sink, span).await.unwrap()), (120, 70));
    // Ten of the late ones deleted: they leave the counts.
    let gone: Vec<String> = late[..10].iter().map(|r| r.tweet_id.clone()).collect();
    sink.insert(&batch(Vec::new(), gone)).await.unwrap();
    let r = monitor(&sink, span).await.unwrap();
    assert_eq!(day1(&r), (110, 60));
    assert_eq!(
        ch_scalar(&format!(
            "SELECT sum(tweets) FROM {}.champion_hourly WHERE hour >= '2021-07-02 00:00:00'",
            names.database
        ))
        .await,
        "110",
        "the report equals the table"
    );
}

/// `vaxpulse monitor` on a real ClickHouse: a day like the reference is ok, a day whose label
/// distribution moved is an alert (PSI by hand: 0.4·ln 1.8 + 0.4·ln 5 = 0.8789), the shadow's
/// agreement and kappa match the hand computation, a flagged probe run is an alert by itself,
/// the command exits 2, and both charts render from the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_flags_a_shifted_label_distribution() {
    use vaxpulse::work::{Classification, ClassifiedBatch, Role};
    let (names, sink) = fresh_database("monitor").await;
    let day0 = chrono::DateTime::parse_from_rfc3339("2021-07-01T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let row = |day: i64, i: i64, label: &str, version: &str, role: Role| Classification {
        tweet_id: format!("d{day}-{i}"),
        created_at: day0 + chrono::Duration::days(day),
        lang: "fr".into(),
        text: "t".into(),
        label: label.into(),
        scores: [(label.to_string(), serde_json::Value::from(0.9))]
            .into_iter()
            .collect(),
        model_version: version.into(),
        model_hash: if role == Role::Champion {
            "aaaaaaaaaaaa"
        } else {
            "bbbbbbbbbbbb"
        }
        .into(),
        role,
        deployment_epoch: 0,
        classified_at: Utc::now(),
        source_partition: 0,
        source_offset: day * 100 + i,
        source_timestamp_ms: None,
    };
    let (mut champion, mut shadow) = (Vec::new(), Vec::new());
    for (day, favour) in [(0, 50), (1, 50), (2, 90)] {
        for i in 0..100 {
            let label = if i < favour { "favour" } else { "against" };
            champion.push(row(day, i, label, "demo@1", Role::Champion));
            if day == 2 {
                // The shadow says `against` on 10 of the champion's 90 `favour` tweets.
                let label = if i < 10 { "against" } else { label };
                shadow.push(row(day, i, label, "demo@2", Role::Shadow));
            }
        }
    }
    let batch = |rows| ClassifiedBatch {
        rows,
        deleted: Vec::new(),
        acks: Vec::new(),
        received: Vec::new(),
    };
    sink.insert(&batch(champion)).await.unwrap();
    sink.insert_shadows(&[batch(shadow)]).await.unwrap();
    let r = vaxpulse::analytics::monitor::monitor(
        &sink,
        vaxpulse::analytics::monitor::Span {
            daily: true,
            reference_days: 1,
            pinned: None,
            windows: 30,
        },
    )
    .await
    .unwrap();
    assert_eq!(r.champion.reference_tweets, 100);
    let levels: Vec<(&str, &str)> = r
        .champion
        .windows
        .iter()
        .map(|w| (w.window.as_str(), w.level))
        .collect();
    assert_eq!(
        levels,
        [
            ("2021-07-02 00:00:00", "ok"),
            ("2021-07-03 00:00:00", "alert")
        ]
    );
    let w = &r.champion.windows[1];
    assert!((w.psi - 0.878_890).abs() < 1e-5, "{}", w.psi);
    // Every score is 0.9: the confidence distribution did not move.
    assert_eq!(w.confidence_psi, 0.0);
    assert!(
        (w.mean_confidence - 0.9).abs() < 1e-6,
        "{}",
        w.mean_confidence
    );
    // Per version: demo@1 alone has windows after its first day; demo@2 has only its first.
    let versions: Vec<(&str, usize)> = r
        .versions
        .iter()
        .map(|v| (v.series.as_str(), v.windows.len()))
        .collect();
    assert_eq!(
        versions,
        [("demo@1#aaaaaaaaaaaa", 2), ("demo@2#bbbbbbbbbbbb", 0)]
    );
    // Agreement 0.9; chance 0.9·0.8 + 0.1·0.2 = 0.74; kappa 0.16 / 0.26 = 0.615385.
    let a = r.latest_agreement();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].window.as_str(), a[0].shadow.as_str(), a[0].tweets),
        ("2021-07-03 00:00:00", "demo@2#bbbbbbbbbbbb", 100)
    );
    assert!((a[0].agreement - 0.9).abs() < 1e-9, "{}", a[0].agreement);
    assert!((a[0].kappa - 0.615_385).abs() < 1e-6, "{}", a[0].kappa);
    let flips: Vec<(&str, &str, u64)> = r
        .flips
        .iter()
        .map(|f| (f.1.as_str(), f.2.as_str(), f.3))
        .collect();
    assert_eq!(
        flips,
        [
            ("against", "against", 10),
            ("favour", "against", 10),
            ("favour", "favour", 80)
        ]
    );
    assert_eq!(r.worst(), "alert");

    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vaxpulse"))
            .args(args)
            .env("VAXPULSE_CLICKHOUSE_URL", clickhouse_url())
            .env("VAXPULSE_CLICKHOUSE_DATABASE", &names.database)
            .output()
            .unwrap()
    };
    let dir = std::env::temp_dir().join(unique("charts"));
    let (drift_svg, opinion_png) = (dir.join("drift.svg"), dir.join("opinion.png"));
    let json = dir.join("monitor.json");
    let out = cli(&[
        "monitor",
        "--daily",
        "--json",
        json.to_str().unwrap(),
        "--chart",
        drift_svg.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("status: alert"), "{text}");
    assert!(
        text.contains("| demo@2#bbbbbbbbbbbb | favour | against | 10 |"),
        "{text}"
    );
    let svg = std::fs::read_to_string(&drift_svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("width=\"1200\""),
        "{svg:.200}"
    );
    for expected in [
        "watch (0.1)",
        "alert (0.25)",
        "PSI of labels",
        "agreement demo@2#bbbbbbbbbbbb",
        "2021-07-03",
    ] {
        assert!(
            svg.contains(expected),
            "{expected} missing from the drift chart"
        );
    }

    let out = cli(&[
        "report",
        "--format",
        "csv",
        "--chart",
        opinion_png.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("period,label,tweets,share\n2021-07-01,against,50,0.500000\n"),
        "{text}"
    );
    assert!(text.contains("2021-07-03,favour,90,0.900000\n"), "{text}");
    let png = std::fs::File::open(&opinion_png).unwrap();
    let reader = png::Decoder::new(std::io::BufReader::new(png))
        .read_info()
        .unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (1200, 720));
    let size = std::fs::metadata(&opinion_png).unwrap().len();
    assert!(size > 10_000, "{size} bytes: a blank chart?");

    // A probe run that moved is an alert by itself.
    let probe = |flagged: u8, replica: &str| vaxpulse::probe::ProbeRow {
        at: Utc::now(),
        group_id: names.group.clone(),
        replica: replica.into(),
        device: "cpu fp32".into(),
        model_version: "demo@2".into(),
        model_hash: "bbbbbbbbbbbb".into(),
        probe_set: "x".into(),
        probe_ids: vec!["p1".into()],
        labels: vec!["against".into(), "favour".into()],
        scores: vec![vec![0.5, 0.5]],
        max_deviation: if flagged == 1 { 0.02 } else { 0.0 },
        max_deviation_previous: 0.0,
        flagged,
    };
    sink.record(&probe(0, "r1")).await.unwrap();
    sink.record(&probe(1, "r2")).await.unwrap();
    let r = vaxpulse::analytics::monitor::monitor(
        &sink,
        vaxpulse::analytics::monitor::Span {
            daily: true,
            reference_days: 3,
            pinned: None,
            windows: 30,
        },
    )
    .await
    .unwrap();
    assert!(
        r.champion.windows.is_empty(),
        "three reference days: no window after them"
    );
    let probes: Vec<(&str, u64, bool)> = r
        .probes
        .iter()
        .map(|p| (p.model.as_str(), p.replicas, p.flagged))
        .collect();
    assert_eq!(probes, [("demo@2#bbbbbbbbbbbb", 2, true)]);
    assert_eq!(r.worst(), "alert");
}

/// Probe runs of one version are compared with its first and previous stored runs: a change
/// within the bound passes, one past it is flagged, and a run on another probe set starts its
/// own reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_runs_that_move_past_the_bound_are_flagged() {
    use vaxpulse::probe::{record, ProbeRun, ProbeSet};
    let (names, sink) = fresh_database("probe").await;
    let set = ProbeSet {
        sha256: "s1".into(),
        ids: vec!["p1".into(), "p2".into()],
        texts: vec!["a".into(), "b".into()],
    };
    let run = |shift: f32| ProbeRun {
        at: Utc::now(),
        model_version: "demo@1".into(),
        model_hash: "aaaaaaaaaaaa".into(),
        labels: vec!["against".into(), "favour".into()],
        scores: vec![vec![0.3 + shift, 0.7 - shift], vec![0.9, 0.1]],
    };
    let mut seen = Vec::new();
    for (set, shift) in [(&set, 0.0), (&set, 5e-4), (&set, 2e-3)] {
        // Runs are ordered by time (ms): keep them apart as real runs are.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let row = record(&sink, set, "g", "r1", "cpu fp32", 1e-3, run(shift))
            .await
            .unwrap();
        seen.push((
            (row.max_deviation * 1e4).round() / 1e4,
            (row.max_deviation_previous * 1e4).round() / 1e4,
            row.flagged,
        ));
    }
    // Third run: 2e-3 from the first (flagged), 1.5e-3 from the previous.
    assert_eq!(
        seen,
        [(0.0, 0.0, 0), (0.0005, 0.0005, 0), (0.002, 0.0015, 1)]
    );
    let other = ProbeSet {
        sha256: "s2".into(),
        ..set.clone()
    };
    let row = record(&sink, &other, "g", "r1", "cpu fp32", 1e-3, run(0.01))
        .await
        .unwrap();
    assert_eq!((row.max_deviation, row.flagged), (0.0, 0));
    let db = &names.database;
    assert_eq!(
        ch_scalar(&format!(
            "SELECT toString(count()) || ' ' || toString(sum(flagged)) FROM {db}.probe_runs"
        ))
        .await,
        "4 1"
    );
}
