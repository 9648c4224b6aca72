//! `tandem mount DIR`: the intercepting file system on one directory, in the
//! foreground, with a sink that counts (and optionally prints) every mutation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::fs::{self, CountingSink, MountConfig, Unmounted};
use crate::signals::StopSignals;

use super::{EXIT_FAILURE, EXIT_USAGE};

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The directory to cover; it keeps its path and its contents.
    pub dir: PathBuf,
    /// Print every mutation on standard output as it happens.
    #[arg(long)]
    pub print_mutations: bool,
    /// FUSE worker threads.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Cache files opened for writing in the mount's page cache too (faster
    /// re-reads through writable descriptors, slower streaming writes).
    #[arg(long)]
    pub cached_writes: bool,
}

pub fn run(args: MountArgs) -> ExitCode {
    let mut config = MountConfig::default();
    if let Some(t) = args.threads {
        config.threads = t as usize;
    }
    config.fs.cached_writes = args.cached_writes;
    // Signal handlers first: a SIGTERM that arrives just after the mount
    // appears must unmount, not kill the process and leave a dead mount.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let signals = match rt.block_on(async { StopSignals::install() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem: cannot handle signals: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let sink = Arc::new(CountingSink::new(args.print_mutations));
    let (mounted, report) = match fs::mount(&args.dir, sink.clone(), &config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tandem: {e}");
            return ExitCode::from(if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            });
        }
    };
    let dir = mounted.dir().to_path_buf();
    if report.stale_removed > 0 {
        eprintln!(
            "tandem: removed {} stale mount(s) on {} left by a killed tandem",
            report.stale_removed,
            dir.display()
        );
    }
    eprintln!(
        "tandem: mounted {} (Ctrl-C or SIGTERM unmounts)",
        dir.display()
    );
    let reason = rt.block_on(wait_for_stop(signals, &mounted));
    eprintln!("tandem: {reason}; unmounting {}", dir.display());
    let outcome = mounted.unmount();
    eprintln!("tandem: {}", sink.summary());
    match outcome {
        Ok(Unmounted::Clean) => {
            eprintln!("tandem: unmounted {}", dir.display());
            ExitCode::SUCCESS
        }
        Ok(Unmounted::Detached) => {
            eprintln!(
                "tandem: unmounted {} after its last open file was closed",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandem: unmounting {}: {e}", dir.display());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Waits for Ctrl-C, SIGTERM, or the mount going away from outside (`umount`).
async fn wait_for_stop(mut s: StopSignals, mounted: &fs::Mounted) -> &'static str {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            why = s.recv() => return why,
            _ = tick.tick() => if mounted.is_finished() { return "unmounted from outside" },
        }
    }
}
