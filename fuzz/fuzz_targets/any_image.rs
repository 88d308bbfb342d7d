//! Arbitrary bytes as whatever image format they look like (found from content, as
//! `hospes run` does): open, read, write, check; nothing may panic.
#![no_main]

use hospes_image as image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = image::MemStorage::new(data.to_vec(), image::FUZZ_STORAGE_LIMIT);
    if let Ok(mut disk) = image::from_storage(Box::new(storage), true) {
        image::exercise(disk.as_mut(), data);
    }
});
