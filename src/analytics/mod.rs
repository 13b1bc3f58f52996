//! What analysts read: the opinion series (`report`), drift, agreement and probe status
//! (`monitor`), and their charts (`chart`). Read-only over ClickHouse: nothing here writes
//! what the worker stores, so a query can be changed without touching the pipeline.

pub mod chart;
pub mod monitor;
pub mod report;
