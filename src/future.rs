//! The response future of [`Pkce`](crate::Pkce).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::PkceBody;
use crate::layer::Shared;
use crate::service::{finish_response, needs_attention};
use crate::BoxError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`Pkce`](crate::Pkce).
    ///
    /// Requests the layer does not inspect, whose responses need nothing (the common case),
    /// are served without allocating: this polls the inner future directly. Only OAuth
    /// requests, and responses that may carry one of the layer's handles, go through a boxed
    /// future.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Inner {
            #[pin]
            future: F,
            shared: Arc<Shared>,
            metadata: bool,
        },
        Boxed {
            future: BoxFuture<Result<Response<PkceBody<B>>, E>>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn inner(future: F, shared: Arc<Shared>, metadata: bool) -> Self {
        Self {
            state: State::Inner {
                future,
                shared,
                metadata,
            },
        }
    }

    pub(crate) fn boxed(future: BoxFuture<Result<Response<PkceBody<B>>, E>>) -> Self {
        Self {
            state: State::Boxed { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: 'static,
{
    type Output = Result<Response<PkceBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Inner {
                    future,
                    shared,
                    metadata,
                } => {
                    let response = ready!(future.poll(cx))?;
                    if !needs_attention(shared, &response, *metadata) {
                        return Poll::Ready(Ok(response.map(PkceBody::new)));
                    }
                    let shared = Arc::clone(shared);
                    let metadata = *metadata;
                    let future: BoxFuture<Result<Response<PkceBody<B>>, E>> = Box::pin(
                        async move { Ok(finish_response(&shared, response, metadata).await) },
                    );
                    State::Boxed { future }
                }
                StateProj::Boxed { future } => return future.as_mut().poll(cx),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
