//! Virtual time: the guest's only clock is its retired-instruction count.
//!
//! One instruction is one nanosecond of virtual time (a 1 GHz guest, which is also the
//! TSC rate). Devices are scheduled in nanoseconds; the run loop converts a device
//! deadline into an instruction budget, and HLT jumps straight to the next deadline.

use hospes_devices::Nanos;

/// Nanoseconds of virtual time per retired instruction.
pub const NANOS_PER_INSTRUCTION: u64 = 1;

/// Virtual time at an instruction count.
pub fn nanos(icount: u64) -> Nanos {
    icount * NANOS_PER_INSTRUCTION
}

/// The first instruction count at or after a virtual time.
pub fn icount_at(t: Nanos) -> u64 {
    t.div_ceil(NANOS_PER_INSTRUCTION)
}

/// Paces idle time to the wall clock while frames can come from outside: a guest
/// waiting for the host's answer must not see seconds of its time pass in the
/// microseconds the host takes (its TCP would time out and retransmit). Only idle time
/// is paced: a busy guest runs as fast as it can, and when it has fallen behind the
/// wall clock the pacer starts again from where it is rather than catch up.
#[derive(Default)]
pub struct Pacer {
    /// A wall-clock moment and the instruction count it stands for.
    anchor: Option<(std::time::Instant, u64)>,
}

/// How far behind the wall clock the guest may fall before the pacer starts again.
const PACE_SLACK: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest sleep between two looks for input.
const PACE_POLL: std::time::Duration = std::time::Duration::from_millis(1);

impl Pacer {
    /// The guest halted at `halted_at` with nothing to do before `wake`: waits until
    /// the wall clock reaches `wake`'s moment, calling `input_came` between short
    /// sleeps. Gives the instruction count to resume at: `wake`, or the one the wall
    /// clock has reached when input came first.
    pub fn idle(&mut self, halted_at: u64, wake: u64, mut input_came: impl FnMut() -> bool) -> u64 {
        use std::time::{Duration, Instant};
        let now = Instant::now();
        let (wall0, count0) = match self.anchor {
            Some((wall0, count0))
                if halted_at >= count0
                    && wall0 + Duration::from_nanos(nanos(halted_at - count0)) + PACE_SLACK
                        >= now =>
            {
                (wall0, count0)
            }
            _ => {
                self.anchor = Some((now, halted_at));
                (now, halted_at)
            }
        };
        let moment = |count: u64| wall0 + Duration::from_nanos(nanos(count - count0));
        let target = moment(wake);
        loop {
            let now = Instant::now();
            if now >= target {
                return wake;
            }
            if input_came() {
                let reached = icount_at(now.duration_since(wall0).as_nanos() as u64) + count0;
                return reached.clamp(halted_at, wake);
            }
            std::thread::sleep((target - now).min(PACE_POLL));
        }
    }
}
