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
