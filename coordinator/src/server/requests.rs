//! Bounds on requests while they are received: a message must arrive within
//! the read timeout, and all messages being received share one memory
//! budget. A client that declares a large message and sends all but its last
//! byte would otherwise hold that buffer for as long as it likes, on as many
//! streams and connections as it opens.
//!
//! Applied to every service as one tower layer ([`layer`]) that wraps each
//! request body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;

use crate::config::ConnectionLimits;

/// Bytes of request messages being received, over the whole server.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `n` bytes, or nothing when that would go over the budget.
    fn take(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
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
        request.map(|body| Body::new(Bounded::new(body, budget, read_timeout)))
    })
}

/// A request body that fails once it is slower than the read timeout, or
/// would take more than the budget has left.
struct Bounded {
    inner: Body,
    budget: Arc<Budget>,
    held: usize,
    deadline: Pin<Box<Sleep>>,
    read_timeout: Duration,
    ended: bool,
}

impl Bounded {
    fn new(inner: Body, budget: Arc<Budget>, read_timeout: Duration) -> Bounded {
        Bounded {
            inner,
            budget,
            held: 0,
            deadline: Box::pin(tokio::time::sleep(read_timeout)),
            read_timeout,
            ended: false,
        }
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

impl HttpBody for Bounded {
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
                    if !this.budget.take(data.len()) {
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

    #[test]
    fn the_budget_never_goes_over_and_comes_back() {
        let budget = Budget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "over the budget");
        assert!(budget.take(40));
        assert_eq!(budget.used(), 100);
        budget.give_back(100);
        assert_eq!(budget.used(), 0);
    }
}
