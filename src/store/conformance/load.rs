//! Load: concurrent steps on one key, and a full store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{all, binding, challenge, code, flow, handle, record, BoxFuture, Must, Runtime, TTL};
use crate::store::{ChallengeStore, CodeState, PendingFlow, StoreError};

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
