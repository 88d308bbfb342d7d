//! Random instruction streams in every mode, shared by the robustness test (the
//! interpreter alone) and the differential test (interpreter against JIT): a machine
//! with descriptor tables, page tables and an IDT whose every gate leads to a halt
//! stub, random code, and the entry into each mode. Each test crate uses part of it.
#![allow(dead_code)]

use hospes_cpu::flags::{IF, VM};
use hospes_cpu::mem::Bus;
use hospes_cpu::state::*;
use hospes_cpu::Cpu;

/// xorshift64*: a small deterministic generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Ports read back a value derived from the port; everything else is ignored.
pub struct NoiseBus;

impl Bus for NoiseBus {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        (port as u32).wrapping_mul(0x9E37_79B9) & hospes_cpu::mem::ones(size) as u32
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn mmio_read(&mut self, addr: u64, size: u8) -> u64 {
        addr.wrapping_mul(0x9E37_79B9) & hospes_cpu::mem::ones(size)
    }
    fn mmio_write(&mut self, _addr: u64, _size: u8, _value: u64) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Real,
    Protected16,
    Protected32,
    Paged,
    V86,
}

pub const RAM: usize = 16 << 20;
pub const GDT: u32 = 0x1000;
pub const IDT: u32 = 0x2000;
pub const TSS: u32 = 0x3000;
/// Every interrupt and exception lands on CLI; HLT here, which ends a stream.
pub const HALT_STUB: u32 = 0x4000;
pub const PAGE_DIR: u32 = 0x10_0000;
pub const PAGE_TABLES: u32 = 0x10_1000;
/// Where random code goes (a 64 KiB window, always mapped).
pub const CODE: u32 = 0x20_0000;
pub const CODE_SIZE: usize = 0x1_0000;

pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xFFFF)
        | (base as u64 & 0xFF_FFFF) << 16
        | (access as u64) << 40
        | ((limit as u64 >> 16) & 0xF) << 48
        | (flags as u64 & 0xF) << 52
        | ((base as u64) >> 24) << 56
}

pub fn gate(offset: u32, selector: u16) -> u64 {
    (offset as u64 & 0xFFFF)
        | (selector as u64) << 16
        | 0x8E_u64 << 40
        | ((offset as u64) >> 16) << 48
}

/// Opcode bytes that start valid instructions often, to get past the first byte.
pub const COMMON: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x05, 0x09, 0x0B, 0x0F, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x39, 0x3B,
    0x40, 0x43, 0x48, 0x4B, 0x50, 0x53, 0x58, 0x5B, 0x66, 0x67, 0x69, 0x6B, 0x74, 0x75, 0x80, 0x81,
    0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8D, 0x8E, 0x90, 0x99, 0x9C, 0x9D, 0xA4,
    0xA5, 0xAA, 0xAB, 0xAC, 0xB0, 0xB8, 0xC0, 0xC1, 0xC6, 0xC7, 0xD0, 0xD1, 0xD3, 0xD8, 0xD9, 0xDB,
    0xDD, 0xDF, 0xE8, 0xEB, 0xF3, 0xF6, 0xF7, 0xFE, 0xFF, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0,
    0xF2, 0xCD, 0xCF, 0xCA, 0xCB, 0xEA, 0x9A, 0xE4, 0xEC, 0xEE,
];

pub fn random_code(rng: &mut Rng) -> Vec<u8> {
    (0..CODE_SIZE)
        .map(|i| {
            if i % 7 == 0 || rng.below(3) == 0 {
                COMMON[rng.below(COMMON.len() as u64) as usize]
            } else {
                rng.next() as u8
            }
        })
        .collect()
}

/// Writes the tables every protected mode shares: a GDT with 16/32-bit code and data
/// segments at both privilege levels plus some bogus entries, an IDT whose 256
/// interrupt gates all lead to the halt stub, a TSS, and page tables.
pub fn setup_tables(cpu: &mut Cpu, rng: &mut Rng) {
    let mut gdt = vec![
        0,
        descriptor(0, 0xFFFFF, 0x9A, 0xC), // 08: code32 ring 0
        descriptor(0, 0xFFFFF, 0x92, 0xC), // 10: data32 ring 0
        descriptor(0, 0xFFFF, 0x9A, 0x0),  // 18: code16 ring 0
        descriptor(0, 0xFFFF, 0x92, 0x0),  // 20: data16 ring 0
        descriptor(0, 0xFFFFF, 0xFA, 0xC), // 28: code32 ring 3
        descriptor(0, 0xFFFFF, 0xF2, 0xC), // 30: data32 ring 3
        descriptor(TSS, 0x2067, 0x89, 0),  // 38: TSS with an I/O bitmap
    ];
    for _ in 0..8 {
        gdt.push(rng.next()); // bogus descriptors
    }
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    cpu.write_phys(GDT as u64, &bytes);
    let idt: Vec<u8> = (0..256)
        .flat_map(|_| gate(HALT_STUB, 0x08).to_le_bytes())
        .collect();
    cpu.write_phys(IDT as u64, &idt);
    let mut tss = vec![0u8; 0x2068];
    tss[4..8].copy_from_slice(&0x9_0000u32.to_le_bytes()); // ESP0
    tss[8..10].copy_from_slice(&0x10u16.to_le_bytes()); // SS0
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes()); // I/O bitmap offset
    for b in &mut tss[0x68..0x2068] {
        *b = rng.next() as u8;
    }
    cpu.write_phys(TSS as u64, &tss);
    cpu.write_phys(HALT_STUB as u64, &[0xFA, 0xF4, 0xEB, 0xFC]); // cli; hlt; jmp $-2
                                                                 // Real-mode IVT: every vector to 0000:4000 too.
    let ivt: Vec<u8> = (0..256u32)
        .flat_map(|_| [(HALT_STUB & 0xFF) as u8, (HALT_STUB >> 8) as u8, 0, 0])
        .collect();
    cpu.write_phys(0, &ivt);
    // Page tables for the first 16 MiB: 4 KiB pages for the first 4 MiB with some pages
    // absent, read-only or supervisor-only; 4 MiB pages above. The tables, the stub and
    // the code window stay present and writable.
    let mut pt = Vec::with_capacity(4096);
    for i in 0..1024u32 {
        let addr = i << 12;
        let mut flags = 0x7u32;
        let essential = addr < 0x5000;
        if !essential {
            match rng.below(10) {
                0 => flags = 0,   // not present
                1 => flags = 0x5, // read-only
                2 => flags = 0x3, // supervisor
                _ => {}
            }
        }
        pt.extend_from_slice(&(addr | flags).to_le_bytes());
    }
    cpu.write_phys(PAGE_TABLES as u64, &pt);
    let mut pd = vec![0u8; 4096];
    pd[0..4].copy_from_slice(&(PAGE_TABLES | 7).to_le_bytes());
    for i in 1..4u32 {
        let e = (i << 22) | 0x87; // 4 MiB, user, writable
        pd[i as usize * 4..i as usize * 4 + 4].copy_from_slice(&e.to_le_bytes());
    }
    cpu.write_phys(PAGE_DIR as u64, &pd);
}

pub fn seg(selector: u16, base: u64, limit: u32, attr: u16) -> Segment {
    Segment {
        base,
        limit,
        selector,
        attr,
    }
}

/// Puts the CPU into `mode` at the start of the code window with random registers.
pub fn enter_mode(cpu: &mut Cpu, mode: Mode, rng: &mut Rng) {
    let st = &mut cpu.state;
    for r in 0..8 {
        st.gpr[r] = rng.next() & 0x00FF_FFFF;
    }
    st.gpr[ESP] = 0x8000 + (rng.below(0x1000) & !3);
    st.halted = false;
    st.irq_shadow = false;
    st.cr2 = 0;
    st.cr4 = 0;
    st.gdtr = DescTable {
        base: GDT as u64,
        limit: 16 * 8 - 1,
    };
    st.idtr = DescTable {
        base: IDT as u64,
        limit: 256 * 8 - 1,
    };
    st.tr = seg(0x38, TSS as u64, 0x2067, ATTR_P | 0xB);
    let data = ATTR_P | ATTR_S | ATTR_RW | ATTR_ACCESSED;
    let code = data | ATTR_CODE;
    let flags = (rng.next() as u32 & 0x0CD5) | 2;
    match mode {
        Mode::Real => {
            st.cr0 = CR0_ET;
            st.cpl = 0;
            for s in 0..6 {
                st.seg[s] = Segment::real(0, data);
            }
            st.seg[CS] = seg((CODE >> 4) as u16, CODE as u64, 0xFFFF, code);
            st.flags.set(flags & !IF);
        }
        Mode::Protected16 | Mode::Protected32 | Mode::Paged => {
            st.cr0 = CR0_ET | CR0_PE;
            st.cpl = 0;
            let big = mode != Mode::Protected16;
            let (cs, ds, extra) = if big {
                (0x08, 0x10, ATTR_DB | ATTR_G)
            } else {
                (0x18, 0x20, 0)
            };
            let limit = if big { 0xFFFF_FFFF } else { 0xFFFF };
            for s in 0..6 {
                st.seg[s] = seg(ds, 0, limit, data | extra);
            }
            // 16-bit code runs with CS based at the code window.
            let cs_base = if big { 0 } else { CODE as u64 };
            st.seg[CS] = seg(cs, cs_base, limit, code | extra);
            st.seg[SS] = seg(0x10, 0, 0xFFFF_FFFF, data | ATTR_DB | ATTR_G);
            if mode == Mode::Paged {
                st.cr3 = PAGE_DIR as u64;
                st.cr4 = CR4_PSE;
                st.cr0 |= CR0_PG;
            }
            st.flags.set(flags & !IF);
        }
        Mode::V86 => {
            st.cr0 = CR0_ET | CR0_PE;
            st.cpl = 3;
            st.flags.set((flags & !IF) | VM);
            let v86 = data | (3 << 5);
            for s in 0..6 {
                st.seg[s] = Segment::real(0x100, v86);
            }
            st.seg[CS] = Segment::real((CODE >> 4) as u16, v86 | ATTR_CODE);
        }
    }
    st.rip = if mode == Mode::Protected32 || mode == Mode::Paged {
        CODE as u64 + rng.below(CODE_SIZE as u64 / 2)
    } else {
        rng.below(CODE_SIZE as u64 / 2)
    };
    cpu.flush_tlb();
}

/// Random code in which about half the instructions are ones the JIT does natively
/// (register moves, ALU operations on registers and immediates, LEA, NOP; with and
/// without an operand-size prefix), between the random bytes of [`random_code`].
pub fn jit_friendly_code(rng: &mut Rng) -> Vec<u8> {
    let mut code = random_code(rng);
    let mut at = 0;
    while at + 8 < code.len() {
        if rng.below(2) == 0 {
            let mut ins: Vec<u8> = Vec::new();
            if rng.below(4) == 0 {
                ins.push(0x66);
            }
            const ALU_RR: [u8; 15] = [
                0x01, 0x03, 0x09, 0x0B, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x39, 0x3B, 0x85, 0x89,
                0x8B,
            ];
            // A ModRM byte of any form (register or memory, with SIB and
            // displacement bytes after it), or of the register form only.
            let modrm = |rng: &mut Rng, ins: &mut Vec<u8>, any: bool| {
                let md = if any { rng.below(4) as u8 } else { 3 };
                ins.push(md << 6 | rng.below(64) as u8);
                ins.extend_from_slice(&rng.next().to_le_bytes()[..5]);
            };
            match rng.below(19) {
                0 | 1 => {
                    ins.push(ALU_RR[rng.below(ALU_RR.len() as u64) as usize]);
                    ins.push(0xC0 | rng.below(64) as u8);
                }
                2 => {
                    ins.push(if rng.below(2) == 0 { 0x81 } else { 0x83 });
                    let op = ins[ins.len() - 1];
                    ins.push(0xC0 | rng.below(64) as u8);
                    let imm = rng.next().to_le_bytes();
                    ins.extend_from_slice(&imm[..if op == 0x83 { 1 } else { 4 }]);
                }
                3 => {
                    ins.push(0xB8 + rng.below(8) as u8);
                    ins.extend_from_slice(&rng.next().to_le_bytes()[..4]);
                }
                4 => {
                    // LEA with a ModRM memory form (and SIB and displacements).
                    ins.push(0x8D);
                    ins.push((rng.below(3) as u8) << 6 | (rng.below(64) as u8));
                    ins.extend_from_slice(&rng.next().to_le_bytes()[..5]);
                }
                5 | 6 => {
                    // MOV and ALU operations of every size with memory operands.
                    const ALU_ANY: [u8; 22] = [
                        0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0A, 0x0B, 0x20, 0x21, 0x22, 0x23,
                        0x28, 0x29, 0x2A, 0x2B, 0x30, 0x31, 0x38, 0x3B, 0x84, 0x85,
                    ];
                    const MOV_ANY: [u8; 4] = [0x88, 0x89, 0x8A, 0x8B];
                    if rng.below(2) == 0 {
                        ins.push(MOV_ANY[rng.below(4) as usize]);
                    } else {
                        ins.push(ALU_ANY[rng.below(ALU_ANY.len() as u64) as usize]);
                    }
                    modrm(rng, &mut ins, true);
                }
                7 => {
                    // MOVZX / MOVSX from a register or memory.
                    ins.push(0x0F);
                    ins.push([0xB6, 0xB7, 0xBE, 0xBF][rng.below(4) as usize]);
                    modrm(rng, &mut ins, true);
                }
                8 => {
                    // PUSH / POP of a register, PUSH of an immediate.
                    match rng.below(3) {
                        0 => ins.push(0x50 + rng.below(8) as u8),
                        1 => ins.push(0x58 + rng.below(8) as u8),
                        _ => {
                            ins.push(0x6A);
                            ins.push(rng.next() as u8);
                        }
                    }
                }
                9 => {
                    // A short conditional jump, mostly nearby.
                    ins.push(0x70 + rng.below(16) as u8);
                    ins.push((rng.below(64) as i8 - 32) as u8);
                }
                10 => {
                    // MOV to memory of an immediate; an 8-bit ALU immediate.
                    if rng.below(2) == 0 {
                        ins.push(0xC6 + rng.below(2) as u8);
                        modrm(rng, &mut ins, true);
                        ins.extend_from_slice(&rng.next().to_le_bytes()[..4]);
                    } else {
                        ins.push(0x80);
                        modrm(rng, &mut ins, true);
                        ins.push(rng.next() as u8);
                    }
                }
                11 => {
                    // A short jump back: loops, so compiled blocks run again.
                    ins.push(0xEB);
                    ins.push((-(2 + rng.below(120) as i64)) as u8);
                }
                12 | 13 => {
                    // Shifts and rotates (by 1, CL or an immediate), IMUL, NEG/NOT,
                    // INC/DEC, ADC/SBB, mostly on registers.
                    let any = rng.below(4) == 0;
                    match rng.below(8) {
                        0 => {
                            ins.push([0xC0, 0xC1][rng.below(2) as usize]);
                            modrm(rng, &mut ins, any);
                            ins.truncate(ins.len() - 5);
                            ins.push(rng.below(40) as u8);
                        }
                        1 => {
                            ins.push([0xD0, 0xD1, 0xD2, 0xD3][rng.below(4) as usize]);
                            modrm(rng, &mut ins, any);
                        }
                        2 => {
                            let op = [0xAF, 0x69, 0x6B][rng.below(3) as usize];
                            if op == 0xAF {
                                ins.push(0x0F);
                            }
                            ins.push(op);
                            modrm(rng, &mut ins, any);
                        }
                        3 => {
                            ins.push([0xF6, 0xF7][rng.below(2) as usize]);
                            ins.push(0xD0 | rng.below(16) as u8);
                        }
                        4 => ins.push(0x40 + rng.below(16) as u8),
                        5 => {
                            ins.push([0xFE, 0xFF][rng.below(2) as usize]);
                            ins.push(
                                (rng.below(4) as u8) << 6
                                    | (rng.below(2) as u8) << 3
                                    | rng.below(8) as u8,
                            );
                            ins.extend_from_slice(&rng.next().to_le_bytes()[..5]);
                        }
                        6 => {
                            ins.push([0x11, 0x13, 0x19, 0x1B, 0x10, 0x1A][rng.below(6) as usize]);
                            modrm(rng, &mut ins, any);
                        }
                        _ => {
                            ins.push(0x83);
                            ins.push(0xD0 | rng.below(16) as u8);
                            ins.push(rng.next() as u8);
                        }
                    }
                }
                14 => {
                    // Flag readers: SETcc, CMOVcc; CDQ, CWDE, RDTSC, BSWAP, XCHG, BT.
                    match rng.below(5) {
                        0 => {
                            ins.push(0x0F);
                            ins.push(0x90 + rng.below(16) as u8);
                            let any = rng.below(4) == 0;
                            modrm(rng, &mut ins, any);
                        }
                        1 => {
                            ins.push(0x0F);
                            ins.push(0x40 + rng.below(16) as u8);
                            let any = rng.below(3) == 0;
                            modrm(rng, &mut ins, any);
                        }
                        2 => match rng.below(4) {
                            0 => ins.push(0x98),
                            1 => ins.push(0x99),
                            2 => ins.extend_from_slice(&[0x0F, 0x31]),
                            _ => {
                                // Any register but ESP (a byte-swapped stack pointer
                                // sends every later push into empty memory).
                                let reg = [0, 1, 2, 3, 5, 6, 7][rng.below(7) as usize];
                                ins.extend_from_slice(&[0x0F, 0xC8 + reg]);
                            }
                        },
                        3 => {
                            ins.push(0x87);
                            ins.push(0xC0 | rng.below(64) as u8);
                        }
                        _ => {
                            // BT of a register or memory with an immediate bit offset.
                            ins.extend_from_slice(&[0x0F, 0xBA]);
                            let any = rng.below(3) == 0;
                            modrm(rng, &mut ins, any);
                            let m = ins.len() - 6;
                            ins[m] = ins[m] & 0xC7 | 4 << 3;
                            if ins[m] >> 6 == 3 {
                                // The register form: the bit offset right after.
                                ins.truncate(ins.len() - 5);
                                ins.push(rng.below(40) as u8);
                            }
                        }
                    }
                }
                15 => {
                    // CALL to a nearby address, RET (with an immediate), LEAVE.
                    match rng.below(4) {
                        0 => {
                            ins.push(0xE8);
                            let rel = rng.below(64) as i32 - 32;
                            ins.extend_from_slice(&rel.to_le_bytes());
                        }
                        1 | 2 => {
                            // Returns to somewhere in the code (a RET of whatever is on
                            // the stack would mostly land in empty memory).
                            ins.push(0x68);
                            let to = CODE + rng.below(CODE_SIZE as u64) as u32;
                            ins.extend_from_slice(&to.to_le_bytes());
                            if rng.below(2) == 0 {
                                ins.push(0xC3);
                            } else {
                                ins.push(0xC2);
                                ins.extend_from_slice(&(rng.below(16) as u16 * 2).to_le_bytes());
                            }
                        }
                        _ => ins.push(0xC9),
                    }
                }
                16 => {
                    // String instructions with and without REP (REP after a small
                    // count in ECX; CLD/STD for both directions), DIV (after zeroing
                    // EDX, so it mostly does not fault), CMPXCHG, CLI, an indirect
                    // CALL into the code.
                    match rng.below(7) {
                        0 => {
                            const STRING: [u8; 8] =
                                [0xA4, 0xA5, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF];
                            ins.push(STRING[rng.below(8) as usize]);
                        }
                        6 => {
                            const STRING: [u8; 8] =
                                [0xA4, 0xA5, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF];
                            ins.push(0xB9);
                            ins.extend_from_slice(&(rng.below(48) as u32).to_le_bytes());
                            ins.push([0xF3, 0xF2][rng.below(2) as usize]);
                            ins.push(STRING[rng.below(8) as usize]);
                        }
                        1 => ins.push([0xFC, 0xFD, 0xFA][rng.below(3) as usize]),
                        2 => {
                            ins.extend_from_slice(&[0x31, 0xD2, 0xF7]);
                            let any = rng.below(3) == 0;
                            modrm(rng, &mut ins, any);
                            let m = ins.len() - 6;
                            ins[m] = ins[m] & 0xC7 | 6 << 3;
                        }
                        3 => {
                            ins.extend_from_slice(&[0x0F, 0xB0 + rng.below(2) as u8]);
                            let any = rng.below(4) != 0;
                            modrm(rng, &mut ins, any);
                        }
                        _ => {
                            let reg = [0, 1, 2, 3, 5, 6, 7][rng.below(7) as usize];
                            let to = CODE + rng.below(CODE_SIZE as u64) as u32;
                            ins.push(0xB8 + reg);
                            ins.extend_from_slice(&to.to_le_bytes());
                            ins.extend_from_slice(&[0xFF, 0xD0 | reg]);
                        }
                    }
                }
                17 => {
                    // x87 instructions: register forms, any memory form (loads and
                    // stores of every size, arithmetic, FLDCW of whatever is in memory,
                    // unmasking exceptions), FNSTCW, FNSTSW AX and SAHF (the compare
                    // idiom), and mostly FLD/FST/FSTP of reals.
                    match rng.below(13) {
                        10 => ins.extend_from_slice(&[0xDF, 0xE0, 0x9E]),
                        11 => ins.push(0x9E),
                        12 => {
                            ins.push(0xD9);
                            modrm(rng, &mut ins, true);
                            let m = ins.len() - 6;
                            ins[m] = ins[m] & 0xC7 | 7 << 3;
                            if ins[m] >> 6 == 3 {
                                ins[m] &= 0x3F;
                            }
                        }
                        2 => {
                            ins.push(0xD8 + rng.below(8) as u8);
                            ins.push(0xC0 | rng.below(64) as u8);
                        }
                        3 => {
                            ins.push(0xD8 + rng.below(8) as u8);
                            modrm(rng, &mut ins, true);
                            let m = ins.len() - 6;
                            if ins[m] >> 6 == 3 {
                                ins[m] &= 0x3F;
                            }
                        }
                        0 => {
                            ins.push(0xD9);
                            modrm(rng, &mut ins, true);
                            let m = ins.len() - 6;
                            ins[m] = ins[m] & 0xC7 | 5 << 3;
                            if ins[m] >> 6 == 3 {
                                ins[m] &= 0x3F;
                            }
                        }
                        1 => ins.extend_from_slice(&[0xDB, 0xE2 + rng.below(2) as u8]),
                        _ => {
                            ins.push([0xD9, 0xDD][rng.below(2) as usize]);
                            modrm(rng, &mut ins, true);
                            let m = ins.len() - 6;
                            let reg = [0, 2, 3][rng.below(3) as usize];
                            ins[m] = ins[m] & 0xC7 | reg << 3;
                            if ins[m] >> 6 == 3 {
                                ins[m] &= 0x3F;
                            }
                        }
                    }
                }
                _ => ins.push(0x90),
            }
            let n = ins.len().min(code.len() - at);
            code[at..at + n].copy_from_slice(&ins[..n]);
            at += n;
        } else {
            at += 1 + rng.below(3) as usize;
        }
    }
    code
}
