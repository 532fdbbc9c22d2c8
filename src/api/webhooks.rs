//! `POST /api/webhook/config`: set (or with `null`, clear) the organisation's webhook
//! URL. The signing secret is per organisation, made at sign-up, and never changes here.

use simd_json::prelude::*;

use super::auth::authenticate;
use super::error::ApiError;
use super::json::ObjectWriter;
use super::{ask, object_with_fields, parse_json_body};
use crate::http::{Request, ResponseBuf};
use crate::shard::Shard;
use crate::storage::queries::Command;

/// Longest webhook URL accepted.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;

/// Checks that `url` is an absolute http(s) URL with a host: `scheme://[userinfo@]host[:port][/path][?query]`.
/// Whether the host may be reached (private ranges) is decided at delivery time.
pub fn validate_webhook_url(url: &str) -> Result<(), &'static str> {
    if url.len() > WEBHOOK_URL_BYTES_MAX {
        return Err("webhook_url must be at most 2048 characters");
    }
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
        return Err(
            "webhook_url must not contain spaces, control or non-ASCII characters (percent-encode them)",
        );
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err("webhook_url must be an absolute http:// or https:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) =
            bracketed.split_once(']').ok_or("webhook_url has an unterminated IPv6 address")?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("webhook_url must name a host");
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("webhook_url has an invalid port");
        }
    }
    Ok(())
}

fn decode(mut request: Request<'_>, shard: &Shard) -> Result<Option<String>, ApiError> {
    let mut scratch = shard.json.borrow_mut();
    let value = parse_json_body(&mut request, &mut scratch)?;
    let object = object_with_fields(&value, &["webhook_url"])?;
    match object.get("webhook_url") {
        None => Err(ApiError::invalid("webhook_url", "webhook_url is required (null switches push off)")),
        Some(value) if value.is_null() => Ok(None),
        Some(value) => {
            let url = value
                .as_str()
                .ok_or_else(|| ApiError::invalid("webhook_url", "webhook_url must be a string or null"))?;
            validate_webhook_url(url).map_err(|why| ApiError::invalid("webhook_url", why))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_absolute_http_urls() {
        for url in [
            "https://example.com/hooks",
            "http://example.com",
            "HTTPS://Example.com:8443/a?b=c#d",
            "http://user:pw@127.0.0.1:9000/x",
            "http://[::1]:8080/",
        ] {
            assert_eq!(validate_webhook_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = format!("https://example.com/{}", "a".repeat(2048));
        for url in [
            "ftp://example.com",
            "example.com/hook",
            "https://",
            "https:///path",
            "https://host:0/",
            "https://host:99999/",
            "https://host:x/",
            "https://exa mple.com",
            "javascript:alert(1)",
            "https://[::1/",
            long.as_str(),
        ] {
            assert!(validate_webhook_url(url).is_err(), "{url}");
        }
    }
}
