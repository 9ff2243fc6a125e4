//! The viewers' share of the process's open files: a viewer socket is admitted only while fewer
//! than the budget are open, so that the embedded broker's clients, `/metrics`, the catalog's files
//! and the broker connection always find a descriptor when viewers fill their share; and only
//! while its address holds fewer than its own share, so that one host cannot take them all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Descriptors kept out of the viewers' budget whatever the limit: the runtime's own (epoll,
/// eventfds, listeners, logs), the broker connection and its clients, a few HTTP requests.
pub const FIXED_RESERVE: u64 = 64;
/// Beyond that, one descriptor in this many is kept out too, for the broker's clients and
/// concurrent plain HTTP requests, which grow with a larger installation.
pub const RESERVE_DIVISOR: u64 = 64;

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

/// Why a viewer was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The budget is spent (HTTP 503).
    Full,
    /// Its address already holds `per_address` sockets (HTTP 429).
    Address,
}

/// Counts open viewer sockets against the budget, and each address's against its share.
#[derive(Debug)]
pub struct Admission {
    budget: usize,
    open: AtomicUsize,
    /// At most this many sockets from one address; 0: no limit.
    per_address: usize,
    /// Open sockets by address, only while `per_address` is set; an address leaves the map with
    /// its last socket, so the map is as large as the addresses connected now.
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted viewer; its places are given back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    /// The address it counts against, when the per-address limit is on.
    address: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.address {
            self.admission.release_address(ip);
        }
    }
}

impl Admission {
    /// Admits at most `budget` viewers at a time, from any number of addresses.
    pub fn new(budget: usize) -> Arc<Self> {
        Self::with_per_address(budget, 0)
    }

    /// Admits at most `budget` viewers at a time, and at most `per_address` of them from one IP
    /// address (0: no per-address limit).
    pub fn with_per_address(budget: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Admission {
            budget,
            open: AtomicUsize::new(0),
            per_address,
            by_address: Mutex::new(HashMap::new()),
        })
    }

    /// The per-address limit (0: none).
    pub fn per_address(&self) -> usize {
        self.per_address
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Viewer places taken now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A place for one more viewer from `ip`, or why not.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        // An IPv4 client on a dual-stack listener shows as ::ffff:a.b.c.d: count it as a.b.c.d.
        let address = (self.per_address > 0).then(|| ip.to_canonical());
        if let Some(ip) = address {
            let mut map = self
                .by_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = map.entry(ip).or_insert(0);
            if *n >= self.per_address {
                return Err(Refused::Address);
            }
            *n += 1;
        }
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.budget).then_some(n + 1)
            });
        if admitted.is_err() {
            if let Some(ip) = address {
                self.release_address(ip);
            }
            return Err(Refused::Full);
        }
        Ok(Slot {
            admission: self.clone(),
            address,
        })
    }

    /// Sockets open now from `ip` (0 when the per-address limit is off).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    fn release_address(&self, ip: IpAddr) {
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_default_leaves_room_for_the_broker() {
        // 1,024: 64 + 15 kept back.
        assert_eq!(budget(1024, None), (945, BudgetSource::Limit));
        assert_eq!(budget(65_536, None), (64_449, BudgetSource::Limit));
        // This sandbox's cap of 20,000 open files still seats 19,000 viewers.
        assert_eq!(budget(20_000, None).0, 19_625);
        assert_eq!(budget(10, None).0, 0, "under the reserve: no viewers");
    }

    #[test]
    fn configured_maximum_applies_under_the_limit_only() {
        assert_eq!(budget(1024, Some(10)), (10, BudgetSource::Config));
        assert_eq!(budget(1024, Some(5000)), (945, BudgetSource::ConfigCapped));
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OFFICE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn places_come_back_when_viewers_leave() {
        let a = Admission::new(2);
        let one = a.try_admit(HOME).expect("first");
        let two = a.try_admit(HOME).expect("second");
        assert_eq!(
            a.try_admit(OFFICE).map(drop),
            Err(Refused::Full),
            "the budget is spent"
        );
        assert_eq!(a.open(), 2);
        drop(one);
        let three = a.try_admit(HOME).expect("a place came back");
        drop((two, three));
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in() {
        let a = Admission::with_per_address(10, 2);
        let home: Vec<_> = (0..2)
            .map(|_| a.try_admit(HOME).expect("within the share"))
            .collect();
        assert_eq!(a.try_admit(HOME).map(drop), Err(Refused::Address));
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(
            a.try_admit(mapped).map(drop),
            Err(Refused::Address),
            "the same host over IPv6-mapped IPv4"
        );
        let office = a.try_admit(OFFICE).expect("another address");
        assert_eq!(
            (a.open(), a.open_from(HOME), a.open_from(OFFICE)),
            (3, 2, 1)
        );
        drop(home);
        assert_eq!(a.open_from(HOME), 0);
        assert!(
            a.by_address.lock().expect("lock").len() == 1,
            "gone addresses leave the map"
        );
        drop(a.try_admit(HOME).expect("its places came back"));
        drop(office);
        assert_eq!(a.open(), 0);
        assert!(a.by_address.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_full_bridge_does_not_charge_the_address() {
        let a = Admission::with_per_address(1, 1);
        let office = a.try_admit(OFFICE).expect("first");
        assert_eq!(a.try_admit(HOME).map(drop), Err(Refused::Full));
        assert_eq!(a.open_from(HOME), 0, "a refused viewer holds no share");
        drop(office);
        drop(a.try_admit(HOME).expect("a place came back"));
    }

    #[test]
    fn no_per_address_limit_at_zero() {
        let a = Admission::with_per_address(100, 0);
        let all: Vec<_> = (0..100)
            .map(|_| a.try_admit(HOME).expect("no share"))
            .collect();
        assert_eq!(a.try_admit(HOME).map(drop), Err(Refused::Full));
        assert_eq!(a.open_from(HOME), 0, "nothing kept by address");
        drop(all);
    }
}
