//! Accepting client connections within bounds: at most `max_connections`
//! held at once and `max_connections_per_ip` from one address (more are
//! closed on accept), and a connection that sends
//! nothing for the handshake timeout (new) or the idle timeout (established)
//! is closed. Without these, idle sockets that never send a request use up
//! the process's descriptors and the log fails for want of one.
//!
//! Also the process's open-file limit: raised to its hard limit at start, and
//! the connection cap lowered to what the limit leaves room for.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::ConnectionLimits;

/// Descriptors kept for everything but client connections: the log's files,
/// participant channels ([`participant_channels`]), metrics, and slack.
const RESERVED_FDS: u64 = 64;

/// Bytes a client sends before the handshake deadline gives way to the idle
/// one: the HTTP/2 connection preface is 24 bytes (a TLS ClientHello is
/// longer), so one byte a minute cannot hold a connection open.
const HANDSHAKE_BYTES: u64 = 24;

/// One accepted client connection, holding its place under the caps.
pub struct Conn {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
    _peer: PeerPlace,
    deadline: Pin<Box<Sleep>>,
    /// When the handshake window opened, then when bytes last arrived.
    last_read: Instant,
    handshake: Duration,
    idle: Duration,
    received: u64,
}

impl Conn {
    fn spoken(&self) -> bool {
        self.received >= HANDSHAKE_BYTES
    }

    /// When the connection is closed if nothing more arrives.
    fn due(&self) -> Instant {
        let window = if self.spoken() {
            self.idle
        } else {
            self.handshake
        };
        self.last_read + window
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        crate::metrics::connection_closed();
    }
}

/// Connections held per peer address.
type PerPeer = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in its peer's count, given back on drop.
struct PeerPlace {
    peers: PerPeer,
    ip: IpAddr,
}

impl PeerPlace {
    /// A place for `ip`, unless it already holds `max`.
    fn take(peers: &PerPeer, ip: IpAddr, max: usize) -> Option<PeerPlace> {
        let mut held = peers.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerPlace {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut held = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = (buf.filled().len() - before) as u64;
                if read > 0 {
                    let was_spoken = this.spoken();
                    this.received = this.received.saturating_add(read);
                    // The handshake window runs from the accept, not from
                    // each byte; after it, every byte restarts the idle one.
                    if was_spoken || this.spoken() {
                        this.last_read = Instant::now();
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let due = this.due();
                if this.deadline.deadline() != due {
                    this.deadline.as_mut().reset(due);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        crate::metrics::connection_timed_out();
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            if this.spoken() {
                                "connection idle past --idle-timeout"
                            } else {
                                "nothing sent within --handshake-timeout"
                            },
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The connections accepted on `listener`, within `limits`. Accepting stops
/// when the returned stream is dropped.
pub fn accept(
    listener: TcpListener,
    limits: &ConnectionLimits,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_peer_max = limits
        .max_connections_per_ip
        .clamp(1, limits.max_connections.max(1));
    let peers = PerPeer::default();
    let (handshake, idle) = (limits.handshake_timeout, limits.idle_timeout);
    tokio::spawn(async move {
        let mut refused_since_warning = 0u64;
        let mut last_warning: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or a similar passing failure):
                    // wait instead of spinning on the same error.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let places =
                places.clone().try_acquire_owned().ok().and_then(|place| {
                    Some((place, PeerPlace::take(&peers, peer.ip(), per_peer_max)?))
                });
            let Some((place, peer_place)) = places else {
                drop(stream);
                crate::metrics::connection_refused();
                refused_since_warning += 1;
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        refused = refused_since_warning,
                        "connection limit (--max-connections or --max-connections-per-ip) reached; \
                         closing new connections"
                    );
                    refused_since_warning = 0;
                    last_warning = Some(Instant::now());
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let now = Instant::now();
            let conn = Conn {
                stream,
                _place: place,
                _peer: peer_place,
                deadline: Box::pin(tokio::time::sleep_until(now + handshake)),
                last_read: now,
                handshake,
                idle,
                received: 0,
            };
            crate::metrics::connection_opened();
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Raises the soft open-file limit to the hard limit; returns the soft
/// limit in force afterwards (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    // rlim_t is u64 on Linux, not everywhere.
    #[allow(clippy::unnecessary_cast)]
    fd_limit::raise().map(|n| n as u64)
}

/// Participant channels kept open at once, from the open-file limit.
pub fn participant_channels(fd_limit: Option<u64>) -> usize {
    fd_limit.map_or(1024, |limit| (limit / 4).clamp(16, 1024) as usize)
}

/// The connection cap the open-file limit leaves room for: the configured
/// one, or less (with a warning) when descriptors would run out first.
pub fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let room = limit
        .saturating_sub(RESERVED_FDS)
        .saturating_sub(participant_channels(fd_limit) as u64)
        .max(8);
    if (configured as u64) <= room {
        return configured;
    }
    tracing::warn!(
        configured,
        allowed = room,
        fd_limit = limit,
        "--max-connections is more than the open-file limit leaves room for; lowered"
    );
    room as usize
}

#[allow(unsafe_code)]
mod fd_limit {
    //! `getrlimit`/`setrlimit` of `RLIMIT_NOFILE`: the only unsafe code in
    //! the coordinator, two libc calls on a local struct.

    pub fn raise() -> Option<libc::rlim_t> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own; no other memory.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        // An unlimited hard limit is not a valid soft one for files.
        let target = limit.rlim_max.min(1 << 20);
        if limit.rlim_cur < target {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit only reads the struct we pass.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        Some(limit.rlim_cur)
    }
}
