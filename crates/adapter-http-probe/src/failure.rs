//! Turning request errors into readable, classified, credential-free text.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

/// What went wrong in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The attempt did not finish within the timeout.
    Timeout,
    /// Nothing listens at the proxy (or the proxy's upstream refused).
    Refused,
    /// The proxy rejected the credentials (HTTP 407, SOCKS5 auth).
    Auth,
    /// The SOCKS handshake failed.
    Socks,
    /// The TLS handshake failed.
    Tls,
    /// The HTTP proxy refused the CONNECT tunnel.
    Tunnel,
    /// The target answered with a status not expected.
    Status,
    /// Anything else (reset, closed early, DNS, protocol errors).
    Other,
}

impl FailureKind {
    /// Whether another attempt could plausibly succeed. Rejected credentials
    /// are final: retrying only hammers the proxy (and may lock the account).
    pub(crate) fn retryable(self) -> bool {
        self != Self::Auth
    }
}

/// A classified failure with its readable message.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn timeout(limit: Duration) -> Self {
        Self::new(
            FailureKind::Timeout,
            format!("timed out after {} ms", limit.as_millis()),
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Classifies a reqwest error by walking its source chain. Never uses the
/// top-level reqwest message (it carries the target URL); the texts of the
/// inner errors come from hyper, hyper-util, rustls and std and name no
/// credentials, and are passed through [`Redactor`] anyway by the caller.
pub(crate) fn classify(err: &reqwest::Error, limit: Duration, has_credentials: bool) -> Failure {
    if err.is_timeout() {
        return Failure::timeout(limit);
    }
    if err.is_redirect() {
        return Failure::new(FailureKind::Other, "too many redirects");
    }
    let mut texts: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut current: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = current {
        if let Some(tls) = find_tls(e) {
            return Failure::new(FailureKind::Tls, format!("TLS error: {tls}"));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        let text = e.to_string();
        if text.contains("tunnel error: proxy authorization required") {
            return proxy_auth(has_credentials);
        }
        if text.contains("tunnel error: unsuccessful") {
            return Failure::new(
                FailureKind::Tunnel,
                "proxy refused the CONNECT tunnel (non-2xx answer)",
            );
        }
        if let Some(socks) = text.strip_prefix("SOCKS error: ") {
            return socks_failure(socks, e, limit, has_credentials);
        }
        // hyper-util's wrapper ("client error (Connect)") says nothing useful.
        if !text.is_empty() && !text.starts_with("client error (") && texts.last() != Some(&text) {
            texts.push(text);
        }
        current = e.source();
    }
    if let Some(failure) = io_kind.and_then(|kind| io_failure(kind, limit)) {
        return failure;
    }
    if texts.is_empty() {
        texts.push("request failed".to_owned());
    }
    // hyper's parse errors ("invalid HTTP version parsed").
    if texts.len() == 1 && texts[0].ends_with(" parsed") {
        return Failure::new(
            FailureKind::Other,
            format!("invalid HTTP response: {}", texts[0]),
        );
    }
    Failure::new(FailureKind::Other, texts.join(": "))
}

/// The message for a 407 from the proxy.
pub(crate) fn proxy_auth(has_credentials: bool) -> Failure {
    Failure::new(
        FailureKind::Auth,
        if has_credentials {
            "proxy authentication failed (407)"
        } else {
            "proxy authentication required (407), and the proxy has no credentials"
        },
    )
}

fn io_failure(kind: io::ErrorKind, limit: Duration) -> Option<Failure> {
    Some(match kind {
        io::ErrorKind::ConnectionRefused => {
            Failure::new(FailureKind::Refused, "connection refused")
        }
        io::ErrorKind::ConnectionReset => {
            Failure::new(FailureKind::Other, "connection reset by the proxy")
        }
        io::ErrorKind::ConnectionAborted => Failure::new(FailureKind::Other, "connection aborted"),
        io::ErrorKind::UnexpectedEof => {
            Failure::new(FailureKind::Other, "connection closed unexpectedly")
        }
        io::ErrorKind::TimedOut => Failure::timeout(limit),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            Failure::new(FailureKind::Other, "proxy unreachable")
        }
        _ => return None,
    })
}

/// hyper-util's SOCKS errors end the source chain, so the inner connect error
/// is only visible in their `Debug` text, which is inspected (never shown)
/// to tell "connection refused" from other failures.
fn socks_failure(
    detail: &str,
    e: &(dyn StdError + 'static),
    limit: Duration,
    has_credentials: bool,
) -> Failure {
    // The server accepted none of the methods offered ("no acceptable methods").
    if detail.contains("does not support user/pass") {
        return Failure::new(
            FailureKind::Auth,
            if has_credentials {
                "SOCKS error: proxy does not accept username/password authentication"
            } else {
                "SOCKS error: proxy requires authentication, and the proxy has no credentials"
            },
        );
    }
    if detail.contains("credentials not accepted") {
        return Failure::new(
            FailureKind::Auth,
            "SOCKS error: proxy authentication failed (credentials not accepted)",
        );
    }
    if detail.contains("failed to create underlying connection") {
        let debug = format!("{e:?}");
        if debug.contains("ConnectionRefused") {
            return Failure::new(FailureKind::Refused, "connection refused");
        }
        if debug.contains("TimedOut") {
            return Failure::timeout(limit);
        }
        return Failure::new(FailureKind::Other, "could not connect to the SOCKS proxy");
    }
    if detail.contains("io error during SOCKS handshake") {
        let debug = format!("{e:?}");
        if debug.contains("ConnectionReset") {
            return Failure::new(
                FailureKind::Socks,
                "SOCKS error: connection reset during handshake",
            );
        }
    }
    if detail.contains("unexpected eof") {
        return Failure::new(
            FailureKind::Socks,
            "SOCKS error: proxy closed the connection during the handshake",
        );
    }
    Failure::new(FailureKind::Socks, format!("SOCKS error: {detail}"))
}

/// Finds a rustls error in `e` itself or wrapped in an `io::Error` (whose
/// `source()` skips the wrapped error).
fn find_tls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<io::Error>()?.get_ref()?;
    let inner: &(dyn StdError + 'static) = inner;
    inner.downcast_ref::<rustls::Error>()
}

/// Removes a proxy's credentials from text, in every spelling they may take.
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for `credentials` (user name and password) and for the
    /// full connect URL.
    pub(crate) fn new(credentials: Option<(&str, &str)>, connect_url: &str) -> Self {
        let mut secrets = Vec::new();
        if let Some((user, password)) = credentials {
            secrets.push(connect_url.to_owned());
            if let Some((_, rest)) = connect_url.split_once("://")
                && let Some((userinfo, _)) = rest.rsplit_once('@')
            {
                secrets.push(userinfo.to_owned());
            }
            secrets.push(format!("{user}:{password}"));
            // Very short passwords would turn redaction into noise, and are
            // not secret in any useful sense.
            if password.chars().count() >= 3 {
                secrets.push(password.to_owned());
                if let Some(encoded) = connect_url
                    .split_once("://")
                    .and_then(|(_, rest)| rest.rsplit_once('@'))
                    .and_then(|(userinfo, _)| userinfo.split_once(':'))
                    .map(|(_, p)| p.to_owned())
                {
                    secrets.push(encoded);
                }
            }
        }
        // Longest first, so a URL is replaced whole rather than piecemeal.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `text` with every secret replaced by `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if !secret.is_empty() && out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_spelling() {
        let r = Redactor::new(
            Some(("alice", "p@ss word")),
            "http://alice:p%40ss%20word@127.0.0.1:8080",
        );
        let text = "x http://alice:p%40ss%20word@127.0.0.1:8080 y alice:p@ss word z p%40ss%20word";
        let out = r.redact(text);
        assert!(!out.contains("p@ss"), "{out}");
        assert!(!out.contains("p%40ss"), "{out}");
        assert_eq!(Redactor::new(None, "http://h:1").redact("abc"), "abc");
    }

    #[test]
    fn kinds() {
        assert!(!FailureKind::Auth.retryable());
        assert!(FailureKind::Refused.retryable());
        assert_eq!(
            Failure::timeout(Duration::from_millis(500)).message,
            "timed out after 500 ms"
        );
    }
}
