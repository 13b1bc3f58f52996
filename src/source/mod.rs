//! Where tweets come from: the Kafka consumer.

pub mod kafka;
