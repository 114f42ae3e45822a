//! Bounds on requests while they are received: a message must arrive within
//! the read timeout, and all messages being received share one memory
//! budget. A client that declares a large message and sends all but its last
//! byte would otherwise hold that buffer for as long as it likes, on as many
//! streams and connections as it opens.
//!
//! Applied to every service as one tower layer ([`layer`]) that wraps each
//! request body.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::config::ConnectionLimits;

/// Bytes of request messages being received: over the whole server, and
/// per peer address, so that one client cannot hold all of it.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    per_peer_max: usize,
}

impl Budget {
    /// `max` over all; each peer address at most a quarter of it, and never
    /// less than `max_message` (one whole message).
    pub fn new(max: usize, max_message: usize) -> Budget {
        let max = max.max(max_message);
        Budget {
            used: AtomicUsize::new(0),
            max,
            per_peer: Mutex::default(),
            per_peer_max: (max / 4).max(max_message),
        }
    }

    /// Takes `n` bytes for `peer`, or nothing when that would go over the
    /// server's budget or the peer's share of it.
    fn take(&self, peer: Option<IpAddr>, n: usize) -> bool {
        if let Some(peer) = peer {
            let mut peers = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
            let held = peers.entry(peer).or_insert(0);
            if held.saturating_add(n) > self.per_peer_max {
                if *held == 0 {
                    peers.remove(&peer);
                }
                return false;
            }
            *held += n;
        }
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max {
            self.used.fetch_sub(n, Ordering::AcqRel);
            self.give_back_peer(peer, n);
            return false;
        }
        true
    }

    fn give_back(&self, peer: Option<IpAddr>, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.give_back_peer(peer, n);
    }

    fn give_back_peer(&self, peer: Option<IpAddr>, n: usize) {
        let Some(peer) = peer else { return };
        let mut peers = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = peers.get_mut(&peer) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                peers.remove(&peer);
            }
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The peer's address of a request, plain or TLS.
fn peer_ip<B>(request: &http::Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
        .map(|addr| addr.ip())
}

/// The layer that bounds every request body by `limits`.
pub fn layer(
    limits: &ConnectionLimits,
    budget: Arc<Budget>,
) -> tower::util::MapRequestLayer<impl Fn(http::Request<Body>) -> http::Request<Body> + Clone + use<>>
{
    let read_timeout = limits.request_read_timeout;
    tower::util::MapRequestLayer::new(move |request: http::Request<Body>| {
        let budget = budget.clone();
        let peer = peer_ip(&request);
        request.map(|body| Body::new(Bounded::new(body, budget, peer, read_timeout)))
    })
}

/// A request body that fails once it is slower than the read timeout, or
/// would take more than the budget has left.
struct Bounded<B = Body> {
    inner: B,
    budget: Arc<Budget>,
    peer: Option<IpAddr>,
    held: usize,
    deadline: Pin<Box<Sleep>>,
    read_timeout: Duration,
    ended: bool,
}

impl<B> Bounded<B> {
    fn new(inner: B, budget: Arc<Budget>, peer: Option<IpAddr>, read_timeout: Duration) -> Self {
        Bounded {
            inner,
            budget,
            peer,
            held: 0,
            deadline: Box::pin(tokio::time::sleep(read_timeout)),
            read_timeout,
            ended: false,
        }
    }
}

impl<B> Drop for Bounded<B> {
    fn drop(&mut self) {
        self.budget.give_back(self.peer, self.held);
    }
}

impl<B> HttpBody for Bounded<B>
where
    B: HttpBody<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !this.budget.take(this.peer, data.len()) {
                        crate::metrics::request_refused("memory");
                        return Poll::Ready(Some(Err(Status::resource_exhausted(
                            "the server is receiving too many request bytes at once \
                             (--max-request-memory); retry later",
                        ))));
                    }
                    this.held += data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    crate::metrics::request_refused("read_timeout");
                    return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                        "the request was not received within {:?} (--request-read-timeout)",
                        this.read_timeout
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn the_budget_is_shared_and_one_peer_gets_a_quarter() {
        let budget = Budget::new(400, 50);
        assert!(budget.take(ip(1), 100));
        assert!(!budget.take(ip(1), 1), "peer 1 holds its quarter");
        assert!(budget.take(ip(2), 100) && budget.take(ip(3), 100) && budget.take(ip(4), 100));
        assert!(!budget.take(ip(5), 1), "the whole budget is held");
        budget.give_back(ip(1), 100);
        assert!(budget.take(ip(5), 100), "given back, taken again");
        assert_eq!(budget.used(), 400);
        for peer in 2..=5 {
            budget.give_back(ip(peer), 100);
        }
        assert_eq!(budget.used(), 0);
        assert!(
            budget
                .per_peer
                .lock()
                .map(|p| p.is_empty())
                .unwrap_or(false)
        );
    }

    /// A body that yields `chunks`, then stays pending forever.
    struct Trickle(Vec<Bytes>);

    impl HttpBody for Trickle {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            match self.0.pop() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }
    }

    async fn next(body: &mut Bounded<Trickle>) -> Option<Result<Frame<Bytes>, Status>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn a_slow_body_times_out_and_gives_its_bytes_back() {
        let budget = Arc::new(Budget::new(1000, 100));
        let chunks = vec![Bytes::from(vec![0u8; 60]), Bytes::from(vec![0u8; 40])];
        let timeout = Duration::from_millis(50);
        let mut body = Bounded::new(Trickle(chunks), budget.clone(), ip(1), timeout);
        assert!(matches!(next(&mut body).await, Some(Ok(_))));
        assert!(matches!(next(&mut body).await, Some(Ok(_))));
        assert_eq!(budget.used(), 100);
        // Nothing more arrives: once the read timeout passes, an error.
        let stalled = next(&mut body).await;
        assert!(
            matches!(&stalled, Some(Err(s)) if s.code() == tonic::Code::DeadlineExceeded),
            "{stalled:?}"
        );
        drop(body);
        assert_eq!(budget.used(), 0, "released when the request ends");
    }

    #[tokio::test]
    async fn a_body_over_the_peer_share_is_refused() {
        let budget = Arc::new(Budget::new(400, 50));
        let chunks = vec![Bytes::from(vec![0u8; 60]), Bytes::from(vec![0u8; 60])];
        let mut body = Bounded::new(
            Trickle(chunks),
            budget.clone(),
            ip(1),
            Duration::from_secs(10),
        );
        assert!(matches!(next(&mut body).await, Some(Ok(_))));
        let refused = next(&mut body).await;
        assert!(
            matches!(&refused, Some(Err(s)) if s.code() == tonic::Code::ResourceExhausted),
            "{refused:?}"
        );
        drop(body);
        assert_eq!(budget.used(), 0);
    }
}
