//! Types and names shared by the benchmark's eBPF programs and `peerd-bench`, which includes
//! this file with `#[path]` (nothing here may need `std` or `aya-ebpf`).
//!
//! Every map value is `#[repr(C)]`, `Copy`, free of implicit padding, and has the same layout
//! on the BPF target and on the host (checked at compile time below).

/// Configuration of the packet generator (`BENCH_GEN[0]`): the frame's first 34 bytes
/// (Ethernet + IPv4 header) are rewritten from `template` on every repetition, then the frame
/// is passed to the stack (`action` 0) or redirected out of `ifindex` (`action` 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchGen {
    pub action: u32,
    pub ifindex: u32,
    pub template: [u8; 40],
}

/// Where the ceiling programs send what arrives on an ifindex (`BENCH_TARGETS` value): out of
/// `ifindex`, with these MACs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BenchTarget {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// What the cross-host ceiling (`bench_tunnel_tc`) does with what arrives on an ifindex
/// (`BENCH_TUNNELS` value): sets the tunnel key (VNI `vni`, remote `remote_ipv4` in host byte
/// order, as `bpf_tunnel_key` takes it) and redirects to the `external` VXLAN device `ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BenchTunnel {
    pub ifindex: u32,
    pub vni: u32,
    pub remote_ipv4: u32,
}

/// Map names, so userspace finds what the programs declare.
pub mod maps {
    pub const GEN: &str = "BENCH_GEN";
    pub const SINK: &str = "BENCH_SINK";
    pub const TARGETS: &str = "BENCH_TARGETS";
    pub const TC_NEXT: &str = "BENCH_TC_NEXT";
    pub const XDP_NEXT: &str = "BENCH_XDP_NEXT";
    pub const TUNNELS: &str = "BENCH_TUNNELS";
}

/// Slots of `BENCH_TC_NEXT` / `BENCH_XDP_NEXT`, the programs the cost wrappers tail-call after
/// restoring the headers: the empty program (the baseline) and peerd's entry point.
pub const NEXT_EMPTY: u32 = 0;
pub const NEXT_PEERD: u32 = 1;

/// What a cost wrapper returns when it could not hand over (no frame, no template, empty
/// slot): no TC or XDP verdict has this value, so a measurement can tell it ran nothing.
pub const NOT_RUN: u32 = 0x7ead;

const _: () = assert!(core::mem::size_of::<BenchGen>() == 48);
const _: () = assert!(core::mem::align_of::<BenchGen>() == 4);
const _: () = assert!(core::mem::size_of::<BenchTarget>() == 16);
const _: () = assert!(core::mem::align_of::<BenchTarget>() == 4);
const _: () = assert!(core::mem::size_of::<BenchTunnel>() == 12);
const _: () = assert!(core::mem::align_of::<BenchTunnel>() == 4);
