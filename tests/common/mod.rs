//! Integration tests use the harness's test kit (`vaxpulse_harness::kit`): services from
//! `VAXPULSE_KAFKA_BROKERS` / `VAXPULSE_CLICKHOUSE_URL` (loopback defaults, started by
//! `scripts/services.sh`), and their own random topics, group and database.
#![allow(unused_imports)]

pub use vaxpulse_harness::kit::*;
