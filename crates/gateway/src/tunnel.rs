//! A tunnel's life after its upstream is ready: relay both ways, renew the
//! lease at half its TTL (a tunnel whose lease cannot be renewed is closed,
//! so no proxy ever carries more tunnels than its `max_concurrency`), end
//! on shutdown, and count what moved.

use pharox::ports::ProxyStream;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Gateway;
use crate::held::HeldLease;
use crate::metrics::GatewayResult;
use crate::relay::{RelayEnd, relay};

/// Relays between `client` and `upstream` under `lease` until either side
/// closes, the tunnel idles out, its lease is lost or the gateway stops;
/// the lease is released (with the outcome already set) when this returns.
pub(crate) async fn run<C>(
    gateway: &Gateway,
    mut client: C,
    mut lease: HeldLease,
    mut upstream: Box<dyn ProxyStream>,
    pool: &str,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = gateway.metrics();
    let config = gateway.config();
    metrics.active_tunnels(1.0);
    let mut stopping = gateway.stopping();
    let ttl = config.lease_ttl;
    let manager = gateway.manager();
    let renewing = async {
        let half = ttl / 2;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        loop {
            every.tick().await;
            match manager.renew(lease.lease(), ttl).await {
                Ok(renewed) => lease.renewed(renewed),
                // The lease still runs for half its TTL: try again then.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel lease lost; closing the tunnel");
                    return;
                }
            }
        }
    };
    tokio::select! {
        relayed = relay(&mut client, &mut upstream, config.idle_timeout) => {
            metrics.bytes(relayed.inbound, relayed.outbound);
            if relayed.end == RelayEnd::Idle {
                tracing::debug!("tunnel idle; closed");
            }
        }
        () = renewing => {}
        () = crate::stopped(&mut stopping) => {}
    }
    metrics.active_tunnels(-1.0);
    metrics.tunnel(pool, GatewayResult::Success);
    drop(lease);
}
