//! Build script of the eBPF crate: rebuild when bpf-linker changes (e.g. rebuilt against
//! another LLVM).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
