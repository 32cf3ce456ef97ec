//! Builds the eBPF datapath (`peerd-ebpf`) with the nightly toolchain and leaves the object in
//! `OUT_DIR/peerd`, where `src/datapath` embeds it. `AYA_BUILD_SKIP=1` skips the eBPF build
//! (an empty object is embedded) so the pure userspace parts build and test anywhere.
//!
//! Also sets `PEERD_GIT_COMMIT` for `peerd --version`: `git rev-parse --short HEAD`, or the
//! `PEERD_GIT_COMMIT` environment variable (a package built outside git), else "unknown".
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    git_commit();
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join("peerd"), b"").context("writing empty eBPF object")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "peerd-ebpf")
        .ok_or_else(|| anyhow!("peerd-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("peerd-ebpf manifest has no parent"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "peerd-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// Runs git in this package's directory; None when git or the repository is missing.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env::var_os("CARGO_MANIFEST_DIR")?)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// `cargo:rustc-env=PEERD_GIT_COMMIT=...`, rerun when HEAD or the branch it points at moves
/// (paths from git itself: a worktree keeps HEAD apart from the refs).
fn git_commit() {
    println!("cargo:rerun-if-env-changed=PEERD_GIT_COMMIT");
    let commit = env::var("PEERD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PEERD_GIT_COMMIT={commit}");
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for r in watch {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &r]) {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
}
