//! Organisations and their keys: `POST /api/keys/generate` (sign-up, optionally
//! behind an admin token), `GET /api/keys` and `POST /api/keys/rotate`.

use super::auth::{authenticate, throttled};
use super::error::ApiError;
use super::{ask, overloaded, parse_json_body};
use crate::auth::keys::{constant_time_eq, generate_signing_secret, NewKey};
use crate::auth::pool::{Answer, Work};
use crate::handoff::commands::{Command, NewKeyForOrg, NewOrg};
use crate::http::{Request, ResponseBuf};
use crate::model::Tier;
use crate::shard::Shard;
use crate::util::json::object_with_fields;
use crate::util::json::ObjectWriter;
use crate::util::time::now_ms;
use simd_json::prelude::*;

/// Longest organisation name, in characters.
pub const ORGANIZATION_NAME_CHARS_MAX: usize = 200;

/// A new key and its Argon2id hash (computed in the blocking pool).
async fn new_hashed_key(shard: &Shard) -> Result<(NewKey, String), ApiError> {
    let new_key = NewKey::generate().map_err(|e| {
        tracing::error!(error = %e, "key generation failed");
        ApiError::Internal
    })?;
    let answer =
        shard.hash_pool().try_submit(Work::Hash { key: new_key.key.clone() }).map_err(|_| overloaded())?;
    match answer.await {
        Ok(Answer::Hashed(Ok(hash))) => Ok((new_key, hash)),
        _ => Err(ApiError::Internal),
    }
}

struct SignUp {
    name: String,
    tier: Tier,
}

fn decode_sign_up(mut request: Request<'_>, shard: &Shard) -> Result<SignUp, ApiError> {
    let mut scratch = shard.json();
    let value = parse_json_body(&mut request, &mut scratch)?;
    let object = object_with_fields(&value, &["organization_name", "tier"])?;
    let name = object.get("organization_name").and_then(|v| v.as_str()).ok_or_else(|| {
        ApiError::invalid("organization_name", "organization_name is required and must be a string")
    })?;
    let chars = name.chars().count();
    if chars == 0 || chars > ORGANIZATION_NAME_CHARS_MAX || name.contains('\0') || name.trim().is_empty() {
        return Err(ApiError::invalid(
            "organization_name",
            "organization_name must be 1 to 200 characters, not all blank, without U+0000",
        ));
    }
    let tier = match object.get("tier") {
        None => Tier::Free,
        Some(value) if value.is_null() => Tier::Free,
        Some(value) => value.as_str().and_then(Tier::parse).ok_or_else(|| {
            ApiError::invalid("tier", "tier must be one of free, pro, business, enterprise")
        })?,
    };
    Ok(SignUp { name: name.to_owned(), tier })
}

pub async fn generate(
    shard: &Shard,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    match &shard.settings().admin_token {
        Some(token) => {
            let presented = request.bearer_token().unwrap_or_default();
            if !constant_time_eq(presented, token.as_bytes()) {
                return Err(ApiError::AdminTokenRequired);
            }
        }
        // Open sign-up: each costs an Argon2 hash and a row; bounded per address.
        None => throttled(shard.admit_signup(request.peer, now_ms()), "too many sign-ups from this address")?,
    }
    let principal = request.principal;
    let sign_up = decode_sign_up(request, shard)?;
    let (new_key, key_hash) = new_hashed_key(shard).await?;
    let signing_secret = generate_signing_secret().map_err(|_| ApiError::Internal)?;
    let new = NewOrg {
        name: sign_up.name,
        tier: sign_up.tier,
        lookup_id: new_key.lookup_id,
        key_hash,
        key_prefix: new_key.prefix().to_owned(),
        signing_secret,
    };
    let org = ask(shard, |reply| Command::CreateOrg { new, reply }).await?;
    if let Some(slot) = principal {
        slot.set(Some(org.id.as_u128()));
    }
    // The creating core knows the key is good: cache it, saving one Argon2 run.
    shard.cache_new_key(new_key.lookup_id, new_key.key.as_bytes(), org.clone());
    ObjectWriter::new(&mut response.body)
        .uuid("organization_id", &org.id)
        .str("organization_name", &org.name)
        .str("api_key", &new_key.key)
        .str("tier", org.tier.name())
        .uint("rate_limit_per_minute", u64::from(org.rate_limit_per_minute))
        .time("created_at", org.created_at_micros)
        .finish();
    Ok(201)
}

pub async fn show(shard: &Shard, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let org_id = auth.org.id;
    let view = ask(shard, |reply| Command::GetOrg { org_id, reply }).await?.ok_or(ApiError::Unauthorized)?;
    ObjectWriter::new(&mut response.body)
        .uuid("organization_id", &view.id)
        .str("organization_name", &view.name)
        .str("tier", view.tier.name())
        .uint("rate_limit_per_minute", u64::from(view.rate_limit_per_minute))
        .opt_str("webhook_url", view.webhook_url.as_deref())
        .with("event_types", |out| super::webhooks::write_event_types(out, view.event_types.as_deref()))
        .str("key_prefix", &view.key_prefix)
        .time("created_at", view.created_at_micros)
        .finish();
    Ok(200)
}

pub async fn rotate(
    shard: &Shard,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    // Each rotation costs an Argon2 hash and a revocation on every core.
    throttled(shard.admit_rotation(auth.org.id, now_ms()), "too many key rotations for this organisation")?;
    let (new_key, key_hash) = new_hashed_key(shard).await?;
    let new = NewKeyForOrg {
        org_id: auth.org.id,
        old_lookup_id: auth.lookup_id,
        lookup_id: new_key.lookup_id,
        key_hash,
        key_prefix: new_key.prefix().to_owned(),
    };
    // Answers only after every core has dropped the old key.
    let rotated_at =
        ask(shard, |reply| Command::RotateKey { new, reply }).await?.ok_or(ApiError::Unauthorized)?;
    ObjectWriter::new(&mut response.body)
        .str("api_key", &new_key.key)
        .time("rotated_at", rotated_at)
        .finish();
    Ok(200)
}
