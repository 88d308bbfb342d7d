//! Disk image formats end to end: the Linux guest disk boots from qcow2, VMDK and VDI
//! copies and from an OVA appliance, its writes land where `qemu-img` reads them, and
//! `hospes img` makes, converts and checks images `qemu-img` agrees with.
//!
//! `qemu-img` (Debian's qemu-utils, installed by `scripts/guest-images`) is the
//! reference; without it these tests say so in one line and pass.

mod guest;

use guest::{assert_disk_written, finish, images, start, DISK_PATTERN_AT};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("disk_images")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn have_qemu_img() -> bool {
    let found = Command::new("qemu-img").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: no qemu-img (scripts/guest-images installs qemu-utils)");
    }
    found
}

fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img")
}

fn hospes(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hospes"))
        .args(args)
        .output()
        .expect("run hospes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Runs a command that must succeed.
fn ok(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// `qemu-img check` of a non-raw image: exit 0 and nothing leaked.
fn qemu_check(image: &Path) {
    ok(
        &format!("qemu-img check {}", image.display()),
        qemu_img(&["check", path(image)]),
    );
}

/// The image's guest bytes as qemu-img reads them.
fn qemu_read(image: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("qemu-read.raw");
    let _ = std::fs::remove_file(&raw);
    ok(
        "qemu-img convert",
        qemu_img(&["convert", "-O", "raw", path(image), path(&raw)]),
    );
    std::fs::read(&raw).expect("read the converted image")
}

/// Contents with a structure formats care about: runs of data, zero holes, a size not
/// a multiple of any cluster or grain.
fn varied(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = vec![0u8; len];
    for (i, chunk) in v.chunks_mut(64 << 10).enumerate() {
        if i % 3 == 1 {
            continue;
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    v
}

/// An OVA: an OVF naming one disk, then that disk (streamOptimized, made from `raw`).
fn make_ova(dir: &Path, raw: &Path, memory_mib: u32) -> PathBuf {
    let vmdk = dir.join("appliance-disk1.vmdk");
    ok(
        "qemu-img convert to streamOptimized",
        qemu_img(&[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            path(raw),
            path(&vmdk),
        ]),
    );
    let capacity = std::fs::metadata(raw).expect("raw").len();
    let ovf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="appliance-disk1.vmdk"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="hospes-test">
    <Name>hospes test appliance</Name>
    <VirtualHardwareSection>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{memory_mib}</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    );
    std::fs::write(dir.join("appliance.ovf"), ovf).expect("write the OVF");
    let ova = dir.join("appliance.ova");
    let tar = Command::new("tar")
        .current_dir(dir)
        .args([
            "-cf",
            "appliance.ova",
            "appliance.ovf",
            "appliance-disk1.vmdk",
        ])
        .status()
        .expect("run tar");
    assert!(tar.success(), "tar: {tar:?}");
    ova
}

/// The Linux disk guest boots from copies of its disk in each format (made by qemu-img,
/// or by `hospes img convert`), all at once, with no --snapshot: its /init writes 1 MiB
/// through the IDE driver. Afterwards `qemu-img check` is clean and qemu-img reads the
/// original disk with the guest's write in it.
#[test]
fn linux_boots_from_qcow2_vmdk_and_vdi_copies_and_writes_to_them() {
    let Some(dir) = images() else { return };
    if !have_qemu_img() {
        return;
    }
    let work = scratch("boots");
    let original_path = dir.join("linux-disk.img");
    let original = std::fs::read(&original_path).expect("read the disk");
    let copy = |name: &str, made_by: &str, args: &[&str]| -> PathBuf {
        let image = work.join(name);
        let mut full: Vec<&str> = args.to_vec();
        full.push(path(&original_path));
        full.push(path(&image));
        let out = match made_by {
            "qemu-img" => qemu_img(&full),
            _ => hospes(&[&["img"][..], &full].concat()),
        };
        ok(&format!("{made_by} {args:?}"), out);
        image
    };
    let images = [
        (
            "qcow2 (compressed, qemu-img)",
            copy("disk.qcow2", "qemu-img", &["convert", "-c", "-O", "qcow2"]),
        ),
        (
            "VMDK monolithicSparse (qemu-img)",
            copy("disk.vmdk", "qemu-img", &["convert", "-O", "vmdk"]),
        ),
        (
            "VDI dynamic (hospes img convert)",
            copy("disk.vdi", "hospes", &["convert", "-O", "vdi"]),
        ),
        (
            "VMDK monolithicFlat (hospes img convert)",
            copy(
                "flat.vmdk",
                "hospes",
                &["convert", "-O", "vmdk", "-o", "subformat=monolithicFlat"],
            ),
        ),
    ];
    let t0 = Instant::now();
    let runs: Vec<_> = images
        .iter()
        .map(|(name, image)| {
            (
                name,
                image,
                start(&dir, &["--hda", path(image), "--boot", "c"]),
            )
        })
        .collect();
    let mut expected = original.clone();
    expected[DISK_PATTERN_AT..DISK_PATTERN_AT + (1 << 20)].copy_from_slice(&guest::disk_pattern());
    for (name, image, child) in runs {
        let out = finish(name, child, t0);
        assert_disk_written(&out);
        qemu_check(image);
        let now = qemu_read(image, &work);
        assert!(
            now == expected,
            "{name}: qemu-img reads something else than the disk with the guest's write"
        );
    }
}

/// `hospes run appliance.ova` boots the appliance's disk where it lies in the archive,
/// with the OVF's memory size; the guest's writes stay in memory and the OVA is not
/// changed. `hospes img import-ova` turns the disk into a qcow2 image of its own.
#[test]
fn an_ova_appliance_boots_and_imports() {
    let Some(dir) = images() else { return };
    if !have_qemu_img() {
        return;
    }
    let work = scratch("ova");
    let ova = make_ova(&work, &dir.join("linux-disk.img"), 200);
    let before = std::fs::read(&ova).expect("read the OVA");
    let t0 = Instant::now();
    let out = finish("OVA", start(&dir, &[path(&ova), "--boot", "c"]), t0);
    assert_disk_written(&out);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("writes stay in memory"), "{stderr}");
    assert!(
        std::fs::read(&ova).expect("read the OVA") == before,
        "the OVA changed"
    );
    let log = text(&out.stdout);
    assert!(
        log.contains("Memory: ") && log.contains("K/2"),
        "the guest's memory line does not show the OVF's 200 MiB:\n{}",
        log.lines()
            .filter(|l| l.contains("Memory:"))
            .collect::<String>()
    );

    let imported = ok(
        "img import-ova",
        hospes(&[
            "img",
            "import-ova",
            path(&ova),
            "-O",
            "qcow2",
            "--dir",
            path(&work),
        ]),
    );
    let printed = text(&imported.stdout);
    let disk = work.join("appliance-disk1.qcow2");
    assert!(
        printed.contains(&format!("hospes run -m 200 --hda {}", disk.display())),
        "{printed}"
    );
    qemu_check(&disk);
    let raw = dir.join("linux-disk.img");
    ok(
        "qemu-img compare",
        qemu_img(&["compare", "-F", "raw", path(&disk), path(&raw)]),
    );
}

/// What `img create` makes in each format, qemu-img checks clean, with the asked size.
#[test]
fn img_create_makes_images_qemu_img_accepts() {
    if !have_qemu_img() {
        return;
    }
    let work = scratch("create");
    let cases: [(&str, &[&str], &str); 7] = [
        ("qcow2", &[], "qcow2"),
        ("qcow2", &["-o", "compat=0.10,cluster_size=4K"], "qcow2"),
        ("vmdk", &[], "vmdk"),
        ("vmdk", &["-o", "subformat=monolithicFlat"], "vmdk"),
        ("vdi", &[], "vdi"),
        ("vdi", &["-o", "static=on"], "vdi"),
        ("raw", &[], "raw"),
    ];
    for (i, (format, options, expected)) in cases.iter().enumerate() {
        let image = work.join(format!("new{i}.{format}"));
        let mut args = vec!["img", "create", "-f", format];
        args.extend_from_slice(options);
        args.extend_from_slice(&[path(&image), "100M"]);
        ok(&format!("{args:?}"), hospes(&args));
        if *format != "raw" {
            qemu_check(&image);
        }
        let info = text(
            &ok(
                "qemu-img info",
                qemu_img(&["info", "--output=json", path(&image)]),
            )
            .stdout,
        );
        assert!(
            info.contains("\"virtual-size\": 104857600"),
            "{args:?}: {info}"
        );
        assert!(
            info.contains(&format!("\"format\": \"{expected}\"")),
            "{args:?}: {info}"
        );
        let ours = text(&ok("img info", hospes(&["img", "info", path(&image)])).stdout);
        assert!(ours.contains(&format!("file format: {expected}")), "{ours}");
        assert!(ours.contains("(104857600 bytes)"), "{ours}");
    }
}

/// raw -> qcow2 -> VMDK -> VDI -> raw with `img convert`: every step compares equal to
/// the source in qemu-img, and the last is the source byte for byte. Images qemu-img
/// makes in each format convert back to the source too.
#[test]
fn img_convert_round_trips_through_every_format() {
    if !have_qemu_img() {
        return;
    }
    let work = scratch("convert");
    let source = work.join("source.raw");
    // Disks are whole sectors; not whole clusters, grains or blocks.
    let bytes = varied((20 << 20) + 25 * 512);
    std::fs::write(&source, &bytes).expect("write the source");
    let mut from = source.clone();
    for format in ["qcow2", "vmdk", "vdi", "raw"] {
        let to = work.join(format!("step.{format}"));
        ok(
            &format!("img convert -O {format}"),
            hospes(&["img", "convert", "-O", format, path(&from), path(&to)]),
        );
        ok(
            &format!("qemu-img compare {format}"),
            qemu_img(&["compare", "-F", "raw", path(&to), path(&source)]),
        );
        if format != "raw" {
            qemu_check(&to);
        }
        from = to;
    }
    assert!(
        std::fs::read(&from).expect("read") == bytes,
        "the round trip changed bytes"
    );
    for (format, options) in [
        ("qcow2", "compression_type=zlib"),
        ("vmdk", "subformat=streamOptimized"),
        ("vdi", "static=on"),
    ] {
        let made = work.join(format!("qemu.{format}"));
        ok(
            "qemu-img convert",
            qemu_img(&[
                "convert",
                "-O",
                format,
                "-o",
                options,
                path(&source),
                path(&made),
            ]),
        );
        let back = work.join(format!("back-{format}.raw"));
        ok(
            &format!("img convert from qemu-img's {format}"),
            hospes(&["img", "convert", "-O", "raw", path(&made), path(&back)]),
        );
        assert!(
            std::fs::read(&back).expect("read") == bytes,
            "{format}: wrong bytes"
        );
    }
}

/// `img check` agrees with `qemu-img check`: clean (exit 0), then corrupt (exit 2)
/// once the refcount table's first entry is gone.
#[test]
fn img_check_finds_what_qemu_img_finds() {
    if !have_qemu_img() {
        return;
    }
    let work = scratch("check");
    let source = work.join("source.raw");
    std::fs::write(&source, varied(3 << 20)).expect("write");
    let image = work.join("image.qcow2");
    ok(
        "qemu-img convert",
        qemu_img(&["convert", "-O", "qcow2", path(&source), path(&image)]),
    );
    let clean = hospes(&["img", "check", path(&image)]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stdout));
    assert!(text(&clean.stdout).contains("No errors were found"));
    // Header bytes 48..56: the refcount table's offset; its first entry points to the
    // refcount block of the first clusters.
    let mut file = std::fs::read(&image).expect("read");
    let table = u64::from_be_bytes(file[48..56].try_into().expect("8 bytes")) as usize;
    file[table..table + 8].fill(0);
    std::fs::write(&image, &file).expect("write");
    let ours = hospes(&["img", "check", path(&image)]);
    let theirs = qemu_img(&["check", path(&image)]);
    assert_eq!(theirs.status.code(), Some(2), "{}", text(&theirs.stdout));
    assert_eq!(ours.status.code(), Some(2), "{}", text(&ours.stdout));
    assert!(
        text(&ours.stdout).contains("ERROR"),
        "{}",
        text(&ours.stdout)
    );
}

/// Bad input gets one line on stderr and a non-zero exit, and the file stays as it was.
#[test]
fn bad_images_and_arguments_give_one_line_errors() {
    let work = scratch("bad");
    let broken = work.join("broken.qcow2");
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(4096, 0xff);
    std::fs::write(&broken, &bytes).expect("write");
    let vdi = work.join("broken.vdi");
    let mut v = vec![0u8; 1024];
    v[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
    v[0x44..0x48].copy_from_slice(&0x0001_0001u32.to_le_bytes());
    v[0x48..0x4c].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
    std::fs::write(&vdi, &v).expect("write");
    let missing = work.join("missing.img");
    let existing = work.join("existing.raw");
    std::fs::write(&existing, b"keep me").expect("write");
    let cases: Vec<Vec<&str>> = vec![
        vec!["img", "info", path(&broken)],
        vec!["img", "check", path(&broken)],
        vec!["img", "info", path(&vdi)],
        vec!["img", "info", path(&missing)],
        vec![
            "img",
            "convert",
            "-O",
            "qcow2",
            path(&broken),
            path(&missing),
        ],
        vec![
            "img",
            "convert",
            "-O",
            "raw",
            path(&existing),
            path(&existing),
        ],
        vec!["img", "create", "-f", "floppy", path(&missing), "1M"],
        vec!["img", "create", "-f", "qcow2", path(&missing), "ten"],
        vec!["run", "--display", "none", "--hda", path(&broken)],
        vec!["run", "--display", "none", path(&vdi)],
    ];
    for args in cases {
        let out = hospes(&args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read(&broken).expect("read"), bytes);
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");
    assert!(
        !missing.exists(),
        "a failed command left {}",
        missing.display()
    );
}
