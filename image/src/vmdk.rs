//! VMware's VMDK disk image format: reading and writing hosted sparse and flat disks.
//!
//! A VMDK disk is described by a text descriptor (`# Disk DescriptorFile`, lines of
//! `key = "value"` and extent lines `RW 2048 SPARSE "name.vmdk"`), either in a file of
//! its own or embedded in a sparse extent. The disk is the concatenation of its
//! extents, each a number of 512-byte sectors stored as:
//! - FLAT (or VMFS): the sectors as they are, in a file, from a sector offset;
//! - ZERO: no file, reads as zeros;
//! - SPARSE: a hosted sparse extent file. Its header (sector 0, magic "KDMV", little
//!   endian like every number in the file) gives the capacity and the grain size (the
//!   allocation unit, 1 to 128 sectors). A guest grain number splits into a grain
//!   directory (GD) index and a grain table (GT) index: GD entries give the sector of
//!   a GT (512 entries of 32 bits), whose entries give the sector of the grain (0: not
//!   allocated, reads as zeros; 1: a zero grain, when the header allows it). A
//!   redundant GD with its own GTs is kept in step when the header says so.
//!   streamOptimized files compress each grain (zlib), usually behind a 12-byte grain
//!   marker (guest sector, compressed size), and may put the GD in a footer (the
//!   header's GD offset is then all ones; the footer, a copy of the header with the
//!   real offset, is 1024 bytes before the end of the file).
//!
//! Supported: monolithicSparse (one sparse extent with the descriptor inside, read
//! and write), streamOptimized (read only), and descriptor files with any number (up
//! to 4096) of FLAT, VMFS, SPARSE and ZERO extents (monolithicFlat, twoGbMaxExtentFlat,
//! twoGbMaxExtentSparse, vmfs), named relative to the descriptor's directory. RDONLY
//! extents, ZERO extents and compressed extents make the whole image read-only.
//! Writes to sparse extents put new grains at the end of the file (whole grains),
//! writing the grain before the GT entries that point to it (GT, then redundant GT),
//! and a new GT (when a GD entry is 0) zeroed before the GD entries; an interrupted
//! write leaves at worst unused space. `create` makes monolithicSparse (64 KiB grains,
//! every GT preallocated, like qemu-img) and monolithicFlat images.
//!
//! Snapshot deltas (`parentCID` other than ffffffff with a `parentFileNameHint`,
//! relative to the image's directory) are read and written: unallocated grains of
//! sparse extents come from the parent (opened read-only, any of the above, at most
//! 16 deep; past its end zeros), and a new grain starts as the parent's data. The
//! parent's CID is not compared with `parentCID` (QEMU does not either). Like VMware
//! and QEMU, the first write gives the image a new CID (in its descriptor, embedded
//! or a file), so that its own children can tell it changed.
//!
//! `check` verifies each sparse extent: GD and GT entries inside the file, no grain
//! or table overlapping another or the metadata, no grain used twice, the redundant
//! GD and GTs equal to the primary ones; grain-sized stretches of the file that
//! nothing uses are counted as leaked (in grains).
//!
//! Not supported: VMFSSPARSE/SESPARSE (ESX COW) and raw device mapping extents,
//! NOACCESS extents, writing compressed grains, and children opened from storage
//! without a path (`from_storage`: the parent cannot be found).
//!
//! The files are not trusted: every offset and size read from them is checked before
//! use, so a damaged image gives a one-line error, not a panic, an access outside the
//! file or an unbounded allocation. Bounds: capacities and extents at most 2^41
//! sectors (1 PiB), a GD at most 64 MiB, 512 entries per GT, grain sizes a power of
//! two from 1 to 128 sectors, a compressed grain at most a grain plus 1/64 plus 512
//! bytes (zlib's worst case for incompressible data is far below that), descriptors
//! at most 1 MiB, at most 4096 extents.

use super::{CheckReport, CreateOptions, DiskFormat, Storage};
use crate::{le16, le32, le64};
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"KDMV";
const DESCRIPTOR_MAGIC: &[u8] = b"# Disk DescriptorFile";
const SECTOR: u64 = 512;
const GTES_PER_GT: u64 = 512;
const GT_BYTES: u64 = GTES_PER_GT * 4;
/// The header's GD offset when the GD is given by the footer.
const GD_AT_END: u64 = u64::MAX;
/// The largest capacity of an extent, and of the whole disk, in sectors (1 PiB).
const MAX_SECTORS: u64 = 1 << 41;
/// The largest grain directory held in memory.
const MAX_GD_BYTES: u64 = 64 << 20;
/// The largest descriptor read (a file of its own or embedded).
const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
const MAX_EXTENTS: usize = 4096;
/// `check` lists at most this many errors, then says how many more there were.
const MAX_ERRORS: usize = 1000;

/// Header flags: the redundant GD is in use; GT entry 1 means a zero grain;
/// grains are compressed; grains and tables are preceded by markers.
const FLAG_RGD: u32 = 1 << 1;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// A GT entry for a grain that reads as zeros (with FLAG_ZERO_GRAIN).
const GTE_ZERO: u32 = 1;
const COMPRESS_NONE: u16 = 0;
const COMPRESS_DEFLATE: u16 = 1;
/// A grain marker: the guest sector (u64) and the compressed size (u32).
const MARKER_BYTES: u64 = 12;

/// What `create` makes: 64 KiB grains, a 10 KiB embedded descriptor.
const CREATE_GRAIN_SECTORS: u64 = 128;
const CREATE_DESCRIPTOR_SECTORS: u64 = 20;

fn io_error(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

/// Sectors to bytes, for a sector count read from a file.
fn sectors_to_bytes(sectors: u64) -> Option<u64> {
    sectors.checked_mul(SECTOR)
}

/// The fields of a sparse extent header (or footer) this module uses.
#[derive(Clone, Copy)]
struct Header {
    version: u32,
    flags: u32,
    /// In sectors, like every offset and size here.
    capacity: u64,
    grain: u64,
    descriptor_offset: u64,
    descriptor_size: u64,
    gtes_per_gt: u32,
    rgd_offset: u64,
    gd_offset: u64,
    compress: u16,
}

impl Header {
    fn parse(h: &[u8; 512]) -> Header {
        Header {
            version: le32(h, 4),
            flags: le32(h, 8),
            capacity: le64(h, 12),
            grain: le64(h, 20),
            descriptor_offset: le64(h, 28),
            descriptor_size: le64(h, 36),
            gtes_per_gt: le32(h, 44),
            rgd_offset: le64(h, 48),
            gd_offset: le64(h, 56),
            compress: le16(h, 77),
        }
    }
}

/// Reads `count` little-endian u32 entries at byte `offset`, inside a file of
/// `file_len` bytes.
fn read_entries(
    storage: &dyn Storage,
    what: &str,
    offset: u64,
    count: u64,
    file_len: u64,
) -> Result<Vec<u32>, String> {
    let bytes = count * 4;
    let inside = offset.checked_add(bytes).is_some_and(|end| end <= file_len);
    if !inside || offset < SECTOR {
        return Err(format!(
            "the {what} ({bytes} bytes at {offset:#x}) is misplaced or outside the file"
        ));
    }
    let mut raw = vec![0u8; bytes as usize];
    storage
        .read_exact_at(&mut raw, offset)
        .map_err(|e| io_error(&format!("cannot read the {what}"), e))?;
    Ok(raw.chunks_exact(4).map(|c| le32(c, 0)).collect())
}

/// What a GT entry says about one grain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Grain {
    /// No grain: reads as zeros.
    Unallocated,
    /// A zero grain (GT entry 1): reads as zeros.
    Zero,
    /// The grain's data at this byte offset.
    Data(u64),
    /// A compressed grain (its marker, or its zlib stream) at this byte offset.
    Compressed(u64),
}

/// A hosted sparse extent file.
struct Sparse {
    storage: Box<dyn Storage>,
    version: u32,
    /// Bytes.
    grain_bytes: u64,
    /// The capacity in bytes.
    capacity: u64,
    /// The GD's byte offset and entries.
    gd_offset: u64,
    gd: Vec<u32>,
    /// The redundant GD, when in use.
    rgd: Option<(u64, Vec<u32>)>,
    compressed: bool,
    markers: bool,
    zero_grain: bool,
    /// The embedded descriptor's byte range, if any.
    descriptor: Option<(u64, u64)>,
    /// Where the embedded descriptor's CID is and its number of digits, if found.
    cid_offset: Option<(u64, usize)>,
    /// The file's length as far as this extent has read or written it.
    file_len: u64,
    /// The last GT used: its byte offset and entries.
    gt_cache: Option<(u64, Vec<u32>)>,
    /// The last compressed grain read: its byte offset and contents.
    inflated: Option<(u64, Vec<u8>)>,
}

impl Sparse {
    /// Reads and checks the header and GDs; gives the extent and its embedded
    /// descriptor's text, if any.
    fn open(storage: Box<dyn Storage>) -> Result<(Sparse, Option<String>), String> {
        let file_len = storage
            .size()
            .map_err(|e| io_error("cannot read the file's size", e))?;
        if file_len < SECTOR {
            return Err("the file is too short for a VMDK sparse extent header".into());
        }
        let mut head = [0u8; 512];
        storage
            .read_exact_at(&mut head, 0)
            .map_err(|e| io_error("cannot read the header", e))?;
        if &head[..4] != MAGIC {
            return Err("not a VMDK sparse extent (no KDMV magic)".into());
        }
        let mut header = Header::parse(&head);
        if header.gd_offset == GD_AT_END {
            // streamOptimized: the header proper is the footer, 1024 bytes before
            // the end (followed by the end-of-stream marker).
            if file_len < 3 * SECTOR {
                return Err(
                    "the grain directory is in a footer, but the file is too short for one".into(),
                );
            }
            let mut foot = [0u8; 512];
            storage
                .read_exact_at(&mut foot, file_len - 2 * SECTOR)
                .map_err(|e| io_error("cannot read the footer", e))?;
            if &foot[..4] != MAGIC {
                return Err("the footer (1024 bytes before the end) has no KDMV magic".into());
            }
            header = Header::parse(&foot);
            if header.gd_offset == GD_AT_END {
                return Err("the footer does not give the grain directory's offset".into());
            }
        }
        if !(1..=3).contains(&header.version) {
            return Err(format!(
                "VMDK sparse extent version {} is not supported",
                header.version
            ));
        }
        if u64::from(header.gtes_per_gt) != GTES_PER_GT {
            return Err(format!(
                "{} entries per grain table is not supported (only 512)",
                header.gtes_per_gt
            ));
        }
        if !(1..=128).contains(&header.grain) || !header.grain.is_power_of_two() {
            return Err(format!(
                "grain size {} sectors is not a power of two from 1 to 128",
                header.grain
            ));
        }
        if header.capacity > MAX_SECTORS {
            return Err(format!(
                "capacity {} sectors is too large (the limit is 2^41 sectors, 1 PiB)",
                header.capacity
            ));
        }
        let compressed = match header.compress {
            COMPRESS_NONE => header.flags & FLAG_COMPRESSED != 0,
            COMPRESS_DEFLATE => true,
            other => return Err(format!("compression algorithm {other} is not supported")),
        };
        let grain_bytes = header.grain * SECTOR;
        let grains = header.capacity.div_ceil(header.grain);
        let gd_entries = grains.div_ceil(GTES_PER_GT);
        if gd_entries * 4 > MAX_GD_BYTES {
            return Err(format!(
                "the grain directory ({} bytes) is too large",
                gd_entries * 4
            ));
        }
        let table = |what: &str, sectors: u64| -> Result<(u64, Vec<u32>), String> {
            let offset = sectors_to_bytes(sectors).unwrap_or(u64::MAX);
            let entries = read_entries(&*storage, what, offset, gd_entries, file_len)?;
            Ok((offset, entries))
        };
        let (gd_offset, gd) = table("grain directory", header.gd_offset)?;
        let rgd = if header.flags & FLAG_RGD != 0 && header.rgd_offset != 0 {
            Some(table("redundant grain directory", header.rgd_offset)?)
        } else {
            None
        };

        let mut descriptor = None;
        let mut cid_offset = None;
        let mut text = None;
        if header.descriptor_offset != 0 && header.descriptor_size != 0 {
            let bytes = sectors_to_bytes(header.descriptor_size)
                .filter(|&b| b <= MAX_DESCRIPTOR_BYTES)
                .ok_or_else(|| {
                    format!(
                        "the embedded descriptor ({} sectors) is too large",
                        header.descriptor_size
                    )
                })?;
            let offset = sectors_to_bytes(header.descriptor_offset).unwrap_or(u64::MAX);
            // A descriptor cut short by the end of the file is read as far as it goes.
            if offset >= file_len {
                return Err("the embedded descriptor is outside the file".into());
            }
            let bytes = bytes.min(file_len - offset);
            let mut raw = vec![0u8; bytes as usize];
            storage
                .read_exact_at(&mut raw, offset)
                .map_err(|e| io_error("cannot read the embedded descriptor", e))?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            text = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
            descriptor = Some((offset, bytes));
            cid_offset = cid_position(&raw[..end]).map(|(at, digits)| (offset + at as u64, digits));
        }

        Ok((
            Sparse {
                storage,
                version: header.version,
                grain_bytes,
                capacity: header.capacity * SECTOR,
                gd_offset,
                gd,
                rgd,
                compressed,
                markers: header.flags & FLAG_MARKERS != 0,
                zero_grain: header.flags & FLAG_ZERO_GRAIN != 0,
                descriptor,
                cid_offset,
                file_len,
                gt_cache: None,
                inflated: None,
            },
            text,
        ))
    }

    /// The GD and GT indexes of the grain holding extent byte `pos`.
    fn indexes(&self, pos: u64) -> (usize, usize) {
        let grain = pos / self.grain_bytes;
        (
            (grain / GTES_PER_GT) as usize,
            (grain % GTES_PER_GT) as usize,
        )
    }

    /// Entry `index` of the GT at byte `table`.
    fn gt_entry(&mut self, table: u64, index: usize) -> Result<u32, String> {
        if self.gt_cache.as_ref().is_none_or(|(at, _)| *at != table) {
            let entries = read_entries(
                &*self.storage,
                "grain table",
                table,
                GTES_PER_GT,
                self.file_len,
            )?;
            self.gt_cache = Some((table, entries));
        }
        Ok(self
            .gt_cache
            .as_ref()
            .and_then(|(_, entries)| entries.get(index).copied())
            .unwrap_or(0))
    }

    /// Where the grain holding extent byte `pos` (below the capacity) is.
    fn locate(&mut self, pos: u64) -> Result<Grain, String> {
        let (gd_index, gt_index) = self.indexes(pos);
        let gt_sector = match self.gd.get(gd_index) {
            Some(&sector) => sector,
            None => return Err(format!("offset {pos:#x} is past the grain directory")),
        };
        if gt_sector == 0 {
            return Ok(Grain::Unallocated);
        }
        let entry = self.gt_entry(u64::from(gt_sector) * SECTOR, gt_index)?;
        Ok(match entry {
            0 => Grain::Unallocated,
            GTE_ZERO if self.zero_grain => Grain::Zero,
            sector if self.compressed => Grain::Compressed(u64::from(sector) * SECTOR),
            sector => Grain::Data(u64::from(sector) * SECTOR),
        })
    }

    /// The largest compressed grain accepted.
    fn compressed_bound(&self) -> u64 {
        self.grain_bytes + self.grain_bytes / 64 + 512
    }

    /// Where a compressed grain's zlib stream starts and how long it is at most.
    fn compressed_span(&self, offset: u64) -> Result<(u64, u64), String> {
        let bound = self.compressed_bound();
        let (start, len) = if self.markers {
            if offset.saturating_add(MARKER_BYTES) > self.file_len {
                return Err(format!(
                    "the compressed grain at {offset:#x} is past the end of the file"
                ));
            }
            let mut marker = [0u8; MARKER_BYTES as usize];
            self.storage
                .read_exact_at(&mut marker, offset)
                .map_err(|e| io_error("cannot read a grain marker", e))?;
            let size = u64::from(le32(&marker, 8));
            if size == 0 {
                return Err(format!(
                    "the grain at {offset:#x} is a metadata marker, not a grain"
                ));
            }
            if size > bound {
                return Err(format!(
                    "the compressed grain at {offset:#x} is {size} bytes, more than a grain needs"
                ));
            }
            (offset + MARKER_BYTES, size)
        } else {
            // Without a marker the stream's length is not known: it ends itself.
            (offset, bound.min(self.file_len.saturating_sub(offset)))
        };
        if start.saturating_add(len) > self.file_len || len == 0 {
            return Err(format!(
                "the compressed grain at {offset:#x} is past the end of the file"
            ));
        }
        Ok((start, len))
    }

    /// The contents of the compressed grain at byte `offset`.
    fn inflate(&mut self, offset: u64) -> Result<&[u8], String> {
        if self.inflated.as_ref().is_none_or(|(at, _)| *at != offset) {
            let (start, len) = self.compressed_span(offset)?;
            let mut input = vec![0u8; len as usize];
            self.storage
                .read_exact_at(&mut input, start)
                .map_err(|e| io_error("cannot read a compressed grain", e))?;
            // The output is bounded by the grain: a stream that does not end within
            // it is an error.
            let mut output = vec![0u8; self.grain_bytes as usize];
            let mut inflater = flate2::Decompress::new(true);
            let status = inflater.decompress(&input, &mut output, flate2::FlushDecompress::Finish);
            if !matches!(status, Ok(flate2::Status::StreamEnd)) {
                return Err(format!(
                    "the compressed grain at {offset:#x} does not inflate to at most a grain"
                ));
            }
            self.inflated = Some((offset, output));
        }
        match &self.inflated {
            Some((_, data)) => Ok(data),
            None => Err("the compressed grain cache is empty".into()),
        }
    }

    /// Reads extent bytes (below the capacity); unallocated grains come from
    /// `parent` (guest offset `guest` + extent offset) when there is one.
    fn read(
        &mut self,
        offset: u64,
        buf: &mut [u8],
        mut parent: Option<&mut Vmdk>,
        guest: u64,
    ) -> Result<(), String> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_grain = pos % self.grain_bytes;
            let n = (buf.len() - done).min((self.grain_bytes - in_grain) as usize);
            let part = &mut buf[done..done + n];
            match self.locate(pos)? {
                Grain::Unallocated => match parent.as_deref_mut() {
                    Some(parent) => read_parent(parent, guest + pos, part)?,
                    None => part.fill(0),
                },
                Grain::Zero => part.fill(0),
                Grain::Data(at) => {
                    let from = at + in_grain;
                    if from + n as u64 > self.file_len {
                        return Err(format!(
                            "the grain at {at:#x} for extent offset {pos:#x} is past the end of the file"
                        ));
                    }
                    self.storage
                        .read_exact_at(part, from)
                        .map_err(|e| io_error("cannot read a grain", e))?;
                }
                Grain::Compressed(at) => {
                    let data = self.inflate(at)?;
                    let from = in_grain as usize;
                    part.copy_from_slice(&data[from..from + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Writes extent bytes (below the capacity), allocating grains as needed (a new
    /// grain starts as the parent's data, or zeros).
    fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        mut parent: Option<&mut Vmdk>,
        guest: u64,
    ) -> Result<(), String> {
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let in_grain = pos % self.grain_bytes;
            let n = (data.len() - done).min((self.grain_bytes - in_grain) as usize);
            let part = &data[done..done + n];
            match self.locate(pos)? {
                Grain::Data(at) => {
                    // Only bytes inside the file are written in place.
                    if at + in_grain + n as u64 > self.file_len {
                        return Err(format!(
                            "the grain at {at:#x} for extent offset {pos:#x} is past the end of the file"
                        ));
                    }
                    self.storage
                        .write_all_at(part, at + in_grain)
                        .map_err(|e| io_error("cannot write a grain", e))?;
                }
                Grain::Compressed(_) => {
                    return Err("compressed grains cannot be written".into());
                }
                Grain::Unallocated => {
                    let parent = parent.as_deref_mut().map(|p| (p, guest));
                    self.allocate(pos, part, parent)?
                }
                Grain::Zero => self.allocate(pos, part, None)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Where `bytes` more are put: the sector-aligned end of the file.
    fn append_offset(&self, bytes: u64) -> Result<u64, String> {
        let at = self.file_len.div_ceil(SECTOR) * SECTOR;
        if (at + bytes) / SECTOR > u64::from(u32::MAX) {
            return Err("the extent file cannot grow past 2 TiB (32-bit sector numbers)".into());
        }
        Ok(at)
    }

    /// Appends `data` at the end of the file; gives its byte offset.
    fn append(&mut self, data: &[u8], what: &str) -> Result<u64, String> {
        let at = self.append_offset(data.len() as u64)?;
        self.storage
            .write_all_at(data, at)
            .map_err(|e| io_error(&format!("cannot write a new {what}"), e))?;
        self.file_len = self.file_len.max(at + data.len() as u64);
        Ok(at)
    }

    /// Sets entry `index` of the GT at byte `table` to `sector`.
    fn set_gt_entry(&mut self, table: u64, index: usize, sector: u32) -> Result<(), String> {
        if table < SECTOR || table + GT_BYTES > self.file_len {
            return Err(format!(
                "the grain table at {table:#x} is misplaced or outside the file"
            ));
        }
        self.storage
            .write_all_at(&sector.to_le_bytes(), table + index as u64 * 4)
            .map_err(|e| io_error("cannot write a grain table entry", e))?;
        if let Some((at, entries)) = &mut self.gt_cache {
            if *at == table {
                entries[index] = sector;
            }
        }
        Ok(())
    }

    /// Gives the grain holding extent byte `pos` a new grain at the end of the file,
    /// holding `data` over the parent's data (the extent starting at its guest
    /// offset given) or zeros.
    fn allocate(
        &mut self,
        pos: u64,
        data: &[u8],
        parent: Option<(&mut Vmdk, u64)>,
    ) -> Result<(), String> {
        let (gd_index, gt_index) = self.indexes(pos);
        let mut gt_sector = self.gd.get(gd_index).copied().unwrap_or(0);
        if gt_sector == 0 {
            gt_sector = self.allocate_gt(gd_index)?;
        }
        let in_grain = (pos % self.grain_bytes) as usize;
        let mut grain = vec![0u8; self.grain_bytes as usize];
        if let Some((parent, guest)) = parent {
            read_parent(parent, guest + pos - in_grain as u64, &mut grain)?;
        }
        grain[in_grain..in_grain + data.len()].copy_from_slice(data);
        let at = self.append(&grain, "grain")?;
        let sector = (at / SECTOR) as u32;
        self.set_gt_entry(u64::from(gt_sector) * SECTOR, gt_index, sector)?;
        let redundant = match &self.rgd {
            Some((_, rgd)) => rgd.get(gd_index).copied().unwrap_or(0),
            None => 0,
        };
        if redundant != 0 {
            self.set_gt_entry(u64::from(redundant) * SECTOR, gt_index, sector)?;
        }
        Ok(())
    }

    /// Makes a zeroed GT (and redundant GT) for GD entry `gd_index`, then points the
    /// GD (and redundant GD) entry to it; gives its sector.
    fn allocate_gt(&mut self, gd_index: usize) -> Result<u32, String> {
        let zeros = vec![0u8; GT_BYTES as usize];
        let gt = (self.append(&zeros, "grain table")? / SECTOR) as u32;
        let rgt = match self.rgd {
            Some(_) => Some((self.append(&zeros, "grain table")? / SECTOR) as u32),
            None => None,
        };
        self.storage
            .write_all_at(&gt.to_le_bytes(), self.gd_offset + gd_index as u64 * 4)
            .map_err(|e| io_error("cannot write a grain directory entry", e))?;
        if let Some(entry) = self.gd.get_mut(gd_index) {
            *entry = gt;
        }
        if let (Some(rgt), Some((offset, rgd))) = (rgt, &mut self.rgd) {
            self.storage
                .write_all_at(&rgt.to_le_bytes(), *offset + gd_index as u64 * 4)
                .map_err(|e| io_error("cannot write a grain directory entry", e))?;
            if let Some(entry) = rgd.get_mut(gd_index) {
                *entry = rgt;
            }
        }
        Ok(gt)
    }

    /// Checks the tables; adds problems to `errors` (each prefixed with `name`) and
    /// gives the number of leaked grains: grain-sized stretches of the file that
    /// nothing uses (left by an interrupted write; not counted when compressed).
    fn check(&mut self, name: &str, errors: &mut Vec<String>) -> u64 {
        // Byte ranges in use, to find overlaps: (start, end, what).
        let mut used: Vec<(u64, u64, Region)> = vec![(0, SECTOR, Region::Header)];
        if let Some((at, len)) = self.descriptor {
            used.push((at, at + len, Region::Descriptor));
        }
        let gd_bytes = self.gd.len() as u64 * 4;
        used.push((self.gd_offset, self.gd_offset + gd_bytes, Region::Gd));
        if let Some((at, _)) = &self.rgd {
            used.push((*at, at + gd_bytes, Region::Rgd));
        }
        let gd = self.gd.clone();
        let rgd = self.rgd.as_ref().map(|(_, entries)| entries.clone());
        // Grain tables and grains already seen (a table read once, however many
        // entries point to it).
        let mut tables = HashSet::new();
        let mut grains = HashSet::new();
        for (i, &gt_sector) in gd.iter().enumerate() {
            if errors.len() > MAX_ERRORS {
                break;
            }
            let redundant = rgd.as_ref().map(|r| r.get(i).copied().unwrap_or(0));
            if let Some(r) = redundant {
                if (r == 0) != (gt_sector == 0) {
                    errors.push(format!(
                        "{name}grain directory entry {i} ({gt_sector}) and its redundant copy ({r}) disagree"
                    ));
                }
            }
            if gt_sector == 0 {
                continue;
            }
            let redundant = redundant.filter(|&r| r != 0);
            if !tables.insert(gt_sector) || redundant.is_some_and(|r| !tables.insert(r)) {
                errors.push(format!(
                    "{name}grain directory entry {i} points to a grain table used twice"
                ));
                continue;
            }
            let table = u64::from(gt_sector) * SECTOR;
            let read = |what: &str, table: u64| {
                read_entries(&*self.storage, what, table, GTES_PER_GT, self.file_len)
            };
            let entries = match read("grain table", table) {
                Ok(entries) => entries,
                Err(e) => {
                    errors.push(format!("{name}grain directory entry {i}: {e}"));
                    continue;
                }
            };
            used.push((table, table + GT_BYTES, Region::Gt(i)));
            if let Some(r) = redundant {
                let table = u64::from(r) * SECTOR;
                match read("redundant grain table", table) {
                    Ok(copy) if copy != entries => errors.push(format!(
                        "{name}grain table {i} and its redundant copy differ"
                    )),
                    Ok(_) => {}
                    Err(e) => {
                        errors.push(format!("{name}redundant grain directory entry {i}: {e}"))
                    }
                }
                used.push((table, table + GT_BYTES, Region::Rgt(i)));
            }
            for (j, &entry) in entries.iter().enumerate() {
                if entry == 0 || (entry == GTE_ZERO && self.zero_grain) {
                    continue;
                }
                let guest = (i as u64 * GTES_PER_GT + j as u64) * self.grain_bytes;
                if guest >= self.capacity {
                    errors.push(format!(
                        "{name}grain table {i} entry {j} maps a grain past the capacity"
                    ));
                    continue;
                }
                if !grains.insert(entry) {
                    errors.push(format!(
                        "{name}the grain at sector {entry} is used twice (grain table {i} entry {j})"
                    ));
                    continue;
                }
                let at = u64::from(entry) * SECTOR;
                let end = if self.compressed {
                    match self.compressed_span(at) {
                        Ok((start, len)) if self.markers => (start + len).div_ceil(SECTOR) * SECTOR,
                        Ok(_) => at + SECTOR,
                        Err(e) => {
                            errors.push(format!("{name}grain table {i} entry {j}: {e}"));
                            continue;
                        }
                    }
                } else {
                    at + self.grain_bytes.min(self.capacity - guest).div_ceil(SECTOR) * SECTOR
                };
                let file_end = self.file_len.div_ceil(SECTOR) * SECTOR;
                if end > file_end {
                    errors.push(format!(
                        "{name}the grain for guest offset {guest:#x} (at {at:#x}) is past the end of the file"
                    ));
                    continue;
                }
                // A last grain partly past the capacity uses a whole grain when the
                // file has one.
                let whole = at + self.grain_bytes;
                let end = if !self.compressed && whole <= file_end {
                    whole
                } else {
                    end
                };
                used.push((at, end, Region::Grain(guest)));
            }
        }
        used.sort_by_key(|&(start, end, _)| (start, end));
        let mut last: Option<(u64, Region)> = None;
        let mut leaked = 0;
        let mut leak = |from: u64, to: u64| {
            // Tables use whole sectors.
            let from = from.div_ceil(SECTOR) * SECTOR;
            leaked += to.saturating_sub(from) / self.grain_bytes;
        };
        for &(start, end, what) in &used {
            if let Some((last_end, last_what)) = last {
                if start < last_end {
                    errors.push(format!("{name}{what} overlaps {last_what}"));
                    if errors.len() > MAX_ERRORS {
                        break;
                    }
                }
                leak(last_end, start);
            }
            if last.is_none_or(|(last_end, _)| end > last_end) {
                last = Some((end, what));
            }
        }
        if let Some((last_end, _)) = last {
            leak(last_end, self.file_len);
        }
        if self.compressed {
            0
        } else {
            leaked
        }
    }
}

/// A part of a sparse extent file, for `check`'s messages.
#[derive(Clone, Copy)]
enum Region {
    Header,
    Descriptor,
    Gd,
    Rgd,
    Gt(usize),
    Rgt(usize),
    /// The grain for this guest (extent) offset.
    Grain(u64),
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Region::Header => write!(f, "the header"),
            Region::Descriptor => write!(f, "the embedded descriptor"),
            Region::Gd => write!(f, "the grain directory"),
            Region::Rgd => write!(f, "the redundant grain directory"),
            Region::Gt(i) => write!(f, "grain table {i}"),
            Region::Rgt(i) => write!(f, "redundant grain table {i}"),
            Region::Grain(at) => write!(f, "the grain for guest offset {at:#x}"),
        }
    }
}

/// Reads a parent's bytes at guest offset `at`; zeros past its end.
fn read_parent(parent: &mut Vmdk, at: u64, buf: &mut [u8]) -> Result<(), String> {
    let inside = parent.len().saturating_sub(at).min(buf.len() as u64) as usize;
    if inside > 0 {
        parent
            .read_at(at, &mut buf[..inside])
            .map_err(|e| format!("parent: {e}"))?;
    }
    buf[inside..].fill(0);
    Ok(())
}

/// Where a descriptor's `CID=` value starts and how many hex digits it has (QEMU
/// writes it without leading zeros, VMware with eight), if it has one.
fn cid_position(text: &[u8]) -> Option<(usize, usize)> {
    let mut start = 0;
    for line in text.split(|&b| b == b'\n') {
        let indent = line
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(line.len());
        let rest = &line[indent..];
        if let Some(value) = rest.strip_prefix(b"CID=") {
            let digits = value.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if (1..=8).contains(&digits) {
                return Some((start + indent + 4, digits));
            }
        }
        start += line.len() + 1;
    }
    None
}

/// A FLAT or VMFS extent: sectors from `base` in a file.
struct Flat {
    storage: Box<dyn Storage>,
    base: u64,
    file_len: u64,
}

impl Flat {
    /// Reads; past the end of the file reads as zeros (a shorter, sparse copy).
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let at = self.base + offset;
        let inside = self.file_len.saturating_sub(at).min(buf.len() as u64) as usize;
        if inside > 0 {
            self.storage
                .read_exact_at(&mut buf[..inside], at)
                .map_err(|e| io_error("cannot read a flat extent", e))?;
        }
        buf[inside..].fill(0);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let at = self.base + offset;
        self.storage
            .write_all_at(data, at)
            .map_err(|e| io_error("cannot write a flat extent", e))?;
        self.file_len = self.file_len.max(at + data.len() as u64);
        Ok(())
    }
}

enum ExtentData {
    Zero,
    Flat(Flat),
    Sparse(Box<Sparse>),
}

struct Extent {
    /// The guest byte where it starts, and its length in bytes.
    start: u64,
    len: u64,
    data: ExtentData,
}

/// An extent line of a descriptor.
struct ExtentLine {
    access: String,
    sectors: u64,
    kind: String,
    file: Option<String>,
    offset: u64,
}

/// What this module uses of a descriptor.
#[derive(Default)]
struct Descriptor {
    create_type: Option<String>,
    parent_cid: Option<String>,
    parent_hint: Option<String>,
    extents: Vec<ExtentLine>,
}

impl Descriptor {
    /// Whether it names a parent image (a snapshot delta).
    fn has_parent(&self) -> bool {
        let no_parent = self
            .parent_cid
            .as_deref()
            .is_none_or(|cid| cid.eq_ignore_ascii_case("ffffffff"));
        !no_parent && self.parent_hint.is_some()
    }
}

/// Splits a line at whitespace, keeping "quoted strings" (without quotes) whole.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
            started = true;
        } else if c.is_whitespace() && !quoted {
            if started {
                out.push(std::mem::take(&mut current));
                started = false;
            }
        } else {
            current.push(c);
            started = true;
        }
    }
    if started {
        out.push(current);
    }
    out
}

/// Parses a descriptor leniently: comments, unknown keys and lines are ignored;
/// extent lines must be well formed (they are skipped when `extents` is false: an
/// embedded descriptor's extent names its own file).
fn parse_descriptor(text: &str, extents: bool) -> Result<Descriptor, String> {
    let mut descriptor = Descriptor::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = tokens(line);
        let access = words.first().map(|w| w.to_ascii_uppercase());
        if let Some(access @ ("RW" | "RDONLY" | "NOACCESS")) = access.as_deref() {
            if !extents {
                continue;
            }
            if descriptor.extents.len() == MAX_EXTENTS {
                return Err(format!(
                    "the descriptor has more than {MAX_EXTENTS} extents"
                ));
            }
            let bad = |what: &str| format!("descriptor line {}: {what}", number + 1);
            let sectors = words
                .get(1)
                .and_then(|w| w.parse::<u64>().ok())
                .filter(|&s| s <= MAX_SECTORS)
                .ok_or_else(|| bad("the extent size is missing or too large"))?;
            let kind = words
                .get(2)
                .map(|w| w.to_ascii_uppercase())
                .ok_or_else(|| bad("the extent type is missing"))?;
            let offset = match words.get(4) {
                Some(w) => w
                    .parse::<u64>()
                    .ok()
                    .filter(|&s| s <= MAX_SECTORS)
                    .ok_or_else(|| bad("the extent offset is not a number or too large"))?,
                None => 0,
            };
            descriptor.extents.push(ExtentLine {
                access: access.to_string(),
                sectors,
                kind,
                file: words.get(3).cloned(),
                offset,
            });
        } else if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches('"').to_string();
            match key.trim() {
                "createType" => descriptor.create_type = Some(value),
                "parentCID" => descriptor.parent_cid = Some(value),
                "parentFileNameHint" => descriptor.parent_hint = Some(value),
                _ => {}
            }
        }
    }
    Ok(descriptor)
}

const PARENT_ERROR: &str =
    "VMDK images with a parent (snapshot deltas) are not supported without a path to find it";
/// The longest parent chain followed (this also stops an image that is its own parent).
const MAX_PARENT_DEPTH: u32 = 16;

/// Where the descriptor's CID is, to change it on the first write (as VMware and
/// QEMU do, so that children made from this image can tell it changed).
enum CidSpot {
    /// In the embedded descriptor of the (only) sparse extent, at this byte, with
    /// this many digits.
    Extent((u64, usize)),
    /// In a descriptor file, at this byte, with this many digits.
    File(Box<dyn Storage>, (u64, usize)),
}

/// An open VMDK image.
pub struct Vmdk {
    extents: Vec<Extent>,
    /// The virtual disk size in bytes.
    size: u64,
    /// Why writes are refused; None when the image is open for writing.
    read_only: Option<String>,
    create_type: String,
    /// The image this one is a delta of, and its name as the descriptor gives it.
    parent: Option<(Box<Vmdk>, String)>,
    /// Where the CID is; None once changed (or when it cannot be).
    cid: Option<CidSpot>,
}

/// The extent holding guest byte `pos` (below the size) and how many bytes of it
/// follow `pos`.
fn extent_at(extents: &mut [Extent], pos: u64) -> Result<(&mut Extent, u64), String> {
    let i = extents.partition_point(|e| e.start + e.len <= pos);
    let extent = extents
        .get_mut(i)
        .ok_or_else(|| format!("no extent holds offset {pos:#x}"))?;
    let left = extent.start + extent.len - pos;
    Ok((extent, left))
}

impl Vmdk {
    /// Whether `head` (a file's first bytes, up to 1024) is a VMDK sparse extent
    /// (magic "KDMV") or a descriptor file.
    pub fn probe(head: &[u8]) -> bool {
        if head.starts_with(MAGIC) {
            return true;
        }
        let start = head
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(head.len());
        head[start..].starts_with(DESCRIPTOR_MAGIC)
    }

    /// Opens a sparse extent file (monolithicSparse or streamOptimized) or a
    /// descriptor file and its extents. streamOptimized images are read-only. A
    /// parent (`parentFileNameHint`, relative to the image's directory) is opened
    /// read-only, recursively, at most 16 deep.
    pub fn open(path: &Path, writable: bool) -> Result<Vmdk, String> {
        Self::open_chain(path, writable, 0)
    }

    fn open_chain(path: &Path, writable: bool, depth: u32) -> Result<Vmdk, String> {
        let named = |e: String| format!("{}: {e}", path.display());
        let dir = path.parent().unwrap_or(Path::new("."));
        let requested = writable;
        let (file, writable) = super::open_file(path, writable)?;
        let len = Storage::size(&file).map_err(|e| named(io_error("cannot read", e)))?;
        let mut head = vec![0u8; len.min(super::PROBE_BYTES as u64) as usize];
        Storage::read_exact_at(&file, &mut head, 0)
            .map_err(|e| named(io_error("cannot read", e)))?;
        if head.starts_with(MAGIC) {
            let (mut image, descriptor) =
                Self::from_sparse(Box::new(file), writable).map_err(named)?;
            image.open_parent(&descriptor, dir, depth).map_err(named)?;
            return Ok(image);
        }
        if !Self::probe(&head) {
            return Err(named("not a VMDK image".into()));
        }
        if len > MAX_DESCRIPTOR_BYTES {
            return Err(named(format!(
                "the descriptor file ({len} bytes) is larger than 1 MiB"
            )));
        }
        let mut text = vec![0u8; len as usize];
        Storage::read_exact_at(&file, &mut text, 0)
            .map_err(|e| named(io_error("cannot read", e)))?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let descriptor =
            parse_descriptor(&String::from_utf8_lossy(&text[..end]), true).map_err(named)?;
        // The descriptor file itself is only written for its CID: its extents
        // decide whether the image is writable.
        let cid = cid_position(&text[..end]).map(|(at, digits)| (at as u64, digits));
        let mut image = Self::from_descriptor(&descriptor, dir, requested).map_err(named)?;
        image.cid = match cid {
            Some(at) if writable && image.read_only.is_none() => {
                Some(CidSpot::File(Box::new(file), at))
            }
            _ => None,
        };
        image.open_parent(&descriptor, dir, depth).map_err(named)?;
        Ok(image)
    }

    /// Opens the parent `descriptor` names, if any.
    fn open_parent(
        &mut self,
        descriptor: &Descriptor,
        dir: &Path,
        depth: u32,
    ) -> Result<(), String> {
        if !descriptor.has_parent() {
            return Ok(());
        }
        let name = descriptor.parent_hint.clone().unwrap_or_default();
        if depth + 1 >= MAX_PARENT_DEPTH {
            return Err(format!(
                "the parent chain is more than {MAX_PARENT_DEPTH} deep"
            ));
        }
        let parent = Self::open_chain(&dir.join(&name), false, depth + 1)
            .map_err(|e| format!("parent: {e}"))?;
        self.parent = Some((Box::new(parent), name));
        Ok(())
    }

    /// Opens a single-file sparse image (monolithicSparse or streamOptimized) from
    /// any storage; the embedded descriptor's extent lines are not followed.
    pub fn from_storage(storage: Box<dyn Storage>, writable: bool) -> Result<Vmdk, String> {
        let (image, descriptor) = Self::from_sparse(storage, writable)?;
        if descriptor.has_parent() {
            return Err(PARENT_ERROR.into());
        }
        Ok(image)
    }

    /// A single-file sparse image, without its parent (if any), and its embedded
    /// descriptor.
    fn from_sparse(
        storage: Box<dyn Storage>,
        writable: bool,
    ) -> Result<(Vmdk, Descriptor), String> {
        let (sparse, text) = Sparse::open(storage)?;
        let descriptor = match &text {
            Some(text) => parse_descriptor(text, false)?,
            None => Descriptor::default(),
        };
        let create_type = descriptor.create_type.clone().unwrap_or_else(|| {
            if sparse.compressed {
                "streamOptimized".into()
            } else {
                "monolithicSparse".into()
            }
        });
        let read_only = if !writable {
            Some("the image is open read-only".to_string())
        } else if sparse.compressed {
            Some("compressed (streamOptimized) VMDK images are read-only".to_string())
        } else {
            None
        };
        let size = sparse.capacity;
        let cid = sparse.cid_offset.map(CidSpot::Extent);
        let extents = if size > 0 {
            vec![Extent {
                start: 0,
                len: size,
                data: ExtentData::Sparse(Box::new(sparse)),
            }]
        } else {
            Vec::new()
        };
        let image = Vmdk {
            extents,
            size,
            read_only,
            create_type,
            parent: None,
            cid,
        };
        Ok((image, descriptor))
    }

    fn from_descriptor(
        descriptor: &Descriptor,
        dir: &Path,
        writable: bool,
    ) -> Result<Vmdk, String> {
        let mut read_only = (!writable).then(|| "the image is open read-only".to_string());
        let mut refuse = |why: String| {
            read_only.get_or_insert(why);
        };
        let mut extents = Vec::new();
        let mut size = 0u64;
        for (i, line) in descriptor.extents.iter().enumerate() {
            let n = i + 1;
            let len = line.sectors * SECTOR;
            let rw = match line.access.as_str() {
                "RW" => true,
                "RDONLY" => {
                    refuse(format!("extent {n} is read-only (RDONLY)"));
                    false
                }
                _ => return Err(format!("extent {n}: NOACCESS extents are not supported")),
            };
            // An extent file that cannot be written makes the image read-only.
            let mut open = |line: &ExtentLine| -> Result<(File, PathBuf), String> {
                let name = line
                    .file
                    .as_deref()
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| format!("extent {n} has no file name"))?;
                let path = dir.join(name);
                let (file, got) = super::open_file(&path, writable && rw)?;
                if writable && rw && !got {
                    refuse(format!("{} is not writable", path.display()));
                }
                Ok((file, path))
            };
            let data = match line.kind.as_str() {
                "ZERO" => {
                    refuse(format!(
                        "extent {n} is a ZERO extent, which cannot be written"
                    ));
                    ExtentData::Zero
                }
                "FLAT" | "VMFS" => {
                    let (file, path) = open(line)?;
                    let file_len = Storage::size(&file)
                        .map_err(|e| io_error(&path.display().to_string(), e))?;
                    ExtentData::Flat(Flat {
                        storage: Box::new(file),
                        base: line.offset * SECTOR,
                        file_len,
                    })
                }
                "SPARSE" => {
                    let (file, path) = open(line)?;
                    let named = |e: String| format!("{}: {e}", path.display());
                    let (sparse, _) = Sparse::open(Box::new(file)).map_err(named)?;
                    if sparse.capacity < len {
                        return Err(named(format!(
                            "the extent's capacity ({} sectors) is smaller than the descriptor's {} sectors",
                            sparse.capacity / SECTOR,
                            line.sectors
                        )));
                    }
                    if sparse.compressed {
                        refuse(format!("extent {n} is compressed (read-only)"));
                    }
                    ExtentData::Sparse(Box::new(sparse))
                }
                other => return Err(format!("extent {n}: {other} extents are not supported")),
            };
            if len == 0 {
                continue;
            }
            let start = size;
            size = size
                .checked_add(len)
                .filter(|&s| s <= MAX_SECTORS * SECTOR)
                .ok_or_else(|| "the extents add up to more than 2^41 sectors".to_string())?;
            extents.push(Extent { start, len, data });
        }
        if descriptor.extents.is_empty() {
            return Err("the descriptor has no extents".into());
        }
        Ok(Vmdk {
            extents,
            size,
            read_only,
            create_type: descriptor
                .create_type
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            parent: None,
            cid: None,
        })
    }

    /// Makes a new image of `size` bytes (a multiple of 512): variant
    /// "monolithicSparse" (default) or "monolithicFlat" (`path` is then the
    /// descriptor, the data goes to `<stem>-flat.vmdk` beside it).
    pub fn create(path: &Path, size: u64, options: &CreateOptions) -> Result<(), String> {
        if options.backing_file.is_some() {
            return Err("VMDK images with a parent (backing file) cannot be created".into());
        }
        if options.cluster_size.is_some() {
            return Err(
                "a VMDK image is made with 64 KiB grains; no cluster size can be given".into(),
            );
        }
        if !size.is_multiple_of(SECTOR) {
            return Err(format!("the size {size} is not a multiple of 512 bytes"));
        }
        let sectors = size / SECTOR;
        if sectors > MAX_SECTORS {
            return Err(format!("the size {size} is too large (at most 1 PiB)"));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| "the path has no file name".to_string())?;
        match options.variant.as_deref().unwrap_or("monolithicSparse") {
            "monolithicSparse" => create_sparse(path, &name, sectors),
            "monolithicFlat" => {
                let stem = path
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| "the path has no file name".to_string())?;
                let flat_name = format!("{stem}-flat.vmdk");
                check_name(&flat_name)?;
                let flat_path = path.with_file_name(&flat_name);
                let flat = File::create(&flat_path)
                    .map_err(|e| io_error(&format!("cannot create {}", flat_path.display()), e))?;
                flat.set_len(size)
                    .map_err(|e| io_error(&format!("cannot size {}", flat_path.display()), e))?;
                let text = descriptor_text(
                    "monolithicFlat",
                    &format!("RW {sectors} FLAT \"{flat_name}\" 0"),
                    sectors,
                );
                std::fs::write(path, text).map_err(|e| io_error("cannot write the descriptor", e))
            }
            other => Err(format!(
                "VMDK variant {other:?} cannot be created (monolithicSparse, monolithicFlat)"
            )),
        }
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), String> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err("an access past the end of the image".into()),
        }
    }

    /// Gives the image a new CID before its first write.
    fn change_cid(&mut self) -> Result<(), String> {
        let Some(spot) = self.cid.take() else {
            return Ok(());
        };
        let (storage, (at, digits)) = match &spot {
            CidSpot::File(file, place) => (file.as_ref(), *place),
            CidSpot::Extent(place) => match self.extents.first().map(|e| &e.data) {
                Some(ExtentData::Sparse(sparse)) => (sparse.storage.as_ref(), *place),
                _ => return Ok(()),
            },
        };
        // As many digits as the old one (the descriptor's text does not move), and
        // never the same value.
        let mut old = vec![0u8; digits];
        storage
            .read_exact_at(&mut old, at)
            .map_err(|e| io_error("cannot read the descriptor's CID", e))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mask = u32::MAX >> (32 - 4 * digits as u32);
        let mut cid = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 & mask;
        let old = u32::from_str_radix(&String::from_utf8_lossy(&old), 16).unwrap_or(0);
        if cid == old {
            cid = cid.wrapping_add(1) & mask;
        }
        let cid = format!("{cid:0digits$x}");
        storage
            .write_all_at(cid.as_bytes(), at)
            .map_err(|e| io_error("cannot write the descriptor's CID", e))
    }

    fn write_extents(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let (extent, left) = extent_at(&mut self.extents, pos)?;
            let n = (data.len() - done).min(left.min(usize::MAX as u64) as usize);
            let inside = pos - extent.start;
            let part = &data[done..done + n];
            match &mut extent.data {
                ExtentData::Zero => return Err("a ZERO extent cannot be written".into()),
                ExtentData::Flat(flat) => flat.write(inside, part)?,
                ExtentData::Sparse(sparse) => {
                    let parent = self.parent.as_mut().map(|(p, _)| p.as_mut());
                    sparse.write(inside, part, parent, extent.start)?
                }
            }
            done += n;
        }
        Ok(())
    }
}

/// Refuses file names the descriptor cannot quote.
fn check_name(name: &str) -> Result<(), String> {
    if name.contains(['"', '\n', '\r']) {
        return Err(format!(
            "the file name {name:?} cannot go in a VMDK descriptor"
        ));
    }
    Ok(())
}

/// A new descriptor's text.
fn descriptor_text(create_type: &str, extent: &str, sectors: u64) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let cid = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32;
    let cylinders = (sectors / (16 * 63)).clamp(1, 16383);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"{create_type}\"\n\
         \n\
         # Extent description\n\
         {extent}\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"ide\"\n"
    )
}

/// Writes a monolithicSparse image: header, descriptor, redundant GD and GTs, GD and
/// GTs (all GTs preallocated, zeroed), grains from the next grain boundary.
fn create_sparse(path: &Path, name: &str, sectors: u64) -> Result<(), String> {
    check_name(name)?;
    let grains = sectors.div_ceil(CREATE_GRAIN_SECTORS);
    let tables = grains.div_ceil(GTES_PER_GT);
    let gd_sectors = (tables * 4).div_ceil(SECTOR);
    let gt_sectors = GT_BYTES / SECTOR;
    let rgd = 1 + CREATE_DESCRIPTOR_SECTORS;
    let rgt = rgd + gd_sectors;
    let gd = rgt + tables * gt_sectors;
    let gt = gd + gd_sectors;
    let overhead = (gt + tables * gt_sectors).div_ceil(CREATE_GRAIN_SECTORS) * CREATE_GRAIN_SECTORS;
    if overhead > u64::from(u32::MAX) {
        return Err("the size is too large for a monolithicSparse image".into());
    }

    let mut header = [0u8; 512];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&1u32.to_le_bytes());
    // Bit 0: the newline characters below are valid; bit 1: a redundant GD.
    header[8..12].copy_from_slice(&(1 | FLAG_RGD).to_le_bytes());
    header[12..20].copy_from_slice(&sectors.to_le_bytes());
    header[20..28].copy_from_slice(&CREATE_GRAIN_SECTORS.to_le_bytes());
    header[28..36].copy_from_slice(&1u64.to_le_bytes());
    header[36..44].copy_from_slice(&CREATE_DESCRIPTOR_SECTORS.to_le_bytes());
    header[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    header[48..56].copy_from_slice(&rgd.to_le_bytes());
    header[56..64].copy_from_slice(&gd.to_le_bytes());
    header[64..72].copy_from_slice(&overhead.to_le_bytes());
    header[73..77].copy_from_slice(b"\n \r\n");

    let text = descriptor_text(
        "monolithicSparse",
        &format!("RW {sectors} SPARSE \"{name}\""),
        sectors,
    );
    let directory = |first_gt: u64| -> Vec<u8> {
        (0..tables)
            .flat_map(|i| ((first_gt + i * gt_sectors) as u32).to_le_bytes())
            .collect()
    };
    let file = File::create(path).map_err(|e| io_error("cannot create", e))?;
    let write = |data: &[u8], at: u64| {
        Storage::write_all_at(&file, data, at).map_err(|e| io_error("cannot write", e))
    };
    write(&header, 0)?;
    write(text.as_bytes(), SECTOR)?;
    write(&directory(rgt), rgd * SECTOR)?;
    write(&directory(gt), gd * SECTOR)?;
    // The GTs are zeros: the file's length makes them.
    file.set_len(overhead * SECTOR)
        .map_err(|e| io_error("cannot size", e))?;
    file.sync_all().map_err(|e| io_error("cannot sync", e))
}

impl DiskFormat for Vmdk {
    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.check_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (extent, left) = extent_at(&mut self.extents, pos)?;
            let n = (buf.len() - done).min(left.min(usize::MAX as u64) as usize);
            let inside = pos - extent.start;
            let part = &mut buf[done..done + n];
            match &mut extent.data {
                ExtentData::Zero => part.fill(0),
                ExtentData::Flat(flat) => flat.read(inside, part)?,
                ExtentData::Sparse(sparse) => {
                    let parent = self.parent.as_mut().map(|(p, _)| p.as_mut());
                    sparse.read(inside, part, parent, extent.start)?
                }
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        if let Some(why) = &self.read_only {
            return Err(why.clone());
        }
        self.check_range(offset, data.len())?;
        let result = self
            .change_cid()
            .and_then(|()| self.write_extents(offset, data));
        if let Err(e) = &result {
            // The tables in memory may no longer match the file: stop writing rather
            // than build on them.
            self.read_only = Some(format!("writes stopped after an error: {e}"));
        }
        result
    }

    fn is_writable(&self) -> bool {
        self.read_only.is_none()
    }

    fn flush(&mut self) -> Result<(), String> {
        for extent in &self.extents {
            let storage = match &extent.data {
                ExtentData::Zero => continue,
                ExtentData::Flat(flat) => &flat.storage,
                ExtentData::Sparse(sparse) => &sparse.storage,
            };
            storage
                .sync()
                .map_err(|e| io_error("cannot flush the image", e))?;
        }
        Ok(())
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        let mut lines = vec![
            ("create type", self.create_type.clone()),
            ("extents", self.extents.len().to_string()),
        ];
        if let Some((_, name)) = &self.parent {
            lines.push(("parent", name.clone()));
        }
        let sparse = self.extents.iter().find_map(|e| match &e.data {
            ExtentData::Sparse(sparse) => Some(sparse),
            _ => None,
        });
        if let Some(sparse) = sparse {
            lines.push(("version", sparse.version.to_string()));
            lines.push(("grain size", sparse.grain_bytes.to_string()));
            let compressed = if sparse.compressed { "yes" } else { "no" };
            lines.push(("compressed", compressed.into()));
        }
        lines
    }

    fn check(&mut self) -> Result<CheckReport, String> {
        let mut errors = Vec::new();
        let mut leaked_clusters = 0;
        let several = self.extents.len() > 1;
        for (i, extent) in self.extents.iter_mut().enumerate() {
            if let ExtentData::Sparse(sparse) = &mut extent.data {
                let name = if several {
                    format!("extent {}: ", i + 1)
                } else {
                    String::new()
                };
                leaked_clusters += sparse.check(&name, &mut errors);
            }
        }
        if errors.len() > MAX_ERRORS {
            let more = errors.len() - MAX_ERRORS;
            errors.truncate(MAX_ERRORS);
            errors.push(format!("... and {more} more errors"));
        }
        Ok(CheckReport {
            errors,
            leaked_clusters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemStorage;
    use super::*;
    use crate::testing::{
        check_spans, have_qemu_img, read_all, run_ok, varied_contents, Rng, Scratch,
    };
    use std::fs;
    use std::process::Command;

    fn convert(dir: &Scratch, raw: &str, image: &str, subformat: &str) {
        let option = format!("subformat={subformat}");
        run_ok(
            dir,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "vmdk", "-o", &option, raw, image,
            ],
        );
    }

    /// Not a multiple of the 64 KiB grain.
    const ODD_SIZE: usize = (3 << 20) + 41 * 512;

    #[test]
    fn vmdk_reads_images_made_by_qemu_img() {
        if !have_qemu_img("vmdk_reads_images_made_by_qemu_img") {
            return;
        }
        let dir = Scratch::new("read");
        let raw = varied_contents(ODD_SIZE, 1);
        fs::write(dir.path("disk.raw"), &raw).unwrap();
        for subformat in [
            "monolithicSparse",
            "streamOptimized",
            "monolithicFlat",
            "twoGbMaxExtentSparse",
            "twoGbMaxExtentFlat",
        ] {
            let name = format!("{subformat}.vmdk");
            convert(&dir, "disk.raw", &name, subformat);
            let path = dir.path(&name);
            let head = fs::read(&path).unwrap();
            assert!(Vmdk::probe(&head[..head.len().min(1024)]), "{name}");
            assert_eq!(super::super::probe(&head[..head.len().min(1024)]), "vmdk");
            let mut image = Vmdk::open(&path, false).expect(&name);
            assert_eq!(image.len(), raw.len() as u64, "{name}");
            assert!(
                read_all(&mut image) == raw,
                "{name}: the whole image differs"
            );
            check_spans(&mut image, &raw, 2, &name);
            assert!(
                image.write_at(0, &[1]).is_err(),
                "{name}: written read-only"
            );
            let mut two = [0u8; 2];
            assert!(image.read_at(raw.len() as u64 - 1, &mut two).is_err());
            let report = image.check().unwrap();
            assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
            assert_eq!(report.leaked_clusters, 0, "{name}");
            let details = image.details();
            assert!(
                details.contains(&("create type", subformat.to_string())),
                "{name}: {details:?}"
            );
            // Through the format-independent entry point too.
            let mut any = super::super::open(&path, false, None).expect(&name);
            assert_eq!(any.format_name(), "vmdk");
            let mut buf = vec![0u8; 100_000];
            any.read_at(12345, &mut buf).unwrap();
            assert!(buf == raw[12345..112_345], "{name}: image::open differs");
        }
        assert!(Vmdk::probe(b" \n\t# Disk DescriptorFile\nversion=1\n"));
        assert!(!Vmdk::probe(&raw[..1024]));
        assert!(!Vmdk::probe(b""));
    }

    /// A streamOptimized image as VMware writes it: the header's GD offset is all
    /// ones and the real header is in a footer before the end-of-stream marker.
    #[test]
    fn vmdk_reads_grain_directory_from_footer() {
        if !have_qemu_img("vmdk_reads_grain_directory_from_footer") {
            return;
        }
        let dir = Scratch::new("footer");
        let raw = varied_contents(ODD_SIZE, 5);
        fs::write(dir.path("disk.raw"), &raw).unwrap();
        convert(&dir, "disk.raw", "stream.vmdk", "streamOptimized");
        let mut bytes = fs::read(dir.path("stream.vmdk")).unwrap();
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        let footer = bytes[..512].to_vec();
        bytes[56..64].copy_from_slice(&GD_AT_END.to_le_bytes());
        let mut marker = [0u8; 512];
        marker[..8].copy_from_slice(&1u64.to_le_bytes());
        marker[12..16].copy_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&marker);
        bytes.extend_from_slice(&footer);
        bytes.extend_from_slice(&[0u8; 512]);
        fs::write(dir.path("footer.vmdk"), &bytes).unwrap();
        let mut image = Vmdk::open(&dir.path("footer.vmdk"), true).unwrap();
        assert!(!image.is_writable());
        assert!(read_all(&mut image) == raw, "the footer image differs");
        check_spans(&mut image, &raw, 6, "footer");
        assert!(image.check().unwrap().errors.is_empty());
        // qemu-img agrees.
        run_ok(
            &dir,
            "qemu-img",
            &[
                "compare",
                "-f",
                "vmdk",
                "-F",
                "raw",
                "footer.vmdk",
                "disk.raw",
            ],
        );
        // Without the footer's magic, a one-line error.
        let at = bytes.len() - 1024;
        bytes[at] = b'X';
        let e = Vmdk::from_storage(Box::new(MemStorage::new(bytes, 1 << 30)), false)
            .err()
            .unwrap();
        assert!(e.contains("footer") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn vmdk_stream_optimized_is_read_only() {
        if !have_qemu_img("vmdk_stream_optimized_is_read_only") {
            return;
        }
        let dir = Scratch::new("stream-ro");
        let raw = varied_contents(1 << 20, 7);
        fs::write(dir.path("disk.raw"), &raw).unwrap();
        convert(&dir, "disk.raw", "stream.vmdk", "streamOptimized");
        let before = fs::read(dir.path("stream.vmdk")).unwrap();
        let mut image = Vmdk::open(&dir.path("stream.vmdk"), true).unwrap();
        assert!(!image.is_writable());
        let e = image.write_at(4096, &[1, 2, 3]).unwrap_err();
        assert!(e.contains("read-only"), "{e}");
        let details = image.details();
        assert!(
            details.contains(&("compressed", "yes".to_string())),
            "{details:?}"
        );
        drop(image);
        assert!(fs::read(dir.path("stream.vmdk")).unwrap() == before);
        let mut image =
            Vmdk::from_storage(Box::new(MemStorage::new(before, 1 << 30)), true).unwrap();
        assert!(!image.is_writable());
        assert!(image.write_at(0, &[0]).is_err());
        assert!(read_all(&mut image) == raw);
    }

    /// 300 random writes (up to 3 grains, unaligned), mirrored in `mirror`.
    fn random_writes(image: &mut Vmdk, mirror: &mut [u8], seed: u64, count: usize) {
        let mut rng = Rng(seed);
        for i in 0..count {
            let len = rng.below(3 * 65536 + 1000) as usize + 1;
            let len = len.min(mirror.len());
            let at = rng.below((mirror.len() - len) as u64 + 1) as usize;
            let fill = rng.next() as u8;
            let data: Vec<u8> = if i % 3 == 0 {
                vec![fill; len]
            } else {
                (0..len)
                    .map(|j| (j as u8).wrapping_mul(fill | 1) ^ (j >> 8) as u8)
                    .collect()
            };
            image.write_at(at as u64, &data).expect("write");
            mirror[at..at + len].copy_from_slice(&data);
        }
    }

    fn virtual_size(dir: &Scratch, image: &str) -> u64 {
        let info = run_ok(
            dir,
            "qemu-img",
            &["info", "-f", "vmdk", "--output=json", image],
        );
        let at = info.find("\"virtual-size\":").expect("virtual-size") + 15;
        info[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn vmdk_random_writes_match_a_raw_copy() {
        if !have_qemu_img("vmdk_random_writes_match_a_raw_copy") {
            return;
        }
        let dir = Scratch::new("writes");
        let qemu_raw = varied_contents(ODD_SIZE, 9);
        fs::write(dir.path("qemu-source.raw"), &qemu_raw).unwrap();
        convert(&dir, "qemu-source.raw", "qemu.vmdk", "monolithicSparse");
        let size = (5 << 20) + 7 * 512;
        let default = CreateOptions::default();
        Vmdk::create(&dir.path("sparse.vmdk"), size, &default).unwrap();
        let flat = CreateOptions {
            variant: Some("monolithicFlat".into()),
            ..CreateOptions::default()
        };
        Vmdk::create(&dir.path("flat.vmdk"), size, &flat).unwrap();
        assert!(dir.path("flat-flat.vmdk").exists());

        let cases: [(&str, Vec<u8>, bool); 3] = [
            ("qemu.vmdk", qemu_raw.clone(), true),
            ("sparse.vmdk", vec![0u8; size as usize], true),
            ("flat.vmdk", vec![0u8; size as usize], false),
        ];
        for (n, (name, mut mirror, sparse)) in cases.into_iter().enumerate() {
            assert_eq!(virtual_size(&dir, name), mirror.len() as u64, "{name}");
            if sparse {
                run_ok(&dir, "qemu-img", &["check", "-f", "vmdk", name]);
            }
            // A new image reads as zeros for qemu-img too.
            let raw_name = format!("{name}.raw");
            fs::write(dir.path(&raw_name), &mirror).unwrap();
            run_ok(
                &dir,
                "qemu-img",
                &["compare", "-f", "vmdk", "-F", "raw", name, &raw_name],
            );

            let mut image = Vmdk::open(&dir.path(name), true).expect(name);
            assert!(image.is_writable(), "{name}");
            random_writes(&mut image, &mut mirror, 100 + n as u64, 300);
            image.flush().unwrap();
            assert!(
                read_all(&mut image) == mirror,
                "{name}: differs before reopening"
            );
            let report = image.check().unwrap();
            assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
            assert_eq!(report.leaked_clusters, 0, "{name}");
            drop(image);

            fs::write(dir.path(&raw_name), &mirror).unwrap();
            if sparse {
                run_ok(&dir, "qemu-img", &["check", "-f", "vmdk", name]);
            }
            run_ok(
                &dir,
                "qemu-img",
                &["compare", "-f", "vmdk", "-F", "raw", name, &raw_name],
            );
            let mut image = Vmdk::open(&dir.path(name), false).expect(name);
            assert!(
                read_all(&mut image) == mirror,
                "{name}: differs after reopening"
            );
            check_spans(&mut image, &mirror, 11, name);
            assert!(image.check().unwrap().errors.is_empty(), "{name}");
        }
    }

    /// twoGbMaxExtent images of a 4.6 GiB disk (three extents each): reads, and
    /// writes across the extent boundaries, agree with qemu-img.
    #[test]
    fn vmdk_spans_two_gigabyte_extents() {
        if !have_qemu_img("vmdk_spans_two_gigabyte_extents") {
            return;
        }
        let dir = Scratch::new("2gb");
        let size: u64 = 4700 << 20;
        let two_gb: u64 = 2 << 30;
        let raw = fs::File::create(dir.path("big.raw")).unwrap();
        raw.set_len(size).unwrap();
        // (offset, bytes) written over zeros.
        let mut patches: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut rng = Rng(23);
        for at in [0, two_gb - 70_000, 2 * two_gb - 3, size - 100_000] {
            let data: Vec<u8> = (0..100_000).map(|_| rng.next() as u8).collect();
            Storage::write_all_at(&raw, &data, at).unwrap();
            patches.push((at, data));
        }
        drop(raw);
        let expected = |at: u64, len: usize| {
            let mut out = vec![0u8; len];
            for (start, data) in &patches {
                for (i, &b) in data.iter().enumerate() {
                    let pos = start + i as u64;
                    if pos >= at && pos < at + len as u64 {
                        out[(pos - at) as usize] = b;
                    }
                }
            }
            out
        };
        for subformat in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
            let name = format!("{subformat}.vmdk");
            convert(&dir, "big.raw", &name, subformat);
            let mut image = Vmdk::open(&dir.path(&name), true).expect(&name);
            assert_eq!(image.len(), size);
            assert!(image.details().contains(&("extents", "3".to_string())));
            for &(at, _) in &patches {
                let from = at.saturating_sub(5000);
                let len = (110_000u64).min(size - from) as usize;
                let mut buf = vec![0u8; len];
                image.read_at(from, &mut buf).unwrap();
                assert!(buf == expected(from, len), "{name}: differs near {at:#x}");
            }
            assert!(image.check().unwrap().errors.is_empty(), "{name}");
        }
        // Writes across both boundaries, into both images and the raw file.
        let writes = [
            (two_gb - 1000, 5000usize, 0x11u8),
            (2 * two_gb - 65_536, 200_000, 0x22),
        ];
        let raw = fs::OpenOptions::new()
            .write(true)
            .open(dir.path("big.raw"))
            .unwrap();
        for &(at, len, fill) in &writes {
            Storage::write_all_at(&raw, &vec![fill; len], at).unwrap();
        }
        drop(raw);
        for subformat in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
            let name = format!("{subformat}.vmdk");
            let mut image = Vmdk::open(&dir.path(&name), true).unwrap();
            for &(at, len, fill) in &writes {
                image.write_at(at, &vec![fill; len]).unwrap();
            }
            image.flush().unwrap();
            assert!(image.check().unwrap().errors.is_empty(), "{name}");
            drop(image);
            if subformat.ends_with("Sparse") {
                run_ok(&dir, "qemu-img", &["check", "-f", "vmdk", &name]);
            }
            run_ok(
                &dir,
                "qemu-img",
                &["compare", "-f", "vmdk", "-F", "raw", &name, "big.raw"],
            );
        }
    }

    fn descriptor_value(image: &[u8], key: &str) -> String {
        let text = String::from_utf8_lossy(&image[512..512 * 21]).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}"))
            .to_string()
    }

    /// Children made by qemu-img (parentFileNameHint): reads fall through to the
    /// parent, writes copy the parent's part of a new grain, and the parent is not
    /// written.
    #[test]
    fn vmdk_reads_and_writes_snapshot_deltas() {
        if !have_qemu_img("vmdk_reads_and_writes_snapshot_deltas") {
            return;
        }
        let dir = Scratch::new("delta");
        let mut expected = varied_contents(ODD_SIZE, 29);
        fs::write(dir.path("base.raw"), &expected).unwrap();
        convert(&dir, "base.raw", "base.vmdk", "monolithicSparse");
        let child = ["create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk"];
        run_ok(&dir, "qemu-img", &[&child[..], &["child.vmdk"]].concat());
        let out = Command::new("qemu-io")
            .args(["-f", "vmdk", "-c", "write -P 0x33 1000 3000"])
            .args(["-c", "write -P 0x44 1M 100k", "child.vmdk"])
            .current_dir(&dir.0)
            .output()
            .expect("qemu-io");
        assert!(out.status.success(), "{out:?}");
        expected[1000..4000].fill(0x33);
        expected[1 << 20..(1 << 20) + (100 << 10)].fill(0x44);

        let mut image = Vmdk::open(&dir.path("child.vmdk"), false).unwrap();
        assert!(read_all(&mut image) == expected, "the child differs");
        check_spans(&mut image, &expected, 30, "child");
        assert!(image
            .details()
            .contains(&("parent", "base.vmdk".to_string())));
        drop(image);

        let base_before = fs::read(dir.path("base.vmdk")).unwrap();
        let child_before = fs::read(dir.path("child.vmdk")).unwrap();
        let mut image = Vmdk::open(&dir.path("child.vmdk"), true).unwrap();
        assert!(image.is_writable());
        random_writes(&mut image, &mut expected, 31, 200);
        image.flush().unwrap();
        assert!(
            read_all(&mut image) == expected,
            "the child differs after writes"
        );
        assert!(image.check().unwrap().errors.is_empty());
        drop(image);
        assert!(fs::read(dir.path("base.vmdk")).unwrap() == base_before);
        let child_after = fs::read(dir.path("child.vmdk")).unwrap();
        assert_ne!(
            descriptor_value(&child_before, "CID"),
            descriptor_value(&child_after, "CID")
        );
        assert_eq!(
            descriptor_value(&child_before, "parentCID"),
            descriptor_value(&child_after, "parentCID")
        );
        fs::write(dir.path("expected.raw"), &expected).unwrap();
        run_ok(&dir, "qemu-img", &["check", "-f", "vmdk", "child.vmdk"]);
        run_ok(
            &dir,
            "qemu-img",
            &[
                "compare",
                "-f",
                "vmdk",
                "-F",
                "raw",
                "child.vmdk",
                "expected.raw",
            ],
        );

        // Two deep.
        run_ok(
            &dir,
            "qemu-img",
            &[
                "create",
                "-f",
                "vmdk",
                "-b",
                "child.vmdk",
                "-F",
                "vmdk",
                "top.vmdk",
            ],
        );
        let mut image = Vmdk::open(&dir.path("top.vmdk"), false).unwrap();
        assert!(read_all(&mut image) == expected, "the grandchild differs");
    }

    /// Grain directory entries of 0 (no grain table yet): writes allocate the
    /// tables at the end of the file.
    #[test]
    fn vmdk_writes_allocate_grain_tables() {
        if !have_qemu_img("vmdk_writes_allocate_grain_tables") {
            return;
        }
        let dir = Scratch::new("tables");
        let size = 70u64 << 20;
        let path = dir.path("tables.vmdk");
        Vmdk::create(&path, size, &CreateOptions::default()).unwrap();
        // Empty the GD and the redundant GD (3 grain tables each).
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut header = [0u8; 512];
        Storage::read_exact_at(&file, &mut header, 0).unwrap();
        for field in [48, 56] {
            let at = le64(&header, field) * 512;
            Storage::write_all_at(&file, &[0u8; 12], at).unwrap();
        }
        drop(file);
        run_ok(&dir, "qemu-img", &["check", "-f", "vmdk", "tables.vmdk"]);

        let mut mirror = vec![0u8; size as usize];
        let mut image = Vmdk::open(&path, true).unwrap();
        random_writes(&mut image, &mut mirror, 21, 60);
        // The last byte of the disk, in the last grain table's range.
        image.write_at(size - 1, &[0x42]).unwrap();
        mirror[size as usize - 1] = 0x42;
        let report = image.check().unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        drop(image);
        fs::write(dir.path("tables.raw"), &mirror).unwrap();
        run_ok(&dir, "qemu-img", &["check", "-f", "vmdk", "tables.vmdk"]);
        run_ok(
            &dir,
            "qemu-img",
            &[
                "compare",
                "-f",
                "vmdk",
                "-F",
                "raw",
                "tables.vmdk",
                "tables.raw",
            ],
        );
        let mut image = Vmdk::open(&path, false).unwrap();
        assert!(read_all(&mut image) == mirror);
    }

    #[test]
    fn vmdk_reads_and_writes_multi_extent_descriptors() {
        if !have_qemu_img("vmdk_reads_and_writes_multi_extent_descriptors") {
            return;
        }
        let dir = Scratch::new("extents");
        let data = varied_contents(200 << 10, 13);
        fs::write(dir.path("data.bin"), &data).unwrap();
        let sparse_raw = varied_contents(1 << 20, 14);
        fs::write(dir.path("sparse.raw"), &sparse_raw).unwrap();
        convert(&dir, "sparse.raw", "sp.vmdk", "monolithicSparse");

        let descriptor = "\n  # Disk DescriptorFile\nversion=1\nCID=fffffffe\n\
            parentCID=ffffffff\ncreateType=\"vmfs\"\nunknownKey = \"whatever\"\n\
            # a comment\nRW 100 FLAT \"data.bin\" 20\nRW 64 ZERO\n\
            RW 300 VMFS \"data.bin\"\n  rw 2048 sparse \"sp.vmdk\"\n\nddb.adapterType = \"ide\"\n";
        fs::write(dir.path("mixed.vmdk"), descriptor).unwrap();
        let mut expected = data[20 * 512..120 * 512].to_vec();
        expected.extend_from_slice(&[0u8; 64 * 512]);
        expected.extend_from_slice(&data[..300 * 512]);
        expected.extend_from_slice(&sparse_raw);
        let mut image = Vmdk::open(&dir.path("mixed.vmdk"), true).unwrap();
        assert_eq!(image.len(), expected.len() as u64);
        assert!(
            !image.is_writable(),
            "a ZERO extent makes the image read-only"
        );
        assert!(read_all(&mut image) == expected, "the extents read wrong");
        check_spans(&mut image, &expected, 15, "mixed");
        assert!(image.check().unwrap().errors.is_empty());
        assert!(image.details().contains(&("extents", "4".to_string())));

        let readonly = "# Disk DescriptorFile\nRDONLY 100 FLAT \"data.bin\" 20\n";
        fs::write(dir.path("ro.vmdk"), readonly).unwrap();
        let mut image = Vmdk::open(&dir.path("ro.vmdk"), true).unwrap();
        assert!(!image.is_writable());
        assert!(image.write_at(0, &[1]).is_err());

        // Writes across a FLAT and a SPARSE extent; qemu-img reads the same.
        let both = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n\
            createType=\"twoGbMaxExtentSparse\"\nRW 100 FLAT \"data.bin\" 20\nRW 2048 SPARSE \"sp.vmdk\"\n";
        fs::write(dir.path("both.vmdk"), both).unwrap();
        let mut mirror = data[20 * 512..120 * 512].to_vec();
        mirror.extend_from_slice(&sparse_raw);
        let mut image = Vmdk::open(&dir.path("both.vmdk"), true).unwrap();
        assert!(image.is_writable());
        random_writes(&mut image, &mut mirror, 17, 100);
        let boundary = vec![0x3cu8; 3000];
        image.write_at(100 * 512 - 1000, &boundary).unwrap();
        mirror[100 * 512 - 1000..100 * 512 + 2000].copy_from_slice(&boundary);
        assert!(read_all(&mut image) == mirror);
        assert!(image.check().unwrap().errors.is_empty());
        drop(image);
        fs::write(dir.path("both.raw"), &mirror).unwrap();
        run_ok(&dir, "qemu-img", &["check", "-f", "vmdk", "sp.vmdk"]);
        run_ok(
            &dir,
            "qemu-img",
            &[
                "compare",
                "-f",
                "vmdk",
                "-F",
                "raw",
                "both.vmdk",
                "both.raw",
            ],
        );
    }

    fn one_line_error(result: Result<Vmdk, String>, what: &str) -> String {
        match result {
            Ok(_) => panic!("{what}: opened"),
            Err(e) => {
                assert!(!e.contains('\n') && !e.is_empty(), "{what}: {e:?}");
                e
            }
        }
    }

    #[test]
    fn vmdk_rejects_bad_images_with_one_line() {
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let dir = Scratch::new("bad");
        let path = dir.path("base.vmdk");
        Vmdk::create(&path, 1 << 20, &CreateOptions::default()).unwrap();
        let base = fs::read(&path).unwrap();
        let open = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = base.clone();
            edit(&mut bytes);
            Vmdk::from_storage(Box::new(MemStorage::new(bytes, 1 << 30)), true)
        };
        let file_sectors = base.len() as u64 / 512;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "GD past the end",
                Box::new(move |b| b[56..64].copy_from_slice(&(file_sectors + 8).to_le_bytes())),
            ),
            (
                "redundant GD past the end",
                Box::new(|b| b[48..56].copy_from_slice(&u64::MAX.to_le_bytes())),
            ),
            (
                "grain 0",
                Box::new(|b| b[20..28].copy_from_slice(&0u64.to_le_bytes())),
            ),
            (
                "grain 3",
                Box::new(|b| b[20..28].copy_from_slice(&3u64.to_le_bytes())),
            ),
            (
                "grain 1024",
                Box::new(|b| b[20..28].copy_from_slice(&1024u64.to_le_bytes())),
            ),
            (
                "huge capacity",
                Box::new(|b| b[12..20].copy_from_slice(&(1u64 << 50).to_le_bytes())),
            ),
            (
                "a GD too large for the file",
                Box::new(|b| b[12..20].copy_from_slice(&(1u64 << 38).to_le_bytes())),
            ),
            (
                "256 entries per GT",
                Box::new(|b| b[44..48].copy_from_slice(&256u32.to_le_bytes())),
            ),
            (
                "version 9",
                Box::new(|b| b[4..8].copy_from_slice(&9u32.to_le_bytes())),
            ),
            (
                "compression 7",
                Box::new(|b| b[77..79].copy_from_slice(&7u16.to_le_bytes())),
            ),
            (
                "GD in a missing footer",
                Box::new(|b| b[56..64].copy_from_slice(&u64::MAX.to_le_bytes())),
            ),
            (
                "huge descriptor",
                Box::new(|b| b[36..44].copy_from_slice(&u64::MAX.to_le_bytes())),
            ),
            ("bad magic", Box::new(|b| b[0] = b'Q')),
            ("truncated header", Box::new(|b| b.truncate(100))),
            ("empty", Box::new(|b| b.clear())),
        ];
        for (what, edit) in &cases {
            let e = one_line_error(open(edit.as_ref()), what);
            eprintln!("{what}: {e}");
        }

        // A descriptor with 100,000 extent lines.
        let mut text = String::from("# Disk DescriptorFile\nversion=1\n");
        for _ in 0..100_000 {
            text.push_str("RW 1 ZERO\n");
        }
        let many = dir.path("many.vmdk");
        fs::write(&many, &text).unwrap();
        let e = one_line_error(Vmdk::open(&many, false), "100,000 extents");
        assert!(e.contains("4096"), "{e}");

        // Parents: an image that is its own parent, a missing parent, and a child
        // without a path to find its parent.
        let own = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=87654321\n\
             parentFileNameHint=\"own.vmdk\"\nRW 2048 SPARSE \"base.vmdk\"\n";
        fs::write(dir.path("own.vmdk"), own).unwrap();
        let e = one_line_error(Vmdk::open(&dir.path("own.vmdk"), false), "own parent");
        assert!(e.contains("deep"), "{e}");
        let orphan = own.replace("own.vmdk", "gone.vmdk");
        fs::write(dir.path("orphan.vmdk"), orphan).unwrap();
        one_line_error(
            Vmdk::open(&dir.path("orphan.vmdk"), false),
            "missing parent",
        );
        let mut child = base.clone();
        let text = b"# Disk DescriptorFile\nCID=12345678\nparentCID=87654321\n\
             parentFileNameHint=\"base.vmdk\"\n\0";
        child[512..512 + text.len()].copy_from_slice(text);
        let storage = MemStorage::new(child, 1 << 30);
        let e = one_line_error(Vmdk::from_storage(Box::new(storage), false), "child");
        assert!(e.contains(PARENT_ERROR), "{e}");

        for (what, text) in [
            (
                "a missing extent file",
                "# Disk DescriptorFile\nRW 10 FLAT \"nothing\"\n",
            ),
            (
                "a bad size",
                "# Disk DescriptorFile\nRW ten FLAT \"base.vmdk\"\n",
            ),
            ("no extents", "# Disk DescriptorFile\nversion=1\n"),
            (
                "an unknown type",
                "# Disk DescriptorFile\nRW 10 VMFSSPARSE \"base.vmdk\"\n",
            ),
            (
                "NOACCESS",
                "# Disk DescriptorFile\nNOACCESS 10 FLAT \"base.vmdk\"\n",
            ),
            (
                "a sparse extent larger than its file's capacity",
                "# Disk DescriptorFile\nRW 4096 SPARSE \"base.vmdk\"\n",
            ),
            (
                "a descriptor as a sparse extent",
                "# Disk DescriptorFile\nRW 10 SPARSE \"d.vmdk\"\n",
            ),
        ] {
            fs::write(dir.path("d.vmdk"), text).unwrap();
            one_line_error(Vmdk::open(&dir.path("d.vmdk"), false), what);
        }
        one_line_error(Vmdk::open(&dir.path("absent.vmdk"), false), "absent");
    }

    #[test]
    fn vmdk_check_finds_damaged_tables() {
        let dir = Scratch::new("check");
        let path = dir.path("c.vmdk");
        Vmdk::create(&path, 1 << 20, &CreateOptions::default()).unwrap();
        let mut image = Vmdk::open(&path, true).unwrap();
        image.write_at(0, &[1u8; 70_000]).unwrap();
        image.write_at(5 << 16, &[2u8; 10]).unwrap();
        assert!(image.check().unwrap().errors.is_empty());
        drop(image);
        let base = fs::read(&path).unwrap();
        let rgd = le64(&base, 48) as usize * 512;
        let gd = le64(&base, 56) as usize * 512;
        let gt = le32(&base, gd) as usize * 512;
        let rgt = le32(&base, rgd) as usize * 512;
        let errors = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = base.clone();
            edit(&mut bytes);
            let storage = MemStorage::new(bytes, 1 << 30);
            let mut image = Vmdk::from_storage(Box::new(storage), false).unwrap();
            image.check().unwrap().errors
        };
        let set = |bytes: &mut Vec<u8>, at: usize, value: u32| {
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        };
        // Grain 1 pointing to grain 0's data, in both tables.
        let first = le32(&base, gt);
        let found = errors(&|b| {
            set(b, gt + 4, first);
            set(b, rgt + 4, first);
        });
        assert!(found.iter().any(|e| e.contains("used twice")), "{found:?}");
        // A grain past the end of the file.
        let found = errors(&|b| {
            set(b, gt + 20, 1 << 30);
            set(b, rgt + 20, 1 << 30);
        });
        assert!(
            found.iter().any(|e| e.contains("past the end")),
            "{found:?}"
        );
        // A grain over the grain directory.
        let found = errors(&|b| {
            set(b, gt + 20, (gd / 512) as u32);
            set(b, rgt + 20, (gd / 512) as u32);
        });
        assert!(found.iter().any(|e| e.contains("overlaps")), "{found:?}");
        // The redundant table differs, or is missing.
        let found = errors(&|b| set(b, rgt + 20, 0));
        assert!(found.iter().any(|e| e.contains("differ")), "{found:?}");
        let found = errors(&|b| set(b, rgd, 0));
        assert!(found.iter().any(|e| e.contains("disagree")), "{found:?}");
        // A grain table outside the file.
        let found = errors(&|b| set(b, gd, u32::MAX));
        assert!(found.iter().any(|e| e.contains("outside")), "{found:?}");
        // Two grains nothing points to (an interrupted write).
        let mut bytes = base.clone();
        bytes.extend_from_slice(&[7u8; 2 << 16]);
        let storage = MemStorage::new(bytes, 1 << 30);
        let mut image = Vmdk::from_storage(Box::new(storage), false).unwrap();
        let report = image.check().unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.leaked_clusters, 2);
    }

    #[test]
    fn vmdk_create_refuses_what_it_cannot_make() {
        let dir = Scratch::new("create");
        let path = dir.path("x.vmdk");
        let refused = [
            CreateOptions {
                variant: Some("streamOptimized".into()),
                ..CreateOptions::default()
            },
            CreateOptions {
                cluster_size: Some(65536),
                ..CreateOptions::default()
            },
            CreateOptions {
                backing_file: Some(PathBuf::from("base.vmdk")),
                ..CreateOptions::default()
            },
        ];
        for options in &refused {
            let e = Vmdk::create(&path, 1 << 20, options).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(Vmdk::create(&path, 1000, &CreateOptions::default()).is_err());
        super::super::create(&path, "vmdk", 1 << 20, &CreateOptions::default()).unwrap();
        let image = super::super::open(&path, true, None).unwrap();
        assert_eq!(image.len(), 1 << 20);
        assert!(image.is_writable());
        assert!(image
            .details()
            .contains(&("create type", "monolithicSparse".to_string())));
        let empty = Vmdk::create(&dir.path("empty.vmdk"), 0, &CreateOptions::default());
        assert!(empty.is_ok());
        let mut image = Vmdk::open(&dir.path("empty.vmdk"), true).unwrap();
        assert_eq!(image.len(), 0);
        assert!(image.check().unwrap().errors.is_empty());
    }

    /// Damaged copies of qemu-img's images (bit flips and overwritten bytes in the
    /// header, descriptor and tables; truncations): opening, reading, writing and
    /// checking give errors, never a panic.
    #[test]
    fn vmdk_survives_damaged_images() {
        if !have_qemu_img("vmdk_survives_damaged_images") {
            return;
        }
        let dir = Scratch::new("damaged");
        let raw = varied_contents(1 << 20, 19);
        fs::write(dir.path("disk.raw"), &raw).unwrap();
        convert(&dir, "disk.raw", "sparse.vmdk", "monolithicSparse");
        convert(&dir, "disk.raw", "stream.vmdk", "streamOptimized");
        let bases = [
            fs::read(dir.path("sparse.vmdk")).unwrap(),
            fs::read(dir.path("stream.vmdk")).unwrap(),
        ];
        let mut rng = Rng(0x5eed);
        let mut opened = 0;
        for i in 0..1500 {
            let mut bytes = bases[i % 2].clone();
            // The metadata is in the first 64 KiB (header, descriptor, GDs, GTs).
            let span = (64 << 10).min(bytes.len() as u64);
            for _ in 0..rng.below(8) + 1 {
                let at = match rng.below(4) {
                    0 => rng.below(80),
                    _ => rng.below(span),
                } as usize;
                match rng.below(4) {
                    0 => bytes[at] ^= 1 << rng.below(8),
                    1 => bytes[at] = rng.next() as u8,
                    2 => bytes[at] = 0xff,
                    _ => bytes[at] = 0,
                }
            }
            if rng.below(5) == 0 {
                bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
            }
            if rng.below(10) == 0 {
                // Damage the grains too.
                for _ in 0..16 {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] = rng.next() as u8;
                }
            }
            let storage = MemStorage::new(bytes, 16 << 20);
            let Ok(mut image) = Vmdk::from_storage(Box::new(storage), true) else {
                continue;
            };
            opened += 1;
            let len = image.len().min(8 << 20);
            let mut chunk = vec![0u8; 64 << 10];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(chunk.len() as u64) as usize;
                let _ = image.read_at(at, &mut chunk[..n]);
                at += n as u64;
            }
            for _ in 0..3 {
                if len == 0 {
                    break;
                }
                let n = rng.below(70_000).min(len) + 1;
                let n = n.min(len);
                let at = rng.below(len - n + 1);
                let _ = image.write_at(at, &vec![0x77; n as usize]);
            }
            let _ = image.check();
            let _ = image.details();
            let _ = image.flush();
        }
        assert!(opened > 100, "only {opened} damaged images opened");

        // Damaged descriptors parse or fail, without a panic.
        let text = fs::read(dir.path("sparse.vmdk")).unwrap()[512..1536].to_vec();
        for _ in 0..3000 {
            let mut bytes = text.clone();
            for _ in 0..rng.below(12) + 1 {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = match rng.below(4) {
                    0 => b'"',
                    1 => b'\n',
                    2 => b' ',
                    _ => rng.next() as u8,
                };
            }
            let _ = parse_descriptor(&String::from_utf8_lossy(&bytes), true);
            let _ = parse_descriptor(&String::from_utf8_lossy(&bytes), false);
        }
    }
}
