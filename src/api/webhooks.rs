//! `POST /api/webhook/config`: set (or with `null`, clear) the organisation's webhook
//! URL and which event types it gets; `GET` shows it. `POST /api/webhook/secret/rotate`:
//! a new signing secret, the old one signing beside it for 24 h.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::auth::{authenticate, throttled};
use super::error::ApiError;
use super::{ask, parse_json_body};
use crate::auth::keys::generate_signing_secret;
use crate::handoff::commands::{Command, WebhookConfig};
use crate::http::{Request, ResponseBuf};
use crate::shard::Shard;
use crate::util::json::object_with_fields;
use crate::util::json::ObjectWriter;
use crate::util::time::now_ms;
use crate::util::url::Target;

/// Patterns one filter holds at most, and bytes one pattern holds at most.
pub const EVENT_TYPES_MAX: usize = 64;
pub const EVENT_TYPE_PATTERN_BYTES_MAX: usize = 255;

/// One `event_types` pattern: an exact type, or a prefix ending in `.*` (`*` nowhere
/// else).
fn valid_pattern(pattern: &str) -> bool {
    let exact = pattern.strip_suffix(".*").unwrap_or(pattern);
    (1..=EVENT_TYPE_PATTERN_BYTES_MAX).contains(&pattern.len()) && !exact.contains('*')
}

/// `event_types`: absent or null means every type; else 1..=64 valid patterns.
pub fn event_types_of(value: Option<&BorrowedValue<'_>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    let invalid = || {
        ApiError::invalid(
            "event_types",
            format!(
                "event_types must be null or a list of 1 to {EVENT_TYPES_MAX} patterns, each an exact type \
                 or a prefix ending in .* (1 to {EVENT_TYPE_PATTERN_BYTES_MAX} bytes, * only in the final .*)"
            ),
        )
    };
    let list = value.as_array().filter(|l| (1..=EVENT_TYPES_MAX).contains(&l.len())).ok_or_else(invalid)?;
    list.iter()
        .map(|pattern| pattern.as_str().filter(|p| valid_pattern(p)).map(str::to_owned).ok_or_else(invalid))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The body: the URL (required, null switches push off) and the optional filter.
fn decode(
    mut request: Request<'_>,
    shard: &Shard,
) -> Result<(Option<String>, Option<Vec<String>>), ApiError> {
    let mut scratch = shard.json();
    let value = parse_json_body(&mut request, &mut scratch)?;
    let object = object_with_fields(&value, &["webhook_url", "event_types"])?;
    let event_types = event_types_of(object.get("event_types"))?;
    let url = match object.get("webhook_url") {
        None => {
            return Err(ApiError::invalid("webhook_url", "webhook_url is required (null switches push off)"))
        }
        Some(value) if value.is_null() => None,
        Some(value) => {
            let url = value
                .as_str()
                .ok_or_else(|| ApiError::invalid("webhook_url", "webhook_url must be a string or null"))?;
            Target::parse(url).map_err(|why| ApiError::invalid("webhook_url", why))?;
            Some(url.to_owned())
        }
    };
    Ok((url, event_types))
}

pub async fn configure(
    shard: &Shard,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let (url, event_types) = decode(request, shard)?;
    let org_id = auth.org.id;
    let config = ask(shard, |reply| Command::SetWebhook { org_id, url, event_types, reply })
        .await?
        .ok_or(ApiError::Unauthorized)?;
    write_config(&mut response.body, &config);
    Ok(200)
}

/// `GET /api/webhook/config`: the same object, so the signing secret can be read again.
pub async fn show(shard: &Shard, request: Request<'_>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let org_id = auth.org.id;
    let config =
        ask(shard, |reply| Command::GetWebhook { org_id, reply }).await?.ok_or(ApiError::Unauthorized)?;
    write_config(&mut response.body, &config);
    Ok(200)
}

/// `POST /api/webhook/secret/rotate`: answers the new secret and when the old one stops
/// signing.
pub async fn rotate_secret(
    shard: &Shard,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    throttled(
        shard.admit_delivery_control(auth.org.id, now_ms()),
        "too many secret rotations and replays for this organisation",
    )?;
    let secret = generate_signing_secret().map_err(|_| ApiError::Internal)?;
    let org_id = auth.org.id;
    let answer = secret.clone();
    let expires_at = ask(shard, |reply| Command::RotateSecret { org_id, secret: answer, reply })
        .await?
        .ok_or(ApiError::Unauthorized)?;
    ObjectWriter::new(&mut response.body)
        .str("signing_secret", &secret)
        .time("previous_secret_expires_at", expires_at)
        .finish();
    Ok(200)
}

/// Writes a filter: `null` or the list of patterns.
pub fn write_event_types(out: &mut Vec<u8>, event_types: Option<&[String]>) {
    let Some(patterns) = event_types else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'[');
    for (i, pattern) in patterns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::util::json::write_str(out, pattern);
    }
    out.push(b']');
}

fn write_config(out: &mut Vec<u8>, config: &WebhookConfig) {
    ObjectWriter::new(out)
        .opt_str("webhook_url", config.url.as_deref())
        .with("event_types", |out| write_event_types(out, config.event_types.as_deref()))
        .str("signing_secret", &config.signing_secret)
        .time("updated_at", config.updated_at_micros)
        .finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_exact_types_or_prefixes_ending_in_dot_star() {
        for good in ["order.created", "order.*", "a", ".*", "a.b.*", &"x".repeat(255)] {
            assert!(valid_pattern(good), "{good}");
        }
        for bad in ["", "*", "a.*.b", "order*", "*.created", "a.**", &"x".repeat(256)] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }
}
