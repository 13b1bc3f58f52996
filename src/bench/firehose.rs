//! `vaxpulse bench firehose`: the relevance filter at wire speed. Realistic firehose payloads
//! (API v1.1 and v2 shapes with user objects and entities, 2–6 KB each, several languages; by
//! default 3 % French and about vaccination, 12 % French on other subjects) go through the
//! worker's decoder with the configured `decode` rules (languages, `keywords`):
//! 1. in process: decode + filter on one thread, then on `decode.threads` threads in the
//!    worker's chunks (the CPU ceiling of one replica);
//! 2. through the broker, one consumer like the worker's (same client settings, same chunked
//!    polling and decoding): the raw consume rate of the topic, then consume + decode +
//!    filter, in the same run; the ratio is what the filter costs a replica.
//!
//! Every mode also reports the CPU this process used (all its threads, librdkafka's included),
//! as cores over the mode's wall time and as messages per core-second.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde::Serialize;
use serde_json::json;

use super::Machine;
use crate::config::Config;
use crate::output::Table;
use crate::source::kafka::{poll_chunk, CHUNK_MESSAGES};
use crate::tweet::{decode_chunk, DecodeRules, Decoded, Input};

/// Options of `vaxpulse bench firehose`.
#[derive(Debug, Clone, clap::Args)]
pub struct FirehoseArgs {
    /// Payloads decoded in process.
    #[arg(long, default_value_t = 200_000)]
    pub firehose_messages: usize,
    /// Payloads produced to a fresh topic and consumed back (0 = in-process only).
    #[arg(long, default_value_t = 50_000)]
    pub broker_messages: usize,
    /// Share of French tweets about vaccination.
    #[arg(long, default_value_t = 0.03)]
    pub on_topic_share: f64,
}

/// What one mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub what: String,
    pub messages: usize,
    pub megabytes: f64,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// CPU this process used over the mode's wall time (`None` off Linux).
    pub cores: Option<f64>,
    /// Messages per second of CPU (`messages / CPU seconds`).
    pub messages_per_core_second: Option<f64>,
    #[serde(flatten)]
    pub decisions: Tally,
}

/// What the decoder decided, when it ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub kept: usize,
    pub off_topic: usize,
    pub other_language: usize,
}

#[derive(Debug, Serialize)]
pub struct FirehoseReport {
    pub machine: Machine,
    pub keywords: usize,
    pub langs: Vec<String>,
    pub mean_payload_bytes: f64,
    pub rates: Vec<Rate>,
    /// consume + decode + filter / raw consume, same run.
    pub ratio_to_raw_consume: Option<f64>,
}

const OTHER_TEXTS: &[(&str, &str)] = &[
    (
        "en",
        "Can't believe the game last night, what a finish! Who else stayed up for it?",
    ),
    (
        "en",
        "New blog post: ten tips for better sleep, link in bio",
    ),
    (
        "es",
        "Qué día tan bonito en Madrid, vamos a la playa este finde",
    ),
    ("de", "Der Zug hat wieder Verspätung, typisch Montag morgen"),
    ("pt", "Alguém sabe onde fica a melhor pizza de São Paulo?"),
    ("it", "Stasera cena con gli amici, non vedo l'ora"),
    ("ja", "今日はとても暑いですね。アイスクリームが食べたい"),
    ("ar", "صباح الخير للجميع، يوم سعيد"),
    (
        "en",
        "Vaccines are safe and effective, get your booster today",
    ),
];

const FRENCH_OFF_TOPIC: &[&str] = &[
    "Le match de ce soir était incroyable, quelle ambiance au stade !",
    "Je cherche un bon restaurant à Lyon pour samedi soir, des idées ?",
    "Les prix de l'essence augmentent encore, c'est intenable",
    "Nouvelle saison de ma série préférée ce soir, trop hâte",
    "Embouteillages monstres sur le périph ce matin",
    "Quelqu'un a des nouvelles du concert annulé à Bordeaux ?",
];

/// A user object and entities in the shape of the real APIs, padded so that payloads spread
/// over 2–6 KB as firehose payloads do.
fn filler(rng: &mut StdRng, target: usize) -> serde_json::Value {
    let word = |rng: &mut StdRng| {
        const W: &[&str] = &[
            "photo", "voyage", "musique", "tech", "football", "café", "lecture", "nature",
            "cinema", "dev", "design", "news", "sport", "cuisine", "art",
        ];
        W[rng.random_range(0..W.len())]
    };
    let mut description = String::new();
    while description.len() < target.saturating_sub(1300) {
        description.push_str(word(rng));
        description.push(' ');
    }
    json!({
        "user": {
            "id": rng.random_range(1_000_000u64..9_000_000_000),
            "id_str": rng.random_range(1_000_000u64..9_000_000_000).to_string(),
            "name": "Some User", "screen_name": format!("user{}", rng.random_range(0..1_000_000)),
            "location": "Somewhere", "description": description,
            "url": "https://t.co/abcdefghij", "protected": false, "verified": false,
            "followers_count": rng.random_range(0..100_000), "friends_count": rng.random_range(0..5_000),
            "listed_count": 3, "favourites_count": 1024, "statuses_count": 20_000,
            "created_at": "Wed Mar 04 10:11:12 +0000 2015",
            "profile_image_url_https": "https://pbs.twimg.com/profile_images/1234567890/abcdefgh_normal.jpg",
            "profile_banner_url": "https://pbs.twimg.com/profile_banners/1234567890/1600000000",
            "default_profile": false, "default_profile_image": false
        },
        "entities": {
            "hashtags": [{"text": word(rng), "indices": [10, 20]}],
            "urls": [{"url": "https://t.co/xyz", "expanded_url": "https://example.org/some/long/path?with=query&and=more", "display_url": "example.org/some/long…", "indices": [30, 53]}],
            "user_mentions": [{"screen_name": "someone", "name": "Someone", "id": 12345, "id_str": "12345", "indices": [0, 8]}],
            "symbols": []
        },
        "source": "<a href=\"http://twitter.com/download/android\" rel=\"nofollow\">Twitter for Android</a>",
        "is_quote_status": false, "quote_count": 0, "reply_count": 2, "retweet_count": 5,
        "favorite_count": 17, "favorited": false, "retweeted": false, "filter_level": "low"
    })
}

/// `n` firehose payloads (seeded).
pub fn payloads(n: usize, on_topic: f64, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = crate::synthetic::Generator::new(seed, chrono::Utc::now(), 5);
    (0..n)
        .map(|i| {
            let r: f64 = rng.random_range(0.0..1.0);
            let (lang, text) = if r < on_topic {
                ("fr", g.tweet().text)
            } else if r < on_topic + 0.12 {
                let t = FRENCH_OFF_TOPIC[rng.random_range(0..FRENCH_OFF_TOPIC.len())];
                ("fr", t.to_string())
            } else {
                let (l, t) = OTHER_TEXTS[rng.random_range(0..OTHER_TEXTS.len())];
                (l, t.to_string())
            };
            let target = rng.random_range(2_000..6_000);
            let mut v = filler(&mut rng, target);
            let id = (1_500_000_000_000_000_000u64 + i as u64).to_string();
            let obj = v.as_object_mut().expect("filler is an object");
            if rng.random_bool(0.6) {
                obj.insert("created_at".into(), json!("Mon Nov 30 10:00:00 +0000 2026"));
                obj.insert("id".into(), json!(id.parse::<u64>().unwrap_or(0)));
                obj.insert("id_str".into(), json!(id));
                obj.insert("text".into(), json!(text));
                obj.insert("lang".into(), json!(lang));
                serde_json::to_vec(&v)
            } else {
                let includes = json!({"users": [obj.remove("user")]});
                serde_json::to_vec(&json!({
                    "data": {"id": id, "text": text, "lang": lang,
                             "created_at": "2026-11-30T10:00:00.000Z", "author_id": "12345",
                             "entities": obj.remove("entities"),
                             "public_metrics": {"retweet_count": 5, "reply_count": 2, "like_count": 17, "quote_count": 0}},
                    "includes": includes
                }))
            }
            .expect("payload serialises")
        })
        .collect()
}

impl Tally {
    fn count(&mut self, decoded: &Decoded) {
        match decoded {
            Decoded::Tweet(_) => self.kept += 1,
            Decoded::Skip(crate::tweet::SkipReason::OffTopic) => self.off_topic += 1,
            Decoded::Skip(crate::tweet::SkipReason::Language) => self.other_language += 1,
            _ => {}
        }
    }
}

/// Decodes `payloads` as the worker does a chunk (`threads` threads) and counts the decisions.
fn tally(rules: &DecodeRules, payloads: &[&[u8]], threads: usize, t: &mut Tally) {
    let now = chrono::Utc::now();
    let inputs: Vec<Input<'_>> = payloads.iter().map(|p| (Some(*p), now)).collect();
    for d in decode_chunk(&inputs, rules, threads) {
        t.count(&d);
    }
}

/// CPU seconds this process has used (all threads): utime + stime of `/proc/self/stat`.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name's closing parenthesis: utime and stime are the 12th and 13th.
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ, which Linux fixes at 100 for everything it exports to user space.
    Some(ticks as f64 / 100.0)
}

/// Wall clock and process CPU from one instant.
struct Clock {
    wall: Instant,
    cpu: Option<f64>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    fn rate(&self, what: &str, messages: usize, bytes: usize, decisions: Tally) -> Rate {
        let seconds = self.wall.elapsed().as_secs_f64().max(1e-9);
        let cpu = self
            .cpu
            .zip(process_cpu_seconds())
            .map(|(a, b)| (b - a).max(0.0));
        Rate {
            what: what.into(),
            messages,
            megabytes: bytes as f64 / 1e6,
            seconds,
            messages_per_second: messages as f64 / seconds,
            cores: cpu.map(|c| c / seconds),
            messages_per_core_second: cpu.filter(|c| *c > 0.0).map(|c| messages as f64 / c),
            decisions,
        }
    }
}

/// Consumes `n` messages of `topic` from the start with a fresh group, in the worker's chunks;
/// decodes them when `rules` is given, on `cfg.decode.threads` threads.
fn consume(
    cfg: &Config,
    topic: &str,
    n: usize,
    rules: Option<&DecodeRules>,
    what: &str,
) -> anyhow::Result<Rate> {
    let group = format!("bench-firehose-{}", rand::random::<u32>());
    // The worker's overridable consumer defaults first (not its fixed 16-MiB prefetch limit).
    let mut defaults = crate::kafka::consumer_defaults(cfg.decode.max_message_bytes);
    defaults.extend([
        ("group.id", group),
        ("auto.offset.reset", "earliest".into()),
        ("enable.auto.commit", "false".into()),
        ("fetch.wait.max.ms", cfg.kafka.fetch_wait_max_ms.to_string()),
        ("fetch.message.max.bytes", "4194304".into()),
    ]);
    let consumer: BaseConsumer = crate::kafka::client_config(&cfg.kafka, &defaults)
        .create()
        .context("cannot create the bench consumer")?;
    consumer.subscribe(&[topic])?;
    let (mut seen, mut bytes) = (0usize, 0usize);
    let mut t = Tally::default();
    let mut started: Option<Clock> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {seen} of {n} messages consumed in 10 min"
        );
        let (chunk, error) = poll_chunk(
            &consumer,
            Duration::from_millis(100),
            CHUNK_MESSAGES.min(n - seen),
            Vec::new,
        );
        if let Some(e) = error {
            return Err(e.into());
        }
        if chunk.is_empty() {
            continue;
        }
        // The clock starts at the first message: group join is not throughput.
        started.get_or_insert_with(Clock::start);
        let payloads: Vec<&[u8]> = chunk
            .iter()
            .map(|m| m.payload().unwrap_or_default())
            .collect();
        bytes += payloads.iter().map(|p| p.len()).sum::<usize>();
        if let Some(rules) = rules {
            tally(rules, &payloads, cfg.decode.threads, &mut t);
        }
        seen += chunk.len();
    }
    let clock = started.unwrap_or_else(Clock::start);
    Ok(clock.rate(what, seen, bytes, t))
}

/// Runs the firehose bench; prints its table and returns the report.
pub async fn run(cfg: &Config, args: &FirehoseArgs) -> anyhow::Result<FirehoseReport> {
    let rules = DecodeRules::from(&cfg.decode);
    let keywords = rules.keywords.as_ref().map_or(0, |k| k.len());
    let machine = Machine::detect(cfg);
    println!(
        "## vaxpulse bench firehose on {}; decode.langs = {:?}, {} keyword entries\n",
        machine.describe(),
        cfg.decode.langs,
        keywords
    );
    let n = args.firehose_messages.max(args.broker_messages);
    let all = payloads(n, args.on_topic_share, 42);
    let mean = all.iter().map(Vec::len).sum::<usize>() as f64 / all.len().max(1) as f64;
    let mut rates = Vec::new();

    let slice: Vec<&[u8]> = all[..args.firehose_messages]
        .iter()
        .map(Vec::as_slice)
        .collect();
    let bytes = slice.iter().map(|p| p.len()).sum();
    let mut thread_counts = vec![1];
    if cfg.decode.threads > 1 {
        thread_counts.push(cfg.decode.threads);
    }
    for threads in thread_counts {
        let clock = Clock::start();
        let mut t = Tally::default();
        for chunk in slice.chunks(CHUNK_MESSAGES) {
            tally(&rules, chunk, threads, &mut t);
        }
        rates.push(clock.rate(
            &format!(
                "decode + filter, in process ({threads} thread(s), chunks of {CHUNK_MESSAGES})"
            ),
            slice.len(),
            bytes,
            t,
        ));
    }

    let mut ratio = None;
    if args.broker_messages > 0 {
        let topic = format!("bench-firehose-{}", rand::random::<u32>());
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            crate::kafka::client_config(&cfg.kafka, &[]).create()?;
        admin
            .create_topics(
                &[rdkafka::admin::NewTopic::new(
                    &topic,
                    1,
                    rdkafka::admin::TopicReplication::Fixed(1),
                )],
                &rdkafka::admin::AdminOptions::new(),
            )
            .await
            .with_context(|| format!("cannot create {topic} (is the broker up?)"))?;
        let messages: Vec<(Option<String>, Vec<u8>)> = all[..args.broker_messages]
            .iter()
            .map(|p| (None, p.clone()))
            .collect();
        let produced_at = Instant::now();
        crate::produce::produce(
            &cfg.kafka,
            crate::produce::Input::Messages(messages),
            &crate::produce::ProduceOptions {
                topic: topic.clone(),
                rate: None,
                progress: false,
                message_timeout_ms: 300_000,
                resends: 0,
                max_message_bytes: 8 << 20,
                partition: None,
            },
        )
        .await?;
        println!(
            "produced {} payloads to {topic} in {:.1} s",
            args.broker_messages,
            produced_at.elapsed().as_secs_f64()
        );
        let (c, t, k) = (cfg.clone(), topic.clone(), args.broker_messages);
        let raw =
            tokio::task::spawn_blocking(move || consume(&c, &t, k, None, "raw consume")).await??;
        let (c, t, r2) = (cfg.clone(), topic.clone(), rules.clone());
        let filtered = tokio::task::spawn_blocking(move || {
            let what = format!(
                "consume + decode + filter ({} decode thread(s))",
                c.decode.threads
            );
            consume(&c, &t, k, Some(&r2), &what)
        })
        .await??;
        ratio = Some(filtered.messages_per_second / raw.messages_per_second.max(1e-9));
        rates.push(raw);
        rates.push(filtered);
        let _ = admin
            .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
            .await;
    }
    let report = FirehoseReport {
        machine,
        keywords,
        langs: cfg.decode.langs.clone(),
        mean_payload_bytes: mean,
        rates,
        ratio_to_raw_consume: ratio,
    };
    print!("{}", report.render());
    Ok(report)
}

impl FirehoseReport {
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "mode",
            "messages",
            "MB",
            "s",
            "messages/s",
            "MB/s",
            "cores (this process)",
            "messages per core-second",
            "kept",
            "off_topic",
            "other language",
        ]);
        for r in &self.rates {
            t.row(vec![
                r.what.clone(),
                r.messages.to_string(),
                format!("{:.0}", r.megabytes),
                format!("{:.2}", r.seconds),
                format!("{:.0}", r.messages_per_second),
                format!("{:.0}", r.megabytes / r.seconds.max(1e-9)),
                r.cores.map_or("–".into(), |c| format!("{c:.2}")),
                r.messages_per_core_second
                    .map_or("–".into(), |m| format!("{m:.0}")),
                r.decisions.kept.to_string(),
                r.decisions.off_topic.to_string(),
                r.decisions.other_language.to_string(),
            ]);
        }
        let mut out = format!(
            "mean payload {:.0} bytes\n\n{}",
            self.mean_payload_bytes,
            t.render()
        );
        if let Some(r) = self.ratio_to_raw_consume {
            out.push_str(&format!(
                "\nconsume + decode + filter = {r:.2} × raw consume (same broker, same run)\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_realistic_sizes_and_the_filter_keeps_the_on_topic_share() {
        let cfg = Config::from_toml_with_env(
            &std::fs::read_to_string("config/local.toml").unwrap(),
            "config/local.toml",
            Vec::new(),
        )
        .unwrap();
        let rules = DecodeRules::from(&cfg.decode);
        let all = payloads(4_000, 0.03, 1);
        let sizes: Vec<usize> = all.iter().map(Vec::len).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(*min >= 1_900 && *max < 6_500, "{min}..{max}");
        let payloads: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
        let mut r = Tally::default();
        tally(&rules, &payloads, 1, &mut r);

        // 3 % on topic (±1 %), 12 % French off topic, the rest in other languages.
        let share = |n: usize| n as f64 / all.len() as f64;
        assert!((share(r.kept) - 0.03).abs() < 0.01, "kept {}", r.kept);
        assert!(
            (share(r.off_topic) - 0.12).abs() < 0.02,
            "off topic {}",
            r.off_topic
        );
        assert_eq!(r.kept + r.off_topic + r.other_language, all.len());
    }
}
