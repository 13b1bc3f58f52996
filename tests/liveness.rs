//! `/health/live` tells a wedged pipeline from a busy one, on the real broker and ClickHouse:
//! while the model stops answering (a gate the test closes) and tweets wait, the endpoint turns
//! 503 with the reason after `pipeline.wedged_after_ms`; once the model answers again the tweets
//! finish and it is 200 again. Nothing is lost.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::Utc;
use common::*;
use vaxpulse::model::{Classifier, ModelError, PaddedBatch};
use vaxpulse::synthetic::Generator;

/// Open: `classify` runs the real model; closed: it waits until opened.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.0 .0.lock().unwrap() = closed;
        self.0 .1.notify_all();
    }
    fn wait_open(&self) {
        let mut closed = self.0 .0.lock().unwrap();
        while *closed {
            closed = self.0 .1.wait(closed).unwrap();
        }
    }
}

struct Gated {
    inner: Box<dyn Classifier>,
    gate: Gate,
}

impl Classifier for Gated {
    fn labels(&self) -> &[String] {
        self.inner.labels()
    }
    fn classify(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, ModelError> {
        self.gate.wait_open();
        self.inner.classify(batch)
    }
}

fn status(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /health/live HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_that_stops_answering_fails_liveness_until_it_answers_again() {
    vaxpulse::telemetry::init_logging();
    let names = Names::fresh("live");
    let port = free_port();
    let mut cfg = names.test_config(
        "[pipeline]\nwedged_after_ms = 1500\n[monitor]\nprobe_file = \"\"\ngauges_interval_s = 0",
    );
    cfg.metrics.listen = format!("127.0.0.1:{port}");
    create_topics(&cfg.kafka, &names, 1)
        .await
        .expect("topics created (scripts/services.sh start)");
    let gate = Gate::default();
    let torch = vaxpulse::model::load::torch_factory(&cfg);
    let g2 = gate.clone();
    let factory: vaxpulse::model::load::ClassifierFactory = Arc::new(move |dir, m, files| {
        Ok(Box::new(Gated {
            inner: torch(dir, m, files)?,
            gate: g2.clone(),
        }) as Box<dyn Classifier>)
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(vaxpulse::app::run(cfg.clone(), factory, stop.clone()));
    let mut g = Generator::new(31, Utc::now(), 1);
    let db = names.database.clone();
    let classified = move |n: usize| {
        let q = format!("SELECT uniqExact(tweet_id) FROM {db}.predictions");
        async move { ch_try(&q).await.ok() == Some(n.to_string()) }
    };
    let batch = |g: &mut Generator| (0..50).map(|_| g.payload().1).collect::<Vec<_>>();
    produce_payloads(&names.input, None, &batch(&mut g))
        .await
        .unwrap();
    wait_until(
        "the first tweets classified",
        Duration::from_secs(60),
        || classified(50),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = status(port);
    assert!(
        s.as_deref().is_some_and(|s| s.starts_with("HTTP/1.0 200")),
        "idle is alive: {s:?}"
    );

    gate.set_closed(true);
    produce_payloads(&names.input, None, &batch(&mut g))
        .await
        .unwrap();
    wait_until(
        "/health/live to report the wedge",
        Duration::from_secs(30),
        || async move {
            status(port).is_some_and(|s| {
                s.starts_with("HTTP/1.0 503") && s.contains("wedged: 50 messages pending")
            })
        },
    )
    .await;

    gate.set_closed(false);
    wait_until(
        "the waiting tweets classified",
        Duration::from_secs(60),
        || classified(100),
    )
    .await;
    wait_until(
        "/health/live to recover",
        Duration::from_secs(30),
        || async move { status(port).is_some_and(|s| s.starts_with("HTTP/1.0 200")) },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");
}
