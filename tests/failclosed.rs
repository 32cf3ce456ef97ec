//! Fail closed (issue "Fail closed, and a control plane a newcomer can change"): a VPC can never
//! switch off its own filter, a program missing from a link is caught by the backstop, a link
//! name peerd did not create is left alone, and two daemons never share a state directory.
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::env::{in_ns, sh, wait_for, Env};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(30);

const THREE: &str = r#"
[[vpc]]
name = "a"
cidrs = ["10.71.0.0/16", "fd00:71::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "b"

[[vpc]]
name = "b"
cidrs = ["10.72.0.0/16", "fd00:72::/48"]
  [[vpc.peering]]
  id = "pcx-ab"
  peer = "a"

[[vpc]]
name = "c"
cidrs = ["10.73.0.0/16"]
"#;

fn started(body: &str) -> Env {
    common::can_run();
    let mut env = Env::new();
    env.write_config(body);
    env.start();
    env
}

fn vpc<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["vpcs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("VPC {name} not in status: {st:#}"))
}

/// The backstop's counter, read from nftables itself.
fn backstop_packets(env: &Env) -> u64 {
    let table = format!(
        "peerd_{}",
        env.prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    );
    let out = sh(&["nft", "-j", "list", "table", "inet", &table]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .find_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
        .expect("the backstop rule and its counter exist")
}

/// Sends `n` UDP datagrams from `src` in VPC `vpc` to 224.0.0.1 out of the uplink (bound to
/// it): with a program they are dropped as not-unicast; without one they would reach the host
/// stack. Multicast to all-hosts never leaves the host, whatever happens to it.
fn multicast_from(env: &Env, vpc: &str, src: &str, n: usize) {
    use std::os::fd::AsRawFd as _;
    let src = src.to_owned();
    let sent = in_ns(&env.netns(vpc), move || {
        let s = std::net::UdpSocket::bind((src.as_str(), 0)).unwrap();
        let dev = b"peerd0\0";
        // SAFETY: a valid socket and a NUL-terminated interface name with its length.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_BINDTODEVICE");
        (0..n)
            .filter(|_| s.send_to(b"backstop?", ("224.0.0.1", 9)).is_ok())
            .count()
    });
    assert_eq!(sent, n, "the VPC could not send");
}

#[test]
#[ignore = "needs root"]
fn a_vpc_cannot_switch_off_its_own_filter() {
    let env = started(THREE);
    env.add_addr("a", "10.71.0.1");
    env.add_addr("b", "10.72.0.1");
    env.add_addr("c", "10.73.0.1");
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 1));
    // The tenant's root disables IPv6 on the uplink inside its namespace: peerd cannot put
    // back the IPv6 gateway's neighbour entry there.
    sh(&[
        "ip",
        "netns",
        "exec",
        &env.netns("a"),
        "sysctl",
        "-qw",
        "net.ipv6.conf.peerd0.disable_ipv6=1",
    ]);
    // The next full reconcile (periodic resync) reports it, and keeps the filter.
    let st = env.wait_status("VPC a not ready", BOUND, |st| {
        vpc(st, "a")["ready"] == false
    });
    let err = vpc(&st, "a")["error"].as_str().unwrap_or("").to_owned();
    assert!(
        err.contains("fe80::1"),
        "the reason names what failed: {err}"
    );
    assert_eq!(
        vpc(&st, "b")["ready"],
        true,
        "the neighbours are not taken down"
    );
    // The program is still on a's link: spoofed traffic is still dropped and counted, an
    // unpeered VPC still gets nothing, and the peering still works over IPv4.
    let host_if = vpc(&st, "a")["host_if"].as_str().unwrap().to_owned();
    let link = sh(&["ip", "-d", "link", "show", "dev", &host_if]);
    assert!(link.contains("state UP") || link.contains(",UP"), "{link}");
    env.add_addr("a", "10.99.0.1");
    env.add_gw_route("a", "10.73.0.0/16");
    let spoofed = env.drops("a", "spoofed-source");
    assert_eq!(
        env.udp(
            "a",
            "10.99.0.1",
            "b",
            "10.72.0.1",
            3,
            Duration::from_millis(300)
        ),
        0
    );
    assert_eq!(
        env.udp(
            "a",
            "10.71.0.1",
            "c",
            "10.73.0.1",
            3,
            Duration::from_millis(300)
        ),
        0
    );
    wait_for(Duration::from_secs(3), "spoofed packets counted", || {
        (env.drops("a", "spoofed-source") >= spoofed + 3).then_some(())
    });
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 1));
    // The tenant turns IPv6 back on: peerd retries by itself and the VPC is ready again.
    sh(&[
        "ip",
        "netns",
        "exec",
        &env.netns("a"),
        "sysctl",
        "-qw",
        "net.ipv6.conf.peerd0.disable_ipv6=0",
    ]);
    env.wait_status("VPC a ready again", BOUND, |st| {
        vpc(st, "a")["ready"] == true
    });
    assert!(env.log().contains("VPC not ready"), "the failure is logged");
}

#[test]
#[ignore = "needs root"]
fn the_backstop_counts_nothing_normally_and_drops_what_a_missing_program_lets_through() {
    let mut env = started(THREE);
    env.add_addr("a", "10.71.0.1");
    env.add_addr("b", "10.72.0.1");
    env.add_addr("c", "10.73.0.1");
    // Normal operation, with traffic that is delivered and traffic that is dropped.
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 3));
    env.add_gw_route("a", "10.73.0.0/16");
    let _ = env.udp(
        "a",
        "10.71.0.1",
        "c",
        "10.73.0.1",
        3,
        Duration::from_millis(200),
    );
    let before = env.drops("a", "not-unicast");
    multicast_from(&env, "a", "10.71.0.1", 5);
    wait_for(Duration::from_secs(3), "multicast counted", || {
        (env.drops("a", "not-unicast") >= before + 5).then_some(())
    });
    assert_eq!(
        backstop_packets(&env),
        0,
        "the backstop counted normal traffic"
    );

    // The daemon stops (the datapath stays), and a's program goes missing: what the VPC sends
    // now reaches the host, where the backstop drops it.
    env.stop();
    let host_if = peerd::state::link_name(&env.netns("a"));
    for e in std::fs::read_dir(env.pin_dir.join("links"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().contains(&host_if) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    // The kernel frees the link (and detaches the program) once its last reference goes.
    wait_for(
        Duration::from_secs(10),
        "the program to be detached",
        || {
            let net = sh(&["bpftool", "net", "show", "dev", &host_if]);
            (!net.contains("peerd_tc") && !net.contains("peerd_xdp")).then_some(())
        },
    );
    multicast_from(&env, "a", "10.71.0.1", 4);
    wait_for(Duration::from_secs(5), "the backstop to count", || {
        (backstop_packets(&env) >= 4).then_some(())
    });
    // A restart puts the program back; the counter is in status and metrics.
    env.start();
    let st = env.wait_status("backstop in status", BOUND, |st| {
        st["backstop"]["packets"].as_u64().unwrap_or(0) >= 4
    });
    assert_eq!(vpc(&st, "a")["ready"], true);
    let before = backstop_packets(&env);
    let dropped = env.drops("a", "not-unicast");
    multicast_from(&env, "a", "10.71.0.1", 3);
    wait_for(
        Duration::from_secs(3),
        "multicast dropped by the program",
        || (env.drops("a", "not-unicast") >= dropped + 3).then_some(()),
    );
    assert_eq!(
        backstop_packets(&env),
        before,
        "the program is back in front"
    );
}

/// A veth pair in the host namespace that is not peerd's, removed on drop.
struct Foreign(String);
impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
#[ignore = "needs root"]
fn a_link_name_taken_by_someone_else_is_left_alone() {
    common::can_run();
    let mut env = Env::new();
    let taken = peerd::state::link_name(&env.netns("a"));
    let peer = common::unique("fk");
    sh(&[
        "ip", "link", "add", &taken, "type", "veth", "peer", "name", &peer,
    ]);
    let _foreign = Foreign(taken.clone());
    env.write_config(THREE);
    env.start();
    let st = env.wait_status("VPC a ready", BOUND, |st| vpc(st, "a")["ready"] == true);
    let host_if = vpc(&st, "a")["host_if"].as_str().unwrap();
    assert_ne!(host_if, taken, "peerd chose another name");
    let other = sh(&["ip", "-d", "link", "show", "dev", &taken]);
    assert!(
        other.contains(&format!("{taken}@{peer}")) && !other.contains("peerd:"),
        "the other link is untouched: {other}"
    );
    env.add_addr("a", "10.71.0.1");
    env.add_addr("b", "10.72.0.1");
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 2));
}

#[test]
#[ignore = "needs root"]
fn a_second_daemon_on_the_same_state_dir_refuses() {
    let env = started(THREE);
    // Another configuration with the same state_dir (and its own socket and pins).
    let other = env.dir.join("other.toml");
    std::fs::write(
        &other,
        format!(
            "[daemon]\nnetns_prefix = \"{}x\"\nstate_dir = \"{}\"\npin_dir = \"{}x\"\nsocket = \"{}\"\n",
            env.prefix,
            env.dir.join("state").display(),
            env.pin_dir.display(),
            env.dir.join("other.sock").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(common::env::PEERD)
        .args(["run", "--config"])
        .arg(&other)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(20), "the second daemon to exit", || {
        child.try_wait().ok().flatten()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("another peerd holds"), "{err}");
    assert!(!std::path::Path::new(&format!("{}x", env.pin_dir.display())).exists());
    // The first one is unaffected.
    assert_eq!(vpc(&env.status(), "a")["ready"], true);
}

#[test]
#[ignore = "needs root"]
fn teardown_removes_only_what_peerd_created() {
    common::can_run();
    let mut env = Env::new();
    // A namespace that existed before peerd (peerd adopts it for VPC a), and a pin of someone
    // else's in peerd's pin_dir.
    sh(&["ip", "netns", "add", &env.netns("a")]);
    std::fs::create_dir_all(&env.pin_dir).unwrap();
    let other = env.pin_dir.join("other");
    sh(&[
        "bpftool",
        "map",
        "create",
        other.to_str().unwrap(),
        "type",
        "array",
        "key",
        "4",
        "value",
        "4",
        "entries",
        "1",
        "name",
        "other",
    ]);
    env.write_config(THREE);
    env.start();
    env.add_addr("a", "10.71.0.1");
    env.add_addr("b", "10.72.0.1");
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 1));
    let a_link = vpc(&env.status(), "a")["host_if"]
        .as_str()
        .unwrap()
        .to_owned();
    env.stop();
    let out = env.peerd(&["teardown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::env::netns_ok(&env.netns("a")),
        "the namespace peerd did not create stays"
    );
    assert!(
        !common::env::netns_ok(&env.netns("b")),
        "the one it created goes"
    );
    let links = sh(&["ip", "-o", "link", "show"]);
    assert!(!links.contains(&a_link), "peerd's link in it goes: {links}");
    assert!(other.exists(), "the other pin stays");
    assert!(!env.pin_dir.join("maps").exists() && !env.pin_dir.join("links").exists());
}

#[test]
#[ignore = "needs root"]
fn teardown_refuses_a_pin_dir_that_is_the_bpffs_root() {
    common::can_run();
    let env = Env::new();
    std::fs::write(
        &env.config,
        format!(
            "[daemon]\nnetns_prefix = \"{}\"\nstate_dir = \"{}\"\npin_dir = \"/sys/fs/bpf\"\nsocket = \"{}\"\n",
            env.prefix,
            env.dir.join("state").display(),
            env.socket.display()
        ),
    )
    .unwrap();
    // Refused before it touches anything (other tests' pins live in /sys/fs/bpf too).
    let out = env.peerd(&["teardown"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/sys/fs/bpf"), "{err}");
    assert!(!err.contains("torn down"), "{err}");
}

#[test]
#[ignore = "needs root"]
fn one_tenants_broken_file_freezes_nobody_and_a_restart_starts_on_the_last_good_set() {
    common::can_run();
    let mut env = Env::new();
    let tenants = env.dir.join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    let file = |name: &str, body: &str| {
        let tmp = tenants.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, tenants.join(name)).unwrap();
    };
    let a = "[[vpc]]\nname = \"a\"\ncidrs = [\"10.71.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"b\"\n";
    let b = "[[vpc]]\nname = \"b\"\ncidrs = [\"10.72.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n";
    file("a.toml", a);
    file("b.toml", b);
    file(
        "c.toml",
        "[[vpc]]\nname = \"c\"\ncidrs = [\"10.73.0.0/16\"]\n",
    );
    // `include` is a top-level key: it goes before the test's [daemon] section.
    let main = std::fs::read_to_string({
        env.write_config("");
        &env.config
    })
    .unwrap();
    std::fs::write(
        &env.config,
        format!("include = [\"tenants/*.toml\"]\n{main}"),
    )
    .unwrap();
    env.start();
    env.add_addr("a", "10.71.0.1");
    env.add_addr("b", "10.72.0.1");
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 1));

    // Tenant a breaks its file; tenant c adds a peering with b at the same time.
    file("a.toml", &format!("{a}  oops = \n"));
    file(
        "c.toml",
        "[[vpc]]\nname = \"c\"\ncidrs = [\"10.73.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-cb\"\n  peer = \"b\"\n",
    );
    let st = env.wait_status("c's change applied, a's file reported", BOUND, |st| {
        st["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("a.toml:"))
            && st["peerings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == "pcx-cb")
    });
    let err = st["config_error"].as_str().unwrap();
    assert!(
        err.contains("a.toml:7:"),
        "file:line:col of the broken file: {err}"
    );
    assert!(!err.contains("c.toml"), "{err}");
    assert_eq!(
        vpc(&st, "a")["ready"],
        true,
        "a's last good version stays in force"
    );
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 1));

    // A restart with the broken file starts on the last good set.
    env.stop();
    env.start();
    let st = env.status();
    assert!(st["config_error"]
        .as_str()
        .is_some_and(|e| e.contains("a.toml:")));
    assert_eq!(vpc(&st, "a")["ready"], true);
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 1));
    // Fixed: the report goes away.
    file("a.toml", a);
    env.wait_status("config_error cleared", BOUND, |st| {
        st["config_error"].is_null()
    });
}

#[test]
#[ignore = "needs root"]
fn a_thousand_idle_control_connections_change_nothing_for_forwarding_or_reloads() {
    let env = started(THREE);
    env.add_addr("a", "10.71.0.1");
    env.add_addr("b", "10.72.0.1");
    let _idle: Vec<std::os::unix::net::UnixStream> = (0..1000)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&env.socket).ok())
        .collect();
    assert!(
        _idle.len() >= 900,
        "only {} connections opened",
        _idle.len()
    );
    // Traffic flows, status answers, and a reload (adding VPC c's peering) goes through.
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 3));
    let start = std::time::Instant::now();
    let st = env.status();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "status took {:?}",
        start.elapsed()
    );
    assert_eq!(vpc(&st, "a")["ready"], true);
    env.write_config(&THREE.replace(
        "name = \"c\"\ncidrs = [\"10.73.0.0/16\"]\n",
        "name = \"c\"\ncidrs = [\"10.73.0.0/16\"]\n  [[vpc.peering]]\n  id = \"pcx-ca\"\n  peer = \"a\"\n",
    ));
    env.reload();
    let st = env.status();
    assert_eq!(
        st["peerings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "pcx-ca")
            .unwrap()["state"],
        "pending-acceptance"
    );
    assert!(env.ping("a", "10.71.0.1", "10.72.0.1", 3));
}
