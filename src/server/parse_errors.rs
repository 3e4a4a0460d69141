//! JSON bodies for the answers hyper writes by itself.
//!
//! A request hyper cannot parse (a malformed request line or header, a head over the
//! size cap, a target too long) never reaches a handler: hyper answers it with a status
//! and an empty body, then closes the connection. Every other error leaves this server
//! as the contract's JSON, so this wrapper around a connection's stream rewrites exactly
//! those answers. hyper writes one only while no response is under way, in a fixed
//! shape (status line, `connection: close`, `content-length: 0`, `date`) that no
//! handler's answer has: each of theirs carries a content type or a body.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::{ApiError, Unparsable};

/// A connection's stream whose parse-error answers get a JSON body.
pub struct JsonParseErrors<T> {
    inner: T,
    /// The rewritten answer being written in place of hyper's.
    pending: Option<Rewrite>,
}

struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's answer, reported as written once ours is.
    replaces: usize,
}

impl<T> JsonParseErrors<T> {
    pub fn new(inner: T) -> Self {
        JsonParseErrors {
            inner,
            pending: None,
        }
    }
}

/// Our answer for hyper's `head`, if `head` is one of hyper's parse-error answers.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    // Every write of every answer passes here: a token answer (200) is told apart by
    // its first bytes, before any of it is decoded.
    if !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let text = text.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let why = match status_line {
        "HTTP/1.1 400 Bad Request" => Unparsable::BadRequest,
        "HTTP/1.1 414 URI Too Long" => Unparsable::UriTooLong,
        "HTTP/1.1 431 Request Header Fields Too Large" => Unparsable::HeadersTooLarge,
        _ => return None,
    };
    let mut date = None;
    let mut others = Vec::new();
    for line in lines {
        match line.strip_prefix("date: ") {
            Some(value) => date = Some(value),
            None => others.push(line),
        }
    }
    others.sort_unstable();
    if others != ["connection: close", "content-length: 0"] {
        return None;
    }
    let body = ApiError::Unparsable(why).body_bytes();
    let date = date.map(|d| format!("date: {d}\r\n")).unwrap_or_default();
    let mut answer = format!(
        "{status_line}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{date}\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend(body);
    Some(answer)
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes the pending rewrite; `Ready(n)` once all of it is out, `n` being what the
    /// caller asked to write (at most `asked`).
    fn poll_rewrite(&mut self, cx: &mut Context<'_>, asked: usize) -> Poll<std::io::Result<usize>> {
        let Some(rewrite) = self.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while rewrite.written < rewrite.bytes.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &rewrite.bytes[rewrite.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            rewrite.written += n;
        }
        let replaced = rewrite.replaces.min(asked);
        self.pending = None;
        Poll::Ready(Ok(replaced))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending.is_none()
            && let Some(bytes) = rewrite(buf)
        {
            self.pending = Some(Rewrite {
                bytes,
                written: 0,
                replaces: buf.len(),
            });
        }
        if self.pending.is_some() {
            return self.poll_rewrite(cx, buf.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let asked = bufs.iter().map(|b| b.len()).sum();
        if self.pending.is_none() {
            let mut filled = bufs.iter().filter(|b| !b.is_empty());
            if let (Some(only), None) = (filled.next(), filled.next())
                && let Some(bytes) = rewrite(only)
            {
                self.pending = Some(Rewrite {
                    bytes,
                    written: 0,
                    replaces: asked,
                });
            }
        }
        if self.pending.is_some() {
            return self.poll_rewrite(cx, asked);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::rewrite;

    const DATE: &str = "date: Wed, 02 Dec 2026 15:58:45 GMT\r\n";

    #[test]
    fn only_hypers_own_answers_are_rewritten() {
        let hypers = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n"
        );
        let ours = String::from_utf8(rewrite(hypers.as_bytes()).unwrap()).unwrap();
        let (head, body) = ours.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "headers_too_large");
        for not_hypers in [
            // A handler's or an upstream's answers.
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n"
            ),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\n"),
            format!(
                "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n"
            ),
            // A body chunk, or a head with its body in the same write.
            format!(
                "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\nx"
            ),
        ] {
            assert!(rewrite(not_hypers.as_bytes()).is_none(), "{not_hypers}");
        }
    }
}
