//! Arbitrary bytes as a VDI image: open, read, write, check; nothing may panic.
#![no_main]

use hospes_image::{self as image, vdi::Vdi};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = image::MemStorage::new(data.to_vec(), image::FUZZ_STORAGE_LIMIT);
    if let Ok(mut disk) = Vdi::from_storage(Box::new(storage), true) {
        image::exercise(&mut disk, data);
    }
});
