//! Pass-through XDP program on a veth end, so frames the balancer sends with XDP_TX into the
//! peer are delivered (veth drops many of them when the receiving end has no XDP program).
use std::path::{Path, PathBuf};

use crate::cmd::check;
use crate::{Netns, PinRootUse};

/// `lb-ctl xdp-pass IFACE --pin PATH` run in a namespace; the program stays attached through
/// its pinned bpf_link until Drop removes the pin.
pub struct XdpPass {
    pin: PathBuf,
    _root: PinRootUse,
    iface: String,
    netns: String,
}

impl XdpPass {
    /// Attaches lb-ctl's `lb_pass` program (driver mode) to `iface` in `ns`.
    pub fn attach(ns: &Netns, iface: &str) -> XdpPass {
        let root = PinRootUse::new();
        let pin = crate::pin_root().join(format!("xdp-{}-{iface}", crate::next_id()));
        let guard = XdpPass {
            pin: pin.clone(),
            _root: root,
            iface: iface.to_string(),
            netns: ns.name().to_string(),
        };
        // nsenter, not `ip netns exec`: the pin must land in the host's bpffs.
        let mut cmd = ns.nsenter(crate::lb_ctl());
        cmd.args(["xdp-pass", iface, "--pin"]).arg(&pin);
        check(&mut cmd);
        assert!(
            pin.exists(),
            "lb-ctl xdp-pass {iface} in {} succeeded but left no pin at {}",
            ns.name(),
            pin.display()
        );
        guard
    }

    /// The pinned bpf_link.
    pub fn pin(&self) -> &Path {
        &self.pin
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }
}

impl Drop for XdpPass {
    fn drop(&mut self) {
        // Unpinning the last reference to the link detaches the program.
        if let Err(e) = std::fs::remove_file(&self.pin)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: removing pin {}: {e}", self.pin.display());
        }
        // `_root` then removes this run's pin dir if this was its last user.
    }
}
