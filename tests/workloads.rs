//! End-to-end: workloads attached to VPCs (`peerd attach`/`detach`, the CNI plugin): a
//! container-style namespace and a tap with a userspace responder reach a workload of the
//! peered VPC and nothing else (docs/workloads.md).
mod common;

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{
    env::{netns_ok, ping, sh, tcp_echo, wait_for, Env},
    tap::Tap,
    unique,
};
use serde_json::{json, Value};

const CONFIG: &str = r#"
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
cidrs = ["10.73.0.0/16", "fd00:73::/48"]
"#;

const LIMIT: Duration = Duration::from_secs(20);

/// A container-style network namespace made by the test (not under peerd's prefix), removed
/// on drop.
struct Container(String);

impl Container {
    fn new() -> Container {
        let name = unique("ctr");
        sh(&["ip", "netns", "add", &name]);
        Container(name)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn setup() -> Option<Env> {
    if !common::can_run() {
        return None;
    }
    let mut env = Env::new();
    env.write_config(CONFIG);
    env.start();
    env.add_addr("b", "10.72.0.7");
    env.add_addr("b", "fd00:72::7");
    env.add_addr("c", "10.73.0.9");
    env.add_addr("c", "fd00:73::9");
    Some(env)
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn state(env: &Env) -> Value {
    let text = std::fs::read_to_string(env.dir.join("state").join("state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn attachments(env: &Env) -> usize {
    state(env)["attachments"]
        .as_object()
        .map(|o| o.len())
        .unwrap_or(0)
}

/// `ip -n NS ARGS...` output ("" when the namespace is gone).
fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root"]
fn a_container_reaches_its_peer_and_nothing_else_across_restarts_and_detach() {
    let Some(mut env) = setup() else { return };
    let ctr = Container::new();
    let out = env.peerd(&[
        "attach",
        "--vpc",
        "a",
        "--netns",
        &ctr.0,
        "--address",
        "10.71.0.5/24",
        "--address",
        "fd00:71::5/64",
    ]);
    let text = ok(&out, "attach");
    assert!(text.starts_with("attached pw"), "{text}");
    // The container's end: its addresses and default routes via the link-local gateway.
    let addrs = ip(&ctr.0, &["addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("10.71.0.5/24") && addrs.contains("fd00:71::5/64"),
        "{addrs}"
    );
    assert!(ip(&ctr.0, &["route"]).contains("default via 169.254.1.1"));
    assert!(ip(&ctr.0, &["-6", "route"]).contains("default via fe80::1"));
    // The VPC namespace forwards; the host's own setting is never touched.
    let fwd = ip(&env.netns("a"), &["route", "get", "10.71.0.5"]);
    assert!(fwd.contains("dev pw"), "{fwd}");

    let reach = |env: &Env| {
        ping(&ctr.0, "10.71.0.5", "10.72.0.7", 3)
            && ping(&ctr.0, "fd00:71::5", "fd00:72::7", 3)
            && env.ping("b", "10.72.0.7", "10.71.0.5", 2)
    };
    assert!(reach(&env), "container <-> b\n{}", env.log());
    assert!(
        tcp_echo(&ctr.0, "10.71.0.5", &env.netns("b"), "10.72.0.7"),
        "tcp container -> b"
    );
    assert!(
        tcp_echo(&env.netns("b"), "fd00:72::7", &ctr.0, "fd00:71::5"),
        "tcp b -> container v6"
    );
    // c is not peered with a: nothing either way.
    assert!(!ping(&ctr.0, "10.71.0.5", "10.73.0.9", 1));
    assert!(!ping(&ctr.0, "fd00:71::5", "fd00:73::9", 1));
    env.add_gw_route("c", "10.71.0.0/16");
    assert!(!env.ping("c", "10.73.0.9", "10.71.0.5", 1));

    // The same request again changes nothing; refused requests exit 1 with a clear error.
    let again = env.peerd(&[
        "attach",
        "--vpc",
        "a",
        "--netns",
        &ctr.0,
        "--address",
        "fd00:71::5/64",
        "--address",
        "10.71.0.5/24",
    ]);
    assert!(ok(&again, "attach again").contains("(no change)"));
    for (args, msg) in [
        (
            vec!["--netns", ctr.0.as_str(), "--address", "10.72.0.5/24"],
            "outside VPC a's CIDRs",
        ),
        (
            vec!["--netns", "pdt-no-such-ns", "--address", "10.71.0.6/24"],
            "does not exist",
        ),
        (
            vec!["--tap", "pdtnosuchtap", "--address", "10.71.0.6/24"],
            "does not exist",
        ),
    ] {
        let mut all = vec!["attach", "--vpc", "a"];
        all.extend(args);
        let out = env.peerd(&all);
        assert_eq!(out.status.code(), Some(1), "{all:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{all:?}: {err}");
    }
    let out = env.peerd(&[
        "attach",
        "--vpc",
        "zz",
        "--netns",
        &ctr.0,
        "--address",
        "10.71.0.5/24",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown VPC"));
    assert_eq!(attachments(&env), 1, "{}", state(&env));

    // Survives a daemon restart (killed: no chance to clean up), even with a route lost
    // while it was down; the restart of a converged host changes nothing else.
    env.kill9();
    sh(&["ip", "-n", &env.netns("a"), "route", "del", "10.71.0.5/32"]);
    env.start();
    let st = env.status();
    let actions = st["last_reconcile"]["actions"].to_string();
    assert!(actions.contains("+ route 10.71.0.5/32 dev pw"), "{st:#}");
    assert!(reach(&env), "after restart\n{}", env.log());

    // New addresses replace the old ones.
    let out = env.peerd(&[
        "attach",
        "--vpc",
        "a",
        "--netns",
        &ctr.0,
        "--address",
        "10.71.0.8/24",
    ]);
    ok(&out, "attach with other addresses");
    let addrs = ip(&ctr.0, &["addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("10.71.0.8/24") && !addrs.contains("10.71.0.5"),
        "{addrs}"
    );
    assert!(ping(&ctr.0, "10.71.0.8", "10.72.0.7", 2));
    assert!(!ip(&env.netns("a"), &["route"]).contains("10.71.0.5"));

    // Detach: the veth (both ends) and the routes go, and the state entry.
    let out = env.peerd(&["detach", "--vpc", "a", "--netns", &ctr.0]);
    assert!(ok(&out, "detach").starts_with("detached"));
    assert!(!ip(&ctr.0, &["link"]).contains("eth0"));
    let routes = ip(&env.netns("a"), &["route"]);
    assert!(
        !routes.contains("10.71.0.8") && !routes.contains("dev pw"),
        "{routes}"
    );
    assert_eq!(attachments(&env), 0);
    assert!(!ping(&ctr.0, "10.71.0.8", "10.72.0.7", 1));
    let twice = env.peerd(&["detach", "--vpc", "a", "--netns", &ctr.0]);
    assert!(ok(&twice, "detach twice").contains("(no change)"));
}

#[test]
#[ignore = "needs root"]
fn a_tap_is_moved_into_the_vpc_answers_its_peer_and_goes_back_on_detach() {
    let Some(mut env) = setup() else { return };
    let tap = Tap::new(&unique("tap"), "10.71.0.6".parse().unwrap());
    let out = env.peerd(&[
        "attach",
        "--vpc",
        "a",
        "--tap",
        &tap.name,
        "--address",
        "10.71.0.6/24",
    ]);
    ok(&out, "attach tap");
    assert!(ip(&env.netns("a"), &["link", "show", &tap.name]).contains("UP"));
    assert!(
        env.ping("b", "10.72.0.7", "10.71.0.6", 3),
        "b -> tap\n{}",
        env.log()
    );
    assert!(tap.echoes.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    env.add_gw_route("c", "10.71.0.0/16");
    assert!(!env.ping("c", "10.73.0.9", "10.71.0.6", 1));

    // Restart: still there, still answering.
    env.stop();
    env.start();
    assert!(env.ping("b", "10.72.0.7", "10.71.0.6", 2), "after restart");

    // Detach: back in the host namespace, down; no route left in the VPC namespace.
    let out = env.peerd(&["detach", "--vpc", "a", "--tap", &tap.name]);
    ok(&out, "detach tap");
    let host = sh(&["ip", "link", "show", &tap.name]);
    assert!(!host.contains(",UP"), "{host}");
    assert!(!ip(&env.netns("a"), &["route"]).contains("10.71.0.6"));
    assert_eq!(attachments(&env), 0);
    assert!(!env.ping("b", "10.72.0.7", "10.71.0.6", 1));
}

#[test]
#[ignore = "needs root"]
fn attachments_go_with_their_vpc() {
    let Some(env) = setup() else { return };
    let ctr = Container::new();
    let out = env.peerd(&[
        "attach",
        "--vpc",
        "a",
        "--netns",
        &ctr.0,
        "--address",
        "10.71.0.5/24",
    ]);
    ok(&out, "attach");
    assert_eq!(attachments(&env), 1);
    // VPC a leaves the configuration: its namespace goes, the veth with it, and the entry.
    let without_a = CONFIG
        .split("[[vpc]]")
        .filter(|v| !v.contains("name = \"a\"") && !v.trim().is_empty())
        .map(|v| {
            format!(
                "[[vpc]]{}",
                v.replace("  [[vpc.peering]]\n  id = \"pcx-ab\"\n  peer = \"a\"\n", "")
            )
        })
        .collect::<String>();
    env.write_config(&without_a);
    env.reload();
    wait_for(LIMIT, "VPC a's namespace to go", || {
        (!netns_ok(&env.netns("a"))).then_some(())
    });
    assert_eq!(attachments(&env), 0, "{}", state(&env));
    assert!(!ip(&ctr.0, &["link"]).contains("eth0"));
    assert!(netns_ok(&ctr.0), "the container's namespace is not peerd's");
}

const CNI: &str = env!("CARGO_BIN_EXE_peerd-cni");

/// Runs the CNI plugin as a runtime does: `command`, the container's namespace path and id,
/// the configuration on stdin. Its stdout (JSON, or Null when empty) and exit code.
fn cni(command: &str, id: &str, netns: &str, conf: &Value, cni_path: &str) -> (Value, i32) {
    let mut child = Command::new(CNI)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run peerd-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command}: {e}: {text}"))
    };
    (v, out.status.code().unwrap_or(-1))
}

#[test]
#[ignore = "needs root"]
fn the_cni_plugin_adds_checks_and_deletes_a_container() {
    let Some(mut env) = setup() else { return };
    let ctr = Container::new();
    let path = format!("/run/netns/{}", ctr.0);
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "pdt",
        "type": "peerd-cni",
        "vpc": "a",
        "socket": env.socket,
        "ipam": {"type": "static", "addresses": [
            {"address": "10.71.0.5/24"}, {"address": "fd00:71::5/64"}]},
    });
    let (v, rc) = cni("VERSION", "", "", &json!({"cniVersion": "1.0.0"}), "");
    assert_eq!(rc, 0);
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.0.0")));

    let (res, rc) = cni("ADD", "ctr1", &path, &conf, "");
    assert_eq!(rc, 0, "{res}\n{}", env.log());
    assert_eq!(res["cniVersion"], "1.0.0");
    assert_eq!(res["interfaces"][0]["name"], "eth0");
    assert_eq!(res["interfaces"][0]["sandbox"], path.as_str());
    let mac = res["interfaces"][0]["mac"].as_str().unwrap().to_owned();
    assert!(
        ip(&ctr.0, &["link", "show", "eth0"]).contains(&mac),
        "{res}"
    );
    assert_eq!(
        res["ips"],
        json!([
            {"address": "10.71.0.5/24", "gateway": "169.254.1.1", "interface": 0},
            {"address": "fd00:71::5/64", "gateway": "fe80::1", "interface": 0},
        ])
    );
    assert_eq!(
        res["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
    );
    assert!(ping(&ctr.0, "10.71.0.5", "10.72.0.7", 3), "{}", env.log());
    assert!(ping(&ctr.0, "fd00:71::5", "fd00:72::7", 2));
    assert!(tcp_echo(&ctr.0, "10.71.0.5", &env.netns("b"), "10.72.0.7"));
    assert!(!ping(&ctr.0, "10.71.0.5", "10.73.0.9", 1));
    // ADD again: the same; CHECK with the result: fine.
    assert_eq!(cni("ADD", "ctr1", &path, &conf, "").1, 0);
    let mut checked = conf.clone();
    checked["prevResult"] = res.clone();
    assert_eq!(cni("CHECK", "ctr1", &path, &checked, ""), (Value::Null, 0));

    // Refusals come back as spec errors on stdout.
    let mut bad = conf.clone();
    bad.as_object_mut().unwrap().remove("ipam");
    let (e, rc) = cni("ADD", "ctr1", &path, &bad, "");
    assert_ne!(rc, 0);
    assert_eq!(e["code"], 4, "{e}");
    assert_eq!(e["cniVersion"], "1.0.0");
    let mut outside = conf.clone();
    outside["ipam"]["addresses"] = json!([{"address": "10.72.0.50/24"}]);
    let (e, rc) = cni("ADD", "ctr1", &path, &outside, "");
    assert_ne!(rc, 0);
    assert_eq!(e["code"], 100, "{e}");
    assert!(e["details"].as_str().unwrap().contains("outside"), "{e}");

    // DEL removes it all; DEL twice is fine; CHECK then fails.
    assert_eq!(cni("DEL", "ctr1", &path, &conf, ""), (Value::Null, 0));
    assert!(!ip(&ctr.0, &["link"]).contains("eth0"));
    assert_eq!(attachments(&env), 0);
    assert!(!ip(&env.netns("a"), &["route"]).contains("10.71.0.5"));
    assert_eq!(cni("DEL", "ctr1", &path, &conf, ""), (Value::Null, 0));
    let (e, rc) = cni("CHECK", "ctr1", &path, &checked, "");
    assert_ne!(rc, 0);
    assert_eq!(e["code"], 102, "{e}");

    // Another IPAM type is run from CNI_PATH with the same stdin; its addresses are used.
    let bin = env.dir.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let seen = env.dir.join("ipam-stdin");
    let script = format!(
        "#!/bin/sh\ncat > {seen}.$CNI_COMMAND\n[ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.71.0.9/24\"}}]}}'\nexit 0\n",
        seen = seen.display()
    );
    let exe = bin.join("pdt-ipam");
    std::fs::write(&exe, script).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut delegated = conf.clone();
    delegated["ipam"] = json!({"type": "pdt-ipam"});
    let bin_path = format!("/nonexistent:{}", bin.display());
    let (res, rc) = cni("ADD", "ctr2", &path, &delegated, &bin_path);
    assert_eq!(rc, 0, "{res}");
    assert_eq!(res["ips"][0]["address"], "10.71.0.9/24");
    let given: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.ADD", seen.display())).unwrap())
            .unwrap();
    assert_eq!(
        given, delegated,
        "the IPAM plugin gets the same configuration"
    );
    assert!(ping(&ctr.0, "10.71.0.9", "10.72.0.7", 2));

    // The container's namespace is gone before DEL (CNI_NETNS empty): found by its id.
    drop(ctr);
    let (_, rc) = cni("DEL", "ctr2", "", &delegated, &bin_path);
    assert_eq!(rc, 0);
    assert!(std::path::Path::new(&format!("{}.DEL", seen.display())).exists());
    assert_eq!(attachments(&env), 0, "{}", state(&env));

    // No daemon: try again later.
    env.stop();
    let (e, _) = cni("ADD", "ctr3", &path, &conf, "");
    assert_eq!(e["code"], 11, "{e}");
}
