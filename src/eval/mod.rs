//! `vaxpulse eval`: a model version (or two) on labelled tweets, through the worker's own
//! tokenizer pool, batcher and model thread (`app::start_inference`), so the figures are those of
//! the serving path. Guarantees: every readable item is scored exactly once; an unknown label is
//! an error naming its line; unreadable lines are counted and skipped (or, `--strict`, an
//! error); an empty set is an error.

pub use crate::stats::metrics;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::app::{start_inference, Active};
use crate::batch::offsets::OffsetTracker;
use crate::config::Config;
use crate::deploy::store::{load_checked, resolve, version_dir, Pinned};
use crate::deploy::Deployment;
use crate::model::load::ClassifierFactory;
use crate::model::{argmax, ModelId};
use crate::output::Table;
use crate::stats::calibration::{fit_temperature, weighted_ece, Scored};
use crate::tweet::{decode, DecodeRules, Decoded, Tweet};
use crate::work::Work;
use metrics::{expected_calibration_error, ClassScores, Confusion, McNemar};

/// One labelled item.
#[derive(Debug, Clone)]
pub struct Item {
    pub line: usize,
    pub text: String,
    pub label: String,
}

/// A labelled file, read.
#[derive(Debug)]
pub struct Dataset {
    pub path: PathBuf,
    pub sha256: String,
    pub items: Vec<Item>,
    /// (line, why) of the lines skipped as unreadable.
    pub skipped: Vec<(usize, String)>,
}

/// Longest line `eval` reads: a labelled tweet payload is a few KiB in any shape.
pub const LINE_MAX_BYTES: usize = 1 << 20;
/// Most bytes read from one file after decompression (a gzip bomb stops here, not in memory).
pub const FILE_MAX_BYTES: u64 = 2 << 30;

/// Reads `path` (JSONL, `.gz` too): each line an object with `"label"` and either `"text"` or a
/// tweet payload in any shape the worker decodes. Lines over [`LINE_MAX_BYTES`] and files over
/// [`FILE_MAX_BYTES`] decompressed are refused with their line number.
pub fn read_dataset(path: &Path, labels: &[String], strict: bool) -> anyhow::Result<Dataset> {
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .read_to_end(&mut raw)?;
    let sha256 = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&raw))
    };
    let mut reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(
            flate2::read::GzDecoder::new(raw.as_slice()).take(FILE_MAX_BYTES + 1),
        ))
    } else {
        Box::new(BufReader::new(raw.as_slice()))
    };
    let rules = DecodeRules {
        langs: Vec::new(),
        max_message_bytes: usize::MAX,
        keywords: None,
    };
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let (mut n, mut total, mut buf) = (0usize, 0u64, Vec::new());
    loop {
        n += 1;
        buf.clear();
        let got = (&mut reader)
            .take(LINE_MAX_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}: cannot read line {n}", path.display()))?;
        if got == 0 {
            break;
        }
        total += got as u64;
        anyhow::ensure!(
            total <= FILE_MAX_BYTES,
            "{}: more than {} GiB once decompressed (at line {n}); refused (split the file, or check that it is what you think)",
            path.display(),
            FILE_MAX_BYTES >> 30
        );
        anyhow::ensure!(
            buf.len() <= LINE_MAX_BYTES || buf.ends_with(b"\n"),
            "{} line {n}: longer than {} MiB; refused (one labelled tweet per line)",
            path.display(),
            LINE_MAX_BYTES >> 20
        );
        let Ok(line) = std::str::from_utf8(&buf) else {
            if strict {
                anyhow::bail!("{} line {n}: not UTF-8 (--strict)", path.display());
            }
            skipped.push((n, "not UTF-8".into()));
            continue;
        };
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, &rules) {
            Ok((text, label)) => {
                anyhow::ensure!(
                    labels.contains(&label),
                    "{} line {n}: unknown label `{label}` (the model's labels: {})",
                    path.display(),
                    labels.join(", ")
                );
                items.push(Item {
                    line: n,
                    text,
                    label,
                });
            }
            Err(why) if strict => {
                anyhow::bail!("{} line {n}: {why} (--strict)", path.display())
            }
            Err(why) => skipped.push((n, why)),
        }
    }
    anyhow::ensure!(
        !items.is_empty(),
        "{}: no labelled item to evaluate ({} lines skipped as unreadable)",
        path.display(),
        skipped.len()
    );
    Ok(Dataset {
        path: path.to_path_buf(),
        sha256,
        items,
        skipped,
    })
}

fn parse_line(line: &str, rules: &DecodeRules) -> Result<(String, String), String> {
    let mut v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object_mut().ok_or("not a JSON object")?;
    let label = match obj.remove("label") {
        Some(serde_json::Value::String(l)) => l,
        _ => return Err("no string `label`".into()),
    };
    let text = match obj.get("text") {
        Some(serde_json::Value::String(t))
            if !obj.contains_key("id") && !obj.contains_key("id_str") =>
        {
            t.clone()
        }
        _ => match decode(
            &serde_json::to_vec(&v).unwrap_or_default(),
            rules,
            Utc::now(),
        ) {
            Decoded::Tweet(t) => t.text,
            Decoded::Skip(r) => return Err(format!("not a tweet ({r:?})")),
            Decoded::Delete(_) => return Err("a delete notice, not a tweet".into()),
            Decoded::Reject { reason, detail } => return Err(format!("{reason:?}: {detail}")),
        },
    };
    if text.trim().is_empty() {
        return Err("empty text".into());
    }
    Ok((text, label))
}

/// One model's results on the items.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEval {
    pub model: String,
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub ece: f64,
    /// Temperature fitted on these items (temperature scaling), and the ECE after it.
    pub temperature: f64,
    pub ece_calibrated: f64,
    pub per_class: Vec<ClassScores>,
    pub confusion: Confusion,
    pub seconds: f64,
    #[serde(skip)]
    correct: Vec<bool>,
}

/// What `vaxpulse eval` prints and stores.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub dataset: PathBuf,
    pub dataset_sha256: String,
    pub skipped_lines: usize,
    pub evaluated_at: DateTime<Utc>,
    pub models: Vec<ModelEval>,
    pub mcnemar: Option<McNemar>,
}

/// Loads `resolved` (an identity with its weights hash) from the store, checked like a
/// deployment, and scores every item through the worker's inference stages.
fn evaluate(
    cfg: &Config,
    resolved: &ModelId,
    data: &Dataset,
    factory: &ClassifierFactory,
) -> anyhow::Result<ModelEval> {
    let dir = version_dir(&cfg.model.store_dir, resolved);
    let pinned = Pinned {
        id: resolved,
        manifest_sha256: "",
    };
    let champion = Arc::new(load_checked(cfg, &dir, Some(pinned), factory)?);
    let labels = champion.labels.clone();
    let active = Active {
        deployment: Deployment::bootstrap(resolved.clone()),
        champion,
        shadows: Vec::new(),
    };
    let started = Instant::now();
    let mut inf = start_inference(cfg, active, factory.clone(), None, Default::default());
    drop(inf.deployments);
    let tracker = OffsetTracker::new();
    let input = inf.input;
    let items = data.items.clone();
    let acks: Vec<_> = (0..items.len())
        .map(|i| tracker.track(0, i as i64))
        .collect();
    let feeder = std::thread::spawn(move || {
        for ((i, item), ack) in items.into_iter().enumerate().zip(acks) {
            let tweet = Tweet {
                id: i.to_string(),
                text: item.text,
                created_at: Utc::now(),
                lang: "fr".into(),
            };
            let w = Work::new(tweet, ack);
            if input.send(w).is_err() {
                break;
            }
        }
    });
    let mut probs: HashMap<i64, Vec<f32>> = HashMap::new();
    while let Some(b) = inf.output.blocking_recv() {
        for r in b.rows {
            let p = labels
                .iter()
                .map(|l| r.scores.get(l).and_then(|v| v.as_f64()).unwrap_or(0.0) as f32)
                .collect();
            probs.insert(r.source_offset, p);
        }
    }
    let _ = feeder.join();
    for t in inf.threads.into_iter().chain([inf.loader]) {
        t.join()
            .map_err(|_| anyhow::anyhow!("an inference thread panicked"))??;
    }
    anyhow::ensure!(
        probs.len() == data.items.len(),
        "{} of {} items came back from the model",
        probs.len(),
        data.items.len()
    );
    let index = |l: &str| labels.iter().position(|x| x == l).unwrap_or(0);
    let gold: Vec<usize> = data.items.iter().map(|i| index(&i.label)).collect();
    let mut predicted = Vec::with_capacity(gold.len());
    let mut confidence = Vec::with_capacity(gold.len());
    let mut scored = Vec::with_capacity(gold.len());
    for (i, &g) in gold.iter().enumerate() {
        let p = &probs[&(i as i64)];
        let k = argmax(p);
        predicted.push(k);
        confidence.push(f64::from(p[k]));
        scored.push(Scored {
            weight: 1.0,
            probs: p.iter().map(|&x| f64::from(x)).collect(),
            gold: g,
        });
    }
    let temperature = fit_temperature(&scored);
    let correct: Vec<bool> = gold.iter().zip(&predicted).map(|(g, p)| g == p).collect();
    let confusion = Confusion::new(&labels, &gold, &predicted);
    Ok(ModelEval {
        model: resolved.to_string(),
        n: gold.len(),
        accuracy: confusion.accuracy(),
        macro_f1: confusion.macro_f1(),
        ece: expected_calibration_error(&confidence, &correct, 10),
        temperature,
        ece_calibrated: weighted_ece(&scored, temperature, 10),
        per_class: confusion.per_class(),
        confusion,
        seconds: started.elapsed().as_secs_f64(),
        correct,
    })
}

/// Evaluates `model` (and `compare`, on the same items) on `data_path`. Blocking: call it off
/// the async runtime.
pub fn run(
    cfg: &Config,
    model: &ModelId,
    compare: Option<&ModelId>,
    data_path: &Path,
    strict: bool,
    factory: &ClassifierFactory,
) -> anyhow::Result<EvalReport> {
    let (model, manifest) = resolve(&cfg.model.store_dir, model)?;
    let data = read_dataset(data_path, &manifest.labels, strict)?;
    let mut models = vec![evaluate(cfg, &model, &data, factory)?];
    if let Some(other) = compare {
        let (other, _) = resolve(&cfg.model.store_dir, other)?;
        models.push(evaluate(cfg, &other, &data, factory)?);
    }
    let mcnemar = (models.len() == 2).then(|| McNemar::new(&models[0].correct, &models[1].correct));
    Ok(EvalReport {
        dataset: data.path.clone(),
        dataset_sha256: data.sha256.clone(),
        skipped_lines: data.skipped.len(),
        evaluated_at: Utc::now(),
        models,
        mcnemar,
    })
}

impl EvalReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "## eval: {} (sha256 {}…, {} items, {} unreadable lines skipped)\n\n",
            self.dataset.display(),
            &self.dataset_sha256[..12],
            self.models.first().map_or(0, |m| m.n),
            self.skipped_lines
        );
        let mut t = Table::new(&[
            "model",
            "n",
            "accuracy",
            "macro-F1",
            "ECE",
            "temperature",
            "ECE after",
            "s",
        ]);
        for m in &self.models {
            t.row(vec![
                m.model.clone(),
                m.n.to_string(),
                format!("{:.4}", m.accuracy),
                format!("{:.4}", m.macro_f1),
                format!("{:.4}", m.ece),
                format!("{:.3}", m.temperature),
                format!("{:.4}", m.ece_calibrated),
                format!("{:.1}", m.seconds),
            ]);
        }
        out.push_str(&t.render());
        for m in &self.models {
            out.push_str(&format!("\n### {}: per class\n\n", m.model));
            let mut t = Table::new(&["label", "precision", "recall", "F1", "support"]);
            for c in &m.per_class {
                t.row(vec![
                    c.label.clone(),
                    format!("{:.4}", c.precision),
                    format!("{:.4}", c.recall),
                    format!("{:.4}", c.f1),
                    c.support.to_string(),
                ]);
            }
            out.push_str(&t.render());
            out.push_str(&format!(
                "\n### {}: confusion (rows = gold, columns = predicted)\n\n",
                m.model
            ));
            let mut header = vec!["gold \\ predicted"];
            header.extend(m.confusion.labels.iter().map(String::as_str));
            let mut t = Table::new(&header);
            for (l, row) in m.confusion.labels.iter().zip(&m.confusion.matrix) {
                let mut cells = vec![l.clone()];
                cells.extend(row.iter().map(ToString::to_string));
                t.row(cells);
            }
            out.push_str(&t.render());
        }
        if let Some(m) = &self.mcnemar {
            out.push_str(&format!(
                "\nMcNemar ({}): only {} right on {}, only {} right on {}; statistic {:.4}, p = {:.4} — {}\n",
                m.method,
                self.models[0].model,
                m.only_first,
                self.models[1].model,
                m.only_second,
                m.statistic,
                m.p_value,
                if m.p_value < 0.05 {
                    "the difference is significant at 5 %"
                } else {
                    "no significant difference at 5 %"
                }
            ));
        }
        out
    }
}

/// A row of `model_evaluations`.
#[derive(clickhouse::Row, Serialize, serde::Deserialize)]
pub struct EvaluationRow {
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub evaluated_at: DateTime<Utc>,
    pub model: String,
    pub dataset: String,
    pub dataset_sha256: String,
    pub n: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub ece: f64,
    /// The full result (per class, confusion) as JSON.
    pub details: String,
    pub compared_with: String,
    pub mcnemar_p: f64,
}

impl crate::sink::clickhouse::StoredRow for EvaluationRow {
    const TABLE: &'static str = crate::sink::clickhouse::schema::MODEL_EVALUATIONS;
}

/// Stores `report` in `model_evaluations` (the schema applied first) and says where.
pub async fn store(cfg: &Config, report: &EvalReport) -> anyhow::Result<()> {
    let sink = crate::sink::clickhouse::ClickHouseSink::from_config(cfg)?;
    sink.apply_schema().await.with_context(|| {
        format!(
            "cannot reach ClickHouse at {} to store the evaluation (or pass --no-store)",
            cfg.clickhouse.url
        )
    })?;
    for row in report.rows() {
        sink.record(&row).await?;
    }
    // The temperature is stored with the version: `quality`'s CBPE uses the newest fit.
    for m in &report.models {
        sink.record(&crate::sink::clickhouse::schema::CalibrationRow {
            fitted_at: report.evaluated_at,
            model: m.model.clone(),
            temperature: m.temperature,
            source: format!("eval:{}", report.dataset_sha256),
            n: m.n as u64,
            ece_before: m.ece,
            ece_after: m.ece_calibrated,
        })
        .await?;
    }
    println!(
        "stored in {db}.{} and {db}.{}",
        crate::sink::clickhouse::schema::MODEL_EVALUATIONS,
        crate::sink::clickhouse::schema::CALIBRATIONS,
        db = cfg.clickhouse.database,
    );
    Ok(())
}

impl EvalReport {
    /// One row per model evaluated.
    pub fn rows(&self) -> Vec<EvaluationRow> {
        self.models
            .iter()
            .enumerate()
            .map(|(i, m)| EvaluationRow {
                evaluated_at: self.evaluated_at,
                model: m.model.clone(),
                dataset: self.dataset.display().to_string(),
                dataset_sha256: self.dataset_sha256.clone(),
                n: m.n as u64,
                accuracy: m.accuracy,
                macro_f1: m.macro_f1,
                ece: m.ece,
                details: serde_json::to_string(m).unwrap_or_default(),
                compared_with: self
                    .models
                    .get(1 - i.min(1))
                    .filter(|_| self.models.len() == 2)
                    .map_or(String::new(), |o| o.model.clone()),
                mcnemar_p: self.mcnemar.as_ref().map_or(-1.0, |m| m.p_value),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["against", "neutral", "favour"].map(String::from).to_vec()
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vaxpulse-eval-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn lines_in_every_shape_are_read_and_bad_ones_counted() {
        let p = write(
            "ok.jsonl",
            concat!(
                "{\"text\": \"Vaccin dispo demain\", \"label\": \"neutral\"}\n",
                "{\"id_str\": \"1\", \"text\": \"Je refuse ce vaccin\", \"lang\": \"fr\", \"created_at\": \"Mon Jul 12 09:15:02 +0000 2021\", \"label\": \"against\"}\n",
                "{\"data\": {\"id\": \"2\", \"text\": \"Enfin vacciné !\", \"lang\": \"fr\"}, \"label\": \"favour\"}\n",
                "not json\n",
                "\n",
                "{\"text\": \"sans étiquette\"}\n",
            ),
        );
        let d = read_dataset(&p, &labels(), false).unwrap();
        let got: Vec<(&str, &str)> = d
            .items
            .iter()
            .map(|i| (i.text.as_str(), i.label.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Vaccin dispo demain", "neutral"),
                ("Je refuse ce vaccin", "against"),
                ("Enfin vacciné !", "favour")
            ]
        );
        assert_eq!(d.skipped.iter().map(|s| s.0).collect::<Vec<_>>(), [4, 6]);
        let e = read_dataset(&p, &labels(), true).unwrap_err();
        assert!(e.to_string().contains("line 4"), "{e}");
    }

    #[test]
    fn an_unknown_label_names_its_line_and_an_empty_set_is_refused() {
        let p = write(
            "bad.jsonl",
            "{\"text\": \"a\", \"label\": \"favour\"}\n{\"text\": \"b\", \"label\": \"pro\"}\n",
        );
        let e = read_dataset(&p, &labels(), false).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("unknown label `pro`"),
            "{e}"
        );
        let p = write("empty.jsonl", "garbage\n\n");
        let e = read_dataset(&p, &labels(), false).unwrap_err().to_string();
        assert!(
            e.contains("no labelled item") && e.contains("1 lines skipped"),
            "{e}"
        );
    }

    #[test]
    fn a_gzip_bomb_line_is_refused_without_reading_it_whole() {
        use std::io::Write;
        // 64 MiB of one line compresses to ~64 KiB: refused at 1 MiB, with its line number.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"text\": \"ok\", \"label\": \"favour\"}\n")
            .unwrap();
        let zeros = vec![b'0'; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let p = std::env::temp_dir().join(format!(
            "vaxpulse-eval-{}-bomb.jsonl.gz",
            std::process::id()
        ));
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let e = read_dataset(&p, &labels(), false).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("longer than 1 MiB"),
            "{e}"
        );
    }

    #[test]
    fn gzip_files_are_read() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"text\": \"Vaccin\", \"label\": \"favour\"}\n")
            .unwrap();
        let p = std::env::temp_dir().join(format!("vaxpulse-eval-{}.jsonl.gz", std::process::id()));
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        assert_eq!(read_dataset(&p, &labels(), true).unwrap().items.len(), 1);
    }
}
