//! The built-in demo guest: what `hospes` runs with no arguments.
//!
//! A small operating-system-like program, assembled here with iced-x86's assembler, that
//! starts in real mode like a boot sector and walks through what the CPU core provides:
//! CPUID, the switch to 32-bit protected mode, paging with 4 KiB and 4 MiB pages, an
//! interrupt descriptor table, a TSS and a drop to ring 3, a system call back to ring 0
//! and a page fault caught by its handler. It reports on COM1 (port 3F8h), the serial
//! console, and on the screen (through INT 10h in real mode, straight into the VGA text
//! buffer in protected mode), and powers the machine off. It boots from an in-memory hard disk on the
//! real PC: our BIOS loads its boot sector, which loads the rest with INT 13h.

use crate::screen::{self, DisplayArgs, Ended, Presentation};
use hospes_bios::{BootDevice, BootOptions, Drive, DriveError, DriveKind, FIRST_HARD_DISK};
use hospes_machine::board::DriveSlot;
use hospes_machine::{Machine, MachineConfig, Stop};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

/// Where the pieces of the demo live in guest-physical memory (identity-mapped).
/// The boot sector (loaded by the BIOS) and the real-mode start it jumps to after
/// loading the rest of the image (everything from [`LOAD_BASE`] up) with INT 13h.
const BOOT_SECTOR: u64 = 0x7C00;
const REAL_CODE: u64 = 0x7000;
const LOAD_BASE: u64 = 0x0800;
const LOAD_END: u64 = 0x7400;
const GDT: u64 = 0x0800;
const IDT: u64 = 0x1000;
/// The IDTR image (limit, base) right after the 256-entry IDT.
const IDTR: u64 = IDT + 256 * 8;
const TSS: u64 = 0x1900;
const KERNEL_CODE: u64 = 0x2000;
/// A page the kernel keeps for itself; ring 3 writing here is the demo's page fault.
const KERNEL_DATA: u64 = 0x3000;
const USER_CODE: u64 = 0x6000;
const USER_STACK_TOP: u64 = 0x8000;
/// Strings and variables (kernel memory).
const DATA: u64 = 0x4000;
const PAGE_DIR: u64 = 0x10000;
const PAGE_TABLE: u64 = 0x11000;
const KERNEL_STACK_TOP: u64 = 0x9F000;
/// The 4 MiB page at this linear address aliases physical 0 (a PSE mapping).
const ALIAS: u64 = 0x8000_0000;

const SEL_KCODE: u16 = 0x08;
const SEL_KDATA: u16 = 0x10;
const SEL_UCODE: u16 = 0x18 | 3;
const SEL_UDATA: u16 = 0x20 | 3;
const SEL_TSS: u16 = 0x28;

const COM1: u16 = 0x3F8;
/// The VGA text buffer (80x25 cells of character and attribute) and the kernel's
/// cursor in it, kept in kernel memory.
const TEXT_BUFFER: u32 = 0xB_8000;
const SCREEN_COLUMNS: i32 = 80;
const SCREEN_ROWS: i32 = 25;
const CURSOR_COL: u64 = KERNEL_DATA + 0x200;
const CURSOR_ROW: u64 = KERNEL_DATA + 0x204;
/// Light green on black: what the protected-mode kernel writes stands out.
const KERNEL_TEXT_ATTR: u8 = 0x0A;
const RAM_MIB: u64 = 16;
/// The demo needs well under a million instructions; this bounds a broken CPU.
const MAX_INSTRUCTIONS: u64 = 50_000_000;

/// Strings and variables laid out from [`DATA`]; code refers to them by address.
struct Data {
    bytes: Vec<u8>,
}

impl Data {
    /// Places a NUL-terminated string and returns its address.
    fn string(&mut self, text: &str) -> u32 {
        let at = DATA as u32 + self.bytes.len() as u32;
        self.bytes.extend_from_slice(text.as_bytes());
        self.bytes.push(0);
        at
    }
}

/// The assembled demo: memory contents (entered at 0000:[`REAL_CODE`]).
pub struct DemoImage {
    pub chunks: Vec<(u64, Vec<u8>)>,
}

fn asm_err(e: IcedError) -> String {
    format!("assembling the demo guest: {e}")
}

/// A GDT entry from base, limit (in 4 KiB units when `granular`), access byte and flags.
fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xFFFF)
        | (base as u64 & 0xFF_FFFF) << 16
        | (access as u64) << 40
        | ((limit as u64 >> 16) & 0xF) << 48
        | ((flags as u64) & 0xF) << 52
        | ((base as u64) >> 24) << 56
}

/// A 32-bit interrupt gate to `offset` in the kernel code segment.
fn interrupt_gate(offset: u32, dpl: u8) -> u64 {
    (offset as u64 & 0xFFFF)
        | (SEL_KCODE as u64) << 16
        | (0x8E | (dpl as u64) << 5) << 40
        | ((offset as u64) >> 16) << 48
}

pub fn build() -> Result<DemoImage, String> {
    let mut chunks = Vec::new();
    let mut data = Data { bytes: Vec::new() };

    // ---- tables: GDT (flat kernel and user segments, the TSS) ----
    let gdt = [
        0,
        descriptor(0, 0xFFFFF, 0x9A, 0xC), // kernel code: 32-bit, 4 GiB
        descriptor(0, 0xFFFFF, 0x92, 0xC), // kernel data
        descriptor(0, 0xFFFFF, 0xFA, 0xC), // user code (DPL 3)
        descriptor(0, 0xFFFFF, 0xF2, 0xC), // user data (DPL 3)
        descriptor(TSS as u32, 103, 0x89, 0x0), // available 32-bit TSS
    ];
    let mut gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    // The GDTR image (limit, base) follows the table.
    let gdtr_addr = GDT + gdt_bytes.len() as u64;
    gdt_bytes.extend_from_slice(&((gdt.len() * 8 - 1) as u16).to_le_bytes());
    gdt_bytes.extend_from_slice(&(GDT as u32).to_le_bytes());
    chunks.push((GDT, gdt_bytes));

    // ---- the kernel: 32-bit protected-mode code and its strings ----
    let mut k = CodeAssembler::new(32).map_err(asm_err)?;
    let kernel = assemble_kernel(&mut k, &mut data)?;
    let result = k
        .assemble_options(
            KERNEL_CODE,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .map_err(asm_err)?;
    let at = |l: &CodeLabel| result.label_ip(l).map_err(asm_err);
    let kernel_entry = at(&kernel.entry)?;
    let mut idt = vec![0u8; 256 * 8];
    for (vector, handler, dpl) in [
        (13usize, &kernel.gp_handler, 0u8),
        (14, &kernel.pf_handler, 0),
        (0x80, &kernel.syscall, 3),
    ] {
        let gate = interrupt_gate(at(handler)? as u32, dpl);
        idt[vector * 8..vector * 8 + 8].copy_from_slice(&gate.to_le_bytes());
    }
    debug_assert_eq!(IDT + idt.len() as u64, IDTR);
    idt.extend_from_slice(&(256u16 * 8 - 1).to_le_bytes());
    idt.extend_from_slice(&(IDT as u32).to_le_bytes());
    chunks.push((IDT, idt));
    chunks.push((KERNEL_CODE, result.inner.code_buffer.clone()));

    // ---- user program (ring 3) ----
    let mut u = CodeAssembler::new(32).map_err(asm_err)?;
    chunks.push((USER_CODE, assemble_user(&mut u)?));

    // ---- real-mode start, like a boot sector ----
    let mut r = CodeAssembler::new(16).map_err(asm_err)?;
    assemble_real_mode(&mut r, &mut data, gdtr_addr, kernel_entry)?;
    chunks.push((REAL_CODE, r.assemble(REAL_CODE).map_err(asm_err)?));

    chunks.push((DATA, data.bytes));
    Ok(DemoImage { chunks })
}

fn assemble_real_mode(
    a: &mut CodeAssembler,
    data: &mut Data,
    gdtr: u64,
    kernel_entry: u64,
) -> Result<(), String> {
    let mut print = a.create_label();
    let hello = data.string(
        "hospes demo guest\r\n  real mode: booted from hard disk 80h by the hospes BIOS\r\n",
    );
    // The vendor string is stored into the middle of this message.
    let vendor_msg = data.string("  CPUID vendor: ????????????\r\n");
    let vendor = vendor_msg + 16;
    let e = asm_err;

    a.cli().map_err(e)?;
    a.xor(ax, ax).map_err(e)?;
    a.mov(ds, ax).map_err(e)?;
    a.mov(es, ax).map_err(e)?;
    a.mov(ss, ax).map_err(e)?;
    a.mov(sp, BOOT_SECTOR as u32).map_err(e)?;
    a.mov(si, hello).map_err(e)?;
    a.call(print).map_err(e)?;
    // CPUID leaf 0: the vendor string in EBX EDX ECX.
    a.xor(eax, eax).map_err(e)?;
    a.cpuid().map_err(e)?;
    a.mov(dword_ptr(vendor), ebx).map_err(e)?;
    a.mov(dword_ptr(vendor) + 4, edx).map_err(e)?;
    a.mov(dword_ptr(vendor) + 8, ecx).map_err(e)?;
    a.mov(si, vendor_msg).map_err(e)?;
    a.call(print).map_err(e)?;
    // Into protected mode: load the GDT, set CR0.PE, far-jump to 32-bit code.
    a.lgdt(ptr(gdtr as u32)).map_err(e)?;
    a.mov(eax, cr0).map_err(e)?;
    a.or(eax, 1).map_err(e)?;
    a.mov(cr0, eax).map_err(e)?;
    let mut far_jump = vec![0x66, 0xEA];
    far_jump.extend_from_slice(&(kernel_entry as u32).to_le_bytes());
    far_jump.extend_from_slice(&SEL_KCODE.to_le_bytes());
    a.db(&far_jump).map_err(e)?;

    // print: DS:SI = NUL-terminated string, to COM1 (waiting for the transmitter).
    a.set_label(&mut print).map_err(e)?;
    let mut wait = a.create_label();
    let mut done = a.create_label();
    a.lodsb().map_err(e)?;
    a.test(al, al).map_err(e)?;
    a.jz(done).map_err(e)?;
    a.mov(ah, al).map_err(e)?;
    a.mov(dx, COM1 as u32 + 5).map_err(e)?;
    a.set_label(&mut wait).map_err(e)?;
    a.in_(al, dx).map_err(e)?;
    a.test(al, 0x20).map_err(e)?;
    a.jz(wait).map_err(e)?;
    a.mov(al, ah).map_err(e)?;
    a.mov(dx, COM1 as u32).map_err(e)?;
    a.out(dx, al).map_err(e)?;
    // And on the screen, through the BIOS (INT 10h teletype, page 0).
    a.mov(ah, 0x0E).map_err(e)?;
    a.mov(bx, 0x0007).map_err(e)?;
    a.int(0x10).map_err(e)?;
    a.jmp(print).map_err(e)?;
    a.set_label(&mut done).map_err(e)?;
    a.ret().map_err(e)?;

    Ok(())
}

struct KernelLabels {
    entry: CodeLabel,
    gp_handler: CodeLabel,
    pf_handler: CodeLabel,
    syscall: CodeLabel,
}

fn assemble_kernel(a: &mut CodeAssembler, data: &mut Data) -> Result<KernelLabels, String> {
    let e = asm_err;
    let mut entry = a.create_label();
    let mut print = a.create_label();
    let mut put_screen = a.create_label();
    let mut print_hex = a.create_label();
    let mut print_dec = a.create_label();
    let mut gp_handler = a.create_label();
    let mut pf_handler = a.create_label();
    let mut syscall = a.create_label();
    let mut finish = a.create_label();
    let mut fail = a.create_label();
    let m_pm = data.string("  protected mode: 32-bit flat segments, CPL 0\r\n");
    let m_paging = data
        .string("  paging: on, 4 KiB pages + a 4 MiB page; alias 0x80003000 -> 0x00003000 ok\r\n");
    let m_primes = data.string("  primes below 100:\r\n   ");
    let m_ring3 = data.string("  TSS and IDT loaded; IRET to ring 3\r\n");
    let m_pf = data.string("  ring 0: caught #PF from ring 3, CR2=");
    let m_err = data.string(" error code=");
    let m_gp = data.string("  unexpected #GP, error code=");
    let m_done = data.string("demo finished: powering off\r\n");
    let m_fail = data.string("\r\ndemo FAILED\r\n");
    let m_space = data.string(" ");
    let m_newline = data.string("\r\n");

    a.set_label(&mut entry).map_err(e)?;
    a.mov(ax, SEL_KDATA as u32).map_err(e)?;
    a.mov(ds, ax).map_err(e)?;
    a.mov(es, ax).map_err(e)?;
    a.mov(ss, ax).map_err(e)?;
    a.mov(fs, ax).map_err(e)?;
    a.mov(gs, ax).map_err(e)?;
    a.mov(esp, KERNEL_STACK_TOP as u32).map_err(e)?;
    // The screen cursor continues where the BIOS left it (BDA 450h: column, row).
    a.movzx(eax, byte_ptr(0x450u32)).map_err(e)?;
    a.mov(dword_ptr(CURSOR_COL as u32), eax).map_err(e)?;
    a.movzx(eax, byte_ptr(0x451u32)).map_err(e)?;
    a.mov(dword_ptr(CURSOR_ROW as u32), eax).map_err(e)?;
    a.mov(esi, m_pm).map_err(e)?;
    a.call(print).map_err(e)?;

    // Page table: identity-map the first 4 MiB, supervisor-only except the user pages.
    a.mov(edi, PAGE_TABLE as u32).map_err(e)?;
    a.mov(eax, 3u32).map_err(e)?; // present, writable
    a.mov(ecx, 1024u32).map_err(e)?;
    let mut fill = a.create_label();
    a.set_label(&mut fill).map_err(e)?;
    a.stosd().map_err(e)?;
    a.add(eax, 0x1000).map_err(e)?;
    a.loop_(fill).map_err(e)?;
    for page in [USER_CODE, USER_STACK_TOP - 0x1000] {
        a.or(dword_ptr((PAGE_TABLE + (page >> 12) * 4) as u32), 4)
            .map_err(e)?;
    }
    a.mov(dword_ptr(PAGE_DIR as u32), (PAGE_TABLE | 7) as u32)
        .map_err(e)?;
    // A 4 MiB page (PSE) aliasing physical 0 at 2 GiB.
    a.mov(dword_ptr((PAGE_DIR + (ALIAS >> 22) * 4) as u32), 0x83u32)
        .map_err(e)?;
    a.mov(eax, cr4).map_err(e)?;
    a.or(eax, 0x10).map_err(e)?; // CR4.PSE
    a.mov(cr4, eax).map_err(e)?;
    a.mov(eax, PAGE_DIR as u32).map_err(e)?;
    a.mov(cr3, eax).map_err(e)?;
    a.mov(eax, cr0).map_err(e)?;
    a.or(eax, 0x8000_0000u32 as i32).map_err(e)?; // CR0.PG
    a.mov(cr0, eax).map_err(e)?;
    // Write through the 4 MiB alias, read back through the identity mapping.
    a.mov(
        dword_ptr((ALIAS + KERNEL_DATA) as u32),
        0x600D_CAFEu32 as i32,
    )
    .map_err(e)?;
    a.cmp(dword_ptr(KERNEL_DATA as u32), 0x600D_CAFEu32 as i32)
        .map_err(e)?;
    a.jne(fail).map_err(e)?;
    a.mov(esi, m_paging).map_err(e)?;
    a.call(print).map_err(e)?;

    // Sieve of Eratosthenes below 100 in kernel memory, then print the primes.
    let sieve = KERNEL_DATA as u32 + 0x100;
    a.mov(edi, sieve).map_err(e)?;
    a.mov(ecx, 100u32).map_err(e)?;
    a.mov(al, 1).map_err(e)?;
    a.rep().stosb().map_err(e)?;
    a.mov(ebx, 2u32).map_err(e)?;
    let mut outer = a.create_label();
    let mut inner = a.create_label();
    let mut next_n = a.create_label();
    let mut sieved = a.create_label();
    a.set_label(&mut outer).map_err(e)?;
    a.mov(eax, ebx).map_err(e)?;
    a.imul_2(eax, ebx).map_err(e)?;
    a.cmp(eax, 100).map_err(e)?;
    a.jae(sieved).map_err(e)?;
    a.cmp(byte_ptr(ebx + sieve), 0).map_err(e)?;
    a.je(next_n).map_err(e)?;
    a.set_label(&mut inner).map_err(e)?;
    a.mov(byte_ptr(eax + sieve), 0).map_err(e)?;
    a.add(eax, ebx).map_err(e)?;
    a.cmp(eax, 100).map_err(e)?;
    a.jb(inner).map_err(e)?;
    a.set_label(&mut next_n).map_err(e)?;
    a.inc(ebx).map_err(e)?;
    a.jmp(outer).map_err(e)?;
    a.set_label(&mut sieved).map_err(e)?;
    a.mov(esi, m_primes).map_err(e)?;
    a.call(print).map_err(e)?;
    a.mov(ebx, 2u32).map_err(e)?;
    let mut show = a.create_label();
    let mut skip = a.create_label();
    a.set_label(&mut show).map_err(e)?;
    a.cmp(byte_ptr(ebx + sieve), 0).map_err(e)?;
    a.je(skip).map_err(e)?;
    a.mov(esi, m_space).map_err(e)?;
    a.call(print).map_err(e)?;
    a.mov(eax, ebx).map_err(e)?;
    a.call(print_dec).map_err(e)?;
    a.set_label(&mut skip).map_err(e)?;
    a.inc(ebx).map_err(e)?;
    a.cmp(ebx, 100).map_err(e)?;
    a.jb(show).map_err(e)?;
    a.mov(esi, m_newline).map_err(e)?;
    a.call(print).map_err(e)?;

    // The TSS gives the ring-0 stack for interrupts from ring 3; then the IDT.
    a.mov(dword_ptr(TSS as u32 + 4), KERNEL_STACK_TOP as u32)
        .map_err(e)?;
    a.mov(dword_ptr(TSS as u32 + 8), SEL_KDATA as u32)
        .map_err(e)?;
    a.mov(ax, SEL_TSS as u32).map_err(e)?;
    a.ltr(ax).map_err(e)?;
    a.lidt(ptr(IDTR as u32)).map_err(e)?;
    a.mov(esi, m_ring3).map_err(e)?;
    a.call(print).map_err(e)?;
    // IRET to ring 3: SS, ESP, EFLAGS, CS, EIP.
    a.push(SEL_UDATA as u32).map_err(e)?;
    a.push(USER_STACK_TOP as u32).map_err(e)?;
    a.push(2u32).map_err(e)?;
    a.push(SEL_UCODE as u32).map_err(e)?;
    a.push(USER_CODE as u32).map_err(e)?;
    a.iretd().map_err(e)?;

    // INT 80h from ring 3: EAX=1 prints the string at ESI (in the caller's memory).
    a.set_label(&mut syscall).map_err(e)?;
    a.push(ds).map_err(e)?;
    a.push(eax).map_err(e)?;
    a.mov(ax, SEL_KDATA as u32).map_err(e)?;
    a.mov(ds, ax).map_err(e)?;
    a.call(print).map_err(e)?;
    a.pop(eax).map_err(e)?;
    a.pop(ds).map_err(e)?;
    a.iretd().map_err(e)?;

    // #PF: report CR2 and the error code, then finish (the faulting ring-3 program
    // is not resumed).
    a.set_label(&mut pf_handler).map_err(e)?;
    a.mov(ax, SEL_KDATA as u32).map_err(e)?;
    a.mov(ds, ax).map_err(e)?;
    a.mov(esi, m_pf).map_err(e)?;
    a.call(print).map_err(e)?;
    a.mov(eax, cr2).map_err(e)?;
    a.call(print_hex).map_err(e)?;
    a.mov(esi, m_err).map_err(e)?;
    a.call(print).map_err(e)?;
    a.pop(eax).map_err(e)?;
    a.call(print_hex).map_err(e)?;
    a.mov(esi, m_newline).map_err(e)?;
    a.call(print).map_err(e)?;
    a.jmp(finish).map_err(e)?;

    // #GP should not happen: report it.
    a.set_label(&mut gp_handler).map_err(e)?;
    a.mov(ax, SEL_KDATA as u32).map_err(e)?;
    a.mov(ds, ax).map_err(e)?;
    a.mov(esi, m_gp).map_err(e)?;
    a.call(print).map_err(e)?;
    a.pop(eax).map_err(e)?;
    a.call(print_hex).map_err(e)?;
    a.jmp(fail).map_err(e)?;

    a.set_label(&mut finish).map_err(e)?;
    a.mov(esi, m_done).map_err(e)?;
    a.call(print).map_err(e)?;
    // ACPI soft-off: SLP_TYP=5 | SLP_EN in PM1a control; then stop.
    a.mov(dx, 0x604u32).map_err(e)?;
    a.mov(ax, 0x3400u32).map_err(e)?;
    a.out(dx, ax).map_err(e)?;
    a.cli().map_err(e)?;
    a.hlt().map_err(e)?;
    a.set_label(&mut fail).map_err(e)?;
    a.mov(esi, m_fail).map_err(e)?;
    a.call(print).map_err(e)?;
    a.cli().map_err(e)?;
    a.hlt().map_err(e)?;

    // print: ESI = NUL-terminated string, to COM1 and the screen.
    a.set_label(&mut print).map_err(e)?;
    a.push(eax).map_err(e)?;
    a.push(edx).map_err(e)?;
    let mut next = a.create_label();
    let mut wait = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut next).map_err(e)?;
    a.lodsb().map_err(e)?;
    a.test(al, al).map_err(e)?;
    a.jz(done).map_err(e)?;
    a.mov(ah, al).map_err(e)?;
    a.mov(dx, COM1 as u32 + 5).map_err(e)?;
    a.set_label(&mut wait).map_err(e)?;
    a.in_(al, dx).map_err(e)?;
    a.test(al, 0x20).map_err(e)?;
    a.jz(wait).map_err(e)?;
    a.mov(al, ah).map_err(e)?;
    a.mov(dx, COM1 as u32).map_err(e)?;
    a.out(dx, al).map_err(e)?;
    a.call(put_screen).map_err(e)?;
    a.jmp(next).map_err(e)?;
    a.set_label(&mut done).map_err(e)?;
    a.pop(edx).map_err(e)?;
    a.pop(eax).map_err(e)?;
    a.ret().map_err(e)?;

    // put_screen: AL = character, written straight into the VGA text buffer at the
    // kernel's cursor (CR and LF move it; the screen scrolls at the bottom), then the
    // CRTC cursor follows.
    a.set_label(&mut put_screen).map_err(e)?;
    a.pushad().map_err(e)?;
    a.cld().map_err(e)?;
    a.mov(ecx, dword_ptr(CURSOR_COL as u32)).map_err(e)?;
    a.mov(edx, dword_ptr(CURSOR_ROW as u32)).map_err(e)?;
    let mut not_cr = a.create_label();
    let mut printable = a.create_label();
    let mut moved = a.create_label();
    let mut store = a.create_label();
    a.cmp(al, 13).map_err(e)?;
    a.jne(not_cr).map_err(e)?;
    a.xor(ecx, ecx).map_err(e)?;
    a.jmp(moved).map_err(e)?;
    a.set_label(&mut not_cr).map_err(e)?;
    a.cmp(al, 10).map_err(e)?;
    a.jne(printable).map_err(e)?;
    a.inc(edx).map_err(e)?;
    a.jmp(moved).map_err(e)?;
    a.set_label(&mut printable).map_err(e)?;
    a.imul_3(ebx, edx, SCREEN_COLUMNS).map_err(e)?;
    a.add(ebx, ecx).map_err(e)?;
    a.mov(byte_ptr(ebx * 2 + TEXT_BUFFER), al).map_err(e)?;
    a.mov(byte_ptr(ebx * 2 + TEXT_BUFFER + 1), KERNEL_TEXT_ATTR as u32)
        .map_err(e)?;
    a.inc(ecx).map_err(e)?;
    a.cmp(ecx, SCREEN_COLUMNS).map_err(e)?;
    a.jb(moved).map_err(e)?;
    a.xor(ecx, ecx).map_err(e)?;
    a.inc(edx).map_err(e)?;
    a.set_label(&mut moved).map_err(e)?;
    a.cmp(edx, SCREEN_ROWS).map_err(e)?;
    a.jb(store).map_err(e)?;
    // Scroll: rows 1-24 up by one, then a blank bottom row.
    a.push(ecx).map_err(e)?;
    a.mov(esi, TEXT_BUFFER + SCREEN_COLUMNS as u32 * 2)
        .map_err(e)?;
    a.mov(edi, TEXT_BUFFER).map_err(e)?;
    a.mov(ecx, (SCREEN_ROWS - 1) as u32 * SCREEN_COLUMNS as u32 / 2)
        .map_err(e)?;
    a.rep().movsd().map_err(e)?;
    a.mov(eax, 0x0720_0720u32).map_err(e)?;
    a.mov(ecx, SCREEN_COLUMNS as u32 / 2).map_err(e)?;
    a.rep().stosd().map_err(e)?;
    a.pop(ecx).map_err(e)?;
    a.mov(edx, (SCREEN_ROWS - 1) as u32).map_err(e)?;
    a.set_label(&mut store).map_err(e)?;
    a.mov(dword_ptr(CURSOR_COL as u32), ecx).map_err(e)?;
    a.mov(dword_ptr(CURSOR_ROW as u32), edx).map_err(e)?;
    a.imul_3(ebx, edx, SCREEN_COLUMNS).map_err(e)?;
    a.add(ebx, ecx).map_err(e)?;
    a.mov(dx, 0x3D4u32).map_err(e)?;
    a.mov(al, 0x0E).map_err(e)?;
    a.out(dx, al).map_err(e)?;
    a.inc(dx).map_err(e)?;
    a.mov(al, bh).map_err(e)?;
    a.out(dx, al).map_err(e)?;
    a.dec(dx).map_err(e)?;
    a.mov(al, 0x0F).map_err(e)?;
    a.out(dx, al).map_err(e)?;
    a.inc(dx).map_err(e)?;
    a.mov(al, bl).map_err(e)?;
    a.out(dx, al).map_err(e)?;
    a.popad().map_err(e)?;
    a.ret().map_err(e)?;

    // print_hex: EAX as 0x + 8 hex digits (built on the stack, printed with `print`).
    a.set_label(&mut print_hex).map_err(e)?;
    a.pushad().map_err(e)?;
    a.sub(esp, 12).map_err(e)?;
    a.mov(byte_ptr(esp), b'0' as u32).map_err(e)?;
    a.mov(byte_ptr(esp + 1), b'x' as u32).map_err(e)?;
    a.mov(byte_ptr(esp + 10), 0).map_err(e)?;
    a.mov(ecx, 8u32).map_err(e)?;
    let mut digit = a.create_label();
    let mut below10 = a.create_label();
    a.set_label(&mut digit).map_err(e)?;
    a.mov(edx, eax).map_err(e)?;
    a.and(edx, 0xF).map_err(e)?;
    a.add(dl, b'0' as u32).map_err(e)?;
    a.cmp(dl, b'9' as u32).map_err(e)?;
    a.jbe(below10).map_err(e)?;
    a.add(dl, 7).map_err(e)?; // 'A' - '9' - 1
    a.set_label(&mut below10).map_err(e)?;
    a.mov(byte_ptr(esp + ecx + 1), dl).map_err(e)?;
    a.shr(eax, 4).map_err(e)?;
    a.loop_(digit).map_err(e)?;
    a.mov(esi, esp).map_err(e)?;
    a.call(print).map_err(e)?;
    a.add(esp, 12).map_err(e)?;
    a.popad().map_err(e)?;
    a.ret().map_err(e)?;

    // print_dec: EAX in decimal.
    a.set_label(&mut print_dec).map_err(e)?;
    a.pushad().map_err(e)?;
    a.sub(esp, 12).map_err(e)?;
    a.lea(edi, esp + 11).map_err(e)?;
    a.mov(byte_ptr(edi), 0).map_err(e)?;
    a.mov(ecx, 10u32).map_err(e)?;
    let mut divide = a.create_label();
    a.set_label(&mut divide).map_err(e)?;
    a.xor(edx, edx).map_err(e)?;
    a.div(ecx).map_err(e)?;
    a.add(dl, b'0' as u32).map_err(e)?;
    a.dec(edi).map_err(e)?;
    a.mov(byte_ptr(edi), dl).map_err(e)?;
    a.test(eax, eax).map_err(e)?;
    a.jnz(divide).map_err(e)?;
    a.mov(esi, edi).map_err(e)?;
    a.call(print).map_err(e)?;
    a.add(esp, 12).map_err(e)?;
    a.popad().map_err(e)?;
    a.ret().map_err(e)?;

    Ok(KernelLabels {
        entry,
        gp_handler,
        pf_handler,
        syscall,
    })
}

fn assemble_user(a: &mut CodeAssembler) -> Result<Vec<u8>, String> {
    let e = asm_err;
    // The message lives on the user page, after the code.
    const MESSAGE: u64 = USER_CODE + 0x800;
    let hello = b"  ring 3: hello from user mode, CPL=?, via INT 80h\r\n\0";
    let cpl_digit = MESSAGE + hello.iter().position(|&b| b == b'?').unwrap_or(0) as u64;
    a.mov(ax, SEL_UDATA as u32).map_err(e)?;
    a.mov(ds, ax).map_err(e)?;
    a.mov(es, ax).map_err(e)?;
    // Put CPL (the low bits of CS) into the message as a digit.
    a.mov(eax, cs).map_err(e)?;
    a.and(al, 3).map_err(e)?;
    a.add(al, b'0' as u32).map_err(e)?;
    a.mov(byte_ptr(cpl_digit as u32), al).map_err(e)?;
    a.mov(esi, MESSAGE as u32).map_err(e)?;
    a.mov(eax, 1u32).map_err(e)?;
    a.int(0x80).map_err(e)?;
    // Ring 3 may not write kernel memory: this page fault ends the demo.
    a.mov(dword_ptr(KERNEL_DATA as u32), 0).map_err(e)?;
    a.ud2().map_err(e)?;
    let mut code = a.assemble(USER_CODE).map_err(e)?;
    code.resize((MESSAGE - USER_CODE) as usize, 0);
    code.extend_from_slice(hello);
    Ok(code)
}

/// The demo as a hard-disk image: a boot sector that loads the rest with INT 13h
/// (EDD) and jumps to the real-mode start, then guest memory from [`LOAD_BASE`] on.
pub fn disk_image() -> Result<Vec<u8>, String> {
    let image = build()?;
    let mut memory = vec![0u8; (LOAD_END - LOAD_BASE) as usize];
    for (addr, bytes) in &image.chunks {
        let at = (*addr - LOAD_BASE) as usize;
        if at + bytes.len() > memory.len() {
            return Err("the demo image does not fit below its boot sector".into());
        }
        memory[at..at + bytes.len()].copy_from_slice(bytes);
    }
    let sectors = memory.len().div_ceil(512) as u32;
    let e = asm_err;
    let mut a = CodeAssembler::new(16).map_err(e)?;
    let mut failed = a.create_label();
    a.xor(ax, ax).map_err(e)?;
    a.mov(ds, ax).map_err(e)?;
    a.mov(ss, ax).map_err(e)?;
    a.mov(sp, BOOT_SECTOR as u32).map_err(e)?;
    // Disk address packet at 0000:0600: `sectors` from LBA 1 to LOAD_BASE.
    a.mov(word_ptr(0x600u32), 0x0010u32).map_err(e)?;
    a.mov(word_ptr(0x602u32), sectors).map_err(e)?;
    a.mov(word_ptr(0x604u32), LOAD_BASE as u32).map_err(e)?;
    a.mov(word_ptr(0x606u32), 0u32).map_err(e)?;
    a.mov(dword_ptr(0x608u32), 1u32).map_err(e)?;
    a.mov(dword_ptr(0x60Cu32), 0u32).map_err(e)?;
    a.mov(si, 0x600u32).map_err(e)?;
    a.mov(ah, 0x42).map_err(e)?;
    a.int(0x13).map_err(e)?;
    a.jc(failed).map_err(e)?;
    a.db(&[0xEA]).map_err(e)?; // JMP FAR 0000:REAL_CODE
    a.db(&(REAL_CODE as u16).to_le_bytes()).map_err(e)?;
    a.db(&[0, 0]).map_err(e)?;
    a.set_label(&mut failed).map_err(e)?;
    a.int(0x18).map_err(e)?;
    let mut disk = a.assemble(BOOT_SECTOR).map_err(e)?;
    disk.resize(512, 0);
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk.extend_from_slice(&memory);
    disk.resize(disk.len().div_ceil(512) * 512 + 512 * 16, 0);
    Ok(disk)
}

/// A disk held in memory.
struct MemDisk(Vec<u8>);

impl Drive for MemDisk {
    fn kind(&self) -> DriveKind {
        DriveKind::HardDisk
    }
    fn sector_size(&self) -> u32 {
        512
    }
    fn sectors(&self) -> u64 {
        self.0.len() as u64 / 512
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DriveError> {
        let at = (lba * 512) as usize;
        let src = self
            .0
            .get(at..at + buf.len())
            .ok_or_else(|| DriveError("read past the end".into()))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, _lba: u64, _buf: &[u8]) -> Result<(), DriveError> {
        Err(DriveError("the demo disk is read-only".into()))
    }
}

/// Boots the demo disk on the PC (our BIOS, the real devices): COM1 on stdout, the
/// screen in a window when there is a graphical display (or as `args` say).
pub fn run(args: &DisplayArgs, tier: hospes_jit::Tier) -> Result<(), String> {
    let config = MachineConfig {
        ram_mib: RAM_MIB,
        boot: BootOptions {
            order: vec![BootDevice::HardDisk],
            kernel: None,
        },
        drives: vec![DriveSlot {
            number: FIRST_HARD_DISK,
            drive: Box::new(MemDisk(disk_image()?)),
        }],
        ide: [(None, None), (None, None)],
        // A fixed date: the demo's output does not depend on when it runs.
        rtc_start_unix: 1_764_028_800,
        firmware: None,
        tier,
        disks: Vec::new(),
        images: Vec::new(),
        nic: None,
    };
    let mut machine =
        Machine::new(config, Box::new(std::io::stdout())).map_err(|e| e.to_string())?;
    let how = Presentation {
        display: args.display.unwrap_or_else(screen::default_display),
        title: "demo guest",
        linger: true,
    };
    match screen::run(&mut machine, Some(MAX_INSTRUCTIONS), args, &how, None)? {
        Ended::Guest(Stop::PowerOff) | Ended::Closed => Ok(()),
        Ended::Guest(Stop::HaltedForever) => {
            Err(format!("the demo guest halted: {}", machine.describe_cpu()))
        }
        Ended::Guest(Stop::InstructionLimit) => Err("the demo guest did not finish".into()),
        Ended::Guest(
            Stop::ReplayEnded | Stop::ReplayDiverged | Stop::Breakpoint | Stop::RecordingFailed,
        ) => Err("the demo guest is not replayed or debugged".into()),
    }
}
