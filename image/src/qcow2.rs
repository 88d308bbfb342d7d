//! QEMU's qcow2 disk image format: reading and writing images, with backing files.
//!
//! A qcow2 file is made of clusters (`1 << cluster_bits` bytes, 512 B to 2 MiB). Its
//! header (at offset 0, big-endian like every number in the file) gives the virtual
//! disk size and where two structures live:
//! - The mapping. A guest offset splits into an L1 index, an L2 index and an offset
//!   in the cluster. The L1 table (contiguous, held in memory here) points to L2
//!   tables (one cluster each), whose entries point to data clusters. An entry of 0 is
//!   "unallocated": the data comes from the backing file, or reads as zeros without
//!   one. Version 3 adds entries that read as zeros, and any entry can instead point
//!   to a compressed cluster (raw deflate at a byte offset, spanning 512-byte sectors).
//! - The reference counts. A refcount table points to refcount blocks (one cluster
//!   each), arrays of 1- to 64-bit counters, one per host cluster, saying how many
//!   references point to it. A cluster with count 0 is free.
//!
//! Supported: versions 2 and 3, every cluster size and refcount width, zero clusters,
//! compressed clusters (zlib) for reading, backing chains of qcow2 or raw files.
//! Writes put new clusters at the end of the file (freed clusters are not reused),
//! including new L2 tables, refcount blocks and a bigger refcount table when needed,
//! and keep the refcounts exact. Each allocation writes the new cluster first, then
//! its refcount, then the L2 entry, then the L1 entry, so an interrupted write leaves
//! at worst leaked clusters, never a table pointing to unwritten data.
//!
//! [`Qcow2::create`] makes empty images (v3 or v2, 16-bit refcounts, optionally with a
//! backing file) laid out like qemu-img's. `check` recounts the references the
//! tables make (active and snapshot L1 and L2 tables, refcount structures, header)
//! and compares them with the stored refcounts, as `qemu-img check` does.
//!
//! Not supported: encryption, external data files, extended L2 entries (subclusters),
//! compression types other than zlib, and writing to images with internal snapshots
//! (reading them is fine: the active L1 table is what the guest sees). Of the header
//! extensions only the backing file format is read; without it the backing file's
//! format is found from its first bytes.
//!
//! The image is read through [`Storage`] (a file, or bytes in memory by
//! [`Qcow2::from_storage`]) and not trusted: every offset and size read from it is
//! checked and allocations are bounded, so a damaged image gives an error, not a
//! panic, an access outside the storage or a huge allocation.

use super::{CheckReport, CreateOptions, DiskFormat, Storage};
use crate::{be32, be64};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// The largest L1 or refcount table held in memory.
const MAX_TABLE_BYTES: u64 = 32 << 20;
/// The longest backing chain followed (this also stops an image backed by itself).
const MAX_BACKING_DEPTH: u32 = 16;
/// Host offsets have 56 bits in table entries; virtual sizes are kept below that too,
/// so that offset arithmetic cannot overflow.
const MAX_OFFSET: u64 = 1 << 56;
/// Bits 9-55 of an L1 or L2 entry: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 and L2 entry flag: the cluster's refcount is exactly 1.
const COPIED: u64 = 1 << 63;
/// L2 entry flag: a compressed cluster descriptor.
const COMPRESSED: u64 = 1 << 62;
/// L2 entry flag (version 3): the cluster reads as zeros.
const ZERO: u64 = 1;
/// The most clusters past the end of the file with stale refcounts that an
/// allocation steps over.
const MAX_STALE_CLUSTERS: u32 = 1 << 16;
/// The longest backing file name the format allows.
const MAX_BACKING_NAME: u32 = 1023;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

/// Header field offsets this module writes to.
const HEADER_REFCOUNT_TABLE: u64 = 48;
const HEADER_AUTOCLEAR: u64 = 88;
/// Bytes of the version 2 header, and of the version 3 header up to `header_length`.
const HEADER_V2_LEN: usize = 72;
const HEADER_V3_LEN: usize = 104;

/// An open qcow2 image.
pub struct Qcow2 {
    file: Box<dyn Storage>,
    /// Why writes are refused; None when the image is open for writing.
    read_only: Option<String>,
    version: u32,
    /// The header's incompatible feature bits (dirty, corrupt).
    incompatible: u64,
    /// The number of internal snapshots and where their table is.
    snapshots: u32,
    snapshots_offset: u64,
    /// The backing file name as the header gives it.
    backing_name: Option<Vec<u8>>,
    /// The backing file's format, from the header extension that names it.
    backing_format: Option<String>,
    cluster_bits: u32,
    /// The virtual disk size.
    size: u64,
    l1_table_offset: u64,
    l1: Vec<u64>,
    refcount_order: u32,
    refcount_table_offset: u64,
    refcount_table: Vec<u64>,
    /// The file's length as far as this image has read or written it.
    file_len: u64,
    /// Where the next cluster is allocated: the cluster-aligned end of the file.
    next_free: u64,
    backing: Option<Backing>,
    /// The last L2 table used: its offset and entries.
    l2_cache: Option<(u64, Vec<u64>)>,
    /// The last compressed cluster read: its L2 entry and contents.
    inflated: Option<(u64, Vec<u8>)>,
    /// Set while the refcount table grows (growing must not recurse).
    growing_refcount_table: bool,
}

/// What a backing file is: an image of its own or plain bytes.
enum Backing {
    Qcow2(Box<Qcow2>),
    Raw { file: Box<dyn Storage>, len: u64 },
}

impl Backing {
    fn len(&self) -> u64 {
        match self {
            Backing::Qcow2(image) => image.len(),
            Backing::Raw { len, .. } => *len,
        }
    }
}

/// What an L2 entry says about one guest cluster.
#[derive(Clone, Copy)]
enum Cluster {
    /// Not in this image: the backing file's data, or zeros.
    Unallocated,
    /// Reads as zeros, with no host cluster.
    Zero,
    /// Reads as zeros; the host cluster at this offset is reserved for it.
    ZeroAllocated(u64),
    /// The data is at this host offset.
    Data(u64),
    /// Deflated data of `len` bytes at host offset `start` (`entry` is the L2 entry).
    Compressed { entry: u64, start: u64, len: u64 },
}

fn to_entries(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| be64(c, 0)).collect()
}

fn to_bytes(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

fn io_error(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

/// Header extension: the backing file's format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// The backing file format named by a header extension, if any. The extensions start
/// at `header_length` and end with a zero type, in the first cluster and before the
/// backing file name (at `backing_offset` when not 0).
fn read_backing_format(
    file: &dyn Storage,
    header_length: u64,
    backing_offset: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<Option<String>, String> {
    let mut end = cluster_size.min(file_len);
    if backing_offset != 0 {
        end = end.min(backing_offset);
    }
    if header_length >= end {
        return Ok(None);
    }
    let mut area = vec![0u8; end as usize];
    file.read_exact_at(&mut area, 0)
        .map_err(|e| io_error("cannot read the header extensions", e))?;
    let mut at = header_length as usize;
    while at + 8 <= area.len() {
        let kind = be32(&area, at);
        let len = be32(&area, at + 4) as usize;
        if kind == 0 {
            break;
        }
        let data = at + 8;
        if len > area.len() - data {
            // Damaged (qemu refuses such an image); the format is then found from
            // the backing file's first bytes.
            break;
        }
        if kind == EXT_BACKING_FORMAT {
            let name = &area[data..data + len];
            return Ok(Some(String::from_utf8_lossy(name).into_owned()));
        }
        at = data + len.div_ceil(8) * 8;
    }
    Ok(None)
}

/// Checks that a table of `bytes` at `offset` is cluster-aligned, not over the header
/// and inside a file of `file_len` bytes.
fn check_table(
    what: &str,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), String> {
    if bytes == 0 {
        return Ok(());
    }
    let inside = offset.checked_add(bytes).is_some_and(|end| end <= file_len);
    if offset == 0 || !offset.is_multiple_of(cluster_size) || !inside {
        return Err(format!(
            "the {what} ({bytes} bytes at {offset:#x}) is misplaced or outside the file"
        ));
    }
    Ok(())
}

impl Qcow2 {
    /// Whether `head` (the first bytes of a file, at least 4) is a qcow2 header (magic "QFI\xfb").
    pub fn probe(head: &[u8]) -> bool {
        head.starts_with(MAGIC)
    }

    /// Opens an image; its backing file (if any; relative paths are relative to the
    /// image's directory) is opened read-only, recursively, at most 16 deep. Backing
    /// files may be qcow2 or raw (raw when the magic is not qcow2).
    pub fn open(path: &Path, writable: bool) -> Result<Qcow2, String> {
        Self::open_in_chain(path, writable, 0)
    }

    /// An image in any storage (bytes in memory, for one), without a backing file:
    /// an image that names one is refused. Like [`Qcow2::open`], it treats the bytes
    /// as hostile.
    pub fn from_storage(storage: Box<dyn Storage>, writable: bool) -> Result<Qcow2, String> {
        Self::from_storage_unbacked(storage, writable, false)
    }

    fn open_in_chain(path: &Path, writable: bool, depth: u32) -> Result<Qcow2, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| io_error(&path.display().to_string(), e))?;
        let mut image = Self::from_storage_unbacked(Box::new(file), writable, true)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(name) = image.backing_name.clone() {
            if depth + 1 >= MAX_BACKING_DEPTH {
                return Err(format!(
                    "{}: the backing chain is more than {MAX_BACKING_DEPTH} deep",
                    path.display()
                ));
            }
            let name = Path::new(OsStr::from_bytes(&name));
            let backing_path: PathBuf = match path.parent() {
                Some(dir) if name.is_relative() => dir.join(name),
                _ => name.to_path_buf(),
            };
            let format = image.backing_format.clone();
            image.backing = Some(
                Self::open_backing(&backing_path, format.as_deref(), depth + 1)
                    .map_err(|e| format!("{}: backing file: {e}", path.display()))?,
            );
        }
        Ok(image)
    }

    /// Opens a backing file of the format its header extension names ("qcow2" or
    /// "raw"), or without one the format its first bytes show.
    fn open_backing(path: &Path, format: Option<&str>, depth: u32) -> Result<Backing, String> {
        let file = File::open(path).map_err(|e| io_error(&path.display().to_string(), e))?;
        let len = Storage::size(&file).map_err(|e| io_error(&path.display().to_string(), e))?;
        let is_qcow2 = match format {
            Some("qcow2") => true,
            Some("raw") => false,
            Some(other) => return Err(format!("backing file format {other:?} is not supported")),
            None => {
                let mut head = [0u8; 4];
                if len >= 4 {
                    Storage::read_exact_at(&file, &mut head, 0)
                        .map_err(|e| io_error(&path.display().to_string(), e))?;
                }
                Self::probe(&head)
            }
        };
        if is_qcow2 {
            Ok(Backing::Qcow2(Box::new(Self::open_in_chain(
                path, false, depth,
            )?)))
        } else {
            Ok(Backing::Raw {
                file: Box::new(file),
                len,
            })
        }
    }

    /// Reads and checks the header and tables; gives the image without its backing
    /// file (`backing_name` says which one it names, if any; refused unless
    /// `backing_allowed`, before anything is written).
    fn from_storage_unbacked(
        file: Box<dyn Storage>,
        writable: bool,
        backing_allowed: bool,
    ) -> Result<Qcow2, String> {
        let file_len = file
            .size()
            .map_err(|e| io_error("cannot stat the image", e))?;
        let mut header = [0u8; HEADER_V3_LEN];
        let got = file_len.min(HEADER_V3_LEN as u64) as usize;
        file.read_exact_at(&mut header[..got], 0)
            .map_err(|e| io_error("cannot read the header", e))?;
        if !Self::probe(&header[..got]) {
            return Err("not a qcow2 image".into());
        }
        if got < HEADER_V2_LEN {
            return Err("the header is truncated".into());
        }
        let version = be32(&header, 4);
        if version != 2 && version != 3 {
            return Err(format!("qcow2 version {version} is not supported"));
        }
        let backing_offset = be64(&header, 8);
        let backing_size = be32(&header, 16);
        let cluster_bits = be32(&header, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(format!(
                "cluster_bits {cluster_bits} is out of range (9 to 21)"
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let size = be64(&header, 24);
        if size >= MAX_OFFSET {
            return Err(format!("the disk size {size} is too large"));
        }
        if be32(&header, 32) != 0 {
            return Err("encrypted images are not supported".into());
        }
        let l1_size = u64::from(be32(&header, 36));
        let l1_table_offset = be64(&header, 40);
        let refcount_table_offset = be64(&header, 48);
        let refcount_table_clusters = u64::from(be32(&header, 56));
        let snapshots = be32(&header, 60);
        let snapshots_offset = be64(&header, 64);
        let (incompatible, autoclear, refcount_order, header_length) = if version == 3 {
            if got < HEADER_V3_LEN {
                return Err("the header is truncated".into());
            }
            let header_length = u64::from(be32(&header, 100));
            if header_length < HEADER_V3_LEN as u64 || header_length > cluster_size {
                return Err(format!("header_length {header_length} is out of range"));
            }
            (
                be64(&header, 72),
                be64(&header, 88),
                be32(&header, 96),
                header_length,
            )
        } else {
            (0, 0, 4, HEADER_V2_LEN as u64)
        };
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err("images with an external data file are not supported".into());
        }
        if incompatible & INCOMPAT_COMPRESSION_TYPE != 0 {
            return Err("compression types other than zlib are not supported".into());
        }
        if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
            return Err("extended L2 entries (subclusters) are not supported".into());
        }
        if incompatible & !INCOMPAT_KNOWN != 0 {
            return Err(format!(
                "unknown incompatible features {:#x}",
                incompatible & !INCOMPAT_KNOWN
            ));
        }
        if refcount_order > 6 {
            return Err(format!(
                "refcount_order {refcount_order} is out of range (0 to 6)"
            ));
        }

        // Each L1 entry maps one L2 table's worth of guest clusters.
        let l1_entry_covers = cluster_size << (cluster_bits - 3);
        if l1_size < size.div_ceil(l1_entry_covers) {
            return Err("the L1 table is too small for the disk size".into());
        }
        let l1_bytes = l1_size * 8;
        if l1_bytes > MAX_TABLE_BYTES {
            return Err(format!("the L1 table ({l1_bytes} bytes) is too large"));
        }
        check_table(
            "L1 table",
            l1_table_offset,
            l1_bytes,
            cluster_size,
            file_len,
        )?;
        let refcount_bytes = refcount_table_clusters * cluster_size;
        if refcount_bytes > MAX_TABLE_BYTES {
            return Err(format!(
                "the refcount table ({refcount_bytes} bytes) is too large"
            ));
        }
        check_table(
            "refcount table",
            refcount_table_offset,
            refcount_bytes,
            cluster_size,
            file_len,
        )?;
        let read_table = |offset: u64, bytes: u64, what: &str| -> Result<Vec<u64>, String> {
            let mut raw = vec![0u8; bytes as usize];
            file.read_exact_at(&mut raw, offset)
                .map_err(|e| io_error(&format!("cannot read the {what}"), e))?;
            Ok(to_entries(&raw))
        };
        let l1 = read_table(l1_table_offset, l1_bytes, "L1 table")?;
        let refcount_table = read_table(refcount_table_offset, refcount_bytes, "refcount table")?;

        let backing_name = if backing_offset != 0 && backing_size != 0 {
            let inside = backing_offset
                .checked_add(u64::from(backing_size))
                .is_some_and(|end| end <= file_len);
            if backing_size > MAX_BACKING_NAME || !inside {
                return Err("the backing file name is too long or outside the file".into());
            }
            let mut name = vec![0u8; backing_size as usize];
            file.read_exact_at(&mut name, backing_offset)
                .map_err(|e| io_error("cannot read the backing file name", e))?;
            Some(name)
        } else {
            None
        };
        if backing_name.is_some() && !backing_allowed {
            return Err("a backing file cannot be opened for an image in memory".into());
        }
        let backing_format = read_backing_format(
            &*file,
            header_length,
            backing_offset,
            cluster_size,
            file_len,
        )?;

        let read_only = if !writable {
            Some("the image is open read-only".to_string())
        } else if incompatible & INCOMPAT_DIRTY != 0 {
            return Err("the image is dirty (its refcounts need repair by qemu-img check -r all) and cannot be written".into());
        } else if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err("the image is marked corrupt and cannot be written".into());
        } else if snapshots != 0 {
            return Err("writing to images with internal snapshots is not supported".into());
        } else {
            None
        };

        let next_free = file_len
            .div_ceil(cluster_size)
            .checked_mul(cluster_size)
            .ok_or("the image file is too large")?;
        let image = Qcow2 {
            file,
            read_only,
            version,
            incompatible,
            snapshots,
            snapshots_offset,
            backing_name,
            backing_format,
            cluster_bits,
            size,
            l1_table_offset,
            l1,
            refcount_order,
            refcount_table_offset,
            refcount_table,
            file_len,
            next_free,
            backing: None,
            l2_cache: None,
            inflated: None,
            growing_refcount_table: false,
        };
        if writable && autoclear != 0 {
            // Autoclear features (persistent bitmaps, for one) describe the data as
            // it was; the format says a writer that does not keep them up to date
            // clears them.
            image.write_header(HEADER_AUTOCLEAR, &[0; 8])?;
        }
        Ok(image)
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
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

    fn write_header(&self, at: u64, bytes: &[u8]) -> Result<(), String> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| io_error("cannot write the header", e))
    }

    /// Writes `bytes` at host offset `at`, growing the file if needed.
    fn write_host(&mut self, at: u64, bytes: &[u8]) -> Result<(), String> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| io_error("cannot write the image", e))?;
        self.file_len = self.file_len.max(at + bytes.len() as u64);
        Ok(())
    }

    /// Reads host bytes at `at`; the part of `buf` past the end of the file reads as
    /// zeros (the last data cluster of an image may be short).
    fn read_host(&self, at: u64, buf: &mut [u8]) -> Result<(), String> {
        let inside = self.file_len.saturating_sub(at).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(inside);
        tail.fill(0);
        self.file
            .read_exact_at(head, at)
            .map_err(|e| io_error("cannot read the image", e))
    }

    /// The L2 table offset (0 if none) and the mapping of the guest cluster at `pos`.
    fn locate(&mut self, pos: u64) -> Result<(u64, Cluster), String> {
        let l2_entries_bits = self.cluster_bits - 3;
        let l1_index = (pos >> (self.cluster_bits + l2_entries_bits)) as usize;
        let Some(&l1_entry) = self.l1.get(l1_index) else {
            return Ok((0, Cluster::Unallocated));
        };
        let l2 = l1_entry & OFFSET_MASK;
        if l2 == 0 {
            return Ok((0, Cluster::Unallocated));
        }
        let l2_index = ((pos >> self.cluster_bits) & ((1 << l2_entries_bits) - 1)) as usize;
        let entry = self.l2_table(l2)?[l2_index];
        Ok((l2, self.decode(entry)?))
    }

    /// The entries of the L2 table at `l2`, read if it is not the cached one.
    fn l2_table(&mut self, l2: u64) -> Result<&[u64], String> {
        let cluster_size = self.cluster_size();
        if self.l2_cache.as_ref().is_none_or(|(at, _)| *at != l2) {
            let inside = l2 + cluster_size <= self.file_len;
            if !l2.is_multiple_of(cluster_size) || !inside {
                return Err(format!(
                    "L2 table at {l2:#x} is unaligned or outside the file"
                ));
            }
            let mut raw = vec![0u8; cluster_size as usize];
            self.file
                .read_exact_at(&mut raw, l2)
                .map_err(|e| io_error("cannot read an L2 table", e))?;
            self.l2_cache = Some((l2, to_entries(&raw)));
        }
        match &self.l2_cache {
            Some((_, table)) => Ok(table),
            None => Err("L2 table cache is empty".into()),
        }
    }

    fn decode(&self, entry: u64) -> Result<Cluster, String> {
        let cluster_size = self.cluster_size();
        if entry & COMPRESSED != 0 {
            // The offset takes the low `62 - (cluster_bits - 8)` bits, the count of
            // 512-byte sectors after the first the rest up to bit 61.
            let offset_bits = 62 - (self.cluster_bits - 8);
            let start = entry & ((1 << offset_bits) - 1);
            let sectors = ((entry & !(COPIED | COMPRESSED)) >> offset_bits) + 1;
            let len = sectors * 512 - (start & 511);
            if start >= self.file_len {
                return Err(format!(
                    "compressed cluster at {start:#x} is outside the file"
                ));
            }
            return Ok(Cluster::Compressed { entry, start, len });
        }
        let host = entry & OFFSET_MASK;
        if !host.is_multiple_of(cluster_size) || (host != 0 && host >= self.file_len) {
            return Err(format!(
                "data cluster at {host:#x} is unaligned or outside the file"
            ));
        }
        let zero = self.version >= 3 && entry & ZERO != 0;
        Ok(match (zero, host) {
            (true, 0) => Cluster::Zero,
            (true, host) => Cluster::ZeroAllocated(host),
            (false, 0) => Cluster::Unallocated,
            (false, host) => Cluster::Data(host),
        })
    }

    /// Reads the guest bytes at `pos` (all in the one guest cluster `cluster` maps).
    fn read_cluster(&mut self, cluster: Cluster, pos: u64, buf: &mut [u8]) -> Result<(), String> {
        let in_cluster = pos & (self.cluster_size() - 1);
        match cluster {
            Cluster::Unallocated => self.read_backing(pos, buf),
            Cluster::Zero | Cluster::ZeroAllocated(_) => {
                buf.fill(0);
                Ok(())
            }
            Cluster::Data(host) => self.read_host(host + in_cluster, buf),
            Cluster::Compressed { entry, start, len } => {
                let data = self.inflate(entry, start, len)?;
                buf.copy_from_slice(&data[in_cluster as usize..][..buf.len()]);
                Ok(())
            }
        }
    }

    /// Reads from the backing file; what is past its end (or everything, without
    /// one) reads as zeros.
    fn read_backing(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), String> {
        let Some(backing) = &mut self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let inside = backing.len().saturating_sub(pos).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(inside);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        match backing {
            Backing::Qcow2(image) => image.read_at(pos, head),
            Backing::Raw { file, .. } => file
                .read_exact_at(head, pos)
                .map_err(|e| io_error("cannot read the backing file", e)),
        }
    }

    /// The contents of the compressed cluster with L2 entry `entry`.
    fn inflate(&mut self, entry: u64, start: u64, len: u64) -> Result<&[u8], String> {
        if self.inflated.as_ref().is_none_or(|(e, _)| *e != entry) {
            // The sector count may round past the end of the file.
            let len = len.min(self.file_len - start);
            let mut input = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut input, start)
                .map_err(|e| io_error("cannot read a compressed cluster", e))?;
            let cluster_size = self.cluster_size();
            let mut output = vec![0u8; cluster_size as usize];
            let mut inflater = flate2::Decompress::new(false);
            let result = inflater.decompress(&input, &mut output, flate2::FlushDecompress::Finish);
            if result.is_err() || inflater.total_out() != cluster_size {
                return Err(format!(
                    "compressed cluster at {start:#x} does not inflate to a whole cluster"
                ));
            }
            self.inflated = Some((entry, output));
        }
        match &self.inflated {
            Some((_, data)) => Ok(data),
            None => Err("compressed cluster cache is empty".into()),
        }
    }

    fn write_clusters(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let cluster_size = self.cluster_size();
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let room = cluster_size - (pos & (cluster_size - 1));
            let n = (data.len() - done).min(room as usize);
            self.write_in_cluster(pos, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at guest offset `pos`, all inside one guest cluster.
    fn write_in_cluster(&mut self, pos: u64, data: &[u8]) -> Result<(), String> {
        let cluster_size = self.cluster_size();
        let in_cluster = pos & (cluster_size - 1);
        let (l2, cluster) = self.locate(pos)?;
        if let Cluster::Data(host) | Cluster::ZeroAllocated(host) = cluster {
            self.check_not_metadata(host)?;
        }
        if let Cluster::Data(host) = cluster {
            // Without snapshots every data cluster has refcount 1: written in place.
            return self.write_host(host + in_cluster, data);
        }
        // Anything else becomes a whole new cluster: what the guest saw there, with
        // `data` over it.
        let mut contents = vec![0u8; cluster_size as usize];
        if data.len() as u64 != cluster_size {
            self.read_cluster(cluster, pos - in_cluster, &mut contents)?;
        }
        contents[in_cluster as usize..][..data.len()].copy_from_slice(data);
        let host = match cluster {
            Cluster::ZeroAllocated(host) => host,
            _ => self.take_free_cluster()?,
        };
        self.write_host(host, &contents)?;
        if !matches!(cluster, Cluster::ZeroAllocated(_)) {
            self.set_refcount(host, 1)?;
        }
        self.map_cluster(pos, l2, host | COPIED)?;
        if let Cluster::Compressed { start, len, .. } = cluster {
            // Released last: a crash before this leaks the old data, never loses it.
            self.release_range(start, len)?;
        }
        Ok(())
    }

    /// Refuses a data cluster at `host` that is the header, the L1 table or the
    /// refcount table (only a damaged L2 entry can say so; guest data written there
    /// would damage the image further). L2 tables and refcount blocks are not checked:
    /// that would take a walk over all the tables.
    fn check_not_metadata(&self, host: u64) -> Result<(), String> {
        let overlaps =
            |start: u64, len: u64| host < start + len && start < host + self.cluster_size();
        let l1_bytes = self.l1.len() as u64 * 8;
        let refcount_bytes = self.refcount_table.len() as u64 * 8;
        if host == 0
            || overlaps(self.l1_table_offset, l1_bytes)
            || overlaps(self.refcount_table_offset, refcount_bytes)
        {
            return Err(format!(
                "data cluster at {host:#x} overlaps the image's header or tables"
            ));
        }
        Ok(())
    }

    /// Points the L2 entry for guest offset `pos` at `entry`, making the L2 table if
    /// there is none (`l2` is 0).
    fn map_cluster(&mut self, pos: u64, l2: u64, entry: u64) -> Result<(), String> {
        let cluster_size = self.cluster_size();
        let l2_entries_bits = self.cluster_bits - 3;
        let l2_index = ((pos >> self.cluster_bits) & ((1 << l2_entries_bits) - 1)) as usize;
        if l2 != 0 {
            self.write_host(l2 + l2_index as u64 * 8, &entry.to_be_bytes())?;
            if let Some((at, table)) = &mut self.l2_cache {
                if *at == l2 {
                    table[l2_index] = entry;
                }
            }
            return Ok(());
        }
        // A new L2 table, complete with its entry before the L1 table points to it.
        let table_at = self.take_free_cluster()?;
        let mut table = vec![0u64; (cluster_size / 8) as usize];
        table[l2_index] = entry;
        self.write_host(table_at, &to_bytes(&table))?;
        self.set_refcount(table_at, 1)?;
        let l1_index = (pos >> (self.cluster_bits + l2_entries_bits)) as usize;
        let l1_entry = table_at | COPIED;
        self.write_host(
            self.l1_table_offset + l1_index as u64 * 8,
            &l1_entry.to_be_bytes(),
        )?;
        self.l1[l1_index] = l1_entry;
        self.l2_cache = Some((table_at, table));
        Ok(())
    }

    /// Takes the cluster at the end of the file for a new use (its refcount is set by
    /// the caller once the cluster is written).
    ///
    /// A cluster past the end of the file with a refcount that is not 0 (a stale
    /// count: nothing can be stored there; `qemu-img check` ignores these) is
    /// stepped over and left counted, as qemu's allocator does.
    fn take_free_cluster(&mut self) -> Result<u64, String> {
        let mut at = self.next_free;
        let mut stepped = 0;
        while self.refcount(at)? != 0 {
            stepped += 1;
            if stepped > MAX_STALE_CLUSTERS {
                return Err(format!(
                    "more than {MAX_STALE_CLUSTERS} clusters past the end of the file are counted as used"
                ));
            }
            at += self.cluster_size();
        }
        let end = at + self.cluster_size();
        if end > MAX_OFFSET {
            return Err("the image file would grow too large".into());
        }
        self.next_free = end;
        Ok(at)
    }

    /// Counters per refcount block.
    fn refcount_block_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }

    /// The refcount table index and block entry for host offset `host`.
    fn refcount_position(&self, host: u64) -> (u64, u64) {
        let cluster = host >> self.cluster_bits;
        let entries = self.refcount_block_entries();
        (cluster / entries, cluster % entries)
    }

    /// The refcount block for table index `index`, None if there is none.
    fn refcount_block(&self, index: u64) -> Result<Option<u64>, String> {
        let Some(&entry) = self.refcount_table.get(index as usize) else {
            return Ok(None);
        };
        let block = entry & !511;
        if block == 0 {
            return Ok(None);
        }
        let cluster_size = self.cluster_size();
        let inside = block
            .checked_add(cluster_size)
            .is_some_and(|end| end <= self.file_len);
        if !block.is_multiple_of(cluster_size) || !inside {
            return Err(format!(
                "refcount block at {block:#x} is unaligned or outside the file"
            ));
        }
        Ok(Some(block))
    }

    /// Where counter `entry` of a refcount block is: its first byte in the block, its
    /// width in bytes and, for counters narrower than a byte, its bit shift.
    fn counter_place(&self, entry: u64) -> (u64, usize, u32) {
        let bits = 1u64 << self.refcount_order;
        let bit = entry * bits;
        let width = (bits / 8).max(1) as usize;
        (bit / 8, width, (bit % 8) as u32)
    }

    fn get_counter(&self, bytes: &[u8], shift: u32) -> u64 {
        let bits = 1u32 << self.refcount_order;
        if bits < 8 {
            (u64::from(bytes[0]) >> shift) & ((1 << bits) - 1)
        } else {
            bytes.iter().fold(0, |v, &b| (v << 8) | u64::from(b))
        }
    }

    fn put_counter(&self, bytes: &mut [u8], shift: u32, value: u64) {
        let bits = 1u32 << self.refcount_order;
        if bits < 8 {
            let mask = ((1u8 << bits) - 1) << shift;
            bytes[0] = (bytes[0] & !mask) | (((value as u8) << shift) & mask);
        } else {
            let width = bytes.len();
            bytes.copy_from_slice(&value.to_be_bytes()[8 - width..]);
        }
    }

    /// The refcount of the host cluster at `host`.
    fn refcount(&self, host: u64) -> Result<u64, String> {
        let (index, entry) = self.refcount_position(host);
        let Some(block) = self.refcount_block(index)? else {
            return Ok(0);
        };
        let (at, width, shift) = self.counter_place(entry);
        let mut bytes = [0u8; 8];
        self.file
            .read_exact_at(&mut bytes[..width], block + at)
            .map_err(|e| io_error("cannot read a refcount block", e))?;
        Ok(self.get_counter(&bytes[..width], shift))
    }

    /// Sets the refcount of the host cluster at `host`, making a refcount block (and
    /// a bigger refcount table) if needed.
    fn set_refcount(&mut self, host: u64, value: u64) -> Result<(), String> {
        let (index, entry) = self.refcount_position(host);
        if index >= self.refcount_table.len() as u64 {
            self.grow_refcount_table(index)?;
        }
        let block = match self.refcount_block(index)? {
            Some(block) => block,
            None => self.new_refcount_block(index)?,
        };
        let (at, width, shift) = self.counter_place(entry);
        let mut bytes = [0u8; 8];
        let bytes = &mut bytes[..width];
        if width == 1 {
            // Narrow counters share their byte with others.
            self.file
                .read_exact_at(bytes, block + at)
                .map_err(|e| io_error("cannot read a refcount block", e))?;
        }
        self.put_counter(bytes, shift, value);
        self.write_host(block + at, bytes)
    }

    /// Lowers by one the refcount of the host cluster at `host`.
    fn release(&mut self, host: u64) -> Result<(), String> {
        match self.refcount(host)? {
            0 => Err(format!(
                "cluster {host:#x} is freed but its refcount is already 0"
            )),
            count => self.set_refcount(host, count - 1),
        }
    }

    /// Lowers by one the refcounts of the host clusters `len` bytes at `start` touch.
    fn release_range(&mut self, start: u64, len: u64) -> Result<(), String> {
        let cluster_size = self.cluster_size();
        let first = start & !(cluster_size - 1);
        let last = (start + len - 1) & !(cluster_size - 1);
        let mut host = first;
        while host <= last {
            self.release(host)?;
            host += cluster_size;
        }
        Ok(())
    }

    /// Makes the refcount block for table index `index`, at the end of the file, and
    /// enters it in the table.
    fn new_refcount_block(&mut self, index: u64) -> Result<u64, String> {
        let block = self.take_free_cluster()?;
        let mut contents = vec![0u8; self.cluster_size() as usize];
        let (own_index, own_entry) = self.refcount_position(block);
        // A block usually counts itself; if it lands past what it covers, another
        // block counts it.
        if own_index == index {
            let (at, width, shift) = self.counter_place(own_entry);
            self.put_counter(&mut contents[at as usize..][..width], shift, 1);
        }
        self.write_host(block, &contents)?;
        if own_index != index {
            self.set_refcount(block, 1)?;
        }
        if self.refcount_block(index)?.is_some() {
            return Err("a refcount block was made twice".into());
        }
        let slot = self.refcount_table_offset + index * 8;
        self.write_host(slot, &block.to_be_bytes())?;
        self.refcount_table[index as usize] = block;
        Ok(block)
    }

    /// Replaces the refcount table by a bigger one (at the end of the file) with room
    /// for index `needed`, itself and the refcount blocks that count it.
    fn grow_refcount_table(&mut self, needed: u64) -> Result<(), String> {
        if self.growing_refcount_table {
            return Err("the refcount table grew while growing".into());
        }
        let cluster_size = self.cluster_size();
        let per_cluster = cluster_size / 8;
        let block_covers = self.refcount_block_entries() * cluster_size;
        let start = self.next_free;
        let mut entries = (needed + 1).max(self.refcount_table.len() as u64 * 2);
        let clusters = loop {
            let clusters = entries.div_ceil(per_cluster);
            // A block covers at least 64 clusters, so the table needs at most
            // clusters / 64 + 2 new blocks, and those at most 2 more.
            let end = start + (clusters + clusters / 64 + 4) * cluster_size;
            let covered = end.div_ceil(block_covers);
            if covered <= clusters * per_cluster {
                break clusters;
            }
            entries = covered;
        };
        if clusters * cluster_size > MAX_TABLE_BYTES {
            return Err("the refcount table would grow past 32 MiB".into());
        }
        let old_offset = self.refcount_table_offset;
        let old_clusters = (self.refcount_table.len() as u64 * 8).div_ceil(cluster_size);
        let mut table = self.refcount_table.clone();
        table.resize((clusters * per_cluster) as usize, 0);
        let table_at = self.take_free_cluster()?;
        for i in 1..clusters {
            if self.take_free_cluster()? != table_at + i * cluster_size {
                return Err(
                    "stale refcounts past the end of the file are in the way of a new refcount table".into(),
                );
            }
        }
        self.write_host(table_at, &to_bytes(&table))?;
        // From here the table in memory is the new one, while the header still names
        // the old one: the refcounts of the new table's clusters, and any blocks made
        // for them, go into it before it is switched to.
        self.refcount_table = table;
        self.refcount_table_offset = table_at;
        self.growing_refcount_table = true;
        let mut result = Ok(());
        for i in 0..clusters {
            result = self.set_refcount(table_at + i * cluster_size, 1);
            if result.is_err() {
                break;
            }
        }
        self.growing_refcount_table = false;
        result?;
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&table_at.to_be_bytes());
        fields[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        self.write_header(HEADER_REFCOUNT_TABLE, &fields)?;
        for i in 0..old_clusters {
            self.release(old_offset + i * cluster_size)?;
        }
        Ok(())
    }
}

/// Bits of an L1 entry, of a standard L2 entry and of a refcount table entry that
/// must be 0.
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
const REFCOUNT_TABLE_RESERVED: u64 = 0x1ff;

/// `check` refuses files of more clusters than this (it keeps two counters of two
/// bytes per host cluster).
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;
/// `check` lists at most this many errors, then how many more there were.
const MAX_CHECK_ERRORS: usize = 100;
/// The most internal snapshots, and bytes of extra data per snapshot, accepted.
const MAX_SNAPSHOTS: u32 = 65536;
const MAX_SNAPSHOT_EXTRA: u32 = 1024;
/// The most bytes of snapshot L1 tables `check` reads in all.
const MAX_SNAPSHOT_L1_BYTES: u64 = 4 * MAX_TABLE_BYTES;
/// Bytes of a snapshot table entry before its variable parts.
const SNAPSHOT_ENTRY_LEN: u64 = 40;

/// What `check` counts: the references to each host cluster it finds, and errors.
struct Tally {
    cluster_bits: u32,
    /// The file's length in clusters (a last partial cluster counts).
    clusters: u64,
    /// References found per host cluster (saturating).
    expected: Vec<u16>,
    /// Stored refcounts per host cluster (saturating at u16::MAX, which keeps
    /// "exactly 1" and "more than expected" true for wider counters).
    stored: Vec<u16>,
    errors: Vec<String>,
    more_errors: u64,
    leaked: u64,
}

impl Tally {
    fn error(&mut self, line: String) {
        if self.errors.len() < MAX_CHECK_ERRORS {
            self.errors.push(line);
        } else {
            self.more_errors += 1;
        }
    }

    /// Counts `times` references to every host cluster the `len` bytes at `start`
    /// touch; false (and nothing counted) when some are outside the file.
    fn reference(&mut self, start: u64, len: u64, times: u32) -> bool {
        if len == 0 {
            return true;
        }
        let first = start >> self.cluster_bits;
        let last = match start.checked_add(len - 1) {
            Some(end) => end >> self.cluster_bits,
            None => return false,
        };
        if last >= self.clusters {
            return false;
        }
        let times = u16::try_from(times).unwrap_or(u16::MAX);
        for count in &mut self.expected[first as usize..=last as usize] {
            *count = count.saturating_add(times);
        }
        true
    }

    /// The stored refcount of the host cluster at `host` (inside the file).
    fn stored_at(&self, host: u64) -> u16 {
        self.stored[(host >> self.cluster_bits) as usize]
    }
}

impl Qcow2 {
    fn detail_lines(&self) -> Vec<(&'static str, String)> {
        let compat = if self.version >= 3 { "1.1" } else { "0.10" };
        let mut lines = vec![
            ("compat", compat.to_string()),
            ("cluster size", self.cluster_size().to_string()),
            ("refcount bits", (1u32 << self.refcount_order).to_string()),
        ];
        if let Some(name) = &self.backing_name {
            lines.push(("backing file", String::from_utf8_lossy(name).into_owned()));
        }
        if let Some(format) = &self.backing_format {
            lines.push(("backing file format", format.clone()));
        }
        if self.snapshots > 0 {
            lines.push(("internal snapshots", self.snapshots.to_string()));
        }
        if self.incompatible & INCOMPAT_DIRTY != 0 {
            lines.push(("dirty", "yes".to_string()));
        }
        if self.incompatible & INCOMPAT_CORRUPT != 0 {
            lines.push(("corrupt", "yes".to_string()));
        }
        lines
    }

    /// Makes a new empty image of `size` bytes at `path` (replacing any file there):
    /// variant "v3" (default) or "v2", clusters of `cluster_size` (default 64 KiB),
    /// 16-bit refcounts, and a backing file if given (named as given; a relative name
    /// is relative to the new image's directory). A `size` of 0 with a backing file
    /// takes the backing file's size. Sizes are rounded up to 512 bytes.
    ///
    /// The layout is qemu-img's: the header cluster, the refcount table, refcount
    /// blocks, then the L1 table, every one of those clusters with refcount 1.
    pub fn create(path: &Path, size: u64, options: &CreateOptions) -> Result<(), String> {
        let version: u32 = match options.variant.as_deref() {
            None | Some("v3") => 3,
            Some("v2") => 2,
            Some(other) => {
                return Err(format!(
                    "unknown qcow2 variant {other:?} (variants: v3, v2)"
                ))
            }
        };
        let cluster_size = options.cluster_size.unwrap_or(64 << 10);
        if !cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&cluster_size) {
            return Err(format!(
                "cluster size {cluster_size} is not a power of two from 512 bytes to 2 MiB"
            ));
        }
        let cluster_bits = cluster_size.trailing_zeros();

        let mut size = size;
        let mut backing: Option<(&[u8], &str)> = None;
        if let Some(name) = &options.backing_file {
            let resolved = match path.parent() {
                Some(dir) if name.is_relative() => dir.join(name),
                _ => name.clone(),
            };
            let opened = Self::open_backing(&resolved, None, 1)
                .map_err(|e| format!("cannot open the backing file: {e}"))?;
            let format = match opened {
                Backing::Qcow2(_) => "qcow2",
                Backing::Raw { .. } => "raw",
            };
            if size == 0 {
                size = opened.len();
            }
            let name = name.as_os_str().as_bytes();
            if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
                return Err("the backing file name is empty or too long".into());
            }
            backing = Some((name, format));
        }
        let size = size
            .checked_next_multiple_of(512)
            .filter(|&size| size < MAX_OFFSET)
            .ok_or_else(|| format!("the disk size {size} is too large"))?;

        let l1_entries = size.div_ceil(cluster_size << (cluster_bits - 3));
        let l1_bytes = l1_entries * 8;
        if l1_bytes > MAX_TABLE_BYTES {
            return Err(format!(
                "the disk size {size} needs an L1 table of {l1_bytes} bytes (at most {MAX_TABLE_BYTES}): choose larger clusters"
            ));
        }
        let l1_clusters = l1_bytes.div_ceil(cluster_size);
        // Enough refcount blocks to count every metadata cluster, and table clusters
        // for them (each takes more of the other only at huge L1 tables).
        let per_block = cluster_size * 8 / 16;
        let per_table_cluster = cluster_size / 8;
        let (mut table_clusters, mut blocks) = (1u64, 1u64);
        let total = loop {
            let total = 1 + table_clusters + blocks + l1_clusters;
            let need_blocks = total.div_ceil(per_block);
            let need_table = need_blocks.div_ceil(per_table_cluster);
            if need_blocks <= blocks && need_table <= table_clusters {
                break total;
            }
            blocks = blocks.max(need_blocks);
            table_clusters = table_clusters.max(need_table);
        };
        let table_at = cluster_size;
        let blocks_at = table_at + table_clusters * cluster_size;
        let l1_at = blocks_at + blocks * cluster_size;

        let mut head = vec![0u8; l1_at as usize];
        let put32 = |bytes: &mut [u8], at: usize, v: u32| {
            bytes[at..at + 4].copy_from_slice(&v.to_be_bytes())
        };
        let put64 = |bytes: &mut [u8], at: usize, v: u64| {
            bytes[at..at + 8].copy_from_slice(&v.to_be_bytes())
        };
        head[..4].copy_from_slice(MAGIC);
        put32(&mut head, 4, version);
        put32(&mut head, 20, cluster_bits);
        put64(&mut head, 24, size);
        put32(&mut head, 36, l1_entries as u32);
        put64(&mut head, 40, l1_at);
        put64(&mut head, 48, table_at);
        put32(&mut head, 56, table_clusters as u32);
        let mut at = if version == 3 {
            put32(&mut head, 96, 4);
            put32(&mut head, 100, HEADER_V3_LEN as u32);
            HEADER_V3_LEN
        } else {
            HEADER_V2_LEN
        };
        if let Some((name, format)) = backing {
            // The extensions (the backing format, then the end mark) and the name
            // must all fit in the header cluster.
            let format_len = format.len().div_ceil(8) * 8;
            if at + 8 + format_len + 8 + name.len() > cluster_size as usize {
                return Err("the backing file name does not fit in the header cluster".into());
            }
            put32(&mut head, at, EXT_BACKING_FORMAT);
            put32(&mut head, at + 4, format.len() as u32);
            head[at + 8..at + 8 + format.len()].copy_from_slice(format.as_bytes());
            at += 8 + format_len + 8;
            head[at..at + name.len()].copy_from_slice(name);
            put64(&mut head, 8, at as u64);
            put32(&mut head, 16, name.len() as u32);
        }
        for block in 0..blocks {
            put64(
                &mut head,
                (table_at + block * 8) as usize,
                blocks_at + block * cluster_size,
            );
        }
        for cluster in 0..total {
            head[(blocks_at + cluster * 2) as usize + 1] = 1;
        }

        let file = File::create(path).map_err(|e| format!("cannot create: {e}"))?;
        file.set_len(total * cluster_size)
            .and_then(|()| Storage::write_all_at(&file, &head, 0))
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write: {e}"))
    }

    /// The stored refcounts, into `tally.stored`. Every refcount block is counted as
    /// a reference.
    fn tally_refcounts(&self, tally: &mut Tally) -> Result<(), String> {
        let cluster_size = self.cluster_size();
        let entries = self.refcount_block_entries();
        let mut seen = HashSet::new();
        let mut block_bytes = vec![0u8; cluster_size as usize];
        for (index, &entry) in self.refcount_table.iter().enumerate() {
            if entry & REFCOUNT_TABLE_RESERVED != 0 {
                tally.error(format!(
                    "refcount table entry {index} has reserved bits set: {entry:#x}"
                ));
            }
            let block = entry & !REFCOUNT_TABLE_RESERVED;
            if block == 0 {
                continue;
            }
            if !block.is_multiple_of(cluster_size) {
                tally.error(format!(
                    "refcount block {index} at {block:#x} is not cluster-aligned"
                ));
                continue;
            }
            if !tally.reference(block, cluster_size, 1) {
                tally.error(format!(
                    "refcount block {index} at {block:#x} is outside the file"
                ));
                continue;
            }
            let first = index as u64 * entries;
            if first >= tally.clusters || !seen.insert(block) {
                // Counted twice, so reported by the comparison; its counters were
                // read once.
                continue;
            }
            self.read_host(block, &mut block_bytes)?;
            // Stretches of zero counters (most of a block, often) are skipped.
            let per_chunk = (64 * 8) >> self.refcount_order;
            let chunks = block_bytes.chunks(64).enumerate();
            let used = chunks.filter(|(_, chunk)| chunk.iter().any(|&b| b != 0));
            for entry in used.flat_map(|(i, _)| i as u64 * per_chunk..(i as u64 + 1) * per_chunk) {
                let (at, width, shift) = self.counter_place(entry);
                let value = self.get_counter(&block_bytes[at as usize..][..width], shift);
                let cluster = first + entry;
                // Counters past the end of the file count nothing that can be
                // stored; qemu-img check ignores them, and so does this.
                if cluster < tally.clusters {
                    tally.stored[cluster as usize] = u16::try_from(value).unwrap_or(u16::MAX);
                }
            }
        }
        Ok(())
    }

    /// The snapshot table's L1 tables (offset, entries), counting the table itself.
    fn snapshot_l1_tables(&self, tally: &mut Tally) -> Result<Vec<(u64, u64)>, String> {
        let mut tables = Vec::new();
        if self.snapshots == 0 {
            return Ok(tables);
        }
        let start = self.snapshots_offset;
        if self.snapshots > MAX_SNAPSHOTS || !start.is_multiple_of(self.cluster_size()) {
            tally.error(format!(
                "the snapshot table ({} snapshots at {start:#x}) is too large or misaligned",
                self.snapshots
            ));
            return Ok(tables);
        }
        let mut at = start;
        for i in 0..self.snapshots {
            let mut entry = [0u8; SNAPSHOT_ENTRY_LEN as usize];
            if at
                .checked_add(SNAPSHOT_ENTRY_LEN)
                .is_none_or(|end| end > self.file_len)
            {
                tally.error(format!("snapshot {i} at {at:#x} is outside the file"));
                return Ok(tables);
            }
            self.read_host(at, &mut entry)?;
            let extra = be32(&entry, 36);
            if extra > MAX_SNAPSHOT_EXTRA {
                tally.error(format!("snapshot {i} has {extra} bytes of extra data"));
                return Ok(tables);
            }
            let id_len = u64::from(u16::from_be_bytes([entry[12], entry[13]]));
            let name_len = u64::from(u16::from_be_bytes([entry[14], entry[15]]));
            let len = SNAPSHOT_ENTRY_LEN + u64::from(extra) + id_len + name_len;
            at += len.div_ceil(8) * 8;
            tables.push((be64(&entry, 0), u64::from(be32(&entry, 8))));
        }
        if !tally.reference(start, at - start, 1) {
            tally.error(format!(
                "the snapshot table at {start:#x} is outside the file"
            ));
        }
        Ok(tables)
    }

    /// Compares the refcounts with the references the tables make, like `qemu-img
    /// check`: too low a refcount (or a reference outside the file, or misaligned) is
    /// an error, too high a leak; so is a COPIED flag that disagrees with a refcount
    /// of 1 in the active tables.
    fn check_metadata(&mut self) -> Result<CheckReport, String> {
        let cluster_size = self.cluster_size();
        let file_len = self
            .file
            .size()
            .map_err(|e| io_error("cannot stat the image", e))?;
        self.file_len = self.file_len.max(file_len);
        let clusters = self.file_len.div_ceil(cluster_size);
        if clusters > MAX_CHECK_CLUSTERS {
            return Err(format!(
                "the image has {clusters} clusters, too many to check (at most {MAX_CHECK_CLUSTERS})"
            ));
        }
        let mut tally = Tally {
            cluster_bits: self.cluster_bits,
            clusters,
            expected: vec![0; clusters as usize],
            stored: vec![0; clusters as usize],
            errors: Vec::new(),
            more_errors: 0,
            leaked: 0,
        };
        self.tally_refcounts(&mut tally)?;

        tally.reference(0, cluster_size, 1);
        let l1_bytes = self.l1.len() as u64 * 8;
        if !tally.reference(self.l1_table_offset, l1_bytes, 1) {
            tally.error("the L1 table is outside the file".into());
        }
        let table_bytes = self.refcount_table.len() as u64 * 8;
        if !tally.reference(self.refcount_table_offset, table_bytes, 1) {
            tally.error("the refcount table is outside the file".into());
        }

        // L2 tables and how many L1 entries point to each; the active ones.
        let mut l2_tables: BTreeMap<u64, u32> = BTreeMap::new();
        let mut active = HashSet::new();
        for (i, &entry) in self.l1.iter().enumerate() {
            if entry & L1_RESERVED != 0 {
                tally.error(format!("L1 entry {i} has reserved bits set: {entry:#x}"));
            }
            let l2 = entry & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if !l2.is_multiple_of(cluster_size) {
                tally.error(format!(
                    "L1 entry {i}: the L2 table at {l2:#x} is not cluster-aligned"
                ));
                continue;
            }
            if l2 >= self.file_len {
                tally.error(format!(
                    "L1 entry {i}: the L2 table at {l2:#x} is outside the file"
                ));
                continue;
            }
            let refcount = tally.stored_at(l2);
            if (entry & COPIED != 0) != (refcount == 1) {
                tally.error(format!(
                    "L1 entry {i}: the COPIED flag disagrees with the L2 table's refcount {refcount}"
                ));
            }
            *l2_tables.entry(l2).or_default() += 1;
            active.insert(l2);
        }
        let mut snapshot_l1_bytes = 0;
        for (i, (offset, entries)) in self.snapshot_l1_tables(&mut tally)?.into_iter().enumerate() {
            let bytes = entries * 8;
            snapshot_l1_bytes += bytes;
            if snapshot_l1_bytes > MAX_SNAPSHOT_L1_BYTES {
                return Err("the snapshots' L1 tables are too large to check".into());
            }
            if !offset.is_multiple_of(cluster_size) || !tally.reference(offset, bytes, 1) {
                tally.error(format!(
                    "snapshot {i}: the L1 table at {offset:#x} is misaligned or outside the file"
                ));
                continue;
            }
            let mut raw = vec![0u8; bytes as usize];
            self.read_host(offset, &mut raw)?;
            for (j, entry) in to_entries(&raw).into_iter().enumerate() {
                if entry & L1_RESERVED != 0 {
                    tally.error(format!(
                        "snapshot {i}: L1 entry {j} has reserved bits set: {entry:#x}"
                    ));
                }
                let l2 = entry & OFFSET_MASK;
                if l2 == 0 {
                    continue;
                }
                if !l2.is_multiple_of(cluster_size) || l2 >= self.file_len {
                    tally.error(format!(
                        "snapshot {i}: the L2 table at {l2:#x} is misaligned or outside the file"
                    ));
                    continue;
                }
                *l2_tables.entry(l2).or_default() += 1;
            }
        }

        let mut table = vec![0u8; cluster_size as usize];
        for (&l2, &times) in &l2_tables {
            tally.reference(l2, cluster_size, times);
            self.read_host(l2, &mut table)?;
            let is_active = active.contains(&l2);
            for (j, entry) in to_entries(&table).into_iter().enumerate() {
                self.tally_l2_entry(&mut tally, l2, j, entry, times, is_active);
            }
        }

        for cluster in 0..clusters as usize {
            let (stored, expected) = (tally.stored[cluster], tally.expected[cluster]);
            if stored < expected {
                tally.error(format!(
                    "cluster {cluster} (at {:#x}): refcount {stored}, but {expected} references",
                    (cluster as u64) << self.cluster_bits
                ));
            } else if stored > expected {
                tally.leaked += 1;
            }
        }
        let mut errors = tally.errors;
        if tally.more_errors > 0 {
            errors.push(format!("... and {} more", tally.more_errors));
        }
        Ok(CheckReport {
            errors,
            leaked_clusters: tally.leaked,
        })
    }

    /// Counts what entry `index` of the L2 table at `l2` (pointed to `times` times)
    /// references; checks its COPIED flag if the table is an active one.
    fn tally_l2_entry(
        &self,
        tally: &mut Tally,
        l2: u64,
        index: usize,
        entry: u64,
        times: u32,
        is_active: bool,
    ) {
        let cluster_size = self.cluster_size();
        let place = |what: &str| format!("L2 table at {l2:#x}, entry {index}: {what}");
        if entry & COMPRESSED != 0 {
            if entry & COPIED != 0 {
                tally.error(place("a compressed cluster has the COPIED flag"));
            }
            let offset_bits = 62 - (self.cluster_bits - 8);
            let start = entry & ((1 << offset_bits) - 1);
            let sectors = ((entry & !(COPIED | COMPRESSED)) >> offset_bits) + 1;
            let len = sectors * 512 - (start & 511);
            if !tally.reference(start, len, times) {
                tally.error(place(&format!(
                    "the compressed cluster at {start:#x} is outside the file"
                )));
            }
            return;
        }
        if entry & L2_RESERVED != 0 {
            tally.error(place(&format!("reserved bits set: {entry:#x}")));
        }
        let host = entry & OFFSET_MASK;
        if host == 0 {
            return;
        }
        if !host.is_multiple_of(cluster_size) {
            tally.error(place(&format!(
                "the data cluster at {host:#x} is not cluster-aligned"
            )));
            return;
        }
        if !tally.reference(host, cluster_size, times) {
            tally.error(place(&format!(
                "the data cluster at {host:#x} is outside the file"
            )));
            return;
        }
        let refcount = tally.stored_at(host);
        if is_active && (entry & COPIED != 0) != (refcount == 1) {
            tally.error(place(&format!(
                "the COPIED flag disagrees with the data cluster's refcount {refcount}"
            )));
        }
    }
}

impl DiskFormat for Qcow2 {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.check_range(offset, buf.len())?;
        let cluster_size = self.cluster_size();
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let room = cluster_size - (pos & (cluster_size - 1));
            let n = (buf.len() - done).min(room as usize);
            let cluster = self.locate(pos)?.1;
            self.read_cluster(cluster, pos, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Writes, allocating clusters as needed (fails on a read-only image).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        if let Some(why) = &self.read_only {
            return Err(why.clone());
        }
        self.check_range(offset, data.len())?;
        let result = self.write_clusters(offset, data);
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
        self.file
            .sync()
            .map_err(|e| io_error("cannot flush the image", e))
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        self.detail_lines()
    }

    fn check(&mut self) -> Result<CheckReport, String> {
        self.check_metadata()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        check_spans, have_qemu_img, read_all, run, run_ok, varied_contents, Rng, Scratch,
    };
    use crate::MemStorage;
    use std::fs;

    fn convert(dir: &Scratch, raw: &str, image: &str, options: &[&str]) {
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[raw, image]);
        run_ok(dir, "qemu-img", &args);
    }

    #[test]
    fn qcow2_reads_images_made_by_qemu_img() {
        if !have_qemu_img("qcow2_reads_images_made_by_qemu_img") {
            return;
        }
        let dir = Scratch::new("read");
        let raw = varied_contents(8 << 20, 1);
        fs::write(dir.path("disk.raw"), &raw).unwrap();
        let variants: &[(&str, &[&str])] = &[
            ("v3.qcow2", &[]),
            ("v2.qcow2", &["-o", "compat=0.10"]),
            ("small.qcow2", &["-o", "cluster_size=4096"]),
            ("large.qcow2", &["-o", "cluster_size=2M"]),
            ("compressed.qcow2", &["-c", "-o", "cluster_size=4096"]),
            ("compressed-512.qcow2", &["-c", "-o", "cluster_size=512"]),
            ("compressed-v2.qcow2", &["-c", "-o", "compat=0.10"]),
        ];
        for &(name, options) in variants {
            convert(&dir, "disk.raw", name, options);
            let mut image = Qcow2::open(&dir.path(name), false).expect(name);
            assert_eq!(image.len(), raw.len() as u64, "{name}");
            assert!(
                read_all(&mut image) == raw,
                "{name}: the whole image differs"
            );
            check_spans(&mut image, &raw, 2, name);
            assert!(
                image.write_at(0, &[1]).is_err(),
                "{name}: written read-only"
            );
            let mut two = [0u8; 2];
            assert!(image.read_at(raw.len() as u64 - 1, &mut two).is_err());
        }
        let head = fs::read(dir.path("v3.qcow2")).unwrap();
        assert!(Qcow2::probe(&head[..4]));
        assert!(!Qcow2::probe(&raw[..4]));
    }

    #[test]
    fn qcow2_reads_through_backing_files() {
        if !have_qemu_img("qcow2_reads_through_backing_files") {
            return;
        }
        let dir = Scratch::new("backing");
        let mut expected = varied_contents(4 << 20, 3);
        fs::write(dir.path("base.raw"), &expected).unwrap();
        convert(&dir, "base.raw", "base.qcow2", &["-o", "cluster_size=4096"]);
        run_ok(
            &dir,
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "overlay.qcow2",
            ],
        );
        run_ok(
            &dir,
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0xab 1M 64k",
                "-c",
                "write -P 0xcd 3000 5000",
                "-c",
                "write -z 2M 128k",
                "overlay.qcow2",
            ],
        );
        expected[1 << 20..(1 << 20) + (64 << 10)].fill(0xab);
        expected[3000..8000].fill(0xcd);
        expected[2 << 20..(2 << 20) + (128 << 10)].fill(0);
        let mut overlay = Qcow2::open(&dir.path("overlay.qcow2"), false).unwrap();
        assert!(read_all(&mut overlay) == expected, "overlay differs");
        check_spans(&mut overlay, &expected, 4, "overlay");

        // Three deep, the top one found by its absolute path.
        let middle = dir.path("overlay.qcow2");
        run_ok(
            &dir,
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                middle.to_str().unwrap(),
                "-F",
                "qcow2",
                "top.qcow2",
            ],
        );
        run_ok(
            &dir,
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x77 512 1k", "top.qcow2"],
        );
        expected[512..1536].fill(0x77);
        let mut top = Qcow2::open(&dir.path("top.qcow2"), false).unwrap();
        assert!(read_all(&mut top) == expected, "three-deep chain differs");

        // A raw backing file shorter than the disk: zeros past its end.
        run_ok(
            &dir,
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                "big.qcow2",
                "6M",
            ],
        );
        run_ok(
            &dir,
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x11 5M 4k", "big.qcow2"],
        );
        let mut expected = fs::read(dir.path("base.raw")).unwrap();
        expected.resize(6 << 20, 0);
        expected[5 << 20..(5 << 20) + 4096].fill(0x11);
        let mut big = Qcow2::open(&dir.path("big.qcow2"), false).unwrap();
        assert_eq!(big.len(), 6 << 20);
        assert!(read_all(&mut big) == expected, "raw-backed image differs");
    }

    /// Applies `count` writes of up to `max_len` bytes (patterns, noise or zeros) to
    /// both `image` and `expected`, reading back now and then.
    fn random_writes(
        image: &mut Qcow2,
        expected: &mut [u8],
        seed: u64,
        count: usize,
        max_len: u64,
    ) {
        let mut rng = Rng(seed);
        let size = expected.len() as u64;
        for i in 0..count {
            let len = 1 + rng.below(max_len) as usize;
            let at = rng.below(size - len as u64) as usize;
            let data: Vec<u8> = match rng.below(3) {
                0 => vec![0; len],
                1 => (0..len).map(|j| (i + j / 512) as u8).collect(),
                _ => (0..len).map(|_| rng.next() as u8).collect(),
            };
            image.write_at(at as u64, &data).expect("write");
            expected[at..at + len].copy_from_slice(&data);
            if i % 16 == 0 {
                let len = 1 + rng.below(max_len) as usize;
                let at = rng.below(size - len as u64) as usize;
                let mut buf = vec![0u8; len];
                image.read_at(at as u64, &mut buf).expect("read back");
                assert!(
                    buf == expected[at..at + len],
                    "read back at {at:#x} differs"
                );
            }
        }
        image.flush().expect("flush");
    }

    /// `qemu-img check` finds no errors or leaks in `image`, `qemu-img compare` finds
    /// it equal to `expected`, and so does this module.
    fn check_and_compare(dir: &Scratch, image: &str, expected: &[u8]) {
        run_ok(dir, "qemu-img", &["check", image]);
        fs::write(dir.path("expected.raw"), expected).unwrap();
        run_ok(
            dir,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qcow2", "expected.raw", image],
        );
        let mut reopened = Qcow2::open(&dir.path(image), false).unwrap();
        assert!(
            read_all(&mut reopened) == expected,
            "{image}: reopened differs"
        );
        assert_clean(&mut reopened, image);
    }

    /// This module's check finds no errors and no leaks.
    fn assert_clean(image: &mut Qcow2, what: &str) {
        let report = image
            .check()
            .unwrap_or_else(|e| panic!("{what}: check: {e}"));
        assert_eq!(report, CheckReport::default(), "{what}: check");
    }

    #[test]
    fn qcow2_writes_pass_qemu_img_check_and_compare() {
        if !have_qemu_img("qcow2_writes_pass_qemu_img_check_and_compare") {
            return;
        }
        let dir = Scratch::new("write");
        let size = 64usize << 20;
        let variants: &[(&str, &str)] = &[
            ("v2-512.qcow2", "compat=0.10,cluster_size=512"),
            ("v3-4k.qcow2", "cluster_size=4096"),
            ("v3-512-refcount1.qcow2", "cluster_size=512,refcount_bits=1"),
            (
                "v3-512-refcount64.qcow2",
                "cluster_size=512,refcount_bits=64",
            ),
        ];
        for (seed, &(name, options)) in variants.iter().enumerate() {
            run_ok(
                &dir,
                "qemu-img",
                &["create", "-f", "qcow2", "-o", options, name, "64M"],
            );
            let mut expected = vec![0u8; size];
            let mut image = Qcow2::open(&dir.path(name), true).expect(name);
            let table_clusters = image.refcount_table.len() as u64 * 8 / image.cluster_size();
            random_writes(&mut image, &mut expected, 10 + seed as u64, 300, 64 << 10);
            // One table cluster covers 8 MiB (16-bit) or 2 MiB (64-bit) of 512-byte clusters.
            if options.contains("cluster_size=512") && !options.contains("refcount_bits=1") {
                let grown = image.refcount_table.len() as u64 * 8 / image.cluster_size();
                assert!(
                    grown > table_clusters,
                    "{name}: the refcount table did not grow"
                );
            }
            drop(image);
            check_and_compare(&dir, name, &expected);
        }
    }

    #[test]
    fn qcow2_writes_into_compressed_zeroed_and_backed_images() {
        if !have_qemu_img("qcow2_writes_into_compressed_zeroed_and_backed_images") {
            return;
        }
        let dir = Scratch::new("rewrite");
        let contents = varied_contents(8 << 20, 5);
        fs::write(dir.path("disk.raw"), &contents).unwrap();

        convert(
            &dir,
            "disk.raw",
            "compressed.qcow2",
            &["-c", "-o", "cluster_size=4096"],
        );
        let mut expected = contents.clone();
        let mut image = Qcow2::open(&dir.path("compressed.qcow2"), true).unwrap();
        let packed = (0..contents.len() as u64)
            .step_by(4096)
            .filter(|&at| matches!(image.locate(at).unwrap().1, Cluster::Compressed { .. }))
            .count();
        assert!(packed > 100, "only {packed} compressed clusters");
        random_writes(&mut image, &mut expected, 20, 150, 20_000);
        drop(image);
        check_and_compare(&dir, "compressed.qcow2", &expected);

        // Zeroed clusters that keep their host cluster, and ones that do not.
        convert(
            &dir,
            "disk.raw",
            "zeroed.qcow2",
            &["-o", "cluster_size=4096"],
        );
        run_ok(
            &dir,
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -z 1M 64k",
                "-c",
                "write -z -u 3M 64k",
                "zeroed.qcow2",
            ],
        );
        let mut expected = contents.clone();
        expected[1 << 20..(1 << 20) + (64 << 10)].fill(0);
        expected[3 << 20..(3 << 20) + (64 << 10)].fill(0);
        let mut image = Qcow2::open(&dir.path("zeroed.qcow2"), true).unwrap();
        assert!(read_all(&mut image) == expected, "zeroed image differs");
        let kept = image.locate((1 << 20) + 8192).unwrap().1;
        assert!(
            matches!(kept, Cluster::ZeroAllocated(_)),
            "write -z freed the clusters"
        );
        let unmapped = image.locate(3 << 20).unwrap().1;
        assert!(
            matches!(unmapped, Cluster::Zero),
            "write -z -u kept the clusters"
        );
        for at in [(1 << 20) + 100, (1 << 20) + 8192, (3 << 20) + 4000] {
            image.write_at(at as u64, &[0xee; 300]).unwrap();
            expected[at..at + 300].fill(0xee);
        }
        random_writes(&mut image, &mut expected, 21, 50, 20_000);
        drop(image);
        check_and_compare(&dir, "zeroed.qcow2", &expected);

        convert(&dir, "disk.raw", "base.qcow2", &[]);
        run_ok(
            &dir,
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "overlay.qcow2",
            ],
        );
        run_ok(
            &dir,
            "qemu-io",
            &["-f", "qcow2", "-c", "write -z 2M 128k", "overlay.qcow2"],
        );
        let mut expected = contents.clone();
        expected[2 << 20..(2 << 20) + (128 << 10)].fill(0);
        let mut image = Qcow2::open(&dir.path("overlay.qcow2"), true).unwrap();
        random_writes(&mut image, &mut expected, 22, 150, 20_000);
        drop(image);
        check_and_compare(&dir, "overlay.qcow2", &expected);
        let base = Qcow2::open(&dir.path("base.qcow2"), false).map(|mut b| read_all(&mut b));
        assert!(base.unwrap() == contents, "the backing file changed");
    }

    /// Reads the first 2 MiB of `image`, in 64 KiB pieces (errors are fine).
    fn read_some(image: &mut Qcow2) {
        let len = image.len().min(2 << 20);
        let mut buf = vec![0u8; 64 << 10];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            let _ = image.read_at(at, &mut buf[..n]);
            at += n as u64;
        }
    }

    /// Writes 9000 bytes at five places of `image` (errors are fine).
    fn write_some(image: &mut Qcow2) {
        let len = image.len();
        for (i, at) in [0, 5000, 300_000, len / 2, len.saturating_sub(9000)]
            .iter()
            .enumerate()
        {
            let _ = image.write_at(*at, &[i as u8 + 1; 9000]);
        }
        let _ = image.flush();
    }

    /// Opens `bytes` in memory through `from_storage`, read-only then writable, and
    /// reads, checks, writes and checks again; errors are fine, panics are not.
    fn exercise_in_memory(bytes: &[u8]) {
        let storage = |bytes: &[u8]| Box::new(MemStorage::new(bytes.to_vec(), 16 << 20));
        if let Ok(mut image) = Qcow2::from_storage(storage(bytes), false) {
            let _ = image.details();
            let _ = image.check();
            read_some(&mut image);
        }
        if let Ok(mut image) = Qcow2::from_storage(storage(bytes), true) {
            write_some(&mut image);
            let _ = image.check();
        }
    }

    /// Opens `path` read-only and writable and uses it; errors are fine, panics are not.
    fn exercise(path: &Path) {
        if let Ok(mut image) = Qcow2::open(path, false) {
            read_some(&mut image);
            let _ = image.check();
        }
        if let Ok(mut image) = Qcow2::open(path, true) {
            write_some(&mut image);
            let _ = image.check();
        }
    }

    fn put_be64(bytes: &mut [u8], at: usize, value: u64) {
        bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
    }

    #[test]
    fn qcow2_hostile_images_give_errors_not_panics() {
        if !have_qemu_img("qcow2_hostile_images_give_errors_not_panics") {
            return;
        }
        let dir = Scratch::new("hostile");
        fs::write(dir.path("disk.raw"), varied_contents(1 << 20, 7)).unwrap();
        convert(
            &dir,
            "disk.raw",
            "plain.qcow2",
            &["-o", "cluster_size=4096"],
        );
        convert(
            &dir,
            "disk.raw",
            "packed.qcow2",
            &["-c", "-o", "cluster_size=4096"],
        );
        let plain = fs::read(dir.path("plain.qcow2")).unwrap();
        let packed = fs::read(dir.path("packed.qcow2")).unwrap();
        // Internal snapshots (their table and L1 tables are near the end of the file).
        convert(&dir, "disk.raw", "snap.qcow2", &["-o", "cluster_size=4096"]);
        run_ok(&dir, "qemu-img", &["snapshot", "-c", "one", "snap.qcow2"]);
        run_ok(
            &dir,
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x42 0 100k", "snap.qcow2"],
        );
        run_ok(&dir, "qemu-img", &["snapshot", "-c", "two", "snap.qcow2"]);
        let snap = fs::read(dir.path("snap.qcow2")).unwrap();
        let bad = dir.path("bad.qcow2");

        for image in [&plain, &packed] {
            for len in [
                0,
                3,
                4,
                50,
                71,
                72,
                103,
                104,
                4096,
                8192,
                20_000,
                image.len() / 2,
                image.len() - 1,
            ] {
                fs::write(&bad, &image[..len.min(image.len())]).unwrap();
                exercise(&bad);
                exercise_in_memory(&image[..len.min(image.len())]);
            }
        }

        let mut wide = plain.clone();
        wide[20..24].copy_from_slice(&40u32.to_be_bytes());
        fs::write(&bad, &wide).unwrap();
        let err = Qcow2::open(&bad, false)
            .err()
            .expect("cluster_bits 40 accepted");
        assert!(err.contains("cluster_bits"), "{err}");

        let past_end = (plain.len() as u64 + (1 << 20)) & !4095;
        let mut far_l1 = plain.clone();
        put_be64(&mut far_l1, 40, past_end);
        fs::write(&bad, &far_l1).unwrap();
        assert!(
            Qcow2::open(&bad, false).is_err(),
            "L1 table past the end accepted"
        );

        let l1_offset = be64(&plain, 40) as usize;
        let l2_offset = (be64(&plain, l1_offset) & OFFSET_MASK) as usize;
        assert_ne!(l2_offset, 0);
        let mut far_data = plain.clone();
        put_be64(&mut far_data, l2_offset, past_end | COPIED);
        fs::write(&bad, &far_data).unwrap();
        let mut image = Qcow2::open(&bad, true).unwrap();
        let mut buf = [0u8; 512];
        assert!(
            image.read_at(0, &mut buf).is_err(),
            "data past the end read"
        );
        assert!(
            image.write_at(0, &buf).is_err(),
            "data past the end written"
        );
        assert!(image.read_at(4096, &mut buf).is_ok());
        drop(image);

        let mut onto_l1 = plain.clone();
        put_be64(&mut onto_l1, l2_offset, l1_offset as u64 | COPIED);
        fs::write(&bad, &onto_l1).unwrap();
        let mut image = Qcow2::open(&bad, true).unwrap();
        let err = image
            .write_at(0, &buf)
            .expect_err("data written over the L1 table");
        assert!(err.contains("overlaps"), "{err}");
        drop(image);

        // An image that is its own backing file.
        let mut selfish = plain.clone();
        let name = b"bad.qcow2";
        selfish[0xc00..0xc00 + name.len()].copy_from_slice(name);
        put_be64(&mut selfish, 8, 0xc00);
        selfish[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        fs::write(&bad, &selfish).unwrap();
        let err = Qcow2::open(&bad, false)
            .err()
            .expect("endless chain accepted");
        assert!(err.contains("deep"), "{err}");
        let err = Qcow2::from_storage(Box::new(MemStorage::new(selfish, 16 << 20)), false)
            .err()
            .expect("a backing file opened from memory");
        assert!(err.contains("in memory"), "{err}");

        // The undamaged images in memory: equal to the file, and consistent.
        let contents = fs::read(dir.path("disk.raw")).unwrap();
        for image in [&plain, &packed] {
            let storage = MemStorage::new(image.clone(), 16 << 20);
            let mut image = Qcow2::from_storage(Box::new(storage), true).unwrap();
            assert!(read_all(&mut image) == contents, "in memory: differs");
            assert_clean(&mut image, "in memory");
            let mut expected = contents.clone();
            random_writes(&mut image, &mut expected, 98, 40, 20_000);
            assert!(
                read_all(&mut image) == expected,
                "in memory: written differs"
            );
            assert_clean(&mut image, "in memory, written");
        }

        // Random damage to the header and tables (in the first clusters), and anywhere
        // in the compressed image.
        let mut rng = Rng(99);
        for round in 0..1800 {
            let (image, span) = match round % 3 {
                0 => (&plain, plain.len().min(8 * 4096)),
                1 => (&packed, packed.len()),
                _ => (&snap, snap.len()),
            };
            let mut damaged = image.clone();
            for _ in 0..1 + rng.below(3) {
                let mut at = rng.below(span.min(8 * 4096) as u64) as usize;
                if round % 3 == 2 && rng.below(2) == 0 {
                    at = span - 1 - rng.below(span.min(16 * 4096) as u64) as usize;
                } else if round % 3 == 1 {
                    at = rng.below(span as u64) as usize;
                }
                damaged[at] ^= 1 << rng.below(8);
            }
            fs::write(&bad, &damaged).unwrap();
            exercise(&bad);
            exercise_in_memory(&damaged);
        }
    }

    /// `qemu-img check`'s verdict: 0 clean, 2 errors, 3 leaks only.
    fn qemu_img_verdict(dir: &Scratch, image: &str) -> i32 {
        let out = run(dir, "qemu-img", &["check", image]);
        out.status.code().unwrap_or(-1)
    }

    /// This module's verdict in `qemu-img check`'s terms.
    fn verdict(report: &CheckReport) -> i32 {
        if !report.errors.is_empty() {
            2
        } else if report.leaked_clusters > 0 {
            3
        } else {
            0
        }
    }

    fn check_file(path: &Path) -> CheckReport {
        let mut image = Qcow2::open(path, false).expect("open");
        image.check().expect("check")
    }

    #[test]
    fn qcow2_check_finds_qemu_img_images_clean() {
        if !have_qemu_img("qcow2_check_finds_qemu_img_images_clean") {
            return;
        }
        let dir = Scratch::new("check");
        let raw = varied_contents(4 << 20, 11);
        fs::write(dir.path("disk.raw"), &raw).unwrap();
        let variants: &[(&str, &[&str])] = &[
            ("v3.qcow2", &[]),
            ("v2.qcow2", &["-o", "compat=0.10,cluster_size=4096"]),
            ("compressed.qcow2", &["-c", "-o", "cluster_size=4096"]),
            ("compressed-512.qcow2", &["-c", "-o", "cluster_size=512"]),
            (
                "refcount1.qcow2",
                &["-o", "cluster_size=512,refcount_bits=1"],
            ),
        ];
        for &(name, options) in variants {
            convert(&dir, "disk.raw", name, options);
            let report = check_file(&dir.path(name));
            assert_eq!(report, CheckReport::default(), "{name}");
        }

        // An overlay with writes of its own.
        run_ok(
            &dir,
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                "v3.qcow2",
                "-F",
                "qcow2",
                "overlay.qcow2",
            ],
        );
        run_ok(
            &dir,
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0x3c 1M 200k",
                "overlay.qcow2",
            ],
        );
        let mut overlay = Qcow2::open(&dir.path("overlay.qcow2"), false).unwrap();
        assert_clean(&mut overlay, "overlay");
        let details = overlay.details();
        assert!(details.contains(&("backing file", "v3.qcow2".to_string())));
        assert!(details.contains(&("backing file format", "qcow2".to_string())));
        assert!(details.contains(&("compat", "1.1".to_string())));

        // Internal snapshots, with writes between them (copy-on-write of shared L2
        // tables and data clusters) and one deleted.
        for (name, options) in [
            ("snap.qcow2", "cluster_size=4096"),
            ("snap-v2.qcow2", "compat=0.10,cluster_size=65536"),
        ] {
            convert(&dir, "disk.raw", name, &["-o", options]);
            run_ok(&dir, "qemu-img", &["snapshot", "-c", "one", name]);
            run_ok(
                &dir,
                "qemu-io",
                &["-f", "qcow2", "-c", "write -P 0x42 0 300k", name],
            );
            run_ok(&dir, "qemu-img", &["snapshot", "-c", "two", name]);
            run_ok(
                &dir,
                "qemu-io",
                &["-f", "qcow2", "-c", "write -P 0x43 100k 300k", name],
            );
            run_ok(&dir, "qemu-img", &["snapshot", "-c", "three", name]);
            run_ok(&dir, "qemu-img", &["snapshot", "-d", "two", name]);
            assert_eq!(qemu_img_verdict(&dir, name), 0, "{name}: qemu-img check");
            let mut image = Qcow2::open(&dir.path(name), false).unwrap();
            assert_clean(&mut image, name);
            assert!(
                image
                    .details()
                    .contains(&("internal snapshots", "2".to_string())),
                "{name}: {:?}",
                image.details()
            );
            let mut expected = raw.clone();
            expected[..300 << 10].fill(0x42);
            expected[100 << 10..400 << 10].fill(0x43);
            assert!(read_all(&mut image) == expected, "{name}: differs");
        }
    }

    /// Where the 16-bit refcount of the host cluster at `host` is in `image`.
    fn refcount_place(image: &[u8], host: u64, cluster_bits: u32) -> usize {
        let table = be64(image, 48) as usize;
        let per_block = 1u64 << (cluster_bits + 3 - 4);
        let cluster = host >> cluster_bits;
        let block = be64(image, table + (cluster / per_block) as usize * 8) as usize;
        assert_ne!(block, 0);
        block + (cluster % per_block) as usize * 2
    }

    #[test]
    fn qcow2_check_agrees_with_qemu_img_on_damage() {
        if !have_qemu_img("qcow2_check_agrees_with_qemu_img_on_damage") {
            return;
        }
        let dir = Scratch::new("damage");
        fs::write(dir.path("disk.raw"), varied_contents(1 << 20, 7)).unwrap();
        convert(
            &dir,
            "disk.raw",
            "plain.qcow2",
            &["-o", "cluster_size=4096"],
        );
        let plain = fs::read(dir.path("plain.qcow2")).unwrap();
        let l1 = be64(&plain, 40) as usize;
        let l2 = (be64(&plain, l1) & OFFSET_MASK) as usize;
        let data: Vec<usize> = (0..512)
            .filter(|&i| be64(&plain, l2 + i * 8) & OFFSET_MASK != 0)
            .collect();
        assert!(data.len() > 10, "too few data clusters");
        let host = |i: usize| be64(&plain, l2 + data[i] * 8) & OFFSET_MASK;

        let mut cases: Vec<(&str, Vec<u8>, i32)> = vec![("undamaged", plain.clone(), 0)];

        let mut no_refcount = plain.clone();
        let at = refcount_place(&plain, host(0), 12);
        no_refcount[at..at + 2].fill(0);
        cases.push(("a data cluster with refcount 0", no_refcount, 2));

        let mut onto_header = plain.clone();
        // A compressed cluster of one sector at byte 0x200 of the header cluster.
        put_be64(&mut onto_header, l2 + data[1] * 8, COMPRESSED | 0x200);
        cases.push(("a compressed cluster in the header", onto_header, 2));

        let mut onto_refcounts = plain.clone();
        let table = be64(&plain, 48);
        put_be64(&mut onto_refcounts, l2 + data[1] * 8, table | COPIED);
        cases.push(("a data cluster on the refcount table", onto_refcounts, 2));

        let mut twice = plain.clone();
        put_be64(&mut twice, l2 + data[2] * 8, host(3) | COPIED);
        cases.push(("a data cluster used twice", twice, 2));

        let mut no_copied = plain.clone();
        put_be64(&mut no_copied, l2 + data[4] * 8, host(4));
        cases.push(("a data cluster without COPIED", no_copied, 2));

        let mut leak = plain.clone();
        let end = leak.len().div_ceil(4096) * 4096;
        leak.resize(end + 4096, 0x99);
        let at = refcount_place(&leak, end as u64, 12);
        leak[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        cases.push(("a leaked cluster", leak, 3));

        // A stale refcount past the end of the file: ignored, until a write steps over
        // it and it is inside the file, used by nothing.
        let mut stale = plain.clone();
        let end = stale.len().div_ceil(4096) * 4096;
        let at = refcount_place(&stale, end as u64, 12);
        stale[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        cases.push(("a stale refcount past the end", stale.clone(), 0));
        let path = dir.path("stale.qcow2");
        fs::write(&path, &stale).unwrap();
        let hole = (0..256)
            .find(|&i| be64(&plain, l2 + i * 8) == 0)
            .expect("an unallocated cluster");
        let mut image = Qcow2::open(&path, true).unwrap();
        image.write_at(hole as u64 * 4096, &[0x12; 4096]).unwrap();
        drop(image);
        cases.push(("a stale refcount stepped over", fs::read(&path).unwrap(), 3));

        for (what, bytes, expected) in cases {
            let path = dir.path("damaged.qcow2");
            fs::write(&path, &bytes).unwrap();
            let report = check_file(&path);
            let qemu = qemu_img_verdict(&dir, "damaged.qcow2");
            assert_eq!(qemu, expected, "{what}: qemu-img check");
            assert_eq!(verdict(&report), expected, "{what}: {report:?}");
            if expected == 3 {
                assert!(report.leaked_clusters >= 1, "{what}");
            }
            let storage = MemStorage::new(bytes, 16 << 20);
            let mut image = Qcow2::from_storage(Box::new(storage), false).unwrap();
            assert_eq!(image.check().unwrap(), report, "{what}: in memory");
        }
    }

    /// The JSON `qemu-img info` prints about `image`, without white space.
    fn qemu_img_info(dir: &Scratch, image: &str) -> String {
        let out = run(dir, "qemu-img", &["info", "--output=json", image]);
        assert!(out.status.success(), "qemu-img info {image}");
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect()
    }

    #[test]
    fn qcow2_create_makes_images_qemu_img_accepts() {
        if !have_qemu_img("qcow2_create_makes_images_qemu_img_accepts") {
            return;
        }
        let dir = Scratch::new("create");
        let size = 6usize << 20;
        let base = varied_contents(size, 31);
        fs::write(dir.path("base.raw"), &base).unwrap();
        convert(&dir, "base.raw", "base.qcow2", &["-o", "cluster_size=4096"]);

        let mut seed = 40;
        for variant in ["v3", "v2"] {
            for cluster_size in [512u64, 4096, 65536, 2 << 20] {
                for backing in [None, Some("base.qcow2"), Some("base.raw")] {
                    seed += 1;
                    let name = format!(
                        "{variant}-{cluster_size}-{}.qcow2",
                        backing.map_or("alone", |b| &b[5..])
                    );
                    let options = CreateOptions {
                        variant: Some(variant.to_string()),
                        cluster_size: Some(cluster_size),
                        backing_file: backing.map(PathBuf::from),
                    };
                    // With a backing file, the size is the backing file's.
                    let asked = if backing.is_some() { 0 } else { size as u64 };
                    Qcow2::create(&dir.path(&name), asked, &options).expect(&name);
                    assert_eq!(qemu_img_verdict(&dir, &name), 0, "{name}: qemu-img check");

                    let info = qemu_img_info(&dir, &name);
                    let compat = if variant == "v3" { "1.1" } else { "0.10" };
                    let mut fields = vec![
                        format!("\"virtual-size\":{size}"),
                        format!("\"cluster-size\":{cluster_size}"),
                        format!("\"compat\":\"{compat}\""),
                        "\"format\":\"qcow2\"".to_string(),
                    ];
                    if let Some(backing) = backing {
                        let format = &backing[5..];
                        fields.push(format!("\"backing-filename\":\"{backing}\""));
                        fields.push(format!("\"backing-filename-format\":\"{format}\""));
                    } else {
                        assert!(!info.contains("backing-filename"), "{name}: {info}");
                    }
                    for field in fields {
                        assert!(info.contains(&field), "{name}: no {field} in {info}");
                    }

                    let mut expected = match backing {
                        Some(_) => base.clone(),
                        None => vec![0u8; size],
                    };
                    let mut image = Qcow2::open(&dir.path(&name), true).expect(&name);
                    assert_eq!(image.len(), size as u64, "{name}");
                    assert_clean(&mut image, &name);
                    let details = image.details();
                    assert!(details.contains(&("compat", compat.to_string())), "{name}");
                    assert!(
                        details.contains(&("cluster size", cluster_size.to_string())),
                        "{name}"
                    );
                    assert!(details.contains(&("refcount bits", "16".to_string())));
                    if let Some(backing) = backing {
                        assert!(read_all(&mut image) == expected, "{name}: not the backing");
                        let format = if backing.ends_with("raw") {
                            "raw"
                        } else {
                            "qcow2"
                        };
                        run_ok(
                            &dir,
                            "qemu-img",
                            &["compare", "-f", format, "-F", "qcow2", backing, &name],
                        );
                        assert!(details.contains(&("backing file", backing.to_string())));
                    }
                    let count = if cluster_size == 512 { 150 } else { 60 };
                    random_writes(&mut image, &mut expected, seed, count, 40_000);
                    assert_clean(&mut image, &name);
                    drop(image);
                    check_and_compare(&dir, &name, &expected);
                }
            }
        }

        // Sizes are rounded up to 512 bytes; a big disk with small clusters has a
        // many-cluster L1 table and several refcount blocks.
        let options = CreateOptions {
            cluster_size: Some(512),
            ..CreateOptions::default()
        };
        Qcow2::create(&dir.path("odd.qcow2"), 1000, &options).unwrap();
        assert_eq!(qemu_img_verdict(&dir, "odd.qcow2"), 0);
        assert!(qemu_img_info(&dir, "odd.qcow2").contains("\"virtual-size\":1024"));
        Qcow2::create(&dir.path("wide.qcow2"), 64 << 30, &options).unwrap();
        assert_eq!(qemu_img_verdict(&dir, "wide.qcow2"), 0);
        let mut wide = Qcow2::open(&dir.path("wide.qcow2"), true).unwrap();
        assert_clean(&mut wide, "wide");
        wide.write_at(40 << 30, &[7; 5000]).unwrap();
        assert_clean(&mut wide, "wide, written");
        drop(wide);
        assert_eq!(qemu_img_verdict(&dir, "wide.qcow2"), 0);
        Qcow2::create(&dir.path("empty.qcow2"), 0, &CreateOptions::default()).unwrap();
        assert_eq!(qemu_img_verdict(&dir, "empty.qcow2"), 0);

        for (variant, cluster_size) in [("v4", None), ("v3", Some(1000)), ("v2", Some(4 << 20))] {
            let options = CreateOptions {
                variant: Some(variant.to_string()),
                cluster_size,
                backing_file: None,
            };
            let err = Qcow2::create(&dir.path("refused.qcow2"), 1 << 20, &options)
                .expect_err("bad options accepted");
            assert!(!err.contains('\n'), "{err}");
        }
        let options = CreateOptions {
            backing_file: Some(PathBuf::from("missing.raw")),
            ..CreateOptions::default()
        };
        assert!(Qcow2::create(&dir.path("orphan.qcow2"), 0, &options).is_err());
    }
}
