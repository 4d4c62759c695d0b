//! The local APIC timer: the scheduler's quantum.
//!
//! One-shot, calibrated once against the PIT (both run on QEMU's virtual
//! clock). A CPU arms it whenever it returns to a task and disarms it when
//! it goes idle, so a CPU that runs no task takes no timer interrupt and the
//! kernel's own code (interrupts off) never sees one.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::smp::{self, MAX_CPUS, lapic_read, lapic_write};
use crate::trap::TIMER_VECTOR;

const LVT_TIMER: u64 = 0x320;
const INITIAL_COUNT: u64 = 0x380;
const CURRENT_COUNT: u64 = 0x390;
const DIVIDE: u64 = 0x3E0;
/// Divide configuration 0b0011: the bus clock divided by 16.
const DIVIDE_BY_16: u32 = 0x3;
const LVT_MASKED: u32 = 1 << 16;

/// The scheduler's quantum.
pub const QUANTUM_MS: u64 = 10;

static TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);
static TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Sets this CPU's timer to one-shot on [`TIMER_VECTOR`], stopped.
pub(crate) fn init_local() {
    lapic_write(DIVIDE, DIVIDE_BY_16);
    lapic_write(INITIAL_COUNT, 0);
    lapic_write(LVT_TIMER, u32::from(TIMER_VECTOR));
}

/// Measures the timer's rate over 10 ms of the PIT (boot CPU, once).
pub(crate) fn calibrate() {
    lapic_write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    lapic_write(INITIAL_COUNT, u32::MAX);
    crate::cpu::pit_delay_us(10_000);
    let left = lapic_read(CURRENT_COUNT);
    lapic_write(INITIAL_COUNT, 0);
    lapic_write(LVT_TIMER, u32::from(TIMER_VECTOR));
    let per_ms = u64::from(u32::MAX - left) / 10;
    TICKS_PER_MS.store(per_ms.max(1), Relaxed);
}

/// Starts one quantum on this CPU.
pub(crate) fn arm() {
    let count = (TICKS_PER_MS.load(Relaxed) * QUANTUM_MS).min(u64::from(u32::MAX));
    lapic_write(INITIAL_COUNT, count as u32);
}

/// Stops this CPU's timer.
pub(crate) fn disarm() {
    lapic_write(INITIAL_COUNT, 0);
}

/// The timer interrupt: counts it and acknowledges it.
pub(crate) fn tick() {
    TICKS[smp::current_cpu()].fetch_add(1, Relaxed);
    smp::lapic_eoi();
}

/// Timer interrupts taken on every CPU since boot.
pub fn ticks() -> u64 {
    TICKS.iter().map(|t| t.load(Relaxed)).sum()
}
