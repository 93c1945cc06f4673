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
use phonehome_schema::enrol::ENROL_ALPN;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio_rustls::LazyConfigAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

use crate::reports::PeerIdentity;
use crate::tls::{IdentityError, ServerTls, appliance_identity};
use crate::{AppState, enrol_router, ops_router, router};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is dropped (report listener; the
/// operations listener's is [`OpsTimeouts::header`]).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for accepted requests to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the report listener's certificate files are looked at for a change.
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Runs both listeners until `shutdown` completes, then lets accepted requests finish. Also
/// runs, supervised, what the report listener relies on: the revocation list's reloads and the
/// reload of its certificates on SIGHUP or a change on disk.
pub async fn serve(
    reports: TcpListener,
    ops: TcpListener,
    tls: ServerTls,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The list is loaded before the first connection is accepted: until then every
    // certificate would be refused with 503.
    if let Err(e) = state.revocations.reload(&state.storage).await {
        tracing::warn!(error = %e, "cannot load the revocation list yet; reports wait for it (503)");
    }
    let revocations = {
        let (list, storage) = (state.revocations.clone(), state.storage.clone());
        state
            .tasks
            .spawn("revocations", move || list.clone().watch(storage.clone()))
    };
    let reloads = {
        let (tls, metrics) = (tls.clone(), state.metrics.clone());
        state.tasks.spawn("tls_reload", move || {
            watch_tls(tls.clone(), metrics.clone())
        })
    };
    let _stop_background = AbortOnDrop(vec![revocations, reloads]);
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

/// Aborts the listener's background tasks when `serve` returns, however it returns.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Reloads the report listener's certificate, key and trusted CAs on SIGHUP and whenever the
/// files change; a reload that fails keeps the running configuration and says why.
async fn watch_tls(tls: ServerTls, metrics: Arc<crate::metrics::Metrics>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(TLS_WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    loop {
        let why = tokio::select! {
            _ = tick.tick() => {
                if !tls.changed_on_disk() {
                    continue;
                }
                "the files changed"
            }
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
        };
        match tls.reload() {
            Ok(()) => {
                metrics
                    .identity
                    .tls_reloads
                    .with_label_values(&["ok"])
                    .inc();
                failing = None;
                tracing::info!(reason = why, cert = %tls.files().server_cert.display(), "report listener certificates reloaded; new connections use them");
            }
            Err(e) => {
                let msg = e.to_string();
                // A file being copied in place fails every tick until it is whole: once is
                // enough in the log, the counter counts each.
                metrics
                    .identity
                    .tls_reloads
                    .with_label_values(&["error"])
                    .inc();
                if failing.as_deref() != Some(msg.as_str()) {
                    tracing::error!(reason = why, error = %msg, "cannot reload the report listener's certificates; still using the previous ones");
                }
                failing = Some(msg);
            }
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means "stop".
    let _ = rx.wait_for(|stop| *stop).await;
}

/// A connection slot of `slots`, or `None` once `shutdown` completes (or the slots are
/// closed). Finding none free is counted in `at_capacity`: the listener then accepts nothing
/// until a connection ends, and new ones wait in the kernel's backlog, costing no descriptor.
async fn take_slot(
    slots: &Arc<Semaphore>,
    at_capacity: &prometheus::IntCounter,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<OwnedSemaphorePermit> {
    match slots.clone().try_acquire_owned() {
        Ok(permit) => return Some(permit),
        Err(TryAcquireError::Closed) => return None,
        Err(TryAcquireError::NoPermits) => at_capacity.inc(),
    }
    tokio::select! {
        permit = slots.clone().acquire_owned() => permit.ok(),
        () = shutdown => None,
    }
}

/// One open connection in `phonehome_connections_open`, for as long as it lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
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

/// Serves the report API over mutual TLS on `listener`, and enrolment to connections that offer
/// [`ENROL_ALPN`] (and so may present no certificate).
pub async fn serve_reports(
    listener: TcpListener,
    tls: ServerTls,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = router(state.clone());
    serve_reports_with(listener, tls, state, app, shutdown).await
}

/// [`serve_reports`] with `app` in place of the report API: the same listener, connection
/// slots, TLS (with the client certificate's identity as a request extension) and HTTP. The
/// load generator measures the bare cost of a connection with an `app` that stores nothing.
pub async fn serve_reports_with(
    listener: TcpListener,
    tls: ServerTls,
    state: AppState,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let enrol_app = enrol_router(state.clone());
    let graceful = GracefulShutdown::new();
    let listeners = &state.metrics.listeners;
    let at_capacity = listeners.at_capacity.with_label_values(&["reports"]);
    let open = listeners.open.with_label_values(&["reports"]);
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: at capacity, new connections wait in the kernel's bounded
        // backlog instead of costing us a task, a TLS session and memory each.
        let Some(permit) = take_slot(&state.connections, &at_capacity, &mut shutdown).await else {
            break;
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
        let tls = tls.current();
        let (app, enrol_app) = (app.clone(), enrol_app.clone());
        let metrics = state.metrics.clone();
        let watcher = graceful.watcher();
        let open = OpenConnection::new(open.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            // The ClientHello says which configuration applies: a collector enrolling offers the
            // enrolment ALPN and has no certificate yet; everyone else must present one.
            let handshake = async {
                let start =
                    LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
                let enrolling = start
                    .client_hello()
                    .alpn()
                    .is_some_and(|mut protocols| protocols.any(|p| p == ENROL_ALPN));
                let config = if enrolling {
                    tls.enrol.clone()
                } else {
                    tls.main.clone()
                };
                start.into_stream(config).await.map(|s| (s, enrolling))
            };
            let (stream, enrolling) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await
            {
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
            let app = if enrolling { enrol_app } else { app };
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

/// The operations listener's deadlines (issue 13, finding 4: half-sent requests held
/// descriptors forever). Its routes read no request body, so these bound everything a client
/// can hold: the headers, the wait between keep-alive requests, and the connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpsTimeouts {
    /// Request headers must be complete this long after the connection (or the previous
    /// response) is ready for them: hyper's header timer runs while a keep-alive connection
    /// idles, so this is the idle limit too (`ops_header_timeout_secs`).
    pub header: Duration,
    /// A connection is closed after this long, whatever it does: browsers and Prometheus
    /// reconnect, and a client trickling a request cannot hold a slot
    /// (`ops_connection_lifetime_secs`).
    pub lifetime: Duration,
}

impl Default for OpsTimeouts {
    fn default() -> Self {
        OpsTimeouts {
            header: Duration::from_secs(crate::config::DEFAULT_OPS_HEADER_TIMEOUT_SECS),
            lifetime: Duration::from_secs(crate::config::DEFAULT_OPS_CONNECTION_LIFETIME_SECS),
        }
    }
}

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
    let timeouts = state.ops_timeouts;
    let listeners = &state.metrics.listeners;
    let at_capacity = listeners.at_capacity.with_label_values(&["ops"]);
    let open = listeners.open.with_label_values(&["ops"]);
    tokio::pin!(shutdown);
    loop {
        let Some(permit) = take_slot(&state.ops_connections, &at_capacity, &mut shutdown).await
        else {
            break;
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
        let closed = listeners.ops_closed.clone();
        let open = OpenConnection::new(open.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                app.clone().oneshot(req)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.header)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(timeouts.lifetime, watcher.watch(conn)).await {
                Ok(Err(e)) if e.is_timeout() => {
                    closed.with_label_values(&["header_timeout"]).inc();
                    tracing::debug!(%peer, "operations connection sent no request in time");
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "operations connection ended with an error")
                }
                Err(_) => {
                    closed.with_label_values(&["lifetime"]).inc();
                    tracing::debug!(%peer, "operations connection closed at its lifetime");
                }
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
