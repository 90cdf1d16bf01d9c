//! The benchmark's upstream (`benches/run`): a minimal hyper HTTP/1.1 server that answers every request with
//! 200 and a small fixed body. Hit directly it is "the limit" of the machine; every proxy is measured in
//! front of it.
//!
//! Usage: `bench_upstream <port> [worker threads]` (default: one per CPU). Prints `READY <addr>` once
//! listening; runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = b"hello from the upstream\n";

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // `benches/run` checks what a proxy hands on: the request's header names, one a line.
    let body = if req.uri().path() == "/app/headers" {
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        Bytes::from(names.join("\n") + "\n")
    } else {
        Bytes::from_static(BODY)
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(r)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: bench_upstream <port> [threads]");
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.next().and_then(|t| t.parse().ok()) {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().expect("a tokio runtime");
    rt.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(addr).await.expect("bind");
        println!("READY {}", listener.local_addr().expect("bound"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
}
