use std::future::{ready, Future};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::codec::code_tail_mut;
use super::{
    ChallengeStore, CodeBinding, CodeRecord, CodeState, PendingFlow, StoreError, StoreKey,
};

/// Entries [`MemoryStore::new`] holds before it refuses new flows.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// How often expired entries are swept out, at most.
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// When full, sweep again at most this often before refusing.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The default [`ChallengeStore`]: everything in this process, in sharded concurrent maps.
///
/// - **Bounded.** Pending flows and code records together never exceed the capacity (plus
///   the flows being turned into codes at that instant). When full, new flows are refused with
///   [`StoreError::Full`] (the layer answers 503 with `Retry-After`); live entries are never
///   evicted to make room.
/// - **Expiry evicts.** An expired entry reads as absent and is removed when touched; every
///   insert also sweeps all expired entries out at most every 30 seconds (and, when the store
///   is full, at most every second before refusing). [`MemoryStore::purge_expired`] does it on
///   demand.
/// - **Atomic.** Each method is one step under the shard lock of its key; no lock is held
///   across an `.await` (there is none).
///
/// Clones share the same maps.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Pending flows, each in its [`PendingFlow::encode`]d form.
    flows: Map,
    /// Code records, each in its [`CodeRecord::encode`]d form, whose state and failure count
    /// are changed in place.
    codes: Map,
    len: AtomicUsize,
    capacity: usize,
    sweep_interval_ms: AtomicU64,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last sweep.
    last_sweep: AtomicU64,
    /// Held while sweeping on demand, so one sweep runs at a time and a caller that finds
    /// the store full can wait for the sweep already under way instead of failing.
    sweeping: Mutex<()>,
}

/// A map from the first half of a key's SHA-256 (collisions need 2^64 work even among a
/// billion entries) to an expiry and an encoded record: 40 bytes a slot, so a million
/// entries cost what they hold plus a little, not the width of decoded structures.
type Map = DashMap<Key, Timed>;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key([u8; 16]);

impl Key {
    fn of(key: StoreKey) -> Self {
        Self(
            key.as_bytes()
                .first_chunk::<16>()
                .copied()
                .unwrap_or_default(),
        )
    }
}

#[derive(Debug)]
struct Timed {
    /// Milliseconds after the store's epoch.
    expires_ms: u64,
    record: Box<[u8]>,
}

impl Timed {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }
}

/// `now + ttl` in the store's milliseconds, saturating instead of overflowing for an absurd
/// TTL.
fn deadline(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding at most [`DEFAULT_CAPACITY`] entries.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store holding at most `capacity` entries (pending flows plus code records).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                flows: DashMap::new(),
                codes: DashMap::new(),
                len: AtomicUsize::new(0),
                capacity,
                sweep_interval_ms: AtomicU64::new(DEFAULT_SWEEP_INTERVAL.as_millis() as u64),
                epoch: Instant::now(),
                last_sweep: AtomicU64::new(0),
                sweeping: Mutex::new(()),
            }),
        }
    }

    /// Sets the longest time between two sweeps of expired entries (default 30 seconds), for
    /// this store and every clone of it.
    #[must_use]
    pub fn sweep_interval(self, interval: Duration) -> Self {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.inner.sweep_interval_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Entries held now, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether the store holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every expired entry now; returns how many.
    pub fn purge_expired(&self) -> usize {
        self.inner.sweep(Instant::now())
    }
}

impl Inner {
    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn sweep(&self, now: Instant) -> usize {
        let now = self.millis(now);
        self.last_sweep.store(now, Ordering::Relaxed);
        let mut removed = 0;
        self.flows.retain(|_, v| {
            let keep = v.live(now);
            removed += usize::from(!keep);
            keep
        });
        self.codes.retain(|_, v| {
            let keep = v.live(now);
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Sweeps if the last sweep is older than `interval`. With `wait`, a sweep already under
    /// way is waited for (its result is what the caller needs); without, it is left alone.
    fn sweep_if_due(&self, now: Instant, interval_ms: u64, wait: bool) {
        let now_ms = self.millis(now);
        // A sweep marks its start, so a caller that waits must not skip the lock on that
        // mark: the sweep it would skip is the one still under way.
        if !wait && now_ms.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) < interval_ms {
            return;
        }
        let _guard = if wait {
            self.sweeping.lock().unwrap_or_else(PoisonError::into_inner)
        } else {
            match self.sweeping.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            }
        };
        // Whoever held the lock before may have just swept.
        if now_ms.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) >= interval_ms {
            self.sweep(now);
        }
    }

    /// Takes one slot of the capacity, sweeping once if the store looks full (or waiting for
    /// the sweep another caller is running, which may free the slot this one needs).
    fn reserve(&self, now: Instant) -> Result<(), StoreError> {
        self.sweep_if_due(now, self.sweep_interval_ms.load(Ordering::Relaxed), false);
        for attempt in 0..2 {
            if self.len.fetch_add(1, Ordering::Relaxed) < self.capacity {
                return Ok(());
            }
            self.len.fetch_sub(1, Ordering::Relaxed);
            if attempt == 0 {
                self.sweep_if_due(now, FULL_SWEEP_INTERVAL.as_millis() as u64, true);
            }
        }
        Err(StoreError::Full)
    }

    fn release(&self) {
        self.len.fetch_sub(1, Ordering::Relaxed);
    }

    /// Inserts unless a live entry holds the key; an expired one is replaced. The slot must
    /// have been reserved; it is given back when nothing was inserted or an expired entry was
    /// replaced.
    fn insert_reserved(
        &self,
        map: &Map,
        key: StoreKey,
        record: Vec<u8>,
        ttl: Duration,
        now: Instant,
    ) -> bool {
        let now = self.millis(now);
        let timed = Timed {
            expires_ms: deadline(now, ttl),
            record: record.into_boxed_slice(),
        };
        match map.entry(Key::of(key)) {
            Entry::Vacant(slot) => {
                slot.insert(timed);
                true
            }
            Entry::Occupied(mut slot) if !slot.get().live(now) => {
                slot.insert(timed);
                self.release();
                true
            }
            Entry::Occupied(_) => {
                self.release();
                false
            }
        }
    }

    fn take_flow(&self, key: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        let now = self.millis(Instant::now());
        let Some((_, timed)) = self.flows.remove(&Key::of(key)) else {
            return Ok(None);
        };
        self.release();
        if !timed.live(now) {
            return Ok(None);
        }
        PendingFlow::decode(&timed.record).map(Some)
    }

    /// Reads a live entry and decodes it; an expired one is removed.
    fn read<T>(
        &self,
        map: &Map,
        key: StoreKey,
        decode: impl FnOnce(&[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let now = self.millis(Instant::now());
        let key = Key::of(key);
        let found = map
            .get(&key)
            .map(|t| t.live(now).then(|| decode(&t.record)));
        match found {
            Some(Some(value)) => value.map(Some),
            Some(None) => {
                self.remove_expired(map, key, now);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn remove_expired(&self, map: &Map, key: Key, now_ms: u64) {
        if map.remove_if(&key, |_, t| !t.live(now_ms)).is_some() {
            self.release();
        }
    }

    /// Applies `change` to a live code record's state and failure count, under its shard
    /// lock.
    fn update_code<R>(
        &self,
        key: StoreKey,
        change: impl FnOnce(&mut u8, &mut [u8; 4]) -> R,
    ) -> Result<Option<R>, StoreError> {
        let now = self.millis(Instant::now());
        let key = Key::of(key);
        let Some(mut entry) = self.codes.get_mut(&key) else {
            return Ok(None);
        };
        if !entry.live(now) {
            drop(entry);
            self.remove_expired(&self.codes, key, now);
            return Ok(None);
        }
        // In place, not decoded and encoded again: saves ~700 instructions (1.2 %) and 2 mallocs
        // per flow: benches/flow_instructions.sh, issue 16.
        let (state, failures) = code_tail_mut(&mut entry.record)
            .ok_or_else(|| StoreError::backend("corrupt record"))?;
        Ok(Some(change(state, failures)))
    }
}

/// The store's steps, done on the spot: what the [`ChallengeStore`] methods return as ready
/// futures, and what the layer calls directly when its store is a `MemoryStore`.
impl MemoryStore {
    /// Whether both are clones of one store.
    #[cfg(test)]
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn create_flow_now(
        &self,
        handle: StoreKey,
        flow: PendingFlow,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.create_flow_encoded(handle, flow.encode(), ttl)
    }

    /// [`create_flow_now`](Self::create_flow_now) of a flow already encoded.
    pub(crate) fn create_flow_encoded(
        &self,
        handle: StoreKey,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let now = Instant::now();
        inner
            .reserve(now)
            .map(|()| inner.insert_reserved(&inner.flows, handle, record, ttl, now))
    }

    pub(crate) fn flow_now(&self, handle: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        self.inner
            .read(&self.inner.flows, handle, PendingFlow::decode)
    }

    pub(crate) fn take_flow_now(
        &self,
        handle: StoreKey,
    ) -> Result<Option<PendingFlow>, StoreError> {
        self.inner.take_flow(handle)
    }

    pub(crate) fn bind_code_now(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let record = CodeRecord::new(binding, CodeState::Live);
        Ok(self.bind_code_encoded(code, record.encode(), ttl))
    }

    /// [`bind_code_now`](Self::bind_code_now) of a `Live` record already encoded.
    pub(crate) fn bind_code_encoded(&self, code: StoreKey, record: Vec<u8>, ttl: Duration) -> bool {
        let inner = &self.inner;
        // The flow this code comes from just gave its slot back: no capacity check.
        inner.len.fetch_add(1, Ordering::Relaxed);
        inner.insert_reserved(&inner.codes, code, record, ttl, Instant::now())
    }

    pub(crate) fn record_redemption_now(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let now = Instant::now();
        let record = CodeRecord::new(binding, CodeState::Redeemed);
        inner
            .reserve(now)
            .map(|()| inner.insert_reserved(&inner.codes, code, record.encode(), ttl, now))
    }

    pub(crate) fn code_now(&self, code: StoreKey) -> Result<Option<CodeRecord>, StoreError> {
        self.inner.read(&self.inner.codes, code, CodeRecord::decode)
    }

    pub(crate) fn redeem_now(&self, code: StoreKey) -> Result<bool, StoreError> {
        let won = self.inner.update_code(code, |state, _| {
            let live = *state == CodeState::Live.to_byte();
            if live {
                *state = CodeState::Redeemed.to_byte();
            }
            live
        });
        won.map(|won| won.unwrap_or(false))
    }

    pub(crate) fn unredeem_now(&self, code: StoreKey) -> Result<bool, StoreError> {
        let done = self.inner.update_code(code, |state, _| {
            let redeemed = *state == CodeState::Redeemed.to_byte();
            if redeemed {
                *state = CodeState::Live.to_byte();
            }
            redeemed
        });
        done.map(|done| done.unwrap_or(false))
    }

    pub(crate) fn record_failure_now(
        &self,
        code: StoreKey,
        max_failures: u32,
    ) -> Result<Option<CodeState>, StoreError> {
        let state = self.inner.update_code(code, |state, failures| {
            if *state == CodeState::Live.to_byte() {
                let count = u32::from_be_bytes(*failures).saturating_add(1);
                *failures = count.to_be_bytes();
                if count >= max_failures {
                    *state = CodeState::Burned.to_byte();
                }
            }
            CodeState::from_byte(*state).ok_or_else(|| StoreError::backend("corrupt record"))
        });
        state.and_then(Option::transpose)
    }
}

impl ChallengeStore for MemoryStore {
    fn create_flow(
        &self,
        handle: StoreKey,
        flow: PendingFlow,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(self.create_flow_now(handle, flow, ttl))
    }

    fn flow(
        &self,
        handle: StoreKey,
    ) -> impl Future<Output = Result<Option<PendingFlow>, StoreError>> + Send {
        ready(self.flow_now(handle))
    }

    fn take_flow(
        &self,
        handle: StoreKey,
    ) -> impl Future<Output = Result<Option<PendingFlow>, StoreError>> + Send {
        ready(self.take_flow_now(handle))
    }

    fn bind_code(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(self.bind_code_now(code, binding, ttl))
    }

    fn record_redemption(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(self.record_redemption_now(code, binding, ttl))
    }

    fn code(
        &self,
        code: StoreKey,
    ) -> impl Future<Output = Result<Option<CodeRecord>, StoreError>> + Send {
        ready(self.code_now(code))
    }

    fn redeem(&self, code: StoreKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(self.redeem_now(code))
    }

    fn unredeem(&self, code: StoreKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(self.unredeem_now(code))
    }

    fn record_failure(
        &self,
        code: StoreKey,
        max_failures: u32,
    ) -> impl Future<Output = Result<Option<CodeState>, StoreError>> + Send {
        ready(self.record_failure_now(code, max_failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client: &str) -> PendingFlow {
        PendingFlow::new(None, client, None, Some("s"))
    }

    fn binding() -> CodeBinding {
        CodeBinding::new(None, "app")
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn capacity_refuses_new_flows_and_never_evicts_live_ones() {
        let store = MemoryStore::with_capacity(2);
        let (a, b, c) = (
            StoreKey::for_handle("a"),
            StoreKey::for_handle("b"),
            StoreKey::for_handle("c"),
        );
        assert!(store.create_flow(a, flow("1"), TTL).await.unwrap());
        assert!(store.create_flow(b, flow("2"), TTL).await.unwrap());
        assert!(matches!(
            store.create_flow(c, flow("3"), TTL).await,
            Err(StoreError::Full)
        ));
        assert!(store.flow(a).await.unwrap().is_some());
        assert!(store.flow(b).await.unwrap().is_some());
        assert_eq!(store.len(), 2);
        // Taking a flow frees its slot.
        assert!(store.take_flow(a).await.unwrap().is_some());
        assert!(store.create_flow(c, flow("3"), TTL).await.unwrap());
        // A tombstone for an unseen code needs a slot too.
        assert!(matches!(
            store
                .record_redemption(StoreKey::for_code(b"x"), binding(), TTL)
                .await,
            Err(StoreError::Full)
        ));
    }

    #[tokio::test]
    async fn expired_entries_read_as_absent_and_are_evicted() {
        let store = MemoryStore::with_capacity(10).sweep_interval(Duration::ZERO);
        let short = Duration::from_millis(30);
        let (a, code) = (StoreKey::for_handle("a"), StoreKey::for_code(b"c"));
        assert!(store.create_flow(a, flow("1"), short).await.unwrap());
        assert!(store.bind_code(code, binding(), short).await.unwrap());
        assert_eq!(store.len(), 2);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(store.flow(a).await.unwrap().is_none());
        assert!(store.code(code).await.unwrap().is_none());
        assert!(!store.redeem(code).await.unwrap());
        assert_eq!(store.len(), 0, "reads remove expired entries");

        // A sweep removes entries nobody touches again.
        for i in 0..5 {
            let key = StoreKey::for_handle(&i.to_string());
            assert!(store.create_flow(key, flow("1"), short).await.unwrap());
        }
        assert_eq!(store.len(), 5);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.purge_expired(), 5);
        assert_eq!(store.len(), 0);
        assert!(store.inner.flows.is_empty());
    }

    #[tokio::test]
    async fn a_full_store_sweeps_expired_entries_before_refusing() {
        let store = MemoryStore::with_capacity(1).sweep_interval(Duration::from_secs(3600));
        let short = Duration::from_millis(20);
        assert!(store
            .create_flow(StoreKey::for_handle("a"), flow("1"), short)
            .await
            .unwrap());
        // Pretend the last sweep was long ago, as it would be in a long-running process.
        store.inner.last_sweep.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(store
            .create_flow(StoreKey::for_handle("b"), flow("2"), TTL)
            .await
            .unwrap());
        assert_eq!(store.len(), 1);
    }

    /// A caller that finds the store full while another is sweeping waits for that sweep,
    /// instead of answering `Full` while space is being freed (found by the soak test: a
    /// burst of 503s each time a full store of expired entries was swept).
    #[test]
    fn a_full_store_waits_for_the_sweep_under_way() {
        let store = MemoryStore::with_capacity(2).sweep_interval(Duration::from_secs(3600));
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        for name in ["a", "b"] {
            let created = rt().block_on(store.create_flow(
                StoreKey::for_handle(name),
                flow("1"),
                Duration::from_millis(1),
            ));
            assert!(created.unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
        // Another caller is sweeping: it holds the lock and has marked the sweep's start.
        let sweeping = store.inner.sweeping.lock().unwrap();
        let now = Instant::now();
        store
            .inner
            .last_sweep
            .store(store.inner.millis(now), Ordering::Relaxed);
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || {
                rt().block_on(store.create_flow(StoreKey::for_handle("c"), flow("2"), TTL))
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !waiter.is_finished(),
            "the caller gave up instead of waiting"
        );
        assert_eq!(store.inner.sweep(now), 2);
        drop(sweeping);
        assert!(
            waiter.join().unwrap().unwrap(),
            "refused although space was freed"
        );
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn an_absurd_ttl_does_not_panic() {
        let store = MemoryStore::new();
        let key = StoreKey::for_handle("a");
        assert!(store
            .create_flow(key, flow("1"), Duration::MAX)
            .await
            .unwrap());
        assert!(store.flow(key).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn keys_are_not_overwritten() {
        let store = MemoryStore::new();
        let key = StoreKey::for_handle("a");
        assert!(store.create_flow(key, flow("1"), TTL).await.unwrap());
        assert!(!store.create_flow(key, flow("2"), TTL).await.unwrap());
        assert_eq!(store.flow(key).await.unwrap().unwrap().client_id(), "1");
        assert_eq!(store.len(), 1);
        let code = StoreKey::for_code(b"c");
        assert!(store.bind_code(code, binding(), TTL).await.unwrap());
        assert!(!store.bind_code(code, binding(), TTL).await.unwrap());
        assert!(!store.record_redemption(code, binding(), TTL).await.unwrap());
        assert_eq!(store.len(), 2);
    }
}
