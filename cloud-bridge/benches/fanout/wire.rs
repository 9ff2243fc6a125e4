//! What the coordinator and its workers share: the event id that carries an event's sequence
//! number and publish time through the bridge, the clock, and the line format of the workers'
//! reports (`key=value` words; histograms as `value:count` pairs).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Largest delay or handshake time a histogram holds (longer ones count as this), microseconds.
const HISTOGRAM_MAX_US: u64 = 120_000_000;

/// CLOCK_REALTIME in microseconds: the one clock every process on the machine shares.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The `event_id` of the bench's event `seq` published at `publish_us`: `b<seq>.<publish_us>`
/// (printable ASCII, about 25 bytes, within the protocol's 64).
pub fn event_id(seq: u64, publish_us: u64) -> String {
    format!("b{seq}.{publish_us}")
}

/// What a viewer needs from one text frame, found without decoding the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFrame {
    /// `hello`: the viewer has joined.
    Hello,
    /// One of the bench's events: its sequence number and publish time.
    Event {
        /// The bench's sequence number.
        seq: u64,
        /// When it was published, microseconds of [`now_us`].
        publish_us: u64,
    },
    /// An event that is not the bench's, or anything else (viewer counts, chat history).
    Other,
}

/// Classifies a text frame by its tag (`{"kind":"..."`, which serde writes first) and, for an
/// event, the bench's event id.
pub fn classify(frame: &[u8]) -> TextFrame {
    const EVENT: &[u8] = b"{\"kind\":\"event\"";
    const HELLO: &[u8] = b"{\"kind\":\"hello\"";
    const ID: &[u8] = b"\"event_id\":\"b";
    if frame.starts_with(EVENT) {
        let parsed = find(frame, ID).and_then(|at| {
            let (seq, rest) = number(&frame[at + ID.len()..])?;
            let (publish_us, rest) = number(rest.strip_prefix(b".")?)?;
            (rest.first() == Some(&b'"')).then_some(TextFrame::Event { seq, publish_us })
        });
        parsed.unwrap_or(TextFrame::Other)
    } else if frame.starts_with(HELLO) {
        TextFrame::Hello
    } else {
        TextFrame::Other
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// A decimal number at the start of `s` (1-19 digits) and what follows it.
fn number(s: &[u8]) -> Option<(u64, &[u8])> {
    let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let value = s[..len]
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some((value, &s[len..]))
}

/// A histogram of microseconds, 3 significant digits, up to two minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
        .expect("constant bounds: 1 <= low, high >= 2 * low, 3 significant digits")
}

/// `value:count,value:count,...` (`-` when empty): the non-empty buckets.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    for v in h.iter_recorded() {
        let _ = write!(out, "{}:{},", v.value_iterated_to(), v.count_at_value());
    }
    if out.is_empty() {
        out.push('-');
    } else {
        out.pop();
    }
    out
}

/// Adds what [`encode_histogram`] wrote into `into`.
pub fn merge_histogram(into: &mut Histogram<u64>, text: &str) -> Result<(), String> {
    if text == "-" {
        return Ok(());
    }
    for pair in text.split(',') {
        let parsed = pair
            .split_once(':')
            .and_then(|(v, c)| Some((v.parse::<u64>().ok()?, c.parse::<u64>().ok()?)));
        let Some((value, count)) = parsed else {
            return Err(format!("bad histogram bucket {pair:?}"));
        };
        into.saturating_record_n(value, count);
    }
    Ok(())
}

/// One report line from a worker: its first word, then `key=value` words.
#[derive(Debug)]
pub struct Report {
    /// The first word (`connected`, `result`).
    pub kind: String,
    fields: HashMap<String, String>,
}

impl Report {
    /// Parses `kind key=value key=value ...`.
    pub fn parse(line: &str) -> Result<Report, String> {
        let mut words = line.split_whitespace();
        let kind = words.next().ok_or("empty report line")?.to_owned();
        let mut fields = HashMap::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("{w:?} in {kind} report is not key=value"))?;
            fields.insert(k.to_owned(), v.to_owned());
        }
        Ok(Report { kind, fields })
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> Result<u64, String> {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{} report has no number {key}", self.kind))
    }

    /// A text field (`-` when absent).
    pub fn text(&self, key: &str) -> &str {
        self.fields.get(key).map_or("-", String::as_str)
    }
}
