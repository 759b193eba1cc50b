//! Process settings. `c20 serve` (any `c20` command) applies them at start; a program embedding
//! c20 may choose them (`c20_distributed` re-exports them), the library never changes them on
//! its own.

/// Turns transparent huge pages off for this whole process (Linux's `PR_SET_THP_DISABLE`;
/// elsewhere nothing to do). The kernel then backs new memory with 4 KiB pages only.
///
/// Why a program would: a store that keeps growing its in-memory state faults in fresh memory
/// all the time. With huge pages the allocator asks for 2 MiB pages, and on a machine whose free
/// memory is fragmented each such fault may stall while the kernel compacts memory and zeroes
/// 2 MiB; the stall lands on whichever thread touched the page. On the 2-vCPU test machine this
/// showed as runs of the stress example that spent three times as much time in the kernel
/// (docs/BENCHMARKS.md has the measurement). TiKV and Redis give the same advice for their
/// servers.
///
/// Call it early, before the process has allocated much: it applies to every later page fault,
/// and the kernel does not split huge pages that already exist.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of
        // ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether transparent huge pages are off for this process.
#[cfg(target_os = "linux")]
pub fn transparent_huge_pages_disabled() -> std::io::Result<bool> {
    // SAFETY: as above; PR_GET_THP_DISABLE returns the flag as the result.
    let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc == 1)
}

/// Whether transparent huge pages are off for this process (no such pages off Linux).
#[cfg(not(target_os = "linux"))]
pub fn transparent_huge_pages_disabled() -> std::io::Result<bool> {
    Ok(true)
}
