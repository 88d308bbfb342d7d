//! EFLAGS, kept lazily.
//!
//! The six arithmetic flags (CF, PF, AF, ZF, SF, OF) are not computed when an instruction
//! runs: the instruction records its operation, operands and result, and the flags are
//! derived only when something reads them. Most flag results are overwritten before they
//! are read, so this saves most of the work. All other EFLAGS bits live in `bits`.

pub const CF: u32 = 1 << 0;
pub const PF: u32 = 1 << 2;
pub const AF: u32 = 1 << 4;
pub const ZF: u32 = 1 << 6;
pub const SF: u32 = 1 << 7;
pub const TF: u32 = 1 << 8;
pub const IF: u32 = 1 << 9;
pub const DF: u32 = 1 << 10;
pub const OF: u32 = 1 << 11;
pub const IOPL: u32 = 3 << 12;
pub const NT: u32 = 1 << 14;
pub const RF: u32 = 1 << 16;
pub const VM: u32 = 1 << 17;
pub const AC: u32 = 1 << 18;
pub const VIF: u32 = 1 << 19;
pub const VIP: u32 = 1 << 20;
pub const ID: u32 = 1 << 21;

/// The arithmetic flags that may be lazy.
pub const ARITH: u32 = CF | PF | AF | ZF | SF | OF;
/// Bits a P6 lets software change (bit 1 always reads as 1).
pub const WRITABLE: u32 = ARITH | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;

/// How the arithmetic flags are to be derived from the recorded operands.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FlagOp {
    /// The arithmetic flags are stored in `Flags::bits`.
    Eager,
    /// `res = a + b (+ carry)`.
    Add,
    /// `res = a - b (- borrow)`.
    Sub,
    /// AND/OR/XOR/TEST: CF = OF = AF = 0.
    Logic,
    /// INC: like Add with b = 1, CF kept in `bits`.
    Inc,
    /// DEC: like Sub with b = 1, CF kept in `bits`.
    Dec,
    /// SHL/SAL of `a` by `b` (1-31) giving `res`.
    Shl,
    /// SHR of `a` by `b` (1-31) giving `res`.
    Shr,
    /// SAR of `a` by `b` (1-31) giving `res`.
    Sar,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flags {
    /// Every EFLAGS bit that is not lazy; holds the arithmetic flags when `op` is `Eager`
    /// (and CF when `op` is `Inc`/`Dec`).
    pub bits: u32,
    pub op: FlagOp,
    /// Operand size in bytes (1, 2, 4).
    pub size: u8,
    pub a: u32,
    pub b: u32,
    pub res: u32,
}

#[inline]
fn sign_bit(size: u8) -> u32 {
    1u32 << (size as u32 * 8 - 1)
}

#[inline]
fn mask(size: u8) -> u32 {
    if size >= 4 {
        u32::MAX
    } else {
        (1u32 << (size as u32 * 8)) - 1
    }
}

#[inline]
pub fn parity(v: u32) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

impl Default for Flags {
    fn default() -> Self {
        Self::new()
    }
}

impl Flags {
    pub fn new() -> Flags {
        Flags {
            bits: 2,
            op: FlagOp::Eager,
            size: 4,
            a: 0,
            b: 0,
            res: 0,
        }
    }

    #[inline]
    pub fn set_lazy(&mut self, op: FlagOp, size: u8, a: u32, b: u32, res: u32) {
        if matches!(op, FlagOp::Inc | FlagOp::Dec) {
            let cf = self.cf();
            self.bits = (self.bits & !ARITH) | if cf { CF } else { 0 };
        }
        self.op = op;
        self.size = size;
        self.a = a;
        self.b = b;
        self.res = res;
    }

    /// Computes the arithmetic flags from the recorded operation.
    #[inline]
    pub fn arith(&self) -> u32 {
        let size = self.size;
        let m = mask(size);
        let sb = sign_bit(size);
        let (a, b, r) = (self.a, self.b, self.res & m);
        let common = || {
            let mut f = 0;
            if r == 0 {
                f |= ZF;
            }
            if r & sb != 0 {
                f |= SF;
            }
            if parity(r) {
                f |= PF;
            }
            f
        };
        match self.op {
            FlagOp::Eager => self.bits & ARITH,
            FlagOp::Add => {
                let mut f = common() | ((a ^ b ^ r) & AF);
                if ((a & b) | ((a | b) & !r)) & sb != 0 {
                    f |= CF;
                }
                if (a ^ r) & (b ^ r) & sb != 0 {
                    f |= OF;
                }
                f
            }
            FlagOp::Sub => {
                let mut f = common() | ((a ^ b ^ r) & AF);
                if ((!a & b) | ((!a | b) & r)) & sb != 0 {
                    f |= CF;
                }
                if (a ^ b) & (a ^ r) & sb != 0 {
                    f |= OF;
                }
                f
            }
            FlagOp::Logic => common(),
            FlagOp::Inc => {
                let mut f = common() | (self.bits & CF) | ((a ^ 1 ^ r) & AF);
                if r == sb {
                    f |= OF;
                }
                f
            }
            FlagOp::Dec => {
                let mut f = common() | (self.bits & CF) | ((a ^ 1 ^ r) & AF);
                if r == sb - 1 {
                    f |= OF;
                }
                f
            }
            // The shifts as a P6 leaves them: CF the last bit shifted out (0 past the
            // operand for SHL/SHR, the sign for SAR), OF from the count-1 formula
            // whatever the count, AF clear.
            FlagOp::Shl => {
                let bits = size as u32 * 8;
                let cf = b <= bits && ((a as u64) << b >> bits) & 1 != 0;
                let mut f = common() | if cf { CF } else { 0 };
                if (r & sb != 0) != cf {
                    f |= OF;
                }
                f
            }
            FlagOp::Shr => {
                let cf = b <= size as u32 * 8 && (a >> (b - 1)) & 1 != 0;
                let mut f = common() | if cf { CF } else { 0 };
                if a & sb != 0 {
                    f |= OF;
                }
                f
            }
            FlagOp::Sar => {
                let bits = size as u32 * 8;
                let signed = (a << (32 - bits)) as i32 >> (32 - bits);
                let cf = if b >= bits {
                    signed < 0
                } else {
                    (signed >> (b - 1)) & 1 != 0
                };
                common() | if cf { CF } else { 0 }
            }
        }
    }

    /// The full EFLAGS value.
    #[inline]
    pub fn get(&self) -> u32 {
        (self.bits & !ARITH) | self.arith() | 2
    }

    /// Replaces the whole EFLAGS value (the caller has already applied write masks).
    #[inline]
    pub fn set(&mut self, v: u32) {
        self.bits = (v & WRITABLE) | 2;
        self.op = FlagOp::Eager;
    }

    /// Replaces only the bits in `which`.
    #[inline]
    pub fn set_masked(&mut self, v: u32, which: u32) {
        let cur = self.get();
        self.set((cur & !which) | (v & which));
    }

    /// The same EFLAGS with no lazy record: states that differ only in how their flags
    /// are kept (which the tiers, and the timing of compilation, may vary) compare equal.
    pub fn canonical(&self) -> Flags {
        Flags {
            bits: self.get(),
            op: FlagOp::Eager,
            size: 0,
            a: 0,
            b: 0,
            res: 0,
        }
    }

    /// Makes the arithmetic flags eager so individual bits can be edited.
    #[inline]
    pub fn materialize(&mut self) {
        if self.op != FlagOp::Eager {
            let a = self.arith();
            self.bits = (self.bits & !ARITH) | a;
            self.op = FlagOp::Eager;
        }
    }

    /// Sets or clears individual arithmetic flags, keeping the others.
    #[inline]
    pub fn set_bit(&mut self, bit: u32, on: bool) {
        if bit & ARITH != 0 {
            self.materialize();
        }
        if on {
            self.bits |= bit;
        } else {
            self.bits &= !bit;
        }
    }

    /// Writes all six arithmetic flags at once.
    #[inline]
    pub fn set_arith(&mut self, f: u32) {
        self.bits = (self.bits & !ARITH) | (f & ARITH);
        self.op = FlagOp::Eager;
    }

    #[inline]
    pub fn cf(&self) -> bool {
        match self.op {
            FlagOp::Eager | FlagOp::Inc | FlagOp::Dec => self.bits & CF != 0,
            FlagOp::Logic => false,
            _ => self.arith() & CF != 0,
        }
    }
    #[inline]
    pub fn zf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & ZF != 0,
            _ => self.res & mask(self.size) == 0,
        }
    }
    #[inline]
    pub fn sf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & SF != 0,
            _ => self.res & sign_bit(self.size) != 0,
        }
    }
    #[inline]
    pub fn of(&self) -> bool {
        self.arith() & OF != 0
    }
    #[inline]
    pub fn pf(&self) -> bool {
        self.arith() & PF != 0
    }
    #[inline]
    pub fn af(&self) -> bool {
        self.arith() & AF != 0
    }
    #[inline]
    pub fn df(&self) -> bool {
        self.bits & DF != 0
    }
    #[inline]
    pub fn iflag(&self) -> bool {
        self.bits & IF != 0
    }
    pub fn iopl(&self) -> u8 {
        ((self.bits >> 12) & 3) as u8
    }

    /// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc opcodes).
    #[inline]
    pub fn cond(&self, cc: u8) -> bool {
        let r = match cc >> 1 {
            0 => self.of(),
            1 => self.cf(),
            2 => self.zf(),
            3 => self.cf() || self.zf(),
            4 => self.sf(),
            5 => self.pf(),
            6 => self.sf() != self.of(),
            _ => self.zf() || (self.sf() != self.of()),
        };
        r ^ (cc & 1 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lazy(op: FlagOp, size: u8, a: u32, b: u32, res: u32) -> u32 {
        let mut f = Flags::new();
        f.set_lazy(op, size, a, b, res);
        f.get() & ARITH
    }

    #[test]
    fn add_flags() {
        assert_eq!(lazy(FlagOp::Add, 1, 0xFF, 1, 0x100), CF | ZF | PF | AF);
        assert_eq!(lazy(FlagOp::Add, 1, 0x7F, 1, 0x80), OF | SF | AF);
        assert_eq!(
            lazy(FlagOp::Add, 4, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFE),
            CF | SF | AF
        );
    }

    #[test]
    fn sub_flags() {
        assert_eq!(lazy(FlagOp::Sub, 2, 0, 1, 0xFFFF_FFFF), CF | SF | AF | PF);
        assert_eq!(lazy(FlagOp::Sub, 1, 0x80, 1, 0x7F), OF | AF);
        assert_eq!(lazy(FlagOp::Sub, 4, 5, 5, 0), ZF | PF);
    }

    #[test]
    fn inc_keeps_carry() {
        let mut f = Flags::new();
        f.set_lazy(FlagOp::Add, 1, 0xFF, 1, 0x100);
        f.set_lazy(FlagOp::Inc, 1, 0x7F, 1, 0x80);
        assert_eq!(f.get() & ARITH, CF | OF | SF | AF);
    }

    /// The shift flags as the interpreter computed them eagerly before they became
    /// lazy (P6 behaviour): the lazy record must give exactly these.
    fn eager_shift_flags(op: FlagOp, size: u8, a: u32, count: u32) -> (u32, u32) {
        let bit = |on: bool, flag: u32| if on { flag } else { 0 };
        let bits = size as u32 * 8;
        let m = mask(size);
        let sb = sign_bit(size);
        let szp = |r: u32| {
            (if r == 0 { ZF } else { 0 })
                | (if r & sb != 0 { SF } else { 0 })
                | (if parity(r) { PF } else { 0 })
        };
        match op {
            FlagOp::Shl => {
                let v = (a as u64) << count;
                let r = v as u32 & m;
                let cf = count <= bits && (v >> bits) & 1 != 0;
                let of = (r & sb != 0) != cf;
                (r, szp(r) | bit(cf, CF) | bit(of, OF))
            }
            FlagOp::Shr => {
                let r = if count >= bits { 0 } else { a >> count };
                let cf = count <= bits && (a >> (count - 1)) & 1 != 0;
                (r, szp(r) | bit(cf, CF) | bit(a & sb != 0, OF))
            }
            _ => {
                let s = ((a as i64) << (64 - bits) >> (64 - bits)) as i32;
                let r = (s >> count.min(bits - 1)) as u32 & m;
                let cf = if count >= bits {
                    s < 0
                } else {
                    (s >> (count - 1)) & 1 != 0
                };
                (r, szp(r) | bit(cf, CF))
            }
        }
    }

    #[test]
    fn lazy_shift_flags_match_the_eager_rules() {
        let values = [
            0,
            1,
            2,
            0x40,
            0x7F,
            0x80,
            0xC0,
            0xFF,
            0x7FFF,
            0x8000,
            0xFFFF,
            0x1234_5678,
            0x7FFF_FFFF,
            0x8000_0000,
            0xDEAD_BEEF,
            0x5555_5555,
            0xAAAA_AAAA,
            0xFFFF_FFFF,
        ];
        for op in [FlagOp::Shl, FlagOp::Shr, FlagOp::Sar] {
            for size in [1u8, 2, 4] {
                for &v in &values {
                    let a = v & mask(size);
                    for count in 1..32 {
                        let (r, want) = eager_shift_flags(op, size, a, count);
                        let got = lazy(op, size, a, count, r);
                        assert_eq!(got, want, "{op:?} size {size} {a:#x} by {count}");
                    }
                }
            }
        }
    }

    #[test]
    fn conditions() {
        let mut f = Flags::new();
        f.set_lazy(FlagOp::Sub, 4, 1, 2, 1u32.wrapping_sub(2));
        assert!(f.cond(0x2)); // B
        assert!(f.cond(0xC)); // L
        assert!(!f.cond(0x4)); // E
        assert!(f.cond(0x6)); // BE
    }
}
