/*
 * amd64 entry points for Xen PV and PVH, from one ELF.
 *
 * The image is linked at 1 MiB with virtual == pseudo-physical addresses:
 * for PV, VIRT_BASE = PADDR_OFFSET = 0, so Xen maps pfn N at VA N << 12
 * (the kernel extends that mapping to all of RAM); for PVH, the 32-bit
 * entry builds an identity map of the low 4 GiB. Either way, kernel code
 * sees one address space where a frame's address is its pfn << 12.
 */

/* ---- Xen ELF notes (elfnote.h) ---- */
.macro xen_note type
    .balign 4
    .long 2f - 1f
    .long 4f - 3f
    .long \type
1:  .asciz "Xen"
2:  .balign 4
3:
.endm
.macro end_note
4:  .balign 4
.endm

.section .note.Xen, "a", @note
    xen_note 6                  /* XEN_ELFNOTE_GUEST_OS */
    .asciz "moat"
    end_note
    xen_note 7                  /* XEN_ELFNOTE_GUEST_VERSION */
    .asciz "0.1"
    end_note
    xen_note 5                  /* XEN_ELFNOTE_XEN_VERSION */
    .asciz "xen-3.0"
    end_note
    xen_note 8                  /* XEN_ELFNOTE_LOADER */
    .asciz "generic"
    end_note
    xen_note 3                  /* XEN_ELFNOTE_VIRT_BASE */
    .quad 0
    end_note
    xen_note 4                  /* XEN_ELFNOTE_PADDR_OFFSET */
    .quad 0
    end_note
    xen_note 1                  /* XEN_ELFNOTE_ENTRY (PV) */
    .quad pv_entry
    end_note
    xen_note 2                  /* XEN_ELFNOTE_HYPERCALL_PAGE (PV) */
    .quad hypercall_page
    end_note
    xen_note 18                 /* XEN_ELFNOTE_PHYS32_ENTRY (PVH) */
    .long pvh_entry32
    end_note

/* ---- PV entry: 64-bit, %rsi = start_info (virtual) ---- */
.section .text.boot, "ax"
.code64
.global pv_entry
pv_entry:
    cld
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, boot_tsc(%rip)
    mov %rsp, boot_rsp(%rip)        /* top of Xen's bootstrap stack: end of what Xen allocated */
    lea boot_stack_top(%rip), %rsp
    mov %rsi, %rdi
    xor %ebp, %ebp
    call moat_pv_start
    ud2

/* ---- PVH entry: 32-bit protected mode, paging off, %ebx = hvm_start_info ---- */
.code32
.global pvh_entry32
pvh_entry32:
    cld
    mov %ebx, %edi
    rdtsc
    mov %eax, boot_tsc
    mov %edx, boot_tsc + 4

    /* %esi = CPUID.80000001h:EDX.NX (bit 20), for EFER.NXE below */
    xor %esi, %esi
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 3f
    mov $0x80000001, %eax
    cpuid
    and $0x100000, %edx
    mov %edx, %esi
3:

    /* PML4[0] -> PDPT; PDPT[0..4] -> 4 page directories; 2048 x 2 MiB = 4 GiB identity */
    mov $pvh_pdpt, %eax
    or $0x3, %eax
    mov %eax, pvh_pml4
    movl $0, pvh_pml4 + 4

    mov $pvh_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, pvh_pdpt(,%ecx,8)
    movl $0, pvh_pdpt + 4(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jb 1b

    mov $0x83, %eax             /* present | writable | 2 MiB page */
    xor %ecx, %ecx
2:  mov %eax, pvh_pd(,%ecx,8)
    movl $0, pvh_pd + 4(,%ecx,8)
    add $0x200000, %eax
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    mov $pvh_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* CR4.PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* EFER.LME */
    test %esi, %esi
    jz 4f
    or $0x800, %eax             /* EFER.NXE: the NX bit of page-table entries works */
4:  wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax        /* CR0.PG | CR0.WP (ring 0 obeys read-only pages) | CR0.PE */
    mov %eax, %cr0
    lgdt pvh_gdt_desc
    ljmp $0x08, $pvh_entry64

.code64
pvh_entry64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea boot_stack_top(%rip), %rsp
    mov %edi, %edi              /* upper halves are undefined after the mode switch */
    xor %ebp, %ebp
    call moat_pvh_start
    ud2

/* ---- The hypercall page: Xen fills it (PV at load, PVH via the MSR) ---- */
.section .text.hypercall, "ax"
.balign 4096
.global hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc

.section .text, "ax"

/*
 * PV event callback. Xen pushed (rcx, r11, rip, cs, rflags, rsp, ss) and
 * masked events. We never process events here (the executor scans pending
 * bits after it wakes up), so the handler only returns with events still
 * masked: clearing IF in the saved RFLAGS makes HYPERVISOR_iret keep the
 * upcall mask set. Nothing else is touched, so it may interrupt anything.
 */
.global pv_event_callback
pv_event_callback:
    pop %rcx
    pop %r11
    andq $~0x200, 16(%rsp)
    pushq $0                    /* iret flags: not in a syscall */
    jmp hypercall_page + 23 * 32

/* PV failsafe callback: Xen could not return to us (bad segment). Fatal. */
.global pv_failsafe_callback
pv_failsafe_callback:
    and $~15, %rsp
    mov $0xfe, %edi
    xor %esi, %esi
    xor %edx, %edx
    xor %ecx, %ecx
    call moat_exception
    ud2

/*
 * PVH event vector. Xen injects it while vcpu_info.evtchn_upcall_pending is
 * set; clearing the flag stops re-injection. The pending bitmaps stay as
 * they are for the executor's scan.
 */
.global pvh_event_vector
pvh_event_vector:
    push %rax
    mov pvh_upcall_pending_ptr(%rip), %rax
    movb $0, (%rax)
    pop %rax
    iretq

/*
 * CPU exceptions (PVH IDT and PV trap table): print and crash.
 * PV frames carry rcx and r11 on top; PVH frames do not.
 */
.macro exc_stub name, vec, has_err, pv
.global \name
\name:
    .if \pv
    pop %rcx
    pop %r11
    .endif
    .if \has_err
    pop %rsi
    .else
    xor %esi, %esi
    .endif
    .if \pv
    xor %ecx, %ecx              /* PV: Rust reads the vCPU's saved CR2 */
    .else
    mov %cr2, %rcx              /* PVH: CR2 before anything can fault again */
    .endif
    mov %rsp, %rdx              /* -> rip, cs, rflags, rsp, ss */
    and $~15, %rsp
    mov $\vec, %edi
    call moat_exception
    ud2
.endm

exc_stub pvh_exc_de, 0, 0, 0
exc_stub pvh_exc_db, 1, 0, 0
exc_stub pvh_exc_nmi, 2, 0, 0
exc_stub pvh_exc_bp, 3, 0, 0
exc_stub pvh_exc_of, 4, 0, 0
exc_stub pvh_exc_br, 5, 0, 0
exc_stub pvh_exc_ud, 6, 0, 0
exc_stub pvh_exc_nm, 7, 0, 0
exc_stub pvh_exc_df, 8, 1, 0
exc_stub pvh_exc_ts, 10, 1, 0
exc_stub pvh_exc_np, 11, 1, 0
exc_stub pvh_exc_ss, 12, 1, 0
exc_stub pvh_exc_gp, 13, 1, 0
exc_stub pvh_exc_pf, 14, 1, 0
exc_stub pvh_exc_mf, 16, 0, 0
exc_stub pvh_exc_ac, 17, 1, 0
exc_stub pvh_exc_mc, 18, 0, 0
exc_stub pvh_exc_xm, 19, 0, 0
exc_stub pv_exc_de, 0, 0, 1
exc_stub pv_exc_ud, 6, 0, 1
exc_stub pv_exc_gp, 13, 1, 1
exc_stub pv_exc_pf, 14, 1, 1

/* ---- GDT for the PVH switch to long mode ---- */
.section .rodata
.balign 16
pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
pvh_gdt_end:
.balign 8
pvh_gdt_desc:
    .word pvh_gdt_end - pvh_gdt - 1
    .quad pvh_gdt

/* ---- Boot data ---- */
.section .data
.balign 8
.global boot_tsc
boot_tsc:
    .quad 0
.global boot_rsp
boot_rsp:
    .quad 0
.global pvh_upcall_pending_ptr
pvh_upcall_pending_ptr:
    .quad pvh_upcall_sink
pvh_upcall_sink:
    .quad 0

.section .bss
.balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
.global pvh_pd
pvh_pd:
    .skip 4 * 4096

/*
 * Stacks, each above a guard page the arch code leaves unmapped (PV and
 * PVH), so an overflow faults instead of running into whatever lies below.
 * The double-fault stack is the PVH TSS's IST1: a fault that cannot push
 * its frame on the overflowed boot stack becomes a double fault, which the
 * CPU delivers on this stack.
 */
.balign 4096
.global boot_stack_guard
boot_stack_guard:
    .skip 4096
.global boot_stack
boot_stack:
    .skip 128 * 1024
.global boot_stack_top
boot_stack_top:
.global df_stack_guard
df_stack_guard:
    .skip 4096
.global df_stack
df_stack:
    .skip 16 * 1024
.global df_stack_top
df_stack_top:
