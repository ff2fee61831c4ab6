//! The memory allocator of Sekisho's daemons: mimalloc, set up to give freed pages back to the
//! system as soon as they are empty.
//!
//! mimalloc's purge delay (one second in v3) is not a timer: it is a minimum age that is checked
//! only when the thread that freed a page next frees another one. A proxy whose clients all go
//! quiet at once frees the buffers of their connections (hyper's HTTP/1 buffers when a
//! connection parks, rustls's handshake state), and then nothing triggers the check: the
//! empty pages stay resident for as long as the quiet lasts. Measured with 2,000 idle TLS
//! connections, that was 4.3 KiB per connection of resident memory holding nothing
//! (`benches/RESULTS.md`). With the delay at zero, the free that empties a page returns it
//! to the system. Under load that costs ≈ 20 `madvise` calls per second (measured at
//! ≈ 17,000 requests per second), since busy pages rarely empty.
//!
//! This crate is the workspace's one place with `unsafe`: the foreign call that sets the
//! option.

pub use mimalloc::MiMalloc as Allocator;

/// The environment variable through which mimalloc reads its purge delay at start-up. When it
/// is set, [`return_empty_pages_at_once`] leaves the operator's choice alone.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_t`, the same in mimalloc v2 and
/// v3 (`include/mimalloc.h`). The sys crate names only some of the options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give every page back to the system as soon as its last allocation is freed,
/// unless [`PURGE_DELAY_ENV`] is set. Call it first thing in `main`; it only has an effect on
/// a binary whose `#[global_allocator]` is [`Allocator`].
pub fn return_empty_pages_at_once() {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    // SAFETY: `mi_option_set` takes an option number and a value by value, touches no memory
    // of ours, and may be called at any time from any thread (mimalloc's options are atomics).
    // 15 is `mi_option_purge_delay` in the mimalloc that libmimalloc-sys builds; 0 means "purge
    // at once".
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}
