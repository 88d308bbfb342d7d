//! 80-bit extended-precision arithmetic, computed exactly on integers.
//!
//! Every operation works on the exact mathematical result (u128 significands with a sticky
//! bit) and rounds it once, in [`round_pack`], to the precision the control word asks for
//! (24, 53 or 64 bits) with the full extended exponent range kept, as the x87 does. This
//! avoids the double rounding that "round to 64 bits, then to 24/53" would introduce, which
//! is why `rustc_apfloat` is only used by the tests as a cross-check.
//!
//! Underflow follows the P6: tininess is detected after rounding; a masked underflow
//! delivers a denormal and raises UE only when the result is inexact; an unmasked underflow
//! or overflow with a register destination delivers the result with the exponent adjusted
//! by 24576 (SDM vol. 1 §8.5.4/§8.5.5).

use core::cmp::Ordering;

/// Status word bits.
pub const IE: u16 = 1 << 0;
pub const DE: u16 = 1 << 1;
pub const ZE: u16 = 1 << 2;
pub const OE: u16 = 1 << 3;
pub const UE: u16 = 1 << 4;
pub const PE: u16 = 1 << 5;
pub const SF: u16 = 1 << 6;
pub const ES: u16 = 1 << 7;
pub const C0: u16 = 1 << 8;
pub const C1: u16 = 1 << 9;
pub const C2: u16 = 1 << 10;
pub const C3: u16 = 1 << 14;
pub const BUSY: u16 = 1 << 15;
/// The six exception flags (and the six mask bits of the control word).
pub const EXC: u16 = 0x3F;

/// Extended exponent bias.
pub const BIAS: i32 = 16383;
/// Exponent adjustment for unmasked overflow/underflow with a register destination.
pub const ADJUST: i32 = 24576;

/// An 80-bit register value: explicit 64-bit significand and 16-bit sign/exponent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct F80 {
    pub sig: u64,
    pub se: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Zero,
    Normal,
    /// Denormals and pseudo-denormals (exponent 0, integer bit set).
    Denormal,
    Inf,
    QNan,
    SNan,
    /// Pseudo-NaN, pseudo-infinity and unnormals: invalid operands on the 387 and later.
    Unsupported,
}

impl F80 {
    /// The QNaN "real indefinite".
    pub const INDEFINITE: F80 = F80 {
        se: 0xFFFF,
        sig: 0xC000_0000_0000_0000,
    };
    pub const ZERO: F80 = F80 { se: 0, sig: 0 };
    pub const ONE: F80 = F80 {
        se: 0x3FFF,
        sig: 1 << 63,
    };

    pub const fn new(sign: bool, exp: u16, sig: u64) -> F80 {
        F80 {
            se: ((sign as u16) << 15) | (exp & 0x7FFF),
            sig,
        }
    }
    pub fn inf(sign: bool) -> F80 {
        F80::new(sign, 0x7FFF, 1 << 63)
    }
    pub fn zero(sign: bool) -> F80 {
        F80::new(sign, 0, 0)
    }
    pub fn sign(self) -> bool {
        self.se & 0x8000 != 0
    }
    pub fn exp(self) -> u16 {
        self.se & 0x7FFF
    }
    pub fn negate(self) -> F80 {
        F80 {
            se: self.se ^ 0x8000,
            sig: self.sig,
        }
    }
    pub fn with_sign(self, sign: bool) -> F80 {
        F80 {
            se: (self.se & 0x7FFF) | ((sign as u16) << 15),
            sig: self.sig,
        }
    }
    pub fn abs(self) -> F80 {
        F80 {
            se: self.se & 0x7FFF,
            sig: self.sig,
        }
    }
    pub fn from_bytes(b: &[u8; 10]) -> F80 {
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[..8]);
        F80 {
            sig: u64::from_le_bytes(s),
            se: u16::from_le_bytes([b[8], b[9]]),
        }
    }
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..8].copy_from_slice(&self.sig.to_le_bytes());
        b[8..].copy_from_slice(&self.se.to_le_bytes());
        b
    }
    pub fn class(self) -> Class {
        let j = self.sig >> 63 != 0;
        match self.exp() {
            0 => {
                if self.sig == 0 {
                    Class::Zero
                } else {
                    Class::Denormal
                }
            }
            0x7FFF => {
                if !j {
                    Class::Unsupported
                } else if self.sig << 1 == 0 {
                    Class::Inf
                } else if self.sig & (1 << 62) != 0 {
                    Class::QNan
                } else {
                    Class::SNan
                }
            }
            _ => {
                if j {
                    Class::Normal
                } else {
                    Class::Unsupported
                }
            }
        }
    }
    pub fn is_nan(self) -> bool {
        matches!(self.class(), Class::QNan | Class::SNan)
    }
    pub fn quiet(self) -> F80 {
        F80 {
            se: self.se,
            sig: self.sig | (1 << 62),
        }
    }
    /// Finite nonzero value as (sign, exponent, significand) with the significand
    /// normalized (bit 63 set); denormals get exponents below 1.
    pub fn unpack(self) -> (bool, i32, u64) {
        let e = self.exp() as i32;
        if e == 0 {
            let lz = self.sig.leading_zeros();
            (self.sign(), 1 - lz as i32, self.sig << lz)
        } else {
            (self.sign(), e, self.sig)
        }
    }
}

/// Rounding environment taken from the control word.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// 0 nearest-even, 1 down, 2 up, 3 toward zero.
    pub rc: u8,
    /// Significand precision in bits: 24, 53 or 64.
    pub prec: u32,
    /// Exception masks (control word bits 0-5).
    pub masks: u16,
}

impl Ctx {
    pub fn from_control(cw: u16) -> Ctx {
        Ctx {
            rc: ((cw >> 10) & 3) as u8,
            // PC = 01 is reserved; treat it like 64 bits.
            prec: match (cw >> 8) & 3 {
                0 => 24,
                2 => 53,
                _ => 64,
            },
            masks: cw & EXC,
        }
    }
    /// Same rounding but full 64-bit precision (for operations PC does not affect).
    pub fn full(self) -> Ctx {
        Ctx { prec: 64, ..self }
    }
}

/// Shift right keeping a sticky bit in bit 0.
pub fn shr_jam(x: u128, n: u32) -> u128 {
    if n == 0 {
        x
    } else if n >= 128 {
        (x != 0) as u128
    } else {
        (x >> n) | ((x & ((1u128 << n) - 1) != 0) as u128)
    }
}

/// Rounds off the low `shift` bits of `sig`. Returns (kept bits, inexact, incremented).
fn round_bits(sign: bool, sig: u128, shift: u32, rc: u8) -> (u128, bool, bool) {
    let rem = sig & ((1u128 << shift) - 1);
    let kept = sig >> shift;
    let half = 1u128 << (shift - 1);
    let inc = match rc {
        0 => rem > half || (rem == half && kept & 1 == 1),
        1 => sign && rem != 0,
        2 => !sign && rem != 0,
        _ => false,
    };
    (kept + inc as u128, rem != 0, inc)
}

/// Destination format for [`round_pack`].
#[derive(Clone, Copy, Debug)]
pub struct Fmt {
    /// All-ones biased exponent (infinity/NaN).
    pub emax: i32,
    pub bias: i32,
    pub prec: u32,
    /// Whether an unmasked OE/UE delivers an exponent-adjusted result (register destination).
    pub adjust: bool,
}

pub const EXT: Fmt = Fmt {
    emax: 0x7FFF,
    bias: BIAS,
    prec: 64,
    adjust: true,
};
pub const DBL: Fmt = Fmt {
    emax: 0x7FF,
    bias: 1023,
    prec: 53,
    adjust: false,
};
pub const SGL: Fmt = Fmt {
    emax: 0xFF,
    bias: 127,
    prec: 24,
    adjust: false,
};

/// A rounded result: biased exponent in the destination format and the significand with
/// its integer bit at bit 63 (clear for denormals), plus the exception flags and C1
/// ("rounded up") it produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rounded {
    pub sign: bool,
    pub exp: i32,
    pub sig: u64,
    pub flags: u16,
}

impl Rounded {
    pub fn f80(self) -> F80 {
        F80::new(self.sign, self.exp as u16, self.sig)
    }
}

/// Rounds the exact value `sig / 2^127 * 2^(exp - bias)` (the sticky bit already folded
/// into bit 0 of `sig`) to `prec` bits in the format `fmt`.
pub fn round_pack(sign: bool, exp: i32, sig: u128, fmt: Fmt, prec: u32, ctx: Ctx) -> Rounded {
    let prec = prec.min(fmt.prec);
    if sig == 0 {
        return Rounded {
            sign,
            exp: 0,
            sig: 0,
            flags: 0,
        };
    }
    let lz = sig.leading_zeros();
    let sig = sig << lz;
    let mut exp = exp.saturating_sub(lz as i32);
    let shift = 128 - prec;
    let mut flags = 0;
    let to64 = |kept: u128| (kept << (64 - prec)) as u64;
    if exp < 1 {
        let (k, _, _) = round_bits(sign, sig, shift, ctx.rc);
        let carries = k >> prec != 0;
        let tiny = exp < 0 || !carries;
        if tiny {
            if ctx.masks & UE == 0 && fmt.adjust {
                let (mut k, inexact, up) = round_bits(sign, sig, shift, ctx.rc);
                if k >> prec != 0 {
                    k >>= 1;
                    exp += 1;
                }
                flags |= UE | if inexact { PE } else { 0 } | if up { C1 } else { 0 };
                return Rounded {
                    sign,
                    exp: exp.saturating_add(ADJUST).max(1),
                    sig: to64(k),
                    flags,
                };
            }
            if ctx.masks & UE == 0 {
                // Unmasked underflow to memory: nothing is stored.
                return Rounded {
                    sign,
                    exp: 0,
                    sig: 0,
                    flags: UE,
                };
            }
            let d = (1i64 - exp as i64).min(200) as u32;
            let s = shr_jam(sig, d);
            let (k, inexact, up) = round_bits(sign, s, shift, ctx.rc);
            if inexact {
                flags |= UE | PE;
            }
            if up {
                flags |= C1;
            }
            let sig64 = to64(k);
            return Rounded {
                sign,
                exp: (sig64 >> 63) as i32,
                sig: sig64,
                flags,
            };
        }
    }
    let (mut k, inexact, up) = round_bits(sign, sig, shift, ctx.rc);
    if k >> prec != 0 {
        k >>= 1;
        exp += 1;
    }
    if inexact {
        flags |= PE;
    }
    if up {
        flags |= C1;
    }
    if exp >= fmt.emax {
        if ctx.masks & OE == 0 {
            flags |= OE;
            if !fmt.adjust {
                return Rounded {
                    sign,
                    exp: 0,
                    sig: 0,
                    flags,
                };
            }
            let e = exp.saturating_sub(ADJUST);
            if e < fmt.emax {
                return Rounded {
                    sign,
                    exp: e,
                    sig: to64(k),
                    flags,
                };
            }
            // Still out of range after the adjustment: infinity.
            return Rounded {
                sign,
                exp: fmt.emax,
                sig: 1 << 63,
                flags: flags | PE | C1,
            };
        }
        let to_inf = match ctx.rc {
            0 => true,
            1 => sign,
            2 => !sign,
            _ => false,
        };
        return if to_inf {
            Rounded {
                sign,
                exp: fmt.emax,
                sig: 1 << 63,
                flags: OE | PE | C1,
            }
        } else {
            Rounded {
                sign,
                exp: fmt.emax - 1,
                sig: !0u64 << (64 - prec),
                flags: OE | PE,
            }
        };
    }
    Rounded {
        sign,
        exp,
        sig: to64(k),
        flags,
    }
}

/// Result of an arithmetic operation: the value and the flags (exception bits and C1).
pub type Out = (F80, u16);

/// NaN propagation for two operands (SDM vol. 1, table 4-7): IE on any SNaN; the QNaN
/// wins over the SNaN; between two NaNs of the same kind the larger significand wins
/// (the positive one on a tie).
pub fn propagate_nan(a: F80, b: F80) -> Out {
    let (ca, cb) = (a.class(), b.class());
    let ie = if ca == Class::SNan || cb == Class::SNan {
        IE
    } else {
        0
    };
    let an = matches!(ca, Class::QNan | Class::SNan);
    let bn = matches!(cb, Class::QNan | Class::SNan);
    let r = match (an, bn) {
        (true, false) => a,
        (false, true) => b,
        _ => {
            if ca == Class::SNan && cb == Class::QNan {
                b
            } else if ca == Class::QNan && cb == Class::SNan {
                a
            } else {
                let (ma, mb) = (a.sig | (1 << 62), b.sig | (1 << 62));
                match ma.cmp(&mb) {
                    Ordering::Less => b,
                    Ordering::Greater => a,
                    Ordering::Equal => {
                        if a.sign() {
                            b
                        } else {
                            a
                        }
                    }
                }
            }
        }
    };
    (r.quiet(), ie)
}

/// Common operand screening: unsupported → invalid; NaNs propagate. Returns the early
/// result if any, plus DE when an operand is denormal.
fn screen2(a: F80, b: F80) -> Result<u16, Out> {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return Err((F80::INDEFINITE, IE));
    }
    if matches!(ca, Class::QNan | Class::SNan) || matches!(cb, Class::QNan | Class::SNan) {
        return Err(propagate_nan(a, b));
    }
    Ok(if ca == Class::Denormal || cb == Class::Denormal {
        DE
    } else {
        0
    })
}

fn screen1(a: F80) -> Result<u16, Out> {
    match a.class() {
        Class::Unsupported => Err((F80::INDEFINITE, IE)),
        Class::SNan => Err((a.quiet(), IE)),
        Class::QNan => Err((a, 0)),
        Class::Denormal => Ok(DE),
        _ => Ok(0),
    }
}

fn finish(r: Rounded, de: u16) -> Out {
    (r.f80(), r.flags | de)
}

/// a + b (b negated first when `sub`).
pub fn add(a: F80, b: F80, sub: bool, ctx: Ctx) -> Out {
    let de = match screen2(a, b) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let b = if sub { b.negate() } else { b };
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Inf || cb == Class::Inf {
        if ca == Class::Inf && cb == Class::Inf && a.sign() != b.sign() {
            return (F80::INDEFINITE, IE | de);
        }
        return (if ca == Class::Inf { a } else { b }, de);
    }
    if ca == Class::Zero && cb == Class::Zero {
        let s = if a.sign() == b.sign() {
            a.sign()
        } else {
            ctx.rc == 1
        };
        return (F80::zero(s), de);
    }
    let unp = |x: F80| {
        if x.class() == Class::Zero {
            (x.sign(), i32::MIN / 2, 0u64)
        } else {
            x.unpack()
        }
    };
    let (sa, ea, ma) = unp(a);
    let (sb, eb, mb) = unp(b);
    let mut x = (ma as u128) << 63;
    let mut y = (mb as u128) << 63;
    let e = ea.max(eb);
    x = shr_jam(x, (e - ea).min(200) as u32);
    y = shr_jam(y, (e - eb).min(200) as u32);
    let (sign, sum) = if sa == sb {
        (sa, x + y)
    } else if x >= y {
        (sa, x - y)
    } else {
        (sb, y - x)
    };
    if sum == 0 {
        return (F80::zero(ctx.rc == 1), de);
    }
    finish(round_pack(sign, e + 1, sum, EXT, ctx.prec, ctx), de)
}

pub fn mul(a: F80, b: F80, ctx: Ctx) -> Out {
    let de = match screen2(a, b) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let sign = a.sign() != b.sign();
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Inf || cb == Class::Inf {
        if ca == Class::Zero || cb == Class::Zero {
            return (F80::INDEFINITE, IE | de);
        }
        return (F80::inf(sign), de);
    }
    if ca == Class::Zero || cb == Class::Zero {
        return (F80::zero(sign), de);
    }
    let (_, ea, ma) = a.unpack();
    let (_, eb, mb) = b.unpack();
    let p = ma as u128 * mb as u128;
    finish(
        round_pack(sign, ea + eb - BIAS + 1, p, EXT, ctx.prec, ctx),
        de,
    )
}

/// Exact quotient of two normalized significands as a 128-bit value with sticky bit,
/// and whether ma >= mb (the quotient then has its leading bit one place higher).
fn div_sig(ma: u64, mb: u64) -> (u128, bool) {
    let ge = ma >= mb;
    let num = if ge {
        (ma as u128) << 63
    } else {
        (ma as u128) << 64
    };
    let q1 = num / mb as u128;
    let r1 = num % mb as u128;
    let q2 = (r1 << 64) / mb as u128;
    let r2 = (r1 << 64) % mb as u128;
    ((q1 << 64) | q2 | (r2 != 0) as u128, ge)
}

pub fn div(a: F80, b: F80, ctx: Ctx) -> Out {
    let de = match screen2(a, b) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let sign = a.sign() != b.sign();
    let (ca, cb) = (a.class(), b.class());
    match (ca, cb) {
        (Class::Inf, Class::Inf) | (Class::Zero, Class::Zero) => return (F80::INDEFINITE, IE | de),
        (Class::Inf, _) => return (F80::inf(sign), de),
        (_, Class::Inf) | (Class::Zero, _) => return (F80::zero(sign), de),
        (_, Class::Zero) => return (F80::inf(sign), ZE | de),
        _ => {}
    }
    let (_, ea, ma) = a.unpack();
    let (_, eb, mb) = b.unpack();
    let (q, ge) = div_sig(ma, mb);
    let exp = ea - eb + BIAS - if ge { 0 } else { 1 };
    finish(round_pack(sign, exp, q, EXT, ctx.prec, ctx), de)
}

pub fn sqrt(a: F80, ctx: Ctx) -> Out {
    let de = match screen1(a) {
        Ok(d) => d,
        Err(o) => return o,
    };
    match a.class() {
        Class::Zero => return (a, 0),
        _ if a.sign() => return (F80::INDEFINITE, IE | de),
        Class::Inf => return (a, 0),
        _ => {}
    }
    let (_, e, m) = a.unpack();
    let ue = e - BIAS;
    let (ue2, mm) = if ue.rem_euclid(2) == 1 {
        (ue - 1, (m as u128) << 1)
    } else {
        (ue, m as u128)
    };
    // root = floor(sqrt(mm * 2^77)), bit by bit; mm * 2^77 < 2^142.
    let bit = |n: u32| -> u128 {
        if n >= 77 {
            (mm >> (n - 77)) & 1
        } else {
            0
        }
    };
    let mut rem: u128 = 0;
    let mut root: u128 = 0;
    for i in (0..71u32).rev() {
        rem = (rem << 2) | (bit(2 * i + 1) << 1) | bit(2 * i);
        let trial = (root << 2) | 1;
        root <<= 1;
        if rem >= trial {
            rem -= trial;
            root |= 1;
        }
    }
    let sig = (root << 57) | (rem != 0) as u128;
    finish(
        round_pack(false, ue2 / 2 + BIAS, sig, EXT, ctx.prec, ctx),
        de,
    )
}

/// Comparison result for FCOM and friends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Less,
    Equal,
    Greater,
    Unordered,
}

/// Compares; `quiet` (FUCOM) raises IE only for SNaNs, otherwise any NaN raises IE.
pub fn compare(a: F80, b: F80, quiet: bool) -> (Cmp, u16) {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return (Cmp::Unordered, IE);
    }
    let an = matches!(ca, Class::QNan | Class::SNan);
    let bn = matches!(cb, Class::QNan | Class::SNan);
    if an || bn {
        let ie = if !quiet || ca == Class::SNan || cb == Class::SNan {
            IE
        } else {
            0
        };
        return (Cmp::Unordered, ie);
    }
    let de = if ca == Class::Denormal || cb == Class::Denormal {
        DE
    } else {
        0
    };
    (cmp_ordered(a, b), de)
}

fn cmp_ordered(a: F80, b: F80) -> Cmp {
    let key = |x: F80| -> (bool, i128) {
        match x.class() {
            Class::Zero => (false, 0),
            Class::Inf => (x.sign(), i128::MAX),
            _ => {
                let (s, e, m) = x.unpack();
                // Monotonic magnitude key: exponent then significand.
                (s, ((e as i128 + 100_000) << 64) | m as i128)
            }
        }
    };
    let (sa, ka) = key(a);
    let (sb, kb) = key(b);
    let va = if sa { -ka } else { ka };
    let vb = if sb { -kb } else { kb };
    match va.cmp(&vb) {
        Ordering::Less => Cmp::Less,
        Ordering::Equal => Cmp::Equal,
        Ordering::Greater => Cmp::Greater,
    }
}

/// Exact conversion of a signed integer.
pub fn from_i64(v: i64) -> F80 {
    if v == 0 {
        return F80::ZERO;
    }
    let mag = v.unsigned_abs();
    let lz = mag.leading_zeros();
    F80::new(v < 0, (BIAS + 63 - lz as i32) as u16, mag << lz)
}

/// Rounds a finite value to an integer per RC: (sign, magnitude, inexact, rounded up).
/// The magnitude saturates at 2^64 for values out of any integer range.
fn round_int_mag(a: F80, rc: u8) -> (bool, u128, bool, bool) {
    if a.class() == Class::Zero {
        return (a.sign(), 0, false, false);
    }
    let (s, e, m) = a.unpack();
    let ue = e - BIAS;
    if ue >= 64 {
        return (s, 1u128 << 64, false, false);
    }
    let m128 = (m as u128) << 64;
    let t = shr_jam(m128, (63 - ue).min(200) as u32);
    let (k, inexact, up) = round_bits(s, t, 64, rc);
    (s, k, inexact, up)
}

/// FIST/FISTP: to a `bits`-wide integer. Out of range or NaN → IE and the integer
/// indefinite (the most negative value).
pub fn to_int(a: F80, bits: u32, ctx: Ctx) -> (i64, u16) {
    let indefinite = (-1i64) << (bits - 1);
    match a.class() {
        Class::QNan | Class::SNan | Class::Inf | Class::Unsupported => return (indefinite, IE),
        _ => {}
    }
    let de = if a.class() == Class::Denormal { DE } else { 0 };
    let (s, k, inexact, up) = round_int_mag(a, ctx.rc);
    let limit = 1u128 << (bits - 1);
    if (s && k > limit) || (!s && k >= limit) {
        return (indefinite, IE | de);
    }
    let v = if s {
        (k as i128).wrapping_neg() as i64
    } else {
        k as i64
    };
    let mut f = de;
    if inexact {
        f |= PE;
    }
    if up {
        f |= C1;
    }
    (v, f)
}

/// FRNDINT.
pub fn round_to_int(a: F80, ctx: Ctx) -> Out {
    let de = match screen1(a) {
        Ok(d) => d,
        Err(o) => return o,
    };
    match a.class() {
        Class::Zero | Class::Inf => return (a, 0),
        _ => {}
    }
    let (_, e, _) = a.unpack();
    if e - BIAS >= 63 {
        return (a, de);
    }
    let (s, k, inexact, up) = round_int_mag(a, ctx.rc);
    let mut f = de;
    if inexact {
        f |= PE;
    }
    if up {
        f |= C1;
    }
    if k == 0 {
        return (F80::zero(s), f);
    }
    let lz = (k as u64).leading_zeros();
    (
        F80::new(s, (BIAS + 63 - lz as i32) as u16, (k as u64) << lz),
        f,
    )
}

/// Widening load from an IEEE single (ebits 8, fbits 23) or double (11, 52). Exact; SNaNs
/// stay signaling (the caller decides). Returns the value and DE for a denormal source.
pub fn from_ieee(bits: u64, ebits: u32, fbits: u32) -> (F80, u16) {
    let sign = (bits >> (ebits + fbits)) & 1 != 0;
    let emask = (1u64 << ebits) - 1;
    let e = ((bits >> fbits) & emask) as i32;
    let frac = bits & ((1u64 << fbits) - 1);
    let bias = (1i32 << (ebits - 1)) - 1;
    let fsh = 63 - fbits;
    if e as u64 == emask {
        return (F80::new(sign, 0x7FFF, (1 << 63) | (frac << fsh)), 0);
    }
    if e == 0 {
        if frac == 0 {
            return (F80::zero(sign), 0);
        }
        let m = frac << fsh;
        let lz = m.leading_zeros();
        let exp = BIAS - bias + 1 - lz as i32;
        return (F80::new(sign, exp as u16, m << lz), DE);
    }
    (
        F80::new(sign, (e - bias + BIAS) as u16, (1 << 63) | (frac << fsh)),
        0,
    )
}

/// Narrowing store to single or double: (bits, flags). With an unmasked exception the
/// caller stores nothing.
pub fn to_ieee(a: F80, fmt: Fmt, ctx: Ctx) -> (u64, u16) {
    let fbits = fmt.prec - 1;
    let ebits = if fmt.emax == 0xFF { 8 } else { 11 };
    let pack = |s: bool, e: u64, f: u64| ((s as u64) << (ebits + fbits)) | (e << fbits) | f;
    let fmask = (1u64 << fbits) - 1;
    let emax = fmt.emax as u64;
    match a.class() {
        Class::Unsupported => (pack(true, emax, 1 << (fbits - 1)), IE),
        Class::QNan => (pack(a.sign(), emax, (a.sig >> (64 - fmt.prec)) & fmask), 0),
        Class::SNan => (
            pack(
                a.sign(),
                emax,
                ((a.sig >> (64 - fmt.prec)) & fmask) | (1 << (fbits - 1)),
            ),
            IE,
        ),
        Class::Inf => (pack(a.sign(), emax, 0), 0),
        Class::Zero => (pack(a.sign(), 0, 0), 0),
        c => {
            let de = if c == Class::Denormal { DE } else { 0 };
            let (s, e, m) = a.unpack();
            let r = round_pack(
                s,
                e - BIAS + fmt.bias,
                (m as u128) << 64,
                fmt,
                fmt.prec,
                ctx,
            );
            let v = pack(
                r.sign,
                (r.exp as u64) & emax,
                (r.sig >> (64 - fmt.prec)) & fmask,
            );
            (v, r.flags | de)
        }
    }
}

/// Exact partial remainder (FPREM when `nearest` is false, FPREM1 when true).
/// Returns (result, flags, quotient low bits, complete).
pub fn prem(a: F80, b: F80, nearest: bool, ctx: Ctx) -> (F80, u16, u64, bool) {
    if let Err((r, f)) = screen2(a, b) {
        return (r, f, 0, true);
    }
    let (ca, cb) = (a.class(), b.class());
    let de = if ca == Class::Denormal || cb == Class::Denormal {
        DE
    } else {
        0
    };
    if ca == Class::Inf || cb == Class::Zero {
        return (F80::INDEFINITE, IE | de, 0, true);
    }
    if ca == Class::Zero || cb == Class::Inf {
        return (a, de, 0, true);
    }
    let (sa, ea, ma) = a.unpack();
    let (_, eb, mb) = b.unpack();
    let d = ea - eb;
    if d < 0 && (!nearest || d < -1) {
        // |a| < |b|/2 or truncating: the remainder is a itself.
        return (a, de, 0, true);
    }
    let (n, complete) = if d >= 64 { (63, false) } else { (d, true) };
    // a = ma * 2^(ea-63-B), b = mb * 2^(eb-63-B); scale a to b's unit.
    let (num, unit_exp) = if n >= 0 {
        ((ma as u128) << n, ea - n)
    } else {
        (ma as u128, ea)
    };
    let den = if n >= 0 {
        mb as u128
    } else {
        (mb as u128) << 1
    };
    let mut q = num / den;
    let mut r = num % den;
    let mut sign = sa;
    if nearest && complete {
        let twice = r << 1;
        if twice > den || (twice == den && q & 1 == 1) {
            q += 1;
            r = den - r;
            sign = !sign;
        }
    }
    if r == 0 {
        return (F80::zero(sa), de, q as u64, complete);
    }
    // r is in units of 2^(unit_exp - 63 - B).
    let rr = round_pack(sign, unit_exp + 64, r, EXT, 64, ctx.full());
    (rr.f80(), (rr.flags & !C1) | de, q as u64, complete)
}
