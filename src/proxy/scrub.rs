//! Replacing a secret in a response body as it streams (the bridge's API key in a server-sent-event
//! stream, which cannot be read whole). Only bytes that could begin the secret are held back between
//! frames, so an event that ends its frame is delivered at once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame};

use crate::app::{Body, BoxError};

pub struct ScrubBody {
    inner: Body,
    needle: Vec<u8>,
    with: &'static [u8],
    /// Unsent bytes that may be the start of the needle.
    pending: BytesMut,
    ended: bool,
}

impl ScrubBody {
    /// `needle` must not be empty.
    pub fn new(inner: Body, needle: Vec<u8>, with: &'static [u8]) -> Self {
        assert!(!needle.is_empty());
        ScrubBody {
            inner,
            needle,
            with,
            pending: BytesMut::new(),
            ended: false,
        }
    }

    /// Replace every whole occurrence in `pending`; return what can be sent now, keeping the longest tail
    /// that is a proper prefix of the needle.
    fn drain(&mut self, at_end: bool) -> Bytes {
        let buf = std::mem::take(&mut self.pending);
        let replaced = replace_all(&buf, &self.needle, self.with);
        let keep = if at_end {
            0
        } else {
            (1..self.needle.len())
                .rev()
                .find(|&k| k <= replaced.len() && replaced.ends_with(&self.needle[..k]))
                .unwrap_or(0)
        };
        let split = replaced.len() - keep;
        self.pending.extend_from_slice(&replaced[split..]);
        Bytes::copy_from_slice(&replaced[..split])
    }
}

/// Every occurrence of `needle` in `hay` replaced by `with`.
pub fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if !needle.is_empty() && hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

impl HttpBody for ScrubBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.ended {
                if self.pending.is_empty() {
                    return Poll::Ready(None);
                }
                let rest = self.drain(true);
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not passed on (nothing in an event stream uses them).
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                        let out = self.drain(false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields the given frames, one per poll.
    struct Frames(std::collections::VecDeque<Bytes>);
    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Body {
        Frames(parts.iter().map(|p| Bytes::from_static(p)).collect()).boxed()
    }

    async fn run(parts: &[&'static [u8]]) -> (Vec<Bytes>, Vec<u8>) {
        let mut b = ScrubBody::new(chunks(parts), b"SECRETKEY".to_vec(), b"[hidden]");
        let mut frames = Vec::new();
        while let Some(f) = b.frame().await {
            frames.push(f.unwrap().into_data().unwrap());
        }
        let all = frames.iter().flat_map(|f| f.to_vec()).collect();
        (frames, all)
    }

    #[tokio::test]
    async fn a_secret_split_across_frames_is_replaced() {
        let (_, all) = run(&[b"data: SEC", b"RETK", b"EY and SECRETKEY\n\n"]).await;
        assert_eq!(all, b"data: [hidden] and [hidden]\n\n");
    }

    #[tokio::test]
    async fn a_whole_event_is_delivered_without_waiting_for_the_next() {
        let (frames, _) = run(&[b"data: 1\n\n", b"data: 2\n\n"]).await;
        assert_eq!(frames[0], Bytes::from_static(b"data: 1\n\n"));
    }

    #[tokio::test]
    async fn a_held_back_prefix_that_is_not_the_secret_is_sent_at_the_end() {
        let (_, all) = run(&[b"data: SECR", b"ET"]).await;
        assert_eq!(all, b"data: SECRET");
    }
}
