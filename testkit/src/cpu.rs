//! Where a bench's CPU went, read from `/proc` (Linux): core-seconds, user + system.

/// Clock ticks per second of `/proc`'s times (USER_HZ, 100 on Linux).
pub const TICKS: f64 = 100.0;

/// (own user + system, reaped children's user + system) of a process (`"self"` or a pid), in
/// seconds; `None` when it is gone or `/proc` cannot be read.
pub fn proc_times(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is the first, utime the 12th.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let n = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok());
    Some(((n(11)? + n(12)?) / TICKS, (n(13)? + n(14)?) / TICKS))
}

/// Seconds of every process whose command name is `comm`, with its reaped children's (so
/// Postgres backends that ended are still counted, through the postmaster).
pub fn comm_seconds(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(|pid| proc_times(&pid))
        .map(|(own, children)| own + children)
        .sum()
}

/// (busy, total) seconds of all cores since boot, from `/proc/stat`.
pub fn machine_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let times: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = times.iter().take(8).sum();
    let idle = times.get(3).copied().unwrap_or(0.0) + times.get(4).copied().unwrap_or(0.0);
    ((total - idle) / TICKS, total / TICKS)
}

/// The CPU of this process, the services of the stack and the machine, at one instant or (from
/// [`Parts::since`]) over a window: seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Parts {
    /// This process's own threads.
    pub own: f64,
    /// Every Postgres process, with the backends that ended.
    pub postgres: f64,
    /// Every JVM on the machine: the broker (and the fault cluster's, if it is up).
    pub broker: f64,
    /// `redis-server`.
    pub redis: f64,
    /// The machine's busy time (all cores) and its capacity (cores × wall).
    pub busy: f64,
    pub total: f64,
}

impl Parts {
    pub fn now() -> Parts {
        let (busy, total) = machine_seconds();
        Parts {
            own: proc_times("self").map_or(0.0, |t| t.0),
            postgres: comm_seconds("postgres"),
            broker: comm_seconds("java"),
            redis: comm_seconds("redis-server"),
            busy,
            total,
        }
    }

    /// What each part spent from `earlier` to `self`.
    ///
    /// Every reading is a whole number of ticks over [`TICKS`], so each difference is rounded
    /// back to whole ticks: otherwise two equal tick counts (a window where every core was busy)
    /// can come out as busy > total by a float's last bit.
    pub fn since(&self, earlier: &Parts) -> Parts {
        let d = |now: f64, then: f64| ((now - then) * TICKS).round() / TICKS;
        Parts {
            own: d(self.own, earlier.own),
            postgres: d(self.postgres, earlier.postgres),
            broker: d(self.broker, earlier.broker),
            redis: d(self.redis, earlier.redis),
            busy: d(self.busy, earlier.busy),
            total: d(self.total, earlier.total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_spending_cpu_shows_in_its_own_part() {
        // The spin is measured by this thread's own CPU time (`/proc/thread-self`), not by the
        // wall clock: on a loaded machine (CI runs the brokers beside the tests) 300 ms of wall
        // gave this thread only 170 ms of a core.
        let thread = || proc_times("thread-self").expect("/proc/thread-self/stat").0;
        let before = Parts::now();
        let from = thread();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let spun = loop {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            let spun = thread() - from;
            if spun >= 0.3 {
                break spun;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "this thread had {spun} s of CPU in a minute"
            );
        };
        std::hint::black_box(x);
        let spent = Parts::now().since(&before);
        // The process counts at least this thread; the machine was busy at least while it ran
        // (two ticks of slack: the two are accounted apart).
        let slack = 2.0 / TICKS;
        assert!(spent.own >= spun - slack, "{spent:?} for {spun} s spun");
        assert!(
            spent.busy >= spun - slack && spent.total >= spent.busy,
            "{spent:?} for {spun} s spun"
        );
    }

    #[test]
    fn a_window_where_every_core_was_busy_has_busy_equal_to_total() {
        // The readings CI once got: 0.61 s busy of 0.61 s, since boot, which plain float
        // subtraction turned into busy 0.6100000000005821 > total 0.6099999999860302.
        let before = Parts {
            busy: 1_234_567.89,
            total: 4_321_098.76,
            ..Parts::default()
        };
        let after = Parts {
            busy: 1_234_568.5,
            total: 4_321_099.37,
            ..Parts::default()
        };
        let spent = after.since(&before);
        assert_eq!(spent.busy, 0.61);
        assert_eq!(spent.total, 0.61);
    }
}
