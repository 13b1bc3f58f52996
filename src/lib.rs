//! vaxpulse: a streaming worker that classifies French tweets about vaccination with a CamemBERT
//! model (libtorch) and keeps per-hour opinion aggregates in ClickHouse.
//!
//! # How a tweet flows
//! 1. [`source::kafka`] reads a message from `tweets.raw` on its own thread and decodes it
//!    ([`tweet::decode`]): a tweet goes on as a [`work::Work`], a control notice or
//!    foreign-language tweet is counted and skipped, anything undecodable goes to `tweets.dlq`
//!    with a typed reason.
//! 2. The tokenizer pool normalises the text ([`tweet::normalize`]) and encodes it with the
//!    model's own tokenizer ([`model::tokenizer`]).
//! 3. The micro-batcher ([`batch`]) groups tweets by count, padded-token budget and waiting
//!    time, by similar length; exactly one batch waits while the model runs.
//! 4. The model thread runs the [`model::Classifier`] (libtorch, [`model::torch`]), a batch as
//!    one forward or cut by length where padding costs more than a call ([`batch::cost`]).
//! 5. The store-and-ack task ([`app::acks`]) publishes each result to `tweets.classified` and
//!    inserts the batch into ClickHouse ([`sink`]); only then are its offsets acknowledged
//!    ([`batch::offsets`]) and, in order, committed by the consumer thread.
//!
//! # Layers (a module imports only from the layers below it; `tests/module_graph.rs` checks)
//! - ground floor: [`alloc`] (the process's allocator), [`telemetry`], [`config`], [`output`],
//!   [`stats`], [`relevance`], [`kafka`] (client settings), [`batch`], [`tweet`], [`work`] (the
//!   types that flow through the pipeline);
//! - stages and stores: [`model`], [`source`], [`sink`], [`deploy`], [`probe`],
//!   [`synthetic`], [`produce`];
//! - wiring and readers: [`app`] (one file per stage), [`analytics`] (what analysts read),
//!   [`eval`], [`bench`], [`validate`], [`quality`] (samples, live quality, the promotion
//!   gate) and [`annotate`] (the annotation page).
//!
//! The end-to-end bench, the fault-injection suite and the test kit are in the
//! `vaxpulse-harness` crate, which is not part of the worker image.

pub mod alloc;
pub mod analytics;
pub mod annotate;
pub mod app;
pub mod batch;
pub mod bench;
pub mod config;
pub mod deploy;
pub mod eval;
pub mod kafka;
pub mod model;
pub mod output;
pub mod probe;
pub mod produce;
pub mod quality;
pub mod relevance;
pub mod sink;
pub mod source;
pub mod stats;
pub mod synthetic;
pub mod telemetry;
pub mod tweet;
pub mod validate;
pub mod work;
