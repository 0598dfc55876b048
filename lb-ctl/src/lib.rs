//! lb-ctl: the control plane of the XDP load balancer (daemon, ipvsadm-style CLI, config).

pub mod api;
pub mod bgp;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod neigh;
pub mod notify;
pub mod realserver;
pub mod resolve;
pub mod sched;
pub mod sync;
pub mod vrrp;
