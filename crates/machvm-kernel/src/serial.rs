//! The COM1 console (polled 16550 at 0x3F8) behind `print!` / `println!`.

use core::fmt::{self, Write};

use crate::cpu::{inb, outb};

const COM1: u16 = 0x3F8;

static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Programs COM1 for 115200 8N1 with FIFOs and no interrupts.
pub(crate) fn init() {
    // SAFETY: the kernel owns COM1; this is the standard 16550 setup.
    unsafe {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xC7);
        outb(COM1 + 4, 0x03);
    }
}

fn put(b: u8) {
    // SAFETY: COM1 is the kernel's console; polling LSR then writing THR.
    unsafe {
        while inb(COM1 + 5) & 0x20 == 0 {
            core::hint::spin_loop();
        }
        outb(COM1, b);
    }
}

struct Port;

impl Write for Port {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            put(b);
        }
        Ok(())
    }
}

/// Backend of `print!`: formats under the console lock so lines from two
/// CPUs do not interleave.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let _ = Port.write_fmt(args);
}

/// Backend of the fatal paths (panic, unexpected trap): takes the console
/// lock if it can within a bounded spin, else writes anyway, because the
/// holder may be the very CPU that died.
pub(crate) fn print_fatal(args: fmt::Arguments) {
    for _ in 0..10_000_000u32 {
        if let Some(_guard) = LOCK.try_lock() {
            let _ = Port.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
    let _ = Port.write_fmt(args);
}
