//! Guards on request bodies, which arrive from the network at whatever pace and shape a client likes.
//!
//! - [`IdleTimeout`]: a body that sends nothing for a while is cut, so a stalled client cannot hold an
//!   upload slot, a staging file and a connection forever.
//! - [`MultipartHeaderGuard`]: the headers of each multipart part are limited in size before the parser
//!   sees them; a parser looking for the end of a part's headers would otherwise buffer all of them (one
//!   200 MB header cost 200 MB of memory).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

/// Largest accepted header section of one multipart part.
pub const MAX_PART_HEADER_BYTES: usize = 16 * 1024;

/// How long a reader or storage node waits for the next bytes of a body. Longer than any pause the
/// broadcaster makes while it waits for its slowest target (its stall timeout, 10 s by default).
pub const INTERNAL_BODY_IDLE: Duration = Duration::from_secs(120);

/// `body` cut after [`INTERNAL_BODY_IDLE`] without data.
pub fn idle<S>(body: S) -> IdleTimeout<S> {
    IdleTimeout::new(body, INTERNAL_BODY_IDLE)
}

/// Ends a body stream with an error when no data arrives for `idle`.
#[derive(Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// The error an idle body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing for {0} s")]
pub struct Idle(pub u64);

impl<S, E> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(item.map(|r| r.map_err(|e| e.to_string())))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Idle(this.idle.as_secs()).to_string()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Passes a multipart body through unchanged, failing it as soon as one part's header section exceeds
/// `max` bytes. It only tracks delimiters and header ends (constant memory), the parser does the rest.
#[derive(Debug)]
pub struct MultipartHeaderGuard<S> {
    inner: S,
    /// `\r\n--boundary`; the body's first delimiter comes without the leading CRLF.
    delimiter: Vec<u8>,
    max: usize,
    state: GuardState,
    failed: bool,
    /// A chunk was just passed on: the next poll yields once before reading on (see `poll_next`).
    passed: bool,
}

#[derive(Debug)]
enum GuardState {
    /// Looking for a delimiter; `matched` bytes of it seen so far.
    Body { matched: usize },
    /// In a part's headers: bytes seen, and how much of `\r\n\r\n` ends them so far.
    Headers { seen: usize, matched: usize },
}

const HEADER_END: &[u8] = b"\r\n\r\n";

impl<S> MultipartHeaderGuard<S> {
    /// Wraps `inner`, a body with multipart `boundary`.
    pub fn new(inner: S, boundary: &str, max: usize) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Self {
            inner,
            delimiter,
            max,
            // As if a CRLF preceded the body, so the opening delimiter is found like every other.
            state: GuardState::Body { matched: 2 },
            failed: false,
            passed: false,
        }
    }

    /// Runs the state machine over `data`; false once a header section is too long.
    fn scan(&mut self, data: &[u8]) -> bool {
        let mut i = 0;
        while i < data.len() {
            if let GuardState::Body { matched: 0 } = self.state {
                // Only a CR can start a delimiter: skip the part's bytes up to the next one at memchr's
                // speed instead of one state step per byte of a multi-GiB file.
                match memchr::memchr(b'\r', &data[i..]) {
                    Some(at) => i += at,
                    None => return true,
                }
            }
            let b = data[i];
            i += 1;
            match &mut self.state {
                GuardState::Body { matched } => {
                    if b == self.delimiter[*matched] {
                        *matched += 1;
                        if *matched == self.delimiter.len() {
                            self.state = GuardState::Headers {
                                seen: 0,
                                matched: 0,
                            };
                        }
                    } else {
                        // The delimiter starts with CR and has no other CR, so a mismatch can only
                        // restart a match at this byte.
                        *matched = usize::from(b == self.delimiter[0]);
                    }
                }
                GuardState::Headers { seen, matched } => {
                    *seen += 1;
                    if *seen > self.max {
                        return false;
                    }
                    if b == HEADER_END[*matched] {
                        *matched += 1;
                        if *matched == HEADER_END.len() {
                            self.state = GuardState::Body { matched: 0 };
                        }
                    } else {
                        *matched = usize::from(b == HEADER_END[0]);
                    }
                }
            }
        }
        true
    }
}

impl<S, E> Stream for MultipartHeaderGuard<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        // The multipart parser (multer) drains every chunk that is ready into one buffer before it hands
        // the field's data on, as one piece: with a fast client that piece grew to megabytes, copied and
        // queued on every target. Yielding after each chunk keeps its buffer, and the pieces the fan-out
        // queues, at about one body chunk.
        if std::mem::take(&mut self.passed) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.scan(&chunk) {
                    self.passed = true;
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.failed = true;
                    let max = self.max;
                    Poll::Ready(Some(Err(format!(
                        "a multipart part's headers exceed {max} bytes"
                    ))))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.to_string()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Wraps multipart bodies so that no part's header section can grow past
/// [`MAX_PART_HEADER_BYTES`] before the parser sees it.
pub async fn guard_multipart(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let boundary = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart_boundary);
    let Some(boundary) = boundary else {
        return next.run(req).await;
    };
    let req = req.map(|body| {
        axum::body::Body::from_stream(MultipartHeaderGuard::new(
            body.into_data_stream(),
            &boundary,
            MAX_PART_HEADER_BYTES,
        ))
    });
    next.run(req).await
}

/// The boundary of a `multipart/form-data` content type.
fn multipart_boundary(ct: &str) -> Option<String> {
    let mut parts = ct.split(';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/form-data")
    {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn run(body: &[u8], piece: usize) -> Result<usize, String> {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = body
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut g = MultipartHeaderGuard::new(futures_util::stream::iter(chunks), "XyZ", 64);
        let mut n = 0;
        while let Some(c) = g.next().await {
            n += c?.len();
        }
        Ok(n)
    }

    /// A fast client's file field reaches the handler in pieces of about one body chunk, not in one piece
    /// of everything that was ready (which the parser copies and the fan-out then queued on every target).
    #[tokio::test]
    async fn a_file_field_comes_in_pieces_of_about_one_chunk() {
        use axum::extract::FromRequest;
        const PIECE: usize = 64 * 1024;
        // Under axum's default body limit (2 MB), which the routes lift.
        let file: Vec<u8> = (0..1536 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\n"
                .to_vec();
        body.extend_from_slice(&file);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        // Every chunk ready at once, as from a client faster than the consumer.
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = body
            .chunks(PIECE)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let guarded = MultipartHeaderGuard::new(futures_util::stream::iter(chunks), "XyZ", 1024);
        let req = axum::http::Request::builder()
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(axum::body::Body::from_stream(guarded))
            .expect("request");
        let mut form = axum::extract::Multipart::from_request(req, &())
            .await
            .expect("multipart");
        let mut field = form.next_field().await.expect("field").expect("a field");
        let (mut got, mut largest) = (Vec::new(), 0);
        while let Some(piece) = field.chunk().await.expect("chunk") {
            largest = largest.max(piece.len());
            got.extend_from_slice(&piece);
        }
        assert!(got == file, "the file field's bytes changed");
        assert!(
            largest <= 2 * PIECE,
            "a piece of {largest} bytes reached the handler from {PIECE}-byte chunks"
        );
    }

    #[tokio::test]
    async fn small_headers_pass_whatever_the_chunking() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue with \r\n--Xy in it\r\n--XyZ\r\nX: y\r\n\r\n\r\n\r\nmore\r\n--XyZ--\r\n";
        for piece in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(run(body, piece).await, Ok(body.len()), "piece {piece}");
        }
    }

    #[tokio::test]
    async fn a_huge_part_header_is_cut() {
        let mut body = b"--XyZ\r\nX-Big: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', 10_000));
        for piece in [1, 5, 4096] {
            assert!(run(&body, piece).await.is_err(), "piece {piece}");
        }
        // A huge body (not header) is fine.
        let mut ok = b"--XyZ\r\nA: b\r\n\r\n".to_vec();
        ok.extend(std::iter::repeat_n(b'a', 10_000));
        assert!(run(&ok, 100).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_bodies_end_with_an_error() {
        let body = futures_util::stream::once(async { Ok::<_, String>(Bytes::from_static(b"a")) })
            .chain(futures_util::stream::pending());
        let mut s = IdleTimeout::new(Box::pin(body), Duration::from_secs(5));
        assert!(s.next().await.expect("item").is_ok());
        let e = s.next().await.expect("timeout").expect_err("idle");
        assert!(e.contains("5 s"), "{e}");
    }
}
