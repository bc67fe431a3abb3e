//! Keep-alive connections that survive a refusal. A request refused before its body is read
//! (the point of checking first) leaves that body on the connection; hyper then closes the
//! connection under a client that is still sending, which sees a broken pipe. The layer
//! therefore reads and discards what is left, up to a bound and within a deadline, before
//! the answer goes out, and past either says `Connection: close` so that the client
//! reconnects cleanly.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use http::HeaderValue;
use http::header::CONNECTION;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::config::DrainPolicy;
use super::context;

/// A request body that, when dropped before its end inside the layer's request, hands
/// itself to the layer to be drained.
pub(crate) struct Watched(Option<Body>);

impl Watched {
    pub(crate) fn body(body: Body) -> Body {
        Body::new(Watched(Some(body)))
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match &mut self.0 {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(body) = self.0.take().filter(|body| !body.is_end_stream()) {
            context::keep_unread(body);
        }
    }
}

/// The answer to a request whose body was left unread: sent once the body is read to its
/// end (the connection stays usable), or with `Connection: close` once the bound or the
/// deadline is passed or the body fails.
pub(crate) struct Drain {
    body: Body,
    response: Option<Response>,
    left: u64,
    within: Duration,
    /// Set at the first wait: a body already received is drained without a timer.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Drain {
    pub(crate) fn new(body: Body, response: Response, policy: DrainPolicy) -> Drain {
        Drain {
            body,
            response: Some(response),
            left: policy.limit,
            within: policy.within,
            deadline: None,
        }
    }

    fn answer(&mut self, close: bool) -> Poll<Response> {
        let mut response = self.response.take().unwrap_or_default();
        if close {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(response)
    }
}

impl Future for Drain {
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = &mut *self;
        loop {
            if this.body.is_end_stream() {
                return this.answer(false);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(None) => return this.answer(false),
                Poll::Ready(Some(Ok(frame))) => {
                    let read = frame.data_ref().map_or(0, |data| data.len() as u64);
                    match this.left.checked_sub(read) {
                        Some(left) => this.left = left,
                        None => return this.answer(true),
                    }
                }
                Poll::Ready(Some(Err(_))) => return this.answer(true),
                Poll::Pending => {
                    let within = this.within;
                    let deadline = this
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(within)));
                    return match deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => this.answer(true),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
