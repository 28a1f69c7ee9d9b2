//! A TCC participant that dies holding a branch: runs a Try through the
//! Redis fence whose handler announces itself on stdout (`holding`) and
//! then never returns, until the test kills the process.
//!
//! `hold_branch REDIS_URL PREFIX XID LEASE_MS`

use std::sync::Arc;
use std::time::Duration;

use paytrace::tcc::{BranchKey, Phase, RedisFence};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, prefix, xid, lease_ms] = args.as_slice() else {
        return Err("usage: hold_branch REDIS_URL PREFIX XID LEASE_MS".into());
    };
    let lease = Duration::from_millis(lease_ms.parse().map_err(|e| format!("LEASE_MS: {e}"))?);
    let fence = RedisFence::connect(url, prefix, Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?
        .with_lease(lease);
    let svc = paytrace::ServiceTelemetry::new("inventory", "1.0.0");
    let stock = svc.tcc("inventory", Arc::new(fence));
    let branch = BranchKey {
        xid: xid.clone(),
        branch_id: "b".into(),
    };
    let answer = stock
        .run(Phase::Try, &branch, || async {
            println!("holding");
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .await;
    Err(format!("the handler never returns, yet: {answer:?}"))
}
