//! A TCC participant under load, for the SQL fence's crash test to kill:
//! four workers call Try, Confirm and Cancel on random branches of `XIDS`
//! global transactions through `SqlFence`, with the ledger
//! (`paytrace_integration::ledger`) as the business side: repeats,
//! reorderings (a Cancel before its Try, a Confirm without one) and
//! concurrent calls for one branch, as a coordinator's retries and a
//! network make them. Each worker prints `calls N` every 10 calls, until the
//! test kills the process.
//!
//! `fence_load DATABASE_URL SEED XIDS` (the URL's scheme picks the database:
//! `sqlite:`, `postgres:`, `mysql:`).

use paytrace::tcc::Phase;
use paytrace_integration::ledger::{self, branch};
use rand::{RngExt, SeedableRng};

const WORKERS: u64 = 4;

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, seed, xids] = args.as_slice() else {
        return Err("usage: fence_load DATABASE_URL SEED XIDS".into());
    };
    let seed: u64 = seed.parse().map_err(|e| format!("SEED: {e}"))?;
    let xids: u32 = xids.parse().map_err(|e| format!("XIDS: {e}"))?;
    let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
    let fence = svc.tcc_sql("inventory");
    let mut workers = tokio::task::JoinSet::new();
    macro_rules! load_on {
        ($db:ident) => {{
            let pool = ledger::$db::connect(url, WORKERS as u32).await;
            for worker in 0..WORKERS {
                let (pool, fence) = (pool.clone(), fence.clone());
                workers.spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + worker);
                    for calls in 1u64.. {
                        let key = branch(&format!("ord_{}", rng.random_range(0..xids)));
                        let phase = match rng.random_range(0..10) {
                            0..4 => Phase::Try,
                            4..7 => Phase::Confirm,
                            _ => Phase::Cancel,
                        };
                        // Refusals, busy answers and failed handlers are all
                        // what a participant sees; the test checks the rows.
                        let _ = ledger::$db::call(&fence, &pool, phase, &key, false).await;
                        if calls % 10 == 0 {
                            println!("calls {calls}");
                        }
                    }
                });
            }
        }};
    }
    match url.split(':').next() {
        Some("sqlite") => load_on!(sqlite),
        Some("postgres") => load_on!(postgres),
        Some("mysql") => load_on!(mysql),
        _ => return Err(format!("{url}: not a sqlite:, postgres: or mysql: URL")),
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| format!("a worker failed: {e}"))?;
    }
    Ok(())
}
