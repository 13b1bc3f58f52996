//! `vaxpulse quality`: live quality per version from the annotations. Reads the samples drawn
//! in the window, their labels and the predictions of the labelled tweets only (by hour and
//! id, so the cost follows the labels, not the stream), and estimates for every model identity
//! that scored them: weighted accuracy and macro-F1 with intervals, per-class recall, the
//! weighted confusion matrix, each version against the champion on the same tweets (McNemar,
//! the difference with its interval, labels still needed), the off-topic share (the relevance
//! filter's precision) and inter-annotator agreement; with [`quality_with_estimates`] also a
//! temperature per identity (ECE before and after) and the label-free accuracy estimate (CBPE)
//! per day next to the labels' own. Gold is a tweet's first label; a second annotator's label
//! only feeds the agreement.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::QualityConfig;
use crate::output::Table;
use crate::sink::clickhouse::schema::{ANNOTATIONS, ANNOTATION_SAMPLES, CALIBRATIONS, PREDICTIONS};
use crate::sink::clickhouse::ClickHouseSink;
use crate::stats::calibration::{fit_temperature, weighted_ece, Scored};
use crate::stats::weighted::{
    accuracy_and_f1, cohen_kappa, compare, labels_needed, Comparison, Interval, Labelled, Paired,
    WeightedConfusion,
};

/// The classes a label may name; `off_topic` is outside the classifier's classes.
pub const CLASSES: [&str; 3] = ["against", "neutral", "favour"];
pub const OFF_TOPIC: &str = "off_topic";
pub const SKIP: &str = "skip";

/// One annotated tweet: its weight and gold label, and each identity's prediction.
#[derive(Debug, Clone)]
pub struct Annotated {
    pub weight: f64,
    /// Start of the tweet's hour (Unix seconds).
    pub hour: u32,
    /// Index in [`CLASSES`], or `None` for off-topic.
    pub gold: Option<usize>,
    /// identity → (predicted class, the probabilities in [`CLASSES`] order).
    pub predicted: BTreeMap<String, (usize, Vec<f64>)>,
}

/// The figures of one identity.
#[derive(Debug, Clone, Serialize)]
pub struct VersionQuality {
    /// `NAME@VERSION#HASH`.
    pub model: String,
    /// `champion` or `shadow`: its role in its newest prediction of these tweets.
    pub role: String,
    pub labels: u64,
    pub accuracy: Interval,
    pub macro_f1: Interval,
    pub recall: BTreeMap<String, f64>,
    pub confusion: WeightedConfusion,
    /// Against the champion on the tweets both scored (absent for the champion itself).
    pub versus_champion: Option<Versus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    #[serde(flatten)]
    pub comparison: Comparison,
    /// Paired labels a decision at `quality.significance` / `quality.power` needs in all, at
    /// the difference seen (`None`: no difference seen).
    pub labels_needed: Option<u64>,
}

/// What `quality` found.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub since: DateTime<Utc>,
    pub samples: u64,
    pub sampled_tweets: u64,
    pub annotated: u64,
    pub champion: Option<String>,
    pub versions: Vec<VersionQuality>,
    /// Estimated share of the stream annotated off-topic (1 − the relevance filter's
    /// precision).
    pub off_topic_share: Interval,
    /// Cohen's kappa of the first two annotators on the tweets two labelled, and how many.
    pub annotator_kappa: Option<f64>,
    pub doubly_annotated: u64,
    pub level: f64,
    /// Temperature per identity fitted on these labels, and the ECE before and after.
    pub calibration: Vec<Calibration>,
    /// Label-free accuracy estimates per day × identity, next to the labels' own.
    pub cbpe: Vec<DailyEstimate>,
}

/// Temperature scaling of one identity on the annotations.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub model: String,
    pub labels: u64,
    pub temperature: f64,
    /// The temperature stored in `calibrations` (what CBPE uses), 1 when none.
    pub stored_temperature: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// One day of one identity: CBPE's expected accuracy over all its predictions of the day, and
/// the weighted accuracy of the day's annotated tweets.
#[derive(Debug, Clone, Serialize)]
pub struct DailyEstimate {
    pub day: String,
    pub model: String,
    pub predictions: u64,
    pub expected_accuracy: f64,
    pub labels: u64,
    pub realized_accuracy: Option<Interval>,
}

impl QualityReport {
    pub fn version(&self, model: &str) -> Option<&VersionQuality> {
        self.versions.iter().find(|v| v.model == model)
    }

    pub fn render(&self) -> String {
        let pct = |i: &Interval| {
            if i.low.is_nan() {
                format!("{:.1} %", 100.0 * i.estimate)
            } else {
                format!(
                    "{:.1} % [{:.1}, {:.1}]",
                    100.0 * i.estimate,
                    100.0 * i.low,
                    100.0 * i.high
                )
            }
        };
        let mut out = format!(
            "live quality since {}: {} samples, {} tweets sampled, {} annotated; estimates weighted by 1/inclusion probability, {:.0} % intervals\n\n",
            self.since.format("%Y-%m-%d %H:%M"),
            self.samples,
            self.sampled_tweets,
            self.annotated,
            100.0 * self.level
        );
        let mut t = Table::new(&[
            "version",
            "role",
            "labels",
            "accuracy",
            "macro-F1",
            "recall against/neutral/favour",
            "vs champion",
            "McNemar p",
            "labels needed",
        ]);
        for v in &self.versions {
            let (diff, p, need) = match &v.versus_champion {
                Some(s) => (
                    format!(
                        "{:+.1} pts [{:+.1}, {:+.1}] on {}",
                        100.0 * s.comparison.difference.estimate,
                        100.0 * s.comparison.difference.low,
                        100.0 * s.comparison.difference.high,
                        s.comparison.paired
                    ),
                    format!("{:.3}", s.comparison.mcnemar.p_value),
                    s.labels_needed
                        .map_or("no difference seen".into(), |n| n.to_string()),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            t.row(vec![
                v.model.clone(),
                v.role.clone(),
                v.labels.to_string(),
                pct(&v.accuracy),
                pct(&v.macro_f1),
                CLASSES
                    .iter()
                    .map(|c| format!("{:.2}", v.recall.get(*c).copied().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(" / "),
                diff,
                p,
                need,
            ]);
        }
        out.push_str(&t.render());
        out.push_str(&format!(
            "\noff-topic share (relevance filter misses): {}\n",
            pct(&self.off_topic_share)
        ));
        match self.annotator_kappa {
            Some(k) => out.push_str(&format!(
                "inter-annotator agreement: Cohen's kappa {k:.3} on {} doubly annotated tweets\n",
                self.doubly_annotated
            )),
            None => out.push_str("inter-annotator agreement: no tweet labelled twice yet\n"),
        }
        if !self.calibration.is_empty() {
            let mut t = Table::new(&[
                "version",
                "labels",
                "temperature (fitted)",
                "stored",
                "ECE before",
                "ECE after",
            ]);
            for c in &self.calibration {
                t.row(vec![
                    c.model.clone(),
                    c.labels.to_string(),
                    format!("{:.3}", c.temperature),
                    format!("{:.3}", c.stored_temperature),
                    format!("{:.4}", c.ece_before),
                    format!("{:.4}", c.ece_after),
                ]);
            }
            out.push_str("\n### calibration (temperature scaling on the annotations; `quality --calibrate` stores it)\n\n");
            out.push_str(&t.render());
        }
        if !self.cbpe.is_empty() {
            let mut t = Table::new(&[
                "day",
                "version",
                "predictions",
                "expected accuracy (CBPE)",
                "labels",
                "annotated accuracy",
            ]);
            for d in &self.cbpe {
                t.row(vec![
                    d.day.clone(),
                    d.model.clone(),
                    d.predictions.to_string(),
                    format!("{:.1} %", 100.0 * d.expected_accuracy),
                    d.labels.to_string(),
                    d.realized_accuracy.map_or("-".into(), |i| {
                        format!(
                            "{:.1} % [{:.1}, {:.1}]",
                            100.0 * i.estimate,
                            100.0 * i.low,
                            100.0 * i.high
                        )
                    }),
                ]);
            }
            out.push_str(
                "\n### label-free estimate per day (calibrated confidence) vs the labels\n\n",
            );
            out.push_str(&t.render());
        }
        out
    }
}

/// Every model identity that scored any of `items`, sorted.
fn identities(items: &[Annotated]) -> Vec<&String> {
    let mut models: Vec<&String> = items.iter().flat_map(|i| i.predicted.keys()).collect();
    models.sort();
    models.dedup();
    models
}

/// Builds the report from annotated tweets (the pure part; [`quality`] loads them).
pub fn estimate(
    items: &[Annotated],
    roles: &HashMap<String, String>,
    champion: Option<&str>,
    q: &QualityConfig,
) -> Vec<VersionQuality> {
    let classes: Vec<String> = CLASSES.map(String::from).to_vec();
    let models = identities(items);
    let level = q.confidence_level;
    let labelled = |m: &str| -> Vec<Labelled> {
        items
            .iter()
            .filter_map(|i| {
                let gold = i.gold?;
                let (predicted, _) = i.predicted.get(m)?;
                Some(Labelled {
                    weight: i.weight,
                    gold,
                    predicted: *predicted,
                })
            })
            .collect()
    };
    models
        .into_iter()
        .enumerate()
        .map(|(n, m)| {
            let own = labelled(m);
            let (accuracy, macro_f1) = accuracy_and_f1(&classes, &own, level, 17 + n as u64);
            let confusion = WeightedConfusion::new(&classes, &own);
            let recall = classes.iter().cloned().zip(confusion.recall()).collect();
            let versus_champion = champion.filter(|c| *c != m.as_str()).map(|c| {
                let paired: Vec<Paired> = items
                    .iter()
                    .filter_map(|i| {
                        let gold = i.gold?;
                        let (mine, _) = i.predicted.get(m)?;
                        let (theirs, _) = i.predicted.get(c)?;
                        Some(Paired {
                            weight: i.weight,
                            first_right: *mine == gold,
                            second_right: *theirs == gold,
                        })
                    })
                    .collect();
                let comparison = compare(&paired, level, 29 + n as u64);
                let labels_needed = labels_needed(
                    comparison.mcnemar.only_first,
                    comparison.mcnemar.only_second,
                    comparison.paired,
                    q.significance,
                    q.power,
                );
                Versus {
                    comparison,
                    labels_needed,
                }
            });
            VersionQuality {
                model: m.clone(),
                role: roles.get(m).cloned().unwrap_or_default(),
                labels: own.len() as u64,
                accuracy,
                macro_f1,
                recall,
                confusion,
                versus_champion,
            }
        })
        .collect()
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct LabelLine {
    sample_id: String,
    tweet_id: String,
    annotator: String,
    label: String,
    inclusion_prob: f64,
    hour: u32,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct PredictionLine {
    tweet_id: String,
    model: String,
    role: String,
    label: String,
    scores: Vec<(String, f32)>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Counts {
    samples: u64,
    tweets: u64,
}

/// The annotated tweets of the samples drawn since `since` (optionally one sample), with the
/// predictions of every identity on them, and each identity's newest role.
pub async fn load(
    sink: &ClickHouseSink,
    since: DateTime<Utc>,
    sample: Option<&str>,
) -> anyhow::Result<(Vec<Annotated>, HashMap<String, String>, SampleCounts)> {
    let db = sink.database();
    let samples = format!(
        "SELECT sample_id FROM {db}.{ANNOTATION_SAMPLES} WHERE drawn_at >= fromUnixTimestamp64Milli(?) AND (? = '' OR sample_id = ?)"
    );
    // `samples` appears once or twice in each query: its three arguments each time.
    let bind = |sql: &str| {
        let (t, s) = (since.timestamp_millis(), sample.unwrap_or(""));
        let mut q = sink.client().query(sql);
        for _ in 0..sql.matches(samples.as_str()).count() {
            q = q.bind(t).bind(s).bind(s);
        }
        q
    };
    let counts = bind(&format!(
        "SELECT uniqExact(sample_id) AS samples, uniqExact(sample_id, tweet_id) AS tweets
         FROM {db}.{ANNOTATION_SAMPLES} WHERE sample_id GLOBAL IN ({samples})"
    ))
    .fetch_one::<Counts>()
    .await?;
    // Each tweet's labels in time order, with the probability its sample drew it with.
    let labels = bind(&format!(
        "SELECT a.sample_id AS sample_id, a.tweet_id AS tweet_id, a.annotator AS annotator, a.label AS label,
                s.inclusion_prob AS inclusion_prob, toUnixTimestamp(s.hour) AS hour
         FROM (SELECT sample_id, tweet_id, annotator, label, annotated_at
               FROM {db}.{ANNOTATIONS} FINAL
               WHERE sample_id GLOBAL IN ({samples}) AND label != '{SKIP}') AS a
         INNER JOIN (SELECT sample_id, tweet_id, inclusion_prob, hour FROM {db}.{ANNOTATION_SAMPLES} FINAL) AS s
         USING (sample_id, tweet_id)
         ORDER BY a.annotated_at, a.annotator"
    ))
    .fetch_all::<LabelLine>()
    .await?;
    // Predictions of the labelled tweets only: their hours prune the key, their ids the rest.
    let preds = bind(&format!(
        "SELECT tweet_id, concat(model_version, '#', model_hash) AS model, role, label,
                arrayZip(CAST(mapKeys(scores), 'Array(String)'), mapValues(scores)) AS scores
         FROM {db}.{PREDICTIONS} FINAL
         WHERE toStartOfHour(created_at) GLOBAL IN (
                   SELECT DISTINCT hour FROM {db}.{ANNOTATION_SAMPLES}
                   WHERE sample_id GLOBAL IN ({samples}))
           AND tweet_id GLOBAL IN (
                   SELECT tweet_id FROM {db}.{ANNOTATIONS} WHERE sample_id GLOBAL IN ({samples}))
         ORDER BY classified_at"
    ))
    .fetch_all::<PredictionLine>()
    .await?;
    let mut by_tweet: HashMap<String, BTreeMap<String, (usize, Vec<f64>)>> = HashMap::new();
    let mut roles = HashMap::new();
    for p in preds {
        let Some(class) = CLASSES.iter().position(|c| *c == p.label) else {
            continue;
        };
        let probs = CLASSES
            .iter()
            .map(|c| {
                p.scores
                    .iter()
                    .find(|(l, _)| l == c)
                    .map_or(0.0, |(_, v)| f64::from(*v))
            })
            .collect();
        roles.insert(p.model.clone(), p.role);
        by_tweet
            .entry(p.tweet_id)
            .or_default()
            .entry(p.model)
            .or_insert((class, probs));
    }
    // Gold: the first label of each (sample, tweet); the first two annotators' labels feed
    // the agreement.
    let mut seen: HashMap<(String, String), (usize, String, String)> = HashMap::new();
    let mut items = Vec::new();
    let mut pairs = Vec::new();
    let class_or_off = |l: &str| {
        CLASSES
            .iter()
            .position(|c| *c == l)
            .or((l == OFF_TOPIC).then_some(CLASSES.len()))
    };
    for l in labels {
        let Some(code) = class_or_off(&l.label) else {
            continue;
        };
        let key = (l.sample_id.clone(), l.tweet_id.clone());
        match seen.get_mut(&key) {
            None => {
                seen.insert(key, (code, l.annotator.clone(), String::new()));
                items.push(Annotated {
                    weight: 1.0 / l.inclusion_prob.max(f64::MIN_POSITIVE),
                    hour: l.hour,
                    gold: (code < CLASSES.len()).then_some(code),
                    predicted: by_tweet.get(&l.tweet_id).cloned().unwrap_or_default(),
                });
            }
            Some((first, first_annotator, second)) => {
                if second.is_empty() && *first_annotator != l.annotator {
                    *second = l.annotator.clone();
                    pairs.push((*first, code));
                }
            }
        }
    }
    Ok((
        items,
        roles,
        SampleCounts {
            samples: counts.samples,
            sampled_tweets: counts.tweets,
            pairs,
        },
    ))
}

/// Counts that come with the loaded items.
#[derive(Debug, Clone, Default)]
pub struct SampleCounts {
    pub samples: u64,
    pub sampled_tweets: u64,
    /// (first, second) annotator's class code (3 = off-topic) on doubly annotated tweets.
    pub pairs: Vec<(usize, usize)>,
}

/// `vaxpulse quality`: the report over the samples drawn since `since`. The champion is
/// `champion` when given, else the identity whose newest prediction was a champion one.
pub async fn quality(
    sink: &ClickHouseSink,
    q: &QualityConfig,
    since: DateTime<Utc>,
    sample: Option<&str>,
    champion: Option<&str>,
) -> anyhow::Result<QualityReport> {
    let (items, roles, counts) = load(sink, since, sample).await?;
    let champion = champion
        .map(String::from)
        .or_else(|| newest_champion(&roles));
    Ok(report(items, &roles, champion, counts, since, q))
}

/// [`quality`] with calibration (a temperature per identity fitted on the labels, stored in
/// `calibrations` when `store`) and CBPE per day over the days the samples cover: what the
/// `quality` command prints.
pub async fn quality_with_estimates(
    sink: &ClickHouseSink,
    q: &QualityConfig,
    since: DateTime<Utc>,
    sample: Option<&str>,
    champion: Option<&str>,
    store: bool,
) -> anyhow::Result<QualityReport> {
    let (items, roles, counts) = load(sink, since, sample).await?;
    let champion = champion
        .map(String::from)
        .or_else(|| newest_champion(&roles));
    let stored = stored_temperatures(sink).await?;
    let mut calibration = calibrate(&items);
    for c in &mut calibration {
        c.stored_temperature = stored.get(&c.model).copied().unwrap_or(1.0);
    }
    if store {
        for c in &mut calibration {
            sink.record(&crate::sink::clickhouse::schema::CalibrationRow {
                fitted_at: Utc::now(),
                model: c.model.clone(),
                temperature: c.temperature,
                source: "annotations".into(),
                n: c.labels,
                ece_before: c.ece_before,
                ece_after: c.ece_after,
            })
            .await?;
            c.stored_temperature = c.temperature;
        }
    }
    let temperatures: HashMap<String, f64> = calibration
        .iter()
        .map(|c| (c.model.clone(), c.stored_temperature))
        .collect();
    let days = items.iter().map(|i| i.hour - i.hour % 86_400);
    let span = days.clone().min().zip(days.max());
    let expected = match span {
        Some((first, last)) => expected_by_day(sink, first, last + 86_400, &temperatures).await?,
        None => Vec::new(),
    };
    let cbpe = daily(&items, expected, q);
    let mut r = report(items, &roles, champion, counts, since, q);
    r.calibration = calibration;
    r.cbpe = cbpe;
    Ok(r)
}

fn newest_champion(roles: &HashMap<String, String>) -> Option<String> {
    let mut c: Vec<&String> = roles
        .iter()
        .filter(|(_, r)| r.as_str() == "champion")
        .map(|(m, _)| m)
        .collect();
    c.sort();
    c.first().map(|m| (*m).clone())
}

/// The newest stored temperature of each identity.
pub async fn stored_temperatures(sink: &ClickHouseSink) -> anyhow::Result<HashMap<String, f64>> {
    let db = sink.database();
    let rows = sink
        .client()
        .query(&format!(
            "SELECT model, argMax(temperature, fitted_at) FROM {db}.{CALIBRATIONS} GROUP BY model"
        ))
        .fetch_all::<(String, f64)>()
        .await?;
    Ok(rows.into_iter().collect())
}

/// Temperature, ECE before and after, per identity on the labelled tweets (pure).
pub fn calibrate(items: &[Annotated]) -> Vec<Calibration> {
    let models = identities(items);
    models
        .into_iter()
        .map(|m| {
            let scored: Vec<Scored> = items
                .iter()
                .filter_map(|i| {
                    let gold = i.gold?;
                    let (_, probs) = i.predicted.get(m)?;
                    Some(Scored {
                        weight: i.weight,
                        probs: probs.clone(),
                        gold,
                    })
                })
                .collect();
            let t = fit_temperature(&scored);
            Calibration {
                model: m.clone(),
                labels: scored.len() as u64,
                temperature: t,
                stored_temperature: 1.0,
                ece_before: weighted_ece(&scored, 1.0, 10),
                ece_after: weighted_ece(&scored, t, 10),
            }
        })
        .collect()
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ExpectedLine {
    day: u32,
    model: String,
    predictions: u64,
    expected: f64,
}

/// CBPE per day × identity over `[from, to)` (Unix seconds, whole days): the mean of each
/// prediction's top probability after its identity's temperature, computed in ClickHouse over
/// the days' predictions (pruned by the hour in the key).
async fn expected_by_day(
    sink: &ClickHouseSink,
    from: u32,
    to: u32,
    temperatures: &HashMap<String, f64>,
) -> anyhow::Result<Vec<ExpectedLine>> {
    let db = sink.database();
    let (models, temps): (Vec<String>, Vec<f64>) =
        temperatures.iter().map(|(m, t)| (m.clone(), *t)).unzip();
    let rows = sink
        .client()
        .query(&format!(
            "SELECT toUnixTimestamp(toStartOfDay(hour)) AS day, model, count() AS predictions,
                    avg(1 / arraySum(arrayMap(p -> exp((log(greatest(p, 1e-12)) - log(greatest(arrayMax(v), 1e-12))) / t), v))) AS expected
             FROM (SELECT toStartOfHour(created_at) AS hour, concat(model_version, '#', model_hash) AS model,
                          CAST(mapValues(scores), 'Array(Float64)') AS v,
                          transform(model, ?, ?, 1.0) AS t
                   FROM {db}.{PREDICTIONS} FINAL
                   WHERE toStartOfHour(created_at) >= toDateTime(?, 'UTC')
                     AND toStartOfHour(created_at) < toDateTime(?, 'UTC'))
             GROUP BY day, model ORDER BY day, model"
        ))
        .bind(models)
        .bind(temps)
        .bind(from)
        .bind(to)
        .fetch_all::<ExpectedLine>()
        .await?;
    Ok(rows)
}

/// Joins the label-free estimates with each day's weighted accuracy on the labels (pure).
fn daily(
    items: &[Annotated],
    expected: Vec<ExpectedLine>,
    q: &QualityConfig,
) -> Vec<DailyEstimate> {
    let classes: Vec<String> = CLASSES.map(String::from).to_vec();
    expected
        .into_iter()
        .enumerate()
        .map(|(n, e)| {
            let own: Vec<Labelled> = items
                .iter()
                .filter(|i| i.hour - i.hour % 86_400 == e.day)
                .filter_map(|i| {
                    let (predicted, _) = i.predicted.get(&e.model)?;
                    Some(Labelled {
                        weight: i.weight,
                        gold: i.gold?,
                        predicted: *predicted,
                    })
                })
                .collect();
            let realized = (!own.is_empty())
                .then(|| accuracy_and_f1(&classes, &own, q.confidence_level, 101 + n as u64).0);
            DailyEstimate {
                day: DateTime::<Utc>::from_timestamp(i64::from(e.day), 0)
                    .map_or_else(String::new, |d| d.format("%Y-%m-%d").to_string()),
                model: e.model,
                predictions: e.predictions,
                expected_accuracy: e.expected,
                labels: own.len() as u64,
                realized_accuracy: realized,
            }
        })
        .collect()
}

/// The report of loaded items (pure).
pub fn report(
    items: Vec<Annotated>,
    roles: &HashMap<String, String>,
    champion: Option<String>,
    counts: SampleCounts,
    since: DateTime<Utc>,
    q: &QualityConfig,
) -> QualityReport {
    let versions = estimate(&items, roles, champion.as_deref(), q);
    // Off-topic share as an accuracy: "right" = off-topic, over every labelled tweet.
    let off: Vec<Labelled> = items
        .iter()
        .map(|i| Labelled {
            weight: i.weight,
            gold: usize::from(i.gold.is_none()),
            predicted: 1,
        })
        .collect();
    let (off_topic_share, _) = accuracy_and_f1(
        &["on".to_string(), "off".to_string()],
        &off,
        q.confidence_level,
        5,
    );
    QualityReport {
        since,
        samples: counts.samples,
        sampled_tweets: counts.sampled_tweets,
        annotated: items.len() as u64,
        champion,
        versions,
        off_topic_share,
        annotator_kappa: cohen_kappa(CLASSES.len() + 1, &counts.pairs),
        doubly_annotated: counts.pairs.len() as u64,
        level: q.confidence_level,
        calibration: Vec::new(),
        cbpe: Vec::new(),
    }
}
