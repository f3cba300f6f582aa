//! The accept loop: plain TCP or TLS (rustls), a deadline for each request's headers, the
//! client's address for per-address rate limits, and graceful shutdown.
//!
//! It exists instead of `axum::serve` because that one offers neither TLS nor a header-read
//! timeout: a client that opens connections and sends its headers a byte at a time would
//! otherwise hold them forever (slowloris). It also tells HTTP/1 clients when a connection
//! will close because a request's body was refused unread.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Largest request head (request line and headers) accepted; beyond, the connection is
/// answered 431 and closed.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Loads a certificate chain and key (PEM) into a TLS acceptor.
pub fn tls_acceptor(cert: &str, key: &str) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("TLS certificate", &e))?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Answers one request. An HTTP/1 request whose body the application left unread (refused
/// for its size, its content type or its key before it was read) gets `Connection: close` on
/// its answer: hyper cannot read on past an unread body, so it closes the connection after
/// the answer, and without the header a keep-alive client would put the connection back in
/// its pool and lose its next request on it.
async fn serve_request(
    app: Router,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<axum::response::Response, std::convert::Infallible> {
    use hyper::body::Body as _;
    if req.body().is_end_stream() || req.version() >= hyper::Version::HTTP_2 {
        return app.oneshot(req.map(axum::body::Body::new)).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        axum::body::Body::new(ReadToEnd {
            inner,
            read: read.clone(),
        })
    });
    let mut res = app.oneshot(req).await?;
    if !read.load(Ordering::Relaxed) {
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    Ok(res)
}

/// A request body that notes when it has been read to its end.
struct ReadToEnd {
    inner: hyper::body::Incoming,
    read: Arc<AtomicBool>,
}

impl hyper::body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` until `shutdown` resolves, then lets the connections finish their requests
/// (streams end by themselves on the same signal).
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers and stream frames are small: without TCP_NODELAY, Nagle's algorithm holds
        // them back until the peer's delayed ACK (up to 40 ms).
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                serve_request(app.clone(), req)
            });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            // Request line and headers must fit in this (bodies have their own limit).
            .max_buf_size(MAX_HEADER_BYTES)
            .max_headers(100);
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // The handshake, too, must not take forever.
                    let stream =
                        match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    // Connections finish what they are doing; give up after a while.
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 30 s of shutdown");
    }
    Ok(())
}
