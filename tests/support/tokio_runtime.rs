//! The conformance suite's [`Runtime`] on tokio, for the tests that run it.

use std::time::Duration;

use tower_pkce::store::conformance::{BoxFuture, Runtime};

pub(crate) struct Tokio;

impl Runtime for Tokio {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) -> BoxFuture<'static, ()> {
        let task = tokio::spawn(task);
        Box::pin(async move {
            if let Err(e) = task.await {
                std::panic::resume_unwind(e.into_panic());
            }
        })
    }
}
