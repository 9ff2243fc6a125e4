//! The report as a person reads it: the headline numbers against DESIGN.md's targets, then
//! where it fails: per clip, per condition, per product.

use std::fmt::Write;

use super::metrics::{Report, Wrong};

/// Recall target (DESIGN.md).
pub const TARGET_RECALL: f64 = 0.95;
/// Precision target (DESIGN.md).
pub const TARGET_PRECISION: f64 = 0.98;
/// Median time to the first detection, target (DESIGN.md).
pub const TARGET_MEDIAN_MS: u64 = 500;

fn ratio(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into())
}

fn secs(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

/// Whether the report meets every target.
pub fn meets_targets(r: &Report) -> bool {
    r.recall.is_some_and(|v| v >= TARGET_RECALL)
        && r.precision.is_some_and(|v| v >= TARGET_PRECISION)
        && r.latency.is_some_and(|l| l.median_ms <= TARGET_MEDIAN_MS)
}

/// Renders the report; `title` heads it.
pub fn render(r: &Report, title: &str) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut s, r, title);
    s
}

fn write_report(s: &mut String, r: &Report, title: &str) -> std::fmt::Result {
    writeln!(s, "{title}")?;
    writeln!(
        s,
        "  recall     {}  ({}/{} catalog appearances got a right `new` by their end + {} s)",
        ratio(r.recall),
        r.found,
        r.catalog_appearances,
        secs(r.scoring.slack_ms)
    )?;
    let reasons: Vec<String> = r
        .wrong_by_reason
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    writeln!(
        s,
        "  precision  {}  ({}/{} `new` events were right{})",
        ratio(r.precision),
        r.right_events,
        r.new_events,
        if reasons.is_empty() {
            String::new()
        } else {
            format!("; wrong: {}", reasons.join(", "))
        }
    )?;
    match r.latency {
        Some(l) => writeln!(
            s,
            "  time to first detection  median {} s, p90 {} s, max {} s  (n = {})",
            secs(l.median_ms),
            secs(l.p90_ms),
            secs(l.max_ms),
            l.n
        )?,
        None => writeln!(s, "  time to first detection  n/a (nothing found)")?,
    }
    writeln!(
        s,
        "  look-alikes  {}/{} appearances drew a wrong `new`; {} kept a gone product's event \
         going (its `update`s)",
        r.lookalikes_that_drew_events, r.lookalike_appearances, r.lookalikes_that_held_events
    )?;
    writeln!(
        s,
        "  targets (recall >= {TARGET_RECALL}, precision >= {TARGET_PRECISION}, median <= {} s): {}",
        secs(TARGET_MEDIAN_MS),
        if meets_targets(r) { "MET" } else { "NOT MET" }
    )?;

    writeln!(s, "\nper clip (found/catalog appearances, wrong events):")?;
    for c in &r.clips {
        writeln!(
            s,
            "  {:<8} {:>2}/{:<2} found, {:>2} wrong, {} look-alike appearance(s)",
            c.name,
            c.hits.len(),
            c.catalog_appearances,
            c.false_events.len(),
            c.lookalike_appearances
        )?;
        for m in &c.misses {
            writeln!(
                s,
                "      missed {:<9} {:>5}-{:<5} s  ({})",
                m.sku,
                secs(m.start_ms),
                secs(m.end_ms),
                m.how
            )?;
        }
        for f in &c.false_events {
            let why = match &f.wrong {
                Wrong::Duplicate => "a second `new` for one appearance".to_string(),
                Wrong::LookAlike { shown } => format!("look-alike {shown} on screen"),
                Wrong::WrongProduct { shown } => format!("{shown} on screen"),
                Wrong::NothingShown => "nothing on screen".to_string(),
            };
            writeln!(
                s,
                "      wrong  {:<9} at {:>5} s  score {:.2}  ({why})",
                f.sku,
                secs(f.pts_ms),
                f.score
            )?;
        }
    }

    writeln!(s, "\nrecall by condition (catalog appearances):")?;
    let mut last = "";
    for row in &r.conditions {
        let name = if row.condition == last {
            ""
        } else {
            row.condition
        };
        last = row.condition;
        writeln!(
            s,
            "  {:<9} {:<22} {:>3}/{:<3} {:>6}  median {}",
            name,
            row.bucket,
            row.found,
            row.appearances,
            ratio((row.appearances > 0).then(|| row.found as f64 / row.appearances as f64)),
            row.median_latency_ms
                .map(|m| format!("{} s", secs(m)))
                .unwrap_or_else(|| "-".into())
        )?;
    }

    writeln!(
        s,
        "\nper product (shown, found; wrong `new`s naming it; wrong `new`s while it was shown):"
    )?;
    for k in &r.skus {
        // A look-alike has nothing to find: only what it drew counts.
        let found = if k.in_catalog {
            k.found.to_string()
        } else {
            "-".into()
        };
        writeln!(
            s,
            "  {:<9} {:<11} shown {:>2}  found {:>2}  named wrongly {:>2}  drew {:>2}",
            k.sku,
            if k.in_catalog {
                "catalog"
            } else {
                "look-alike"
            },
            k.appearances,
            found,
            k.named_wrongly,
            k.drew_false
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::metrics::{score, ClipInput, Scoring};
    use super::*;

    #[test]
    fn empty_report_renders_and_misses_targets() {
        let r = score(
            &[ClipInput {
                name: "clip-01".into(),
                backdrop: None,
                truth: Vec::new(),
                events: Vec::new(),
            }],
            Scoring::default(),
        );
        let text = render(&r, "split test");
        assert!(text.contains("recall     n/a"), "{text}");
        assert!(text.contains("NOT MET"), "{text}");
        assert!(!meets_targets(&r));
    }
}
