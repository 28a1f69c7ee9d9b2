//! What changed, on the real demo: two runs of 150 s side by side, one
//! whose wechat_pay channel slows twentyfold 70 s in (`--chaos
//! channel-slow --chaos-after 70s`), one clean with the same timing. The
//! report's `changes` (the minutes since the 70th second against those
//! before, as `/api/v1/changes` computes them) ranks wechat_pay's
//! `channel.request` first, significant and most of the end-to-end
//! increase, in the first; and finds nothing significant in the second.

mod monitoring;

use serde_json::Value;

fn run(name: &str, port_base: u16, chaos: &[&str]) -> Value {
    let port_base = port_base.to_string();
    let mut args = vec![
        "--duration",
        "150s",
        "--rps",
        "6",
        "--port-base",
        &port_base,
        "--chaos-after",
        "70s",
        "--chaos-channel",
        "wechat_pay",
    ];
    args.extend_from_slice(chaos);
    monitoring::demo_report(name, &args, &[])
}

#[test]
fn a_slowed_channel_is_named_first_and_a_clean_run_raises_nothing() {
    let (slowed, clean) = std::thread::scope(|s| {
        let slowed = s.spawn(|| run("changes-slowed", 7300, &["--chaos", "channel-slow"]));
        let clean = s.spawn(|| run("changes-clean", 7400, &[]));
        (
            slowed.join().expect("the slowed run"),
            clean.join().expect("the clean run"),
        )
    });

    let changes = &slowed["changes"];
    assert_eq!(changes["not_compared"], Value::Null, "{changes:#}");
    let first = &changes["latency"][0];
    assert_eq!(first["stage"], "channel.request", "{changes:#}");
    assert_eq!(first["payment_method"], "wechat_pay", "{changes:#}");
    let statistic = first["statistic"].as_f64().unwrap_or(f64::INFINITY);
    assert!(statistic >= 5.0, "{first:#}");
    let share = first["share_of_change"].as_f64().expect("end to end grew");
    assert!(share > 0.5, "most of the increase: {first:#}");
    assert!(
        first["current_mean"].as_f64() > first["baseline_mean"].as_f64().map(|b| b * 3.0),
        "{first:#}"
    );
    let summary = first["summary"].as_str().expect("a summary");
    assert!(
        summary.starts_with("wechat_pay via wxpay channel.request: critical path +"),
        "{summary}"
    );
    // The other methods' channels did not change.
    for finding in changes["latency"].as_array().expect("findings") {
        assert_ne!(finding["payment_method"], "alipay", "{finding:#}");
        assert_ne!(finding["payment_method"], "card", "{finding:#}");
    }

    let nothing = &clean["changes"];
    assert_eq!(nothing["not_compared"], Value::Null, "{nothing:#}");
    assert_eq!(
        nothing["latency"],
        Value::Array(vec![]),
        "a false alarm: {nothing:#}"
    );
    assert_eq!(
        nothing["errors"],
        Value::Array(vec![]),
        "a false alarm: {nothing:#}"
    );
}
