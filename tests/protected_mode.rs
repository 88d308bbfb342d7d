//! Guest programs that prove protected mode works: each boots from real mode, builds its
//! own descriptor tables, exercises one area and checks its own results, reporting on the
//! debug console (port 0xE9).

mod common;

use common::*;
use iced_x86::code_asm::*;

/// (a) Real mode to 32-bit flat protected mode.
#[test]
fn enter_protected_mode() {
    let out = run_program("pm", &[], &|p| {
        p.prologue(&[])?;
        p.a.mov(eax, cr0)?;
        p.a.and(eax, 1)?;
        p.expect_eax(1, "cr0.pe")?;
        p.a.xor(eax, eax)?;
        p.a.mov(ax, cs)?;
        p.expect_eax(SEL_CODE0 as u32, "cs")?;
        p.a.mov(ax, ss)?;
        p.expect_eax(SEL_DATA0 as u32, "ss")?;
        // Memory above 1 MiB through a flat 32-bit data segment.
        p.a.mov(dword_ptr(0x20_0000u32), 0x1234_5678u32)?;
        p.expect_mem(0x20_0000, 0x1234_5678, "mem>1M")?;
        // 32-bit operand size is the default: no wrap at 16 bits.
        p.a.mov(eax, 0xFFFFu32)?;
        p.a.add(eax, 1)?;
        p.expect_eax(0x1_0000, "add32")?;
        p.ok()
    });
    assert_eq!(out, "OK pm\n");
}

const PD: u32 = 0x10_0000;
const PT: u32 = 0x10_1000;
const PT2: u32 = 0x10_2000;
const TSS: u32 = 0x3000;

/// Turns paging on with CR3 = PD (and CR4.PSE when `pse`).
fn enable_paging(p: &mut Prog, pse: bool) -> R {
    p.a.mov(eax, PD)?;
    p.a.mov(cr3, eax)?;
    if pse {
        p.a.mov(eax, cr4)?;
        p.a.or(eax, 0x10)?;
        p.a.mov(cr4, eax)?;
    }
    p.a.mov(eax, cr0)?;
    p.a.or(eax, 0x8000_0000u32)?;
    p.a.mov(cr0, eax)
}

/// (b) Paging with 4 KiB and 4 MiB pages: aliases, accessed/dirty bits, INVLPG.
#[test]
fn paging() {
    let out = run_program("paging", &[], &|p| {
        p.prologue(&[])?;
        p.identity_paging(PD, PT, 3)?;
        // 4 MiB pages: 4-8 MiB identity, and 12-16 MiB aliasing physical 4 MiB.
        p.a.mov(dword_ptr(PD + 4), 0x40_0083u32)?;
        p.a.mov(dword_ptr(PD + 12), 0x40_0083u32)?;
        // 8 MiB through a second page table whose first page is physical 3 MiB.
        p.a.mov(edi, PT2)?;
        p.a.xor(eax, eax)?;
        p.a.mov(ecx, 1024u32)?;
        p.a.rep().stosd()?;
        p.a.mov(dword_ptr(PT2), 0x30_0003u32)?;
        p.a.mov(dword_ptr(PD + 8), PT2 | 3)?;
        p.a.mov(dword_ptr(0x30_0000u32), 0xAAAA_0001u32)?;
        p.a.mov(dword_ptr(0x30_1000u32), 0xBBBB_0002u32)?;
        enable_paging(p, true)?;

        // A 4 KiB alias; the read sets A but not D, the write sets D.
        p.expect_mem(0x80_0000, 0xAAAA_0001, "alias4k")?;
        p.a.mov(eax, dword_ptr(PT2))?;
        p.a.and(eax, 0x60)?;
        p.expect_eax(0x20, "pte-a")?;
        p.a.mov(eax, dword_ptr(PD + 8))?;
        p.a.and(eax, 0x20)?;
        p.expect_eax(0x20, "pde-a")?;
        p.a.mov(dword_ptr(0x80_0004u32), 5u32)?;
        p.a.mov(eax, dword_ptr(PT2))?;
        p.a.and(eax, 0x60)?;
        p.expect_eax(0x60, "pte-d")?;
        p.expect_mem(0x30_0004, 5, "alias-write")?;
        // An identity page nobody touched has A clear until it is read.
        p.a.mov(eax, dword_ptr(PT + 0x50 * 4))?;
        p.a.and(eax, 0x60)?;
        p.expect_eax(0, "untouched")?;
        p.a.mov(eax, dword_ptr(0x5_0000u32))?;
        p.a.mov(eax, dword_ptr(PT + 0x50 * 4))?;
        p.a.and(eax, 0x60)?;
        p.expect_eax(0x20, "read-a")?;

        // 4 MiB pages: a write through the alias lands in physical 4 MiB.
        p.a.mov(dword_ptr(0xC0_0010u32), 0x4444u32)?;
        p.expect_mem(0x40_0010, 0x4444, "alias4m")?;
        p.a.mov(eax, dword_ptr(PD + 12))?;
        p.a.and(eax, 0x60)?;
        p.expect_eax(0x60, "pde4m-ad")?;
        p.a.mov(eax, dword_ptr(PD + 4))?;
        p.a.and(eax, 0x60)?;
        p.expect_eax(0x20, "pde4m-a")?;

        // Remap the 4 KiB alias; INVLPG makes the new mapping visible.
        p.a.mov(dword_ptr(PT2), 0x30_1003u32)?;
        p.a.invlpg(ptr(0x80_0000u32))?;
        p.expect_mem(0x80_0000, 0xBBBB_0002, "invlpg")?;
        // And a CR3 reload flushes it too.
        p.a.mov(dword_ptr(PT2), 0x30_0003u32)?;
        p.a.mov(eax, cr3)?;
        p.a.mov(cr3, eax)?;
        p.expect_mem(0x80_0000, 0xAAAA_0001, "cr3-flush")?;
        p.ok()
    });
    assert_eq!(out, "OK paging\n");
}

/// (c) #PF (CR2, error code, fix and retry), #GP (selector error codes), #DE (faulting EIP).
#[test]
fn exceptions() {
    let out = run_program("exceptions", &[], &|p| {
        p.prologue(&[tss_desc(TSS, 0x67)])?;
        p.identity_paging(PD, PT, 3)?;
        enable_paging(p, false)?;
        p.idt_gate(14, "pf_handler", 0x8E)?;
        p.idt_gate(13, "gp_handler", 0x8E)?;
        p.idt_gate(0, "de_handler", 0x8E)?;
        p.a.mov(dword_ptr(RESULTS), 0u32)?;

        // #PF on a read of a not-present page; the handler maps it and the read retries.
        p.a.mov(dword_ptr(0x20_0010u32), 0x5A5Au32)?;
        p.a.mov(dword_ptr(PT + 0x200 * 4), 0x20_0002u32)?;
        p.a.invlpg(ptr(0x20_0000u32))?;
        p.here("pf_read")?;
        p.a.mov(eax, dword_ptr(0x20_0010u32))?;
        p.expect_eax(0x5A5A, "pf-retry")?;
        p.expect_mem(RESULTS, 1, "pf-count")?;
        p.expect_mem(RESULTS + 4, 0x20_0010, "cr2")?;
        p.expect_mem(RESULTS + 8, 0, "pf-err-read")?;
        let pf_read = p.addr("pf_read");
        p.expect_mem(RESULTS + 12, pf_read, "pf-eip")?;
        // A write to a not-present page: error code 2.
        p.a.mov(dword_ptr(PT + 0x200 * 4), 0x20_0002u32)?;
        p.a.invlpg(ptr(0x20_0000u32))?;
        p.a.mov(dword_ptr(0x20_0020u32), 7u32)?;
        p.expect_mem(RESULTS, 2, "pf-count2")?;
        p.expect_mem(RESULTS + 8, 2, "pf-err-write")?;
        p.expect_mem(0x20_0020, 7, "pf-write-retry")?;

        // #GP with selector error codes; the handler resumes at RESULTS+24.
        let cases: [(&str, u32); 4] = [
            ("beyond-gdt", 0x1234),
            ("system-into-ds", 0x28),
            ("dpl3-into-ss", 0x20),
            ("jmp-to-data", 0x10),
        ];
        for (i, (name, code)) in cases.iter().enumerate() {
            let at = format!("gp_at{i}");
            let resume = format!("gp_resume{i}");
            let resume_addr = p.addr(&resume);
            p.a.mov(dword_ptr(RESULTS + 24), resume_addr)?;
            match i {
                0 => {
                    p.a.mov(ax, 0x1234u32)?;
                    p.here(&at)?;
                    p.a.mov(ds, ax)?;
                }
                1 => {
                    p.a.mov(ax, 0x28u32)?;
                    p.here(&at)?;
                    p.a.mov(ds, ax)?;
                }
                2 => {
                    p.a.mov(ax, 0x23u32)?;
                    p.here(&at)?;
                    p.a.mov(ss, ax)?;
                }
                _ => {
                    p.here(&at)?;
                    p.a.jmp_far(SEL_DATA0, 0)?;
                }
            }
            p.a.nop()?;
            p.here(&resume)?;
            p.a.nop()?;
            p.expect_mem(RESULTS + 16, *code, &format!("gp-err-{name}"))?;
            let at_addr = p.addr(&at);
            p.expect_mem(RESULTS + 20, at_addr, &format!("gp-eip-{name}"))?;
        }

        // #DE: the handler sees the DIV's own address.
        let de_resume = p.addr("de_resume");
        p.a.mov(dword_ptr(RESULTS + 24), de_resume)?;
        p.a.xor(edx, edx)?;
        p.a.mov(eax, 1u32)?;
        p.a.xor(ecx, ecx)?;
        p.here("de_at")?;
        p.a.div(ecx)?;
        p.here("de_resume")?;
        let de_at = p.addr("de_at");
        p.expect_mem(RESULTS + 28, de_at, "de-eip")?;
        p.ok()?;

        p.here("pf_handler")?;
        p.a.push(eax)?;
        p.a.mov(eax, dword_ptr(esp + 4))?;
        p.a.mov(dword_ptr(RESULTS + 8), eax)?;
        p.a.mov(eax, dword_ptr(esp + 8))?;
        p.a.mov(dword_ptr(RESULTS + 12), eax)?;
        p.a.mov(eax, cr2)?;
        p.a.mov(dword_ptr(RESULTS + 4), eax)?;
        p.a.inc(dword_ptr(RESULTS))?;
        p.a.mov(dword_ptr(PT + 0x200 * 4), 0x20_0003u32)?;
        p.a.invlpg(ptr(0x20_0000u32))?;
        p.a.pop(eax)?;
        p.a.add(esp, 4)?;
        p.a.iretd()?;

        p.here("gp_handler")?;
        p.a.mov(eax, dword_ptr(esp))?;
        p.a.mov(dword_ptr(RESULTS + 16), eax)?;
        p.a.mov(eax, dword_ptr(esp + 4))?;
        p.a.mov(dword_ptr(RESULTS + 20), eax)?;
        p.a.mov(eax, dword_ptr(RESULTS + 24))?;
        p.a.mov(dword_ptr(esp + 4), eax)?;
        p.a.add(esp, 4)?;
        p.a.iretd()?;

        p.here("de_handler")?;
        p.a.mov(eax, dword_ptr(esp))?;
        p.a.mov(dword_ptr(RESULTS + 28), eax)?;
        p.a.mov(eax, dword_ptr(RESULTS + 24))?;
        p.a.mov(dword_ptr(esp), eax)?;
        p.a.iretd()
    });
    assert_eq!(out, "OK exceptions\n");
}

/// Points TSS.ESP0/SS0 at a ring-0 stack and loads TR with selector 0x28.
fn load_tss(p: &mut Prog, esp0: u32) -> R {
    p.a.mov(dword_ptr(TSS + 4), esp0)?;
    p.a.mov(dword_ptr(TSS + 8), SEL_DATA0 as u32)?;
    p.a.mov(ax, 0x28u32)?;
    p.a.ltr(ax)
}

/// IRETD to ring 3 at label `user` with stack `esp3` and EFLAGS `eflags`.
fn iret_to_ring3(p: &mut Prog, user: &str, esp3: u32, eflags: u32) -> R {
    let user = p.addr(user);
    p.a.push((SEL_DATA3 | 3) as u32)?;
    p.a.mov(eax, esp3)?;
    p.a.push(eax)?;
    p.a.mov(eax, eflags)?;
    p.a.push(eax)?;
    p.a.push((SEL_CODE3 | 3) as u32)?;
    p.a.mov(eax, user)?;
    p.a.push(eax)?;
    p.a.iretd()
}

/// (h) A ring-3 write to a supervisor page faults with error code 7.
#[test]
fn user_write_to_supervisor_page() {
    let out = run_program("user-pf", &[], &|p| {
        p.prologue(&[tss_desc(TSS, 0x67)])?;
        load_tss(p, 0x7_0000)?;
        p.identity_paging(PD, PT, 7)?;
        p.a.mov(dword_ptr(PT + 0x200 * 4), 0x20_0003u32)?;
        enable_paging(p, false)?;
        p.idt_gate(14, "pf_handler", 0x8E)?;
        iret_to_ring3(p, "user", 0x5_0000, 2)?;

        p.here("user")?;
        p.a.mov(ax, (SEL_DATA3 | 3) as u32)?;
        p.a.mov(ds, ax)?;
        p.a.mov(eax, dword_ptr(0x1_F000u32))?;
        p.here("user_write")?;
        p.a.mov(dword_ptr(0x20_0000u32), 1u32)?;
        p.fail_now("no-fault")?;

        p.here("pf_handler")?;
        p.kernel_data()?;
        p.a.mov(eax, dword_ptr(esp))?;
        p.expect_eax(7, "error-code")?;
        p.a.mov(eax, cr2)?;
        p.expect_eax(0x20_0000, "cr2")?;
        p.a.mov(eax, dword_ptr(esp + 4))?;
        let user_write = p.addr("user_write");
        p.expect_eax(user_write, "eip")?;
        p.a.mov(eax, dword_ptr(esp + 8))?;
        p.expect_eax((SEL_CODE3 | 3) as u32, "cs")?;
        p.a.mov(eax, dword_ptr(esp + 16))?;
        p.expect_eax(0x5_0000, "user-esp")?;
        p.a.mov(eax, esp)?;
        p.expect_eax(0x7_0000 - 24, "esp0-frame")?;
        p.ok()
    });
    assert_eq!(out, "OK user-pf\n");
}

/// Stores segment register `sreg`'s selector (zero-extended) at `addr`.
fn store_sreg(p: &mut Prog, sreg: AsmRegisterSegment, addr: u32) -> R {
    p.a.xor(eax, eax)?;
    p.a.mov(ax, sreg)?;
    p.a.mov(dword_ptr(addr), eax)
}

/// Stores CS's RPL (the CPL) at `addr`.
fn store_cpl(p: &mut Prog, addr: u32) -> R {
    store_sreg(p, cs, addr)?;
    p.a.and(dword_ptr(addr), 3)
}

/// (e) Ring 0 -> ring 3 by IRET, back through a DPL-3 interrupt gate and through a
/// call gate that copies two parameters, with stack switches from TSS.ESP0.
#[test]
fn ring3_gates() {
    let out = run_program("ring3", &[], &|p| {
        let gate_handler = p.addr("gate_handler");
        p.prologue(&[
            tss_desc(TSS, 0x67),
            gate_desc(SEL_CODE0, gate_handler, 0xEC, 2),
        ])?;
        load_tss(p, 0x7_0000)?;
        p.idt_gate(0x80, "int80", 0xEE)?;
        p.idt_gate(0x81, "finish", 0xEE)?;
        p.idt_gate(0x82, "ring0_only", 0x8E)?;
        p.idt_gate(13, "gp_handler", 0x8E)?;
        iret_to_ring3(p, "user", 0x5_0000, 2)?;

        p.here("user")?;
        // DS held a DPL-0 segment, so the return to ring 3 nulled it.
        p.a.xor(ebx, ebx)?;
        p.a.mov(bx, ds)?;
        p.a.mov(ax, (SEL_DATA3 | 3) as u32)?;
        p.a.mov(ds, ax)?;
        p.a.mov(es, ax)?;
        p.a.mov(dword_ptr(RESULTS), ebx)?;
        store_cpl(p, RESULTS + 4)?;
        p.a.mov(eax, 0x1111u32)?;
        p.a.int(0x80)?;
        // INT n to a DPL-0 gate from ring 3: #GP(vector*8+2).
        p.a.int(0x82)?;
        p.a.push(0xAAAAu32)?;
        p.a.push(0xBBBBu32)?;
        p.a.mov(ebx, esp)?;
        p.a.call_far(0x30 | 3, 0)?;
        p.a.mov(dword_ptr(RESULTS + 36), esp)?;
        p.a.mov(dword_ptr(RESULTS + 40), ebx)?;
        store_cpl(p, RESULTS + 72)?;
        p.a.int(0x81)?;

        p.here("int80")?;
        store_cpl(p, RESULTS + 8)?;
        p.a.mov(dword_ptr(RESULTS + 12), esp)?;
        for (i, off) in [16u32, 12, 4].iter().enumerate() {
            p.a.mov(eax, dword_ptr(esp + *off as i32))?;
            p.a.mov(dword_ptr(RESULTS + 16 + 4 * i as u32), eax)?;
        }
        p.a.iretd()?;

        p.here("ring0_only")?;
        p.fail_now("int-to-dpl0-gate")?;
        p.here("gp_handler")?;
        p.a.mov(eax, dword_ptr(esp))?;
        p.a.mov(dword_ptr(RESULTS + 28), eax)?;
        // Skip the two-byte INT.
        p.a.add(dword_ptr(esp + 4), 2)?;
        p.a.add(esp, 4)?;
        p.a.iretd()?;

        p.here("gate_handler")?;
        store_cpl(p, RESULTS + 44)?;
        p.a.mov(dword_ptr(RESULTS + 48), esp)?;
        for (i, off) in [8u32, 12, 16, 20, 4].iter().enumerate() {
            p.a.mov(eax, dword_ptr(esp + *off as i32))?;
            p.a.mov(dword_ptr(RESULTS + 52 + 4 * i as u32), eax)?;
        }
        p.a.retf_1(8)?;

        p.here("finish")?;
        p.kernel_data()?;
        p.expect_mem(RESULTS, 0, "ds-nulled")?;
        p.expect_mem(RESULTS + 4, 3, "user-cpl")?;
        p.expect_mem(RESULTS + 8, 0, "int-cpl")?;
        p.expect_mem(RESULTS + 12, 0x7_0000 - 20, "int-esp0")?;
        p.expect_mem(RESULTS + 16, (SEL_DATA3 | 3) as u32, "int-old-ss")?;
        p.expect_mem(RESULTS + 20, 0x5_0000, "int-old-esp")?;
        p.expect_mem(RESULTS + 24, (SEL_CODE3 | 3) as u32, "int-old-cs")?;
        p.expect_mem(RESULTS + 28, 0x82 * 8 + 2, "gp-gate-dpl")?;
        p.expect_mem(RESULTS + 44, 0, "gate-cpl")?;
        p.expect_mem(RESULTS + 48, 0x7_0000 - 24, "gate-esp")?;
        p.expect_mem(RESULTS + 52, 0xBBBB, "param0")?;
        p.expect_mem(RESULTS + 56, 0xAAAA, "param1")?;
        p.a.mov(eax, dword_ptr(RESULTS + 40))?;
        p.a.cmp(eax, dword_ptr(RESULTS + 60))?;
        let bad = p.l("bad_old_esp");
        p.a.jne(bad)?;
        p.expect_mem(RESULTS + 64, (SEL_DATA3 | 3) as u32, "gate-old-ss")?;
        p.expect_mem(RESULTS + 68, (SEL_CODE3 | 3) as u32, "gate-old-cs")?;
        p.expect_mem(RESULTS + 72, 3, "retf-cpl")?;
        // RETF 8 released the parameters on the caller's stack too.
        p.a.mov(eax, dword_ptr(RESULTS + 40))?;
        p.a.add(eax, 8)?;
        p.a.cmp(eax, dword_ptr(RESULTS + 36))?;
        let bad = p.l("bad_retf_esp");
        p.a.jne(bad)?;
        p.ok()?;
        p.here("bad_old_esp")?;
        p.fail_now("gate-old-esp")?;
        p.here("bad_retf_esp")?;
        p.fail_now("retf-esp")
    });
    assert_eq!(out, "OK ring3\n");
}

/// (g) SYSEXIT to ring 3 and SYSENTER back, with the MSR-defined flat segments.
#[test]
fn sysenter_sysexit() {
    let out = run_program("sysenter", &[], &|p| {
        p.prologue(&[])?;
        let kentry = p.addr("kentry");
        for (msr, v) in [
            (0x174u32, SEL_CODE0 as u32),
            (0x175, 0x7_0000),
            (0x176, kentry),
        ] {
            p.a.mov(ecx, msr)?;
            p.a.mov(eax, v)?;
            p.a.xor(edx, edx)?;
            p.a.wrmsr()?;
        }
        p.a.mov(ecx, 0x5_0000u32)?;
        let user = p.addr("user");
        p.a.mov(edx, user)?;
        p.a.sysexit()?;

        p.here("user")?;
        store_sreg(p, cs, RESULTS)?;
        store_sreg(p, ss, RESULTS + 4)?;
        p.a.mov(dword_ptr(RESULTS + 8), esp)?;
        p.a.sysenter()?;

        p.here("kentry")?;
        p.expect_mem(RESULTS, (SEL_CODE3 | 3) as u32, "user-cs")?;
        p.expect_mem(RESULTS + 4, (SEL_DATA3 | 3) as u32, "user-ss")?;
        p.expect_mem(RESULTS + 8, 0x5_0000, "user-esp")?;
        store_sreg(p, cs, RESULTS + 12)?;
        p.expect_mem(RESULTS + 12, SEL_CODE0 as u32, "kernel-cs")?;
        store_sreg(p, ss, RESULTS + 12)?;
        p.expect_mem(RESULTS + 12, SEL_DATA0 as u32, "kernel-ss")?;
        p.a.mov(eax, esp)?;
        p.expect_eax(0x7_0000, "kernel-esp")?;
        p.ok()
    });
    assert_eq!(out, "OK sysenter\n");
}

const TSS_B: u32 = 0x3100;
const TSS_C: u32 = 0x3200;

/// Fills a 32-bit TSS for a ring-0 flat task starting at label `entry` with stack `esp`
/// and EAX = `eax`.
fn init_task(p: &mut Prog, tss: u32, entry: &str, stack_top: u32, eax_value: u32) -> R {
    p.a.mov(edi, tss)?;
    p.a.xor(eax, eax)?;
    p.a.mov(ecx, 0x68u32 / 4)?;
    p.a.rep().stosd()?;
    let entry = p.addr(entry);
    p.a.mov(dword_ptr(tss + 0x20), entry)?;
    p.a.mov(dword_ptr(tss + 0x24), 2u32)?;
    p.a.mov(dword_ptr(tss + 0x28), eax_value)?;
    p.a.mov(dword_ptr(tss + 0x38), stack_top)?;
    for i in 0..6u32 {
        let sel = if i == 1 { SEL_CODE0 } else { SEL_DATA0 };
        p.a.mov(dword_ptr(tss + 0x48 + 4 * i), sel as u32)?;
    }
    Ok(())
}

/// Stores the descriptor type nibble LAR reports for `sel` at `addr`.
fn store_lar_type(p: &mut Prog, sel: u16, addr: u32) -> R {
    p.a.mov(ecx, sel as u32)?;
    p.a.lar(eax, ecx)?;
    p.a.shr(eax, 8)?;
    p.a.and(eax, 0xF)?;
    p.a.mov(dword_ptr(addr), eax)
}

/// (d) Task switches: JMP to a TSS and back, CALL through a task gate and IRET with NT,
/// an interrupt through a task gate (twice, re-entering the handler task).
#[test]
fn task_switch() {
    let out = run_program("tasks", &[], &|p| {
        p.prologue(&[
            tss_desc(TSS, 0x67),
            tss_desc(TSS_B, 0x67),
            tss_desc(TSS_C, 0x67),
            gate_desc(0x30, 0, 0x85, 0),
        ])?;
        p.a.mov(ax, 0x28u32)?;
        p.a.ltr(ax)?;
        init_task(p, TSS_B, "task_b", 0x6_F000, 0xB0B0_B0B0)?;
        init_task(p, TSS_C, "task_c", 0x6_E000, 0)?;
        // Task C has the T bit: every switch to it traps to #DB first.
        p.a.mov(byte_ptr(TSS_C + 0x64), 1u32)?;
        p.idt_gate(1, "debug_trap", 0x8E)?;
        p.store64(IDT + 0x50 * 8, gate_desc(0x38, 0, 0x85, 0))?;
        p.a.mov(dword_ptr(RESULTS + 32), 0u32)?;
        p.a.mov(dword_ptr(RESULTS + 40), 0u32)?;

        p.a.mov(ebx, 0xA5A5_A5A5u32)?;
        p.a.jmp_far(0x30, 0)?;
        // Task B jumped back here.
        p.a.mov(eax, ebx)?;
        p.expect_eax(0xA5A5_A5A5, "ebx-kept")?;
        store_sreg_tr(p, RESULTS + 64)?;
        p.expect_mem(RESULTS + 64, 0x28, "tr-after-jmp")?;
        p.expect_mem(RESULTS, 0xB0B0_B0B0, "b-eax")?;
        p.expect_mem(RESULTS + 4, 0x30, "b-tr")?;
        p.expect_mem(RESULTS + 8, 0, "b-nt-after-jmp")?;
        p.expect_mem(RESULTS + 12, 9, "a-free-in-b")?;
        p.expect_mem(RESULTS + 16, 11, "b-busy-in-b")?;

        p.a.call_far(0x40, 0)?;
        // Task B returned with IRET.
        store_sreg_tr(p, RESULTS + 64)?;
        p.expect_mem(RESULTS + 64, 0x28, "tr-after-iret")?;
        p.expect_mem(RESULTS + 20, 0x4000, "b-nt-after-call")?;
        p.expect_mem(RESULTS + 24, 0x28, "back-link")?;
        p.a.pushfd()?;
        p.a.pop(eax)?;
        p.a.and(eax, 0x4000)?;
        p.expect_eax(0, "a-nt")?;
        store_lar_type(p, 0x30, RESULTS + 68)?;
        p.expect_mem(RESULTS + 68, 9, "b-free-after-iret")?;
        store_lar_type(p, 0x28, RESULTS + 68)?;
        p.expect_mem(RESULTS + 68, 11, "a-busy")?;
        p.a.mov(eax, cr0)?;
        p.a.and(eax, 8)?;
        p.expect_eax(8, "cr0.ts")?;
        p.a.clts()?;

        p.a.int(0x50)?;
        p.expect_mem(RESULTS + 32, 1, "int-task-1")?;
        p.expect_mem(RESULTS + 36, 0x38, "c-tr")?;
        p.a.int(0x50)?;
        p.expect_mem(RESULTS + 32, 2, "int-task-2")?;
        p.expect_mem(RESULTS + 40, 2, "t-bit-traps")?;
        p.expect_mem(RESULTS + 44, 0x8000, "dr6-bt")?;
        p.ok()?;

        p.here("debug_trap")?;
        p.a.inc(dword_ptr(RESULTS + 40))?;
        p.a.mov(eax, dr6)?;
        p.a.and(eax, 0x8000)?;
        p.a.mov(dword_ptr(RESULTS + 44), eax)?;
        p.a.xor(eax, eax)?;
        p.a.mov(dr6, eax)?;
        p.a.iretd()?;

        p.here("task_b")?;
        p.a.mov(dword_ptr(RESULTS), eax)?;
        store_sreg_tr(p, RESULTS + 4)?;
        p.a.pushfd()?;
        p.a.pop(eax)?;
        p.a.and(eax, 0x4000)?;
        p.a.mov(dword_ptr(RESULTS + 8), eax)?;
        store_lar_type(p, 0x28, RESULTS + 12)?;
        store_lar_type(p, 0x30, RESULTS + 16)?;
        p.a.jmp_far(0x28, 0)?;
        // Entered again through the task gate.
        p.a.pushfd()?;
        p.a.pop(eax)?;
        p.a.and(eax, 0x4000)?;
        p.a.mov(dword_ptr(RESULTS + 20), eax)?;
        p.a.movzx(eax, word_ptr(TSS_B))?;
        p.a.mov(dword_ptr(RESULTS + 24), eax)?;
        p.a.iretd()?;
        p.fail_now("b-reentered")?;

        p.here("task_c")?;
        p.a.inc(dword_ptr(RESULTS + 32))?;
        store_sreg_tr(p, RESULTS + 36)?;
        p.a.iretd()?;
        let c = p.l("task_c");
        p.a.jmp(c)
    });
    assert_eq!(out, "OK tasks\n");
}

/// Stores TR's selector at `addr`.
fn store_sreg_tr(p: &mut Prog, addr: u32) -> R {
    p.a.xor(eax, eax)?;
    p.a.str(ax)?;
    p.a.mov(dword_ptr(addr), eax)
}

const V86_TSS: u32 = 0x3_0000;
const V86_CODE_SEG: u32 = 0x2000;

/// (f) V86 mode: IRET into V86 code that does real-mode segment arithmetic, port I/O
/// through the TSS bitmap (allowed port works, denied port #GP), IOPL-sensitive INT n and
/// CLI trapping to a ring-0 #GP monitor at IOPL 0, then INT n through the IDT at IOPL 3.
#[test]
fn v86_mode() {
    let (v86, v86_labels) = assemble(16, 0, "v86", &|p| {
        p.a.mov(ax, 0x2100u32)?;
        p.a.mov(ds, ax)?;
        p.a.mov(word_ptr(0x10u32), 0x4242u32)?;
        // 2101:0000 is the same linear byte as 2100:0010.
        p.a.mov(ax, 0x2101u32)?;
        p.a.mov(ds, ax)?;
        p.a.mov(ax, word_ptr(0u32))?;
        p.a.mov(bx, 0x2100u32)?;
        p.a.mov(ds, bx)?;
        p.a.mov(word_ptr(0x20u32), ax)?;
        p.a.mov(al, b'V' as u32)?;
        p.a.out(0xE9u32, al)?;
        p.here("out_denied")?;
        p.a.out(0x80u32, al)?;
        p.a.int(0x21)?;
        p.a.cli()?;
        // Asks the monitor for IOPL 3.
        p.a.int(0x30)?;
        p.a.pushf()?;
        p.a.pop(ax)?;
        p.a.mov(word_ptr(0x24u32), ax)?;
        p.a.int(0x31)?;
        p.a.hlt()
    });
    let out_denied = v86_labels["out_denied"] as u32;
    let out = run_program("v86", &[(V86_CODE_SEG << 4, v86)], &move |p| {
        p.prologue(&[tss_desc(V86_TSS, 0x68 + 0x2000)])?;
        // TSS with ESP0 and an I/O bitmap that allows only port E9h.
        p.a.mov(edi, V86_TSS)?;
        p.a.xor(eax, eax)?;
        p.a.mov(ecx, 0x68u32)?;
        p.a.rep().stosb()?;
        p.a.mov(al, 0xFF)?;
        p.a.mov(ecx, 0x2001u32)?;
        p.a.rep().stosb()?;
        p.a.mov(dword_ptr(V86_TSS + 4), 0x7_0000u32)?;
        p.a.mov(dword_ptr(V86_TSS + 8), SEL_DATA0 as u32)?;
        p.a.mov(word_ptr(V86_TSS + 0x66), 0x68u32)?;
        p.a.mov(
            byte_ptr(V86_TSS + 0x68 + 0xE9 / 8),
            0xFFu32 & !(1 << (0xE9 % 8)),
        )?;
        p.a.mov(ax, 0x28u32)?;
        p.a.ltr(ax)?;
        p.idt_gate(13, "monitor", 0x8E)?;
        p.idt_gate(0x31, "int31", 0xEE)?;
        for i in 0..16u32 {
            p.a.mov(dword_ptr(RESULTS + 4 * i), 0u32)?;
        }
        // IRETD into V86 mode at 2000:0000, IOPL 0.
        for v in [
            0u32,
            0,
            0x2100,
            0x2000,
            0x3000,
            0xFFF0,
            0x2_0002,
            V86_CODE_SEG,
            0,
        ] {
            p.a.push(v)?;
        }
        p.a.iretd()?;

        // The #GP monitor: decodes the faulting V86 instruction and emulates it.
        p.here("monitor")?;
        p.a.xor(ebx, ebx)?;
        p.a.mov(bx, ds)?;
        p.kernel_data()?;
        p.a.mov(dword_ptr(RESULTS + 40), ebx)?;
        p.a.mov(eax, dword_ptr(esp))?;
        p.expect_eax(0, "gp-error")?;
        p.a.mov(eax, dword_ptr(esp + 12))?;
        p.a.and(eax, 0x2_0000)?;
        p.expect_eax(0x2_0000, "frame-vm")?;
        p.a.movzx(eax, word_ptr(esp + 8))?;
        p.a.shl(eax, 4)?;
        p.a.add(eax, dword_ptr(esp + 4))?;
        p.a.movzx(ecx, byte_ptr(eax))?;
        p.a.movzx(edx, byte_ptr(eax + 1))?;
        let (is_out, is_int, is_cli) = (p.l("m_out"), p.l("m_int"), p.l("m_cli"));
        p.a.cmp(ecx, 0xE6)?;
        p.a.je(is_out)?;
        p.a.cmp(ecx, 0xCD)?;
        p.a.je(is_int)?;
        p.a.cmp(ecx, 0xFA)?;
        p.a.je(is_cli)?;
        p.a.mov(eax, ecx)?;
        p.expect_eax(0xFFFF_FFFF, "monitor-opcode")?;
        p.here("m_out")?;
        p.a.inc(dword_ptr(RESULTS + 44))?;
        p.a.mov(eax, dword_ptr(esp + 4))?;
        p.a.mov(dword_ptr(RESULTS + 48), eax)?;
        p.a.add(dword_ptr(esp + 4), 2)?;
        let done = p.l("m_done");
        p.a.jmp(done)?;
        p.here("m_int")?;
        p.a.add(dword_ptr(esp + 4), 2)?;
        let int30 = p.l("m_int30");
        p.a.cmp(edx, 0x30)?;
        p.a.je(int30)?;
        p.a.mov(eax, edx)?;
        p.expect_eax(0x21, "monitor-int")?;
        p.a.inc(dword_ptr(RESULTS + 52))?;
        p.a.mov(word_ptr(0x2_1022u32), 0x2121u32)?;
        p.a.jmp(done)?;
        p.here("m_int30")?;
        p.a.or(dword_ptr(esp + 12), 0x3000)?;
        p.a.jmp(done)?;
        p.here("m_cli")?;
        p.a.inc(dword_ptr(RESULTS + 56))?;
        p.a.add(dword_ptr(esp + 4), 1)?;
        p.here("m_done")?;
        p.a.add(esp, 4)?;
        p.a.iretd()?;

        // INT 31h from V86 at IOPL 3 arrives through the IDT.
        p.here("int31")?;
        p.a.xor(ebx, ebx)?;
        p.a.mov(bx, ds)?;
        p.kernel_data()?;
        p.a.mov(eax, ebx)?;
        p.expect_eax(0, "int-ds-nulled")?;
        p.expect_mem(RESULTS + 40, 0, "gp-ds-nulled")?;
        p.a.pushfd()?;
        p.a.pop(eax)?;
        p.a.and(eax, 0x2_0000)?;
        p.expect_eax(0, "vm-cleared")?;
        let frame: [(i32, u32, &str); 5] = [
            (4, V86_CODE_SEG, "frame-cs"),
            (16, 0x3000, "frame-ss"),
            (20, 0x2000, "frame-es"),
            (24, 0x2100, "frame-ds"),
            (28, 0, "frame-fs"),
        ];
        for (off, v, name) in frame {
            p.a.mov(eax, dword_ptr(esp + off))?;
            p.expect_eax(v, name)?;
        }
        p.a.mov(eax, esp)?;
        p.expect_eax(0x7_0000 - 36, "esp0-frame")?;
        p.a.mov(eax, dword_ptr(esp + 8))?;
        p.a.and(eax, 0x2_3000)?;
        p.expect_eax(0x2_3000, "frame-vm-iopl")?;
        p.a.movzx(eax, word_ptr(0x2_1020u32))?;
        p.expect_eax(0x4242, "segment-arith")?;
        p.a.movzx(eax, word_ptr(0x2_1022u32))?;
        p.expect_eax(0x2121, "int21-emulated")?;
        p.a.movzx(eax, word_ptr(0x2_1024u32))?;
        p.a.and(eax, 0x3000)?;
        p.expect_eax(0x3000, "pushf-iopl")?;
        p.expect_mem(RESULTS + 44, 1, "denied-out-count")?;
        p.expect_mem(RESULTS + 48, out_denied, "denied-out-ip")?;
        p.expect_mem(RESULTS + 52, 1, "int21-count")?;
        p.expect_mem(RESULTS + 56, 1, "cli-count")?;
        p.ok()
    });
    assert_eq!(out, "VOK v86\n");
}

/// Stores ZF (1 or 0) at `addr` (clobbers EDX).
fn store_zf(p: &mut Prog, addr: u32) -> R {
    p.a.setz(dl)?;
    p.a.movzx(edx, dl)?;
    p.a.mov(dword_ptr(addr), edx)
}

/// LLDT/SLDT/LTR/STR, LAR/LSL/VERR/VERW/ARPL, #NP on a segment load, same-privilege far
/// CALL/RETF and a JMP through a call gate.
#[test]
fn descriptor_instructions() {
    const LDT: u32 = 0x4000;
    let out = run_program("descriptors", &[], &|p| {
        let via_gate = p.addr("via_gate");
        p.prologue(&[
            seg_desc(LDT, 0x17, 0x82, 0),            // 0x28 LDT
            tss_desc(TSS, 0x67),                     // 0x30 TSS
            seg_desc(0x10_0000, 0xFFF, 0xF2, 0x4),   // 0x38 data DPL 3, byte limit FFF
            seg_desc(0, 0xF_FFFF, 0x98, 0xC),        // 0x40 execute-only code
            seg_desc(0, 0xF_FFFF, 0x12, 0xC),        // 0x48 data, not present
            seg_desc(0, 0xF_FFFF, 0xFE, 0xC),        // 0x50 conforming code DPL 3
            gate_desc(SEL_CODE0, via_gate, 0x8C, 0), // 0x58 call gate DPL 0
        ])?;
        p.idt_gate(11, "np_handler", 0x8E)?;
        p.idt_gate(13, "gp_handler", 0x8E)?;
        // LDT entry 0: flat data with base 2 MiB.
        p.store64(LDT, seg_desc(0x20_0000, 0xFFFF, 0x92, 0x4))?;
        p.a.mov(ax, 0x28u32)?;
        p.a.lldt(ax)?;
        p.a.xor(eax, eax)?;
        p.a.sldt(ax)?;
        p.expect_eax(0x28, "sldt")?;
        p.a.mov(ax, 0x04u32)?;
        p.a.mov(fs, ax)?;
        p.a.mov(dword_ptr(0u32).fs(), 0x77u32)?;
        p.expect_mem(0x20_0000, 0x77, "ldt-segment")?;
        p.a.mov(ax, 0x30u32)?;
        p.a.ltr(ax)?;
        p.a.xor(eax, eax)?;
        p.a.str(ax)?;
        p.expect_eax(0x30, "str")?;

        // LAR / LSL.
        p.a.mov(ecx, 0x38u32)?;
        p.a.lar(eax, ecx)?;
        store_zf(p, RESULTS)?;
        p.expect_eax(0x0040_F200, "lar-data")?;
        p.expect_mem(RESULTS, 1, "lar-data-zf")?;
        p.a.lsl(eax, ecx)?;
        p.expect_eax(0xFFF, "lsl-data")?;
        p.a.mov(ecx, 0x30u32)?;
        p.a.lar(eax, ecx)?;
        p.a.and(eax, 0xFF00)?;
        p.expect_eax(0x8B00, "lar-busy-tss")?;
        p.a.lsl(eax, ecx)?;
        p.expect_eax(0x67, "lsl-tss")?;
        p.a.mov(eax, 0xDEADu32)?;
        p.a.mov(ecx, 0x1234u32)?;
        p.a.lar(eax, ecx)?;
        store_zf(p, RESULTS)?;
        p.expect_eax(0xDEAD, "lar-beyond-unchanged")?;
        p.expect_mem(RESULTS, 0, "lar-beyond-zf")?;
        p.a.xor(ecx, ecx)?;
        p.a.lsl(eax, ecx)?;
        store_zf(p, RESULTS)?;
        p.expect_mem(RESULTS, 0, "lsl-null-zf")?;
        // RPL 3 cannot see a DPL-0 segment; a conforming one is always visible.
        p.a.mov(ecx, 0x0Bu32)?;
        p.a.lar(eax, ecx)?;
        store_zf(p, RESULTS)?;
        p.expect_mem(RESULTS, 0, "lar-rpl")?;

        // VERR / VERW.
        let verify: [(bool, u16, u32, &str); 6] = [
            (false, 0x40, 0, "verr-exec-only"),
            (false, 0x08, 1, "verr-code"),
            (true, 0x08, 0, "verw-code"),
            (true, 0x10, 1, "verw-data"),
            (false, 0x53, 1, "verr-conforming"),
            (true, 0x13, 0, "verw-rpl"),
        ];
        for (write, sel, zf, name) in verify {
            p.a.mov(cx, sel as u32)?;
            if write {
                p.a.verw(cx)?;
            } else {
                p.a.verr(cx)?;
            }
            store_zf(p, RESULTS)?;
            p.expect_mem(RESULTS, zf, name)?;
        }

        // ARPL raises the destination RPL to the source's.
        p.a.mov(eax, 0xFFFF_0010u32)?;
        p.a.mov(ecx, 3u32)?;
        p.a.arpl(ax, cx)?;
        store_zf(p, RESULTS)?;
        p.expect_eax(0xFFFF_0013, "arpl")?;
        p.expect_mem(RESULTS, 1, "arpl-zf")?;
        p.a.mov(eax, 0x13u32)?;
        p.a.arpl(ax, cx)?;
        store_zf(p, RESULTS)?;
        p.expect_mem(RESULTS, 0, "arpl-zf-again")?;

        // #NP on loading a not-present data segment; #GP on LTR of a busy TSS.
        let np_resume = p.addr("np_resume");
        p.a.mov(dword_ptr(RESULTS + 24), np_resume)?;
        p.a.mov(ax, 0x48u32)?;
        p.a.mov(ds, ax)?;
        p.here("np_resume")?;
        p.expect_mem(RESULTS + 16, 0x48, "np-error")?;
        let gp_resume = p.addr("gp_resume");
        p.a.mov(dword_ptr(RESULTS + 24), gp_resume)?;
        p.a.mov(ax, 0x30u32)?;
        p.a.ltr(ax)?;
        p.here("gp_resume")?;
        p.expect_mem(RESULTS + 20, 0x30, "ltr-busy")?;

        // Far CALL / RETF at the same privilege, then JMP through a call gate.
        let sub = p.addr("far_sub");
        p.a.call_far(SEL_CODE0, sub)?;
        p.expect_mem(RESULTS + 28, SEL_CODE0 as u32, "far-call-cs")?;
        p.a.jmp_far(0x58, 0)?;
        p.fail_now("gate-jmp-fell-through")?;
        p.here("via_gate")?;
        p.ok()?;

        p.here("far_sub")?;
        p.a.mov(eax, dword_ptr(esp + 4))?;
        p.a.mov(dword_ptr(RESULTS + 28), eax)?;
        p.a.retf()?;

        p.here("np_handler")?;
        p.a.pop(eax)?;
        p.a.mov(dword_ptr(RESULTS + 16), eax)?;
        p.a.mov(eax, dword_ptr(RESULTS + 24))?;
        p.a.mov(dword_ptr(esp), eax)?;
        p.a.iretd()?;
        p.here("gp_handler")?;
        p.a.pop(eax)?;
        p.a.mov(dword_ptr(RESULTS + 20), eax)?;
        p.a.mov(eax, dword_ptr(RESULTS + 24))?;
        p.a.mov(dword_ptr(esp), eax)?;
        p.a.iretd()
    });
    assert_eq!(out, "OK descriptors\n");
}

/// A CALL to a 16-bit TSS (through the TSS selector itself) and IRET back, twice: the
/// second call resumes where the 16-bit task's IRET saved its IP.
#[test]
fn task_switch_16bit_tss() {
    let out = run_program("tss16", &[], &|p| {
        p.prologue(&[
            tss_desc(TSS, 0x67),                    // 0x28 current task
            seg_desc(TSS_B, 0x2B, 0x81, 0),         // 0x30 16-bit TSS
            seg_desc(PROG_BASE, 0xFFFF, 0x9A, 0x4), // 0x38 code with base PROG_BASE
        ])?;
        p.a.mov(ax, 0x28u32)?;
        p.a.ltr(ax)?;
        p.a.mov(edi, TSS_B)?;
        p.a.xor(eax, eax)?;
        p.a.mov(ecx, 0x2Cu32)?;
        p.a.rep().stosb()?;
        let entry = p.addr("task16").wrapping_sub(PROG_BASE) & 0xFFFF;
        p.a.mov(word_ptr(TSS_B + 0x0E), entry)?;
        p.a.mov(word_ptr(TSS_B + 0x10), 2u32)?;
        p.a.mov(word_ptr(TSS_B + 0x12), 0x1616u32)?;
        p.a.mov(word_ptr(TSS_B + 0x1A), 0xF000u32)?;
        for (off, sel) in [
            (0x22u32, SEL_DATA0),
            (0x24, 0x38),
            (0x26, SEL_DATA0),
            (0x28, SEL_DATA0),
        ] {
            p.a.mov(word_ptr(TSS_B + off), sel as u32)?;
        }
        p.a.mov(dword_ptr(RESULTS + 8), 0u32)?;
        p.a.mov(ebx, 0x1234_5678u32)?;
        p.a.call_far(0x30, 0)?;
        p.a.mov(eax, ebx)?;
        p.expect_eax(0x1234_5678, "ebx-kept")?;
        p.expect_mem(RESULTS, 0x1616, "task16-ax")?;
        p.expect_mem(RESULTS + 4, 0x30, "task16-tr")?;
        p.a.movzx(eax, word_ptr(TSS_B))?;
        p.expect_eax(0x28, "back-link")?;
        p.a.movzx(eax, word_ptr(TSS_B + 0x24))?;
        p.expect_eax(0x38, "saved-cs")?;
        p.a.call_far(0x30, 0)?;
        p.expect_mem(RESULTS + 8, 1, "resumed")?;
        p.ok()?;

        p.here("task16")?;
        p.a.movzx(eax, ax)?;
        p.a.mov(dword_ptr(RESULTS), eax)?;
        store_sreg_tr(p, RESULTS + 4)?;
        p.a.iretd()?;
        p.a.inc(dword_ptr(RESULTS + 8))?;
        p.a.iretd()
    });
    assert_eq!(out, "OK tss16\n");
}

/// V86 mode extensions (CR4.VME) at IOPL 0: CLI/STI/PUSHF/IRET work on VIF, INT 21h is
/// redirected by the TSS bitmap to the V86 program's own vector table, INT 22h (bit set)
/// traps to the #GP monitor.
#[test]
fn v86_mode_extensions() {
    let (v86, v86_labels) = assemble(16, 0, "v86", &|p| {
        p.a.mov(ax, 0x2100u32)?;
        p.a.mov(ds, ax)?;
        p.a.cli()?;
        p.a.pushf()?;
        p.a.pop(word_ptr(0x30u32))?;
        p.a.sti()?;
        p.a.pushf()?;
        p.a.pop(word_ptr(0x32u32))?;
        p.a.int(0x21)?;
        p.a.int(0x22)?;
        p.a.hlt()?;
        // The V86 program's own INT 21h handler, reached through its vector table.
        p.here("int21")?;
        p.a.pushf()?;
        p.a.pop(word_ptr(0x36u32))?;
        p.a.mov(word_ptr(0x34u32), 0x2121u32)?;
        p.a.iret()
    });
    let int21 = v86_labels["int21"] as u32;
    let out = run_program("vme", &[(V86_CODE_SEG << 4, v86)], &move |p| {
        p.prologue(&[tss_desc(V86_TSS, 0x68 + 32 + 0x2000)])?;
        p.a.mov(edi, V86_TSS)?;
        p.a.xor(eax, eax)?;
        p.a.mov(ecx, 0x68u32)?;
        p.a.rep().stosb()?;
        // Redirection bitmap (all set but vector 21h) then an all-set I/O bitmap.
        p.a.mov(al, 0xFF)?;
        p.a.mov(ecx, 32 + 0x2001u32)?;
        p.a.rep().stosb()?;
        p.a.mov(
            byte_ptr(V86_TSS + 0x68 + 0x21 / 8),
            0xFFu32 & !(1 << (0x21 % 8)),
        )?;
        p.a.mov(word_ptr(V86_TSS + 0x66), 0x68u32 + 32)?;
        p.a.mov(dword_ptr(V86_TSS + 4), 0x7_0000u32)?;
        p.a.mov(dword_ptr(V86_TSS + 8), SEL_DATA0 as u32)?;
        p.a.mov(ax, 0x28u32)?;
        p.a.ltr(ax)?;
        p.a.mov(word_ptr(0x21u32 * 4), int21)?;
        p.a.mov(word_ptr(0x21u32 * 4 + 2), V86_CODE_SEG)?;
        p.idt_gate(13, "monitor", 0x8E)?;
        p.a.mov(eax, cr4)?;
        p.a.or(eax, 1)?;
        p.a.mov(cr4, eax)?;
        for v in [
            0u32,
            0,
            0x2100,
            0x2000,
            0x3000,
            0xFFF0,
            0x2_0002,
            V86_CODE_SEG,
            0,
        ] {
            p.a.push(v)?;
        }
        p.a.iretd()?;

        p.here("monitor")?;
        p.kernel_data()?;
        // Only INT 22h should have trapped.
        p.a.movzx(eax, word_ptr(esp + 8))?;
        p.a.shl(eax, 4)?;
        p.a.add(eax, dword_ptr(esp + 4))?;
        p.a.movzx(eax, word_ptr(eax))?;
        p.expect_eax(0x22CD, "trapped-insn")?;
        p.a.movzx(eax, word_ptr(0x2_1030u32))?;
        p.a.and(eax, 0x3200)?;
        p.expect_eax(0x3000, "pushf-after-cli")?;
        p.a.movzx(eax, word_ptr(0x2_1032u32))?;
        p.a.and(eax, 0x3200)?;
        p.expect_eax(0x3200, "pushf-after-sti")?;
        p.a.movzx(eax, word_ptr(0x2_1034u32))?;
        p.expect_eax(0x2121, "redirected-int21")?;
        // Inside the redirected handler VIF was clear.
        p.a.movzx(eax, word_ptr(0x2_1036u32))?;
        p.a.and(eax, 0x200)?;
        p.expect_eax(0, "handler-vif")?;
        // The 16-bit IRET restored VIF from the pushed IF; the real IF stayed 0.
        p.a.mov(eax, dword_ptr(esp + 12))?;
        p.a.and(eax, 0x8_3200)?;
        p.expect_eax(0x8_0000, "frame-vif")?;
        p.ok()
    });
    assert_eq!(out, "OK vme\n");
}

/// Faults during interrupt delivery: a not-present gate (#NP with the IDT error code),
/// and a bad ring-0 stack selector in the TSS (#TS) delivered through a task gate,
/// which pushes the error code on the handler task's stack and leaves the faulting
/// ring-3 state (at the INT instruction) saved in the old TSS.
#[test]
fn delivery_faults_and_exception_task_gate() {
    let out = run_program("delivery-faults", &[], &|p| {
        p.prologue(&[tss_desc(TSS, 0x67), tss_desc(TSS_C, 0x67)])?;
        p.idt_gate(11, "np_handler", 0x8E)?;
        // 0x81: a DPL-3 interrupt gate that is not present.
        p.store64(IDT + 0x81 * 8, gate_desc(SEL_CODE0, 0, 0x6E, 0))?;
        p.a.int(0x81)?;
        p.expect_mem(RESULTS, 0x81 * 8 + 2, "np-gate")?;

        init_task(p, TSS_C, "ts_task", 0x6_E000, 0)?;
        p.store64(IDT + 10 * 8, gate_desc(0x30, 0, 0x85, 0))?;
        p.idt_gate(0x80, "int80", 0xEE)?;
        // SS0 names a code segment: the switch to ring 0 raises #TS(18h).
        p.a.mov(dword_ptr(TSS + 4), 0x7_0000u32)?;
        p.a.mov(dword_ptr(TSS + 8), SEL_CODE3 as u32)?;
        p.a.mov(ax, 0x28u32)?;
        p.a.ltr(ax)?;
        iret_to_ring3(p, "user", 0x5_0000, 2)?;

        p.here("user")?;
        p.a.mov(esi, 0x5151u32)?;
        p.here("user_int")?;
        p.a.int(0x80)?;
        p.here("int80")?;
        p.fail_now("int80-delivered")?;

        p.here("ts_task")?;
        p.a.pop(eax)?;
        p.expect_eax(SEL_CODE3 as u32, "ts-error")?;
        p.a.movzx(eax, word_ptr(TSS_C))?;
        p.expect_eax(0x28, "back-link")?;
        p.a.pushfd()?;
        p.a.pop(eax)?;
        p.a.and(eax, 0x4000)?;
        p.expect_eax(0x4000, "nt")?;
        let user_int = p.addr("user_int");
        p.expect_mem(TSS + 0x20, user_int, "saved-eip")?;
        p.expect_mem(TSS + 0x38, 0x5_0000, "saved-esp")?;
        p.expect_mem(TSS + 0x40, 0x5151, "saved-esi")?;
        p.a.movzx(eax, word_ptr(TSS + 0x4C))?;
        p.expect_eax((SEL_CODE3 | 3) as u32, "saved-cs")?;
        p.a.movzx(eax, word_ptr(TSS + 0x50))?;
        p.expect_eax((SEL_DATA3 | 3) as u32, "saved-ss")?;
        p.a.mov(eax, esp)?;
        p.expect_eax(0x6_E000, "task-stack")?;
        p.ok()?;

        p.here("np_handler")?;
        p.a.pop(eax)?;
        p.a.mov(dword_ptr(RESULTS), eax)?;
        p.a.add(dword_ptr(esp), 2)?;
        p.a.iretd()
    });
    assert_eq!(out, "OK delivery-faults\n");
}

/// Robustness: random descriptor tables, TSS contents and random control-transfer and
/// descriptor instructions (far JMP/CALL/RET, IRET, INT n, LAR/LSL/VERR/VERW, LLDT/LTR,
/// segment loads, SYSENTER/SYSEXIT) at random privilege levels, with and without paging
/// faults, must never panic the host; triple faults are fine.
#[test]
fn random_system_state_does_not_panic() {
    use hospes_cpu::state::*;
    let mut seed = 0x1234_5678_9ABC_DEF0u64;
    let mut next = move || {
        // xorshift64*: deterministic, good enough to scatter bits.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..300 {
        let mut cpu = hospes_cpu::Cpu::new(4 << 20, 0).unwrap();
        // GDT (32 entries) and IDT (256 entries) of random descriptors, biased toward
        // present gates and segments that point at each other.
        let mut tables = vec![0u8; 0x1000];
        for chunk in tables.chunks_mut(8) {
            let mut d = next();
            if d & 3 != 0 {
                // Make it mostly present with a small selector in the gate field.
                d |= 1 << 47;
                d = (d & !0xFFFF_0000) | ((d >> 3) & 0xF8_0000) | ((d & 3) << 16);
            }
            chunk.copy_from_slice(&d.to_le_bytes());
        }
        cpu.write_phys(0x1000, &tables[..0x100]); // GDT
        cpu.write_phys(0x2000, &tables[0x100..0x900]); // IDT
        let tss: Vec<u8> = (0..0x2100).map(|_| next() as u8).collect();
        cpu.write_phys(0x4000, &tss);
        let code: Vec<u8> = (0..0x1000)
            .map(|i| {
                let r = next();
                const OPS: [u8; 14] = [
                    0xEA, 0x9A, 0xCB, 0xCA, 0xCF, 0xCD, 0x0F, 0x8E, 0x63, 0x17, 0x1F, 0x07, 0xE6,
                    0xEC,
                ];
                if i % 3 == 0 {
                    OPS[(r % OPS.len() as u64) as usize]
                } else if i % 3 == 1 && r & 1 == 0 {
                    [0x00, 0x02, 0x03, 0x34, 0x35][(r % 5) as usize]
                } else {
                    r as u8
                }
            })
            .collect();
        cpu.write_phys(0x10000, &code);
        let s = &mut cpu.state;
        s.cr0 |= CR0_PE;
        s.gdtr = DescTable {
            base: 0x1000,
            limit: 0xFF,
        };
        s.idtr = DescTable {
            base: 0x2000,
            limit: 0x7FF,
        };
        s.tr = Segment {
            base: 0x4000,
            limit: 0x20FF,
            selector: 0x28,
            attr: ATTR_P | 11,
        };
        let cpl = (next() % 4) as u8;
        let dpl = (cpl as u16) << 5;
        let flat = |selector: u16, attr: u16| Segment {
            base: 0,
            limit: u32::MAX,
            selector,
            attr: attr | ATTR_P | ATTR_S | ATTR_DB | ATTR_G | ATTR_ACCESSED | dpl,
        };
        s.seg[CS] = flat(0x08 | cpl as u16, ATTR_CODE | ATTR_RW);
        for seg in [ES, SS, DS, FS, GS] {
            s.seg[seg] = flat(0x10 | cpl as u16, ATTR_RW);
        }
        s.cpl = cpl;
        s.rip = 0x10000;
        s.gpr[ESP] = 0x3_0000;
        s.msr.sysenter_cs = next() & 0xFF;
        s.flags.set((next() as u32) & 0x3_7FD5 | 2);
        if next() & 3 == 0 {
            s.cr4 |= CR4_VME | CR4_PVI;
        }
        if next() & 1 == 0 {
            // Paging over an identity map with random holes and permissions (the page
            // tables live at 1 MiB, out of the way of the tables above).
            s.cr0 |= CR0_PG;
            s.cr3 = 0x10_0000;
            let mut pd = vec![0u8; 4096];
            pd[..4].copy_from_slice(&0x10_1007u32.to_le_bytes());
            cpu.write_phys(0x10_0000, &pd);
            let pt: Vec<u8> = (0..1024u32)
                .flat_map(|i| {
                    let bits = if next() % 8 == 0 {
                        next() as u32 & 7
                    } else {
                        7
                    };
                    ((i << 12) | bits).to_le_bytes()
                })
                .collect();
            cpu.write_phys(0x10_1000, &pt);
        }
        let mut bus = TestBus::default();
        cpu.run(&mut bus, 20_000);
    }
}

/// An external interrupt while in V86 mode: delivered through a DPL-0 interrupt gate (no
/// gate privilege check for hardware interrupts) with the V86 frame on the ring-0 stack,
/// and IRET resumes the V86 code.
#[test]
fn hardware_interrupt_in_v86() {
    let (v86, _) = assemble(16, 0, "v86", &|p| {
        p.a.mov(ax, 0x2100u32)?;
        p.a.mov(ds, ax)?;
        p.a.mov(byte_ptr(0u32), 0u32)?;
        p.a.mov(al, 0x20u32)?;
        // Raises IRQ vector 20h; it is taken right after this instruction (IF = 1).
        p.a.out(0xE8u32, al)?;
        p.a.mov(byte_ptr(0u32), 1u32)?;
        p.a.int(0x31)?;
        p.a.hlt()
    });
    let out = run_program("v86-irq", &[(V86_CODE_SEG << 4, v86)], &move |p| {
        p.prologue(&[tss_desc(V86_TSS, 0x68 + 0x2000)])?;
        p.a.mov(edi, V86_TSS)?;
        p.a.xor(eax, eax)?;
        p.a.mov(ecx, 0x68u32 + 0x2001)?;
        p.a.rep().stosb()?;
        p.a.mov(dword_ptr(V86_TSS + 4), 0x7_0000u32)?;
        p.a.mov(dword_ptr(V86_TSS + 8), SEL_DATA0 as u32)?;
        p.a.mov(word_ptr(V86_TSS + 0x66), 0x68u32)?;
        p.a.mov(ax, 0x28u32)?;
        p.a.ltr(ax)?;
        p.idt_gate(0x20, "irq", 0x8E)?;
        p.idt_gate(0x31, "done", 0xEE)?;
        p.a.mov(dword_ptr(RESULTS), 0u32)?;
        // IOPL 3, IF 1, VM.
        for v in [
            0u32,
            0,
            0x2100,
            0x2000,
            0x3000,
            0xFFF0,
            0x2_3202,
            V86_CODE_SEG,
            0,
        ] {
            p.a.push(v)?;
        }
        p.a.iretd()?;

        p.here("irq")?;
        p.kernel_data()?;
        p.a.inc(dword_ptr(RESULTS))?;
        // The V86 code had not yet run the instruction after the OUT.
        p.a.movzx(eax, byte_ptr(0x2_1000u32))?;
        p.expect_eax(0, "irq-timing")?;
        p.a.mov(eax, dword_ptr(esp + 8))?;
        p.a.and(eax, 0x2_0200)?;
        p.expect_eax(0x2_0200, "frame-vm-if")?;
        p.a.pushfd()?;
        p.a.pop(eax)?;
        p.a.and(eax, 0x2_0200)?;
        p.expect_eax(0, "handler-vm-if")?;
        p.a.mov(eax, esp)?;
        p.expect_eax(0x7_0000 - 36, "esp0-frame")?;
        p.a.iretd()?;

        p.here("done")?;
        p.kernel_data()?;
        p.expect_mem(RESULTS, 1, "irq-count")?;
        p.a.movzx(eax, byte_ptr(0x2_1000u32))?;
        p.expect_eax(1, "resumed")?;
        p.ok()
    });
    assert_eq!(out, "OK v86-irq\n");
}

/// A kernel stack overflow: the #PF handler cannot push its frame, the second #PF makes
/// a double fault, and #DF goes through a task gate to a task with a good stack (as
/// i386 Linux does). The double-fault task sees error code 0, CR2 and the faulting
/// state saved in the old TSS.
#[test]
fn double_fault_through_task_gate() {
    let out = run_program("double-fault", &[], &|p| {
        p.prologue(&[tss_desc(TSS, 0x67), tss_desc(TSS_C, 0x67)])?;
        p.a.mov(ax, 0x28u32)?;
        p.a.ltr(ax)?;
        init_task(p, TSS_C, "df_task", 0x6_E000, 0)?;
        p.a.mov(dword_ptr(TSS_C + 0x1C), PD)?;
        p.store64(IDT + 8 * 8, gate_desc(0x30, 0, 0x85, 0))?;
        p.identity_paging(PD, PT, 3)?;
        // The page just below the stack is not present.
        p.a.mov(dword_ptr(PT + 0x9E * 4), 0x9_E002u32)?;
        enable_paging(p, false)?;
        p.a.mov(esp, 0x9_E010u32)?;
        p.here("overflow")?;
        p.a.push(eax)?;
        p.fail_now("no-fault")?;

        p.here("df_task")?;
        p.a.pop(eax)?;
        p.expect_eax(0, "df-error")?;
        p.a.mov(eax, cr2)?;
        p.expect_eax(0x9_E00C, "cr2")?;
        let overflow = p.addr("overflow");
        p.expect_mem(TSS + 0x20, overflow, "saved-eip")?;
        p.expect_mem(TSS + 0x38, 0x9_E010, "saved-esp")?;
        p.a.movzx(eax, word_ptr(TSS_C))?;
        p.expect_eax(0x28, "back-link")?;
        p.ok()
    });
    assert_eq!(out, "OK double-fault\n");
}

/// 16-bit gates: a 16-bit call gate from ring 3 copying one word parameter and an
/// O16 RETF 2 back, and a 16-bit interrupt gate with an O16 IRET back. The code
/// segments have base PROG_BASE so the 16-bit offsets reach the program; the ring-3
/// stack is below 64 KiB because a 16-bit gate frame only holds SP.
#[test]
fn gates_16bit() {
    let out = run_program("gates16", &[], &|p| {
        let rel = |p: &Prog, name: &str| p.addr(name).wrapping_sub(PROG_BASE) & 0xFFFF;
        let gate_entry = rel(p, "gate16_handler");
        p.prologue(&[
            tss_desc(TSS, 0x67),                    // 0x28
            gate_desc(0x38, gate_entry, 0xE4, 1),   // 0x30 16-bit call gate, DPL 3
            seg_desc(PROG_BASE, 0xFFFF, 0x9A, 0x4), // 0x38 ring-0 code, base PROG_BASE
            seg_desc(PROG_BASE, 0xFFFF, 0xFA, 0x4), // 0x40 ring-3 code, base PROG_BASE
        ])?;
        load_tss(p, 0x7_0000)?;
        let int_entry = rel(p, "int16_handler");
        p.store64(IDT + 0x82 * 8, gate_desc(0x38, int_entry, 0xE6, 0))?;
        p.idt_gate(0x81, "finish", 0xEE)?;
        let user = rel(p, "user");
        p.a.push((SEL_DATA3 | 3) as u32)?;
        p.a.push(0xF000u32)?;
        p.a.push(2u32)?;
        p.a.push(0x43u32)?;
        p.a.mov(eax, user)?;
        p.a.push(eax)?;
        p.a.iretd()?;

        p.here("user")?;
        p.a.mov(ax, (SEL_DATA3 | 3) as u32)?;
        p.a.mov(ds, ax)?;
        p.a.mov(es, ax)?;
        p.a.mov(ax, 0x1234u32)?;
        p.a.push(ax)?;
        p.a.call_far(0x30 | 3, 0)?;
        p.here("after_call")?;
        p.a.mov(dword_ptr(RESULTS + 24), esp)?;
        p.a.int(0x82)?;
        p.here("after_int")?;
        p.a.int(0x81)?;

        p.here("gate16_handler")?;
        p.a.mov(dword_ptr(RESULTS), esp)?;
        for (i, off) in [0i32, 2, 4, 6, 8].iter().enumerate() {
            p.a.movzx(eax, word_ptr(esp + *off))?;
            p.a.mov(dword_ptr(RESULTS + 4 + 4 * i as u32), eax)?;
        }
        // o16 retf 2
        p.a.db(&[0x66, 0xCA, 0x02, 0x00])?;

        p.here("int16_handler")?;
        p.a.mov(dword_ptr(RESULTS + 28), esp)?;
        for (i, off) in [0i32, 2, 4, 6, 8].iter().enumerate() {
            p.a.movzx(eax, word_ptr(esp + *off))?;
            p.a.mov(dword_ptr(RESULTS + 32 + 4 * i as u32), eax)?;
        }
        // o16 iret
        p.a.db(&[0x66, 0xCF])?;

        p.here("finish")?;
        p.kernel_data()?;
        p.expect_mem(RESULTS, 0x7_0000 - 10, "gate-esp")?;
        let after_call = rel(p, "after_call");
        p.expect_mem(RESULTS + 4, after_call, "gate-ip")?;
        p.expect_mem(RESULTS + 8, 0x43, "gate-cs")?;
        p.expect_mem(RESULTS + 12, 0x1234, "gate-param")?;
        p.expect_mem(RESULTS + 16, 0xEFFE, "gate-old-sp")?;
        p.expect_mem(RESULTS + 20, (SEL_DATA3 | 3) as u32, "gate-old-ss")?;
        p.expect_mem(RESULTS + 24, 0xF000, "retf-released-param")?;
        p.expect_mem(RESULTS + 28, 0x7_0000 - 10, "int-esp")?;
        let after_int = rel(p, "after_int");
        p.expect_mem(RESULTS + 32, after_int, "int-ip")?;
        p.expect_mem(RESULTS + 36, 0x43, "int-cs")?;
        p.expect_mem(RESULTS + 40, 2, "int-flags")?;
        p.expect_mem(RESULTS + 44, 0xF000, "int-old-sp")?;
        p.expect_mem(RESULTS + 48, (SEL_DATA3 | 3) as u32, "int-old-ss")?;
        p.ok()
    });
    assert_eq!(out, "OK gates16\n");
}
