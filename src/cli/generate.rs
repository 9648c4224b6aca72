//! `tandem generate man DIR | completions SHELL` (hidden): the manual pages and
//! shell completions, made from the command line's own definition so that they
//! cannot drift from it. The Debian package is built with them
//! (`scripts/package.sh`); an operator has no use for the command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Subcommand};

use super::{Cli, EXIT_FAILURE};

#[derive(Subcommand, Debug)]
pub enum GenerateAction {
    /// Write a manual page for `tandem` and one for each of its subcommands
    /// (`tandem.1`, `tandem-daemon.1`, `tandem-token-create.1`…) into DIR.
    Man { dir: PathBuf },
    /// Print the completion script for SHELL.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub(super) fn run(action: GenerateAction) -> ExitCode {
    let done = match action {
        GenerateAction::Man { dir } => man_pages(&dir),
        GenerateAction::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut visible(Cli::command()), "tandem", &mut out);
            out.flush()
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem generate: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `cmd` without its hidden subcommands: clap's completion scripts would offer
/// them (`tandem guard` is for the daemon to start), and clap cannot remove a
/// subcommand, so the top level is made anew from the visible parts.
fn visible(cmd: clap::Command) -> clap::Command {
    let mut top = clap::Command::new("tandem")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .subcommand_required(cmd.is_subcommand_required_set());
    if let Some(about) = cmd.get_about() {
        top = top.about(about.clone());
    }
    top
}

/// One page per command, named after its path (`tandem-token-create.1`), hidden
/// commands left out. clap's `help` subcommand has no page: `--help` says it all.
fn man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cli = Cli::command().disable_help_subcommand(true);
    // Building gives every subcommand its display name (`tandem-daemon`).
    cli.build();
    write_pages(&cli, dir)
}

fn write_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .source(concat!("tandem ", env!("CARGO_PKG_VERSION")))
        .manual("tandem manual");
    let mut file = std::fs::File::create(dir.join(page.get_filename()))?;
    page.render(&mut file)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_command_and_none_for_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        for page in [
            "tandem",
            "tandem-daemon",
            "tandem-config-check",
            "tandem-token-create",
        ] {
            let text = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap();
            assert!(text.contains(".TH"), "{page}.1 is a manual page");
        }
        for hidden in ["tandem-guard", "tandem-generate", "tandem-help"] {
            assert!(
                !dir.path().join(format!("{hidden}.1")).exists(),
                "{hidden}.1"
            );
        }
    }

    #[test]
    fn completions_offer_the_visible_commands_and_global_options_only() {
        let cmd = visible(Cli::command());
        let names: Vec<_> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        assert!(
            names.contains(&"daemon") && names.contains(&"swap"),
            "{names:?}"
        );
        assert!(
            !names.contains(&"guard") && !names.contains(&"generate"),
            "{names:?}"
        );
        let options: Vec<_> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
        assert_eq!(options, ["config", "socket", "on"]);
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut cmd.clone(),
            "tandem",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("--config") && !script.contains("guard"));
    }
}
