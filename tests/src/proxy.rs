//! A TCP proxy the tests own, with faults in the manner of Toxiproxy's toxics: latency, a slow
//! link, a connection cut after so many bytes of the request or of the response, and a black
//! hole. It forwards bytes and knows nothing of TLS or HTTP, so the collector's mutual TLS runs
//! through it end to end. This kernel has no `netem`; the faults are made here, on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the connections it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toxic {
    /// Forward as is.
    None,
    /// Hold every chunk this long, both ways.
    Latency(Duration),
    /// At most this many bytes a second, both ways.
    SlowLink { bytes_per_second: usize },
    /// Reset the connection once this many bytes of the request have gone upstream.
    CutRequestAfter(usize),
    /// Reset the connection once this many bytes of the response have come back.
    CutResponseAfter(usize),
    /// Accept, read, forward nothing, answer nothing.
    BlackHole,
}

/// A running proxy to `upstream`; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    toxic: Arc<Mutex<Toxic>>,
    /// Bytes carried (request, response) by each finished connection, in order.
    carried: Arc<Mutex<Vec<(usize, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let toxic = Arc::new(Mutex::new(Toxic::None));
        let carried = Arc::new(Mutex::new(Vec::new()));
        let (shared, log) = (toxic.clone(), carried.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let now = shared.lock().map(|t| *t).unwrap_or(Toxic::None);
                let log = log.clone();
                tokio::spawn(async move {
                    let totals = carry(client, upstream, now).await;
                    if let Ok(mut l) = log.lock() {
                        l.push(totals);
                    }
                });
            }
        });
        FaultProxy {
            addr,
            toxic,
            carried,
            task,
        }
    }

    /// Bytes (request, response) the last finished connection carried.
    pub fn last_exchange(&self) -> Option<(usize, usize)> {
        self.carried.lock().ok().and_then(|l| l.last().copied())
    }

    /// Applies `toxic` to connections accepted from now on.
    pub fn set(&self, toxic: Toxic) {
        if let Ok(mut t) = self.toxic.lock() {
            *t = toxic;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Carries one connection; returns the bytes it carried (request, response).
async fn carry(client: TcpStream, upstream: SocketAddr, toxic: Toxic) -> (usize, usize) {
    if toxic == Toxic::BlackHole {
        let mut client = client;
        let mut sink = [0u8; 4096];
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        return (0, 0);
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return (0, 0);
    };
    if matches!(
        toxic,
        Toxic::CutRequestAfter(_) | Toxic::CutResponseAfter(_)
    ) {
        // Closing then sends a reset, as a middlebox or a dying peer does, not a goodbye.
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
    }
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let cut_request = match toxic {
        Toxic::CutRequestAfter(n) => Some(n),
        _ => None,
    };
    let cut_response = match toxic {
        Toxic::CutResponseAfter(n) => Some(n),
        _ => None,
    };
    let up_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let down_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let up = pump(cr, sw, toxic, cut_request, up_count.clone());
    let down = pump(sr, cw, toxic, cut_response, down_count.clone());
    // A cut in either direction ends both: the connection is gone. A clean close ends the
    // request side first: the response still has to come back.
    tokio::pin!(down);
    tokio::select! {
        cut = up => {
            if !cut {
                down.await;
            }
        }
        _ = &mut down => {}
    }
    (
        up_count.load(std::sync::atomic::Ordering::Relaxed),
        down_count.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Copies `from` to `to` under `toxic`, counting into `count`; returns when either side ends
/// (false) or the cut is reached (true).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    toxic: Toxic,
    cut_after: Option<usize>,
    count: Arc<std::sync::atomic::AtomicUsize>,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    let mut passed = 0usize;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return false;
            }
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        if let Some(limit) = cut_after {
            let room = limit.saturating_sub(passed);
            if chunk.len() >= room {
                let _ = to.write_all(&chunk[..room]).await;
                count.fetch_add(room, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
        }
        match toxic {
            Toxic::Latency(d) => tokio::time::sleep(d).await,
            Toxic::SlowLink { bytes_per_second } => {
                let step = (bytes_per_second / 10).max(1);
                while chunk.len() > step {
                    if to.write_all(&chunk[..step]).await.is_err() {
                        return false;
                    }
                    chunk = &chunk[step..];
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ => {}
        }
        if to.write_all(chunk).await.is_err() {
            return false;
        }
        passed = passed.saturating_add(n);
        count.store(passed, std::sync::atomic::Ordering::Relaxed);
    }
}
