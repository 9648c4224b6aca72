fn main() -> std::process::ExitCode {
    // Blocks over 4 MiB always come from their own mapping, touched only as
    // used (1 MiB resync pieces and writes stay on the heap). Left to glibc,
    // the threshold rises to the size of the largest block freed (the
    // mount's 16 MiB request buffers), and each mount worker's buffer then
    // comes from the heap, zeroed whole: 23 MiB of resident memory for every
    // idle served module.
    // SAFETY: mallopt takes no pointer and runs before any other thread.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20) };
    tandem::cli::main()
}
