//! The floor under pkce-proxy's figures: a reverse proxy made of hyper and tokio alone, with
//! nothing of pkce-proxy's in it. `benches/load/run.sh` runs it as the target `hyper-floor`,
//! next to pkce-proxy and nginx, so the table shows how much of the gap to nginx is the HTTP
//! stack pkce-proxy is built on and how much is pkce-proxy's own work.
//!
//! It does less than any real proxy, so that its cost is a lower bound:
//! - the same runtime layout as pkce-proxy: one current-thread tokio runtime per CPU, each with
//!   its own `SO_REUSEPORT` listener;
//! - HTTP/1.1 only (hyper's `http1` server, no protocol detection), no timers, no limits;
//! - one upstream connection per client connection, opened at its first request and kept;
//! - requests and responses forwarded as they are: no header added, removed or checked, and no
//!   PKCE.
//!
//! Not a proxy to deploy: it trusts everything it is sent.
//!
//! ```sh
//! cargo run --release --example hyper_floor -- --listen 127.0.0.1:18185 --upstream 127.0.0.1:18181
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The upstream's address (plain HTTP/1.1).
    #[arg(long)]
    upstream: SocketAddr,
    /// Threads, each with its own runtime and listener; 0 means one per CPU.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(serve(args.listen, args.upstream))
            })
        })
        .collect();
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => return Err(std::io::Error::other("a worker panicked")),
        }
    }
    Ok(())
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener: TcpListener = socket.listen(4096)?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, upstream));
    }
}

/// Serves one client connection, forwarding its requests over one upstream connection.
async fn connection(stream: TcpStream, upstream: SocketAddr) {
    // HTTP/1 serves one request at a time, so the sender is taken out for each request and
    // put back once the response head is in: the lock is never contended.
    let sender: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
    let service = service_fn(move |req: Request<Incoming>| {
        let sender = Arc::clone(&sender);
        async move {
            let response = match forward(&sender, upstream, req).await {
                Ok(response) => response.map(BodyExt::boxed_unsync),
                Err(_) => bad_gateway(),
            };
            Ok::<_, hyper::Error>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn forward(
    slot: &Mutex<Option<SendRequest<Incoming>>>,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let kept = slot.lock().map_err(|_| "poisoned")?.take();
    let mut sender = match kept {
        Some(sender) if !sender.is_closed() => sender,
        _ => {
            let stream = TcpStream::connect(upstream).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    sender.ready().await?;
    let response = sender.send_request(req).await?;
    *slot.lock().map_err(|_| "poisoned")? = Some(sender);
    Ok(response)
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
