//! Measures what one pending flow and one bound code cost in Redis: writes N of each through
//! `RedisStore` into an empty database and reads `used_memory` before and after.
//!
//! ```text
//! redis-server --port 6390 --save "" --appendonly no &
//! cargo run --release --example redis_sizing -- redis://127.0.0.1:6390/15 100000
//! ```
//!
//! The database is flushed first: point it at a scratch server.

use std::time::Duration;

use tower_pkce::store::{CodeBinding, PendingFlow, StoreKey};
use tower_pkce::{ChallengeMethod, ChallengeStore, CodeChallenge, CodeVerifier, RedisStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6390/15".into());
    let n: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;

    let client = redis::Client::open(url.as_str())?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHDB").exec_async(&mut admin).await?;
    let store = RedisStore::open(&url)?.timeout(Duration::from_secs(5));

    // A typical flow: a 43-character S256 challenge, a short client id, an https redirect
    // URI and a 32-character client state.
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

    let before = used_memory(&mut admin).await?;
    for i in 0..n {
        let handle = StoreKey::for_handle(&format!("handle-{i}"));
        store.create_flow(handle, flow.clone(), ttl).await?;
    }
    let flows = used_memory(&mut admin).await?;
    for i in 0..n {
        let code = StoreKey::for_code(format!("code-{i}").as_bytes());
        store.bind_code(code, binding.clone(), ttl).await?;
    }
    let codes = used_memory(&mut admin).await?;
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / n as f64;
    println!("entries of each kind: {n}");
    println!(
        "pending flow: {:.0} bytes each ({} byte value)",
        per(before, flows),
        flow.encode().len()
    );
    println!(
        "bound code:   {:.0} bytes each ({} byte value)",
        per(flows, codes),
        tower_pkce::store::CodeRecord::new(binding, tower_pkce::store::CodeState::Live)
            .encode()
            .len()
    );
    redis::cmd("FLUSHDB").exec_async(&mut admin).await?;
    Ok(())
}

async fn used_memory(
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, Box<dyn std::error::Error>> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .ok_or("no used_memory in INFO")?
        .trim()
        .parse()
        .map_err(Into::into)
}
