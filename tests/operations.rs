//! Live operations (issue 4): reload by editing files, lifecycle with memory, restarts and
//! SIGKILL without loss, drift repair, plan.
mod common;

use std::time::Duration;

use common::{
    env::{sh, wait_for, Env},
    stream::Stream,
};

const BOUND: Duration = Duration::from_secs(30);

fn vpc(name: &str, cidr: &str, peerings: &[(&str, &str)]) -> String {
    let mut s = format!("[[vpc]]\nname = \"{name}\"\ncidrs = [\"{cidr}\"]\n");
    for (id, peer) in peerings {
        s += &format!("  [[vpc.peering]]\n  id = \"{id}\"\n  peer = \"{peer}\"\n");
    }
    s
}

fn started(body: &str) -> Option<Env> {
    if !common::can_run() {
        return None;
    }
    let mut env = Env::new();
    env.write_config(body);
    env.start();
    Some(env)
}

#[test]
#[ignore = "needs root"]
fn lifecycle_pending_active_disconnected_rejected_and_survives_restart() {
    let a = |p: &[(&str, &str)]| vpc("a", "10.0.0.0/16", p);
    let b = |p: &[(&str, &str)]| vpc("b", "10.1.0.0/16", p);
    let c = |p: &[(&str, &str)]| vpc("c", "10.2.0.0/16", p);
    let body1 = format!(
        "{}{}{}",
        a(&[("pcx-ab", "b"), ("pcx-ac", "c")]),
        b(&[]),
        c(&[])
    );
    let Some(mut env) = started(&body1) else {
        return;
    };
    assert_eq!(env.state_of("pcx-ab"), "pending-acceptance");
    env.add_addr("a", "10.0.0.1");
    env.add_addr("b", "10.1.0.1");

    // b accepts by editing its file: picked up by the watcher, no signal needed.
    let c_rejects =
        c(&[]) + "  [[vpc.peering]]\n  id = \"pcx-ac\"\n  peer = \"a\"\n  reject = true\n";
    env.write_config(&format!(
        "{}{}{}",
        a(&[("pcx-ab", "b"), ("pcx-ac", "c")]),
        b(&[("pcx-ab", "a")]),
        c_rejects
    ));
    let st = env.wait_status("pcx-ab active", BOUND, |st| {
        Env::peering(st, "pcx-ab")["state"] == "active"
    });
    assert_eq!(Env::peering(&st, "pcx-ac")["state"], "rejected");
    assert!(Env::peering(&st, "pcx-ab")["activated_at"].is_u64());
    assert!(env.ping("a", "10.0.0.1", "10.1.0.1", 2));

    // a removes its end: disconnected, traffic stops at once.
    env.write_config(&format!("{}{}{}", a(&[]), b(&[("pcx-ab", "a")]), c(&[])));
    let st = env.wait_status("pcx-ab disconnected", BOUND, |st| {
        Env::peering(st, "pcx-ab")["state"] == "disconnected"
    });
    assert!(Env::peering(&st, "pcx-ab")["reason"]
        .as_str()
        .unwrap()
        .contains("removed"));
    env.add_gw_route("b", "10.0.0.0/16");
    assert_eq!(
        env.udp(
            "b",
            "10.1.0.1",
            "a",
            "10.0.0.1",
            3,
            Duration::from_millis(400)
        ),
        0
    );

    // States and timestamps survive a restart.
    let before = env.status();
    env.stop();
    env.start();
    let after = env.status();
    assert_eq!(Env::peering(&after, "pcx-ab")["state"], "disconnected");
    assert_eq!(
        Env::peering(&after, "pcx-ab")["first_seen"],
        Env::peering(&before, "pcx-ab")["first_seen"]
    );
    assert_eq!(
        Env::peering(&after, "pcx-ab")["activated_at"],
        Env::peering(&before, "pcx-ab")["activated_at"]
    );
}

#[test]
#[ignore = "needs root"]
fn pending_requests_expire_and_stay_expired() {
    let body = format!(
        "{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b")]),
        vpc("b", "10.1.0.0/16", &[])
    );
    if !common::can_run() {
        return;
    }
    let mut env = Env::new();
    env.write_config(&body);
    // A short expiry: the daemon section is ours, so patch it in.
    let text = std::fs::read_to_string(&env.config).unwrap().replacen(
        "[daemon]\n",
        "[daemon]\npending_expiry = \"2s\"\n",
        1,
    );
    std::fs::write(&env.config, text).unwrap();
    env.start();
    assert_eq!(env.state_of("pcx-ab"), "pending-acceptance");
    let st = env.wait_status("pcx-ab expired", Duration::from_secs(15), |st| {
        Env::peering(st, "pcx-ab")["state"] == "expired"
    });
    assert!(Env::peering(&st, "pcx-ab")["reason"].is_string());
    // Accepting it now is too late: it stays expired (ask again with a new id), also after a restart.
    let accepted = format!(
        "{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b")]),
        vpc("b", "10.1.0.0/16", &[("pcx-ab", "a")])
    );
    let text = std::fs::read_to_string(&env.config).unwrap();
    let daemon_part = &text[..text.find("[[vpc]]").unwrap()];
    std::fs::write(&env.config, format!("{daemon_part}{accepted}")).unwrap();
    env.reload();
    assert_eq!(env.state_of("pcx-ab"), "expired");
    env.stop();
    env.start();
    assert_eq!(env.state_of("pcx-ab"), "expired");
}

#[test]
#[ignore = "needs root"]
fn an_active_peering_loses_nothing_through_edits_restarts_kills_and_bad_configs() {
    let base = format!(
        "{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b")]),
        vpc("b", "10.1.0.0/16", &[("pcx-ab", "a")])
    );
    let Some(mut env) = started(&base) else {
        return;
    };
    env.add_addr("a", "10.0.0.1");
    env.add_addr("b", "10.1.0.1");
    assert!(env.ping("a", "10.0.0.1", "10.1.0.1", 1));
    let stream = Stream::start(&env);

    // 100 more VPCs in 50 peered pairs, added by editing the file, then removed.
    let mut many = base.clone();
    for i in 0..50 {
        let (x, y) = (format!("x{i}"), format!("y{i}"));
        let id = format!("pcx-xy{i}");
        many += &vpc(
            &x,
            &format!("10.{}.{}.0/24", 100 + i / 100, i % 100),
            &[(&id, &y)],
        );
        many += &vpc(
            &y,
            &format!("10.{}.{}.0/24", 200 + i / 100, i % 100),
            &[(&id, &x)],
        );
    }
    env.write_config(&many);
    env.wait_status("102 VPCs ready", Duration::from_secs(120), |st| {
        st["vpcs"].as_array().unwrap().len() == 102
            && st["vpcs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["ready"] == true)
    });
    let counters_before = env.status();
    env.write_config(&base);
    env.wait_status("back to 2 VPCs", Duration::from_secs(120), |st| {
        st["vpcs"].as_array().unwrap().len() == 2
    });
    assert!(
        !sh(&["ip", "netns", "list"]).contains(&env.netns("x0")),
        "removed VPCs' namespaces are gone"
    );
    // The untouched peering kept its slot and counters.
    let p_before = Env::peering(&counters_before, "pcx-ab")["forwarded"][0]["packets"]
        .as_u64()
        .unwrap();
    let p_after = Env::peering(&env.status(), "pcx-ab")["forwarded"][0]["packets"]
        .as_u64()
        .unwrap();
    assert!(p_after >= p_before && p_before > 0);

    // Stop and restart; kill -9 and restart.
    env.stop();
    std::thread::sleep(Duration::from_millis(300)); // traffic flows with no daemon at all
    env.start();
    env.kill9();
    std::thread::sleep(Duration::from_millis(300));
    env.start();

    // A bad edit is rejected and reported; the datapath is untouched; the next good edit clears it.
    env.write_config(&base.replace("10.1.0.0/16", "10.1.0.0/99"));
    let st = env.wait_status("config_error", BOUND, |st| st["config_error"].is_string());
    let err = st["config_error"].as_str().unwrap();
    assert!(
        err.contains(&format!("{}:", env.config.display())) && err.contains("10.1.0.0/99"),
        "{err}"
    );
    assert_eq!(Env::peering(&st, "pcx-ab")["state"], "active");
    env.write_config(&base);
    env.wait_status("config_error cleared", BOUND, |st| {
        st["config_error"].is_null()
    });

    let (sent, lost) = stream.finish();
    assert!(sent > 1000, "the stream ran ({sent} datagrams)");
    assert!(
        lost.is_empty(),
        "lost {} of {sent} datagrams, first {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(20)],
        env.log()
    );
}

/// An upgrade that changed a map's layout: the pinned map of the old build is replaced, not
/// reused (reusing it would fail to load or misread it), and traffic flows.
#[test]
#[ignore = "needs root"]
fn a_pinned_map_with_an_old_layout_is_replaced() {
    if !common::can_run() {
        return;
    }
    let mut env = Env::new();
    let maps = env.pin_dir.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let pinned = maps.join("PEERD_IFACES");
    let old = pinned.to_str().unwrap().to_owned();
    // The layout before the inline source prefixes: an 8-byte value.
    sh(&[
        "bpftool",
        "map",
        "create",
        &old,
        "type",
        "hash",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "4096",
        "name",
        "PEERD_IFACES",
    ]);
    assert!(sh(&["bpftool", "map", "show", "pinned", &old]).contains("value 8B"));
    env.write_config(&format!(
        "{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b")]),
        vpc("b", "10.1.0.0/16", &[("pcx-ab", "a")])
    ));
    env.start();
    env.add_addr("a", "10.0.0.1");
    env.add_addr("b", "10.1.0.1");
    assert!(
        env.ping("a", "10.0.0.1", "10.1.0.1", 1),
        "forwards after the upgrade"
    );
    let shown = sh(&["bpftool", "map", "show", "pinned", &old]);
    assert!(
        shown.contains(&format!(
            "value {}B",
            std::mem::size_of::<peerd_common::IfaceInfo>()
        )),
        "the pinned map has this build's layout: {shown}"
    );
    assert!(
        env.log().contains("another layout"),
        "the replacement is logged"
    );
}

#[test]
#[ignore = "needs root"]
fn drift_is_repaired() {
    let base = format!(
        "{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b")]),
        vpc("b", "10.1.0.0/16", &[("pcx-ab", "a")])
    );
    let Some(env) = started(&base) else { return };
    let works = |env: &Env| {
        // Workloads vanish with a deleted namespace: (re)add them when missing.
        for (v, a) in [("a", "10.0.0.1"), ("b", "10.1.0.1")] {
            let ns = env.netns(v);
            if common::env::netns_ok(&ns)
                && !sh(&["ip", "-n", &ns, "addr", "show", "dev", "lo"]).contains(a)
            {
                env.add_addr(v, a);
            }
        }
        env.ping("a", "10.0.0.1", "10.1.0.1", 1)
    };
    assert!(works(&env));
    let host_if = |v: &str| peerd::state::link_name(&env.netns(v));

    // A namespace deleted by hand.
    sh(&["ip", "netns", "del", &env.netns("b")]);
    wait_for(BOUND, "namespace b restored and traffic back", || {
        works(&env).then_some(())
    });
    // The host end of a veth deleted by hand.
    sh(&["ip", "link", "del", &host_if("a")]);
    wait_for(BOUND, "veth of a restored and traffic back", || {
        works(&env).then_some(())
    });
    // The program detached (its pinned link removed).
    for e in std::fs::read_dir(env.pin_dir.join("links"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&host_if("a")) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    wait_for(BOUND, "datapath re-attached and traffic back", || {
        works(&env).then_some(())
    });
    // Routes flushed.
    sh(&[
        "ip",
        "-n",
        &env.netns("a"),
        "route",
        "flush",
        "proto",
        "208",
    ]);
    wait_for(BOUND, "routes restored and traffic back", || {
        works(&env).then_some(())
    });
    assert!(
        env.log().contains("re-attached") || env.log().contains("attached datapath"),
        "repairs are logged"
    );
}

#[test]
#[ignore = "needs root"]
fn plan_shows_adds_removes_and_changes_without_applying() {
    let base = format!(
        "{}{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b")]),
        vpc("b", "10.1.0.0/16", &[("pcx-ab", "a")]),
        vpc("gone", "10.9.0.0/16", &[])
    );
    let Some(env) = started(&base) else { return };
    let out = env.peerd(&["plan", "--socket", env.socket.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no changes");
    // Add c peered with a, remove "gone", change b's MTU.
    let next = format!(
        "{}{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b"), ("pcx-ac", "c")]),
        vpc("b", "10.1.0.0/16", &[("pcx-ab", "a")]).replace("cidrs", "mtu = 9000\ncidrs"),
        vpc("c", "10.2.0.0/16", &[("pcx-ac", "a")])
    );
    // A staged file (not *.toml, so the daemon's watcher ignores it) is planned against what
    // is in force; nothing is applied.
    let staged = env.config.with_extension("toml.new");
    std::fs::write(
        &staged,
        std::fs::read_to_string(&env.config)
            .unwrap()
            .replace(&base, &next),
    )
    .unwrap();
    let out = std::process::Command::new(common::env::PEERD)
        .args(["plan", "--config"])
        .arg(&staged)
        .args(["--socket", env.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("+ VPC c: create namespace {}", env.netns("c"))),
        "{text}"
    );
    assert!(
        text.contains("+ route 10.2.0.0/16 via gateway in"),
        "{text}"
    );
    assert!(text.contains("- VPC gone: delete namespace"), "{text}");
    assert!(text.contains("~ VPC b: mtu 1500 -> 9000"), "{text}");
    assert!(
        text.contains("+ peering pcx-ac (a <-> c): active"),
        "{text}"
    );
    assert!(text.contains("datapath:"), "{text}");
    assert!(
        !common::env::netns_ok(&env.netns("c")),
        "plan applied something"
    );
    assert!(
        common::env::netns_ok(&env.netns("gone")),
        "plan applied something"
    );
    // A bad staged file: plan reports it with its location.
    std::fs::write(&staged, "[[vpc]]\nname = 1\n").unwrap();
    let out = std::process::Command::new(common::env::PEERD)
        .args(["plan", "--config"])
        .arg(&staged)
        .args(["--socket", env.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":2:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root"]
fn switching_the_datapath_between_tc_and_xdp_loses_nothing() {
    let base = format!(
        "{}{}",
        vpc("a", "10.0.0.0/16", &[("pcx-ab", "b")]),
        vpc("b", "10.1.0.0/16", &[("pcx-ab", "a")])
    );
    let Some(env) = started(&base) else { return };
    env.add_addr("a", "10.0.0.1");
    env.add_addr("b", "10.1.0.1");
    let stream = Stream::start(&env);
    let start_mode = env.status()["datapath"].as_str().unwrap().to_owned();
    for mode in ["xdp", "tc", "xdp", &start_mode] {
        env.write_config_with(&format!("datapath = \"{mode}\""), &base);
        env.wait_status(&format!("datapath {mode}"), BOUND, |st| {
            st["datapath"] == mode
        });
        let host_if = peerd::state::link_name(&env.netns("a"));
        let link = sh(&["ip", "-d", "link", "show", "dev", &host_if]);
        assert_eq!(link.contains("prog/xdp"), mode == "xdp", "{link}");
        assert!(
            env.tcp_echo("a", "10.0.0.1", "b", "10.1.0.1"),
            "TCP in {mode} mode"
        );
    }
    let (sent, lost) = stream.finish();
    assert!(sent > 100);
    assert!(
        lost.is_empty(),
        "lost {} of {sent} across mode switches: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}
