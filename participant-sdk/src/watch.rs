//! Following a transaction as it happens: [`Client::watch`] streams its
//! changes ([`TxnEvent`]) until its final state, and picks the stream up
//! again from the last change seen when the connection breaks (the
//! coordinator restarting, a node of a cluster going away), so the caller
//! gets every change once, in order.

use std::time::Duration;

use arbiter_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::client::{Client, ClientError};

pub use pb::{BranchVote, EventKind, TxnEvent};

/// The changes of one transaction, each once and in order; ends after the
/// final one (`event.r#final`), or with an error the watch cannot get past.
pub type Watch = ReceiverStream<Result<TxnEvent, ClientError>>;

/// How long a watch keeps trying to reconnect before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

impl Client {
    /// Streams every change of `txn_id` from its first; see [`Client::watch_from`].
    pub async fn watch(&self, txn_id: &str) -> Result<Watch, ClientError> {
        self.watch_from(txn_id, 1).await
    }

    /// Streams the changes of `txn_id` numbered `from_seq` and later, as
    /// they become durable, until its final state. A transaction that has
    /// already finished (within the coordinator's retention) is replayed.
    /// Unknown ids fail here with [`ClientError::NotFound`]. When the stream
    /// breaks, the watch reconnects for up to a minute and resumes after the
    /// last change it delivered.
    pub async fn watch_from(&self, txn_id: &str, from_seq: u64) -> Result<Watch, ClientError> {
        let first = self.open(txn_id, from_seq).await?;
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        let txn_id = txn_id.to_string();
        tokio::spawn(async move { client.follow(txn_id, from_seq, first, tx).await });
        Ok(ReceiverStream::new(rx))
    }

    async fn open(
        &self,
        txn_id: &str,
        from_seq: u64,
    ) -> Result<tonic::Streaming<TxnEvent>, ClientError> {
        let request = pb::WatchTransactionRequest {
            txn_id: txn_id.to_string(),
            from_seq,
        };
        Ok(self.raw().watch_transaction(request).await?.into_inner())
    }

    async fn follow(
        self,
        txn_id: String,
        mut next: u64,
        first: tonic::Streaming<TxnEvent>,
        tx: mpsc::Sender<Result<TxnEvent, ClientError>>,
    ) {
        let mut stream = Some(first);
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut delay = Duration::from_millis(50);
        loop {
            let current = match stream.take() {
                Some(s) => Ok(s),
                None => self.open(&txn_id, next).await,
            };
            let error = match current {
                Ok(mut s) => loop {
                    match s.message().await {
                        Ok(Some(event)) => {
                            // Never deliver a change twice (a replay overlapping what was seen).
                            if event.seq < next && event.seq != 0 {
                                continue;
                            }
                            failing_since = None;
                            delay = Duration::from_millis(50);
                            next = event.seq.saturating_add(1);
                            let last = event.r#final;
                            if tx.send(Ok(event)).await.is_err() || last {
                                return;
                            }
                        }
                        // The coordinator ended the stream without a final
                        // change (it is stopping): pick it up again.
                        Ok(None) => break ClientError::Unavailable("stream ended early".into()),
                        Err(status) => break ClientError::from(status),
                    }
                },
                Err(e) => e,
            };
            let retryable = match &error {
                ClientError::Unavailable(_) | ClientError::Connect(_) => true,
                ClientError::Other(s) => matches!(
                    s.code(),
                    Code::Unknown | Code::Internal | Code::ResourceExhausted
                ),
                _ => false,
            };
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            if !retryable || since.elapsed() > PATIENCE {
                let _ = tx.send(Err(error)).await;
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
