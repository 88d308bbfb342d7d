//! VirtualBox's VDI disk image format (version 1.1): reading and writing dynamic and
//! fixed images.
//!
//! A VDI file starts with a 512-byte header (every number little-endian): a 64-byte
//! text line, the signature 0xbeda107f at 0x40, the version (major << 16 | minor) at
//! 0x44, then the size of the rest of the header, the image type, flags, a comment,
//! and the fields used here: where the block map and the data start, the legacy disk
//! geometry, the virtual disk size, the block size, the "block extra" size, the number
//! of blocks in the image and of blocks allocated, and four UUIDs (the image's, its
//! last modification's, and the link and parent of differencing images).
//!
//! The virtual disk is cut into blocks (1 MiB in every image VirtualBox and QEMU
//! make). The block map has one 32-bit entry per virtual block: the index of the data
//! block holding it (at `data offset + index × block size`), 0xffffffff "unallocated"
//! or 0xfffffffe "zero"; both of the latter read as zeros. A dynamic image (type 1)
//! allocates data blocks as they are written, at index `blocks allocated`, so the
//! indices in use are 0 up to the header's count; a fixed image (type 2) has every
//! block allocated when it is made.
//!
//! Supported: version 1.1 headers, dynamic and fixed images, read and write; block
//! sizes that are powers of two from 512 B to 64 MiB (QEMU reads only 1 MiB); images
//! made here (`create`) have 1 MiB blocks, the block map right after the header and
//! the data at the next 4 KiB boundary, zero legacy geometry and a 512-byte sector
//! size, as `qemu-img` writes them. A write to an unallocated or zero block writes
//! the whole new block (zeros around the data) first, then its block map entry, then
//! the header's count, so an interrupted write leaves either an unused block past the
//! last one (harmless: the next allocation reuses it) or, if it stopped between the
//! last two writes, a count one short. Opening such an image writable repairs the
//! count; until then `check` reports it.
//!
//! Not supported: differencing and undo images (types 4 and 3), versions other than
//! 1.1, "block extra" data (a nonzero size is refused), block maps over 64 MiB
//! (16 Mi blocks). Data blocks are never freed: writing zeros keeps the block.
//!
//! The file is not trusted: every offset and size read from it is checked, so a
//! damaged image gives a one-line error, not a panic or an access outside the file.
//! An image whose block map is inconsistent (two entries sharing a data block, an
//! index past the blocks in the image, a count that does not match) can be read, but
//! writes to it are refused, since a new block could land on one in use.

use super::{CheckReport, CreateOptions, DiskFormat, Storage};
use crate::{le32, le64};
use std::collections::hash_map::RandomState;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;

const TYPE_DYNAMIC: u32 = 1;
const TYPE_FIXED: u32 = 2;
const TYPE_UNDO: u32 = 3;
const TYPE_DIFF: u32 = 4;

/// Block map entry: no data block, reads as zeros.
const UNALLOCATED: u32 = 0xffff_ffff;
/// Block map entry: the block was discarded or zeroed, reads as zeros.
const ZERO: u32 = 0xffff_fffe;

/// Header field offsets.
const OFF_SIGNATURE: usize = 0x40;
const OFF_VERSION: usize = 0x44;
const OFF_HEADER_SIZE: usize = 0x48;
const OFF_TYPE: usize = 0x4c;
const OFF_MAP: usize = 0x154;
const OFF_DATA: usize = 0x158;
const OFF_SECTOR_SIZE: usize = 0x168;
const OFF_DISK_SIZE: usize = 0x170;
const OFF_BLOCK_SIZE: usize = 0x178;
const OFF_BLOCK_EXTRA: usize = 0x17c;
const OFF_BLOCKS: usize = 0x180;
const OFF_ALLOCATED: usize = 0x184;
const OFF_UUID: usize = 0x188;
const OFF_UUID_MODIFY: usize = 0x198;

/// The header as written here: 0x48 bytes of text and signature, then a version 1.1
/// header of `HEADER_SIZE` bytes, padded to a sector.
const HEADER_LEN: usize = 0x200;
/// The header size field of a version 1.1 header (QEMU's and VirtualBox's
/// `VDIHEADER1`); the fields read here end at `0x48 + HEADER_SIZE`.
const HEADER_SIZE: u32 = 0x180;
/// Bytes a header must have for every field read here (up to the end of the UUIDs).
const MIN_HEADER_BYTES: usize = OFF_SIGNATURE + 8 + HEADER_SIZE as usize;

const MIN_BLOCK_SIZE: u32 = 512;
const MAX_BLOCK_SIZE: u32 = 64 << 20;
/// The largest block map (64 MiB) held in memory: 16 Mi entries.
const MAX_BLOCKS: u32 = 16 << 20;
/// The block size of the images made here.
const CREATE_BLOCK_SIZE: u32 = 1 << 20;

const TEXT: &[u8] = b"<<< hospes VDI Disk Image >>>\n";

/// An open VDI image.
pub struct Vdi {
    storage: Box<dyn Storage>,
    /// Why writes are refused; None when the image is open for writing.
    read_only: Option<String>,
    image_type: u32,
    map_offset: u64,
    data_offset: u64,
    /// The virtual disk size.
    size: u64,
    block_size: u64,
    blocks_allocated: u32,
    /// One entry per virtual block (`blocks in image` of them).
    map: Vec<u32>,
    uuid: [u8; 16],
    /// The file's length as far as this image has read or written it.
    file_len: u64,
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn is_allocated(entry: u32) -> bool {
    entry < ZERO
}

/// A UUID as VirtualBox prints it: the first three fields are stored little-endian.
fn format_uuid(u: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes([u[0], u[1], u[2], u[3]]),
        u16::from_le_bytes([u[4], u[5]]),
        u16::from_le_bytes([u[6], u[7]]),
        u[8],
        u[9],
        u[10..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A random (version 4) UUID, in the stored byte order: randomly keyed hashes of the
/// time, the process id and a counter (no dependency for a random number generator).
fn new_uuid() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut uuid = [0u8; 16];
    for (i, half) in uuid.chunks_mut(8).enumerate() {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_u64(count);
        hasher.write_usize(i);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    // Version 4 in the high nibble of the (little-endian) third field; RFC 4122 variant.
    uuid[7] = (uuid[7] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// What the block map says, for `check` and for deciding whether writes are safe.
struct MapSurvey {
    /// Entries pointing to a data block index.
    allocated: u64,
    /// One line per inconsistency (capped), and how many there were in all.
    errors: Vec<String>,
    error_count: u64,
    /// The largest data block index in use, if any.
    max_index: Option<u32>,
}

impl MapSurvey {
    fn note(&mut self, line: String) {
        if self.errors.len() < 100 {
            self.errors.push(line);
        }
        self.error_count += 1;
    }
}

impl Vdi {
    /// Whether `head` (the first bytes of a file, up to 1024) is a VDI header: the
    /// signature 0xbeda107f (little-endian) at offset 0x40.
    pub fn probe(head: &[u8]) -> bool {
        head.len() >= OFF_SIGNATURE + 4 && le32(head, OFF_SIGNATURE) == SIGNATURE
    }

    /// Opens an image file (read-only if `writable` is false or the file is).
    pub fn open(path: &Path, writable: bool) -> Result<Vdi, String> {
        let (file, writable) = super::open_file(path, writable)?;
        Self::from_storage(Box::new(file), writable).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads and checks the header and the block map.
    pub fn from_storage(storage: Box<dyn Storage>, writable: bool) -> Result<Vdi, String> {
        let file_len = storage
            .size()
            .map_err(|e| format!("cannot read the image size: {e}"))?;
        let mut header = [0u8; HEADER_LEN];
        let got = file_len.min(HEADER_LEN as u64) as usize;
        storage
            .read_exact_at(&mut header[..got], 0)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        if !Self::probe(&header[..got]) {
            return Err("not a VDI image (no signature 0xbeda107f at 0x40)".into());
        }
        if got < MIN_HEADER_BYTES {
            return Err(format!(
                "the header is truncated ({got} bytes, {MIN_HEADER_BYTES} needed)"
            ));
        }
        let version = le32(&header, OFF_VERSION);
        if version != VERSION_1_1 {
            return Err(format!(
                "VDI version {}.{} is not supported (only 1.1)",
                version >> 16,
                version & 0xffff
            ));
        }
        let header_size = le32(&header, OFF_HEADER_SIZE);
        if header_size < HEADER_SIZE {
            return Err(format!(
                "the header size {header_size:#x} is too small for version 1.1 ({HEADER_SIZE:#x})"
            ));
        }
        let image_type = le32(&header, OFF_TYPE);
        match image_type {
            TYPE_DYNAMIC | TYPE_FIXED => {}
            TYPE_DIFF => return Err("differencing VDI images are not supported".into()),
            TYPE_UNDO => return Err("undo VDI images are not supported".into()),
            other => return Err(format!("unknown VDI image type {other}")),
        }
        let block_size = le32(&header, OFF_BLOCK_SIZE);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(format!(
                "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
            ));
        }
        let block_extra = le32(&header, OFF_BLOCK_EXTRA);
        if block_extra != 0 {
            return Err(format!(
                "\"block extra\" data ({block_extra} bytes per block) is not supported"
            ));
        }
        let blocks = le32(&header, OFF_BLOCKS);
        if blocks > MAX_BLOCKS {
            return Err(format!(
                "{blocks} blocks in the image (at most {MAX_BLOCKS} supported)"
            ));
        }
        let blocks_allocated = le32(&header, OFF_ALLOCATED);
        if blocks_allocated > blocks {
            return Err(format!(
                "{blocks_allocated} blocks allocated of only {blocks} in the image"
            ));
        }
        let block_size = u64::from(block_size);
        let size = le64(&header, OFF_DISK_SIZE);
        if size > u64::from(blocks) * block_size {
            return Err(format!(
                "disk size {size} is more than {blocks} blocks of {block_size} bytes"
            ));
        }
        let map_offset = u64::from(le32(&header, OFF_MAP));
        let data_offset = u64::from(le32(&header, OFF_DATA));
        let map_bytes = u64::from(blocks) * 4;
        let header_end = OFF_HEADER_SIZE as u64 + u64::from(header_size);
        if map_offset < header_end || map_offset + map_bytes > file_len {
            return Err(format!(
                "the block map ({map_bytes} bytes at {map_offset:#x}) is over the header or outside the file"
            ));
        }
        if data_offset < map_offset + map_bytes || data_offset > file_len {
            return Err(format!(
                "the data offset {data_offset:#x} is inside the block map or past the end of the file"
            ));
        }
        let mut map_raw = vec![0u8; map_bytes as usize];
        storage
            .read_exact_at(&mut map_raw, map_offset)
            .map_err(|e| format!("cannot read the block map: {e}"))?;
        let map = map_raw
            .chunks_exact(4)
            .map(|c| le32(c, 0))
            .collect::<Vec<u32>>();
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&header[OFF_UUID..OFF_UUID + 16]);
        let mut image = Vdi {
            storage,
            read_only: (!writable).then(|| "the image is read-only".to_string()),
            image_type,
            map_offset,
            data_offset,
            size,
            block_size,
            blocks_allocated,
            map,
            uuid,
            file_len,
        };
        if writable {
            image.read_only = image.writable_or_why()?;
        }
        Ok(image)
    }

    /// Makes a new image of `size` zero bytes: variant "dynamic" (the default: no
    /// blocks allocated) or "static" (also "fixed": every block allocated, the file
    /// full size, its data a hole). Blocks are 1 MiB; no backing file.
    pub fn create(path: &Path, size: u64, options: &CreateOptions) -> Result<(), String> {
        let image_type = match options.variant.as_deref() {
            None | Some("dynamic") => TYPE_DYNAMIC,
            Some("static") | Some("fixed") => TYPE_FIXED,
            Some(other) => {
                return Err(format!(
                    "unknown VDI variant {other:?} (variants: dynamic, static)"
                ))
            }
        };
        if options.backing_file.is_some() {
            return Err("VDI images made here have no backing file".into());
        }
        if let Some(cluster_size) = options.cluster_size {
            if cluster_size != u64::from(CREATE_BLOCK_SIZE) {
                return Err(format!(
                    "VDI images are made with 1 MiB blocks only, not {cluster_size} bytes"
                ));
            }
        }
        let block_size = u64::from(CREATE_BLOCK_SIZE);
        let blocks = size.div_ceil(block_size);
        if blocks > u64::from(MAX_BLOCKS) {
            return Err(format!(
                "{size} bytes is too big for a VDI image (at most {} bytes)",
                u64::from(MAX_BLOCKS) * block_size
            ));
        }
        let blocks = blocks as u32;
        let map_offset = HEADER_LEN as u64;
        let data_offset = (map_offset + u64::from(blocks) * 4).next_multiple_of(4096);

        let mut head = vec![0u8; data_offset as usize];
        head[..TEXT.len()].copy_from_slice(TEXT);
        put32(&mut head, OFF_SIGNATURE, SIGNATURE);
        put32(&mut head, OFF_VERSION, VERSION_1_1);
        put32(&mut head, OFF_HEADER_SIZE, HEADER_SIZE);
        put32(&mut head, OFF_TYPE, image_type);
        put32(&mut head, OFF_MAP, map_offset as u32);
        put32(&mut head, OFF_DATA, data_offset as u32);
        // Legacy geometry (cylinders, heads, sectors) left 0, as QEMU and VirtualBox
        // do: readers compute one from the size.
        put32(&mut head, OFF_SECTOR_SIZE, 512);
        put64(&mut head, OFF_DISK_SIZE, size);
        put32(&mut head, OFF_BLOCK_SIZE, CREATE_BLOCK_SIZE);
        put32(&mut head, OFF_BLOCKS, blocks);
        let fixed = image_type == TYPE_FIXED;
        put32(&mut head, OFF_ALLOCATED, if fixed { blocks } else { 0 });
        head[OFF_UUID..OFF_UUID + 16].copy_from_slice(&new_uuid());
        head[OFF_UUID_MODIFY..OFF_UUID_MODIFY + 16].copy_from_slice(&new_uuid());
        for i in 0..blocks {
            let entry = if fixed { i } else { UNALLOCATED };
            put32(&mut head, map_offset as usize + i as usize * 4, entry);
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| format!("cannot create: {e}"))?;
        let file_len = if fixed {
            data_offset + u64::from(blocks) * block_size
        } else {
            data_offset
        };
        // The data blocks of a fixed image are a hole: zeros without disk space.
        file.set_len(file_len)
            .map_err(|e| format!("cannot size the image: {e}"))?;
        Storage::write_all_at(&file, &head, 0).map_err(|e| format!("cannot write: {e}"))?;
        file.sync_all().map_err(|e| format!("cannot write: {e}"))
    }

    /// The virtual disk size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the virtual disk has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.check_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos & (self.block_size - 1);
            let n = (buf.len() - done).min((self.block_size - within) as usize);
            let part = &mut buf[done..done + n];
            match self.host_block(pos)? {
                Some(host) => self.read_host(host + within, part)?,
                None => part.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Writes, allocating blocks as needed (fails on a read-only image).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        if let Some(why) = &self.read_only {
            return Err(why.clone());
        }
        self.check_range(offset, data.len())?;
        let result = self.write_blocks(offset, data);
        if let Err(e) = &result {
            // The map in memory may no longer match the file: stop writing rather
            // than build on it.
            self.read_only = Some(format!("writes stopped after an error: {e}"));
        }
        result
    }

    pub fn flush(&mut self) -> Result<(), String> {
        self.storage
            .sync()
            .map_err(|e| format!("cannot flush the image: {e}"))
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), String> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(format!(
                "access of {len} bytes at {offset:#x} is past the end of the disk ({} bytes)",
                self.size
            )),
        }
    }

    /// The host offset of the data block holding guest offset `pos`; None when the
    /// block reads as zeros.
    fn host_block(&self, pos: u64) -> Result<Option<u64>, String> {
        let block = pos / self.block_size;
        // pos < size <= blocks × block size, so the block has a map entry.
        let entry = self.map[block as usize];
        if !is_allocated(entry) {
            return Ok(None);
        }
        if entry as usize >= self.map.len() {
            return Err(format!(
                "block {block} maps to data block {entry}, past the {} blocks of the image",
                self.map.len()
            ));
        }
        Ok(Some(self.data_offset + u64::from(entry) * self.block_size))
    }

    fn read_host(&self, at: u64, buf: &mut [u8]) -> Result<(), String> {
        if at + buf.len() as u64 > self.file_len {
            return Err(format!(
                "data at {at:#x} ({} bytes) is past the end of the file ({} bytes)",
                buf.len(),
                self.file_len
            ));
        }
        self.storage
            .read_exact_at(buf, at)
            .map_err(|e| format!("cannot read the image: {e}"))
    }

    fn write_host(&mut self, at: u64, data: &[u8]) -> Result<(), String> {
        self.storage
            .write_all_at(data, at)
            .map_err(|e| format!("cannot write the image: {e}"))?;
        self.file_len = self.file_len.max(at + data.len() as u64);
        Ok(())
    }

    fn write_blocks(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let within = pos & (self.block_size - 1);
            let n = (data.len() - done).min((self.block_size - within) as usize);
            let part = &data[done..done + n];
            match self.host_block(pos)? {
                Some(host) => self.write_host(host + within, part)?,
                None => self.allocate(pos / self.block_size, within as usize, part)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Gives virtual block `block` a new data block holding `part` at `within`
    /// (zeros elsewhere): the block first, then its map entry, then the count.
    fn allocate(&mut self, block: u64, within: usize, part: &[u8]) -> Result<(), String> {
        let index = self.blocks_allocated;
        if index as usize >= self.map.len() {
            // Cannot happen with a consistent map (checked when opened for writing).
            return Err("no free data block left".into());
        }
        let host = self.data_offset + u64::from(index) * self.block_size;
        let mut contents = vec![0u8; self.block_size as usize];
        contents[within..within + part.len()].copy_from_slice(part);
        self.write_host(host, &contents)?;
        self.write_host(self.map_offset + block * 4, &index.to_le_bytes())?;
        self.map[block as usize] = index;
        self.write_host(OFF_ALLOCATED as u64, &(index + 1).to_le_bytes())?;
        self.blocks_allocated = index + 1;
        Ok(())
    }

    /// Looks at every block map entry: indices in range, none shared, how many.
    fn survey(&self) -> MapSurvey {
        let blocks = self.map.len();
        let mut used = vec![0u64; blocks.div_ceil(64)];
        let mut survey = MapSurvey {
            allocated: 0,
            errors: Vec::new(),
            error_count: 0,
            max_index: None,
        };
        for (block, &entry) in self.map.iter().enumerate() {
            if !is_allocated(entry) {
                continue;
            }
            survey.allocated += 1;
            let index = entry as usize;
            if index >= blocks {
                survey.note(format!(
                    "block {block} maps to data block {entry}, past the {blocks} blocks of the image"
                ));
                continue;
            }
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            if used[word] & bit != 0 {
                survey.note(format!(
                    "block {block} maps to data block {entry}, used by another block too"
                ));
            }
            used[word] |= bit;
            survey.max_index = survey.max_index.max(Some(entry));
        }
        survey
    }

    /// None when writes are safe; else why they are refused. Repairs the count an
    /// allocation interrupted between its map entry and the header leaves.
    fn writable_or_why(&mut self) -> Result<Option<String>, String> {
        let survey = self.survey();
        if survey.error_count > 0 {
            return Ok(Some(format!(
                "writes refused: the block map is inconsistent ({})",
                survey.errors[0]
            )));
        }
        // With no shared or out-of-range entries, the indices in use are exactly
        // 0..allocated when the largest is allocated - 1.
        let dense = survey.max_index.map_or(0, |m| u64::from(m) + 1) == survey.allocated;
        let count = u64::from(self.blocks_allocated);
        if dense && survey.allocated == count + 1 {
            let fixed = survey.allocated as u32;
            self.write_host(OFF_ALLOCATED as u64, &fixed.to_le_bytes())?;
            self.blocks_allocated = fixed;
        } else if !dense || survey.allocated != count {
            return Ok(Some(format!(
                "writes refused: the block map uses {} data blocks (largest index {:?}), the header counts {count}",
                survey.allocated, survey.max_index
            )));
        }
        Ok(None)
    }

    fn type_name(&self) -> &'static str {
        if self.image_type == TYPE_FIXED {
            "static"
        } else {
            "dynamic"
        }
    }
}

impl DiskFormat for Vdi {
    fn format_name(&self) -> &'static str {
        "vdi"
    }
    fn len(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        Vdi::read_at(self, offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        Vdi::write_at(self, offset, data)
    }
    fn is_writable(&self) -> bool {
        self.read_only.is_none()
    }
    fn flush(&mut self) -> Result<(), String> {
        Vdi::flush(self)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("image type", self.type_name().to_string()),
            ("block size", self.block_size.to_string()),
            ("blocks in image", self.map.len().to_string()),
            ("blocks allocated", self.blocks_allocated.to_string()),
            ("uuid", format_uuid(&self.uuid)),
        ]
    }
    fn check(&mut self) -> Result<CheckReport, String> {
        let survey = self.survey();
        let mut report = CheckReport {
            errors: survey.errors,
            leaked_clusters: 0,
        };
        if survey.error_count > report.errors.len() as u64 {
            report.errors.push(format!(
                "... {} block map errors in all",
                survey.error_count
            ));
        }
        if survey.allocated != u64::from(self.blocks_allocated) {
            report.errors.push(format!(
                "the block map uses {} data blocks, the header counts {}",
                survey.allocated, self.blocks_allocated
            ));
        }
        let file_len = self
            .storage
            .size()
            .map_err(|e| format!("cannot read the image size: {e}"))?;
        let mut past_end = 0u64;
        for (block, &entry) in self.map.iter().enumerate() {
            if is_allocated(entry) && (entry as usize) < self.map.len() {
                let end = self.data_offset + (u64::from(entry) + 1) * self.block_size;
                if end > file_len {
                    past_end += 1;
                    if past_end <= 10 {
                        report.errors.push(format!(
                            "block {block} (data block {entry}) is past the end of the file"
                        ));
                    }
                }
            }
        }
        if past_end > 10 {
            report
                .errors
                .push(format!("... {past_end} blocks past the end of the file"));
        }
        // Whole data blocks past the last one counted: left by an interrupted write
        // (the next allocation reuses them).
        let used_end = self.data_offset + u64::from(self.blocks_allocated) * self.block_size;
        report.leaked_clusters = file_len.saturating_sub(used_end) / self.block_size;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{have_qemu_img, run, run_ok, Rng, Scratch};
    use crate::MemStorage;
    use std::fs;
    use std::path::PathBuf;

    const MIB: usize = 1 << 20;

    /// A disk of `len` bytes in 256 KiB stretches: zeros, a counting pattern, noise,
    /// or zeros with a byte set here and there. Whole 1 MiB blocks of zeros too.
    fn disk_contents(len: usize, seed: u64) -> Vec<u8> {
        let mut rand = Rng(seed);
        let mut disk = vec![0u8; len];
        for (n, stretch) in disk.chunks_mut(256 << 10).enumerate() {
            if n % 8 == 4 {
                continue; // leaves blocks 1, 3, ... partly zero, and some wholly
            }
            match rand.below(4) {
                0 => {}
                1 => stretch
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = (i as u8).wrapping_mul(13) ^ (n as u8)),
                2 => stretch.iter_mut().for_each(|b| *b = rand.next() as u8),
                _ => {
                    for _ in 0..5 {
                        let at = rand.below(stretch.len() as u64) as usize;
                        stretch[at] = 0xa5;
                    }
                }
            }
        }
        // One block of zeros in the middle, whatever the draw.
        if len > 3 * MIB {
            disk[2 * MIB..3 * MIB].fill(0);
        }
        disk
    }

    fn whole(image: &mut Vdi) -> Vec<u8> {
        let mut all = vec![0u8; image.len() as usize];
        image.read_at(0, &mut all).expect("read the whole disk");
        all
    }

    /// Reads 150 unaligned spans, many across block boundaries.
    fn compare_spans(image: &mut Vdi, expected: &[u8], seed: u64, name: &str) {
        let mut rand = Rng(seed);
        for _ in 0..150 {
            let len = 1 + rand.below(3 * MIB as u64 / 2) as usize;
            let len = len.min(expected.len());
            let at = rand.below((expected.len() - len) as u64 + 1) as usize;
            let mut got = vec![0u8; len];
            image.read_at(at as u64, &mut got).expect("read a span");
            assert!(
                got == expected[at..at + len],
                "{name}: {len} bytes at {at:#x} differ"
            );
        }
    }

    #[test]
    fn vdi_reads_images_made_by_qemu_img() {
        if !have_qemu_img("vdi_reads_images_made_by_qemu_img") {
            return;
        }
        let dir = Scratch::new("read");
        // 5 MiB, and 4 MiB + 300 KiB + 3 sectors (not a whole number of blocks).
        for (n, len) in [5 * MIB, 4 * MIB + (300 << 10) + 1536]
            .into_iter()
            .enumerate()
        {
            let raw = disk_contents(len, 100 + n as u64);
            fs::write(dir.path("disk.raw"), &raw).unwrap();
            for (name, options) in [("dynamic.vdi", "static=off"), ("static.vdi", "static=on")] {
                run_ok(
                    &dir,
                    "qemu-img",
                    &[
                        "convert", "-f", "raw", "-O", "vdi", "-o", options, "disk.raw", name,
                    ],
                );
                let bytes = fs::read(dir.path(name)).unwrap();
                assert!(Vdi::probe(&bytes[..1024]), "{name}: not probed");
                assert_eq!(crate::probe(&bytes[..1024]), "vdi");
                let mut image = Vdi::open(&dir.path(name), false).expect(name);
                assert_eq!(image.len(), len as u64, "{name}");
                assert!(whole(&mut image) == raw, "{name} ({len}): the disk differs");
                compare_spans(&mut image, &raw, 7 + n as u64, name);
                assert!(
                    image.write_at(0, &[1]).is_err(),
                    "{name}: written read-only"
                );
                let mut two = [0u8; 2];
                assert!(image.read_at(len as u64 - 1, &mut two).is_err());
                let report = image.check().unwrap();
                assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
                assert_eq!(report.leaked_clusters, 0, "{name}");
                let details = image.details();
                let kind = if name == "static.vdi" {
                    "static"
                } else {
                    "dynamic"
                };
                assert!(
                    details.contains(&("image type", kind.to_string())),
                    "{details:?}"
                );
                assert!(details.contains(&("block size", "1048576".to_string())));
                // Through the format-independent entry point too.
                let mut any = crate::open(&dir.path(name), false, None).unwrap();
                assert_eq!(any.format_name(), "vdi");
                let mut tail = vec![0u8; 5000];
                any.read_at(len as u64 - 5000, &mut tail).unwrap();
                assert!(tail == raw[len - 5000..], "{name}: the tail differs");
            }
            assert!(!Vdi::probe(&raw[..1024]));
        }
    }

    /// `count` writes (mostly short, some up to 3 blocks) into `image` and `expected`,
    /// reading back now and then.
    fn random_writes(image: &mut Vdi, expected: &mut [u8], seed: u64, count: usize) {
        let mut rand = Rng(seed);
        let size = expected.len() as u64;
        for i in 0..count {
            let max = if rand.below(4) == 0 {
                3 * MIB as u64
            } else {
                70_000
            };
            let len = (1 + rand.below(max)).min(size) as usize;
            let at = rand.below(size - len as u64 + 1) as usize;
            let data: Vec<u8> = match rand.below(3) {
                0 => vec![0; len],
                1 => (0..len).map(|j| (i ^ (j >> 9)) as u8).collect(),
                _ => {
                    let noise = rand.next();
                    (0..len)
                        .map(|j| (noise >> (j % 57)) as u8 ^ j as u8)
                        .collect()
                }
            };
            image.write_at(at as u64, &data).expect("write");
            expected[at..at + len].copy_from_slice(&data);
            if i % 20 == 0 {
                let len = (1 + rand.below(2 * MIB as u64)).min(size) as usize;
                let at = rand.below(size - len as u64 + 1) as usize;
                let mut got = vec![0u8; len];
                image.read_at(at as u64, &mut got).expect("read back");
                assert!(
                    got == expected[at..at + len],
                    "read back at {at:#x} differs"
                );
            }
        }
        image.flush().expect("flush");
    }

    /// qemu-img finds `name` clean and equal to `expected`, and so does this module.
    fn check_and_compare(dir: &Scratch, name: &str, expected: &[u8]) {
        run_ok(dir, "qemu-img", &["check", "-f", "vdi", name]);
        fs::write(dir.path("expected.raw"), expected).unwrap();
        run_ok(
            dir,
            "qemu-img",
            &["compare", "-f", "vdi", "-F", "raw", name, "expected.raw"],
        );
        let mut image = Vdi::open(&dir.path(name), false).unwrap();
        assert!(whole(&mut image) == expected, "{name}: reopened differs");
        let report = image.check().unwrap();
        assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
    }

    #[test]
    fn vdi_writes_pass_qemu_img_check_and_compare() {
        if !have_qemu_img("vdi_writes_pass_qemu_img_check_and_compare") {
            return;
        }
        let dir = Scratch::new("write");
        let len = 7 * MIB + (100 << 10) + 512;
        let contents = disk_contents(len, 200);
        fs::write(dir.path("disk.raw"), &contents).unwrap();
        run_ok(
            &dir,
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vdi",
                "disk.raw",
                "qemu-dynamic.vdi",
            ],
        );
        run_ok(
            &dir,
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vdi",
                "-o",
                "static=on",
                "disk.raw",
                "qemu-static.vdi",
            ],
        );
        for variant in ["dynamic", "static"] {
            let options = CreateOptions {
                variant: Some(variant.to_string()),
                ..CreateOptions::default()
            };
            let name = format!("hospes-{variant}.vdi");
            crate::create(&dir.path(&name), "vdi", len as u64, &options).unwrap();
            run_ok(&dir, "qemu-img", &["check", "-f", "vdi", &name]);
            let info = run_ok(&dir, "qemu-img", &["info", "--output=json", &name]);
            assert!(info.contains(&format!("\"virtual-size\": {len}")), "{info}");
            assert!(info.contains("\"format\": \"vdi\""), "{info}");
            check_and_compare(&dir, &name, &vec![0u8; len]);
        }
        let cases = [
            ("qemu-dynamic.vdi", &contents),
            ("qemu-static.vdi", &contents),
            ("hospes-dynamic.vdi", &vec![0u8; len]),
            ("hospes-static.vdi", &vec![0u8; len]),
        ];
        for (n, (name, start)) in cases.into_iter().enumerate() {
            let mut expected = start.clone();
            let image = crate::open(&dir.path(name), true, None).unwrap();
            assert!(image.is_writable());
            drop(image);
            let mut image = Vdi::open(&dir.path(name), true).unwrap();
            random_writes(&mut image, &mut expected, 300 + n as u64, 300);
            let report = image.check().unwrap();
            assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
            drop(image);
            check_and_compare(&dir, name, &expected);
        }
        let file = dir.path("hospes-dynamic.vdi");
        let image = Vdi::open(&file, false).unwrap();
        let details = image.details();
        assert!(
            details.iter().any(|(k, v)| *k == "uuid" && v.len() == 36),
            "{details:?}"
        );
        let allocated = image.blocks_allocated;
        assert!(allocated > 0 && allocated as usize <= image.map.len());
        drop(image);

        // An allocation cut short after its map entry, before the header's count:
        // check sees it, a writable open repairs it.
        let mut bytes = fs::read(&file).unwrap();
        put32(&mut bytes, OFF_ALLOCATED, allocated - 1);
        fs::write(&file, &bytes).unwrap();
        let mut image = Vdi::open(&file, false).unwrap();
        assert_eq!(image.check().unwrap().errors.len(), 1);
        assert!(!run(
            &dir,
            "qemu-img",
            &["check", "-f", "vdi", "hospes-dynamic.vdi"]
        )
        .status
        .success());
        drop(image);
        let mut image = Vdi::open(&file, true).unwrap();
        assert!(image.is_writable());
        assert!(image.check().unwrap().errors.is_empty());
        drop(image);
        run_ok(
            &dir,
            "qemu-img",
            &["check", "-f", "vdi", "hospes-dynamic.vdi"],
        );

        // Cut short after the block, before the map entry: a leaked block, reused.
        let mut bytes = fs::read(&file).unwrap();
        bytes.extend(std::iter::repeat_n(0x33, MIB));
        fs::write(&file, &bytes).unwrap();
        let mut image = Vdi::open(&file, true).unwrap();
        let report = image.check().unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.leaked_clusters, 1);

        let bad = |variant: Option<&str>, cluster: Option<u64>, backing: bool| {
            let options = CreateOptions {
                variant: variant.map(str::to_string),
                cluster_size: cluster,
                backing_file: backing.then(|| PathBuf::from("base.vdi")),
            };
            let err = Vdi::create(&dir.path("refused.vdi"), MIB as u64, &options).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        };
        bad(Some("split"), None, false);
        bad(None, Some(4096), false);
        bad(None, None, true);
    }

    /// Opens `bytes` writable in memory and uses it; errors are fine, panics are not.
    fn exercise(bytes: Vec<u8>) {
        let storage = MemStorage::new(bytes, 16 << 20);
        let Ok(mut image) = Vdi::from_storage(Box::new(storage), true) else {
            return;
        };
        let _ = image.details();
        let len = image.len().min(64 << 20);
        let mut buf = vec![0u8; MIB];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            let _ = image.read_at(at, &mut buf[..n]);
            at += n as u64;
        }
        let len = image.len();
        for (i, at) in [0, 4000, len / 2, len.saturating_sub(70_000)]
            .into_iter()
            .enumerate()
        {
            let _ = image.write_at(at, &[i as u8 + 1; 70_000]);
        }
        let _ = image.flush();
        let _ = image.check();
    }

    fn refused(bytes: &[u8], what: &str) -> String {
        let storage = MemStorage::new(bytes.to_vec(), 16 << 20);
        match Vdi::from_storage(Box::new(storage), true) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                assert!(!e.contains('\n') && !e.is_empty(), "{what}: {e:?}");
                e
            }
        }
    }

    #[test]
    fn vdi_hostile_images_give_errors_not_panics() {
        if !have_qemu_img("vdi_hostile_images_give_errors_not_panics") {
            return;
        }
        let dir = Scratch::new("hostile");
        let raw = disk_contents(4 * MIB, 400);
        fs::write(dir.path("disk.raw"), &raw).unwrap();
        run_ok(
            &dir,
            "qemu-img",
            &["convert", "-f", "raw", "-O", "vdi", "disk.raw", "small.vdi"],
        );
        let good = fs::read(dir.path("small.vdi")).unwrap();
        let map_offset = le32(&good, OFF_MAP) as usize;
        let data_offset = le32(&good, OFF_DATA) as usize;

        let mut case = good.clone();
        put32(&mut case, OFF_MAP, good.len() as u32 + 512);
        refused(&case, "block map past the end");
        let mut case = good.clone();
        put32(&mut case, OFF_DATA, good.len() as u32 + 512);
        refused(&case, "data past the end");
        for size in [0, 3, 256, 1 << 27, (1 << 20) + 1] {
            let mut case = good.clone();
            put32(&mut case, OFF_BLOCK_SIZE, size);
            let e = refused(&case, "bad block size");
            assert!(e.contains("block size"), "{e}");
        }
        let mut case = good.clone();
        put32(&mut case, OFF_ALLOCATED, le32(&good, OFF_BLOCKS) + 1);
        refused(&case, "more blocks allocated than in the image");
        let mut case = good.clone();
        put32(&mut case, OFF_BLOCKS, 1);
        refused(&case, "disk bigger than its blocks");
        let mut case = good.clone();
        put32(&mut case, OFF_VERSION, 0x0002_0000);
        let e = refused(&case, "version 2.0");
        assert!(e.contains("2.0"), "{e}");
        for (kind, word) in [(TYPE_DIFF, "differencing"), (TYPE_UNDO, "undo")] {
            let mut case = good.clone();
            put32(&mut case, OFF_TYPE, kind);
            let e = refused(&case, word);
            assert!(e.contains(word) && e.contains("not supported"), "{e}");
        }
        let mut case = good.clone();
        put32(&mut case, OFF_BLOCK_EXTRA, 512);
        refused(&case, "block extra");
        refused(&good[..0x100], "truncated header");

        // A map entry past the blocks in the image: reads of that block fail, writes
        // are refused, check says why.
        let mut case = good.clone();
        put32(&mut case, map_offset, 1000);
        let mut image = Vdi::from_storage(Box::new(MemStorage::new(case, 16 << 20)), true).unwrap();
        let mut buf = [0u8; 512];
        assert!(image.read_at(0, &mut buf).is_err());
        assert!(image.write_at(MIB as u64, &buf).is_err());
        assert!(!image.is_writable());
        assert!(!image.check().unwrap().errors.is_empty());
        // Two entries on one data block.
        let mut case = good.clone();
        let blocks = le32(&good, OFF_BLOCKS) as usize;
        let entries: Vec<u32> = (0..blocks)
            .map(|b| le32(&good, map_offset + 4 * b))
            .collect();
        let used = entries.iter().position(|&e| is_allocated(e)).unwrap();
        let other = (used + 1) % blocks;
        put32(&mut case, map_offset + 4 * other, entries[used]);
        let mut image = Vdi::from_storage(Box::new(MemStorage::new(case, 16 << 20)), true).unwrap();
        assert!(image.write_at(0, &buf).is_err());
        assert!(!image.check().unwrap().errors.is_empty());
        // Data cut off: the block past the end reads as an error.
        let cut = good[..data_offset + MIB / 2].to_vec();
        let mut image = Vdi::from_storage(Box::new(MemStorage::new(cut, 16 << 20)), false).unwrap();
        let report = image.check().unwrap();
        assert!(!report.errors.is_empty());
        let mut whole_disk = vec![0u8; 4 * MIB];
        assert!(image.read_at(0, &mut whole_disk).is_err());

        // Random damage to the header and block map, and truncations.
        let span = data_offset.min(good.len());
        let mut rand = Rng(401);
        for round in 0..1500 {
            let mut damaged = good.clone();
            if round % 3 == 2 {
                damaged.truncate(rand.below(good.len() as u64 + 1) as usize);
            } else {
                for _ in 0..1 + rand.below(4) {
                    // The header's fields, the block map's entries, or anywhere
                    // before the data.
                    let at = match rand.below(3) {
                        0 => {
                            OFF_SIGNATURE
                                + rand.below((MIN_HEADER_BYTES - OFF_SIGNATURE) as u64) as usize
                        }
                        1 => map_offset + rand.below(4 * blocks as u64) as usize,
                        _ => rand.below(span as u64) as usize,
                    };
                    if rand.below(2) == 0 {
                        damaged[at] ^= 1 << rand.below(8);
                    } else {
                        damaged[at] = rand.next() as u8;
                    }
                }
            }
            exercise(damaged);
        }
    }
}
