//! What the package ships that the command line itself describes: shell completions
//! (`peerd completions SHELL`) and man pages (`peerd generate-man DIR`), both generated from
//! the clap definition so they never disagree with `--help`.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// The shells `peerd completions` writes for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// What `peerd completions --help` adds: where each shell looks for the script.
pub const COMPLETIONS_HELP: &str = "\
Examples:
  peerd completions bash > /usr/share/bash-completion/completions/peerd
  peerd completions zsh > /usr/share/zsh/vendor-completions/_peerd
  peerd completions fish > /usr/share/fish/vendor_completions.d/peerd.fish

The package installs all three there. For one user instead: bash
~/.local/share/bash-completion/completions/peerd, zsh any directory in $fpath (as _peerd),
fish ~/.config/fish/completions/peerd.fish. Then start a new shell.";

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell, mut cmd: clap::Command) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell.generator(), &mut cmd, "peerd", &mut out);
    out.flush().map_err(|e| format!("writing completions: {e}"))
}

/// Man pages are section 8 (system administration: the binary is in /usr/sbin).
const SECTION: &str = "8";

/// Appended to the top-level page: the files peerd uses and the other pages.
fn top_page_extra(subpages: &[String]) -> String {
    let mut see_also: Vec<String> = subpages
        .iter()
        .map(|p| format!("\\fB{p}\\fR({SECTION})"))
        .collect();
    see_also.push("\\fBsystemctl\\fR(1)".into());
    see_also.push("\\fBip-netns\\fR(8)".into());
    format!(
        ".SH FILES\n\
         .TP\n\\fI/etc/peerd/peerd.toml\\fR\n\
         The configuration (\\fB--config\\fR overrides it): a commented sample explains every \
         [daemon] key.\n\
         .TP\n\\fI/var/lib/peerd\\fR\n\
         State: slots, peering history, the last good configuration ([daemon] state_dir).\n\
         .TP\n\\fI/sys/fs/bpf/peerd\\fR\n\
         Pinned maps and links: the datapath keeps forwarding while the daemon is stopped \
         ([daemon] pin_dir).\n\
         .TP\n\\fI/run/peerd/peerd.sock\\fR\n\
         The control socket the client commands use ([daemon] socket).\n\
         .SH SEE ALSO\n{}\n",
        see_also.join(",\n")
    )
}

/// Writes one man page per visible command (`peerd.8`, `peerd-run.8`, ...) into `dir`;
/// returns the files written.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let mut pages = descendants(&cmd)
        .into_iter()
        .map(|s| render(s, &version))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = pages.iter().map(|(name, _)| name.clone()).collect();
    let (name, mut top) = render(cmd, &version)?;
    top.extend_from_slice(top_page_extra(&names).as_bytes());
    pages.push((name, top));
    let mut written = Vec::new();
    for (name, text) in pages {
        let path = dir.join(format!("{name}.{SECTION}"));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Every visible command below `cmd`, depth first (`peerd-x`, then `peerd-x-y`, ...).
fn descendants(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .flat_map(|s| std::iter::once(s.clone()).chain(descendants(s)))
        .collect()
}

/// One page: its name (`peerd-run`) and its roff text.
fn render(cmd: clap::Command, version: &str) -> Result<(String, Vec<u8>), String> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_owned();
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(SECTION)
        .source(format!("peerd {version}"))
        .manual("peerd manual")
        .render(&mut text)
        .map_err(|e| format!("rendering the page of {name}: {e}"))?;
    Ok((name, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_visible_command_at_every_level_and_none_for_hidden_ones() {
        let cmd = clap::Command::new("peerd")
            .version("1.2.3")
            .subcommand(clap::Command::new("run").about("Run it"))
            .subcommand(
                clap::Command::new("vpc")
                    .subcommand(clap::Command::new("add"))
                    .subcommand(clap::Command::new("secret").hide(true)),
            )
            .subcommand(clap::Command::new("generate-man").hide(true));
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<String> = man_pages(cmd, dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["peerd-run.8", "peerd-vpc-add.8", "peerd-vpc.8", "peerd.8"]
        );
        let run = std::fs::read_to_string(dir.path().join("peerd-run.8")).unwrap();
        assert!(run.contains(".TH peerd-run 8"), "{run}");
        assert!(run.contains("peerd 1.2.3"), "{run}");
        let top = std::fs::read_to_string(dir.path().join("peerd.8")).unwrap();
        assert!(top.contains("\\fBpeerd-vpc-add\\fR(8)"), "{top}");
        assert!(top.contains("/etc/peerd/peerd.toml"), "{top}");
    }
}
