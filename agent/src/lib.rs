//! The Spotter studio agent as a library: the binary in `main.rs` only parses arguments.
//!
//! Data flow: [`pipeline`] (GStreamer) hands sampled frames to [`analysis`], which runs
//! [`recognizer`] (candle, via `spotter-models`) and the pure [`tracker`]; events go to [`mqtt`].

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod analysis;
pub mod analyze;
pub mod audio;
pub mod camera;
pub mod catalog_watch;
pub mod config;
pub mod doctor;
pub mod encoder;
pub mod model_import;
pub mod mqtt;
pub mod outbox;
pub mod pipeline;
pub mod recognizer;
pub mod sei;
pub mod service;
pub mod stamp;
pub mod stats;
pub mod supervisor;
pub mod tracker;
