//! One conformance suite for every [`ChallengeStore`]: each case is a generic function, and
//! the `conformance!` macro runs all of them against a store. `MemoryStore` and `RedisStore`
//! (a real `redis-server`) must pass the same cases: every trait method, expiry, the code's
//! state transitions behind the token decision table, capacity, and concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use tower_pkce::store::{CodeBinding, CodeState, PendingFlow, StoreKey};
use tower_pkce::{ChallengeMethod, ChallengeStore, CodeChallenge, StoreError};

const TTL: Duration = Duration::from_secs(60);

fn challenge() -> CodeChallenge {
    CodeChallenge::parse(
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ChallengeMethod::S256,
    )
    .unwrap()
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

/// The cases, each generic over the store.
mod cases {
    use super::*;

    pub(crate) async fn flows_keep_every_field<S: ChallengeStore>(store: S) {
        let flows = [
            flow("app"),
            PendingFlow::new(None, "svc+prod", None, None),
            PendingFlow::new(
                Some(CodeChallenge::parse(&"p".repeat(128), ChallengeMethod::Plain).unwrap()),
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
            assert!(store.create_flow(key, expected.clone(), TTL).await.unwrap());
            assert_eq!(store.flow(key).await.unwrap().as_ref(), Some(&expected));
            assert_eq!(store.take_flow(key).await.unwrap(), Some(expected));
        }
    }

    pub(crate) async fn a_flow_is_created_once<S: ChallengeStore>(store: S) {
        let key = handle("a");
        assert!(store.create_flow(key, flow("first"), TTL).await.unwrap());
        assert!(!store.create_flow(key, flow("second"), TTL).await.unwrap());
        assert_eq!(store.flow(key).await.unwrap().unwrap().client_id(), "first");
        // Reading does not consume.
        assert!(store.flow(key).await.unwrap().is_some());
    }

    pub(crate) async fn a_flow_is_taken_once<S: ChallengeStore>(store: S) {
        let key = handle("a");
        assert!(store.create_flow(key, flow("app"), TTL).await.unwrap());
        assert_eq!(store.take_flow(key).await.unwrap(), Some(flow("app")));
        assert_eq!(store.take_flow(key).await.unwrap(), None);
        assert_eq!(store.flow(key).await.unwrap(), None);
        // The handle is free again (the layer puts a flow back this way).
        assert!(store.create_flow(key, flow("app"), TTL).await.unwrap());
    }

    pub(crate) async fn flows_and_codes_do_not_share_keys<S: ChallengeStore>(store: S) {
        // The same digest as a handle and as a code: two different records.
        let key = handle("x");
        assert_eq!(key, StoreKey::for_code(b"x"));
        assert!(store.create_flow(key, flow("app"), TTL).await.unwrap());
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        assert!(store.take_flow(key).await.unwrap().is_some());
        assert_eq!(
            store.code(key).await.unwrap().unwrap().state(),
            CodeState::Live
        );
    }

    pub(crate) async fn a_bound_code_is_live_with_its_binding<S: ChallengeStore>(store: S) {
        let key = code("c");
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        let record = store.code(key).await.unwrap().unwrap();
        assert_eq!(record.state(), CodeState::Live);
        assert_eq!(record.failures(), 0);
        assert_eq!(record.binding(), &binding("app"));
        // A code is bound once: the first binding stays.
        assert!(!store.bind_code(key, binding("other"), TTL).await.unwrap());
        assert!(!store
            .record_redemption(key, binding("other"), TTL)
            .await
            .unwrap());
        let record = store.code(key).await.unwrap().unwrap();
        assert_eq!(record.binding().client_id(), "app");
        assert_eq!(record.state(), CodeState::Live);
        // Without a challenge (an exempt client's flow).
        let unbound = code("u");
        let none = CodeBinding::new(None, "svc");
        assert!(store.bind_code(unbound, none.clone(), TTL).await.unwrap());
        assert_eq!(store.code(unbound).await.unwrap().unwrap().binding(), &none);
    }

    pub(crate) async fn redeem_and_unredeem_move_between_live_and_redeemed<S: ChallengeStore>(
        store: S,
    ) {
        let key = code("c");
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        assert!(store.redeem(key).await.unwrap());
        assert_eq!(
            store.code(key).await.unwrap().unwrap().state(),
            CodeState::Redeemed
        );
        assert!(!store.redeem(key).await.unwrap(), "a code is redeemed once");
        assert!(store.unredeem(key).await.unwrap());
        assert_eq!(
            store.code(key).await.unwrap().unwrap().state(),
            CodeState::Live
        );
        assert!(!store.unredeem(key).await.unwrap(), "only a redeemed code");
        assert!(store.redeem(key).await.unwrap());
        assert_eq!(
            store.code(key).await.unwrap().unwrap().binding(),
            &binding("app")
        );
    }

    pub(crate) async fn failures_are_counted_and_burn_the_code<S: ChallengeStore>(store: S) {
        let key = code("c");
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        assert_eq!(
            store.record_failure(key, 3).await.unwrap(),
            Some(CodeState::Live)
        );
        assert_eq!(
            store.record_failure(key, 3).await.unwrap(),
            Some(CodeState::Live)
        );
        assert_eq!(store.code(key).await.unwrap().unwrap().failures(), 2);
        // Redeeming and giving back keeps the count.
        assert!(store.redeem(key).await.unwrap());
        assert!(store.unredeem(key).await.unwrap());
        assert_eq!(store.code(key).await.unwrap().unwrap().failures(), 2);
        assert_eq!(
            store.record_failure(key, 3).await.unwrap(),
            Some(CodeState::Burned)
        );
        // Burned is final: not redeemable, not given back, not counted further.
        assert!(!store.redeem(key).await.unwrap());
        assert!(!store.unredeem(key).await.unwrap());
        assert_eq!(
            store.record_failure(key, 3).await.unwrap(),
            Some(CodeState::Burned)
        );
        let record = store.code(key).await.unwrap().unwrap();
        assert_eq!((record.state(), record.failures()), (CodeState::Burned, 3));
        assert_eq!(record.binding(), &binding("app"));
    }

    pub(crate) async fn failures_on_a_redeemed_code_change_nothing<S: ChallengeStore>(store: S) {
        let key = code("c");
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        assert!(store.redeem(key).await.unwrap());
        assert_eq!(
            store.record_failure(key, 1).await.unwrap(),
            Some(CodeState::Redeemed)
        );
        let record = store.code(key).await.unwrap().unwrap();
        assert_eq!(
            (record.state(), record.failures()),
            (CodeState::Redeemed, 0)
        );
    }

    pub(crate) async fn a_failure_limit_of_one_burns_at_once<S: ChallengeStore>(store: S) {
        let key = code("c");
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        assert_eq!(
            store.record_failure(key, 1).await.unwrap(),
            Some(CodeState::Burned)
        );
    }

    pub(crate) async fn an_unseen_code_gets_a_tombstone<S: ChallengeStore>(store: S) {
        let key = code("exempt");
        let none = CodeBinding::new(None, "svc");
        assert!(store
            .record_redemption(key, none.clone(), TTL)
            .await
            .unwrap());
        let record = store.code(key).await.unwrap().unwrap();
        assert_eq!(
            (record.state(), record.binding()),
            (CodeState::Redeemed, &none)
        );
        assert!(!store.redeem(key).await.unwrap());
        assert!(!store
            .record_redemption(key, none.clone(), TTL)
            .await
            .unwrap());
        assert!(!store.bind_code(key, none, TTL).await.unwrap());
        // Given back (the upstream issued no token), it becomes redeemable once.
        assert!(store.unredeem(key).await.unwrap());
        assert!(store.redeem(key).await.unwrap());
    }

    pub(crate) async fn absent_records_read_as_absent<S: ChallengeStore>(store: S) {
        let key = code("nothing");
        assert_eq!(store.code(key).await.unwrap(), None);
        assert!(!store.redeem(key).await.unwrap());
        assert!(!store.unredeem(key).await.unwrap());
        assert_eq!(store.record_failure(key, 5).await.unwrap(), None);
        assert_eq!(store.flow(key).await.unwrap(), None);
        assert_eq!(store.take_flow(key).await.unwrap(), None);
        // None of that created anything.
        assert_eq!(store.code(key).await.unwrap(), None);
    }

    pub(crate) async fn entries_expire<S: ChallengeStore>(store: S) {
        let short = Duration::from_millis(300);
        let (f, c, t) = (handle("f"), code("c"), code("t"));
        assert!(store.create_flow(f, flow("app"), short).await.unwrap());
        assert!(store.bind_code(c, binding("app"), short).await.unwrap());
        assert!(store
            .record_redemption(t, binding("app"), short)
            .await
            .unwrap());
        assert!(store.flow(f).await.unwrap().is_some());
        assert!(store.code(c).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(store.flow(f).await.unwrap(), None);
        assert_eq!(store.take_flow(f).await.unwrap(), None);
        assert_eq!(store.code(c).await.unwrap(), None);
        assert!(!store.redeem(c).await.unwrap());
        assert_eq!(store.record_failure(c, 5).await.unwrap(), None);
        assert_eq!(store.code(t).await.unwrap(), None);
        // The keys are free again.
        assert!(store.create_flow(f, flow("app"), TTL).await.unwrap());
        assert!(store.bind_code(c, binding("app"), TTL).await.unwrap());
    }

    pub(crate) async fn state_changes_keep_the_expiry<S: ChallengeStore>(store: S) {
        let short = Duration::from_millis(500);
        let key = code("c");
        assert!(store.bind_code(key, binding("app"), short).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.redeem(key).await.unwrap());
        assert!(store.unredeem(key).await.unwrap());
        assert_eq!(
            store.record_failure(key, 5).await.unwrap(),
            Some(CodeState::Live)
        );
        assert!(store.redeem(key).await.unwrap());
        // 250 + 400 ms > 500 ms: the changes did not extend the record's life.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.code(key).await.unwrap(), None);
    }

    pub(crate) async fn extreme_ttls_are_accepted<S: ChallengeStore>(store: S) {
        let (long, zero) = (handle("long"), handle("zero"));
        assert!(store
            .create_flow(long, flow("app"), Duration::MAX)
            .await
            .unwrap());
        assert!(store.flow(long).await.unwrap().is_some());
        assert!(store
            .bind_code(code("long"), binding("app"), Duration::MAX)
            .await
            .unwrap());
        store
            .create_flow(zero, flow("app"), Duration::ZERO)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.flow(zero).await.unwrap(), None);
    }

    pub(crate) async fn concurrent_takes_yield_a_flow_once<S: ChallengeStore + Clone>(store: S) {
        for round in 0..10 {
            let key = handle(&format!("race{round}"));
            assert!(store.create_flow(key, flow("app"), TTL).await.unwrap());
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move { store.take_flow(key).await.unwrap() })
                })
                .collect();
            let mut won = 0;
            for task in tasks {
                won += usize::from(task.await.unwrap().is_some());
            }
            assert_eq!(won, 1, "round {round}");
        }
    }

    pub(crate) async fn concurrent_redemptions_have_one_winner<S: ChallengeStore + Clone>(
        store: S,
    ) {
        for round in 0..10 {
            let key = code(&format!("race{round}"));
            assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move { store.redeem(key).await.unwrap() })
                })
                .collect();
            let mut won = 0;
            for task in tasks {
                won += usize::from(task.await.unwrap());
            }
            assert_eq!(won, 1, "round {round}");
        }
    }

    pub(crate) async fn concurrent_failures_are_all_counted<S: ChallengeStore + Clone>(store: S) {
        let key = code("c");
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.record_failure(key, 25).await.unwrap() })
            })
            .collect();
        let mut burned = 0;
        for task in tasks {
            burned += usize::from(task.await.unwrap() == Some(CodeState::Burned));
        }
        let record = store.code(key).await.unwrap().unwrap();
        // Counting stops at the limit; every attempt from the 25th on sees a burned code.
        assert_eq!((record.state(), record.failures()), (CodeState::Burned, 25));
        assert_eq!(burned, 40 - 24);
    }

    /// Fills the store until it refuses a new flow, then checks that what it holds still
    /// completes: a full store refuses new work, never the work in progress.
    pub(crate) async fn a_full_store_refuses_new_flows_and_finishes_old_ones<S: ChallengeStore>(
        store: S,
    ) {
        let padding = "p".repeat(512);
        let mut created = Vec::new();
        for i in 0..1_000_000 {
            let key = handle(&format!("fill{i}"));
            let mut pending = flow("app");
            if i > 0 {
                pending = PendingFlow::new(Some(challenge()), "app", None, Some(&padding));
            }
            match store.create_flow(key, pending, TTL).await {
                Ok(true) => created.push(key),
                Err(StoreError::Full) => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(created.len() > 2, "filled after {}", created.len());
        // Full stays full: further flows are refused (Redis's memory use wobbles a little
        // around `maxmemory`, so "almost all" rather than "all").
        let mut refused = 0;
        for i in 0..100 {
            match store
                .create_flow(handle(&format!("more{i}")), flow("app"), TTL)
                .await
            {
                Ok(true) => {}
                Err(StoreError::Full) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(refused >= 90, "{refused} of 100 refused");
        // So are tombstones for codes the store never saw.
        let mut refused = 0;
        for i in 0..10 {
            let unseen = code(&format!("unseen{i}"));
            match store.record_redemption(unseen, binding("svc"), TTL).await {
                Ok(true) => {}
                Err(StoreError::Full) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(refused >= 9, "{refused} of 10 refused");
        // Every flow is still there, and the first completes: taken, bound, refused once,
        // redeemed, given back, redeemed again.
        assert!(store
            .flow(created[created.len() - 1])
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            store.take_flow(created[0]).await.unwrap(),
            Some(flow("app"))
        );
        let key = code("from the first flow");
        assert!(store.bind_code(key, binding("app"), TTL).await.unwrap());
        assert_eq!(
            store.record_failure(key, 5).await.unwrap(),
            Some(CodeState::Live)
        );
        assert!(store.redeem(key).await.unwrap());
        assert!(store.unredeem(key).await.unwrap());
        assert!(store.redeem(key).await.unwrap());
    }
}

/// Runs every case against the store `$make().await` returns (with a guard that keeps its
/// server alive).
macro_rules! conformance {
    ($make:path) => {
        conformance!(@cases $make;
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
            concurrent_failures_are_all_counted
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_full_store_refuses_new_flows_and_finishes_old_ones() {
            let (store, _guard) = full().await;
            super::cases::a_full_store_refuses_new_flows_and_finishes_old_ones(store).await;
        }
    };
    (@cases $make:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                super::cases::$case(store).await;
            }
        )*
    };
}

mod memory {
    use tower_pkce::MemoryStore;

    async fn store() -> (MemoryStore, ()) {
        (MemoryStore::new(), ())
    }

    async fn full() -> (MemoryStore, ()) {
        (MemoryStore::with_capacity(50), ())
    }

    conformance!(store);
}

#[cfg(feature = "redis")]
mod redis {
    use super::support::redis::{shared, RedisServer};
    use tower_pkce::RedisStore;

    async fn store() -> (RedisStore, Option<RedisServer>) {
        let (url, prefix) = shared().await;
        (RedisStore::open(&url).unwrap().key_prefix(&prefix), None)
    }

    /// A server of its own, with `maxmemory` a little above what it uses empty.
    async fn full() -> (RedisStore, RedisServer) {
        let server = RedisServer::start().await;
        let used: u64 = server
            .command(&["INFO", "memory"])
            .await
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let limit = (used + 256 * 1024).to_string();
        let reply = server
            .command(&["CONFIG", "SET", "maxmemory", &limit])
            .await;
        assert!(reply.starts_with("+OK"), "{reply}");
        let reply = server
            .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .await;
        assert!(reply.starts_with("+OK"), "{reply}");
        (RedisStore::open(&server.url()).unwrap(), server)
    }

    conformance!(store);
}
