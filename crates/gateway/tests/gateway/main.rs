//! The gateway end to end: real clients (reqwest, raw sockets) through a
//! gateway on 127.0.0.1 to upstream proxies and targets started by the
//! tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod failover;
mod limits;
mod routing;
mod upstreams;
