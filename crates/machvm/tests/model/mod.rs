//! A reference model of docs/SPEC.md in plain Rust, with no machvm code inside:
//! per map, a sparse set of pages, each with its bytes, protection, maximum
//! and inheritance. Pages shared by `Share` inheritance are one `Rc` held by
//! several maps; everything else is copied eagerly. Every call checks its
//! arguments in SPEC's order and changes nothing on error.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use machvm::{KernError, PAGE_SIZE, VmInherit, VmProt};

const P: u64 = PAGE_SIZE;
pub const USER_MIN: u64 = 0x1000;
pub const USER_MAX: u64 = 0x0000_8000_0000_0000;

pub type PageData = Rc<RefCell<Vec<u8>>>;

#[derive(Clone)]
pub struct Page {
    pub data: PageData,
    pub prot: VmProt,
    pub max: VmProt,
    pub inherit: VmInherit,
    /// How many wirings of this map cover the page (SPEC §7).
    pub wired: u16,
}

impl Page {
    fn zero() -> Page {
        Page {
            data: Rc::new(RefCell::new(vec![0; P as usize])),
            prot: VmProt::DEFAULT,
            max: VmProt::ALL,
            inherit: VmInherit::Copy,
            wired: 0,
        }
    }
}

/// One modelled map: page address -> page.
#[derive(Default, Clone)]
pub struct Map {
    pub pages: BTreeMap<u64, Page>,
}

/// A modelled copy object: just the bytes and where they came from.
pub struct Copy {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// `[trunc(addr), round(addr + size))` or `None` on overflow.
fn round_out(addr: u64, size: u64) -> Option<(u64, u64)> {
    let end = addr.checked_add(size)?;
    let end = end.checked_add(P - 1)? & !(P - 1);
    Some((addr & !(P - 1), end))
}

fn user(s: u64, e: u64) -> bool {
    s >= USER_MIN && e <= USER_MAX
}

fn pages(s: u64, e: u64) -> impl Iterator<Item = u64> {
    (s..e).step_by(P as usize)
}

impl Map {
    fn covered(&self, s: u64, e: u64) -> bool {
        pages(s, e).all(|p| self.pages.contains_key(&p))
    }

    fn all_allow(&self, s: u64, e: u64, need: VmProt) -> bool {
        pages(s, e).all(|p| self.pages[&p].prot.contains(need))
    }

    pub fn allocate(&mut self, addr: u64, size: u64, anywhere: bool) -> Result<u64, KernError> {
        if size == 0 {
            return Err(KernError::InvalidArgument);
        }
        let (s, e) = round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        let len = e - s;
        let start = if anywhere {
            self.find_space(s, len).ok_or(KernError::NoSpace)?
        } else {
            if !user(s, e) {
                return Err(KernError::InvalidAddress);
            }
            if pages(s, e).any(|p| self.pages.contains_key(&p)) {
                return Err(KernError::NoSpace);
            }
            s
        };
        for p in pages(start, start + len) {
            self.pages.insert(p, Page::zero());
        }
        Ok(start)
    }

    fn find_space(&self, from: u64, len: u64) -> Option<u64> {
        let mut cand = from.max(USER_MIN);
        loop {
            let end = cand.checked_add(len)?;
            if end > USER_MAX {
                return None;
            }
            match self.pages.range(cand..end).next() {
                None => return Some(cand),
                Some((&p, _)) => cand = p + P,
            }
        }
    }

    pub fn deallocate(&mut self, addr: u64, size: u64) -> Result<(), KernError> {
        if size == 0 {
            return Ok(());
        }
        let (s, e) = round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        if !user(s, e) {
            return Err(KernError::InvalidAddress);
        }
        let keys: Vec<u64> = self.pages.range(s..e).map(|(k, _)| *k).collect();
        for k in keys {
            self.pages.remove(&k);
        }
        Ok(())
    }

    /// `page_out`'s checks (it changes nothing a task can see): those of
    /// `deallocate`, then the range allocated without a hole.
    pub fn page_out(&self, addr: u64, size: u64) -> Result<(), KernError> {
        if size == 0 {
            return Ok(());
        }
        let (s, e) = round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        if !user(s, e) || !self.covered(s, e) {
            return Err(KernError::InvalidAddress);
        }
        Ok(())
    }

    pub fn protect(
        &mut self,
        addr: u64,
        size: u64,
        set_max: bool,
        prot: VmProt,
    ) -> Result<(), KernError> {
        if size == 0 {
            return Ok(());
        }
        let (s, e) = round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        if !VmProt::ALL.contains(prot) {
            return Err(KernError::InvalidArgument);
        }
        if !user(s, e) || !self.covered(s, e) {
            return Err(KernError::InvalidAddress);
        }
        if pages(s, e).any(|p| !self.pages[&p].max.contains(prot)) {
            return Err(KernError::ProtectionFailure);
        }
        for p in pages(s, e) {
            let pg = self.pages.get_mut(&p).unwrap();
            if set_max {
                pg.max = prot;
                pg.prot &= prot;
            } else {
                pg.prot = prot;
            }
        }
        Ok(())
    }

    pub fn inherit(&mut self, addr: u64, size: u64, inh: VmInherit) -> Result<(), KernError> {
        if size == 0 {
            return Ok(());
        }
        let (s, e) = round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        if !user(s, e) || !self.covered(s, e) {
            return Err(KernError::InvalidAddress);
        }
        for p in pages(s, e) {
            self.pages.get_mut(&p).unwrap().inherit = inh;
        }
        Ok(())
    }

    /// SPEC §7's `wire`: `access` not empty adds a wiring to every page,
    /// `NONE` takes one off; the checks in §7's order.
    pub fn wire(&mut self, addr: u64, size: u64, access: VmProt) -> Result<(), KernError> {
        if size == 0 {
            return Ok(());
        }
        let (s, e) = round_out(addr, size).ok_or(KernError::InvalidArgument)?;
        if !VmProt::ALL.contains(access) {
            return Err(KernError::InvalidArgument);
        }
        if !user(s, e) || !self.covered(s, e) {
            return Err(KernError::InvalidAddress);
        }
        if access.is_empty() {
            if pages(s, e).any(|p| self.pages[&p].wired == 0) {
                return Err(KernError::InvalidArgument);
            }
        } else if pages(s, e).any(|p| !self.pages[&p].prot.contains(access)) {
            return Err(KernError::ProtectionFailure);
        }
        for p in pages(s, e) {
            let pg = self.pages.get_mut(&p).unwrap();
            pg.wired = if access.is_empty() {
                pg.wired - 1
            } else {
                pg.wired + 1
            };
        }
        Ok(())
    }

    /// Checks a data range for `need`: `Ok(None)` for length 0.
    fn check_data(
        &self,
        addr: u64,
        len: u64,
        need: VmProt,
    ) -> Result<Option<(u64, u64)>, KernError> {
        if len == 0 {
            return Ok(None);
        }
        let (s, e) = round_out(addr, len).ok_or(KernError::InvalidAddress)?;
        if !user(s, e) || !self.covered(s, e) {
            return Err(KernError::InvalidAddress);
        }
        if !self.all_allow(s, e, need) {
            return Err(KernError::ProtectionFailure);
        }
        Ok(Some((s, e)))
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for i in 0..len as u64 {
            let a = addr + i;
            out.push(self.pages[&(a & !(P - 1))].data.borrow()[(a % P) as usize]);
        }
        out
    }

    fn put(&self, addr: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = addr + i as u64;
            self.pages[&(a & !(P - 1))].data.borrow_mut()[(a % P) as usize] = *b;
        }
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, KernError> {
        match self.check_data(addr, len as u64, VmProt::READ)? {
            None => Ok(Vec::new()),
            Some(_) => Ok(self.get(addr, len)),
        }
    }

    pub fn write_bytes(&self, addr: u64, data: &[u8]) -> Result<(), KernError> {
        if self
            .check_data(addr, data.len() as u64, VmProt::WRITE)?
            .is_some()
        {
            self.put(addr, data);
        }
        Ok(())
    }

    pub fn fork(&self) -> Map {
        let mut child = Map::default();
        for (&p, pg) in &self.pages {
            match pg.inherit {
                VmInherit::None => {}
                VmInherit::Share => {
                    let mut c = pg.clone();
                    c.wired = 0;
                    child.pages.insert(p, c);
                }
                VmInherit::Copy => {
                    let mut c = pg.clone();
                    c.data = Rc::new(RefCell::new(pg.data.borrow().clone()));
                    c.wired = 0;
                    child.pages.insert(p, c);
                }
            }
        }
        child
    }

    pub fn vm_read(&self, addr: u64, size: u64) -> Result<Copy, KernError> {
        match self.check_data(addr, size, VmProt::READ)? {
            None => Ok(Copy {
                offset: 0,
                bytes: Vec::new(),
            }),
            Some(_) => Ok(Copy {
                offset: addr % P,
                bytes: self.get(addr, size as usize),
            }),
        }
    }

    pub fn vm_write(&self, addr: u64, copy: &Copy) -> Result<(), KernError> {
        if self
            .check_data(addr, copy.bytes.len() as u64, VmProt::WRITE)?
            .is_some()
        {
            self.put(addr, &copy.bytes);
        }
        Ok(())
    }

    pub fn copyout(&mut self, copy: &Copy) -> Result<u64, KernError> {
        if copy.bytes.is_empty() {
            return Ok(0);
        }
        let size = (copy.offset + copy.bytes.len() as u64).div_ceil(P) * P;
        let start = self.find_space(USER_MIN, size).ok_or(KernError::NoSpace)?;
        for p in pages(start, start + size) {
            self.pages.insert(p, Page::zero());
        }
        self.put(start + copy.offset, &copy.bytes);
        Ok(start + copy.offset)
    }
}

/// `vm_map_copy` over the model. `dst == src` when `same`.
#[allow(clippy::too_many_arguments)]
pub fn vm_map_copy(
    maps: &mut [Map],
    dst: usize,
    src: usize,
    dst_addr: u64,
    len: u64,
    src_addr: u64,
    dst_alloc: bool,
    src_destroy: bool,
) -> Result<(), KernError> {
    if len == 0 {
        return Ok(());
    }
    let (ss, se) = round_out(src_addr, len).ok_or(KernError::InvalidAddress)?;
    if !user(ss, se) {
        return Err(KernError::InvalidAddress);
    }
    let (ds, de) = round_out(dst_addr, len).ok_or(KernError::InvalidAddress)?;
    if !user(ds, de) {
        return Err(KernError::InvalidAddress);
    }
    if dst == src && (dst_alloc || src_destroy) && ss < de && ds < se {
        return Err(KernError::InvalidArgument);
    }
    maps[src].check_data(src_addr, len, VmProt::READ)?;
    if dst_alloc {
        if pages(ds, de).any(|p| {
            maps[dst]
                .pages
                .get(&p)
                .is_some_and(|pg| !pg.prot.contains(VmProt::WRITE))
        }) {
            return Err(KernError::ProtectionFailure);
        }
    } else {
        maps[dst].check_data(dst_addr, len, VmProt::WRITE)?;
    }
    let bytes = maps[src].get(src_addr, len as usize);
    if dst_alloc {
        for p in pages(ds, de) {
            maps[dst].pages.entry(p).or_insert_with(Page::zero);
        }
    }
    maps[dst].put(dst_addr, &bytes);
    if src_destroy {
        maps[src].deallocate(ss, se - ss).expect("checked");
    }
    Ok(())
}
