//! A VM stand-in: a tap device (made in the namespace the test runs in) and a thread reading
//! its frames that answers ARP requests and ICMP echo requests for one IPv4 address. The
//! device exists while the file is open: dropping the responder removes it, wherever it is.
#![allow(dead_code, reason = "each test binary uses a different subset")]
use std::{
    fs,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

/// The responder's MAC (locally administered).
pub const MAC: [u8; 6] = [0x02, 0x70, 0x64, 0x74, 0x00, 0x01];

pub struct Tap {
    pub name: String,
    stop: Arc<AtomicBool>,
    /// ICMP echo requests answered.
    pub echoes: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

impl Tap {
    /// Creates tap `name` and starts answering for `ip`.
    pub fn new(name: &str, ip: Ipv4Addr) -> Tap {
        assert!(name.len() < libc::IFNAMSIZ, "tap name {name} too long");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is (same layout).
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        assert_eq!(
            r,
            0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(AtomicU32::new(0));
        let (s, e) = (stop.clone(), echoes.clone());
        let thread = std::thread::spawn(move || serve(file, ip, &s, &e));
        Tap {
            name: name.to_owned(),
            stop,
            echoes,
            thread: Some(thread),
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut file: fs::File, ip: Ipv4Addr, stop: &AtomicBool, echoes: &AtomicU32) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. Bounded: the stop flag is looked at between polls.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        let Ok(len) = file.read(&mut buf) else {
            continue;
        };
        if let Some(reply) = answer(&buf[..len], ip) {
            if reply.len() > 34 && reply[23] == 1 {
                echoes.fetch_add(1, Ordering::Relaxed);
            }
            let _ = file.write(&reply);
        }
    }
}

/// The answer to frame `f` when it is an ARP request or an ICMP echo request for `ip`.
pub fn answer(f: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    let me = ip.octets();
    if f.len() < 42 {
        return None;
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let mut r = f.to_vec();
    r[0..6].copy_from_slice(&f[6..12]);
    r[6..12].copy_from_slice(&MAC);
    match ethertype {
        0x0806 => {
            // ARP request (op 1) for `ip`: reply (op 2) with our MAC.
            if f[20..22] != [0, 1] || f[38..42] != me {
                return None;
            }
            r[21] = 2;
            r[22..28].copy_from_slice(&MAC);
            r[28..32].copy_from_slice(&me);
            r[32..38].copy_from_slice(&f[22..28]);
            r[38..42].copy_from_slice(&f[28..32]);
            Some(r)
        }
        0x0800 => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let icmp = 14 + ihl;
            if f[23] != 1 || f[30..34] != me || f.len() < icmp + 8 || f[icmp] != 8 {
                return None;
            }
            // Swap the addresses, type 0 (echo reply), fix both checksums.
            r[26..30].copy_from_slice(&f[30..34]);
            r[30..34].copy_from_slice(&f[26..30]);
            r[22] = 64;
            r[24..26].copy_from_slice(&[0, 0]);
            let c = checksum(&r[14..icmp]);
            r[24..26].copy_from_slice(&c.to_be_bytes());
            r[icmp] = 0;
            r[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            let end = (14 + total).min(r.len());
            let c = checksum(&r[icmp..end]);
            r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            r.truncate(end);
            Some(r)
        }
        _ => None,
    }
}

/// The Internet checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
