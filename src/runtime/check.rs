//! `triggerd check`: inspects the host and says, line by line, what is fine and what
//! to change. The verdicts are plain functions of the values read, so they are tested
//! without the host.

use std::fmt::Write as _;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(String),
    /// Works, but not as well as it could.
    Warn(String),
    /// The service cannot run like this.
    Fail(String),
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn sysctl(name: &str) -> Option<String> {
    read(&format!("/proc/sys/{}", name.replace('.', "/")))
}

pub fn memlock(limit_bytes: Option<u64>, http_cores: usize) -> Verdict {
    let needed = super::MEMLOCK_BYTES_MIN.max(http_cores as u64 * super::IO_MEMORY_BYTES as u64);
    match limit_bytes {
        None => Verdict::Ok("memlock: unlimited".into()),
        Some(limit) if limit >= needed => {
            Verdict::Ok(format!("memlock: {} KiB (needs {} KiB)", limit / 1024, needed / 1024))
        }
        Some(limit) => Verdict::Fail(format!(
            "memlock: {} KiB, io_uring needs {} KiB: `ulimit -l {}` or LimitMEMLOCK={}K in the unit",
            limit / 1024,
            needed / 1024,
            needed / 1024,
            needed / 1024
        )),
    }
}

pub fn cores(cpus: usize, http_cores: usize) -> Verdict {
    if http_cores > cpus {
        Verdict::Warn(format!(
            "cores: {http_cores} HTTP cores on {cpus} CPUs share CPUs; use --http-cores {}",
            cpus.saturating_sub(1).max(1)
        ))
    } else if http_cores == cpus {
        Verdict::Warn(format!(
            "cores: {http_cores} HTTP cores on {cpus} CPUs leave none for the storage thread and PostgreSQL"
        ))
    } else {
        Verdict::Ok(format!("cores: {http_cores} HTTP cores + the storage core on {cpus} CPUs"))
    }
}

/// A numeric sysctl that should be at least `want`.
pub fn at_least(name: &str, value: Option<u64>, want: u64, why: &str) -> Verdict {
    match value {
        None => Verdict::Warn(format!("{name}: unreadable")),
        Some(v) if v >= want => Verdict::Ok(format!("{name} = {v}")),
        Some(v) => {
            // A sysctl is set in tuning/sysctl.conf; a process limit where it runs.
            let fix =
                if name.contains('.') { "see tuning/sysctl.conf" } else { "see tuning/triggerd.service" };
            Verdict::Warn(format!("{name} = {v}: set it to at least {want} ({why}); {fix}"))
        }
    }
}

pub fn port_range(value: Option<&str>) -> Verdict {
    let ports = value.and_then(|v| {
        let mut parts = v.split_whitespace().filter_map(|p| p.parse::<u32>().ok());
        Some(parts.next()?..=parts.next()?)
    });
    match ports {
        Some(range) if range.end() - range.start() >= 28_000 => {
            Verdict::Ok(format!("net.ipv4.ip_local_port_range = {} {}", range.start(), range.end()))
        }
        Some(range) => Verdict::Warn(format!(
            "net.ipv4.ip_local_port_range = {} {}: widen it to 1024 65535 (outbound webhook connections)",
            range.start(),
            range.end()
        )),
        None => Verdict::Warn("net.ipv4.ip_local_port_range: unreadable".into()),
    }
}

pub fn governor(governors: &[String]) -> Verdict {
    if governors.is_empty() {
        return Verdict::Ok("cpu governor: not exposed (virtual machine?); nothing to set".into());
    }
    if governors.iter().all(|g| g == "performance") {
        Verdict::Ok("cpu governor: performance".into())
    } else {
        Verdict::Warn(format!(
            "cpu governor: {}; set performance (cpupower frequency-set -g performance)",
            governors.join(",")
        ))
    }
}

pub fn transparent_huge_pages(setting: Option<&str>) -> Verdict {
    match setting {
        Some(s) if s.contains("[always]") => Verdict::Warn(
            "transparent huge pages: always; set madvise (compaction stalls add tail latency)".into(),
        ),
        Some(s) => Verdict::Ok(format!("transparent huge pages: {s}")),
        None => Verdict::Ok("transparent huge pages: not exposed".into()),
    }
}

pub fn busy_poll(value: Option<u64>) -> Verdict {
    match value {
        Some(0) | None => {
            Verdict::Ok("net.core.busy_poll = 0 (off; 50 on dedicated cores trades CPU for latency)".into())
        }
        Some(v) => Verdict::Ok(format!("net.core.busy_poll = {v}")),
    }
}

/// Reads the host and returns every verdict.
pub fn inspect(http_cores: usize, connections_per_core: usize) -> Vec<Verdict> {
    let number = |name: &str| sysctl(name).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    let cpus = crate::util::sys::available_cpus();
    let mut verdicts = vec![match crate::util::sys::check_io_uring() {
        Ok(()) => Verdict::Ok("io_uring: available".into()),
        Err(why) => Verdict::Fail(why),
    }];
    verdicts.push(memlock(crate::util::sys::memlock_bytes(), http_cores));
    verdicts.push(cores(cpus, http_cores));
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct into a live local.
    let open_files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        Some(limit.rlim_max)
    } else {
        None
    };
    verdicts.push(at_least(
        "open files (hard limit)",
        open_files,
        (http_cores * connections_per_core) as u64 + 1024,
        "one per connection: LimitNOFILE= in the systemd unit, or ulimit -n in a shell",
    ));
    verdicts.push(at_least(
        "net.core.somaxconn",
        number("net.core.somaxconn"),
        4096,
        "listen backlog under connection bursts",
    ));
    verdicts.push(at_least(
        "net.ipv4.tcp_max_syn_backlog",
        number("net.ipv4.tcp_max_syn_backlog"),
        8192,
        "SYN backlog",
    ));
    verdicts.push(port_range(sysctl("net.ipv4.ip_local_port_range").as_deref()));
    verdicts.push(at_least(
        "net.core.rmem_max",
        number("net.core.rmem_max"),
        4 << 20,
        "socket buffers for bursts",
    ));
    verdicts.push(at_least(
        "net.core.wmem_max",
        number("net.core.wmem_max"),
        4 << 20,
        "socket buffers for bursts",
    ));
    verdicts.push(busy_poll(number("net.core.busy_poll")));
    let governors: Vec<String> = (0..cpus)
        .filter_map(|cpu| read(&format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")))
        .collect();
    verdicts.push(governor(&governors));
    verdicts.push(transparent_huge_pages(read("/sys/kernel/mm/transparent_hugepage/enabled").as_deref()));
    verdicts
}

/// The report and whether the service can run.
pub fn report(verdicts: &[Verdict]) -> (String, bool) {
    let mut out = String::new();
    let mut runnable = true;
    for verdict in verdicts {
        let (tag, text) = match verdict {
            Verdict::Ok(text) => ("ok  ", text),
            Verdict::Warn(text) => ("warn", text),
            Verdict::Fail(text) => {
                runnable = false;
                ("FAIL", text)
            }
        };
        let _ = writeln!(out, "{tag} {text}");
    }
    (out, runnable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert!(matches!(memlock(Some(64 * 1024), 1), Verdict::Fail(_)));
        assert!(matches!(memlock(Some(8 << 20), 2), Verdict::Ok(_)));
        assert!(matches!(memlock(None, 64), Verdict::Ok(_)));
        assert!(matches!(cores(2, 1), Verdict::Ok(_)));
        assert!(matches!(cores(2, 2), Verdict::Warn(_)));
        assert!(matches!(cores(2, 3), Verdict::Warn(_)));
        assert!(matches!(at_least("x", Some(4096), 4096, ""), Verdict::Ok(_)));
        assert!(matches!(at_least("x", Some(128), 4096, ""), Verdict::Warn(_)));
        assert!(matches!(port_range(Some("32768\t60999")), Verdict::Ok(_)));
        assert!(matches!(port_range(Some("50000 51000")), Verdict::Warn(_)));
        assert!(matches!(governor(&["performance".into(), "powersave".into()]), Verdict::Warn(_)));
        assert!(matches!(governor(&[]), Verdict::Ok(_)));
        assert!(matches!(transparent_huge_pages(Some("[always] madvise never")), Verdict::Warn(_)));
        assert!(matches!(transparent_huge_pages(Some("always [madvise] never")), Verdict::Ok(_)));
    }

    #[test]
    fn a_failure_makes_the_host_unrunnable() {
        let (text, runnable) = report(&[Verdict::Ok("a".into()), Verdict::Fail("b".into())]);
        assert!(!runnable);
        assert_eq!(text, "ok   a\nFAIL b\n");
        assert!(report(&[Verdict::Warn("c".into())]).1);
    }
}
