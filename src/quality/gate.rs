//! The promotion gate: whether a shadow has earned the champion's place, on evidence. It
//! passes when the candidate, on at least `quality.min_paired_labels` annotated tweets both
//! versions scored, beats the champion (weighted difference above 0, McNemar p below
//! `quality.significance`) — or, with `quality.non_inferiority_margin` > 0, when the interval's
//! lower bound of the difference is above −margin — and its probe runs and its own drift
//! series are clean. Every decision (passed, refused, forced, proposed) is stored with its
//! evidence in `promotion_decisions`.

use serde::Serialize;

use super::report::QualityReport;
use crate::analytics::monitor::MonitorReport;
use crate::config::QualityConfig;
use crate::sink::clickhouse::schema::PromotionDecisionRow;
use crate::sink::clickhouse::ClickHouseSink;
use crate::stats::weighted::Interval;

/// The figures a decision rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub paired: u64,
    pub candidate_accuracy: Option<Interval>,
    pub champion_accuracy: Option<Interval>,
    /// Candidate − champion, weighted, on the paired tweets.
    pub difference: Option<Interval>,
    pub mcnemar_p: Option<f64>,
    pub labels_needed: Option<u64>,
    /// Probe runs of the candidate in the last day: `clean`, `flagged`, or `none`.
    pub probe: String,
    /// Level of the candidate's latest drift window (`ok`, `watch`, `alert`, or `none`).
    pub drift: String,
}

/// What the gate concluded.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub candidate: String,
    pub champion: String,
    pub passed: bool,
    /// Each check that failed, saying what would make it pass.
    pub reasons: Vec<String>,
    pub evidence: Evidence,
}

/// Judges `candidate` against `champion` (both `NAME@VERSION#HASH`) on a quality report and
/// (when it could be read) the monitor's probe and drift status.
pub fn judge(
    report: &QualityReport,
    monitor: Result<&MonitorReport, String>,
    candidate: &str,
    champion: &str,
    q: &QualityConfig,
) -> Verdict {
    let mut reasons = Vec::new();
    let cand = report.version(candidate);
    let champ = report.version(champion);
    let versus = cand.and_then(|c| c.versus_champion.as_ref());
    // The report compares with its own champion; it must be the one being replaced.
    let versus = versus.filter(|_| report.champion.as_deref() == Some(champion));
    let paired = versus.map_or(0, |v| v.comparison.paired);
    if paired < q.min_paired_labels {
        reasons.push(format!(
            "only {paired} annotated tweets scored by both {candidate} and {champion} (the gate needs {}): annotate more with `vaxpulse annotate serve`{}",
            q.min_paired_labels,
            versus
                .and_then(|v| v.labels_needed)
                .map_or(String::new(), |n| format!("; about {n} decide the difference seen"))
        ));
    }
    if let Some(v) = versus {
        let d = v.comparison.difference;
        let p = v.comparison.mcnemar.p_value;
        let beats = d.estimate > 0.0 && p < q.significance;
        let within = q.non_inferiority_margin > 0.0 && d.low >= -q.non_inferiority_margin;
        if !(beats || within) {
            let margin = if q.non_inferiority_margin > 0.0 {
                format!(
                    ", nor is it shown within {:.1} points of it (lower bound {:+.1})",
                    100.0 * q.non_inferiority_margin,
                    100.0 * d.low
                )
            } else {
                String::new()
            };
            reasons.push(format!(
                "{candidate} does not beat {champion}: accuracy difference {:+.1} points, McNemar p = {p:.3} (needs < {}){margin}",
                100.0 * d.estimate,
                q.significance
            ));
        }
    }
    let (probe, drift) = match monitor {
        Ok(m) => {
            let runs: Vec<_> = m.probes.iter().filter(|p| p.model == candidate).collect();
            let probe = if runs.is_empty() {
                "none"
            } else if runs.iter().any(|p| p.flagged) {
                "flagged"
            } else {
                "clean"
            };
            let drift = m
                .versions
                .iter()
                .find(|s| s.series == candidate)
                .and_then(|s| s.latest())
                .map_or("none", |w| w.level);
            (probe.to_string(), drift.to_string())
        }
        Err(e) => {
            reasons.push(format!("the probe and drift checks could not be read: {e}"));
            ("unknown".into(), "unknown".into())
        }
    };
    match probe.as_str() {
        "none" => reasons.push(format!(
            "no probe run of {candidate} in the last day: a replica runs the probe set at each deployment (monitor.probe_file)"
        )),
        "flagged" => reasons.push(format!(
            "a probe run of {candidate} was flagged (its outputs changed): see `vaxpulse monitor`"
        )),
        _ => {}
    }
    if drift == "alert" {
        reasons.push(format!(
            "{candidate}'s own label distribution is in drift alert (PSI ≥ 0.25): see `vaxpulse monitor`"
        ));
    }
    Verdict {
        candidate: candidate.into(),
        champion: champion.into(),
        passed: reasons.is_empty(),
        reasons,
        evidence: Evidence {
            paired,
            candidate_accuracy: cand.map(|c| c.accuracy),
            champion_accuracy: champ.map(|c| c.accuracy),
            difference: versus.map(|v| v.comparison.difference),
            mcnemar_p: versus.map(|v| v.comparison.mcnemar.p_value),
            labels_needed: versus.and_then(|v| v.labels_needed),
            probe,
            drift,
        },
    }
}

impl Verdict {
    pub fn render(&self) -> String {
        let mut out = format!(
            "quality gate for {} over {}: {}\n",
            self.candidate,
            self.champion,
            if self.passed { "passed" } else { "refused" }
        );
        let e = &self.evidence;
        if let (Some(c), Some(h), Some(d), Some(p)) = (
            e.candidate_accuracy,
            e.champion_accuracy,
            e.difference,
            e.mcnemar_p,
        ) {
            out.push_str(&format!(
                "  accuracy {:.1} % vs {:.1} %, difference {:+.1} [{:+.1}, {:+.1}] points on {} paired labels, McNemar p = {p:.4}\n",
                100.0 * c.estimate,
                100.0 * h.estimate,
                100.0 * d.estimate,
                100.0 * d.low,
                100.0 * d.high,
                e.paired
            ));
        }
        out.push_str(&format!("  probes: {}, drift: {}\n", e.probe, e.drift));
        for r in &self.reasons {
            out.push_str(&format!("  - {r}\n"));
        }
        out
    }

    /// Stores the decision (`outcome`: passed, refused, forced, proposed) with its evidence.
    pub async fn record(
        &self,
        sink: &ClickHouseSink,
        group_id: &str,
        outcome: &str,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let row = PromotionDecisionRow {
            decided_at: chrono::Utc::now(),
            group_id: group_id.into(),
            candidate: self.candidate.clone(),
            champion: self.champion.clone(),
            outcome: outcome.into(),
            reasons: self.reasons.clone(),
            evidence: serde_json::to_string(&self.evidence)?,
            actor: actor.into(),
            reason: reason.into(),
        };
        sink.record(&row).await?;
        Ok(())
    }
}
