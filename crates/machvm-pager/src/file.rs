//! Swap slots in a host file (feature `std`): slot `i` is the page at byte
//! `i * PAGE_SIZE`. The file is sized at creation, but most file systems
//! keep it sparse: a write can still find the file system full, and then
//! fails as a `StoreError` and the pager keeps nothing.

use std::fs::File;
use std::io;
use std::sync::Mutex;

use machvm_base::{PAGE_SIZE, PhysAddr};
use machvm_frame::PhysMem;

use crate::{BackingStore, StoreError};

/// A [`BackingStore`] in a file of `pages` pages.
#[derive(Debug)]
pub struct FileStore {
    file: Mutex<File>,
    pages: u64,
}

impl FileStore {
    /// Uses `file` (opened for reading and writing) as `pages` slots,
    /// sizing it to fit.
    pub fn new(file: File, pages: u64) -> io::Result<FileStore> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| io::Error::other("store too large"))?;
        file.set_len(len)?;
        Ok(FileStore {
            file: Mutex::new(file),
            pages,
        })
    }

    fn at(index: u64, offset: usize) -> u64 {
        index * PAGE_SIZE + offset as u64
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.seek(SeekFrom::Start(pos))?;
        f.write_all(data)
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let read = f.seek(SeekFrom::Start(pos)).and_then(|_| f.read_exact(buf));
        if let Err(e) = read {
            // Anything but a panic would hand back bytes the page never had.
            panic!("swap file lost the page at byte {pos}: {e}");
        }
    }
}

impl BackingStore for FileStore {
    fn pages(&self) -> u64 {
        self.pages
    }

    fn write_page(&self, index: u64, mem: &PhysMem, src: PhysAddr) -> Result<(), StoreError> {
        let mut page = [0u8; PAGE_SIZE as usize];
        mem.read(src, &mut page);
        self.write_at(Self::at(index, 0), &page)
            .map_err(|_| StoreError)
    }

    fn read_page(&self, index: u64, mem: &PhysMem, dst: PhysAddr) {
        let mut page = [0u8; PAGE_SIZE as usize];
        self.read_at(Self::at(index, 0), &mut page);
        mem.write(dst, &page);
    }

    fn read_bytes(&self, index: u64, _mem: &PhysMem, offset: usize, buf: &mut [u8]) {
        self.read_at(Self::at(index, offset), buf);
    }

    fn copy_page(&self, from: u64, to: u64, _mem: &PhysMem) -> Result<(), StoreError> {
        let mut page = [0u8; PAGE_SIZE as usize];
        self.read_at(Self::at(from, 0), &mut page);
        self.write_at(Self::at(to, 0), &page)
            .map_err(|_| StoreError)
    }
}
