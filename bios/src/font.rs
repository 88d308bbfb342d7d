//! The BIOS fonts: code page 437 in 8x8 and 8x16 cells, as VGA text modes and the
//! INT 10h/1130h, INT 1Fh and INT 43h pointers expect them (one byte per scan line, the
//! leftmost pixel in bit 7).
//!
//! The glyphs come from the public-domain `font8x8` set, looked up by each code page 437
//! character's Unicode equivalent. The few symbols that set lacks (the control-range
//! pictures, some mathematical signs) are drawn here. The 8x16 font doubles each 8x8
//! scan line, which keeps box-drawing characters joined from one row to the next.

use font8x8::legacy::{
    BASIC_LEGACY, BLOCK_LEGACY, BOX_LEGACY, GREEK_LEGACY, LATIN_LEGACY, MISC_LEGACY,
};

/// Unicode for each code page 437 byte (0 draws blank).
#[rustfmt::skip]
const CP437: [u16; 256] = [
    0x0000, 0x263A, 0x263B, 0x2665, 0x2666, 0x2663, 0x2660, 0x2022,
    0x25D8, 0x25CB, 0x25D9, 0x2642, 0x2640, 0x266A, 0x266B, 0x263C,
    0x25BA, 0x25C4, 0x2195, 0x203C, 0x00B6, 0x00A7, 0x25AC, 0x21A8,
    0x2191, 0x2193, 0x2192, 0x2190, 0x221F, 0x2194, 0x25B2, 0x25BC,
    0x0020, 0x0021, 0x0022, 0x0023, 0x0024, 0x0025, 0x0026, 0x0027,
    0x0028, 0x0029, 0x002A, 0x002B, 0x002C, 0x002D, 0x002E, 0x002F,
    0x0030, 0x0031, 0x0032, 0x0033, 0x0034, 0x0035, 0x0036, 0x0037,
    0x0038, 0x0039, 0x003A, 0x003B, 0x003C, 0x003D, 0x003E, 0x003F,
    0x0040, 0x0041, 0x0042, 0x0043, 0x0044, 0x0045, 0x0046, 0x0047,
    0x0048, 0x0049, 0x004A, 0x004B, 0x004C, 0x004D, 0x004E, 0x004F,
    0x0050, 0x0051, 0x0052, 0x0053, 0x0054, 0x0055, 0x0056, 0x0057,
    0x0058, 0x0059, 0x005A, 0x005B, 0x005C, 0x005D, 0x005E, 0x005F,
    0x0060, 0x0061, 0x0062, 0x0063, 0x0064, 0x0065, 0x0066, 0x0067,
    0x0068, 0x0069, 0x006A, 0x006B, 0x006C, 0x006D, 0x006E, 0x006F,
    0x0070, 0x0071, 0x0072, 0x0073, 0x0074, 0x0075, 0x0076, 0x0077,
    0x0078, 0x0079, 0x007A, 0x007B, 0x007C, 0x007D, 0x007E, 0x2302,
    0x00C7, 0x00FC, 0x00E9, 0x00E2, 0x00E4, 0x00E0, 0x00E5, 0x00E7,
    0x00EA, 0x00EB, 0x00E8, 0x00EF, 0x00EE, 0x00EC, 0x00C4, 0x00C5,
    0x00C9, 0x00E6, 0x00C6, 0x00F4, 0x00F6, 0x00F2, 0x00FB, 0x00F9,
    0x00FF, 0x00D6, 0x00DC, 0x00A2, 0x00A3, 0x00A5, 0x20A7, 0x0192,
    0x00E1, 0x00ED, 0x00F3, 0x00FA, 0x00F1, 0x00D1, 0x00AA, 0x00BA,
    0x00BF, 0x2310, 0x00AC, 0x00BD, 0x00BC, 0x00A1, 0x00AB, 0x00BB,
    0x2591, 0x2592, 0x2593, 0x2502, 0x2524, 0x2561, 0x2562, 0x2556,
    0x2555, 0x2563, 0x2551, 0x2557, 0x255D, 0x255C, 0x255B, 0x2510,
    0x2514, 0x2534, 0x252C, 0x251C, 0x2500, 0x253C, 0x255E, 0x255F,
    0x255A, 0x2554, 0x2569, 0x2566, 0x2560, 0x2550, 0x256C, 0x2567,
    0x2568, 0x2564, 0x2565, 0x2559, 0x2558, 0x2552, 0x2553, 0x256B,
    0x256A, 0x2518, 0x250C, 0x2588, 0x2584, 0x258C, 0x2590, 0x2580,
    0x03B1, 0x00DF, 0x0393, 0x03C0, 0x03A3, 0x03C3, 0x00B5, 0x03C4,
    0x03A6, 0x0398, 0x03A9, 0x03B4, 0x221E, 0x03C6, 0x03B5, 0x2229,
    0x2261, 0x00B1, 0x2265, 0x2264, 0x2320, 0x2321, 0x00F7, 0x2248,
    0x00B0, 0x2219, 0x00B7, 0x221A, 0x207F, 0x00B2, 0x25A0, 0x00A0,
];

/// The characters `font8x8` has no glyph for, drawn as 8 rows of 8 pixels ('#' = on).
const DRAWN: [(u16, &str); 37] = [
    (
        0x263A,
        ".######.|#......#|#.#..#.#|#......#|#.####.#|#..##..#|#......#|.######.",
    ),
    (
        0x263B,
        ".######.|########|##.##.##|########|##....##|###..###|########|.######.",
    ),
    (
        0x2665,
        ".##.##..|########|########|########|.######.|..####..|...##...|........",
    ),
    (
        0x2666,
        "...##...|..####..|.######.|########|.######.|..####..|...##...|........",
    ),
    (
        0x2663,
        "..####..|..####..|##.##.##|########|##.##.##|...##...|..####..|........",
    ),
    (
        0x2660,
        "...##...|..####..|.######.|########|########|.##.##..|...##...|..####..",
    ),
    (
        0x2022,
        "........|........|...##...|..####..|..####..|...##...|........|........",
    ),
    (
        0x25D8,
        "########|########|###..###|##....##|##....##|###..###|########|########",
    ),
    (
        0x25CB,
        "........|..####..|.##..##.|.#....#.|.#....#.|.##..##.|..####..|........",
    ),
    (
        0x25D9,
        "########|##....##|#..##..#|#.####.#|#.####.#|#..##..#|##....##|########",
    ),
    (
        0x2642,
        "....####|.....###|....####|.####.##|##..##..|##..##..|##..##..|.####...",
    ),
    (
        0x2640,
        "..####..|.##..##.|.##..##.|.##..##.|..####..|...##...|.######.|...##...",
    ),
    (
        0x266A,
        "..######|..##..##|..######|..##....|..##....|.###....|####....|###.....",
    ),
    (
        0x266B,
        ".#######|.##...##|.#######|.##...##|.##...##|.##..###|###..##.|##......",
    ),
    (
        0x263C,
        "#..##..#|.#.##.#.|..####..|###..###|###..###|..####..|.#.##.#.|#..##..#",
    ),
    (
        0x25BA,
        "#.......|###.....|#####...|#######.|#####...|###.....|#.......|........",
    ),
    (
        0x25C4,
        "......#.|....###.|..#####.|#######.|..#####.|....###.|......#.|........",
    ),
    (
        0x2195,
        "...##...|..####..|.######.|...##...|...##...|.######.|..####..|...##...",
    ),
    (
        0x203C,
        ".##..##.|.##..##.|.##..##.|.##..##.|.##..##.|........|.##..##.|........",
    ),
    (
        0x25AC,
        "........|........|........|........|.######.|.######.|.######.|........",
    ),
    (
        0x21A8,
        "...##...|..####..|.######.|...##...|.######.|..####..|...##...|########",
    ),
    (
        0x2191,
        "...##...|..####..|.######.|...##...|...##...|...##...|...##...|........",
    ),
    (
        0x2193,
        "...##...|...##...|...##...|...##...|.######.|..####..|...##...|........",
    ),
    (
        0x2192,
        "........|...##...|....##..|#######.|....##..|...##...|........|........",
    ),
    (
        0x2190,
        "........|..##....|.##.....|#######.|.##.....|..##....|........|........",
    ),
    (
        0x221F,
        "........|........|##......|##......|##......|#######.|........|........",
    ),
    (
        0x2194,
        "........|..#..#..|.##..##.|########|.##..##.|..#..#..|........|........",
    ),
    (
        0x25B2,
        "........|...##...|..####..|.######.|########|########|........|........",
    ),
    (
        0x25BC,
        "........|########|########|.######.|..####..|...##...|........|........",
    ),
    (
        0x2302,
        "........|...#....|..###...|.##.##..|##...##.|##...##.|#######.|........",
    ),
    (
        0x221E,
        "........|........|.##.##..|#..#..#.|#..#..#.|.##.##..|........|........",
    ),
    (
        0x2229,
        "..####..|.##..##.|##....##|##....##|##....##|##....##|##....##|........",
    ),
    (
        0x2261,
        "........|#######.|........|#######.|........|#######.|........|........",
    ),
    (
        0x2248,
        "........|.###..#.|#...##..|........|.###..#.|#...##..|........|........",
    ),
    (
        0x2219,
        "........|........|........|...##...|...##...|........|........|........",
    ),
    (
        0x221A,
        "....####|....##..|....##..|....##..|###.##..|.##.##..|..###...|...##...",
    ),
    (
        0x207F,
        "##.##...|.##.##..|.##.##..|.##.##..|........|........|........|........",
    ),
];

/// `font8x8` rows have the leftmost pixel in bit 0; VGA fonts in bit 7.
fn vga_rows(rows: [u8; 8]) -> [u8; 8] {
    rows.map(u8::reverse_bits)
}

/// The 8x8 glyph of a Unicode character, if there is one.
fn glyph(c: u16) -> Option<[u8; 8]> {
    let table = |t: &[[u8; 8]], first: u16| t.get(c.checked_sub(first)? as usize).copied();
    if c == 0x2320 || c == 0x2321 {
        // Integral halves: the top hook, or the bottom one, on a vertical bar.
        let top = [0x0E, 0x1B, 0x1B, 0x18, 0x18, 0x18, 0x18, 0x18];
        return Some(if c == 0x2320 {
            top
        } else {
            let mut b = top;
            b.reverse();
            b
        });
    }
    if c == 0x25A0 {
        return Some([0, 0, 0x3C, 0x3C, 0x3C, 0x3C, 0, 0]);
    }
    if let Some(&(_, art)) = DRAWN.iter().find(|(u, _)| *u == c) {
        let mut rows = [0u8; 8];
        for (row, line) in rows.iter_mut().zip(art.split('|')) {
            for (x, px) in line.bytes().enumerate().take(8) {
                if px == b'#' {
                    *row |= 0x80 >> x;
                }
            }
        }
        return Some(rows);
    }
    let legacy = match c {
        0x0000..=0x007F => table(&BASIC_LEGACY, 0),
        0x00A0..=0x00FF => table(&LATIN_LEGACY, 0xA0),
        0x0390..=0x03C9 => table(&GREEK_LEGACY, 0x390),
        0x2500..=0x257F => table(&BOX_LEGACY, 0x2500),
        0x2580..=0x259F => table(&BLOCK_LEGACY, 0x2580),
        // font8x8's miscellaneous set, in its own order.
        0x20A7 => Some(MISC_LEGACY[0]),
        0x0192 => Some(MISC_LEGACY[1]),
        0x2310 => Some(MISC_LEGACY[4]),
        0x2264 => Some(MISC_LEGACY[5]),
        0x2265 => Some(MISC_LEGACY[6]),
        _ => None,
    }?;
    Some(vga_rows(legacy))
}

/// Code page 437 in 8x8 cells: 256 glyphs of 8 bytes.
pub fn font_8x8() -> Vec<u8> {
    CP437
        .iter()
        .flat_map(|&c| glyph(c).unwrap_or([0; 8]))
        .collect()
}

/// Code page 437 in 8x16 cells: 256 glyphs of 16 bytes.
pub fn font_8x16() -> Vec<u8> {
    font_8x8()
        .chunks(8)
        .flat_map(|g| g.iter().flat_map(|&row| [row, row]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(font: &[u8], height: usize, ch: u8) -> &[u8] {
        &font[ch as usize * height..][..height]
    }

    #[test]
    fn every_printable_character_has_a_glyph() {
        let f = font_8x8();
        assert_eq!(f.len(), 2048);
        for ch in 1..=255u8 {
            if ch == b' ' || ch == 0xFF {
                continue;
            }
            assert!(
                rows_of(&f, 8, ch).iter().any(|&r| r != 0),
                "character {ch:#04x} (U+{:04X}) is blank",
                CP437[ch as usize]
            );
        }
        assert!(rows_of(&f, 8, b' ').iter().all(|&r| r == 0));
    }

    #[test]
    fn glyph_shapes() {
        let f = font_8x8();
        // A full block and a horizontal double line span the whole cell width.
        assert!(rows_of(&f, 8, 0xDB).iter().all(|&r| r == 0xFF));
        assert!(rows_of(&f, 8, 0xCD).contains(&0xFF));
        // 'L' has its stem on the left (the bit 7 side after conversion) and its foot
        // along the bottom.
        let l = rows_of(&f, 8, b'L');
        assert!(
            l[..4].iter().all(|&r| r & 0x60 != 0 && r & 0x0F == 0),
            "{l:02x?}"
        );
        assert_eq!(l[6], 0xFE, "{l:02x?}");
        // The 8x16 font doubles every line.
        let tall = font_8x16();
        assert_eq!(tall.len(), 4096);
        let a16 = rows_of(&tall, 16, b'A');
        let a8 = rows_of(&f, 8, b'A');
        for (i, &r) in a16.iter().enumerate() {
            assert_eq!(r, a8[i / 2]);
        }
    }
}
