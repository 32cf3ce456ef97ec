//! A sequence-numbered UDP stream between two namespaces, for zero-loss tests: every
//! datagram lost is named by its number.
#![allow(dead_code, reason = "each test binary uses a different subset")]
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use super::env::{in_ns, Env};

/// A UDP stream with sequence numbers from a to b; `finish` returns (sent, lost).
pub struct Stream {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<Vec<bool>>,
}

impl Stream {
    /// Between VPCs `a` (10.0.0.1) and `b` (10.1.0.1) of one host.
    pub fn start(env: &Env) -> Stream {
        Self::between(
            &env.netns("a"),
            "10.0.0.1",
            &env.netns("b"),
            "10.1.0.1:5555".parse().unwrap(),
        )
    }

    /// From `src` in namespace `from_ns` to `dst` in namespace `to_ns`.
    pub fn between(from_ns: &str, src: &str, to_ns: &str, dst: SocketAddr) -> Stream {
        let rx = in_ns(to_ns, move || UdpSocket::bind(dst).unwrap());
        let src: SocketAddr = SocketAddr::new(src.parse().unwrap(), 0);
        let tx = in_ns(from_ns, move || UdpSocket::bind(src).unwrap());
        // A big receive buffer so the stream is never lost in the socket.
        set_rcvbuf(&rx, 8 << 20);
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                tx.send_to(&seq.to_be_bytes(), dst).expect("send");
                seq += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            seq
        });
        let s = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 8];
            let mut quiet_after_stop = 0;
            loop {
                match rx.recv(&mut buf) {
                    Ok(8) => {
                        let n = u64::from_be_bytes(buf) as usize;
                        if seen.len() <= n {
                            seen.resize(n + 1, false);
                        }
                        seen[n] = true;
                    }
                    _ if s.load(Ordering::Relaxed) => {
                        quiet_after_stop += 1;
                        if quiet_after_stop > 3 {
                            return seen;
                        }
                    }
                    _ => {}
                }
            }
        });
        Stream {
            stop,
            sender,
            receiver,
        }
    }

    /// Stops; (datagrams sent, sequence numbers lost).
    pub fn finish(self) -> (u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().unwrap();
        let mut seen = self.receiver.join().unwrap();
        seen.resize(sent as usize, false);
        let lost = seen
            .iter()
            .enumerate()
            .filter(|(_, s)| !**s)
            .map(|(i, _)| i as u64)
            .collect();
        (sent, lost)
    }
}

fn set_rcvbuf(s: &UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd as _;
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
