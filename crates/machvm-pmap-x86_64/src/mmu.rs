//! The software MMU: a walk with the CPU's rules (present at every level,
//! RW and US ANDed, NX ORed, CR0.WP, accessed bits on every level and the
//! dirty bit on the leaf), for the host, where no CPU walks the tables.

use super::*;
use machvm_base::sync::Locks;

impl<L: Locks> X86Pmap<L> {
    /// The MMU's verdict on `access` to `va` (see `Pmap::translate`).
    pub(crate) fn mmu_walk(
        &self,
        pmap: PmapId,
        va: VirtAddr,
        access: Access,
        user: bool,
    ) -> Result<PhysAddr, FaultCode> {
        let not_present = FaultCode::new(access, user, false);
        // The space stays locked for the walk: no table goes meanwhile.
        let s = self.spaces.lock(pmap).ok_or(not_present)?;
        let root = s.root;
        // Non-canonical addresses #GP on hardware; report them as not present.
        let canonical = va.as_u64() < (1 << 47) || va.as_u64() >= 0xFFFF_8000_0000_0000;
        if !canonical {
            return Err(not_present);
        }
        let (mut rw, mut us, mut nx) = (true, true, false);
        let mut table = root;
        let mut path = ArrayVec::<PhysAddr, 4>::new();
        for level in (1..=4).rev() {
            let i = index(va.as_u64(), level);
            let slot = entry::slot(table, i);
            let e = self.mem().load_u64(slot);
            if e & P == 0 {
                return Err(not_present);
            }
            path.push(slot);
            rw &= e & RW != 0;
            us &= e & US != 0;
            nx |= e & NX != 0;
            let leaf = level == 1 || (e & PS != 0 && level <= 3);
            if leaf {
                let size = 1u64 << shift(level);
                let denied = (user && !us)
                    || (access == Access::Write && !rw)
                    || (access == Access::Execute && nx);
                if denied {
                    return Err(FaultCode::new(access, user, true));
                }
                for slot in &path {
                    self.mem().fetch_or_u64(*slot, A);
                }
                if access == Access::Write {
                    self.mem().fetch_or_u64(slot, D);
                }
                return Ok(PhysAddr::new(
                    (e & ADDR & !(size - 1)) + (va.as_u64() & (size - 1)),
                ));
            }
            table = PhysAddr::new(e & ADDR);
        }
        Err(not_present)
    }
}
