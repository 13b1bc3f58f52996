#!/usr/bin/env python3
"""Serves ClickHouse 26.9 (chdb-core, clickhouse-local mode) over HTTP and TCP on loopback.

Usage: clickhouse_server.py DATA_DIR HTTP_PORT TCP_PORT   (runs until killed; no auth: loopback only)
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
</clickhouse>
""")
os.chdir(data)  # clickhouse-local reads config.xml from the working directory
import chdb._chdb as chdb  # noqa: E402

chdb.query("SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
           "SELECT sleepEachRow(1) FROM system.numbers SETTINGS max_block_size=1", "CSV")
