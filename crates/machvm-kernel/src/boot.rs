//! PVH entry: the ELF note QEMU looks for, the 32-bit start code that builds
//! the boot page tables and enters long mode, and the jump to `kernel_main`
//! in the higher half.
//!
//! Boot page tables (all in the kernel image's `.bss`):
//! - four page directories of 2 MiB pages map physical 0..4 GiB;
//! - `BOOT_PDPT_LOW` points at them and serves both the low identity map
//!   (PML4 entry 0, dropped once in Rust) and the direct map at
//!   [`DIRECT_MAP_BASE`] (PML4 entry 256, no-execute);
//! - `BOOT_PDPT_KERNEL` entry 510 maps the first GiB at [`KERNEL_VMA`], where
//!   the image is linked (PML4 entry 511).

use core::sync::atomic::AtomicU64;

/// Virtual address of physical 0 in the kernel image mapping: the image is
/// linked at `KERNEL_VMA + its physical load address`.
pub const KERNEL_VMA: u64 = 0xFFFF_FFFF_8000_0000;
/// Virtual address of physical 0 in the direct map of all RAM.
pub const DIRECT_MAP_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Size of the boot CPU's stack.
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

/// A page-table page; entries are atomics because the MMU sets accessed and
/// dirty bits concurrently.
#[repr(C, align(4096))]
pub struct Table(pub [AtomicU64; 512]);

impl Table {
    /// An empty table.
    pub const fn new() -> Table {
        Table([const { AtomicU64::new(0) }; 512])
    }
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

/// The kernel's PML4; its physical address is the kernel CR3.
pub static BOOT_PML4: Table = Table::new();
/// Shared by the identity map (entry 0) and the direct map (entry 256).
pub static BOOT_PDPT_LOW: Table = Table::new();
/// Maps the image at `KERNEL_VMA` (PML4 entry 511).
pub static BOOT_PDPT_KERNEL: Table = Table::new();
/// 2 MiB pages for physical 0..4 GiB.
pub static BOOT_PD: [Table; 4] = [const { Table::new() }; 4];

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical range `[start, end)` of the loaded kernel image, `.bss` included.
pub fn kernel_image_phys() -> (u64, u64) {
    let s = &raw const __kernel_start as u64;
    let e = &raw const __kernel_end as u64;
    (s - KERNEL_VMA, e - KERNEL_VMA)
}

// The PVH note (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`, type 18) gives QEMU the
// physical 32-bit entry. QEMU reads the descriptor as a host word, so it is a
// quad like Linux's. The start code runs with paging off at physical
// addresses, so every symbol reference subtracts KERNEL_VMA.
core::arch::global_asm!(
    r#"
    .pushsection .note.pvh, "a", @note
    .p2align 2
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .p2align 2
    .quad machvm_pvh_start32 - {kvma}
    .popsection

    .pushsection .text.boot, "ax", @progbits
    .code32
    .global machvm_pvh_start32
machvm_pvh_start32:
    cli
    cld
    mov %ebx, %esi
    mov $(__bss_start - {kvma}), %edi
    mov $(__bss_end - {kvma}), %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $(machvm_boot_stack_top - {kvma}), %esp

    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 9f
    mov $0x80000001, %eax
    cpuid
    test $(1 << 29), %edx
    jz 9f
    test $(1 << 20), %edx
    jz 9f

    mov $({pd} - {kvma}), %edi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b

    mov $({pdpt_low} - {kvma}), %edi
    mov $({pd} - {kvma} + 3), %eax
    mov %eax, 0(%edi)
    add $0x1000, %eax
    mov %eax, 8(%edi)
    add $0x1000, %eax
    mov %eax, 16(%edi)
    add $0x1000, %eax
    mov %eax, 24(%edi)

    mov $({pdpt_kernel} - {kvma}), %edi
    mov $({pd} - {kvma} + 3), %eax
    mov %eax, (510 * 8)(%edi)

    mov $({pml4} - {kvma}), %edi
    mov $({pdpt_low} - {kvma} + 3), %eax
    mov %eax, 0(%edi)
    mov %eax, (256 * 8)(%edi)
    movl $0x80000000, (256 * 8 + 4)(%edi)
    mov $({pdpt_kernel} - {kvma} + 3), %eax
    mov %eax, (511 * 8)(%edi)
    mov %edi, %cr3

    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $0x900, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0
    lgdt (machvm_boot_gdtr32 - {kvma})
    ljmp $0x08, $(2f - {kvma})

9:  mov $0x3f8, %dx
    mov $0x21, %al
    out %al, %dx
    mov $0xf4, %dx
    mov $0x11, %eax
    out %eax, %dx
8:  hlt
    jmp 8b

    .code64
2:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    movabs $3f, %rax
    jmp *%rax
3:  lgdt machvm_boot_gdtr64(%rip)
    lea machvm_boot_stack_top(%rip), %rsp
    mov %esi, %edi
    xor %ebp, %ebp
    call {main}
4:  hlt
    jmp 4b
    .popsection

    .pushsection .data.machvm_boot_gdt, "aw", @progbits
    .p2align 3
machvm_boot_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
machvm_boot_gdtr32:
    .word 23
    .long machvm_boot_gdt - {kvma}
machvm_boot_gdtr64:
    .word 23
    .quad machvm_boot_gdt
    .popsection

    .pushsection .bss.machvm_boot_stack, "aw", @nobits
    .p2align 12
    .skip {stack_size}
    .global machvm_boot_stack_top
machvm_boot_stack_top:
    .popsection
"#,
    kvma = const KERNEL_VMA,
    pd = sym BOOT_PD,
    pdpt_low = sym BOOT_PDPT_LOW,
    pdpt_kernel = sym BOOT_PDPT_KERNEL,
    pml4 = sym BOOT_PML4,
    stack_size = const BOOT_STACK_SIZE,
    main = sym crate::kernel_main,
    options(att_syntax)
);
