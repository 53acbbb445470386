//! A client vif bound to its identity: the frames it may send.
//!
//! The toolstack writes who a vif is into its backend directory (`mac`,
//! and `ip` when the client's xl config gives one; see [`identity`]).
//! [`Binding`] turns that into a check the runtime applies to every frame a
//! client sends, before the [`Service`](crate::Service) sees it, so every
//! network VM (netbridge, the firewall, the VPN gateway) gets the same
//! isolation once:
//!
//! - the Ethernet source must be the vif's `mac`;
//! - with an `ip`: an IPv4 source must be one of its IPv4 addresses (or
//!   0.0.0.0, a DHCP client without an address yet); an ARP packet must
//!   be Ethernet/IPv4 with the vif's MAC as sender hardware address and
//!   one of its IPv4 addresses (or 0.0.0.0, an ARP probe) as sender
//!   address; an IPv6 source must be one of its IPv6 addresses, link-local
//!   (`fe80::/10`: neighbour discovery works without an IPv6 `ip`) or
//!   unspecified (duplicate address detection); VLAN-tagged frames
//!   (802.1Q, 802.1ad) are refused, since what they carry is not checked;
//! - a key that is there but invalid binds the vif to nothing: every frame
//!   is dropped (fail closed; the toolstack wrote something we cannot
//!   read, so we do not know whom to let through);
//! - an absent key binds nothing (a vif without `ip` may use any address;
//!   whether such a client is served at all is [`Service::admit`]'s
//!   business: the firewall refuses it).
//!
//! A frame that fails is dropped and counted per reason
//! ([`Violations`]); the first of each reason is reported once
//! ([`Binding::take_news`]) so the console says what happened without a
//! flood of lines.
//!
//! Link-local IPv6 sources are not tied to the MAC (Linux's default
//! stable-privacy addresses are not derived from it), so a client can use
//! another's link-local address; its frames still carry its own MAC, and a
//! switch that pins each bound MAC to its port (netbridge) delivers the
//! answers to it only.
//!
//! [`Service::admit`]: crate::Service::admit

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::identity::{ClientInfo, Key};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

/// Why a frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Its Ethernet source is not the vif's MAC (or it is shorter than an
    /// Ethernet header).
    Mac,
    /// An IPv4 packet from an address not the vif's (or too short to say).
    Ip4,
    /// An IPv6 packet from an address not the vif's, nor link-local, nor
    /// unspecified (or too short to say).
    Ip6,
    /// An ARP packet whose sender is not the vif (MAC or IPv4 address), or
    /// that is not Ethernet/IPv4 ARP.
    Arp,
    /// A VLAN-tagged frame from a vif bound to addresses.
    Vlan,
    /// The vif's `mac` or `ip` key is invalid: it is bound to nothing.
    Unbound,
}

impl Violation {
    fn index(self) -> usize {
        match self {
            Violation::Mac => 0,
            Violation::Ip4 => 1,
            Violation::Ip6 => 2,
            Violation::Arp => 3,
            Violation::Vlan => 4,
            Violation::Unbound => 5,
        }
    }
}

/// Frames a vif sent that its binding refused, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    /// [`Violation::Mac`].
    pub mac: u64,
    /// [`Violation::Ip4`].
    pub ip4: u64,
    /// [`Violation::Ip6`].
    pub ip6: u64,
    /// [`Violation::Arp`].
    pub arp: u64,
    /// [`Violation::Vlan`].
    pub vlan: u64,
    /// [`Violation::Unbound`].
    pub unbound: u64,
}

impl Violations {
    /// Every refused frame.
    pub fn total(&self) -> u64 {
        self.mac + self.ip4 + self.ip6 + self.arp + self.vlan + self.unbound
    }

    fn count(&mut self, v: Violation) {
        let c = match v {
            Violation::Mac => &mut self.mac,
            Violation::Ip4 => &mut self.ip4,
            Violation::Ip6 => &mut self.ip6,
            Violation::Arp => &mut self.arp,
            Violation::Vlan => &mut self.vlan,
            Violation::Unbound => &mut self.unbound,
        };
        *c = c.saturating_add(1);
    }
}

/// The rule for one kind of address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Rule<T> {
    /// Not bound (the key is absent, or enforcement is off).
    #[default]
    Any,
    /// Only these.
    Only(T),
    /// The key is invalid: nothing.
    Nothing,
}

/// What one client vif may send (see the module's documentation).
#[derive(Clone, Debug, Default)]
pub struct Binding {
    mac: Rule<[u8; 6]>,
    /// IPv4 and IPv6 addresses, when `ip` binds.
    ip: Rule<(Vec<Ipv4Addr>, Vec<Ipv6Addr>)>,
    /// Frames refused so far.
    violations: Violations,
    /// Reasons already reported (by [`Violation::index`]).
    reported: [bool; 6],
    /// First refusals of reasons not reported yet (at most one per
    /// reason).
    news: Vec<(Violation, [u8; 6])>,
}

impl Binding {
    /// The binding of `client`: its `mac` when `enforce_mac`, its `ip`
    /// when `enforce_ip`.
    pub fn new(client: &ClientInfo, enforce_mac: bool, enforce_ip: bool) -> Self {
        let mac = match (&client.mac, enforce_mac) {
            (_, false) | (Key::Absent, _) => Rule::Any,
            (Key::Valid(m), true) => Rule::Only(m.0),
            (Key::Invalid(_), true) => Rule::Nothing,
        };
        let ip = match (&client.ip, enforce_ip) {
            (_, false) | (Key::Absent, _) => Rule::Any,
            (Key::Valid(list), true) => {
                let mut v4 = Vec::new();
                let mut v6 = Vec::new();
                for a in list {
                    match a {
                        IpAddr::V4(a) => v4.push(*a),
                        IpAddr::V6(a) => v6.push(*a),
                    }
                }
                Rule::Only((v4, v6))
            }
            (Key::Invalid(_), true) => Rule::Nothing,
        };
        Self {
            mac,
            ip,
            ..Self::default()
        }
    }

    /// Whether this binding lets everything through (nothing enforced).
    pub fn is_open(&self) -> bool {
        self.mac == Rule::Any && self.ip == Rule::Any
    }

    /// Frames refused so far.
    pub fn violations(&self) -> &Violations {
        &self.violations
    }

    /// Whether `frame` may pass; a refused one is counted.
    pub fn admit(&mut self, frame: &[u8]) -> bool {
        match self.check(frame) {
            Ok(()) => true,
            Err(v) => {
                self.violations.count(v);
                let seen = &mut self.reported[v.index()];
                if !*seen {
                    *seen = true;
                    let mut src = [0u8; 6];
                    if let Some(s) = frame.get(6..12) {
                        src.copy_from_slice(s);
                    }
                    self.news.push((v, src));
                }
                false
            }
        }
    }

    /// A line about the first refusal of a reason not reported before, if
    /// there was one not taken yet (one line per reason per vif in all).
    pub fn take_news(&mut self) -> Option<String> {
        if self.news.is_empty() {
            return None;
        }
        let (v, s) = self.news.remove(0);
        let src = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            s[0], s[1], s[2], s[3], s[4], s[5]
        );
        let what = match v {
            Violation::Mac => "its Ethernet source is not the vif's mac",
            Violation::Ip4 => "its IPv4 source is not the vif's ip",
            Violation::Ip6 => "its IPv6 source is not the vif's ip, nor link-local",
            Violation::Arp => "its ARP sender is not the vif's mac and ip",
            Violation::Vlan => "it is VLAN-tagged",
            Violation::Unbound => "the vif's mac or ip key is invalid",
        };
        Some(format!(
            "frame from {src} dropped: {what} (these are counted, not printed again)"
        ))
    }

    /// Why `frame` may not pass, if it may not.
    pub fn check(&self, frame: &[u8]) -> Result<(), Violation> {
        if self.mac == Rule::Nothing || self.ip == Rule::Nothing {
            return Err(Violation::Unbound);
        }
        let (Some(src), Some(kind)) = (frame.get(6..12), frame.get(12..14)) else {
            return Err(Violation::Mac);
        };
        if let Rule::Only(mac) = &self.mac {
            if src != mac {
                return Err(Violation::Mac);
            }
        }
        let Rule::Only((v4, v6)) = &self.ip else {
            return Ok(());
        };
        let payload = &frame[14..];
        match u16::from_be_bytes([kind[0], kind[1]]) {
            ETHERTYPE_IPV4 => {
                // Version and source address (bytes 12..16 of the header).
                let (Some(&vihl), Some(a)) = (payload.first(), payload.get(12..16)) else {
                    return Err(Violation::Ip4);
                };
                let a = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                if vihl >> 4 == 4 && (a.is_unspecified() || v4.contains(&a)) {
                    Ok(())
                } else {
                    Err(Violation::Ip4)
                }
            }
            ETHERTYPE_IPV6 => {
                let (Some(&v), Some(a)) = (payload.first(), payload.get(8..24)) else {
                    return Err(Violation::Ip6);
                };
                let mut b = [0u8; 16];
                b.copy_from_slice(a);
                let a = Ipv6Addr::from(b);
                let link_local = b[0] == 0xfe && b[1] & 0xc0 == 0x80;
                if v >> 4 == 6 && (a.is_unspecified() || link_local || v6.contains(&a)) {
                    Ok(())
                } else {
                    Err(Violation::Ip6)
                }
            }
            ETHERTYPE_ARP => {
                // htype 1, ptype IPv4, hlen 6, plen 4, then sender MAC and
                // sender IPv4 address.
                let Some(arp) = payload.get(0..28) else {
                    return Err(Violation::Arp);
                };
                if arp[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
                    return Err(Violation::Arp);
                }
                if let Rule::Only(mac) = &self.mac {
                    if arp[8..14] != mac[..] {
                        return Err(Violation::Arp);
                    }
                }
                let a = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
                if a.is_unspecified() || v4.contains(&a) {
                    Ok(())
                } else {
                    Err(Violation::Arp)
                }
            }
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD => Err(Violation::Vlan),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientId;
    use alloc::vec;
    use netfront::MacAddress;

    const MAC: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 1];
    const OTHER: [u8; 6] = [0, 0x16, 0x3e, 0, 0, 2];

    fn info(mac: Key<MacAddress>, ip: Key<Vec<IpAddr>>) -> ClientInfo {
        ClientInfo {
            id: ClientId(1),
            path: String::new(),
            frontend_id: 3,
            mac,
            ip,
            frontend: None,
        }
    }

    fn bound() -> Binding {
        let ips = vec![
            IpAddr::V4(Ipv4Addr::new(10, 137, 0, 10)),
            IpAddr::V6("fd09::a".parse().unwrap()),
        ];
        Binding::new(
            &info(Key::Valid(MacAddress(MAC)), Key::Valid(ips)),
            true,
            true,
        )
    }

    fn eth(src: [u8; 6], kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&kind.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ip4(src: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[12..16].copy_from_slice(&src);
        h
    }

    fn ip6(src: &str) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        let a: Ipv6Addr = src.parse().unwrap();
        h[8..24].copy_from_slice(&a.octets());
        h
    }

    fn arp(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        a.extend_from_slice(&mac);
        a.extend_from_slice(&ip);
        a.extend_from_slice(&[0; 10]);
        a
    }

    #[test]
    fn a_bound_vif_sends_only_as_itself() {
        let b = bound();
        assert!(!b.is_open());
        let ok = |f: Vec<u8>| b.check(&f);
        assert_eq!(ok(eth(MAC, ETHERTYPE_IPV4, &ip4([10, 137, 0, 10]))), Ok(()));
        assert_eq!(ok(eth(MAC, ETHERTYPE_IPV4, &ip4([0; 4]))), Ok(()));
        assert_eq!(
            ok(eth(OTHER, ETHERTYPE_IPV4, &ip4([10, 137, 0, 10]))),
            Err(Violation::Mac)
        );
        assert_eq!(
            ok(eth(MAC, ETHERTYPE_IPV4, &ip4([10, 137, 0, 11]))),
            Err(Violation::Ip4)
        );
        assert_eq!(
            ok(eth(MAC, ETHERTYPE_IPV4, &[0x45; 10])),
            Err(Violation::Ip4)
        );
        assert_eq!(ok(eth(MAC, ETHERTYPE_IPV6, &ip6("fd09::a"))), Ok(()));
        assert_eq!(ok(eth(MAC, ETHERTYPE_IPV6, &ip6("fe80::1"))), Ok(()));
        assert_eq!(ok(eth(MAC, ETHERTYPE_IPV6, &ip6("::"))), Ok(()));
        assert_eq!(
            ok(eth(MAC, ETHERTYPE_IPV6, &ip6("fd09::b"))),
            Err(Violation::Ip6)
        );
        assert_eq!(
            ok(eth(MAC, ETHERTYPE_ARP, &arp(MAC, [10, 137, 0, 10]))),
            Ok(())
        );
        assert_eq!(ok(eth(MAC, ETHERTYPE_ARP, &arp(MAC, [0; 4]))), Ok(()));
        assert_eq!(
            ok(eth(MAC, ETHERTYPE_ARP, &arp(OTHER, [10, 137, 0, 10]))),
            Err(Violation::Arp)
        );
        assert_eq!(
            ok(eth(MAC, ETHERTYPE_ARP, &arp(MAC, [10, 137, 0, 1]))),
            Err(Violation::Arp)
        );
        assert_eq!(ok(eth(MAC, ETHERTYPE_ARP, &[0, 1])), Err(Violation::Arp));
        assert_eq!(
            ok(eth(MAC, ETHERTYPE_VLAN, &[0, 5, 0x08, 0])),
            Err(Violation::Vlan)
        );
        // Other protocols carry no address to check.
        assert_eq!(ok(eth(MAC, 0x88cc, &[0; 20])), Ok(()));
        assert_eq!(ok(MAC.to_vec()), Err(Violation::Mac));
    }

    #[test]
    fn refusals_are_counted_and_reported_once_per_reason() {
        let mut b = bound();
        for _ in 0..3 {
            assert!(!b.admit(&eth(OTHER, ETHERTYPE_IPV4, &ip4([10, 137, 0, 10]))));
        }
        assert!(b.admit(&eth(MAC, ETHERTYPE_IPV4, &ip4([10, 137, 0, 10]))));
        let line = b.take_news().unwrap();
        assert!(line.contains("00:16:3e:00:00:02"), "{line}");
        assert_eq!(b.take_news(), None);
        assert!(!b.admit(&eth(MAC, ETHERTYPE_IPV4, &ip4([1, 2, 3, 4]))));
        assert!(b.take_news().unwrap().contains("IPv4"));
        assert_eq!(b.violations().mac, 3);
        assert_eq!(b.violations().ip4, 1);
        assert_eq!(b.violations().total(), 4);
    }

    #[test]
    fn arbitrary_frames_never_panic_and_only_the_bound_source_passes() {
        let mut b = bound();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut passed = 0;
        for n in 0..20_000usize {
            let len = n % 90;
            let mut f = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                f.push(x as u8);
            }
            // Half of them from the bound MAC, with a checked ethertype.
            if n % 2 == 0 && len >= 14 {
                f[6..12].copy_from_slice(&MAC);
                let kinds = [
                    ETHERTYPE_IPV4,
                    ETHERTYPE_IPV6,
                    ETHERTYPE_ARP,
                    ETHERTYPE_VLAN,
                    0x88b5,
                ];
                f[12..14].copy_from_slice(&kinds[n / 2 % 5].to_be_bytes());
            }
            if b.admit(&f) {
                passed += 1;
                assert_eq!(f.get(6..12), Some(&MAC[..]));
            }
        }
        assert!(passed > 0);
        assert!(b.violations().mac > 0 && b.violations().ip4 > 0 && b.violations().vlan > 0);
        assert_eq!(b.violations().total() + passed, 20_000);
    }

    #[test]
    fn absent_keys_bind_nothing_and_invalid_ones_everything() {
        let mut open = Binding::new(&info(Key::Absent, Key::Absent), true, true);
        assert!(open.is_open());
        assert!(open.admit(&eth(OTHER, ETHERTYPE_IPV4, &ip4([1, 2, 3, 4]))));
        // Only the MAC bound: any address from it.
        let mac_only = Binding::new(&info(Key::Valid(MacAddress(MAC)), Key::Absent), true, true);
        assert_eq!(
            mac_only.check(&eth(MAC, ETHERTYPE_IPV4, &ip4([1, 2, 3, 4]))),
            Ok(())
        );
        assert_eq!(
            mac_only.check(&eth(OTHER, ETHERTYPE_IPV4, &ip4([1, 2, 3, 4]))),
            Err(Violation::Mac)
        );
        let bad = Binding::new(
            &info(Key::Valid(MacAddress(MAC)), Key::Invalid("x".into())),
            true,
            true,
        );
        assert_eq!(
            bad.check(&eth(MAC, ETHERTYPE_IPV4, &ip4([10, 137, 0, 10]))),
            Err(Violation::Unbound)
        );
        // Enforcement off: the keys do not matter.
        let off = Binding::new(&info(Key::Invalid("x".into()), Key::Absent), false, false);
        assert!(off.is_open());
    }
}
