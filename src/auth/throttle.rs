//! Fair admission of costly work by key: failed API key checks per lookup id and per
//! client address, sign-ups per address, rotations per organisation. A key check that
//! misses the cache costs a database lookup and an Argon2 verification (~20-40 ms of a
//! shared thread); without a bound per key, one tenant presenting its own lookup id
//! with random secrets, or one address presenting random keys, fills the shared
//! queues and every other tenant's first request after a restart waits behind it.
//!
//! A `Throttle` counts, per key, the attempts of the current window that failed plus
//! those still in flight; when they reach `max`, further attempts are refused until the
//! window ends. Plain data taking `now`: tests drive it without a clock. Core-local
//! (each HTTP core has its own), so the bound across a process is `max` x cores.

use std::hash::Hash;
use std::net::IpAddr;

use ahash::AHashMap;

/// Length of a throttle window.
pub const WINDOW_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start_ms: u64,
    /// Attempts of this window that counted (failed, or count regardless).
    counted: u32,
    /// Attempts begun and not yet ended.
    in_flight: u32,
}

/// Per-key attempt counter. Owned by one HTTP core.
#[derive(Debug)]
pub struct Throttle<K> {
    entries: AHashMap<K, Entry>,
    /// Counted plus in-flight attempts allowed per key per window.
    max: u32,
    /// Keys tracked at most; beyond it idle entries are evicted.
    entries_max: usize,
}

/// A refusal: retry after this many milliseconds (at least 1 s when rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_ms: u64,
}

impl<K: Hash + Eq + Copy> Throttle<K> {
    pub fn new(max: u32, entries_max: usize) -> Throttle<K> {
        assert!(entries_max > 0);
        Throttle { entries: AHashMap::new(), max, entries_max }
    }

    /// Before an attempt. `Ok`: go ahead, and call `end` exactly once afterwards.
    pub fn begin(&mut self, key: K, now_ms: u64) -> Result<(), Refused> {
        if self.max == 0 {
            return Ok(());
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.entries_max {
            self.evict(now_ms);
        }
        let entry =
            self.entries.entry(key).or_insert(Entry { window_start_ms: now_ms, counted: 0, in_flight: 0 });
        if now_ms >= entry.window_start_ms + WINDOW_MS {
            entry.window_start_ms = now_ms;
            entry.counted = 0;
        }
        if entry.counted + entry.in_flight >= self.max {
            let retry_after_ms = if entry.counted >= self.max {
                entry.window_start_ms + WINDOW_MS - now_ms
            } else {
                // Only attempts in flight stand in the way: they end within seconds.
                1_000
            };
            return Err(Refused { retry_after_ms });
        }
        entry.in_flight += 1;
        Ok(())
    }

    /// After an attempt begun with `begin`: `counts` when it failed (or when every
    /// attempt counts, as for sign-ups).
    pub fn end(&mut self, key: K, now_ms: u64, counts: bool) {
        let Some(entry) = self.entries.get_mut(&key) else { return };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if counts {
            if now_ms >= entry.window_start_ms + WINDOW_MS {
                entry.window_start_ms = now_ms;
                entry.counted = 0;
            }
            entry.counted += 1;
        }
        if entry.counted == 0 && entry.in_flight == 0 {
            self.entries.remove(&key);
        }
    }

    /// True when `key` has attempts in flight or counted in the current window (a
    /// failed check from this address, say). Always false for a throttle that is off.
    pub fn is_active(&self, key: &K, now_ms: u64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.in_flight > 0 || (e.counted > 0 && now_ms < e.window_start_ms + WINDOW_MS))
    }

    /// Whether the throttle counts at all (`max` 0 turns it off).
    pub fn is_on(&self) -> bool {
        self.max > 0
    }

    /// Counts one attempt that counts whatever its outcome (a sign-up, a rotation).
    pub fn take(&mut self, key: K, now_ms: u64) -> Result<(), Refused> {
        self.begin(key, now_ms)?;
        self.end(key, now_ms, true);
        Ok(())
    }

    /// Makes room: drops entries whose window ended and that have nothing in flight;
    /// if none, any one without attempts in flight (it only loses its count).
    fn evict(&mut self, now_ms: u64) {
        self.entries.retain(|_, e| e.in_flight > 0 || now_ms < e.window_start_ms + WINDOW_MS);
        if self.entries.len() >= self.entries_max {
            if let Some(key) = self.entries.iter().find(|(_, e)| e.in_flight == 0).map(|(k, _)| *k) {
                self.entries.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A client address as a throttle key: IPv4 addresses whole, IPv6 by their /64 (one
/// host usually holds a whole /64, so counting single addresses would not limit it).
pub fn address_key(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_attempts_in_flight_count_until_the_window_ends() {
        let mut throttle: Throttle<u8> = Throttle::new(3, 10);
        for _ in 0..3 {
            assert_eq!(throttle.begin(1, 0), Ok(()));
        }
        assert_eq!(throttle.begin(1, 0), Err(Refused { retry_after_ms: 1_000 }), "three in flight");
        assert_eq!(throttle.begin(2, 0), Ok(()), "other keys are not affected");
        throttle.end(1, 10, false);
        assert_eq!(throttle.begin(1, 10), Ok(()), "a success frees its place");
        for _ in 0..3 {
            throttle.end(1, 20, true);
        }
        assert_eq!(throttle.begin(1, 1_000), Err(Refused { retry_after_ms: WINDOW_MS - 1_000 }));
        assert_eq!(throttle.begin(1, WINDOW_MS), Ok(()), "a new window");
    }

    #[test]
    fn successes_leave_no_entry_and_the_table_is_bounded() {
        let mut throttle: Throttle<u32> = Throttle::new(2, 4);
        throttle.begin(9, 0).unwrap();
        throttle.end(9, 0, false);
        assert!(throttle.is_empty());
        for key in 0..100 {
            if throttle.begin(key, 0).is_ok() {
                throttle.end(key, 0, true);
            }
        }
        assert!(throttle.len() <= 4);
        let mut counted: Throttle<u32> = Throttle::new(2, 4);
        assert!(counted.take(1, 0).is_ok() && counted.take(1, 0).is_ok());
        assert_eq!(counted.take(1, 0), Err(Refused { retry_after_ms: WINDOW_MS }));
        let mut unlimited: Throttle<u32> = Throttle::new(0, 1);
        assert!((0..10).all(|_| unlimited.begin(1, 0).is_ok()), "max 0 turns it off");
    }

    #[test]
    fn activity_is_what_is_in_flight_or_counted_this_window() {
        let mut throttle: Throttle<u8> = Throttle::new(5, 10);
        assert!(!throttle.is_active(&1, 0));
        throttle.begin(1, 0).unwrap();
        assert!(throttle.is_active(&1, 0), "in flight");
        throttle.end(1, 0, true);
        assert!(throttle.is_active(&1, 10), "a failure this window");
        assert!(!throttle.is_active(&1, WINDOW_MS), "not after it");
        let off: Throttle<u8> = Throttle::new(0, 1);
        assert!(!off.is_on() && !off.is_active(&1, 0));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key(mapped), address_key("192.0.2.1".parse().unwrap()));
    }
}
