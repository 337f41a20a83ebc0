//! A [`HealthProbe`] that sends a real HTTP request through the proxy with
//! reqwest: HTTP forward proxies (absolute-form, `CONNECT` for HTTPS targets),
//! "HTTPS" proxies (see [`HttpsProxyMode`]), SOCKS4/4a and SOCKS5/5h.
//!
//! ```no_run
//! # async fn demo(proxy: pharox_domain::Proxy) -> Result<(), pharox_adapter_http_probe::BuildError> {
//! use pharox_adapter_http_probe::HttpProbe;
//! use pharox_domain::HealthCheckOptions;
//! use pharox_ports::HealthProbe;
//!
//! let probe = HttpProbe::builder().user_agent("pharox-health/1").build()?;
//! let result = probe.probe(&proxy, &HealthCheckOptions::default()).await;
//! println!("{:?} {:?} {:?}", result.status, result.latency_ms, result.error);
//! # Ok(()) }
//! ```
//!
//! TLS uses rustls with the **ring** provider, passed to reqwest as a
//! finished `ClientConfig`; no process-wide provider is needed or installed.
//! See the crate README for protocol semantics, error classes and numbers.
//!
//! This crate has no cargo features.

mod failure;
mod tls;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pharox_domain::{
    HealthCheckOptions, HealthCheckResult, Proxy, ProxyProtocol, ProxyStatus, truncate_to_micros,
};
use pharox_ports::HealthProbe;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::failure::{Failure, FailureKind, Redactor, classify, proxy_auth};

/// The `User-Agent` sent when none is configured.
pub const DEFAULT_USER_AGENT: &str = concat!("pharox-health/", env!("CARGO_PKG_VERSION"));

/// Redirects followed when [`HealthCheckOptions::follow_redirects`] is on.
pub const MAX_REDIRECTS: usize = 5;

/// What [`ProxyProtocol::Https`] means to the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpsProxyMode {
    /// An HTTP proxy reached over plain TCP that supports `CONNECT`
    /// tunnelling (what proxy lists call an "HTTPS proxy"): `https://`
    /// targets are tunnelled with `CONNECT`, `http://` targets are sent in
    /// absolute-form, exactly as for [`ProxyProtocol::Http`].
    #[default]
    Connect,
    /// An HTTP proxy reached over TLS (the client does a TLS handshake with
    /// the proxy itself, verified against the same roots as targets), then
    /// absolute-form or `CONNECT` inside that TLS connection.
    Tls,
}

/// Why an [`HttpProbe`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A root certificate could not be parsed or used.
    #[error("invalid root certificate: {0}")]
    Certificate(String),
    /// The TLS configuration could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// Client-level settings for [`HttpProbe`].
#[derive(Debug, Clone)]
pub struct HttpProbeBuilder {
    extra_roots: Vec<CertificateDer<'static>>,
    platform_roots: bool,
    accept_invalid_certs: bool,
    user_agent: String,
    https_mode: HttpsProxyMode,
}

impl Default for HttpProbeBuilder {
    fn default() -> Self {
        Self {
            extra_roots: Vec::new(),
            platform_roots: true,
            accept_invalid_certs: false,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            https_mode: HttpsProxyMode::default(),
        }
    }
}

impl HttpProbeBuilder {
    /// Trusts one more root certificate (DER), on top of the system's.
    #[must_use]
    pub fn add_root_certificate_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(CertificateDer::from(der.into()));
        self
    }

    /// Trusts every certificate in a PEM bundle, on top of the system's.
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, BuildError> {
        let before = self.extra_roots.len();
        for cert in CertificateDer::pem_slice_iter(pem) {
            self.extra_roots
                .push(cert.map_err(|e| BuildError::Certificate(e.to_string()))?);
        }
        if self.extra_roots.len() == before {
            return Err(BuildError::Certificate(
                "no CERTIFICATE block in the PEM text".to_owned(),
            ));
        }
        Ok(self)
    }

    /// Whether to trust the operating system's root store (default: yes).
    /// Off, only the added roots are trusted.
    #[must_use]
    pub fn platform_roots(mut self, on: bool) -> Self {
        self.platform_roots = on;
        self
    }

    /// Accepts any TLS certificate, from targets and TLS proxies alike.
    /// For labs with self-signed certificates only.
    #[must_use]
    pub fn danger_accept_invalid_certs(mut self, on: bool) -> Self {
        self.accept_invalid_certs = on;
        self
    }

    /// The `User-Agent` sent to targets (default [`DEFAULT_USER_AGENT`]).
    /// A `User-Agent` in [`HealthCheckOptions::headers`] wins.
    #[must_use]
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// What [`ProxyProtocol::Https`] means (default [`HttpsProxyMode::Connect`]).
    #[must_use]
    pub fn https_proxy_mode(mut self, mode: HttpsProxyMode) -> Self {
        self.https_mode = mode;
        self
    }

    /// Builds the probe (loads the system roots once, here).
    pub fn build(self) -> Result<HttpProbe, BuildError> {
        let user_agent = HeaderValue::from_str(&self.user_agent)
            .map_err(|_| BuildError::Tls("user agent is not a valid header value".to_owned()))?;
        let tls = tls::client_config(tls::Roots {
            platform: self.platform_roots,
            extra: self.extra_roots,
            accept_invalid: self.accept_invalid_certs,
        })?;
        Ok(HttpProbe {
            tls,
            user_agent,
            https_mode: self.https_mode,
        })
    }
}

/// Health probe over reqwest. Cheap to share (`Arc` it); every
/// [`HealthProbe::probe`] call builds its own short-lived client for that one
/// proxy, so no connection, credential or state is shared between proxies
/// or between checks.
pub struct HttpProbe {
    tls: rustls::ClientConfig,
    user_agent: HeaderValue,
    https_mode: HttpsProxyMode,
}

impl std::fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProbe")
            .field("user_agent", &self.user_agent)
            .field("https_mode", &self.https_mode)
            .finish_non_exhaustive()
    }
}

impl HttpProbe {
    /// A probe with default settings (system roots, default user agent,
    /// `https` = HTTP proxy with `CONNECT`).
    pub fn new() -> Result<Self, BuildError> {
        Self::builder().build()
    }

    /// Starts configuring a probe.
    #[must_use]
    pub fn builder() -> HttpProbeBuilder {
        HttpProbeBuilder::default()
    }

    /// Fetches the target directly, without any proxy, with the same
    /// timeout, attempts, headers, redirect and TLS settings as a probe:
    /// whether the target itself answers as a probe expects. A sweep
    /// against a target that does not would fail every proxy (and mark the
    /// pool inactive), so run this first.
    pub async fn check_target(
        &self,
        options: &HealthCheckOptions,
    ) -> Result<TargetCheck, TargetError> {
        options
            .validate()
            .map_err(|e| TargetError(format!("invalid health check options: {e}")))?;
        let target = reqwest::Url::parse(&options.target_url)
            .map_err(|_| TargetError("is not a valid URL".to_owned()))?;
        let client = self
            .client(None, options)
            .map_err(|f| TargetError(f.message))?;
        let mut made = 0;
        loop {
            made += 1;
            let start = Instant::now();
            let sent =
                tokio::time::timeout(options.timeout, client.get(target.clone()).send()).await;
            let failure = match sent {
                Err(_) => Failure::timeout(options.timeout),
                Ok(Err(e)) => classify(&e, options.timeout, false),
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    if options.is_expected(status) {
                        return Ok(TargetCheck {
                            http_status: status,
                            latency: start.elapsed(),
                        });
                    }
                    Failure::new(FailureKind::Status, format!("unexpected status {status}"))
                }
            };
            if !failure.kind.retryable() || made >= options.attempts {
                return Err(TargetError(failure.message));
            }
        }
    }

    /// The proxy URL handed to reqwest: the proxy's connect URL (credentials
    /// included) with the scheme the protocol and options call for.
    fn proxy_url(&self, proxy: &Proxy, remote_dns: bool) -> String {
        let scheme = match (proxy.protocol, remote_dns) {
            (ProxyProtocol::Http, _) => "http",
            (ProxyProtocol::Https, _) => match self.https_mode {
                HttpsProxyMode::Connect => "http",
                HttpsProxyMode::Tls => "https",
            },
            (ProxyProtocol::Socks4, false) => "socks4",
            (ProxyProtocol::Socks4, true) => "socks4a",
            (ProxyProtocol::Socks5, false) => "socks5",
            (ProxyProtocol::Socks5, true) => "socks5h",
        };
        let url = proxy.connect_url();
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        format!("{scheme}://{rest}")
    }

    /// A client through `proxy_url`, or straight to the target (ignoring
    /// any `HTTP_PROXY` of the environment) without one.
    fn client(
        &self,
        proxy_url: Option<&str>,
        options: &HealthCheckOptions,
    ) -> Result<reqwest::Client, Failure> {
        let mut builder = reqwest::Client::builder();
        builder = match proxy_url {
            // The reqwest error may quote the URL (with credentials): not used.
            Some(url) => builder.proxy(
                reqwest::Proxy::all(url)
                    .map_err(|_| Failure::new(FailureKind::Other, "invalid proxy address"))?,
            ),
            None => builder.no_proxy(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::USER_AGENT, self.user_agent.clone());
        for (name, value) in &options.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                Failure::new(FailureKind::Other, format!("invalid header name {name:?}"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                Failure::new(
                    FailureKind::Other,
                    format!("invalid value for header {name}"),
                )
            })?;
            headers.insert(name, value);
        }
        let redirect = if options.follow_redirects {
            reqwest::redirect::Policy::limited(MAX_REDIRECTS)
        } else {
            reqwest::redirect::Policy::none()
        };
        builder
            .tls_backend_preconfigured(self.tls.clone())
            .redirect(redirect)
            .default_headers(headers)
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true)
            .build()
            .map_err(|_| Failure::new(FailureKind::Other, "could not build the HTTP client"))
    }

    /// One attempt: the whole request, connect to the response head, within
    /// `options.timeout`. The body is not read.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        target: &reqwest::Url,
        proxy: &Proxy,
        options: &HealthCheckOptions,
    ) -> Attempt {
        let start = Instant::now();
        let sent = tokio::time::timeout(options.timeout, client.get(target.clone()).send()).await;
        let elapsed = start.elapsed();
        match sent {
            Err(_) => Attempt::failed(Failure::timeout(options.timeout)),
            Ok(Err(e)) => {
                Attempt::failed(classify(&e, options.timeout, proxy.credentials.is_some()))
            }
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                // A 407 to a request sent in absolute-form comes from the
                // proxy itself: it did not relay anything.
                if status == 407
                    && target.scheme() == "http"
                    && matches!(proxy.protocol, ProxyProtocol::Http | ProxyProtocol::Https)
                {
                    return Attempt::failed(proxy_auth(proxy.credentials.is_some()));
                }
                let failure = (!options.is_expected(status)).then(|| {
                    Failure::new(FailureKind::Status, format!("unexpected status {status}"))
                });
                Attempt {
                    http_status: Some(status),
                    latency: Some(elapsed),
                    failure,
                }
            }
        }
    }
}

/// The target answered a direct request as expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetCheck {
    /// Its status code.
    pub http_status: u16,
    /// From sending the request to the response head.
    pub latency: Duration,
}

/// The target did not answer a direct request as a probe expects (refused,
/// timed out, TLS, an unexpected status): why, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// What one attempt found.
struct Attempt {
    http_status: Option<u16>,
    /// Set when the target answered (through the proxy).
    latency: Option<Duration>,
    failure: Option<Failure>,
}

impl Attempt {
    fn failed(failure: Failure) -> Self {
        Self {
            http_status: None,
            latency: None,
            failure: Some(failure),
        }
    }
}

#[async_trait]
impl HealthProbe for HttpProbe {
    async fn probe(&self, proxy: &Proxy, options: &HealthCheckOptions) -> HealthCheckResult {
        let span = tracing::debug_span!(
            "health_probe",
            proxy_id = %proxy.id,
            protocol = %proxy.protocol,
            attempts = tracing::field::Empty,
            verdict = tracing::field::Empty,
        );
        probe(self, proxy, options).instrument(span).await
    }
}

async fn probe(
    probe: &HttpProbe,
    proxy: &Proxy,
    options: &HealthCheckOptions,
) -> HealthCheckResult {
    let span = tracing::Span::current();
    let proxy_url = probe.proxy_url(proxy, options.remote_dns);
    let redactor = Redactor::new(
        proxy
            .credentials
            .as_ref()
            .map(|c| (c.username.as_str(), c.password.as_str())),
        &proxy_url,
    );
    let finish = |attempts: u32, attempt: Attempt| {
        let status = match (&attempt.failure, attempt.latency) {
            (Some(_), _) | (None, None) => ProxyStatus::Inactive,
            (None, Some(latency)) if options.slow_threshold.is_some_and(|t| latency > t) => {
                ProxyStatus::Slow
            }
            (None, Some(_)) => ProxyStatus::Active,
        };
        let error = attempt.failure.map(|f| redactor.redact(&f.message));
        span.record("attempts", attempts);
        span.record("verdict", status.as_str());
        tracing::debug!(error = error.as_deref(), "probe finished");
        HealthCheckResult {
            proxy_id: proxy.id,
            protocol: proxy.protocol,
            status,
            reachable: attempt.latency.is_some(),
            latency_ms: attempt.latency.map(|d| d.as_secs_f64() * 1000.0),
            attempts,
            http_status: attempt.http_status,
            checked_at: truncate_to_micros(OffsetDateTime::now_utc()),
            error,
        }
    };

    if let Err(e) = options.validate() {
        return finish(
            1,
            Attempt::failed(Failure::new(
                FailureKind::Other,
                format!("invalid health check options: {e}"),
            )),
        );
    }
    let Ok(target) = reqwest::Url::parse(&options.target_url) else {
        return finish(
            1,
            Attempt::failed(Failure::new(FailureKind::Other, "invalid target URL")),
        );
    };
    let client = match probe.client(Some(&proxy_url), options) {
        Ok(client) => client,
        Err(failure) => return finish(1, Attempt::failed(failure)),
    };
    let mut made = 0;
    loop {
        made += 1;
        let attempt = probe.attempt(&client, &target, proxy, options).await;
        let retry = attempt.failure.as_ref().is_some_and(|f| f.kind.retryable());
        if !retry || made >= options.attempts {
            return finish(made, attempt);
        }
        if let Some(f) = &attempt.failure {
            tracing::debug!(attempt = made, error = %redactor.redact(&f.message), "attempt failed; retrying");
        }
    }
}
