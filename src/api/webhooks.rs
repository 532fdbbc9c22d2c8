//! `POST /api/webhook/config`: set (or with `null`, clear) the organisation's webhook
//! URL. The signing secret is per organisation, made at sign-up, and never changes here.

use simd_json::prelude::*;

use super::auth::authenticate;
use super::error::ApiError;
use super::{ask, parse_json_body};
use crate::handoff::commands::Command;
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
    let (secret, updated_at) = ask(shard, |reply| Command::SetWebhook { org_id, url: url.clone(), reply })
        .await?
        .ok_or(ApiError::Unauthorized)?;
    ObjectWriter::new(&mut response.body)
        .opt_str("webhook_url", url.as_deref())
        .str("signing_secret", &secret)
        .time("updated_at", updated_at)
        .finish();
    Ok(200)
}
