//! The delivery files speak the worker's language: every metric a Grafana dashboard or an alert
//! rule queries is one the worker exports (`telemetry::METRICS`), every ClickHouse table a
//! dashboard reads is one the schema creates, and the panels the operators need are there.
//! (Syntax is checked by scripts/check_deploy.sh: promtool, the Compose schema, kubernetes-validate.)

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind, _) in vaxpulse::telemetry::METRICS {
        names.insert(name.to_string());
        if *kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn metrics_in(text: &str) -> BTreeSet<String> {
    let re = Regex::new(r"\bvaxpulse_[a-z_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

fn schema_objects() -> BTreeSet<String> {
    let re = Regex::new(r"CREATE (?:TABLE|VIEW|MATERIALIZED VIEW) IF NOT EXISTS vaxpulse\.(\w+)")
        .unwrap();
    vaxpulse::sink::clickhouse::schema_statements(
        &vaxpulse::sink::clickhouse::schema::Layout::single("vaxpulse"),
    )
    .iter()
    .filter_map(|s| re.captures(s).map(|c| c[1].to_string()))
    .collect()
}

struct Query {
    panel: String,
    expr: Option<String>,
    sql: Option<String>,
}

fn queries(dashboard: &Path) -> Vec<Query> {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    assert!(
        d["uid"].is_string() && d["title"].is_string(),
        "{}",
        dashboard.display()
    );
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("").to_string();
        let targets = p["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            out.push(Query {
                panel: title.clone(),
                expr: t["expr"].as_str().map(String::from),
                sql: t["rawSql"].as_str().map(String::from),
            });
        }
    }
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn dashboard_queries_name_exported_metrics_and_existing_tables() {
    let (metrics, tables) = (exported(), schema_objects());
    assert!(tables.contains("champion_hourly") && tables.contains("probe_runs"));
    let from = Regex::new(r"(?i)\b(?:FROM|JOIN)\s+([a-z_][a-z0-9_]*)").unwrap();
    for name in ["operations.json", "opinion.json"] {
        let path = root().join("deploy/grafana/dashboards").join(name);
        let qs = queries(&path);
        assert!(qs.len() >= 5, "{name}: {} queries", qs.len());
        for q in &qs {
            match (&q.expr, &q.sql) {
                (Some(expr), None) => {
                    let used = metrics_in(expr);
                    assert!(
                        !used.is_empty() || expr.contains("up{"),
                        "{name} / {}: {expr} queries no vaxpulse metric",
                        q.panel
                    );
                    for m in used {
                        assert!(
                            metrics.contains(&m),
                            "{name} / {}: {m} is not exported",
                            q.panel
                        );
                    }
                }
                (None, Some(sql)) => {
                    let read: Vec<String> =
                        from.captures_iter(sql).map(|c| c[1].to_string()).collect();
                    assert!(!read.is_empty(), "{name} / {}: no table in {sql}", q.panel);
                    for t in read {
                        assert!(
                            tables.contains(&t),
                            "{name} / {}: {t} is not created by the schema",
                            q.panel
                        );
                    }
                }
                _ => panic!(
                    "{name} / {}: a target needs exactly one of expr or rawSql",
                    q.panel
                ),
            }
        }
    }
}

#[test]
fn the_dashboards_cover_what_operators_and_analysts_watch() {
    let text = |name: &str| {
        queries(&root().join("deploy/grafana/dashboards").join(name))
            .into_iter()
            .flat_map(|q| q.expr.into_iter().chain(q.sql))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ops = text("operations.json");
    for needed in [
        "vaxpulse_messages_consumed_total",
        "vaxpulse_batch_size_tweets_bucket",
        "vaxpulse_batch_padding_ratio_bucket",
        "vaxpulse_inference_duration_seconds_bucket",
        "vaxpulse_sink_write_duration_seconds_bucket",
        "vaxpulse_consumer_lag_messages",
        "vaxpulse_messages_dead_lettered_total",
        "vaxpulse_ready",
    ] {
        assert!(ops.contains(needed), "operations dashboard lacks {needed}");
    }
    assert!(ops.contains("by (partition)"), "lag per partition");
    let opinion = text("opinion.json");
    for needed in [
        "champion_hourly",
        "opinion_hourly_counts",
        "vaxpulse_drift_psi",
        "vaxpulse_shadow_agreement_ratio",
        "champion_shadow_agreement_hourly",
        "vaxpulse_probe_deviation_max",
    ] {
        assert!(opinion.contains(needed), "opinion dashboard lacks {needed}");
    }
}

#[test]
fn alert_rules_use_exported_metrics_and_cover_the_runbook() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let metrics = exported();
    for m in metrics_in(&rules) {
        assert!(metrics.contains(&m), "alerts.yml: {m} is not exported");
    }
    for alert in [
        "VaxpulseConsumerLagGrowing",
        "VaxpulseDeadLetterRate",
        "VaxpulseReplicaNotReady",
        "VaxpulseSinkRetries",
        "VaxpulsePredictionDrift",
        "VaxpulseProbeMoved",
        "VaxpulsePromotionProposed",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "alerts.yml lacks {alert}"
        );
    }
    // Mounted where prometheus.yml's rule_files expects it, in the compose file.
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(compose.contains("./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml"));
    assert!(compose.contains("./deploy/grafana/dashboards:/var/lib/grafana/dashboards"));
}
