//! Running a benchmark on one core.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Pins the calling thread, and every thread it starts afterwards, to the
/// first core it may run on; returns that core's number.
///
/// A benchmark that compares "spans per second on one core" across set-ups
/// where some hand work between threads (a gRPC server's connection task,
/// its blocking pool, the client) pins itself first: the threads then share
/// one core as the single-threaded set-ups use one, their CPU time all
/// counts, and a hand-off is a context switch on that core rather than a
/// wake-up of an idle core (which on a virtual machine costs tens of
/// microseconds and varies from run to run).
///
/// ```no_run
/// let core = paytrace_bench::affinity::pin_to_one_core().expect("pinned");
/// eprintln!("running on core {core}");
/// ```
pub fn pin_to_one_core() -> Result<usize, String> {
    let allowed = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| format!("cannot read this thread's CPU affinity: {e}"))?;
    let core = (0..CpuSet::count())
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .ok_or("this thread may run on no core")?;
    let mut one = CpuSet::new();
    one.set(core)
        .map_err(|e| format!("core {core} is out of range: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &one)
        .map_err(|e| format!("cannot pin this thread to core {core}: {e}"))?;
    Ok(core)
}
