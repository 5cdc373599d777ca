//! Secrets (passwords in connection URLs, and later bearer tokens): a type that never shows
//! its value in `Debug`, `Display` or logs, and compares in constant time; and [`redact_url`],
//! the form of a connection URL that logs and errors may carry.

use std::fmt;

/// A secret string. `Debug` and `Display` print `***`; [`Secret::expose`] is the one way to
/// the value, so each use of it is a place to read with care.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the protocol that needs it (an authentication exchange, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Equal values, compared in time that depends on their lengths only (not on where they differ).
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

/// `url` with the password of its user info masked: `amqp://guest:***@host:5672/%2f`. A URL
/// without a password comes back as it is.
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    let Some(at) = url[start..end].rfind('@').map(|i| start + i) else { return url.to_string() };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "*** Secret(***) Some(Secret(***))");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s, Secret::new("hunter2"));
        assert_ne!(s, Secret::new("hunter3"));
        assert_ne!(s, Secret::new("hunter22"));
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqp://svc:p%40ss@rabbit/vh?heartbeat=10"), "amqp://svc:***@rabbit/vh?heartbeat=10");
        assert_eq!(redact_url("amqp://a:b@c@host"), "amqp://a:***@host");
        assert_eq!(
            redact_url("postgresql://app:pw@db:5432/f?sslmode=disable"),
            "postgresql://app:***@db:5432/f?sslmode=disable"
        );
        assert_eq!(redact_url("amqp://guest@host:5672"), "amqp://guest@host:5672");
        assert_eq!(redact_url("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
