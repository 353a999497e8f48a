//! The standard `process_*` families (as Prometheus's own clients export
//! them), read from /proc at every scrape; on other systems, none.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

#[derive(Debug)]
pub struct ProcessMetrics;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
struct Snapshot {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    start_time_seconds: f64,
    threads: i64,
    open_fds: i64,
    max_fds: i64,
}

/// Fields of /proc/self/stat after the command name (which may hold spaces).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

#[cfg(target_os = "linux")]
fn snapshot() -> Option<Snapshot> {
    // SAFETY: sysconf and getrlimit only read process-wide settings.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f = stat_fields(&stat)?;
    // After ")": state is field 3 of stat(5), so field N is f[N - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as i64
    } else {
        0
    };
    Some(Snapshot {
        cpu_seconds: (num(14)? + num(15)?) / ticks,
        virtual_bytes: num(23)? as i64,
        resident_bytes: num(24)? as i64 * page,
        start_time_seconds: boot + num(22)? / ticks,
        threads: num(20)? as i64,
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64),
        max_fds,
    })
}

#[cfg(not(target_os = "linux"))]
fn snapshot() -> Option<Snapshot> {
    None
}

impl prometheus_client::collector::Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = snapshot() else {
            return Ok(());
        };
        let seconds = prometheus_client::registry::Unit::Seconds;
        let bytes = prometheus_client::registry::Unit::Bytes;
        let cpu = encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time this process used",
            Some(&seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(s.cpu_seconds).encode(cpu)?;
        for (name, help, unit, value) in [
            (
                "process_resident_memory",
                "Resident memory",
                Some(&bytes),
                s.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory",
                Some(&bytes),
                s.virtual_bytes,
            ),
            ("process_threads", "Threads of this process", None, s.threads),
            ("process_open_fds", "Open file descriptors", None, s.open_fds),
            (
                "process_max_fds",
                "The limit on open file descriptors",
                None,
                s.max_fds,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        let start = encoder.encode_descriptor(
            "process_start_time",
            "When this process started (Unix time)",
            Some(&seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.start_time_seconds).encode(start)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_name_may_hold_spaces_and_parentheses() {
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 1234 1000 50";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        // utime and stime are fields 14 and 15 of stat(5).
        assert_eq!((f[14 - 3], f[15 - 3]), ("7", "3"));
        assert_eq!(f[20 - 3], "5");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_memory_threads_and_a_start_time() {
        let s = snapshot().unwrap();
        assert!(s.resident_bytes > 0 && s.threads >= 1 && s.open_fds >= 3, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds > now - 86_400.0 * 365.0 && s.start_time_seconds <= now + 1.0,
            "{s:?}"
        );
    }
}
