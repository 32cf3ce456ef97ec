//! `cargo xtask cluster-demo`: a fleet of three hypervisors on this machine. An underlay
//! network namespace with a bridge and an etcd; three host namespaces (`pdc-h1` ...) joined to
//! it, each with its own underlay address and its own `peerd run` (configs/cluster/h*.toml);
//! the VPCs of configs/cluster/fleet.toml applied to etcd; a workload in every VPC. Ctrl-C
//! stops the daemons and removes everything the demo made.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{output, root, run, setup};

const UNDERLAY: &str = "pdc-ul";
const ETCD: &str = "10.77.0.254";
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// (host, VPC, address) of the demo's workloads.
const WORKLOADS: &[(&str, &str, &str)] = &[
    ("h1", "web", "10.10.1.1/32"),
    ("h1", "web", "2001:db8:10::1/128"),
    ("h2", "web", "10.10.2.1/32"),
    ("h2", "ops", "10.30.2.1/32"),
    ("h3", "db", "10.20.3.1/32"),
    ("h3", "db", "2001:db8:20::3/128"),
];

fn netns(host: &str) -> String {
    format!("pdc-{host}")
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

/// Everything the demo made, removed on drop whatever happened.
struct Demo {
    etcd: Option<Child>,
    daemons: Vec<(String, Child)>,
    peerd: std::path::PathBuf,
    etcd_dir: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (_, c) in &mut self.daemons {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        let cfg = root().join("configs/cluster");
        for h in HOSTS {
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", netns(h)))
                .arg(&self.peerd)
                .args(["teardown", "--config"])
                .arg(cfg.join(format!("{h}.toml")))
                .stdout(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["netns", "del", &netns(h)])
                .status();
        }
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", UNDERLAY]).status();
        let _ = std::fs::remove_dir_all(&self.etcd_dir);
        println!("cluster demo removed");
    }
}

pub fn cluster_demo() -> Result<()> {
    setup()?;
    let root = root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "-p", "peerd"]))?;
    let peerd = root.join("target/release/peerd");
    let cfg = root.join("configs/cluster");
    if Path::new("/run/netns").join(UNDERLAY).exists() {
        bail!("a cluster demo seems to be running already (namespace {UNDERLAY} exists)");
    }
    let mut demo = Demo {
        etcd: None,
        daemons: Vec::new(),
        peerd: peerd.clone(),
        etcd_dir: std::env::temp_dir().join("peerd-cluster-demo-etcd"),
    };
    // The underlay: a bridge, and etcd on it.
    ip(&["netns", "add", UNDERLAY])?;
    ip(&["-n", UNDERLAY, "link", "set", "lo", "up"])?;
    ip(&["-n", UNDERLAY, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        UNDERLAY,
        "addr",
        "add",
        &format!("{ETCD}/24"),
        "dev",
        "br0",
    ])?;
    ip(&["-n", UNDERLAY, "link", "set", "br0", "up"])?;
    let _ = std::fs::remove_dir_all(&demo.etcd_dir);
    demo.etcd = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                UNDERLAY,
                "etcd",
                "--name",
                "demo",
                "--data-dir",
            ])
            .arg(&demo.etcd_dir)
            .args([
                "--listen-client-urls",
                &format!("http://{ETCD}:2379"),
                "--advertise-client-urls",
                &format!("http://{ETCD}:2379"),
                "--listen-peer-urls",
                &format!("http://{ETCD}:2380"),
                "--initial-advertise-peer-urls",
                &format!("http://{ETCD}:2380"),
                "--initial-cluster",
                &format!("demo=http://{ETCD}:2380"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?,
    );
    // The hosts.
    for (i, h) in HOSTS.iter().enumerate() {
        let ns = netns(h);
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let port = format!("to-{h}");
        ip(&[
            "-n", UNDERLAY, "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns",
            &ns,
        ])?;
        ip(&["-n", UNDERLAY, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.77.0.{}/24", i + 1),
            "dev",
            "ul0",
        ])?;
        ip(&["-n", &ns, "link", "set", "ul0", "up"])?;
    }
    let etcdctl = || {
        output(Command::new("ip").args([
            "netns",
            "exec",
            UNDERLAY,
            "etcdctl",
            "--endpoints",
            &format!("http://{ETCD}:2379"),
            "endpoint",
            "health",
        ]))
        .is_some()
    };
    wait(Duration::from_secs(30), "etcd to answer", etcdctl)?;
    // The fleet's VPCs, applied from the underlay (where etcd is).
    run(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{UNDERLAY}"))
        .arg(&peerd)
        .args(["apply", "--etcd", &format!("http://{ETCD}:2379")])
        .arg(cfg.join("fleet.toml")))?;
    // One peerd per host; nsenter changes only the network namespace (bpffs under /sys stays).
    for h in HOSTS {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns(h)))
            .arg(&peerd)
            .args(["run", "--config"])
            .arg(cfg.join(format!("{h}.toml")))
            .spawn()
            .with_context(|| format!("starting peerd on {h}"))?;
        demo.daemons.push((h.to_string(), child));
    }
    for (h, vpc, addr) in WORKLOADS {
        let ns = format!("{h}-{vpc}");
        wait(Duration::from_secs(60), &format!("namespace {ns}"), || {
            Path::new("/run/netns").join(&ns).exists()
        })?;
        let mut args = vec!["-n", ns.as_str(), "addr", "add", addr, "dev", "lo"];
        if addr.contains(':') {
            args.push("nodad");
        }
        ip(&args)?;
    }
    let p = peerd.display();
    let c = cfg.display();
    println!(
        "\ncluster demo up: etcd at {ETCD}:2379 (namespace {UNDERLAY}), hosts h1 h2 h3 \
         (namespaces pdc-h1..3, underlay 10.77.0.1..3).\nTry, in another shell:\n\
         \x20 nsenter --net=/run/netns/pdc-h1 {p} status --config {c}/h1.toml\n\
         \x20 ip netns exec h1-web ping 10.20.3.1          # web@h1 -> db@h3: peered, across hosts\n\
         \x20 ip netns exec h1-web ping 2001:db8:20::3     # IPv6 too\n\
         \x20 ip netns exec h1-web ping 10.10.2.1          # web@h1 -> web@h2: same VPC, two hosts\n\
         \x20 ip netns exec h2-ops ping 10.20.3.1          # ops -> db: not peered, nothing flows\n\
         \x20 nsenter --net=/run/netns/pdc-h1 {p} explain --config {c}/h1.toml --from web --src 10.10.1.1 --dst 10.20.3.1\n\
         \x20 ip netns exec {UNDERLAY} etcdctl --endpoints http://{ETCD}:2379 get --prefix /peerd/v1/ --keys-only\n\
         Ctrl-C stops the daemons and removes everything the demo made.\n"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)).context("Ctrl-C handler")?;
    while !stop.load(Ordering::SeqCst) {
        for (h, c) in &mut demo.daemons {
            if let Some(st) = c.try_wait()? {
                bail!("peerd on {h} exited: {st}");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn wait(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
