//! Network namespaces a test creates for itself: a bridge with an address inside a fresh
//! namespace, and the calling thread moved into it, so every process and thread the test
//! starts afterwards (otherixd, agents, QEMU, the image server) lives there too. The host's
//! network is never touched; dropping the guard deletes the namespace.

use std::process::Command;

pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates `otx-<random>` with loopback up and bridge `bridge` holding `cidr`.
    pub fn with_bridge(bridge: &str, cidr: &str) -> NetNs {
        let name = format!("otx-{}", &uuid_like()[..8]);
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.name, "link", "add", bridge, "type", "bridge"]);
        ip(&["-n", &ns.name, "addr", "add", cidr, "dev", bridge]);
        ip(&["-n", &ns.name, "link", "set", bridge, "up"]);
        ns
    }

    /// Moves the calling thread into the namespace (threads and processes it starts
    /// afterwards inherit it).
    pub fn enter_current_thread(&self) {
        let file =
            std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:016x}", nanos ^ (u128::from(std::process::id()) << 40))
        .chars()
        .rev()
        .collect()
}
