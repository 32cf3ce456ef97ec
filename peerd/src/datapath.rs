//! The eBPF datapath seen from userspace: load (reusing pinned maps), keep the maps equal to a
//! [`Tables`], attach to host-side veths through pinned TCX links, read counters.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::LpmTrie, Array, HashMap, IterableMap, MapData, MapError, PerCpuArray,
        PerCpuHashMap, PerCpuValues,
    },
    programs::{ProgramError, SchedClassifier, Xdp},
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use peerd_common::{
    maps as names, Counter, DropReason, EndpointKey, FlowKey, FlowValue, IfaceInfo, KeyV4, KeyV6,
    PeeringInfo, RouteTarget, SrcInfo, Underlay, VpcInfo, CONFIG_FLAGS, CONFIG_FLOW_LOG,
    CONFIG_FLOW_WINDOW, DROP_SLOTS, HOST_RX, HOST_TX,
};
use tracing::{info, warn};

use crate::tables::Tables;

/// The datapath object, built from `peerd-ebpf` by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/peerd"));
pub const TC_PROGRAM: &str = "peerd_tc";
pub const XDP_PROGRAM: &str = "peerd_xdp";
/// Cluster mode: on the VXLAN device's ingress.
pub const VXLAN_RX_PROGRAM: &str = "peerd_vxlan_rx";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the eBPF object is empty: peerd was built with AYA_BUILD_SKIP")]
    NoObject,
    #[error("mounting bpffs at {path}: {source}")]
    MountBpffs { path: PathBuf, source: nix::Error },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading the eBPF datapath (pins under {path}): {source}")]
    Load {
        path: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("program {op}: {source}")]
    Program {
        op: &'static str,
        source: Box<ProgramError>,
    },
    #[error("link {op} {path}: {source}")]
    Link {
        op: &'static str,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("syncing the maps: {0}")]
    Sync(String),
    #[error("counting CPUs: {0}")]
    Cpus(io::Error),
    #[error("map {map}: {op}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        source: Box<MapError>,
    },
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map {
        map,
        op,
        source: Box::new(source),
    }
}

/// Mounts bpffs at `/sys/fs/bpf` when nothing is mounted there.
pub fn ensure_bpffs() -> Result<(), Error> {
    let root = Path::new("/sys/fs/bpf");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _dev = f.next();
        f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| Error::MountBpffs {
        path: root.into(),
        source,
    })?;
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Io {
        op: "creating",
        path: path.into(),
        source,
    })
}

/// A zero counter for every possible CPU.
fn zeroes() -> Result<PerCpuValues<Counter>, Error> {
    let n = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
    Ok(PerCpuValues::try_from(vec![Counter::default(); n]).expect("at least one CPU"))
}

pub struct Datapath {
    ebpf: Ebpf,
    link_dir: PathBuf,
    // The maps the reconcilers keep equal to the desired tables (`reconcile::maps`).
    pub(crate) ifaces: HashMap<MapData, u32, IfaceInfo>,
    pub(crate) vpcs: Array<MapData, VpcInfo>,
    pub(crate) peerings: Array<MapData, PeeringInfo>,
    pub(crate) src_v4: LpmTrie<MapData, KeyV4, SrcInfo>,
    pub(crate) src_v6: LpmTrie<MapData, KeyV6, SrcInfo>,
    pub(crate) routes_v4: LpmTrie<MapData, KeyV4, RouteTarget>,
    pub(crate) routes_v6: LpmTrie<MapData, KeyV6, RouteTarget>,
    pub(crate) endpoints: HashMap<MapData, EndpointKey, u32>,
    pub(crate) hosts: Array<MapData, Underlay>,
    pub(crate) underlay: HashMap<MapData, Underlay, u32>,
    pub(crate) vnis: HashMap<MapData, u32, u32>,
    pub(crate) allowed_v4: LpmTrie<MapData, KeyV4, u32>,
    pub(crate) allowed_v6: LpmTrie<MapData, KeyV6, u32>,
    counters: Counters,
    pub(crate) config: Array<MapData, u32>,
    flows: PerCpuHashMap<MapData, FlowKey, FlowValue>,
    flow_lost: PerCpuArray<MapData, Counter>,
}

macro_rules! take {
    ($ebpf:expr, $name:expr) => {{
        let map = $ebpf.take_map($name).ok_or(Error::MissingMap($name))?;
        map.try_into().map_err(map_err($name, "opening"))?
    }};
}

/// Unpins every map under `map_dir` whose shape (key size, value size, entries) differs from
/// this build's, so the loader creates it anew instead of reusing it: an upgrade that changed a
/// map's layout. The running programs keep the old map (they hold a reference) until their
/// links get the new program, after the new maps are filled; nothing stops forwarding.
fn unpin_incompatible(map_dir: &Path) -> Result<(), Error> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|e| Error::Load {
        path: map_dir.into(),
        source: Box::new(aya::EbpfError::ParseError(e)),
    })?;
    for (name, m) in &obj.maps {
        let path = map_dir.join(name);
        if !path.exists() {
            continue;
        }
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let have = (info.key_size(), info.value_size(), info.max_entries());
        let want = (m.key_size(), m.value_size(), m.max_entries());
        if have != want {
            warn!(
                map = %name,
                pinned = ?have,
                built = ?want,
                "pinned map has another layout (an upgrade): replacing it"
            );
            fs::remove_file(&path).map_err(|source| Error::Io {
                op: "unpinning",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

impl Datapath {
    /// Loads the datapath. Maps are pinned under `pin_dir/maps` and reused when they exist,
    /// so a restarted daemon keeps the tables and counters the running datapath uses.
    pub fn load(pin_dir: &Path) -> Result<Self, Error> {
        if OBJECT.is_empty() {
            return Err(Error::NoObject);
        }
        if pin_dir.starts_with("/sys/fs/bpf") {
            ensure_bpffs()?;
        }
        let map_dir = pin_dir.join("maps");
        let link_dir = pin_dir.join("links");
        mkdir(&map_dir)?;
        mkdir(&link_dir)?;
        unpin_incompatible(&map_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&map_dir)
            .load(OBJECT)
            .map_err(|source| Error::Load {
                path: pin_dir.into(),
                source: Box::new(source),
            })?;
        for name in [TC_PROGRAM, VXLAN_RX_PROGRAM] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|source| Error::Program {
                    op: "type",
                    source: Box::new(source),
                })?;
            prog.load().map_err(|source| Error::Program {
                op: "load",
                source: Box::new(source),
            })?;
        }
        {
            let xdp: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .ok_or(Error::MissingProgram(XDP_PROGRAM))?
                .try_into()
                .map_err(|source| Error::Program {
                    op: "type",
                    source: Box::new(source),
                })?;
            xdp.load().map_err(|source| Error::Program {
                op: "load XDP",
                source: Box::new(source),
            })?;
        }
        Ok(Self {
            ifaces: take!(ebpf, names::IFACES),
            vpcs: take!(ebpf, names::VPCS),
            peerings: take!(ebpf, names::PEERINGS),
            src_v4: take!(ebpf, names::SRC_V4),
            src_v6: take!(ebpf, names::SRC_V6),
            routes_v4: take!(ebpf, names::ROUTES_V4),
            routes_v6: take!(ebpf, names::ROUTES_V6),
            endpoints: take!(ebpf, names::ENDPOINTS),
            hosts: take!(ebpf, names::HOSTS),
            underlay: take!(ebpf, names::UNDERLAY),
            vnis: take!(ebpf, names::VNIS),
            allowed_v4: take!(ebpf, names::ALLOWED_V4),
            allowed_v6: take!(ebpf, names::ALLOWED_V6),
            counters: Counters {
                drops: take!(ebpf, names::DROPS),
                fwd: take!(ebpf, names::FWD),
                hosts: take!(ebpf, names::HOST_COUNTERS),
            },
            config: take!(ebpf, names::CONFIG),
            flows: take!(ebpf, names::FLOWS),
            flow_lost: take!(ebpf, names::FLOW_LOST),
            ebpf,
            link_dir,
        })
    }

    /// Where the pinned program links live.
    pub fn link_dir(&self) -> &Path {
        &self.link_dir
    }

    pub fn tc_program(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(TC_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Datapath::load")
    }

    pub fn vxlan_rx_program(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(VXLAN_RX_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Datapath::load")
    }

    pub fn xdp_program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Datapath::load")
    }

    /// Turns flow aggregation in the datapath on or off.
    pub fn set_flow_log(&mut self, on: bool) -> Result<(), Error> {
        let cur = self.config.get(&CONFIG_FLAGS, 0).unwrap_or(0);
        let want = if on {
            cur | CONFIG_FLOW_LOG
        } else {
            cur & !CONFIG_FLOW_LOG
        };
        if want != cur {
            self.config
                .set(CONFIG_FLAGS, want, 0)
                .map_err(map_err(names::CONFIG, "set"))?;
        }
        Ok(())
    }

    /// Takes every aggregated flow out of the datapath (summed over CPUs) and starts a new
    /// window, in which every source VPC has its whole flow budget again.
    ///
    /// The window moves on first: entries created while the drain runs count against the new
    /// window's budgets, so a VPC can never exceed its budget by more than the datapath's own
    /// slack (see `peerd-ebpf/src/flow.rs`). Each entry is read and deleted in one step
    /// (BPF_MAP_LOOKUP_AND_DELETE_ELEM), so no packet is added to an entry between reading it
    /// and deleting it; a packet that arrives after is recorded in a new entry, drained next time.
    pub fn drain_flows(&mut self) -> Vec<(FlowKey, FlowValue)> {
        use std::os::fd::AsFd as _;
        let window = self.config.get(&CONFIG_FLOW_WINDOW, 0).unwrap_or(0);
        if let Err(e) = self
            .config
            .set(CONFIG_FLOW_WINDOW, window.wrapping_add(1), 0)
        {
            warn!(error = %e, "starting a new flow window: the flow budgets stay used up");
        }
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(Result::ok).collect();
        let cpus = match nr_cpus() {
            Ok(n) => n,
            Err((what, e)) => {
                warn!(error = %e, what, "counting CPUs: flows left in the datapath");
                return Vec::new();
            }
        };
        let fd = IterableMap::map(&self.flows).fd().as_fd();
        let mut values = vec![FlowValue::default(); cpus];
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Err(e) = lookup_and_delete_percpu(fd, &k, &mut values) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    warn!(error = %e, "draining a flow");
                }
                continue;
            }
            if let Some(sum) = merge_cpus(&values) {
                out.push((k, sum));
            }
        }
        out
    }

    /// Packets whose flow could not be recorded because the flow map was full.
    pub fn flow_lost(&self) -> Counter {
        let mut c = Counter::default();
        if let Ok(values) = self.flow_lost.get(&0, 0) {
            for v in values.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
            }
        }
        c
    }

    /// Makes the maps hold exactly `t` (reads them back, writes the difference): tests and
    /// tools use it; the daemon goes through `reconcile::maps` with its own bookkeeping.
    pub fn sync(&mut self, t: &Tables) -> Result<crate::reconcile::maps::Applied, Error> {
        use crate::reconcile::maps;
        let have = maps::Contents::read(self).map_err(map_err("*", "reading"))?;
        let done = maps::apply(self, maps::diff(&have, &maps::Contents::of(t)));
        match done.failed.first() {
            Some((c, e)) => Err(Error::Sync(format!("{c}: {e}"))),
            None => Ok(done),
        }
    }

    /// Packets dropped for one reason from one VPC slot.
    pub fn drop_count(&self, vpc: u32, reason: DropReason) -> u64 {
        self.counters.drop_count(vpc, reason)
    }

    /// The counters (per VPC drops, per peering forwards).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }
}

/// The per-CPU counters of drops (per source VPC and reason) and forwards (per peering and
/// direction), summed over CPUs. The daemon holds one inside its [`Datapath`]; status and
/// metrics open their own through the pins ([`Counters::open`]) and read them without going
/// through the daemon's owner task.
pub struct Counters {
    drops: PerCpuArray<MapData, Counter>,
    fwd: PerCpuArray<MapData, Counter>,
    /// Cluster mode: per host slot, sent and received through the tunnel.
    hosts: PerCpuArray<MapData, Counter>,
}

fn sum(values: &PerCpuValues<Counter>) -> Counter {
    let mut c = Counter::default();
    for v in values.iter() {
        c.packets += v.packets;
        c.bytes += v.bytes;
    }
    c
}

impl Counters {
    /// Opens the pinned counter maps under `pin_dir/maps`.
    pub fn open(pin_dir: &Path) -> Result<Counters, Error> {
        let open = |name: &'static str| -> Result<PerCpuArray<MapData, Counter>, Error> {
            let path = pin_dir.join("maps").join(name);
            let data = MapData::from_pin(&path).map_err(map_err(name, "opening pin"))?;
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .map_err(map_err(name, "opening"))
        };
        Ok(Counters {
            drops: open(names::DROPS)?,
            fwd: open(names::FWD)?,
            hosts: open(names::HOST_COUNTERS)?,
        })
    }

    /// Drops from one VPC slot, by reason.
    pub fn drops(&self, vpc: u32) -> BTreeMap<DropReason, Counter> {
        DropReason::ALL
            .iter()
            .filter_map(|r| {
                let v = self.drops.get(&peerd_common::drop_index(vpc, *r), 0).ok()?;
                Some((*r, sum(&v)))
            })
            .collect()
    }

    /// Packets dropped for one reason from one VPC slot.
    pub fn drop_count(&self, vpc: u32, reason: DropReason) -> u64 {
        self.drops(vpc).get(&reason).map(|c| c.packets).unwrap_or(0)
    }

    /// Forwarded packets/bytes of a peering slot in one direction (0: from its `vpc_a`).
    pub fn forwarded(&self, peering: u32, dir: u32) -> Counter {
        self.fwd
            .get(&peerd_common::fwd_index(peering, dir), 0)
            .map(|v| sum(&v))
            .unwrap_or_default()
    }

    /// Cluster mode: (sent to, received from) host slot `host` through the tunnel.
    pub fn host(&self, host: u32) -> (Counter, Counter) {
        let read = |dir| {
            self.hosts
                .get(&peerd_common::host_index(host, dir), 0)
                .map(|v| sum(&v))
                .unwrap_or_default()
        };
        (read(HOST_TX), read(HOST_RX))
    }

    /// Zeroes the counters of a VPC slot (a new VPC got it): counters reset only when their
    /// VPC or peering is deleted.
    pub fn reset_vpc(&mut self, vpc: u32) -> Result<(), Error> {
        for r in 0..DROP_SLOTS {
            self.drops
                .set(vpc * DROP_SLOTS + r, zeroes()?, 0)
                .map_err(map_err(names::DROPS, "reset"))?;
        }
        Ok(())
    }

    pub fn reset_peering(&mut self, peering: u32) -> Result<(), Error> {
        for dir in 0..2 {
            self.fwd
                .set(peerd_common::fwd_index(peering, dir), zeroes()?, 0)
                .map_err(map_err(names::FWD, "reset"))?;
        }
        Ok(())
    }
}

/// One flow's per-CPU values merged: counts summed, first and last packet over all CPUs. The
/// destination and peering are kept when every CPU agrees, else 0 (unknown; an aggregate entry
/// whose packets went over several peerings). None when no CPU saw a packet.
pub fn merge_cpus(values: &[FlowValue]) -> Option<FlowValue> {
    let mut seen = values.iter().filter(|v| v.packets > 0);
    let mut sum = *seen.next()?;
    for v in seen {
        sum.packets += v.packets;
        sum.bytes += v.bytes;
        sum.first_ns = sum.first_ns.min(v.first_ns);
        sum.last_ns = sum.last_ns.max(v.last_ns);
        if (v.dst_vpc, v.peering) != (sum.dst_vpc, sum.peering) {
            (sum.dst_vpc, sum.peering) = (0, 0);
        }
    }
    Some(sum)
}

/// BPF_MAP_LOOKUP_AND_DELETE_ELEM on a per-CPU hash map (kernel 5.14+; aya 0.14 offers it for
/// queues and stacks only): `values` gets one value per possible CPU.
fn lookup_and_delete_percpu(
    fd: std::os::fd::BorrowedFd<'_>,
    key: &FlowKey,
    values: &mut [FlowValue],
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    // The kernel copies each CPU's value at an 8-byte aligned stride: FlowValue is exactly that.
    const _: () = assert!(std::mem::size_of::<FlowValue>().is_multiple_of(8));
    /// The `map_elem` part of `union bpf_attr`.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = MapElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const FlowKey as u64,
        value: values.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: attr points at a valid bpf_attr prefix of the size passed; key and value point
    // at buffers of the map's key size and value size x possible CPUs (`values` has one
    // element per possible CPU, as the caller sizes it with `nr_cpus`).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(packets: u64, first: u64, last: u64, dst_vpc: u32, peering: u32) -> FlowValue {
        FlowValue {
            packets,
            bytes: packets * 10,
            first_ns: first,
            last_ns: last,
            dst_vpc,
            peering,
            ..FlowValue::default()
        }
    }

    #[test]
    fn per_cpu_flow_values_merge_into_one() {
        assert_eq!(
            merge_cpus(&[FlowValue::default(); 4]),
            None,
            "no CPU saw a packet"
        );
        // Idle CPUs (zeroed slots) take no part, not even in first_ns.
        let m = merge_cpus(&[
            FlowValue::default(),
            v(2, 50, 60, 2, 1),
            FlowValue::default(),
            v(3, 40, 55, 2, 1),
        ])
        .unwrap();
        assert_eq!(m, v(5, 40, 60, 2, 1));
        // CPUs that disagree on where the packets went (an aggregate over two peerings).
        let m = merge_cpus(&[v(1, 1, 1, 2, 1), v(1, 2, 2, 3, 2)]).unwrap();
        assert_eq!((m.packets, m.dst_vpc, m.peering), (2, 0, 0));
    }
}
