//! The bridge's counters and their Prometheus text exposition (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why an MQTT payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedReason {
    /// Not JSON, or JSON of the wrong shape.
    Json,
    /// Over the protocol's size limit.
    TooLarge,
    /// The right shape with a value out of range.
    Invalid,
    /// A topic that is not a valid Spotter topic.
    Topic,
}

impl MalformedReason {
    const ALL: [MalformedReason; 4] = [Self::Json, Self::TooLarge, Self::Invalid, Self::Topic];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::TooLarge => "too_large",
            Self::Invalid => "invalid",
            Self::Topic => "topic",
        }
    }
}

/// Why a well-formed payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A studio/stream not in the configuration.
    UnknownStream,
    /// A SKU not in the catalog.
    UnknownSku,
}

impl RejectReason {
    const ALL: [RejectReason; 2] = [Self::UnknownStream, Self::UnknownSku];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownStream => "unknown_stream",
            Self::UnknownSku => "unknown_sku",
        }
    }
}

/// What a payload was: an event or an on-screen snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// `.../events`
    Events,
    /// `.../onscreen`
    OnScreen,
}

impl PayloadKind {
    const ALL: [PayloadKind; 2] = [Self::Events, Self::OnScreen];

    fn index(self) -> usize {
        self as usize
    }

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::OnScreen => "onscreen",
        }
    }
}

/// Every counter the bridge keeps. Shared (`Arc`) and updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Metrics {
    received: [AtomicU64; 2],
    malformed: [[AtomicU64; 4]; 2],
    rejected: [[AtomicU64; 2]; 2],
    /// Events that reached a hub and were new.
    pub events_accepted: AtomicU64,
    /// Events dropped as redeliveries (an `(event_id, seq)` already seen).
    pub events_duplicate: AtomicU64,
    /// On-screen snapshots that changed what viewers see.
    pub onscreen_applied: AtomicU64,
    /// Viewer sockets open now.
    pub viewers_connected: AtomicI64,
    /// Viewer sockets accepted since start.
    pub viewers_accepted: AtomicU64,
    /// Viewers refused with HTTP 503 because the viewer budget was spent.
    pub viewers_refused_full: AtomicU64,
    /// Viewers refused with HTTP 429 because their address held `viewer.max_per_address` sockets.
    pub viewers_refused_address: AtomicU64,
    /// HTTP connections closed because their request headers did not arrive within
    /// `http.header_timeout_secs` (slow or silent clients).
    pub http_header_timeouts: AtomicU64,
    /// Viewer sockets allowed at once (the open-files limit less a reserve, or
    /// `viewer.max_connections`).
    pub viewers_budget: AtomicU64,
    /// Viewers that reconnected and got what they missed.
    pub viewers_recovered: AtomicU64,
    /// Viewers that asked to recover and were told to resync.
    pub viewers_resync: AtomicU64,
    /// Viewers disconnected for falling behind.
    pub viewers_dropped_slow: AtomicU64,
    /// Viewers disconnected for sending something not allowed.
    pub viewers_dropped_bad_input: AtomicU64,
    /// Chat messages delivered to viewers (from the broker, deduplicated).
    pub chat_messages: AtomicU64,
    /// Chat requests refused or answered with an error (rates, limits, tokens, malformed).
    pub chat_refused: AtomicU64,
    /// Viewer sockets closed because their user was banned.
    pub chat_banned_closed: AtomicU64,
    /// 1 while subscribed to the broker.
    pub mqtt_connected: AtomicI64,
    /// Broker connection failures since start.
    pub mqtt_connection_errors: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts a payload received on a subscribed topic.
    pub fn received(&self, kind: PayloadKind) {
        inc(&self.received[kind.index()]);
    }

    /// Counts a payload that could not be decoded.
    pub fn malformed(&self, kind: PayloadKind, reason: MalformedReason) {
        inc(&self.malformed[kind.index()][reason as usize]);
    }

    /// Counts a payload (or one product of a snapshot) that was refused.
    pub fn rejected(&self, kind: PayloadKind, reason: RejectReason) {
        inc(&self.rejected[kind.index()][reason as usize]);
    }

    /// Adds one to a plain counter.
    pub fn inc(counter: &AtomicU64) {
        inc(counter);
    }

    /// The current value of `spotter_bridge_events_malformed_total{reason}` (for tests and logs).
    pub fn malformed_count(&self, kind: PayloadKind, reason: MalformedReason) -> u64 {
        self.malformed[kind.index()][reason as usize].load(Ordering::Relaxed)
    }

    /// Renders the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);

        header(
            &mut out,
            "spotter_bridge_messages_received_total",
            "counter",
            "MQTT payloads received on subscribed topics, by kind.",
        );
        for k in PayloadKind::ALL {
            sample(
                &mut out,
                "spotter_bridge_messages_received_total",
                &[("kind", k.as_str())],
                get(&self.received[k.index()]),
            );
        }

        header(
            &mut out,
            "spotter_bridge_events_received_total",
            "counter",
            "Product event payloads received.",
        );
        sample(
            &mut out,
            "spotter_bridge_events_received_total",
            &[],
            get(&self.received[PayloadKind::Events.index()]),
        );

        header(
            &mut out,
            "spotter_bridge_events_accepted_total",
            "counter",
            "Product events delivered to a stream's viewers.",
        );
        sample(
            &mut out,
            "spotter_bridge_events_accepted_total",
            &[],
            get(&self.events_accepted),
        );

        header(
            &mut out,
            "spotter_bridge_events_duplicate_total",
            "counter",
            "Product events dropped as redeliveries of an (event_id, seq) already seen.",
        );
        sample(
            &mut out,
            "spotter_bridge_events_duplicate_total",
            &[],
            get(&self.events_duplicate),
        );

        header(
            &mut out,
            "spotter_bridge_events_malformed_total",
            "counter",
            "Payloads that could not be decoded, by kind and reason.",
        );
        for k in PayloadKind::ALL {
            for r in MalformedReason::ALL {
                let v = get(&self.malformed[k.index()][r as usize]);
                sample(
                    &mut out,
                    "spotter_bridge_events_malformed_total",
                    &[("kind", k.as_str()), ("reason", r.as_str())],
                    v,
                );
            }
        }

        header(
            &mut out,
            "spotter_bridge_events_rejected_total",
            "counter",
            "Well-formed payloads refused, by kind and reason.",
        );
        for k in PayloadKind::ALL {
            for r in RejectReason::ALL {
                let v = get(&self.rejected[k.index()][r as usize]);
                sample(
                    &mut out,
                    "spotter_bridge_events_rejected_total",
                    &[("kind", k.as_str()), ("reason", r.as_str())],
                    v,
                );
            }
        }

        header(
            &mut out,
            "spotter_bridge_onscreen_applied_total",
            "counter",
            "On-screen snapshots newer than any event seen, applied to a stream.",
        );
        sample(
            &mut out,
            "spotter_bridge_onscreen_applied_total",
            &[],
            get(&self.onscreen_applied),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_connected",
            "gauge",
            "Viewer WebSockets open now.",
        );
        sample_i(
            &mut out,
            "spotter_bridge_viewers_connected",
            self.viewers_connected.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_accepted_total",
            "counter",
            "Viewer WebSockets accepted since start.",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_accepted_total",
            &[],
            get(&self.viewers_accepted),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_refused_full_total",
            "counter",
            "Viewers refused with HTTP 503: the viewer budget was spent.",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_refused_full_total",
            &[],
            get(&self.viewers_refused_full),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_refused_address_total",
            "counter",
            "Viewers refused with HTTP 429: their address held viewer.max_per_address sockets.",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_refused_address_total",
            &[],
            get(&self.viewers_refused_address),
        );

        header(
            &mut out,
            "spotter_bridge_http_header_timeouts_total",
            "counter",
            "HTTP connections closed: request headers not received within http.header_timeout_secs.",
        );
        sample(
            &mut out,
            "spotter_bridge_http_header_timeouts_total",
            &[],
            get(&self.http_header_timeouts),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_budget",
            "gauge",
            "Viewer WebSockets allowed at once (open-files limit less a reserve, or viewer.max_connections).",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_budget",
            &[],
            get(&self.viewers_budget),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_recovered_total",
            "counter",
            "Reconnecting viewers that were sent what they missed.",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_recovered_total",
            &[],
            get(&self.viewers_recovered),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_resync_total",
            "counter",
            "Reconnecting viewers whose position was no longer held (told to resync).",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_resync_total",
            &[],
            get(&self.viewers_resync),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_dropped_slow_total",
            "counter",
            "Viewers disconnected for falling behind their queue.",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_dropped_slow_total",
            &[],
            get(&self.viewers_dropped_slow),
        );

        header(
            &mut out,
            "spotter_bridge_viewers_dropped_bad_input_total",
            "counter",
            "Viewers disconnected for oversize, binary or non-UTF-8 frames, or for flooding.",
        );
        sample(
            &mut out,
            "spotter_bridge_viewers_dropped_bad_input_total",
            &[],
            get(&self.viewers_dropped_bad_input),
        );

        for (name, help, counter) in [
            (
                "spotter_bridge_chat_messages_total",
                "Chat messages delivered to viewers (from the broker, deduplicated).",
                &self.chat_messages,
            ),
            (
                "spotter_bridge_chat_refused_total",
                "Chat requests refused or answered with an error.",
                &self.chat_refused,
            ),
            (
                "spotter_bridge_chat_banned_closed_total",
                "Viewer sockets closed because their user was banned.",
                &self.chat_banned_closed,
            ),
        ] {
            header(&mut out, name, "counter", help);
            sample(&mut out, name, &[], get(counter));
        }

        header(
            &mut out,
            "spotter_bridge_mqtt_connected",
            "gauge",
            "1 while connected and subscribed to the broker.",
        );
        sample_i(
            &mut out,
            "spotter_bridge_mqtt_connected",
            self.mqtt_connected.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "spotter_bridge_mqtt_connection_errors_total",
            "counter",
            "Broker connection failures (each followed by a backoff).",
        );
        sample(
            &mut out,
            "spotter_bridge_mqtt_connection_errors_total",
            &[],
            get(&self.mqtt_connection_errors),
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    let _ = if labels.is_empty() {
        writeln!(out, "{name} {value}")
    } else {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        writeln!(out, "{name}{{{}}} {value}", labels.join(","))
    };
}

fn sample_i(out: &mut String, name: &str, value: i64) {
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_counters() {
        let m = Metrics::default();
        m.received(PayloadKind::Events);
        m.received(PayloadKind::Events);
        m.malformed(PayloadKind::Events, MalformedReason::Json);
        m.rejected(PayloadKind::OnScreen, RejectReason::UnknownSku);
        Metrics::inc(&m.events_accepted);
        m.viewers_connected.fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("spotter_bridge_events_received_total 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "spotter_bridge_events_malformed_total{kind=\"events\",reason=\"json\"} 1\n"
        ));
        assert!(text.contains(
            "spotter_bridge_events_rejected_total{kind=\"onscreen\",reason=\"unknown_sku\"} 1\n"
        ));
        assert!(text.contains("spotter_bridge_events_accepted_total 1\n"));
        assert!(text.contains("spotter_bridge_viewers_connected 3\n"));
        assert!(text.contains("# TYPE spotter_bridge_viewers_connected gauge\n"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
