//! The gateway's performance targets, measured on loopback against a
//! fast upstream proxy and target started here, each figure beside the
//! same load sent straight to the upstream proxy, in the same run, rounds
//! alternating:
//!
//! - `rps`: absolute-form requests per second through the gateway, over
//!   direct (target: at least 0.5);
//! - `latency`: one client, one request at a time: the median added by the
//!   gateway (target: under 0.3 ms);
//! - `tunnel`: a 100 MB body through a `CONNECT` tunnel, throughput over
//!   direct (target: at least 0.8);
//! - `idle`: resident memory of a gateway process holding idle tunnels
//!   (target: under 300 MiB at 10,000).
//!
//! `cargo bench -p pharox-gateway --bench gateway -- [rps|latency|tunnel|idle|all]
//! [--seconds S] [--rounds N] [--concurrency C] [--tunnels N]`. The method
//! and the figures are in the crate README.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use pharox::api_keys::KeyRing;
use pharox::{Proxy, ProxyManager, ProxyPool, ProxyStorage};
use pharox_adapter_dialer::TokioDialer;
use pharox_adapter_memory::MemoryStorage;
use pharox_gateway::{Gateway, GatewayConfig};
use pharox_test_proxies::{HttpProxy, TargetServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROLE: &str = "PHAROX_GATEWAY_BENCH_ROLE";
const BLOB: usize = 100 * 1024 * 1024;

struct Options {
    what: String,
    seconds: f64,
    rounds: usize,
    concurrency: usize,
    tunnels: usize,
}

fn options() -> Options {
    let mut options = Options {
        what: "all".to_owned(),
        seconds: 3.0,
        rounds: 3,
        concurrency: 16,
        tunnels: 9_950,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value");
        match arg.as_str() {
            "--seconds" => options.seconds = value().parse().unwrap(),
            "--rounds" => options.rounds = value().parse().unwrap(),
            "--concurrency" => options.concurrency = value().parse().unwrap(),
            "--tunnels" => options.tunnels = value().parse().unwrap(),
            other => options.what = other.to_owned(),
        }
    }
    options
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("gateway") => return child_gateway(),
        Ok("sink") => return child_sink(),
        _ => {}
    }
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let all = options.what == "all";
    if all || options.what == "rps" {
        runtime.block_on(rps(&options));
    }
    if all || options.what == "latency" {
        runtime.block_on(latency(&options));
    }
    if all || options.what == "tunnel" {
        runtime.block_on(tunnel(&options));
    }
    if all || options.what == "idle" {
        runtime.block_on(idle(&options));
    }
}

/// A gateway in this process over one upstream, without client auth.
async fn in_process_gateway(upstream: &str, max_concurrency: u32) -> SocketAddr {
    let storage = MemoryStorage::new();
    let pool = storage
        .save_pool(&ProxyPool::new("bench").unwrap())
        .await
        .unwrap();
    let proxy = Proxy::from_url(pool.id, upstream)
        .unwrap()
        .max_concurrency(max_concurrency)
        .build()
        .unwrap();
    storage.save_proxy(&proxy).await.unwrap();
    let gateway = Gateway::new(
        Arc::new(ProxyManager::new(storage)),
        Arc::new(TokioDialer::new()),
        KeyRing::default(),
        GatewayConfig {
            no_auth: true,
            default_pool: Some("bench".to_owned()),
            max_connections: 20_000,
            ..GatewayConfig::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(pharox_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    addr
}

/// Sends absolute-form GETs for `url` to `proxy` from `concurrency`
/// clients for `seconds`; each client keeps its connection while the
/// proxy does. Returns requests per second.
async fn load(proxy: SocketAddr, url: &str, concurrency: usize, seconds: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let done = Arc::clone(&done);
        let stop = Arc::clone(&stop);
        let url = url.to_owned();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let stream = TcpStream::connect(proxy).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                while !stop.load(Ordering::Relaxed) && sender.ready().await.is_ok() {
                    let request = Request::get(url.as_str())
                        .header("host", "127.0.0.1")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let Ok(response) = sender.send_request(request).await else {
                        break;
                    };
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let requests = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for client in clients {
        let _ = client.await;
    }
    requests as f64 / elapsed
}

async fn rps(options: &Options) {
    let target = TargetServer::start().await.unwrap();
    let upstream = HttpProxy::start().await.unwrap();
    let gateway = in_process_gateway(&format!("http://{}", upstream.addr()), 100_000).await;
    let url = target.url("/ok");
    println!(
        "rps: {} clients, {} s per round",
        options.concurrency, options.seconds
    );
    let mut ratios = Vec::new();
    for round in 1..=options.rounds {
        let direct = load(upstream.addr(), &url, options.concurrency, options.seconds).await;
        let through = load(gateway, &url, options.concurrency, options.seconds).await;
        let ratio = through / direct;
        ratios.push(ratio);
        println!("  round {round}: direct {direct:.0}/s, gateway {through:.0}/s, ratio {ratio:.2}");
    }
    println!(
        "rps ratio, median of rounds: {:.2} (target >= 0.5)",
        median(&mut ratios)
    );
}

/// One client, one request at a time: per-request times.
async fn sequential(proxy: SocketAddr, url: &str, requests: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(requests);
    let mut connection = None;
    for _ in 0..requests {
        let started = Instant::now();
        if connection.is_none() {
            let stream = TcpStream::connect(proxy).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(driver);
            connection = Some(sender);
        }
        let sender = connection.as_mut().unwrap();
        let request = Request::get(url)
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let close = response
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        response.into_body().collect().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if close || sender.ready().await.is_err() {
            connection = None;
        }
    }
    times
}

async fn latency(options: &Options) {
    let target = TargetServer::start().await.unwrap();
    let upstream = HttpProxy::start().await.unwrap();
    let gateway = in_process_gateway(&format!("http://{}", upstream.addr()), 100_000).await;
    let url = target.url("/ok");
    println!("latency: one client, 2,000 requests per round");
    let mut added = Vec::new();
    for round in 1..=options.rounds {
        let mut direct = sequential(upstream.addr(), &url, 2_000).await;
        let mut through = sequential(gateway, &url, 2_000).await;
        let (d, g) = (median(&mut direct), median(&mut through));
        added.push(g - d);
        println!(
            "  round {round}: median direct {d:.3} ms, gateway {g:.3} ms, added {:.3} ms",
            g - d
        );
    }
    println!(
        "added median latency, median of rounds: {:.3} ms (target < 0.3)",
        median(&mut added)
    );
}

/// A target that sends [`BLOB`] bytes to each connection, then closes.
async fn blob_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let chunk = vec![0x5a_u8; 64 * 1024];
        while let Ok((mut stream, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < BLOB {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Opens a `CONNECT` tunnel to `target` through `proxy` and reads the
/// whole blob; MB/s.
async fn download(proxy: SocketAddr, target: SocketAddr) -> f64 {
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut buf = vec![0_u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got >= BLOB);
    got as f64 / 1e6 / started.elapsed().as_secs_f64()
}

async fn tunnel(options: &Options) {
    let target = blob_target().await;
    let upstream = HttpProxy::start().await.unwrap();
    let gateway = in_process_gateway(&format!("http://{}", upstream.addr()), 100_000).await;
    println!("tunnel: 100 MB through CONNECT, 4 downloads each way per round, alternating");
    let mut ratios = Vec::new();
    for round in 1..=options.rounds {
        let (mut direct, mut through) = (0.0, 0.0);
        for _ in 0..4 {
            direct += download(upstream.addr(), target).await / 4.0;
            through += download(gateway, target).await / 4.0;
        }
        let ratio = through / direct;
        ratios.push(ratio);
        println!(
            "  round {round}: direct {direct:.0} MB/s, gateway {through:.0} MB/s, ratio {ratio:.2}"
        );
    }
    println!(
        "tunnel throughput ratio, median of rounds: {:.2} (target >= 0.8)",
        median(&mut ratios)
    );
}

/// A child process of this binary in `role`, and the port it printed.
fn spawn_child(role: &str, args: &[String]) -> (Child, u16) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().strip_prefix("port ").unwrap().parse().unwrap();
    (child, port)
}

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn idle(options: &Options) {
    // Three processes, so each stays within the descriptor limit and the
    // figure is the gateway's alone: this one holds the clients, a child
    // the upstream (it answers every CONNECT and then holds the tunnel,
    // like a proxy in front of an idle site), another child the gateway.
    let (mut sink, sink_port) = spawn_child("sink", &[]);
    let (mut gateway, gateway_port) =
        spawn_child("gateway", &[format!("http://127.0.0.1:{sink_port}")]);
    let gateway_addr: SocketAddr = format!("127.0.0.1:{gateway_port}").parse().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = resident_mib(gateway.id());
    let mut open = Vec::with_capacity(options.tunnels);
    let mut at_half = 0.0;
    for i in 0..options.tunnels {
        let mut stream = TcpStream::connect(gateway_addr).await.unwrap();
        stream
            .write_all(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0_u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "tunnel {i}");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "tunnel {i}: {}",
            String::from_utf8_lossy(&head)
        );
        open.push(stream);
        if i + 1 == options.tunnels / 2 {
            at_half = resident_mib(gateway.id());
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_mib(gateway.id());
    let per_tunnel_kib =
        (after - at_half) * 1024.0 / (options.tunnels - options.tunnels / 2) as f64;
    println!(
        "idle: gateway resident {before:.1} MiB with none open, {at_half:.1} MiB at {}, {after:.1} MiB at {} tunnels; {per_tunnel_kib:.1} KiB per tunnel; at 10,000: {:.1} MiB (target < 300)",
        options.tunnels / 2,
        options.tunnels,
        after + per_tunnel_kib * (10_000.0 - options.tunnels as f64) / 1024.0
    );
    drop(open);
    let _ = gateway.kill();
    let _ = sink.kill();
    let _ = gateway.wait();
    let _ = sink.wait();
}

/// The gateway child: a gateway over one upstream (the first argument).
fn child_gateway() {
    let upstream = std::env::args().nth(1).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let addr = in_process_gateway(&upstream, 100_000).await;
        println!("port {}", addr.port());
        std::future::pending::<()>().await;
    });
}

/// The upstream child: answers every `CONNECT` with 200 and holds the
/// connection until the other side closes it.
fn child_sink() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("port {}", listener.local_addr().unwrap().port());
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0_u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if stream
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut rest = [0_u8; 64];
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            });
        }
    });
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
