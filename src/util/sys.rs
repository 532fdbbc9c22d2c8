//! The operating system beneath the service: which CPUs the process may use, pinning a
//! thread, the io_uring probe, and the resource limits (open files, memlock). Plain
//! calls into libc, each with its `// SAFETY:` reasoning; no state.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_allowed_cpus() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty() && allowed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(available_cpus(), allowed.len());
    }
}
