//! Every `#[repr(C)]` structure of `xen::abi` checked against Xen's public
//! headers (Debian's `libxen-dev`, `/usr/include/xen`): a C program built
//! from the same table prints `sizeof`/`offsetof` of each struct and field
//! and the value of each constant, and the Rust side must match.
//!
//! To cover a new structure, add one line to `STRUCTS` (fields whose C name
//! differs are written `rust_name as "c.name"`); a constant, one line to
//! `CONSTS`. A missing compiler or header is a set-up error and fails.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;
use xen::abi::blkif::*;
use xen::abi::console::*;
use xen::abi::event_channel::*;
use xen::abi::grant_table::*;
use xen::abi::hvm::*;
use xen::abi::memory::*;
use xen::abi::netif::*;
use xen::abi::ring::*;
use xen::abi::sched::*;
use xen::abi::vcpu::*;
use xen::abi::xen::*;
use xen::abi::xs_wire::*;
use xen::ring::ring_size;
use xen::xenbus::XenbusState;

/// One thing to compare: `key` names it on both sides.
struct Check {
    key: String,
    /// C expression printed as `size_t` / `unsigned long long`.
    c_expr: String,
    rust: u64,
}

fn field_size<T, F>(_: fn(T) -> F) -> usize {
    size_of::<F>()
}

macro_rules! c_name {
    ($given:literal ; $default:expr) => {
        $given
    };
    (; $default:expr) => {
        $default
    };
}

/// `Rust = "C type" { field, field as "c_field", nested.field, ... };`
/// A Rust type that is only the leading part of the C one is marked
/// `partial` (its total size is not compared).
macro_rules! structs {
    ($( $rust:ty = $c:literal $($partial:ident)? { $( $f0:ident $(. $fr:ident)* $(as $cf:literal)? ),* $(,)? } ;)*) => {{
        let mut checks = Vec::new();
        $(
            let partial = false $(|| stringify!($partial) == "partial")?;
            if !partial {
                checks.push(Check {
                    key: format!("sizeof({})", $c),
                    c_expr: format!("sizeof({})", $c),
                    rust: size_of::<$rust>() as u64,
                });
            }
            $(
                let c_field: &str = c_name!($($cf)? ; concat!(stringify!($f0) $(, ".", stringify!($fr))*));
                checks.push(Check {
                    key: format!("offsetof({}, {})", $c, c_field),
                    c_expr: format!("offsetof({}, {})", $c, c_field),
                    rust: offset_of!($rust, $f0 $(. $fr)*) as u64,
                });
                checks.push(Check {
                    key: format!("sizeof({}.{})", $c, c_field),
                    c_expr: format!("sizeof((({} *)0)->{})", $c, c_field),
                    rust: field_size(|s: $rust| s.$f0 $(. $fr)*) as u64,
                });
            )*
        )*
        checks
    }};
}

/// `"C expression" => rust value;`
macro_rules! consts {
    ($( $c:literal => $rust:expr ;)*) => {
        vec![$( Check { key: String::from($c), c_expr: String::from($c), rust: ($rust) as u64 } ),*]
    };
}

fn table() -> Vec<Check> {
    let mut checks = structs! {
        // io/xs_wire.h, io/console.h, io/ring.h (this crate's protocols)
        XsdSockmsg = "struct xsd_sockmsg" { type_ as "type", req_id, tx_id, len };
        XenstoreDomainInterface = "struct xenstore_domain_interface" {
            req, rsp, req_cons, req_prod, rsp_cons, rsp_prod, server_features, connection, error };
        XenconsInterface = "struct xencons_interface" {
            in_ as "in", out, in_cons, in_prod, out_cons, out_prod };
        // The header only: the slot array's offset is checked in CONSTS.
        SringHeader = "struct moat_check_sring" partial {
            req_prod, req_event, rsp_prod, rsp_event, pvt, pad as "__pad" };
        // io/blkif.h
        BlkifRequestSegment = "struct blkif_request_segment" { gref, first_sect, last_sect };
        BlkifRequest = "struct blkif_request" {
            operation, nr_segments, handle, id, sector_number, seg };
        BlkifRequestDiscard = "struct blkif_request_discard" {
            operation, flag, handle, id, sector_number, nr_sectors };
        BlkifRequestIndirect = "struct blkif_request_indirect" {
            operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs };
        BlkifResponse = "struct blkif_response" { id, operation, status };
        BlkifRequestSlot = "union blkif_sring_entry" { bytes as "req" };
        // io/netif.h
        NetifTxRequest = "struct netif_tx_request" { gref, offset, flags, id, size };
        NetifTxResponse = "struct netif_tx_response" { id, status };
        NetifRxRequest = "struct netif_rx_request" { id, pad, gref };
        NetifRxResponse = "struct netif_rx_response" { id, offset, flags, status };
        NetifExtraInfo = "struct netif_extra_info" { type_ as "type", flags, u };
        NetifExtraInfoGso = "struct netif_extra_info" {
            type_ as "type", flags, size as "u.gso.size", gso_type as "u.gso.type",
            pad as "u.gso.pad", features as "u.gso.features" };
        // xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h
        TrapInfo = "struct trap_info" { vector, flags, cs, address };
        MmuUpdate = "struct mmu_update" { ptr, val };
        StartInfo = "struct start_info" {
            magic, nr_pages, shared_info, flags, store_mfn, store_evtchn,
            console.mfn as "console.domU.mfn", console.evtchn as "console.domU.evtchn",
            pt_base, nr_pt_frames, mfn_list, mod_start, mod_len, cmd_line,
            first_p2m_pfn, nr_p2m_frames };
        VcpuTimeInfo = "struct vcpu_time_info" {
            version, pad0, tsc_timestamp, system_time, tsc_to_system_mul, tsc_shift, flags, pad1 };
        ArchVcpuInfo = "struct arch_vcpu_info" { cr2, pad };
        VcpuInfo = "struct vcpu_info" {
            evtchn_upcall_pending, evtchn_upcall_mask, evtchn_pending_sel, arch, time };
        ArchSharedInfo = "struct arch_shared_info" {
            max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation };
        SharedInfo = "struct shared_info" {
            vcpu_info, evtchn_pending, evtchn_mask, wc_version, wc_sec, wc_nsec, wc_sec_hi, arch };
        // arch-x86/hvm/start_info.h, hvm/hvm_op.h
        HvmStartInfo = "struct hvm_start_info" {
            magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr,
            memmap_paddr, memmap_entries, reserved };
        HvmMemmapTableEntry = "struct hvm_memmap_table_entry" { addr, size, type_ as "type", reserved };
        XenHvmParam = "struct xen_hvm_param" { domid, pad, index, value };
        // event_channel.h
        EvtchnAllocUnbound = "struct evtchn_alloc_unbound" { dom, remote_dom, port };
        EvtchnBindInterdomain = "struct evtchn_bind_interdomain" { remote_dom, remote_port, local_port };
        EvtchnBindVirq = "struct evtchn_bind_virq" { virq, vcpu, port };
        EvtchnPort = "struct evtchn_send" { port };
        EvtchnPort = "struct evtchn_close" { port };
        EvtchnPort = "struct evtchn_unmask" { port };
        // grant_table.h
        GrantEntryV1 = "struct grant_entry_v1" { flags, domid, frame };
        GnttabSetupTable = "struct gnttab_setup_table" { dom, nr_frames, status, frame_list };
        GnttabQuerySize = "struct gnttab_query_size" { dom, nr_frames, max_nr_frames, status };
        GnttabCopyPtr = "struct gnttab_copy_ptr" { u, domid, offset };
        GnttabCopy = "struct gnttab_copy" {
            source, dest, len, flags, status,
            source.domid, source.offset, dest.u, dest.domid };
        GnttabMapGrantRef = "struct gnttab_map_grant_ref" {
            host_addr, flags, ref_ as "ref", dom, status, handle, dev_bus_addr };
        GnttabUnmapGrantRef = "struct gnttab_unmap_grant_ref" { host_addr, dev_bus_addr, handle, status };
        // memory.h (e820: no public header; the BIOS layout, see the C side)
        XenAddToPhysmap = "struct xen_add_to_physmap" { domid, size, space, idx, gpfn };
        XenMemoryMap = "struct xen_memory_map" { nr_entries, buffer };
        E820Entry = "struct moat_e820entry" { addr, size, type_ as "type" };
        // sched.h, vcpu.h
        SchedShutdown = "struct sched_shutdown" { reason };
        SchedPoll = "struct sched_poll" { ports, nr_ports, timeout };
        VcpuSetSingleshotTimer = "struct vcpu_set_singleshot_timer" { timeout_abs_ns, flags };
        VcpuRegisterVcpuInfo = "struct vcpu_register_vcpu_info" { mfn, offset, rsvd };
    };
    checks.extend(consts! {
        "XENSTORE_RING_SIZE" => XENSTORE_RING_SIZE;
        "XENSTORE_PAYLOAD_MAX" => XENSTORE_PAYLOAD_MAX;
        "XENSTORE_ABS_PATH_MAX" => XENSTORE_ABS_PATH_MAX;
        "XENSTORE_REL_PATH_MAX" => XENSTORE_REL_PATH_MAX;
        "XENSTORE_SERVER_FEATURE_RECONNECTION" => XENSTORE_SERVER_FEATURE_RECONNECTION;
        "XENSTORE_SERVER_FEATURE_ERROR" => XENSTORE_SERVER_FEATURE_ERROR;
        "XENSTORE_CONNECTED" => XENSTORE_CONNECTED;
        "XENSTORE_RECONNECT" => XENSTORE_RECONNECT;
        "XENSTORE_ERROR_NONE" => XENSTORE_ERROR_NONE;
        "XENSTORE_ERROR_COMM" => XENSTORE_ERROR_COMM;
        "XENSTORE_ERROR_RINGIDX" => XENSTORE_ERROR_RINGIDX;
        "XENSTORE_ERROR_PROTO" => XENSTORE_ERROR_PROTO;
        "MASK_XENSTORE_IDX(0xfffffbffu + 7)" => mask_xenstore_idx(0xfffffbff + 7);
        "XS_CONTROL" => XsdSockmsgType::Control;
        "XS_DIRECTORY" => XsdSockmsgType::Directory;
        "XS_READ" => XsdSockmsgType::Read;
        "XS_GET_PERMS" => XsdSockmsgType::GetPerms;
        "XS_WATCH" => XsdSockmsgType::Watch;
        "XS_UNWATCH" => XsdSockmsgType::Unwatch;
        "XS_TRANSACTION_START" => XsdSockmsgType::TransactionStart;
        "XS_TRANSACTION_END" => XsdSockmsgType::TransactionEnd;
        "XS_INTRODUCE" => XsdSockmsgType::Introduce;
        "XS_RELEASE" => XsdSockmsgType::Release;
        "XS_GET_DOMAIN_PATH" => XsdSockmsgType::GetDomainPath;
        "XS_WRITE" => XsdSockmsgType::Write;
        "XS_MKDIR" => XsdSockmsgType::Mkdir;
        "XS_RM" => XsdSockmsgType::Rm;
        "XS_SET_PERMS" => XsdSockmsgType::SetPerms;
        "XS_WATCH_EVENT" => XsdSockmsgType::WatchEvent;
        "XS_ERROR" => XsdSockmsgType::Error;
        "XS_IS_DOMAIN_INTRODUCED" => XsdSockmsgType::IsDomainIntroduced;
        "XS_RESUME" => XsdSockmsgType::Resume;
        "XS_SET_TARGET" => XsdSockmsgType::SetTarget;
        "XS_RESET_WATCHES" => XsdSockmsgType::ResetWatches;
        "XS_DIRECTORY_PART" => XsdSockmsgType::DirectoryPart;
        "XS_TYPE_COUNT" => XsdSockmsgType::DirectoryPart as u32 + 1;
        "XS_INVALID" => XsdSockmsgType::Invalid;
        "XS_WATCH_PATH" => XS_WATCH_PATH;
        "XS_WATCH_TOKEN" => XS_WATCH_TOKEN;
        "VIRQ_TIMER" => VIRQ_TIMER;
        "VIRQ_DOM_EXC" => VIRQ_DOM_EXC;
        "XenbusStateUnknown" => XenbusState::Unknown;
        "XenbusStateInitialising" => XenbusState::Initialising;
        "XenbusStateInitWait" => XenbusState::InitWait;
        "XenbusStateInitialised" => XenbusState::Initialised;
        "XenbusStateConnected" => XenbusState::Connected;
        "XenbusStateClosing" => XenbusState::Closing;
        "XenbusStateClosed" => XenbusState::Closed;
        "XenbusStateReconfiguring" => XenbusState::Reconfiguring;
        "XenbusStateReconfigured" => XenbusState::Reconfigured;
        "BLKIF_OP_READ" => BLKIF_OP_READ;
        "BLKIF_OP_WRITE" => BLKIF_OP_WRITE;
        "BLKIF_OP_WRITE_BARRIER" => BLKIF_OP_WRITE_BARRIER;
        "BLKIF_OP_FLUSH_DISKCACHE" => BLKIF_OP_FLUSH_DISKCACHE;
        "BLKIF_OP_RESERVED_1" => BLKIF_OP_RESERVED_1;
        "BLKIF_OP_DISCARD" => BLKIF_OP_DISCARD;
        "BLKIF_OP_INDIRECT" => BLKIF_OP_INDIRECT;
        "BLKIF_MAX_SEGMENTS_PER_REQUEST" => BLKIF_MAX_SEGMENTS_PER_REQUEST;
        "BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST" => BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;
        "4096 / sizeof(struct blkif_request_segment)" => BLKIF_SEGMENTS_PER_INDIRECT_PAGE;
        "BLKIF_DISCARD_SECURE" => BLKIF_DISCARD_SECURE;
        "(unsigned long long)(long long)BLKIF_RSP_EOPNOTSUPP" => BLKIF_RSP_EOPNOTSUPP as i64;
        "(unsigned long long)(long long)BLKIF_RSP_ERROR" => BLKIF_RSP_ERROR as i64;
        "BLKIF_RSP_OKAY" => BLKIF_RSP_OKAY;
        "VDISK_CDROM" => VDISK_CDROM;
        "VDISK_REMOVABLE" => VDISK_REMOVABLE;
        "VDISK_READONLY" => VDISK_READONLY;
        "__CONST_RING_SIZE(blkif, 4096)" => ring_size::<BlkifRequestSlot, BlkifResponse>(4096);
        "__CONST_RING_SIZE(blkif, 4096 << 4)" => ring_size::<BlkifRequestSlot, BlkifResponse>(4096 << 4);
        "XEN_NETIF_NR_SLOTS_MIN" => XEN_NETIF_NR_SLOTS_MIN;
        "XEN_NETIF_MAX_TX_SIZE" => XEN_NETIF_MAX_TX_SIZE;
        "NETTXF_csum_blank" => NETTXF_CSUM_BLANK;
        "NETTXF_data_validated" => NETTXF_DATA_VALIDATED;
        "NETTXF_more_data" => NETTXF_MORE_DATA;
        "NETTXF_extra_info" => NETTXF_EXTRA_INFO;
        "NETRXF_data_validated" => NETRXF_DATA_VALIDATED;
        "NETRXF_csum_blank" => NETRXF_CSUM_BLANK;
        "NETRXF_more_data" => NETRXF_MORE_DATA;
        "NETRXF_extra_info" => NETRXF_EXTRA_INFO;
        "NETRXF_gso_prefix" => NETRXF_GSO_PREFIX;
        "XEN_NETIF_EXTRA_TYPE_NONE" => XEN_NETIF_EXTRA_TYPE_NONE;
        "XEN_NETIF_EXTRA_TYPE_GSO" => XEN_NETIF_EXTRA_TYPE_GSO;
        "XEN_NETIF_EXTRA_TYPE_MCAST_ADD" => XEN_NETIF_EXTRA_TYPE_MCAST_ADD;
        "XEN_NETIF_EXTRA_TYPE_MCAST_DEL" => XEN_NETIF_EXTRA_TYPE_MCAST_DEL;
        "XEN_NETIF_EXTRA_TYPE_HASH" => XEN_NETIF_EXTRA_TYPE_HASH;
        "XEN_NETIF_EXTRA_TYPE_MAX" => XEN_NETIF_EXTRA_TYPE_MAX;
        "XEN_NETIF_EXTRA_FLAG_MORE" => XEN_NETIF_EXTRA_FLAG_MORE;
        "XEN_NETIF_GSO_TYPE_NONE" => XEN_NETIF_GSO_TYPE_NONE;
        "XEN_NETIF_GSO_TYPE_TCPV4" => XEN_NETIF_GSO_TYPE_TCPV4;
        "XEN_NETIF_GSO_TYPE_TCPV6" => XEN_NETIF_GSO_TYPE_TCPV6;
        "(unsigned long long)(long long)NETIF_RSP_DROPPED" => NETIF_RSP_DROPPED as i64;
        "(unsigned long long)(long long)NETIF_RSP_ERROR" => NETIF_RSP_ERROR as i64;
        "NETIF_RSP_OKAY" => NETIF_RSP_OKAY;
        "NETIF_RSP_NULL" => NETIF_RSP_NULL;
        "__CONST_RING_SIZE(netif_tx, 4096)" => ring_size::<NetifTxRequest, NetifTxResponse>(4096);
        "__CONST_RING_SIZE(netif_rx, 4096)" => ring_size::<NetifRxRequest, NetifRxResponse>(4096);
        "sizeof(union netif_tx_sring_entry)" => std::mem::size_of::<NetifTxRequest>();
        "offsetof(struct moat_check_sring, ring)" => SRING_SLOTS_OFFSET;
        "__CONST_RING_SIZE(moat_check, 4096)" => ring_size::<[u32; 3], [u16; 2]>(4096);
        "__CONST_RING_SIZE(moat_wide, 4096)" => ring_size::<u64, [u8; 12]>(4096);
        "__CONST_RING_SIZE(moat_big, 4096)" => ring_size::<[u8; 112], [u32; 3]>(4096);
        "__CONST_RING_SIZE(moat_check, 65536)" => ring_size::<[u32; 3], [u16; 2]>(65536);
    });
    checks
}

const PRELUDE: &str = r#"
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/memory.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/hvm/hvm_op.h>
#include <xen/io/xs_wire.h>
#include <xen/io/console.h>
#include <xen/io/ring.h>
#include <xen/io/xenbus.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>

/* Rings of known slot types, to check the layout and __RING_SIZE. */
struct moat_check_req { uint32_t a, b, c; };
struct moat_check_rsp { uint16_t a, b; };
DEFINE_RING_TYPES(moat_check, struct moat_check_req, struct moat_check_rsp);
struct moat_wide_rsp { uint8_t b[12]; };
DEFINE_RING_TYPES(moat_wide, uint64_t, struct moat_wide_rsp);
struct moat_big_req { uint8_t b[112]; };
struct moat_big_rsp { uint32_t a[3]; };
DEFINE_RING_TYPES(moat_big, struct moat_big_req, struct moat_big_rsp);

/* The BIOS e820 entry XENMEM_memory_map fills in: no public Xen header
 * defines it (Linux: struct boot_e820_entry). */
struct moat_e820entry { uint64_t addr; uint64_t size; uint32_t type; }
    __attribute__((packed));

int main(void) {
"#;

fn c_program(checks: &[Check]) -> String {
    let mut c = String::from(PRELUDE);
    for check in checks {
        writeln!(
            c,
            "    printf(\"%s=%llu\\n\", \"{}\", (unsigned long long)({}));",
            check.key, check.c_expr
        )
        .unwrap();
    }
    c.push_str("    return 0;\n}\n");
    c
}

/// Compile and run `source`; `name` keeps parallel tests apart.
fn run_c(name: &str, source: &str) -> HashMap<String, u64> {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("moat-xen-abi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("abi.c");
    let bin = dir.join("abi");
    std::fs::write(&src, source).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| String::from("cc"));
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("set-up error: cannot run C compiler `{cc}` ({e}); install gcc and libxen-dev")
        });
    assert!(
        out.status.success(),
        "set-up error or bad table: compiling against /usr/include/xen failed \
         (is libxen-dev installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().expect("run the C layout probe");
    assert!(out.status.success(), "C layout probe failed");
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (key, value) = line.rsplit_once('=').expect("key=value");
            (key.to_string(), value.parse().expect("number"))
        })
        .collect()
}

#[test]
fn abi_matches_xen_public_headers() {
    assert!(
        std::path::Path::new("/usr/include/xen/xen.h").exists(),
        "set-up error: /usr/include/xen/xen.h missing; install Debian's libxen-dev"
    );
    let checks = table();
    let c = run_c("all", &c_program(&checks));
    let mut mismatches = Vec::new();
    for check in &checks {
        match c.get(&check.key) {
            Some(&value) if value == check.rust => {}
            Some(&value) => mismatches.push(format!(
                "{}: C says {value}, Rust says {}",
                check.key, check.rust
            )),
            None => mismatches.push(format!("{}: not printed by the C side", check.key)),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} ABI checks differ:\n{}",
        mismatches.len(),
        checks.len(),
        mismatches.join("\n")
    );
    println!("{} ABI checks match Xen's headers", checks.len());
}

#[test]
fn a_wrong_rust_value_is_caught() {
    // The comparison itself must be able to fail: feed it a deliberately
    // wrong Rust value for one real C expression.
    let wrong = [Check {
        key: String::from("sizeof(struct xsd_sockmsg)"),
        c_expr: String::from("sizeof(struct xsd_sockmsg)"),
        rust: 17,
    }];
    let c = run_c("wrong", &c_program(&wrong));
    assert_eq!(c.get("sizeof(struct xsd_sockmsg)"), Some(&16));
    assert_ne!(c["sizeof(struct xsd_sockmsg)"], wrong[0].rust);
}
