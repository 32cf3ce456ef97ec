//! Flow log aggregation: one per-CPU entry per (source VPC, 5-tuple), packets and bytes added in
//! place;
//! the daemon drains the map every window. A full map loses the flow, counted.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use peerd_common::{FlowKey, FlowValue, CONFIG_FLOW_LOG, FLOW_ACCEPT, FLOW_REJECT_BASE};

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

/// Adds the packet to its flow; call only when `enabled()`.
#[inline(always)]
pub fn record(key: &FlowKey, verdict: &Verdict, len: u32) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (verdict, dst_vpc, peering) = match verdict.action {
        Action::Deliver => (FLOW_ACCEPT, verdict.dst_vpc, verdict.fwd_slot / 2),
        Action::Drop => (FLOW_REJECT_BASE + verdict.reason as u32, 0, 0),
        Action::Reply => return,
    };
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
    if let Some(v) = maps::FLOWS.get_ptr_mut(key) {
        // SAFETY: this CPU's value, valid for the program's run; no other writer on this CPU.
        unsafe {
            if (*v).packets == 0 {
                // The entry was created on another CPU: this CPU's slot starts zeroed.
                *v = value;
            } else {
                (*v).packets += 1;
                (*v).bytes += len as u64;
                (*v).last_ns = now;
            }
        }
        return;
    }
    if maps::FLOWS.insert(key, &value, BPF_NOEXIST).is_err() {
        // Another CPU may have created it just now; else the map is full.
        match maps::FLOWS.get_ptr_mut(key) {
            // SAFETY: as above; this CPU's slot of an entry created elsewhere starts zeroed.
            Some(v) => unsafe { *v = value },
            None => maps::count_flow_lost(len),
        }
    }
}
