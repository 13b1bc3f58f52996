//! Live quality on a simulated stream with a known accuracy, in the real ClickHouse: 6 000
//! tweets over a day, scored by a champion that is right 90 % of the time on easy tweets and
//! 40 % on the 10 % hard (low-confidence) ones, and by a shadow that is better on both. A
//! sample is drawn (uniform half, over-sampled disagreements and low confidence), an annotator
//! labels it through the page's own store functions (reading the true opinion from the text, as
//! a person would read the tweet), a second one the double-annotation share. The weighted
//! estimate finds the stream's accuracy where the sample's plain mean is far off; the shadow is
//! told apart from the champion; the gate refuses without a probe run or with too few labels,
//! and passes on the evidence.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use vaxpulse::annotate::store;
use vaxpulse::quality::report::{quality, CLASSES};
use vaxpulse::sink::clickhouse::ClickHouseSink;

const CHAMPION: &str = "champ@1#aaaaaaaaaaaa";
const SHADOW: &str = "chall@1#bbbbbbbbbbbb";

/// The stream: gold from a hash, each model right with its stratum's probability.
fn stream_sql(db: &str, n: u64) -> String {
    let right = |salt: &str, hard: u32, easy: u32| {
        format!("cityHash64(number, '{salt}') % 100 < if(hard, {hard}, {easy})")
    };
    format!(
        "INSERT INTO {db}.ingest (tweet_id, created_at, lang, text, source_partition, source_offset,
                                  model_version, model_hash, role, deployment_epoch, label, scores, classified_at)
         SELECT toString(5000000 + number) AS tweet_id,
                toDateTime64('2026-11-20 00:00:00', 3, 'UTC') + toIntervalSecond(number * 14) AS created_at,
                'fr', concat('gold:', gold, ' tweet ', toString(number), ' sur le vaccin'),
                0, toInt64(number), model_version, model_hash, role, 1,
                label, map(label, toFloat32(if(hard, 0.45, 0.9))), now64(3)
         FROM (
             SELECT number, cityHash64(number, 'hard') % 10 = 0 AS hard,
                    ['against', 'neutral', 'favour'][cityHash64(number, 'gold') % 3 + 1] AS gold,
                    ['against', 'neutral', 'favour'][(cityHash64(number, 'gold') + 1) % 3 + 1] AS wrong,
                    m.1 AS model_version, m.2 AS model_hash, m.3 AS role,
                    if(m.3 = 'champion', {champ}, {shadow}) AS right_,
                    if(right_, gold, wrong) AS label
             FROM numbers({n})
             ARRAY JOIN [('champ@1', 'aaaaaaaaaaaa', 'champion'), ('chall@1', 'bbbbbbbbbbbb', 'shadow')] AS m
         )",
        champ = right("c", 40, 90),
        shadow = right("s", 75, 95),
    )
}

/// A clean probe run of the shadow (what a replica writes when it deploys it).
async fn probe_run_of_the_shadow(sink: &ClickHouseSink, db: &str) {
    sink.client()
        .query(&format!(
            "INSERT INTO {db}.probe_runs (at, group_id, replica, device, model_version, model_hash, probe_set,
                                         probe_ids, labels, scores, max_deviation, max_deviation_previous, flagged)
             VALUES (now64(3), 'g', 'r1', 'cpu', 'chall@1', 'bbbbbbbbbbbb', 'p', [], [], [], 0, 0, 0)"
        ))
        .execute()
        .await
        .unwrap();
}

/// Labels every tweet `sample` serves to `annotator` with the opinion its text states.
async fn label_all(sink: &ClickHouseSink, sample: &str, annotator: &str) {
    while let Some(t) = store::next(sink, sample, annotator).await.unwrap() {
        let g = t
            .text
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("gold:")
            .to_string();
        store::label(sink, sample, &t.tweet_id, annotator, &g, Utc::now())
            .await
            .unwrap();
    }
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Truth {
    champion: f64,
    shadow: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_live_quality_finds_the_streams_accuracy_and_the_gate_rests_on_it() {
    let names = Names::fresh("quality");
    let mut cfg = names.test_config("");
    cfg.quality.sample_size = 400;
    cfg.quality.min_paired_labels = 100;
    let sink = ClickHouseSink::from_config(&cfg).unwrap();
    sink.apply_schema().await.unwrap();
    let db = &names.database;
    sink.client()
        .query(&stream_sql(db, 6_000))
        .execute()
        .await
        .unwrap();
    let truth = sink
        .client()
        .query(&format!(
            "SELECT avgIf(label = gold, role = 'champion') AS champion, avgIf(label = gold, role = 'shadow') AS shadow
             FROM (SELECT label, role, extract(text, 'gold:(\\\\w+)') AS gold
                   FROM {db}.predictions AS p FINAL
                   INNER JOIN {db}.tweets AS t FINAL USING (tweet_id))"
        ))
        .fetch_one::<Truth>()
        .await
        .unwrap();
    assert!((0.80..0.88).contains(&truth.champion), "{}", truth.champion);

    let from = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
    let drawn = vaxpulse::quality::sample::draw(
        &sink,
        &cfg.quality,
        "t1",
        from,
        from + Duration::hours(24),
    )
    .await
    .unwrap();
    let per = |s: &str| drawn.drawn.iter().find(|(n, _)| n == s).map_or(0, |x| x.1);
    let total: u64 = drawn.drawn.iter().map(|x| x.1).sum();
    assert!(
        (300..=500).contains(&total),
        "drawn {total}: {:?}",
        drawn.drawn
    );
    // Over-sampled: disagreements are ~8 % of the stream but a large share of the sample.
    assert!(per("disagreement") * 4 > total, "{:?}", drawn.drawn);
    // Drawing the same sample again adds nothing.
    vaxpulse::quality::sample::draw(&sink, &cfg.quality, "t1", from, from + Duration::hours(24))
        .await
        .unwrap();
    let again = ch_scalar(&format!(
        "SELECT count() FROM {db}.annotation_samples FINAL WHERE sample_id = 't1'"
    ))
    .await;
    assert_eq!(again, total.to_string());

    // alice labels every tweet; bob the ones served twice.
    let gold_of = |text: &str| {
        let g = text
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("gold:");
        assert!(CLASSES.contains(&g), "{text}");
        g.to_string()
    };
    let mut labelled = 0u64;
    let mut naive_right = 0u64;
    let mut champ_label = std::collections::HashMap::new();
    for (id, label) in sink
        .client()
        .query(&format!(
            "SELECT tweet_id, label FROM {db}.predictions FINAL WHERE role = 'champion'"
        ))
        .fetch_all::<(String, String)>()
        .await
        .unwrap()
    {
        champ_label.insert(id, label);
    }
    while let Some(t) = store::next(&sink, "t1", "alice").await.unwrap() {
        let g = gold_of(&t.text);
        naive_right += u64::from(champ_label[&t.tweet_id] == g);
        store::label(&sink, "t1", &t.tweet_id, "alice", &g, Utc::now())
            .await
            .unwrap();
        labelled += 1;
    }
    assert_eq!(labelled, total, "every sampled tweet served once to alice");
    let mut doubled = 0;
    while let Some(t) = store::next(&sink, "t1", "bob").await.unwrap() {
        store::label(
            &sink,
            "t1",
            &t.tweet_id,
            "bob",
            &gold_of(&t.text),
            Utc::now(),
        )
        .await
        .unwrap();
        doubled += 1;
        assert!(doubled <= total, "bob is served only the double share");
    }
    assert!(
        doubled > 0 && doubled * 4 < total,
        "double share ~10 %: {doubled} of {total}"
    );

    let since = Utc::now() - Duration::hours(1);
    let r = quality(&sink, &cfg.quality, since, Some("t1"), Some(CHAMPION))
        .await
        .unwrap();
    print!("{}", r.render());
    let c = r.version(CHAMPION).unwrap();
    let s = r.version(SHADOW).unwrap();
    let naive = naive_right as f64 / labelled as f64;
    assert!(
        c.accuracy.low <= truth.champion && truth.champion <= c.accuracy.high,
        "the interval {:?} covers the stream's accuracy {}",
        c.accuracy,
        truth.champion
    );
    assert!((c.accuracy.estimate - truth.champion).abs() < 0.05);
    assert!(
        naive < truth.champion - 0.1,
        "the sample's own mean {naive} is biased low"
    );
    assert!(
        (s.accuracy.estimate - truth.shadow).abs() < 0.05,
        "{:?} vs {}",
        s.accuracy,
        truth.shadow
    );
    let vs = s.versus_champion.as_ref().unwrap();
    assert!(
        vs.comparison.mcnemar.p_value < 0.01 && vs.comparison.difference.low > 0.0,
        "{vs:?}"
    );
    assert_eq!(r.annotator_kappa, Some(1.0));
    assert_eq!(r.doubly_annotated, doubled);

    // The gate: no probe run of the shadow yet → refused, saying so.
    let v = vaxpulse::quality::check_promotion(&cfg, &sink, SHADOW, CHAMPION)
        .await
        .unwrap();
    print!("{}", v.render());
    assert!(!v.passed);
    assert!(
        v.reasons.iter().any(|r| r.contains("no probe run")),
        "{:?}",
        v.reasons
    );
    assert!(
        v.reasons.iter().all(|r| !r.contains("does not beat")),
        "{:?}",
        v.reasons
    );
    probe_run_of_the_shadow(&sink, db).await;
    let v = vaxpulse::quality::check_promotion(&cfg, &sink, SHADOW, CHAMPION)
        .await
        .unwrap();
    print!("{}", v.render());
    assert!(v.passed, "{:?}", v.reasons);
    v.record(&sink, "g", "passed", "test", "").await.unwrap();
    // The champion does not beat the shadow; and more labels than there are are needed.
    let back = vaxpulse::quality::check_promotion(&cfg, &sink, CHAMPION, SHADOW)
        .await
        .unwrap();
    assert!(!back.passed);
    cfg.quality.min_paired_labels = 100_000;
    let few = vaxpulse::quality::check_promotion(&cfg, &sink, SHADOW, CHAMPION)
        .await
        .unwrap();
    assert!(
        few.reasons.iter().any(|r| r.starts_with("only ")),
        "{:?}",
        few.reasons
    );
    let stored = ch_scalar(&format!(
        "SELECT concat(outcome, ' ', candidate, ' ', JSONExtractString(evidence, 'probe')) FROM {db}.promotion_decisions"
    ))
    .await;
    assert_eq!(stored, format!("passed {SHADOW} clean"));
}

fn cli(names: &Names, store: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vaxpulse"))
        .args(args)
        .envs(names.test_env())
        .env("VAXPULSE_MODEL_STORE_DIR", store)
        .env("VAXPULSE_MODEL_DIR", store.join("demo/1"))
        .env("VAXPULSE_ACTOR", "tester")
        .output()
        .unwrap()
}

/// `vaxpulse models promote` without evidence is refused (the reasons printed, the decision
/// stored, nothing published); `--force` needs a reason; a forced promotion is published and
/// the override recorded in `deployment_changes` and `promotion_decisions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_a_promotion_without_evidence_and_records_a_forced_one() {
    let names = Names::fresh("gate");
    let root = std::env::temp_dir().join(unique("vaxpulse-gate-store"));
    let store = demo_store(&root, &["1", "2"], &[]);
    let cfg = names.store_config(&store);
    create_topics(&cfg.kafka, &names, 1)
        .await
        .expect("topics (scripts/services.sh start)");
    ClickHouseSink::from_config(&cfg)
        .unwrap()
        .apply_schema()
        .await
        .unwrap();
    let said = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let o = cli(&names, &store, &["models", "deploy", "demo@2"]);
    assert!(o.status.success(), "{}", said(&o));

    let o = cli(&names, &store, &["models", "promote", "demo@2"]);
    let text = said(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("refused by the quality gate"), "{text}");
    assert!(text.contains("only 0 annotated tweets"), "{text}");
    let o = cli(&names, &store, &["models", "promote", "demo@2", "--force"]);
    assert!(said(&o).contains("--force needs --reason"), "{}", said(&o));

    let o = cli(
        &names,
        &store,
        &[
            "models",
            "promote",
            "demo@2",
            "--force",
            "--reason",
            "incident 42",
        ],
    );
    assert!(o.status.success(), "{}", said(&o));
    let db = &names.database;
    let reason = ch_scalar(&format!(
        "SELECT reason FROM {db}.deployment_changes WHERE action = 'promote'"
    ))
    .await;
    assert!(
        reason.starts_with("forced past the quality gate (only 0 annotated tweets")
            && reason.ends_with(": incident 42"),
        "{reason}"
    );
    assert_eq!(
        ch_scalar(&format!(
            "SELECT arrayStringConcat(groupArray(concat(outcome, '/', actor)), ',') FROM (SELECT outcome, actor FROM {db}.promotion_decisions ORDER BY decided_at)"
        ))
        .await,
        "refused/tester,forced/tester"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// CBPE tracks a known shift: on day 1 the tweets are easy (top probability 0.9, right 90 % of
/// the time), on day 2 most are hard (0.5, right 50 %, and carrying a link, so the input's text
/// descriptors drift too). The label-free estimate per day follows
/// the accuracy the labels show, and drops with it; the fitted temperature of this calibrated
/// model stays near 1 (the estimates use the temperature just fitted and stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_free_estimate_follows_a_known_shift_between_two_days() {
    let names = Names::fresh("cbpe");
    let mut cfg = names.test_config("");
    cfg.quality.sample_size = 300;
    let sink = ClickHouseSink::from_config(&cfg).unwrap();
    sink.apply_schema().await.unwrap();
    let db = &names.database;
    // 4 000 tweets over two days; day 2 (number ≥ 2000) has 60 % hard tweets.
    sink.client()
        .query(&format!(
            "INSERT INTO {db}.ingest (tweet_id, created_at, lang, text, source_partition, source_offset,
                                      model_version, model_hash, role, deployment_epoch, label, scores, classified_at)
             SELECT toString(9000000 + number), toDateTime64('2026-11-10 00:00:00', 3, 'UTC') + toIntervalSecond(number * 43),
                    'fr', concat('gold:', gold, ' tweet ', toString(number), if(hard, ' https://t.co/x', '')), 0, toInt64(number),
                    'champ@1', 'aaaaaaaaaaaa', 'champion', 1, label,
                    mapFromArrays(['against', 'neutral', 'favour'],
                                  arrayMap(c -> toFloat32(if(c = label, conf, (1 - conf) / 2)), ['against', 'neutral', 'favour'])),
                    now64(3)
             FROM (SELECT number,
                          cityHash64(number, 'hard') % 10 < if(number >= 2000, 6, 0) AS hard,
                          if(hard, 0.5, 0.9) AS conf,
                          ['against', 'neutral', 'favour'][cityHash64(number, 'gold') % 3 + 1] AS gold,
                          ['against', 'neutral', 'favour'][(cityHash64(number, 'gold') + 1 + cityHash64(number, 'w') % 2) % 3 + 1] AS wrong,
                          if(cityHash64(number, 'r') % 1000 < conf * 1000, gold, wrong) AS label
                   FROM numbers(4000))"
        ))
        .execute()
        .await
        .unwrap();
    let from = Utc.with_ymd_and_hms(2026, 11, 10, 0, 0, 0).unwrap();
    vaxpulse::quality::sample::draw(
        &sink,
        &cfg.quality,
        "two-days",
        from,
        from + Duration::hours(48),
    )
    .await
    .unwrap();
    label_all(&sink, "two-days", "alice").await;
    let since = Utc::now() - Duration::hours(1);
    let r = vaxpulse::quality::report::quality_with_estimates(
        &sink,
        &cfg.quality,
        since,
        None,
        None,
        true,
    )
    .await
    .unwrap();
    print!("{}", r.render());
    let days: Vec<_> = r.cbpe.iter().filter(|d| d.model == CHAMPION).collect();
    assert_eq!(days.len(), 2, "{:?}", r.cbpe);
    for d in &days {
        let real = d.realized_accuracy.unwrap();
        assert!(
            (d.expected_accuracy - real.estimate).abs() < 0.07,
            "{}: CBPE {} vs labels {:?}",
            d.day,
            d.expected_accuracy,
            real
        );
    }
    assert!(
        (days[0].expected_accuracy - 0.9).abs() < 0.025,
        "day 1: {}",
        days[0].expected_accuracy
    );
    assert!(
        (days[1].expected_accuracy - 0.66).abs() < 0.03,
        "day 2: {}",
        days[1].expected_accuracy
    );
    let drop =
        days[0].realized_accuracy.unwrap().estimate - days[1].realized_accuracy.unwrap().estimate;
    assert!(drop > 0.12, "the labels see the shift too: {drop}");
    let c = r.calibration.iter().find(|c| c.model == CHAMPION).unwrap();
    assert!((0.7..1.4).contains(&c.temperature), "{c:?}");
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.calibrations WHERE model = '{CHAMPION}' AND source = 'annotations'")).await,
        "1"
    );
    // The input moved too (the hard tweets of day 2 carry links): the monitor's text
    // descriptors show it against day 1, and only the link share moved that much.
    let span = vaxpulse::analytics::monitor::Span {
        daily: true,
        reference_days: 1,
        pinned: None,
        windows: 2,
    };
    let m = vaxpulse::analytics::monitor::monitor(&sink, span)
        .await
        .unwrap();
    let day2: Vec<_> = m
        .input
        .iter()
        .filter(|d| d.window.starts_with("2026-11-11"))
        .collect();
    assert_eq!(day2.len(), 4, "{:?}", m.input);
    for d in day2 {
        match d.descriptor.as_str() {
            "url" => assert_eq!(d.level, "alert", "{d:?}"),
            "mention" | "hashtag" => assert!(d.psi < 0.01, "{d:?}"),
            _ => {}
        }
    }
}

/// With `quality.propose_promotions`, the group's leader replica (it holds input partition 0)
/// proposes — never makes — the promotion the gate would pass: one `proposed` row in
/// `promotion_decisions`, and the deployment is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_replica_proposes_a_promotion_the_gate_would_pass() {
    let names = Names::fresh("propose");
    let mut cfg = names.test_config("[monitor]\ngauges_interval_s = 1\n[quality]\npropose_promotions = true\nmin_paired_labels = 50\nsample_size = 200\n");
    create_topics(&cfg.kafka, &names, 1)
        .await
        .expect("topics (scripts/services.sh start)");
    let sink = ClickHouseSink::from_config(&cfg).unwrap();
    sink.apply_schema().await.unwrap();
    let db = names.database.clone();
    sink.client()
        .query(&stream_sql(&db, 3_000))
        .execute()
        .await
        .unwrap();
    let from = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
    vaxpulse::quality::sample::draw(&sink, &cfg.quality, "p1", from, from + Duration::hours(24))
        .await
        .unwrap();
    label_all(&sink, "p1", "alice").await;
    probe_run_of_the_shadow(&sink, &db).await;
    cfg.quality.window_days = 1;
    let (worker, stop) = start_worker(cfg.clone());
    let q = format!("SELECT count() FROM {db}.promotion_decisions WHERE outcome = 'proposed' AND candidate = '{SHADOW}'");
    wait_until(
        "the leader to propose the shadow",
        std::time::Duration::from_secs(90),
        || {
            let q = q.clone();
            async move { ch_try(&q).await.ok().as_deref() == Some("1") }
        },
    )
    .await;
    // Proposed once, however many gauge rounds pass; nothing was published.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(ch_scalar(&q).await, "1");
    assert_eq!(
        ch_scalar(&format!("SELECT count() FROM {db}.deployment_changes")).await,
        "0"
    );
    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");
}
