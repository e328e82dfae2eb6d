//! Network namespaces for partition tests: each node gets its own namespace
//! with two links, both veth pairs into bridges of the test's namespace:
//!
//! - a client link (`10.231.S.N/24`): the test talks to the node there (the
//!   bridge has `10.231.S.254`); it is never cut, so the test can see what a
//!   cut-off node answers its clients;
//! - a peer link (`10.232.S.N/24`): Raft traffic and forwarded commands
//!   (`--raft-addr` is on it). A partition takes the test-side end of a
//!   node's peer link down: its packets are dropped, silently, as on a
//!   real network (the kernel here has no `netem`; no firewall needed).
//!
//! The nodes' namespaces have no route between the two subnets, so cutting
//! the peer link cuts the node off from every peer. Everything is named
//! `sdf<pid><letter>…` and deleted on drop; names of processes that no
//! longer run are deleted on creation (a test that was killed).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "sdf";

/// The namespaces, links and bridges of one test.
pub struct NetLab {
    name: String,
    subnet: u32,
    nodes: usize,
}

/// Runs `ip args…`; its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The pid in a name made by this module (`sdf<pid><letter>…`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Deletes namespaces and links left by test processes that are gone.
pub fn clean_leftovers() {
    let mine = std::process::id();
    let alive = |pid: u32| pid == mine || std::path::Path::new(&format!("/proc/{pid}")).exists();
    for line in ip_output(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = owner_pid(name)
            && !alive(pid)
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in ip_output(&["-o", "link", "show"]).lines() {
        // "7: sdf123ac1@if6: <…"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or("");
        if let Some(pid) = owner_pid(name)
            && !alive(pid)
        {
            let _ = ip(&["link", "del", name]);
        }
    }
}

impl NetLab {
    /// Whether namespaces can be made here (root, `ip` present), with the
    /// reason when not.
    pub fn check_available() -> Result<(), String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!(
                "network namespaces need root (CAP_NET_ADMIN); this runs as uid {uid:?}"
            ));
        }
        static PROBES: AtomicU32 = AtomicU32::new(0);
        let probe = format!(
            "{PREFIX}{}probe{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a namespace: {e}"))?;
        let _ = ip(&["netns", "del", &probe]);
        Ok(())
    }

    /// Namespaces for `nodes` nodes, linked to two bridges. Panics (loudly,
    /// naming the reason) when namespaces cannot be made: a partition test
    /// that cannot partition must fail, not pass.
    pub fn create(nodes: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if let Err(e) = Self::check_available() {
            panic!(
                "PARTITION TESTS CANNOT RUN: {e}. They need root and iproute2 \
                 (CI runs as root); they fail rather than pass untested."
            );
        }
        clean_leftovers();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let letter = char::from(b'a' + u8::try_from(k % 26).unwrap_or(0));
        let name = format!("{PREFIX}{}{letter}", std::process::id());
        let subnet = (std::process::id().wrapping_mul(7).wrapping_add(k * 13)) % 250 + 1;
        let lab = Self {
            name,
            subnet,
            nodes,
        };
        if let Err(e) = lab.build() {
            panic!("setting up the namespaces failed: {e}");
        }
        lab
    }

    fn build(&self) -> Result<(), String> {
        let (cb, pb) = (self.bridge('c'), self.bridge('p'));
        for br in [&cb, &pb] {
            ip(&["link", "add", br, "type", "bridge"])?;
            ip(&["link", "set", br, "up"])?;
        }
        ip(&[
            "addr",
            "add",
            &format!("10.231.{}.254/24", self.subnet),
            "dev",
            &cb,
        ])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for (kind, dev, br, ip_addr) in [
                ('c', "eth0", &cb, self.client_ip(i)),
                ('p', "eth1", &pb, self.peer_ip(i)),
            ] {
                let outer = self.veth(kind, i);
                ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", dev, "netns", &ns,
                ])?;
                ip(&["link", "set", &outer, "master", br, "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{ip_addr}/24"),
                    "dev",
                    dev,
                ])?;
                ip(&["-n", &ns, "link", "set", dev, "up"])?;
            }
        }
        Ok(())
    }

    fn bridge(&self, kind: char) -> String {
        format!("{}{kind}b", self.name)
    }

    fn veth(&self, kind: char, i: usize) -> String {
        format!("{}{kind}{i}", self.name)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.name)
    }

    /// Node `i`'s address on the client link.
    pub fn client_ip(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.subnet, i + 1)
    }

    /// Node `i`'s address on the peer link.
    pub fn peer_ip(&self, i: usize) -> String {
        format!("10.232.{}.{}", self.subnet, i + 1)
    }

    /// The command that runs a program in node `i`'s namespace.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    /// Cuts node `i` off from its peers (its clients still reach it).
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.veth('p', i), "down"]).expect("cut a peer link");
    }

    /// Joins node `i` to its peers again.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.veth('p', i), "up"]).expect("heal a peer link");
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // The links first (deleting one end of a veth pair deletes both; a
        // namespace may outlive its name for a while in the kernel), then
        // the namespaces and the bridges.
        for i in 0..self.nodes {
            for kind in ['c', 'p'] {
                let _ = ip(&["link", "del", &self.veth(kind, i)]);
            }
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        for kind in ['c', 'p'] {
            let _ = ip(&["link", "del", &self.bridge(kind)]);
        }
    }
}
