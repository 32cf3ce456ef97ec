//! Flow log aggregation: one per-CPU entry per (source VPC, 5-tuple), packets and bytes added in
//! place; the daemon drains the map every window.
//!
//! The map is shared by every VPC, so each source VPC may create at most `FLOW_BUDGET` per-flow
//! entries per window: past that, its packets of new flows are added to one aggregate entry per
//! (source VPC, family, verdict) with the 5-tuple zeroed. A VPC spraying random (e.g. spoofed)
//! sources then costs the map a bounded number of entries, its packets stay counted in its
//! aggregates, and the other VPCs' flows keep being recorded one by one. A full map loses the
//! packet's flow, counted in `PEERD_FLOW_LOST`.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use peerd_common::{
    FlowKey, FlowValue, CONFIG_FLOW_LOG, FLOW_ACCEPT, FLOW_BUDGET, FLOW_REJECT_BASE,
};

use crate::{
    decide::{Action, Verdict},
    maps,
};

const BPF_NOEXIST: u64 = 1;

/// Is the flow log on? Callers build the key only then.
#[inline(always)]
pub fn enabled() -> bool {
    maps::config() & CONFIG_FLOW_LOG != 0
}

/// Adds the packet to its flow; call only when `enabled()`. `key` is the packet's 5-tuple;
/// its `kind` is set here to the verdict, so that a flow whose verdict changes within a window
/// (a peering deactivated, a route removed) gets one entry per verdict, each with its own
/// packets, instead of every packet logged under the first verdict.
#[inline(always)]
pub fn record(key: &mut FlowKey, verdict: &Verdict, len: u32) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (verdict, dst_vpc, peering) = match verdict.action {
        Action::Deliver | Action::Tunnel => (FLOW_ACCEPT, verdict.dst_vpc, verdict.fwd_slot / 2),
        Action::Drop => (FLOW_REJECT_BASE + verdict.reason as u32, 0, 0),
        Action::Reply => return,
    };
    key.kind = verdict as u16;
    let value = FlowValue {
        packets: 1,
        bytes: len as u64,
        first_ns: now,
        last_ns: now,
        dst_vpc,
        peering,
        verdict,
        _pad: 0,
    };
    if add(key, &value) {
        return;
    }
    // A new flow: within the source VPC's budget for this window, or into its aggregate.
    let Some(budget) = maps::FLOW_BUDGET.get_ptr_mut(key.src_vpc) else {
        // Only for a VPC slot beyond the map, which the daemon never assigns.
        maps::count_flow_lost(len);
        return;
    };
    let window = maps::flow_window();
    // SAFETY: a value of an array map, valid for the program's run.
    let (seen, used) = unsafe { ((*budget).window, (*budget).used) };
    if seen == window && used >= FLOW_BUDGET as u64 {
        let agg = FlowKey::aggregate(key.src_vpc, key.family, verdict);
        if !add(&agg, &value) {
            create(&agg, &value, len);
        }
        return;
    }
    if create(key, &value, len) {
        // SAFETY: as above. Shared by all CPUs: the count is added atomically. A CPU's first
        // new entry of a window restarts the count with a plain store, which may overwrite
        // what other CPUs added in that same instant; each CPU does so at most once per
        // window, so a VPC may exceed its budget by a few entries per CPU and window (as it
        // may by the entries other CPUs create between the check above and this add).
        unsafe {
            if seen == window {
                atomic_add(&raw mut (*budget).used, 1);
            } else {
                (*budget).window = window;
                (*budget).used = 1;
            }
        }
    }
}

/// Adds the packet to `key`'s entry; false when the map has none.
#[inline(always)]
fn add(key: &FlowKey, value: &FlowValue) -> bool {
    let Some(v) = maps::FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: this CPU's value, valid for the program's run; no other writer on this CPU.
    unsafe {
        if (*v).packets == 0 {
            // The entry was created on another CPU: this CPU's slot starts zeroed.
            *v = *value;
        } else {
            (*v).packets += 1;
            (*v).bytes += value.bytes;
            (*v).last_ns = value.last_ns;
            if (*v).peering != value.peering {
                // An aggregate whose packets went over more than one peering: say none.
                (*v).peering = 0;
                (*v).dst_vpc = 0;
            }
        }
    }
    true
}

/// Creates `key`'s entry with this packet; true when this call created it (false: another CPU
/// created it just now, and the packet was added there; or the map is full, and the packet's
/// flow is lost, counted).
#[inline(always)]
fn create(key: &FlowKey, value: &FlowValue, len: u32) -> bool {
    if maps::FLOWS.insert(key, value, BPF_NOEXIST).is_ok() {
        return true;
    }
    match maps::FLOWS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of an entry created elsewhere, zeroed: this CPU did not
        // see the entry a moment ago and nothing else runs here in between.
        Some(v) => unsafe { *v = *value },
        None => maps::count_flow_lost(len),
    }
    false
}

/// `*p += v` as one BPF atomic instruction (`lock *(u64 *)(p + 0) += v`).
///
/// # Safety
/// `p` must point at a u64 in a map value.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller passes a valid pointer; the instruction only adds to it.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above (only host builds of the crate, which never run this).
    unsafe {
        *p += v;
    }
}
