//! `vaxpulse annotate serve`: the annotation page and its small JSON API (axum, loopback by
//! default). One tweet at a time from a sample ([`crate::quality::sample`]), its text and date
//! only; labels, skips, off-topic and undo go to ClickHouse `annotations` ([`store`]). Every API
//! call needs an annotator's token (`Authorization: Bearer …`, checked against the hashed
//! tokens file, [`tokens`]); a refusal says what to do and never echoes the token.

pub mod store;
pub mod tokens;

use std::sync::Arc;

use axum::extract::{Json, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::sink::clickhouse::ClickHouseSink;
use tokens::Annotators;

/// The page: plain HTML and a little JS, no build step.
pub const PAGE: &str = include_str!("page.html");

struct App {
    sink: ClickHouseSink,
    annotators: Annotators,
}

type Shared = Arc<App>;

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn failed(e: anyhow::Error) -> Response {
    tracing::warn!(error = %format!("{e:#}"), "annotation request failed");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("ClickHouse did not answer ({e:#}); try again in a moment"),
    )
}

/// The annotator of the request, or the response refusing it.
fn annotator(app: &App, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "sign in with your annotator token (ask the operator: vaxpulse annotate token NAME)",
        )));
    }
    app.annotators.who(token).map(String::from).ok_or_else(|| {
        Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "this token is not in the tokens file: check it, or ask the operator for a new one",
        ))
    })
}

#[derive(Deserialize)]
struct NextQuery {
    sample: Option<String>,
}

async fn sample_or_newest(
    app: &App,
    given: Option<String>,
) -> Result<Option<String>, Box<Response>> {
    match given.filter(|s| !s.is_empty()) {
        Some(s) => Ok(Some(s)),
        None => store::newest_sample(&app.sink)
            .await
            .map_err(|e| Box::new(failed(e))),
    }
}

async fn next(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let who = match annotator(&app, &headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let sample = match sample_or_newest(&app, q.sample).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Json(serde_json::json!({
                "annotator": who, "tweet": null,
                "message": "no sample drawn yet: run `vaxpulse annotate sample`"
            }))
            .into_response()
        }
        Err(r) => return *r,
    };
    let result = async {
        let tweet = store::next(&app.sink, &sample, &who).await?;
        let progress = store::progress(&app.sink, &sample, &who).await?;
        anyhow::Ok((tweet, progress))
    }
    .await;
    match result {
        Ok((tweet, progress)) => Json(serde_json::json!({
            "annotator": who, "tweet": tweet, "progress": progress
        }))
        .into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct LabelBody {
    sample_id: String,
    tweet_id: String,
    label: String,
}

async fn label(
    State(app): State<Shared>,
    headers: HeaderMap,
    Json(b): Json<LabelBody>,
) -> Response {
    let who = match annotator(&app, &headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    if !store::valid_label(&b.label) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "label must be against, neutral, favour, off_topic or skip",
        );
    }
    match store::in_sample(&app.sink, &b.sample_id, &b.tweet_id).await {
        Ok(true) => {}
        Ok(false) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "this tweet is not in that sample: reload the page",
            )
        }
        Err(e) => return failed(e),
    }
    let now = chrono::Utc::now();
    match store::label(&app.sink, &b.sample_id, &b.tweet_id, &who, &b.label, now).await {
        Ok(()) => {
            crate::telemetry::Annotated { label: &b.label }.emit();
            Json(serde_json::json!({ "stored": true })).into_response()
        }
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
struct UndoBody {
    sample_id: String,
    tweet_id: String,
}

async fn undo(State(app): State<Shared>, headers: HeaderMap, Json(b): Json<UndoBody>) -> Response {
    let who = match annotator(&app, &headers) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let result = async {
        let withdrawn = store::undo(&app.sink, &b.sample_id, &b.tweet_id, &who).await?;
        let tweet = store::tweet(&app.sink, &b.sample_id, &b.tweet_id).await?;
        let progress = store::progress(&app.sink, &b.sample_id, &who).await?;
        anyhow::Ok((withdrawn, tweet, progress))
    }
    .await;
    match result {
        Ok((withdrawn, tweet, progress)) => Json(serde_json::json!({
            "withdrawn": withdrawn, "tweet": tweet, "progress": progress
        }))
        .into_response(),
        Err(e) => failed(e),
    }
}

/// `annotate simulate`: an annotator that knows the synthetic generator's ground truth.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// (count, seed) of each `produce --synthetic COUNT --seed SEED` run, and their `--days`.
    pub generated: Vec<(u64, u64)>,
    pub days: u32,
    pub annotator: String,
    /// Share of labels given wrong on purpose.
    pub error_rate: f64,
    pub limit: Option<u64>,
    pub sample: Option<String>,
}

/// Labels the sample's tweets with their true opinion, one by one through the page's own
/// store functions; returns how many were labelled.
pub async fn simulate(sink: &ClickHouseSink, s: &Simulation) -> anyhow::Result<u64> {
    use rand::{Rng, SeedableRng};
    anyhow::ensure!(
        tokens::valid_name(&s.annotator),
        "annotator name {:?}: use 1 to 64 letters, digits, '.', '_' or '-'",
        s.annotator
    );
    let mut truth = std::collections::HashMap::new();
    // The generator draws ids and opinions from the seed alone, exactly as `produce` did.
    for &(count, seed) in &s.generated {
        let mut g = crate::synthetic::Generator::new(seed, chrono::Utc::now(), s.days).with_trend();
        for _ in 0..count {
            let (t, _) = g.payload();
            truth.insert(t.id, t.label);
        }
    }
    let sample = match s.sample.clone() {
        Some(x) => x,
        None => store::newest_sample(sink).await?.ok_or_else(|| {
            anyhow::anyhow!("no sample drawn yet: run `vaxpulse annotate sample`")
        })?,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xa11 ^ s.generated.len() as u64);
    let mut n = 0u64;
    while s.limit.is_none_or(|l| n < l) {
        let Some(t) = store::next(sink, &sample, &s.annotator).await? else {
            break;
        };
        let label = match truth.get(&t.tweet_id) {
            Some(l) if rng.random::<f64>() < s.error_rate => {
                let others: Vec<&str> = crate::quality::report::CLASSES
                    .iter()
                    .copied()
                    .filter(|c| c != l)
                    .collect();
                others[rng.random_range(0..others.len())].to_string()
            }
            Some(l) => l.clone(),
            // Not one of the generator's tweets: the simulated annotator cannot tell.
            None => crate::quality::report::SKIP.to_string(),
        };
        store::label(
            sink,
            &sample,
            &t.tweet_id,
            &s.annotator,
            &label,
            chrono::Utc::now(),
        )
        .await?;
        n += 1;
    }
    Ok(n)
}

/// The router of the page and its API.
pub fn router(sink: ClickHouseSink, annotators: Annotators) -> axum::Router {
    let app = Arc::new(App { sink, annotators });
    axum::Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [("content-security-policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'")],
                    Html(PAGE),
                )
            }),
        )
        .route("/api/next", get(next))
        .route("/api/label", post(label))
        .route("/api/undo", post(undo))
        .with_state(app)
}

/// Serves the page on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sink: ClickHouseSink,
    annotators: Annotators,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "annotation page listening");
    axum::serve(listener, router(sink, annotators))
        .with_graceful_shutdown(shutdown)
        .await
}
