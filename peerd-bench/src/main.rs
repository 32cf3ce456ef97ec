//! `peerd-bench`: run by `cargo xtask bench` (needs root). Builds its own topologies (names
//! with the marker `pdb` and the pid, torn down at the end), measures, and writes
//! `results.json`, `REPORT.md` and `chart.svg` into `--out`.
//!
//! Forwarding scenarios, interleaved round by round in one run:
//! - `kernel-fwd+nft` / `kernel-fwd+nft-notrack`: a router namespace with IP forwarding and an
//!   nftables forward chain that accepts exactly the peered (source set, destination set) pairs;
//! - `ceiling-tc` / `ceiling-xdp`: an unconditional redirect (MACs set, no decision) per hook;
//! - `peerd-tc` / `peerd-xdp`: the real datapath, set up by the real daemon code.
//!
//! The `cluster` section (see `cluster`) measures cluster mode: cross-host forwarding against
//! a tunnel ceiling and the kernel, convergence on 10 hosts, and etcd usage.
//!
//! The generator, sink, ceilings and cost wrappers are this crate's own eBPF object
//! (`peerd-bench-ebpf`, see `object`); peerd's daemon and datapath are reached only through
//! `peerd_api`.
mod cluster;
mod control;
mod measure;
mod object;
mod peerd_api;
mod report;
#[path = "../../peerd-bench-ebpf/src/shared.rs"]
mod shared;
mod topo;

use std::{
    collections::BTreeMap,
    fs,
    os::fd::AsFd as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use object::BenchObj;
use peerd_api::{Datapath, Tables};
use report::{stat, Results, ScaleRow};
use topo::Cleanup;

type Res<T> = Result<T, String>;

// Verdicts (uapi values) the cost rows must end in.
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
const TC_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn sh(args: &[&str]) -> Res<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a thread inside namespace `ns` (None: this one).
fn in_ns_opt<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let path = ns.map(|ns| PathBuf::from("/run/netns").join(ns));
    std::thread::scope(|sc| {
        sc.spawn(move || {
            if let Some(path) = path {
                let file = fs::File::open(&path).expect("open netns");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns");
            }
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    in_ns_opt(Some(ns), f)
}

/// Polls `read` until two readings 10 ms apart agree (what was in flight has landed), for at
/// most a second; returns the last reading.
fn settled(mut read: impl FnMut() -> u64) -> u64 {
    let start = Instant::now();
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = read();
        if now == last || start.elapsed() > Duration::from_secs(1) {
            return now;
        }
        last = now;
    }
}

fn pin_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let _ = set.set(cpu % cpus);
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

fn main() {
    if let Err(e) = run() {
        eprintln!("peerd-bench: {e}");
        std::process::exit(1);
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds: usize = arg("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "bench".into()));
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    peerd_api::ensure_bpffs()?;
    let prefix = format!("pdb{}", std::process::id() % 100_000);
    let mut c = Cleanup::default();
    let mut res = Results {
        rounds,
        ..Default::default()
    };
    res.machine.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
    );
    res.machine.insert(
        "kernel".into(),
        sh(&["uname", "-r"]).unwrap_or_default().trim().to_owned(),
    );
    if let Ok(cpuinfo) = fs::read_to_string("/proc/cpuinfo") {
        if let Some(m) = cpuinfo.lines().find(|l| l.starts_with("model name")) {
            res.machine.insert(
                "cpu".into(),
                m.split(':').nth(1).unwrap_or("").trim().to_owned(),
            );
        }
    }

    let only = arg("--only").unwrap_or_else(|| "cost,forwarding,control,cluster".into());
    let section = |name: &str| only.split(',').any(|s| s == name);

    // 1. Program cost, and the forwarding rate of one hot pair as the tables grow.
    let repeat = if quick { 100_000 } else { 1_000_000 };
    // The generator and the sink, for the scale and forwarding sections.
    let mut bench = BenchObj::load()?;
    // peerd's object, loaded on its own: the cost wrappers tail-call its entry points, and the
    // scale section's hot pair runs its TC program.
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("{prefix}-cost"));
    let mut dp = if section("cost") || section("scale") {
        c.pins.push(pins.clone());
        let mut dp = Datapath::load(&pins)?;
        bench.set_next(&mut dp)?;
        Some(dp)
    } else {
        None
    };
    if let (true, Some(dp)) = (section("cost"), dp.as_mut()) {
        eprintln!("program cost ...");
        dp.sync(&Tables::scale(2, 2))?;
        // The ceiling's target for what arrives on lo, where test runs arrive.
        bench.set_target(
            1,
            shared::BenchTarget {
                ifindex: 1,
                dst_mac: [2, 0, 0, 0, 0, 1],
                src_mac: [2, 0, 0, 0, 0, 0xfe],
            },
        )?;
        let f4 = measure::frame_v4([10, 1, 0, 1], [10, 2, 0, 1]);
        let f6 = measure::frame_v6(
            0xfd00_0001_0000_0000_0000_0000_0000_0001,
            0xfd00_0002_0000_0000_0000_0000_0000_0001,
        );
        let spoofed = measure::frame_v4([10, 9, 0, 1], [10, 2, 0, 1]);
        let no_route = measure::frame_v4([10, 1, 0, 1], [10, 9, 0, 1]);
        // (row, program, frame, the verdict every run must end in).
        #[rustfmt::skip]
        let cases: [(&str, &str, &Vec<u8>, u32); 10] = [
            ("empty-tc", "bench_empty_tc", &f4, TC_OK),
            ("restore-tc", "bench_restore_tc", &f4, TC_OK),
            ("ceiling-tc", "bench_redirect_tc", &f4, TC_REDIRECT),
            ("peerd-tc forward IPv4", "bench_peerd_tc", &f4, TC_REDIRECT),
            ("peerd-tc forward IPv6", "bench_peerd_tc", &f6, TC_REDIRECT),
            ("peerd-tc drop (spoofed source)", "bench_peerd_tc", &spoofed, TC_SHOT),
            ("peerd-tc drop (no route)", "bench_peerd_tc", &no_route, TC_SHOT),
            ("empty-xdp", "bench_empty_xdp", &f4, XDP_PASS),
            ("restore-xdp", "bench_restore_xdp", &f4, XDP_PASS),
            ("peerd-xdp forward IPv4", "bench_peerd_xdp", &f4, XDP_REDIRECT),
        ];
        // Interleave the cases, keep the median of rounds.
        let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..rounds.max(3) {
            for &(name, prog, frame, expect) in &cases {
                samples
                    .entry(name)
                    .or_default()
                    .push(measure::cost_of(&mut bench, prog, frame, repeat, expect)?);
            }
        }
        for (name, v) in samples {
            res.program_cost_ns.insert(name.to_owned(), stat(v).median);
        }
        // peerd's cost is over the wrapper that restores the headers and tail-calls the empty
        // program (the same work minus peerd's program); the ceiling's over the empty program.
        let pc = res.program_cost_ns.clone();
        for (k, v) in &pc {
            let xdp = k.contains("xdp");
            let base = match (k.starts_with("peerd"), xdp) {
                (true, false) => pc["restore-tc"],
                (true, true) => pc["restore-xdp"],
                (false, false) => pc["empty-tc"],
                (false, true) => pc["empty-xdp"],
            };
            if !k.starts_with("empty") {
                res.program_cost_over_empty_ns.insert(k.clone(), v - base);
            }
        }
    }
    if let (true, Some(dp)) = (section("cost") || section("scale"), dp.as_mut()) {
        // Scale: routes per VPC, VPCs present. Cost with BPF_PROG_TEST_RUN, and the rate of a
        // real hot pair (two namespaces whose links run this datapath) with the same tables.
        eprintln!("scale ...");
        // Its own cleanup: gone before the next section starts.
        let mut sc = Cleanup::default();
        let hot = topo::scale_path(&format!("{prefix}-"), dp, &mut sc)?;
        let f4 = measure::frame_v4([10, 1, 0, 1], [10, 2, 0, 1]);
        let grid: &[(u32, u32)] = if quick {
            &[(2, 1), (2, 100)]
        } else {
            &[(2, 1), (2, 100), (2, 10_000), (100, 100), (1000, 100)]
        };
        let frames: u32 = if quick { 300_000 } else { 2_000_000 };
        for &(vpcs, routes) in grid {
            let mut t = Tables::scale(vpcs, routes);
            hot.patch(&mut t);
            let t0 = Instant::now();
            dp.sync(&t)?;
            let sync_s = t0.elapsed().as_secs_f64();
            let (mut cost, mut rate) = (Vec::new(), Vec::new());
            for _ in 0..rounds.max(3) {
                let e = measure::cost_of(&mut bench, "bench_restore_tc", &f4, repeat, TC_OK)?;
                let p = measure::cost_of(&mut bench, "bench_peerd_tc", &f4, repeat, TC_REDIRECT)?;
                cost.push(p - e);
                rate.push(measure::pps_sink(&mut bench, &hot.path, frames)?);
            }
            let key = format!(
                "routes/VPC={routes} VPCs={vpcs} (routes in all {})",
                t.route_count()
            );
            res.scale.push(ScaleRow {
                tables: key,
                cost_over_baseline_ns: stat(cost),
                pps_64b: stat(rate),
                sync_s,
            });
            if vpcs == 1000 || (quick && routes == 100) {
                res.map_bytes_per_route = measure::map_bytes_per_route(t.route_count());
            }
        }
    }

    // 2. Forwarding, interleaved.
    if section("forwarding") {
        eprintln!("building forwarding topologies ...");
        // Declared before what uses them: removed last, and before the control plane runs
        // (live topologies with programs attached slow its setup down).
        let mut fc = Cleanup::default();
        // The whole section runs with this thread, and every thread and process it starts
        // (iperf3 among them), on CPU 0 unless a measurement pins one elsewhere (the sinks and
        // the echo server on CPU 1); the previous affinity comes back afterwards, so the
        // control plane below runs on every CPU.
        let pid = nix::unistd::Pid::from_raw(0);
        let saved = nix::sched::sched_getaffinity(pid).map_err(|e| e.to_string())?;
        pin_cpu(0);
        let mut paths = Vec::new();
        paths.push(topo::kernel_fwd(&format!("{prefix}-"), true, &mut fc)?);
        paths.push(topo::kernel_fwd(&format!("{prefix}-"), false, &mut fc)?);
        let (ct, _ct_obj) = topo::ceiling_path(&format!("{prefix}-"), false, &mut fc)?;
        let (cx, _cx_obj) = topo::ceiling_path(&format!("{prefix}-"), true, &mut fc)?;
        let (pt, pt_d) = topo::peerd_path(&format!("{prefix}-"), "tc", &mut fc)?;
        let (px, px_d) = topo::peerd_path(&format!("{prefix}-"), "xdp", &mut fc)?;
        paths.extend([ct, cx, pt, px]);
        let secs = if quick { 0.5 } else { 2.0 };
        let frames: u32 = if quick { 300_000 } else { 2_000_000 };
        let tcp_secs = if quick { 1 } else { 3 };
        let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for round in 0..rounds {
            eprintln!("round {}/{rounds} ...", round + 1);
            for p in &paths {
                let mut push = |m: &str, v: f64| {
                    samples
                        .entry((p.name.to_owned(), m.to_owned()))
                        .or_default()
                        .push(v)
                };
                let gen = measure::generator(&mut bench, p);
                let r = gen.and_then(|g| measure::pps_live(p, g, frames));
                if std::env::var_os("PEERD_BENCH_DEBUG").is_some() {
                    eprintln!("{}: {r:?}", p.name);
                    for d in [&pt_d, &px_d] {
                        eprintln!("  {}", d.counters());
                    }
                    let _ = Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &p.dst_ns,
                            "nstat",
                            "-az",
                            "UdpInErrors",
                            "UdpRcvbufErrors",
                            "UdpInDatagrams",
                            "IpInReceives",
                            "IpInAddrErrors",
                            "IpInDiscards",
                        ])
                        .status();
                }
                match r {
                    Ok(v) => push("pps_64B_udp_sink", v),
                    Err(e) => res.notes.push(format!("{}: {e}", p.name)),
                }
                push("pps_64B_socket_sender", measure::pps(p, secs));
                match measure::pps_sink(&mut bench, p, frames) {
                    Ok(v) => push("pps_64B", v),
                    Err(e) => res.notes.push(format!("{}: {e}", p.name)),
                }
                match measure::tcp(p, 1, tcp_secs) {
                    Ok(g) => push("tcp_1_stream_gbps", g),
                    Err(e) => res.notes.push(format!("{}: {e}", p.name)),
                }
                if let Ok(g) = measure::tcp(p, 4, tcp_secs) {
                    push("tcp_4_streams_gbps", g);
                }
                let (p50, p99) = measure::latency(p, if quick { 500 } else { 3000 });
                push("latency_p50_us", p50);
                push("latency_p99_us", p99);
            }
        }
        for ((s, m), v) in samples {
            res.forwarding.entry(s).or_default().insert(m, stat(v));
        }
        drop(paths);
        nix::sched::sched_setaffinity(pid, &saved).map_err(|e| e.to_string())?;
    }
    drop(bench);
    drop(dp);

    // 3. Control plane.
    let custom: Vec<usize> = arg("--vpcs")
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let sizes: &[usize] = if !section("control") {
        &[]
    } else if !custom.is_empty() {
        &custom
    } else if quick {
        &[1, 100]
    } else {
        &[1, 100, 1000]
    };
    // Deleted namespaces are freed by the kernel in the background (cleanup_net), taking the
    // same locks and grace periods a setup needs: each size starts once the previous size's
    // namespaces are gone, so it is measured on a quiet kernel.
    let baseline = control::netns_objects();
    for &n in sizes {
        if !control::netns_freed(baseline) {
            res.notes.push(format!(
                "control plane at {n} VPCs: started while the kernel was still freeing namespaces"
            ));
        }
        eprintln!("control plane, {n} VPCs ...");
        match control::control_plane(&format!("{prefix}-"), n, &mut res) {
            Ok(()) => {}
            Err(e) => res.notes.push(format!("control plane at {n} VPCs: {e}")),
        }
    }

    // 4. Cluster mode: cross-host forwarding, convergence on 10 hosts, etcd usage.
    if section("cluster") {
        // As between the control plane's sizes: started once its namespaces are freed.
        if !control::netns_freed(baseline) {
            res.notes
                .push("cluster: started while the kernel was still freeing namespaces".to_owned());
        }
        eprintln!("cluster: cross-host forwarding ...");
        if let Err(e) = cluster::forwarding(&format!("{prefix}-"), rounds, quick, &mut res) {
            res.notes.push(format!("cluster forwarding: {e}"));
        }
        eprintln!("cluster: convergence on 10 hosts, etcd usage ...");
        if let Err(e) = cluster::convergence(&format!("{prefix}-"), 10, quick, &mut res) {
            res.notes.push(format!("cluster convergence: {e}"));
        }
    }
    drop(c);
    remove_backstops(&prefix);

    report::write_results(&out, &res)
}

/// The backstop tables the daemons of this run made in the host's namespace (peerd's
/// `teardown` is not run for them: their namespaces go with the topologies).
fn remove_backstops(prefix: &str) {
    let own = format!("peerd_{prefix}_");
    let Ok(out) = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.strip_prefix("table inet ") {
            if name.starts_with(&own) {
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", "inet", name])
                    .status();
            }
        }
    }
}
