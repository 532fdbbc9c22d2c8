//! Webhook URLs: one parser, used when a URL is configured (to refuse what cannot be
//! delivered to) and when a delivery connects (to know where). Whether the host may be
//! reached (private ranges) is decided at delivery time, on the address connected to.

/// Longest webhook URL accepted.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;

/// An absolute http(s) URL taken apart:
/// `scheme://[userinfo@]host[:port][/path][?query][#fragment]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Lower-cased; an IPv6 literal without its brackets.
    pub host: String,
    pub port: u16,
    /// Path and query (the fragment dropped), at least "/".
    pub path: String,
}

impl Target {
    /// Parses `url`; the error is a sentence for the client naming what is wrong.
    pub fn parse(url: &str) -> Result<Target, &'static str> {
        if url.len() > WEBHOOK_URL_BYTES_MAX {
            return Err("webhook_url must be at most 2048 characters");
        }
        if url.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
            return Err(
                "webhook_url must not contain spaces, control or non-ASCII characters (percent-encode them)",
            );
        }
        let scheme = |prefix: &str| url.get(..prefix.len()).is_some_and(|s| s.eq_ignore_ascii_case(prefix));
        let (https, rest) = if scheme("https://") {
            (true, &url[8..])
        } else if scheme("http://") {
            (false, &url[7..])
        } else {
            return Err("webhook_url must be an absolute http:// or https:// URL");
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
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
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err("webhook_url has an invalid port"),
            },
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Target { https, host: host.to_ascii_lowercase(), port, path })
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_absolute_http_urls_apart() {
        let t = Target::parse("https://Example.com/hooks?a=1#frag").unwrap();
        assert_eq!(
            t,
            Target { https: true, host: "example.com".into(), port: 443, path: "/hooks?a=1".into() }
        );
        assert_eq!(t.host_header(), "example.com");
        let t = Target::parse("http://user:pw@127.0.0.1:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 9000, "/"));
        assert_eq!(t.host_header(), "127.0.0.1:9000");
        let t = Target::parse("http://[::1]:8080?x").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 8080, "/?x"));
        assert_eq!(t.host_header(), "[::1]:8080");
        for url in ["http://example.com", "HTTPS://Example.com:8443/a?b=c#d", "http://[::1]:8080/"] {
            assert!(Target::parse(url).is_ok(), "{url}");
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
            "http://:80/",
            "https://host:0/",
            "https://host:99999/",
            "https://host:x/",
            "https://exa mple.com",
            "javascript:alert(1)",
            "https://[::1/",
            long.as_str(),
        ] {
            assert!(Target::parse(url).is_err(), "{url}");
        }
    }
}
