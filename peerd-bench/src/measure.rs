//! The measurements: packet rates (generator or sockets), TCP throughput, latency, and
//! program cost with BPF_PROG_TEST_RUN.
use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};

use crate::{
    in_ns, in_ns_opt,
    object::{attach_tcx, BenchObj},
    peerd_api, pin_cpu, settled, sh,
    shared::NOT_RUN,
    topo::Path2,
    Res,
};

/// 64-byte frames (18-byte UDP payload) sent with sendmmsg from a sender pinned to CPU 0 for
/// `secs`; the sink (CPU 1) counts what arrives. Returns received packets per second.
pub fn pps(p: &Path2, secs: f64) -> f64 {
    let port = 9000;
    let dst = SocketAddr::new(p.dst.into(), port);
    let src = SocketAddr::new(p.src.into(), 0);
    let rx = in_ns(&p.dst_ns, move || UdpSocket::bind(dst).expect("bind sink"));
    let tx = in_ns(&p.src_ns, move || {
        UdpSocket::bind(src).expect("bind sender")
    });
    tx.connect(dst).expect("connect");
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    let sink = std::thread::spawn(move || {
        pin_cpu(1);
        let mut bufs = vec![[0u8; 64]; 64];
        while !s2.load(Ordering::Relaxed) {
            let n = recv_batch(&rx, &mut bufs);
            c2.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let deadline = Duration::from_secs_f64(secs);
    let sender = std::thread::spawn(move || {
        pin_cpu(0);
        let payload = [0x42u8; 18];
        let start = Instant::now();
        while start.elapsed() < deadline {
            send_batch(&tx, &payload, 64);
        }
    });
    // Count only the steady window: skip the first 10%.
    std::thread::sleep(deadline.mul_f64(0.1));
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    sender.join().unwrap();
    let c1 = count.load(Ordering::Relaxed);
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sink.join().unwrap();
    (c1 - c0) as f64 / dt
}

/// Live-frames generator into a counting TC sink on the destination link: packets per second
/// the path delivers.
pub fn pps_sink(obj: &mut BenchObj, p: &Path2, frames: u32) -> Res<f64> {
    // Attached from inside the destination namespace (ifindex lookups are per namespace).
    let sink = obj.tc("bench_sink_tc")?;
    let link_id = in_ns(&p.dst_ns, || attach_tcx(sink, p.dst_dev))?;
    let before = obj.sink_count()?;
    let gen = generator(obj, p)?;
    let elapsed = run_generator(gen, p, frames)?;
    let after = settled(|| obj.sink_count().unwrap_or(0));
    obj.tc("bench_sink_tc")?
        .detach(link_id)
        .map_err(|e| e.to_string())?;
    Ok(after.saturating_sub(before) as f64 / elapsed.as_secs_f64())
}

/// Runs the generator for `frames` frames from CPU 0 (inside the generator's namespace).
pub fn run_generator(gen: &mut Xdp, p: &Path2, frames: u32) -> Res<Duration> {
    let mut frame = frame_v4(p.src.octets(), p.dst.octets());
    frame[0..6].copy_from_slice(&p.gen_mac);
    frame[36..38].copy_from_slice(&9000u16.to_be_bytes());
    // struct xdp_md: data 0, data_end = size, ingress_ifindex at 12.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&p.gen_ifindex.to_ne_bytes());
    let (elapsed, result) = in_ns_opt(p.gen_ns.as_deref(), || {
        pin_cpu(0);
        let t = Instant::now();
        let r = gen.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        });
        (
            t.elapsed(),
            r.map(|_| ()).map_err(|e| format!("live frames: {e}")),
        )
    });
    result?;
    Ok(elapsed)
}

/// The generator program, configured for path `p`.
pub fn generator<'a>(obj: &'a mut BenchObj, p: &Path2) -> Res<&'a mut Xdp> {
    let mut frame = frame_v4(p.src.octets(), p.dst.octets());
    frame[0..6].copy_from_slice(&p.gen_mac);
    obj.set_gen(&frame, p.gen_redirect)?;
    obj.xdp("bench_gen_xdp")
}

pub fn pps_live(p: &Path2, gen: &mut Xdp, frames: u32) -> Res<f64> {
    let dst = SocketAddr::new(p.dst.into(), 9000);
    let rx = in_ns(&p.dst_ns, move || UdpSocket::bind(dst).expect("bind sink"));
    set_rcvbuf(&rx, 32 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    let sink = std::thread::spawn(move || {
        pin_cpu(1);
        let mut bufs = vec![[0u8; 64]; 64];
        while !s2.load(Ordering::Relaxed) {
            let n = recv_batch(&rx, &mut bufs);
            c2.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let c0 = count.load(Ordering::Relaxed);
    let elapsed = run_generator(gen, p, frames);
    let c1 = settled(|| count.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    sink.join().unwrap();
    Ok((c1 - c0) as f64 / elapsed?.as_secs_f64())
}

fn set_rcvbuf(s: &UdpSocket, bytes: i32) {
    // SAFETY: valid fd and option pointer/size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        );
    }
}

fn send_batch(s: &UdpSocket, payload: &[u8], n: usize) {
    let mut iov: Vec<libc::iovec> = (0..n)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: all-zero msghdr is valid; fields set below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs point at valid iovecs for the call.
    unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
}

fn recv_batch(s: &UdpSocket, bufs: &mut [[u8; 64]]) -> usize {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: as in send_batch.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs point at valid buffers for the call.
    let n = unsafe {
        libc::recvmmsg(
            s.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    n.max(0) as usize
}

/// TCP throughput with iperf3 (Gbit/s).
pub fn tcp(p: &Path2, streams: u32, secs: u32) -> Res<f64> {
    let port = "5301";
    let dst = p.dst.to_string();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &p.dst_ns, "iperf3", "-s", "-1", "-B", &dst, "-p", port,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    // Ready once it listens (a probe connection would be taken as a test by iperf3).
    let ready = Instant::now();
    while !sh(&[
        "ip", "netns", "exec", &p.dst_ns, "ss", "-Hltn", "sport", "=", ":5301",
    ])
    .unwrap_or_default()
    .contains("5301")
    {
        if ready.elapsed() > Duration::from_secs(5) {
            let _ = server.kill();
            let _ = server.wait();
            return Err("iperf3 server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.src_ns,
            "iperf3",
            "-c",
            &dst,
            "-B",
            &p.src.to_string(),
            "-p",
            port,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("iperf3: {}", v["error"]))
}

/// UDP request/response round trips: (p50, p99) in microseconds.
pub fn latency(p: &Path2, n: usize) -> (f64, f64) {
    let dst = SocketAddr::new(p.dst.into(), 9100);
    let src = SocketAddr::new(p.src.into(), 0);
    let server = in_ns(&p.dst_ns, move || UdpSocket::bind(dst).unwrap());
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let client = in_ns(&p.src_ns, move || UdpSocket::bind(src).unwrap());
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        pin_cpu(1);
        let mut buf = [0u8; 64];
        while let Ok((len, from)) = server.recv_from(&mut buf) {
            if len == 1 && buf[0] == 0xff {
                return;
            }
            let _ = server.send_to(&buf[..len], from);
        }
    });
    // The client runs on the caller's thread, which the forwarding section pins to CPU 0.
    let mut rtts = Vec::with_capacity(n);
    let mut buf = [0u8; 64];
    for i in 0..n + 100 {
        let t = Instant::now();
        client.send_to(&(i as u64).to_be_bytes(), dst).unwrap();
        if client.recv_from(&mut buf).is_ok() && i >= 100 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = client.send_to(&[0xff], dst);
    let _ = echo.join();
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |f: f64| {
        rtts.get(((rtts.len() as f64 * f) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (q(0.50), q(0.99))
}

// ---------------------------------------------------------------------------------------------
// Program cost (BPF_PROG_TEST_RUN)

pub fn frame_v4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 46, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum: u32 = ip
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let c = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x9c, 0x40, 0, 7, 0, 26, 0, 0]);
    f.extend_from_slice(&[0x42; 18]);
    f
}

pub fn frame_v6(src: u128, dst: u128) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 26, 17, 64]);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    f.extend_from_slice(&[0x9c, 0x40, 0, 7, 0, 26, 0, 0]);
    f.extend_from_slice(&[0x42; 18]);
    f
}

/// Average ns per run of program `which` of the bench object over `repeat` runs on `frame`,
/// whose headers are also the restore template. Fails unless every run ended in `expect` (a
/// wrapper whose tail call did not happen returns `NOT_RUN`; a forward that did not forward
/// returns another verdict).
pub fn cost_of(
    obj: &mut BenchObj,
    which: &str,
    frame: &[u8],
    repeat: u32,
    expect: u32,
) -> Res<f64> {
    obj.set_gen(frame, None)?;
    // The TC programs see ingress_ifindex 1 (lo) through the context; XDP test runs get lo.
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&1u32.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 64];
    let r = if which.ends_with("_tc") {
        obj.tc(which)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
    } else {
        obj.xdp(which)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
    }
    .map_err(|e| format!("test_run {which}: {e}"))?;
    if r.return_value == NOT_RUN {
        return Err(format!(
            "test_run {which}: the wrapper's tail call did not happen"
        ));
    }
    if r.return_value != expect {
        return Err(format!(
            "test_run {which}: returned {}, expected {expect}",
            r.return_value
        ));
    }
    Ok(r.duration.as_nanos() as f64)
}

/// Memory the route trie uses per entry, from the kernel's own accounting (fdinfo memlock).
pub fn map_bytes_per_route(routes: usize) -> Option<f64> {
    let ids: Vec<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|m| m.name_as_str() == Some(peerd_api::ROUTES_V4_MAP))
        .map(|m| m.id())
        .collect();
    for e in fs::read_dir("/proc/self/fdinfo").ok()?.flatten() {
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
        };
        if let (Some(id), Some(mem)) = (field("map_id:"), field("memlock:")) {
            if ids.iter().any(|i| i.to_string() == id) {
                let v4_routes = routes / 2 + 1;
                return mem.parse::<f64>().ok().map(|m| m / v4_routes as f64);
            }
        }
    }
    None
}
