//! Request bodies on their way upstream, and what is kept of them for the one retry
//! after a 401.
//!
//! A body that says it is at most `MAX_KEPT` long is read first and sent from memory,
//! so it can always be sent again. Any other body (larger, or of unknown length) is
//! streamed as it arrives, never held whole: while it streams, its first `MAX_KEPT`
//! bytes are kept, and if it turns out to end within that, it can be sent again too.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::watch;

use super::client::{BoxError, Outgoing};

/// The most of a request body kept for a retry.
pub const MAX_KEPT: usize = 64 * 1024;

/// A request body ready to go, with what a retry would need.
pub struct Prepared {
    /// The body of the first attempt.
    pub body: Outgoing,
    /// What a retry could send.
    pub replay: Replay,
    /// Turns `true` (or closes) once the body has been sent whole.
    pub sent: watch::Receiver<bool>,
}

/// The body a retry could send.
pub enum Replay {
    /// Held whole from the start.
    Held(Bytes),
    /// Kept while streaming; usable only if the stream ended within `MAX_KEPT`.
    Streamed(Arc<Mutex<Kept>>),
}

/// The first bytes of a streamed body.
#[derive(Default)]
pub struct Kept {
    chunks: Vec<Bytes>,
    size: usize,
    /// The stream ended, and everything it carried is in `chunks`.
    whole: bool,
    /// More than `MAX_KEPT`, trailers, or an error: a retry cannot repeat it.
    spoiled: bool,
}

impl Replay {
    /// The whole body again, if it was kept.
    pub fn again(&self) -> Option<Outgoing> {
        let bytes = match self {
            Replay::Held(bytes) => bytes.clone(),
            Replay::Streamed(kept) => {
                let kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if !kept.whole || kept.spoiled {
                    return None;
                }
                let mut all = BytesMut::with_capacity(kept.size);
                kept.chunks.iter().for_each(|c| all.extend_from_slice(c));
                all.freeze()
            }
        };
        Some(held(bytes))
    }
}

/// Prepares `body`: read at once if small, else streamed with its head kept. An error
/// means a small body could not be read from the client.
pub async fn prepare(body: Incoming) -> Result<Prepared, BoxError> {
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_KEPT as u64);
    if small || body.is_end_stream() {
        let bytes = Limited::new(body, MAX_KEPT).collect().await?.to_bytes();
        let (_, sent) = watch::channel(true);
        return Ok(Prepared {
            body: held(bytes.clone()),
            replay: Replay::Held(bytes),
            sent,
        });
    }
    let kept = Arc::new(Mutex::new(Kept::default()));
    let (done, sent) = watch::channel(false);
    let tee = Tee {
        inner: body,
        kept: kept.clone(),
        done,
    };
    Ok(Prepared {
        body: tee.boxed_unsync(),
        replay: Replay::Streamed(kept),
        sent,
    })
}

fn held(bytes: Bytes) -> Outgoing {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Streams a body through, keeping its first `MAX_KEPT` bytes.
struct Tee {
    inner: Incoming,
    kept: Arc<Mutex<Kept>>,
    done: watch::Sender<bool>,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match &polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) if !kept.spoiled && kept.size + data.len() <= MAX_KEPT => {
                    kept.size += data.len();
                    kept.chunks.push(data.clone());
                }
                _ => {
                    kept.spoiled = true;
                    kept.chunks = Vec::new();
                }
            },
            Some(Err(_)) => kept.spoiled = true,
            None => {
                kept.whole = true;
                drop(kept);
                self.done.send_replace(true);
            }
        }
        Poll::Ready(polled.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
