//! Reading a copy's whole pages in order, as an eager copy-out does page
//! after page: their frames are looked up a batch at a time (one walk of
//! the object's pages per batch, not a tree search per page).

use machvm_base::sync::Locks;
use machvm_base::{PageIndex, PhysAddr};
use machvm_map::CowSpan;
use machvm_object::Objects;

/// Pages looked up at once.
const BATCH: usize = 64;

/// The frames of a batch of one span's pages. Valid for the one store it
/// serves: the graph stays locked throughout, and while the copy holds its
/// windows their pages keep their frames (chains may shorten under the
/// store's faults, which moves pages between objects, not between frames).
pub(crate) struct Source {
    /// `(span, first page)` of the batch held, if any.
    at: Option<(usize, u64)>,
    frames: [Option<PhysAddr>; BATCH],
}

impl Source {
    pub(crate) fn new() -> Source {
        Source {
            at: None,
            frames: [None; BATCH],
        }
    }

    /// The frame of page `page` of `spans[span]` (`None`: nothing
    /// resident, zeros).
    pub(crate) fn frame<L: Locks>(
        &mut self,
        objs: &Objects<'_, L>,
        spans: &[CowSpan],
        span: usize,
        page: u64,
    ) -> Option<PhysAddr> {
        let hit = self
            .at
            .filter(|&(s, first)| s == span && (first..first + BATCH as u64).contains(&page));
        let first = match hit {
            Some((_, first)) => first,
            None => {
                match spans.get(span).and_then(CowSpan::hold) {
                    Some(h) => objs.frames_of(h, PageIndex::new(page), &mut self.frames),
                    None => self.frames.fill(None),
                }
                self.at = Some((span, page));
                page
            }
        };
        self.frames[(page - first) as usize]
    }
}
