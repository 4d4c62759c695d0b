//! The runtime of a ring-3 program: the console writer behind
//! [`print!`](crate::print) and [`println!`](crate::println), and the
//! panic path of [`entry!`](crate::entry). No heap: text is formatted into
//! a buffer on the stack and written with `CONSOLE_WRITE`.

use core::fmt::{self, Write};

use crate::sys;

/// Bytes formatted before a `CONSOLE_WRITE` (a line of `print!` up to this
/// length reaches the console in one call, not interleaved with others).
pub const LINE: usize = 256;

/// A `fmt::Write` that buffers up to [`LINE`] bytes on the stack and
/// writes them to the console when full and when dropped.
pub struct Console {
    buf: [u8; LINE],
    len: usize,
}

impl Console {
    /// An empty buffer.
    pub const fn new() -> Console {
        Console {
            buf: [0; LINE],
            len: 0,
        }
    }

    /// Writes the buffered bytes to the console.
    pub fn flush(&mut self) {
        if self.len > 0 {
            // A console that refuses has nowhere to report to: drop the bytes.
            let _ = sys::console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Console {
    fn default() -> Console {
        Console::new()
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == LINE {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The global allocator of a program: there is no heap, every allocation
/// fails. (`machvm-base` links `alloc`, so a program needs one; nothing in
/// these crates allocates.)
pub struct NoHeap;

// SAFETY: `alloc` always returns null (allocation failure), which the
// `GlobalAlloc` contract allows; `dealloc` is then never called with a
// pointer of ours.
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _layout: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
}

/// `print!`'s body: formats `args` and writes them to the console.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut c = Console::new();
    let _ = c.write_fmt(args);
}

/// The panic handler of [`entry!`](crate::entry): prints the message and
/// exits with 101.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut c = Console::new();
    let _ = writeln!(c, "user panic (pid {}): {info}", sys::getpid());
    c.flush();
    sys::exit(101)
}

/// Prints to the kernel console (`CONSOLE_WRITE`).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::rt::_print(format_args!($($arg)*)) };
}

/// Prints a line to the kernel console (`CONSOLE_WRITE`).
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::rt::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Defines the program's entry: `entry!(main)` with `fn main(arg: u64) ->
/// u64`. Expanded in the binary (a library must not bring a second
/// `#[panic_handler]` into the kernel), it provides:
/// - `_start` (the ELF entry): aligns the stack to 16 bytes and calls
///   `machvm_user_start` with the kernel's `rdi` (the argument);
/// - `machvm_user_start(arg)`: `exit(main(arg))`;
/// - the `#[panic_handler]`: the message to the console, then `exit(101)`;
/// - the `#[global_allocator]`: [`NoHeap`](crate::rt::NoHeap).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        ::core::arch::global_asm!(
            ".globl _start",
            "_start:",
            "and $-16, %rsp",
            "call machvm_user_start",
            "ud2",
            options(att_syntax)
        );

        /// Called by `_start` with the task's argument.
        #[unsafe(no_mangle)]
        extern "C" fn machvm_user_start(arg: u64) -> ! {
            let main: fn(u64) -> u64 = $main;
            $crate::sys::exit(main(arg))
        }

        /// No heap: every allocation fails.
        #[global_allocator]
        static MACHVM_USER_NO_HEAP: $crate::rt::NoHeap = $crate::rt::NoHeap;

        /// Prints the panic and exits with 101.
        #[panic_handler]
        fn machvm_user_panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::panic(info)
        }
    };
}
