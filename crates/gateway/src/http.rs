//! The HTTP proxy protocol, inbound: absolute-form requests, forwarded
//! through a leased proxy, and `CONNECT` tunnels.

use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use pharox::ports::{DialError, DialTarget};
use pharox::{Lease, Outcome, Proxy, ProxyFailureKind, TargetHost};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::task::{AbortHandle, JoinHandle};

use crate::admit::{Admitted, Refusal, admit, open_refusal};
use crate::held::HeldLease;
use crate::keep::keep_alive;
use crate::metrics::{GatewayMetrics, GatewayResult};
use crate::upstream::{self, Budget, Use};
use crate::{ERROR_HEADER, Gateway, LEASE_ID_HEADER, PROXY_ID_HEADER, tunnel};

/// The tunnel a `CONNECT` on this connection started, awaited before the
/// connection counts as closed.
type TunnelSlot = Arc<Mutex<Option<JoinHandle<()>>>>;

/// Serves one client connection: HTTP/1.1 with keep-alive; a head larger
/// than the header limit gets 431, one slower than the header timeout
/// ends the connection.
pub(crate) async fn serve_connection(gateway: &Gateway, stream: TcpStream) {
    let config = gateway.config();
    let tunnel: TunnelSlot = Arc::default();
    let service = {
        let gateway = gateway.clone();
        let tunnel = Arc::clone(&tunnel);
        service_fn(move |request| {
            let gateway = gateway.clone();
            let tunnel = Arc::clone(&tunnel);
            async move { Ok::<_, Infallible>(handle(&gateway, request, &tunnel).await) }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.header_limit);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = pin!(connection);
    let mut stopping = gateway.stopping();
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = crate::stopped(&mut stopping) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
    let started = tunnel.lock().take();
    if let Some(tunnel) = started {
        let _ = tunnel.await;
    }
}

/// One request: admitted, then forwarded or tunnelled; every failure is
/// an answer with `X-Pharox-Error`.
async fn handle(
    gateway: &Gateway,
    request: Request<Incoming>,
    tunnel: &TunnelSlot,
) -> Response<GatewayBody> {
    let connect = request.method() == Method::CONNECT;
    let (username, password) = credentials(request.headers());
    let headers = request.headers();
    let admitted = admit(gateway, &username, password.as_deref(), |name| {
        headers.get(name).and_then(|v| v.to_str().ok())
    })
    .await;
    let metrics = gateway.metrics();
    let (pool, answer) = match admitted {
        Ok(admitted) => {
            let pool = admitted.pool.clone();
            let answer = if connect {
                open_tunnel(gateway, request, admitted, tunnel).await
            } else {
                forward(gateway, request, admitted).await
            };
            (pool, answer)
        }
        Err(refusal) => (String::new(), Err(refusal)),
    };
    match answer {
        // Tunnels are counted when they end.
        Ok((response, result)) => {
            if !connect {
                metrics.request(&pool, result);
            }
            response
        }
        Err(refusal) => {
            if connect {
                metrics.tunnel(&pool, refusal.result());
            } else {
                metrics.request(&pool, refusal.result());
            }
            refusal_response(&refusal)
        }
    }
}

/// The user name and password of `Proxy-Authorization: Basic`, if any
/// (an empty user name when there is none).
fn credentials(headers: &HeaderMap) -> (String, Option<String>) {
    let decoded = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| token.trim())
        })
        .and_then(|token| STANDARD.decode(token).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded {
        Some(pair) => match pair.split_once(':') {
            Some((user, pass)) => (user.to_owned(), Some(pass.to_owned())),
            None => (pair, None),
        },
        None => (String::new(), None),
    }
}

/// `CONNECT host:port`: an upstream tunnel first (so a failure is still a
/// 502 the client can read), then 200 and the relay.
async fn open_tunnel(
    gateway: &Gateway,
    mut request: Request<Incoming>,
    admitted: Admitted,
    slot: &TunnelSlot,
) -> Result<(Response<GatewayBody>, GatewayResult), Refusal> {
    let target = connect_target(request.uri())?;
    let mut budget = Budget::new(gateway.config().connect_timeout);
    let opened = upstream::open(gateway, &admitted, &target, Use::Tunnel, &mut budget).await;
    gateway.metrics().attempts(budget.attempts);
    drop(budget);
    let opened = opened.map_err(|e| open_refusal(e, &admitted.pool))?;
    let mut lease = opened.lease;
    let mut response = Response::new(GatewayBody::empty());
    lease_headers(response.headers_mut(), lease.lease());
    let upgrade = hyper::upgrade::on(&mut request);
    let gateway = gateway.clone();
    let pool = admitted.pool;
    let latency = opened.dialed.latency;
    let mut upstream = opened.dialed.stream;
    let handle = tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                // The client went before its tunnel began: the lease goes
                // back with no outcome (nothing was used).
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                gateway.metrics().tunnel(&pool, GatewayResult::Aborted);
                return;
            }
        };
        lease.set_outcome(success(&target, &latency));
        // The client's own socket, when hyper hands it back: the relay then
        // reads and writes it directly, not through hyper's wrappers.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // Bytes the client sent right after its CONNECT head; then
                // the buffer goes (it may hold hyper's whole read buffer).
                let early = parts.read_buf;
                if !early.is_empty() && upstream.write_all(&early).await.is_err() {
                    gateway.metrics().tunnel(&pool, GatewayResult::Aborted);
                    return;
                }
                drop(early);
                tunnel::run(&gateway, parts.io.into_inner(), lease, upstream, &pool).await;
            }
            Err(upgraded) => {
                tunnel::run(&gateway, TokioIo::new(upgraded), lease, upstream, &pool).await;
            }
        }
    });
    *slot.lock() = Some(handle);
    Ok((response, GatewayResult::Success))
}

/// The target of a `CONNECT`: `host:port`, the port required.
fn connect_target(uri: &Uri) -> Result<DialTarget, Refusal> {
    let authority = uri
        .authority()
        .ok_or_else(|| Refusal::BadRequest("CONNECT needs host:port".to_owned()))?;
    let port = authority
        .port_u16()
        .ok_or_else(|| Refusal::BadRequest("CONNECT needs a port (host:port)".to_owned()))?;
    dial_target(authority.host(), port)
}

fn dial_target(host: &str, port: u16) -> Result<DialTarget, Refusal> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(Refusal::BadRequest(
            "the target needs a host and a port".to_owned(),
        ));
    }
    Ok(DialTarget {
        host: host.to_owned(),
        port,
    })
}

/// An absolute-form request, sent through a leased proxy: as it is to an
/// HTTP proxy (with that proxy's credentials), in origin form through a
/// tunnel otherwise. A proxy that fails before the answer reaches the
/// client is replaced when that is harmless: always before the request was
/// written, after it only for a request without a body whose method may be
/// repeated (RFC 9110 9.2.2), and after an upstream 407 (refused whole)
/// for a request without a body.
async fn forward(
    gateway: &Gateway,
    request: Request<Incoming>,
    admitted: Admitted,
) -> Result<(Response<GatewayBody>, GatewayResult), Refusal> {
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(Refusal::BadRequest(
            "this is a forward proxy: send absolute-form http:// requests, or CONNECT for https"
                .to_owned(),
        ));
    }
    let host = uri.host().unwrap_or_default();
    let target = dial_target(host, uri.port_u16().unwrap_or(80))?;
    let config = gateway.config();
    let (parts, body) = request.into_parts();
    let bodiless = body.is_end_stream();
    let repeatable = bodiless
        && matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
    let mut body = Some(body);
    let mut budget = Budget::new(config.connect_timeout);
    let answered = loop {
        let opened =
            match upstream::open(gateway, &admitted, &target, Use::Forward, &mut budget).await {
                Ok(opened) => opened,
                Err(e) => break Err(open_refusal(e, &admitted.pool)),
            };
        let mut lease = opened.lease;
        let latency = opened.dialed.latency;
        // Nothing is written before the handshake: a failure here leaves
        // the request (and its body) to the next proxy.
        let (mut sender, connection) = match handshake(opened.dialed.stream).await {
            Ok(ready) => ready,
            Err(failure) => {
                budget.failed(lease, failure);
                continue;
            }
        };
        let proxy = Arc::clone(&lease.lease().proxy);
        let outgoing =
            match upstream_request(&parts, body.take(), opened.to_proxy, &proxy, &uri, &target) {
                Ok(outgoing) => outgoing,
                Err(refusal) => break Err(refusal),
            };
        let mut kept = lease.lease().clone();
        let idle = config.idle_timeout;
        let sent = tokio::select! {
            sent = tokio::time::timeout(idle, sender.send_request(outgoing)) => Some(sent),
            () = keep_alive(gateway.manager(), &mut kept, config.lease_ttl) => None,
        };
        let (failure, retry) = match sent {
            None => {
                // The lease ended while the answer was awaited: no fault
                // of the proxy, and nothing to send again under it.
                drop(lease);
                break Err(Refusal::UpstreamFailed {
                    attempts: budget.attempts,
                    last: DialError::new(
                        ProxyFailureKind::Other,
                        "the lease ended before the upstream answered",
                    ),
                });
            }
            Some(Ok(Ok(response)))
                if opened.to_proxy
                    && response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED =>
            {
                (
                    DialError::new(ProxyFailureKind::ProxyAuth, "the proxy answered 407"),
                    bodiless,
                )
            }
            Some(Ok(Ok(response))) => {
                let status = response.status().as_u16();
                let target_host = TargetHost::new(&target.host).ok();
                let (outcome, result) = match (target_host, config.blocked_status.contains(&status))
                {
                    (Some(target), true) => (
                        Outcome::Blocked {
                            target,
                            http_status: Some(status),
                        },
                        GatewayResult::Blocked,
                    ),
                    _ => (success(&target, &latency), GatewayResult::Success),
                };
                lease.set_outcome(outcome);
                break Ok((answer(gateway, response, lease, kept, connection), result));
            }
            Some(Ok(Err(e))) => (
                DialError::new(
                    ProxyFailureKind::Protocol,
                    format!("no answer through the proxy: {e}"),
                ),
                repeatable,
            ),
            Some(Err(_)) => (
                DialError::new(
                    ProxyFailureKind::Timeout,
                    format!("no answer within {idle:?}"),
                ),
                repeatable,
            ),
        };
        budget.failed(lease, failure);
        if !retry {
            break Err(Refusal::UpstreamFailed {
                attempts: budget.attempts,
                last: budget
                    .last
                    .take()
                    .unwrap_or_else(|| DialError::new(ProxyFailureKind::Other, "failed")),
            });
        }
    };
    gateway.metrics().attempts(budget.attempts);
    answered
}

/// An HTTP/1.1 client connection on `stream`, its driver running in a
/// task of its own (aborted through the handle when the lease is lost).
async fn handshake(
    stream: Box<dyn pharox::ports::ProxyStream>,
) -> Result<(SendRequest<UpstreamBody>, AbortHandle), DialError> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DialError::new(ProxyFailureKind::Protocol, format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok((sender, driver.abort_handle()))
}

/// The request body sent upstream: the client's, or none.
type UpstreamBody = http_body_util::Either<Incoming, http_body_util::Empty<Bytes>>;

/// The request to send upstream: hop-by-hop and `X-Pharox-*` headers
/// dropped, `Host` set to the target (RFC 9112 3.2.2: a proxy replaces
/// it); absolute-form, without any user info, with the proxy's credentials
/// for an HTTP proxy; origin-form through a tunnel.
fn upstream_request(
    parts: &hyper::http::request::Parts,
    body: Option<Incoming>,
    to_proxy: bool,
    proxy: &Proxy,
    uri: &Uri,
    target: &DialTarget,
) -> Result<Request<UpstreamBody>, Refusal> {
    let body = match body {
        Some(body) => http_body_util::Either::Left(body),
        None => http_body_util::Either::Right(http_body_util::Empty::new()),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let host = match uri.port() {
        Some(port) => format!("{}:{port}", bracketed(&target.host)),
        None => bracketed(&target.host),
    };
    let target_uri = if to_proxy {
        format!("http://{host}{path}")
    } else {
        path.to_owned()
    }
    .parse::<Uri>()
    .map_err(|_| Refusal::BadRequest("the request target is not valid".to_owned()))?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = target_uri;
    let headers = request.headers_mut();
    copy_end_to_end(&parts.headers, headers);
    let host = HeaderValue::from_str(&host)
        .map_err(|_| Refusal::BadRequest("the request's host is not valid".to_owned()))?;
    headers.insert(header::HOST, host);
    if to_proxy
        && let Some(credentials) = &proxy.credentials
        && let Ok(mut value) = HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", credentials.username, credentials.password))
        ))
    {
        value.set_sensitive(true);
        headers.insert(header::PROXY_AUTHORIZATION, value);
    }
    Ok(request)
}

/// A host for a URL or `Host`: an IPv6 literal in brackets.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Copies the end-to-end headers: not the hop-by-hop ones (RFC 9110 7.6.1,
/// and those `Connection` names), not the gateway's own.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for (name, value) in from {
        if is_hop_by_hop(name) || named.contains(name) || name.as_str().starts_with("x-pharox-") {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The upstream's answer for the client: end-to-end headers, the lease's
/// ids, and a body that releases the lease when it ends. While the body
/// streams, a task keeps the lease alive; if the lease is lost it cuts the
/// upstream connection, so the proxy carries no request its lease no
/// longer counts.
fn answer(
    gateway: &Gateway,
    response: Response<Incoming>,
    lease: HeldLease,
    mut kept: Lease,
    connection: AbortHandle,
) -> Response<GatewayBody> {
    let (parts, body) = response.into_parts();
    let mut headers = HeaderMap::new();
    copy_end_to_end(&parts.headers, &mut headers);
    lease_headers(&mut headers, lease.lease());
    let lost = Arc::new(AtomicBool::new(false));
    let watcher = {
        let manager = Arc::clone(gateway.manager());
        let ttl = gateway.config().lease_ttl;
        let lost = Arc::clone(&lost);
        tokio::spawn(async move {
            keep_alive(&manager, &mut kept, ttl).await;
            lost.store(true, Ordering::Release);
            connection.abort();
        })
        .abort_handle()
    };
    let idle_timeout = gateway.config().idle_timeout;
    let mut out = Response::new(GatewayBody {
        kind: Kind::Upstream(Box::new(Streamed {
            body,
            lease: Some(lease),
            moved: 0,
            metrics: gateway.metrics().clone(),
            watcher,
            lost,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
        })),
    });
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

/// `X-Pharox-Proxy-Id` and `X-Pharox-Lease-Id`.
fn lease_headers(headers: &mut HeaderMap, lease: &Lease) {
    for (name, value) in [
        (PROXY_ID_HEADER, lease.proxy_id.to_string()),
        (LEASE_ID_HEADER, lease.id.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// A success through `target` after `latency`.
fn success(target: &DialTarget, latency: &std::time::Duration) -> Outcome {
    Outcome::Success {
        target: TargetHost::new(&target.host).ok(),
        latency_ms: Some(latency.as_secs_f64() * 1000.0),
    }
}

/// The answer to a refused request: its status, `X-Pharox-Error`, the same
/// text as the body; 407 asks for Basic auth, 503 says when to retry.
fn refusal_response(refusal: &Refusal) -> Response<GatewayBody> {
    let message = refusal.message();
    let mut response = Response::new(GatewayBody::text(format!("{message}\n")));
    *response.status_mut() =
        StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert(ERROR_HEADER, value);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match refusal.status() {
        407 => {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pharox\""),
            );
        }
        503 => {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::config::RETRY_AFTER_SECS),
            );
        }
        _ => {}
    }
    response
}

/// The body of every answer: a short text of the gateway's own, or the
/// upstream's body, streamed.
pub(crate) struct GatewayBody {
    kind: Kind,
}

enum Kind {
    Text(Option<Bytes>),
    Upstream(Box<Streamed>),
}

/// An upstream body and the lease it runs under: released, with the bytes
/// counted, when the body ends, fails, or the client goes away.
struct Streamed {
    body: Incoming,
    lease: Option<HeldLease>,
    moved: u64,
    metrics: GatewayMetrics,
    /// The task keeping the lease alive.
    watcher: AbortHandle,
    /// Set by the watcher when the lease was lost (the body's failure is
    /// then no fault of the proxy).
    lost: Arc<AtomicBool>,
    /// Runs out when the upstream sends nothing for `idle_timeout` while
    /// the client waits for more.
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: std::time::Duration,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.watcher.abort();
        self.metrics.bytes(self.moved, 0);
    }
}

/// Why an upstream body was cut short.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("the upstream sent nothing for {0:?}")]
    Idle(std::time::Duration),
}

impl GatewayBody {
    fn empty() -> Self {
        Self {
            kind: Kind::Text(None),
        }
    }

    fn text(text: String) -> Self {
        Self {
            kind: Kind::Text(Some(Bytes::from(text))),
        }
    }
}

impl Streamed {
    /// Ends the lease with a proxy failure (unless the lease was lost).
    fn failed(&mut self, kind: ProxyFailureKind) {
        if let Some(mut lease) = self.lease.take()
            && !self.lost.load(Ordering::Acquire)
        {
            lease.set_outcome(Outcome::proxy_failure(kind));
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            Kind::Upstream(streamed) => match Pin::new(&mut streamed.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        streamed.moved += data.len() as u64;
                    }
                    let next = tokio::time::Instant::now() + streamed.idle_timeout;
                    streamed.idle.as_mut().reset(next);
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    streamed.failed(ProxyFailureKind::Protocol);
                    Poll::Ready(Some(Err(BodyError::Upstream(e).into())))
                }
                Poll::Ready(None) => {
                    // The end of the body ends the lease.
                    drop(streamed.lease.take());
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    ready!(streamed.idle.as_mut().poll(cx));
                    streamed.failed(ProxyFailureKind::Timeout);
                    let idle = streamed.idle_timeout;
                    Poll::Ready(Some(Err(BodyError::Idle(idle).into())))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Text(text) => text.is_none(),
            Kind::Upstream(streamed) => streamed.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Text(Some(text)) => SizeHint::with_exact(text.len() as u64),
            Kind::Text(None) => SizeHint::with_exact(0),
            Kind::Upstream(streamed) => streamed.body.size_hint(),
        }
    }
}
