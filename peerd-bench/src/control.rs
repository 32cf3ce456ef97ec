//! The control-plane section: peerd's own daemon brought up on rings of VPCs, time to
//! converge and to forward, memory, and one added peering applied by a reload.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    in_ns,
    peerd_api::Daemon,
    report::Results,
    topo::{add_lo_addr, Cleanup},
    Res,
};

/// Waits (at most 3 minutes) until the kernel has freed the namespaces deleted so far: the
/// slab count is back near `baseline`, or has not fallen for two seconds (slab accounting
/// keeps some freed objects counted). False if it was still falling at the limit.
pub fn netns_freed(baseline: u64) -> bool {
    let start = Instant::now();
    let (mut low, mut since) = (netns_objects(), Instant::now());
    loop {
        if low <= baseline + 2 || since.elapsed() >= Duration::from_secs(2) {
            return true;
        }
        if start.elapsed() > Duration::from_secs(180) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
        let now = netns_objects();
        if now < low {
            (low, since) = (now, Instant::now());
        }
    }
}

/// Network namespaces the kernel holds (live or not yet freed), from /proc/slabinfo.
pub fn netns_objects() -> u64 {
    fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("net_namespace "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mem_available_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Config with `n` VPCs in a ring, each peered with its two neighbours.
fn ring_config(
    prefix: &str,
    dir: &Path,
    pins: &Path,
    n: usize,
    extra: Option<(usize, usize)>,
) -> String {
    let mut s = format!(
        "[daemon]\nnetns_prefix = \"{prefix}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\nsocket = \"{}\"\n",
        dir.join("state").display(),
        pins.display(),
        dir.join("sock").display()
    );
    for i in 0..n {
        s += &format!(
            "[[vpc]]\nname = \"v{i}\"\ncidrs = [\"10.{}.{}.0/24\"]\n",
            100 + i / 256,
            i % 256
        );
        if n > 2 || (n == 2 && i == 0) {
            let (l, r) = ((i + n - 1) % n, (i + 1) % n);
            for (a, b) in [(i.min(r), i.max(r)), (l.min(i), l.max(i))] {
                if n == 2 && a == b {
                    continue;
                }
                s += &format!(
                    "  [[vpc.peering]]\n  id = \"pcx-{a}-{b}\"\n  peer = \"v{}\"\n",
                    if a == i { b } else { a }
                );
            }
        }
        if let Some((x, y)) = extra {
            if i == x || i == y {
                s += &format!(
                    "  [[vpc.peering]]\n  id = \"pcx-extra\"\n  peer = \"v{}\"\n",
                    if i == x { y } else { x }
                );
            }
        }
    }
    s
}

fn forwards(prefix: &str, from: usize, to: usize) -> bool {
    let a = Ipv4Addr::new(10, 100 + (from / 256) as u8, (from % 256) as u8, 1);
    let b = Ipv4Addr::new(10, 100 + (to / 256) as u8, (to % 256) as u8, 1);
    let (na, nb) = (format!("{prefix}v{from}"), format!("{prefix}v{to}"));
    if add_lo_addr(&na, a).is_err() || add_lo_addr(&nb, b).is_err() {
        return false;
    }
    let dst = SocketAddr::new(b.into(), 9200);
    let rx = in_ns(&nb, move || UdpSocket::bind(dst).unwrap());
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let tx = in_ns(&na, move || {
        UdpSocket::bind(SocketAddr::new(a.into(), 0)).unwrap()
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let _ = tx.send_to(b"x", dst);
        if rx.recv_from(&mut [0u8; 8]).is_ok() {
            return true;
        }
    }
    false
}

pub fn control_plane(prefix: &str, n: usize, res: &mut Results) -> Res<()> {
    let p = format!("{prefix}r{n}-");
    let dir = std::env::temp_dir().join(format!("{p}dir"));
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("{p}pins"));
    let mut c = Cleanup {
        dirs: vec![dir.clone()],
        pins: vec![pins.clone()],
        netns: (0..n).map(|i| format!("{p}v{i}")).collect(),
    };
    let cfg = dir.join("peerd.toml");
    fs::write(&cfg, ring_config(&p, &dir, &pins, n, None)).map_err(|e| e.to_string())?;
    let (rss0, mem0) = (rss_kib(), mem_available_kib());
    let t0 = Instant::now();
    let mut d = Daemon::start(&cfg)?;
    let started = t0.elapsed().as_secs_f64();
    let ok = n < 2 || forwards(&p, 0, 1);
    let to_forwarding = t0.elapsed().as_secs_f64();
    res.control_plane
        .insert(format!("vpcs={n}: config to converged (s)"), started);
    if n >= 2 {
        res.control_plane.insert(
            format!("vpcs={n}: config to forwarding (s)"),
            if ok { to_forwarding } else { f64::NAN },
        );
    }
    res.control_plane.insert(
        format!("vpcs={n}: daemon RSS growth (KiB)"),
        rss_kib().saturating_sub(rss0) as f64,
    );
    res.control_plane.insert(
        format!("vpcs={n}: host memory per VPC (KiB, MemAvailable delta)"),
        mem0.saturating_sub(mem_available_kib()) as f64 / n as f64,
    );
    if n >= 100 {
        // One added peering (both ends), applied by a reload.
        let (x, y) = (0, n / 2);
        fs::write(&cfg, ring_config(&p, &dir, &pins, n, Some((x, y))))
            .map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        d.reload()?;
        let applied = t1.elapsed().as_secs_f64() * 1000.0;
        res.control_plane
            .insert(format!("vpcs={n}: one added peering applied (ms)"), applied);
        if !forwards(&p, x, y) {
            res.notes
                .push(format!("vpcs={n}: the added peering did not forward"));
        }
    }
    drop(d);
    c.netns.sort();
    drop(c);
    Ok(())
}
