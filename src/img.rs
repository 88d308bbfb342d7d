//! `hospes img`: look at, make, convert and check disk images (as `qemu-img` does),
//! and import OVA appliances.

use hospes_image::{self as image, ova::Appliance, CreateOptions, DiskFormat};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum ImgCommand {
    /// Show an image's format, sizes and format details.
    Info {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The format, when it should not be found from the content.
        #[arg(short = 'f', long = "format", value_name = "FMT")]
        format: Option<String>,
    },
    /// Make a new image of zeros.
    Create {
        /// raw, qcow2, vmdk or vdi.
        #[arg(
            short = 'f',
            long = "format",
            value_name = "FMT",
            default_value = "qcow2"
        )]
        format: String,
        /// Format options, comma-separated: subformat=... (VMDK: monolithicSparse,
        /// monolithicFlat), static=on (VDI), compat=0.10|1.1 and cluster_size=N (qcow2).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Option<String>,
        /// A qcow2 backing file (the new image starts as its copy).
        #[arg(short = 'b', long = "backing", value_name = "FILE")]
        backing: Option<PathBuf>,
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The virtual size: bytes, or with a suffix K, M, G, T (powers of 1024);
        /// with a backing file it may be left out.
        #[arg(value_name = "SIZE")]
        size: Option<String>,
    },
    /// Copy an image into a new one of another format (zero blocks are left sparse).
    Convert {
        /// The source's format, when it should not be found from the content.
        #[arg(short = 'f', value_name = "FMT")]
        source_format: Option<String>,
        /// The new image's format: raw, qcow2, vmdk or vdi.
        #[arg(short = 'O', value_name = "FMT", default_value = "raw")]
        output_format: String,
        /// Format options of the new image (as for create).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Option<String>,
        #[arg(value_name = "SOURCE")]
        source: PathBuf,
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// Check an image's metadata: exit 0 when clean, 2 when corrupt, 3 when it only
    /// leaks space (as `qemu-img check`).
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(short = 'f', long = "format", value_name = "FMT")]
        format: Option<String>,
    },
    /// Convert an OVA appliance's disks into images of their own, and print the
    /// `hospes run` command that boots them with the appliance's memory.
    ImportOva {
        #[arg(value_name = "OVA")]
        ova: PathBuf,
        /// The images' format.
        #[arg(short = 'O', value_name = "FMT", default_value = "qcow2")]
        output_format: String,
        /// Where the images go (default: beside the OVA).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Runs an `img` command; the exit code on success (check's 2 and 3 included).
pub fn run(command: ImgCommand) -> Result<u8, String> {
    match command {
        ImgCommand::Info { file, format } => info(&file, format.as_deref()).map(|_| 0),
        ImgCommand::Create {
            format,
            options,
            backing,
            file,
            size,
        } => {
            let mut opts = parse_options(options.as_deref())?;
            opts.backing_file = backing;
            let size = match size {
                Some(s) => parse_size(&s)?,
                None if opts.backing_file.is_some() => 0,
                None => return Err("img create: the size is missing".into()),
            };
            image::create(&file, &format, size, &opts)?;
            println!("Formatting '{}', fmt={format} size={size}", file.display());
            Ok(0)
        }
        ImgCommand::Convert {
            source_format,
            output_format,
            options,
            source,
            output,
        } => {
            let opts = parse_options(options.as_deref())?;
            let mut from = image::open(&source, false, source_format.as_deref())?;
            convert(from.as_mut(), &output, &output_format, &opts)?;
            Ok(0)
        }
        ImgCommand::Check { file, format } => check(&file, format.as_deref()),
        ImgCommand::ImportOva {
            ova,
            output_format,
            dir,
        } => import_ova(&ova, &output_format, dir).map(|_| 0),
    }
}

/// A size such as `512`, `64K`, `10G` or `1.5G` (binary multiples).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size (bytes, or a number with K, M, G or T)");
    let t = text.trim().trim_end_matches(['b', 'B']);
    let (number, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_shl(shift)
            .filter(|v| v >> shift == n)
            .ok_or_else(bad);
    }
    let f: f64 = number.parse().map_err(|_| bad())?;
    let bytes = f * (1u64 << shift) as f64;
    if !(0.0..9.0e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `-o` options as qemu-img spells them.
fn parse_options(text: Option<&str>) -> Result<CreateOptions, String> {
    let mut opts = CreateOptions::default();
    for part in text
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = part.split_once('=').unwrap_or((part, "on"));
        match key {
            "subformat" => opts.variant = Some(value.to_string()),
            "static" | "preallocation" => {
                if matches!(value, "on" | "full" | "falloc") {
                    opts.variant = Some("static".into());
                }
            }
            "compat" => {
                opts.variant = Some(match value {
                    "0.10" | "v2" => "v2".into(),
                    "1.1" | "v3" => "v3".into(),
                    _ => return Err(format!("unknown qcow2 compat level {value:?}")),
                })
            }
            "cluster_size" => opts.cluster_size = Some(parse_size(value)?),
            "backing_file" => opts.backing_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown image option {key:?}")),
        }
    }
    Ok(opts)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.3} {}", UNITS[unit])
    }
}

fn info(path: &Path, format: Option<&str>) -> Result<(), String> {
    let image = image::open(path, false, format)?;
    let disk_size = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .map(|m| m.blocks() * 512)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
    };
    println!("image: {}", path.display());
    println!("file format: {}", image.format_name());
    println!(
        "virtual size: {} ({} bytes)",
        human(image.len()),
        image.len()
    );
    println!("disk size: {}", human(disk_size));
    for (name, value) in image.details() {
        println!("{name}: {value}");
    }
    Ok(())
}

fn check(path: &Path, format: Option<&str>) -> Result<u8, String> {
    let mut image = image::open(path, false, format)?;
    let report = image.check()?;
    for error in &report.errors {
        println!("ERROR {error}");
    }
    if report.leaked_clusters > 0 {
        println!(
            "{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
            report.leaked_clusters
        );
    }
    if !report.errors.is_empty() {
        println!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
            report.errors.len()
        );
        return Ok(2);
    }
    if report.leaked_clusters > 0 {
        return Ok(3);
    }
    println!("No errors were found on the image.");
    Ok(0)
}

/// The unit `convert` copies in.
const CHUNK: usize = 1 << 20;

/// Copies `from` into a new image at `output`; a failed copy removes what it made.
fn convert(
    from: &mut dyn DiskFormat,
    output: &Path,
    format: &str,
    options: &CreateOptions,
) -> Result<(), String> {
    if std::fs::exists(output).unwrap_or(false) {
        return Err(format!(
            "{} exists: convert writes a new image (remove it first)",
            output.display()
        ));
    }
    let size = from.len();
    image::create(output, format, size, options)?;
    let copied = copy_into(from, output);
    if copied.is_err() {
        // The partial image is of no use; the files a format makes beside it
        // (a flat VMDK's extent) are named in the error if they stay.
        let _ = std::fs::remove_file(output);
    }
    copied
}

fn copy_into(from: &mut dyn DiskFormat, output: &Path) -> Result<(), String> {
    let mut to = image::open(output, true, None)?;
    let size = from.len();
    let bar = progress_bar(size);
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        from.read_at(at, &mut buf[..n])
            .map_err(|e| format!("reading at byte {at}: {e}"))?;
        // A new image reads as zeros: zero blocks stay unallocated.
        if buf[..n].iter().any(|&b| b != 0) {
            to.write_at(at, &buf[..n])
                .map_err(|e| format!("{}: writing at byte {at}: {e}", output.display()))?;
        }
        at += n as u64;
        bar.set_position(at);
    }
    to.flush()
        .map_err(|e| format!("{}: {e}", output.display()))?;
    bar.finish_and_clear();
    Ok(())
}

/// A bar on stderr (drawn only when it is a terminal).
fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn import_ova(ova: &Path, format: &str, dir: Option<PathBuf>) -> Result<(), String> {
    let appliance = Appliance::read(ova)?;
    if appliance.disks.is_empty() {
        return Err(format!("{}: the appliance has no disks", ova.display()));
    }
    let dir = dir.unwrap_or_else(|| {
        ova.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    });
    let stem = ova
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "appliance".into());
    let mut outputs = Vec::new();
    for (i, name) in appliance.disks.iter().enumerate() {
        let output = dir.join(format!("{stem}-disk{}.{format}", i + 1));
        let mut from = image::ova::open_disk(ova, name)?;
        eprintln!("{name} -> {}", output.display());
        convert(from.as_mut(), &output, format, &CreateOptions::default())?;
        outputs.push(output);
    }
    let mut command = String::from("hospes run");
    if let Some(mib) = appliance.memory_mib {
        command += &format!(" -m {mib}");
    }
    for (output, flag) in outputs.iter().zip(["--hda", "--hdb"]) {
        command += &format!(" {flag} {}", output.display());
    }
    if let Some(name) = &appliance.name {
        println!("appliance: {name}");
    }
    if let Some(cpus) = appliance.cpus.filter(|&n| n > 1) {
        println!("(it asks for {cpus} CPUs; hospes runs one)");
    }
    if outputs.len() > 2 {
        println!("(hospes attaches two hard disks: the others are left out of the command)");
    }
    println!("{command}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_qemu_img_reads_them() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "x", "10Q", "-1", "99999999999T", "1e30"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_map_to_create_options() {
        let o = parse_options(Some("subformat=monolithicFlat")).expect("ok");
        assert_eq!(o.variant.as_deref(), Some("monolithicFlat"));
        let o = parse_options(Some("compat=0.10,cluster_size=4k")).expect("ok");
        assert_eq!(
            (o.variant.as_deref(), o.cluster_size),
            (Some("v2"), Some(4096))
        );
        assert_eq!(
            parse_options(Some("static=on"))
                .expect("ok")
                .variant
                .as_deref(),
            Some("static")
        );
        assert!(parse_options(Some("colour=blue")).is_err());
    }
}
