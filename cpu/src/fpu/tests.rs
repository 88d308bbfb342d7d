use super::float::{self, Ctx, C0, C1, C2, C3, ES, F80, IE, PE, SF, ZE};
use super::*;
use crate::mem::NullBus;
use crate::state::{CR0_NE, CS};
use iced_x86::code_asm::*;
use iced_x86::Mnemonic as M;

const DATA: u64 = 0x2000;

/// Runs 16-bit real-mode code at 0000:1000 (ending in HLT) with data at 0x2000.
fn run_with(data: &[u8], setup: impl FnOnce(&mut Cpu), f: impl FnOnce(&mut CodeAssembler)) -> Cpu {
    let mut a = CodeAssembler::new(16).unwrap();
    f(&mut a);
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut cpu = Cpu::new(1 << 20, 0).unwrap();
    cpu.write_phys(0x1000, &code);
    cpu.write_phys(DATA, data);
    cpu.load_seg_real(CS, 0);
    cpu.state.rip = 0x1000;
    setup(&mut cpu);
    cpu.run(&mut NullBus, 10_000);
    cpu
}

fn run(data: &[u8], f: impl FnOnce(&mut CodeAssembler)) -> Cpu {
    run_with(data, |_| {}, f)
}

fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn mem(cpu: &Cpu, addr: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    cpu.mem.read(addr, &mut b);
    b
}

fn st(cpu: &Cpu, i: usize) -> F80 {
    cpu.state.fpu.st(i)
}

fn ctl(rc: u16, pc: u16) -> Vec<u8> {
    (0x037F & !0x0F00 | (rc << 10) | (pc << 8))
        .to_le_bytes()
        .to_vec()
}

#[test]
fn power_on_state() {
    let f = FpuState::default();
    assert_eq!(f.control, 0x0040);
    assert_eq!(f.status, 0);
    assert_eq!(f.tag, 0x5555);
    let mut g = f.clone();
    g.init();
    assert_eq!((g.control, g.status, g.tag), (0x037F, 0, 0xFFFF));
}

#[test]
fn one_third_extended() {
    let cpu = run(&[], |a| {
        a.fninit().unwrap();
        a.fld1().unwrap();
        a.fld1().unwrap();
        a.fld1().unwrap();
        a.faddp(st1, st0).unwrap();
        a.fld1().unwrap();
        a.faddp(st1, st0).unwrap(); // 3.0
        a.fdivp(st1, st0).unwrap(); // 1/3
    });
    let v = st(&cpu, 0);
    assert_eq!((v.se, v.sig), (0x3FFD, 0xAAAA_AAAA_AAAA_AAAB));
    assert_ne!(cpu.state.fpu.status & PE, 0);
    assert_ne!(cpu.state.fpu.status & C1, 0, "rounded up");
    assert_eq!(cpu.state.fpu.top(), 7);
}

fn third(rc: u16, pc: u16) -> F80 {
    let mut data = ctl(rc, pc);
    data.extend_from_slice(&3.0f64.to_le_bytes());
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fldcw(word_ptr(0x2000)).unwrap();
        a.fld1().unwrap();
        a.fdiv(qword_ptr(0x2002)).unwrap();
    });
    st(&cpu, 0)
}

#[test]
fn rounding_modes_and_precision() {
    assert_eq!(third(0, 3).sig, 0xAAAA_AAAA_AAAA_AAAB);
    assert_eq!(third(1, 3).sig, 0xAAAA_AAAA_AAAA_AAAA);
    assert_eq!(third(2, 3).sig, 0xAAAA_AAAA_AAAA_AAAB);
    assert_eq!(third(3, 3).sig, 0xAAAA_AAAA_AAAA_AAAA);
    // 53 bits: 1/3 as a double.
    let d = third(0, 2);
    assert_eq!(d.sig, 0xAAAA_AAAA_AAAA_A800);
    assert_eq!(
        f64::from_bits(float::to_ieee(d, float::DBL, Ctx::from_control(0x37F)).0),
        1.0 / 3.0
    );
    // 24 bits.
    assert_eq!(third(0, 0).sig, 0xAAAA_AB00_0000_0000);
    assert_eq!(third(3, 0).sig, 0xAAAA_AA00_0000_0000);
    assert_eq!(third(0, 0).se, 0x3FFD);
}

#[test]
fn rounding_negative() {
    // -1/3 rounded down is larger in magnitude.
    let mut data = ctl(1, 3);
    data.extend_from_slice(&(-3.0f64).to_le_bytes());
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fldcw(word_ptr(0x2000)).unwrap();
        a.fld1().unwrap();
        a.fdiv(qword_ptr(0x2002)).unwrap();
    });
    let v = st(&cpu, 0);
    assert_eq!((v.se, v.sig), (0xBFFD, 0xAAAA_AAAA_AAAA_AAAB));
}

#[test]
fn fild_fistp_i64_extremes() {
    let mut data = Vec::new();
    data.extend_from_slice(&i64::MIN.to_le_bytes());
    data.extend_from_slice(&i64::MAX.to_le_bytes());
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fild(qword_ptr(0x2000)).unwrap();
        a.fild(qword_ptr(0x2008)).unwrap();
        a.fistp(qword_ptr(0x2010)).unwrap();
        a.fistp(qword_ptr(0x2018)).unwrap();
        // 2^63 does not fit: integer indefinite.
        a.fild(qword_ptr(0x2000)).unwrap();
        a.fchs().unwrap();
        a.fistp(qword_ptr(0x2020)).unwrap();
        a.fld1().unwrap();
        a.fistp(word_ptr(0x2028)).unwrap();
    });
    let rd = |o: u64| i64::from_le_bytes(mem(&cpu, DATA + o, 8).try_into().unwrap());
    assert_eq!(rd(0x10), i64::MAX);
    assert_eq!(rd(0x18), i64::MIN);
    assert_eq!(rd(0x20), i64::MIN);
    assert_eq!(mem(&cpu, DATA + 0x28, 2), [1, 0]);
    assert_ne!(cpu.state.fpu.status & IE, 0);
}

#[test]
fn fist_rounding() {
    let mut data = f64s(&[2.5, -2.5, 3.5]);
    data.extend_from_slice(&ctl(3, 3));
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.fistp(word_ptr(0x2100)).unwrap();
        a.fld(qword_ptr(0x2008)).unwrap();
        a.fistp(word_ptr(0x2102)).unwrap();
        a.fld(qword_ptr(0x2010)).unwrap();
        a.fistp(word_ptr(0x2104)).unwrap();
        a.fldcw(word_ptr(0x2018)).unwrap();
        a.fld(qword_ptr(0x2010)).unwrap();
        a.fistp(dword_ptr(0x2106)).unwrap();
    });
    let m = mem(&cpu, DATA + 0x100, 10);
    assert_eq!(i16::from_le_bytes([m[0], m[1]]), 2);
    assert_eq!(i16::from_le_bytes([m[2], m[3]]), -2);
    assert_eq!(i16::from_le_bytes([m[4], m[5]]), 4);
    assert_eq!(i32::from_le_bytes([m[6], m[7], m[8], m[9]]), 3);
}

#[test]
fn bcd_round_trip() {
    let mut data = vec![0u8; 10];
    // -123456789012345678
    let digits = [0x78, 0x56, 0x34, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x80];
    data[..10].copy_from_slice(&digits);
    data.extend_from_slice(&1e18f64.to_le_bytes());
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fbld(tword_ptr(0x2000)).unwrap();
        a.fbstp(tword_ptr(0x2100)).unwrap();
        a.fbld(tword_ptr(0x2000)).unwrap();
        a.fistp(qword_ptr(0x2110)).unwrap();
        a.fld(qword_ptr(0x200A)).unwrap();
        a.fbstp(tword_ptr(0x2120)).unwrap();
    });
    assert_eq!(mem(&cpu, DATA + 0x100, 10), digits);
    assert_eq!(
        i64::from_le_bytes(mem(&cpu, DATA + 0x110, 8).try_into().unwrap()),
        -123_456_789_012_345_678
    );
    assert_eq!(
        mem(&cpu, DATA + 0x120, 10),
        [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF]
    );
}

#[test]
fn stack_overflow_gives_indefinite() {
    let cpu = run(&[], |a| {
        a.fninit().unwrap();
        for _ in 0..9 {
            a.fld1().unwrap();
        }
    });
    let f = &cpu.state.fpu;
    assert_eq!(st(&cpu, 0), F80::INDEFINITE);
    assert_eq!(f.status & (IE | SF | C1), IE | SF | C1);
    assert_eq!(st(&cpu, 1), F80::ONE);
}

#[test]
fn stack_underflow() {
    let cpu = run(&[], |a| {
        a.fninit().unwrap();
        a.fld1().unwrap();
        a.fadd_2(st0, st3).unwrap();
    });
    assert_eq!(st(&cpu, 0), F80::INDEFINITE);
    assert_eq!(cpu.state.fpu.status & (IE | SF | C1), IE | SF);
}

fn fcom_sw(x: f64, y: f64) -> u16 {
    let cpu = run(&f64s(&[x, y]), |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2008)).unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.fucom(st0, st1).unwrap();
        a.fnstsw(ax).unwrap();
    });
    cpu.state.reg16(EAX) & (C0 | C1 | C2 | C3)
}

#[test]
fn fcom_condition_codes() {
    assert_eq!(fcom_sw(1.0, 2.0), C0);
    assert_eq!(fcom_sw(2.0, 1.0), 0);
    assert_eq!(fcom_sw(2.0, 2.0), C3);
    assert_eq!(fcom_sw(f64::NAN, 2.0), C3 | C2 | C0);
    // FCOM (signaling) with a QNaN raises IE; FUCOM does not.
    let cpu = run(&f64s(&[f64::NAN, 1.0]), |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.fucom(st0, st0).unwrap();
        a.fnstsw(ax).unwrap();
        a.mov(bx, ax).unwrap();
        a.fcom(qword_ptr(0x2008)).unwrap();
        a.fstsw(ax).unwrap();
    });
    assert_eq!(cpu.state.reg16(crate::state::EBX) & IE, 0);
    assert_ne!(cpu.state.reg16(EAX) & IE, 0);
    assert_eq!(cpu.state.reg16(EAX) & 0x3800, 7 << 11);
}

#[test]
fn fcomi_flags() {
    use crate::flags::{CF, PF, ZF};
    let go = |x: f64, y: f64| {
        let cpu = run(&f64s(&[x, y]), |a| {
            a.fninit().unwrap();
            a.fld(qword_ptr(0x2008)).unwrap();
            a.fld(qword_ptr(0x2000)).unwrap();
            a.fucomip(st0, st1).unwrap();
        });
        assert_eq!(cpu.state.fpu.top(), 7);
        cpu.state.flags.get() & (CF | PF | ZF | crate::flags::OF | crate::flags::SF)
    };
    assert_eq!(go(1.0, 2.0), CF);
    assert_eq!(go(3.0, 2.0), 0);
    assert_eq!(go(2.0, 2.0), ZF);
    assert_eq!(go(f64::NAN, 2.0), ZF | PF | CF);
}

#[test]
fn fcmov() {
    let cpu = run(&f64s(&[5.0, 7.0]), |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2008)).unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.stc().unwrap();
        a.fcmovnb(st0, st1).unwrap(); // not taken
        a.fcmovb(st0, st1).unwrap(); // taken
    });
    assert_eq!(
        float::to_ieee(st(&cpu, 0), float::DBL, Ctx::from_control(0x37F)).0,
        7.0f64.to_bits()
    );
}

#[test]
fn fprem_large_operands() {
    // 1e300 mod 3: partial remainders until C2 clears.
    let cpu = run(&f64s(&[3.0, 1e300]), |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.fld(qword_ptr(0x2008)).unwrap();
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        a.fprem().unwrap();
        a.fnstsw(ax).unwrap();
        a.test(ax, 0x400).unwrap();
        a.jnz(l).unwrap();
    });
    // 1e300 as a double is an integer; its residue mod 3 computed exactly.
    let (_, e, m) = float::from_ieee(1e300f64.to_bits(), 11, 52).0.unpack();
    let mut r: u128 = 0;
    let mut v = m as u128;
    // value = m * 2^(e - BIAS - 63)
    let mut sh = e - float::BIAS - 63;
    r = (r + v % 3) % 3;
    while sh > 0 {
        r = (r * 2) % 3;
        sh -= 1;
    }
    v = r;
    let got = float::to_int(st(&cpu, 0), 64, Ctx::from_control(0x37F)).0;
    assert_eq!(got as u128, v);
    assert_eq!(cpu.state.fpu.status & C2, 0);
}

#[test]
fn fprem1_quotient_bits() {
    let cpu = run(&f64s(&[3.0, 17.0]), |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.fld(qword_ptr(0x2008)).unwrap();
        a.fprem1().unwrap(); // 17 = 6*3 - 1
    });
    let ctx = Ctx::from_control(0x37F);
    assert_eq!(float::to_int(st(&cpu, 0), 32, ctx).0, -1);
    // q = 6 = 110b: C0 = q2 = 1, C3 = q1 = 1, C1 = q0 = 0.
    assert_eq!(cpu.state.fpu.status & (C0 | C1 | C2 | C3), C0 | C3);
}

#[test]
fn fsqrt_two() {
    let cpu = run(&[], |a| {
        a.fninit().unwrap();
        a.fld1().unwrap();
        a.fld1().unwrap();
        a.faddp(st1, st0).unwrap();
        a.fsqrt().unwrap();
    });
    let v = st(&cpu, 0);
    assert_eq!((v.se, v.sig), (0x3FFF, 0xB504_F333_F9DE_6484));
    assert_ne!(cpu.state.fpu.status & PE, 0);
}

#[test]
fn fxam_classes() {
    let xam = |bytes: [u8; 10], empty: bool| {
        let cpu = run(&bytes, |a| {
            a.fninit().unwrap();
            if !empty {
                a.fld(tword_ptr(0x2000)).unwrap();
            }
            a.fxam().unwrap();
            a.fnstsw(ax).unwrap();
        });
        cpu.state.reg16(EAX) & (C0 | C1 | C2 | C3)
    };
    assert_eq!(xam(F80::ONE.to_bytes(), false), C2);
    assert_eq!(xam(F80::ONE.negate().to_bytes(), false), C2 | C1);
    assert_eq!(xam(F80::ZERO.to_bytes(), false), C3);
    assert_eq!(xam(F80::inf(false).to_bytes(), false), C2 | C0);
    assert_eq!(xam(F80::INDEFINITE.to_bytes(), false), C0 | C1);
    assert_eq!(xam(F80::new(false, 0, 1).to_bytes(), false), C3 | C2);
    assert_eq!(xam(F80::new(false, 5, 1).to_bytes(), false), 0); // unnormal
    assert_eq!(xam([0; 10], true) & (C0 | C2 | C3), C3 | C0);
}

#[test]
fn denormals() {
    // Smallest double denormal loads exactly (DE), and halving the smallest extended
    // normal gives an extended denormal with UE masked only when inexact.
    let data = f64s(&[f64::from_bits(1), 0.5]);
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
    });
    let v = st(&cpu, 0);
    assert_eq!((v.se, v.sig), ((16383 - 1074) as u16, 1 << 63));
    assert_ne!(cpu.state.fpu.status & float::DE, 0);
    let ctx = Ctx::from_control(0x37F);
    let min = F80::new(false, 1, 1 << 63);
    let (h, fl) = float::mul(min, F80::new(false, 0x3FFE, 1 << 63), ctx);
    assert_eq!((h.se, h.sig, fl & (float::UE | PE)), (0, 1 << 62, 0));
    let odd = F80::new(false, 1, (1 << 63) | 1);
    let (h, fl) = float::mul(odd, F80::new(false, 0x3FFE, 1 << 63), ctx);
    assert_eq!((h.se, h.sig), (0, 1 << 62)); // ties to even
    assert_eq!(fl & (float::UE | PE), float::UE | PE);
    // Denormal operand in arithmetic raises DE.
    let (_, fl) = float::add(h, F80::ONE, false, ctx);
    assert_ne!(fl & float::DE, 0);
    // Storing a tiny value to a double underflows to a double denormal.
    let (b, fl) = float::to_ieee(F80::new(false, 16383 - 1074, 1 << 63), float::DBL, ctx);
    assert_eq!((b, fl), (1, 0));
}

#[test]
fn unmasked_zero_divide_raises_mf() {
    // IVT[16] -> 0000:3000, where the handler stores a marker, clears and returns
    // past the faulting FWAIT-checking instruction is not needed: it just halts.
    let mut data = vec![0u8; 0];
    data.extend_from_slice(&0x037Bu16.to_le_bytes()); // ZE unmasked
    let cpu = run_with(
        &data,
        |cpu| {
            cpu.state.cr0 |= CR0_NE;
            cpu.write_phys(16 * 4, &[0x00, 0x30, 0x00, 0x00]);
            let mut h = CodeAssembler::new(16).unwrap();
            h.mov(word_ptr(0x2100), 0x1234).unwrap();
            h.fnstsw(word_ptr(0x2102)).unwrap();
            h.fnclex().unwrap();
            h.hlt().unwrap();
            let code = h.assemble(0x3000).unwrap();
            cpu.write_phys(0x3000, &code);
        },
        |a| {
            a.fninit().unwrap();
            a.fldcw(word_ptr(0x2000)).unwrap();
            a.fld1().unwrap();
            a.fldz().unwrap();
            a.fdivp(st1, st0).unwrap(); // 1/0: ZE unmasked, nothing stored
            a.mov(word_ptr(0x2104), 0x5555).unwrap();
            a.fld1().unwrap(); // #MF here
            a.mov(word_ptr(0x2106), 0x6666).unwrap();
        },
    );
    let m = mem(&cpu, DATA + 0x100, 8);
    assert_eq!(&m[0..2], &[0x34, 0x12]);
    let sw = u16::from_le_bytes([m[2], m[3]]);
    assert_eq!(sw & (ZE | ES | 0x8000), ZE | ES | 0x8000);
    assert_eq!(&m[4..6], &[0x55, 0x55]);
    assert_eq!(&m[6..8], &[0, 0]);
    // The division stored nothing and did not pop.
    assert_eq!(cpu.state.fpu.top(), 6);
    assert_eq!(st(&cpu, 0), F80::ZERO);
    assert_eq!(cpu.state.fpu.status & ES, 0);
}

#[test]
fn fwait_delivers_pending() {
    let cpu = run_with(
        &0x037Bu16.to_le_bytes(),
        |cpu| {
            cpu.state.cr0 |= CR0_NE;
            cpu.write_phys(16 * 4, &[0x00, 0x30, 0x00, 0x00]);
            cpu.write_phys(0x3000, &[0xC6, 0x06, 0x00, 0x21, 0x77, 0xF4]); // mov byte [2100],77; hlt
        },
        |a| {
            a.fninit().unwrap();
            a.fldcw(word_ptr(0x2000)).unwrap();
            a.fldz().unwrap();
            a.fld1().unwrap();
            a.fdivrp(st1, st0).unwrap(); // 1/0
            a.fnstsw(ax).unwrap(); // no wait: fine
            a.wait().unwrap(); // #MF
            a.mov(byte_ptr(0x2101), 0x88).unwrap();
        },
    );
    assert_eq!(mem(&cpu, DATA + 0x100, 2), [0x77, 0]);
}

#[test]
fn waiting_form_decodes_as_one_instruction() {
    // 9B DF E0 (FSTSW AX) and 9B DB E3 (FINIT).
    let cpu = run(&[], |a| {
        a.finit().unwrap();
        a.fld1().unwrap();
        a.fstsw(ax).unwrap();
    });
    assert_eq!(cpu.state.reg16(EAX) & 0x3800, 7 << 11);
}

#[test]
fn fsave_frstor_real_round_trip() {
    let data = f64s(&[1.5, -2.25]);
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.fld(qword_ptr(0x2008)).unwrap();
        a.fldz().unwrap();
        a.fnsave(ptr(0x2100)).unwrap(); // 94 bytes (16-bit real layout), then init
        a.fld1().unwrap();
        a.frstor(ptr(0x2100)).unwrap();
        a.fnsave(ptr(0x2200)).unwrap();
        a.frstor(ptr(0x2200)).unwrap();
    });
    let s1 = mem(&cpu, DATA + 0x100, 94);
    let s2 = mem(&cpu, DATA + 0x200, 94);
    assert_eq!(s1, s2);
    let f = &cpu.state.fpu;
    assert_eq!(f.top(), 5);
    assert_eq!(st(&cpu, 0), F80::ZERO);
    // Tag word: ST0 zero (01), ST1 valid, ST2 valid, rest empty; physical 5,6,7.
    assert_eq!(
        u16::from_le_bytes([s1[4], s1[5]]),
        0x07FF & !(3 << 10) | (1 << 10)
    );
    assert_eq!(f.tag, 0x07FF & !(3 << 10) | (1 << 10));
    // Real-mode layout: FIP low word = offset of the last non-control instruction, FOP.
    let w4 = u16::from_le_bytes([s1[8], s1[9]]);
    assert_eq!(w4 & 0x7FF, 0x1EE); // FLDZ = D9 EE
                                   // 10-byte registers follow the 14-byte environment.
    assert_eq!(
        &s1[14 + 10..14 + 20],
        &F80::from_bytes(&{
            let mut b = [0u8; 10];
            b.copy_from_slice(&float::from_ieee((-2.25f64).to_bits(), 11, 52).0.to_bytes());
            b
        })
        .to_bytes()
    );
}

#[test]
fn protected_layouts_round_trip() {
    let mut f = FpuState::default();
    f.init();
    f.push(F80::ONE);
    f.push(F80::INDEFINITE);
    f.control = 0x0262;
    f.status |= float::ZE | C3;
    f.fip = 0x1234_5678;
    f.fcs = 0x0008;
    f.fop = 0x5EE;
    f.fdp = 0x9ABC_DEF0;
    f.fds = 0x0010;
    for size32 in [false, true] {
        let mut buf = [0u8; 108];
        let n = env::store_state(&f, size32, true, &mut buf);
        assert_eq!(n, if size32 { 108 } else { 94 });
        let mut g = FpuState::default();
        env::load_state(&mut g, size32, true, &buf[..n]);
        assert_eq!(g.regs[6], f.regs[6]);
        assert_eq!(g.regs[7], f.regs[7]);
        assert_eq!(g.tag, f.tag);
        assert_eq!(g.control, f.control | 0x40);
        assert_eq!(g.fcs, 8);
        assert_eq!(g.fds, 0x10);
        if size32 {
            assert_eq!(&buf[0..4], &[0x62, 0x02, 0xFF, 0xFF]);
            assert_eq!(g.fip, f.fip);
            assert_eq!(g.fdp, f.fdp);
            assert_eq!(g.fop, f.fop);
            assert_eq!(
                u32::from_le_bytes(buf[16..20].try_into().unwrap()),
                0x05EE_0008
            );
        } else {
            assert_eq!(g.fip, 0x5678);
        }
        // ZE is unmasked in 0x0262: ES is pending again after the load.
        assert_ne!(g.status & ES, 0);
    }
    // Real layout, 32-bit: linear pointers split around FOP.
    let mut r = f.clone();
    r.fcs = 0x100;
    r.fip = 0x0010;
    let mut buf = [0u8; 108];
    env::store_env(&r, true, false, &mut buf);
    assert_eq!(
        u32::from_le_bytes(buf[12..16].try_into().unwrap()),
        0xFFFF_1010
    );
    assert_eq!(u32::from_le_bytes(buf[16..20].try_into().unwrap()), 0x5EE);
}

#[test]
fn fstenv_fldenv() {
    let cpu = run(&[], |a| {
        a.fninit().unwrap();
        a.fld1().unwrap();
        a.fldz().unwrap();
        a.fdivp(st1, st0).unwrap(); // ZE (masked), result inf
        a.fnstenv(ptr(0x2100)).unwrap();
        a.fninit().unwrap();
        a.fldenv(ptr(0x2100)).unwrap();
        a.fnstenv(ptr(0x2200)).unwrap();
    });
    let e1 = mem(&cpu, DATA + 0x100, 14);
    let e2 = mem(&cpu, DATA + 0x200, 14);
    // FNSTENV masks everything afterwards: the second image has the same CW (all masked
    // already), SW with ZE, tag with one "special" register.
    assert_eq!(e1, e2);
    assert_eq!(u16::from_le_bytes([e1[0], e1[1]]), 0x037F);
    assert_ne!(u16::from_le_bytes([e1[2], e1[3]]) & ZE, 0);
    assert_eq!(u16::from_le_bytes([e1[4], e1[5]]), !(3 << 14) | (2 << 14));
}

#[test]
fn constants_follow_rc() {
    let cpu = run(&ctl(1, 3), |a| {
        a.fninit().unwrap();
        a.fldpi().unwrap();
        a.fldcw(word_ptr(0x2000)).unwrap();
        a.fldpi().unwrap();
        a.fldl2t().unwrap();
    });
    assert_eq!(st(&cpu, 2).sig, 0xC90F_DAA2_2168_C235);
    assert_eq!(st(&cpu, 1).sig, 0xC90F_DAA2_2168_C234);
    assert_eq!(st(&cpu, 0).sig, 0xD49A_784B_CD1B_8AFE);
}

#[test]
fn fscale_fxtract_frndint() {
    let ctx = Ctx::from_control(0x37F);
    let cpu = run(&f64s(&[10.0, 3.7, -2.5]), |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2008)).unwrap(); // 3.7
        a.fld1().unwrap();
        a.fscale().unwrap(); // 1 * 2^3 = 8
        a.fstp(qword_ptr(0x2100)).unwrap();
        a.fstp(st0).unwrap();
        a.fld(qword_ptr(0x2000)).unwrap();
        a.fxtract().unwrap(); // st0 = 1.25, st1 = 3
        a.fld(qword_ptr(0x2010)).unwrap();
        a.frndint().unwrap(); // -2
    });
    assert_eq!(mem(&cpu, DATA + 0x100, 8), 8.0f64.to_le_bytes());
    assert_eq!(float::to_int(st(&cpu, 0), 32, ctx).0, -2);
    assert_eq!(st(&cpu, 1), float::from_ieee(1.25f64.to_bits(), 11, 52).0);
    assert_eq!(st(&cpu, 2), float::from_i64(3));
}

#[test]
fn store_rounding_and_overflow() {
    let ctx = Ctx::from_control(0x37F);
    // Extended 1 + 2^-30 to single: inexact, rounds to 1.
    let v = F80::new(false, 0x3FFF, (1 << 63) | (1 << 33));
    let (b, fl) = float::to_ieee(v, float::SGL, ctx);
    assert_eq!((b, fl & PE), (1.0f32.to_bits() as u64, PE));
    // Huge value to double: masked overflow → inf, OE | PE.
    let big = F80::new(false, 0x7000, 1 << 63);
    let (b, fl) = float::to_ieee(big, float::DBL, ctx);
    assert_eq!(b, f64::INFINITY.to_bits());
    assert_eq!(fl & (float::OE | PE), float::OE | PE);
    // Toward zero: largest finite.
    let (b, _) = float::to_ieee(big, float::DBL, Ctx::from_control(0x0F7F));
    assert_eq!(b, f64::MAX.to_bits());
    // SNaN to single: IE, quieted.
    let snan = F80::new(false, 0x7FFF, (1 << 63) | 1 << 40);
    let (b, fl) = float::to_ieee(snan, float::SGL, ctx);
    assert_eq!((b, fl), (0x7FC0_0001, IE));
}

#[test]
fn nan_propagation() {
    let ctx = Ctx::from_control(0x37F);
    let q1 = F80::new(false, 0x7FFF, 0xC000_0000_0000_0001);
    let q2 = F80::new(true, 0x7FFF, 0xC000_0000_0000_0002);
    let s3 = F80::new(false, 0x7FFF, 0x8000_0000_0000_0003);
    assert_eq!(float::add(q1, q2, false, ctx), (q2, 0));
    assert_eq!(float::add(s3, q1, false, ctx), (q1, IE));
    assert_eq!(float::mul(s3, F80::ONE, ctx), (s3.quiet(), IE));
    assert_eq!(float::div(F80::ZERO, F80::ZERO, ctx), (F80::INDEFINITE, IE));
    assert_eq!(
        float::add(F80::inf(false), F80::inf(true), false, ctx),
        (F80::INDEFINITE, IE)
    );
    // Pseudo-infinity is an unsupported (invalid) operand.
    let pinf = F80::new(false, 0x7FFF, 0);
    assert_eq!(
        float::add(pinf, F80::ONE, false, ctx),
        (F80::INDEFINITE, IE)
    );
    assert_eq!(float::sqrt(F80::ONE.negate(), ctx), (F80::INDEFINITE, IE));
}

/// Cross-check add/sub/mul/div at 64-bit precision against rustc_apfloat's x87 format.
#[test]
fn differential_vs_apfloat() {
    use rustc_apfloat::ieee::X87DoubleExtended as X;
    use rustc_apfloat::{Float, Round};
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rounds = [
        (0u16, Round::NearestTiesToEven),
        (1, Round::TowardNegative),
        (2, Round::TowardPositive),
        (3, Round::TowardZero),
    ];
    for n in 0..20_000 {
        let mk = |r: u64, e: u64| {
            let exp = 0x3FFF - 40 + (e % 80) as u16;
            F80::new(e & 0x100 != 0, exp, r | (1 << 63))
        };
        let (r1, r2, r3) = (rnd(), rnd(), rnd());
        let mut a = mk(r1, r3);
        let mut b = mk(r2, r3 >> 16);
        if n % 7 == 0 {
            // Nearly equal operands for cancellation.
            b = F80::new(!a.sign(), a.exp(), a.sig ^ (r2 & 0xFFFF));
        }
        if n % 11 == 0 {
            a = F80::new(a.sign(), a.exp(), a.sig & !0xFFFF_FFFF);
        }
        let (rc, round) = rounds[(r3 >> 40) as usize % 4];
        let ctx = Ctx::from_control(0x037F | (rc << 10));
        let xa = X::from_bits(((a.se as u128) << 64) | a.sig as u128);
        let xb = X::from_bits(((b.se as u128) << 64) | b.sig as u128);
        let check = |name: &str, ours: (F80, u16), theirs: rustc_apfloat::StatusAnd<X>| {
            let t = theirs.value.to_bits();
            let o = ((ours.0.se as u128) << 64) | ours.0.sig as u128;
            assert_eq!(o, t, "{name} {a:?} {b:?} rc={rc}");
            let inexact = theirs.status.contains(rustc_apfloat::Status::INEXACT);
            assert_eq!(ours.1 & PE != 0, inexact, "{name} PE {a:?} {b:?}");
        };
        check("add", float::add(a, b, false, ctx), xa.add_r(xb, round));
        check("sub", float::add(a, b, true, ctx), xa.sub_r(xb, round));
        check("mul", float::mul(a, b, ctx), xa.mul_r(xb, round));
        check("div", float::div(a, b, ctx), xa.div_r(xb, round));
    }
}

#[test]
fn sqrt_exact_squares_and_rounding() {
    let ctx = Ctx::from_control(0x37F);
    for k in 1u64..2000 {
        let sq = float::from_i64((k * k) as i64);
        let (r, fl) = float::sqrt(sq, ctx);
        assert_eq!((r, fl & PE), (float::from_i64(k as i64), 0));
        // sqrt(x)^2 brackets x (result is correctly rounded to nearest: check via the
        // neighbours' squares in exact arithmetic).
        let x = float::from_i64((k * 7919 + 3) as i64);
        let (r, _) = float::sqrt(x, ctx);
        let (_, e, m) = r.unpack();
        let _ = e;
        // r = m * 2^(e-B-63) is correctly rounded to nearest iff
        // (m - 1/2)^2 <= X <= (m + 1/2)^2 with X = x * 2^(2(63-(e-B))), i.e.
        // m^2 - m < X <= m^2 + m.
        let sh = 2 * (63 - (e - float::BIAS)) as u32;
        let xv = (k * 7919 + 3) as u128;
        let m = m as u128;
        let target = xv << sh;
        assert!(m * m - m < target && target <= m * m + m, "sqrt {xv}");
    }
}

#[test]
fn transcendental_specials() {
    let ctx = Ctx::from_control(0x37F);
    // Out-of-range argument: C2 set, operand unchanged.
    let big = F80::new(false, 0x3FFF + 63, 1 << 63);
    let mut bytes = big.to_bytes().to_vec();
    bytes.extend_from_slice(&0.5f64.to_le_bytes());
    let cpu = run(&bytes, |a| {
        a.fninit().unwrap();
        a.fld(tword_ptr(0x2000)).unwrap();
        a.fsin().unwrap();
        a.fnstsw(word_ptr(0x2100)).unwrap();
        a.fld(qword_ptr(0x200A)).unwrap();
        a.fsincos().unwrap();
    });
    let sw = u16::from_le_bytes(mem(&cpu, DATA + 0x100, 2).try_into().unwrap());
    assert_ne!(sw & C2, 0);
    assert_eq!(st(&cpu, 2), big);
    let d = |v: F80| f64::from_bits(float::to_ieee(v, float::DBL, ctx).0);
    assert!((d(st(&cpu, 0)) - 0.5f64.cos()).abs() < 1e-15);
    assert!((d(st(&cpu, 1)) - 0.5f64.sin()).abs() < 1e-15);
    // FYL2X of 8 with ST1 = 1 is 3; log2(0) raises ZE.
    let (r, _) = transcendental::fyl2x(float::from_i64(8), F80::ONE, ctx);
    assert_eq!(r, float::from_i64(3));
    let (r, fl) = transcendental::fyl2x(F80::ZERO, F80::ONE, ctx);
    assert_eq!((r, fl & ZE), (F80::inf(true), ZE));
    let (r, _) = transcendental::f2xm1(F80::inf(true), ctx);
    assert_eq!(r, F80::ONE.negate());
    // FPATAN(1, 1) = pi/4.
    let (r, _) = transcendental::fpatan(F80::ONE, F80::ONE, ctx);
    assert!((d(r) - std::f64::consts::FRAC_PI_4).abs() < 1e-15);
}

#[test]
fn em_or_ts_gives_nm() {
    let cpu = run_with(
        &[],
        |cpu| {
            cpu.state.cr0 |= crate::state::CR0_EM;
            // IVT[7] -> 0000:3000: mov byte [2100],7; hlt
            cpu.write_phys(7 * 4, &[0x00, 0x30, 0x00, 0x00]);
            cpu.write_phys(0x3000, &[0xC6, 0x06, 0x00, 0x21, 0x07, 0xF4]);
        },
        |a| {
            a.fld1().unwrap();
        },
    );
    assert_eq!(mem(&cpu, DATA + 0x100, 1), [7]);
}

#[test]
fn pointers_and_opcode() {
    let cpu = run(&f64s(&[1.0]), |a| {
        a.fninit().unwrap();
        a.mov(bx, 0x1FF0).unwrap();
        a.xor(si, si).unwrap();
        a.fld(qword_ptr(bx + si + 0x10)).unwrap(); // DD 40 10
        a.fnstenv(ptr(0x2100)).unwrap();
        a.mov(eax, 0x1000).unwrap();
        a.mov(ecx, 0x800).unwrap();
        a.fadd(dword_ptr(eax + ecx * 2 + 0x10)).unwrap(); // 67 D8 44 48 10
        a.fnstenv(ptr(0x2200)).unwrap();
        a.fxch(st0, st1).unwrap(); // D9 C9
        a.fnstenv(ptr(0x2300)).unwrap();
    });
    let w = |o: u64, i: u64| u16::from_le_bytes(mem(&cpu, DATA + o + 2 * i, 2).try_into().unwrap());
    assert_eq!(w(0x100, 4) & 0x7FF, 0x540);
    assert_eq!(w(0x100, 5), 0x2000); // FDP
    assert_eq!(w(0x200, 4) & 0x7FF, 0x044);
    assert_eq!(w(0x200, 5), 0x2010);
    assert_eq!(w(0x300, 4) & 0x7FF, 0x1C9);
    // FIP points at the FXCH (a real-mode linear address; CS = 0).
    assert!(w(0x300, 3) > 0x1000);
}

#[test]
fn fyl2x_underflow_pops() {
    let cpu = run(&[], |a| {
        a.fninit().unwrap();
        a.fld1().unwrap();
        a.fyl2x().unwrap();
    });
    assert_eq!(cpu.state.fpu.top(), 0);
    assert_eq!(st(&cpu, 0), F80::INDEFINITE);
}

fn as_f64(v: F80) -> f64 {
    f64::from_bits(float::to_ieee(v, float::DBL, Ctx::from_control(0x37F)).0)
}

#[test]
fn arithmetic_forms() {
    let mut data = f64s(&[10.0, 4.0]);
    data.extend_from_slice(&3i16.to_le_bytes()); // 0x2010
    data.extend_from_slice(&2.0f32.to_le_bytes()); // 0x2012
    let cpu = run(&data, |a| {
        a.fninit().unwrap();
        a.fld(qword_ptr(0x2008)).unwrap(); // 4
        a.fld(qword_ptr(0x2000)).unwrap(); // 10, 4
        a.fsub_2(st0, st1).unwrap(); // 6, 4
        a.fsubr_2(st1, st0).unwrap(); // 6, 2   (st1 = st0 - st1)
        a.fdiv_2(st1, st0).unwrap(); // 6, 1/3
        a.fsubr(qword_ptr(0x2000)).unwrap(); // 4, 1/3
        a.fisubr(word_ptr(0x2010)).unwrap(); // -1, 1/3
        a.fimul(word_ptr(0x2010)).unwrap(); // -3, 1/3
        a.fdivr(dword_ptr(0x2012)).unwrap(); // -2/3, 1/3
        a.faddp(st1, st0).unwrap(); // -1/3
        a.fld(st0).unwrap(); // -1/3, -1/3
        a.fmulp(st1, st0).unwrap(); // 1/9
        a.fld1().unwrap();
        a.fdivrp(st1, st0).unwrap(); // 9 (st1 = st0 / st1)
        a.fld1().unwrap();
        a.fsubp(st1, st0).unwrap(); // 8
        a.fst(dword_ptr(0x2100)).unwrap();
        a.fld1().unwrap();
        a.fst(st2).unwrap(); // 1, 8, 1
        a.fcompp().unwrap(); // 1 < 8
        a.fnstsw(ax).unwrap();
    });
    assert_eq!(mem(&cpu, DATA + 0x100, 4), 8.0f32.to_le_bytes());
    assert_eq!(cpu.state.reg16(EAX) & (C0 | C2 | C3), C0);
    // FST ST(2) filled an empty slot; FCOMPP popped two.
    assert_eq!(cpu.state.fpu.top(), 0);
    let v = as_f64(st(&cpu, 0));
    assert!((v - 1.0).abs() < 1e-15, "{v}");
}

#[test]
fn zero_signs_and_stack_ops() {
    let ctx = Ctx::from_control(0x37F);
    let down = Ctx::from_control(0x77F);
    assert_eq!(float::add(F80::ONE, F80::ONE, true, ctx).0, F80::ZERO);
    assert_eq!(
        float::add(F80::ONE, F80::ONE, true, down).0,
        F80::zero(true)
    );
    assert_eq!(
        float::add(F80::zero(true), F80::zero(true), false, ctx).0,
        F80::zero(true)
    );
    let cpu = run(&[], |a| {
        a.fninit().unwrap();
        a.fld1().unwrap();
        a.fldz().unwrap();
        a.fincstp().unwrap();
        a.ffree(st0).unwrap();
        a.fdecstp().unwrap();
        a.fxch(st0, st1).unwrap(); // st1 (phys 7... ) was freed: underflow → indefinite
    });
    let f = &cpu.state.fpu;
    assert_eq!(f.top(), 6);
    assert_ne!(f.status & SF, 0);
    assert_eq!(st(&cpu, 0), F80::INDEFINITE);
    assert_eq!(st(&cpu, 1), F80::ZERO);
}

#[test]
fn unmasked_overflow_adjusts_exponent() {
    // OE unmasked: the register result carries the exponent minus 24576.
    let ctx = Ctx::from_control(0x037F & !float::OE);
    let big = F80::new(false, 0x7FFE, 1 << 63);
    let (r, fl) = float::mul(big, big, ctx);
    assert_eq!(fl & float::OE, float::OE);
    assert_eq!(r.exp() as i32, 0x7FFE + 0x7FFE - 0x3FFF + 1 - 24576 - 1);
    // UE unmasked: plus 24576.
    let ctx = Ctx::from_control(0x037F & !float::UE);
    let tiny = F80::new(false, 1, 1 << 63);
    let (r, fl) = float::mul(tiny, tiny, ctx);
    assert_eq!(fl & float::UE, float::UE);
    assert_eq!(r.exp() as i32, 1 + 1 - 0x3FFF + 24576);
    // Masked overflow: infinity with C1 set.
    let (r, fl) = float::mul(big, big, Ctx::from_control(0x37F));
    assert_eq!(
        (r, fl & (float::OE | PE | C1)),
        (F80::inf(false), float::OE | PE | C1)
    );
}

#[test]
fn fsin_reduction_like_p6() {
    let ctx = Ctx::from_control(0x37F);
    // sin(pi rounded to 64 bits): the P6 reduces with a 66-bit pi.
    let pi = F80::new(false, 0x4000, 0xC90F_DAA2_2168_C235);
    let (s, _, _) = transcendental::trig(M::Fsin, pi, ctx);
    // pi64 - pi66 = (0xC90FDAA22168C2350 - 0xC90FDAA22168C234C) * 2^-66 = 2^-64.
    assert_eq!(as_f64(s), -(2f64.powi(-64)));
    // Large argument: 2^62 reduced exactly; compare against a slow exact reference.
    let x = F80::new(false, 0x3FFF + 62, 1 << 63);
    let (s, _, _) = transcendental::trig(M::Fsin, x, ctx);
    assert!(as_f64(s).abs() <= 1.0);
    let (c, _, _) = transcendental::trig(M::Fcos, F80::ONE, ctx);
    assert!((as_f64(c) - 1f64.cos()).abs() < 1e-16);
    let (t, one, _) = transcendental::trig(M::Fptan, float::from_i64(-2), ctx);
    assert_eq!(one, Some(F80::ONE));
    assert!((as_f64(t) - (-2f64).tan()).abs() < 1e-14);
}

#[test]
fn fpatan_special_angles_are_extended() {
    let ctx = Ctx::from_control(0x37F);
    let (r, fl) = transcendental::fpatan(F80::zero(true), F80::ONE, ctx);
    assert_eq!((r.se, r.sig, fl & PE), (0x3FFF, 0xC90F_DAA2_2168_C235, PE));
    let (r, _) = transcendental::fpatan(F80::inf(true), F80::zero(true), ctx);
    assert_eq!((r.se, r.sig), (0xC000, 0xC90F_DAA2_2168_C235));
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Random register value biased toward the interesting encodings.
    fn f80(&mut self) -> F80 {
        let r = self.next();
        let sig = match r % 6 {
            0 => 0,
            1 => 1 << 63,
            2 => self.next() & !(1 << 63),
            _ => self.next() | (1 << 63),
        };
        let exp = match (r >> 8) % 6 {
            0 => 0,
            1 => 0x7FFF,
            2 => 0x3FFF,
            3 => 1,
            4 => 0x7FFE,
            _ => self.next() as u16,
        };
        F80::new(r & (1 << 20) != 0, exp, sig)
    }
}

/// Every helper on arbitrary encodings and control words: no panics.
#[test]
fn fuzz_float_helpers() {
    let mut g = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..50_000 {
        let (a, b) = (g.f80(), g.f80());
        let ctx = Ctx::from_control(g.next() as u16);
        let _ = float::add(a, b, false, ctx);
        let _ = float::add(a, b, true, ctx);
        let _ = float::mul(a, b, ctx);
        let _ = float::div(a, b, ctx);
        let _ = float::sqrt(a, ctx);
        let _ = float::prem(a, b, false, ctx);
        let _ = float::prem(a, b, true, ctx);
        let _ = float::round_to_int(a, ctx);
        let _ = float::compare(a, b, false);
        for bits in [16, 32, 64] {
            let _ = float::to_int(a, bits, ctx);
        }
        let _ = float::to_ieee(a, float::SGL, ctx);
        let _ = float::to_ieee(a, float::DBL, ctx);
        let _ = f80_to_bcd(a, ctx);
        let _ = transcendental::fscale(a, b, ctx);
        let _ = transcendental::fyl2x(a, b, ctx);
        let _ = transcendental::fyl2xp1(a, b, ctx);
        let _ = transcendental::fpatan(a, b, ctx);
        let _ = transcendental::f2xm1(a, ctx);
        if !transcendental::out_of_range(a) {
            for m in [M::Fsin, M::Fcos, M::Fsincos, M::Fptan] {
                let _ = transcendental::trig(m, a, ctx);
            }
        }
        // Remainder invariants: |r| < |b| for a complete FPREM on finite operands.
        if matches!(a.class(), Class::Normal) && matches!(b.class(), Class::Normal) {
            let (r, _, _, complete) = float::prem(a, b, false, Ctx::from_control(0x37F));
            if complete && r.class() != Class::Zero {
                assert_eq!(float::compare(r.abs(), b.abs(), true).0, float::Cmp::Less);
            }
        }
    }
}

/// Random x87 instructions on random state through the interpreter: no panics.
#[test]
fn fuzz_instructions() {
    let mut g = Rng(0x0123_4567_89AB_CDEF);
    let mut cpu = Cpu::new(1 << 20, 0).unwrap();
    let junk: Vec<u8> = (0..0x4000).map(|_| g.next() as u8).collect();
    cpu.write_phys(0x4000, &junk);
    let mut ran = 0;
    for _ in 0..20_000 {
        let mut code = vec![0xD8 | (g.next() as u8 & 7), g.next() as u8];
        code.extend_from_slice(&[0x40, 0x00, 0xF4, 0xF4]);
        if g.next().is_multiple_of(4) {
            code.insert(0, 0x67);
        }
        cpu.write_phys(0x1000, &code);
        cpu.load_seg_real(CS, 0);
        cpu.state.rip = 0x1000;
        cpu.state.halted = false;
        cpu.state.cr0 = (cpu.state.cr0 & !0x2E)
            | if g.next().is_multiple_of(2) {
                CR0_NE
            } else {
                0
            };
        for r in 0..8 {
            cpu.state.gpr[r] = 0x4000 + (g.next() % 0x3000);
        }
        let f = &mut cpu.state.fpu;
        for i in 0..8 {
            f.regs[i] = g.f80();
        }
        f.tag = g.next() as u16;
        f.control = g.next() as u16;
        f.status = g.next() as u16 & !ES;
        let before = cpu.state.icount;
        cpu.run(&mut NullBus, 2);
        if cpu.state.icount > before && cpu.state.rip != 0x1000 {
            ran += 1;
        }
    }
    assert!(ran > 10_000, "{ran}");
}

/// The extended kernels against f64 references (which they must match to f64 accuracy)
/// and against identities at extended precision.
#[test]
fn transcendental_accuracy() {
    let ctx = Ctx::from_control(0x37F);
    let x = |v: f64| float::from_ieee(v.to_bits(), 11, 52).0;
    let close = |a: F80, b: f64, tol: f64| {
        let d = as_f64(a);
        assert!((d - b).abs() <= tol * b.abs().max(1e-300), "{d} vs {b}");
    };
    for &v in &[0.1, 0.5, 0.99, -0.3, -1.0, 1.0, 1e-5] {
        close(
            transcendental::f2xm1(x(v), ctx).0,
            (v * std::f64::consts::LN_2).exp_m1(),
            4e-16,
        );
    }
    for &v in &[0.1, 0.7, 1.5, 3.0, 1e10, 1e-10, 1.000001] {
        close(
            transcendental::fyl2x(x(v), F80::ONE, ctx).0,
            v.log2(),
            4e-16,
        );
    }
    for &v in &[0.1, -0.2, 0.29, 1e-8] {
        close(
            transcendental::fyl2xp1(x(v), F80::ONE, ctx).0,
            v.ln_1p() / std::f64::consts::LN_2,
            4e-16,
        );
    }
    for &(yy, xx) in &[
        (1.0, 2.0),
        (2.0, 1.0),
        (-1.0, -3.0),
        (3.0, -0.5),
        (1e-3, 1.0),
    ] {
        close(
            transcendental::fpatan(x(xx), x(yy), ctx).0,
            f64::atan2(yy, xx),
            4e-16,
        );
    }
    for &v in &[0.5, 1.0, 2.0, 3.0, -4.0, 10.0, 100.0] {
        let (s, c, _) = transcendental::trig(M::Fsincos, x(v), ctx);
        close(s, v.sin(), 1e-15);
        close(c.unwrap(), v.cos(), 1e-15);
    }
    // Extended-precision identities: log2(8) = 3 exactly after rounding, 2^1 - 1 = 1,
    // atan2(1, 1) = pi/4 to within an ulp or two of the 64-bit constant.
    assert_eq!(
        transcendental::fyl2x(float::from_i64(8), F80::ONE, ctx).0,
        float::from_i64(3)
    );
    assert_eq!(transcendental::f2xm1(F80::ONE, ctx).0, F80::ONE);
    let q = transcendental::fpatan(F80::ONE, F80::ONE, ctx).0;
    assert_eq!(q.se, 0x3FFE);
    assert!(q.sig.abs_diff(0xC90F_DAA2_2168_C235) <= 2, "{:x}", q.sig);
    let s = transcendental::trig(M::Fsin, F80::new(false, 0x3FFE, 0xC90F_DAA2_2168_C235), ctx).0;
    // sin(pi/4) = 0xB504F333F9DE6484 * 2^-64
    assert!(s.sig.abs_diff(0xB504_F333_F9DE_6484) <= 2, "{:x}", s.sig);
}

#[test]
fn transcendental_extended_bits() {
    let ctx = Ctx::from_control(0x37F);
    let near = |v: F80, se: u16, sig: u64| {
        assert_eq!(v.se, se);
        assert!(v.sig.abs_diff(sig) <= 2, "{:x} vs {sig:x}", v.sig);
    };
    near(
        transcendental::fyl2x(float::from_i64(3), F80::ONE, ctx).0,
        0x3FFF,
        0xCAE0_0D1C_FDEB_43D0,
    );
    let half = F80::new(false, 0x3FFE, 1 << 63);
    near(
        transcendental::f2xm1(half, ctx).0,
        0x3FFD,
        0xD413_CCCF_E779_9211,
    );
    let x = float::from_ieee(0.1f64.to_bits(), 11, 52).0;
    near(
        transcendental::fyl2xp1(x, F80::ONE, ctx).0,
        0x3FFC,
        0x8CCD_B946_5CE8_4219,
    );
}

/// Precision control against IEEE single/double arithmetic (rustc_apfloat): with operands
/// that fit the narrower format and results in its normal range, PC = 24/53 must give
/// exactly the IEEE result.
#[test]
fn precision_control_vs_apfloat() {
    use rustc_apfloat::ieee::{Double, Single};
    use rustc_apfloat::{Float, Round};
    let mut g = Rng(0xDEAD_BEEF_1234_5678);
    let rounds = [
        Round::NearestTiesToEven,
        Round::TowardNegative,
        Round::TowardPositive,
        Round::TowardZero,
    ];
    let mut checked = 0;
    for n in 0..20_000u64 {
        let rc = (n % 4) as u16;
        let single = n % 8 >= 4;
        let (fmt, pc) = if single {
            (float::SGL, 0u16)
        } else {
            (float::DBL, 2u16)
        };
        let ctx = Ctx::from_control(0x037F & !0x0F00 | (rc << 10) | (pc << 8));
        let exact = Ctx::from_control(0x037F);
        let mk = |g: &mut Rng| {
            let (ebits, fbits) = if single { (8, 23) } else { (11, 52) };
            let bias = (1u64 << (ebits - 1)) - 1;
            let e = bias - 20 + g.next() % 40;
            let bits = (g.next() & (1 << (ebits + fbits)))
                | (e << fbits)
                | (g.next() & ((1 << fbits) - 1));
            (bits, float::from_ieee(bits, ebits as u32, fbits as u32).0)
        };
        let (ab, a) = mk(&mut g);
        let (bb, b) = mk(&mut g);
        let ours = [
            float::add(a, b, false, ctx),
            float::add(a, b, true, ctx),
            float::mul(a, b, ctx),
            float::div(a, b, ctx),
        ];
        let theirs: [u64; 4] = if single {
            let (x, y) = (Single::from_bits(ab as u128), Single::from_bits(bb as u128));
            let r = rounds[rc as usize];
            [
                x.add_r(y, r).value.to_bits() as u64,
                x.sub_r(y, r).value.to_bits() as u64,
                x.mul_r(y, r).value.to_bits() as u64,
                x.div_r(y, r).value.to_bits() as u64,
            ]
        } else {
            let (x, y) = (Double::from_bits(ab as u128), Double::from_bits(bb as u128));
            let r = rounds[rc as usize];
            [
                x.add_r(y, r).value.to_bits() as u64,
                x.sub_r(y, r).value.to_bits() as u64,
                x.mul_r(y, r).value.to_bits() as u64,
                x.div_r(y, r).value.to_bits() as u64,
            ]
        };
        for (i, ((r, _), t)) in ours.iter().zip(theirs).enumerate() {
            // Our result has at most 24/53 significant bits: converting it is exact.
            let (bits, fl) = float::to_ieee(*r, fmt, exact);
            assert_eq!(fl & PE, 0, "op {i}: result not narrowed");
            assert_eq!(bits, t, "op {i} rc {rc} single {single} {a:?} {b:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 80_000);
}

/// Values in and near the denormal range against rustc_apfloat's x87 format (values only:
/// the flags follow the P6's tininess rule, checked separately).
#[test]
fn denormal_results_vs_apfloat() {
    use rustc_apfloat::ieee::X87DoubleExtended as X;
    use rustc_apfloat::{Float, Round};
    let mut g = Rng(0x5555_AAAA_1357_9BDF);
    let rounds = [
        Round::NearestTiesToEven,
        Round::TowardNegative,
        Round::TowardPositive,
        Round::TowardZero,
    ];
    for n in 0..20_000u64 {
        let rc = (n % 4) as u16;
        let ctx = Ctx::from_control(0x037F | (rc << 10));
        let r = rounds[rc as usize];
        let a = F80::new(
            g.next() & 1 == 0,
            1 + (g.next() % 70) as u16,
            g.next() | 1 << 63,
        );
        let b = F80::new(
            g.next() & 1 == 0,
            0x3FFF - 40 + (g.next() % 80) as u16,
            g.next() | 1 << 63,
        );
        let xa = X::from_bits(((a.se as u128) << 64) | a.sig as u128);
        let xb = X::from_bits(((b.se as u128) << 64) | b.sig as u128);
        let bits = |v: F80| ((v.se as u128) << 64) | v.sig as u128;
        assert_eq!(
            bits(float::mul(a, b, ctx).0),
            xa.mul_r(xb, r).value.to_bits(),
            "mul {a:?} {b:?} {rc}"
        );
        assert_eq!(
            bits(float::div(a, b, ctx).0),
            xa.div_r(xb, r).value.to_bits(),
            "div {a:?} {b:?} {rc}"
        );
        let c = F80::new(!a.sign(), a.exp(), a.sig ^ (g.next() & 0xFFFF_FFFF));
        let xc = X::from_bits(bits(c));
        assert_eq!(
            bits(float::add(a, c, false, ctx).0),
            xa.add_r(xc, r).value.to_bits(),
            "add {a:?} {c:?} {rc}"
        );
    }
}

/// FNSAVE/FRSTOR and FNSTENV through the interpreter in 32-bit protected mode (flat
/// segments loaded straight into the descriptor caches).
#[test]
fn protected_mode_fsave_frstor() {
    use crate::state::*;
    let mut a = CodeAssembler::new(32).unwrap();
    a.fninit().unwrap();
    a.fld1().unwrap();
    a.fldpi().unwrap();
    a.fld(dword_ptr(0x2000)).unwrap();
    a.fnsave(ptr(0x3000)).unwrap(); // 108 bytes
    a.fldz().unwrap();
    a.frstor(ptr(0x3000)).unwrap();
    a.fnstenv(ptr(0x3100)).unwrap(); // 28 bytes
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut cpu = Cpu::new(1 << 20, 0).unwrap();
    cpu.write_phys(0x1000, &code);
    cpu.write_phys(0x2000, &2.5f32.to_le_bytes());
    cpu.state.cr0 |= CR0_PE;
    let data = ATTR_P | ATTR_S | ATTR_RW | ATTR_ACCESSED | ATTR_DB | ATTR_G;
    for s in [ES, SS, DS, FS, GS] {
        cpu.state.seg[s] = Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: 0x10,
            attr: data,
        };
    }
    cpu.state.seg[CS] = Segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: 0x08,
        attr: data | ATTR_CODE,
    };
    cpu.state.rip = 0x1000;
    cpu.run(&mut NullBus, 100);
    assert!(cpu.state.halted);
    let img = mem(&cpu, 0x3000, 108);
    let d = |o: usize| u32::from_le_bytes(img[o..o + 4].try_into().unwrap());
    assert_eq!(d(0), 0xFFFF_037F);
    assert_eq!((d(4) >> 11) & 7, 5); // TOP
    assert_eq!(d(8) & 0xFFFF, 0x03FF); // phys 5,6,7 valid; rest empty
    let fld_eip = 0x1000 + 2 + 2 + 2; // fninit, fld1, fldpi
    assert_eq!(d(12), fld_eip);
    assert_eq!(d(16), 0x08 | (0x100 << 16) | (0x05 << 16)); // CS, FOP D9 05
    assert_eq!(d(20), 0x2000);
    assert_eq!(d(24), 0xFFFF_0010);
    assert_eq!(
        &img[28..38],
        &float::from_ieee(2.5f32.to_bits() as u64, 8, 23)
            .0
            .to_bytes()
    );
    assert_eq!(&img[48..58], &F80::ONE.to_bytes());
    // After FRSTOR the stack is back and FNSTENV sees the same environment.
    assert_eq!(mem(&cpu, 0x3100, 28), img[..28]);
    assert_eq!(st(&cpu, 2), F80::ONE);
}

#[test]
fn fscale_extremes() {
    let ctx = Ctx::from_control(0x37F);
    let big = float::from_ieee(1e30f64.to_bits(), 11, 52).0;
    let (r, fl) = transcendental::fscale(F80::ONE, big, ctx);
    assert_eq!((r, fl & float::OE), (F80::inf(false), float::OE));
    let (r, fl) = transcendental::fscale(F80::ONE, big.negate(), ctx);
    assert_eq!((r, fl & float::UE), (F80::ZERO, float::UE));
    let (r, _) = transcendental::fscale(
        float::from_i64(3),
        float::from_ieee((-1.5f64).to_bits(), 11, 52).0,
        ctx,
    );
    assert_eq!(r, float::from_ieee(1.5f64.to_bits(), 11, 52).0);
}

/// FOP's ModRM byte is rebuilt from the decoded operand: it must be the byte that was
/// encoded, for every addressing form.
#[test]
fn fop_modrm_is_the_encoded_byte() {
    // (bitness, bytes, the ModRM byte's position)
    let cases: &[(u32, &[u8], usize)] = &[
        (32, &[0xDD, 0x45, 0xF8], 1),                   // fld qword [ebp-8]
        (32, &[0xDD, 0x1C, 0x24], 1),                   // fstp qword [esp]
        (32, &[0xDD, 0x05, 0x78, 0x56, 0x34, 0x12], 1), // fld qword [12345678h]
        (32, &[0xDD, 0x04, 0x85, 0, 0x10, 0, 0], 1),    // fld qword [eax*4+1000h]
        (32, &[0xDD, 0x94, 0x24, 0, 1, 0, 0], 1),       // fst qword [esp+100h]
        (32, &[0xD9, 0x00], 1),                         // fld dword [eax]
        (32, &[0xDD, 0x5D, 0x00], 1),                   // fstp qword [ebp+0]
        (32, &[0xD9, 0x44, 0x8E, 0x10], 1),             // fld dword [esi+ecx*4+10h]
        (32, &[0x66, 0x67, 0xDC, 0x47, 0x02], 3),       // fadd qword [bx+2]
        (32, &[0x3E, 0xDA, 0x8D, 0x10, 0, 0, 0], 2),    // fimul dword ds:[ebp+10h]
        (16, &[0xDD, 0x47, 0x02], 1),                   // fld qword [bx+2]
        (16, &[0xDD, 0x06, 0x34, 0x12], 1),             // fld qword [1234h]
        (16, &[0xDD, 0x46, 0x00], 1),                   // fld qword [bp+0]
        (16, &[0xDD, 0x98, 0x00, 0x01], 1),             // fstp qword [bx+si+100h]
        (16, &[0xDF, 0x2F], 1),                         // fild qword [bx]
        (16, &[0x67, 0xD9, 0x04, 0x24], 2),             // fld dword [esp]
    ];
    for &(bits, bytes, at) in cases {
        let ins = iced_x86::Decoder::new(bits, bytes, 0).decode();
        assert_eq!(ins.len(), bytes.len(), "{bytes:02x?} decodes whole");
        assert_eq!(memory_modrm(&ins), bytes[at] as u16, "{bytes:02x?} ({ins})");
    }
}
