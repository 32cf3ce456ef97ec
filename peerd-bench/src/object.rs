//! The benchmark's own eBPF object (`peerd-bench-ebpf`, built by build.rs): generator, sink,
//! ceilings and cost wrappers. peerd's object never contains them.
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray},
    programs::{
        links::LinkOrder, tc::SchedClassifierLinkId, tc::TcAttachOptions, SchedClassifier,
        TcAttachType, Xdp,
    },
    Ebpf,
};

use crate::{
    peerd_api::Datapath,
    shared::{maps, BenchGen, BenchTarget, BenchTunnel, NEXT_EMPTY, NEXT_PEERD},
    Res,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/peerd-bench-ebpf"));

// SAFETY: repr(C), Copy, no padding (asserted in shared.rs).
unsafe impl aya::Pod for BenchGen {}
// SAFETY: as above.
unsafe impl aya::Pod for BenchTarget {}
// SAFETY: as above.
unsafe impl aya::Pod for BenchTunnel {}

/// One loaded copy of the object. Programs are loaded on first use; links made through
/// [`attach_tcx`] or `Xdp::attach` belong to it and are detached when it is dropped.
pub struct BenchObj {
    ebpf: Ebpf,
    gen: Array<MapData, BenchGen>,
    sink: PerCpuArray<MapData, u64>,
    targets: HashMap<MapData, u32, BenchTarget>,
    tunnels: HashMap<MapData, u32, BenchTunnel>,
    tc_next: ProgramArray<MapData>,
    xdp_next: ProgramArray<MapData>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Res<T> {
    ebpf.take_map(name)
        .ok_or_else(|| format!("no map {name} in the bench object"))?
        .try_into()
        .map_err(|e: aya::maps::MapError| format!("{name}: {e}"))
}

impl BenchObj {
    pub fn load() -> Res<Self> {
        if OBJECT.is_empty() {
            return Err(
                "the bench eBPF object is empty: peerd-bench was built with AYA_BUILD_SKIP".into(),
            );
        }
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| format!("loading the bench object: {e}"))?;
        Ok(BenchObj {
            gen: take(&mut ebpf, maps::GEN)?,
            sink: take(&mut ebpf, maps::SINK)?,
            targets: take(&mut ebpf, maps::TARGETS)?,
            tunnels: take(&mut ebpf, maps::TUNNELS)?,
            tc_next: take(&mut ebpf, maps::TC_NEXT)?,
            xdp_next: take(&mut ebpf, maps::XDP_NEXT)?,
            ebpf,
        })
    }

    /// TC program `name`, loaded into the kernel if it is not yet.
    pub fn tc(&mut self, name: &str) -> Res<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("no program {name}"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| format!("loading {name}: {e}"))?;
        }
        Ok(prog)
    }

    /// As `tc`, for XDP.
    pub fn xdp(&mut self, name: &str) -> Res<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("no program {name}"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| format!("loading {name}: {e}"))?;
        }
        Ok(prog)
    }

    /// Sets the generator's template (the first 34 bytes of `frame`) and what it does after.
    pub fn set_gen(&mut self, frame: &[u8], redirect: Option<u32>) -> Res<()> {
        let mut template = [0u8; 40];
        template[..34].copy_from_slice(&frame[..34]);
        let cfg = BenchGen {
            action: redirect.is_some() as u32,
            ifindex: redirect.unwrap_or(0),
            template,
        };
        self.gen.set(0, cfg, 0).map_err(|e| e.to_string())
    }

    /// Packets the sink has counted so far (all CPUs).
    pub fn sink_count(&self) -> Res<u64> {
        self.sink
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .map_err(|e| format!("reading {}: {e}", maps::SINK))
    }

    /// The ceiling programs send what arrives on ifindex `from` to `to`.
    pub fn set_target(&mut self, from: u32, to: BenchTarget) -> Res<()> {
        self.targets
            .insert(from, to, 0)
            .map_err(|e| format!("{}: {e}", maps::TARGETS))
    }

    /// The cross-host ceiling sends what arrives on ifindex `from` into tunnel `to`.
    pub fn set_tunnel(&mut self, from: u32, to: BenchTunnel) -> Res<()> {
        self.tunnels
            .insert(from, to, 0)
            .map_err(|e| format!("{}: {e}", maps::TUNNELS))
    }

    /// Fills the cost wrappers' program arrays: the empty programs (the baseline) and `dp`'s
    /// entry points.
    pub fn set_next(&mut self, dp: &mut Datapath) -> Res<()> {
        let err = |e: aya::maps::MapError| format!("filling the cost wrappers' slots: {e}");
        let e = |e: aya::programs::ProgramError| e.to_string();
        // Owned copies of the empty programs' fds: the arrays are fields of `self` too.
        let empty_tc = self.tc("bench_empty_tc")?.fd().map_err(e)?;
        let empty_tc = empty_tc.try_clone().map_err(|e| e.to_string())?;
        let empty_xdp = self.xdp("bench_empty_xdp")?.fd().map_err(e)?;
        let empty_xdp = empty_xdp.try_clone().map_err(|e| e.to_string())?;
        self.tc_next.set(NEXT_EMPTY, &empty_tc, 0).map_err(err)?;
        self.xdp_next.set(NEXT_EMPTY, &empty_xdp, 0).map_err(err)?;
        self.tc_next
            .set(NEXT_PEERD, dp.tc().fd().map_err(e)?, 0)
            .map_err(err)?;
        self.xdp_next
            .set(NEXT_PEERD, dp.xdp().fd().map_err(e)?, 0)
            .map_err(err)?;
        Ok(())
    }
}

/// Attaches `prog` at TCX ingress of `ifname` (in the calling thread's namespace).
pub fn attach_tcx(prog: &mut SchedClassifier, ifname: &str) -> Res<SchedClassifierLinkId> {
    prog.attach_with_options(
        ifname,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )
    .map_err(|e| format!("attaching to {ifname}: {e}"))
}
