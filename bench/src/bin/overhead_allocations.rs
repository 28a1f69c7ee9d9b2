//! Heap allocations per request, stage, call or message of every variant
//! of `overhead_instructions`: what a variant allocates between its
//! 1,000th and 2,000th iteration, divided by 1,000 (the set-up and the
//! first iterations' one-off growth left out).
//!
//! ```sh
//! cargo build --release -p paytrace-bench --bin overhead_allocations
//! target/release/overhead_allocations            # every variant
//! target/release/overhead_allocations request/paytrace
//! ```
//!
//! Counted by dhat's global allocator (`dhat::HeapStats`); the export thread
//! stays idle (as when counting instructions), so what is counted is the
//! variant's own path.

// dhat counts every allocation of the process (its "testing" mode keeps no
// profile file); the counting code is the crate's, not unsafe code here.
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

const FROM: u32 = 1_000;
const TO: u32 = 2_000;

fn main() {
    let wanted: Vec<String> = match std::env::args().nth(1) {
        Some(v) => vec![v],
        None => paytrace_bench::variants::names(),
    };
    paytrace_bench::count_instructions();
    let _profiler = dhat::Profiler::builder().testing().build();
    println!("{:<58} {:>12} {:>12}", "variant", "allocations", "bytes");
    for variant in wanted {
        let mut at_from = (0, 0);
        let mut at_to = (0, 0);
        let read = || {
            let stats = dhat::HeapStats::get();
            (stats.total_blocks, stats.total_bytes)
        };
        let result = paytrace_bench::variants::run(&variant, TO, &mut |i| {
            if i == FROM {
                at_from = read();
            } else if i == TO {
                at_to = read();
            }
        });
        if let Err(e) = result {
            eprintln!("{e}");
            std::process::exit(2);
        }
        let per = |a: u64, b: u64| (b - a) as f64 / f64::from(TO - FROM);
        println!(
            "{variant:<58} {:>12.1} {:>12.0}",
            per(at_from.0, at_to.0),
            per(at_from.1, at_to.1)
        );
    }
}
