//! What serde cannot check: ranges, relations between fields, known enum strings — so a bad
//! value fails at start-up with the field's name and what to do.

use super::*;

impl Config {
    /// Checks values that serde cannot: ranges, relations between fields, known enum strings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad =
            |field: &'static str, message: String| Err(ConfigError::Invalid { field, message });
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must name at least one broker".into());
        }
        let authority = self
            .clickhouse
            .url
            .split_once("://")
            .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
        if authority.contains('@') {
            // Not echoed: the URL holds a password.
            return bad(
                "clickhouse.url",
                "must not carry a user or password (user:pass@host): set clickhouse.user, and the password in VAXPULSE_CLICKHOUSE_PASSWORD or clickhouse.password_file".into(),
            );
        }
        if self.deploy.require_signed && self.deploy.trusted_keys.is_empty() {
            return bad(
                "deploy.trusted_keys",
                "deploy.require_signed is set but no key is trusted: add the public key of `vaxpulse models keygen` (env VAXPULSE_DEPLOY_TRUSTED_KEYS)".into(),
            );
        }
        // The shape here; that it is a valid Ed25519 point is checked where keys are loaded.
        for k in &self.deploy.trusted_keys {
            if k.trim().len() != 64 || !k.trim().chars().all(|c| c.is_ascii_hexdigit()) {
                return bad(
                    "deploy.trusted_keys",
                    "each key must be 64 hex digits, as `vaxpulse models keygen` prints it".into(),
                );
            }
        }
        let topics = [
            &self.kafka.input_topic,
            &self.kafka.output_topic,
            &self.kafka.dlq_topic,
        ];
        if topics.iter().any(|t| t.trim().is_empty()) {
            return bad("kafka.*_topic", "topic names must not be empty".into());
        }
        if self.kafka.control_topic.trim().is_empty() {
            return bad(
                "kafka.control_topic",
                "must name the deployment control topic".into(),
            );
        }
        if [
            &self.kafka.output_topic,
            &self.kafka.dlq_topic,
            &self.kafka.control_topic,
            &self.kafka.shadow_topic,
        ]
        .contains(&&self.kafka.input_topic)
        {
            return bad(
                "kafka.input_topic",
                "must differ from output_topic, dlq_topic, control_topic and shadow_topic (the worker would read its own output)".into(),
            );
        }
        for forbidden in [
            "enable.auto.commit",
            "enable.auto.offset.store",
            "group.id",
            "sasl.password",
        ] {
            if self.kafka.properties.contains_key(forbidden) {
                return bad(
                    "kafka.properties",
                    format!("`{forbidden}` is managed by vaxpulse (use the typed field, or leave it out: offsets are committed only after results are stored)"),
                );
            }
        }
        if !self.clickhouse.url.starts_with("http://")
            && !self.clickhouse.url.starts_with("https://")
        {
            return bad(
                "clickhouse.url",
                format!(
                    "`{}` must start with http:// or https://",
                    self.clickhouse.url
                ),
            );
        }
        if !self
            .clickhouse
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self.clickhouse.database.is_empty()
        {
            return bad(
                "clickhouse.database",
                format!("`{}`: use letters, digits and _", self.clickhouse.database),
            );
        }
        let ch = &self.clickhouse;
        if !ch
            .cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(
                "clickhouse.cluster",
                format!(
                    "`{}`: a remote_servers name (letters, digits and _)",
                    ch.cluster
                ),
            );
        }
        if ch.cluster.is_empty() && (ch.replicated || !ch.schema_urls.is_empty()) {
            return bad(
                "clickhouse.cluster",
                "clickhouse.replicated and clickhouse.schema_urls need clickhouse.cluster (the remote_servers name)".into(),
            );
        }
        if let Some(u) = ch
            .schema_urls
            .iter()
            .find(|u| !u.starts_with("http://") && !u.starts_with("https://") || u.contains('@'))
        {
            return bad(
                "clickhouse.schema_urls",
                format!("`{u}`: each an http(s):// URL without a user or password"),
            );
        }
        // Written so that NaN is refused too.
        let d = self.model.half_parity_max_abs_diff;
        if d.is_nan() || d <= 0.0 {
            return bad(
                "model.half_parity_max_abs_diff",
                "must be a positive probability difference, e.g. 0.02".into(),
            );
        }
        let p = self.model.parity_max_abs_diff;
        if p.is_nan() || p <= 0.0 {
            return bad(
                "model.parity_max_abs_diff",
                "must be a positive probability difference, e.g. 1e-4".into(),
            );
        }
        if self.pipeline.shadow_threads == 0 || self.pipeline.shadow_queue_batches == 0 {
            return bad(
                "pipeline.shadow_threads",
                "shadow_threads and shadow_queue_batches must be at least 1".into(),
            );
        }
        if self.pipeline.tokenizer_threads == 0 {
            return bad("pipeline.tokenizer_threads", "must be at least 1".into());
        }
        if self.batch.max_batch_size == 0 {
            return bad("batch.max_batch_size", "must be at least 1".into());
        }
        if self.batch.max_batch_tokens == 0 {
            return bad("batch.max_batch_tokens", "must be at least 1".into());
        }
        if let Some(t) = self.batch.overhead_tokens {
            if t as usize > self.batch.max_batch_tokens {
                return bad(
                    "batch.overhead_tokens",
                    format!(
                        "{t} is more than batch.max_batch_tokens ({}): a call would cost more \
                         than a full batch; leave it out to measure it",
                        self.batch.max_batch_tokens
                    ),
                );
            }
        }
        if !(1..=64).contains(&self.decode.threads) {
            return bad("decode.threads", "must be 1 to 64".into());
        }
        if self.decode.max_message_bytes < 64 {
            return bad("decode.max_message_bytes", "must be at least 64".into());
        }
        if self.pipeline.queue_tweets == 0 || self.pipeline.sink_queue_batches == 0 {
            return bad("pipeline", "queue sizes must be at least 1".into());
        }
        if self.clickhouse.insert_max_bytes < 64 * 1024 {
            return bad(
                "clickhouse.insert_max_bytes",
                format!(
                    "{} is below 64 KiB: one batch of long tweets would not fit",
                    self.clickhouse.insert_max_bytes
                ),
            );
        }
        if self.clickhouse.insert_max_rows < self.batch.max_batch_size {
            return bad(
                "clickhouse.insert_max_rows",
                format!(
                    "{} is less than batch.max_batch_size ({}): one batch must fit in one insert",
                    self.clickhouse.insert_max_rows, self.batch.max_batch_size
                ),
            );
        }
        if self.clickhouse.insert_linger_ms >= self.pipeline.revoke_drain_timeout_ms {
            return bad(
                "clickhouse.insert_linger_ms",
                format!(
                    "{} ms is not less than pipeline.revoke_drain_timeout_ms ({} ms): in a rebalance, inferred tweets would not be stored before the partitions go, and would be classified again by their next owner",
                    self.clickhouse.insert_linger_ms, self.pipeline.revoke_drain_timeout_ms
                ),
            );
        }
        if self.pipeline.revoke_drain_timeout_ms * 2 > self.kafka.session_timeout_ms {
            return bad(
                "pipeline.revoke_drain_timeout_ms",
                format!(
                    "{} ms is more than half of kafka.session_timeout_ms ({} ms): a rebalance would wait on it long enough for members to time out",
                    self.pipeline.revoke_drain_timeout_ms, self.kafka.session_timeout_ms
                ),
            );
        }
        if self.kafka.commit_interval_ms == 0 {
            return bad("kafka.commit_interval_ms", "must be at least 1".into());
        }
        if let Err(e) = crate::relevance::KeywordFilter::new(&self.decode.keywords) {
            return bad("decode.keywords", e.to_string());
        }
        let (d8, a8) = (
            self.model.int8_parity_max_abs_diff,
            self.model.int8_min_label_agreement,
        );
        if !(d8.is_finite() && d8 > 0.0 && d8 <= 1.0 && (0.0..=1.0).contains(&a8)) {
            return bad(
                "model.int8_parity_max_abs_diff / int8_min_label_agreement",
                format!("{d8} / {a8}: the bound must be in (0, 1], the agreement in [0, 1]"),
            );
        }
        let d = self.monitor.probe_max_abs_diff;
        if !(d.is_finite() && d > 0.0) {
            return bad(
                "monitor.probe_max_abs_diff",
                format!("{d} must be a positive number (1e-3 is the usual bound)"),
            );
        }
        if self.monitor.reference_days == 0 {
            return bad("monitor.reference_days", "must be at least 1".into());
        }
        let q = &self.quality;
        for (key, v, open_low) in [
            ("quality.uniform_share", q.uniform_share, true),
            (
                "quality.low_confidence_below",
                q.low_confidence_below,
                false,
            ),
            ("quality.double_share", q.double_share, false),
            ("quality.confidence_level", q.confidence_level, true),
            ("quality.significance", q.significance, true),
            ("quality.power", q.power, true),
        ] {
            let ok = v.is_finite() && v <= 1.0 && if open_low { v > 0.0 } else { v >= 0.0 };
            if !ok {
                let range = if open_low { "(0, 1]" } else { "[0, 1]" };
                return bad(key, format!("{v} must be in {range}"));
            }
        }
        if !(q.non_inferiority_margin.is_finite() && (0.0..0.5).contains(&q.non_inferiority_margin))
        {
            return bad(
                "quality.non_inferiority_margin",
                format!(
                    "{} must be in [0, 0.5) (an accuracy difference, e.g. 0.01)",
                    q.non_inferiority_margin
                ),
            );
        }
        if q.sample_size == 0 || q.window_days == 0 {
            return bad(
                "quality.sample_size / window_days",
                "must be at least 1".into(),
            );
        }
        Ok(())
    }
}
