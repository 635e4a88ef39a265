//! Measures what one pending flow and one bound code cost in `MemoryStore`: inserts N of each
//! (default 1 000 000) and reads the growth of the resident set size (Linux `/proc`).
//!
//! ```text
//! cargo run --release --example memory_sizing -- 1000000
//! ```
//!
//! The entries are the same typical flow as `examples/redis_sizing.rs`: a 43-character S256
//! challenge, a short client id, an https redirect URI and a 32-character client state.

use std::time::Duration;

use tower_pkce::store::{CodeBinding, PendingFlow, StoreKey};
use tower_pkce::{ChallengeMethod, ChallengeStore, CodeChallenge, CodeVerifier, MemoryStore};

/// The resident set size in KiB, which includes the map's tables and the allocator's own
/// overhead: what an operator sees.
fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let verifier = CodeVerifier::parse("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")?;
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let flow = PendingFlow::new(
        Some(challenge.clone()),
        "mobile-app",
        Some("https://app.example.com/oauth/callback"),
        Some("af0ifjsldkj3n4k5j6l7k8m9n0b1v2c3"),
    );
    let binding = CodeBinding::new(Some(challenge), "mobile-app");
    let ttl = Duration::from_secs(600);
    // Keys are made before counting: the layer computes them from the request anyway.
    let handles: Vec<StoreKey> = (0..n)
        .map(|i| StoreKey::for_handle(&format!("handle-{i}")))
        .collect();
    let codes: Vec<StoreKey> = (0..n)
        .map(|i| StoreKey::for_code(format!("code-{i}").as_bytes()))
        .collect();

    let store = MemoryStore::with_capacity(2 * n);
    let rss0 = rss_kib();
    for handle in handles {
        store.create_flow(handle, flow.clone(), ttl).await?;
    }
    let rss1 = rss_kib();
    for code in codes {
        store.bind_code(code, binding.clone(), ttl).await?;
    }
    let rss2 = rss_kib();
    assert_eq!(store.len(), 2 * n);

    let per = |a: usize, b: usize| b.saturating_sub(a) as f64 / n as f64;
    println!("entries of each kind: {n}");
    println!("pending flow: {:.0} bytes each", per(rss0, rss1) * 1024.0);
    println!("bound code:   {:.0} bytes each", per(rss1, rss2) * 1024.0);
    Ok(())
}
