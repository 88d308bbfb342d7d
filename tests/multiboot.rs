//! Multiboot kernels built here, booted directly by `hospes run --kernel`: an ELF32
//! kernel (two PT_LOAD segments, bss, a non-loadable header) with two modules, and an
//! a.out-kludge flat binary (header address fields). The kernel checks and reports on
//! COM1 what the loader gave it (magic, MBI fields, command line, modules, memory map,
//! zeroed bss, the protected-mode entry state), reloads its segments from the loader's
//! GDT, and powers off through ACPI. Bad kernels must fail with one line on stderr.

use iced_x86::code_asm::*;
use std::path::PathBuf;
use std::process::Command;

fn temp_path(name: &str) -> PathBuf {
    // Under the target directory (not the system temp directory, which would keep
    // one directory per run).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("multiboot-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `hospes run` with `args`, bounded: a loader bug that makes the kernel fault
/// would otherwise reset the machine forever.
fn run_hospes(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(["run", "--max-instructions", "50000000"])
        .args(args)
        .output()
        .expect("run hospes");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Header flags: page-align modules, memory information, address fields.
const PAGE_ALIGN: u32 = 1 << 0;
const MEMORY_INFO: u32 = 1 << 1;
const ADDRESS_FIELDS: u32 = 1 << 16;

fn multiboot_header(flags: u32, address_fields: &[u32]) -> Vec<u8> {
    let mut h = Vec::new();
    let checksum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
    for v in [HEADER_MAGIC, flags, checksum].iter().chain(address_fields) {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// Where the test kernel lives: its code, its data (right after the code), its bss,
/// and optionally a string elsewhere to print last (the ELF kernel's second segment).
struct Layout {
    code: u32,
    data: u32,
    bss: u32,
    bss_len: u32,
    last_words: Option<u32>,
}

/// Free RAM where the test kernel notes that it has been through its first boot (the
/// machine keeps RAM across a reset).
const REBOOT_MARKER: u32 = 0x30_0000;
const REBOOT_MARKER_VALUE: u32 = 0x600D_B007;
const FIRST_BOOT: &str = "first boot: bss dirtied, faulting\n";

/// Bytes reserved for the code and for the data of the test kernel.
const CODE_SPACE: u32 = 0x800;
const DATA_SPACE: u32 = 0x400;

/// Fixed slots at the start of the data area, where the kernel records what it found
/// on entry before it changes anything.
const BSS_OR: u32 = 0;
const EFLAGS: u32 = 4;
const CR0: u32 = 8;
/// CS, DS, ES, FS, GS, SS as words.
const SELECTORS: u32 = 12;
const GDTR: u32 = 24;
const IDTR: u32 = 32;
const HEX_DIGITS: u32 = 40;
const STRINGS: u32 = 56;

/// The test kernel: code at `layout.code`, data at `layout.data`, as one image of
/// CODE_SPACE + DATA_SPACE bytes.
fn kernel_image(layout: &Layout) -> Vec<u8> {
    // The far jump that reloads CS needs the address of its target: assemble once to
    // learn it (the jump's encoding has a fixed size), then again with it.
    let (_, reloaded) = assemble_kernel(layout, 0);
    let (image, again) = assemble_kernel(layout, reloaded);
    assert_eq!(again, reloaded);
    image
}

fn assemble_kernel(layout: &Layout, reloaded_at: u32) -> (Vec<u8>, u32) {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut data = vec![0u8; STRINGS as usize];
    data[HEX_DIGITS as usize..HEX_DIGITS as usize + 16].copy_from_slice(b"0123456789ABCDEF");
    let d = |off: u32| layout.data + off;
    let mut putc = a.create_label();
    let mut puts = a.create_label();
    let mut puthex = a.create_label();

    // A NUL-terminated string in the data area: its address.
    let mut text = |t: &str| -> u32 {
        let at = layout.data + data.len() as u32;
        data.extend_from_slice(t.as_bytes());
        data.push(0);
        at
    };
    let say = |a: &mut CodeAssembler, at: u32| {
        a.mov(esi, at).unwrap();
        a.call(puts).unwrap();
    };

    // Entry: keep EAX (magic) in EDI and EBX (MBI) in EBP.
    a.mov(edi, eax).unwrap();
    a.mov(ebp, ebx).unwrap();
    // The first time round, dirty the bss and fault: with no IDT that triple-faults,
    // the machine resets, POST loads the kernel again and must clear the bss again.
    let mut second_boot = a.create_label();
    a.cmp(dword_ptr(REBOOT_MARKER), REBOOT_MARKER_VALUE as i32)
        .unwrap();
    a.je(second_boot).unwrap();
    a.mov(dword_ptr(REBOOT_MARKER), REBOOT_MARKER_VALUE)
        .unwrap();
    a.mov(esp, layout.bss + layout.bss_len).unwrap();
    a.mov(edi, layout.bss).unwrap();
    a.mov(ecx, layout.bss_len / 4).unwrap();
    a.mov(eax, 0xFFFF_FFFFu32).unwrap();
    a.rep().stosd().unwrap();
    let t = text(FIRST_BOOT);
    say(&mut a, t);
    a.ud2().unwrap();
    a.set_label(&mut second_boot).unwrap();
    // The bss must be zero: OR it together before it becomes the stack.
    let mut bss_loop = a.create_label();
    a.mov(esi, layout.bss).unwrap();
    a.mov(ecx, layout.bss_len / 4).unwrap();
    a.xor(edx, edx).unwrap();
    a.set_label(&mut bss_loop).unwrap();
    a.or(edx, dword_ptr(esi)).unwrap();
    a.add(esi, 4).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(bss_loop).unwrap();
    a.mov(dword_ptr(d(BSS_OR)), edx).unwrap();
    a.mov(esp, layout.bss + layout.bss_len).unwrap();
    // The entry state.
    a.pushfd().unwrap();
    a.pop(eax).unwrap();
    a.mov(dword_ptr(d(EFLAGS)), eax).unwrap();
    a.mov(eax, cr0).unwrap();
    a.mov(dword_ptr(d(CR0)), eax).unwrap();
    for (i, s) in [cs, ds, es, fs, gs, ss].into_iter().enumerate() {
        a.mov(word_ptr(d(SELECTORS + 2 * i as u32)), s).unwrap();
    }
    a.sgdt(ptr(d(GDTR))).unwrap();
    a.sidt(ptr(d(IDTR))).unwrap();
    // Reload every segment register from the loader's GDT: a wrong table faults, and
    // with no IDT that resets the machine.
    a.jmp_far(0x08, reloaded_at).unwrap();
    let mut reloaded = a.create_label();
    a.set_label(&mut reloaded).unwrap();
    a.mov(eax, 0x10u32).unwrap();
    for s in [ds, es, fs, gs, ss] {
        a.mov(s, ax).unwrap();
    }

    let nl = text("\n");
    let line = |a: &mut CodeAssembler, label: u32, load: &dyn Fn(&mut CodeAssembler)| {
        a.mov(esi, label).unwrap();
        a.call(puts).unwrap();
        load(a);
        a.call(puthex).unwrap();
    };
    let t = text("magic=");
    line(&mut a, t, &|a| a.mov(eax, edi).unwrap());
    say(&mut a, nl);
    let t = text("flags=");
    line(&mut a, t, &|a| a.mov(eax, dword_ptr(ebp)).unwrap());
    say(&mut a, nl);
    let t = text("mem_lower=");
    line(&mut a, t, &|a| a.mov(eax, dword_ptr(ebp + 4)).unwrap());
    let t = text(" mem_upper=");
    line(&mut a, t, &|a| a.mov(eax, dword_ptr(ebp + 8)).unwrap());
    say(&mut a, nl);
    let t = text("cmdline=");
    say(&mut a, t);
    a.mov(esi, dword_ptr(ebp + 16)).unwrap();
    a.call(puts).unwrap();
    say(&mut a, nl);
    let t = text("loader=");
    say(&mut a, t);
    a.mov(esi, dword_ptr(ebp + 64)).unwrap();
    a.call(puts).unwrap();
    say(&mut a, nl);
    let t = text("mods=");
    line(&mut a, t, &|a| a.mov(eax, dword_ptr(ebp + 20)).unwrap());
    say(&mut a, nl);

    // Each module: string, start, end, first dword.
    let mut mod_loop = a.create_label();
    let mut mods_done = a.create_label();
    a.mov(ebx, dword_ptr(ebp + 24)).unwrap();
    a.mov(ecx, dword_ptr(ebp + 20)).unwrap();
    a.set_label(&mut mod_loop).unwrap();
    a.test(ecx, ecx).unwrap();
    a.jz(mods_done).unwrap();
    let t = text("module '");
    say(&mut a, t);
    a.mov(esi, dword_ptr(ebx + 8)).unwrap();
    a.call(puts).unwrap();
    let t = text("' start=");
    line(&mut a, t, &|a| a.mov(eax, dword_ptr(ebx)).unwrap());
    let t = text(" end=");
    line(&mut a, t, &|a| a.mov(eax, dword_ptr(ebx + 4)).unwrap());
    let t = text(" first=");
    line(&mut a, t, &|a| {
        a.mov(eax, dword_ptr(ebx)).unwrap();
        a.mov(eax, dword_ptr(eax)).unwrap();
    });
    say(&mut a, nl);
    a.add(ebx, 16).unwrap();
    a.dec(ecx).unwrap();
    a.jmp(mod_loop).unwrap();
    a.set_label(&mut mods_done).unwrap();

    // The memory map: count the entries (walking by their size fields) and look for
    // usable RAM (type 1) at address 0.
    let mut mmap_loop = a.create_label();
    let mut mmap_next = a.create_label();
    let mut mmap_done = a.create_label();
    a.mov(esi, dword_ptr(ebp + 48)).unwrap();
    a.mov(edx, esi).unwrap();
    a.add(edx, dword_ptr(ebp + 44)).unwrap();
    a.xor(ecx, ecx).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.set_label(&mut mmap_loop).unwrap();
    a.cmp(esi, edx).unwrap();
    a.jae(mmap_done).unwrap();
    a.inc(ecx).unwrap();
    a.cmp(dword_ptr(esi + 4), 0).unwrap();
    a.jne(mmap_next).unwrap();
    a.cmp(dword_ptr(esi + 8), 0).unwrap();
    a.jne(mmap_next).unwrap();
    a.cmp(dword_ptr(esi + 20), 1).unwrap();
    a.jne(mmap_next).unwrap();
    a.mov(ebx, 1u32).unwrap();
    a.set_label(&mut mmap_next).unwrap();
    a.add(esi, dword_ptr(esi)).unwrap();
    a.add(esi, 4).unwrap();
    a.jmp(mmap_loop).unwrap();
    a.set_label(&mut mmap_done).unwrap();
    let t = text("mmap entries=");
    line(&mut a, t, &|a| a.mov(eax, ecx).unwrap());
    let t = text(" ram_at_0=");
    line(&mut a, t, &|a| a.mov(eax, ebx).unwrap());
    say(&mut a, nl);

    let t = text("bss=");
    line(&mut a, t, &|a| a.mov(eax, dword_ptr(d(BSS_OR))).unwrap());
    say(&mut a, nl);
    let t = text("cr0.pg_pe=");
    line(&mut a, t, &|a| {
        a.mov(eax, dword_ptr(d(CR0))).unwrap();
        a.and(eax, 0x8000_0001u32 as i32).unwrap();
    });
    let t = text(" eflags.vm_if=");
    line(&mut a, t, &|a| {
        a.mov(eax, dword_ptr(d(EFLAGS))).unwrap();
        a.and(eax, 0x0002_0200).unwrap();
    });
    say(&mut a, nl);
    let t = text("selectors=");
    say(&mut a, t);
    for i in 0..6u32 {
        let t = text(" ");
        line(&mut a, t, &|a| {
            a.movzx(eax, word_ptr(d(SELECTORS + 2 * i))).unwrap()
        });
    }
    say(&mut a, nl);
    let t = text("gdt_limit=");
    line(&mut a, t, &|a| a.movzx(eax, word_ptr(d(GDTR))).unwrap());
    let t = text(" idt_limit=");
    line(&mut a, t, &|a| a.movzx(eax, word_ptr(d(IDTR))).unwrap());
    say(&mut a, nl);
    if let Some(at) = layout.last_words {
        say(&mut a, at);
    }
    // ACPI soft-off: SLP_TYP=5 | SLP_EN to PM1a control.
    a.mov(dx, 0x604u32).unwrap();
    a.mov(ax, 0x3400u32).unwrap();
    a.out(dx, ax).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();

    // putc: AL to COM1 once the transmitter holding register is empty (LSR bit 5).
    let mut wait = a.create_label();
    a.set_label(&mut putc).unwrap();
    a.push(edx).unwrap();
    a.push(eax).unwrap();
    a.mov(dx, 0x3FDu32).unwrap();
    a.set_label(&mut wait).unwrap();
    a.in_(al, dx).unwrap();
    a.test(al, 0x20).unwrap();
    a.jz(wait).unwrap();
    a.pop(eax).unwrap();
    a.mov(dx, 0x3F8u32).unwrap();
    a.out(dx, al).unwrap();
    a.pop(edx).unwrap();
    a.ret().unwrap();
    // puts: the string at ESI (all registers kept).
    let mut puts_loop = a.create_label();
    let mut puts_done = a.create_label();
    a.set_label(&mut puts).unwrap();
    a.pushad().unwrap();
    a.set_label(&mut puts_loop).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(puts_done).unwrap();
    a.call(putc).unwrap();
    a.jmp(puts_loop).unwrap();
    a.set_label(&mut puts_done).unwrap();
    a.popad().unwrap();
    a.ret().unwrap();
    // puthex: EAX as 8 hex digits (all registers kept).
    let mut digit = a.create_label();
    a.set_label(&mut puthex).unwrap();
    a.pushad().unwrap();
    a.mov(edx, eax).unwrap();
    a.mov(ecx, 8u32).unwrap();
    a.set_label(&mut digit).unwrap();
    a.rol(edx, 4).unwrap();
    a.mov(eax, edx).unwrap();
    a.and(eax, 0xF).unwrap();
    a.mov(al, byte_ptr(eax + d(HEX_DIGITS) as i32)).unwrap();
    a.call(putc).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(digit).unwrap();
    a.popad().unwrap();
    a.ret().unwrap();

    let result = a
        .assemble_options(
            layout.code as u64,
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .unwrap();
    let reloaded_ip = result.label_ip(&reloaded).unwrap() as u32;
    let mut image = result.inner.code_buffer;
    assert!(
        image.len() <= CODE_SPACE as usize,
        "test kernel code too long"
    );
    assert!(
        data.len() <= DATA_SPACE as usize,
        "test kernel data too long"
    );
    assert_eq!(layout.data, layout.code + CODE_SPACE);
    image.resize(CODE_SPACE as usize, 0xCC);
    image.extend_from_slice(&data);
    image.resize((CODE_SPACE + DATA_SPACE) as usize, 0);
    (image, reloaded_ip)
}

/// What the test kernel prints for a machine with `ram_mib` of RAM, a command line
/// and modules (string, start, end, first dword).
fn expected_report(
    ram_mib: u64,
    cmdline: &str,
    modules: &[(&str, u32, u32, u32)],
    last_words: &str,
) -> String {
    let ram = ram_mib << 20;
    let mem_upper = (ram - hospes_bios::acpi::TABLES_SIZE - 0x10_0000) / 1024;
    let mmap_entries = hospes_bios::e820_map(ram).len();
    let mut s = format!(
        "{FIRST_BOOT}magic=2BADB002\nflags=0000024D\nmem_lower=00000280 mem_upper={mem_upper:08X}\n\
         cmdline={cmdline}\nloader=hospes\nmods={:08X}\n",
        modules.len()
    );
    for (string, start, end, first) in modules {
        s += &format!("module '{string}' start={start:08X} end={end:08X} first={first:08X}\n");
    }
    s += &format!("mmap entries={mmap_entries:08X} ram_at_0=00000001\n");
    s += "bss=00000000\n";
    s += "cr0.pg_pe=00000001 eflags.vm_if=00000000\n";
    s += "selectors= 00000008 00000010 00000010 00000010 00000010 00000010\n";
    s += "gdt_limit=00000017 idt_limit=00000000\n";
    s += last_words;
    s
}

const ELF_BASE: u32 = 0x10_0000;
/// The ELF kernel is linked to run in the higher half: virtual = physical + this.
const HIGHER_HALF: u32 = 0xC000_0000;
const ELF_SECOND_SEGMENT: u32 = 0x18_0000;
const ELF_BSS_LEN: u32 = 0x2000;
const SECOND_SEGMENT_TEXT: &[u8] = b"second segment loaded\n\0";

/// An ELF32 i386 executable: the Multiboot header at 0x100 (outside any segment, which
/// the loader must not mind), a PT_LOAD segment of code and data at 1 MiB with bss
/// after it, a PT_NOTE that must not be loaded (its addresses are in low memory), and a
/// second PT_LOAD with a string. Bytes after the first segment's file part are junk:
/// they show up in the bss if the loader copies more than p_filesz.
fn elf_kernel() -> Vec<u8> {
    let image_len = CODE_SPACE + DATA_SPACE;
    let layout = Layout {
        code: ELF_BASE,
        data: ELF_BASE + CODE_SPACE,
        bss: ELF_BASE + image_len,
        bss_len: ELF_BSS_LEN,
        last_words: Some(ELF_SECOND_SEGMENT),
    };
    let image = kernel_image(&layout);
    let image_offset = 0x1000u32;
    let junk_len = 0x100u32;
    let second_offset = image_offset + image_len + junk_len;
    let mut k = vec![0u8; second_offset as usize];
    k.extend_from_slice(SECOND_SEGMENT_TEXT);

    k[..4].copy_from_slice(b"\x7FELF");
    k[4] = 1; // ELFCLASS32
    k[5] = 1; // little-endian
    k[6] = 1; // EV_CURRENT
    let put16 = |k: &mut Vec<u8>, at: usize, v: u16| {
        k[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    put16(&mut k, 16, 2); // ET_EXEC
    put16(&mut k, 18, 3); // EM_386
    let put32 = |k: &mut Vec<u8>, at: usize, v: u32| {
        k[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    put32(&mut k, 20, 1); // e_version
    put32(&mut k, 24, HIGHER_HALF + ELF_BASE); // e_entry (virtual)
    put32(&mut k, 28, 52); // e_phoff
    put16(&mut k, 40, 52); // e_ehsize
    put16(&mut k, 42, 32); // e_phentsize
    put16(&mut k, 44, 3); // e_phnum
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    let phdrs: [[u32; 8]; 3] = [
        // type, offset, vaddr, paddr, filesz, memsz, flags (RWX), align
        [
            PT_LOAD,
            image_offset,
            HIGHER_HALF + ELF_BASE,
            ELF_BASE,
            image_len,
            image_len + ELF_BSS_LEN,
            7,
            0x1000,
        ],
        [PT_NOTE, 0, 0x1000, 0x1000, 0x20, 0x20, 4, 4],
        [
            PT_LOAD,
            second_offset,
            HIGHER_HALF + ELF_SECOND_SEGMENT,
            ELF_SECOND_SEGMENT,
            SECOND_SEGMENT_TEXT.len() as u32,
            SECOND_SEGMENT_TEXT.len() as u32,
            4,
            0x1000,
        ],
    ];
    for (i, ph) in phdrs.iter().enumerate() {
        for (j, v) in ph.iter().enumerate() {
            put32(&mut k, 52 + 32 * i + 4 * j, *v);
        }
    }
    let header = multiboot_header(PAGE_ALIGN | MEMORY_INFO, &[]);
    k[0x100..0x100 + header.len()].copy_from_slice(&header);
    let at = image_offset as usize;
    k[at..at + image.len()].copy_from_slice(&image);
    let junk = at + image.len();
    k[junk..junk + junk_len as usize].fill(0xAA);
    k
}

#[test]
fn elf_kernel_with_modules_gets_what_the_spec_promises() {
    let kernel = temp_path("k.elf");
    std::fs::write(&kernel, elf_kernel()).unwrap();
    let mod1 = temp_path("mod1.bin");
    let mod2 = temp_path("mod2.bin");
    let mod1_data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 1) as u8).collect();
    std::fs::write(&mod1, &mod1_data).unwrap();
    std::fs::write(&mod2, b"MOD2 contents").unwrap();
    let modules = format!("{} arg1,{}", mod1.display(), mod2.display());
    let (code, out, err) = run_hospes(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        &modules,
        "--append",
        "hello world",
        "--display",
        "none",
        "-m",
        "64",
    ]);
    // Modules follow the kernel's highest byte (the second segment), page by page.
    let kernel_end = ELF_SECOND_SEGMENT + SECOND_SEGMENT_TEXT.len() as u32;
    let mod1_start = kernel_end.next_multiple_of(0x1000);
    let mod1_end = mod1_start + mod1_data.len() as u32;
    let mod2_start = mod1_end.next_multiple_of(0x1000);
    let first = |d: &[u8]| u32::from_le_bytes(d[..4].try_into().unwrap());
    let expected = expected_report(
        64,
        &format!("{} hello world", kernel.display()),
        &[
            (
                &format!("{} arg1", mod1.display()),
                mod1_start,
                mod1_end,
                first(&mod1_data),
            ),
            (
                &mod2.display().to_string(),
                mod2_start,
                mod2_start + 13,
                first(b"MOD2"),
            ),
        ],
        "second segment loaded\n",
    );
    assert_eq!(out, expected, "stderr: {err}");
    assert_eq!(code, 0, "stderr: {err}");
}

/// A flat binary with the address fields: the first 0x10 bytes of the file are not
/// loaded (load_addr lies 0x10 bytes below header_addr, and the header is at file
/// offset 0x20), and junk after load_end_addr must not reach the bss.
#[test]
fn address_fields_kernel_boots() {
    let base = 0x10_0000u32;
    let code = base + 0x100;
    let layout = Layout {
        code,
        data: code + CODE_SPACE,
        bss: code + CODE_SPACE + DATA_SPACE,
        bss_len: 0x1000,
        last_words: None,
    };
    let image = kernel_image(&layout);
    let load_end = layout.bss;
    let bss_end = layout.bss + layout.bss_len;
    // File offset f holds the byte for address base + f - 0x10.
    let file_offset = |addr: u32| (addr - base + 0x10) as usize;
    let mut k = vec![0xAAu8; file_offset(load_end) + 0x40];
    let header = multiboot_header(
        PAGE_ALIGN | MEMORY_INFO | ADDRESS_FIELDS,
        &[base + 0x10, base, load_end, bss_end, code],
    );
    k[0x10..0x20].fill(0x90);
    k[0x20..0x20 + header.len()].copy_from_slice(&header);
    k[0x20 + header.len()..file_offset(code)].fill(0);
    k[file_offset(code)..file_offset(code) + image.len()].copy_from_slice(&image);
    let kernel = temp_path("flat.bin");
    std::fs::write(&kernel, &k).unwrap();
    let module = temp_path("m.bin");
    std::fs::write(&module, [0x78, 0x56, 0x34, 0x12, 9]).unwrap();
    let mod_string = format!("{} a,b", module.display());
    let (code, out, err) = run_hospes(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        &mod_string.replace(',', ",,"),
        "-m",
        "16",
    ]);
    let start = bss_end.next_multiple_of(0x1000);
    let expected = expected_report(
        16,
        &kernel.display().to_string(),
        &[(&mod_string, start, start + 5, 0x1234_5678)],
        "",
    );
    assert_eq!(out, expected, "stderr: {err}");
    assert_eq!(code, 0, "stderr: {err}");
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, out, err) = run_hospes(args);
    assert_ne!(code, 0, "{args:?}: stdout {out}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("hospes: "), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(out.is_empty(), "{args:?}: the machine ran: {out}");
}

#[test]
fn garbage_and_unsupported_kernels_are_one_line_errors() {
    let garbage = temp_path("garbage.bin");
    let bytes: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, &bytes).unwrap();
    assert_one_line_error(
        &["--kernel", garbage.to_str().unwrap()],
        "not a Linux bzImage or Multiboot kernel",
    );

    // A good kernel but for requirement flag 5, which no loader knows.
    let mut k = multiboot_header(
        MEMORY_INFO | 1 << 5 | ADDRESS_FIELDS,
        &[0x10_0000, 0x10_0000, 0, 0, 0x10_0020],
    );
    k.extend([0xF4; 64]);
    let unsupported = temp_path("unsupported.bin");
    std::fs::write(&unsupported, &k).unwrap();
    assert_one_line_error(
        &["--kernel", unsupported.to_str().unwrap()],
        "does not support (flags 0x00000020)",
    );

    // The same without flag 5 but loaded where the RAM is not.
    let mut k = multiboot_header(
        MEMORY_INFO | ADDRESS_FIELDS,
        &[0x1000_0000, 0x1000_0000, 0, 0, 0x1000_0020],
    );
    k.extend([0xF4; 64]);
    let too_high = temp_path("too-high.bin");
    std::fs::write(&too_high, &k).unwrap();
    assert_one_line_error(
        &["--kernel", too_high.to_str().unwrap(), "-m", "32"],
        "outside the RAM",
    );
    // A missing module.
    assert_one_line_error(
        &[
            "--kernel",
            too_high.to_str().unwrap(),
            "--initrd",
            "/nonexistent/module arg",
        ],
        "cannot read module /nonexistent/module",
    );
}
