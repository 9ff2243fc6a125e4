//! The viewers' share of the process's open files: a viewer socket is admitted only while fewer
//! than the budget are open, so that the embedded broker's clients, `/metrics`, the catalog's files
//! and the broker connection always find a descriptor when viewers fill their share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Descriptors kept out of the viewers' budget whatever the limit: the runtime's own (epoll,
/// eventfds, listeners, logs), the broker connection and its clients, a few HTTP requests.
pub const FIXED_RESERVE: u64 = 64;
/// Beyond that, one descriptor in this many is kept out too, for the broker's clients and
/// concurrent plain HTTP requests, which grow with a larger installation.
pub const RESERVE_DIVISOR: u64 = 16;

/// Where a budget came from (for the start-up log and `validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    /// Derived from the soft open-files limit.
    Limit,
    /// `viewer.max_connections`, under the limit's budget.
    Config,
    /// `viewer.max_connections` was over the limit's budget, which applies instead.
    ConfigCapped,
}

/// How many viewer sockets fit under a soft open-files limit of `soft`, and under
/// `max_connections` when configured.
pub fn budget(soft: u64, max_connections: Option<usize>) -> (usize, BudgetSource) {
    let reserve = FIXED_RESERVE + soft.saturating_sub(FIXED_RESERVE) / RESERVE_DIVISOR;
    let from_limit = usize::try_from(soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    match max_connections {
        None => (from_limit, BudgetSource::Limit),
        Some(m) if m <= from_limit => (m, BudgetSource::Config),
        Some(_) => (from_limit, BudgetSource::ConfigCapped),
    }
}

/// Counts open viewer sockets against the budget.
#[derive(Debug)]
pub struct Admission {
    budget: usize,
    open: AtomicUsize,
}

/// One admitted viewer; its place is given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Admits at most `budget` viewers at a time.
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Admission {
            budget,
            open: AtomicUsize::new(0),
        })
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Viewer places taken now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A place for one more viewer, or `None` when the budget is spent.
    pub fn try_admit(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.budget).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_default_leaves_room_for_the_broker() {
        // 1,024: 64 + 60 kept back.
        assert_eq!(budget(1024, None), (900, BudgetSource::Limit));
        assert_eq!(budget(65_536, None), (61_380, BudgetSource::Limit));
        assert_eq!(budget(20_000, None).0, 18_690);
        assert_eq!(budget(10, None).0, 0, "under the reserve: no viewers");
    }

    #[test]
    fn configured_maximum_applies_under_the_limit_only() {
        assert_eq!(budget(1024, Some(10)), (10, BudgetSource::Config));
        assert_eq!(budget(1024, Some(5000)), (900, BudgetSource::ConfigCapped));
    }

    #[test]
    fn places_come_back_when_viewers_leave() {
        let a = Admission::new(2);
        let one = a.try_admit().expect("first");
        let two = a.try_admit().expect("second");
        assert!(a.try_admit().is_none(), "the budget is spent");
        assert_eq!(a.open(), 2);
        drop(one);
        let three = a.try_admit().expect("a place came back");
        drop((two, three));
        assert_eq!(a.open(), 0);
    }
}
