#!/usr/bin/env python3
"""Kafka -> TorchServe HTTP -> Kafka bridge: the seed's architecture, for `vaxpulse-harness bench e2e
--system torchserve`. Reads the same VAXPULSE_KAFKA_* variables as the worker, posts every tweet
as its own HTTP request (TorchServe batches them server-side), publishes each result to the output
topic (key = tweet id, header vaxpulse.source_timestamp_ms) and commits a chunk's offsets once its
results are delivered. It does not write ClickHouse (the seed did not either), which flatters it.

Env: TS_URL (default http://127.0.0.1:8085/predictions/vax), TS_CONCURRENCY (in-flight requests,
default 64).
"""
import http.client
import json
import os
import signal
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed

from confluent_kafka import Consumer, Producer

env = os.environ.get
URL = urllib.parse.urlparse(env("TS_URL", "http://127.0.0.1:8085/predictions/vax"))
CONCURRENCY = int(env("TS_CONCURRENCY", "64"))
brokers = env("VAXPULSE_KAFKA_BROKERS", "127.0.0.1:9092")
consumer = Consumer({
    "bootstrap.servers": brokers,
    "group.id": env("VAXPULSE_KAFKA_GROUP_ID", "vaxpulse"),
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "fetch.wait.max.ms": int(env("VAXPULSE_KAFKA_FETCH_WAIT_MAX_MS", "10")),
})
producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "acks": "all"})
out_topic = env("VAXPULSE_KAFKA_OUTPUT_TOPIC", "tweets.classified")
consumer.subscribe([env("VAXPULSE_KAFKA_INPUT_TOPIC", "tweets.raw")])
local = threading.local()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())


def id_and_text(payload):
    obj = json.loads(payload)
    obj = obj.get("data", obj)
    tid = obj.get("id_str") or obj.get("id")
    text = (obj.get("extended_tweet") or {}).get("full_text") or obj.get("full_text") or obj.get("text")
    return str(tid), text


def predict(text):
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = local.conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=300)
    body = json.dumps({"text": text})
    conn.request("POST", URL.path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"TorchServe answered {resp.status}: {data[:200]!r}")
    return json.loads(data)


def main():
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        while not stop.is_set():
            msgs = [m for m in consumer.consume(num_messages=CONCURRENCY * 4, timeout=0.05) if not m.error()]
            if not msgs:
                continue
            parsed = [id_and_text(m.value()) for m in msgs]
            futures = {pool.submit(predict, text): (m, tid) for m, (tid, text) in zip(msgs, parsed)}
            # Each result is published as soon as TorchServe answers it; the chunk's offsets are
            # committed once all of its results are delivered.
            for f in as_completed(futures):
                m, tid = futures[f]
                r = f.result()
                r["tweet_id"] = tid
                producer.produce(out_topic, key=tid, value=json.dumps(r),
                                 headers={"vaxpulse.source_timestamp_ms": str(m.timestamp()[1])})
                producer.poll(0)
            producer.flush()
            consumer.commit(asynchronous=False)
    consumer.close()


if __name__ == "__main__":
    main()
