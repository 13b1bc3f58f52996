#!/usr/bin/env python3
"""Serves ClickHouse 26.9 (chdb-core, clickhouse-local mode) over HTTP and TCP on loopback.

Usage: clickhouse_server.py DATA_DIR HTTP_PORT TCP_PORT   (runs until killed; loopback only)

VAXPULSE_CH_USERS="name:SHA256_OF_PASSWORD[:readonly],..." adds users that log in with a password
(tests of the worker's ClickHouse credentials, a read-only user like Grafana's). `default` stays
password-less: chdb's own in-process session logs in as `default` through the same user list.
"""
import os
import sys
from pathlib import Path

data = Path(sys.argv[1]).resolve()
http_port, tcp_port = int(sys.argv[2]), int(sys.argv[3])
data.mkdir(parents=True, exist_ok=True)
(data / "config.xml").write_text(f"""<clickhouse>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{data}/db/</path>
  <logger><level>warning</level><console>true</console></logger>
  <users_config>{data}/users.xml</users_config>
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
