//! The JIT against the interpreter on random instruction streams in every mode: two
//! identical machines, one interpreting and one with every block compiled, run in the
//! same random budget slices; after every slice the exit, the whole CPU state and, at
//! the end of each stream, all of RAM must be identical.

mod random_streams;

use hospes_cpu::{BlockRunner, Cpu};
use hospes_jit::{Jit, Stats, Tier};
use random_streams::*;

fn ram(cpu: &Cpu) -> Vec<u8> {
    let mut bytes = vec![0u8; RAM];
    cpu.mem.read(0, &mut bytes);
    bytes
}

/// For debugging a difference: `HOSPES_JIT_DIFF_STOP=stream:slice:budget` runs that
/// slice with that budget and stops there.
fn debug_stop() -> Option<(u64, u64, u64)> {
    let v = std::env::var("HOSPES_JIT_DIFF_STOP").ok()?;
    let mut it = v.split(':').map(|x| x.parse().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Streams that run the same random code.
const CODE_REUSE: u64 = 64;

/// Runs `target` instructions through the interpreter and through `jit`; returns how
/// many ran and the JIT's counters.
fn compare(mode: Mode, seed: u64, target: u64, mut jit: Jit) -> (u64, Stats) {
    let mut machines: Vec<Cpu> = (0..2).map(|_| Cpu::new(RAM, 0).unwrap()).collect();
    let mut rngs = [Rng(seed), Rng(seed)];
    let mut slices = Rng(seed ^ 0x5EED);
    for (cpu, rng) in machines.iter_mut().zip(rngs.iter_mut()) {
        // Random bytes in all RAM but the tables and the code window: code that runs
        // off into memory finds random instructions, not long runs of ADD [EAX],AL
        // (which with EAX outside RAM end every block after one instruction, and the
        // forced tier would compile a 64-instruction block for each).
        let tables_end = PAGE_TABLES as usize + 0x1000;
        let code_end = CODE as usize + CODE_SIZE;
        for (from, to) in [
            (0x6000, PAGE_DIR as usize),
            (tables_end, CODE as usize),
            (code_end, RAM),
        ] {
            let noise: Vec<u8> = (from..to)
                .step_by(8)
                .flat_map(|_| rng.next().to_le_bytes())
                .collect();
            cpu.write_phys(from as u64, &noise);
        }
        setup_tables(cpu, rng);
    }
    let mut executed = 0;
    let mut stream = 0;
    while executed < target {
        stream += 1;
        // Fresh code every few streams; in between the same code (and its compiled
        // blocks) runs again from new random states, so compiling does not dominate.
        let new_code = stream % CODE_REUSE == 1;
        for (cpu, rng) in machines.iter_mut().zip(rngs.iter_mut()) {
            if new_code {
                cpu.write_phys(CODE as u64, &jit_friendly_code(rng));
            }
            setup_tables(cpu, rng);
            enter_mode(cpu, mode, rng);
            cpu.shutdown = false;
        }
        for slice in 0..40 {
            let mut budget = 1 + slices.below(4000);
            let stop = debug_stop().filter(|&(st, sl, _)| st == stream && sl == slice);
            if let Some((_, _, k)) = stop {
                budget = k;
            }
            let before = machines[0].state.icount;
            let (a, b) = machines.split_at_mut(1);
            let exit_interp = a[0].run(&mut NoiseBus, budget);
            let exit_jit = b[0].run_with(
                &mut NoiseBus,
                budget,
                Some(&mut jit as &mut dyn BlockRunner),
            );
            let (i, j) = (&machines[0], &machines[1]);
            if exit_interp != exit_jit || architectural(&i.state) != architectural(&j.state) {
                panic!(
                    "{mode:?} seed {seed} stream {stream} slice {slice} (budget {budget}): \
                     the tiers differ\ninterp: {exit_interp:?} {:?}\njit:    {exit_jit:?} {:?}",
                    i.state, j.state
                );
            }
            if stop.is_some() {
                eprintln!("DEBUG-STOP same; interp at {:#x}", i.state.rip);
                std::process::exit(0);
            }
            executed += i.state.icount - before;
            if exit_interp != hospes_cpu::Exit::Budget {
                break;
            }
        }
        assert!(
            ram(&machines[0]) == ram(&machines[1]),
            "{mode:?} seed {seed} stream {stream}: memory differs"
        );
    }
    eprintln!("{mode:?}: {stream} streams, {:?}", jit.stats);
    (executed, jit.stats)
}

/// The state as software can see it: the flags materialized (how the lazy record
/// describes them is the tier's business).
fn architectural(state: &hospes_cpu::state::CpuState) -> String {
    let mut s = state.clone();
    s.flags = s.flags.canonical();
    format!("{s:?}")
}

/// Instructions compared per mode. CI runs 2*10^6 (about a minute and a half on two
/// cores, nearly all of it Cranelift compiling random code);
/// `HOSPES_JIT_DIFF_INSTRUCTIONS=10000000` is the acceptance run.
fn target() -> u64 {
    std::env::var("HOSPES_JIT_DIFF_INSTRUCTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000)
}

fn check(mode: Mode, seed: u64) {
    let jit = Jit::new(Tier::Jit).expect("JIT");
    let (executed, stats) = compare(mode, seed, target(), jit);
    let native = stats.native_instructions;
    eprintln!("{mode:?}: {executed} instructions identical; {native} compiled natively");
    assert!(native > 0, "the JIT compiled nothing natively");
    // Waiting for every block, the JIT has one compile in flight: only the one that
    // finds the code memory full may fail before the flush that follows.
    assert!(
        stats.failed_compiles <= stats.flushes,
        "{} compiles failed, {} flushes",
        stats.failed_compiles,
        stats.flushes
    );
}

#[test]
fn jit_matches_interpreter_real_mode() {
    check(Mode::Real, 11);
}

#[test]
fn jit_matches_interpreter_protected_16() {
    check(Mode::Protected16, 12);
}

#[test]
fn jit_matches_interpreter_protected_32() {
    check(Mode::Protected32, 13);
}

#[test]
fn jit_matches_interpreter_paged() {
    check(Mode::Paged, 14);
}

#[test]
fn jit_matches_interpreter_v86() {
    check(Mode::V86, 15);
}

/// The tiered mode with code arriving from the compile thread while the interpreter
/// runs, and a code cache so small it is flushed over and over (with blocks queued,
/// linked and running): still identical.
#[test]
fn jit_matches_interpreter_tiered_with_flushes() {
    let mut jit = Jit::new(Tier::Auto).expect("JIT");
    jit.set_cache_limit(8);
    jit.set_hot_threshold(2);
    let (executed, stats) = compare(Mode::Paged, 16, target() / 2, jit);
    eprintln!("tiered: {executed} instructions identical; {stats:?}");
    // How much ran compiled depends on when the compile thread delivers; the flushes
    // do not.
    assert!(stats.flushes > 0, "the code cache was never flushed");
}

/// Conditions at the edges of the lazy flag records compiled code evaluates inline
/// (INC/DEC overflowing into or out of the sign bit, shifts moving bits out), which
/// random register values seldom reach: for each operand size and edge value, both
/// tiers run `MOV EAX, value; op; SETcc` for the signed and carry conditions, and
/// again with `BT ECX,3` before the SETcc, in the same block or the next (BT keeps
/// every flag but CF, which compiled code works out inline from the record before it,
/// this block's or the state's).
#[test]
fn jit_matches_interpreter_on_flag_edges() {
    // (prefix + opcode bytes of the operation on AL/AX/EAX, operand size)
    let ops: [(&[u8], u32); 18] = [
        (&[0x05, 0xFF, 0xFF, 0xFF, 0x7F], 4), // ADD EAX,7FFFFFFFh
        (&[0x2D, 0x01, 0x00, 0x00, 0x00], 4), // SUB EAX,1
        (&[0x24, 0x81], 1),                   // AND AL,81h
        (&[0x40], 4),                         // INC EAX
        (&[0x48], 4),                         // DEC EAX
        (&[0x66, 0x40], 2),                   // INC AX
        (&[0x66, 0x48], 2),                   // DEC AX
        (&[0xFE, 0xC0], 1),                   // INC AL
        (&[0xFE, 0xC8], 1),                   // DEC AL
        (&[0xC1, 0xE0, 0x01], 4),             // SHL EAX,1
        (&[0xC1, 0xE8, 0x03], 4),             // SHR EAX,3
        (&[0xC1, 0xF8, 0x1F], 4),             // SAR EAX,31
        (&[0xC0, 0xE0, 0x07], 1),             // SHL AL,7
        (&[0x66, 0xC1, 0xE8, 0x0F], 2),       // SHR AX,15
        (&[0xC1, 0xC0, 0x05], 4),             // ROL EAX,5
        // Counts past the operand: CF 0 (SHL, SHR) or the sign (SAR).
        (&[0xC0, 0xE8, 0x14], 1),       // SHR AL,20
        (&[0xC0, 0xF8, 0x0C], 1),       // SAR AL,12
        (&[0x66, 0xC1, 0xE0, 0x11], 2), // SHL AX,17
    ];
    // Every SETcc (0F 90..9F), one per run.
    let conditions: Vec<u8> = (0x90..=0x9F).collect();
    let edges = [
        0u32,
        1,
        0x7E,
        0x7F,
        0x80,
        0x81,
        0xFF,
        0x7FFF,
        0x8000,
        0xFFFF,
        0x4000_0000,
        0x7FFF_FFFF,
        0x8000_0000,
        0x8000_0001,
        0xFFFF_FFFF,
    ];
    let mut jit = Jit::new(Tier::Jit).expect("JIT");
    let mut rng = Rng(7);
    for (op, size) in ops {
        for &value in &edges {
            let bts = [None, Some(false), Some(true)];
            for (&cc, bt) in conditions.iter().flat_map(|c| bts.map(|b| (c, b))) {
                // MOV EAX, value; op; [JMP $+2;] [BT ECX,3;] SETcc CL; MOV EDX, ECX;
                // HLT (BT in the op's block, or at the start of the next, where it
                // starts from the flags in the state)
                let mut code = vec![0xB8];
                code.extend(value.to_le_bytes());
                code.extend(op);
                if let Some(next_block) = bt {
                    if next_block {
                        code.extend([0xEB, 0x00]);
                    }
                    code.extend([0x0F, 0xBA, 0xE1, 0x03]);
                }
                code.extend([0x0F, cc, 0xC1, 0x89, 0xCA, 0xF4]);
                let mut machines: Vec<Cpu> = (0..2).map(|_| Cpu::new(RAM, 0).unwrap()).collect();
                let mut states = Vec::new();
                for (k, cpu) in machines.iter_mut().enumerate() {
                    let mut r = Rng(rng.0);
                    setup_tables(cpu, &mut r);
                    enter_mode(cpu, Mode::Protected32, &mut r);
                    cpu.write_phys(CODE as u64, &code);
                    cpu.state.rip = CODE as u64;
                    let runner = (k == 1).then_some(&mut jit as &mut dyn BlockRunner);
                    cpu.run_with(&mut NoiseBus, 100, runner);
                    states.push(architectural(&cpu.state));
                }
                assert!(
                    states[0] == states[1],
                    "op {op:02x?} (size {size}) on {value:#x}, BT {bt:?}, SETcc {cc:#x}: the tiers differ\n\
                     interp: {:?}\njit:    {:?}",
                    machines[0].state,
                    machines[1].state
                );
                rng.next();
            }
        }
    }
    assert!(jit.stats.native_instructions > 0, "nothing ran compiled");
}

/// Two machines set up alike by `setup`, run for up to `budget` instructions: the
/// first by the interpreter, the second with every block through `jit`.
fn run_in_both_tiers(jit: &mut Jit, budget: u64, setup: impl Fn(&mut Cpu)) -> (Cpu, Cpu) {
    let mut interp = Cpu::new(RAM, 0).unwrap();
    let mut jitted = Cpu::new(RAM, 0).unwrap();
    setup(&mut interp);
    setup(&mut jitted);
    interp.run(&mut NoiseBus, budget);
    jitted.run_with(&mut NoiseBus, budget, Some(jit as &mut dyn BlockRunner));
    (interp, jitted)
}

/// Both tiers ended in the same architectural state after running `code`.
fn assert_same(code: &[u8], interp: &Cpu, jitted: &Cpu) {
    assert!(
        architectural(&interp.state) == architectural(&jitted.state),
        "{code:02x?}: the tiers differ\ninterp: {:?}\njit:    {:?}",
        interp.state,
        jitted.state
    );
}

/// The x87 compare idiom and control words, which compiled code does itself: for
/// each compare outcome (less, equal, greater, unordered) and condition, `FLD; FCOMP;
/// FNSTSW AX; SAHF; SETcc`, with the integer flags before SAHF left by an ADD that
/// overflows or not (SAHF keeps OF); then an invalid operation with IE masked and
/// `FNSTCW; FLDCW` unmasking it (ES and B set), `FNSTSW AX` showing it.
#[test]
fn jit_matches_interpreter_on_x87_compares_and_control_words() {
    const DATA: u32 = CODE + 0x1000;
    let pairs: [(f64, f64); 4] = [(1.0, 2.0), (2.0, 2.0), (3.0, 2.0), (f64::NAN, 2.0)];
    let mut jit = Jit::new(Tier::Jit).expect("JIT");
    for (a, b) in pairs {
        for cc in 0x90..=0x9Fu8 {
            for eax in [0x7FFF_FFFFu32, 1] {
                // MOV EDX,[DATA]; JMP $+2 (a block of its own, so that the TLB holds
                // the data's page); ADD EAX,EAX; FLD [DATA]; FCOMP [DATA+8];
                // FNSTSW AX; SAHF; SETcc CL; FLD1; FCHS; FSQRT (invalid: IE);
                // FNSTCW [DATA+16]; FLDCW [DATA+18]; FNSTSW AX; HLT
                let at = |k: u32| (DATA + k).to_le_bytes();
                let program = [
                    &[0x8B, 0x15][..],
                    &at(0),
                    &[0xEB, 0x00],
                    &[0x01, 0xC0],
                    &[0xDD, 0x05],
                    &at(0),
                    &[0xDC, 0x1D],
                    &at(8),
                    &[0xDF, 0xE0, 0x9E, 0x0F, cc, 0xC1],
                    &[0xD9, 0xE8, 0xD9, 0xE0, 0xD9, 0xFA],
                    &[0xD9, 0x3D],
                    &at(16),
                    &[0xD9, 0x2D],
                    &at(18),
                    &[0xDF, 0xE0, 0xF4],
                ]
                .concat();
                let (interp, jitted) = run_in_both_tiers(&mut jit, 100, |cpu| {
                    let mut rng = Rng(9);
                    setup_tables(cpu, &mut rng);
                    enter_mode(cpu, Mode::Protected32, &mut rng);
                    cpu.state.cr0 &= !0b1100; // CR0.EM and CR0.TS clear: the FPU is there
                    cpu.write_phys(CODE as u64, &program);
                    let mut data = [a.to_le_bytes(), b.to_le_bytes()].concat();
                    data.extend([0, 0, 0x7E, 0x03]); // room for FNSTCW; 037Eh: IE unmasked
                    cpu.write_phys(DATA as u64, &data);
                    cpu.state.rip = CODE as u64;
                    cpu.state.gpr[hospes_cpu::state::EAX] = eax as u64;
                });
                assert_same(&program, &interp, &jitted);
                assert!(
                    ram(&interp) == ram(&jitted),
                    "{a} vs {b}, SETcc {cc:#x}: memory differs"
                );
            }
        }
    }
    assert!(jit.stats.native_instructions > 0, "nothing ran compiled");
}

/// REP STOSB, which compiled code does as a memset where the bytes are on one page the
/// TLB holds and the budget holds them all (one instruction each): counts of 0, 1 and
/// 7 on a page, 32 across a page boundary (the interpreter's), in both tiers at every
/// budget.
#[test]
fn jit_matches_interpreter_on_rep_stosb() {
    const DATA: u32 = CODE + 0x2000;
    let at = |k: u32| (DATA + k).to_le_bytes();
    let stosb = |edi: u32, count: u32| -> Vec<u8> {
        // MOV EDI,edi; MOV ECX,count; REP STOSB; INC EAX
        [
            &[0xBF][..],
            &edi.to_le_bytes(),
            &[0xB9],
            &count.to_le_bytes(),
            &[0xF3, 0xAA, 0x40],
        ]
        .concat()
    };
    // MOV [DATA],EDX; MOV [DATA+1000h],EDX; JMP $+2 (the TLB holds both pages
    // writable); MOV AL,5Ah; then the REP STOSBs; HLT.
    let program = [
        &[0x89, 0x15][..],
        &at(0),
        &[0x89, 0x15],
        &at(0x1000),
        &[0xEB, 0x00, 0xB0, 0x5A],
        &stosb(DATA + 0x10, 7),
        &stosb(DATA + 0x40, 0),
        &stosb(DATA + 0x80, 1),
        &stosb(DATA + 0xFF0, 32),
        &[0xF4],
    ]
    .concat();
    let mut jit = Jit::new(Tier::Jit).expect("JIT");
    for mode in [Mode::Protected32, Mode::Paged] {
        for budget in 1..80 {
            let (interp, jitted) = run_in_both_tiers(&mut jit, budget, |cpu| {
                let mut rng = Rng(4);
                setup_tables(cpu, &mut rng);
                enter_mode(cpu, mode, &mut rng);
                cpu.write_phys(CODE as u64, &program);
                cpu.state.rip = CODE as u64;
                cpu.state.flags.set_bit(hospes_cpu::flags::DF, false);
            });
            assert_same(&program, &interp, &jitted);
            assert!(
                ram(&interp) == ram(&jitted),
                "{mode:?} budget {budget}: memory differs"
            );
        }
    }
    assert!(jit.stats.native_instructions > 0, "nothing ran compiled");
}

/// A CALL to a PC thunk (`MOV EBX,[ESP]; RET`, on another page) is done in place by
/// compiled code while the thunk's bytes stay those it was compiled with and its page
/// is in the TLB: with the thunk rewritten every time round (to `MOV EDX,[ESP]`) or
/// its TLB entry dropped, both tiers must still agree at every budget.
#[test]
fn jit_does_pc_thunks_in_place_only_while_they_are_there() {
    const THUNK: u32 = CODE + 0x1000;
    let thunk_modrm = (THUNK + 1).to_le_bytes();
    let thunk_page = THUNK.to_le_bytes();
    // What the loop does between the CALL's return and DEC ECX.
    let middles: [Vec<u8>; 3] = [
        vec![0x90],                                          // NOP
        [&[0x80, 0x35][..], &thunk_modrm, &[0x08]].concat(), // XOR [THUNK+1],8
        [&[0x0F, 0x01, 0x3D][..], &thunk_page].concat(),     // INVLPG [THUNK]
    ];
    let mut jit = Jit::new(Tier::Jit).expect("JIT");
    for middle in &middles {
        // MOV ECX,20; loop: CALL THUNK; ADD EAX,EBX; ADD ESI,EDX; XOR EBX,EBX;
        // XOR EDX,EDX; middle; DEC ECX; JNZ loop; HLT
        let mut program = vec![0xB9, 20, 0, 0, 0, 0xE8];
        program.extend((THUNK - (CODE + 10)).to_le_bytes());
        program.extend([0x01, 0xD8, 0x01, 0xD6, 0x31, 0xDB, 0x31, 0xD2]);
        program.extend(middle);
        program.push(0x49);
        let back = 5i32 - (program.len() as i32 + 2);
        program.extend([0x75, back as u8, 0xF4]);
        for mode in [Mode::Protected32, Mode::Paged] {
            for budget in 1..150 {
                let (interp, jitted) = run_in_both_tiers(&mut jit, budget, |cpu| {
                    let mut rng = Rng(5);
                    setup_tables(cpu, &mut rng);
                    enter_mode(cpu, mode, &mut rng);
                    cpu.write_phys(CODE as u64, &program);
                    cpu.write_phys(THUNK as u64, &[0x8B, 0x1C, 0x24, 0xC3]);
                    cpu.state.rip = CODE as u64;
                    use hospes_cpu::state::{EAX, ESI, ESP};
                    cpu.state.gpr[EAX] = 0;
                    cpu.state.gpr[ESI] = 0;
                    cpu.state.gpr[ESP] = 0x8000;
                });
                assert_same(&program, &interp, &jitted);
                assert!(
                    ram(&interp) == ram(&jitted),
                    "{mode:?} budget {budget}: memory differs"
                );
            }
        }
    }
    assert!(
        jit.stats.pc_thunks > 0,
        "no block was compiled with its thunk in place"
    );
}

/// Compiled code checks an address once per block where it can (a second access to
/// the same address relies on the first one's TLB check): a write after a read still
/// needs its own check (a read-only page), and so does a wider access after a narrower
/// one (the rest of it on an absent page). Both tiers must fault there alike.
#[test]
fn jit_rechecks_reused_addresses_for_writes_and_wider_accesses() {
    const READ_ONLY: u32 = 0x30_0000;
    const ABSENT: u32 = 0x30_2000;
    // (code, EBX, the address the fault must report). Each first reads [EBX] in a
    // block of its own (MOV DL,[EBX]; JMP $+2), so the TLB holds the page when the
    // block under test starts.
    let cases: [(&[u8], u32, u32); 3] = [
        // MOV EAX,[EBX]; MOV [EBX],ECX
        (
            &[0x8B, 0x03, 0x89, 0x0B],
            READ_ONLY + 0x10,
            READ_ONLY + 0x10,
        ),
        // MOV AL,[EBX]; MOV EAX,[EBX]
        (&[0x8A, 0x03, 0x8B, 0x03], ABSENT - 1, ABSENT),
        // ADD [EBX],AL (reads and writes); MOV EAX,[EBX]
        (&[0x00, 0x03, 0x8B, 0x03], ABSENT - 2, ABSENT),
    ];
    let mut jit = Jit::new(Tier::Jit).expect("JIT");
    for (code, ebx, fault_at) in cases {
        let (interp, jitted) = run_in_both_tiers(&mut jit, 100, |cpu| {
            let mut rng = Rng(11);
            setup_tables(cpu, &mut rng);
            enter_mode(cpu, Mode::Paged, &mut rng);
            let pte = |page: u32, flags: u32| (page | flags).to_le_bytes();
            let at = |page: u32| (PAGE_TABLES + (page >> 12) * 4) as u64;
            cpu.write_phys(at(READ_ONLY), &pte(READ_ONLY, 0x5));
            cpu.write_phys(at(ABSENT - 0x1000), &pte(ABSENT - 0x1000, 0x7));
            cpu.write_phys(at(ABSENT), &pte(ABSENT, 0));
            // Supervisor writes obey read-only pages only with CR0.WP.
            cpu.state.cr0 |= hospes_cpu::state::CR0_WP;
            cpu.flush_tlb();
            let mut program = vec![0x8A, 0x13, 0xEB, 0x00];
            program.extend(code);
            program.push(0xF4);
            cpu.write_phys(CODE as u64, &program);
            cpu.state.rip = CODE as u64;
            cpu.state.gpr[hospes_cpu::state::EBX] = ebx as u64;
        });
        assert_eq!(
            interp.state.cr2, fault_at as u64,
            "{code:02x?}: the page fault"
        );
        assert_same(code, &interp, &jitted);
    }
    assert!(jit.stats.native_instructions > 0, "nothing ran compiled");
}

/// A block compiled while DS (or ES) was flat accesses memory through it without
/// checks; a segment load inside the block (run by the interpreter) must end the
/// compiled path, or the null selector loaded here would not fault (#GP) in the JIT.
#[test]
fn jit_leaves_compiled_code_after_a_segment_load() {
    let cases: [&[u8]; 3] = [
        // XOR EAX,EAX; MOV DS,AX; MOV CL,[EBX]
        &[0x31, 0xC0, 0x8E, 0xD8, 0x8A, 0x0B],
        // PUSH 0; POP DS; MOV CL,[EBX]
        &[0x6A, 0x00, 0x1F, 0x8A, 0x0B],
        // XOR EAX,EAX; MOV ES,AX; STOSB
        &[0x31, 0xC0, 0x8E, 0xC0, 0xAA],
    ];
    let mut jit = Jit::new(Tier::Jit).expect("JIT");
    for code in cases {
        let (interp, jitted) = run_in_both_tiers(&mut jit, 100, |cpu| {
            let mut rng = Rng(5);
            setup_tables(cpu, &mut rng);
            enter_mode(cpu, Mode::Protected32, &mut rng);
            let mut program = code.to_vec();
            program.push(0xF4);
            cpu.write_phys(CODE as u64, &program);
            cpu.state.rip = CODE as u64;
            use hospes_cpu::state::{EBX, EDI, ESP};
            for (r, v) in [(EBX, CODE + 0x100), (EDI, CODE + 0x200), (ESP, 0x8000)] {
                cpu.state.gpr[r] = v as u64;
            }
        });
        // The #GP's handler is the halt stub.
        assert_eq!(
            interp.state.rip,
            HALT_STUB as u64 + 2,
            "{code:02x?}: the interpreter's #GP"
        );
        assert_same(code, &interp, &jitted);
    }
    assert!(jit.stats.native_instructions > 0, "nothing ran compiled");
}

/// A block that branches back to its own start loops inside its compiled code, with
/// its registers in SSA values: stopped at every budget across the loop (and with an
/// instruction the interpreter runs inside the body), both tiers agree.
#[test]
fn jit_loops_inside_a_block_that_branches_to_itself() {
    // MOV ECX,40; CLC; JMP loop; then the loop: ADD EAX,ECX; MOV [EBX+ECX*4],EAX;
    // DEC ECX; JNZ loop; HLT. The second starts with ADC (the carry crosses the loop's
    // back edge: DEC keeps it); the third has ADC EAX,ESI and ADD ECX,-1 (a carry out
    // every time round); the fourth has PUSHFD; POP EDX in the body (the
    // interpreter's).
    let bodies: [&[u8]; 4] = [
        &[0x01, 0xC8, 0x89, 0x04, 0x8B, 0x49, 0x75, 0xF8],
        &[0x11, 0xC8, 0x89, 0x04, 0x8B, 0x49, 0x75, 0xF8],
        &[0x11, 0xF0, 0x89, 0x04, 0x8B, 0x83, 0xC1, 0xFF, 0x75, 0xF6],
        &[0x01, 0xC8, 0x89, 0x04, 0x8B, 0x9C, 0x5A, 0x49, 0x75, 0xF6],
    ];
    let mut jit = Jit::new(Tier::Jit).expect("JIT");
    for body in bodies {
        let mut program = vec![0xB9, 40, 0, 0, 0, 0xF8, 0xEB, 0x00];
        program.extend(body);
        program.push(0xF4);
        for mode in [Mode::Protected32, Mode::Paged] {
            for budget in 1..200 {
                let (interp, jitted) = run_in_both_tiers(&mut jit, budget, |cpu| {
                    let mut rng = Rng(3);
                    setup_tables(cpu, &mut rng);
                    enter_mode(cpu, mode, &mut rng);
                    cpu.write_phys(CODE as u64, &program);
                    cpu.state.rip = CODE as u64;
                    use hospes_cpu::state::{EAX, EBX, ESI, ESP};
                    let init = [
                        (EAX, 0xFFFF_FF00u32),
                        (EBX, 0x9000),
                        (ESI, 7),
                        (ESP, 0x8000),
                    ];
                    for (r, v) in init {
                        cpu.state.gpr[r] = v as u64;
                    }
                });
                assert_same(&program, &interp, &jitted);
                assert!(
                    ram(&interp) == ram(&jitted),
                    "{mode:?} budget {budget}: memory differs"
                );
            }
        }
    }
    assert!(jit.stats.native_instructions > 0, "nothing ran compiled");
}
