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
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    match args.next().as_deref() {
        Some("flows") => measure(n, Kind::Flows).await,
        Some("codes") => measure(n, Kind::Codes).await,
        _ => {
            // Each kind in a process of its own, so neither reuses memory the other freed
            // (the maps' old tables while they grow).
            let me = std::env::current_exe()?;
            println!("entries of each kind: {n}");
            for kind in ["flows", "codes"] {
                let out = std::process::Command::new(&me)
                    .args([n.to_string(), kind.to_owned()])
                    .output()?;
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
            Ok(())
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Flows,
    Codes,
}

async fn measure(n: usize, kind: Kind) -> Result<(), Box<dyn std::error::Error>> {
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
    // Keys are made before measuring: the layer computes them from the request anyway.
    let keys: Vec<StoreKey> = (0..n)
        .map(|i| match kind {
            Kind::Flows => StoreKey::for_handle(&format!("handle-{i}")),
            Kind::Codes => StoreKey::for_code(format!("code-{i}").as_bytes()),
        })
        .collect();

    let store = MemoryStore::with_capacity(n);
    let before = rss_kib();
    for key in keys.iter().copied() {
        match kind {
            Kind::Flows => store.create_flow(key, flow.clone(), ttl).await?,
            Kind::Codes => store.bind_code(key, binding.clone(), ttl).await?,
        };
    }
    let after = rss_kib();
    assert_eq!(store.len(), n);
    let each = after.saturating_sub(before) as f64 * 1024.0 / n as f64;
    match kind {
        Kind::Flows => println!("pending flow: {each:.0} bytes each"),
        Kind::Codes => println!("bound code:   {each:.0} bytes each"),
    }
    Ok(())
}
