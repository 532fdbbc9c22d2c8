//! Event ids: the one place the UUIDv7 layout is written (RFC 9562, method 3 for the
//! sub-millisecond bits). Partition bounds (`uuid_at_millis`) and generated ids
//! (`IdGenerator`) share it, so a day's partition holds exactly that day's ids.

use uuid::Uuid;

/// The smallest UUIDv7 of an instant: its 48 bits of milliseconds, the rest zero (the
/// SQL function `triggerd_uuid_at` in migration 0004 computes the same).
pub fn uuid_at_millis(millis: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// UUIDv7 from a per-core generator: 48 bits of milliseconds, then the microseconds
/// within that millisecond in the 12-bit `rand_a` field (RFC 9562 §6.2, method 3), then
/// 62 random bits from a fast PRNG (wyrand) seeded from the OS. Because the id carries
/// the event's `created_at` to the microsecond, ordering by id is ordering by
/// `(created_at, id)`: the primary key `(org_id, id)` serves the inbox order and its
/// cursors. Ids are not secrets, and a per-core generator needs no lock (uuid's
/// `now_v7` shares one context across threads).
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    pub fn seeded() -> IdGenerator {
        let mut seed = [0u8; 8];
        if getrandom::getrandom(&mut seed).is_err() {
            // Fall back to the clock and the address of a local: still unique enough
            // combined with the millisecond prefix.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed = ((nanos as u64) ^ (&seed as *const _ as u64)).to_le_bytes();
        }
        IdGenerator { state: u64::from_le_bytes(seed) }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let product = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        (product as u64) ^ ((product >> 64) as u64)
    }

    pub fn next_v7(&mut self, now_micros: i64) -> Uuid {
        let micros = now_micros.max(0) as u64;
        let (millis, sub_millis) = (micros / 1000, (micros % 1000) as u16);
        let mut bytes = *uuid_at_millis(millis).as_bytes();
        bytes[6] = 0x70 | (sub_millis >> 8) as u8;
        bytes[7] = sub_millis as u8;
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        Uuid::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_ordered_by_microsecond_and_distinct() {
        let mut ids = IdGenerator::seeded();
        let micros =
            [1_700_000_000_000_000i64, 1_700_000_000_000_001, 1_700_000_000_000_999, 1_700_000_000_001_000];
        let generated: Vec<Uuid> = micros.iter().map(|&m| ids.next_v7(m)).collect();
        assert!(generated.windows(2).all(|w| w[0] < w[1]), "{generated:?}");
        for id in &generated {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        let (secs, nanos) = generated[2].get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, 1_700_000_000_000);
        assert_ne!(ids.next_v7(micros[0]), generated[0]);
    }

    #[test]
    fn bounds_are_the_smallest_id_of_their_millisecond() {
        let millis = 1_700_000_000_123;
        let bound = uuid_at_millis(millis);
        let mut ids = IdGenerator::seeded();
        let first = ids.next_v7(millis as i64 * 1000);
        assert!(bound <= first && first < uuid_at_millis(millis + 1));
    }
}
