//! The operating system beneath the service: which CPUs the process may use, pinning a
//! thread, the io_uring probe, the resource limits (open files, memlock) and the
//! process's own figures from /proc (for the `process_*` metrics). Plain calls into
//! libc, each with its `// SAFETY:` reasoning; no state.

/// Number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    allowed_cpus().len()
}

/// The CPUs this process may run on (its affinity mask, e.g. systemd's CPUAffinity or
/// taskset), in increasing order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; sched_getaffinity(0, …)
    // writes at most size_of::<cpu_set_t>() bytes into it; CPU_ISSET reads within it
    // for indexes below CPU_SETSIZE.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            Vec::new()
        } else {
            (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
        }
    };
    if allowed.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        allowed
    }
}

/// Pins the calling thread to `cpu`. Best effort: a failure is logged, not fatal.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes within
    // it for cpu < CPU_SETSIZE (cpu is below the CPU count); sched_setaffinity(0, …)
    // reads `size_of::<cpu_set_t>()` bytes from a live local.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin thread");
    }
}

/// Probes io_uring with a one-entry ring. `Err` carries a one-line explanation of
/// what the kernel or container must allow.
pub fn check_io_uring() -> Result<(), String> {
    // io_uring_params is 120 bytes; the kernel fills it in. Zeroed is a valid request.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params) reads and writes exactly the 120-byte
    // io_uring_params struct behind the pointer, which outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd is a descriptor this function just opened and nothing else owns.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    Err(format!(
        "io_uring is unavailable ({error}): triggerd needs Linux >= 5.8 with io_uring enabled \
         (sysctl kernel.io_uring_disabled=0) and, in a container, a seccomp profile that allows \
         io_uring_setup, io_uring_enter and io_uring_register"
    ))
}

/// Raises the soft limit on open files to the hard limit (each connection is one).
/// Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct in a live local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// The soft memlock limit in bytes (`None` = unlimited).
pub fn memlock_bytes() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct into a live local.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The process (pid, command line) listening on TCP `port`, if this user can see it:
/// the listening socket's inode from /proc/net/tcp{,6}, then the process holding it
/// among /proc/*/fd. `None` when nothing listens or the holder is not visible.
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                    // State 0A is LISTEN.
                    (local_port == port && *fields.get(3)? == "0A")
                        .then(|| fields.get(9).map(|i| i.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| target.to_str().map(str::to_string))
                .is_some_and(|target| inodes.iter().any(|inode| target == format!("socket:[{inode}]")))
        });
        if holds {
            let command = std::fs::read(entry.path().join("cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
                .unwrap_or_default();
            return Some((pid, command));
        }
    }
    None
}

/// An exclusive lock on `path` (created if missing) for as long as the returned file
/// lives, with this process's pid written in it. `Err` names the holder's pid when
/// another process has it.
pub fn lock_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns (the file outlives the call).
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(holder.trim().to_string());
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// The process's own figures, as Prometheus's `process_*` metrics name them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files.
    pub max_fds: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Reads the process's figures from /proc (a few small reads, plus one directory
/// entry per open descriptor: O(connections)). Call it off the HTTP cores. `None` off
/// Linux or when /proc is not mounted.
pub fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = boot_time_seconds(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf reads a configuration value; no memory is passed.
    let (ticks, page_bytes) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let figures = parse_stat(&stat)?;
    let ticks = ticks.max(1) as f64;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct into a live local.
    let max_fds =
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 0 };
    Some(ProcessStats {
        cpu_seconds: (figures.user_ticks + figures.system_ticks) as f64 / ticks,
        resident_memory_bytes: figures.resident_pages * page_bytes.max(0) as u64,
        // read_dir lists the descriptor it reads through as well.
        open_fds: open_fds.saturating_sub(1),
        max_fds,
        start_time_seconds: boot_time as f64 + figures.start_ticks as f64 / ticks,
    })
}

/// The fields of /proc/self/stat the metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatFigures {
    user_ticks: u64,
    system_ticks: u64,
    /// Since boot.
    start_ticks: u64,
    resident_pages: u64,
}

/// Parses /proc/<pid>/stat (proc(5)): fields after the command name, which is in
/// parentheses and may hold spaces and parentheses itself, so the split starts after
/// the last `)`. utime, stime, starttime and rss are fields 14, 15, 22 and 24.
fn parse_stat(text: &str) -> Option<StatFigures> {
    let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
    // Field n (1-based) is fields[n - 3]: the first after `)` is field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFigures {
        user_ticks: field(14)?,
        system_ticks: field(15)?,
        start_ticks: field(22)?,
        resident_pages: field(24)?,
    })
}

/// The `btime` line of /proc/stat: boot time, seconds since the Unix epoch.
fn boot_time_seconds(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let text = "4242 (tri ger) d) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 5 0 98765 \
                    123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let figures = parse_stat(text).unwrap();
        assert_eq!(
            figures,
            StatFigures { user_ticks: 250, system_ticks: 75, start_ticks: 98_765, resident_pages: 2048 }
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(boot_time_seconds("cpu  1 2 3\nbtime 1790000000\nprocesses 9\n"), Some(1_790_000_000));
    }

    #[test]
    fn this_process_reads_its_own_figures() {
        let stats = process_stats().expect("/proc is mounted");
        assert!(stats.resident_memory_bytes > 0 && stats.open_fds >= 3 && stats.max_fds >= stats.open_fds);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 86_400.0 * 365.0);
    }

    #[test]
    fn this_process_has_allowed_cpus() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty() && allowed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(available_cpus(), allowed.len());
    }
}
