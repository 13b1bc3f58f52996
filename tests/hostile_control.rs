//! Hostile records on the control topic, written the way the CLI writes them (key = group id)
//! by a plain producer, against a running replica on the real broker and ClickHouse: a model
//! name that is an absolute path or climbs out with `..`, a link in the store to an export
//! outside it, an epoch of `u64::MAX`, a thousand copies of one shadow, a version that cannot
//! be loaded. Each is refused with its reason in `deployment_events` while the replica keeps
//! serving; a valid record after them is applied; a replica started later does not exit on the
//! newest record it cannot load — it serves the newest one it can and says it is not ready.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use common::*;
use vaxpulse::deploy::{control, Deployment};
use vaxpulse::model::{Manifest, ModelId};
use vaxpulse::synthetic::Generator;

async fn produce_tweets(names: &Names, g: &mut Generator, n: usize) {
    let payloads: Vec<Vec<u8>> = (0..n).map(|_| g.payload().1).collect();
    produce_payloads(&names.input, None, &payloads)
        .await
        .expect("tweets produced");
}

async fn count(sql: String, n: u64, what: &str) {
    wait_until(what, Duration::from_secs(90), || {
        let q = sql.clone();
        async move { ch_try(&q).await.ok() == Some(n.to_string()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_control_records_are_refused_and_the_replica_keeps_serving() {
    vaxpulse::telemetry::init_logging();
    let names = Names::fresh("hostctl");
    let root = std::env::temp_dir().join(unique("vaxpulse-hostile"));
    let store = demo_store(&root.join("store"), &["1", "2"], &["3"]);
    // A real export outside the store, its manifest naming it `evil`, and a link to it planted
    // in the store: a record naming `evil@1` must not load it.
    let outside = demo_store(&root.join("outside"), &["1"], &[]).join("demo");
    let m = std::fs::read_to_string(outside.join("1/manifest.json")).unwrap();
    std::fs::write(
        outside.join("1/manifest.json"),
        m.replace("\"name\": \"demo\"", "\"name\": \"evil\""),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, store.join("evil")).unwrap();

    let cfg = names.store_config(&store);
    create_topics(&cfg.kafka, &names, 2)
        .await
        .expect("topics created (scripts/services.sh start)");
    let db = names.database.clone();
    let v1: ModelId = Manifest::load(&store.join("demo/1")).unwrap().id();
    let v2: ModelId = Manifest::load(&store.join("demo/2")).unwrap().id();
    let mut g = Generator::new(11, Utc::now(), 1);

    let (worker, stop) = start_worker(cfg.clone());
    produce_tweets(&names, &mut g, 100).await;
    count(
        format!("SELECT uniqExact(tweet_id) FROM {db}.predictions WHERE role = 'champion'"),
        100,
        "the first tweets classified",
    )
    .await;

    // Records pin each version's manifest as the CLI does (from whatever the store holds).
    let record = |epoch: u64, shadows: Vec<ModelId>| {
        let mut d = Deployment {
            epoch,
            shadows,
            action: "deploy-shadow".into(),
            actor: "attacker".into(),
            changed_at: Utc::now(),
            ..Deployment::bootstrap(v1.clone())
        };
        pin_from_store(&store, &mut d);
        d
    };
    let mut unpinned = record(1, vec![v2.clone()]);
    unpinned.manifests.clear();
    // What a store writer who relabels a version under the same identity leaves: the record's
    // pin no longer matches the store's manifest.
    // Epoch 2: `evil` (epoch 1) passes the record checks and fails at load.
    let mut stale_pin = record(2, vec![v2.clone()]);
    stale_pin
        .manifests
        .insert(v2.version_label(), "0".repeat(64));
    let with_champion_name = |name: &str| {
        let mut j = serde_json::to_value(record(1, vec![])).unwrap();
        j["champion"]["name"] = name.into();
        serde_json::to_vec(&j).unwrap()
    };
    let evil = ModelId {
        name: "evil".into(),
        ..v1.clone()
    };
    let hostile: Vec<Vec<u8>> = vec![
        with_champion_name(&outside.display().to_string()),
        with_champion_name("../outside/demo"),
        serde_json::to_vec(&record(u64::MAX, vec![v2.clone()])).unwrap(),
        serde_json::to_vec(&record(1, vec![v2.clone(); 1000])).unwrap(),
        // Refused by the record checks, so it never moves the followed epoch.
        serde_json::to_vec(&unpinned).unwrap(),
        serde_json::to_vec(&{
            let mut d = record(1, vec![]);
            d.champion = evil;
            d.manifests.clear();
            d.manifests.insert(
                "evil@1".into(),
                Manifest::load(&store.join("evil/1")).unwrap().digest,
            );
            d
        })
        .unwrap(),
    ];
    let publish = |records: Vec<Vec<u8>>| {
        let keyed = records
            .into_iter()
            .map(|p| (cfg.kafka.group_id.clone(), p))
            .collect();
        produce_keyed(&cfg.kafka, &cfg.kafka.control_topic, keyed, None)
    };
    publish(hostile).await.unwrap();
    let refused = format!("SELECT count() FROM {db}.deployment_events WHERE outcome = 'refused'");
    count(refused.clone(), 6, "six refusals").await;
    // After `evil`'s refusal: two records that pass the checks and reach the loader together
    // are coalesced to the newer one (the older is never served), so each goes on its own.
    publish(vec![serde_json::to_vec(&stale_pin).unwrap()])
        .await
        .unwrap();
    count(refused, 7, "seven refusals").await;
    let reasons = ch_scalar(&format!(
        "SELECT arrayStringConcat(groupArray(message), '\\n') FROM (SELECT message FROM {db}.deployment_events WHERE outcome = 'refused' ORDER BY at)"
    ))
    .await;
    for expected in [
        "directory names",
        "jumps more than",
        "more than deploy.max_shadows = 4",
        "outside the model store",
        "no manifest sha256",
        "but the deployment pins",
    ] {
        assert!(reasons.contains(expected), "no `{expected}` in:\n{reasons}");
    }
    assert_eq!(reasons.matches("directory names").count(), 2, "{reasons}");
    assert!(!worker.is_finished(), "hostile records stop nothing");

    // A valid record after them is applied: the epoch ahead did not freeze the group.
    control::publish(&cfg.kafka, &record(3, vec![v2.clone()]))
        .await
        .unwrap();
    count(
        format!(
            "SELECT count() FROM {db}.deployment_events WHERE outcome = 'applied' AND epoch = 3"
        ),
        1,
        "the replica to apply epoch 3",
    )
    .await;
    produce_tweets(&names, &mut g, 100).await;
    count(
        format!("SELECT uniqExact(tweet_id) FROM {db}.predictions WHERE role = 'shadow' AND model_version = 'demo@2'"),
        100,
        "the shadow of epoch 3 scoring",
    )
    .await;

    // The newest record names a version this store cannot load (a truncated upload): the
    // running replica refuses it; a replica that starts now serves epoch 3 instead of exiting,
    // and is not ready, saying why.
    let broken = ModelId {
        version: "3".into(),
        ..v2.clone()
    };
    control::publish(&cfg.kafka, &record(4, vec![broken]))
        .await
        .unwrap();
    count(
        format!(
            "SELECT count() FROM {db}.deployment_events WHERE outcome = 'refused' AND epoch = 4"
        ),
        1,
        "the running replica to refuse epoch 4",
    )
    .await;
    let port = free_port();
    let mut late_cfg = cfg.clone();
    late_cfg.metrics.listen = format!("127.0.0.1:{port}");
    let (late, late_stop) = start_worker(late_cfg);
    count(
        format!(
            "SELECT count() FROM {db}.deployment_events WHERE outcome = 'applied' AND epoch = 3"
        ),
        2,
        "the late replica to serve epoch 3",
    )
    .await;
    wait_until(
        "the late replica to report not ready",
        Duration::from_secs(30),
        || async move {
            http_get(port, "/health/ready").is_some_and(|b| {
                b.contains("not ready") && b.contains("epoch 4") && b.contains("checksum")
            })
        },
    )
    .await;
    assert!(
        !late.is_finished(),
        "a record it cannot load never makes a replica exit"
    );

    // Both replicas keep classifying (the partitions move between them; nothing is lost).
    produce_tweets(&names, &mut g, 100).await;
    count(
        format!("SELECT uniqExact(tweet_id) FROM {db}.predictions WHERE role = 'champion'"),
        300,
        "every tweet classified",
    )
    .await;
    stop.cancel();
    late_stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");
    late.await.unwrap().expect("late worker stops cleanly");
    let epochs: HashSet<String> = ch_scalar(&format!(
        "SELECT arrayStringConcat(groupUniqArray(toString(deployment_epoch)), ',') FROM {db}.predictions WHERE role = 'champion'"
    ))
    .await
    .split(',')
    .map(String::from)
    .collect();
    assert_eq!(
        epochs,
        ["0", "3"].iter().map(|s| s.to_string()).collect(),
        "only the bootstrap and the valid record were ever served"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// With a trusted key configured, a replica takes only records signed by it: unsigned ones,
/// ones signed by another key and ones changed after signing are refused with their reason;
/// the CLI signs with its key file (the key id is recorded) and refuses to publish unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_records_signed_by_a_trusted_key_are_applied() {
    use vaxpulse::deploy::ops::{change, ChangeOptions};
    use vaxpulse::deploy::{sign, Change};
    vaxpulse::telemetry::init_logging();
    let names = Names::fresh("signed");
    let root = std::env::temp_dir().join(unique("vaxpulse-signed"));
    let store = demo_store(&root.join("store"), &["1", "2"], &[]);
    let (trusted, stranger) = (sign::generate(), sign::generate());
    let key_file = root.join("deploy.key");
    sign::write_signing_key(&key_file, &trusted).unwrap();
    let (public, key_id) = sign::public_key(&trusted);

    let mut cfg = names.store_config(&store);
    cfg.deploy.trusted_keys = vec![public];
    cfg.deploy.require_signed = true;
    create_topics(&cfg.kafka, &names, 1)
        .await
        .expect("topics created (scripts/services.sh start)");
    let db = names.database.clone();
    let v1: ModelId = Manifest::load(&store.join("demo/1")).unwrap().id();
    let v2: ModelId = Manifest::load(&store.join("demo/2")).unwrap().id();
    let (worker, stop) = start_worker(cfg.clone());
    count(
        format!("SELECT count() FROM {db}.deployment_events WHERE outcome = 'applied'"),
        1,
        "the replica to start",
    )
    .await;

    let group = cfg.kafka.group_id.clone();
    let record = |epoch: u64| Deployment {
        epoch,
        shadows: vec![v2.clone()],
        action: "deploy-shadow".into(),
        actor: "someone".into(),
        changed_at: Utc::now(),
        ..Deployment::bootstrap(v1.clone())
    };
    // Epoch 7: apart from the CLI's epoch 1 below (refused records never move the epoch).
    let unsigned = record(7);
    let mut foreign = record(7);
    foreign.signature = Some(sign::sign(&stranger, &group, &foreign));
    let mut tampered = record(7);
    tampered.signature = Some(sign::sign(&trusted, &group, &tampered));
    tampered.reason = "changed after signing".into();
    for d in [&unsigned, &foreign, &tampered] {
        control::publish(&cfg.kafka, d).await.unwrap();
    }
    count(
        format!("SELECT count() FROM {db}.deployment_events WHERE outcome = 'refused'"),
        3,
        "three refusals",
    )
    .await;
    let reasons = ch_scalar(&format!(
        "SELECT arrayStringConcat(groupArray(message), '\\n') FROM (SELECT message FROM {db}.deployment_events WHERE outcome = 'refused' ORDER BY at)"
    ))
    .await;
    for expected in ["unsigned", "does not trust", "does not match the record"] {
        assert!(reasons.contains(expected), "no `{expected}` in:\n{reasons}");
    }

    // The CLI without a key refuses to publish for replicas that trust only signed records.
    let opts = ChangeOptions {
        reason: "signed deployment".into(),
        wait_replicas: 1,
        wait_timeout: Duration::from_secs(60),
    };
    let shadow = Change::Deploy {
        model: ModelId::parse("demo@2").unwrap(),
        champion: false,
    };
    let e = change(&cfg, shadow.clone(), &opts).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("deploy.signing_key_file"),
        "{e:#}"
    );
    // With it, the record is signed, applied, and the key recorded.
    let mut signer = cfg.clone();
    signer.deploy.signing_key_file = key_file.clone();
    let o = change(&signer, shadow, &opts)
        .await
        .expect("signed change applied");
    assert_eq!(o.after.epoch, 1);
    assert_eq!(o.applied.len(), 1);
    assert_eq!(
        ch_scalar(&format!(
            "SELECT concat(any(c.key_id), ' ', any(e.key_id)) FROM {db}.deployment_changes AS c, {db}.deployment_events AS e WHERE e.outcome = 'applied' AND e.epoch = 1"
        ))
        .await,
        format!("{key_id} {key_id}")
    );
    assert!(!worker.is_finished());
    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");
    let _ = std::fs::remove_dir_all(&root);
}
