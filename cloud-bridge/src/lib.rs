//! Spotter's cloud bridge: product events from MQTT, checked, enriched with the catalog and fanned
//! out to viewers over WebSockets, with the viewer page, product images and metrics alongside.
//!
//! Pure decisions live in [`hub::state`] (dedup, offsets, recovery, on-screen snapshot),
//! [`spotter_protocol::backoff`] and [`mqtt::ingest`]; the rest are thin adapters around them.

pub mod app;
pub mod broker;
pub mod chat;
pub mod config;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod mqtt;
pub mod shelf;
pub mod websocket;

pub use app::{check, run, run_with_ready, Ready, Summary};
pub use config::{BridgeConfig, ConfigError};
