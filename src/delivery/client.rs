//! The outbound HTTP client for webhooks: hyper's HTTP/1 client over connections this
//! module opens itself, so that the address checked is the address connected to.
//!
//! - The host is resolved here; every candidate address is checked against
//!   `guard::is_forbidden` (unless private destinations are allowed) and the first
//!   allowed one is connected to. DNS rebinding cannot bypass the check.
//! - https uses rustls with the Mozilla roots (webpki-roots).
//! - Idle connections are kept per destination (scheme, host, port) and reused, as many
//!   as one organisation may have attempts in flight (`--deliveries-per-org-max`, at
//!   least `IDLE_PER_DESTINATION_MIN`): fewer would make part of every full round of an
//!   organisation's attempts open new connections.
//! - Redirects are not followed (a 3xx is a failed attempt); response bodies are read
//!   up to `RESPONSE_BYTES_MAX` and discarded; the whole attempt has one timeout.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::guard::is_forbidden;
use super::schedule::{parse_retry_after, AttemptResult};
use crate::util::url::Target;

/// Idle connections kept per destination at least.
pub const IDLE_PER_DESTINATION_MIN: usize = 4;
/// Response body bytes read (and discarded) at most.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Destinations with idle connections kept at most.
const DESTINATIONS_MAX: usize = 4096;

type Sender = SendRequest<Full<Bytes>>;

/// Owned by the delivery engine on the storage thread.
pub struct WebhookClient {
    allow_private: bool,
    timeout: Duration,
    tls: TlsConnector,
    /// Idle connections kept per destination at most; set at construction.
    idle_per_destination_max: usize,
    /// Idle connections by destination; bounded per destination and in destinations.
    idle: RefCell<AHashMap<(bool, String, u16), Vec<Sender>>>,
}

impl WebhookClient {
    /// `per_org_max`: attempts of one organisation in flight at most, the idle
    /// connections kept per destination.
    pub fn new(allow_private: bool, timeout: Duration, per_org_max: usize) -> WebhookClient {
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        WebhookClient {
            allow_private,
            timeout,
            tls: TlsConnector::from(Arc::new(config)),
            idle_per_destination_max: per_org_max.max(IDLE_PER_DESTINATION_MIN),
            idle: RefCell::default(),
        }
    }

    /// One attempt: POST `body` with `headers` to `url`, within the timeout.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Bytes) -> AttemptResult {
        let target = match Target::parse(url) {
            Ok(target) => target,
            Err(why) => return AttemptResult::Error(format!("invalid webhook URL: {why}")),
        };
        match tokio::time::timeout(self.timeout, self.attempt(&target, headers, body)).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => AttemptResult::Error(error),
            Err(_) => AttemptResult::Error(format!("timed out after {} ms", self.timeout.as_millis())),
        }
    }

    async fn attempt(
        &self,
        target: &Target,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<AttemptResult, String> {
        let mut sender = match self.take_idle(target) {
            Some(sender) => sender,
            None => self.connect(target).await?,
        };
        let mut request = hyper::Request::post(&target.path).header("host", target.host_header());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| format!("building the request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("request failed: {e}"))?;
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| parse_retry_after(v.as_bytes(), SystemTime::now()));
        let keep = Limited::new(response.into_body(), RESPONSE_BYTES_MAX).collect().await.is_ok();
        if keep {
            self.put_idle(target, sender);
        }
        Ok(AttemptResult::Status { code, retry_after })
    }

    fn take_idle(&self, target: &Target) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let senders = idle.get_mut(&(target.https, target.host.clone(), target.port))?;
        while let Some(sender) = senders.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, target: &Target, sender: Sender) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= DESTINATIONS_MAX
            && !idle.contains_key(&(target.https, target.host.clone(), target.port))
        {
            idle.retain(|_, senders| senders.iter().any(SendRequest::is_ready));
            if idle.len() >= DESTINATIONS_MAX {
                return;
            }
        }
        let senders = idle.entry((target.https, target.host.clone(), target.port)).or_default();
        if senders.len() < self.idle_per_destination_max {
            senders.push(sender);
        }
    }

    async fn resolve(&self, target: &Target) -> Result<SocketAddr, String> {
        let candidates: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
                .collect(),
        };
        candidates
            .iter()
            .copied()
            .find(|address| self.allow_private || !is_forbidden(address.ip()))
            .ok_or_else(|| {
                format!(
                    "refused: {} resolves only to private or reserved addresses (a server started with \
                     --webhook-allow-private delivers to them, for local development)",
                    target.host
                )
            })
    }

    async fn connect(&self, target: &Target) -> Result<Sender, String> {
        let address = self.resolve(target).await?;
        let stream = TcpStream::connect(address).await.map_err(|e| format!("connect {address}: {e}"))?;
        // The address connected to is the one checked above; a peer address that
        // differs would mean a proxy or a bug: check it again all the same.
        let peer = stream.peer_addr().map_err(|e| e.to_string())?;
        if !self.allow_private && is_forbidden(peer.ip()) {
            return Err(format!("refused: connected to a private address {peer}"));
        }
        let _ = stream.set_nodelay(true);
        if target.https {
            let name = ServerName::try_from(target.host.clone()).map_err(|e| format!("TLS name: {e}"))?;
            let tls = self.tls.connect(name, stream).await.map_err(|e| format!("TLS handshake: {e}"))?;
            handshake(tls).await
        } else {
            handshake(stream).await
        }
    }
}

async fn handshake<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(io: T) -> Result<Sender, String> {
    let (sender, connection) =
        http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_destinations_are_refused_unless_allowed() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let target = Target::parse("http://127.0.0.1:9/").unwrap();
        let refused = runtime.block_on(WebhookClient::new(false, Duration::from_secs(1), 8).resolve(&target));
        assert!(refused.unwrap_err().starts_with("refused"));
        let allowed = runtime.block_on(WebhookClient::new(true, Duration::from_secs(1), 8).resolve(&target));
        assert_eq!(allowed.unwrap(), "127.0.0.1:9".parse().unwrap());
        let localhost = Target::parse("http://localhost:9/").unwrap();
        assert!(runtime
            .block_on(WebhookClient::new(false, Duration::from_secs(1), 8).resolve(&localhost))
            .is_err());
    }
}
