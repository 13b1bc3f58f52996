#!/usr/bin/env python3
"""Serves ClickHouse 26.9 (chdb-core, clickhouse-local mode) over HTTP and TCP on loopback;
with VAXPULSE_CH_CLUSTER, also knows a cluster of several such servers (see remote_servers).

Usage: clickhouse_server.py DATA_DIR HTTP_PORT TCP_PORT   (runs until killed; loopback only)

VAXPULSE_CH_USERS="name:SHA256_OF_PASSWORD[:readonly],..." adds users that log in with a password
(tests of the worker's ClickHouse credentials, a read-only user like Grafana's). `default` stays
password-less: chdb's own in-process session logs in as `default` through the same user list.
"""
import os
import sys
from pathlib import Path

data = Path(sys.argv[1]).resolve()


def remote_servers():
    """VAXPULSE_CH_CLUSTER="NAME=host:tcp_port,host:tcp_port": a cluster of one shard per
    server (Distributed tables over plain MergeTree; no Keeper needed)."""
    spec = os.environ.get("VAXPULSE_CH_CLUSTER", "")
    if not spec:
        return ""
    name, servers = spec.split("=", 1)
    assert name.isidentifier(), f"VAXPULSE_CH_CLUSTER: {name!r} is not a cluster name"
    shards = "".join(
        f"<shard><replica><host>{h}</host><port>{p}</port></replica></shard>"
        for h, p in (s.rsplit(":", 1) for s in servers.split(","))
    )
    return f"<remote_servers><{name}>{shards}</{name}></remote_servers>"


http_port, tcp_port = int(sys.argv[2]), int(sys.argv[3])
data.mkdir(parents=True, exist_ok=True)
(data / "config.xml").write_text(f"""<clickhouse>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{data}/db/</path>
  <logger><level>warning</level><console>true</console></logger>
  <users_config>{data}/users.xml</users_config>
{remote_servers()}
</clickhouse>
""")


def user(spec):
    name, sha, *flags = spec.split(":")
    assert name.isidentifier() and len(sha) == 64, f"VAXPULSE_CH_USERS entry {name!r}: name:sha256[:readonly]"
    profile = "readonly" if "readonly" in flags else "default"
    return (f"<{name}><password_sha256_hex>{sha}</password_sha256_hex><networks><ip>::/0</ip></networks>"
            f"<profile>{profile}</profile><quota>default</quota></{name}>")


extra = "".join(user(u) for u in os.environ.get("VAXPULSE_CH_USERS", "").split(",") if u)
(data / "users.xml").write_text(f"""<clickhouse>
  <users>
    <default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default>
    {extra}
  </users>
  <profiles><default/><readonly><readonly>1</readonly></readonly></profiles>
  <quotas><default/></quotas>
</clickhouse>
""")
os.chdir(data)  # clickhouse-local reads config.xml from the working directory
import chdb._chdb as chdb  # noqa: E402

chdb.query("SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
           "SELECT sleepEachRow(1) FROM system.numbers SETTINGS max_block_size=1", "CSV")
