//! machvm's bare-metal test kernel (work in progress: see issue 5).
//! Inert on the host so that `cargo build --workspace` works.

fn main() {}
