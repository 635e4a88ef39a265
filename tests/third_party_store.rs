//! A `ChallengeStore` written outside the crate, with its public API only, passes the
//! exported conformance suite: the contract is implementable by others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tokio_runtime.rs"]
mod tokio_runtime;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_runtime::Tokio;
use tower_pkce::store::conformance;
use tower_pkce::store::{CodeBinding, CodeRecord, CodeState, PendingFlow, StoreKey};
use tower_pkce::{ChallengeMethod, ChallengeStore, CodeChallenge, StoreError};

/// Everything under one mutex: each step is atomic because it holds the lock throughout.
#[derive(Clone)]
struct MutexStore {
    maps: Arc<Mutex<Maps>>,
    capacity: usize,
}

#[derive(Default)]
struct Maps {
    flows: HashMap<StoreKey, (Instant, PendingFlow)>,
    codes: HashMap<StoreKey, (Instant, CodeRecord)>,
}

impl Maps {
    fn purge(&mut self, now: Instant) {
        self.flows.retain(|_, (expires, _)| *expires > now);
        self.codes.retain(|_, (expires, _)| *expires > now);
    }

    fn len(&self) -> usize {
        self.flows.len() + self.codes.len()
    }

    /// The live record of a code, if any; an expired one is removed.
    fn code(&mut self, key: StoreKey, now: Instant) -> Option<&mut CodeRecord> {
        if self
            .codes
            .get(&key)
            .is_some_and(|(expires, _)| *expires <= now)
        {
            self.codes.remove(&key);
        }
        self.codes.get_mut(&key).map(|(_, record)| record)
    }
}

fn expiry(now: Instant, ttl: Duration) -> Instant {
    // Far enough for `Duration::MAX`.
    now.checked_add(ttl)
        .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400))
}

impl MutexStore {
    fn new(capacity: usize) -> Self {
        Self {
            maps: Arc::default(),
            capacity,
        }
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap()
    }

    /// Whether one more entry fits, after dropping expired ones if the store looks full.
    fn room(&self, maps: &mut Maps, now: Instant) -> Result<(), StoreError> {
        if maps.len() >= self.capacity {
            maps.purge(now);
        }
        if maps.len() >= self.capacity {
            return Err(StoreError::Full);
        }
        Ok(())
    }

    /// Replaces a code's record with one in `state`, keeping its binding, failures and expiry.
    fn set_state(record: &mut CodeRecord, state: CodeState) {
        *record = CodeRecord::new(record.binding().clone(), state).with_failures(record.failures());
    }
}

impl ChallengeStore for MutexStore {
    async fn create_flow(
        &self,
        handle: StoreKey,
        flow: PendingFlow,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut maps = self.maps();
        if maps.flows.get(&handle).is_some_and(|(e, _)| *e > now) {
            return Ok(false);
        }
        maps.flows.remove(&handle);
        self.room(&mut maps, now)?;
        maps.flows.insert(handle, (expiry(now, ttl), flow));
        Ok(true)
    }

    async fn flow(&self, handle: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        let now = Instant::now();
        let maps = self.maps();
        Ok(maps
            .flows
            .get(&handle)
            .filter(|(e, _)| *e > now)
            .map(|(_, flow)| flow.clone()))
    }

    async fn take_flow(&self, handle: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        let now = Instant::now();
        let taken = self.maps().flows.remove(&handle);
        Ok(taken.filter(|(e, _)| *e > now).map(|(_, flow)| flow))
    }

    async fn bind_code(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut maps = self.maps();
        if maps.code(code, now).is_some() {
            return Ok(false);
        }
        // The flow this code comes from just gave its slot back: no capacity check.
        let record = CodeRecord::new(binding, CodeState::Live);
        maps.codes.insert(code, (expiry(now, ttl), record));
        Ok(true)
    }

    async fn record_redemption(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut maps = self.maps();
        if maps.code(code, now).is_some() {
            return Ok(false);
        }
        self.room(&mut maps, now)?;
        let record = CodeRecord::new(binding, CodeState::Redeemed);
        maps.codes.insert(code, (expiry(now, ttl), record));
        Ok(true)
    }

    async fn code(&self, code: StoreKey) -> Result<Option<CodeRecord>, StoreError> {
        Ok(self.maps().code(code, Instant::now()).cloned())
    }

    async fn redeem(&self, code: StoreKey) -> Result<bool, StoreError> {
        let mut maps = self.maps();
        match maps.code(code, Instant::now()) {
            Some(record) if record.state() == CodeState::Live => {
                Self::set_state(record, CodeState::Redeemed);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unredeem(&self, code: StoreKey) -> Result<bool, StoreError> {
        let mut maps = self.maps();
        match maps.code(code, Instant::now()) {
            Some(record) if record.state() == CodeState::Redeemed => {
                Self::set_state(record, CodeState::Live);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_failure(
        &self,
        code: StoreKey,
        max_failures: u32,
    ) -> Result<Option<CodeState>, StoreError> {
        let mut maps = self.maps();
        let Some(record) = maps.code(code, Instant::now()) else {
            return Ok(None);
        };
        if record.state() == CodeState::Live {
            let failures = record.failures().saturating_add(1);
            let state = if failures >= max_failures {
                CodeState::Burned
            } else {
                CodeState::Live
            };
            *record = CodeRecord::new(record.binding().clone(), state).with_failures(failures);
        }
        Ok(Some(record.state()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_elsewhere_conforms() {
    conformance::run_all(|| MutexStore::new(10_000), &Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_written_elsewhere_conforms() {
    let store = MutexStore::new(50);
    conformance::a_full_store_refuses_new_flows_and_finishes_old_ones(store, &Tokio).await;
}

/// Every record type can be made and read from outside, also as bytes.
#[test]
fn records_are_built_and_read_from_outside() {
    let record = CodeRecord::new(CodeBinding::new(None, "svc"), CodeState::Burned).with_failures(7);
    assert_eq!(
        (
            record.state(),
            record.failures(),
            record.binding().client_id()
        ),
        (CodeState::Burned, 7, "svc")
    );
    assert_eq!(CodeRecord::decode(&record.encode()).unwrap(), record);
    let bytes = record.encode();
    let tail = &bytes[bytes.len() - tower_pkce::store::codec::CODE_TAIL_LEN..];
    assert_eq!(tail, [CodeState::Burned.to_byte(), 0, 0, 0, 7]);
    assert_eq!(CodeState::from_byte(b'R'), Some(CodeState::Redeemed));

    // A store that keeps a challenge its own way rebuilds it from its method and wire form.
    for (value, method) in [
        (
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ChallengeMethod::S256,
        ),
        (&*"p".repeat(43), ChallengeMethod::Plain),
    ] {
        let challenge = CodeChallenge::parse(value, method).unwrap();
        let again = CodeChallenge::parse(&challenge.encoded(), challenge.method()).unwrap();
        assert_eq!(again, challenge);
    }

    let flow = PendingFlow::new(None, "app", Some("https://app.example/cb"), None);
    assert_eq!(PendingFlow::decode(&flow.encode()).unwrap(), flow);
    let key = StoreKey::for_code(b"code");
    assert_eq!(StoreKey::from_digest(*key.as_bytes()), key);
    assert!(matches!(
        StoreError::backend("down"),
        StoreError::Backend(_)
    ));
}
