//! What the benchmarks share.
#![allow(dead_code)] // each benchmark uses its own part

use std::path::PathBuf;
use std::time::Duration;

/// The middle of some measurements (at least one).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A program on PATH, if there.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}
