//! Reading a copy's whole pages in order, as an eager copy-out does page
//! after page: their pages are looked up a batch at a time (one walk of
//! the object's pages per batch, not a tree search per page).

use machvm_base::PageIndex;
use machvm_base::sync::Locks;
use machvm_map::CowSpan;
use machvm_object::{Objects, PageAt};

/// Pages looked up at once.
const BATCH: usize = 64;

/// The pages of a batch of one span's pages. Valid for the one store it
/// serves while no page is paged out: the graph stays locked throughout,
/// and while the copy holds its windows their pages keep their frames
/// (chains may shorten under the store's faults, which moves pages between
/// objects, not between frames). A batch taken before a pageout is looked
/// up again.
pub(crate) struct Source {
    /// `(span, first page, pageouts then)` of the batch held, if any.
    at: Option<(usize, u64, u64)>,
    frames: [Option<PageAt>; BATCH],
}

impl Source {
    pub(crate) fn new() -> Source {
        Source {
            at: None,
            frames: [None; BATCH],
        }
    }

    /// The page at page `page` of `spans[span]` (`None`: nothing
    /// present, zeros).
    pub(crate) fn page<L: Locks>(
        &mut self,
        objs: &Objects<'_, L>,
        spans: &[CowSpan],
        span: usize,
        page: u64,
    ) -> Option<PageAt> {
        let epoch = objs.evictions();
        let hit = self.at.filter(|&(s, first, e)| {
            s == span && e == epoch && (first..first + BATCH as u64).contains(&page)
        });
        let first = match hit {
            Some((_, first, _)) => first,
            None => {
                match spans.get(span).and_then(CowSpan::hold) {
                    Some(h) => objs.pages_of(h, PageIndex::new(page), &mut self.frames),
                    None => self.frames.fill(None),
                }
                self.at = Some((span, page, epoch));
                page
            }
        };
        self.frames[(page - first) as usize]
    }
}
