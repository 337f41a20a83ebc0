//! Real servers on `127.0.0.1` for pharox's tests: an HTTP target, an HTTP
//! forward proxy (absolute-form and `CONNECT`, optional Basic auth, optional
//! TLS), SOCKS4/4a and SOCKS5 servers (optional RFC 1929 auth), a "black hole"
//! that accepts and never answers, and a closed port.
//!
//! Every server binds an ephemeral port, runs on the current tokio runtime and
//! is shut down (listener and every open connection) when its handle is
//! dropped. Nothing here talks to anything but loopback.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use pharox_test_proxies::{HttpProxy, TargetServer};
//!
//! let target = TargetServer::start().await?;
//! let proxy = HttpProxy::start_with_auth("user", "secret").await?;
//! // point a client at `proxy.addr()` and fetch `target.url("/ok")`
//! assert_eq!(proxy.forwarded_requests(), 0);
//! # Ok(()) }
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod black_hole;
mod http;
mod http_proxy;
mod server;
mod socks;
mod target;
mod tls;

pub use black_hole::{BlackHole, closed_port};
pub use http_proxy::HttpProxy;
pub use socks::{Socks4Server, Socks5Server, SocksTarget};
pub use target::{RecordedRequest, TargetServer};
pub use tls::TestCa;
