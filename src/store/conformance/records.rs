//! What each step does to a record: flows, codes and their states.

use super::{binding, challenge, code, flow, handle, record, Must, Runtime, TTL};
use crate::pkce::{ChallengeMethod, CodeChallenge};
use crate::store::{ChallengeStore, CodeBinding, CodeState, PendingFlow, StoreKey};

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
