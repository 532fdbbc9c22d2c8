//! `POST /api/webhook/config`: set (or with `null`, clear) the organisation's webhook
//! URL; `GET` shows it. The signing secret is per organisation, made at sign-up, and never changes here.

use simd_json::prelude::*;

use super::auth::authenticate;
use super::error::ApiError;
use super::{ask, parse_json_body};
use crate::handoff::commands::{Command, WebhookConfig};
use crate::http::{Request, ResponseBuf};
use crate::shard::Shard;
use crate::util::json::object_with_fields;
use crate::util::json::ObjectWriter;
use crate::util::url::Target;

fn decode(mut request: Request<'_>, shard: &Shard) -> Result<Option<String>, ApiError> {
    let mut scratch = shard.json();
    let value = parse_json_body(&mut request, &mut scratch)?;
    let object = object_with_fields(&value, &["webhook_url"])?;
    match object.get("webhook_url") {
        None => Err(ApiError::invalid("webhook_url", "webhook_url is required (null switches push off)")),
        Some(value) if value.is_null() => Ok(None),
        Some(value) => {
            let url = value
                .as_str()
                .ok_or_else(|| ApiError::invalid("webhook_url", "webhook_url must be a string or null"))?;
            Target::parse(url).map_err(|why| ApiError::invalid("webhook_url", why))?;
            Ok(Some(url.to_owned()))
        }
    }
}

pub async fn configure(
    shard: &Shard,
    request: Request<'_>,
    response: &mut ResponseBuf,
) -> Result<u16, ApiError> {
    let auth = authenticate(shard, &request).await?;
    let url = decode(request, shard)?;
    let org_id = auth.org.id;
    let config = ask(shard, |reply| Command::SetWebhook { org_id, url, reply })
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

fn write_config(out: &mut Vec<u8>, config: &WebhookConfig) {
    ObjectWriter::new(out)
        .opt_str("webhook_url", config.url.as_deref())
        .str("signing_secret", &config.signing_secret)
        .time("updated_at", config.updated_at_micros)
        .finish();
}
