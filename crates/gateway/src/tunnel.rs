//! A tunnel's life after its upstream is ready: relay both ways while its
//! lease is kept alive ([`keep_alive`]: a tunnel whose lease is lost is
//! closed, so no proxy ever carries more tunnels than its
//! `max_concurrency`), end on shutdown, and count what moved.

use pharox::ports::ProxyStream;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Gateway;
use crate::held::HeldLease;
use crate::keep::keep_alive;
use crate::metrics::GatewayResult;
use crate::relay::{RelayEnd, relay};

/// Relays between `client` and `upstream` under `lease` until either side
/// closes, the tunnel idles out, its lease is lost or the gateway stops;
/// the lease is released (with the outcome already set) when this returns.
pub(crate) async fn run<C>(
    gateway: &Gateway,
    mut client: C,
    lease: HeldLease,
    mut upstream: Box<dyn ProxyStream>,
    pool: &str,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = gateway.metrics();
    let config = gateway.config();
    metrics.active_tunnels(1.0);
    let mut stopping = gateway.stopping();
    let mut kept = lease.lease().clone();
    let stop = async {
        tokio::select! {
            () = keep_alive(gateway.manager(), &mut kept, config.lease_ttl) => {
                tracing::debug!("tunnel closed: its lease was lost");
            }
            () = crate::stopped(&mut stopping) => {}
        }
    };
    let relayed = relay(&mut client, &mut upstream, config.idle_timeout, stop).await;
    metrics.bytes(relayed.inbound, relayed.outbound);
    if relayed.end == RelayEnd::Idle {
        tracing::debug!("tunnel idle; closed");
    }
    metrics.active_tunnels(-1.0);
    metrics.tunnel(pool, GatewayResult::Success);
    drop(lease);
}
