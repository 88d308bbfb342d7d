//! Guest-program test harness: assembles small programs with iced-x86's `CodeAssembler`,
//! boots them from real mode at 0000:7C00 into 32-bit protected mode, and collects what
//! they print on the debug console port (0xE9).
//!
//! Every program builds its own GDT and IDT (with mov instructions, so the tables are the
//! guest's own work), checks its own results and prints `OK <name>` or
//! `FAIL <name> <detail> got=<hex>` before halting.

#![allow(dead_code)]

use hospes_cpu::mem::Bus;
use hospes_cpu::state::{Segment, CS};
use hospes_cpu::{Cpu, Exit};
use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};
use std::collections::HashMap;

/// Guest memory layout shared by the programs.
pub const PROG_BASE: u32 = 0x10000;
pub const GDTR: u32 = 0x0FF0;
pub const IDTR: u32 = 0x0FF8;
pub const GDT: u32 = 0x1000;
pub const IDT: u32 = 0x1800;
/// Scratch words the programs record results in.
pub const RESULTS: u32 = 0x8000;
pub const STACK0: u32 = 0x9F000;
pub const RAM: usize = 16 << 20;

/// Standard GDT selectors (the prologue installs entries 1-4).
pub const SEL_CODE0: u16 = 0x08;
pub const SEL_DATA0: u16 = 0x10;
pub const SEL_CODE3: u16 = 0x18;
pub const SEL_DATA3: u16 = 0x20;

pub const CODE0: u64 = 0x00CF_9A00_0000_FFFF;
pub const DATA0: u64 = 0x00CF_9200_0000_FFFF;
pub const CODE3: u64 = 0x00CF_FA00_0000_FFFF;
pub const DATA3: u64 = 0x00CF_F200_0000_FFFF;

/// A code/data/system segment descriptor. `access` is the access byte, `flags` the
/// G/D/L/AVL nibble; `limit` is the raw 20-bit field.
pub fn seg_desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xFFFF)
        | ((base as u64 & 0xFF_FFFF) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xF) << 48)
        | (((flags as u64) & 0xF) << 52)
        | (((base as u64) >> 24) << 56)
}

/// An available 32-bit TSS descriptor (DPL 0).
pub fn tss_desc(base: u32, limit: u32) -> u64 {
    seg_desc(base, limit, 0x89, 0)
}

/// A gate descriptor: `access` is P | DPL | type (e.g. 0x8E interrupt gate, 0xEC call
/// gate DPL 3, 0x85 task gate).
pub fn gate_desc(sel: u16, off: u32, access: u8, params: u8) -> u64 {
    (off as u64 & 0xFFFF)
        | ((sel as u64) << 16)
        | ((params as u64 & 0x1F) << 32)
        | ((access as u64) << 40)
        | (((off as u64) >> 16) << 48)
}

/// The debug-console bus. A write to port 0xE8 raises an external interrupt with the
/// written vector (delivered when IF allows, acknowledged once).
#[derive(Default)]
pub struct TestBus {
    pub out: Vec<u8>,
    pub pending_irq: Option<u8>,
}

impl Bus for TestBus {
    fn io_read(&mut self, _port: u16, size: u8) -> u32 {
        hospes_cpu::mem::ones(size) as u32
    }
    fn io_write(&mut self, port: u16, _size: u8, value: u32) {
        match port {
            0xE9 => self.out.push(value as u8),
            0xE8 => self.pending_irq = Some(value as u8),
            _ => {}
        }
    }
    fn intr_pending(&mut self) -> bool {
        self.pending_irq.is_some()
    }
    fn intr_ack(&mut self) -> u8 {
        self.pending_irq.take().unwrap_or(0xFF)
    }
    fn mmio_read(&mut self, _addr: u64, size: u8) -> u64 {
        hospes_cpu::mem::ones(size)
    }
    fn mmio_write(&mut self, _addr: u64, _size: u8, _value: u64) {}
}

/// A program being assembled: the assembler plus named labels and the addresses the
/// previous pass found for them (programs are assembled until the layout is stable, so
/// label addresses can be used as immediates).
pub struct Prog {
    pub a: CodeAssembler,
    pub name: String,
    labels: HashMap<String, CodeLabel>,
    known: HashMap<String, u64>,
    strings: Vec<(String, Vec<u8>)>,
    fails: Vec<(String, u32)>,
    counter: usize,
}

pub type R = Result<(), IcedError>;

impl Prog {
    fn new(bitness: u32, name: &str, known: HashMap<String, u64>) -> Prog {
        Prog {
            a: CodeAssembler::new(bitness).unwrap(),
            name: name.to_string(),
            labels: HashMap::new(),
            known,
            strings: Vec::new(),
            fails: Vec::new(),
            counter: 0,
        }
    }

    /// The label called `name` (for jumps and calls).
    pub fn l(&mut self, name: &str) -> CodeLabel {
        if let Some(l) = self.labels.get(name) {
            return *l;
        }
        let l = self.a.create_label();
        self.labels.insert(name.to_string(), l);
        l
    }

    /// Places label `name` at the next instruction.
    pub fn here(&mut self, name: &str) -> R {
        let mut l = self.l(name);
        self.a.set_label(&mut l)?;
        self.labels.insert(name.to_string(), l);
        Ok(())
    }

    /// The address of label `name` (from the previous pass; 0 in the first).
    pub fn addr(&self, name: &str) -> u32 {
        self.known.get(name).copied().unwrap_or(0) as u32
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// The address of a NUL-terminated string placed after the code.
    pub fn string(&mut self, text: &str) -> u32 {
        let name = self.fresh("str");
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        self.strings.push((name.clone(), bytes));
        self.addr(&name)
    }

    /// Stores a descriptor at a linear address with two `mov dword` instructions.
    pub fn store64(&mut self, addr: u32, v: u64) -> R {
        self.a.mov(dword_ptr(addr), v as u32)?;
        self.a.mov(dword_ptr(addr + 4), (v >> 32) as u32)
    }

    /// Installs an IDT gate to label `handler`.
    pub fn idt_gate(&mut self, vector: u8, handler: &str, access: u8) -> R {
        let off = self.addr(handler);
        self.store64(
            IDT + vector as u32 * 8,
            gate_desc(SEL_CODE0, off, access, 0),
        )
    }

    /// Fails the test unless EAX == `value` (EAX is printed on failure).
    pub fn expect_eax(&mut self, value: u32, detail: &str) -> R {
        let fail = self.fresh("fail");
        let msg = format!("FAIL {} {} got=", self.name, detail);
        let msg_addr = self.string(&msg);
        self.fails.push((fail.clone(), msg_addr));
        self.a.cmp(eax, value)?;
        let l = self.l(&fail);
        self.a.jne(l)
    }

    /// Loads the dword at `addr` into EAX and checks it.
    pub fn expect_mem(&mut self, addr: u32, value: u32, detail: &str) -> R {
        self.a.mov(eax, dword_ptr(addr))?;
        self.expect_eax(value, detail)
    }

    /// Prints "OK <name>" and halts.
    pub fn ok(&mut self) -> R {
        let s = self.string(&format!("OK {}\n", self.name));
        self.a.mov(esi, s)?;
        let puts = self.l("puts");
        self.a.call(puts)?;
        self.a.cli()?;
        self.a.hlt()
    }

    /// Prints a fixed failure message and halts.
    pub fn fail_now(&mut self, detail: &str) -> R {
        let s = self.string(&format!("FAIL {} {}\n", self.name, detail));
        self.a.mov(esi, s)?;
        let puts = self.l("puts");
        self.a.call(puts)?;
        self.a.cli()?;
        self.a.hlt()
    }

    /// Reloads DS and ES with the ring-0 data selector (handlers entered from ring 3
    /// or V86 mode must do this before touching memory).
    pub fn kernel_data(&mut self) -> R {
        self.a.mov(ax, SEL_DATA0 as u32)?;
        self.a.mov(ds, ax)?;
        self.a.mov(es, ax)
    }

    /// Enters the standard 32-bit environment: flat segments, the GDT with `extra`
    /// entries after the four standard ones (entry 5 is selector 0x28), and an IDT whose
    /// vectors 0-31 report an unexpected exception.
    pub fn prologue(&mut self, extra: &[u64]) -> R {
        let a = &mut self.a;
        a.mov(ax, SEL_DATA0 as u32)?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(ss, ax)?;
        a.mov(esp, STACK0)?;
        let mut entries = vec![0, CODE0, DATA0, CODE3, DATA3];
        entries.extend_from_slice(extra);
        for (i, &d) in entries.iter().enumerate() {
            self.store64(GDT + 8 * i as u32, d)?;
        }
        self.a.mov(word_ptr(GDTR), (entries.len() * 8 - 1) as u32)?;
        self.a.mov(dword_ptr(GDTR + 2), GDT)?;
        self.a.lgdt(ptr(GDTR))?;
        let reload = self.addr("reload_cs");
        self.a.jmp_far(SEL_CODE0, reload)?;
        self.here("reload_cs")?;
        self.a.mov(ax, SEL_DATA0 as u32)?;
        self.a.mov(ds, ax)?;
        self.a.mov(es, ax)?;
        self.a.mov(fs, ax)?;
        self.a.mov(gs, ax)?;
        self.a.mov(ss, ax)?;
        // Zero the IDT, then route vectors 0-31 to the unexpected-exception stubs.
        self.a.mov(edi, IDT)?;
        self.a.xor(eax, eax)?;
        self.a.mov(ecx, 512u32)?;
        self.a.cld()?;
        self.a.rep().stosd()?;
        for v in 0..32u8 {
            self.idt_gate(v, &format!("unexpected{v}"), 0x8E)?;
        }
        self.a.mov(word_ptr(IDTR), 0x7FFu32)?;
        self.a.mov(dword_ptr(IDTR + 2), IDT)?;
        self.a.lidt(ptr(IDTR))
    }

    /// Builds identity-mapped paging for the first 4 MiB with 4 KiB pages: page
    /// directory at `pd`, page table at `pt`, entry flags `flags` (P, R/W, U/S ...).
    pub fn identity_paging(&mut self, pd: u32, pt: u32, flags: u32) -> R {
        let a = &mut self.a;
        a.cld()?;
        a.mov(edi, pd)?;
        a.xor(eax, eax)?;
        a.mov(ecx, 1024u32)?;
        a.rep().stosd()?;
        a.mov(edi, pt)?;
        a.mov(eax, flags)?;
        a.mov(ecx, 1024u32)?;
        let fill = self.fresh("fill");
        self.here(&fill)?;
        self.a.stosd()?;
        self.a.add(eax, 0x1000u32)?;
        let l = self.l(&fill);
        self.a.loop_(l)?;
        self.a.mov(dword_ptr(pd), pt | flags)
    }

    /// Shared subroutines, failure stubs and strings, placed after the program.
    fn epilogue(&mut self) -> R {
        // puts: prints the NUL-terminated string at ESI.
        self.here("puts")?;
        self.a.push(eax)?;
        let done = self.fresh("puts_done");
        let lp = self.fresh("puts_loop");
        self.here(&lp)?;
        self.a.lodsb()?;
        self.a.test(al, al)?;
        let l = self.l(&done);
        self.a.jz(l)?;
        self.a.out(0xE9u32, al)?;
        let l = self.l(&lp);
        self.a.jmp(l)?;
        self.here(&done)?;
        self.a.pop(eax)?;
        self.a.ret()?;
        // puthex: prints EAX as 8 hex digits.
        self.here("puthex")?;
        self.a.push(ecx)?;
        self.a.mov(ecx, 8u32)?;
        self.here("puthex_loop")?;
        self.a.rol(eax, 4)?;
        self.a.push(eax)?;
        self.a.and(al, 0xF)?;
        self.a.cmp(al, 10)?;
        let digit = self.l("puthex_digit");
        self.a.jb(digit)?;
        self.a.add(al, 7)?;
        self.here("puthex_digit")?;
        self.a.add(al, 0x30)?;
        self.a.out(0xE9u32, al)?;
        self.a.pop(eax)?;
        self.a.dec(ecx)?;
        let l = self.l("puthex_loop");
        self.a.jnz(l)?;
        self.a.pop(ecx)?;
        self.a.ret()?;
        // Unexpected exceptions: print the vector and the two dwords on top of the stack.
        let unexpected = format!("FAIL {} unexpected vector=", self.name);
        let unexpected = self.string(&unexpected);
        let top = self.string(" stack=");
        let sep = self.string(" ");
        let nl = self.string("\n");
        for v in 0..32u32 {
            self.here(&format!("unexpected{v}"))?;
            self.a.push(v)?;
            let l = self.l("unexpected_common");
            self.a.jmp(l)?;
        }
        self.here("unexpected_common")?;
        self.a.mov(ax, SEL_DATA0 as u32)?;
        self.a.mov(ds, ax)?;
        self.a.mov(esi, unexpected)?;
        let puts = self.l("puts");
        let puthex = self.l("puthex");
        self.a.call(puts)?;
        self.a.pop(eax)?;
        self.a.call(puthex)?;
        self.a.mov(esi, top)?;
        self.a.call(puts)?;
        self.a.mov(eax, dword_ptr(esp))?;
        self.a.call(puthex)?;
        self.a.mov(esi, sep)?;
        self.a.call(puts)?;
        self.a.mov(eax, dword_ptr(esp + 4))?;
        self.a.call(puthex)?;
        self.a.mov(esi, sep)?;
        self.a.call(puts)?;
        self.a.mov(eax, dword_ptr(esp + 8))?;
        self.a.call(puthex)?;
        self.a.mov(esi, nl)?;
        self.a.call(puts)?;
        self.a.cli()?;
        self.a.hlt()?;
        // Failure stubs: message, EAX, newline, halt.
        let fails = std::mem::take(&mut self.fails);
        for (label, msg) in fails {
            self.here(&label)?;
            self.a.push(eax)?;
            self.a.mov(ax, SEL_DATA0 as u32)?;
            self.a.mov(ds, ax)?;
            self.a.mov(esi, msg)?;
            self.a.call(puts)?;
            self.a.pop(eax)?;
            self.a.call(puthex)?;
            self.a.mov(esi, nl)?;
            self.a.call(puts)?;
            self.a.cli()?;
            self.a.hlt()?;
        }
        let strings = std::mem::take(&mut self.strings);
        for (name, bytes) in strings {
            self.here(&name)?;
            self.a.db(&bytes)?;
        }
        Ok(())
    }
}

/// Assembles a program at `base` until label addresses are stable. 32-bit programs get
/// the shared epilogue. Returns the bytes and the label addresses.
pub fn assemble(
    bitness: u32,
    base: u32,
    name: &str,
    body: &dyn Fn(&mut Prog) -> R,
) -> (Vec<u8>, HashMap<String, u64>) {
    let mut known: HashMap<String, u64> = HashMap::new();
    let mut prev: Option<Vec<u8>> = None;
    for _ in 0..6 {
        let mut p = Prog::new(bitness, name, known.clone());
        body(&mut p).unwrap();
        if bitness == 32 {
            p.epilogue().unwrap();
        }
        let res =
            p.a.assemble_options(
                base as u64,
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .unwrap();
        let mut now = HashMap::new();
        for (n, l) in &p.labels {
            now.insert(n.clone(), res.label_ip(l).unwrap());
        }
        let bytes = res.inner.code_buffer;
        if now == known && prev.as_ref() == Some(&bytes) {
            return (bytes, known);
        }
        known = now;
        prev = Some(bytes);
    }
    panic!("program {name} does not converge");
}

/// The real-mode boot stub at 0000:7C00: loads a minimal GDT and jumps to the 32-bit
/// program at PROG_BASE, which then installs its own tables.
fn boot_stub() -> Vec<u8> {
    let (bytes, _) = assemble(16, 0x7C00, "stub", &|p| {
        let gdtr = p.addr("gdtr");
        p.a.cli()?;
        p.a.xor(ax, ax)?;
        p.a.mov(ds, ax)?;
        p.a.mov(ss, ax)?;
        p.a.mov(sp, 0x7C00u32)?;
        p.a.lgdt(ptr(gdtr))?;
        p.a.mov(eax, cr0)?;
        p.a.or(eax, 1)?;
        p.a.mov(cr0, eax)?;
        // jmp dword 0008:PROG_BASE (o32 EA: code_asm's 16-bit form has a 16-bit offset).
        let mut far = vec![0x66, 0xEA];
        far.extend_from_slice(&PROG_BASE.to_le_bytes());
        far.extend_from_slice(&SEL_CODE0.to_le_bytes());
        p.a.db(&far)?;
        p.here("gdt")?;
        p.a.dq(&[0, CODE0, DATA0])?;
        p.here("gdtr")?;
        p.a.dw(&[23])?;
        let gdt = p.addr("gdt");
        p.a.dd(&[gdt])
    });
    bytes
}

/// Runs a 32-bit program (plus extra images at physical addresses) from real mode and
/// returns what it printed. Asserts it halted without a triple fault.
pub fn run_program(name: &str, images: &[(u32, Vec<u8>)], body: &dyn Fn(&mut Prog) -> R) -> String {
    let (prog, _) = assemble(32, PROG_BASE, name, body);
    let mut cpu = Cpu::new(RAM, 0).unwrap();
    cpu.write_phys(0x7C00, &boot_stub());
    cpu.write_phys(PROG_BASE as u64, &prog);
    for (addr, img) in images {
        cpu.write_phys(*addr as u64, img);
    }
    let attr = cpu.state.seg[CS].attr;
    cpu.state.seg[CS] = Segment::real(0, attr);
    cpu.state.rip = 0x7C00;
    let mut bus = TestBus::default();
    // PM_TRACE=n prints the first n instructions' CS:EIP (for debugging a program).
    let trace: u64 = std::env::var("PM_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..trace {
        let lin = cpu.state.seg[CS].base + cpu.state.rip;
        let mut code = [0u8; 16];
        cpu.mem.read(lin, &mut code);
        let bits = if cpu.state.code32() { 32 } else { 16 };
        let ins = iced_x86::Decoder::with_ip(bits, &code, cpu.state.rip, 0).decode();
        eprintln!(
            "{:04x}:{:08x} cpl={} esp={:08x} fl={:08x} {ins}",
            cpu.state.seg[CS].selector,
            cpu.state.rip,
            cpu.state.cpl,
            cpu.state.gpr[4],
            cpu.state.flags.get()
        );
        if cpu.run(&mut bus, 1) != Exit::Budget {
            break;
        }
    }
    let exit = cpu.run(&mut bus, 20_000_000);
    let out = String::from_utf8_lossy(&bus.out).into_owned();
    assert!(
        !cpu.shutdown,
        "{name}: triple fault; output so far: {out:?}"
    );
    assert_eq!(
        exit,
        Exit::Halted,
        "{name}: did not halt; output so far: {out:?}"
    );
    out
}
