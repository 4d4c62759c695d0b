//! The user programs embedded in the kernel image (`init`, `utest`), built
//! by `cargo xtask` from `crates/machvm-user-programs` and included by
//! `build.rs` (see `MACHVM_USER_BINS`). Without them `IMAGES` is empty and
//! [`image`] finds nothing.

/// 16-byte alignment for an embedded image: `include_bytes!` is 1-aligned,
/// and an ELF parser's header reads check their alignment.
#[repr(C, align(16))]
pub struct Aligned<T: ?Sized>(pub T);

include!(concat!(env!("OUT_DIR"), "/user_images.rs"));

/// The ELF image of the user program `name`, if it was embedded.
pub fn image(name: &str) -> Option<&'static [u8]> {
    IMAGES.iter().find(|(n, _)| *n == name).map(|(_, a)| &a.0)
}
