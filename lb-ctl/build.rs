//! Builds the XDP programs (`lb-ebpf`) for the BPF target with aya-build; `src/dataplane.rs`
//! embeds the resulting object.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "lb-ebpf",
        root_dir: "../lb-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
        .context("building lb-ebpf (run `cargo xtask setup` if bpf-linker or rust-src is missing)")
}
