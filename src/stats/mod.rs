//! Statistics with no knowledge of the pipeline: classification metrics on a labelled set
//! ([`metrics`]) and estimates of a stream's quality from a weighted sample of it
//! ([`weighted`]), temperature scaling and label-free accuracy estimates ([`calibration`]).
//! Pure functions on plain numbers, tested against hand-computed values.

pub mod calibration;
pub mod metrics;
pub mod weighted;
