//! The vaxpulse harness: what tests and operators use to exercise a worker from the outside,
//! kept out of the worker binary and its image.
//!
//! - [`kit`]: service addresses, fresh names, topics, producing, reading back, committed offsets
//!   and ClickHouse counts — shared by `tests/` and the commands below;
//! - [`fleet`]: worker processes by slot (SIGTERM/SIGKILL, RSS, readiness), never outliving the
//!   harness;
//! - [`cpu`]: where the machine's CPU went during a run (machine, workers, the harness);
//! - [`e2e`]: `bench e2e`, the whole system through broker and ClickHouse;
//! - [`chaos`]: the fault-injection suite;
//! - [`analytics`]: `bench analytics`, ClickHouse query cost against the size of the history.

pub mod analytics;
pub mod chaos;
pub mod cpu;
pub mod e2e;
pub mod fleet;
pub mod kit;
