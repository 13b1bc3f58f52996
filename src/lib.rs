//! vaxpulse: a streaming worker that classifies French tweets about vaccination with a CamemBERT
//! model (libtorch) and keeps per-hour opinion aggregates in ClickHouse.
//!
//! # How a tweet flows
//! 1. [`source::kafka`] reads a message from `tweets.raw` on its own thread and decodes it
//!    ([`tweet::decode`]): a tweet goes on, a control notice or foreign-language tweet is counted
//!    and skipped, anything undecodable goes to `tweets.dlq` with a typed reason.
//! 2. The tokenizer stage normalises the text ([`tweet::normalize`]) and encodes it with the
//!    model's own tokenizer ([`model::tokenizer`]).
//! 3. The micro-batcher ([`batch`]) groups tweets by count, padded-token budget and waiting
//!    time, by similar length; exactly one batch waits while the model runs.
//! 4. The model thread runs the [`model::Classifier`] (libtorch, [`model::torch`]).
//! 5. The store-and-ack task ([`app::acks`]) publishes each result to `tweets.classified` and
//!    inserts the batch into ClickHouse ([`sink`]); only then are its offsets acknowledged
//!    ([`batch::offsets`]) and, in order, committed by the consumer thread.
//!
//! [`app`] wires the stages and shuts them down in order; [`validate`] checks a deployment
//! before it starts. The end-to-end bench, the fault-injection suite and the test kit are in the
//! `vaxpulse-harness` crate, which is not part of the worker image.

pub mod app;
pub mod batch;
pub mod bench;
pub mod chart;
pub mod config;
pub mod deploy;
pub mod eval;
pub mod model;
pub mod monitor;
pub mod probe;
pub mod produce;
pub mod relevance;
pub mod report;
pub mod sink;
pub mod source;
pub mod synthetic;
pub mod telemetry;
pub mod tweet;
pub mod validate;
