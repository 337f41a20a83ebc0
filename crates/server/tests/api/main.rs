//! The API over real HTTP: a server on 127.0.0.1 port 0 per test, a real
//! reqwest client; the lease and admin scenarios run on both storages
//! (`on_both_storages!`: in memory and on a fresh PostgreSQL schema), the
//! keys in storage in `stored_keys`, HTTPS in `tls`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod auth;
mod common;
mod fuzz;
mod leases;
mod limits;
mod metrics;
mod openapi;
mod postgres;
mod stored_keys;
mod sweeps;
mod tls;
