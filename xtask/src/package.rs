//! `cargo xtask package`: the .deb (cargo-deb). The release binary embeds the eBPF object
//! (peerd/build.rs), so the package needs no Rust, LLVM or bpf-linker on the machine that
//! installs it. The man pages and completions come from the binary itself (`peerd
//! generate-man`, `peerd completions`), into target/package-assets/, which
//! [package.metadata.deb] in peerd/Cargo.toml lists.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{build_release, output, root, run};

/// cargo-deb, pinned: this version builds with the workspace's Rust (1.95).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Installs cargo-deb unless `cargo deb --version` already works.
pub fn setup_cargo_deb() -> Result<()> {
    if let Some(v) = output(Command::new("cargo").args(["deb", "--version"])) {
        println!("ok: {} present", v.trim());
        return Ok(());
    }
    println!("installing cargo-deb {CARGO_DEB_VERSION}");
    run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// The cargo target directory (CARGO_TARGET_DIR, else target/ of the workspace).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root().join(t) })
        .unwrap_or_else(|| root().join("target"))
}

/// Where the generated man pages and completions go: the paths peerd/Cargo.toml's assets
/// name (relative to the workspace, whatever CARGO_TARGET_DIR says).
pub fn assets_dir() -> PathBuf {
    root().join("target/package-assets")
}

/// Completion scripts: shell, and the file name its standard directory expects.
const COMPLETIONS: &[(&str, &str)] =
    &[("bash", "peerd"), ("zsh", "_peerd"), ("fish", "peerd.fish")];

/// contrib/peerd.service as the package installs it: the binary in /usr/sbin (a source
/// install puts it in /usr/local/sbin, as the unit says), and no install instructions.
fn packaged_unit(source: &str) -> Result<String> {
    let body = &source[source.find("[Unit]").context("no [Unit] in the unit")?..];
    let unit = format!(
        "# peerd as a systemd service, installed by the peerd package (not enabled):\n\
         #   systemctl enable --now peerd\n{}",
        body.replace("/usr/local/sbin/peerd", "/usr/sbin/peerd")
    );
    if unit.contains("/usr/local") {
        bail!("contrib/peerd.service names /usr/local paths the package does not have");
    }
    Ok(unit)
}

/// Writes the unit, the man pages and the completion scripts of `peerd` (a built binary)
/// under `dir`.
fn generate_assets(peerd: &Path, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let unit = std::fs::read_to_string(root().join("contrib/peerd.service"))?;
    std::fs::write(dir.join("peerd.service"), packaged_unit(&unit)?)?;
    let man = dir.join("man");
    run(Command::new(peerd).arg("generate-man").arg(&man))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in COMPLETIONS {
        let out = Command::new(peerd)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {} completions {shell}", peerd.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "peerd completions {shell} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    Ok(())
}

/// Builds the release binary, its generated assets and the .deb; returns the .deb's path.
pub fn package() -> Result<PathBuf> {
    let root = root();
    build_release("peerd")?;
    let peerd = target_dir().join("release/peerd");
    generate_assets(&peerd, &assets_dir())?;
    let out = Command::new("cargo")
        .current_dir(&root)
        .args(["deb", "-p", "peerd", "--no-build"])
        .output()
        .context("running cargo deb (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb printed no .deb path")?;
    let deb = if deb.is_absolute() {
        deb
    } else {
        root.join(deb)
    };
    if !deb.is_file() {
        bail!(
            "cargo deb said it wrote {}, which is missing",
            deb.display()
        );
    }
    println!("package: {}", deb.display());
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_runs_usr_sbin_peerd_and_names_no_usr_local() {
        let source = std::fs::read_to_string(root().join("contrib/peerd.service")).unwrap();
        assert!(source.contains("/usr/local/sbin/peerd"));
        let unit = packaged_unit(&source).unwrap();
        assert!(unit.contains("\nExecStart=/usr/sbin/peerd run --config /etc/peerd/peerd.toml\n"));
        assert!(!unit.contains("/usr/local"), "{unit}");
        // Everything from [Unit] on is the source's, paths aside.
        let body = &source[source.find("[Unit]").unwrap()..];
        assert_eq!(
            unit.lines().filter(|l| !l.starts_with('#')).count(),
            body.lines().filter(|l| !l.starts_with('#')).count()
        );
        assert!(packaged_unit("[Service]\nExecStart=/usr/sbin/peerd\n").is_err());
        assert!(packaged_unit("[Unit]\nExecStartPost=/usr/local/bin/x\n").is_err());
    }
}
