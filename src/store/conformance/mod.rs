//! The contract of [`ChallengeStore`], as a test suite any store can run (feature
//! `test-util`).
//!
//! A store is correct for the layer when it passes every case here: [`run_all`] runs them on
//! fresh stores, and [`a_full_store_refuses_new_flows_and_finishes_old_ones`] runs on a
//! store with a small bound. Each case is a public function, named after the rule it checks,
//! and panics on the first violation with a message saying which rule broke. [`MemoryStore`]
//! and `RedisStore` run this very suite in this crate's tests.
//!
//! In short, a store must:
//!
//! - keep every field of a [`PendingFlow`] and a [`CodeRecord`] exactly (long and non-ASCII
//!   values, empty strings, absent parts, a plain or no challenge);
//! - create a record only where its key is free (`create_flow`, `bind_code`,
//!   `record_redemption` answer `Ok(false)` otherwise and change nothing), and keep flows and
//!   codes apart even under the same digest;
//! - take a flow once and redeem a code once, also under concurrent calls;
//! - move a code only along `Live → Redeemed → Live` and `Live → Burned`, counting failures
//!   on live codes only, up to the limit and not beyond;
//! - make an expired entry read as absent and free its key; keep an entry's expiry through
//!   its state changes; accept `Duration::ZERO` and `Duration::MAX` as TTLs;
//! - when bounded and full, refuse new flows and tombstones with [`StoreError::Full`] but let
//!   the flows it holds complete.
//!
//! The suite is independent of the async runtime: it sleeps and spawns through a [`Runtime`]
//! the caller supplies. With tokio:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use tower_pkce::store::conformance::{self, BoxFuture, Runtime};
//! use tower_pkce::MemoryStore;
//!
//! struct Tokio;
//!
//! impl Runtime for Tokio {
//!     fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
//!         Box::pin(tokio::time::sleep(duration))
//!     }
//!
//!     fn spawn(&self, task: BoxFuture<'static, ()>) -> BoxFuture<'static, ()> {
//!         let task = tokio::spawn(task);
//!         Box::pin(async move {
//!             if let Err(e) = task.await {
//!                 std::panic::resume_unwind(e.into_panic());
//!             }
//!         })
//!     }
//! }
//!
//! #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! async fn main() {
//!     conformance::run_all(MemoryStore::new, &Tokio).await;
//!     let bounded = MemoryStore::with_capacity(50);
//!     conformance::a_full_store_refuses_new_flows_and_finishes_old_ones(bounded, &Tokio).await;
//! }
//! ```
//!
//! A multi-threaded runtime makes the concurrency cases race for real on a store whose steps
//! finish without awaiting anything, as [`MemoryStore`]'s do.
//!
//! [`MemoryStore`]: super::MemoryStore

// Test code: a violation is a panic, by design.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{ChallengeStore, CodeBinding, CodeRecord, PendingFlow, StoreError, StoreKey};
use crate::pkce::{ChallengeMethod, CodeChallenge};

mod expiry;
mod load;
mod records;

pub use expiry::{entries_expire, extreme_ttls_are_accepted, state_changes_keep_the_expiry};
pub use load::{
    a_full_store_refuses_new_flows_and_finishes_old_ones, concurrent_failures_are_all_counted,
    concurrent_redemptions_have_one_winner, concurrent_takes_yield_a_flow_once,
};
pub use records::{
    a_bound_code_is_live_with_its_binding, a_failure_limit_of_one_burns_at_once,
    a_flow_is_created_once, a_flow_is_taken_once, absent_records_read_as_absent,
    an_unseen_code_gets_a_tombstone, failures_are_counted_and_burn_the_code,
    failures_on_a_redeemed_code_change_nothing, flows_and_codes_do_not_share_keys,
    flows_keep_every_field, redeem_and_unredeem_move_between_live_and_redeemed,
};

/// A boxed, sendable future, as [`Runtime`] takes and returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the suite needs from the async runtime the store runs on.
pub trait Runtime: Send + Sync {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Starts `task` now, on another thread where the runtime has several, and returns a
    /// future that completes when the task has. If the task panics, that future must panic
    /// too (tokio: `std::panic::resume_unwind(join_error.into_panic())`).
    fn spawn(&self, task: BoxFuture<'static, ()>) -> BoxFuture<'static, ()>;
}

/// Runs every case but the capacity one, each on a fresh store from `make`. A store that
/// keeps state outside the process (a server) should get a fresh namespace from each call.
/// Clones of a store must share its records, as the layer's clones do: the concurrency cases
/// race clones against each other.
pub async fn run_all<S, M>(mut make: M, runtime: &dyn Runtime)
where
    S: ChallengeStore + Clone,
    M: FnMut() -> S,
{
    macro_rules! run {
        ($($case:ident),* $(,)?) => {
            $(
                let guard = Case(stringify!($case));
                $case(make(), runtime).await;
                std::mem::forget(guard);
            )*
        };
    }
    run!(
        flows_keep_every_field,
        a_flow_is_created_once,
        a_flow_is_taken_once,
        flows_and_codes_do_not_share_keys,
        a_bound_code_is_live_with_its_binding,
        redeem_and_unredeem_move_between_live_and_redeemed,
        failures_are_counted_and_burn_the_code,
        failures_on_a_redeemed_code_change_nothing,
        a_failure_limit_of_one_burns_at_once,
        an_unseen_code_gets_a_tombstone,
        absent_records_read_as_absent,
        entries_expire,
        state_changes_keep_the_expiry,
        extreme_ttls_are_accepted,
        concurrent_takes_yield_a_flow_once,
        concurrent_redemptions_have_one_winner,
        concurrent_failures_are_all_counted,
    );
}

/// Names the case that failed, when a panic unwinds through [`run_all`].
struct Case(&'static str);

impl Drop for Case {
    fn drop(&mut self) {
        // Only reached while unwinding: on success the guard is forgotten.
        eprintln!("store conformance case `{}` failed", self.0);
    }
}

pub(super) const TTL: Duration = Duration::from_secs(60);

/// A store's answer, or a panic naming the step that failed.
pub(super) trait Must<T> {
    fn must(self, step: &str) -> T;
}

impl<T> Must<T> for Result<T, StoreError> {
    #[track_caller]
    fn must(self, step: &str) -> T {
        match self {
            Ok(value) => value,
            Err(e) => panic!("{step}: the store failed: {e}"),
        }
    }
}

pub(super) fn challenge() -> CodeChallenge {
    CodeChallenge::parse(
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ChallengeMethod::S256,
    )
    .expect("RFC 7636's example challenge")
}

pub(super) fn handle(name: &str) -> StoreKey {
    StoreKey::for_handle(name)
}

pub(super) fn code(name: &str) -> StoreKey {
    StoreKey::for_code(name.as_bytes())
}

pub(super) fn flow(client: &str) -> PendingFlow {
    PendingFlow::new(
        Some(challenge()),
        client,
        Some("https://app.example/cb"),
        Some("xyz"),
    )
}

pub(super) fn binding(client: &str) -> CodeBinding {
    CodeBinding::new(Some(challenge()), client)
}

pub(super) async fn record<S: ChallengeStore>(store: &S, key: StoreKey, why: &str) -> CodeRecord {
    match store.code(key).await.must("code") {
        Some(record) => record,
        None => panic!("code: the record is missing ({why})"),
    }
}

/// Spawns every task at once, then waits for all of them.
pub(super) async fn all(
    runtime: &dyn Runtime,
    tasks: impl IntoIterator<Item = BoxFuture<'static, ()>>,
) {
    let running: Vec<_> = tasks.into_iter().map(|t| runtime.spawn(t)).collect();
    for task in running {
        task.await;
    }
}
