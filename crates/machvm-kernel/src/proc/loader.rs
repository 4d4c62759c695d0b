//! The ELF loader: a static `ET_EXEC` x86_64 image into a fresh map, each
//! `PT_LOAD` segment with its own protection as both current and maximum
//! (text `r-x`, rodata `r--`, data and bss `rw-`; no page is ever writable
//! and executable, and a task cannot `vm_protect` its text writable).
//!
//! Parsing is the `object` crate's (`read_core` + `elf`, no `std`); the
//! bytes go in through machvm's `write_bytes` (the map's objects, no user
//! access), and bss is zero-fill memory machvm provides on first touch.

use core::fmt;

use machvm::{PAGE_SIZE, VmProt};
use machvm_base::USER_MIN;
use object::LittleEndian as LE;
use object::elf::{EM_X86_64, ET_EXEC, FileHeader64, PF_R, PF_W, PF_X, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};

use super::*;

/// Why an image was not loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Not an ELF64 little-endian x86_64 executable the parser accepts.
    Format(&'static str),
    /// A segment the loader refuses (out of range, writable and
    /// executable, sharing a page with another).
    Segment(&'static str),
    /// machvm refused to map it.
    Vm(KernError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Format(why) => write!(f, "not a loadable ELF: {why}"),
            LoadError::Segment(why) => write!(f, "bad segment: {why}"),
            LoadError::Vm(e) => write!(f, "machvm: {e}"),
        }
    }
}

impl From<KernError> for LoadError {
    fn from(e: KernError) -> LoadError {
        LoadError::Vm(e)
    }
}

/// Highest address a segment may reach: below the stack, and within the
/// 2 GiB a statically linked program's code model can address.
const SEGMENT_LIMIT: u64 = 1 << 31;

/// One `PT_LOAD` segment.
#[derive(Clone, Copy)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
    prot: VmProt,
}

impl Segment {
    fn pages(&self) -> (u64, u64) {
        let start = self.vaddr & !(PAGE_SIZE - 1);
        (start, (self.vaddr + self.memsz).next_multiple_of(PAGE_SIZE))
    }
}

/// Loads `image` into `map`; returns the entry point.
pub fn load(map: &VmMap, image: &[u8]) -> Result<u64, LoadError> {
    let h = FileHeader64::<LE>::parse(image).map_err(|_| LoadError::Format("header"))?;
    if h.e_machine(LE) != EM_X86_64 || h.e_type(LE) != ET_EXEC {
        return Err(LoadError::Format("not an x86_64 ET_EXEC"));
    }
    let segs = segments(h, image)?;
    let entry = h.e_entry(LE);
    let runs = |s: &Segment| s.prot.contains(VmProt::EXECUTE);
    if !segs
        .iter()
        .any(|s| runs(s) && (s.vaddr..s.vaddr + s.memsz).contains(&entry))
    {
        return Err(LoadError::Format("entry point outside the text"));
    }
    for s in &segs {
        map_segment(map, image, s)?;
    }
    Ok(entry)
}

/// The `PT_LOAD` segments, checked and sorted.
fn segments(h: &FileHeader64<LE>, image: &[u8]) -> Result<Vec<Segment>, LoadError> {
    let phdrs = h
        .program_headers(LE, image)
        .map_err(|_| LoadError::Format("program headers"))?;
    let mut segs = Vec::new();
    for p in phdrs.iter().filter(|p| p.p_type(LE) == PT_LOAD) {
        let flags = p.p_flags(LE);
        let mut prot = VmProt::NONE;
        for (bit, pr) in [
            (PF_R, VmProt::READ),
            (PF_W, VmProt::WRITE),
            (PF_X, VmProt::EXECUTE),
        ] {
            if flags.0 & bit.0 != 0 {
                prot |= pr;
            }
        }
        let s = Segment {
            vaddr: p.p_vaddr(LE),
            memsz: p.p_memsz(LE),
            offset: p.p_offset(LE),
            filesz: p.p_filesz(LE),
            prot,
        };
        check_segment(&s, image.len() as u64)?;
        segs.push(s);
    }
    segs.sort_by_key(|s| s.vaddr);
    if segs.is_empty() {
        return Err(LoadError::Format("no PT_LOAD segment"));
    }
    if segs.windows(2).any(|w| w[0].pages().1 > w[1].pages().0) {
        return Err(LoadError::Segment("two segments share a page"));
    }
    Ok(segs)
}

fn check_segment(s: &Segment, file_len: u64) -> Result<(), LoadError> {
    if s.prot.contains(VmProt::WRITE | VmProt::EXECUTE) {
        return Err(LoadError::Segment("writable and executable"));
    }
    if s.filesz > s.memsz || s.memsz == 0 {
        return Err(LoadError::Segment("file size above memory size, or empty"));
    }
    let end = s.vaddr.checked_add(s.memsz);
    if s.vaddr < USER_MIN || end.is_none_or(|e| e > SEGMENT_LIMIT) {
        return Err(LoadError::Segment("outside the user text range"));
    }
    if s.offset.checked_add(s.filesz).is_none_or(|e| e > file_len) {
        return Err(LoadError::Segment("file bytes beyond the image"));
    }
    Ok(())
}

fn map_segment(map: &VmMap, image: &[u8], s: &Segment) -> Result<(), LoadError> {
    let (start, end) = s.pages();
    map.allocate(start, end - start, false)?;
    let bytes = &image[s.offset as usize..(s.offset + s.filesz) as usize];
    map.write_bytes(s.vaddr, bytes)?;
    map.protect(start, end - start, true, s.prot)?;
    map.protect(start, end - start, false, s.prot)?;
    Ok(())
}
