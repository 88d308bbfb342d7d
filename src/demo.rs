//! The built-in demo guest (placeholder until the demo program lands).

pub fn run() -> Result<(), String> {
    Ok(())
}
