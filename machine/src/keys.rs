//! Keys by name, as PS/2 scan code set 2 make codes (E0xxh for the extended keys): the
//! one table behind the window's keyboard and the monitor's `sendkey`. The names are
//! QEMU's (`sendkey ctrl-alt-delete` means the same in both).

/// Every key hospes can press, by name.
const KEYS: &[(&str, u16)] = &[
    ("esc", 0x76),
    ("f1", 0x05),
    ("f2", 0x06),
    ("f3", 0x04),
    ("f4", 0x0C),
    ("f5", 0x03),
    ("f6", 0x0B),
    ("f7", 0x83),
    ("f8", 0x0A),
    ("f9", 0x01),
    ("f10", 0x09),
    ("f11", 0x78),
    ("f12", 0x07),
    ("grave_accent", 0x0E),
    ("1", 0x16),
    ("2", 0x1E),
    ("3", 0x26),
    ("4", 0x25),
    ("5", 0x2E),
    ("6", 0x36),
    ("7", 0x3D),
    ("8", 0x3E),
    ("9", 0x46),
    ("0", 0x45),
    ("minus", 0x4E),
    ("equal", 0x55),
    ("backspace", 0x66),
    ("tab", 0x0D),
    ("q", 0x15),
    ("w", 0x1D),
    ("e", 0x24),
    ("r", 0x2D),
    ("t", 0x2C),
    ("y", 0x35),
    ("u", 0x3C),
    ("i", 0x43),
    ("o", 0x44),
    ("p", 0x4D),
    ("bracket_left", 0x54),
    ("bracket_right", 0x5B),
    ("backslash", 0x5D),
    ("caps_lock", 0x58),
    ("a", 0x1C),
    ("s", 0x1B),
    ("d", 0x23),
    ("f", 0x2B),
    ("g", 0x34),
    ("h", 0x33),
    ("j", 0x3B),
    ("k", 0x42),
    ("l", 0x4B),
    ("semicolon", 0x4C),
    ("apostrophe", 0x52),
    ("ret", 0x5A),
    ("shift", 0x12),
    ("z", 0x1A),
    ("x", 0x22),
    ("c", 0x21),
    ("v", 0x2A),
    ("b", 0x32),
    ("n", 0x31),
    ("m", 0x3A),
    ("comma", 0x41),
    ("dot", 0x49),
    ("slash", 0x4A),
    ("shift_r", 0x59),
    ("ctrl", 0x14),
    ("meta_l", 0xE01F),
    ("alt", 0x11),
    ("spc", 0x29),
    ("alt_r", 0xE011),
    ("meta_r", 0xE027),
    ("menu", 0xE02F),
    ("ctrl_r", 0xE014),
    ("insert", 0xE070),
    ("home", 0xE06C),
    ("pgup", 0xE07D),
    ("delete", 0xE071),
    ("end", 0xE069),
    ("pgdn", 0xE07A),
    ("up", 0xE075),
    ("left", 0xE06B),
    ("down", 0xE072),
    ("right", 0xE074),
    ("num_lock", 0x77),
    ("kp_divide", 0xE04A),
    ("kp_multiply", 0x7C),
    ("kp_subtract", 0x7B),
    ("kp_7", 0x6C),
    ("kp_8", 0x75),
    ("kp_9", 0x7D),
    ("kp_add", 0x79),
    ("kp_4", 0x6B),
    ("kp_5", 0x73),
    ("kp_6", 0x74),
    ("kp_1", 0x69),
    ("kp_2", 0x72),
    ("kp_3", 0x7A),
    ("kp_0", 0x70),
    ("kp_decimal", 0x71),
    ("kp_enter", 0xE05A),
    ("scroll_lock", 0x7E),
];

/// The set-2 make code of the key called `name` (QEMU's names, any case).
pub fn set2_code(name: &str) -> Option<u16> {
    let name = name.to_ascii_lowercase();
    let name = match name.as_str() {
        // Other spellings QEMU accepts.
        "return" | "enter" => "ret",
        "escape" => "esc",
        "space" => "spc",
        "control" | "ctrl_l" => "ctrl",
        "alt_l" => "alt",
        "shift_l" => "shift",
        "del" => "delete",
        other => other,
    };
    KEYS.iter().find(|(n, _)| *n == name).map(|&(_, code)| code)
}

/// A chord like `ctrl-alt-delete`: the keys' codes in the order they are pressed.
pub fn chord(spec: &str) -> Result<Vec<u16>, String> {
    spec.split('-')
        .map(|name| set2_code(name).ok_or_else(|| format!("unknown key '{name}'")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_are_unique() {
        for (i, (name, code)) in KEYS.iter().enumerate() {
            for (other, other_code) in &KEYS[i + 1..] {
                assert_ne!(name, other);
                assert_ne!(code, other_code, "{name} and {other}");
            }
        }
    }

    #[test]
    fn chords_parse_in_order() {
        assert_eq!(chord("ctrl-alt-delete"), Ok(vec![0x14, 0x11, 0xE071]));
        assert_eq!(chord("A"), Ok(vec![0x1C]));
        assert_eq!(chord("Return"), Ok(vec![0x5A]));
        assert_eq!(chord("ctrl-bogus"), Err("unknown key 'bogus'".into()));
    }
}
