//! The two listeners: the report listener (mutual TLS, one task per connection so handshakes run
//! in parallel) and the plain-HTTP operations listener; both stop gracefully on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

use crate::reports::PeerIdentity;
use crate::tls::{IdentityError, appliance_identity};
use crate::{AppState, ops_router, router};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for accepted requests to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs both listeners until `shutdown` completes, then lets accepted requests finish.
pub async fn serve(
    reports: TcpListener,
    ops: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let reports = serve_reports(reports, tls, state.clone(), stopped(rx.clone()));
    let ops = serve_ops(ops, state, stopped(rx.clone()));
    // An operator's browser holding a connection open must not keep the ingest from stopping.
    let ops = async move {
        tokio::select! {
            r = ops => r,
            () = async { stopped(rx).await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
                tracing::warn!("operations listener: connections still open after {DRAIN_TIMEOUT:?}; closing them");
                Ok(())
            }
        }
    };
    let (a, b) = tokio::join!(reports, ops);
    a.and(b)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means "stop".
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Connections the kernel queues for the report listener beyond `max_connections` (capped by
/// `net.core.somaxconn`, 4,096 on current kernels). A fleet calling at once waits here at no
/// cost to us; past it, the kernel drops connection attempts and clients retry them.
pub const REPORT_BACKLOG: u32 = 4096;

/// A listener for reports on `addr` with a [`REPORT_BACKLOG`]-deep accept queue (tokio's `bind`
/// asks for 1,024).
pub fn listen_reports(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(REPORT_BACKLOG)
}

/// Serves `POST /v1/reports` over mutual TLS on `listener`.
pub async fn serve_reports(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(state.clone());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: at capacity, new connections wait in the kernel's bounded
        // backlog instead of costing us a task, a TLS session and memory each.
        let permit = tokio::select! {
            permit = state.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let metrics = state.metrics.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    metrics.handshake_failures.inc();
                    // Debug, not info: scanners and misconfigured clients would flood the log;
                    // the counter is what operators watch.
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity = match stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                Some(cert) => appliance_identity(cert),
                None => Err(IdentityError::NoCertificate),
            };
            let serial = identity
                .as_ref()
                .map(|i| i.serial.to_string())
                .unwrap_or_default();
            let span = tracing::info_span!("conn", %peer, serial);
            let peer_identity = PeerIdentity(identity);
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer_identity.clone());
                app.clone().oneshot(req)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).instrument(span).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain(graceful).await;
    Ok(())
}

async fn drain(graceful: GracefulShutdown) {
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("report listener drained"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("report listener: connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
}

/// An operations connection is closed after this long, whatever it does: browsers and
/// Prometheus reconnect, and a client trickling a request or idling cannot hold a slot.
const OPS_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves the operations endpoints (`/healthz`, `/metrics`, the dashboard) over plain HTTP,
/// at most `ops_max_connections` at once (more wait in the kernel's backlog), each with a
/// header deadline and a bounded lifetime.
pub async fn serve_ops(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app: Router = ops_router(state.clone());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = state.ops_connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "operations listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                app.clone().oneshot(req)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(OPS_CONNECTION_LIFETIME, watcher.watch(conn)).await {
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "operations connection ended with an error")
                }
                Err(_) => tracing::debug!(%peer, "operations connection closed at its lifetime"),
                Ok(Ok(())) => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {}
    }
    Ok(())
}
