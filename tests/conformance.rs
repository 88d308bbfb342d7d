//! Runs the 80286 real-mode conformance vectors through `hospes conformance` and checks
//! the pass rate the CPU-core issue asks for (>= 99.5% of all vectors, skipped ones
//! counted as not passed).

use std::path::Path;
use std::process::Command;

#[test]
fn conformance_80286_real_mode() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/80286");
    if !suite.is_dir() {
        eprintln!(
            "skipped: {} is absent (it ships beside the repository in CI)",
            suite.display()
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .arg("conformance")
        .arg("--suite")
        .arg(&suite)
        .output()
        .expect("run hospes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hospes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("output");
    let nums: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 2, "last line is `N passed, M failed`: {last}");
    let (passed, failed) = (nums[0], nums[1]);
    let skipped: u64 = stdout
        .lines()
        .find_map(|l| {
            l.split_once(" skipped (see")
                .map(|(head, _)| head.to_string())
        })
        .and_then(|head| head.rsplit(", ").next()?.split(' ').next()?.parse().ok())
        .expect("skipped count line");
    let total = passed + failed + skipped;
    assert!(
        total >= 80_000,
        "expected the whole suite, got {total} vectors"
    );
    let rate = passed as f64 / total as f64;
    eprintln!(
        "{passed} passed, {failed} failed, {skipped} skipped: {:.3}%",
        rate * 100.0
    );
    assert!(
        rate >= 0.995,
        "pass rate {:.3}% below 99.5%\n{stdout}",
        rate * 100.0
    );
}
