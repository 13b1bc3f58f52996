//! `vaxpulse validate` against the real local services: a good deployment passes and prints its
//! effective configuration with secrets hidden; each kind of problem stops it with a non-zero
//! exit and a message naming what is wrong.

mod common;

use std::process::{Command, Output};

use common::*;

fn validate(env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaxpulse"))
        .arg("validate")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "LD_LIBRARY_PATH",
            std::env::var("LD_LIBRARY_PATH").unwrap_or_default(),
        )
        .envs(env.iter().cloned())
        .output()
        .expect("the vaxpulse binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut e: Vec<_> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    e.push((key.to_string(), value.to_string()));
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_passes_a_good_deployment_and_names_each_problem() {
    let names = Names::fresh("validate");
    let cfg = names.test_config("");
    create_topics(&cfg.kafka, &names, 1)
        .await
        .expect("topics created");
    let env = with(&names.test_env(), "VAXPULSE_KAFKA_SASL_PASSWORD", "hunter2");
    // Not used by the local broker, only to show it is hidden; librdkafka ignores it without SASL.
    let good = validate(&env);
    let out = text(&good);
    assert!(good.status.success(), "{out}");
    assert!(
        out.contains("valid: this configuration can start a worker"),
        "{out}"
    );
    assert!(
        out.contains("sasl_password = \"***\"") && !out.contains("hunter2"),
        "{out}"
    );
    assert!(
        out.contains("demo@1"),
        "the model was loaded and run: {out}"
    );

    let cases = [
        ("VAXPULSE_MODEL_DIR", "/nonexistent/model", "model"),
        (
            "VAXPULSE_KAFKA_INPUT_TOPIC",
            "no-such-topic-here",
            "no-such-topic-here",
        ),
        (
            "VAXPULSE_CLICKHOUSE_URL",
            "http://127.0.0.1:1",
            "ClickHouse",
        ),
        (
            "VAXPULSE_BATCH_MAX_WAIT_MS",
            "soon",
            "VAXPULSE_BATCH_MAX_WAIT_MS",
        ),
    ];
    for (key, value, named) in cases {
        let bad = validate(&with(&env, key, value));
        let out = text(&bad);
        assert!(!bad.status.success(), "{key}={value} must fail: {out}");
        assert!(
            out.contains(named),
            "{key}={value}: the message names {named}: {out}"
        );
    }
}
