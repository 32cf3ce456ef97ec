//! `cargo xtask`: set up a fresh machine, run the whole test suite, run the demo, build the
//! .deb.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};

mod cluster_demo;
mod package;
use clap::{Parser, Subcommand};

/// Debian packages peerd's build, tests and benchmarks need.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iputils-ping",
    "nftables",
    "iperf3",
    // The upgrade test pins a map with an old layout.
    "bpftool",
    // Cluster mode: etcd for the tests; protoc and the well-known .proto files (in
    // libprotobuf-dev) for the etcd-client crate's build script.
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // `cargo xtask package`: cargo-deb's $auto dependencies (dpkg-shlibdeps).
    "dpkg-dev",
];
/// Marker in every name the tests create (namespaces, links, pin dirs).
const TEST_MARKER: &str = "pdt";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install, idempotently, what a fresh machine lacks.
    Setup,
    /// Setup, then the whole test suite (nextest), then a check that tests left nothing behind.
    Test {
        /// Extra arguments for `cargo nextest run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, and run peerd on configs/demo.toml in the foreground.
    Demo,
    /// Setup, build, and run a fleet of three hosts (network namespaces, each with its own
    /// peerd) on one etcd: cluster mode (configs/cluster/).
    ClusterDemo,
    /// Setup, then build the .deb (release binary with the eBPF object embedded, unit, sample
    /// configuration, man pages, completions) into target/debian/.
    Package,
    /// Benchmarks: peerd against the kernel and the hooks' ceilings, and at scale; writes
    /// bench/results.json, bench/REPORT.md and bench/chart.svg.
    Bench {
        /// A short smoke run (fewer rounds, shorter measurements, smaller scales).
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds (default 5; 1 with --quick).
        #[arg(long)]
        rounds: Option<u32>,
        /// Output directory.
        #[arg(long, default_value = "bench")]
        out: PathBuf,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// `cargo build --release -p package` in the workspace.
fn build_release(package: &str) -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "-p", package]))
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn apt_missing() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

/// Is bpffs mounted at /sys/fs/bpf, according to a /proc/mounts text?
fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    })
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn setup() -> Result<()> {
    if !is_root() {
        bail!("cargo xtask setup needs root (apt, bpffs, and the tests create namespaces)");
    }
    let missing = apt_missing();
    if missing.is_empty() {
        println!("ok: apt packages present ({})", APT_PACKAGES.join(" "));
    } else {
        println!("installing {}", missing.join(" "));
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("ok: rust-src for nightly present");
    } else {
        println!("installing rust-src for nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = cargo_bin().join("bpf-linker");
    if output(Command::new(&linker).arg("--version")).is_some() {
        println!("ok: bpf-linker present");
    } else {
        println!("installing bpf-linker (built against LLVM 22, about 75 s)");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if bpffs_mounted(&mounts) {
        println!("ok: bpffs mounted at /sys/fs/bpf");
    } else {
        println!("mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    package::setup_cargo_deb()
}

/// Names with the test marker that are still around after the suite.
fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    for l in output(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
    {
        if l.contains(TEST_MARKER) {
            out.push(format!("netns {l}"));
        }
    }
    for l in output(Command::new("ip").args(["-o", "link", "show"]))
        .unwrap_or_default()
        .lines()
    {
        let name = l
            .split(':')
            .nth(1)
            .unwrap_or("")
            .trim()
            .split('@')
            .next()
            .unwrap_or("");
        if name.starts_with(TEST_MARKER) {
            out.push(format!("link {name}"));
        }
    }
    for l in output(Command::new("nft").args(["list", "tables"]))
        .unwrap_or_default()
        .lines()
    {
        if l.contains(&format!("peerd_{TEST_MARKER}")) {
            out.push(format!("nftables {l}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(TEST_MARKER) {
                out.push(format!("bpffs /sys/fs/bpf/{n}"));
            }
        }
    }
    out
}

/// Removes what an earlier, interrupted run left (a test killed by a timeout runs no Drop):
/// names with the test marker belong to the test suite alone.
fn sweep(left: &[String]) {
    for l in left {
        let (kind, name) = l.split_once(' ').unwrap_or(("", l));
        let name = name.split_whitespace().next().unwrap_or(name);
        let _ = match kind {
            "netns" => Command::new("ip").args(["netns", "delete", name]).output(),
            "link" => Command::new("ip").args(["link", "delete", name]).output(),
            "nftables" => {
                let fields: Vec<&str> = l.split_whitespace().collect();
                // "nftables table <family> <name>"
                match fields.as_slice() {
                    [_, _, family, table] => Command::new("nft")
                        .args(["delete", "table", family, table])
                        .output(),
                    _ => continue,
                }
            }
            "bpffs" => {
                let _ = std::fs::remove_dir_all(name);
                continue;
            }
            _ => continue,
        };
    }
}

fn test(args: &[String]) -> Result<ExitCode> {
    setup()?;
    let before = leftovers();
    if !before.is_empty() {
        println!(
            "removing what an earlier test run left: {}",
            before.join(", ")
        );
        sweep(&before);
    }
    // The package test (tests/package.rs) installs this .deb into a scratch root. A failed
    // package build fails that test, not the rest of the suite.
    let deb = package::package().unwrap_or_else(|e| {
        println!("cargo xtask package failed: {e:#}");
        PathBuf::from("(cargo xtask package failed: see the top of this run)")
    });
    // Everything on the TC datapath, then the namespace tests again on the XDP datapath: both
    // datapaths must pass the same integration suite. Each pass ends with nextest's summary.
    let nextest = |env: Option<(&str, &str)>, filter: Option<&str>| {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root())
            .args([
                "nextest",
                "run",
                "--workspace",
                // The eBPF crates build only for the BPF target (through build.rs).
                "--exclude",
                "peerd-ebpf",
                "--exclude",
                "peerd-bench-ebpf",
                "--no-fail-fast",
                // Tests that need root are #[ignore = "needs root"]: this runs them too.
                "--run-ignored",
                "all",
            ])
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env("PEERD_TEST_DEB", &deb);
        if let Some(f) = filter {
            cmd.args(["-E", f]);
        }
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.status().context("running cargo nextest")
    };
    println!("== pass 1 of 2: every test, TC datapath");
    let tc = nextest(None, None)?;
    println!("== pass 2 of 2: the namespace tests again, XDP datapath");
    let xdp = nextest(
        Some(("PEERD_TEST_DATAPATH", "xdp")),
        Some("binary(peering) | binary(routing) | binary(operations) | binary(observability) | binary(failclosed) | binary(datapath_edges) | binary(workloads)"),
    )?;
    let status = if tc.success() { xdp } else { tc };
    // Silent when clean, so the test runner's summary stays the last thing printed.
    let left = leftovers();
    if !left.is_empty() {
        println!("leftover check: the tests left {}", left.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1) as u8)
    })
}

fn bench(quick: bool, rounds: Option<u32>, out: &Path) -> Result<()> {
    setup()?;
    let root = root();
    // peerd itself too: the cluster section runs `target/release/peerd` on every host.
    build_release("peerd")?;
    build_release("peerd-bench")?;
    let mut cmd = Command::new(root.join("target/release/peerd-bench"));
    cmd.current_dir(&root).arg("--out").arg(out);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(r) = rounds {
        cmd.args(["--rounds", &r.to_string()]);
    }
    run(&mut cmd)?;
    println!("report: {}", root.join(out).join("REPORT.md").display());
    Ok(())
}

fn demo() -> Result<()> {
    setup()?;
    let root = root();
    build_release("peerd")?;
    let peerd = root.join("target/release/peerd");
    let config = root.join("configs/demo.toml");
    println!(
        "\nstarting peerd on {cfg}. In another shell:\n  {p} status --config {cfg}\n  ip netns list\n  ip netns exec vpc-web ping 10.20.0.1   (web -> db is peered)\nStop it with Ctrl-C (the datapath stays); remove everything with:\n  {p} teardown --config {cfg}\n",
        p = peerd.display(),
        cfg = config.display()
    );
    let mut child = Command::new(&peerd)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .spawn()
        .context("starting peerd")?;
    // Workloads are attached by others (SPEC §2); the demo adds one address per VPC once
    // peerd has created the namespaces.
    let status = || {
        output(
            Command::new(&peerd)
                .args(["status", "--config"])
                .arg(&config),
        )
        .is_some()
    };
    let start = std::time::Instant::now();
    while !status() {
        if start.elapsed() > std::time::Duration::from_secs(60) || child.try_wait()?.is_some() {
            bail!("peerd did not come up");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for (ns, addrs) in DEMO_WORKLOADS {
        for a in *addrs {
            let have = output(Command::new("ip").args(["-n", ns, "addr", "show", "dev", "lo"]))
                .unwrap_or_default();
            if !have.contains(&format!(" {a} ")) && !have.contains(&format!(" {a}/")) {
                run(Command::new("ip").args(["-n", ns, "addr", "add", a, "dev", "lo"]))?;
            }
        }
    }
    println!("demo workloads added: {DEMO_WORKLOADS:?}");
    let st = child.wait()?;
    if !st.success() {
        bail!("peerd exited: {st}");
    }
    Ok(())
}

const DEMO_WORKLOADS: &[(&str, &[&str])] = &[
    ("vpc-web", &["10.10.0.1/32", "2001:db8:10::1/128"]),
    ("vpc-db", &["10.20.0.1/32", "2001:db8:20::1/128"]),
    ("vpc-ops", &["10.30.0.1/32"]),
];

fn main() -> Result<ExitCode> {
    match Cli::parse().cmd {
        Cmd::Setup => setup().map(|_| ExitCode::SUCCESS),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo().map(|_| ExitCode::SUCCESS),
        Cmd::Package => setup()
            .and_then(|_| package::package())
            .map(|_| ExitCode::SUCCESS),
        Cmd::ClusterDemo => cluster_demo::cluster_demo().map(|_| ExitCode::SUCCESS),
        Cmd::Bench { quick, rounds, out } => bench(quick, rounds, &out).map(|_| ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_bpffs_mount() {
        assert!(bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n"
        ));
        assert!(!bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n"
        ));
        assert!(!bpffs_mounted(""));
    }
}
