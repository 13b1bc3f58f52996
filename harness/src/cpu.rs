//! Where the machine's CPU went during a bench run: the whole machine (`/proc/stat`), the worker
//! processes and this harness (`/proc/PID/stat`), as cores in use over the run's wall time. What
//! neither the workers nor the harness used is the broker, ClickHouse and anything else running.
//! Linux only; elsewhere every figure is `None` and the tables print "–".

use std::time::Instant;

use serde::Serialize;

/// CPU time counters at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    /// The whole machine, from `/proc/stat`.
    machine: Option<MachineTicks>,
    /// utime + stime of each worker process (by pid) and of this process, in clock ticks.
    workers: Vec<(u32, u64)>,
    own: Option<u64>,
}

/// Cores in use, averaged over the interval between two snapshots.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CpuUse {
    pub cores: usize,
    /// Busy cores of the whole machine (0..=cores).
    pub machine: f64,
    /// The worker processes together.
    pub workers: f64,
    /// The bench itself (producer, topic reader, scraping).
    pub bench: f64,
    /// The rest: broker, ClickHouse, anything else on the machine.
    pub other: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, from `/proc/PID/stat` (fields 14 and 15; the command name in
/// field 2 may hold spaces, so fields are counted after its closing parenthesis).
fn process_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&s)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Jiffies of all CPUs together, and how many CPUs `/proc/stat` lists (the scale of `busy /
/// total`; `available_parallelism` may count fewer, under an affinity mask or a cgroup).
#[derive(Debug, Clone, Copy, PartialEq)]
struct MachineTicks {
    busy: u64,
    total: u64,
    cpus: usize,
}

/// The first line of `/proc/stat` (idle and iowait are not busy) and its `cpuN` lines.
fn parse_machine(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(MachineTicks {
        busy: total - idle,
        total,
        cpus: cpus.max(1),
    })
}

impl CpuSnapshot {
    pub fn take(worker_pids: &[u32]) -> Self {
        CpuSnapshot {
            at: Instant::now(),
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_machine(&s)),
            workers: worker_pids
                .iter()
                .filter_map(|&p| Some((p, process_ticks(&p.to_string())?)))
                .collect(),
            own: process_ticks("self"),
        }
    }

    /// Use since `earlier`. Workers are matched by pid: one that started or stopped in between
    /// counts only for the part both snapshots saw (the runs keep the same workers throughout).
    pub fn since(&self, earlier: &CpuSnapshot) -> Option<CpuUse> {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        let (now, then) = (self.machine?, earlier.machine?);
        if wall <= 0.0 || now.total <= then.total {
            return None;
        }
        let cores = now.cpus;
        let machine =
            (now.busy - then.busy) as f64 / (now.total - then.total) as f64 * cores as f64;
        let hz = clock_ticks();
        let workers: u64 = self
            .workers
            .iter()
            .filter_map(|(p, t)| {
                let (_, t0) = earlier.workers.iter().find(|(q, _)| q == p)?;
                Some(t.saturating_sub(*t0))
            })
            .sum();
        let workers = workers as f64 / hz / wall;
        let bench = self.own?.saturating_sub(earlier.own?) as f64 / hz / wall;
        Some(CpuUse {
            cores,
            machine,
            workers,
            bench,
            other: (machine - workers - bench).max(0.0),
        })
    }
}

impl CpuUse {
    /// "1.95 of 2: workers 0.98, bench 0.31, other 0.66".
    pub fn describe(&self) -> String {
        format!(
            "{:.2} of {}: workers {:.2}, bench {:.2}, other {:.2}",
            self.machine, self.cores, self.workers, self.bench, self.other
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (vax (pulse) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_process_ticks(stat), Some(300));
        assert_eq!(parse_process_ticks("garbage"), None);
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 10 40 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(
            parse_machine(stat),
            Some(MachineTicks {
                busy: 150,
                total: 1000,
                cpus: 1
            })
        );
    }

    #[test]
    fn use_between_snapshots_splits_the_machine() {
        let t0 = Instant::now();
        let a = CpuSnapshot {
            at: t0,
            machine: Some(MachineTicks {
                busy: 0,
                total: 0,
                cpus: 4,
            }),
            workers: vec![(1, 0), (2, 0)],
            own: Some(0),
        };
        let b = CpuSnapshot {
            at: t0 + std::time::Duration::from_secs(2),
            machine: Some(MachineTicks {
                busy: 1500,
                total: 2000,
                cpus: 4,
            }),
            workers: vec![(1, 100), (2, 50), (3, 999)],
            own: Some(40),
        };
        let u = b.since(&a).expect("both snapshots have counters");
        assert_eq!(u.cores, 4, "the CPUs /proc/stat lists");
        assert!((u.machine - 0.75 * 4.0).abs() < 1e-9);
        // pid 3 was not in the first snapshot: not counted.
        let hz = clock_ticks();
        assert!((u.workers - 150.0 / hz / 2.0).abs() < 1e-9);
        assert!((u.bench - 40.0 / hz / 2.0).abs() < 1e-9);
        assert!((u.other - (u.machine - u.workers - u.bench).max(0.0)).abs() < 1e-9);
    }
}
