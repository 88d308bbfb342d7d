//! Interpreter speed: instructions per second on small guest loops.
//! Run with `cargo bench --bench interp`. Prints figures; asserts nothing about speed.

use hospes_cpu::mem::NullBus;
use hospes_cpu::state::*;
use hospes_cpu::{Cpu, Exit};
use iced_x86::code_asm::*;
use std::time::Instant;

const CODE: u64 = 0x1_0000;
const DATA: u32 = 0x10_0000;

/// Flat 32-bit protected mode (segment caches set directly), optionally with paging
/// over an identity map of the first 4 MiB (one 4 MiB page).
fn protected_cpu(paging: bool) -> Cpu {
    let mut cpu = Cpu::new(16 << 20, 0).unwrap();
    let st = &mut cpu.state;
    st.cr0 = CR0_ET | CR0_PE;
    st.seg = [Segment::flat(0x10, false, 0); 6];
    st.seg[CS] = Segment::flat(0x08, true, 0);
    st.gpr[ESP] = 0x9_0000;
    if paging {
        cpu.write_phys(0x20_0000, &0x87u32.to_le_bytes());
        cpu.state.cr3 = 0x20_0000;
        cpu.state.cr4 = CR4_PSE;
        cpu.state.cr0 |= CR0_PG;
    }
    cpu
}

fn measure(name: &str, mut cpu: Cpu, code: Vec<u8>, entry: u64) {
    cpu.write_phys(CODE, &code);
    cpu.state.rip = entry;
    let start = Instant::now();
    let mut bus = NullBus;
    while cpu.run(&mut bus, 10_000_000) == Exit::Budget {}
    let secs = start.elapsed().as_secs_f64();
    let n = cpu.state.icount;
    println!(
        "interp {name}: {n} instructions in {secs:.2} s = {:.1} M instr/s",
        n as f64 / secs / 1e6
    );
}

/// add/dec/jnz: the simplest loop.
fn simple_loop(bits: u32) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    let mut top = a.create_label();
    a.mov(ecx, 50_000_000u32).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(eax, ecx).unwrap();
    a.xor(edx, eax).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    a.assemble(if bits == 32 { CODE } else { 0 }).unwrap()
}

/// A CRC-32 over a 64 KiB buffer, 64 times: loads, shifts, table lookups, stores.
fn crc_loop() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let (mut outer, mut bytes, mut bits, mut no_xor) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    a.mov(ebp, 64u32).unwrap();
    a.set_label(&mut outer).unwrap();
    a.mov(esi, DATA).unwrap();
    a.mov(ecx, 0x1_0000u32).unwrap();
    a.mov(eax, 0xFFFF_FFFFu32).unwrap();
    a.set_label(&mut bytes).unwrap();
    a.movzx(edx, byte_ptr(esi)).unwrap();
    a.xor(eax, edx).unwrap();
    a.mov(ebx, 8u32).unwrap();
    a.set_label(&mut bits).unwrap();
    a.shr(eax, 1).unwrap();
    a.jnc(no_xor).unwrap();
    a.xor(eax, 0xEDB8_8320u32 as i32).unwrap();
    a.set_label(&mut no_xor).unwrap();
    a.dec(ebx).unwrap();
    a.jnz(bits).unwrap();
    a.mov(dword_ptr(esi), eax).unwrap();
    a.inc(esi).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(bytes).unwrap();
    a.dec(ebp).unwrap();
    a.jnz(outer).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

fn main() {
    measure(
        "simple-loop (32-bit)",
        protected_cpu(false),
        simple_loop(32),
        CODE,
    );
    let mut real = Cpu::new(16 << 20, 0).unwrap();
    real.load_seg_real(CS, (CODE >> 4) as u16);
    measure(
        "simple-loop (real mode, 32-bit operands)",
        real,
        simple_loop(16),
        0,
    );
    measure(
        "crc32 (32-bit, paging on)",
        protected_cpu(true),
        crc_loop(),
        CODE,
    );
}
