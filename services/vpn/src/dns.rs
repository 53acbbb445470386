//! Redirecting clients' DNS into the tunnel: queries to Qubes' virtual DNS
//! addresses (10.139.1.1, 10.139.1.2) or to any address on port 53 are sent to
//! the tunnel's DNS servers instead, and the answers are given back the address
//! the client asked. The table of outstanding redirections is bounded, per
//! client ([`PER_CLIENT`]: a client past it loses its own oldest entry) and in
//! all ([`TABLE_SIZE`]: when full, the oldest entry of the client holding the
//! most goes, the asker's own if it holds as many), so one client's flood of
//! queries cannot make another's answers lose their way back.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr};

/// Qubes' first virtual DNS server.
pub const QUBES_DNS1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 139, 1, 1));
/// Qubes' second virtual DNS server.
pub const QUBES_DNS2: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 139, 1, 2));
/// Outstanding redirections remembered.
pub const TABLE_SIZE: usize = 1024;
/// Outstanding redirections remembered per client address.
pub const PER_CLIENT: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry {
    client: IpAddr,
    client_port: u16,
    protocol: u8,
    server: IpAddr,
    asked: IpAddr,
}

/// The DNS redirection state.
pub struct DnsRedirect {
    servers: Vec<IpAddr>,
    table: VecDeque<Entry>,
}

impl DnsRedirect {
    /// Redirects to `servers` (the `DNS` line of the tunnel's configuration).
    pub fn new(servers: Vec<IpAddr>) -> Self {
        Self {
            servers,
            table: VecDeque::new(),
        }
    }

    /// The server a query from `client:client_port` to `asked` goes to; `None`
    /// if no tunnel DNS server of that address family exists (drop the query:
    /// sending it anywhere else would leak it). Records the mapping.
    pub fn redirect(
        &mut self,
        client: IpAddr,
        client_port: u16,
        protocol: u8,
        asked: IpAddr,
    ) -> Option<IpAddr> {
        let same_family = |a: &&IpAddr| a.is_ipv4() == asked.is_ipv4();
        let mut candidates = self.servers.iter().filter(same_family);
        let first = *candidates.next()?;
        let server = if asked == QUBES_DNS2 {
            candidates.next().copied().unwrap_or(first)
        } else {
            first
        };
        let entry = Entry {
            client,
            client_port,
            protocol,
            server,
            asked,
        };
        self.table.retain(|e| {
            !(e.client == client
                && e.client_port == client_port
                && e.protocol == protocol
                && e.server == server)
        });
        let mine = self.table.iter().filter(|e| e.client == client).count();
        let victim = if mine >= PER_CLIENT {
            Some(client)
        } else if self.table.len() >= TABLE_SIZE {
            Some(
                self.largest_holder()
                    .filter(|(_, n)| *n > mine)
                    .map_or(client, |(c, _)| c),
            )
        } else {
            None
        };
        if let Some(victim) = victim {
            if let Some(at) = self.table.iter().position(|e| e.client == victim) {
                self.table.remove(at);
            }
        }
        self.table.push_back(entry);
        Some(server)
    }

    /// The client with the most entries, and how many.
    fn largest_holder(&self) -> Option<(IpAddr, usize)> {
        let mut counts: alloc::collections::BTreeMap<IpAddr, usize> = Default::default();
        for e in &self.table {
            *counts.entry(e.client).or_insert(0) += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n)
    }

    /// Entries held for `client`.
    pub fn client_len(&self, client: IpAddr) -> usize {
        self.table.iter().filter(|e| e.client == client).count()
    }

    /// For an answer from `server` port 53 to `client:client_port`: the address
    /// the client originally asked, to put back as the source.
    pub fn answer_source(
        &self,
        server: IpAddr,
        client: IpAddr,
        client_port: u16,
        protocol: u8,
    ) -> Option<IpAddr> {
        self.table
            .iter()
            .rev()
            .find(|e| {
                e.server == server
                    && e.client == client
                    && e.client_port == client_port
                    && e.protocol == protocol
            })
            .map(|e| e.asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn qubes_addresses_map_to_first_and_second_server() {
        let mut d = DnsRedirect::new(vec![ip("10.64.0.1"), ip("2001:db8::53"), ip("10.64.0.2")]);
        assert_eq!(
            d.redirect(ip("10.137.0.5"), 1000, 17, QUBES_DNS1),
            Some(ip("10.64.0.1"))
        );
        assert_eq!(
            d.redirect(ip("10.137.0.5"), 1001, 17, QUBES_DNS2),
            Some(ip("10.64.0.2"))
        );
        assert_eq!(
            d.redirect(ip("10.137.0.5"), 1002, 17, ip("8.8.8.8")),
            Some(ip("10.64.0.1"))
        );
        assert_eq!(
            d.redirect(ip("fd00::5"), 1003, 17, ip("2001:4860::8888")),
            Some(ip("2001:db8::53"))
        );
        assert_eq!(
            d.answer_source(ip("10.64.0.2"), ip("10.137.0.5"), 1001, 17),
            Some(QUBES_DNS2)
        );
        assert_eq!(
            d.answer_source(ip("10.64.0.1"), ip("10.137.0.5"), 1002, 17),
            Some(ip("8.8.8.8"))
        );
        assert_eq!(
            d.answer_source(ip("10.64.0.1"), ip("10.137.0.5"), 1002, 6),
            None
        );
        assert_eq!(
            d.answer_source(ip("10.64.0.1"), ip("10.137.0.6"), 1002, 17),
            None
        );
    }

    #[test]
    fn no_server_of_the_family_means_drop() {
        let mut d = DnsRedirect::new(vec![ip("10.64.0.1")]);
        assert_eq!(
            d.redirect(ip("fd00::5"), 1, 17, ip("2001:4860::8888")),
            None
        );
        let mut none = DnsRedirect::new(vec![]);
        assert_eq!(none.redirect(ip("10.0.0.1"), 1, 17, QUBES_DNS1), None);
    }

    #[test]
    fn table_is_bounded() {
        let mut d = DnsRedirect::new(vec![ip("10.64.0.1")]);
        for port in 0..(PER_CLIENT as u16 + 10) {
            d.redirect(ip("10.0.0.1"), port, 17, QUBES_DNS1);
        }
        assert_eq!(d.table.len(), PER_CLIENT);
        assert_eq!(
            d.answer_source(ip("10.64.0.1"), ip("10.0.0.1"), 0, 17),
            None
        );
        assert_eq!(
            d.answer_source(ip("10.64.0.1"), ip("10.0.0.1"), PER_CLIENT as u16 + 9, 17),
            Some(QUBES_DNS1)
        );
    }

    #[test]
    fn a_flooding_client_cannot_evict_another_clients_queries() {
        let mut d = DnsRedirect::new(vec![ip("10.64.0.1")]);
        for port in 0..20u16 {
            d.redirect(ip("10.0.0.1"), port, 17, QUBES_DNS1);
        }
        // Six others, each past its own limit: the table fills.
        for c in 2..8u8 {
            for port in 0..(PER_CLIENT as u16 + 40) {
                d.redirect(IpAddr::from([10, 0, 0, c]), port, 17, QUBES_DNS2);
            }
        }
        assert_eq!(d.table.len(), TABLE_SIZE);
        assert_eq!(d.client_len(ip("10.0.0.1")), 20);
        for port in 0..20u16 {
            assert_eq!(
                d.answer_source(ip("10.64.0.1"), ip("10.0.0.1"), port, 17),
                Some(QUBES_DNS1)
            );
        }
        for c in 2..8u8 {
            assert!(d.client_len(IpAddr::from([10, 0, 0, c])) <= PER_CLIENT);
        }
    }
}
