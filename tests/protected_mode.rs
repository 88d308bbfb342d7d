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
