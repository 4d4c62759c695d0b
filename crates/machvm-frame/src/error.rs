//! [`FrameError`]: why the allocator refused, with the value refused. The
//! map boundary turns it into Mach's code (`KernError`).

use core::fmt;

use machvm_base::KernError;

/// Why an allocation or a reservation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free block of `2^order` frames (a fault-injection failure says
    /// the same).
    OutOfFrames {
        /// The order asked for.
        order: u32,
    },
    /// A reservation of `wanted` frames with only `free` free: refused
    /// whole, nothing taken.
    ShortOf {
        /// Frames asked for.
        wanted: u64,
        /// Frames free at the time.
        free: u64,
    },
    /// An order above the largest block the allocator keeps.
    OrderTooLarge {
        /// The order asked for.
        order: u32,
    },
    /// The host could not provide memory for bookkeeping.
    HostMemory,
}

impl From<FrameError> for KernError {
    fn from(e: FrameError) -> KernError {
        match e {
            FrameError::OrderTooLarge { .. } => KernError::InvalidArgument,
            _ => KernError::ResourceShortage,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::OutOfFrames { order } => write!(f, "no free block of order {order}"),
            FrameError::ShortOf { wanted, free } => {
                write!(f, "{wanted} frames wanted, {free} free")
            }
            FrameError::OrderTooLarge { order } => write!(f, "order {order} too large"),
            FrameError::HostMemory => f.write_str("host memory exhausted"),
        }
    }
}

impl core::error::Error for FrameError {}
