//! Redis URLs with TLS: `rediss://` (and `rediss+cluster://`) with the certificate options
//! redis-py reads from a URL's query, so a Feast user's connection string works unchanged:
//!
//! - `ssl_ca_certs=PATH`: the CA (PEM) that signed the server's certificate; without it the
//!   system's roots are used.
//! - `ssl_certfile=PATH` and `ssl_keyfile=PATH`: a client certificate and key (PEM), for servers
//!   started with `tls-auth-clients yes`.
//!
//! The server's certificate is always verified (chain and host name); `ssl_cert_reqs=none` is
//! refused rather than silently turning verification off. Files are read once, at connect.

use crate::error::{FeatureError, Result};
use redis::{ClientTlsConfig, TlsCertificates};

/// A Redis URL split into what redis-rs reads and the certificates Flotilla loads for it.
#[derive(Debug)]
pub struct RedisUrl {
    /// The URL without the `ssl_*` query options.
    pub url: String,
    /// Certificates, when the URL gave any; `None` for plain `redis://` and for `rediss://`
    /// against the system's roots.
    pub certs: Option<TlsCertificates>,
}

const OPTIONS: [&str; 4] = ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"];

impl RedisUrl {
    /// Reads the `ssl_*` options of `url` and the files they name.
    pub fn parse(url: &str) -> Result<Self> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let tls = base.starts_with("rediss://");
        let (mut ca, mut cert, mut key) = (None, None, None);
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !OPTIONS.contains(&name) {
                kept.push(pair);
                continue;
            }
            if !tls {
                return Err(invalid(format!("{name} needs a rediss:// URL (TLS); this one is plain redis://")));
            }
            let value = percent_decode(value);
            match name {
                "ssl_ca_certs" => ca = Some(read_pem(name, &value)?),
                "ssl_certfile" => cert = Some(read_pem(name, &value)?),
                "ssl_keyfile" => key = Some(read_pem(name, &value)?),
                _ if value.eq_ignore_ascii_case("required") => {}
                _ => {
                    return Err(invalid(format!(
                        "ssl_cert_reqs={value}: Flotilla always verifies the server's certificate; give the CA \
                         that signed it with ssl_ca_certs=PATH"
                    )))
                }
            }
        }
        let client_tls = match (cert, key) {
            (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig { client_cert, client_key }),
            (None, None) => None,
            _ => return Err(invalid("give ssl_certfile and ssl_keyfile together (a client certificate and its key)")),
        };
        let certs = (ca.is_some() || client_tls.is_some()).then_some(TlsCertificates { client_tls, root_cert: ca });
        let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        Ok(Self { url, certs })
    }

    /// A client for this URL, with its certificates.
    pub fn client(&self) -> Result<redis::Client> {
        let client = match &self.certs {
            Some(certs) => redis::Client::build_with_tls(self.url.as_str(), certs.clone()),
            None => redis::Client::open(self.url.as_str()),
        };
        client.map_err(|e| invalid(e.to_string()))
    }
}

fn invalid(message: impl std::fmt::Display) -> FeatureError {
    FeatureError::invalid(format!("redis URL: {message}"))
}

fn read_pem(option: &str, path: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("{option}={path}: {e}")))?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(invalid(format!("{option}={path}: not a PEM file (no -----BEGIN line)")));
    }
    Ok(bytes)
}

/// `%2F` and friends in a path given in a URL's query.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_pass_through() {
        let u = RedisUrl::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(u.url, "redis://127.0.0.1:6379/2");
        assert!(u.certs.is_none());
        let u = RedisUrl::parse("rediss://cache.example:6380?protocol=resp3").unwrap();
        assert_eq!(u.url, "rediss://cache.example:6380?protocol=resp3");
        assert!(u.certs.is_none(), "rediss:// without files uses the system roots");
    }

    #[test]
    fn certificate_options_are_read_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        for name in ["ca.pem", "c.pem", "k.pem"] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        let d = dir.path().display();
        let u = RedisUrl::parse(&format!(
            "rediss://h:6380/0?ssl_ca_certs={d}/ca.pem&ssl_cert_reqs=required&ssl_certfile={d}/c.pem&ssl_keyfile={d}/k.pem"
        ))
        .unwrap();
        assert_eq!(u.url, "rediss://h:6380/0");
        let certs = u.certs.unwrap();
        assert!(certs.root_cert.is_some() && certs.client_tls.is_some());
    }

    #[test]
    fn bad_options_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(dir.path().join("x.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not pem").unwrap();
        let err = |url: String| RedisUrl::parse(&url).unwrap_err().to_string();
        assert!(err(format!("redis://h/0?ssl_ca_certs={d}/x.pem")).contains("needs a rediss://"));
        assert!(err(format!("rediss://h/0?ssl_ca_certs={d}/missing.pem")).contains("missing.pem"));
        assert!(err(format!("rediss://h/0?ssl_ca_certs={d}/bad.pem")).contains("not a PEM file"));
        assert!(err(format!("rediss://h/0?ssl_certfile={d}/x.pem")).contains("together"));
        assert!(err("rediss://h/0?ssl_cert_reqs=none".into()).contains("always verifies"));
    }
}
