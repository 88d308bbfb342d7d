//! What the formats' tests share: scratch directories, running qemu-img (the
//! reference), and repeatable pseudo-random data.

use crate::DiskFormat;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

/// A scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hospes-image-{test}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether qemu-img is there; if not, the test says so in one line (and returns).
pub fn have_qemu_img(test: &str) -> bool {
    let found = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!("{test}: skipped (qemu-img is not on PATH)");
    }
    found
}

/// Runs a program in the scratch directory.
pub fn run(dir: &Scratch, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(&dir.0)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a program that must succeed; gives its standard output.
pub fn run_ok(dir: &Scratch, program: &str, args: &[&str]) -> String {
    let out = run(dir, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// xorshift64*: repeatable test data without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Disk contents in 32 KiB regions of zeros, a compressible pattern, noise, or zeros
/// with a few marks: whole zero clusters, grains and blocks happen too.
pub fn varied_contents(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; len];
    for (i, region) in data.chunks_mut(32 << 10).enumerate() {
        match rng.below(5) {
            0 | 1 => {}
            2 => {
                for (j, b) in region.iter_mut().enumerate() {
                    *b = (j as u8).wrapping_mul(13) ^ (j >> 9) as u8 ^ i as u8;
                }
            }
            3 => region.iter_mut().for_each(|b| *b = rng.next() as u8),
            _ => {
                for _ in 0..6 {
                    let at = rng.below(region.len() as u64) as usize;
                    region[at] = 0xa5;
                }
            }
        }
    }
    data
}

pub fn read_all(image: &mut dyn DiskFormat) -> Vec<u8> {
    let mut data = vec![0u8; image.len() as usize];
    image.read_at(0, &mut data).expect("read the whole image");
    data
}

/// Compares 200 unaligned spans of up to 1/24 of the disk (crossing cluster, grain
/// and block boundaries) with `expected`.
pub fn check_spans(image: &mut dyn DiskFormat, expected: &[u8], seed: u64, what: &str) {
    let mut rng = Rng(seed);
    let longest = (expected.len() / 24).max(1) as u64;
    for _ in 0..200 {
        let len = rng.below(longest) as usize + 1;
        let at = rng.below((expected.len() - len) as u64 + 1) as usize;
        let mut buf = vec![0u8; len];
        image.read_at(at as u64, &mut buf).expect("read a span");
        assert!(
            buf == expected[at..at + len],
            "{what}: {len} bytes at {at:#x} differ"
        );
    }
}
