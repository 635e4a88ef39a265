//! The store conformance suite (`tower_pkce::store::conformance`, feature `test-util`) run
//! against `MemoryStore` and `RedisStore` (a real `redis-server`): every trait method, expiry,
//! the code's state transitions behind the token decision table, capacity, and concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "redis")]
mod support;
#[path = "support/tokio_runtime.rs"]
mod tokio_runtime;

use tokio_runtime::Tokio;
use tower_pkce::store::conformance;

mod memory {
    use super::*;
    use tower_pkce::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conforms() {
        conformance::run_all(MemoryStore::new, &Tokio).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_store_refuses_new_flows_and_finishes_old_ones() {
        let store = MemoryStore::with_capacity(50);
        conformance::a_full_store_refuses_new_flows_and_finishes_old_ones(store, &Tokio).await;
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::support::redis::{process_url, unique_prefix, RedisServer};
    use super::*;
    use tower_pkce::RedisStore;

    /// A store on the shared server, under a key prefix of its own.
    fn store() -> RedisStore {
        RedisStore::open(&process_url())
            .unwrap()
            .key_prefix(&unique_prefix())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conforms() {
        conformance::run_all(store, &Tokio).await;
    }

    /// On a server of its own, with `maxmemory` a little above what it uses empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_store_refuses_new_flows_and_finishes_old_ones() {
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
        let store = RedisStore::open(&server.url()).unwrap();
        conformance::a_full_store_refuses_new_flows_and_finishes_old_ones(store, &Tokio).await;
    }
}
