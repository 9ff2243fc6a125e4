//! Scoring recognition on the evaluation set: the metrics (pure), running the real
//! `spotter-agent analyze` over a split, and the report as text.

mod metrics;
mod run;
mod text;

pub use metrics::{
    score, ClipInput, ClipReport, ConditionRow, FalseEvent, Hit, Latency, Miss, Report, Scoring,
    SkuReport, Wrong,
};
pub use run::{
    analyze_clip, collect, events_path, parse_events, saved_events, AgentRun, ScoreError, SplitSet,
};
pub use text::{meets_targets, render, TARGET_MEDIAN_MS, TARGET_PRECISION, TARGET_RECALL};
