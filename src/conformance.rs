//! `hospes conformance`: runs SingleStepTests-format CPU test vectors through the CPU.
//!
//! Each vector gives the registers and the bytes of memory before one instruction, and
//! what changed after it (the instruction is followed by a HLT that ends the test). The
//! runner loads the initial state into a real-mode CPU, runs until the HLT, and compares
//! every register and every listed memory byte.
//!
//! The captured vectors come from an 80286; hospes models a P6. Where the two CPUs are
//! allowed to differ, the difference is masked by the rules in [`DIFFERENCES`], the one
//! documented list, applied by opcode (never by individual test).

use hospes_cpu::flags;
use hospes_cpu::mem::Bus;
use hospes_cpu::state::{CS, DS, EAX, EBP, EBX, ECX, EDI, EDX, ES, ESI, ESP, SS};
use hospes_cpu::{BlockRunner, Cpu, Exit};
use hospes_jit::{Jit, Stats, Tier};
use iced_x86::{Decoder, DecoderOptions, Instruction, Register};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Vector {
    name: String,
    bytes: Vec<u8>,
    initial: Snapshot,
    #[serde(rename = "final")]
    after: Snapshot,
    exception: Option<ExceptionInfo>,
    hash: Option<String>,
}

#[derive(Deserialize)]
struct Snapshot {
    regs: BTreeMap<String, u32>,
    #[serde(default)]
    ram: Vec<(u32, u8)>,
}

#[derive(Deserialize)]
struct ExceptionInfo {
    number: u8,
}

/// When a [`Difference`] applies.
#[derive(Clone, Copy, Debug)]
enum When {
    Always,
    /// Shifts and rotates whose masked count is not 1 (OF is defined only for count 1).
    CountNotOne,
    /// Vectors in which the 80286 took an exception.
    Exception,
    /// The instruction names FS or GS (ModRM.reg 4 or 5 of MOV Sreg).
    FsGs,
    /// The instruction has a LOCK prefix that a P6 rejects (#UD): the destination is not
    /// memory, or the instruction cannot be locked at all.
    BadLock,
    /// The instruction (prefixes included) is longer than 10 bytes.
    LongerThan10,
}

/// One documented difference between the captured 80286 and a P6.
struct Difference {
    /// Opcode files (the vector file's stem: `F6.4` = opcode F6 with ModRM.reg 4).
    opcodes: &'static [&'static str],
    /// FLAGS bits not compared (in the FLAGS register and in a FLAGS image pushed by an
    /// exception); `SKIP` means the opcode's vectors are not run at all.
    flags: u16,
    /// 16-bit registers not compared (by name, as in the vectors).
    regs: &'static [&'static str],
    when: When,
    reason: &'static str,
}

const SKIP: u16 = 0xFFFF;
/// The vector's initial state is used, but the expected result is the P6's #UD.
const EXPECT_UD: u16 = 0xFFFE;
const O: u16 = flags::OF as u16;
const S: u16 = flags::SF as u16;
const Z: u16 = flags::ZF as u16;
const A: u16 = flags::AF as u16;
const P: u16 = flags::PF as u16;
const C: u16 = flags::CF as u16;

/// FLAGS bits 12-15 (IOPL, NT, bit 15) are never compared: in real mode the 80286 cannot
/// set them but the captured initial states have them set at random, and a P6 in real mode
/// keeps whatever POPF/IRET load there, while bit 15 reads as 1 on a 286 only.
const FLAGS_HIGH_NIBBLE: u16 = 0xF000;

/// The one list of 80286-versus-P6 differences. Every masked flag is one the Intel SDM
/// documents as undefined after the instruction (so each CPU generation leaves its own
/// value), or an instruction that does not exist in the same form on both CPUs.
const DIFFERENCES: &[Difference] = &[
    Difference {
        opcodes: &["*"],
        flags: EXPECT_UD,
        regs: &[],
        when: When::BadLock,
        reason: "LOCK prefix on a register destination or a non-lockable instruction: \
                 the 80286 ignores it, a P6 raises #UD; checked as a P6 #UD instead (IVT \
                 entry 6 pointed at a HLT, FLAGS/CS/IP of the LOCK pushed, nothing else \
                 changed)",
    },
    Difference {
        opcodes: &["8C", "8E"],
        flags: SKIP,
        regs: &[],
        when: When::FsGs,
        reason: "MOV to or from FS/GS: the 80286 has no FS/GS and raises #UD",
    },
    Difference {
        opcodes: &["*"],
        flags: SKIP,
        regs: &[],
        when: When::LongerThan10,
        reason: "instructions longer than 10 bytes (redundant prefixes): the 80286's limit \
                 is 10 bytes (#GP beyond), a P6's is 15",
    },
    Difference {
        opcodes: &[
            "6C", "6D", "6E", "6F", "A4", "A5", "A6", "A7", "AA", "AB", "AC", "AD", "AE", "AF",
        ],
        flags: 0,
        regs: &["si", "di", "cx"],
        when: When::Exception,
        reason: "string instructions faulting on a word at offset FFFFh: the 80286 has \
                 already advanced SI/DI (and CX under REP) when it takes the fault, a P6 \
                 faults before updating them",
    },
    Difference {
        opcodes: &["D8", "D9", "DA", "DB", "DC", "DD", "DE", "DF"],
        flags: SKIP,
        regs: &[],
        when: When::Always,
        reason: "x87 escape: the captured 80286 had no coprocessor, a P6 has an FPU",
    },
    Difference {
        opcodes: &["F6.4", "F6.5", "F7.4", "F7.5"],
        flags: S | Z | A | P,
        regs: &[],
        when: When::Always,
        reason: "MUL/IMUL: SF ZF AF PF undefined",
    },
    Difference {
        opcodes: &["69", "6B"],
        flags: S | Z | A | P,
        regs: &[],
        when: When::Always,
        reason: "IMUL r,r/m,imm: SF ZF AF PF undefined",
    },
    Difference {
        opcodes: &["F6.6", "F6.7", "F7.6", "F7.7"],
        flags: O | S | Z | A | P | C,
        regs: &[],
        when: When::Always,
        reason: "DIV/IDIV: all arithmetic flags undefined (also in the FLAGS image #DE pushes)",
    },
    Difference {
        opcodes: &[
            "08", "09", "0A", "0B", "0C", "0D", "20", "21", "22", "23", "24", "25", "30", "31",
            "32", "33", "34", "35", "84", "85", "A8", "A9", "80.1", "80.4", "80.6", "81.1", "81.4",
            "81.6", "82.1", "82.4", "82.6", "83.1", "83.4", "83.6",
        ],
        flags: A,
        regs: &[],
        when: When::Always,
        reason: "OR/AND/XOR/TEST: AF undefined",
    },
    Difference {
        opcodes: &[
            "C0.4", "C0.5", "C0.6", "C0.7", "C1.4", "C1.5", "C1.6", "C1.7", "D0.4", "D0.5", "D0.6",
            "D0.7", "D1.4", "D1.5", "D1.6", "D1.7", "D2.4", "D2.5", "D2.6", "D2.7", "D3.4", "D3.5",
            "D3.6", "D3.7",
        ],
        flags: A,
        regs: &[],
        when: When::Always,
        reason: "SHL/SHR/SAL/SAR: AF undefined for a non-zero count",
    },
    Difference {
        opcodes: &[
            "C0.0", "C0.1", "C0.2", "C0.3", "C0.4", "C0.5", "C0.6", "C0.7", "C1.0", "C1.1", "C1.2",
            "C1.3", "C1.4", "C1.5", "C1.6", "C1.7", "D2.0", "D2.1", "D2.2", "D2.3", "D2.4", "D2.5",
            "D2.6", "D2.7", "D3.0", "D3.1", "D3.2", "D3.3", "D3.4", "D3.5", "D3.6", "D3.7",
        ],
        flags: O,
        regs: &[],
        when: When::CountNotOne,
        reason: "shifts and rotates: OF undefined unless the count is 1",
    },
    Difference {
        opcodes: &["37", "3F"],
        flags: O | S | Z | P,
        regs: &[],
        when: When::Always,
        reason: "AAA/AAS: OF SF ZF PF undefined",
    },
    Difference {
        opcodes: &["D4", "D5"],
        flags: O | A | C,
        regs: &[],
        when: When::Always,
        reason: "AAM/AAD: OF AF CF undefined",
    },
    Difference {
        opcodes: &["27", "2F"],
        flags: O,
        regs: &[],
        when: When::Always,
        reason: "DAA/DAS: OF undefined",
    },
];

/// The rules in force for one opcode file.
struct Rules {
    /// Differences that apply to this opcode file; each is checked per vector.
    applicable: Vec<&'static Difference>,
}

fn rules_for(opcode: &str) -> Rules {
    Rules {
        applicable: DIFFERENCES
            .iter()
            .filter(|d| d.opcodes.contains(&"*") || d.opcodes.contains(&opcode))
            .collect(),
    }
}

impl Rules {
    /// The file is skipped as a whole (an unconditional SKIP rule).
    fn skip_all(&self) -> Option<&'static str> {
        self.applicable
            .iter()
            .find(|d| d.flags == SKIP && matches!(d.when, When::Always))
            .map(|d| d.reason)
    }
}

/// What one vector needs from the rules: skip it, or which flags and registers to ignore.
struct Masks {
    skip: Option<&'static str>,
    expect_ud: bool,
    flags: u16,
    regs: Vec<&'static str>,
}

fn masks_for(rules: &Rules, v: &Vector, ins: &Instruction) -> Masks {
    let mut m = Masks {
        skip: None,
        expect_ud: false,
        flags: FLAGS_HIGH_NIBBLE,
        regs: Vec::new(),
    };
    for d in &rules.applicable {
        let applies = match d.when {
            When::Always => true,
            When::CountNotOne => shift_count(v) != 1,
            When::Exception => v.exception.is_some(),
            When::FsGs => {
                ins.op0_register() == Register::FS
                    || ins.op0_register() == Register::GS
                    || ins.op1_register() == Register::FS
                    || ins.op1_register() == Register::GS
            }
            When::BadLock => ins.has_lock_prefix() && !hospes_cpu::exec::lockable(ins),
            When::LongerThan10 => ins.len() > 10,
        };
        if !applies {
            continue;
        }
        if d.flags == SKIP {
            m.skip = Some(d.reason);
        } else if d.flags == EXPECT_UD {
            m.expect_ud = true;
        } else {
            m.flags |= d.flags;
        }
        m.regs.extend_from_slice(d.regs);
    }
    m
}

/// Prints the documented differences (`hospes conformance --list-differences`).
pub fn differences_text() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "FLAGS bits 12-15: never compared (IOPL/NT/bit 15 in real mode)"
    );
    for d in DIFFERENCES {
        let what = if d.flags == SKIP {
            "skipped".to_string()
        } else if d.flags == EXPECT_UD {
            "expected #UD".to_string()
        } else {
            format!("flags mask {:#06x}", d.flags)
        };
        let what = if d.regs.is_empty() {
            what
        } else if d.flags == 0 {
            format!("registers {} not compared", d.regs.join(" "))
        } else {
            format!("{what}, registers {} not compared", d.regs.join(" "))
        };
        let when = match d.when {
            When::Always => "",
            When::CountNotOne => " when the count is not 1",
            When::Exception => " when an exception is taken",
            When::FsGs => " when FS or GS is named",
            When::BadLock => " when LOCK is not allowed",
            When::LongerThan10 => "",
        };
        let ops = if d.opcodes == ["*"] {
            "any opcode".to_string()
        } else {
            d.opcodes.join(" ")
        };
        let _ = writeln!(out, "{ops}: {what}{when} ({})", d.reason);
    }
    out
}

/// A bus for single-instruction tests: ports read as all ones, nothing else attached.
struct TestBus;

impl Bus for TestBus {
    fn io_read(&mut self, _port: u16, size: u8) -> u32 {
        hospes_cpu::mem::ones(size) as u32
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn mmio_read(&mut self, _addr: u64, size: u8) -> u64 {
        hospes_cpu::mem::ones(size)
    }
    fn mmio_write(&mut self, _addr: u64, _size: u8, _value: u64) {}
}

/// Real-mode addresses reach 0x10FFEF with A20 on; 2 MiB of RAM covers them.
const RAM_SIZE: usize = 2 << 20;
/// Enough for any REP string instruction with CX = 0xFFFF, plus the HLT.
const MAX_INSTRUCTIONS: u64 = 0x2_0000;

const REGS: [(&str, usize); 8] = [
    ("ax", EAX),
    ("bx", EBX),
    ("cx", ECX),
    ("dx", EDX),
    ("sp", ESP),
    ("bp", EBP),
    ("si", ESI),
    ("di", EDI),
];
const SEGS: [(&str, usize); 4] = [("cs", CS), ("ss", SS), ("ds", DS), ("es", ES)];

/// Per-opcode results.
#[derive(Default, Clone)]
pub struct OpcodeResult {
    pub opcode: String,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub skip_reason: Option<&'static str>,
    pub first_failure: Option<String>,
}

pub struct Report {
    pub opcodes: Vec<OpcodeResult>,
    /// The JIT's counters, when a JIT ran the vectors.
    pub jit: Option<Stats>,
    pub instructions: u64,
    pub seconds: f64,
}

impl Report {
    pub fn passed(&self) -> u64 {
        self.opcodes.iter().map(|o| o.passed).sum()
    }
    pub fn failed(&self) -> u64 {
        self.opcodes.iter().map(|o| o.failed).sum()
    }
    pub fn skipped(&self) -> u64 {
        self.opcodes.iter().map(|o| o.skipped).sum()
    }
}

pub struct Options {
    pub tier: Tier,
    /// Only run opcode files whose stem starts with this.
    pub filter: Option<String>,
    /// Print up to this many failures per opcode in full.
    pub show_failures: usize,
}

/// Lists the vector files of a suite, sorted by name.
fn vector_files(suite: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(suite)
        .map_err(|e| format!("cannot read suite directory {}: {e}", suite.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".json") || n.ends_with(".json.gz")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "no .json or .json.gz vector files in {}",
            suite.display()
        ));
    }
    Ok(files)
}

fn opcode_of(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    name.trim_end_matches(".gz")
        .trim_end_matches(".json")
        .to_string()
}

fn load_vectors(path: &Path) -> Result<Vec<Vector>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = if path.extension().and_then(|e| e.to_str()) == Some("gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: bad gzip data: {e}", path.display()))?;
        out
    } else {
        raw
    };
    serde_json::from_slice(&text).map_err(|e| format!("{}: bad vector JSON: {e}", path.display()))
}

fn load_revocations(suite: &Path) -> HashSet<String> {
    let Ok(text) = std::fs::read_to_string(suite.join("revocation_list.txt")) else {
        return HashSet::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_lowercase)
        .collect()
}

/// Runs every vector file in `suite`.
pub fn run_suite(suite: &Path, opts: &Options) -> Result<Report, String> {
    let files = vector_files(suite)?;
    let revoked = load_revocations(suite);
    let mut cpu =
        Cpu::new(RAM_SIZE, 0).map_err(|e| format!("cannot allocate guest memory: {e}"))?;
    // One JIT for the whole suite: every vector starts with a CPU reset, which drops the
    // decoded blocks, and compiled code is keyed by the decoded block, so one vector's
    // code is never run for another's.
    let mut jit = match opts.tier {
        Tier::Interp => None,
        tier => Some(Jit::new(tier).map_err(|e| format!("cannot start the JIT: {e}"))?),
    };
    // Its statistics are printed, hops included.
    if let Some(j) = &mut jit {
        j.count_hops();
    }
    let start = std::time::Instant::now();
    let mut executed = 0u64;
    let mut results = Vec::new();
    for file in files {
        let opcode = opcode_of(&file);
        if let Some(f) = &opts.filter {
            if !opcode.starts_with(f.as_str()) {
                continue;
            }
        }
        let rules = rules_for(&opcode);
        let vectors = load_vectors(&file)?;
        let mut res = OpcodeResult {
            opcode: opcode.clone(),
            ..Default::default()
        };
        if let Some(reason) = rules.skip_all() {
            res.skipped = vectors.len() as u64;
            res.skip_reason = Some(reason);
            results.push(res);
            continue;
        }
        let mut shown = 0;
        for v in &vectors {
            if v.hash
                .as_ref()
                .is_some_and(|h| revoked.contains(&h.to_lowercase()))
            {
                res.skipped += 1;
                continue;
            }
            let mut decoder = Decoder::new(16, &v.bytes, DecoderOptions::NO_INVALID_CHECK);
            let ins = decoder.decode();
            let masks = masks_for(&rules, v, &ins);
            if let Some(reason) = masks.skip {
                res.skipped += 1;
                res.skip_reason.get_or_insert(reason);
                continue;
            }
            let runner = jit.as_mut().map(|j| j as &mut dyn BlockRunner);
            let outcome = run_vector(&mut cpu, runner, v, &masks);
            executed += cpu.state.icount;
            match outcome {
                Ok(()) => res.passed += 1,
                Err(why) => {
                    res.failed += 1;
                    let text = format!("{} [{}]: {why}", v.name, hex(&v.bytes));
                    if shown < opts.show_failures {
                        eprintln!("FAIL {opcode} {text}");
                        shown += 1;
                    }
                    if res.first_failure.is_none() {
                        res.first_failure = Some(text);
                    }
                }
            }
        }
        results.push(res);
    }
    Ok(Report {
        opcodes: results,
        jit: jit.map(|j| j.stats),
        instructions: executed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn reg(regs: &BTreeMap<String, u32>, name: &str) -> Result<u32, String> {
    regs.get(name)
        .copied()
        .ok_or_else(|| format!("vector lacks register {name}"))
}

/// Loads one vector, runs it and compares. Returns a description of the differences.
fn run_vector(
    cpu: &mut Cpu,
    runner: Option<&mut dyn BlockRunner>,
    v: &Vector,
    masks: &Masks,
) -> Result<(), String> {
    let init = &v.initial.regs;
    cpu.reset();
    cpu.set_a20(true);
    for &(name, r) in &REGS {
        cpu.state.set_reg32(r, reg(init, name)?);
    }
    for &(name, s) in &SEGS {
        cpu.load_seg_real(s, reg(init, name)? as u16);
    }
    cpu.state.rip = reg(init, "ip")? as u64;
    // Bits 12-15 cannot be set in an 80286's real mode; start them clear.
    cpu.state.flags.set((reg(init, "flags")? & 0x0FFF) | 2);
    for &(addr, val) in &v.initial.ram {
        cpu.write_phys(addr as u64, &[val]);
    }
    if v.exception.as_ref().is_some_and(|e| e.number == 13) {
        // In real mode the 80286 reports every segment overrun (a word at offset FFFFh) as
        // interrupt 13; a P6 reports those through SS as #SS (12). Route vector 12 to the
        // same handler so both CPUs continue alike.
        let mut entry = [0u8; 4];
        for (i, b) in entry.iter_mut().enumerate() {
            *b = cpu.mem.read_u8(13 * 4 + i as u64);
        }
        cpu.write_phys(12 * 4, &entry);
    }
    let p6_result;
    let (after, exception_taken) = if masks.expect_ud {
        p6_result = expect_invalid_opcode(cpu, v)?;
        (&p6_result, true)
    } else {
        (&v.after, v.exception.is_some())
    };

    let exit = cpu.run_with(&mut TestBus, MAX_INSTRUCTIONS, runner);
    let mut diffs = Vec::new();
    match exit {
        Exit::Halted => {}
        Exit::Budget => diffs.push("did not reach HLT".to_string()),
        Exit::Shutdown => diffs.push("triple fault".to_string()),
    }

    let flag_mask = masks.flags;
    let expect = |name: &str| -> Result<u32, String> {
        match after.regs.get(name) {
            Some(&x) => Ok(x),
            None => reg(init, name),
        }
    };
    for &(name, r) in &REGS {
        if masks.regs.contains(&name) {
            continue;
        }
        let (want, got) = (expect(name)?, cpu.state.reg16(r) as u32);
        if want != got {
            diffs.push(format!("{name} {got:04x} want {want:04x}"));
        }
    }
    for &(name, s) in &SEGS {
        let (want, got) = (expect(name)?, cpu.state.seg[s].selector as u32);
        if want != got {
            diffs.push(format!("{name} {got:04x} want {want:04x}"));
        }
    }
    let (want, got) = (expect("ip")?, cpu.state.rip as u32);
    if want != got {
        diffs.push(format!("ip {got:04x} want {want:04x}"));
    }
    let keep = !(flag_mask as u32) & 0xFFFF;
    let (want, got) = (expect("flags")?, cpu.state.flags.get());
    if want & keep != got & keep {
        diffs.push(format!(
            "flags {:04x} want {:04x} (differ {:04x})",
            got & 0xFFFF,
            want,
            (want ^ got) & keep
        ));
    }

    // Memory: every listed final byte, and every initial byte not listed as changed.
    let mut expected: BTreeMap<u32, u8> = v.initial.ram.iter().copied().collect();
    for &(addr, val) in &after.ram {
        expected.insert(addr, val);
    }
    // Where the exception pushed FLAGS: SS:SP-2 (computed, since the vectors'
    // `flag_address` is one byte off when SP is odd).
    let pushed_flags = exception_taken.then(|| {
        let ss = init.get("ss").copied().unwrap_or(0);
        let sp = init.get("sp").copied().unwrap_or(0);
        let at = |off: u32| (ss << 4).wrapping_add(off & 0xFFFF);
        (at(sp.wrapping_sub(2)), at(sp.wrapping_sub(1)))
    });
    for (&addr, &want) in &expected {
        let got = cpu.mem.read_u8(addr as u64);
        let mask = match pushed_flags {
            Some((lo, _)) if addr == lo => !(flag_mask as u8),
            Some((_, hi)) if addr == hi => !((flag_mask >> 8) as u8),
            _ => 0xFF,
        };
        if (want ^ got) & mask != 0 {
            diffs.push(format!("mem[{addr:06x}] {got:02x} want {want:02x}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join(", "))
    }
}

/// Prepares a P6 #UD for the vector: IVT entry 6 points at a HLT placed in memory the
/// vector does not use, and returns the registers and memory bytes a P6 ends with.
fn expect_invalid_opcode(cpu: &mut Cpu, v: &Vector) -> Result<Snapshot, String> {
    let init = &v.initial.regs;
    let (ss, sp) = (reg(init, "ss")?, reg(init, "sp")?);
    let stack_at = |off: u32| (ss << 4).wrapping_add(off & 0xFFFF);
    let stack: Vec<u32> = (1..=6).map(|i| stack_at(sp.wrapping_sub(i))).collect();
    let used: HashSet<u32> = v.initial.ram.iter().map(|&(a, _)| a).collect();
    let halt = (0x500u32..0x7_0000)
        .find(|a| !used.contains(a) && !stack.contains(a) && !(0x18..0x1C).contains(a))
        .ok_or("no free byte for the #UD handler")?;
    // The handler is at 0000:halt (halt < 64 KiB is not needed: use segment halt >> 4).
    let (seg, off) = (halt >> 4, halt & 0xF);
    let entry = [off as u8, (off >> 8) as u8, seg as u8, (seg >> 8) as u8];
    cpu.write_phys(0x18, &entry);
    cpu.write_phys(halt as u64, &[0xF4]);

    let flags = (reg(init, "flags")? & 0x0FFF) | 2;
    let ip = reg(init, "ip")?;
    let cs = reg(init, "cs")?;
    let mut regs = BTreeMap::new();
    regs.insert("sp".to_string(), sp.wrapping_sub(6) & 0xFFFF);
    regs.insert("cs".to_string(), seg);
    regs.insert("ip".to_string(), off + 1);
    regs.insert("flags".to_string(), flags & !(flags::IF | flags::TF));
    let mut ram = vec![(halt, 0xF4)];
    ram.extend(entry.iter().enumerate().map(|(i, &b)| (0x18 + i as u32, b)));
    let pushed = [flags, cs, ip];
    for (i, word) in pushed.iter().enumerate() {
        let off = sp.wrapping_sub(2 * (i as u32 + 1));
        ram.push((stack_at(off), *word as u8));
        ram.push((stack_at(off.wrapping_add(1)), (*word >> 8) as u8));
    }
    Ok(Snapshot { regs, ram })
}

/// The masked count of a shift or rotate (CL, an immediate, or 1), as the CPU saw it.
fn shift_count(v: &Vector) -> u32 {
    // Skip prefixes to find the opcode byte; the count follows the ModRM operand.
    let mut i = 0;
    while i < v.bytes.len() && matches!(v.bytes[i], 0x26 | 0x2E | 0x36 | 0x3E | 0xF0 | 0xF2 | 0xF3)
    {
        i += 1;
    }
    let Some(&op) = v.bytes.get(i) else { return 1 };
    let count = match op {
        0xD0 | 0xD1 => 1,
        0xD2 | 0xD3 => v.initial.regs.get("cx").copied().unwrap_or(0) & 0xFF,
        0xC0 | 0xC1 => {
            let modrm = v.bytes.get(i + 1).copied().unwrap_or(0);
            let disp = match (modrm >> 6, modrm & 7) {
                (0, 6) => 2,
                (0, _) | (3, _) => 0,
                (1, _) => 1,
                _ => 2,
            };
            v.bytes.get(i + 2 + disp).copied().unwrap_or(0) as u32
        }
        _ => 1,
    };
    count & 0x1F
}

/// Formats the per-opcode table and the summary lines; the last line is
/// `N passed, M failed`.
pub fn format_report(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>7} {:>7} {:>7}  note",
        "opcode", "passed", "failed", "skipped"
    );
    for o in &report.opcodes {
        let note = match (&o.first_failure, &o.skip_reason) {
            (Some(f), _) => format!("first failure: {f}"),
            (None, Some(r)) => format!("skipped: {r}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>7} {:>7}  {}",
            o.opcode, o.passed, o.failed, o.skipped, note
        );
    }
    let (p, f, s) = (report.passed(), report.failed(), report.skipped());
    let total = p + f + s;
    let percent = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
    let secs = report.seconds.max(1e-9);
    let _ = writeln!(
        out,
        "{total} vectors: {:.3}% passed, {:.3}% failed, {s} ({:.3}%) skipped (see \
         --list-differences)",
        percent(p),
        percent(f),
        percent(s),
    );
    let _ = writeln!(
        out,
        "{} instructions in {secs:.2}s: {:.0} vectors/s, {:.2} M instr/s (set-up included)",
        report.instructions,
        (p + f) as f64 / secs,
        report.instructions as f64 / secs / 1e6,
    );
    if let Some(s) = &report.jit {
        let _ = writeln!(
            out,
            "JIT: {} blocks compiled ({} instructions, {} native), {} left to the \
             interpreter, {} compiled block runs",
            s.compiled_blocks,
            s.compiled_instructions,
            s.native_instructions,
            s.interpreted_blocks,
            s.block_runs
        );
    }
    let _ = writeln!(out, "{p} passed, {f} failed");
    out
}
