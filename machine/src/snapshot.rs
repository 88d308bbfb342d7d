//! Snapshots: the whole machine (CPU, memory, every device, the BIOS) as bytes and back
//! (DESIGN.md, Record/replay, snapshots, gdb).
//!
//! A [`Snapshot`] lives in memory: the state of the CPU and devices encoded with
//! postcard, and guest memory page by page, where pages equal to those of the snapshot
//! before share its copy (a debugger keeps many). [`Snapshot::write_to`] puts one in a
//! file: a magic line and a version, then one zlib stream with the machine's shape
//! (RAM size, the disk images and their checksums), the state, the BIOS, and the
//! non-zero pages.
//! What is stored is restored onto a machine built anew from that shape, on any host.
//!
//! Host storage is not in a snapshot: disk images are named by path and checked by
//! size and CRC-32 when a snapshot is restored from a file.

use crate::board::{Board, Devices};
use crate::{disk, shadow, start_jit, Machine, MachineError, MAX_RAM_MIB};
use flate2::bufread::ZlibDecoder;
use flate2::write::ZlibEncoder;
use hospes_cpu::Cpu;
use hospes_jit::Tier;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// The first bytes of a snapshot file.
pub const MAGIC: &[u8; 16] = b"HOSPES SNAPSHOT\n";
/// The layout of the state. Bump it whenever a saved structure changes (the test
/// `snapshot_format_is_versioned` notices): older files are then refused, clearly.
pub const VERSION: u32 = 6;

const PAGE: usize = hospes_cpu::mem::PAGE_SIZE as usize;
/// A page of zeros to compare with (a slice comparison is a memcmp).
const ZEROS: &[u8] = &[0; PAGE];

/// Appends `value`, encoded, to `out`.
pub(crate) fn put<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), String> {
    postcard::to_io(value, out)
        .map(|_| ())
        .map_err(|e| format!("cannot encode the machine state: {e}"))
}

/// Decodes a value from the front of `input`, which moves past it.
pub(crate) fn take<T: DeserializeOwned>(input: &mut &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(input)
        .map_err(|e| format!("the machine state does not decode: {e}"))?;
    *input = rest;
    Ok(value)
}

/// Where a disk image is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskRole {
    Floppy,
    Hda,
    Hdb,
    Cdrom,
}

/// A disk image file of the machine, as a snapshot names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFile {
    pub path: PathBuf,
    pub role: DiskRole,
    /// The disk image inside the archive at `path` (an OVA appliance's disk, by its
    /// name there), or None when `path` is the image.
    pub member: Option<String>,
}

/// A disk image's size and CRC-32, read through.
fn checksum(file: &DiskFile) -> Result<(u64, u32), String> {
    let path = &file.path;
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("cannot open disk image {}: {e}", path.display()))?;
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("cannot read disk image {}: {e}", path.display()))?;
        if n == 0 {
            return Ok((crc.amount() as u64, crc.sum()));
        }
        crc.update(&buf[..n]);
    }
}

/// What a machine must be built with before a snapshot can be restored onto it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub ram_mib: u64,
    /// Bytes of host memory behind the guest's: RAM and the ROM space.
    pub host_len: usize,
    pub disks: Vec<DiskFile>,
    pub nic: Option<crate::nic::NicConfig>,
}

/// A page of host memory in a snapshot; None for a page of zeros.
pub(crate) type Page = Option<Arc<[u8]>>;

/// The whole machine at one instruction count.
#[derive(Clone)]
pub struct Snapshot {
    pub icount: u64,
    pub(crate) shape: Shape,
    /// CPU, memory layout, devices and BIOS, machine fields (see `Machine::snapshot`).
    pub(crate) state: Vec<u8>,
    /// The BIOS (see `Board::save_bios`), shared with the snapshot before when the same.
    pub(crate) bios: Arc<[u8]>,
    /// Host memory page by page; None for a page of zeros.
    pub(crate) pages: Vec<Page>,
    /// The VGA's dispi (VBE) memory the same way; empty if the guest never used it.
    pub(crate) video_pages: Vec<Page>,
    /// Each disk image's size and CRC-32 when the snapshot was written to a file (None
    /// for a snapshot that never left memory).
    pub(crate) disk_sums: Option<Vec<(u64, u32)>>,
}

impl Snapshot {
    /// Takes `memory` page by page, sharing the pages that `old` holds unchanged.
    pub(crate) fn pages_of(memory: &[u8], old: &[Page]) -> Vec<Page> {
        memory
            .chunks(PAGE)
            .enumerate()
            .map(|(i, page)| {
                if page == ZEROS {
                    return None;
                }
                match old.get(i) {
                    Some(Some(same)) if &same[..] == page => Some(same.clone()),
                    _ => Some(Arc::from(page)),
                }
            })
            .collect()
    }

    /// Copies `pages` into `memory` (of the same size). Pages that already hold the
    /// right bytes are not written: a page of guest RAM never written stays unallocated.
    pub(crate) fn copy_pages(pages: &[Page], memory: &mut [u8]) {
        for (page, saved) in memory.chunks_mut(PAGE).zip(pages) {
            match saved {
                Some(bytes) if page != &bytes[..] => page.copy_from_slice(bytes),
                None if page != ZEROS => page.fill(0),
                _ => {}
            }
        }
    }

    /// Fails unless the disk images are as they were when the snapshot was written to
    /// a file (a snapshot that never left memory checks nothing).
    pub fn check_disks(&self) -> Result<(), MachineError> {
        let Some(sums) = &self.disk_sums else {
            return Ok(());
        };
        for (file, &(len, crc)) in self.shape.disks.iter().zip(sums) {
            let now = checksum(file).map_err(MachineError)?;
            if now != (len, crc) {
                return Err(MachineError(format!(
                    "{} changed since the snapshot was taken ({} bytes, CRC-32 {:08x}; it was {len} bytes, {crc:08x})",
                    file.path.display(),
                    now.0,
                    now.1
                )));
            }
        }
        Ok(())
    }

    /// How many pages this snapshot shares with `other` (the same copy, not only the
    /// same bytes).
    pub fn pages_shared_with(&self, other: &Snapshot) -> usize {
        let same =
            |(a, b): (&Page, &Page)| matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        self.pages
            .iter()
            .zip(&other.pages)
            .filter(|&p| same(p))
            .count()
    }

    /// Writes the snapshot as a file's contents.
    pub fn write_to(&self, out: impl Write) -> Result<(), MachineError> {
        let fail = |e: std::io::Error| MachineError(format!("cannot write the snapshot: {e}"));
        let mut out = out;
        out.write_all(MAGIC).map_err(fail)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(fail)?;
        let mut z = ZlibEncoder::new(out, flate2::Compression::fast());
        let sums = match &self.disk_sums {
            Some(sums) => sums.clone(),
            None => self
                .shape
                .disks
                .iter()
                .map(checksum)
                .collect::<Result<Vec<_>, _>>()
                .map_err(MachineError)?,
        };
        let mut head = Vec::new();
        put(&mut head, &(self.icount, &self.shape, sums)).map_err(MachineError)?;
        for part in [&head[..], &self.state, &self.bios] {
            z.write_all(&(part.len() as u64).to_le_bytes())
                .map_err(fail)?;
            z.write_all(part).map_err(fail)?;
        }
        write_pages(&mut z, &self.pages).map_err(fail)?;
        z.write_all(&(self.video_pages.len() as u32).to_le_bytes())
            .map_err(fail)?;
        write_pages(&mut z, &self.video_pages).map_err(fail)?;
        z.finish().map_err(fail)?.flush().map_err(fail)
    }

    /// Reads a snapshot file's contents. Anything that is not a whole, intact snapshot
    /// of this version is an error.
    pub fn read_from(input: impl Read) -> Result<Snapshot, MachineError> {
        let bad = |what: &str| MachineError(format!("not a usable hospes snapshot: {what}"));
        let mut input = input;
        let mut magic = [0u8; 16];
        input.read_exact(&mut magic).map_err(|_| bad("too short"))?;
        if &magic != MAGIC {
            return Err(bad("it does not start as one"));
        }
        let mut version = [0u8; 4];
        input
            .read_exact(&mut version)
            .map_err(|_| bad("too short"))?;
        let version = u32::from_le_bytes(version);
        if version != VERSION {
            return Err(MachineError(format!(
                "the snapshot is of format version {version}; this hospes reads version {VERSION} only"
            )));
        }
        let mut z = ZlibDecoder::new(BufReader::new(input));
        let broken = |e: std::io::Error| bad(&format!("damaged or cut short ({e})"));
        let mut part = || -> Result<Vec<u8>, MachineError> {
            let mut len = [0u8; 8];
            z.read_exact(&mut len).map_err(broken)?;
            let len = u64::from_le_bytes(len);
            let mut bytes = Vec::new();
            (&mut z).take(len).read_to_end(&mut bytes).map_err(broken)?;
            if bytes.len() as u64 != len {
                return Err(bad("cut short"));
            }
            Ok(bytes)
        };
        let head = part()?;
        let state = part()?;
        let bios = Arc::from(part()?);
        let (icount, shape, sums): (u64, Shape, Vec<(u64, u32)>) =
            take(&mut &head[..]).map_err(|e| bad(&e))?;
        if sums.len() != shape.disks.len() {
            return Err(bad("disk checksums missing"));
        }
        if shape.host_len % PAGE != 0 || shape.host_len > 4 << 30 {
            return Err(bad("a memory size out of range"));
        }
        let pages = read_pages(&mut z, shape.host_len / PAGE).map_err(broken)?;
        let mut video_count = [0u8; 4];
        z.read_exact(&mut video_count).map_err(broken)?;
        let video_count = u32::from_le_bytes(video_count) as usize;
        if video_count != 0 && video_count != VIDEO_PAGES {
            return Err(bad("a video memory size out of range"));
        }
        let video_pages = read_pages(&mut z, video_count).map_err(broken)?;
        // The stream must end here, with its checksum intact.
        let mut rest = Vec::new();
        z.read_to_end(&mut rest).map_err(broken)?;
        if !rest.is_empty() || !z.into_inner().fill_buf().map_err(broken)?.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Snapshot {
            icount,
            shape,
            state,
            bios,
            pages,
            video_pages,
            disk_sums: Some(sums),
        })
    }
}

/// Pages of a dispi (VBE) memory.
const VIDEO_PAGES: usize = hospes_devices::vga::dispi::MEMORY_SIZE / PAGE;

/// Writes pages as a bitmap of the present ones, then those pages.
fn write_pages(out: &mut impl Write, pages: &[Page]) -> std::io::Result<()> {
    let mut present = vec![0u8; pages.len().div_ceil(8)];
    for (i, p) in pages.iter().enumerate() {
        if p.is_some() {
            present[i / 8] |= 1 << (i % 8);
        }
    }
    out.write_all(&present)?;
    for page in pages.iter().flatten() {
        out.write_all(page)?;
    }
    Ok(())
}

/// Reads `count` pages as [`write_pages`] wrote them.
fn read_pages(input: &mut impl Read, count: usize) -> std::io::Result<Vec<Page>> {
    let mut present = vec![0u8; count.div_ceil(8)];
    input.read_exact(&mut present)?;
    let mut pages = Vec::with_capacity(count);
    for i in 0..count {
        if present[i / 8] & (1 << (i % 8)) == 0 {
            pages.push(None);
            continue;
        }
        let mut page = vec![0u8; PAGE];
        input.read_exact(&mut page)?;
        pages.push(Some(Arc::from(page)));
    }
    Ok(pages)
}

/// Snapshots: the machine's side.
impl Machine {
    /// The whole machine now. Pages equal to those of `previous` (an earlier snapshot of
    /// this machine) share its copies.
    pub fn snapshot(&self, previous: Option<&Snapshot>) -> Result<Snapshot, MachineError> {
        let mut state = Vec::new();
        let err = MachineError;
        put(&mut state, &self.cpu.state).map_err(err)?;
        put(&mut state, &self.cpu.mem.layout()).map_err(err)?;
        self.board.save(&mut state).map_err(err)?;
        put(&mut state, &(&self.shadow, self.resets)).map_err(err)?;
        let overlays: Vec<_> = self
            .images
            .iter()
            .map(|i| i.borrow().overlay().cloned())
            .collect();
        put(&mut state, &overlays).map_err(err)?;
        let bios = self.board.save_bios().map_err(err)?;
        let bios = match previous {
            Some(p) if *p.bios == *bios => p.bios.clone(),
            _ => Arc::from(bios),
        };
        Ok(Snapshot {
            icount: self.cpu.state.icount,
            shape: Shape {
                ram_mib: self.ram_mib,
                host_len: self.cpu.mem.host_bytes().len(),
                disks: self.disks.clone(),
                nic: self
                    .board
                    .devices
                    .nic
                    .as_ref()
                    .map(|n| crate::nic::NicConfig {
                        mac: n.card.mac(),
                        wiring: n.wiring,
                    }),
            },
            state,
            bios,
            pages: Snapshot::pages_of(
                self.cpu.mem.host_bytes(),
                previous.map_or(&[], |p| &p.pages[..]),
            ),
            video_pages: Snapshot::pages_of(
                self.board.devices.vga.dispi().memory(),
                previous.map_or(&[], |p| &p.video_pages[..]),
            ),
            disk_sums: None,
        })
    }

    /// A snapshot to write to a file: it must name every disk of the machine.
    pub fn snapshot_for_file(&self) -> Result<Snapshot, MachineError> {
        if self.board.devices.drives.len() != self.disks.len() {
            return Err(MachineError(
                "this machine's disks are not all image files: it cannot be saved to a file".into(),
            ));
        }
        self.snapshot(None)
    }

    /// Writes the whole machine to the file `path`.
    pub fn save(&self, path: &std::path::Path) -> Result<(), MachineError> {
        let snap = self.snapshot_for_file()?;
        let fail =
            |e: std::io::Error| MachineError(format!("cannot write {}: {e}", path.display()));
        let file = std::fs::File::create(path).map_err(fail)?;
        let mut out = std::io::BufWriter::new(file);
        snap.write_to(&mut out)?;
        out.into_inner()
            .map_err(|e| fail(e.into_error()))?
            .sync_all()
            .map_err(fail)
    }

    /// Puts the machine back to `snap`, a snapshot of a machine of the same shape (this
    /// one, or one built with [`Machine::from_snapshot`]). On an error the machine is
    /// left in an unknown state: throw it away.
    pub fn restore(&mut self, snap: &Snapshot) -> Result<(), MachineError> {
        let shape = &snap.shape;
        if shape.ram_mib != self.ram_mib
            || shape.host_len != self.cpu.mem.host_bytes().len()
            || shape.disks != self.disks
        {
            return Err(MachineError(
                "the snapshot is of a machine of another shape (memory or disks)".into(),
            ));
        }
        let bad = |e: String| MachineError(format!("the snapshot cannot be restored: {e}"));
        let mut input = &snap.state[..];
        let state: hospes_cpu::state::CpuState = take(&mut input).map_err(bad)?;
        let layout: hospes_cpu::mem::MemLayout = take(&mut input).map_err(bad)?;
        self.cpu
            .mem
            .set_layout(layout)
            .map_err(|e| bad(e.to_string()))?;
        self.board.restore(&mut input).map_err(bad)?;
        (self.shadow, self.resets) = take(&mut input).map_err(bad)?;
        let overlays: Vec<Option<disk::Overlay>> = take(&mut input).map_err(bad)?;
        if overlays.len() != self.images.len() {
            return Err(bad("the disk overlays differ from the disks".into()));
        }
        for (image, overlay) in self.images.iter().zip(overlays) {
            image.borrow_mut().set_overlay(overlay).map_err(bad)?;
        }
        self.board.restore_bios(&snap.bios).map_err(bad)?;
        if !input.is_empty() {
            return Err(bad("trailing bytes".into()));
        }
        Snapshot::copy_pages(&snap.pages, self.cpu.mem.host_bytes_mut());
        let video = (self.board.devices.vga).video_memory_to_restore(!snap.video_pages.is_empty());
        Snapshot::copy_pages(&snap.video_pages, video);
        self.cpu.state = state;
        self.cpu.flush_tlb();
        self.flush_code();
        self.cpu.shutdown = false;
        self.cpu.irq_changed();
        self.pending.clear();
        Ok(())
    }

    /// A machine built to `snap`'s shape (its disk images opened and checked unchanged)
    /// and restored to it.
    pub fn from_snapshot(
        snap: &Snapshot,
        tier: Tier,
        serial_out: Box<dyn Write>,
    ) -> Result<Machine, MachineError> {
        let shape = &snap.shape;
        snap.check_disks()?;
        let ram = shape.ram_mib << 20;
        if !(2..=MAX_RAM_MIB).contains(&shape.ram_mib) || shape.host_len < ram as usize {
            return Err(MachineError(
                "the snapshot's memory size is out of range".into(),
            ));
        }
        let disk::Attached {
            drives,
            ide,
            images,
        } = disk::attach(&shape.disks).map_err(MachineError)?;
        let cpu = Cpu::new(ram as usize, shape.host_len - ram as usize)
            .map_err(|e| MachineError(e.to_string()))?;
        let shadow = shadow::Shadowing::new(&cpu.mem);
        let board = Board {
            devices: Devices::new(0, drives, ide, shape.nic.as_ref()),
            bios: None,
        };
        let shape = (shape.ram_mib, shape.disks.clone(), images);
        let mut m = Machine::assemble(cpu, board, start_jit(tier)?, shadow, serial_out, shape);
        m.restore(snap)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{counting_machine, machine};
    use crate::{Machine, Stop};
    use hospes_jit::Tier;

    fn file_of(m: &Machine) -> Vec<u8> {
        let mut bytes = Vec::new();
        m.snapshot(None)
            .expect("snapshot")
            .write_to(&mut bytes)
            .expect("write");
        bytes
    }

    #[test]
    fn video_memory_is_kept_page_by_page() {
        let mut m = counting_machine();
        let before = m.snapshot(None).expect("snapshot");
        assert!(before.video_pages.is_empty(), "never used, not kept");
        // The guest draws in its VBE memory (the framebuffer BAR's bytes).
        let vga = &mut m.board.devices.vga;
        vga.lfb_write(0x10_0000, 0x5A);
        vga.lfb_write(0xFF_FFFF, 0xA5);
        let drawn = m.snapshot(Some(&before)).expect("snapshot");
        assert_eq!(drawn.video_pages.iter().flatten().count(), 2);
        assert!(
            drawn.state.len() < before.state.len() + 4096,
            "not in the device state"
        );
        m.board.devices.vga.lfb_write(0x10_0001, 0x77);
        let later = m.snapshot(Some(&drawn)).expect("snapshot");
        let shared = |a: &Snapshot, b: &Snapshot| {
            a.video_pages
                .iter()
                .zip(&b.video_pages)
                .filter(|(x, y)| matches!((x, y), (Some(x), Some(y)) if Arc::ptr_eq(x, y)))
                .count()
        };
        assert_eq!(shared(&later, &drawn), 1, "the unchanged page is shared");
        // Back in memory, and through a file.
        m.restore(&drawn).expect("restore");
        assert_eq!(m.board.devices.vga.lfb_read(0x10_0001), 0);
        assert_eq!(m.board.devices.vga.lfb_read(0xFF_FFFF), 0xA5);
        let digest = m.digest(0);
        let bytes = file_of(&m);
        let copy = Machine::from_snapshot(
            &Snapshot::read_from(&bytes[..]).expect("read back"),
            Tier::Interp,
            Box::new(std::io::sink()),
        )
        .expect("restore");
        assert_eq!(copy.board.devices.vga.lfb_read(0x10_0000), 0x5A);
        assert_eq!(copy.digest(0), digest);
        m.restore(&before).expect("restore");
        assert!(m.board.devices.vga.dispi().memory().is_empty());
        assert_ne!(m.digest(0), digest, "the digest covers the video memory");
    }

    #[test]
    fn a_snapshot_file_restores_the_same_machine() {
        let mut m = counting_machine();
        let start = m.cpu.state.icount;
        assert_eq!(m.run(Some(start + 1_000_000)), Stop::InstructionLimit);
        m.cpu.mem.write(0x12345, b"written by the test");
        let bytes = file_of(&m);
        let snap = Snapshot::read_from(&bytes[..]).expect("read back");
        assert_eq!(snap.icount, m.cpu.state.icount);
        let mut copy = Machine::from_snapshot(&snap, Tier::Interp, Box::new(std::io::sink()))
            .expect("restore");
        assert_eq!(copy.digest(3), m.digest(3));
        let mut buf = [0u8; 19];
        copy.cpu.mem.read(0x12345, &mut buf);
        assert_eq!(&buf, b"written by the test");
        // Both go on the same way.
        let end = start + 2_000_000;
        assert_eq!(m.run(Some(end)), Stop::InstructionLimit);
        assert_eq!(copy.run(Some(end)), Stop::InstructionLimit);
        assert_eq!(copy.digest(7), m.digest(7));
        assert_eq!(copy.cpu.state, m.cpu.state);
        assert_ne!(m.cpu.mem.read_u16(0x600), 0);
    }

    #[test]
    fn restoring_in_memory_goes_back_in_time() {
        let mut m = counting_machine();
        let start = m.cpu.state.icount;
        m.run(Some(start + 1_000_000));
        let then = m.snapshot(None).expect("snapshot");
        let digest = m.digest(0);
        let count = m.cpu.mem.read_u16(0x600);
        m.run(Some(start + 2_000_000));
        m.cpu.mem.write(0x5000, &[0xAA; 64]);
        assert_ne!(m.cpu.mem.read_u16(0x600), count);
        let later = m.snapshot(Some(&then)).expect("snapshot");
        // Only the pages written since (the count's, 5000h's) are not shared.
        let present = later.pages.iter().flatten().count();
        assert!(present > 10);
        assert_eq!(later.pages_shared_with(&then), present - 2);
        assert!(Arc::ptr_eq(&later.bios, &then.bios), "the BIOS is shared");
        m.restore(&then).expect("restore");
        assert_eq!(m.digest(0), digest);
        assert_eq!(m.cpu.mem.read_u8(0x5000), 0);
        assert_eq!(m.cpu.mem.read_u16(0x600), count);
    }

    #[test]
    fn disk_writes_kept_in_memory_go_back_with_a_snapshot_and_never_reach_the_file() {
        let path = std::env::temp_dir().join(format!("hospes-overlay-{}", std::process::id()));
        std::fs::write(&path, vec![0x11u8; 64 << 10]).expect("scratch image");
        let files = vec![DiskFile {
            path: path.clone(),
            role: DiskRole::Hda,
            member: None,
        }];
        let attached = disk::attach(&files).expect("attach");
        let image = attached.images[0].clone();
        let config = crate::MachineConfig {
            ram_mib: 4,
            boot: hospes_bios::BootOptions::default(),
            drives: attached.drives,
            ide: attached.ide,
            rtc_start_unix: 0,
            firmware: None,
            tier: Tier::Interp,
            disks: files,
            images: attached.images,
            nic: None,
        };
        let mut m = Machine::new(config, Box::new(std::io::sink())).expect("machine");
        m.keep_disk_writes_in_memory();
        let write = |v: u8| image.borrow_mut().write(4096, &[v; 512]).expect("write");
        let read = || {
            let mut b = [0u8; 1];
            image.borrow_mut().read(4096, &mut b).expect("read");
            b[0]
        };
        write(0x22);
        let snap = m.snapshot(None).expect("snapshot");
        write(0x33);
        assert_eq!(read(), 0x33);
        m.restore(&snap).expect("restore");
        assert_eq!(read(), 0x22, "the overlay as it was at the snapshot");
        let mut file = Vec::new();
        snap.write_to(&mut file).expect("write the snapshot");
        let again = Snapshot::read_from(&file[..]).expect("read it back");
        write(0x44);
        m.restore(&again).expect("restore from the file's bytes");
        assert_eq!(read(), 0x22);
        assert!(std::fs::read(&path)
            .expect("image")
            .iter()
            .all(|&b| b == 0x11));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn damaged_cut_or_old_snapshot_files_are_refused_clearly() {
        let m = machine();
        let bytes = file_of(&m);
        let err = |b: &[u8]| Snapshot::read_from(b).err().expect("refused").to_string();
        assert!(err(b"not a snapshot at all").contains("not a usable hospes snapshot"));
        assert!(err(&bytes[..bytes.len() / 2]).contains("not a usable hospes snapshot"));
        assert!(err(&bytes[..10]).contains("too short"));
        let mut old = bytes.clone();
        old[16..20].copy_from_slice(&(VERSION - 1).to_le_bytes());
        assert!(err(&old).contains(&format!("format version {}", VERSION - 1)));
        // Flipped bits anywhere in the compressed part: refused (zlib's checksum) or, if
        // the stream still decodes, refused by the checks after it; never a panic.
        for at in (24..bytes.len()).step_by(bytes.len() / 64) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            if let Ok(snap) = Snapshot::read_from(&bad[..]) {
                let _ = Machine::from_snapshot(&snap, Tier::Interp, Box::new(std::io::sink()));
            }
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(err(&trailing).contains("trailing bytes"));
    }
}
