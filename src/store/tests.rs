//! Keys and the layer's store dispatch ([`LayerStore`]); the codec's tests are in `codec.rs`.

use super::*;
use crate::pkce::ChallengeMethod;

fn s256() -> CodeChallenge {
    CodeChallenge::parse(
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ChallengeMethod::S256,
    )
    .unwrap()
}

#[test]
fn keys_are_digests_and_debug_shows_a_fingerprint_only() {
    let key = StoreKey::for_code(b"SplxlOBeZQQYbYS6WxSbIA");
    assert_eq!(key, StoreKey::for_code(b"SplxlOBeZQQYbYS6WxSbIA"));
    assert_ne!(key, StoreKey::for_code(b"other"));
    assert_eq!(key.fingerprint().len(), 8);
    assert!(!format!("{key:?}").contains("Splx"));
}

#[tokio::test]
async fn a_memory_store_is_called_directly_and_others_through_the_mirror() {
    let memory = MemoryStore::new();
    let direct = LayerStore::new(memory.clone());
    assert!(matches!(direct, LayerStore::Memory(_)));
    // What `LayerStore::new` makes of any other store (tests/hygiene.rs and the Redis tests
    // drive real ones through the layer): here over a memory store, to compare answers.
    let behind = MemoryStore::new();
    let mirrored = LayerStore::Dyn(Arc::new(behind.clone()));

    // Both paths reach the store they were given, with the same answers.
    for (store, maps) in [(&direct, &memory), (&mirrored, &behind)] {
        let handle = StoreKey::for_handle("h");
        let flow = PendingFlow::new(Some(s256()), "app", None, Some("s"));
        assert!(matches!(
            store
                .create_flow(handle, flow.clone(), Duration::from_secs(60))
                .await,
            Ok(true)
        ));
        assert_eq!(maps.len(), 1);
        assert!(matches!(
            store
                .create_flow(handle, flow.clone(), Duration::from_secs(60))
                .await,
            Ok(false)
        ));
        assert_eq!(store.take_flow(handle).await.ok().flatten(), Some(flow));
        let code = StoreKey::for_code(b"c");
        let binding = CodeBinding::new(Some(s256()), "app");
        assert!(matches!(
            store
                .bind_code(code, binding, Duration::from_secs(60))
                .await,
            Ok(true)
        ));
        assert!(matches!(store.redeem(code).await, Ok(true)));
        assert!(matches!(store.redeem(code).await, Ok(false)));
        assert!(matches!(store.unredeem(code).await, Ok(true)));
        assert!(matches!(
            store.record_failure(code, 1).await,
            Ok(Some(CodeState::Burned))
        ));
        let record = store.code(code).await.ok().flatten();
        assert_eq!(record.map(|r| r.state()), Some(CodeState::Burned));

        // Records made from their parts read back as the records themselves.
        let ttl = Duration::from_secs(60);
        let other = StoreKey::for_handle("other");
        let made =
            store.create_new_flow(other, Some(s256()), "app", Some("https://a/cb"), None, ttl);
        assert!(matches!(made.await, Ok(true)));
        let expected = PendingFlow::new(Some(s256()), "app", Some("https://a/cb"), None);
        assert_eq!(store.take_flow(other).await.ok().flatten(), Some(expected));
        let fresh = StoreKey::for_code(b"fresh");
        let bound = store.bind_new_code(fresh, Some(&s256()), "app", ttl);
        assert!(matches!(bound.await, Ok(true)));
        let record = store.code(fresh).await.ok().flatten();
        let expected = CodeRecord::new(CodeBinding::new(Some(s256()), "app"), CodeState::Live);
        assert_eq!(record, Some(expected));
    }
}
