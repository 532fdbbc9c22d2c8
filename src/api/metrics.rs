//! `GET /metrics`: the Prometheus text exposition, rendered by the scrape thread
//! (`metrics::Scraper`: it reads /proc, which an HTTP core never does) and awaited here.
//! With `--metrics-listen` the public port does not serve it (404): the operator asked
//! for metrics on an address of their own, so they are not published to every client.

use super::error::ApiError;
use super::overloaded;
use crate::http::response::CONTENT_TYPE_TEXT;
use crate::http::ResponseBuf;
use crate::metrics::Scraper;

pub async fn scrape(scraper: Option<&Scraper>, response: &mut ResponseBuf) -> Result<u16, ApiError> {
    let Some(scraper) = scraper else {
        return Err(ApiError::NotFound("metrics are served on the --metrics-listen address"));
    };
    let answer = scraper.request().map_err(|_| overloaded())?;
    let text = answer.await.map_err(|_| ApiError::Internal)?;
    response.body.extend_from_slice(text.as_bytes());
    response.content_type = Some(CONTENT_TYPE_TEXT);
    Ok(200)
}
