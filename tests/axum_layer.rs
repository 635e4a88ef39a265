//! The layer around a legacy server built with axum, through `Router::layer`: flows, every cell
//! of the token decision table, and the authorization endpoint's rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// Every case with the default in-memory store.
mod memory {
    fn store_layer() -> tower_pkce::PkceLayer {
        tower_pkce::PkceLayer::new()
    }

    include!("axum_layer/cases.rs");
}

/// Every case again with a `RedisStore` on a real `redis-server`.
#[cfg(feature = "redis")]
mod redis {
    fn store_layer() -> tower_pkce::PkceLayer {
        use crate::support::redis::{process_url, unique_prefix};
        let store = tower_pkce::RedisStore::open(&process_url())
            .unwrap()
            .key_prefix(&unique_prefix());
        tower_pkce::PkceLayer::new().with_store(store)
    }

    include!("axum_layer/cases.rs");
}
