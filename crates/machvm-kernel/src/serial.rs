//! The COM1 console (polled 16550 at 0x3F8) behind `print!` / `println!`.

use core::fmt::{self, Write};

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3F8;

/// COM1's register at `offset` (0 data, 1 interrupt enable, 2 FIFO
/// control, 3 line control, 4 modem control, 5 line status).
const fn reg(offset: u16) -> Port<u8> {
    Port::new(COM1 + offset)
}

static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Programs COM1 for 115200 8N1 with FIFOs and no interrupts.
pub(crate) fn init() {
    // SAFETY: the kernel owns COM1; this is the standard 16550 setup.
    unsafe {
        reg(1).write(0x00); // no interrupts
        reg(3).write(0x80); // DLAB on: divisor follows
        reg(0).write(0x01); // divisor 1: 115200 baud
        reg(1).write(0x00);
        reg(3).write(0x03); // DLAB off, 8N1
        reg(2).write(0xC7); // FIFOs on, cleared, 14-byte threshold
        reg(4).write(0x03); // DTR, RTS
    }
}

fn put(b: u8) {
    // SAFETY: COM1 is the kernel's console; polling LSR then writing THR.
    unsafe {
        while reg(5).read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        reg(0).write(b);
    }
}

struct Console;

impl Write for Console {
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
    let _ = Console.write_fmt(args);
}

/// Backend of the fatal paths (panic, unexpected trap): takes the console
/// lock if it can within a bounded spin, else writes anyway, because the
/// holder may be the very CPU that died.
pub(crate) fn print_fatal(args: fmt::Arguments) {
    for _ in 0..10_000_000u32 {
        if let Some(_guard) = LOCK.try_lock() {
            let _ = Console.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
    let _ = Console.write_fmt(args);
}
