#!/usr/bin/env python3
"""Writes the Grafana dashboards of deploy/grafana/dashboards (operations, opinion).

The JSON files are committed; edit this script and run it again rather than the JSON.
tests/deploy_files.rs checks every query names a metric the worker exports or a table/view the
ClickHouse schema creates.
"""
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
PROM = {"type": "prometheus", "uid": "prometheus"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}


def prom(title, exprs, unit="short", kind="timeseries", w=12, h=8):
    return {
        "type": kind,
        "title": title,
        "datasource": PROM,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "expr": e, "legendFormat": legend, "datasource": PROM}
            for i, (e, legend) in enumerate(exprs)
        ],
        "gridPos": {"w": w, "h": h},
    }


def ch(title, sql, unit="short", kind="timeseries", w=12, h=9, stacked=False):
    panel = {
        "type": kind,
        "title": title,
        "datasource": CH,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": "A", "datasource": CH, "queryType": "sql", "editorType": "sql",
             "format": 0 if kind == "timeseries" else 1, "rawSql": sql}
        ],
        "gridPos": {"w": w, "h": h},
    }
    if stacked:
        panel["fieldConfig"]["defaults"]["custom"] = {
            "stacking": {"mode": "percent", "group": "A"}, "fillOpacity": 70}
    return panel


def layout(panels):
    x = y = 0
    row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        g = p["gridPos"]
        if x + g["w"] > 24:
            x, y = 0, y + row_h
            row_h = 0
        g["x"], g["y"] = x, y
        x += g["w"]
        row_h = max(row_h, g["h"])
    return panels


def dashboard(uid, title, panels, refresh="30s", time_from="now-6h"):
    return {
        "uid": uid,
        "title": title,
        "tags": ["vaxpulse"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "panels": layout(panels),
    }


operations = dashboard("vaxpulse-operations", "vaxpulse — operations", [
    prom("Throughput (messages/s)", [
        ("sum(rate(vaxpulse_messages_consumed_total[1m]))", "consumed"),
        ("sum by (role) (rate(vaxpulse_tweets_classified_total[1m]))", "classified {{role}}"),
        ("sum by (reason) (rate(vaxpulse_messages_skipped_total[1m]))", "skipped {{reason}}"),
    ], unit="ops"),
    prom("Replicas ready", [
        ("sum(vaxpulse_ready)", "ready"),
        ("count(up{job=\"vaxpulse\"} == 1)", "scraped"),
    ], kind="stat", w=6),
    prom("Consumer lag (messages, per partition)", [
        ("max by (partition) (vaxpulse_consumer_lag_messages)", "partition {{partition}}"),
    ], w=6),
    prom("Batch size (tweets, p50 / p95) and forwards per batch", [
        ("histogram_quantile(0.5, sum by (le) (rate(vaxpulse_batch_size_tweets_bucket[5m])))", "p50"),
        ("histogram_quantile(0.95, sum by (le) (rate(vaxpulse_batch_size_tweets_bucket[5m])))", "p95"),
        ("sum(rate(vaxpulse_model_forwards_total{role=\"champion\"}[5m])) / sum(rate(vaxpulse_inference_duration_seconds_count{role=\"champion\"}[5m]))", "forwards per batch (champion)"),
    ], w=8),
    prom("Padding (share of computed tokens)", [
        ("sum(rate(vaxpulse_model_tokens_total{kind=\"padding\"}[5m])) / sum(rate(vaxpulse_model_tokens_total[5m]))", "padding"),
        ("histogram_quantile(0.5, sum by (le) (rate(vaxpulse_batch_padding_ratio_bucket[5m])))", "p50 per batch"),
    ], unit="percentunit", w=8),
    prom("Inference time per batch (p50 / p99)", [
        ("histogram_quantile(0.5, sum by (le, model, role) (rate(vaxpulse_inference_duration_seconds_bucket[5m])))", "p50 {{model}} {{role}}"),
        ("histogram_quantile(0.99, sum by (le, model, role) (rate(vaxpulse_inference_duration_seconds_bucket[5m])))", "p99 {{model}} {{role}}"),
    ], unit="s", w=8),
    prom("Sink write time (p99) and retries", [
        ("histogram_quantile(0.99, sum by (le, sink) (rate(vaxpulse_sink_write_duration_seconds_bucket[5m])))", "p99 {{sink}}"),
        ("sum by (sink) (rate(vaxpulse_sink_retries_total[5m]))", "retries/s {{sink}}"),
    ], unit="s"),
    prom("Tweet latency, read → stored (p50 / p99)", [
        ("histogram_quantile(0.5, sum by (le) (rate(vaxpulse_tweet_latency_seconds_bucket[5m])))", "p50"),
        ("histogram_quantile(0.99, sum by (le) (rate(vaxpulse_tweet_latency_seconds_bucket[5m])))", "p99"),
    ], unit="s"),
    prom("Dead letters (messages/s, by reason)", [
        ("sum by (reason) (rate(vaxpulse_messages_dead_lettered_total[5m]))", "{{reason}}"),
    ], unit="ops", w=8),
    prom("Shadows skipped (tweets/s)", [
        ("sum by (model, reason) (rate(vaxpulse_shadow_skipped_tweets_total[5m]))", "{{model}} {{reason}}"),
    ], unit="ops", w=8),
    prom("Deployment", [
        ("max(vaxpulse_deployment_epoch)", "epoch"),
        ("sum by (model, role) (vaxpulse_model_deployed)", "{{model}} {{role}}"),
    ], kind="stat", w=8),
    prom("In flight and paused", [
        ("sum(vaxpulse_messages_in_flight)", "in flight"),
        ("sum(vaxpulse_consumer_paused_partitions)", "paused partitions"),
        ("sum(rate(vaxpulse_offset_commits_total[5m]))", "commits/s"),
    ]),
    prom("Deletes (tweets/s)", [
        ("sum(rate(vaxpulse_tweets_deleted_total[5m]))", "deleted"),
    ], unit="ops"),
    # Flat over weeks when healthy; the heap rising with RSS is a leak, RSS alone is retention.
    prom("Memory per replica (resident vs live heap)", [
        ("max by (instance) (vaxpulse_memory_resident_bytes)", "resident {{instance}}"),
        ("max by (instance) (vaxpulse_memory_allocated_bytes)", "heap {{instance}}"),
    ], unit="bytes"),
])

opinion = dashboard("vaxpulse-opinion", "vaxpulse — opinion and stability", [
    ch("Opinion share per hour (champion)",
       "SELECT hour AS time, label, sum(tweets) AS tweets FROM champion_hourly "
       "WHERE $__timeFilter(hour) GROUP BY time, label ORDER BY time",
       unit="percent", w=16, stacked=True),
    ch("Tweets per label (champion, selected range)",
       "SELECT label, sum(tweets) AS tweets FROM champion_hourly WHERE $__timeFilter(hour) "
       "GROUP BY label ORDER BY label",
       kind="piechart", w=8),
    ch("Tweets per hour by model version and label (shadows included)",
       "SELECT hour AS time, concat(model_version, ' ', label) AS series, sum(tweets) AS tweets "
       "FROM opinion_hourly_counts WHERE $__timeFilter(hour) GROUP BY time, series ORDER BY time",
       w=24),
    prom("Drift: PSI of the latest hour vs reference (watch 0.1, alert 0.25)", [
        ("max by (series, kind) (vaxpulse_drift_psi)", "{{series}} {{kind}}"),
    ]),
    prom("Champion vs shadow: agreement and kappa (latest hour)", [
        ("max by (shadow) (vaxpulse_shadow_agreement_ratio)", "agreement {{shadow}}"),
        ("max by (shadow) (vaxpulse_shadow_kappa)", "kappa {{shadow}}"),
    ], unit="percentunit"),
    ch("Agreement with the champion per hour",
       "SELECT window AS time, shadow_version, agreement FROM champion_shadow_agreement_hourly "
       "WHERE $__timeFilter(window) ORDER BY time",
       unit="percentunit"),
    ch("Mean confidence per hour and version",
       "SELECT hour AS time, model_version, mean_confidence FROM model_hourly_stats "
       "WHERE $__timeFilter(hour) ORDER BY time"),
    prom("Live accuracy per version (annotations, weighted; 95 % interval)", [
        ("max by (model) (vaxpulse_quality_accuracy_ratio{bound=\"estimate\"})", "{{model}}"),
        ("max by (model) (vaxpulse_quality_accuracy_ratio{bound=\"low\"})", "{{model}} low"),
        ("max by (model) (vaxpulse_quality_accuracy_ratio{bound=\"high\"})", "{{model}} high"),
        ("max by (model) (vaxpulse_promotion_proposed)", "promotion proposed {{model}}"),
    ], unit="percentunit"),
    ch("Annotations per day and label",
       "SELECT toStartOfDay(annotated_at) AS time, label, count() AS labels FROM annotations FINAL "
       "WHERE $__timeFilter(annotated_at) GROUP BY time, label ORDER BY time"),
    prom("Probe deviation (largest |Δp| vs first/previous run; flag above 1e-3)", [
        ("max by (model) (vaxpulse_probe_deviation_max)", "{{model}}"),
        ("sum by (model) (increase(vaxpulse_probe_runs_total{outcome=\"flagged\"}[1h]))", "flags/h {{model}}"),
    ]),
    ch("Deployments",
       "SELECT changed_at, epoch, action, actor, reason, from_champion, to_champion, to_shadows "
       "FROM deployment_changes ORDER BY changed_at DESC LIMIT 50",
       kind="table"),
], refresh="1m", time_from="now-7d")

OUT.mkdir(parents=True, exist_ok=True)
for name, d in [("operations.json", operations), ("opinion.json", opinion)]:
    (OUT / name).write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT / name}: {len(d['panels'])} panels")
