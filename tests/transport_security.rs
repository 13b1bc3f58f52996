//! The worker against a broker that takes only SASL_SSL (SCRAM-SHA-512 over TLS, with a CA made
//! by this test) and a ClickHouse user with a password, both started here: a wrong Kafka
//! password, a wrong ClickHouse password and a CA that did not sign the broker each stop
//! start-up with what to fix and without the secret in the message; the right ones classify
//! tweets end to end (through the secret files, as deployments pass them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::*;
use vaxpulse::config::Config;
use vaxpulse::synthetic::Generator;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a broker certificate for 127.0.0.1 signed by it, plus an unrelated CA.
fn certificates(dir: &Path) {
    let ossl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    for ca in ["ca", "other-ca"] {
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=vaxpulse-test-{ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ]);
    }
    ossl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "broker.pem",
    ]);
}

fn nisshi(port: u16, dir: &Path, secure: bool) -> Service {
    let url = format!("tcp://127.0.0.1:{port}");
    let log = dir.join(format!("nisshi-{secure}.log"));
    let mut cmd = Command::new("nisshi");
    cmd.args(["broker", "--silent", "--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        // A relative sqlite URL, from the test's directory (`sqlite:///abs` reads as relative).
        .args(["--storage-engine", "sqlite://auth.db"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if secure {
        cmd.arg("--authentication")
            .arg("--cert")
            .arg(dir.join("broker.pem"))
            .arg("--key")
            .arg(dir.join("broker.key"));
    }
    Service(cmd.spawn().expect("nisshi on PATH (scripts/setup.sh)")).listening(port, "nisshi", &log)
}

fn sha256_hex(s: &str) -> String {
    vaxpulse::model::sha256_hex(s.as_bytes())
}

fn config(names: &Names, port: u16, ch: u16, dir: &Path, ca: &str) -> Config {
    let toml = format!(
        r#"
[kafka]
brokers = "127.0.0.1:{port}"
group_id = "{group}"
input_topic = "{input}"
output_topic = "{output}"
dlq_topic = "{dlq}"
control_topic = "{control}"
fetch_wait_max_ms = 10
commit_interval_ms = 200
sasl_password_file = "{dir}/kafka.password"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "vaxpulse"
"ssl.ca.location" = "{dir}/{ca}.pem"
[clickhouse]
url = "http://127.0.0.1:{ch}"
database = "{db}"
user = "writer"
password_file = "{dir}/clickhouse.password"
[model]
dir = "{root}/models/demo/1"
device = "cpu"
intra_op_threads = 1
[metrics]
listen = ""
"#,
        group = names.group,
        input = names.input,
        output = names.output,
        dlq = names.dlq,
        control = names.control,
        db = names.database,
        dir = dir.display(),
        root = repo_root().display(),
    );
    Config::from_toml_with_env(&toml, "test", std::iter::empty()).expect("config is valid")
}

/// Starts a worker of `cfg` and expects start-up to fail within 60 s; its message.
async fn refused_at_start(cfg: Config) -> String {
    let (worker, _stop) = start_worker(cfg);
    let r = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("a worker with wrong credentials stops by itself")
        .unwrap();
    let e = format!("{:#}", r.expect_err("start-up must fail"));
    eprintln!("start-up refused as expected: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sasl_ssl_and_a_clickhouse_password_are_required_and_enough() {
    vaxpulse::telemetry::init_logging();
    let names = Names::fresh("tls");
    let dir: PathBuf = std::env::temp_dir().join(unique("vaxpulse-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let (kafka_pw, ch_pw) = (unique("kafka-pw"), unique("ch-pw"));

    // Users are created while the broker still speaks plaintext (nisshi's `user create` does
    // not log in), then it restarts on the same storage requiring SASL over TLS.
    let port = free_port();
    {
        let _plain = nisshi(port, &dir, false);
        run(Command::new("nisshi").args([
            "user",
            "create",
            "vaxpulse",
            &kafka_pw,
            "--mechanism",
            "scram512",
            "--broker",
            &format!("tcp://127.0.0.1:{port}"),
        ]));
        let plain = vaxpulse::config::KafkaConfig {
            brokers: format!("127.0.0.1:{port}"),
            ..names.test_config("").kafka
        };
        create_topics(&plain, &names, 2)
            .await
            .expect("topics created");
    }
    let _broker = nisshi(port, &dir, true);

    let (ch_http, ch_tcp) = (free_port(), free_port());
    let _clickhouse = Service::clickhouse(
        &dir,
        ch_http,
        ch_tcp,
        &[(
            "VAXPULSE_CH_USERS",
            format!("writer:{}", sha256_hex(&ch_pw)),
        )],
    );

    let write =
        |file: &str, value: &str| std::fs::write(dir.join(file), format!("{value}\n")).unwrap();
    write("clickhouse.password", &ch_pw);

    // A wrong Kafka password: refused at start, saying what to check, never the password.
    write("kafka.password", "not-the-password");
    let e = refused_at_start(config(&names, port, ch_http, &dir, "ca")).await;
    assert!(
        e.contains("refused the login") && e.contains("sasl.username"),
        "{e}"
    );
    assert!(
        !e.contains("not-the-password") && !e.contains(&kafka_pw),
        "{e}"
    );

    // A CA that did not sign the broker's certificate.
    write("kafka.password", &kafka_pw);
    let e = refused_at_start(config(&names, port, ch_http, &dir, "other-ca")).await;
    assert!(
        e.contains("TLS connection failed") && e.contains("ssl.ca.location"),
        "{e}"
    );

    // The right Kafka login, a wrong ClickHouse password.
    write("clickhouse.password", "wrong-ch-password");
    let e = refused_at_start(config(&names, port, ch_http, &dir, "ca")).await;
    assert!(
        e.contains("ClickHouse") && e.contains("Authentication failed"),
        "{e}"
    );
    assert!(
        !e.contains("wrong-ch-password") && !e.contains(&ch_pw),
        "{e}"
    );

    // Both right: tweets produced over SASL_SSL are classified and stored.
    write("clickhouse.password", &ch_pw);
    let cfg = config(&names, port, ch_http, &dir, "ca");
    let (worker, stop) = start_worker(cfg.clone());
    let mut g = Generator::new(5, Utc::now(), 1);
    let keyed = (0..40)
        .map(|_| {
            let (t, v) = g.payload();
            (t.id, v)
        })
        .collect();
    produce_keyed(&cfg.kafka, &cfg.kafka.input_topic, keyed, None)
        .await
        .expect("produced over SASL_SSL");
    wait_until("40 tweets stored", Duration::from_secs(90), || {
        let c = cfg.clone();
        async move { clickhouse_distinct(&c).await.ok() == Some(40) }
    })
    .await;
    stop.cancel();
    worker.await.unwrap().expect("worker stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
