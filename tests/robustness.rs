//! Random instruction streams through the interpreter in every mode: real, 16-bit
//! protected, 32-bit protected, 32-bit with paging, and virtual-8086. At least 10^7
//! instructions each, checking that nothing panics, every `run` returns, the TLB never
//! points outside guest memory, and the same seed gives the same machine state.

mod random_streams;

use hospes_cpu::{Cpu, Exit};
use random_streams::*;
use std::time::{Duration, Instant};

fn run_mode(mode: Mode, seed: u64, target: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut cpu = Cpu::new(RAM, 0).unwrap();
    let mut bus = NoiseBus;
    // Random data everywhere the code may touch.
    let noise: Vec<u8> = (0..RAM / 4).map(|_| rng.next() as u8).collect();
    cpu.write_phys(0x40_0000, &noise);
    setup_tables(&mut cpu, &mut rng);
    let start = Instant::now();
    let mut executed = 0u64;
    let mut streams = 0u64;
    while executed < target {
        cpu.write_phys(CODE as u64, &random_code(&mut rng));
        setup_tables(&mut cpu, &mut rng);
        enter_mode(&mut cpu, mode, &mut rng);
        cpu.shutdown = false;
        streams += 1;
        // A stream ends when it halts (every exception leads to the halt stub) or after
        // a bounded number of instructions.
        for _ in 0..4 {
            let before = cpu.state.icount;
            let t = Instant::now();
            let exit = cpu.run(&mut bus, 50_000);
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{mode:?}: one run call took {:?}",
                t.elapsed()
            );
            executed += cpu.state.icount - before;
            if let Err(e) = cpu.tlb.check_invariants(&cpu.mem) {
                panic!("{mode:?}: TLB entry outside guest memory: {e}");
            }
            if exit != Exit::Budget {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{mode:?}: {executed} instructions in {streams} streams, {secs:.1} s ({:.1} M instr/s)",
        executed as f64 / secs / 1e6
    );
    // Digest: registers, flags, segments and a sample of memory.
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    let mut mix = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0x100_0000_01B3);
    };
    for r in cpu.state.gpr.iter().take(8) {
        mix(*r);
    }
    mix(cpu.state.rip);
    mix(cpu.state.flags.get() as u64);
    mix(cpu.state.icount);
    for s in &cpu.state.seg {
        mix(s.base ^ (s.selector as u64) << 40);
    }
    let mut sample = vec![0u8; 0x1_0000];
    cpu.mem.read(0x8000, &mut sample);
    for chunk in sample.chunks(8) {
        mix(u64::from_le_bytes(chunk.try_into().unwrap()));
    }
    h
}

const TARGET: u64 = 10_000_000;

#[test]
fn random_real_mode() {
    run_mode(Mode::Real, 1, TARGET);
}

#[test]
fn random_protected_16() {
    run_mode(Mode::Protected16, 2, TARGET);
}

#[test]
fn random_protected_32() {
    run_mode(Mode::Protected32, 3, TARGET);
}

#[test]
fn random_paged() {
    run_mode(Mode::Paged, 4, TARGET);
}

#[test]
fn random_v86() {
    run_mode(Mode::V86, 5, TARGET);
}

/// The same seed gives the same machine, bit for bit.
#[test]
fn random_runs_are_deterministic() {
    for mode in [Mode::Real, Mode::Paged, Mode::V86] {
        assert_eq!(
            run_mode(mode, 42, 300_000),
            run_mode(mode, 42, 300_000),
            "{mode:?}"
        );
    }
}
