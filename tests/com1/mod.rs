//! COM1 output for the boot programs the tests assemble (16-bit real mode).

use iced_x86::code_asm::*;

/// Emits at `label` a subroutine that sends AL to COM1 once the transmitter holding
/// register is empty (line status bit 5), keeping every register.
pub fn putc_routine(a: &mut CodeAssembler, label: &mut CodeLabel) {
    let mut wait = a.create_label();
    a.set_label(label).unwrap();
    a.push(ax).unwrap();
    a.push(dx).unwrap();
    a.mov(ah, al).unwrap();
    a.mov(dx, 0x3FDu32).unwrap();
    a.set_label(&mut wait).unwrap();
    a.in_(al, dx).unwrap();
    a.test(al, 0x20).unwrap();
    a.jz(wait).unwrap();
    a.mov(al, ah).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.out(dx, al).unwrap();
    a.pop(dx).unwrap();
    a.pop(ax).unwrap();
    a.ret().unwrap();
}
