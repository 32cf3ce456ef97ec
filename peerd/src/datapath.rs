//! The eBPF datapath seen from userspace: load (reusing pinned maps), keep the maps equal to a
//! [`Tables`], attach to host-side veths through pinned TCX links, read counters.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
    },
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
use peerd_common::{
    maps as names, Counter, DropReason, FlowKey, FlowValue, IfaceInfo, KeyV4, KeyV6, PeeringInfo,
    RouteTarget, SrcInfo, VpcInfo, CONFIG_FLOW_LOG, DROP_SLOTS,
};
use tracing::{debug, info, warn};

use crate::{config::DatapathMode, tables::Tables};

/// The datapath object, built from `peerd-ebpf` by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/peerd"));
pub const TC_PROGRAM: &str = "peerd_tc";
pub const XDP_PROGRAM: &str = "peerd_xdp";

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

fn key4(id: u32, net: &IpNet) -> Option<Key<KeyV4>> {
    match net {
        IpNet::V4(n) => Some(Key::new(
            32 + n.prefix_len() as u32,
            KeyV4 {
                id: id.to_be_bytes(),
                addr: n.network().octets(),
            },
        )),
        IpNet::V6(_) => None,
    }
}

fn key6(id: u32, net: &IpNet) -> Option<Key<KeyV6>> {
    match net {
        IpNet::V6(n) => Some(Key::new(
            32 + n.prefix_len() as u32,
            KeyV6 {
                id: id.to_be_bytes(),
                addr: n.network().octets(),
            },
        )),
        IpNet::V4(_) => None,
    }
}

fn from_key4(k: &Key<KeyV4>) -> (u32, IpNet) {
    let d = k.data();
    let net = IpNet::new(IpAddr::from(d.addr), (k.prefix_len() - 32) as u8).expect("valid prefix");
    (u32::from_be_bytes(d.id), net)
}

fn from_key6(k: &Key<KeyV6>) -> (u32, IpNet) {
    let d = k.data();
    let net = IpNet::new(IpAddr::from(d.addr), (k.prefix_len() - 32) as u8).expect("valid prefix");
    (u32::from_be_bytes(d.id), net)
}

/// A zero counter for every possible CPU.
fn zeroes() -> Result<PerCpuValues<Counter>, Error> {
    let n = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
    Ok(PerCpuValues::try_from(vec![Counter::default(); n]).expect("at least one CPU"))
}

fn link_err<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(E) -> Error {
    let path = path.to_owned();
    move |e| Error::Link {
        op,
        path,
        source: Box::new(e),
    }
}

/// What `attach` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Created,
    /// The link had been detached by someone else; a new one was made.
    Repaired,
    Replaced,
    Unchanged,
}

/// The maps' contents as plain values: what a sync wants (from `Tables`) or what the maps
/// hold (read back, or remembered from the last sync).
#[derive(Default)]
struct Contents {
    ifaces: BTreeMap<u32, IfaceInfo>,
    vpcs: BTreeMap<u32, VpcInfo>,
    peerings: BTreeMap<u32, PeeringInfo>,
    src: BTreeMap<(u32, IpNet), u32>,
    routes: BTreeMap<(u32, IpNet), RouteTarget>,
}

impl Contents {
    fn of(t: &Tables) -> Self {
        Contents {
            ifaces: t.iface_infos(),
            vpcs: t.vpcs.clone(),
            peerings: t.peerings.clone(),
            src: t.src.clone(),
            routes: t.routes.clone(),
        }
    }
}

/// What a sync changed, by map entry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub written: usize,
    pub removed: usize,
}

impl SyncStats {
    pub fn is_empty(&self) -> bool {
        self.written == 0 && self.removed == 0
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    link_dir: PathBuf,
    /// What the last successful sync wrote: `sync_incremental` diffs against it instead of
    /// reading every entry back from the kernel.
    shadow: Option<Contents>,
    ifaces: HashMap<MapData, u32, IfaceInfo>,
    vpcs: Array<MapData, VpcInfo>,
    peerings: Array<MapData, PeeringInfo>,
    src_v4: LpmTrie<MapData, KeyV4, SrcInfo>,
    src_v6: LpmTrie<MapData, KeyV6, SrcInfo>,
    routes_v4: LpmTrie<MapData, KeyV4, RouteTarget>,
    routes_v6: LpmTrie<MapData, KeyV6, RouteTarget>,
    drops: PerCpuArray<MapData, Counter>,
    fwd: PerCpuArray<MapData, Counter>,
    config: Array<MapData, u32>,
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
        {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(TC_PROGRAM)
                .ok_or(Error::MissingProgram(TC_PROGRAM))?
                .try_into()
                .map_err(|source| Error::Program {
                    op: "type",
                    source: Box::new(source),
                })?;
            prog.load().map_err(|source| Error::Program {
                op: "load",
                source: Box::new(source),
            })?;
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
            drops: take!(ebpf, names::DROPS),
            fwd: take!(ebpf, names::FWD),
            config: take!(ebpf, names::CONFIG),
            flows: take!(ebpf, names::FLOWS),
            flow_lost: take!(ebpf, names::FLOW_LOST),
            ebpf,
            link_dir,
            shadow: None,
        })
    }

    pub fn program(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(TC_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Datapath::load")
    }

    /// Makes the maps hold exactly `t`: first every new or changed entry is written, then the
    /// entries `t` does not have are removed, so no packet of an unchanged flow sees a gap.
    /// Reads every entry back from the kernel, so it also repairs changes made by others.
    pub fn sync(&mut self, t: &Tables) -> Result<SyncStats, Error> {
        self.shadow = None;
        let have = self.read_contents()?;
        self.apply(have, Contents::of(t))
    }

    /// As `sync`, but when a previous sync succeeded it diffs against what that sync wrote
    /// instead of reading every entry back: a reload at a thousand VPCs touches a handful of
    /// entries instead of reading tens of thousands. Anything else writing the maps is
    /// repaired by the next full `sync` (the periodic resync).
    pub fn sync_incremental(&mut self, t: &Tables) -> Result<SyncStats, Error> {
        match self.shadow.take() {
            Some(have) => self.apply(have, Contents::of(t)),
            None => self.sync(t),
        }
    }

    /// What the maps hold now, read from the kernel.
    fn read_contents(&self) -> Result<Contents, Error> {
        let mut c = Contents::default();
        for e in self.ifaces.iter() {
            let (k, v) = e.map_err(map_err(names::IFACES, "reading"))?;
            c.ifaces.insert(k, v);
        }
        for (i, v) in self.vpcs.iter().enumerate() {
            let v = v.map_err(map_err(names::VPCS, "reading"))?;
            if v != VpcInfo::default() {
                c.vpcs.insert(i as u32, v);
            }
        }
        for (i, v) in self.peerings.iter().enumerate() {
            let v = v.map_err(map_err(names::PEERINGS, "reading"))?;
            if v != PeeringInfo::default() {
                c.peerings.insert(i as u32, v);
            }
        }
        // LPM tries: a lookup is a longest-prefix match, so values are read for the keys the
        // trie has (for a present key, the longest match is the key itself).
        for k in self.src_v4.keys().filter_map(Result::ok) {
            if let Ok(v) = self.src_v4.get(&k, 0) {
                c.src.insert(from_key4(&k), v.table);
            }
        }
        for k in self.src_v6.keys().filter_map(Result::ok) {
            if let Ok(v) = self.src_v6.get(&k, 0) {
                c.src.insert(from_key6(&k), v.table);
            }
        }
        for k in self.routes_v4.keys().filter_map(Result::ok) {
            if let Ok(v) = self.routes_v4.get(&k, 0) {
                c.routes.insert(from_key4(&k), v);
            }
        }
        for k in self.routes_v6.keys().filter_map(Result::ok) {
            if let Ok(v) = self.routes_v6.get(&k, 0) {
                c.routes.insert(from_key6(&k), v);
            }
        }
        Ok(c)
    }

    /// Writes what `want` has and `have` lacks or holds differently, then removes what only
    /// `have` has (routes and sources first, then what they point at). On success `want`
    /// becomes the shadow for the next incremental sync.
    fn apply(&mut self, have: Contents, want: Contents) -> Result<SyncStats, Error> {
        let mut st = SyncStats::default();

        // Writes.
        for (k, v) in &want.ifaces {
            if have.ifaces.get(k) != Some(v) {
                self.ifaces
                    .insert(k, v, 0)
                    .map_err(map_err(names::IFACES, "insert"))?;
                st.written += 1;
            }
        }
        for (k, v) in &want.vpcs {
            if have.vpcs.get(k) != Some(v) {
                self.vpcs
                    .set(*k, v, 0)
                    .map_err(map_err(names::VPCS, "set"))?;
                st.written += 1;
            }
        }
        for (k, v) in &want.peerings {
            if have.peerings.get(k) != Some(v) {
                self.peerings
                    .set(*k, v, 0)
                    .map_err(map_err(names::PEERINGS, "set"))?;
                st.written += 1;
            }
        }
        for (key @ (id, net), table) in &want.src {
            if have.src.get(key) == Some(table) {
                continue;
            }
            let v = SrcInfo { table: *table };
            if let Some(k) = key4(*id, net) {
                self.src_v4
                    .insert(&k, v, 0)
                    .map_err(map_err(names::SRC_V4, "insert"))?;
            } else if let Some(k) = key6(*id, net) {
                self.src_v6
                    .insert(&k, v, 0)
                    .map_err(map_err(names::SRC_V6, "insert"))?;
            }
            st.written += 1;
        }
        for (key @ (id, net), v) in &want.routes {
            if have.routes.get(key) == Some(v) {
                continue;
            }
            if let Some(k) = key4(*id, net) {
                self.routes_v4
                    .insert(&k, v, 0)
                    .map_err(map_err(names::ROUTES_V4, "insert"))?;
            } else if let Some(k) = key6(*id, net) {
                self.routes_v6
                    .insert(&k, v, 0)
                    .map_err(map_err(names::ROUTES_V6, "insert"))?;
            }
            st.written += 1;
        }

        // Removals.
        for (id, net) in have.routes.keys().filter(|k| !want.routes.contains_key(k)) {
            if let Some(k) = key4(*id, net) {
                self.routes_v4
                    .remove(&k)
                    .map_err(map_err(names::ROUTES_V4, "remove"))?;
            } else if let Some(k) = key6(*id, net) {
                self.routes_v6
                    .remove(&k)
                    .map_err(map_err(names::ROUTES_V6, "remove"))?;
            }
            st.removed += 1;
        }
        for (id, net) in have.src.keys().filter(|k| !want.src.contains_key(k)) {
            if let Some(k) = key4(*id, net) {
                self.src_v4
                    .remove(&k)
                    .map_err(map_err(names::SRC_V4, "remove"))?;
            } else if let Some(k) = key6(*id, net) {
                self.src_v6
                    .remove(&k)
                    .map_err(map_err(names::SRC_V6, "remove"))?;
            }
            st.removed += 1;
        }
        for k in have.ifaces.keys().filter(|k| !want.ifaces.contains_key(k)) {
            self.ifaces
                .remove(k)
                .map_err(map_err(names::IFACES, "remove"))?;
            st.removed += 1;
        }
        // Arrays: clear the slots `want` no longer uses.
        for k in have
            .peerings
            .keys()
            .filter(|k| !want.peerings.contains_key(k))
        {
            self.peerings
                .set(*k, PeeringInfo::default(), 0)
                .map_err(map_err(names::PEERINGS, "clear"))?;
            st.removed += 1;
        }
        for k in have.vpcs.keys().filter(|k| !want.vpcs.contains_key(k)) {
            self.vpcs
                .set(*k, VpcInfo::default(), 0)
                .map_err(map_err(names::VPCS, "clear"))?;
            st.removed += 1;
        }
        if !st.is_empty() {
            debug!(
                written = st.written,
                removed = st.removed,
                "datapath maps synced"
            );
        }
        self.shadow = Some(want);
        Ok(st)
    }

    fn link_pin(&self, mode: DatapathMode, ifname: &str, ifindex: u32) -> PathBuf {
        match mode {
            DatapathMode::Tc => self.link_dir.join(format!("{ifname}-{ifindex}")),
            DatapathMode::Xdp => self.link_dir.join(format!("xdp-{ifname}-{ifindex}")),
        }
    }

    /// The links (by interface name) that have a pinned XDP link: read once per reconcile
    /// (one directory scan, not one per VPC).
    pub fn xdp_link_ifnames(&self) -> BTreeSet<String> {
        fs::read_dir(&self.link_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let rest = name.strip_prefix("xdp-")?;
                        rest.rsplit_once('-').map(|(ifname, _)| ifname.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn xdp_program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Datapath::load")
    }

    /// Is the program of a pinned link still attached to `ifname`? (TCX can tell; an XDP link
    /// can only be detached through its pin, which is then gone.)
    fn still_attached(mode: DatapathMode, ifname: &str, prog_id: u32) -> bool {
        match mode {
            DatapathMode::Tc => SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
                .map(|(_, progs)| progs.iter().any(|p| p.id() == prog_id))
                .unwrap_or(false),
            DatapathMode::Xdp => true,
        }
    }

    /// Makes this datapath's program (TC or XDP) the one on `ifname`, through a pinned link
    /// that outlives the daemon. An existing pinned link is updated in place (atomic program
    /// replacement, no gap) unless it already runs this very program; a link that someone
    /// detached is replaced; otherwise a new link is created.
    pub fn attach(
        &mut self,
        mode: DatapathMode,
        ifname: &str,
        ifindex: u32,
    ) -> Result<Attach, Error> {
        let pin = self.link_pin(mode, ifname, ifindex);
        if pin.exists() {
            let pinned = PinnedLink::from_pin(&pin).map_err(link_err("opening", &pin))?;
            let fd: FdLink = pinned.into();
            let prog_id = fd.info().map(|i| i.program_id()).unwrap_or(0);
            if !Self::still_attached(mode, ifname, prog_id) {
                drop(fd);
                fs::remove_file(&pin).map_err(|source| Error::Io {
                    op: "unpinning",
                    path: pin.clone(),
                    source,
                })?;
                tracing::warn!(
                    interface = ifname,
                    "datapath link was detached; attaching again"
                );
                return self.attach(mode, ifname, ifindex).map(|_| Attach::Repaired);
            }
            if self.running_same_program(mode, prog_id) {
                return Ok(Attach::Unchanged);
            }
            let prog_err = |op| {
                move |source| Error::Program {
                    op,
                    source: Box::new(source),
                }
            };
            // Keep it attached: an FdLink closes its fd on drop without detaching.
            let _fd: FdLink = match mode {
                DatapathMode::Tc => {
                    let link =
                        SchedClassifierLink::try_from(fd).map_err(link_err("converting", &pin))?;
                    let prog = self.program();
                    let id = prog
                        .attach_to_link(link)
                        .map_err(prog_err("replace on link"))?;
                    prog.take_link(id)
                        .map_err(prog_err("take link"))?
                        .try_into()
                        .map_err(link_err("converting", &pin))?
                }
                DatapathMode::Xdp => {
                    let link = XdpLink::try_from(fd).map_err(link_err("converting", &pin))?;
                    let prog = self.xdp_program();
                    let id = prog
                        .attach_to_link(link)
                        .map_err(prog_err("replace on link"))?;
                    prog.take_link(id)
                        .map_err(prog_err("take link"))?
                        .try_into()
                        .map_err(link_err("converting", &pin))?
                }
            };
            info!(
                interface = ifname,
                ifindex,
                ?mode,
                "datapath program replaced"
            );
            return Ok(Attach::Replaced);
        }
        let prog_err = |op| {
            move |source| Error::Program {
                op,
                source: Box::new(source),
            }
        };
        let fd: FdLink = match mode {
            DatapathMode::Tc => {
                let prog = self.program();
                let id = prog
                    .attach_with_options(
                        ifname,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(prog_err("attach"))?;
                prog.take_link(id)
                    .map_err(prog_err("take link"))?
                    .try_into()
                    .map_err(link_err("converting", &pin))?
            }
            DatapathMode::Xdp => {
                let prog = self.xdp_program();
                let id = prog
                    .attach_to_if_index(ifindex, XdpMode::Driver)
                    .map_err(prog_err("attach XDP"))?;
                prog.take_link(id)
                    .map_err(prog_err("take link"))?
                    .try_into()
                    .map_err(link_err("converting", &pin))?
            }
        };
        fd.pin(&pin).map_err(link_err("pinning", &pin))?;
        info!(interface = ifname, ifindex, ?mode, "datapath attached");
        Ok(Attach::Created)
    }

    /// Is program `id` the same code as ours (same tag)? Then a link running it needs no update.
    fn running_same_program(&mut self, mode: DatapathMode, id: u32) -> bool {
        let mine = match mode {
            DatapathMode::Tc => self.program().info(),
            DatapathMode::Xdp => self.xdp_program().info(),
        };
        let Ok(mine) = mine else { return false };
        if mine.id() == id {
            return true;
        }
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .is_some_and(|p| p.tag() == mine.tag())
    }

    /// Removes pinned links that are not for one of `keep` (name, ifindex): their interface is
    /// gone or belongs to a VPC that was removed. Unpinning the last reference detaches them.
    pub fn prune_links(
        &self,
        mode: DatapathMode,
        keep: &BTreeSet<(String, u32)>,
    ) -> Result<usize, Error> {
        let wanted: BTreeSet<PathBuf> = keep
            .iter()
            .map(|(n, i)| self.link_pin(mode, n, *i))
            .collect();
        let mut removed = 0;
        let entries = fs::read_dir(&self.link_dir).map_err(|source| Error::Io {
            op: "listing",
            path: self.link_dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if !wanted.contains(&p) {
                fs::remove_file(&p).map_err(|source| Error::Io {
                    op: "unpinning",
                    path: p.clone(),
                    source,
                })?;
                debug!(pin = %p.display(), "removed stale link pin");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Drop counters of one VPC slot, summed over CPUs, by reason.
    pub fn drops(&self, vpc: u32) -> BTreeMap<DropReason, Counter> {
        let mut out = BTreeMap::new();
        for reason in DropReason::ALL {
            let idx = vpc * DROP_SLOTS + reason as u32;
            if let Ok(values) = self.drops.get(&idx, 0) {
                let mut c = Counter::default();
                for v in values.iter() {
                    c.packets += v.packets;
                    c.bytes += v.bytes;
                }
                out.insert(reason, c);
            }
        }
        out
    }

    /// Turns flow aggregation in the datapath on or off.
    pub fn set_flow_log(&mut self, on: bool) -> Result<(), Error> {
        let cur = self.config.get(&0, 0).unwrap_or(0);
        let want = if on {
            cur | CONFIG_FLOW_LOG
        } else {
            cur & !CONFIG_FLOW_LOG
        };
        if want != cur {
            self.config
                .set(0, want, 0)
                .map_err(map_err(names::CONFIG, "set"))?;
        }
        Ok(())
    }

    /// Takes every aggregated flow out of the datapath (summed over CPUs).
    pub fn drain_flows(&mut self) -> Vec<(FlowKey, FlowValue)> {
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(Result::ok).collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Ok(values) = self.flows.get(&k, 0) else {
                continue;
            };
            let _ = self.flows.remove(&k);
            let mut sum = FlowValue {
                first_ns: u64::MAX,
                ..FlowValue::default()
            };
            for v in values.iter().filter(|v| v.packets > 0) {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
                sum.first_ns = sum.first_ns.min(v.first_ns);
                sum.last_ns = sum.last_ns.max(v.last_ns);
                sum.dst_vpc = v.dst_vpc;
                sum.peering = v.peering;
                sum.verdict = v.verdict;
            }
            if sum.packets > 0 {
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

    /// Zeroes the counters of a VPC slot (a new VPC got it): counters reset only when their
    /// VPC or peering is deleted.
    pub fn reset_vpc_counters(&mut self, vpc: u32) -> Result<(), Error> {
        for r in 0..DROP_SLOTS {
            self.drops
                .set(vpc * DROP_SLOTS + r, zeroes()?, 0)
                .map_err(map_err(names::DROPS, "reset"))?;
        }
        Ok(())
    }

    pub fn reset_peering_counters(&mut self, peering: u32) -> Result<(), Error> {
        for dir in 0..2 {
            self.fwd
                .set(peerd_common::fwd_index(peering, dir), zeroes()?, 0)
                .map_err(map_err(names::FWD, "reset"))?;
        }
        Ok(())
    }

    /// Packets dropped for one reason from one VPC slot, summed over CPUs.
    pub fn drop_count(&self, vpc: u32, reason: DropReason) -> u64 {
        self.drops
            .get(&peerd_common::drop_index(vpc, reason), 0)
            .map(|v| v.iter().map(|c| c.packets).sum())
            .unwrap_or(0)
    }

    /// Forwarded packets/bytes of a peering slot in one direction (0: from its `vpc_a`).
    pub fn forwarded(&self, peering: u32, dir: u32) -> Counter {
        let mut c = Counter::default();
        if let Ok(values) = self.fwd.get(&peerd_common::fwd_index(peering, dir), 0) {
            for v in values.iter() {
                c.packets += v.packets;
                c.bytes += v.bytes;
            }
        }
        c
    }
}
