//! Arithmetic flags in compiled code: produced only as records, computed only where read.
//!
//! A native instruction that sets flags leaves a [`PendingFlags`] record of SSA values.
//! Add/subtract/logic/INC/DEC records are the interpreter's own lazy form
//! (`Flags::set_lazy`), stored as five fields; shifts, rotates and IMUL, whose flags
//! the interpreter computes at once, leave their operands, and the interpreter's code
//! computes the flags only if the record has to be stored (before a helper or at an
//! exit), which is rare: the next instruction usually overwrites them. Reads (Jcc,
//! SETcc, CMOVcc, ADC/SBB, INC/DEC's kept CF) test the record's operands inline for the
//! common cases and otherwise ask the interpreter's `Flags::cond` about the stored state.

use super::Emitter;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use hospes_cpu::exec::{set_mul_flags, shift};
use hospes_cpu::flags::{FlagOp, AF, ARITH, CF, OF, PF, SF, ZF};
use hospes_cpu::Cpu;
use iced_x86::{ConditionCode, Mnemonic};

/// Flags recorded by compiled code and not yet stored in the CPU state.
#[derive(Clone, Copy)]
pub(super) enum PendingFlags {
    /// As `Flags::set_lazy` records them; `carry` when the operation had a carry or
    /// borrow in (ADC/SBB), which the inline conditions do not cover.
    Lazy {
        op: FlagOp,
        size: u8,
        a: Value,
        b: Value,
        res: Value,
        carry: bool,
    },
    /// Flags already in the state, whose CF is `cf` (an i32 0/1): what BT leaves, for
    /// the JB/JAE after it to read inline.
    Stored { cf: Value },
    /// Flags already in the state, eager: `bits` (an i32) is their `Flags::bits`, for
    /// conditions to read inline (what SAHF leaves).
    Eager { bits: Value },
    /// Flags the interpreter computes from the operands: `kind` is one of the
    /// `DEFERRED_*` codes, `a` and `b` its operands (see [`helper_flags`]).
    Deferred {
        kind: u32,
        size: u8,
        a: Value,
        b: Value,
    },
}

/// Deferred flag kinds: shifts and rotates (`a` the value shifted, `b` the count),
/// multiplies (`a` the low half of the product, `b` 1 on overflow), and BT (`a` the
/// bit tested, 0 or 1: it becomes CF, the other flags are kept; only ever stored at
/// once, see [`Emitter::bit_test_flags`]).
pub(super) const DEFERRED_MUL: u32 = 0;
pub(super) const DEFERRED_BT: u32 = 1 + DEFERRED_SHIFTS.len() as u32;
const DEFERRED_SHIFTS: [Mnemonic; 5] = [
    Mnemonic::Shl,
    Mnemonic::Shr,
    Mnemonic::Sar,
    Mnemonic::Rol,
    Mnemonic::Ror,
];

/// The deferred kind for a shift or rotate.
pub(super) fn deferred_shift(op: Mnemonic) -> u32 {
    1 + DEFERRED_SHIFTS
        .iter()
        .position(|&m| m == op)
        .expect("a shift compiled code does") as u32
}

/// Whether a deferred kind is a rotate (ROL/ROR).
pub(super) fn is_rotate(kind: u32) -> bool {
    kind == deferred_shift(Mnemonic::Rol) || kind == deferred_shift(Mnemonic::Ror)
}

/// Whether a shift's flags depend on the flags before it (rotates keep SF, ZF, AF, PF).
pub(super) fn keeps_old_flags(op: Mnemonic) -> bool {
    matches!(op, Mnemonic::Rol | Mnemonic::Ror)
}

/// Stores the flags of a deferred record into the state, with the interpreter's code.
pub(super) extern "C" fn helper_flags(cpu: *mut Cpu, kind: u32, size: u32, a: u32, b: u32) {
    // SAFETY: compiled code passes the CPU pointer `call` gave it, and holds no other
    // reference into the CPU during the call.
    let flags = unsafe { &mut (*cpu).state.flags };
    if kind == DEFERRED_MUL {
        set_mul_flags(flags, a, size, b != 0);
    } else if kind == DEFERRED_BT {
        flags.set_bit(CF, a != 0);
    } else {
        shift(flags, DEFERRED_SHIFTS[kind as usize - 1], size, a, b);
    }
}

/// The condition `cc` (in the x86 encoding, 0-15) of the flags stored in the state.
pub(super) extern "C" fn helper_cond(cpu: *const Cpu, cc: u32) -> u32 {
    // SAFETY: as for `helper_flags`; this only reads.
    unsafe { (*cpu).state.flags.cond(cc as u8) as u32 }
}

// `store_flags` writes `op` and `size` with one little-endian 16-bit store.
const _: () = assert!(super::FLAG_SIZE == super::FLAG_OP + 1);

// `stored_carry` tells the shift records from the others by their order.
const _: () = assert!(
    FlagOp::Shl as u8 > FlagOp::Eager as u8
        && FlagOp::Shl as u8 > FlagOp::Add as u8
        && FlagOp::Shl as u8 > FlagOp::Sub as u8
        && FlagOp::Shl as u8 > FlagOp::Logic as u8
        && FlagOp::Shl as u8 > FlagOp::Inc as u8
        && FlagOp::Shl as u8 > FlagOp::Dec as u8
        && FlagOp::Shr as u8 > FlagOp::Shl as u8
        && FlagOp::Sar as u8 > FlagOp::Shl as u8
);

/// The x86 encoding (0 = O ... 15 = G) of a condition code.
fn encoding(cc: ConditionCode) -> u32 {
    cc as u32 - 1
}

impl Emitter<'_> {
    /// Emits the stores (or the deferred computation) that put the pending flags into
    /// the state. Leaves the record pending: storing it twice is harmless.
    pub(super) fn store_flags(&mut self) {
        match self.flags {
            None | Some(PendingFlags::Stored { .. } | PendingFlags::Eager { .. }) => {}
            Some(PendingFlags::Lazy {
                op,
                size,
                a,
                b,
                res,
                ..
            }) => {
                // `op` and `size` are neighbouring bytes: one 16-bit store.
                let op_size = (size as i64) << 8 | op as i64;
                let op_size = self.b.ins().iconst(types::I16, op_size);
                let st = self.cpu;
                self.b
                    .ins()
                    .store(super::trusted(), op_size, st, super::FLAG_OP);
                self.b.ins().store(super::trusted(), a, st, super::FLAG_A);
                self.b.ins().store(super::trusted(), b, st, super::FLAG_B);
                self.b
                    .ins()
                    .store(super::trusted(), res, st, super::FLAG_RES);
            }
            Some(PendingFlags::Deferred { kind, size, a, b }) => {
                let kind = self.iconst32(kind);
                let size = self.iconst32(size as u32);
                let helper = self.helpers.flags;
                self.b.ins().call(helper, &[self.cpu, kind, size, a, b]);
            }
        }
    }

    /// Stores the pending flags and forgets them: the state holds the flags.
    pub(super) fn flush_flags(&mut self) {
        self.store_flags();
        self.flags = None;
    }

    /// `cc` of the flags in the state (after storing any pending record).
    fn stored_condition(&mut self, cc: u32) -> Value {
        self.flush_flags();
        let cc = self.iconst32(cc);
        let helper = self.helpers.cond;
        let call = self.b.ins().call(helper, &[self.cpu, cc]);
        self.b.inst_results(call)[0]
    }

    /// The sign bit of `size` set in `v`, as 0/1.
    fn top_bit(&mut self, v: Value, size: u8) -> Value {
        let x = self.b.ins().ushr_imm_u(v, size as i64 * 8 - 1);
        self.b.ins().band_imm_u(x, 1)
    }

    /// CF as an i32 0/1.
    pub(super) fn carry_flag(&mut self) -> Value {
        match self.flags {
            Some(PendingFlags::Lazy {
                op: FlagOp::Add,
                size,
                a,
                b,
                res,
                ..
            }) => {
                // Carry out of the top bit: (a & b) | ((a | b) & !res).
                let ab = self.b.ins().band(a, b);
                let either = self.b.ins().bor(a, b);
                let not_r = self.b.ins().bnot(res);
                let x = self.b.ins().band(either, not_r);
                let x = self.b.ins().bor(ab, x);
                self.top_bit(x, size)
            }
            Some(PendingFlags::Lazy {
                op: FlagOp::Sub,
                size,
                a,
                b,
                res,
                ..
            }) => {
                // Borrow out of the top bit: (!a & b) | ((!a | b) & res).
                let not_a = self.b.ins().bnot(a);
                let nab = self.b.ins().band(not_a, b);
                let either = self.b.ins().bor(not_a, b);
                let x = self.b.ins().band(either, res);
                let x = self.b.ins().bor(nab, x);
                self.top_bit(x, size)
            }
            Some(PendingFlags::Lazy {
                op: FlagOp::Logic, ..
            }) => self.iconst32(0),
            Some(PendingFlags::Lazy {
                op: op @ (FlagOp::Shl | FlagOp::Shr | FlagOp::Sar),
                size,
                a,
                b: count,
                ..
            }) => {
                // The last bit shifted out, in 64 bits so that counts past the operand
                // give 0 (SHL, SHR) or the sign (SAR), as `Flags::arith` has them.
                let count = self.b.ins().uextend(types::I64, count);
                let out = match op {
                    FlagOp::Shl => {
                        let wide = self.b.ins().uextend(types::I64, a);
                        let moved = self.b.ins().ishl(wide, count);
                        self.b.ins().ushr_imm_u(moved, size as i64 * 8)
                    }
                    FlagOp::Shr => {
                        let wide = self.b.ins().uextend(types::I64, a);
                        let back = self.b.ins().iadd_imm_s(count, -1);
                        self.b.ins().ushr(wide, back)
                    }
                    _ => {
                        let narrow = match size {
                            1 => Some(types::I8),
                            2 => Some(types::I16),
                            _ => None,
                        };
                        let signed = match narrow {
                            Some(t) => {
                                let v = self.b.ins().ireduce(t, a);
                                self.b.ins().sextend(types::I64, v)
                            }
                            None => self.b.ins().sextend(types::I64, a),
                        };
                        let back = self.b.ins().iadd_imm_s(count, -1);
                        self.b.ins().sshr(signed, back)
                    }
                };
                let bit = self.b.ins().band_imm_u(out, 1);
                self.b.ins().ireduce(types::I32, bit)
            }
            Some(PendingFlags::Lazy {
                op: FlagOp::Inc | FlagOp::Dec,
                ..
            }) => {
                // INC/DEC keep CF in `bits`, stored when they ran.
                let bits = self.load_flag_bits();
                self.b.ins().band_imm_u(bits, CF as i64)
            }
            Some(PendingFlags::Stored { cf }) => cf,
            Some(PendingFlags::Eager { bits }) => self.b.ins().band_imm_u(bits, CF as i64),
            _ => {
                self.flush_flags();
                self.stored_carry()
            }
        }
    }

    /// A flag of the flags in the state (everything stored), as an i32 0/1: `inline`
    /// works it out from the record (`op`, `a`, `b`, `res`, as i32s) for every kind
    /// but the shifts, whose flag the interpreter's code gives (condition `cc`, which
    /// is the flag itself).
    fn stored_flag(
        &mut self,
        cc: ConditionCode,
        inline: impl FnOnce(&mut Self, Value, Value, Value, Value) -> Value,
    ) -> Value {
        let fl = super::trusted();
        let op = self
            .b
            .ins()
            .uload8(types::I32, fl, self.cpu, super::FLAG_OP);
        // The shifts are the last kinds of record.
        let shift =
            self.b
                .ins()
                .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, op, FlagOp::Shl as i64);
        let inline_blk = self.b.create_block();
        let ask_blk = self.b.create_block();
        self.b.set_cold_block(ask_blk);
        let done = self.b.create_block();
        let flag = self.b.append_block_param(done, types::I32);
        self.b.ins().brif(shift, ask_blk, &[], inline_blk, &[]);

        self.b.switch_to_block(ask_blk);
        let cc = self.iconst32(encoding(cc));
        let helper = self.helpers.cond;
        let call = self.b.ins().call(helper, &[self.cpu, cc]);
        let asked = self.b.inst_results(call)[0];
        self.b.ins().jump(done, &[asked.into()]);

        self.b.switch_to_block(inline_blk);
        let load = |e: &mut Self, at: i32| e.b.ins().load(types::I32, fl, e.cpu, at);
        let (a, b, res) = (
            load(self, super::FLAG_A),
            load(self, super::FLAG_B),
            load(self, super::FLAG_RES),
        );
        let v = inline(self, op, a, b, res);
        self.b.ins().jump(done, &[v.into()]);
        self.b.switch_to_block(done);
        flag
    }

    /// The top bit (of the record's operand size) of `x`, as an i32 0/1.
    fn stored_top_bit(&mut self, x: Value) -> Value {
        let size = self
            .b
            .ins()
            .uload8(types::I32, super::trusted(), self.cpu, super::FLAG_SIZE);
        let top = self.b.ins().ishl_imm_u(size, 3);
        let top = self.b.ins().iadd_imm_s(top, -1);
        let out = self.b.ins().ushr(x, top);
        self.b.ins().band_imm_u(out, 1)
    }

    /// CF of the flags in the state (everything stored), as an i32 0/1: computed inline
    /// for every record but the shifts' (which ask the interpreter). INC/DEC at the
    /// start of a block keep CF from the record a block before left, so this is
    /// common.
    fn stored_carry(&mut self) -> Value {
        self.stored_flag(ConditionCode::b, |e, op, a, b, res| {
            // The carry (Add) or borrow (Sub) out of the operand's top bit, as
            // `Flags::arith` has it.
            let not_a = e.b.ins().bnot(a);
            let nab = e.b.ins().band(not_a, b);
            let either = e.b.ins().bor(not_a, b);
            let x = e.b.ins().band(either, res);
            let borrow = e.b.ins().bor(nab, x);
            let ab = e.b.ins().band(a, b);
            let either = e.b.ins().bor(a, b);
            let not_r = e.b.ins().bnot(res);
            let x = e.b.ins().band(either, not_r);
            let carry = e.b.ins().bor(ab, x);
            let is_sub = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Sub as i64);
            let is_add = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Add as i64);
            let out = e.b.ins().select(is_sub, borrow, carry);
            let arith_cf = e.stored_top_bit(out);
            // Eager, INC and DEC records hold CF in `bits`; logic operations clear it.
            let bits = e.load_flag_bits();
            let bits_cf = e.b.ins().band_imm_u(bits, CF as i64);
            let is_logic = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Logic as i64);
            let zero = e.iconst32(0);
            let other_cf = e.b.ins().select(is_logic, zero, bits_cf);
            let arith = e.b.ins().bor(is_sub, is_add);
            e.b.ins().select(arith, arith_cf, other_cf)
        })
    }

    /// BT: CF becomes `cf` (an i32 0/1), the other flags are kept. Stores the flags
    /// at once, as the interpreter leaves them (eager), where that is cheap: the
    /// record before is an add, subtract, logic, INC or DEC one of this block (the
    /// other five flags computed inline), or the state's flags are eager or INC/DEC's
    /// (CF already in `bits`). Otherwise the interpreter's code works them out.
    pub(super) fn bit_test_flags(&mut self, cf: Value, size: u8) {
        let fl = super::trusted();
        match self.flags {
            Some(PendingFlags::Lazy {
                op: op @ (FlagOp::Add | FlagOp::Sub | FlagOp::Logic | FlagOp::Inc | FlagOp::Dec),
                size: rsize,
                a,
                b,
                res,
                ..
            }) => {
                let others = self.flags_but_carry(op, rsize, a, b, res);
                let bits = self.load_flag_bits();
                let bits = self.b.ins().band_imm_u(bits, !(ARITH as i64));
                let bits = self.b.ins().bor(bits, others);
                let bits = self.b.ins().bor(bits, cf);
                self.b.ins().store(fl, bits, self.cpu, super::FLAG_BITS);
                let eager = self.b.ins().iconst(types::I8, FlagOp::Eager as i64);
                self.b.ins().store(fl, eager, self.cpu, super::FLAG_OP);
            }
            _ => {
                self.flush_flags();
                let op = self
                    .b
                    .ins()
                    .uload8(types::I32, fl, self.cpu, super::FLAG_OP);
                // Eager, INC and DEC records hold CF in `bits` (INC/DEC derive the
                // rest from their operands): replacing it there is all BT does.
                let is_eager = self
                    .b
                    .ins()
                    .icmp_imm_u(IntCC::Equal, op, FlagOp::Eager as i64);
                let inc_dec = self.b.ins().iadd_imm_s(op, -(FlagOp::Inc as i64));
                let is_inc_dec =
                    self.b
                        .ins()
                        .icmp_imm_u(IntCC::UnsignedLessThanOrEqual, inc_dec, 1);
                let in_bits = self.b.ins().bor(is_eager, is_inc_dec);
                let set_blk = self.b.create_block();
                let ask_blk = self.b.create_block();
                let done = self.b.create_block();
                self.b.set_cold_block(ask_blk);
                self.b.ins().brif(in_bits, set_blk, &[], ask_blk, &[]);
                self.b.switch_to_block(set_blk);
                let bits = self.load_flag_bits();
                let bits = self.b.ins().band_imm_u(bits, !(CF as i64));
                let bits = self.b.ins().bor(bits, cf);
                self.b.ins().store(fl, bits, self.cpu, super::FLAG_BITS);
                self.b.ins().jump(done, &[]);
                self.b.switch_to_block(ask_blk);
                let kind = self.iconst32(DEFERRED_BT);
                let size = self.iconst32(size as u32);
                let helper = self.helpers.flags;
                self.b.ins().call(helper, &[self.cpu, kind, size, cf, cf]);
                self.b.ins().jump(done, &[]);
                self.b.switch_to_block(done);
            }
        }
        self.flags = Some(PendingFlags::Stored { cf });
    }

    /// PF, AF, ZF, SF and OF (in their EFLAGS positions) of an add, subtract, logic,
    /// INC or DEC record, as `Flags::arith` derives them.
    fn flags_but_carry(&mut self, op: FlagOp, size: u8, a: Value, b: Value, res: Value) -> Value {
        let top = size as i64 * 8 - 1;
        let r = match size {
            4 => res,
            _ => self.b.ins().band_imm_u(res, (1i64 << (top + 1)) - 1),
        };
        let flag_at = |e: &mut Self, v: Value, bit: u32| {
            let v = e.b.ins().uextend(types::I32, v);
            e.b.ins().ishl_imm_u(v, bit.trailing_zeros() as i64)
        };
        let zero = self.b.ins().icmp_imm_u(IntCC::Equal, r, 0);
        let zf = flag_at(self, zero, ZF);
        let sign = self.b.ins().ushr_imm_u(r, top);
        let sf = self.b.ins().ishl_imm_u(sign, SF.trailing_zeros() as i64);
        let low = self.b.ins().band_imm_u(r, 0xFF);
        let ones = self.b.ins().popcnt(low);
        let odd = self.b.ins().band_imm_u(ones, 1);
        let even = self.b.ins().bxor_imm_u(odd, 1);
        let pf = self.b.ins().ishl_imm_u(even, PF.trailing_zeros() as i64);
        let mut f = self.b.ins().bor(zf, sf);
        f = self.b.ins().bor(f, pf);
        if op == FlagOp::Logic {
            return f;
        }
        let ab = self.b.ins().bxor(a, b);
        let abr = self.b.ins().bxor(ab, r);
        let af = self.b.ins().band_imm_u(abr, AF as i64);
        f = self.b.ins().bor(f, af);
        // OF: the operands' signs agree (add) or differ (subtract), and the result's
        // differs from the first.
        let ar = self.b.ins().bxor(a, r);
        let x = if matches!(op, FlagOp::Add | FlagOp::Inc) {
            let br = self.b.ins().bxor(b, r);
            self.b.ins().band(ar, br)
        } else {
            self.b.ins().band(ab, ar)
        };
        let over = self.b.ins().ushr_imm_u(x, top);
        let over = self.b.ins().band_imm_u(over, 1);
        let of = self.b.ins().ishl_imm_u(over, OF.trailing_zeros() as i64);
        self.b.ins().bor(f, of)
    }

    /// SAHF: SF, ZF, AF, PF and CF from AH (`ah`, an i32 0-255), OF kept; the flags
    /// are stored eager.
    pub(super) fn sahf_flags(&mut self, ah: Value) {
        let of = self.overflow_flag();
        let of = self.b.ins().ishl_imm_u(of, OF.trailing_zeros() as i64);
        let from_ah = self.b.ins().band_imm_u(ah, (SF | ZF | AF | PF | CF) as i64);
        let bits = self.load_flag_bits();
        let bits = self.b.ins().band_imm_u(bits, !(ARITH as i64));
        let bits = self.b.ins().bor(bits, from_ah);
        let bits = self.b.ins().bor(bits, of);
        let fl = super::trusted();
        self.b.ins().store(fl, bits, self.cpu, super::FLAG_BITS);
        let eager = self.b.ins().iconst(types::I8, FlagOp::Eager as i64);
        self.b.ins().store(fl, eager, self.cpu, super::FLAG_OP);
        self.flags = Some(PendingFlags::Eager { bits });
    }

    /// OF as an i32 0/1: inline for the add, subtract, logic, INC and DEC records
    /// (of this block or in the state) and eager flags; the interpreter's code for
    /// the others.
    fn overflow_flag(&mut self) -> Value {
        match self.flags {
            Some(PendingFlags::Lazy {
                op: op @ (FlagOp::Add | FlagOp::Sub | FlagOp::Logic | FlagOp::Inc | FlagOp::Dec),
                size,
                a,
                b,
                res,
                ..
            }) => {
                let f = self.flags_but_carry(op, size, a, b, res);
                let of = self.b.ins().ushr_imm_u(f, OF.trailing_zeros() as i64);
                return self.b.ins().band_imm_u(of, 1);
            }
            Some(PendingFlags::Eager { bits }) => {
                let of = self.b.ins().ushr_imm_u(bits, OF.trailing_zeros() as i64);
                return self.b.ins().band_imm_u(of, 1);
            }
            _ => self.flush_flags(),
        }
        self.stored_flag(ConditionCode::o, |e, op, a, b, r| {
            // Add and INC: the operands' signs agree and the result's differs;
            // subtract and DEC: they differ and the result's differs from the first
            // (INC/DEC records have b = 1).
            let ar = e.b.ins().bxor(a, r);
            let br = e.b.ins().bxor(b, r);
            let ab = e.b.ins().bxor(a, b);
            let add_of = e.b.ins().band(ar, br);
            let sub_of = e.b.ins().band(ab, ar);
            let is_add = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Add as i64);
            let is_inc = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Inc as i64);
            let adds = e.b.ins().bor(is_add, is_inc);
            let x = e.b.ins().select(adds, add_of, sub_of);
            let arith_of = e.stored_top_bit(x);
            // Eager flags hold OF in `bits`; logic operations clear it.
            let bits = e.load_flag_bits();
            let bits_of = e.b.ins().ushr_imm_u(bits, OF.trailing_zeros() as i64);
            let bits_of = e.b.ins().band_imm_u(bits_of, 1);
            let is_sub = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Sub as i64);
            let is_dec = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Dec as i64);
            let subs = e.b.ins().bor(is_sub, is_dec);
            let arith = e.b.ins().bor(adds, subs);
            let is_eager = e.b.ins().icmp_imm_u(IntCC::Equal, op, FlagOp::Eager as i64);
            let zero = e.iconst32(0);
            let other = e.b.ins().select(is_eager, bits_of, zero);
            e.b.ins().select(arith, arith_of, other)
        })
    }

    /// The condition `cc` (an i8 0/1) of eager flags `bits`.
    fn eager_condition(&mut self, bits: Value, cc: ConditionCode) -> Value {
        use ConditionCode as C;
        let bit = |e: &mut Self, flag: u32| {
            let v = e.b.ins().ushr_imm_u(bits, flag.trailing_zeros() as i64);
            e.b.ins().band_imm_u(v, 1)
        };
        let (cf, zf, sf, of, pf) = (
            bit(self, CF),
            bit(self, ZF),
            bit(self, SF),
            bit(self, OF),
            bit(self, PF),
        );
        let less = self.b.ins().bxor(sf, of);
        let v = match cc {
            C::o | C::no => of,
            C::b | C::ae => cf,
            C::e | C::ne => zf,
            C::be | C::a => self.b.ins().bor(cf, zf),
            C::s | C::ns => sf,
            C::p | C::np => pf,
            C::l | C::ge => less,
            _ => self.b.ins().bor(zf, less),
        };
        let negated = matches!(
            cc,
            C::no | C::ae | C::ne | C::a | C::ns | C::np | C::ge | C::g
        );
        let v = if negated {
            self.b.ins().bxor_imm_u(v, 1)
        } else {
            v
        };
        self.b.ins().ireduce(types::I8, v)
    }

    pub(super) fn load_flag_bits(&mut self) -> Value {
        self.b
            .ins()
            .load(types::I32, super::trusted(), self.cpu, super::FLAG_BITS)
    }

    /// INC/DEC: what `Flags::set_lazy` does before recording them: CF (from the flags
    /// before) goes to `bits`, the other arithmetic bits there are cleared.
    pub(super) fn keep_carry(&mut self) {
        let cf = self.carry_flag();
        let bits = self.load_flag_bits();
        let bits = self.b.ins().band_imm_u(bits, !(ARITH as i64));
        let bits = self.b.ins().bor(bits, cf);
        self.b
            .ins()
            .store(super::trusted(), bits, self.cpu, super::FLAG_BITS);
    }

    /// The condition `cc` as an i8 0/1: inline from the pending record where simple,
    /// else from the stored flags.
    pub(super) fn condition(&mut self, cc: ConditionCode) -> Value {
        if let Some(v) = self.inline_condition(cc) {
            return v;
        }
        let v = self.stored_condition(encoding(cc));
        self.b.ins().ireduce(types::I8, v)
    }

    fn inline_condition(&mut self, cc: ConditionCode) -> Option<Value> {
        use ConditionCode as C;
        if let Some(PendingFlags::Eager { bits }) = self.flags {
            return Some(self.eager_condition(bits, cc));
        }
        if let Some(PendingFlags::Stored { cf }) = self.flags {
            let is_set = match cc {
                C::b => IntCC::NotEqual,
                C::ae => IntCC::Equal,
                _ => return None,
            };
            return Some(self.b.ins().icmp_imm_u(is_set, cf, 0));
        }
        let Some(PendingFlags::Lazy {
            op,
            size,
            a,
            b,
            res,
            carry,
        }) = self.flags
        else {
            return None;
        };
        let narrow = |e: &mut Self, v: Value| match size {
            1 => e.b.ins().ireduce(types::I8, v),
            2 => e.b.ins().ireduce(types::I16, v),
            _ => v,
        };
        let sign = |e: &mut Self, v: Value| {
            let bit = 1i64 << (size as i64 * 8 - 1);
            let s = e.b.ins().band_imm_u(v, bit);
            e.b.ins().icmp_imm_u(IntCC::NotEqual, s, 0)
        };
        let zero = |e: &mut Self, v: Value| e.b.ins().icmp_imm_u(IntCC::Equal, v, 0);
        let not = |e: &mut Self, v: Value| e.b.ins().bxor_imm_u(v, 1);
        // Conditions of the result alone hold for every lazy operation.
        // Each a single compare, which a branch on it takes over (a negation after
        // it would not).
        match cc {
            C::e => return Some(zero(self, res)),
            C::ne => return Some(self.b.ins().icmp_imm_u(IntCC::NotEqual, res, 0)),
            C::s => return Some(sign(self, res)),
            C::ns => {
                let bit = 1i64 << (size as i64 * 8 - 1);
                let s = self.b.ins().band_imm_u(res, bit);
                return Some(self.b.ins().icmp_imm_u(IntCC::Equal, s, 0));
            }
            _ => {}
        }
        Some(match (op, cc) {
            (FlagOp::Sub, _) if !carry => {
                let a = narrow(self, a);
                let b = narrow(self, b);
                let ic = match cc {
                    C::b => IntCC::UnsignedLessThan,
                    C::ae => IntCC::UnsignedGreaterThanOrEqual,
                    C::be => IntCC::UnsignedLessThanOrEqual,
                    C::a => IntCC::UnsignedGreaterThan,
                    C::l => IntCC::SignedLessThan,
                    C::ge => IntCC::SignedGreaterThanOrEqual,
                    C::le => IntCC::SignedLessThanOrEqual,
                    C::g => IntCC::SignedGreaterThan,
                    _ => return None,
                };
                self.b.ins().icmp(ic, a, b)
            }
            (
                FlagOp::Add
                | FlagOp::Sub
                | FlagOp::Inc
                | FlagOp::Dec
                | FlagOp::Shl
                | FlagOp::Shr
                | FlagOp::Sar,
                C::b | C::ae,
            ) => {
                let cf = self.carry_flag();
                let cf = self.b.ins().ireduce(types::I8, cf);
                if cc == C::b {
                    cf
                } else {
                    not(self, cf)
                }
            }
            (FlagOp::Inc | FlagOp::Dec, C::l | C::ge | C::le | C::g) => {
                // OF: INC overflows to the sign bit alone, DEC to all bits below it.
                let sb = 1u32 << (size as u32 * 8 - 1);
                let edge = self.iconst32(if op == FlagOp::Inc { sb } else { sb - 1 });
                let of = self.b.ins().icmp(IntCC::Equal, res, edge);
                let s = sign(self, res);
                let less = self.b.ins().bxor(s, of);
                match cc {
                    C::l => less,
                    C::ge => not(self, less),
                    _ => {
                        let z = zero(self, res);
                        let le = self.b.ins().bor(z, less);
                        if cc == C::le {
                            le
                        } else {
                            not(self, le)
                        }
                    }
                }
            }
            (FlagOp::Logic, C::be) => zero(self, res),
            (FlagOp::Logic, C::a) => {
                let z = zero(self, res);
                not(self, z)
            }
            (FlagOp::Logic, C::l) => sign(self, res),
            (FlagOp::Logic, C::ge) => {
                let s = sign(self, res);
                not(self, s)
            }
            (FlagOp::Logic, C::b) => self.b.ins().iconst(types::I8, 0),
            (FlagOp::Logic, C::ae) => self.b.ins().iconst(types::I8, 1),
            (FlagOp::Logic, C::le) => {
                let z = zero(self, res);
                let s = sign(self, res);
                self.b.ins().bor(z, s)
            }
            (FlagOp::Logic, C::g) => {
                let z = zero(self, res);
                let s = sign(self, res);
                let either = self.b.ins().bor(z, s);
                not(self, either)
            }
            _ => return None,
        })
    }
}
