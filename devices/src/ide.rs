//! IDE (parallel ATA) channel with ATA hard disks and an ATAPI CD-ROM, PIO only.
//!
//! One [`IdeChannel`] models a cable with a master and a slave. Each device keeps its own
//! task file; writes to the command block go to both devices (as on a real cable) and
//! reads come from the selected one. Commands complete at once in virtual time, but the
//! register protocol is kept: DRQ while a PIO block is pending, an interrupt per block,
//! a status read clears the interrupt, the alternate status does not.
//!
//! Absent devices: when the selected device is not present every command block register
//! reads 0 (the answer a present master gives for a missing slave in practice), so
//! libata's register write/read-back check sees no device. Commands sent to an absent
//! device are ignored.
//!
//! Bus-master DMA (PIIX-style BMIDE registers, PRD scatter-gather, READ/WRITE DMA and
//! their EXT forms for disks) is opt-in: until [`IdeChannel::set_dma_enabled`] is
//! called, IDENTIFY does not advertise DMA and guests use PIO. The machine routes the
//! channel's 8 BMIDE ports (BAR4 + 0 / + 8) to [`IdeChannel::bus_master_read`] /
//! [`IdeChannel::bus_master_write`] and calls [`IdeChannel::run_dma`] whenever
//! [`IdeChannel::dma_pending`] says a started transfer is waiting. ATAPI DMA is not
//! implemented (the CD never advertises it).

use crate::{Nanos, PortDevice};

/// Bytes per ATA sector.
pub const SECTOR_SIZE: usize = 512;
/// Bytes per CD-ROM (mode 1) sector.
pub const CD_SECTOR_SIZE: usize = 2048;
/// Largest block size accepted by SET MULTIPLE MODE (IDENTIFY word 47).
const MAX_MULTIPLE: u64 = 16;
/// CD sectors buffered at a time during an ATAPI READ; bounds the buffer at 32 KiB.
const CD_BUFFER_SECTORS: u64 = 16;

/// Storage behind a disk or a CD medium, addressed in bytes.
pub trait BlockBackend {
    /// Size in 512-byte sectors.
    fn sector_count(&self) -> u64;
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), String>;
    fn flush(&mut self) -> Result<(), String>;
    fn read_only(&self) -> bool;
}

/// An in-memory [`BlockBackend`], for tests and small images.
pub struct MemBackend(pub Vec<u8>);

impl MemBackend {
    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, String> {
        let start = usize::try_from(offset).map_err(|_| "offset too large".to_string())?;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.0.len())
            .ok_or_else(|| "access past end of image".to_string())?;
        Ok(start..end)
    }
}

impl BlockBackend for MemBackend {
    fn sector_count(&self) -> u64 {
        (self.0.len() / SECTOR_SIZE) as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0[range]);
        Ok(())
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), String> {
        let range = self.range(offset, buf.len())?;
        self.0[range].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn read_only(&self) -> bool {
        false
    }
}

/// What is attached at one position of a channel.
pub enum IdeDevice {
    /// An ATA hard disk.
    Disk(Box<dyn BlockBackend>),
    /// An ATAPI CD-ROM drive with an optional medium (its byte size / 2048 = sectors).
    Cdrom(Option<Box<dyn BlockBackend>>),
}

impl IdeDevice {
    fn no_cdrom() -> IdeDevice {
        IdeDevice::Cdrom(None)
    }
}

// Status register bits.
const BSY: u8 = 0x80;
const DRDY: u8 = 0x40;
#[allow(dead_code)]
const DF: u8 = 0x20;
const DSC: u8 = 0x10;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;

// Error register bits.
const ABRT: u8 = 0x04;
const IDNF: u8 = 0x10;
const UNC: u8 = 0x40;

// Device control register bits.
const CTRL_NIEN: u8 = 0x02;
const CTRL_SRST: u8 = 0x04;
const CTRL_HOB: u8 = 0x80;

// ATAPI interrupt reason bits (in the sector count register).
const IREASON_COD: u8 = 0x01;
const IREASON_IO: u8 = 0x02;

// SCSI sense keys and additional sense codes.
const SENSE_NONE: u8 = 0x00;
const SENSE_NOT_READY: u8 = 0x02;
const SENSE_ILLEGAL_REQUEST: u8 = 0x05;
const SENSE_UNIT_ATTENTION: u8 = 0x06;
const ASC_INVALID_OPCODE: u8 = 0x20;
const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
const ASC_INVALID_FIELD: u8 = 0x24;
const ASC_MEDIUM_CHANGED: u8 = 0x28;
const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3A;

/// The command block registers as one device holds them, with the previous values
/// (HOB, "high order byte") kept for 48-bit commands.
#[derive(Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct TaskFile {
    feature: u8,
    nsector: u8,
    sector: u8,
    lcyl: u8,
    hcyl: u8,
    hob_feature: u8,
    hob_nsector: u8,
    hob_sector: u8,
    hob_lcyl: u8,
    hob_hcyl: u8,
    select: u8,
}

impl TaskFile {
    fn lba28(&self) -> u64 {
        (u64::from(self.select & 0x0F) << 24)
            | (u64::from(self.hcyl) << 16)
            | (u64::from(self.lcyl) << 8)
            | u64::from(self.sector)
    }
    fn lba48(&self) -> u64 {
        (u64::from(self.hob_hcyl) << 40)
            | (u64::from(self.hob_lcyl) << 32)
            | (u64::from(self.hob_sector) << 24)
            | (u64::from(self.hcyl) << 16)
            | (u64::from(self.lcyl) << 8)
            | u64::from(self.sector)
    }
    fn count28(&self) -> u64 {
        match self.nsector {
            0 => 256,
            n => u64::from(n),
        }
    }
    fn count48(&self) -> u64 {
        match (u64::from(self.hob_nsector) << 8) | u64::from(self.nsector) {
            0 => 65536,
            n => n,
        }
    }
    fn set_signature(&mut self, atapi: bool) {
        self.nsector = 1;
        self.sector = 1;
        (self.lcyl, self.hcyl) = if atapi { (0x14, 0xEB) } else { (0, 0) };
        self.select &= 0x10;
    }
}

/// The data phase a device is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
enum Phase {
    Idle,
    /// PIO data in (disk reads, IDENTIFY): `remaining` sectors follow the buffered block.
    PioIn {
        next_lba: u64,
        remaining: u64,
        block: u64,
    },
    /// PIO data out (disk writes): the buffer is the block for `lba`.
    PioOut {
        lba: u64,
        remaining: u64,
        block: u64,
    },
    /// Waiting for the 12-byte ATAPI command packet.
    Packet,
    /// ATAPI data in: the buffer, then `remaining` CD sectors from `next_lba`.
    AtapiIn {
        next_lba: u64,
        remaining: u64,
    },
    /// A disk DMA command waiting for the bus master; `to_memory` for reads.
    Dma {
        lba: u64,
        count: u64,
        to_memory: bool,
    },
}

/// One device on the channel with its registers and transfer state.
#[derive(serde::Serialize, serde::Deserialize)]
struct Drive {
    /// Host storage is not state: a snapshot is restored onto a machine built with
    /// the same devices, which keeps its own (see [`IdeChannel::restore`]).
    #[serde(skip, default = "IdeDevice::no_cdrom")]
    device: IdeDevice,
    tf: TaskFile,
    status: u8,
    error: u8,
    /// The device's INTRQ (before nIEN masking).
    intrq: bool,
    /// Sectors per block for READ/WRITE MULTIPLE; 0 = multiple mode disabled.
    multiple: u64,
    write_cache: bool,
    /// Current CHS translation (INITIALIZE DEVICE PARAMETERS).
    heads: u64,
    sectors_per_track: u64,
    buf: Vec<u8>,
    pos: usize,
    /// End of the current DRQ data block within `buf`.
    chunk_end: usize,
    phase: Phase,
    /// ATAPI byte count limit given with the PACKET command.
    byte_limit: usize,
    /// ATAPI sense data: key, additional sense code, qualifier.
    sense: (u8, u8, u8),
    /// ATAPI: the medium changed since the last command (reported once).
    unit_attention: bool,
    /// ATAPI: a media event (2 = new media, 3 = removal) for GET EVENT STATUS.
    media_event: u8,
    #[serde(skip)]
    serial: &'static str,
    /// Whether IDENTIFY advertises (and commands accept) multiword DMA.
    dma_enabled: bool,
    /// Multiword DMA mode selected by SET FEATURES (bit n = mode n), for word 63.
    mwdma_selected: u16,
}

const IDENTIFY_MODEL_DISK: &str = "HOSPES HARDDISK";
const IDENTIFY_MODEL_CD: &str = "HOSPES CD-ROM";
const FIRMWARE: &str = "1.0";

/// Puts an ATA string into IDENTIFY words: space padded, two characters per word with
/// the first in the high byte.
fn put_ata_string(words: &mut [u16], s: &str) {
    let bytes = s.as_bytes();
    for (i, word) in words.iter_mut().enumerate() {
        let hi = bytes.get(2 * i).copied().unwrap_or(b' ');
        let lo = bytes.get(2 * i + 1).copied().unwrap_or(b' ');
        *word = (u16::from(hi) << 8) | u16::from(lo);
    }
}

fn words_to_bytes(words: &[u16; 256]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn lba_to_msf(lba: u64) -> [u8; 4] {
    let frames = lba + 150;
    let m = (frames / (75 * 60)).min(255) as u8;
    [0, m, ((frames / 75) % 60) as u8, (frames % 75) as u8]
}

fn be16(b: &[u8]) -> usize {
    (usize::from(b[0]) << 8) | usize::from(b[1])
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl Drive {
    fn new(device: IdeDevice, serial: &'static str) -> Self {
        let mut drive = Drive {
            device,
            tf: TaskFile::default(),
            status: 0,
            error: 0,
            intrq: false,
            multiple: 0,
            write_cache: true,
            heads: 16,
            sectors_per_track: 63,
            buf: Vec::new(),
            pos: 0,
            chunk_end: 0,
            phase: Phase::Idle,
            byte_limit: 0,
            sense: (SENSE_NONE, 0, 0),
            unit_attention: false,
            media_event: 0,
            serial,
            dma_enabled: false,
            mwdma_selected: 0,
        };
        drive.reset();
        drive
    }

    fn is_atapi(&self) -> bool {
        matches!(self.device, IdeDevice::Cdrom(_))
    }

    /// Power-on / software reset: signature in the task file, diagnostics passed.
    fn reset(&mut self) {
        let atapi = self.is_atapi();
        self.tf.set_signature(atapi);
        self.error = 0x01;
        self.status = if atapi { 0 } else { DRDY | DSC };
        self.phase = Phase::Idle;
        self.buf.clear();
        self.pos = 0;
        self.chunk_end = 0;
        self.intrq = false;
    }

    fn disk_sectors(&self) -> u64 {
        match &self.device {
            IdeDevice::Disk(b) => b.sector_count(),
            IdeDevice::Cdrom(_) => 0,
        }
    }

    fn default_cylinders(&self) -> u64 {
        (self.disk_sectors() / (16 * 63)).clamp(1, 16383)
    }

    fn complete(&mut self) {
        self.status = DRDY | DSC;
        self.error = 0;
        self.phase = Phase::Idle;
        self.intrq = true;
    }

    fn fail(&mut self, error: u8) {
        self.status = DRDY | DSC | ERR;
        self.error = error;
        self.phase = Phase::Idle;
        self.buf.clear();
        self.pos = 0;
        self.chunk_end = 0;
        self.intrq = true;
    }

    fn abort(&mut self) {
        self.fail(ABRT);
    }

    /// Executes an ATA command written to the command register.
    fn command(&mut self, cmd: u8) {
        self.intrq = false;
        if self.is_atapi() {
            self.atapi_ata_command(cmd);
        } else {
            self.disk_command(cmd);
        }
    }

    fn disk_command(&mut self, cmd: u8) {
        match cmd {
            0xEC => {
                self.buf = self.identify_disk();
                self.start_pio_in(0, 0, 1);
            }
            0x20 | 0x21 => self.start_read(false, 1),
            0x24 => self.start_read(true, 1),
            0xC4 | 0x29 => {
                if self.multiple == 0 {
                    return self.abort();
                }
                self.start_read(cmd == 0x29, self.multiple);
            }
            0x30 | 0x31 => self.start_write(false, 1),
            0x34 => self.start_write(true, 1),
            0xC5 | 0x39 => {
                if self.multiple == 0 {
                    return self.abort();
                }
                self.start_write(cmd == 0x39, self.multiple);
            }
            0x40..=0x42 => match self.check_range(cmd == 0x42) {
                Some(_) => self.complete(),
                None => self.fail(IDNF),
            },
            0xC6 => {
                let count = u64::from(self.tf.nsector);
                if count == 0 {
                    self.multiple = 0;
                    self.complete();
                } else if count <= MAX_MULTIPLE && count.is_power_of_two() {
                    self.multiple = count;
                    self.complete();
                } else {
                    self.abort();
                }
            }
            0xE7 | 0xEA => {
                let ok = match &mut self.device {
                    IdeDevice::Disk(b) => b.flush().is_ok(),
                    IdeDevice::Cdrom(_) => true,
                };
                if ok {
                    self.complete();
                } else {
                    self.abort();
                }
            }
            0xEF => self.set_features(),
            0x91 => {
                let spt = u64::from(self.tf.nsector);
                if spt == 0 {
                    return self.abort();
                }
                self.heads = u64::from(self.tf.select & 0x0F) + 1;
                self.sectors_per_track = spt;
                self.complete();
            }
            0xC8 | 0xC9 | 0x25 | 0xCA | 0xCB | 0x35 => {
                let to_memory = matches!(cmd, 0xC8 | 0xC9 | 0x25);
                let read_only = matches!(&self.device, IdeDevice::Disk(b) if b.read_only());
                if !self.dma_enabled || (!to_memory && read_only) {
                    return self.abort();
                }
                match self.check_range(matches!(cmd, 0x25 | 0x35)) {
                    Some((lba, count)) => {
                        self.phase = Phase::Dma {
                            lba,
                            count,
                            to_memory,
                        };
                        self.status = DRDY | DSC | DRQ;
                        self.error = 0;
                    }
                    None => self.fail(IDNF),
                }
            }
            0x10..=0x1F | 0x70 => self.complete(), // RECALIBRATE, SEEK
            // IDLE / STANDBY / SLEEP family: no power states to model.
            0x94..=0x99 | 0xE0..=0xE3 | 0xE6 => self.complete(),
            0xE5 => {
                self.complete();
                self.tf.nsector = 0xFF; // active or idle
            }
            0x90 => {
                self.tf.set_signature(false);
                self.complete();
                self.error = 0x01;
            }
            _ => self.abort(), // includes PACKET and IDENTIFY PACKET DEVICE
        }
    }

    fn set_features(&mut self) {
        match self.tf.feature {
            0x02 => self.write_cache = true,
            0x82 => self.write_cache = false,
            // Set transfer mode: PIO modes, and multiword DMA 0-2 when DMA is enabled.
            0x03 if self.tf.nsector < 0x10 => {}
            0x03 if self.dma_enabled && (0x20..=0x22).contains(&self.tf.nsector) => {
                self.mwdma_selected = 1 << (self.tf.nsector & 0x07);
            }
            0x03 => return self.abort(),
            0x55 | 0xAA | 0x66 | 0xCC | 0x33 | 0xBB | 0x44 => {}
            _ => return self.abort(),
        }
        self.complete();
    }

    /// The starting LBA and sector count of the current read/write/verify command,
    /// or None if the range does not lie within the disk.
    fn check_range(&self, lba48: bool) -> Option<(u64, u64)> {
        let (lba, count) = if lba48 {
            (self.tf.lba48(), self.tf.count48())
        } else if self.tf.select & 0x40 != 0 {
            (self.tf.lba28(), self.tf.count28())
        } else {
            (self.chs_to_lba()?, self.tf.count28())
        };
        let end = lba.checked_add(count)?;
        (end <= self.disk_sectors()).then_some((lba, count))
    }

    fn chs_to_lba(&self) -> Option<u64> {
        let cyl = u64::from(self.tf.lcyl) | (u64::from(self.tf.hcyl) << 8);
        let head = u64::from(self.tf.select & 0x0F);
        let sector = u64::from(self.tf.sector);
        if sector == 0 || sector > self.sectors_per_track || head >= self.heads {
            return None;
        }
        Some((cyl * self.heads + head) * self.sectors_per_track + sector - 1)
    }

    fn start_read(&mut self, lba48: bool, block: u64) {
        match self.check_range(lba48) {
            Some((lba, count)) => {
                self.phase = Phase::PioIn {
                    next_lba: lba,
                    remaining: count,
                    block,
                };
                self.load_read_block();
            }
            None => self.fail(IDNF),
        }
    }

    /// Reads the next block of a PIO-in disk command into the buffer and raises DRQ.
    fn load_read_block(&mut self) {
        let Phase::PioIn {
            next_lba,
            remaining,
            block,
        } = self.phase
        else {
            return;
        };
        let n = block.min(remaining);
        self.buf.clear();
        self.buf.resize(n as usize * SECTOR_SIZE, 0);
        let result = match &mut self.device {
            IdeDevice::Disk(b) => b.read(next_lba * SECTOR_SIZE as u64, &mut self.buf),
            IdeDevice::Cdrom(_) => Err("not a disk".into()),
        };
        if result.is_err() {
            return self.fail(UNC | ABRT);
        }
        self.start_pio_in(next_lba + n, remaining - n, block);
    }

    /// Presents the buffer as one PIO-in block: DRQ set and the interrupt raised.
    fn start_pio_in(&mut self, next_lba: u64, remaining: u64, block: u64) {
        self.phase = Phase::PioIn {
            next_lba,
            remaining,
            block,
        };
        self.pos = 0;
        self.chunk_end = self.buf.len();
        self.status = DRDY | DSC | DRQ;
        self.error = 0;
        self.intrq = true;
    }

    fn start_write(&mut self, lba48: bool, block: u64) {
        if matches!(&self.device, IdeDevice::Disk(b) if b.read_only()) {
            return self.abort();
        }
        match self.check_range(lba48) {
            Some((lba, count)) => {
                // The first block is requested without an interrupt.
                self.start_pio_out(lba, count, block);
            }
            None => self.fail(IDNF),
        }
    }

    fn start_pio_out(&mut self, lba: u64, count: u64, block: u64) {
        let n = block.min(count);
        self.buf.clear();
        self.buf.resize(n as usize * SECTOR_SIZE, 0);
        self.pos = 0;
        self.chunk_end = self.buf.len();
        self.phase = Phase::PioOut {
            lba,
            remaining: count - n,
            block,
        };
        self.status = DRDY | DSC | DRQ;
        self.error = 0;
    }

    /// The guest has written a whole PIO-out block: store it, then ask for the next.
    fn finish_write_block(&mut self) {
        let Phase::PioOut {
            lba,
            remaining,
            block,
        } = self.phase
        else {
            return;
        };
        let result = match &mut self.device {
            IdeDevice::Disk(b) => b.write(lba * SECTOR_SIZE as u64, &self.buf),
            IdeDevice::Cdrom(_) => Err("not a disk".into()),
        };
        if result.is_err() {
            return self.abort();
        }
        let written = (self.buf.len() / SECTOR_SIZE) as u64;
        if remaining > 0 {
            self.start_pio_out(lba + written, remaining, block);
            self.intrq = true;
        } else {
            self.buf.clear();
            self.pos = 0;
            self.chunk_end = 0;
            self.complete();
        }
    }

    fn read_data_byte(&mut self) -> u8 {
        if self.status & DRQ == 0
            || !matches!(self.phase, Phase::PioIn { .. } | Phase::AtapiIn { .. })
        {
            return 0xFF;
        }
        let byte = self.buf.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        if self.pos >= self.chunk_end {
            match self.phase {
                Phase::PioIn { remaining, .. } => {
                    if remaining > 0 {
                        self.load_read_block();
                    } else {
                        // Last block drained: no interrupt for the end of a PIO read.
                        self.status = DRDY | DSC;
                        self.phase = Phase::Idle;
                    }
                }
                Phase::AtapiIn { .. } => self.atapi_next_chunk(),
                _ => {}
            }
        }
        byte
    }

    fn write_data_byte(&mut self, byte: u8) {
        if self.status & DRQ == 0 {
            return;
        }
        match self.phase {
            Phase::PioOut { .. } | Phase::Packet => {}
            _ => return,
        }
        if let Some(slot) = self.buf.get_mut(self.pos) {
            *slot = byte;
        }
        self.pos += 1;
        if self.pos >= self.chunk_end {
            match self.phase {
                Phase::PioOut { .. } => self.finish_write_block(),
                Phase::Packet => self.execute_packet(),
                _ => {}
            }
        }
    }

    fn identify_common(&self, words: &mut [u16; 256], model: &str) {
        put_ata_string(&mut words[10..20], self.serial);
        put_ata_string(&mut words[23..27], FIRMWARE);
        put_ata_string(&mut words[27..47], model);
    }

    fn identify_disk(&self) -> Vec<u8> {
        let mut w = [0u16; 256];
        let total = self.disk_sectors();
        let cyls = self.default_cylinders();
        w[0] = 0x0040; // fixed disk
        w[1] = cyls as u16;
        w[3] = 16;
        w[6] = 63;
        self.identify_common(&mut w, IDENTIFY_MODEL_DISK);
        w[47] = 0x8000 | MAX_MULTIPLE as u16;
        w[49] = if self.dma_enabled { 0x0300 } else { 0x0200 }; // LBA, DMA if enabled
        w[50] = 0x4000;
        w[51] = 0x0200; // PIO timing mode 2 (obsolete field)
        w[53] = 0x0003; // words 54-58 and 64-70 valid
        let cur_cyls = (total / (self.heads * self.sectors_per_track)).min(65535);
        w[54] = cur_cyls as u16;
        w[55] = self.heads as u16;
        w[56] = self.sectors_per_track as u16;
        let chs_capacity = (cur_cyls * self.heads * self.sectors_per_track).min(0xFFFF_FFFF);
        w[57] = chs_capacity as u16;
        w[58] = (chs_capacity >> 16) as u16;
        w[59] = if self.multiple != 0 {
            0x0100 | self.multiple as u16
        } else {
            0
        };
        let lba28 = total.min(0x0FFF_FFFF);
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        if self.dma_enabled {
            w[63] = 0x0007 | (self.mwdma_selected << 8); // multiword DMA 0-2
        }
        w[64] = 0x0003; // PIO modes 3 and 4
        w[65] = 120;
        w[66] = 120;
        w[67] = 120;
        w[68] = 120;
        w[80] = 0x01F0; // ATA/ATAPI-4 to -8
        w[82] = 0x0020; // write cache supported
        w[83] = 0x7400; // FLUSH CACHE EXT, FLUSH CACHE, LBA48
        w[84] = 0x4000;
        w[85] = if self.write_cache { 0x0020 } else { 0 };
        w[86] = 0x3400;
        w[87] = 0x4000;
        let lba48 = total.min(0xFFFF_FFFF_FFFF);
        w[100] = lba48 as u16;
        w[101] = (lba48 >> 16) as u16;
        w[102] = (lba48 >> 32) as u16;
        w[103] = 0;
        words_to_bytes(&w)
    }

    fn identify_packet(&self) -> Vec<u8> {
        let mut w = [0u16; 256];
        // ATAPI, CD-ROM, removable, DRQ within 50 us (no CDB interrupt), 12-byte packets.
        w[0] = 0x85C0;
        self.identify_common(&mut w, IDENTIFY_MODEL_CD);
        w[49] = 0x0200;
        w[50] = 0x4000;
        w[53] = 0x0002;
        w[64] = 0x0003;
        w[65] = 120;
        w[66] = 120;
        w[67] = 120;
        w[68] = 120;
        w[80] = 0x01F0;
        w[82] = 0x0010; // PACKET feature set
        w[83] = 0x4000;
        w[84] = 0x4000;
        w[85] = 0x0010;
        w[86] = 0;
        w[87] = 0x4000;
        words_to_bytes(&w)
    }

    // ---- ATAPI ----

    fn atapi_ata_command(&mut self, cmd: u8) {
        match cmd {
            0xA0 => {
                if self.tf.feature & 0x01 != 0 {
                    return self.abort(); // DMA requested; not implemented
                }
                let limit = usize::from(self.tf.lcyl) | (usize::from(self.tf.hcyl) << 8);
                self.byte_limit = match limit {
                    0 | 0xFFFF => 0xFFFE,
                    n => n,
                };
                self.buf.clear();
                self.buf.resize(12, 0);
                self.pos = 0;
                self.chunk_end = 12;
                self.phase = Phase::Packet;
                self.tf.nsector = IREASON_COD;
                self.status = DRDY | DSC | DRQ;
                self.error = 0;
            }
            0xA1 => {
                self.buf = self.identify_packet();
                self.start_pio_in(0, 0, 1);
            }
            0x08 => {
                self.reset();
            }
            0xEC => {
                // Real packet devices abort IDENTIFY DEVICE and show their signature,
                // which is how libata tells them from disks.
                self.tf.set_signature(true);
                self.abort();
            }
            0x90 => {
                self.tf.set_signature(true);
                self.complete();
                self.error = 0x01;
            }
            0xEF => self.set_features(),
            0xE5 => {
                self.complete();
                self.tf.nsector = 0xFF;
            }
            0xE0..=0xE3 | 0xE6 => self.complete(),
            _ => self.abort(),
        }
    }

    /// Medium size in 2048-byte sectors, or None without a medium.
    fn medium_sectors(&self) -> Option<u64> {
        match &self.device {
            IdeDevice::Cdrom(Some(m)) => Some(m.sector_count() / 4),
            _ => None,
        }
    }

    fn atapi_ok(&mut self) {
        self.sense = (SENSE_NONE, 0, 0);
        self.status = DRDY | DSC;
        self.error = 0;
        self.tf.nsector = IREASON_IO | IREASON_COD;
        self.phase = Phase::Idle;
        self.buf.clear();
        self.pos = 0;
        self.chunk_end = 0;
        self.intrq = true;
    }

    /// Ends the command with CHECK CONDITION: ERR set, sense key in error bits 7-4.
    fn check_condition(&mut self, key: u8, asc: u8, ascq: u8) {
        self.sense = (key, asc, ascq);
        self.status = DRDY | DSC | ERR;
        self.error = key << 4;
        self.tf.nsector = IREASON_IO | IREASON_COD;
        self.phase = Phase::Idle;
        self.buf.clear();
        self.pos = 0;
        self.chunk_end = 0;
        self.intrq = true;
    }

    fn invalid_field(&mut self) {
        self.check_condition(SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD, 0);
    }

    /// Sends `data` (cut to the allocation length) to the host.
    fn atapi_reply(&mut self, mut data: Vec<u8>, alloc: usize) {
        data.truncate(alloc);
        if data.is_empty() {
            return self.atapi_ok();
        }
        self.sense = (SENSE_NONE, 0, 0);
        self.buf = data;
        self.pos = 0;
        self.chunk_end = 0;
        self.phase = Phase::AtapiIn {
            next_lba: 0,
            remaining: 0,
        };
        self.atapi_next_chunk();
    }

    /// Called when a DRQ chunk is drained (or to start): offers the next chunk of at most
    /// the byte count limit, refilling from the medium, or ends the command.
    fn atapi_next_chunk(&mut self) {
        let Phase::AtapiIn {
            next_lba,
            remaining,
        } = self.phase
        else {
            return;
        };
        if self.pos >= self.buf.len() {
            if remaining == 0 {
                return self.atapi_ok();
            }
            let n = remaining.min(CD_BUFFER_SECTORS);
            self.buf.clear();
            self.buf.resize(n as usize * CD_SECTOR_SIZE, 0);
            self.pos = 0;
            let result = match &mut self.device {
                IdeDevice::Cdrom(Some(m)) => {
                    m.read(next_lba * CD_SECTOR_SIZE as u64, &mut self.buf)
                }
                _ => Err("no medium".into()),
            };
            if result.is_err() {
                // Medium error, unrecovered read error.
                return self.check_condition(0x03, 0x11, 0);
            }
            self.phase = Phase::AtapiIn {
                next_lba: next_lba + n,
                remaining: remaining - n,
            };
        }
        let available = self.buf.len() - self.pos;
        let mut len = available.min(self.byte_limit);
        if len < available {
            len &= !1; // only the last chunk may be odd
        }
        let len = len.max(1);
        self.chunk_end = self.pos + len;
        self.tf.lcyl = len as u8;
        self.tf.hcyl = (len >> 8) as u8;
        self.tf.nsector = IREASON_IO;
        self.status = DRDY | DSC | DRQ;
        self.error = 0;
        self.intrq = true;
    }

    fn execute_packet(&mut self) {
        let mut cdb = [0u8; 12];
        for (dst, src) in cdb.iter_mut().zip(self.buf.iter()) {
            *dst = *src;
        }
        self.buf.clear();
        self.pos = 0;
        self.chunk_end = 0;
        let opcode = cdb[0];
        // A pending medium change is reported once, to the first command that is not
        // allowed to pass it.
        if self.unit_attention && !matches!(opcode, 0x03 | 0x12 | 0x46 | 0x4A | 0xBD) {
            self.unit_attention = false;
            return self.check_condition(SENSE_UNIT_ATTENTION, ASC_MEDIUM_CHANGED, 0);
        }
        let needs_medium = matches!(
            opcode,
            0x00 | 0x25 | 0x28 | 0xA8 | 0x43 | 0x51 | 0xBE | 0x2B
        );
        if needs_medium && self.medium_sectors().is_none() {
            return self.check_condition(SENSE_NOT_READY, ASC_MEDIUM_NOT_PRESENT, 0);
        }
        let sectors = self.medium_sectors().unwrap_or(0);
        match opcode {
            0x00 | 0x1B | 0x1E | 0xBB | 0x2B => self.atapi_ok(),
            0x03 => {
                let (key, asc, ascq) = self.sense;
                let mut data = vec![0u8; 18];
                data[0] = 0x70;
                data[2] = key;
                data[7] = 10;
                data[12] = asc;
                data[13] = ascq;
                self.atapi_reply(data, usize::from(cdb[4]));
            }
            0x12 => {
                if cdb[1] & 0x01 != 0 {
                    return self.invalid_field(); // no vital product data pages
                }
                let mut data = vec![0u8; 36];
                data[0] = 0x05; // CD/DVD device
                data[1] = 0x80; // removable
                data[2] = 0x00;
                data[3] = 0x21; // ATAPI version 2, response format 1
                data[4] = 31;
                data[8..16].copy_from_slice(b"HOSPES  ");
                data[16..32].copy_from_slice(b"CD-ROM          ");
                data[32..36].copy_from_slice(b"1.0 ");
                self.atapi_reply(data, be16(&cdb[3..5]));
            }
            0x25 => {
                let last = sectors.saturating_sub(1).min(0xFFFF_FFFF) as u32;
                let mut data = last.to_be_bytes().to_vec();
                data.extend_from_slice(&(CD_SECTOR_SIZE as u32).to_be_bytes());
                self.atapi_reply(data, 8);
            }
            0x28 | 0xA8 | 0xBE => {
                let lba = be32(&cdb[2..6]);
                let count = match opcode {
                    0x28 => be16(&cdb[7..9]) as u64,
                    0xA8 => be32(&cdb[6..10]),
                    _ => {
                        // READ CD: only plain user data of mode 1 sectors.
                        if cdb[9] != 0x10 {
                            return self.invalid_field();
                        }
                        (u64::from(cdb[6]) << 16) | (u64::from(cdb[7]) << 8) | u64::from(cdb[8])
                    }
                };
                if lba.checked_add(count).is_none_or(|end| end > sectors) {
                    return self.check_condition(SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE, 0);
                }
                if count == 0 {
                    return self.atapi_ok();
                }
                self.sense = (SENSE_NONE, 0, 0);
                self.phase = Phase::AtapiIn {
                    next_lba: lba,
                    remaining: count,
                };
                self.atapi_next_chunk();
            }
            0x1A | 0x5A => self.mode_sense(&cdb),
            0x43 => self.read_toc(&cdb, sectors),
            0x46 => {
                let profile: u16 = if self.medium_sectors().is_some() {
                    0x0008
                } else {
                    0
                };
                let mut data = vec![0u8; 8];
                data[6..8].copy_from_slice(&profile.to_be_bytes());
                // Feature 0 (profile list with the CD-ROM profile) is the only feature
                // described; a request starting past it gets the header alone.
                if be16(&cdb[2..4]) == 0 {
                    data.extend_from_slice(&[0x00, 0x00, 0x03, 0x04, 0x00, 0x08]);
                    data.push(u8::from(profile == 0x0008));
                    data.push(0);
                }
                let len = (data.len() - 4) as u32;
                data[0..4].copy_from_slice(&len.to_be_bytes());
                self.atapi_reply(data, be16(&cdb[7..9]));
            }
            0x4A => {
                if cdb[1] & 0x01 == 0 {
                    return self.invalid_field(); // only polled operation
                }
                let alloc = be16(&cdb[7..9]);
                if cdb[4] & 0x10 != 0 {
                    let present = self.medium_sectors().is_some();
                    let event = std::mem::take(&mut self.media_event);
                    let data = vec![0, 6, 0x04, 0x10, event, u8::from(present) << 1, 0, 0];
                    self.atapi_reply(data, alloc);
                } else {
                    // No event available for the requested classes.
                    self.atapi_reply(vec![0, 2, 0x80, 0x10], alloc);
                }
            }
            0x51 => {
                let mut data = vec![0u8; 34];
                data[1] = 32;
                data[2] = 0x0E; // complete disc, last session complete
                data[3] = 1;
                data[4] = 1;
                data[5] = 1;
                data[6] = 1;
                self.atapi_reply(data, be16(&cdb[7..9]));
            }
            0xBD => self.atapi_reply(vec![0u8; 8], be16(&cdb[8..10])),
            _ => self.check_condition(SENSE_ILLEGAL_REQUEST, ASC_INVALID_OPCODE, 0),
        }
    }

    fn mode_sense(&mut self, cdb: &[u8; 12]) {
        let ten = cdb[0] == 0x5A;
        let page = cdb[2] & 0x3F;
        let error_recovery = [0x01u8, 0x06, 0x00, 0x05, 0, 0, 0, 0];
        let capabilities = [
            0x2Au8, 0x14, // page code, length
            0x00, 0x00, // reads CD-ROM only, writes nothing
            0x71, 0x00, // audio play, mode 2 forms 1/2, multisession
            0x29, 0x00, // tray, eject, lock
            0x02, 0xC2, // max speed 706 KB/s
            0x00, 0x00, // volume levels
            0x00, 0x00, // buffer size
            0x02, 0xC2, // current speed
            0, 0, 0, 0, 0, 0,
        ];
        let mut pages = Vec::new();
        match page {
            0x01 => pages.extend_from_slice(&error_recovery),
            0x2A => pages.extend_from_slice(&capabilities),
            0x3F => {
                pages.extend_from_slice(&error_recovery);
                pages.extend_from_slice(&capabilities);
            }
            _ => return self.invalid_field(),
        }
        let medium_type = if self.medium_sectors().is_some() {
            0x01
        } else {
            0x70
        };
        let mut data;
        let alloc;
        if ten {
            data = vec![0u8; 8];
            let len = (6 + pages.len()) as u16;
            data[0..2].copy_from_slice(&len.to_be_bytes());
            data[2] = medium_type;
            alloc = be16(&cdb[7..9]);
        } else {
            data = vec![(3 + pages.len()) as u8, medium_type, 0, 0];
            alloc = usize::from(cdb[4]);
        }
        data.extend_from_slice(&pages);
        self.atapi_reply(data, alloc);
    }

    fn read_toc(&mut self, cdb: &[u8; 12], sectors: u64) {
        let msf = cdb[1] & 0x02 != 0;
        let format = match cdb[2] & 0x0F {
            0 => cdb[9] >> 6,
            f => f,
        };
        let address = |lba: u64| -> [u8; 4] {
            if msf {
                lba_to_msf(lba)
            } else {
                (lba.min(0xFFFF_FFFF) as u32).to_be_bytes()
            }
        };
        let mut data = vec![0u8, 0, 1, 1];
        match format {
            0 => {
                let start = cdb[6];
                if start > 1 && start != 0xAA {
                    return self.invalid_field();
                }
                if start <= 1 {
                    data.extend_from_slice(&[0, 0x14, 1, 0]);
                    data.extend_from_slice(&address(0));
                }
                data.extend_from_slice(&[0, 0x14, 0xAA, 0]);
                data.extend_from_slice(&address(sectors));
            }
            1 => {
                // Multi-session info: one session, first track at LBA 0.
                data.extend_from_slice(&[0, 0x14, 1, 0]);
                data.extend_from_slice(&address(0));
            }
            _ => return self.invalid_field(),
        }
        let len = (data.len() - 2) as u16;
        data[0..2].copy_from_slice(&len.to_be_bytes());
        self.atapi_reply(data, be16(&cdb[7..9]));
    }
}

/// Guest physical memory as seen by a bus-master DMA transfer.
pub trait DmaMemory {
    fn read(&mut self, addr: u32, buf: &mut [u8]);
    fn write(&mut self, addr: u32, data: &[u8]);
}

// Bus-master IDE command and status register bits.
const BM_CMD_START: u8 = 0x01;
const BM_CMD_TO_MEMORY: u8 = 0x08;
const BM_STATUS_ACTIVE: u8 = 0x01;
const BM_STATUS_ERROR: u8 = 0x02;
const BM_STATUS_INTERRUPT: u8 = 0x04;
/// Drive 0/1 DMA capable: plain storage for firmware.
const BM_STATUS_CAPABLE: u8 = 0x60;
/// Upper bound on PRD entries walked per transfer (a 64 KiB table holds 8192).
const MAX_PRD_ENTRIES: u32 = 8192;

/// One IDE channel (primary or secondary) with up to two devices.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct IdeChannel {
    command_base: u16,
    control_port: u16,
    drives: [Option<Drive>; 2],
    /// Index of the selected device (DEV bit of the device register).
    selected: usize,
    device_control: u8,
    bm_command: u8,
    bm_status: u8,
    prd_table: u32,
}

impl IdeChannel {
    /// A channel at `command_base` (0x1F0 / 0x170) and `control_port` (0x3F6 / 0x376).
    pub fn new(
        command_base: u16,
        control_port: u16,
        master: Option<IdeDevice>,
        slave: Option<IdeDevice>,
    ) -> Self {
        IdeChannel {
            command_base,
            control_port,
            drives: [
                master.map(|d| Drive::new(d, "HOSPES0000000000000")),
                slave.map(|d| Drive::new(d, "HOSPES0000000000001")),
            ],
            selected: 0,
            device_control: 0,
            bm_command: 0,
            bm_status: 0,
            prd_table: 0,
        }
    }

    /// Takes the state of `saved` (a snapshot of a channel with the same devices), keeping
    /// this channel's storage. Fails, changing nothing, if the devices differ.
    pub fn restore(&mut self, mut saved: IdeChannel) -> Result<(), String> {
        let same = |a: &Option<Drive>, b: &Option<Drive>| a.is_some() == b.is_some();
        if !self
            .drives
            .iter()
            .zip(&saved.drives)
            .all(|(a, b)| same(a, b))
        {
            return Err("the IDE devices differ from the machine's".into());
        }
        for (mine, theirs) in self.drives.iter_mut().zip(saved.drives.iter_mut()) {
            if let (Some(mine), Some(theirs)) = (mine, theirs) {
                std::mem::swap(&mut mine.device, &mut theirs.device);
                theirs.serial = mine.serial;
            }
        }
        *self = saved;
        Ok(())
    }

    /// The primary channel (0x1F0-0x1F7, 0x3F6; IRQ 14).
    pub fn primary(master: Option<IdeDevice>, slave: Option<IdeDevice>) -> Self {
        Self::new(0x1F0, 0x3F6, master, slave)
    }

    /// The secondary channel (0x170-0x177, 0x376; IRQ 15).
    pub fn secondary(master: Option<IdeDevice>, slave: Option<IdeDevice>) -> Self {
        Self::new(0x170, 0x376, master, slave)
    }

    /// Level of the channel's interrupt line (IRQ 14 / 15 in compatibility mode): the
    /// selected device's INTRQ unless masked by nIEN.
    pub fn irq_level(&self) -> bool {
        self.device_control & CTRL_NIEN == 0
            && self.drives[self.selected].as_ref().is_some_and(|d| d.intrq)
    }

    /// Replaces the CD medium of drive `index` (0 master, 1 slave); the drive then
    /// reports UNIT ATTENTION once and a media event. Returns false if that drive is not
    /// a CD-ROM.
    pub fn change_medium(&mut self, index: usize, medium: Option<Box<dyn BlockBackend>>) -> bool {
        let Some(Some(drive)) = self.drives.get_mut(index) else {
            return false;
        };
        let IdeDevice::Cdrom(slot) = &mut drive.device else {
            return false;
        };
        drive.media_event = if medium.is_some() { 2 } else { 3 };
        *slot = medium;
        drive.unit_attention = true;
        true
    }

    /// Lets the disks advertise and accept multiword DMA (needs the machine to route
    /// the BMIDE ports and call [`IdeChannel::run_dma`]).
    pub fn set_dma_enabled(&mut self, enabled: bool) {
        for drive in self.drives.iter_mut().flatten() {
            drive.dma_enabled = enabled && !drive.is_atapi();
        }
    }

    /// Reads a bus-master register; `offset` is relative to this channel's BMIDE block
    /// (0 command, 2 status, 4-7 PRD table address).
    pub fn bus_master_read(&mut self, offset: u16, size: u8) -> u32 {
        let regs = [
            self.bm_command,
            0,
            self.bm_status,
            0,
            self.prd_table as u8,
            (self.prd_table >> 8) as u8,
            (self.prd_table >> 16) as u8,
            (self.prd_table >> 24) as u8,
        ];
        let mut value = 0u32;
        for i in 0..usize::from(size.min(4)) {
            let byte = regs.get(usize::from(offset) + i).copied().unwrap_or(0);
            value |= u32::from(byte) << (8 * i);
        }
        value
    }

    /// Writes a bus-master register (see [`IdeChannel::bus_master_read`]).
    pub fn bus_master_write(&mut self, offset: u16, size: u8, value: u32) {
        for i in 0..u16::from(size.min(4)) {
            let byte = (value >> (8 * i)) as u8;
            match offset.wrapping_add(i) {
                0 => {
                    let start = byte & BM_CMD_START != 0;
                    if start && self.bm_command & BM_CMD_START == 0 {
                        self.bm_status |= BM_STATUS_ACTIVE;
                    } else if !start {
                        // Stopping the engine ends (or abandons) the transfer.
                        self.bm_status &= !BM_STATUS_ACTIVE;
                    }
                    self.bm_command = byte & (BM_CMD_START | BM_CMD_TO_MEMORY);
                }
                2 => {
                    let cleared = byte & (BM_STATUS_ERROR | BM_STATUS_INTERRUPT);
                    self.bm_status = (self.bm_status & !cleared & !BM_STATUS_CAPABLE)
                        | (byte & BM_STATUS_CAPABLE);
                }
                n @ 4..=7 => {
                    let shift = 8 * u32::from(n - 4);
                    self.prd_table =
                        (self.prd_table & !(0xFF << shift)) | (u32::from(byte) << shift);
                    self.prd_table &= !3;
                }
                _ => {}
            }
        }
    }

    /// Whether a started bus-master transfer is waiting for [`IdeChannel::run_dma`].
    pub fn dma_pending(&self) -> bool {
        self.bm_command & BM_CMD_START != 0
            && self.bm_status & BM_STATUS_ACTIVE != 0
            && self.drives[self.selected]
                .as_ref()
                .is_some_and(|d| matches!(d.phase, Phase::Dma { .. }))
    }

    /// Performs a pending DMA transfer at once: walks the PRD table in guest memory,
    /// moves the sectors, then completes the command (drive interrupt, BMIDE
    /// interrupt bit). Does nothing unless [`IdeChannel::dma_pending`].
    pub fn run_dma(&mut self, mem: &mut dyn DmaMemory) {
        if !self.dma_pending() {
            return;
        }
        let prd_table = self.prd_table;
        let Some(drive) = self.drives[self.selected].as_mut() else {
            return;
        };
        let Phase::Dma {
            lba,
            count,
            to_memory,
        } = drive.phase
        else {
            return;
        };
        let IdeDevice::Disk(backend) = &mut drive.device else {
            return;
        };
        let mut sector = [0u8; SECTOR_SIZE];
        // Bytes of `sector` already sent to memory (reads) or filled from it (writes).
        let mut sector_pos = if to_memory { SECTOR_SIZE } else { 0 };
        let mut next_lba = lba;
        let mut sectors_left = count;
        let mut failed = false;
        let mut table_exhausted = false;
        let mut entry = 0u32;
        'table: while sectors_left > 0 {
            if entry >= MAX_PRD_ENTRIES {
                table_exhausted = true;
                break;
            }
            let mut prd = [0u8; 8];
            mem.read(prd_table.wrapping_add(entry * 8), &mut prd);
            entry += 1;
            let mut addr = u32::from_le_bytes([prd[0], prd[1], prd[2], prd[3]]) & !1;
            let mut left = match u32::from(u16::from_le_bytes([prd[4], prd[5]])) & !1 {
                0 => 0x10000,
                n => n,
            };
            let end_of_table = prd[7] & 0x80 != 0;
            while left > 0 && sectors_left > 0 {
                if to_memory && sector_pos == SECTOR_SIZE {
                    let offset = next_lba * SECTOR_SIZE as u64;
                    if backend.read(offset, &mut sector).is_err() {
                        failed = true;
                        break 'table;
                    }
                    sector_pos = 0;
                }
                let n = (left as usize).min(SECTOR_SIZE - sector_pos);
                let piece = &mut sector[sector_pos..sector_pos + n];
                if to_memory {
                    mem.write(addr, piece);
                } else {
                    mem.read(addr, piece);
                }
                sector_pos += n;
                addr = addr.wrapping_add(n as u32);
                left -= n as u32;
                if sector_pos == SECTOR_SIZE {
                    if !to_memory {
                        let offset = next_lba * SECTOR_SIZE as u64;
                        if backend.write(offset, &sector).is_err() {
                            failed = true;
                            break 'table;
                        }
                        sector_pos = 0;
                    }
                    next_lba += 1;
                    sectors_left -= 1;
                }
            }
            if end_of_table && sectors_left > 0 {
                table_exhausted = true;
                break;
            }
        }
        let mut bm_status = self.bm_status & !BM_STATUS_ACTIVE;
        if failed {
            drive.fail(if to_memory { UNC | ABRT } else { ABRT });
            bm_status |= BM_STATUS_ERROR;
        } else if table_exhausted {
            // The guest's table was too small for the command: the device aborts.
            drive.abort();
            bm_status |= BM_STATUS_ERROR;
        } else {
            drive.complete();
        }
        self.bm_status = bm_status | BM_STATUS_INTERRUPT;
    }

    fn selected_drive(&mut self) -> Option<&mut Drive> {
        self.drives[self.selected].as_mut()
    }

    fn read_register(&mut self, reg: u16) -> u8 {
        let hob = self.device_control & CTRL_HOB != 0;
        let srst = self.device_control & CTRL_SRST != 0;
        let Some(drive) = self.selected_drive() else {
            return 0;
        };
        let tf = &drive.tf;
        match reg {
            1 if hob => tf.hob_feature,
            1 => drive.error,
            2 if hob => tf.hob_nsector,
            2 => tf.nsector,
            3 if hob => tf.hob_sector,
            3 => tf.sector,
            4 if hob => tf.hob_lcyl,
            4 => tf.lcyl,
            5 if hob => tf.hob_hcyl,
            5 => tf.hcyl,
            6 => tf.select | 0xA0,
            7 => {
                if srst {
                    return BSY;
                }
                drive.intrq = false;
                drive.status
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u16, value: u8) {
        // Writing any command block register clears HOB.
        self.device_control &= !CTRL_HOB;
        if reg == 7 {
            if self.device_control & CTRL_SRST != 0 {
                return;
            }
            if value == 0x90 {
                // EXECUTE DEVICE DIAGNOSTIC runs on both devices; the selected one
                // reports completion.
                let selected = self.selected;
                for (index, drive) in self.drives.iter_mut().enumerate() {
                    if let Some(drive) = drive {
                        drive.command(value);
                        drive.intrq &= index == selected;
                    }
                }
                return;
            }
            if let Some(drive) = self.selected_drive() {
                drive.command(value);
            }
            return;
        }
        if reg == 6 {
            self.selected = usize::from(value & 0x10 != 0);
        }
        for drive in self.drives.iter_mut().flatten() {
            let tf = &mut drive.tf;
            let (hob, cur) = match reg {
                1 => (&mut tf.hob_feature, &mut tf.feature),
                2 => (&mut tf.hob_nsector, &mut tf.nsector),
                3 => (&mut tf.hob_sector, &mut tf.sector),
                4 => (&mut tf.hob_lcyl, &mut tf.lcyl),
                5 => (&mut tf.hob_hcyl, &mut tf.hcyl),
                6 => {
                    tf.select = value & 0x5F;
                    continue;
                }
                _ => continue,
            };
            *hob = *cur;
            *cur = value;
        }
    }

    fn write_device_control(&mut self, value: u8) {
        let was_reset = self.device_control & CTRL_SRST != 0;
        let reset = value & CTRL_SRST != 0;
        self.device_control = value;
        if was_reset && !reset {
            // Reset leaves device 0 selected (device register 00h).
            for drive in self.drives.iter_mut().flatten() {
                drive.reset();
                drive.tf.select = 0;
            }
            self.selected = 0;
        } else if reset {
            for drive in self.drives.iter_mut().flatten() {
                drive.phase = Phase::Idle;
                drive.intrq = false;
            }
        }
    }

    fn alternate_status(&self) -> u8 {
        if self.device_control & CTRL_SRST != 0 {
            return BSY;
        }
        self.drives[self.selected].as_ref().map_or(0, |d| d.status)
    }
}

impl PortDevice for IdeChannel {
    fn read(&mut self, port: u16, size: u8, _now: Nanos) -> u32 {
        if port == self.control_port {
            return u32::from(self.alternate_status());
        }
        let reg = port.wrapping_sub(self.command_base);
        match reg {
            0 => {
                let Some(drive) = self.selected_drive() else {
                    return 0;
                };
                let mut value = 0u32;
                for i in 0..u32::from(size.min(4)) {
                    value |= u32::from(drive.read_data_byte()) << (8 * i);
                }
                value
            }
            1..=7 => u32::from(self.read_register(reg)),
            _ => 0xFF,
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32, _now: Nanos) {
        if port == self.control_port {
            return self.write_device_control(value as u8);
        }
        let reg = port.wrapping_sub(self.command_base);
        match reg {
            0 => {
                if let Some(drive) = self.selected_drive() {
                    for i in 0..u32::from(size.min(4)) {
                        drive.write_data_byte((value >> (8 * i)) as u8);
                    }
                }
            }
            1..=7 => self.write_register(reg, value as u8),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u16 = 0x1F0;
    const CTRL: u16 = 0x3F6;

    /// A disk image whose every byte encodes its sector and offset.
    fn pattern_disk(sectors: usize) -> Vec<u8> {
        (0..sectors * SECTOR_SIZE)
            .map(|i| ((i / SECTOR_SIZE) as u8).wrapping_mul(7) ^ (i as u8))
            .collect()
    }

    fn disk_channel(sectors: usize) -> IdeChannel {
        IdeChannel::primary(
            Some(IdeDevice::Disk(Box::new(MemBackend(pattern_disk(sectors))))),
            None,
        )
    }

    fn cd_image(sectors: usize) -> Vec<u8> {
        (0..sectors * CD_SECTOR_SIZE)
            .map(|i| ((i / CD_SECTOR_SIZE) as u8) ^ (i as u8).wrapping_mul(3))
            .collect()
    }

    fn cd_channel(medium: Option<Vec<u8>>) -> IdeChannel {
        IdeChannel::secondary(
            Some(IdeDevice::Cdrom(
                medium.map(|m| Box::new(MemBackend(m)) as Box<dyn BlockBackend>),
            )),
            None,
        )
    }

    fn outb(ch: &mut IdeChannel, port: u16, v: u8) {
        ch.write(port, 1, u32::from(v), 0);
    }
    fn inb(ch: &mut IdeChannel, port: u16) -> u8 {
        ch.read(port, 1, 0) as u8
    }

    fn read_words(ch: &mut IdeChannel, base: u16, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend_from_slice(&(ch.read(base, 2, 0) as u16).to_le_bytes());
        }
        out
    }

    fn lba28_command(ch: &mut IdeChannel, cmd: u8, lba: u32, count: u8) {
        outb(ch, BASE + 6, 0xE0 | ((lba >> 24) as u8 & 0x0F));
        outb(ch, BASE + 2, count);
        outb(ch, BASE + 3, lba as u8);
        outb(ch, BASE + 4, (lba >> 8) as u8);
        outb(ch, BASE + 5, (lba >> 16) as u8);
        outb(ch, BASE + 7, cmd);
    }

    #[test]
    fn identify_device_contents_and_protocol() {
        let mut ch = disk_channel(100_000);
        outb(&mut ch, BASE + 6, 0xA0);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        outb(&mut ch, BASE + 7, 0xEC);
        assert!(ch.irq_level());
        // Alternate status does not clear the interrupt; status does.
        assert_eq!(inb(&mut ch, CTRL), DRDY | DSC | DRQ);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        assert!(!ch.irq_level());
        let id = read_words(&mut ch, BASE, 256);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        assert!(!ch.irq_level());
        let word = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
        let string = |from: usize, to: usize| -> String {
            (from..to)
                .flat_map(|i| word(i).to_be_bytes())
                .map(char::from)
                .collect::<String>()
                .trim_end()
                .to_string()
        };
        assert_eq!(string(27, 47), "HOSPES HARDDISK");
        assert_eq!(string(23, 27), "1.0");
        assert_eq!(word(0), 0x0040);
        assert_eq!(word(49) & 0x0200, 0x0200);
        assert_eq!(word(49) & 0x0100, 0, "no DMA advertised");
        assert_eq!(u32::from(word(60)) | (u32::from(word(61)) << 16), 100_000);
        assert_eq!(word(83) & 0x0400, 0x0400);
        assert_eq!(word(86) & 0x0400, 0x0400);
        assert_eq!(word(100), 100_000u32 as u16);
        assert_eq!(word(101), 1);
        assert_eq!(word(47) & 0xFF, 16);
        assert_eq!(word(55), 16);
        assert_eq!(word(56), 63);
        assert_eq!(word(54), (100_000 / (16 * 63)) as u16);
        assert_eq!(word(88), 0);
        assert_ne!(word(80) & 0x01C0, 0);
    }

    #[test]
    fn read_two_sectors_via_16_and_32_bit_accesses() {
        let image = pattern_disk(64);
        let mut ch = disk_channel(64);
        lba28_command(&mut ch, 0x20, 5, 2);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        let first = read_words(&mut ch, BASE, 256);
        assert_eq!(first, image[5 * 512..6 * 512]);
        // The second block raises the interrupt again.
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        let mut second = Vec::new();
        for _ in 0..128 {
            second.extend_from_slice(&ch.read(BASE, 4, 0).to_le_bytes());
        }
        assert_eq!(second, image[6 * 512..7 * 512]);
        assert!(!ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
    }

    #[test]
    fn write_sectors_then_read_back_from_backend() {
        let mut ch = disk_channel(16);
        lba28_command(&mut ch, 0x30, 3, 2);
        // First block requested without an interrupt.
        assert!(!ch.irq_level());
        assert_eq!(inb(&mut ch, CTRL), DRDY | DSC | DRQ);
        for i in 0..256u32 {
            ch.write(BASE, 2, 0xAB00 | (i & 0xFF), 0);
        }
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        for i in 0..128u32 {
            ch.write(BASE, 4, 0x1111_0000 | i, 0);
        }
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        // Read back through the device.
        lba28_command(&mut ch, 0x20, 3, 2);
        inb(&mut ch, BASE + 7);
        let data = read_words(&mut ch, BASE, 512);
        assert_eq!(&data[0..4], &[0x00, 0xAB, 0x01, 0xAB]);
        assert_eq!(&data[512..520], &[0, 0, 0x11, 0x11, 1, 0, 0x11, 0x11]);
        // And directly from the backend.
        let drive = ch.drives[0].as_mut().unwrap();
        let IdeDevice::Disk(backend) = &mut drive.device else {
            panic!()
        };
        let mut sector = [0u8; 512];
        backend.read(4 * 512, &mut sector).unwrap();
        assert_eq!(&sector[0..4], &[0, 0, 0x11, 0x11]);
    }

    #[test]
    fn lba48_read_sectors_ext_uses_hob_registers() {
        // LBA 0x1_0000_0005 would need a huge disk; use a high 24-bit LBA and check the
        // HOB bytes are combined, then an out-of-range 48-bit LBA.
        let image = pattern_disk(0x200);
        let mut ch = disk_channel(0x200);
        outb(&mut ch, BASE + 6, 0x40);
        // HOB bytes first, then the low bytes.
        outb(&mut ch, BASE + 2, 0);
        outb(&mut ch, BASE + 3, 0);
        outb(&mut ch, BASE + 4, 0);
        outb(&mut ch, BASE + 5, 0);
        outb(&mut ch, BASE + 2, 3);
        outb(&mut ch, BASE + 3, 0x10);
        outb(&mut ch, BASE + 4, 0x01);
        outb(&mut ch, BASE + 5, 0);
        // HOB readback.
        outb(&mut ch, CTRL, CTRL_HOB);
        assert_eq!(inb(&mut ch, BASE + 2), 0);
        assert_eq!(inb(&mut ch, BASE + 4), 0);
        outb(&mut ch, CTRL, 0);
        assert_eq!(inb(&mut ch, BASE + 2), 3);
        assert_eq!(inb(&mut ch, BASE + 4), 1);
        outb(&mut ch, BASE + 7, 0x24);
        let mut data = Vec::new();
        for _ in 0..3 {
            assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
            data.extend(read_words(&mut ch, BASE, 256));
        }
        assert_eq!(data, image[0x110 * 512..0x113 * 512]);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);

        // HOB sector (LBA bits 24-31) set: beyond the disk.
        outb(&mut ch, BASE + 3, 1);
        outb(&mut ch, BASE + 3, 0);
        outb(&mut ch, BASE + 7, 0x24);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        assert_eq!(inb(&mut ch, BASE + 1), IDNF);
    }

    #[test]
    fn read_multiple_after_set_multiple() {
        let image = pattern_disk(64);
        let mut ch = disk_channel(64);
        // READ MULTIPLE before SET MULTIPLE aborts.
        lba28_command(&mut ch, 0xC4, 0, 1);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        assert_eq!(inb(&mut ch, BASE + 1), ABRT);
        // Invalid block size aborts.
        outb(&mut ch, BASE + 2, 3);
        outb(&mut ch, BASE + 7, 0xC6);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        outb(&mut ch, BASE + 2, 4);
        outb(&mut ch, BASE + 7, 0xC6);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        // 6 sectors in blocks of 4 + 2: two interrupts.
        lba28_command(&mut ch, 0xC4, 10, 6);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        let block1 = read_words(&mut ch, BASE, 4 * 256);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        let block2 = read_words(&mut ch, BASE, 2 * 256);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        assert_eq!(block1, image[10 * 512..14 * 512]);
        assert_eq!(block2, image[14 * 512..16 * 512]);
        // Word 59 reports the current multiple setting.
        outb(&mut ch, BASE + 7, 0xEC);
        let id = read_words(&mut ch, BASE, 256);
        assert_eq!(u16::from_le_bytes([id[118], id[119]]), 0x0104);
    }

    #[test]
    fn out_of_range_and_unknown_commands_fail_cleanly() {
        let mut ch = disk_channel(16);
        lba28_command(&mut ch, 0x20, 15, 2);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        assert_eq!(inb(&mut ch, BASE + 1), IDNF);
        lba28_command(&mut ch, 0x30, 0x0FFF_FFFF, 0);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        lba28_command(&mut ch, 0x40, 14, 3);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        lba28_command(&mut ch, 0x40, 14, 2);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        for cmd in [0xA0, 0xA1, 0xC8, 0xFF] {
            outb(&mut ch, BASE + 7, cmd);
            assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR, "command {cmd:#x}");
            assert_eq!(inb(&mut ch, BASE + 1), ABRT);
        }
        // Data port without DRQ is harmless.
        ch.write(BASE, 4, 0, 0);
        assert_eq!(ch.read(BASE, 2, 0), 0xFFFF);
        // Simple no-data commands complete with an interrupt.
        for (cmd, feature) in [
            (0xE7, 0),
            (0xEA, 0),
            (0xEF, 0x03),
            (0xEF, 0x02),
            (0xE0, 0),
            (0xE1, 0),
            (0xE3, 0),
        ] {
            outb(&mut ch, BASE + 1, feature);
            outb(&mut ch, BASE + 2, 0x0C);
            outb(&mut ch, BASE + 7, cmd);
            assert!(ch.irq_level());
            assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC, "command {cmd:#x}");
        }
        // SET FEATURES to a DMA mode is refused (no DMA).
        outb(&mut ch, BASE + 1, 0x03);
        outb(&mut ch, BASE + 2, 0x42);
        outb(&mut ch, BASE + 7, 0xEF);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
    }

    #[test]
    fn chs_addressing_and_initialize_device_parameters() {
        let image = pattern_disk(2 * 16 * 63);
        let mut ch = disk_channel(2 * 16 * 63);
        outb(&mut ch, BASE + 2, 63);
        outb(&mut ch, BASE + 6, 0xA0 | 15);
        outb(&mut ch, BASE + 7, 0x91);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        // Cylinder 1, head 2, sector 3 → LBA (1*16+2)*63+2.
        outb(&mut ch, BASE + 6, 0xA0 | 2);
        outb(&mut ch, BASE + 2, 1);
        outb(&mut ch, BASE + 3, 3);
        outb(&mut ch, BASE + 4, 1);
        outb(&mut ch, BASE + 5, 0);
        outb(&mut ch, BASE + 7, 0x20);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        let lba = (16 + 2) * 63 + 2;
        assert_eq!(
            read_words(&mut ch, BASE, 256),
            image[lba * 512..(lba + 1) * 512]
        );
        // Sector 0 is invalid in CHS.
        outb(&mut ch, BASE + 3, 0);
        outb(&mut ch, BASE + 7, 0x20);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
    }

    #[test]
    fn srst_resets_and_sets_signatures() {
        let mut ch = IdeChannel::primary(
            Some(IdeDevice::Disk(Box::new(MemBackend(vec![0; 4096])))),
            Some(IdeDevice::Cdrom(None)),
        );
        lba28_command(&mut ch, 0x20, 0, 1);
        assert!(ch.irq_level());
        outb(&mut ch, CTRL, CTRL_SRST);
        assert_eq!(inb(&mut ch, CTRL), BSY);
        assert_eq!(inb(&mut ch, BASE + 7), BSY);
        assert!(!ch.irq_level());
        outb(&mut ch, CTRL, 0);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        assert_eq!(inb(&mut ch, BASE + 1), 0x01);
        assert_eq!(inb(&mut ch, BASE + 2), 1);
        assert_eq!(inb(&mut ch, BASE + 3), 1);
        assert_eq!(inb(&mut ch, BASE + 4), 0);
        assert_eq!(inb(&mut ch, BASE + 5), 0);
        outb(&mut ch, BASE + 6, 0xB0);
        assert_eq!(inb(&mut ch, BASE + 7), 0);
        assert_eq!(inb(&mut ch, BASE + 2), 1);
        assert_eq!(inb(&mut ch, BASE + 3), 1);
        assert_eq!(inb(&mut ch, BASE + 4), 0x14);
        assert_eq!(inb(&mut ch, BASE + 5), 0xEB);
        // The transfer in progress was cancelled.
        outb(&mut ch, BASE + 6, 0xA0);
        assert_eq!(ch.read(BASE, 2, 0), 0xFFFF);
    }

    #[test]
    fn nien_masks_the_interrupt() {
        let mut ch = disk_channel(16);
        outb(&mut ch, CTRL, CTRL_NIEN);
        lba28_command(&mut ch, 0x20, 0, 1);
        assert!(!ch.irq_level());
        outb(&mut ch, CTRL, 0);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        assert!(!ch.irq_level());
    }

    #[test]
    fn absent_slave_reads_zero() {
        let mut ch = disk_channel(16);
        outb(&mut ch, BASE + 6, 0xB0);
        // libata's device check: write a pattern, read it back.
        outb(&mut ch, BASE + 2, 0x55);
        outb(&mut ch, BASE + 3, 0xAA);
        assert_eq!(inb(&mut ch, BASE + 2), 0);
        assert_eq!(inb(&mut ch, BASE + 3), 0);
        assert_eq!(inb(&mut ch, BASE + 7), 0);
        assert_eq!(inb(&mut ch, CTRL), 0);
        outb(&mut ch, BASE + 7, 0xEC);
        assert!(!ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), 0);
        // The master still answers and saw the writes.
        outb(&mut ch, BASE + 6, 0xA0);
        assert_eq!(inb(&mut ch, BASE + 2), 0x55);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        // An empty channel reads zero everywhere.
        let mut empty = IdeChannel::secondary(None, None);
        assert_eq!(empty.read(0x177, 1, 0), 0);
        assert_eq!(empty.read(0x376, 1, 0), 0);
    }

    // ---- ATAPI ----

    /// The order of register accesses libata's SFF softreset and classification use.
    #[test]
    fn libata_style_probe_of_disk_and_cd() {
        let mut ch = IdeChannel::primary(
            Some(IdeDevice::Disk(Box::new(MemBackend(vec![0; 64 * 512])))),
            Some(IdeDevice::Cdrom(None)),
        );
        // ata_devchk on both devices.
        for dev in [0xA0u8, 0xB0] {
            outb(&mut ch, BASE + 6, dev);
            for (a, b) in [(0x55, 0xAA), (0xAA, 0x55), (0x55, 0xAA)] {
                outb(&mut ch, BASE + 2, a);
                outb(&mut ch, BASE + 3, b);
            }
            assert_eq!(
                (inb(&mut ch, BASE + 2), inb(&mut ch, BASE + 3)),
                (0x55, 0xAA)
            );
        }
        // Soft reset.
        outb(&mut ch, CTRL, 0x00);
        outb(&mut ch, CTRL, CTRL_SRST);
        outb(&mut ch, CTRL, 0x00);
        assert_eq!(inb(&mut ch, BASE + 7) & BSY, 0);
        outb(&mut ch, BASE + 6, 0xB0);
        assert_eq!((inb(&mut ch, BASE + 2), inb(&mut ch, BASE + 3)), (1, 1));
        // Classification: error 1 and signatures.
        let classify = |ch: &mut IdeChannel, dev: u8| {
            outb(ch, BASE + 6, dev);
            (inb(ch, BASE + 1), inb(ch, BASE + 4), inb(ch, BASE + 5))
        };
        assert_eq!(classify(&mut ch, 0xA0), (1, 0x00, 0x00));
        assert_eq!(classify(&mut ch, 0xB0), (1, 0x14, 0xEB));
        // IDENTIFY and IDENTIFY PACKET through 32-bit PIO.
        outb(&mut ch, BASE + 6, 0xA0);
        outb(&mut ch, BASE + 7, 0xEC);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        for _ in 0..128 {
            ch.read(BASE, 4, 0);
        }
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        outb(&mut ch, BASE + 6, 0xB0);
        outb(&mut ch, BASE + 7, 0xA1);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | DRQ);
        for _ in 0..128 {
            ch.read(BASE, 4, 0);
        }
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        // SET FEATURES transfer mode PIO4 on both.
        for dev in [0xA0u8, 0xB0] {
            outb(&mut ch, BASE + 6, dev);
            outb(&mut ch, BASE + 1, 0x03);
            outb(&mut ch, BASE + 2, 0x0C);
            outb(&mut ch, BASE + 7, 0xEF);
            assert!(ch.irq_level());
            assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        }
    }

    const SBASE: u16 = 0x170;
    const SCTRL: u16 = 0x376;

    /// Sends a PACKET command with `cdb`; returns the data (chunk by chunk) and checks
    /// the interrupt reason sequence. Returns (data, chunk sizes, final status).
    fn packet(ch: &mut IdeChannel, cdb: &[u8], limit: u16) -> (Vec<u8>, Vec<usize>, u8) {
        outb(ch, SBASE + 6, 0xA0);
        outb(ch, SBASE + 1, 0);
        outb(ch, SBASE + 4, limit as u8);
        outb(ch, SBASE + 5, (limit >> 8) as u8);
        outb(ch, SBASE + 7, 0xA0);
        assert_eq!(inb(ch, SCTRL) & (BSY | DRQ), DRQ);
        assert_eq!(inb(ch, SBASE + 2), IREASON_COD);
        assert!(!ch.irq_level(), "no interrupt before the packet");
        let mut padded = [0u8; 12];
        padded[..cdb.len()].copy_from_slice(cdb);
        for pair in padded.chunks(2) {
            ch.write(
                SBASE,
                2,
                u32::from(u16::from_le_bytes([pair[0], pair[1]])),
                0,
            );
        }
        let mut data = Vec::new();
        let mut chunks = Vec::new();
        loop {
            assert!(ch.irq_level());
            let status = inb(ch, SBASE + 7);
            assert!(!ch.irq_level());
            if status & DRQ == 0 {
                assert_eq!(inb(ch, SBASE + 2), IREASON_IO | IREASON_COD);
                return (data, chunks, status);
            }
            assert_eq!(inb(ch, SBASE + 2), IREASON_IO);
            let len = usize::from(inb(ch, SBASE + 4)) | (usize::from(inb(ch, SBASE + 5)) << 8);
            assert!(len <= usize::from(limit).max(1));
            chunks.push(len);
            for _ in 0..len / 2 {
                data.extend_from_slice(&(ch.read(SBASE, 2, 0) as u16).to_le_bytes());
            }
            if len % 2 == 1 {
                data.push(ch.read(SBASE, 1, 0) as u8);
            }
        }
    }

    #[test]
    fn cdrom_signature_after_identify_device_abort() {
        let mut ch = cd_channel(None);
        outb(&mut ch, SBASE + 6, 0xA0);
        outb(&mut ch, SBASE + 4, 0);
        outb(&mut ch, SBASE + 5, 0);
        outb(&mut ch, SBASE + 7, 0xEC);
        assert!(ch.irq_level());
        assert_eq!(inb(&mut ch, SBASE + 7) & ERR, ERR);
        assert_eq!(inb(&mut ch, SBASE + 1), ABRT);
        assert_eq!(inb(&mut ch, SBASE + 4), 0x14);
        assert_eq!(inb(&mut ch, SBASE + 5), 0xEB);
        // IDENTIFY PACKET DEVICE works.
        outb(&mut ch, SBASE + 7, 0xA1);
        assert_eq!(inb(&mut ch, SBASE + 7), DRDY | DSC | DRQ);
        let id = read_words(&mut ch, SBASE, 256);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x85C0);
        let model: String = id[54..94]
            .chunks(2)
            .flat_map(|p| [p[1], p[0]])
            .map(char::from)
            .collect();
        assert_eq!(model.trim_end(), "HOSPES CD-ROM");
    }

    #[test]
    fn inquiry_in_byte_count_limited_chunks() {
        let mut ch = cd_channel(Some(cd_image(4)));
        let (data, chunks, status) = packet(&mut ch, &[0x12, 0, 0, 0, 36], 16);
        assert_eq!(status, DRDY | DSC);
        assert_eq!(chunks, vec![16, 16, 4]);
        assert_eq!(data.len(), 36);
        assert_eq!(data[0], 0x05);
        assert_eq!(data[1], 0x80);
        assert_eq!(&data[8..14], b"HOSPES");
        assert_eq!(&data[16..22], b"CD-ROM");
        // Allocation length cuts the reply.
        let (data, chunks, _) = packet(&mut ch, &[0x12, 0, 0, 0, 5], 0xFFFF);
        assert_eq!(data.len(), 5);
        assert_eq!(chunks, vec![5]);
    }

    #[test]
    fn read10_and_read_capacity() {
        let image = cd_image(40);
        let mut ch = cd_channel(Some(image.clone()));
        let (data, _, status) = packet(&mut ch, &[0x25], 0xFFFE);
        assert_eq!(status, DRDY | DSC);
        assert_eq!(data, vec![0, 0, 0, 39, 0, 0, 8, 0]);
        let (data, chunks, status) = packet(&mut ch, &[0x28, 0, 0, 0, 0, 2, 0, 0, 1], 0x8000);
        assert_eq!(status, DRDY | DSC);
        assert_eq!(chunks, vec![2048]);
        assert_eq!(data, image[2 * 2048..3 * 2048]);
        // A multi-buffer read: 20 sectors from 19, in 0xFFFE-limited chunks.
        let (data, _, status) = packet(&mut ch, &[0x28, 0, 0, 0, 0, 19, 0, 0, 20], 0xFFFE);
        assert_eq!(status, DRDY | DSC);
        assert_eq!(data, image[19 * 2048..39 * 2048]);
        // READ(12).
        let (data, _, _) = packet(&mut ch, &[0xA8, 0, 0, 0, 0, 39, 0, 0, 0, 1], 0x800);
        assert_eq!(data, image[39 * 2048..40 * 2048]);
        // Past the end: ILLEGAL REQUEST / LBA OUT OF RANGE.
        let (_, _, status) = packet(&mut ch, &[0x28, 0, 0, 0, 0, 39, 0, 0, 2], 0x800);
        assert_eq!(status, DRDY | DSC | ERR);
        assert_eq!(inb(&mut ch, SBASE + 1) >> 4, SENSE_ILLEGAL_REQUEST);
        let (sense, _, _) = packet(&mut ch, &[0x03, 0, 0, 0, 18], 0xFFFE);
        assert_eq!(
            (sense[2], sense[12]),
            (SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn test_unit_ready_without_medium_then_request_sense() {
        let mut ch = cd_channel(None);
        let (_, _, status) = packet(&mut ch, &[0x00], 0xFFFE);
        assert_eq!(status, DRDY | DSC | ERR);
        assert_eq!(inb(&mut ch, SBASE + 1), SENSE_NOT_READY << 4);
        let (sense, _, status) = packet(&mut ch, &[0x03, 0, 0, 0, 18], 0xFFFE);
        assert_eq!(status, DRDY | DSC);
        assert_eq!(sense[0], 0x70);
        assert_eq!(sense[2], 0x02);
        assert_eq!(sense[12], 0x3A);
        // Inserting a medium: UNIT ATTENTION once, then ready.
        assert!(ch.change_medium(0, Some(Box::new(MemBackend(cd_image(2))))));
        let (_, _, status) = packet(&mut ch, &[0x00], 0xFFFE);
        assert_eq!(status & ERR, ERR);
        assert_eq!(inb(&mut ch, SBASE + 1) >> 4, SENSE_UNIT_ATTENTION);
        let (_, _, status) = packet(&mut ch, &[0x00], 0xFFFE);
        assert_eq!(status, DRDY | DSC);
        // Event status reports the new medium once.
        let (ev, _, _) = packet(&mut ch, &[0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xFFFE);
        assert_eq!((ev[2], ev[4], ev[5]), (0x04, 2, 0x02));
        let (ev, _, _) = packet(&mut ch, &[0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xFFFE);
        assert_eq!(ev[4], 0);
    }

    #[test]
    fn read_toc_formats() {
        let mut ch = cd_channel(Some(cd_image(1000)));
        let (toc, _, status) = packet(&mut ch, &[0x43, 0, 0, 0, 0, 0, 0, 0x03, 0x24], 0xFFFE);
        assert_eq!(status, DRDY | DSC);
        assert_eq!(toc.len(), 20);
        assert_eq!(&toc[0..4], &[0, 18, 1, 1]);
        assert_eq!(&toc[4..12], &[0, 0x14, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&toc[12..20], &[0, 0x14, 0xAA, 0, 0, 0, 0x03, 0xE8]);
        // MSF: lead-out at 1000 + 150 frames = 00:15:25.
        let (toc, _, _) = packet(&mut ch, &[0x43, 2, 0, 0, 0, 0, 0, 0x03, 0x24], 0xFFFE);
        assert_eq!(&toc[8..12], &[0, 0, 2, 0]);
        assert_eq!(&toc[16..20], &[0, 0, 15, 25]);
        // Format 1: multi-session info.
        let (toc, _, _) = packet(&mut ch, &[0x43, 0, 1, 0, 0, 0, 0, 0, 12], 0xFFFE);
        assert_eq!(toc, vec![0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
        // Mode sense page 2A, get configuration, disc info.
        let (ms, _, status) = packet(&mut ch, &[0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 64], 0xFFFE);
        assert_eq!(status, DRDY | DSC);
        assert_eq!(ms[8], 0x2A);
        assert_eq!(usize::from(ms[1]) + 2, ms.len());
        let (conf, _, _) = packet(&mut ch, &[0x46, 0, 0, 0, 0, 0, 0, 0, 16], 0xFFFE);
        assert_eq!(&conf[6..8], &[0, 8]);
        assert_eq!(&conf[8..14], &[0, 0, 3, 4, 0, 8]);
        // Asking for the MRW feature (0x28): header only.
        let (conf, _, _) = packet(&mut ch, &[0x46, 2, 0, 0x28, 0, 0, 0, 0, 16], 0xFFFE);
        assert_eq!(conf, vec![0, 0, 0, 4, 0, 0, 0, 8]);
        let (_, _, status) = packet(&mut ch, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34], 0xFFFE);
        assert_eq!(status, DRDY | DSC);
        let (_, _, status) = packet(&mut ch, &[0xFF], 0xFFFE);
        assert_eq!(status & ERR, ERR);
    }

    #[test]
    fn random_port_traffic_never_panics() {
        let mut channel = IdeChannel::primary(
            Some(IdeDevice::Disk(Box::new(MemBackend(pattern_disk(40))))),
            Some(IdeDevice::Cdrom(Some(Box::new(MemBackend(cd_image(3)))))),
        );
        let mut seed = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for _ in 0..200_000 {
            let r = next();
            let port = match r % 10 {
                8 => CTRL,
                9 => BASE,
                n => BASE + n as u16 % 8,
            };
            let size = [1u8, 2, 4][(r >> 8) as usize % 3];
            let value = next();
            // Favour commands and packets that move data.
            let value = if port == BASE + 7 && value % 4 == 0 {
                [0x20, 0x24, 0x30, 0xC4, 0xC5, 0xA0, 0xA1, 0xEC, 0xC6, 0x91][value as usize % 10]
            } else if port == CTRL {
                value & 0x86
            } else {
                value
            };
            if r & 0x8000_0000 != 0 {
                channel.read(port, size, 0);
            } else {
                channel.write(port, size, value, 0);
            }
            let _ = channel.irq_level();
        }
    }

    #[test]
    fn random_packets_never_panic() {
        let mut ch = cd_channel(Some(cd_image(5)));
        let opcodes = [
            0x00, 0x03, 0x12, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2B, 0x43, 0x46, 0x4A, 0x51, 0x5A,
            0xA8, 0xBB, 0xBD, 0xBE,
        ];
        let mut seed = 42u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        for round in 0..5000 {
            let mut cdb = [0u8; 12];
            for b in cdb.iter_mut() {
                *b = if next() & 1 == 0 { next() } else { next() & 3 };
            }
            cdb[0] = opcodes[round % opcodes.len()];
            let limit = u16::from(next()) << (next() % 9);
            outb(&mut ch, SBASE + 6, 0xA0);
            outb(&mut ch, SBASE + 1, next() & 1);
            outb(&mut ch, SBASE + 4, limit as u8);
            outb(&mut ch, SBASE + 5, (limit >> 8) as u8);
            outb(&mut ch, SBASE + 7, 0xA0);
            for pair in cdb.chunks(2) {
                ch.write(
                    SBASE,
                    2,
                    u32::from(u16::from_le_bytes([pair[0], pair[1]])),
                    0,
                );
            }
            // Drain up to 64 KiB of whatever came back.
            for _ in 0..16384 {
                if inb(&mut ch, SCTRL) & DRQ == 0 {
                    break;
                }
                ch.read(SBASE, 4, 0);
            }
            assert_eq!(inb(&mut ch, SBASE + 7) & (BSY | DRQ), 0);
        }
    }

    // ---- bus-master DMA ----

    /// Flat guest memory for DMA tests.
    struct TestMemory(Vec<u8>);

    impl DmaMemory for TestMemory {
        fn read(&mut self, addr: u32, buf: &mut [u8]) {
            let start = addr as usize;
            buf.copy_from_slice(&self.0[start..start + buf.len()]);
        }
        fn write(&mut self, addr: u32, data: &[u8]) {
            let start = addr as usize;
            self.0[start..start + data.len()].copy_from_slice(data);
        }
    }

    fn put_prd(mem: &mut TestMemory, at: usize, addr: u32, len: u16, last: bool) {
        mem.0[at..at + 4].copy_from_slice(&addr.to_le_bytes());
        mem.0[at + 4..at + 6].copy_from_slice(&len.to_le_bytes());
        mem.0[at + 6..at + 8].copy_from_slice(&(u16::from(last) << 15).to_le_bytes());
    }

    #[test]
    fn dma_is_not_advertised_or_accepted_by_default() {
        let mut ch = disk_channel(16);
        lba28_command(&mut ch, 0xC8, 0, 1);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        ch.set_dma_enabled(true);
        outb(&mut ch, BASE + 7, 0xEC);
        let id = read_words(&mut ch, BASE, 256);
        assert_eq!(u16::from_le_bytes([id[98], id[99]]) & 0x0100, 0x0100);
        assert_eq!(u16::from_le_bytes([id[126], id[127]]) & 0x0007, 0x0007);
    }

    #[test]
    fn read_dma_through_split_prd_table() {
        let image = pattern_disk(32);
        let mut ch = disk_channel(32);
        ch.set_dma_enabled(true);
        let mut mem = TestMemory(vec![0; 0x10000]);
        // 3 sectors into 0x2000 (700 bytes) and 0x4000 (836 bytes).
        put_prd(&mut mem, 0x1000, 0x2000, 700, false);
        put_prd(&mut mem, 0x1008, 0x4000, 836, true);
        ch.bus_master_write(4, 4, 0x1000);
        assert_eq!(ch.bus_master_read(4, 4), 0x1000);
        ch.bus_master_write(0, 1, u32::from(BM_CMD_TO_MEMORY));
        lba28_command(&mut ch, 0xC8, 7, 3);
        assert!(!ch.dma_pending());
        ch.bus_master_write(0, 1, u32::from(BM_CMD_TO_MEMORY | BM_CMD_START));
        assert_eq!(
            ch.bus_master_read(2, 1) as u8 & BM_STATUS_ACTIVE,
            BM_STATUS_ACTIVE
        );
        assert!(ch.dma_pending());
        ch.run_dma(&mut mem);
        assert!(!ch.dma_pending());
        assert!(ch.irq_level());
        assert_eq!(ch.bus_master_read(2, 1) as u8, BM_STATUS_INTERRUPT);
        ch.bus_master_write(0, 1, 0);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        assert_eq!(mem.0[0x2000..0x2000 + 700], image[7 * 512..7 * 512 + 700]);
        assert_eq!(mem.0[0x4000..0x4000 + 836], image[7 * 512 + 700..10 * 512]);
        // Interrupt bit is write-one-to-clear.
        ch.bus_master_write(2, 1, u32::from(BM_STATUS_INTERRUPT));
        assert_eq!(ch.bus_master_read(2, 1), 0);
    }

    #[test]
    fn write_dma_ext_and_short_prd_table() {
        let mut ch = disk_channel(32);
        ch.set_dma_enabled(true);
        let mut mem = TestMemory((0..0x10000).map(|i| (i * 13) as u8).collect());
        put_prd(&mut mem, 0x100, 0x3000, 1024, true);
        ch.bus_master_write(4, 4, 0x100);
        outb(&mut ch, BASE + 6, 0x40);
        outb(&mut ch, BASE + 2, 0);
        outb(&mut ch, BASE + 2, 2);
        outb(&mut ch, BASE + 3, 0);
        outb(&mut ch, BASE + 3, 20);
        outb(&mut ch, BASE + 4, 0);
        outb(&mut ch, BASE + 4, 0);
        outb(&mut ch, BASE + 5, 0);
        outb(&mut ch, BASE + 5, 0);
        outb(&mut ch, BASE + 7, 0x35);
        ch.bus_master_write(0, 1, u32::from(BM_CMD_START));
        ch.run_dma(&mut mem);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC);
        let expected = mem.0[0x3000..0x3400].to_vec();
        ch.bus_master_write(0, 1, 0);
        let drive = ch.drives[0].as_mut().unwrap();
        let IdeDevice::Disk(backend) = &mut drive.device else {
            panic!()
        };
        let mut written = vec![0u8; 1024];
        backend.read(20 * 512, &mut written).unwrap();
        assert_eq!(written, expected);
        // A table too small for the command: error in both status registers.
        lba28_command(&mut ch, 0xCA, 0, 4);
        ch.bus_master_write(0, 1, u32::from(BM_CMD_START));
        ch.run_dma(&mut mem);
        assert_eq!(inb(&mut ch, BASE + 7), DRDY | DSC | ERR);
        assert_eq!(
            ch.bus_master_read(2, 1) as u8,
            BM_STATUS_ERROR | BM_STATUS_INTERRUPT
        );
    }
}
