//! Network device features by name (as `ethtool -k` shows them), through the ethtool ioctl:
//! the feature names come from the kernel (string set `ETH_SS_FEATURES`), so no bit number of
//! a kernel-internal enum is hard-coded here. For features the legacy per-feature ethtool
//! commands do not cover (VLAN tag insertion, for one).
use std::io;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// A request buffer, 8-byte aligned, read and written as native-endian u32 at byte offsets.
struct Buf(Vec<u64>);

impl Buf {
    fn new(bytes: usize) -> Self {
        Self(vec![0; bytes.div_ceil(8)])
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: a u64 slice viewed as bytes: same memory, alignment 1 suffices.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 8) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
    }
    fn get(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.bytes()[off..off + 4].try_into().expect("4 bytes"))
    }
    fn set(&mut self, off: usize, v: u32) {
        self.bytes_mut()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// One SIOCETHTOOL call on `ifname` with `buf` as the command, in the calling thread's
/// network namespace; returns the ioctl's (non-negative) result.
fn call(ifname: &str, buf: &mut Buf) -> io::Result<i32> {
    // SAFETY: a plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: buf.0.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    for (d, s) in req
        .name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s;
    }
    // SAFETY: req is a valid ifreq whose data points at a command buffer sized for the
    // command (the callers size it from the kernel's own counts).
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(rc)
}

/// The device's feature names, in bit order.
fn feature_names(ifname: &str) -> io::Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, u64 sset_mask, u32 data[].
    let mut info = Buf::new(24);
    info.set(0, ETHTOOL_GSSET_INFO);
    info.0[1] = 1 << ETH_SS_FEATURES;
    call(ifname, &mut info)?;
    if info.0[1] & (1 << ETH_SS_FEATURES) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no feature names from the kernel",
        ));
    }
    let n = info.get(16) as usize;
    // struct ethtool_gstrings: cmd, string_set, len, u8 data[len * ETH_GSTRING_LEN].
    let mut strings = Buf::new(12 + n * ETH_GSTRING_LEN);
    strings.set(0, ETHTOOL_GSTRINGS);
    strings.set(4, ETH_SS_FEATURES);
    strings.set(8, n as u32);
    call(ifname, &mut strings)?;
    let data = &strings.bytes()[12..12 + n * ETH_GSTRING_LEN];
    Ok(data
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect())
}

/// Active bits of the device's features, one u32 per block of 32.
fn active(ifname: &str, blocks: usize) -> io::Result<Vec<u32>> {
    // struct ethtool_gfeatures: cmd, size, then per block available, requested, active,
    // never_changed.
    let mut g = Buf::new(8 + blocks * 16);
    g.set(0, ETHTOOL_GFEATURES);
    g.set(4, blocks as u32);
    call(ifname, &mut g)?;
    Ok((0..blocks).map(|b| g.get(8 + b * 16 + 8)).collect())
}

/// Whether each named feature of `ifname` is on.
pub fn get_features(ifname: &str, names: &[&str]) -> io::Result<Vec<bool>> {
    let all = feature_names(ifname)?;
    let act = active(ifname, all.len().div_ceil(32))?;
    names
        .iter()
        .map(|name| {
            let bit = all.iter().position(|n| n == name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no feature {name} on {ifname}"),
                )
            })?;
            Ok(act[bit / 32] & (1 << (bit % 32)) != 0)
        })
        .collect()
}

/// Turns the named features of `ifname` on or off; returns the names it changed (empty: all
/// were already so). Fails when a name is unknown to the kernel or the device keeps a feature
/// in the other state.
pub fn set_features<'a>(ifname: &str, names: &[&'a str], on: bool) -> io::Result<Vec<&'a str>> {
    let all = feature_names(ifname)?;
    let blocks = all.len().div_ceil(32);
    let mut bits = Vec::with_capacity(names.len());
    for &name in names {
        let bit = all.iter().position(|n| n == name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no feature {name} on {ifname}"),
            )
        })?;
        bits.push((name, bit));
    }
    let is_on = |act: &[u32], bit: usize| act[bit / 32] & (1 << (bit % 32)) != 0;
    let before = active(ifname, blocks)?;
    let change: Vec<_> = bits
        .iter()
        .copied()
        .filter(|&(_, bit)| is_on(&before, bit) != on)
        .collect();
    if change.is_empty() {
        return Ok(Vec::new());
    }
    // struct ethtool_sfeatures: cmd, size, then per block valid, requested.
    let mut s = Buf::new(8 + blocks * 8);
    s.set(0, ETHTOOL_SFEATURES);
    s.set(4, blocks as u32);
    for &(_, bit) in &change {
        let (b, mask) = (bit / 32, 1u32 << (bit % 32));
        s.set(8 + b * 8, s.get(8 + b * 8) | mask);
        if on {
            s.set(8 + b * 8 + 4, s.get(8 + b * 8 + 4) | mask);
        }
    }
    call(ifname, &mut s)?;
    let after = active(ifname, blocks)?;
    if let Some(&(name, _)) = change.iter().find(|&&(_, bit)| is_on(&after, bit) != on) {
        let state = if on { "on" } else { "off" };
        return Err(io::Error::other(format!(
            "{ifname} keeps {name} {}: the device does not let it be turned {state}",
            if on { "off" } else { "on" }
        )));
    }
    Ok(change.into_iter().map(|(name, _)| name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_features_are_named_and_readable() {
        // Reading needs no privilege; `lo` exists in every namespace.
        let names = feature_names("lo").expect("feature names of lo");
        assert!(
            names.iter().any(|n| n == "tx-checksum-ip-generic"),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == "tx-vlan-hw-insert"), "{names:?}");
        let act = active("lo", names.len().div_ceil(32)).expect("features of lo");
        let bit = names.iter().position(|n| n == "loopback").unwrap();
        assert_ne!(
            act[bit / 32] & (1 << (bit % 32)),
            0,
            "lo has the loopback feature on"
        );
        let err = set_features("lo", &["no-such-feature"], false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
