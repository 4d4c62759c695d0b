//! `fork`: a new map built from an old one, entry by entry, by inheritance.
//!
//! - `Share`: both maps reference one object and see each other's writes. A
//!   needs-copy entry gets its shadow first, so that the sharers share the
//!   object they write, not the one below it.
//! - `Copy`: both entries reference the object copy-on-write (needs-copy on
//!   both sides) and the parent's translations are write-protected. An object
//!   already written directly by several maps cannot be shadowed (its sharers
//!   keep writing it), so the child gets an eager private copy of its
//!   resident pages instead.
//! - `None`: the child has a hole there.

use alloc::vec::Vec;

use machvm_base::{KernError, VmInherit};
use machvm_pmap::TlbFlush;

use crate::fault::{cow_reference, ensure_object, resolve_needs_copy};
use crate::{Entry, VmMap};

impl VmMap {
    /// Creates a child map from this one, entry by entry, by inheritance.
    /// On `ResourceShortage` the child is discarded and this map reads and
    /// writes exactly as before.
    pub fn fork(&self) -> Result<VmMap, KernError> {
        let ctx = self.context().clone();
        let child = VmMap::new(&ctx)?;
        let pm = ctx.pmap();
        let mut flush = TlbFlush::none();
        let mut m = self.0.inner.lock();
        let mut out: Vec<(u64, Entry)> = Vec::new();
        let mut result = Ok(());
        for (&start, e) in m.entries.iter_mut() {
            match e.inheritance {
                VmInherit::None => {}
                VmInherit::Share => {
                    ensure_object(&ctx, e, start);
                    if e.needs_copy {
                        resolve_needs_copy(e, start);
                    }
                    if let Some(o) = &e.object {
                        o.set_shared();
                        o.clear_one_mapping();
                    }
                    out.push((start, e.clone()));
                }
                VmInherit::Copy => {
                    let mut ce = e.clone();
                    let (offset, pages) = (e.offset, e.pages(start));
                    match cow_reference(self, e, start, offset, pages, &mut flush) {
                        Ok(None) => {}
                        Ok(Some((object, offset, private))) => {
                            ce.object = Some(object);
                            ce.offset = offset;
                            ce.needs_copy = !private;
                        }
                        Err(err) => {
                            result = Err(err);
                            break;
                        }
                    }
                    out.push((start, ce));
                }
            }
        }
        drop(m);
        pm.flush(flush);
        result?;
        {
            // `out` is sorted: build the child's tree in one go.
            let mut cm = child.0.inner.lock();
            cm.replace_entries(out.into_iter().collect());
        }
        Ok(child)
    }
}
