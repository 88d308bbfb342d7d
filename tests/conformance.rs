//! Runs the 80286 real-mode conformance vectors through `hospes conformance`: checks the
//! pass rate the CPU-core issue asks for (>= 99.5% of all vectors, skipped ones counted
//! as not passed) under the interpreter, and that the JIT, compiling every block, gets
//! exactly the interpreter's results, opcode by opcode and vector by vector.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The suite, or None (with one line saying so) when it is absent.
fn suite() -> Option<PathBuf> {
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/80286");
    if suite.is_dir() {
        Some(suite)
    } else {
        eprintln!(
            "skipped: {} is absent (it ships beside the repository in CI)",
            suite.display()
        );
        None
    }
}

/// `hospes conformance` on the suite in `tier`, every failing vector listed on stderr.
fn command(suite: &PathBuf, tier: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hospes"));
    c.arg("conformance")
        .arg("--suite")
        .arg(suite)
        .args(["--tier", tier, "--show-failures", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn check_status(tier: &str, out: &Output) {
    assert!(
        out.status.success(),
        "hospes conformance --tier {tier} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The interpreter's run, made once for the tests that need it.
fn interpreter_run(suite: &PathBuf) -> &'static Output {
    static RUN: OnceLock<Output> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = command(suite, "interp").output().expect("run hospes");
        check_status("interp", &out);
        out
    })
}

#[test]
fn conformance_80286_real_mode() {
    let Some(suite) = suite() else { return };
    let out = interpreter_run(&suite);
    let stdout = String::from_utf8_lossy(&out.stdout);
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

/// What must be the same in both tiers: the per-opcode table (passed, failed, skipped,
/// first failure), the totals, and the failing vectors with their differences; not the
/// timing line or the JIT's counters.
fn results(out: &Output) -> (Vec<String>, Vec<String>) {
    let table = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" instructions in ") && !l.starts_with("JIT: "))
        .map(str::to_string)
        .collect();
    let mut failures: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    failures.sort();
    (table, failures)
}

#[test]
fn conformance_80286_forced_jit_matches_interpreter() {
    let Some(suite) = suite() else { return };
    let jit = command(&suite, "jit").spawn().expect("run hospes");
    let interp = interpreter_run(&suite);
    let jit = jit.wait_with_output().expect("wait for hospes");
    check_status("jit", &jit);
    let stdout = String::from_utf8_lossy(&jit.stdout);
    let compiled: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JIT: "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no JIT counters in the report:\n{stdout}"));
    assert!(compiled > 1000, "the JIT compiled only {compiled} blocks");
    let (want, got) = (results(interp), results(&jit));
    for (w, g) in want.0.iter().zip(&got.0) {
        assert_eq!(w, g, "per-opcode results differ (interp, then jit)");
    }
    assert_eq!(want.0.len(), got.0.len(), "report lengths differ");
    assert_eq!(want.1, got.1, "failing vectors differ (interp, then jit)");
}
