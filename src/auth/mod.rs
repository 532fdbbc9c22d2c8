//! API keys: their format, generation from the OS CSPRNG, the Argon2id hash stored at
//! rest, and the bounded blocking pool where hashing and verification run so that no
//! HTTP core ever spends Argon2 time on its reactor.

pub mod keys;
pub mod pool;
pub mod throttle;
