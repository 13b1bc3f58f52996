//! `vaxpulse eval` on the shipped held-out file: both versions through the real serving path,
//! McNemar on their (absent) disagreements, one `model_evaluations` row per model in ClickHouse.

mod common;

use common::*;
use vaxpulse::model::ModelId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_compares_two_versions_on_the_heldout_file_and_stores_the_rows() {
    let names = Names::fresh("eval");
    let root = std::env::temp_dir().join(unique("vaxpulse-eval-store"));
    let store = demo_store(&root, &["1", "2"], &[]);
    let mut cfg = names.test_config("");
    cfg.model.store_dir = store.clone();
    let data = repo_root().join("data/heldout_synthetic.jsonl");
    let factory = vaxpulse::model::load::torch_factory(&cfg);
    let c = cfg.clone();
    let report = tokio::task::spawn_blocking(move || {
        vaxpulse::eval::run(
            &c,
            &ModelId::parse("demo@1").unwrap(),
            Some(&ModelId::parse("demo@2").unwrap()),
            &data,
            true,
            &factory,
        )
    })
    .await
    .unwrap()
    .expect("eval runs");
    assert_eq!(report.models.len(), 2);
    let (a, b) = (&report.models[0], &report.models[1]);
    assert_eq!((a.n, b.n), (1000, 1000));
    assert_eq!(a.confusion.total(), 1000);
    // The same weights under two versions: identical predictions, nothing for McNemar to test.
    assert_eq!(a.confusion, b.confusion);
    let m = report.mcnemar.as_ref().unwrap();
    assert_eq!((m.only_first, m.only_second, m.p_value), (0, 0, 1.0));
    // Synthetic, in-distribution data (see data/README): the demo model is near perfect here.
    assert!(a.accuracy > 0.99, "accuracy {}", a.accuracy);
    assert!(report.render().contains("McNemar"));

    let sink = vaxpulse::sink::clickhouse::ClickHouseSink::new(
        &cfg.clickhouse,
        &cfg.clickhouse_password().unwrap(),
    );
    sink.apply_schema().await.expect("ClickHouse up");
    for row in report.rows() {
        sink.record(&row).await.unwrap();
    }
    let db = &names.database;
    assert_eq!(
        ch_scalar(&format!(
            "SELECT arrayStringConcat(groupArray(concat(splitByChar('#', model)[1], '/', splitByChar('#', compared_with)[1], '/', toString(n))), ',') FROM (SELECT * FROM {db}.model_evaluations ORDER BY model)"
        ))
        .await,
        "demo@1/demo@2/1000,demo@2/demo@1/1000"
    );
    let _ = std::fs::remove_dir_all(&root);
}
