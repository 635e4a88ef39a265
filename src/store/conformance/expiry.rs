//! Time: expiry, and expiry kept through state changes.

use std::time::Duration;

use super::{binding, code, flow, handle, Must, Runtime, TTL};
use crate::store::{ChallengeStore, CodeState};

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
