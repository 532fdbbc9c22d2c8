//! Domain types shared by the HTTP cores and the storage core: tiers, organisations,
//! and each organisation's rate window (`ratelimit`).

pub mod ratelimit;

use std::sync::Arc;

use uuid::Uuid;

use ratelimit::RateWindow;

/// Pricing tier, which sets the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Free,
    Pro,
    Business,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Pro, Tier::Business, Tier::Enterprise];

    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|tier| tier.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Business => "business",
            Tier::Enterprise => "enterprise",
        }
    }

    /// Events admitted per 60 s window.
    pub fn rate_limit_per_minute(self) -> u32 {
        match self {
            Tier::Free => 100,
            Tier::Pro => 1_000,
            Tier::Business => 10_000,
            Tier::Enterprise => 100_000,
        }
    }
}

/// An organisation as the HTTP cores cache it with a verified key. Immutable; a change
/// (rotation) evicts it from every core and the next request loads a fresh one.
#[derive(Debug)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    pub tier: Tier,
    pub rate_limit_per_minute: u32,
    pub created_at_micros: i64,
    /// The organisation's rate-limit counter, the same `Arc` on every core.
    pub rate: Arc<RateWindow>,
}

/// What `GET /api/keys` shows: read fresh from the database on every call, so a
/// webhook change made through another core is visible at once.
#[derive(Debug, Clone)]
pub struct OrgView {
    pub id: Uuid,
    pub name: String,
    pub tier: Tier,
    pub rate_limit_per_minute: u32,
    pub webhook_url: Option<String>,
    /// Types pushed to the webhook; `None`: every type.
    pub event_types: Option<Vec<String>>,
    pub key_prefix: String,
    pub created_at_micros: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_round_trip_and_carry_the_contract_limits() {
        for tier in Tier::ALL {
            assert_eq!(Tier::parse(tier.name()), Some(tier));
        }
        assert_eq!(Tier::parse("gold"), None);
        let limits: Vec<u32> = Tier::ALL.iter().map(|t| t.rate_limit_per_minute()).collect();
        assert_eq!(limits, vec![100, 1_000, 10_000, 100_000]);
    }
}
