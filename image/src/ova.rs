//! OVA appliances: a tar archive holding an OVF descriptor (XML: the virtual
//! hardware) and the disk images it names, usually streamOptimized VMDK.
//!
//! The disks are read where they lie in the archive (tar stores members whole and
//! uncompressed), so running an appliance copies nothing; they are read-only there
//! (`hospes img import-ova` converts them into images of their own).
//!
//! From the OVF this reads the name, memory and CPU count and which disks the
//! hardware attaches, in the order it lists them; the rest (network cards, sound,
//! USB, controllers' models) hospes has its own fixed versions of.

use super::{DiskFormat, Storage};
use std::fs::File;
use std::io;
use std::path::Path;

/// The largest OVF descriptor read (they are a few KiB).
const MAX_OVF_BYTES: u64 = 4 << 20;
/// The most archive members looked at.
const MAX_MEMBERS: usize = 10_000;

/// What an appliance's OVF asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appliance {
    /// The virtual system's name (its `Name`, or `ovf:id`).
    pub name: Option<String>,
    pub memory_mib: Option<u64>,
    pub cpus: Option<u64>,
    /// The disks' file names in the archive, in the order the hardware attaches them.
    pub disks: Vec<String>,
}

/// One member of the archive: where its bytes are.
struct Member {
    name: String,
    offset: u64,
    len: u64,
}

/// The archive's regular files (names as stored, without a leading "./").
fn members(path: &Path) -> Result<Vec<Member>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| format!("{}: not a tar archive: {e}", path.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: a damaged tar archive: {e}", path.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if out.len() == MAX_MEMBERS {
            return Err(format!(
                "{}: more than {MAX_MEMBERS} files in the archive",
                path.display()
            ));
        }
        let name = entry
            .path()
            .map_err(|e| format!("{}: a member's name: {e}", path.display()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        out.push(Member {
            name,
            offset: entry.raw_file_position(),
            len: entry.size(),
        });
    }
    Ok(out)
}

/// The first child element of `node` with this local name.
fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
}

/// An attribute by local name, whatever its namespace.
fn attribute<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name() == name)
        .map(|a| a.value())
}

/// Bytes per unit of an OVF allocation unit ("byte * 2^20", "MegaBytes", "GB" ...).
fn unit_bytes(units: &str) -> Option<u64> {
    let u = units.trim();
    if let Some(power) = u.strip_prefix("byte").map(str::trim) {
        if power.is_empty() {
            return Some(1);
        }
        let exp = power.strip_prefix('*')?.trim().strip_prefix("2^")?;
        let exp: u32 = exp.trim().parse().ok()?;
        return 1u64.checked_shl(exp).filter(|_| exp < 63);
    }
    match u.to_ascii_lowercase().as_str() {
        "kilobytes" | "kb" => Some(1 << 10),
        "megabytes" | "mb" => Some(1 << 20),
        "gigabytes" | "gb" => Some(1 << 30),
        _ => None,
    }
}

/// Reads an OVF descriptor's text.
pub fn parse_ovf(text: &str) -> Result<Appliance, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("the OVF descriptor: {e}"))?;
    let root = doc.root_element();
    let element = |name: &'static str| {
        root.descendants()
            .filter(move |n| n.tag_name().name() == name)
    };
    // File id -> href; disk id -> file id.
    let files: Vec<(String, String)> = element("File")
        .filter_map(|f| Some((attribute(f, "id")?.into(), attribute(f, "href")?.into())))
        .collect();
    for f in element("File") {
        if attribute(f, "compression").is_some_and(|c| !c.is_empty() && c != "identity") {
            return Err(
                "the appliance's disks are compressed (ovf:compression): not supported".into(),
            );
        }
    }
    let disk_file = |disk_id: &str| -> Option<String> {
        let disk = element("Disk").find(|d| attribute(*d, "diskId") == Some(disk_id))?;
        let file_ref = attribute(disk, "fileRef")?;
        files
            .iter()
            .find(|(id, _)| id == file_ref)
            .map(|(_, href)| href.clone())
    };
    let system = element("VirtualSystem").next();
    let name =
        system.and_then(|s| child_text(s, "Name").or_else(|| attribute(s, "id").map(String::from)));
    let mut appliance = Appliance {
        name,
        memory_mib: None,
        cpus: None,
        disks: Vec::new(),
    };
    let hardware = element("VirtualHardwareSection").next();
    let items = hardware
        .into_iter()
        .flat_map(|h| h.children())
        .filter(|n| n.is_element() && matches!(n.tag_name().name(), "Item" | "StorageItem"));
    for item in items {
        let kind: u32 = match child_text(item, "ResourceType").and_then(|t| t.parse().ok()) {
            Some(k) => k,
            None => continue,
        };
        let quantity = child_text(item, "VirtualQuantity").and_then(|t| t.parse::<u64>().ok());
        match kind {
            3 => appliance.cpus = quantity,
            4 => {
                let units = child_text(item, "AllocationUnits").unwrap_or("MegaBytes".into());
                let bytes = unit_bytes(&units)
                    .ok_or_else(|| format!("the OVF's memory is in unknown units {units:?}"))?;
                appliance.memory_mib = quantity.and_then(|q| q.checked_mul(bytes)).map(|b| b >> 20);
            }
            17 => {
                let resource = child_text(item, "HostResource").unwrap_or_default();
                let id = resource.rsplit('/').next().unwrap_or_default();
                let file = disk_file(id).ok_or_else(|| {
                    format!("the OVF's disk drive names {resource:?}, which is not among its disks and files")
                })?;
                appliance.disks.push(file);
            }
            _ => {}
        }
    }
    if appliance.disks.is_empty() {
        // No hardware section naming them: the disks in the order listed.
        for disk in element("Disk") {
            if let Some(file) = attribute(disk, "diskId").and_then(disk_file) {
                appliance.disks.push(file);
            }
        }
    }
    Ok(appliance)
}

impl Appliance {
    /// Reads the OVF descriptor of an OVA file (its first `.ovf` member).
    pub fn read(path: &Path) -> Result<Appliance, String> {
        let members = members(path)?;
        let ovf = members
            .iter()
            .find(|m| m.name.to_ascii_lowercase().ends_with(".ovf"))
            .ok_or_else(|| format!("{}: no .ovf descriptor in the archive", path.display()))?;
        if ovf.len > MAX_OVF_BYTES {
            return Err(format!(
                "{}: the OVF descriptor is too large",
                path.display()
            ));
        }
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut bytes = vec![0u8; ovf.len as usize];
        file.read_exact_at(&mut bytes, ovf.offset)
            .map_err(|e| format!("{}: cannot read the OVF: {e}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{}: the OVF descriptor is not UTF-8 text", path.display()))?;
        let appliance = parse_ovf(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for disk in &appliance.disks {
            if !members.iter().any(|m| &m.name == disk) {
                return Err(format!(
                    "{}: the disk {disk:?} is not in the archive",
                    path.display()
                ));
            }
        }
        Ok(appliance)
    }
}

/// Whether a file is an OVA archive: a tar (the "ustar" magic at 257) whose first
/// member is an OVF descriptor, as the format requires.
pub fn probe(head: &[u8]) -> bool {
    head.len() >= 263
        && &head[257..262] == b"ustar"
        && head[..100]
            .split(|&b| b == 0)
            .next()
            .is_some_and(|name| name.to_ascii_lowercase().ends_with(b".ovf"))
}

/// Part of a file, read-only: a member of an archive.
struct Slice {
    file: File,
    start: u64,
    len: u64,
}

impl Storage for Slice {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.file.read_exact_at(buf, self.start + offset),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other(
            "a disk inside an OVA archive is read-only",
        ))
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::other(
            "a disk inside an OVA archive is read-only",
        ))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the disk image `name` inside the OVA at `path`, read-only, where it lies.
pub fn open_disk(path: &Path, name: &str) -> Result<Box<dyn DiskFormat>, String> {
    let member = members(path)?
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| format!("{}: no {name:?} in the archive", path.display()))?;
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let slice = Slice {
        file,
        start: member.offset,
        len: member.len,
    };
    super::from_storage(Box::new(slice), false)
        .map_err(|e| format!("{} ({name}): {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
    <File ovf:id="file1" ovf:href="appliance-disk1.vmdk"/>
    <File ovf:id="file2" ovf:href="appliance-disk2.vmdk"/>
  </References>
  <DiskSection>
    <Disk ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk2" ovf:fileRef="file2"/>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>
  </DiskSection>
  <VirtualSystem ovf:id="debian">
    <Name>Debian test</Name>
    <VirtualHardwareSection>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>384</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

    #[test]
    fn an_ovf_gives_memory_cpus_and_the_disks_in_hardware_order() {
        let a = parse_ovf(OVF).expect("parse");
        assert_eq!(a.name.as_deref(), Some("Debian test"));
        assert_eq!(a.memory_mib, Some(384));
        assert_eq!(a.cpus, Some(2));
        assert_eq!(a.disks, ["appliance-disk1.vmdk", "appliance-disk2.vmdk"]);
        let gib = OVF.replace(
            "<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>",
            "<rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits>",
        );
        assert_eq!(parse_ovf(&gib).expect("parse").memory_mib, Some(384 << 10));
    }

    #[test]
    fn broken_ovfs_give_one_line_errors() {
        let dangling = OVF.replace("/disk/vmdisk1", "/disk/nothing");
        let compressed = OVF.replace(
            "ovf:href=\"appliance-disk1.vmdk\"",
            "ovf:href=\"appliance-disk1.vmdk\" ovf:compression=\"gzip\"",
        );
        let units = OVF.replace("byte * 2^20</rasd:Alloc", "furlongs</rasd:Alloc");
        for text in [&OVF[..300], "", "<a>", &dangling, &compressed, &units] {
            let e = parse_ovf(text).expect_err("an error");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
