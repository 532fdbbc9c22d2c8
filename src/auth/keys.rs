//! Key format: `tk_` + 16 hex digits of lookup id + 64 hex digits of secret.
//!
//! The lookup id (64 random bits) finds the row; the whole key (320 random bits) is
//! what the Argon2id hash at rest protects, so a database leak reveals no usable key.
//! `key_prefix` is `tk_` + the lookup id: 19 of 83 characters, under a quarter.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "tk_";
const LOOKUP_HEX_LEN: usize = 16;
const SECRET_HEX_LEN: usize = 64;
pub const KEY_LEN: usize = KEY_PREFIX.len() + LOOKUP_HEX_LEN + SECRET_HEX_LEN;
pub const KEY_PREFIX_LEN: usize = KEY_PREFIX.len() + LOOKUP_HEX_LEN;

/// Argon2id cost: OWASP's minimum recommendation (19 MiB, 2 passes, 1 lane), ~20-40 ms
/// on one core. Only ever paid on a cache miss, in the blocking pool.
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_PASSES: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("argon2: {0}")]
    Hash(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(bytes)
}

fn hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// A freshly generated key. The plain key leaves the process once, in the response.
pub struct NewKey {
    pub key: String,
    pub lookup_id: i64,
}

impl NewKey {
    pub fn generate() -> Result<NewKey, KeyError> {
        let lookup: [u8; 8] = random_bytes()?;
        let secret: [u8; 32] = random_bytes()?;
        let mut key = String::with_capacity(KEY_LEN);
        key.push_str(KEY_PREFIX);
        hex(&lookup, &mut key);
        hex(&secret, &mut key);
        Ok(NewKey { key, lookup_id: i64::from_be_bytes(lookup) })
    }

    pub fn prefix(&self) -> &str {
        &self.key[..KEY_PREFIX_LEN]
    }
}

/// The lookup id of a well-formed key, `None` for anything else (answered 401 without
/// any further work).
pub fn parse_lookup_id(key: &[u8]) -> Option<i64> {
    if key.len() != KEY_LEN || !key.starts_with(KEY_PREFIX.as_bytes()) {
        return None;
    }
    let hex_part = &key[KEY_PREFIX.len()..];
    if !hex_part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let lookup = std::str::from_utf8(&hex_part[..LOOKUP_HEX_LEN]).ok()?;
    u64::from_str_radix(lookup, 16).ok().map(|v| v as i64)
}

/// SHA-256 of the key: what the per-core table compares (in constant time). The
/// plain key is never kept in memory after verification.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Equality of two digests in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

fn argon2(memory_kib: u32) -> Result<Argon2<'static>, KeyError> {
    let params =
        Params::new(memory_kib, ARGON2_PASSES, 1, None).map_err(|e| KeyError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The PHC string stored at rest. Blocking (tens of ms): call from the pool only.
pub fn hash_key(key: &str, memory_kib: u32) -> Result<String, KeyError> {
    let salt_bytes: [u8; 16] = random_bytes()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| KeyError::Hash(e.to_string()))?;
    let hash = argon2(memory_kib)?
        .hash_password(key.as_bytes(), &salt)
        .map_err(|e| KeyError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks a key against a stored PHC string (its own parameters). Blocking.
pub fn verify_key(key: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else { return false };
    Argon2::default().verify_password(key, &parsed).is_ok()
}

/// A per-organisation webhook signing secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_signing_secret() -> Result<String, KeyError> {
    let bytes: [u8; 32] = random_bytes()?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_lookup_id() {
        let new = NewKey::generate().unwrap();
        assert_eq!(new.key.len(), KEY_LEN);
        assert!(new.prefix().len() * 4 <= new.key.len());
        assert_eq!(parse_lookup_id(new.key.as_bytes()), Some(new.lookup_id));
        assert_ne!(NewKey::generate().unwrap().key, new.key);
    }

    #[test]
    fn malformed_keys_have_no_lookup_id() {
        let good = NewKey::generate().unwrap().key;
        assert_eq!(parse_lookup_id(b""), None);
        assert_eq!(parse_lookup_id(&good.as_bytes()[1..]), None);
        assert_eq!(parse_lookup_id(good.to_uppercase().as_bytes()), None);
        assert_eq!(parse_lookup_id(good.replace("tk_", "xx_").as_bytes()), None);
    }

    #[test]
    fn hash_verifies_only_the_same_key() {
        let new = NewKey::generate().unwrap();
        let stored = hash_key(&new.key, 1024).unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(!stored.contains(&new.key[KEY_PREFIX_LEN..]));
        assert!(verify_key(new.key.as_bytes(), &stored));
        let other = NewKey::generate().unwrap();
        assert!(!verify_key(other.key.as_bytes(), &stored));
        assert!(!verify_key(new.key.as_bytes(), "not a phc string"));
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn signing_secret_shape() {
        let secret = generate_signing_secret().unwrap();
        assert!(secret.starts_with("whsec_") && secret.len() == 6 + 44);
    }
}
