@ The zImage entry of moat's arm32 images.
@
@ Xen's and xl's arm32 loaders probe the zImage header (booting.txt): the
@ magic 0x016f2818 at offset 0x24, then the start and end words. A start of
@ 0 makes xl place the image at RAM base + 0x8000 (0x40008000), where the
@ linker script links it, and enter it at its first byte; end is the file
@ size. Entry state (Linux's arm boot protocol): SVC mode, IRQs masked,
@ MMU and D-cache off, r0 = 0, r1 = 0xffffffff, r2 = the device tree.

    .section .text.head, "ax"
    .arm
    .global _start
_start:
    .rept 8
    mov r0, r0
    .endr
    b 1f
    .word 0x016f2818            @ 0x24: zImage magic
    .word 0                     @ 0x28: start (0: "load at RAM base + 0x8000")
    .word __zimage_size         @ 0x2c: end, i.e. the file size
    .word 0x04030201            @ 0x30: little-endian marker
1:
    mov r8, r2                  @ keep the device tree pointer
    @ The counter at the first instruction, for entry -> ready timing.
    isb
    mrrc p15, 1, r0, r1, c14    @ CNTVCT
    ldr r3, =boot_cntvct
    str r0, [r3]
    str r1, [r3, #4]
    @ The target is hard-float: give PL1 the FPU (CPACR cp10/cp11) and
    @ enable it (FPEXC.EN) before any compiled code runs.
    mrc p15, 0, r0, c1, c0, 2
    orr r0, r0, #(0xf << 20)
    mcr p15, 0, r0, c1, c0, 2
    isb
    mov r0, #0x40000000
    vmsr fpexc, r0
    @ Exception vectors (VBAR) before anything can fault.
    ldr r0, =moat_vectors
    mcr p15, 0, r0, c12, c0, 0
    @ Stack, then a zeroed .bss.
    ldr sp, =boot_stack_top
    ldr r0, =__bss_start
    ldr r1, =__bss_end
    mov r2, #0
2:  cmp r0, r1
    strlo r2, [r0], #4
    blo 2b
    mov r0, r8
    bl moat_arm32_start
3:  wfi
    b 3b

@ Every exception is fatal (IRQs stay masked: events are polled after
@ wfi wakes). The stubs pass the vector number and the faulting address.
    .balign 32
    .global moat_vectors
moat_vectors:
    b .                         @ reset
    b vec_undef
    b vec_svc
    b vec_pabt
    b vec_dabt
    b .                         @ unused
    b vec_irq
    b vec_fiq
vec_undef: mov r0, #1
    b vec_common
vec_svc:   mov r0, #2
    b vec_common
vec_pabt:  mov r0, #3
    b vec_common
vec_dabt:  mov r0, #4
    b vec_common
vec_irq:   mov r0, #6
    b vec_common
vec_fiq:   mov r0, #7
vec_common:
    mov r1, lr
    ldr sp, =exc_stack_top      @ its own stack: the boot stack may be the one that overflowed
    bl moat_arm32_exception
    b .

    .data
    .balign 8
    .global boot_cntvct
boot_cntvct:
    .quad 0

@ Stacks, each above a guard page machine.rs leaves unmapped, so an
@ overflow is a translation fault (a data abort, reported on the exception
@ stack) instead of a write into whatever lies below.
    .bss
    .balign 4096
    .global boot_stack_guard
boot_stack_guard:
    .space 4096
    .global boot_stack
boot_stack:
    .space 65536
    .global boot_stack_top
boot_stack_top:
    .global exc_stack_guard
exc_stack_guard:
    .space 4096
exc_stack:
    .space 8192
    .global exc_stack_top
exc_stack_top:
