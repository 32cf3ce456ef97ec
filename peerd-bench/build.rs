//! Builds the benchmark's eBPF programs (`peerd-bench-ebpf`) with the nightly toolchain and
//! leaves the object in `OUT_DIR/peerd-bench-ebpf`, where `src/object.rs` embeds it, exactly
//! as peerd/build.rs builds peerd's datapath. `AYA_BUILD_SKIP=1` skips the eBPF build (an
//! empty object is embedded) so the userspace parts build anywhere.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

const EBPF: &str = "peerd-bench-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join(EBPF), b"").context("writing empty eBPF object")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF)
        .ok_or_else(|| anyhow!("{EBPF} package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{EBPF} manifest has no parent"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: EBPF,
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
