//! Emits per second into the tracker's queue with the system allocator; see
//! `common/mod.rs`. Run: `cargo bench -p herald-client --bench emit`.

mod common;

fn main() {
    common::main("system allocator");
}
