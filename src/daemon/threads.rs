//! The daemon's threads as the kernel lists them: after the stop, whatever
//! is left besides the main thread and the runtime's is a thread nothing
//! joined.

/// The runtime's threads' name.
pub const RUNTIME: &str = "tandem-rt";

/// Names of this process's threads other than the calling one, the
/// runtime's and RocksDB's (its pool lives as long as the process).
pub fn others() -> Vec<String> {
    let me = nix::unistd::gettid().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut names: Vec<String> = tasks
        .flatten()
        .filter(|t| t.file_name().to_str() != Some(me.as_str()))
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .filter(|n| n != RUNTIME && !n.starts_with("rocksdb:"))
        .collect();
    names.sort();
    names
}
