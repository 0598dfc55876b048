//! The `bpf(2)` system call, for the commands aya does not wrap (test runs, batched map
//! operations, raw links).

use std::io;

/// `bpf(cmd, attr, size_of::<T>())`; the return value, or the error in `errno`.
///
/// # Safety
/// `T` must be a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, zero where unused, and
/// every pointer in it valid for what `cmd` does with it for the duration of the call.
pub unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; the size is its type's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
