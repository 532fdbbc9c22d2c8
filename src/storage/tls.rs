//! TLS for every PostgreSQL connection, with libpq's meaning of `sslmode` and
//! `sslrootcert`, on rustls (ring), the crates the webhook client already uses.
//!
//! tokio-postgres parses `sslmode` only as disable/prefer/require and knows nothing of
//! `sslrootcert`, so `split_tls_settings` takes both out of the connection string (URL
//! or key=value form) before tokio-postgres sees it, and `Tls` (a `MakeTlsConnect`)
//! verifies the server the way libpq does:
//!
//! | sslmode | encrypted | chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` (default) | if the server offers it; plain if it refuses or the handshake fails | no | no |
//! | `require` | yes | only when `sslrootcert` is given (as libpq: then it is `verify-ca`) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The chain is checked against `sslrootcert` (a PEM file), or, without one (or with
//! `sslrootcert=system`, which implies `verify-full` as in libpq), against the system's
//! CA bundle (`SSL_CERT_FILE` or the usual distribution paths), else the Mozilla roots
//! compiled in (webpki-roots). Unix sockets never use TLS (as with libpq).
//! `tls-server-end-point` channel binding is offered for SCRAM (`channel_binding`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as RustlsError, RootCertStore,
    SignatureScheme,
};
use tokio_rustls::TlsConnector;

/// libpq's `sslmode`, all five that make sense without a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => return Err("sslmode=allow is not supported; use prefer or disable".into()),
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres itself must do: negotiate or not, and insist or not.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's CA bundle, else the compiled-in Mozilla roots.
    System,
    /// A PEM file of CA certificates (`sslrootcert=<path>`).
    File(String),
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub roots: Roots,
}

/// Splits `sslmode` and `sslrootcert` out of a connection string (URL or key=value);
/// returns what is left, for tokio-postgres, and the TLS settings with libpq's rules
/// applied (`require` with a root file is `verify-ca`; `sslrootcert=system` implies
/// `verify-full` and refuses anything weaker).
pub fn split_tls_settings(url: &str) -> Result<(String, TlsSettings), String> {
    let (rest, mode, rootcert) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)?
    } else {
        split_key_values(url)?
    };
    let requested = mode.as_deref().map(SslMode::parse).transpose()?;
    let roots = match rootcert.as_deref() {
        None | Some("") => Roots::System,
        Some("system") => Roots::System,
        Some(path) => Roots::File(path.to_string()),
    };
    let mode = match (requested, rootcert.as_deref()) {
        (None, Some("system")) => SslMode::VerifyFull,
        (Some(mode), Some("system")) if mode != SslMode::VerifyFull => {
            return Err(format!(
                "sslmode={} may not be used with sslrootcert=system (use verify-full)",
                mode.name()
            ))
        }
        (Some(SslMode::Require), Some(path)) if !path.is_empty() => SslMode::VerifyCa,
        (Some(mode), _) => mode,
        (None, _) => SslMode::Prefer,
    };
    Ok((rest, TlsSettings { mode, roots }))
}

type Split = (String, Option<String>, Option<String>);

/// URL form: the query's `sslmode` and `sslrootcert` (percent-decoded) are removed.
fn split_url(url: &str) -> Result<Split, String> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), None, None)) };
    let (mut mode, mut rootcert, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key)?.as_str() {
            "sslmode" => mode = Some(percent_decode(value)?),
            "sslrootcert" => rootcert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, mode, rootcert))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(byte.ok_or_else(|| format!("bad percent-encoding in {text:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// key=value form (libpq's conninfo: values optionally single-quoted, `\` escapes):
/// the pairs other than ours are written back quoted.
fn split_key_values(text: &str) -> Result<Split, String> {
    let (mut mode, mut rootcert, mut kept) = (None, None, Vec::new());
    for (key, value) in conninfo_pairs(text)? {
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => rootcert = Some(value),
            _ => kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))),
        }
    }
    Ok((kept.join(" "), mode, rootcert))
}

fn conninfo_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected `{key}=value` in the connection string"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {key}")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// Builds the rustls configuration once (start-up): reads the root file, so a missing
/// or empty one is refused before anything connects.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let chain = match settings.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(load_roots(&settings.roots)?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
            Some(verifier)
        }
        SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
    };
    let verifier = Verifier { chain, check_name: settings.mode == SslMode::VerifyFull, algorithms };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PostgreSQL 17 checks ALPN when the client sends it; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// Where the system keeps its CA bundle, by distribution (as OpenSSL's default paths).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn load_roots(roots: &Roots) -> Result<RootCertStore, String> {
    let (path, required) = match roots {
        Roots::File(path) => (Some(path.clone()), true),
        Roots::System => {
            let from_env = std::env::var("SSL_CERT_FILE").ok();
            let found = from_env.or_else(|| {
                SYSTEM_BUNDLES.iter().find(|p| std::path::Path::new(p).is_file()).map(|p| p.to_string())
            });
            (found, false)
        }
    };
    let Some(path) = path else {
        return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    };
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) if required => return Err(format!("sslrootcert {path}: {e}")),
        Err(_) => return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
    };
    let mut store = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|e| format!("sslrootcert {path}: {e}"))?;
        store.add(certificate).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {path}: no PEM certificate in it"));
    }
    Ok(store)
}

/// Checks the server's certificate as the mode says; the handshake's signatures are
/// always checked (an encrypted session with an unchecked certificate is still a
/// session with whoever holds that certificate's key).
#[derive(Debug)]
struct Verifier {
    /// The chain check against the roots, for verify-ca and verify-full.
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the chain before the name: a name error means the chain held.
            Err(RustlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS hook: one per connection string, cloned per connection.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    mode: SslMode,
    /// Named in handshake errors: which roots the chain was checked against.
    roots: Arc<str>,
}

impl Tls {
    pub fn new(settings: &TlsSettings) -> Result<Tls, String> {
        let roots = match (&settings.roots, settings.mode) {
            (_, SslMode::Disable | SslMode::Prefer | SslMode::Require) => "none (not verified)".to_string(),
            (Roots::File(path), _) => format!("sslrootcert={path}"),
            (Roots::System, _) => "the system's CA bundle".to_string(),
        };
        Ok(Tls { config: client_config(settings)?, mode: settings.mode, roots: roots.into() })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> tokio_postgres::tls::MakeTlsConnect<S> for Tls {
    type Stream = TlsStream<S>;
    type TlsConnect = TlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<TlsConnect, TlsError> {
        // Unix sockets have no host name; tokio-postgres never asks them for TLS.
        let name = ServerName::try_from(host.to_string()).ok();
        Ok(TlsConnect { tls: self.clone(), host: host.to_string(), name })
    }
}

pub struct TlsConnect {
    tls: Tls,
    host: String,
    name: Option<ServerName<'static>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> tokio_postgres::tls::TlsConnect<S> for TlsConnect {
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let failed = |reason: String| TlsError {
                host: self.host.clone(),
                mode: self.tls.mode,
                roots: Arc::clone(&self.tls.roots),
                reason,
            };
            let name = self.name.clone().ok_or_else(|| failed("not a host name".into()))?;
            let connector = TlsConnector::from(Arc::clone(&self.tls.config));
            let stream = connector.connect(name, stream).await.map_err(|e| failed(e.to_string()))?;
            Ok(TlsStream(stream))
        })
    }
}

/// A failed TLS handshake, saying with which host, mode and roots.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {host} failed (sslmode={}, roots: {roots}): {reason}", mode.name())]
pub struct TlsError {
    host: String,
    mode: SslMode,
    roots: Arc<str>,
    reason: String,
}

/// True when a connection failed in the TLS handshake itself (so `prefer` may retry
/// without TLS, as libpq does).
pub fn is_handshake_failure(error: &tokio_postgres::Error) -> bool {
    std::error::Error::source(error).is_some_and(|source| source.downcast_ref::<TlsError>().is_some())
}

pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let (_, session) = self.0.get_ref();
        let binding = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| tls_server_end_point(leaf.as_ref()));
        match binding {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature's hash
/// (SHA-256 for MD5 and SHA-1); `None` for algorithms without one (Ed25519, PSS), as
/// libpq.
fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, … }, … }
    let (_, fields) = der_element(certificate, 0x30)?;
    let (after_tbs, _) = der_element(fields, 0x30)?;
    let (_, algorithm) = der_element(after_tbs, 0x30)?;
    let (_, oid) = der_element(algorithm, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let bits = match oid {
        [prefix @ .., 0x04 | 0x05 | 0x0b] if prefix == RSA => 256,
        [prefix @ .., 0x0c] if prefix == RSA => 384,
        [prefix @ .., 0x0d] if prefix == RSA => 512,
        [prefix @ .., 0x01] if prefix == ECDSA => 256,
        [prefix @ .., 0x03, 0x02] if prefix == ECDSA => 256,
        [prefix @ .., 0x03, 0x03] if prefix == ECDSA => 384,
        [prefix @ .., 0x03, 0x04] if prefix == ECDSA => 512,
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(certificate).to_vec(),
        384 => sha2::Sha384::digest(certificate).to_vec(),
        _ => sha2::Sha512::digest(certificate).to_vec(),
    })
}

/// One DER element of the given tag at the start of `input`: (what follows, its body).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length_byte, rest) = rest.split_first()?;
    let (length, rest) = if length_byte < 0x80 {
        (usize::from(length_byte), rest)
    } else {
        let count = usize::from(length_byte & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| (&rest[length..], &rest[..length]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, SslMode, Roots) {
        let (rest, settings) = split_tls_settings(url).unwrap();
        (rest, settings.mode, settings.roots)
    }

    #[test]
    fn url_form_loses_only_the_tls_parameters() {
        let (rest, mode, roots) = split(
            "postgresql://u:p%40ss@db.example:5433/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgresql://u:p%40ss@db.example:5433/app?application_name=x");
        assert_eq!((mode, roots), (SslMode::VerifyFull, Roots::File("/etc/ca.pem".into())));
        assert_eq!(split("postgres://h/db").0, "postgres://h/db");
        assert_eq!(split("postgres://h/db?sslmode=disable").0, "postgres://h/db");
        assert_eq!(split("postgres://h/db").1, SslMode::Prefer, "prefer is the default");
    }

    #[test]
    fn key_value_form_keeps_quoted_values() {
        let (rest, mode, roots) =
            split(r"host=db port = 5433 password='a \' b\\c' sslmode=verify-ca sslrootcert='/a b/ca.pem'");
        assert_eq!(mode, SslMode::VerifyCa);
        assert_eq!(roots, Roots::File("/a b/ca.pem".into()));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_ports(), [5433]);
        assert_eq!(config.get_password(), Some(&br"a ' b\c"[..]));
        assert!(split_tls_settings("host=h sslmode=bogus").unwrap_err().contains("bogus"));
        assert!(split_tls_settings("host=x sslmode=allow").unwrap_err().contains("allow"));
        assert!(split_tls_settings("host='x").is_err());
    }

    #[test]
    fn libpq_rules_for_roots() {
        assert_eq!(split("host=h sslmode=require").1, SslMode::Require);
        assert_eq!(
            split("host=h sslmode=require sslrootcert=/ca.pem").1,
            SslMode::VerifyCa,
            "libpq: a root file makes require verify-ca"
        );
        assert_eq!(split("host=h sslrootcert=system").1, SslMode::VerifyFull);
        assert!(split_tls_settings("host=h sslmode=verify-ca sslrootcert=system").is_err());
        assert_eq!(split("host=h sslmode=verify-full").2, Roots::System);
    }

    #[test]
    fn a_missing_or_empty_root_file_is_refused_at_once() {
        let missing =
            TlsSettings { mode: SslMode::VerifyFull, roots: Roots::File("/nonexistent/ca.pem".into()) };
        assert!(Tls::new(&missing).err().unwrap().contains("/nonexistent/ca.pem"));
        let empty = std::env::temp_dir().join(format!("triggerd-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let settings =
            TlsSettings { mode: SslMode::VerifyCa, roots: Roots::File(empty.display().to_string()) };
        assert!(Tls::new(&settings).err().unwrap().contains("no PEM certificate"));
        let _ = std::fs::remove_file(empty);
        let system = TlsSettings { mode: SslMode::VerifyFull, roots: Roots::System };
        assert!(Tls::new(&system).is_ok(), "the system's bundle or the compiled-in roots");
    }

    #[test]
    fn der_elements_and_unknown_algorithms() {
        assert_eq!(der_element(&[0x30, 0x01, 0xaa, 0xbb], 0x30), Some((&[0xbb][..], &[0xaa][..])));
        assert_eq!(der_element(&[0x30, 0x81, 0x01, 0xaa], 0x30), Some((&[][..], &[0xaa][..])));
        assert_eq!(der_element(&[0x30, 0x05, 0xaa], 0x30), None, "a length beyond the input");
        assert_eq!(tls_server_end_point(b"garbage"), None);
    }
}
