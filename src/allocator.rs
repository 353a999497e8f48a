//! glibc's allocator, set for training. By default glibc serves every
//! allocation above 128 KiB-32 MiB with its own mmap and returns it with
//! munmap on free; a ResNet-18 round allocates and frees model-sized (45
//! MB) and activation-sized buffers every step, so each came back as fresh
//! pages (page faults, zeroing) and each free cost a TLB shootdown across
//! the training threads — measured: 64 images trained in 0.57-0.62 s with
//! this setting, 0.84-1.03 s without (`cargo bench --bench cnn_training --
//! resnet18_64x64_train`, alternating runs). Freed memory stays in the
//! process for the next step instead (at most what one step uses).

/// Serve allocations of up to 1 GiB from the heap and never trim it back
/// to the kernel below 1 GiB. Call once, first thing in `main`; a no-op on
/// other platforms. Returns whether glibc took both settings.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LIMIT: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets allocator parameters; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
