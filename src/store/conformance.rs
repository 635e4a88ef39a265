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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{
    ChallengeStore, CodeBinding, CodeRecord, CodeState, PendingFlow, StoreError, StoreKey,
};
use crate::pkce::{ChallengeMethod, CodeChallenge};

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

const TTL: Duration = Duration::from_secs(60);

/// A store's answer, or a panic naming the step that failed.
trait Must<T> {
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

fn challenge() -> CodeChallenge {
    CodeChallenge::parse(
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ChallengeMethod::S256,
    )
    .expect("RFC 7636's example challenge")
}

fn handle(name: &str) -> StoreKey {
    StoreKey::for_handle(name)
}

fn code(name: &str) -> StoreKey {
    StoreKey::for_code(name.as_bytes())
}

fn flow(client: &str) -> PendingFlow {
    PendingFlow::new(
        Some(challenge()),
        client,
        Some("https://app.example/cb"),
        Some("xyz"),
    )
}

fn binding(client: &str) -> CodeBinding {
    CodeBinding::new(Some(challenge()), client)
}

async fn record<S: ChallengeStore>(store: &S, key: StoreKey, why: &str) -> CodeRecord {
    match store.code(key).await.must("code") {
        Some(record) => record,
        None => panic!("code: the record is missing ({why})"),
    }
}

/// Spawns every task at once, then waits for all of them.
async fn all(runtime: &dyn Runtime, tasks: impl IntoIterator<Item = BoxFuture<'static, ()>>) {
    let running: Vec<_> = tasks.into_iter().map(|t| runtime.spawn(t)).collect();
    for task in running {
        task.await;
    }
}

/// `create_flow`, `flow` and `take_flow` keep every field of a flow: long, empty and
/// non-ASCII values, absent parts, plain and absent challenges.
pub async fn flows_keep_every_field<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let plain = CodeChallenge::parse(&"p".repeat(128), ChallengeMethod::Plain)
        .expect("a 128-character plain challenge");
    let flows = [
        flow("app"),
        PendingFlow::new(None, "svc+prod", None, None),
        PendingFlow::new(
            Some(plain),
            "",
            Some("com.example.app:/cb?x=1&y=%20"),
            Some(""),
        ),
        PendingFlow::new(
            Some(challenge()),
            "app",
            Some(&format!("https://app.example/{}", "r".repeat(2048))),
            Some(&format!("é😀 \"<>&{}", "s".repeat(4096))),
        ),
    ];
    for (i, expected) in flows.into_iter().enumerate() {
        let key = handle(&format!("h{i}"));
        assert!(
            store
                .create_flow(key, expected.clone(), TTL)
                .await
                .must("create_flow"),
            "create_flow on a free handle must answer true (flow {i})"
        );
        assert_eq!(
            store.flow(key).await.must("flow").as_ref(),
            Some(&expected),
            "flow must return the flow as created (flow {i})"
        );
        assert_eq!(
            store.take_flow(key).await.must("take_flow"),
            Some(expected),
            "take_flow must return the flow as created (flow {i})"
        );
    }
}

/// `create_flow` on a taken handle answers `false` and keeps the first flow; `flow` does not
/// consume it.
pub async fn a_flow_is_created_once<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = handle("a");
    assert!(store
        .create_flow(key, flow("first"), TTL)
        .await
        .must("create_flow"));
    assert!(
        !store
            .create_flow(key, flow("second"), TTL)
            .await
            .must("create_flow"),
        "create_flow on a taken handle must answer false"
    );
    let kept = store.flow(key).await.must("flow");
    assert_eq!(
        kept.as_ref().map(PendingFlow::client_id),
        Some("first"),
        "the first flow must stay"
    );
    assert!(
        store.flow(key).await.must("flow").is_some(),
        "flow must not consume the flow"
    );
}

/// `take_flow` returns a flow once and frees its handle.
pub async fn a_flow_is_taken_once<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = handle("a");
    assert!(store
        .create_flow(key, flow("app"), TTL)
        .await
        .must("create_flow"));
    assert_eq!(
        store.take_flow(key).await.must("take_flow"),
        Some(flow("app"))
    );
    assert_eq!(
        store.take_flow(key).await.must("take_flow"),
        None,
        "a flow must be taken once"
    );
    assert_eq!(
        store.flow(key).await.must("flow"),
        None,
        "a taken flow must be gone"
    );
    // The layer puts a flow back this way.
    assert!(
        store
            .create_flow(key, flow("app"), TTL)
            .await
            .must("create_flow"),
        "a taken flow's handle must be free again"
    );
}

/// A flow and a code under the same digest are two records.
pub async fn flows_and_codes_do_not_share_keys<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = handle("x");
    assert_eq!(key, StoreKey::for_code(b"x"));
    assert!(store
        .create_flow(key, flow("app"), TTL)
        .await
        .must("create_flow"));
    assert!(
        store
            .bind_code(key, binding("app"), TTL)
            .await
            .must("bind_code"),
        "a code must not collide with a flow of the same digest"
    );
    assert!(
        store.take_flow(key).await.must("take_flow").is_some(),
        "binding a code must not touch the flow of the same digest"
    );
    let state = record(&store, key, "bound above").await.state();
    assert_eq!(
        state,
        CodeState::Live,
        "taking a flow must not touch the code of the same digest"
    );
}

/// `bind_code` makes a `Live` record with no failures and the binding given, once; a second
/// `bind_code` or `record_redemption` answers `false` and changes nothing.
pub async fn a_bound_code_is_live_with_its_binding<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = code("c");
    assert!(store
        .bind_code(key, binding("app"), TTL)
        .await
        .must("bind_code"));
    let bound = record(&store, key, "just bound").await;
    assert_eq!(bound.state(), CodeState::Live, "a bound code must be live");
    assert_eq!(bound.failures(), 0, "a bound code must have no failures");
    assert_eq!(bound.binding(), &binding("app"), "the binding must be kept");
    assert!(
        !store
            .bind_code(key, binding("other"), TTL)
            .await
            .must("bind_code"),
        "a code must be bound once"
    );
    assert!(
        !store
            .record_redemption(key, binding("other"), TTL)
            .await
            .must("record_redemption"),
        "record_redemption must not replace a bound code"
    );
    let kept = record(&store, key, "bound above").await;
    assert_eq!(
        kept.binding().client_id(),
        "app",
        "the first binding must stay"
    );
    assert_eq!(kept.state(), CodeState::Live, "the state must not change");
    // Without a challenge (an exempt client's flow).
    let unbound = code("u");
    let none = CodeBinding::new(None, "svc");
    assert!(store
        .bind_code(unbound, none.clone(), TTL)
        .await
        .must("bind_code"));
    assert_eq!(
        record(&store, unbound, "bound above").await.binding(),
        &none,
        "a binding without a challenge must be kept"
    );
}

/// `redeem` moves `Live → Redeemed` once; `unredeem` moves it back once; the binding stays.
pub async fn redeem_and_unredeem_move_between_live_and_redeemed<S: ChallengeStore>(
    store: S,
    _: &dyn Runtime,
) {
    let key = code("c");
    assert!(store
        .bind_code(key, binding("app"), TTL)
        .await
        .must("bind_code"));
    assert!(
        store.redeem(key).await.must("redeem"),
        "a live code must redeem"
    );
    assert_eq!(
        record(&store, key, "redeemed").await.state(),
        CodeState::Redeemed
    );
    assert!(
        !store.redeem(key).await.must("redeem"),
        "a code must be redeemed once"
    );
    assert!(
        store.unredeem(key).await.must("unredeem"),
        "a redeemed code must go back"
    );
    assert_eq!(
        record(&store, key, "given back").await.state(),
        CodeState::Live
    );
    assert!(
        !store.unredeem(key).await.must("unredeem"),
        "unredeem must move only a redeemed code"
    );
    assert!(
        store.redeem(key).await.must("redeem"),
        "a code given back must redeem again"
    );
    assert_eq!(
        record(&store, key, "redeemed").await.binding(),
        &binding("app"),
        "state changes must keep the binding"
    );
}

/// `record_failure` counts on a live code and burns it at the limit; redeeming and giving
/// back keeps the count; a burned code is final.
pub async fn failures_are_counted_and_burn_the_code<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = code("c");
    assert!(store
        .bind_code(key, binding("app"), TTL)
        .await
        .must("bind_code"));
    for n in 1..=2 {
        assert_eq!(
            store.record_failure(key, 3).await.must("record_failure"),
            Some(CodeState::Live),
            "failure {n} of 3 must leave the code live"
        );
    }
    assert_eq!(
        record(&store, key, "bound").await.failures(),
        2,
        "failures must be counted"
    );
    assert!(store.redeem(key).await.must("redeem"));
    assert!(store.unredeem(key).await.must("unredeem"));
    assert_eq!(
        record(&store, key, "bound").await.failures(),
        2,
        "redeeming and giving back must keep the count"
    );
    assert_eq!(
        store.record_failure(key, 3).await.must("record_failure"),
        Some(CodeState::Burned),
        "the failure reaching the limit must burn the code"
    );
    assert!(
        !store.redeem(key).await.must("redeem"),
        "a burned code must not redeem"
    );
    assert!(
        !store.unredeem(key).await.must("unredeem"),
        "a burned code must not go back"
    );
    assert_eq!(
        store.record_failure(key, 3).await.must("record_failure"),
        Some(CodeState::Burned),
        "a burned code must stay burned"
    );
    let burned = record(&store, key, "burned codes stay").await;
    assert_eq!(
        (burned.state(), burned.failures()),
        (CodeState::Burned, 3),
        "a burned code's failures must not be counted further"
    );
    assert_eq!(burned.binding(), &binding("app"), "the binding must stay");
}

/// `record_failure` on a redeemed code returns `Redeemed` and counts nothing.
pub async fn failures_on_a_redeemed_code_change_nothing<S: ChallengeStore>(
    store: S,
    _: &dyn Runtime,
) {
    let key = code("c");
    assert!(store
        .bind_code(key, binding("app"), TTL)
        .await
        .must("bind_code"));
    assert!(store.redeem(key).await.must("redeem"));
    assert_eq!(
        store.record_failure(key, 1).await.must("record_failure"),
        Some(CodeState::Redeemed),
        "record_failure must leave a redeemed code as it is"
    );
    let redeemed = record(&store, key, "redeemed").await;
    assert_eq!(
        (redeemed.state(), redeemed.failures()),
        (CodeState::Redeemed, 0),
        "failures on a redeemed code must not be counted"
    );
}

/// With a limit of one, the first failure burns the code.
pub async fn a_failure_limit_of_one_burns_at_once<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = code("c");
    assert!(store
        .bind_code(key, binding("app"), TTL)
        .await
        .must("bind_code"));
    assert_eq!(
        store.record_failure(key, 1).await.must("record_failure"),
        Some(CodeState::Burned),
        "a limit of one must burn at the first failure"
    );
}

/// `record_redemption` of an unseen code makes a `Redeemed` tombstone that blocks binding and
/// redeeming; given back, it redeems once.
pub async fn an_unseen_code_gets_a_tombstone<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = code("exempt");
    let none = CodeBinding::new(None, "svc");
    assert!(store
        .record_redemption(key, none.clone(), TTL)
        .await
        .must("record_redemption"));
    let tombstone = record(&store, key, "just recorded").await;
    assert_eq!(
        (tombstone.state(), tombstone.binding()),
        (CodeState::Redeemed, &none),
        "a tombstone must be redeemed, with its binding"
    );
    assert!(
        !store.redeem(key).await.must("redeem"),
        "a tombstone must not redeem"
    );
    assert!(
        !store
            .record_redemption(key, none.clone(), TTL)
            .await
            .must("record_redemption"),
        "a second tombstone must be refused"
    );
    assert!(
        !store.bind_code(key, none, TTL).await.must("bind_code"),
        "a tombstone must not be replaced by a binding"
    );
    assert!(
        store.unredeem(key).await.must("unredeem"),
        "a tombstone must go back when the upstream issued no token"
    );
    assert!(
        store.redeem(key).await.must("redeem"),
        "a tombstone given back must redeem once"
    );
}

/// Every step on an absent key answers "absent" and creates nothing.
pub async fn absent_records_read_as_absent<S: ChallengeStore>(store: S, _: &dyn Runtime) {
    let key = code("nothing");
    assert_eq!(store.code(key).await.must("code"), None);
    assert!(!store.redeem(key).await.must("redeem"), "redeem of nothing");
    assert!(
        !store.unredeem(key).await.must("unredeem"),
        "unredeem of nothing"
    );
    assert_eq!(
        store.record_failure(key, 5).await.must("record_failure"),
        None,
        "record_failure of nothing"
    );
    assert_eq!(store.flow(key).await.must("flow"), None);
    assert_eq!(store.take_flow(key).await.must("take_flow"), None);
    assert_eq!(
        store.code(key).await.must("code"),
        None,
        "steps on an absent key must create nothing"
    );
}

/// Flows, codes and tombstones read as absent once expired, and their keys are free again.
pub async fn entries_expire<S: ChallengeStore>(store: S, runtime: &dyn Runtime) {
    let short = Duration::from_millis(300);
    let (f, c, t) = (handle("f"), code("c"), code("t"));
    assert!(store
        .create_flow(f, flow("app"), short)
        .await
        .must("create_flow"));
    assert!(store
        .bind_code(c, binding("app"), short)
        .await
        .must("bind_code"));
    assert!(store
        .record_redemption(t, binding("app"), short)
        .await
        .must("record_redemption"));
    assert!(
        store.flow(f).await.must("flow").is_some(),
        "a flow must live until its TTL"
    );
    assert!(
        store.code(c).await.must("code").is_some(),
        "a code must live until its TTL"
    );
    runtime.sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.flow(f).await.must("flow"),
        None,
        "an expired flow must read as absent"
    );
    assert_eq!(
        store.take_flow(f).await.must("take_flow"),
        None,
        "an expired flow must not be taken"
    );
    assert_eq!(
        store.code(c).await.must("code"),
        None,
        "an expired code must read as absent"
    );
    assert!(
        !store.redeem(c).await.must("redeem"),
        "an expired code must not redeem"
    );
    assert_eq!(
        store.record_failure(c, 5).await.must("record_failure"),
        None,
        "an expired code must read as absent to record_failure"
    );
    assert_eq!(
        store.code(t).await.must("code"),
        None,
        "an expired tombstone must read as absent"
    );
    assert!(
        store
            .create_flow(f, flow("app"), TTL)
            .await
            .must("create_flow"),
        "an expired flow's handle must be free"
    );
    assert!(
        store
            .bind_code(c, binding("app"), TTL)
            .await
            .must("bind_code"),
        "an expired code's key must be free"
    );
}

/// Redeeming, giving back and counting a failure keep a code's expiry.
pub async fn state_changes_keep_the_expiry<S: ChallengeStore>(store: S, runtime: &dyn Runtime) {
    let short = Duration::from_millis(500);
    let key = code("c");
    assert!(store
        .bind_code(key, binding("app"), short)
        .await
        .must("bind_code"));
    runtime.sleep(Duration::from_millis(250)).await;
    assert!(store.redeem(key).await.must("redeem"));
    assert!(store.unredeem(key).await.must("unredeem"));
    assert_eq!(
        store.record_failure(key, 5).await.must("record_failure"),
        Some(CodeState::Live)
    );
    assert!(store.redeem(key).await.must("redeem"));
    // 250 + 400 ms > 500 ms.
    runtime.sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.code(key).await.must("code"),
        None,
        "state changes must not extend a record's life"
    );
}

/// `Duration::MAX` and `Duration::ZERO` are accepted as TTLs; a zero TTL expires at once.
pub async fn extreme_ttls_are_accepted<S: ChallengeStore>(store: S, runtime: &dyn Runtime) {
    let (long, zero) = (handle("long"), handle("zero"));
    assert!(store
        .create_flow(long, flow("app"), Duration::MAX)
        .await
        .must("create_flow with Duration::MAX"));
    assert!(
        store.flow(long).await.must("flow").is_some(),
        "a flow with Duration::MAX must live"
    );
    assert!(store
        .bind_code(code("long"), binding("app"), Duration::MAX)
        .await
        .must("bind_code with Duration::MAX"));
    store
        .create_flow(zero, flow("app"), Duration::ZERO)
        .await
        .must("create_flow with Duration::ZERO");
    runtime.sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.flow(zero).await.must("flow"),
        None,
        "a flow with a zero TTL must expire at once"
    );
}

/// Of 16 concurrent `take_flow` calls, exactly one gets the flow (ten rounds).
pub async fn concurrent_takes_yield_a_flow_once<S: ChallengeStore + Clone>(
    store: S,
    runtime: &dyn Runtime,
) {
    for round in 0..10 {
        let key = handle(&format!("race{round}"));
        assert!(store
            .create_flow(key, flow("app"), TTL)
            .await
            .must("create_flow"));
        let won = Arc::new(AtomicUsize::new(0));
        all(
            runtime,
            (0..16).map(|_| {
                let (store, won) = (store.clone(), won.clone());
                Box::pin(async move {
                    if store.take_flow(key).await.must("take_flow").is_some() {
                        won.fetch_add(1, Ordering::SeqCst);
                    }
                }) as BoxFuture<'static, ()>
            }),
        )
        .await;
        assert_eq!(
            won.load(Ordering::SeqCst),
            1,
            "round {round}: concurrent takes must yield the flow exactly once"
        );
    }
}

/// Of 32 concurrent `redeem` calls on a live code, exactly one wins (ten rounds).
pub async fn concurrent_redemptions_have_one_winner<S: ChallengeStore + Clone>(
    store: S,
    runtime: &dyn Runtime,
) {
    for round in 0..10 {
        let key = code(&format!("race{round}"));
        assert!(store
            .bind_code(key, binding("app"), TTL)
            .await
            .must("bind_code"));
        let won = Arc::new(AtomicUsize::new(0));
        all(
            runtime,
            (0..32).map(|_| {
                let (store, won) = (store.clone(), won.clone());
                Box::pin(async move {
                    if store.redeem(key).await.must("redeem") {
                        won.fetch_add(1, Ordering::SeqCst);
                    }
                }) as BoxFuture<'static, ()>
            }),
        )
        .await;
        assert_eq!(
            won.load(Ordering::SeqCst),
            1,
            "round {round}: concurrent redemptions must have exactly one winner"
        );
    }
}

/// 40 concurrent failures with a limit of 25: every one is counted up to the limit, and
/// every one from the 25th on sees a burned code.
pub async fn concurrent_failures_are_all_counted<S: ChallengeStore + Clone>(
    store: S,
    runtime: &dyn Runtime,
) {
    let key = code("c");
    assert!(store
        .bind_code(key, binding("app"), TTL)
        .await
        .must("bind_code"));
    let burned = Arc::new(AtomicUsize::new(0));
    all(
        runtime,
        (0..40).map(|_| {
            let (store, burned) = (store.clone(), burned.clone());
            Box::pin(async move {
                let state = store.record_failure(key, 25).await.must("record_failure");
                if state == Some(CodeState::Burned) {
                    burned.fetch_add(1, Ordering::SeqCst);
                }
            }) as BoxFuture<'static, ()>
        }),
    )
    .await;
    let counted = record(&store, key, "burned codes stay").await;
    assert_eq!(
        (counted.state(), counted.failures()),
        (CodeState::Burned, 25),
        "concurrent failures must all be counted, up to the limit"
    );
    assert_eq!(
        burned.load(Ordering::SeqCst),
        40 - 24,
        "every failure from the limit on must see a burned code"
    );
}

/// On a bounded store (a small capacity, or a server near its memory limit): fills it until
/// it refuses a new flow with [`StoreError::Full`], then checks that it keeps refusing new
/// flows and tombstones (at least 90 %: a server's memory use wobbles around its limit) while
/// every flow it holds is still there and the first completes: taken, bound, refused once,
/// redeemed, given back, redeemed again. Gives up after a million flows.
pub async fn a_full_store_refuses_new_flows_and_finishes_old_ones<S: ChallengeStore>(
    store: S,
    _: &dyn Runtime,
) {
    let padding = "p".repeat(512);
    let mut created = Vec::new();
    for i in 0..1_000_000 {
        let key = handle(&format!("fill{i}"));
        let pending = if i == 0 {
            flow("app")
        } else {
            PendingFlow::new(Some(challenge()), "app", None, Some(&padding))
        };
        match store.create_flow(key, pending, TTL).await {
            Ok(true) => created.push(key),
            Err(StoreError::Full) => break,
            other => panic!("create_flow while filling the store: {other:?}"),
        }
    }
    assert!(
        created.len() > 2,
        "the store was full after {} flows",
        created.len()
    );
    assert!(
        created.len() < 1_000_000,
        "a million flows and never full: the store must be bounded"
    );
    let mut refused = 0;
    for i in 0..100 {
        match store
            .create_flow(handle(&format!("more{i}")), flow("app"), TTL)
            .await
        {
            Ok(true) => {}
            Err(StoreError::Full) => refused += 1,
            other => panic!("create_flow on a full store: {other:?}"),
        }
    }
    assert!(
        refused >= 90,
        "a full store must refuse new flows: {refused} of 100 refused"
    );
    let mut refused = 0;
    for i in 0..10 {
        let unseen = code(&format!("unseen{i}"));
        match store.record_redemption(unseen, binding("svc"), TTL).await {
            Ok(true) => {}
            Err(StoreError::Full) => refused += 1,
            other => panic!("record_redemption on a full store: {other:?}"),
        }
    }
    assert!(
        refused >= 9,
        "a full store must refuse tombstones: {refused} of 10 refused"
    );
    let last = created[created.len() - 1];
    assert!(
        store.flow(last).await.must("flow").is_some(),
        "a full store must keep its flows"
    );
    assert_eq!(
        store.take_flow(created[0]).await.must("take_flow"),
        Some(flow("app")),
        "a full store must keep its flows"
    );
    let key = code("from the first flow");
    assert!(
        store
            .bind_code(key, binding("app"), TTL)
            .await
            .must("bind_code on a full store"),
        "a code for a flow just taken must bind on a full store"
    );
    assert_eq!(
        store
            .record_failure(key, 5)
            .await
            .must("record_failure on a full store"),
        Some(CodeState::Live)
    );
    assert!(store.redeem(key).await.must("redeem on a full store"));
    assert!(store.unredeem(key).await.must("unredeem on a full store"));
    assert!(store.redeem(key).await.must("redeem on a full store"));
}
