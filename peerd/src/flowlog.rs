//! Flow logs ("VPC flow logs" for peerd): the datapath aggregates per source VPC and 5-tuple;
//! every window the daemon drains the aggregates and appends one JSON line per flow, rotating
//! the file by size.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use peerd_common::{DropReason, FlowKey, FlowValue, FLOW_ACCEPT, FLOW_REJECT_BASE};
use serde::Serialize;

/// One line of the flow log.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Record {
    /// Window in which the flow's packets were seen: first and last packet (Unix ms).
    pub start_ms: u64,
    pub end_ms: u64,
    pub src_vpc: String,
    pub dst_vpc: Option<String>,
    pub peering: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// "ACCEPT" or "REJECT".
    pub action: &'static str,
    pub reason: Option<&'static str>,
    pub packets: u64,
    pub bytes: u64,
}

/// Converts a bpf_ktime_get_ns (CLOCK_MONOTONIC) timestamp to Unix milliseconds.
fn wall_ms(mono_ns: u64, now_mono_ns: u64, now_wall: SystemTime) -> u64 {
    let wall_ns = now_wall
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    wall_ns.saturating_sub(now_mono_ns.saturating_sub(mono_ns)) / 1_000_000
}

pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Builds records; `vpc_name` / `peering_id` map slots to names.
pub fn records(
    flows: &[(FlowKey, FlowValue)],
    vpc_name: &dyn Fn(u32) -> Option<String>,
    peering_id: &dyn Fn(u32) -> Option<String>,
) -> Vec<Record> {
    let (now_mono, now_wall) = (monotonic_ns(), SystemTime::now());
    let addr = |family: u8, a: [u8; 16]| -> IpAddr {
        if family == 4 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    flows
        .iter()
        .map(|(k, v)| {
            let accept = v.verdict == FLOW_ACCEPT;
            Record {
                start_ms: wall_ms(v.first_ns, now_mono, now_wall),
                end_ms: wall_ms(v.last_ns, now_mono, now_wall),
                src_vpc: vpc_name(k.src_vpc).unwrap_or_else(|| format!("slot-{}", k.src_vpc)),
                dst_vpc: if accept { vpc_name(v.dst_vpc) } else { None },
                peering: if accept { peering_id(v.peering) } else { None },
                src: addr(k.family, k.src),
                dst: addr(k.family, k.dst),
                src_port: k.src_port,
                dst_port: k.dst_port,
                protocol: k.proto,
                action: if accept { "ACCEPT" } else { "REJECT" },
                reason: if accept {
                    None
                } else {
                    DropReason::from_u32(v.verdict - FLOW_REJECT_BASE).map(DropReason::name)
                },
                packets: v.packets,
                bytes: v.bytes,
            }
        })
        .collect()
}

/// An append-only JSON-lines file rotated at `max_bytes`, keeping `keep` old files.
pub struct Writer {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    pub records_written: u64,
    pub rotations: u64,
}

impl Writer {
    pub fn new(path: &Path, max_bytes: u64, keep: u32) -> Self {
        Self {
            path: path.to_owned(),
            max_bytes,
            keep,
            file: None,
            size: 0,
            records_written: 0,
            rotations: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(name(self.keep));
            for i in (1..self.keep).rev() {
                let _ = fs::rename(name(i), name(i + 1));
            }
            fs::rename(&self.path, name(1))?;
        }
        self.rotations += 1;
        self.size = 0;
        Ok(())
    }

    pub fn write(&mut self, records: &[Record]) -> io::Result<()> {
        for r in records {
            let mut line = serde_json::to_vec(r).expect("record serializes");
            line.push(b'\n');
            if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            let f = self.open()?;
            f.write_all(&line)?;
            self.size += line.len() as u64;
            self.records_written += 1;
        }
        if let Some(f) = &mut self.file {
            f.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            start_ms: i,
            end_ms: i,
            src_vpc: "a".into(),
            dst_vpc: Some("b".into()),
            peering: Some("pcx-ab".into()),
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.1.0.1".parse().unwrap(),
            src_port: 1,
            dst_port: 2,
            protocol: 17,
            action: "ACCEPT",
            reason: None,
            packets: i,
            bytes: i,
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let mut w = Writer::new(&path, 1024, 2);
        let line_len = serde_json::to_vec(&rec(1)).unwrap().len() as u64 + 1;
        let n = 3 * (1024 / line_len) + 2;
        for i in 0..n {
            w.write(&[rec(i)]).unwrap();
        }
        assert_eq!(w.rotations, 3);
        assert!(fs::metadata(&path).unwrap().len() <= 1024);
        assert!(
            dir.path().join("flows.jsonl.1").exists() && dir.path().join("flows.jsonl.2").exists()
        );
        assert!(
            !dir.path().join("flows.jsonl.3").exists(),
            "only `keep` rotated files"
        );
        for f in ["flows.jsonl", "flows.jsonl.1"] {
            for l in fs::read_to_string(dir.path().join(f)).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["action"], "ACCEPT");
            }
        }
    }
}
