//! Flow logs ("VPC flow logs" for peerd): the datapath aggregates per source VPC and 5-tuple;
//! every window the daemon drains the aggregates and appends one JSON line per flow, rotating
//! the file by size. A VPC that starts more flows in a window than its budget
//! (`peerd_common::FLOW_BUDGET`) gets the rest as aggregated records: one per family and
//! verdict, with no addresses, ports or protocol, and `"aggregated": true`.
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
    /// Addresses, ports and protocol of the flow; null in an aggregated record.
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub protocol: Option<u8>,
    /// "ACCEPT" or "REJECT".
    pub action: &'static str,
    pub reason: Option<&'static str>,
    pub packets: u64,
    pub bytes: u64,
    /// True for the packets of the VPC's flows past its budget in this window (all of one
    /// family and verdict, from many flows); `dst_vpc` and `peering` are null when they went
    /// over more than one peering.
    pub aggregated: bool,
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
            let tuple = !k.is_aggregate();
            Record {
                start_ms: wall_ms(v.first_ns, now_mono, now_wall),
                end_ms: wall_ms(v.last_ns, now_mono, now_wall),
                src_vpc: vpc_name(k.src_vpc).unwrap_or_else(|| format!("slot-{}", k.src_vpc)),
                dst_vpc: if accept { vpc_name(v.dst_vpc) } else { None },
                peering: if accept { peering_id(v.peering) } else { None },
                src: tuple.then(|| addr(k.family, k.src)),
                dst: tuple.then(|| addr(k.family, k.dst)),
                src_port: tuple.then_some(k.src_port),
                dst_port: tuple.then_some(k.dst_port),
                protocol: tuple.then_some(k.proto),
                action: if accept { "ACCEPT" } else { "REJECT" },
                reason: if accept {
                    None
                } else {
                    DropReason::from_u32(v.verdict - FLOW_REJECT_BASE).map(DropReason::name)
                },
                packets: v.packets,
                bytes: v.bytes,
                aggregated: !tuple,
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
            src: Some("10.0.0.1".parse().unwrap()),
            dst: Some("10.1.0.1".parse().unwrap()),
            src_port: Some(1),
            dst_port: Some(2),
            protocol: Some(17),
            action: "ACCEPT",
            reason: None,
            packets: i,
            bytes: i,
            aggregated: false,
        }
    }

    fn names(slot: u32) -> Option<String> {
        match slot {
            1 => Some("a".into()),
            2 => Some("b".into()),
            _ => None,
        }
    }

    fn peering(slot: u32) -> Option<String> {
        (slot == 1).then(|| "pcx-ab".into())
    }

    fn value(packets: u64, verdict: u32, dst_vpc: u32, peering: u32) -> FlowValue {
        FlowValue {
            packets,
            bytes: packets * 100,
            first_ns: 1,
            last_ns: 2,
            dst_vpc,
            peering,
            verdict,
            _pad: 0,
        }
    }

    #[test]
    fn aggregated_records_have_no_tuple_and_say_so() {
        let spoofed = FLOW_REJECT_BASE + DropReason::SpoofedSource as u32;
        let one = FlowKey {
            src_vpc: 1,
            family: 4,
            proto: 6,
            src_port: 40000,
            dst_port: 443,
            src: [10, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..FlowKey::default()
        };
        let flows = [
            (one, value(3, FLOW_ACCEPT, 2, 1)),
            (
                FlowKey::aggregate(1, 4, spoofed),
                value(5000, spoofed, 0, 0),
            ),
            (
                FlowKey::aggregate(1, 6, FLOW_ACCEPT),
                value(7, FLOW_ACCEPT, 2, 1),
            ),
        ];
        let r = records(&flows, &names, &peering);
        assert_eq!(r.len(), 3);

        let line = |r: &Record| serde_json::to_value(r).unwrap();
        let v = line(&r[0]);
        assert_eq!(v["aggregated"], false);
        assert_eq!(v["src"], "10.1.0.5");
        assert_eq!(v["dst"], "10.2.0.7");
        assert_eq!(
            (v["src_port"].clone(), v["dst_port"].clone()),
            (40000.into(), 443.into())
        );
        assert_eq!(v["protocol"], 6);

        let v = line(&r[1]);
        assert_eq!(v["aggregated"], true);
        for field in [
            "src", "dst", "src_port", "dst_port", "protocol", "dst_vpc", "peering",
        ] {
            assert!(v[field].is_null(), "{field} of an aggregated record: {v}");
        }
        assert_eq!(v["src_vpc"], "a");
        assert_eq!(v["action"], "REJECT");
        assert_eq!(v["reason"], "spoofed-source");
        assert_eq!(
            (v["packets"].clone(), v["bytes"].clone()),
            (5000.into(), 500_000.into())
        );

        // An aggregate of accepted packets keeps where they went when that was one peering.
        let v = line(&r[2]);
        assert_eq!(v["aggregated"], true);
        assert!(v["src"].is_null() && v["protocol"].is_null(), "{v}");
        assert_eq!(
            (v["action"].clone(), v["reason"].clone()),
            ("ACCEPT".into(), serde_json::Value::Null)
        );
        assert_eq!(
            (v["dst_vpc"].clone(), v["peering"].clone()),
            ("b".into(), "pcx-ab".into())
        );
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
