//! `vaxpulse quality`: live quality per version from the annotations. Reads the samples drawn
//! in the window, their labels and the predictions of the labelled tweets only (by hour and
//! id, so the cost follows the labels, not the stream), and estimates for every model identity
//! that scored them: weighted accuracy and macro-F1 with intervals, per-class recall, the
//! weighted confusion matrix, each version against the champion on the same tweets (McNemar,
//! the difference with its interval, labels still needed), the off-topic share (the relevance
//! filter's precision) and inter-annotator agreement. Gold is a tweet's first label; a second
//! annotator's label only feeds the agreement.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::QualityConfig;
use crate::stats::weighted::{
    accuracy_and_f1, cohen_kappa, compare, labels_needed, Comparison, Interval, Labelled, Paired,
    WeightedConfusion,
};
use crate::output::Table;
use crate::sink::clickhouse::schema::{ANNOTATIONS, ANNOTATION_SAMPLES, PREDICTIONS};
use crate::sink::clickhouse::ClickHouseSink;

/// The classes a label may name; `off_topic` is outside the classifier's classes.
pub const CLASSES: [&str; 3] = ["against", "neutral", "favour"];
pub const OFF_TOPIC: &str = "off_topic";
pub const SKIP: &str = "skip";

/// One annotated tweet: its weight and gold label, and each identity's prediction.
#[derive(Debug, Clone)]
pub struct Annotated {
    pub weight: f64,
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
        out
    }
}

/// Builds the report from annotated tweets (the pure part; [`quality`] loads them).
pub fn estimate(
    items: &[Annotated],
    roles: &HashMap<String, String>,
    champion: Option<&str>,
    q: &QualityConfig,
) -> Vec<VersionQuality> {
    let classes: Vec<String> = CLASSES.map(String::from).to_vec();
    let mut models: Vec<&String> = items.iter().flat_map(|i| i.predicted.keys()).collect();
    models.sort();
    models.dedup();
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
                s.inclusion_prob AS inclusion_prob
         FROM (SELECT sample_id, tweet_id, annotator, label, annotated_at
               FROM {db}.{ANNOTATIONS} FINAL
               WHERE sample_id GLOBAL IN ({samples}) AND label != '{SKIP}') AS a
         INNER JOIN (SELECT sample_id, tweet_id, inclusion_prob FROM {db}.{ANNOTATION_SAMPLES} FINAL) AS s
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
    let champion = champion.map(String::from).or_else(|| {
        let mut c: Vec<&String> = roles
            .iter()
            .filter(|(_, r)| r.as_str() == "champion")
            .map(|(m, _)| m)
            .collect();
        c.sort();
        c.first().map(|m| (*m).clone())
    });
    Ok(report(items, &roles, champion, counts, since, q))
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
    }
}
