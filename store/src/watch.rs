//! The stream a watch returns. Each backend feeds it from a task of its own; dropping the
//! stream ends that task (and, for etcd, cancels the watch).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::error::Result;
use crate::types::WatchBatch;

/// Batches of events in revision order. An error ends the stream: `Compacted` means the
/// revision to resume from is gone, and the caller lists again.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchBatch>>,
}

impl WatchStream {
    /// A stream and the sender that feeds it; `depth` batches may wait unread.
    pub fn channel(depth: usize) -> (mpsc::Sender<Result<WatchBatch>>, WatchStream) {
        let (tx, rx) = mpsc::channel(depth);
        (tx, WatchStream { rx })
    }

    /// The next batch; None when the watch ended.
    pub async fn next(&mut self) -> Option<Result<WatchBatch>> {
        self.rx.recv().await
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
