//! Write cost of the durable outbox per event: storing (append + `fdatasync`) and acknowledging
//! (append, no sync), against two in-process baselines: the bare `write` + `fdatasync` of the
//! same bytes to a plain file (the disk's floor), and the in-memory queue alone.
//!
//! `cargo bench --profile dev -p spotter-agent --bench outbox` (the dev profile avoids an
//! optimised rebuild of every dependency; the numbers are the disk's, not the CPU's). The outbox
//! goes in `SPOTTER_OUTBOX_BENCH_DIR` if set (measure on the disk the agent will use), else
//! under the target directory. `SPOTTER_OUTBOX_BENCH_EVENTS` sets the count (default 2000).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use spotter_agent::outbox::log::event_record_len;
use spotter_agent::outbox::{Outbox, Queue};
use spotter_protocol::{BBox, EventType, ProductEvent, PROTOCOL_VERSION};

fn event(seq: u64) -> ProductEvent {
    ProductEvent {
        v: PROTOCOL_VERSION,
        kind: EventType::Update,
        event_id: "5f0c7d1e-8a4b-4c1f-9e2d-3b6a7c8d9e0f".into(),
        seq,
        session: Some("0123456789abcdef".into()),
        sku: "MUG-001".into(),
        score: 0.8734,
        bbox: BBox([0.2512, 0.1245, 0.7523, 0.8761]),
        captured_at_ms: 1_764_072_000_000 + seq * 200,
        pts_ms: seq * 200,
    }
}

/// (median, p99, mean) of microsecond samples.
fn summary(mut us: Vec<f64>) -> (f64, f64, f64) {
    us.sort_by(f64::total_cmp);
    let n = us.len();
    let mean = us.iter().sum::<f64>() / n as f64;
    (us[n / 2], us[(n * 99 / 100).min(n - 1)], mean)
}

fn timed(n: u64, mut f: impl FnMut(u64)) -> Vec<f64> {
    (1..=n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn main() {
    let n: u64 = std::env::var("SPOTTER_OUTBOX_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let base = std::env::var_os("SPOTTER_OUTBOX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench directory");
    let dir = tempfile::tempdir_in(&base).expect("a directory for the outbox");
    let payloads: Vec<Vec<u8>> = (1..=n).map(|s| event(s).encode()).collect();
    let payload_len = payloads[0].len();
    println!(
        "outbox write cost: {n} events of {payload_len} bytes ({} in the log), in {}",
        event_record_len(payload_len),
        dir.path().display()
    );

    // floor: the same bytes appended to a plain file, fdatasync after each; interleaved with the
    // outbox's stores so both see the same disk weather
    let raw_path = dir.path().join("raw");
    let mut raw = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)
        .expect("raw file");
    let mut outbox = Outbox::open(&dir.path().join("outbox"), 1 << 30, 32).expect("outbox");
    let (mut raw_us, mut push_us) = (Vec::new(), Vec::new());
    for (i, payload) in (1..=n).zip(&payloads) {
        let t = Instant::now();
        raw.write_all(payload).expect("write");
        raw.sync_data().expect("fdatasync");
        raw_us.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        outbox.push(i, payload.clone()).expect("stored");
        push_us.push(t.elapsed().as_secs_f64() * 1e6);
    }

    let mut queue: Queue<Vec<u8>> = Queue::new(u64::MAX, 32);
    let memory_us = timed(n, |i| {
        let p = payloads[(i - 1) as usize].clone();
        queue.push(i, event_record_len(p.len()), p);
    });

    let ack_us = timed(n, |_| {
        let (id, _) = outbox.next_to_send().expect("stored");
        outbox.mark_sent();
        assert!(outbox.ack(id));
    });

    let (raw_med, raw_p99, raw_mean) = summary(raw_us);
    let rows = [
        ("store (append + fdatasync)", summary(push_us)),
        ("acknowledge (append)", summary(ack_us)),
        ("baseline: write + fdatasync", (raw_med, raw_p99, raw_mean)),
        ("baseline: in-memory queue", summary(memory_us)),
    ];
    println!(
        "{:<30} {:>12} {:>12} {:>12} {:>14}",
        "per event", "median us", "p99 us", "mean us", "mean / floor"
    );
    for (name, (med, p99, mean)) in rows {
        println!(
            "{name:<30} {med:>12.1} {p99:>12.1} {mean:>12.1} {:>14.2}",
            mean / raw_mean
        );
    }
}
