//! Which publish a PUBACK acknowledges: pairs rumqttc's packet ids with what was published, as a
//! pure state machine fed with rumqttc's events in the order it reports them.
//!
//! rumqttc assigns the packet id when its event loop takes a publish off its request channel,
//! and reports it as `Outgoing::Publish(pkid)`, or as `Outgoing::AwaitAck(pkid)` when that id is
//! still in use (the publish is then held back and goes out, reported again as
//! `Outgoing::Publish(pkid)`, right after the PUBACK that frees the id). Publishes leave the
//! channel in the order they entered it, so as long as one task hands every QoS 1 publish to
//! rumqttc, in order, the n-th report belongs to the n-th publish handed over.

use std::collections::{HashMap, VecDeque};

/// Pairs packet ids with tags (what the caller published).
#[derive(Debug, Clone)]
pub struct PacketIds<T> {
    /// Handed to rumqttc, packet id not reported yet, oldest first.
    requested: VecDeque<T>,
    /// On the wire, awaiting their PUBACK.
    on_wire: HashMap<u16, T>,
    /// Held back by rumqttc until the PUBACK for its packet id arrives.
    held: Option<(u16, T)>,
    /// The held publish went out after that PUBACK; its `Outgoing::Publish` report is next.
    released: Option<u16>,
}

/// A report that does not fit what was handed over: a bug here or in rumqttc, never the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// rumqttc reported a packet id with nothing handed over.
    #[error("rumqttc reported packet id {0} but no publish was waiting for one")]
    Unexpected(u16),
    /// rumqttc reused a packet id still on the wire without reporting a collision.
    #[error("packet id {0} reused while still awaiting its PUBACK")]
    Reused(u16),
}

impl<T> Default for PacketIds<T> {
    fn default() -> Self {
        PacketIds {
            requested: VecDeque::new(),
            on_wire: HashMap::new(),
            held: None,
            released: None,
        }
    }
}

impl<T> PacketIds<T> {
    /// Nothing handed over.
    pub fn new() -> Self {
        Self::default()
    }

    /// A QoS 1 publish tagged `tag` was handed to rumqttc.
    pub fn requested(&mut self, tag: T) {
        self.requested.push_back(tag);
    }

    /// `Outgoing::Publish(pkid)`.
    pub fn published(&mut self, pkid: u16) -> Result<(), Mismatch> {
        if pkid == 0 {
            return Ok(()); // QoS 0: no acknowledgement to wait for
        }
        if self.released == Some(pkid) {
            self.released = None;
            return Ok(());
        }
        let tag = self
            .requested
            .pop_front()
            .ok_or(Mismatch::Unexpected(pkid))?;
        if self.on_wire.insert(pkid, tag).is_some() {
            return Err(Mismatch::Reused(pkid));
        }
        Ok(())
    }

    /// `Outgoing::AwaitAck(pkid)`: the next publish waits for packet id `pkid` to be freed.
    pub fn held_back(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let tag = self
            .requested
            .pop_front()
            .ok_or(Mismatch::Unexpected(pkid))?;
        self.held = Some((pkid, tag));
        Ok(())
    }

    /// `Incoming::PubAck(pkid)`: what it acknowledges, if anything is known for that id.
    pub fn acked(&mut self, pkid: u16) -> Option<T> {
        let done = self.on_wire.remove(&pkid);
        if let Some((held, _)) = &self.held {
            if *held == pkid {
                if let Some((_, tag)) = self.held.take() {
                    self.on_wire.insert(pkid, tag);
                    self.released = Some(pkid);
                }
            }
        }
        done
    }

    /// Publishes handed over and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.requested.len() + self.on_wire.len() + usize::from(self.held.is_some())
    }

    /// The connection is gone and rumqttc's copies with it: forgets everything, returning the
    /// tags that were never acknowledged (in no particular order).
    pub fn reset(&mut self) -> Vec<T> {
        self.released = None;
        let mut lost: Vec<T> = self.requested.drain(..).collect();
        lost.extend(self.on_wire.drain().map(|(_, t)| t));
        lost.extend(self.held.take().map(|(_, t)| t));
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pairs_in_order_and_acks_out_of_order() {
        let mut p = PacketIds::new();
        for tag in ["a", "b", "c"] {
            p.requested(tag);
        }
        p.published(1).expect("a");
        p.published(2).expect("b");
        assert_eq!(p.acked(2), Some("b"));
        p.published(3).expect("c");
        assert_eq!(p.acked(1), Some("a"));
        assert_eq!(p.acked(1), None, "acknowledged once");
        assert_eq!(p.acked(3), Some("c"));
        assert_eq!(p.outstanding(), 0);
    }

    #[test]
    fn a_collision_is_paired_with_the_publish_sent_after_the_ack_that_frees_the_id() {
        let mut p = PacketIds::new();
        p.requested("old");
        p.published(1).expect("old");
        p.requested("new");
        p.held_back(1).expect("new waits for id 1");
        assert_eq!(p.outstanding(), 2);
        // rumqttc's order: Incoming::PubAck(1), then Outgoing::Publish(1) for the held publish
        assert_eq!(p.acked(1), Some("old"));
        p.published(1).expect("the release is not a new publish");
        p.requested("next");
        p.published(2).expect("next");
        assert_eq!(p.acked(1), Some("new"));
        assert_eq!(p.acked(2), Some("next"));
    }

    #[test]
    fn reset_returns_what_was_never_acknowledged() {
        let mut p = PacketIds::new();
        for tag in [1, 2, 3] {
            p.requested(tag);
        }
        p.published(5).expect("1");
        let mut lost = p.reset();
        lost.sort_unstable();
        assert_eq!(lost, vec![1, 2, 3]);
        assert_eq!(p.acked(5), None);
        assert_eq!(p.published(6), Err(Mismatch::Unexpected(6)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request,
        Process,
        Ack(usize),
    }

    proptest! {
        /// Against a model of rumqttc (packet ids cycling through 1..=max, a publish held back
        /// while its id is busy and released right after that id's PUBACK), under any order of
        /// requests, sends and PUBACKs (the broker may acknowledge out of order), every PUBACK
        /// is paired with exactly the publish it acknowledges.
        #[test]
        fn every_puback_is_paired_with_its_own_publish(
            max in 1u16..6,
            ops in proptest::collection::vec(
                prop_oneof![
                    Just(Op::Request),
                    Just(Op::Process),
                    (0usize..8).prop_map(Op::Ack),
                ],
                0..300,
            ),
        ) {
            let mut p = PacketIds::new();
            let mut channel: VecDeque<u32> = VecDeque::new();
            let mut on_wire: Vec<(u16, u32)> = Vec::new();
            let mut held: Option<(u16, u32)> = None;
            let (mut last_pkid, mut next_tag) = (0u16, 0u32);
            for op in ops {
                match op {
                    Op::Request => {
                        next_tag += 1;
                        channel.push_back(next_tag);
                        p.requested(next_tag);
                    }
                    Op::Process => {
                        if held.is_some() {
                            continue; // rumqttc takes no request while one is held back
                        }
                        let Some(tag) = channel.pop_front() else { continue };
                        let pkid = if last_pkid + 1 == max {
                            last_pkid = 0;
                            max
                        } else {
                            last_pkid += 1;
                            last_pkid
                        };
                        if on_wire.iter().any(|(id, _)| *id == pkid) {
                            held = Some((pkid, tag));
                            prop_assert!(p.held_back(pkid).is_ok());
                        } else {
                            on_wire.push((pkid, tag));
                            prop_assert!(p.published(pkid).is_ok());
                        }
                    }
                    Op::Ack(i) => {
                        if on_wire.is_empty() {
                            continue;
                        }
                        let (pkid, tag) = on_wire.remove(i % on_wire.len());
                        prop_assert_eq!(p.acked(pkid), Some(tag));
                        if held.is_some_and(|(id, _)| id == pkid) {
                            if let Some(released) = held.take() {
                                on_wire.push(released);
                            }
                            prop_assert!(p.published(pkid).is_ok());
                        }
                    }
                }
                prop_assert_eq!(
                    p.outstanding(),
                    channel.len() + on_wire.len() + usize::from(held.is_some())
                );
            }
        }
    }

    #[test]
    fn qos0_reports_are_ignored_and_reuse_is_reported() {
        let mut p = PacketIds::new();
        p.requested("a");
        p.published(0).expect("QoS 0");
        p.published(4).expect("a");
        p.requested("b");
        assert_eq!(p.published(4), Err(Mismatch::Reused(4)));
    }
}
