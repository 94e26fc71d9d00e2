//! Brute-force protection for password checks (the password grant and the login page): after a
//! few free failures, each further failure doubles a waiting time, separately per user name and
//! per client address. Counters are keyed by the name as typed, whether or not such a user exists,
//! so being throttled reveals nothing about which names are real.

use std::net::IpAddr;

use dashmap::DashMap;

/// Failures allowed per user name before waiting starts.
const USER_FREE_FAILURES: u32 = 5;
/// Failures allowed per address before waiting starts (a NAT may hide several users).
const ADDR_FREE_FAILURES: u32 = 20;
/// The longest wait, seconds.
const MAX_DELAY_SECS: i64 = 900;
/// A counter with no failure for this long starts over.
const FORGET_AFTER_SECS: i64 = 3600;
/// Most counters kept per map; beyond it stale ones are dropped first.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy, Default)]
struct Strikes {
    failures: u32,
    blocked_until: i64,
    last_failure: i64,
}

impl Strikes {
    fn fail(&mut self, now: i64, free: u32) {
        if now - self.last_failure > FORGET_AFTER_SECS {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last_failure = now;
        if self.failures > free {
            let doublings = (self.failures - free - 1).min(20);
            let delay = (1i64 << doublings).min(MAX_DELAY_SECS);
            self.blocked_until = now.saturating_add(delay);
        }
    }
}

/// Per-user and per-address failure counters with exponential backoff.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    users: DashMap<String, Strikes>,
    addrs: DashMap<IpAddr, Strikes>,
}

impl Throttle {
    /// `Err(seconds to wait)` when either the name or the address must wait before another try.
    pub(crate) fn check(&self, user: &str, addr: Option<IpAddr>, now: i64) -> Result<(), i64> {
        let user_wait = self.users.get(user).map_or(0, |s| s.blocked_until - now);
        let addr_wait = addr
            .and_then(|a| self.addrs.get(&a).map(|s| s.blocked_until - now))
            .unwrap_or(0);
        let wait = user_wait.max(addr_wait);
        if wait > 0 {
            Err(wait)
        } else {
            Ok(())
        }
    }

    /// Records a failed password check.
    pub(crate) fn failed(&self, user: &str, addr: Option<IpAddr>, now: i64) {
        prune(&self.users, now);
        self.users
            .entry(user.to_owned())
            .or_default()
            .fail(now, USER_FREE_FAILURES);
        if let Some(a) = addr {
            prune(&self.addrs, now);
            self.addrs
                .entry(a)
                .or_default()
                .fail(now, ADDR_FREE_FAILURES);
        }
    }

    /// A correct password clears the name's counter (the address's decays on its own, so one good
    /// login cannot launder a spray of guesses from the same address).
    pub(crate) fn succeeded(&self, user: &str) {
        self.users.remove(user);
    }
}

fn prune<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, Strikes>, now: i64) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, s| s.blocked_until > now || now - s.last_failure <= FORGET_AFTER_SECS);
    // A flood of distinct names within the hour: drop the oldest-failing half rather than grow.
    if map.len() >= MAX_ENTRIES {
        let mut ages: Vec<i64> = map.iter().map(|e| e.last_failure).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 2];
        map.retain(|_, s| s.last_failure > cut || s.blocked_until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_name_waits_after_five_failures_and_the_wait_doubles() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(t.check("jdoe", Some(ip), NOW), Ok(()));
            t.failed("jdoe", Some(ip), NOW);
        }
        assert_eq!(t.check("jdoe", None, NOW), Ok(()), "five are free");
        t.failed("jdoe", None, NOW);
        assert_eq!(t.check("jdoe", None, NOW), Err(1));
        t.failed("jdoe", None, NOW + 1);
        assert_eq!(t.check("jdoe", None, NOW + 1), Err(2));
        t.failed("jdoe", None, NOW + 3);
        assert_eq!(t.check("jdoe", None, NOW + 3), Err(4));
        assert_eq!(t.check("jdoe", None, NOW + 7), Ok(()));
        assert_eq!(t.check("mary", None, NOW + 3), Ok(()), "per name");
        for i in 0..40 {
            t.failed("jdoe", None, NOW + 10 + i);
        }
        assert_eq!(t.check("jdoe", None, NOW + 49), Err(MAX_DELAY_SECS));
        t.succeeded("jdoe");
        assert_eq!(t.check("jdoe", None, NOW + 50), Ok(()));
    }

    #[test]
    fn an_address_spraying_many_names_waits_too() {
        let t = Throttle::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for i in 0..=ADDR_FREE_FAILURES {
            t.failed(&format!("user{i}"), Some(ip), NOW);
        }
        assert_eq!(t.check("fresh-name", Some(ip), NOW), Err(1));
        assert_eq!(
            t.check("fresh-name", Some("2001:db8::2".parse().unwrap()), NOW),
            Ok(())
        );
    }

    #[test]
    fn old_failures_are_forgotten() {
        let t = Throttle::default();
        for _ in 0..5 {
            t.failed("jdoe", None, NOW);
        }
        t.failed("jdoe", None, NOW + FORGET_AFTER_SECS + 1);
        assert_eq!(t.check("jdoe", None, NOW + FORGET_AFTER_SECS + 1), Ok(()));
    }
}
