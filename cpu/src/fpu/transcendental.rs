//! FSCALE (exact) and the transcendental instructions.
//!
//! The transcendentals are evaluated in extended precision with this module's own
//! soft-float (every step a 64-bit round-to-nearest operation): Taylor/atanh/arctan series
//! after exact argument handling. They are accurate to a few units in the last place of
//! the 64-bit significand, not correctly rounded (neither is the P6, whose exact last-bit
//! results are not reproduced):
//! - F2XM1: expm1(x ln 2) series for |x| <= 1;
//! - FYL2X: exponent taken apart exactly, mantissa in [sqrt(1/2), sqrt(2)), 2 atanh series;
//! - FYL2XP1: 2 atanh(x / (2 + x)) for |x| < 1/2 (the documented range is < 0.29);
//! - FPATAN: ratio in [0, 1], three half-angle steps, arctan series, quadrant fix-up;
//! - FSIN/FCOS/FSINCOS/FPTAN: the argument is reduced exactly modulo pi/2 against the
//!   P6's 66-bit pi (integer arithmetic), so large arguments and arguments near multiples
//!   of pi behave like the hardware; then sin/cos series on [0, pi/4].
//!
//! Outside the documented ranges (F2XM1 |x| > 1, FYL2XP1 |x| >= 1/2), where the hardware
//! result is undefined, the value is an `f64` approximation.
//! Special operands (zeros, infinities, NaNs, unsupported encodings, denormals) and the
//! |x| >= 2^63 range check (C2 = 1, operand unchanged) follow the SDM. PE is reported for
//! every computed (non-special) result.

use super::float::{
    self, from_ieee, mul, propagate_nan, to_ieee, Class, Ctx, Out, BIAS, C1, DBL, DE, F80, IE, PE,
    ZE,
};
use iced_x86::Mnemonic as M;

/// log2(e) and ln(2) in extended precision (round-to-nearest values).
const LOG2E: F80 = F80::new(false, 0x3FFF, 0xB8AA_3B29_5C17_F0BC);
const LN2: F80 = F80::new(false, 0x3FFE, 0xB172_17F7_D1CF_79AC);

fn to_f64(a: F80) -> f64 {
    let ctx = Ctx {
        rc: 0,
        prec: 53,
        masks: 0x3F,
    };
    f64::from_bits(to_ieee(a, DBL, ctx).0)
}

fn from_f64(x: f64) -> F80 {
    from_ieee(x.to_bits(), 11, 52).0
}

/// Unbiased exponent of a finite nonzero value.
fn uexp(a: F80) -> i32 {
    a.unpack().1 - BIAS
}

fn de_of(a: F80) -> u16 {
    if a.class() == Class::Denormal {
        DE
    } else {
        0
    }
}

fn nan_screen(a: F80, b: F80) -> Option<Out> {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return Some((F80::INDEFINITE, IE));
    }
    if a.is_nan() || b.is_nan() {
        return Some(propagate_nan(a, b));
    }
    None
}

fn approx(r: F80, de: u16) -> Out {
    (r, PE | de)
}

/// FSCALE: ST(0) * 2^trunc(ST(1)), exact up to the final rounding.
pub fn fscale(a: F80, b: F80, ctx: Ctx) -> Out {
    if let Some(o) = nan_screen(a, b) {
        return o;
    }
    let de = de_of(a) | de_of(b);
    let (ca, cb) = (a.class(), b.class());
    if cb == Class::Inf {
        return if b.sign() {
            if ca == Class::Inf {
                (F80::INDEFINITE, IE | de)
            } else {
                (F80::zero(a.sign()), de)
            }
        } else if ca == Class::Zero {
            (F80::INDEFINITE, IE | de)
        } else {
            (F80::inf(a.sign()), de)
        };
    }
    if ca == Class::Zero || ca == Class::Inf {
        return (a, de);
    }
    // trunc(ST(1)); anything beyond +-2^31 over- or underflows the same way.
    let n = if cb == Class::Zero || uexp(b) < 0 {
        0
    } else if uexp(b) >= 31 {
        if b.sign() {
            -200_000
        } else {
            200_000
        }
    } else {
        float::to_int(b, 64, Ctx { rc: 3, ..ctx }).0 as i32
    };
    let (s, e, m) = a.unpack();
    let r = float::round_pack(s, e + n, (m as u128) << 64, float::EXT, 64, ctx);
    (r.f80(), r.flags | de)
}

/// FYL2X: ST(1) * log2(ST(0)); `a` is ST(0), `b` is ST(1).
pub fn fyl2x(a: F80, b: F80, ctx: Ctx) -> Out {
    if let Some(o) = nan_screen(a, b) {
        return o;
    }
    let de = de_of(a) | de_of(b);
    let (ca, cb) = (a.class(), b.class());
    if a.sign() && ca != Class::Zero {
        return (F80::INDEFINITE, IE | de);
    }
    if ca == Class::Zero {
        return match cb {
            Class::Zero => (F80::INDEFINITE, IE | de),
            Class::Inf => (F80::inf(!b.sign()), de),
            _ => (F80::inf(!b.sign()), ZE | de),
        };
    }
    if ca == Class::Inf {
        return if cb == Class::Zero {
            (F80::INDEFINITE, IE | de)
        } else {
            (F80::inf(b.sign()), de)
        };
    }
    if a == F80::ONE {
        return if cb == Class::Inf {
            (F80::INDEFINITE, IE | de)
        } else {
            (F80::zero(b.sign()), de)
        };
    }
    let below_one = float::compare(a, F80::ONE, true).0 == float::Cmp::Less;
    if cb == Class::Inf {
        return (F80::inf(b.sign() != below_one), de);
    }
    if cb == Class::Zero {
        return (F80::zero(b.sign() != below_one), de);
    }
    let l = log2_ext(a);
    let (r, fl) = mul(b, l, ctx.full());
    (r, (fl & !C1) | PE | de)
}

/// FYL2XP1: ST(1) * log2(ST(0) + 1).
pub fn fyl2xp1(a: F80, b: F80, ctx: Ctx) -> Out {
    if let Some(o) = nan_screen(a, b) {
        return o;
    }
    let de = de_of(a) | de_of(b);
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Inf {
        return (F80::INDEFINITE, IE | de);
    }
    if ca == Class::Zero {
        return if cb == Class::Inf {
            (F80::INDEFINITE, IE | de)
        } else {
            (F80::zero(a.sign() != b.sign()), de)
        };
    }
    if cb == Class::Inf {
        return (F80::inf(a.sign() != b.sign()), de);
    }
    if cb == Class::Zero {
        return (F80::zero(a.sign() != b.sign()), de);
    }
    let l = if uexp(a) < -60 {
        mul(a, LOG2E, ctx.full()).0
    } else if uexp(a) < -1 {
        // ln(1 + x) = 2 atanh(x / (2 + x)), |x| < 1/2.
        let u = dv(a, ad(float::from_i64(2), a));
        ml(ln_atanh(u), LOG2E)
    } else {
        // Outside the documented range: f64.
        from_f64(to_f64(a).ln_1p() * std::f64::consts::LOG2_E)
    };
    let (r, fl) = mul(b, l, ctx.full());
    (r, (fl & !C1) | PE | de)
}

/// FPATAN: arctan(ST(1) / ST(0)) with the quadrant from both signs.
pub fn fpatan(a: F80, b: F80, ctx: Ctx) -> Out {
    if let Some(o) = nan_screen(a, b) {
        return o;
    }
    let de = de_of(a) | de_of(b);
    let (ca, cb) = (a.class(), b.class());
    let finite = |c: Class| matches!(c, Class::Normal | Class::Denormal);
    if finite(ca) && finite(cb) {
        let (ex, ey) = (uexp(a), uexp(b));
        if !a.sign() && ey - ex < -60 {
            // atan(y/x) = y/x to extended precision.
            let (r, fl) = float::div(b, a, ctx.full());
            return (r, (fl & !C1) | PE | de);
        }
        return approx(atan2_ext(b, a), de);
    }
    // Zeros and infinities: f64 atan2 follows the same table; the angles it can return
    // (0, pi/4, pi/2, 3pi/4, pi) are then given their extended values.
    // Only the sign of a finite nonzero operand matters here.
    let unit = |v: F80, c: Class| {
        if finite(c) {
            F80::ONE.with_sign(v.sign())
        } else {
            v
        }
    };
    let r = to_f64(unit(b, cb)).atan2(to_f64(unit(a, ca)));
    if r == 0.0 {
        return (from_f64(r), de);
    }
    use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};
    let rounded = |exp: u16, sig: u64, up: bool| {
        let inc = match ctx.rc {
            0 => up,
            1 => r < 0.0,
            2 => r > 0.0,
            _ => false,
        };
        F80::new(r < 0.0, exp, sig + inc as u64)
    };
    let v = match r.abs() {
        x if x == PI => rounded(0x4000, 0xC90F_DAA2_2168_C234, true),
        x if x == FRAC_PI_2 => rounded(0x3FFF, 0xC90F_DAA2_2168_C234, true),
        x if x == FRAC_PI_4 => rounded(0x3FFE, 0xC90F_DAA2_2168_C234, true),
        x if x == 3.0 * FRAC_PI_4 => rounded(0x4000, 0x96CB_E3F9_990E_91A7, true),
        _ => from_f64(r),
    };
    (v, PE | de)
}

/// F2XM1: 2^x - 1.
pub fn f2xm1(a: F80, ctx: Ctx) -> Out {
    match a.class() {
        Class::Unsupported => return (F80::INDEFINITE, IE),
        Class::SNan => return (a.quiet(), IE),
        Class::QNan | Class::Zero => return (a, 0),
        Class::Inf => {
            return if a.sign() {
                (F80::ONE.negate(), 0)
            } else {
                (a, 0)
            }
        }
        _ => {}
    }
    let de = de_of(a);
    if uexp(a) < -60 {
        let (r, fl) = mul(a, LN2, ctx.full());
        return (r, (fl & !C1) | PE | de);
    }
    if uexp(a) < 0 || a.abs() == F80::ONE {
        // |x| <= 1: expm1(x ln 2) by its Taylor series in extended precision.
        let t = ml(a, LN2);
        let mut p = F80::ONE;
        for k in (2..=26).rev() {
            p = ad(F80::ONE, dv(ml(t, p), float::from_i64(k)));
        }
        let (r, fl) = mul(t, p, ctx.full());
        return (r, (fl & !C1) | PE | de);
    }
    // Outside the documented range: f64.
    let x = to_f64(a);
    approx(from_f64((x * std::f64::consts::LN_2).exp_m1()), de)
}

/// |x| >= 2^63 (finite): FSIN/FCOS/FSINCOS/FPTAN leave the operand alone and set C2.
pub fn out_of_range(a: F80) -> bool {
    matches!(a.class(), Class::Normal | Class::Denormal) && uexp(a) >= 63
}

/// FSIN, FCOS, FSINCOS, FPTAN: (new ST(0) value before any push, the pushed value).
/// FSINCOS pushes the cosine over the sine; FPTAN pushes 1.0 over the tangent.
pub fn trig(m: M, a: F80, _ctx: Ctx) -> (F80, Option<F80>, u16) {
    let two = matches!(m, M::Fptan | M::Fsincos);
    let pair = |r: F80, fl: u16| {
        (
            r,
            if two {
                Some(if m == M::Fptan { F80::ONE } else { r })
            } else {
                None
            },
            fl,
        )
    };
    match a.class() {
        Class::Unsupported | Class::Inf => return pair(F80::INDEFINITE, IE),
        Class::SNan => return pair(a.quiet(), IE),
        Class::QNan => return pair(a, 0),
        _ => {}
    }
    let de = de_of(a);
    let tiny = a.class() == Class::Zero || uexp(a) < -40;
    let inexact = if a.class() == Class::Zero { 0 } else { PE };
    let (s, c, t) = if tiny {
        (a, F80::ONE, a)
    } else {
        let (q, r) = reduce(a);
        let (sv, cv) = sin_cos_ext(r);
        let (sv, cv) = match q & 3 {
            0 => (sv, cv),
            1 => (cv, sv.negate()),
            2 => (sv.negate(), cv.negate()),
            _ => (cv.negate(), sv),
        };
        let sv = if a.sign() { sv.negate() } else { sv };
        (sv, cv, dv(sv, cv))
    };
    let fl = inexact | de;
    match m {
        M::Fsin => (s, None, fl),
        M::Fcos => (c, None, fl),
        M::Fptan => (t, Some(F80::ONE), fl),
        _ => (s, Some(c), fl),
    }
}

/// pi/2 as the P6 holds it for argument reduction: a 68-bit integer P with
/// pi/2 = P * 2^-67 (pi to 66 significant bits).
const PIO2_P: u128 = 0xC_90FD_AA22_168C_234C;

/// Reduces |a| (finite, nonzero, |a| < 2^63) modulo pi/2 exactly against the P6's
/// 66-bit pi: returns the quadrant (low bits of the quotient) and the remainder in
/// [0, pi/2) in units of 2^-67 (exact). Like the hardware, results near multiples of pi
/// carry the error of the 66-bit constant.
fn reduce(a: F80) -> (u32, Reduced) {
    let (_, e, m) = a.unpack();
    // |a| = m * 2^(e - BIAS - 63) = (m * 2^k) * 2^-67 with k = e - BIAS + 4.
    let k = e - BIAS + 4;
    if k < 0 {
        return (0, Reduced::Small(a.abs()));
    }
    let mut r = m as u128;
    let mut q = 0u32;
    for _ in 0..k.min(70) {
        r <<= 1;
        q = q.wrapping_shl(1);
        if r >= PIO2_P {
            r -= PIO2_P;
            q |= 1;
        }
    }
    (q, Reduced::Units(r))
}

/// A reduced argument in [0, pi/2).
enum Reduced {
    Small(F80),
    /// Multiple of 2^-67, below [`PIO2_P`].
    Units(u128),
}

// ---- extended-precision kernels: round-to-nearest 64-bit operations ----

const RN: Ctx = Ctx {
    rc: 0,
    prec: 64,
    masks: 0x3F,
};

fn ad(a: F80, b: F80) -> F80 {
    float::add(a, b, false, RN).0
}
fn sb(a: F80, b: F80) -> F80 {
    float::add(a, b, true, RN).0
}
fn ml(a: F80, b: F80) -> F80 {
    mul(a, b, RN).0
}
fn dv(a: F80, b: F80) -> F80 {
    float::div(a, b, RN).0
}

/// 2 atanh(u) = ln((1 + u) / (1 - u)), |u| <= 0.2.
fn ln_atanh(u: F80) -> F80 {
    let u2 = ml(u, u);
    let mut p = dv(F80::ONE, float::from_i64(41));
    for k in (0..20).rev() {
        p = ad(dv(F80::ONE, float::from_i64(2 * k + 1)), ml(u2, p));
    }
    let r = ml(u, p);
    // Times two: exact.
    ml(r, float::from_i64(2))
}

/// log2(a) for finite a > 0, a != 1.
fn log2_ext(a: F80) -> F80 {
    let (_, e, m) = a.unpack();
    let mut ue = e - BIAS;
    // Mantissa in [sqrt(1/2), sqrt(2)).
    let mm = if m > 0xB504_F333_F9DE_6484 {
        ue += 1;
        F80::new(false, 0x3FFE, m)
    } else {
        F80::new(false, 0x3FFF, m)
    };
    let u = dv(sb(mm, F80::ONE), ad(mm, F80::ONE));
    let l = ml(ln_atanh(u), LOG2E);
    if ue == 0 {
        l
    } else {
        ad(float::from_i64(ue as i64), l)
    }
}

/// sin and cos of a reduced argument.
fn sin_cos_ext(r: Reduced) -> (F80, F80) {
    let (x, swap) = match r {
        Reduced::Small(x) => (x, false),
        Reduced::Units(u) => {
            // Fold [pi/4, pi/2) onto [0, pi/4] exactly: pi/2 - r.
            let (u, swap) = if u > PIO2_P / 2 {
                (PIO2_P - u, true)
            } else {
                (u, false)
            };
            let x = float::round_pack(false, BIAS + 60, u, float::EXT, 64, RN).f80();
            (x, swap)
        }
    };
    let x2 = ml(x, x);
    let mut ps = F80::ONE;
    let mut pc = F80::ONE;
    for k in (1..=13i64).rev() {
        ps = sb(
            F80::ONE,
            dv(ml(x2, ps), float::from_i64((2 * k) * (2 * k + 1))),
        );
        pc = sb(
            F80::ONE,
            dv(ml(x2, pc), float::from_i64((2 * k - 1) * (2 * k))),
        );
    }
    let s = ml(x, ps);
    if swap {
        (pc, s)
    } else {
        (s, pc)
    }
}

/// atan2(y, x) for finite nonzero operands.
fn atan2_ext(y: F80, x: F80) -> F80 {
    let (ax, ay) = (x.abs(), y.abs());
    let swap = float::compare(ay, ax, true).0 == float::Cmp::Greater;
    let mut t = if swap { dv(ax, ay) } else { dv(ay, ax) };
    // Three argument halvings: atan(t) = 2 atan(t / (1 + sqrt(1 + t^2))).
    for _ in 0..3 {
        let s = float::sqrt(ad(F80::ONE, ml(t, t)), RN).0;
        t = dv(t, ad(F80::ONE, s));
    }
    let t2 = ml(t, t);
    let mut p = dv(F80::ONE, float::from_i64(29));
    for k in (0..14).rev() {
        let c = dv(F80::ONE, float::from_i64(2 * k + 1));
        p = sb(c, ml(t2, p));
    }
    let mut r = ml(ml(t, p), float::from_i64(8));
    let pi = F80::new(false, 0x4000, 0xC90F_DAA2_2168_C235);
    let pio2 = F80::new(false, 0x3FFF, 0xC90F_DAA2_2168_C235);
    if swap {
        r = sb(pio2, r);
    }
    if x.sign() {
        r = sb(pi, r);
    }
    if y.sign() {
        r.negate()
    } else {
        r
    }
}
