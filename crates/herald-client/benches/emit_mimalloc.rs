//! Emits per second into the tracker's queue with mimalloc as the global allocator (as a
//! service that cares about allocation speed would link it); see `common/mod.rs`.
//! Run: `cargo bench -p herald-client --bench emit_mimalloc`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

fn main() {
    common::main("mimalloc");
}
