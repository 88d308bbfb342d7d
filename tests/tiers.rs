//! `--tier interp|jit|auto`: a bad value is one line and a non-zero exit, and the demo
//! guest prints and shows the same in every tier.

use std::process::Command;

#[test]
fn bad_tier_is_one_line_and_nonzero() {
    for args in [
        &["run", "--tier", "bogus", "--kernel", "/nonexistent"][..],
        &["demo", "--tier", "bogus", "--display", "none"],
        &["conformance", "--tier", "bogus", "--suite", "/nonexistent"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
            .args(args)
            .output()
            .expect("run hospes");
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: stderr: {stderr}");
        assert!(
            stderr.starts_with("hospes: ") && stderr.contains("bogus"),
            "{args:?}: stderr: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn demo_guest_is_the_same_in_every_tier() {
    let dir = std::env::temp_dir();
    let run = |tier: &str| {
        let text = dir.join(format!("hospes-tiers-{}-{tier}.txt", std::process::id()));
        let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
            .args(["demo", "--display", "none", "--tier", tier])
            .arg("--screen-text-on-exit")
            .arg(&text)
            .output()
            .expect("run hospes");
        assert!(out.status.success(), "--tier {tier}: {out:?}");
        let screen = std::fs::read_to_string(&text).expect("screen text");
        let _ = std::fs::remove_file(&text);
        (out.stdout, screen)
    };
    let interp = run("interp");
    assert!(
        String::from_utf8_lossy(&interp.0).contains("demo finished: powering off"),
        "{}",
        String::from_utf8_lossy(&interp.0)
    );
    for tier in ["jit", "auto"] {
        assert_eq!(run(tier), interp, "--tier {tier} against --tier interp");
    }
}
