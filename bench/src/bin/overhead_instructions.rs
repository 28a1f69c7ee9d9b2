//! Instructions per request and per stage, counted by callgrind, for every
//! set-up of the `overhead` benchmark: repeatable where wall-clock time on a
//! shared VM is not.
//!
//! ```sh
//! cargo build --release -p paytrace-bench --bin overhead_instructions
//! for variant in $(target/release/overhead_instructions --list); do
//!   for n in 1000 2000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!       target/release/overhead_instructions "$variant" $n 2>&1 | grep Collected
//!   done
//! done
//! ```
//!
//! The difference between the two counts, divided by 1,000, is the cost of
//! one request or stage, the export thread's share included (take the least
//! of a few runs: an export batch that falls into one run and not the other
//! shows as an outlier). Both counts stay under the export queue's 2,048
//! spans, so no set-up drops spans.

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_default();
    if variant == "--list" {
        paytrace_bench::variants::names()
            .iter()
            .for_each(|v| println!("{v}"));
        return;
    }
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    paytrace_bench::count_instructions();
    if let Err(e) = paytrace_bench::variants::run(&variant, n, &mut |_| {}) {
        eprintln!("usage: overhead_instructions VARIANT [N]: {e}");
        std::process::exit(2);
    }
}
