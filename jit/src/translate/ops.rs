//! Natives with emitters of their own: the string instructions without REP, DIV,
//! CMPXCHG, the indirect CALL, CLI and the x87 loads and stores of reals. Each takes the interpreter for the rest of the
//! block (a side exit) wherever it would fault or needs the interpreter's checks.

use super::classify::{Gpr, MemRef, Operand, StringOp};
use super::{
    guest, trusted, Emitter, HelperCtx, CPL, CR0, CTX_X87_OUT, FLAG_BITS, FPU_CONTROL, FPU_STATUS,
};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use hospes_cpu::flags::{DF, IF};
use hospes_cpu::fpu::float::{BUSY, ES as FPU_ES, EXC};
use hospes_cpu::state::{CR0_EM, CR0_PE, CR0_TS, EAX, ECX, EDI, EDX, ES, ESI, ESP};
use iced_x86::{Instruction, Mnemonic};

/// AL, AX or EAX.
fn accumulator(size: u8) -> Gpr {
    Gpr {
        n: EAX,
        size,
        high: false,
    }
}

impl Emitter<'_> {
    /// A 32-bit operand read on the fast path (memory through the TLB; the interpreter
    /// runs the instruction on a miss).
    pub(super) fn read32(&mut self, ins: &Instruction, index: usize, src: &Operand) -> Value {
        match *src {
            Operand::Mem(ref m) => {
                let off = self.ea(m);
                let (hit, host) = self.fast_address(m.seg, off, 4, false, 0);
                let mut v = None;
                self.with_slow_path(ins, index, hit, |e| v = Some(e.load_guest(host, 4)));
                v.expect("the fast path loads the operand")
            }
            _ => self.value(src),
        }
    }

    /// LODS/STOS/SCAS/MOVS of `size` bytes: ESI and EDI step by the size, down when DF
    /// is set.
    pub(super) fn string(
        &mut self,
        ins: &Instruction,
        index: usize,
        op: StringOp,
        size: u8,
        seg: usize,
    ) {
        let bits = self.load_flag_bits();
        let down = self.b.ins().band_imm_u(bits, DF as i64);
        let up_step = self.iconst32(size as u32);
        let down_step = self.iconst32((size as u32).wrapping_neg());
        let step = self.b.ins().select(down, down_step, up_step);
        let esi = self.reg32(ESI);
        let edi = self.reg32(EDI);
        let acc = accumulator(size);
        let next = |e: &mut Self, v: Value| e.b.ins().iadd(v, step);
        match op {
            StringOp::Lods => {
                let (hit, from) = self.fast_address(seg, esi, size, false, 0);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.load_guest(from, size);
                    e.set(acc, v);
                    let esi = next(e, esi);
                    e.set(Gpr::full(ESI), esi);
                });
            }
            StringOp::Stos => {
                let (hit, to) = self.fast_address(ES, edi, size, true, 0);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.get(acc);
                    e.store_guest(to, v, size);
                    let edi = next(e, edi);
                    e.set(Gpr::full(EDI), edi);
                });
            }
            StringOp::Scas => {
                let (hit, from) = self.fast_address(ES, edi, size, false, 0);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.load_guest(from, size);
                    let a = e.get(acc);
                    e.alu(Mnemonic::Cmp, size, a, v, None);
                    let edi = next(e, edi);
                    e.set(Gpr::full(EDI), edi);
                });
            }
            StringOp::Movs => {
                let (read_ok, from) = self.fast_address(seg, esi, size, false, 0);
                let (write_ok, to) = self.fast_address(ES, edi, size, true, 0);
                let hit = self.b.ins().band(read_ok, write_ok);
                self.with_slow_path(ins, index, hit, |e| {
                    let v = e.load_guest(from, size);
                    e.store_guest(to, v, size);
                    let esi = next(e, esi);
                    e.set(Gpr::full(ESI), esi);
                    let edi = next(e, edi);
                    e.set(Gpr::full(EDI), edi);
                });
            }
        }
    }

    /// REP STOSB (32-bit addresses) where ES is flat (the caller's check): where DF is
    /// clear, the ECX bytes at EDI are on one page the TLB holds writable, and the
    /// budget holds them all (one instruction per byte, as the interpreter counts them)
    /// with the rest of the block, a memset; otherwise the interpreter's.
    pub(super) fn rep_stosb(&mut self, ins: &Instruction, index: usize) {
        let bits = self.load_flag_bits();
        let df = self.b.ins().band_imm_u(bits, DF as i64);
        let up = self.b.ins().icmp_imm_u(IntCC::Equal, df, 0);
        let ecx = self.reg32(ECX);
        let edi = self.reg32(EDI);
        let n = self.b.ins().uextend(types::I64, ecx);
        let lin = self.b.ins().uextend(types::I64, edi);
        // On EDI's page: its offset plus the count stays within the page.
        let offset = self.b.ins().band_imm_u(lin, 0xFFF);
        let past = self.b.ins().iadd(offset, n);
        let in_page = self
            .b
            .ins()
            .icmp_imm_u(IntCC::UnsignedLessThanOrEqual, past, 0x1000);
        // Each byte counts as an instruction (none: one); the rest of the block after.
        let rest = (self.count - index - 1) as i64;
        let after = self.b.ins().iadd(self.icount0, n);
        let after = self.b.ins().iadd_imm_s(after, self.done + rest);
        let end = self
            .b
            .ins()
            .load(types::I64, trusted(), self.cpu, super::TIER_END);
        let fits = self
            .b
            .ins()
            .icmp(IntCC::UnsignedLessThanOrEqual, after, end);
        let (mapped, host) = self.tlb_check(None, lin, 1, true);
        let mut ok = self.b.ins().band(up, in_page);
        ok = self.b.ins().band(ok, fits);
        ok = self.b.ins().band(ok, mapped);
        self.with_slow_path(ins, index, ok, |e| {
            let eax = e.reg32(EAX);
            let al = e.b.ins().ireduce(types::I8, eax);
            let frontend = e.frontend;
            e.b.call_memset(frontend, host, al, n);
            let edi = e.b.ins().iadd(edi, ecx);
            e.set(Gpr::full(EDI), edi);
            let zero = e.iconst32(0);
            e.set(Gpr::full(ECX), zero);
            // The count goes on from the bytes done (this instruction counts as one
            // in `done`, and as one when ECX was 0).
            let extra = e.b.ins().iadd_imm_s(n, -1);
            let none = e.b.ins().icmp_imm_u(IntCC::Equal, n, 0);
            let zero64 = e.b.ins().iconst(types::I64, 0);
            let extra = e.b.ins().select(none, zero64, extra);
            e.icount0 = e.b.ins().iadd(e.icount0, extra);
        });
    }

    /// DIV of EDX:EAX by a 32-bit operand; the flags are left as they are (as the
    /// interpreter leaves them). A zero divisor or a quotient too big (#DE) is the
    /// interpreter's: both are EDX >= divisor.
    pub(super) fn div(&mut self, ins: &Instruction, index: usize, src: &Operand) {
        let d = self.read32(ins, index, src);
        let high = self.reg32(EDX);
        let low = self.reg32(EAX);
        let fits = self.b.ins().icmp(IntCC::UnsignedLessThan, high, d);
        self.with_slow_path(ins, index, fits, |e| {
            let high = e.b.ins().uextend(types::I64, high);
            let high = e.b.ins().ishl_imm_u(high, 32);
            let low = e.b.ins().uextend(types::I64, low);
            let n = e.b.ins().bor(high, low);
            let d = e.b.ins().uextend(types::I64, d);
            let q = e.b.ins().udiv(n, d);
            let r = e.b.ins().urem(n, d);
            let q = e.b.ins().ireduce(types::I32, q);
            let r = e.b.ins().ireduce(types::I32, r);
            e.set(Gpr::full(EAX), q);
            e.set(Gpr::full(EDX), r);
        });
    }

    /// CMPXCHG to memory: compares the accumulator with the destination (flags as CMP);
    /// equal: the source is stored, else the accumulator gets the destination (which is
    /// written back unchanged, so the page must be writable either way).
    pub(super) fn cmpxchg(&mut self, ins: &Instruction, index: usize, dst: &MemRef, src: Gpr) {
        let size = src.size;
        let off = self.ea(dst);
        let (hit, host) = self.fast_address(dst.seg, off, size, true, 0);
        self.with_slow_path(ins, index, hit, |e| {
            let old = e.load_guest(host, size);
            let acc = accumulator(size);
            let a = e.get(acc);
            let new = e.get(src);
            e.alu(Mnemonic::Cmp, size, a, old, None);
            let equal = e.b.ins().icmp(IntCC::Equal, a, old);
            let stored = e.b.ins().select(equal, new, old);
            e.store_guest(host, stored, size);
            let a = e.b.ins().select(equal, a, old);
            e.set(acc, a);
        });
    }

    /// A near CALL through a register or memory: pushes the return address and leaves
    /// for the target, found in the jump cache. The interpreter does the CALL where the
    /// operand or the stack is off the fast path, or the target beyond the CS limit.
    pub(super) fn call_indirect(
        &mut self,
        ins: &Instruction,
        index: usize,
        src: &Operand,
        next_ip: i64,
    ) {
        let esp = self.reg32(ESP);
        let new_esp = self.add_const(esp, -4);
        let (write_ok, to) = self.fast_stack(new_esp, 4, true);
        let target = match *src {
            Operand::Mem(ref m) => {
                // The operand's address comes from ESP before the push.
                let off = self.ea(m);
                let (read_ok, from) = self.fast_address(m.seg, off, 4, false, 0);
                let hit = self.b.ins().band(read_ok, write_ok);
                let mut v = None;
                self.with_slow_path(ins, index, hit, |e| v = Some(e.load_guest(from, 4)));
                v.expect("the fast path loads the target")
            }
            _ => {
                let v = self.value(src);
                self.with_slow_path(ins, index, write_ok, |_| {});
                v
            }
        };
        let target = self.b.ins().uextend(types::I64, target);
        // Nothing is stored before the limit check: beyond it the CALL faults whole.
        self.unless_beyond_cs_limit(ins, index, target, self.done);
        let ret = self.eip_at(next_ip);
        let ret = self.b.ins().ireduce(types::I32, ret);
        self.store_guest(to, ret, 4);
        self.set(Gpr::full(ESP), new_esp);
        self.done += 1;
        self.run_on(super::Next::Lookup, target, crate::EXIT_INDIRECT);
    }

    /// Whether x87 instructions run rather than fault with #NM (CR0.EM and CR0.TS
    /// clear), and with `waiting`, also not with #MF (no unmasked exception pending
    /// with CR0.NE set), as `Cpu::exec_fpu` checks.
    fn fpu_ready(&mut self, waiting: bool) -> Value {
        let cr0 = self.b.ins().load(types::I64, trusted(), self.cpu, CR0);
        let mut fault = CR0_EM | CR0_TS;
        if !waiting {
            let off = self.b.ins().band_imm_u(cr0, fault as i64);
            return self.b.ins().icmp_imm_u(IntCC::Equal, off, 0);
        }
        // #MF needs both ES and CR0.NE: NE (bit 5) moved onto ES (bit 7).
        let status = self
            .b
            .ins()
            .uload16(types::I64, trusted(), self.cpu, FPU_STATUS);
        let es = self.b.ins().band_imm_u(status, FPU_ES as i64);
        let ne = self.b.ins().ishl_imm_u(cr0, 2);
        let pending = self.b.ins().band(es, ne);
        fault |= 1 << 7;
        let any = self.b.ins().bor(cr0, pending);
        let off = self.b.ins().band_imm_u(any, fault as i64);
        self.b.ins().icmp_imm_u(IntCC::Equal, off, 0)
    }

    /// SAHF: the flags from AH.
    pub(super) fn sahf(&mut self) {
        let eax = self.reg32(EAX);
        let ah = self.b.ins().ushr_imm_u(eax, 8);
        let ah = self.b.ins().band_imm_u(ah, 0xFF);
        self.sahf_flags(ah);
    }

    /// FNSTSW AX: AX = the status word.
    pub(super) fn fnstsw_ax(&mut self, ins: &Instruction, index: usize) {
        let ready = self.fpu_ready(false);
        self.with_slow_path(ins, index, ready, |e| {
            let sw = e.b.ins().uload16(types::I32, trusted(), e.cpu, FPU_STATUS);
            e.set(
                Gpr {
                    n: EAX,
                    size: 2,
                    high: false,
                },
                sw,
            );
        });
    }

    /// FNSTCW m16: the control word to memory.
    pub(super) fn fnstcw(&mut self, ins: &Instruction, index: usize, m: &MemRef) {
        let ready = self.fpu_ready(false);
        let off = self.ea(m);
        let (hit, host) = self.fast_address(m.seg, off, 2, true, 0);
        let ok = self.b.ins().band(ready, hit);
        self.with_slow_path(ins, index, ok, |e| {
            let cw = e.b.ins().uload16(types::I32, trusted(), e.cpu, FPU_CONTROL);
            e.store_guest(host, cw, 2);
        });
    }

    /// FLDCW m16: the control word from memory (reserved bits as the interpreter
    /// keeps them), and ES/B as the new masks leave the pending exceptions.
    pub(super) fn fldcw(&mut self, ins: &Instruction, index: usize, m: &MemRef) {
        let ready = self.fpu_ready(true);
        let off = self.ea(m);
        let (hit, host) = self.fast_address(m.seg, off, 2, false, 0);
        let ok = self.b.ins().band(ready, hit);
        self.with_slow_path(ins, index, ok, |e| {
            let fl = trusted();
            let cw = e.load_guest(host, 2);
            let cw = e.b.ins().band_imm_u(cw, 0x1F7F);
            let cw = e.b.ins().bor_imm_u(cw, 0x0040);
            e.b.ins().istore16(fl, cw, e.cpu, FPU_CONTROL);
            let sw = e.b.ins().uload16(types::I32, fl, e.cpu, FPU_STATUS);
            let masked = e.b.ins().bnot(cw);
            let unmasked = e.b.ins().band(sw, masked);
            let unmasked = e.b.ins().band_imm_u(unmasked, EXC as i64);
            let any = e.b.ins().icmp_imm_u(IntCC::NotEqual, unmasked, 0);
            let cleared = e.b.ins().band_imm_u(sw, !((FPU_ES | BUSY) as i64));
            let set = e.b.ins().bor_imm_u(cleared, (FPU_ES | BUSY) as i64);
            let sw = e.b.ins().select(any, set, cleared);
            e.b.ins().istore16(fl, sw, e.cpu, FPU_STATUS);
        });
    }

    /// CLI where the CPL may change IF (real mode, or CPL <= IOPL); elsewhere the
    /// interpreter's rules (#GP, or VIF with VME/PVI).
    pub(super) fn cli(&mut self, ins: &Instruction, index: usize) {
        let cr0 = self.b.ins().load(types::I64, trusted(), self.cpu, CR0);
        let pe = self.b.ins().band_imm_u(cr0, CR0_PE as i64);
        let real = self.b.ins().icmp_imm_u(IntCC::Equal, pe, 0);
        let cpl = self.b.ins().uload8(types::I32, trusted(), self.cpu, CPL);
        let bits = self.load_flag_bits();
        let iopl = self.b.ins().ushr_imm_u(bits, 12);
        let iopl = self.b.ins().band_imm_u(iopl, 3);
        let allowed = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, cpl, iopl);
        let ok = self.b.ins().bor(real, allowed);
        self.with_slow_path(ins, index, ok, |e| {
            let bits = e.b.ins().band_imm_u(bits, !(IF as i64));
            e.b.ins().store(trusted(), bits, e.cpu, FLAG_BITS);
        });
    }

    /// An x87 instruction on registers only (`m` None), reading `size` bytes at `m` or
    /// storing them there: the access on the TLB's fast path, the x87 part by the
    /// interpreter's code in a helper. Where that refuses (#NM, #MF, an unmasked
    /// exception that suppresses the store) or the access misses, the interpreter
    /// runs the rest of the block from here.
    pub(super) fn x87(
        &mut self,
        ins: &Instruction,
        index: usize,
        m: &Option<MemRef>,
        size: u8,
        store: bool,
    ) {
        // The helpers find the instruction in the running block.
        self.publish_block();
        let at = self.iconst32(index as u32);
        // The FOP the instruction leaves, worked out here rather than on every run.
        let fop = self.iconst32(hospes_cpu::fpu::fpu_opcode(ins) as u32);
        let Some(m) = m else {
            let zero = self.iconst32(0);
            let hctx = self.hctx();
            let args = [hctx, at, zero, zero, zero, fop];
            let call = self.b.ins().call(self.helpers.x87_read, &args);
            let done = self.b.inst_results(call)[0];
            self.with_slow_path(ins, index, done, |_| {});
            return;
        };
        let off = self.ea(m);
        let (hit, host) = self.fast_address(m.seg, off, size, store, 0);
        self.with_slow_path(ins, index, hit, |e| {
            if store {
                let hctx = e.hctx();
                let call = e.b.ins().call(e.helpers.x87_store, &[hctx, at, off, fop]);
                let done = e.b.inst_results(call)[0];
                e.with_slow_path(ins, index, done, |e| {
                    let ty = if size == 8 { types::I64 } else { types::I32 };
                    let hctx = e.hctx();
                    let bits = e.b.ins().load(ty, trusted(), hctx, CTX_X87_OUT);
                    e.store_guest(host, bits, size);
                });
            } else {
                let (low, high) = if size == 8 {
                    let bits = e.b.ins().load(types::I64, guest(), host, 0);
                    let low = e.b.ins().ireduce(types::I32, bits);
                    let high = e.b.ins().ushr_imm_u(bits, 32);
                    (low, e.b.ins().ireduce(types::I32, high))
                } else {
                    (e.load_guest(host, size), e.iconst32(0))
                };
                let hctx = e.hctx();
                let args = [hctx, at, off, low, high, fop];
                let call = e.b.ins().call(e.helpers.x87_read, &args);
                let done = e.b.inst_results(call)[0];
                e.with_slow_path(ins, index, done, |_| {});
            }
        });
    }
}

/// The instruction at `index` of the running block and its EIP.
///
/// # Safety
/// `ctx` is the context [`super::call`] built for the running compiled code, and
/// `index` one of the running block's instructions.
unsafe fn running<'c>(
    ctx: *mut HelperCtx<'c>,
    index: u32,
) -> (&'c mut HelperCtx<'c>, &'c Instruction, u64) {
    // SAFETY: by this function's contract (see `helper_step` for why the pointers in
    // the context are valid while compiled code runs).
    unsafe {
        let ctx = &mut *ctx;
        let ins = &(*ctx.block).instrs[index as usize];
        let eip = (ctx.base + ins.ip()) & 0xFFFF_FFFF;
        (ctx, ins, eip)
    }
}

/// An x87 instruction on registers only, or reading what compiled code read (`low`,
/// `high`) at offset `off`, leaving FOP `fop`: 1 if done, 0 if the interpreter must run
/// the instruction (nothing changed).
pub(super) extern "C" fn helper_x87_read(
    ctx: *mut HelperCtx<'_>,
    index: u32,
    off: u32,
    low: u32,
    high: u32,
    fop: u32,
) -> u32 {
    // SAFETY: compiled code passes its context and the index of the instruction it
    // runs, and holds no reference to the CPU while it calls (as for `helper_step`).
    let (ctx, ins, eip) = unsafe { running(ctx, index) };
    // SAFETY: as above: the CPU and the bus are borrowed by `call` for the whole run.
    let (cpu, bus) = unsafe { (&mut *ctx.cpu, &mut *ctx.bus) };
    let bits = (high as u64) << 32 | low as u64;
    cpu.fpu_numeric_read(bus, ins, eip, off, bits, fop as u16) as u32
}

/// FST/FSTP/FIST/FISTP to offset `off`, leaving FOP `fop`, which compiled code writes
/// from the context's `x87_out`: 1 if so, 0 if the interpreter must run the
/// instruction (nothing changed).
pub(super) extern "C" fn helper_x87_store(
    ctx: *mut HelperCtx<'_>,
    index: u32,
    off: u32,
    fop: u32,
) -> u32 {
    // SAFETY: as for `helper_x87_read`.
    let (ctx, ins, eip) = unsafe { running(ctx, index) };
    // SAFETY: as for `helper_x87_read`.
    let cpu = unsafe { &mut *ctx.cpu };
    match cpu.fpu_store_write(ins, eip, off, fop as u16) {
        Some(bits) => {
            ctx.x87_out = bits;
            1
        }
        None => 0,
    }
}
