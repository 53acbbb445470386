//! netbridge's frame handler: a learning switch between the uplink
//! (switch port 0) and the clients (switch port = the client's id, which
//! the runtime never reuses, so no renumbering when a vif goes).
//!
//! The runtime binds each client to its vif's `mac` and `ip` before a
//! frame reaches us (`netvm::binding`); the switch pins a bound client's
//! MAC to its port, so nobody else (the uplink's side included) can take
//! it over, ages what it learnt and bounds it per port
//! ([`crate::switch`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use netvm::{ClientId, ClientInfo, Key, Link, Packet, Service, Stats, To, Transmit};

use crate::switch::{Forward, Switch};

/// The bridge.
#[derive(Default)]
pub struct Bridge {
    switch: Switch,
    /// Frames sent to one known port.
    pub forwarded: u64,
    /// Frames flooded (broadcast, multicast, unknown destination).
    pub flooded: u64,
    /// Frames dropped (too short, or back where they came from).
    pub dropped: u64,
    /// Frames dropped because their source MAC belongs to another port's
    /// client (pinned there).
    pub stolen: u64,
    /// The counters at the last report (nothing new: no report).
    reported: (u64, u64),
}

fn port(from: Link) -> usize {
    match from {
        Link::Uplink => 0,
        Link::Client(ClientId(n)) => n as usize,
    }
}

impl Service for Bridge {
    fn client_up(&mut self, _now_ns: u64, client: &ClientInfo) {
        if let Key::Valid(mac) = &client.mac {
            self.switch.pin(client.id.0 as usize, mac.0);
        }
    }

    fn client_down(&mut self, _now_ns: u64, id: ClientId) {
        self.switch.forget_port(id.0 as usize);
    }

    fn tick(&mut self, now_ns: u64, _out: &mut Vec<Transmit>) {
        self.switch.expire(now_ns);
    }

    fn handle(&mut self, now_ns: u64, from: Link, packet: Packet, out: &mut Vec<Transmit>) {
        match self.switch.route(now_ns, port(from), &packet.data) {
            Forward::One(0) => {
                self.forwarded += 1;
                out.push(Transmit {
                    to: To::Uplink,
                    packet,
                });
            }
            Forward::One(n) => {
                self.forwarded += 1;
                out.push(Transmit {
                    to: To::Client(ClientId(n as u32)),
                    packet,
                });
            }
            Forward::Flood => {
                self.flooded += 1;
                let except = match from {
                    Link::Uplink => None,
                    Link::Client(id) => {
                        out.push(Transmit {
                            to: To::Uplink,
                            packet: packet.clone(),
                        });
                        Some(id)
                    }
                };
                out.push(Transmit {
                    to: To::Clients { except },
                    packet,
                });
            }
            Forward::Drop => self.dropped += 1,
            Forward::Stolen => self.stolen += 1,
        }
    }

    fn report(&mut self, stats: &Stats) -> Option<String> {
        if (self.forwarded, self.flooded + self.stolen + stats.spoofed) == self.reported {
            return None;
        }
        self.reported = (self.forwarded, self.flooded + self.stolen + stats.spoofed);
        Some(format!(
            "stats: vifs={} macs={} forwarded={} flooded={} dropped={} spoofed={} stolen={} aged={} evicted={} uplink-rx-dropped={} uplink-tx-dropped={} uplink-full={} client-tx-dropped={} vif-rx-dropped={} vif-errors={} client-held={} client-full={} rounds={}",
            stats.clients,
            self.switch.len(),
            self.forwarded,
            self.flooded,
            self.dropped,
            stats.spoofed,
            self.stolen,
            self.switch.aged,
            self.switch.evicted,
            stats.uplink_rx_dropped,
            stats.uplink_tx_dropped,
            stats.uplink_full,
            stats.client_tx_dropped,
            stats.vif_rx_dropped,
            stats.vif_errors,
            stats.client_held,
            stats.client_full,
            stats.rounds
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Packet {
        let mut data = alloc::vec![0u8; 60];
        data[0..6].copy_from_slice(&dst);
        data[6..12].copy_from_slice(&src);
        Packet {
            data,
            offload: Default::default(),
        }
    }

    #[test]
    fn learns_floods_and_forgets_a_client_that_went() {
        let mut b = Bridge::default();
        let a = [0, 0x16, 0x3e, 0, 0, 1];
        let up = [0, 0x16, 0x3e, 0, 0, 2];
        let mut out = Vec::new();
        // A broadcast from client 1 goes up and to the other clients.
        b.handle(0, Link::Client(ClientId(1)), frame([0xff; 6], a), &mut out);
        let tos: Vec<To> = out.drain(..).map(|t| t.to).collect();
        assert_eq!(
            tos,
            [
                To::Uplink,
                To::Clients {
                    except: Some(ClientId(1))
                }
            ]
        );
        // The answer from the uplink goes to client 1 only.
        b.handle(0, Link::Uplink, frame(a, up), &mut out);
        assert_eq!(out.pop().map(|t| t.to), Some(To::Client(ClientId(1))));
        // Client 2 to the uplink's MAC: up, once learnt.
        b.handle(0, Link::Client(ClientId(2)), frame(up, [2; 6]), &mut out);
        assert_eq!(out.pop().map(|t| t.to), Some(To::Uplink));
        // Client 1 went: frames to its MAC are flooded, not sent to it.
        b.client_down(0, ClientId(1));
        b.handle(0, Link::Uplink, frame(a, up), &mut out);
        assert_eq!(out.pop().map(|t| t.to), Some(To::Clients { except: None }));
    }

    #[test]
    fn a_bound_client_keeps_its_mac() {
        let mut b = Bridge::default();
        let a = [0, 0x16, 0x3e, 0, 0, 1];
        let up = [0, 0x16, 0x3e, 0, 0, 2];
        b.client_up(
            0,
            &ClientInfo {
                id: ClientId(1),
                path: String::new(),
                frontend_id: 3,
                mac: Key::Valid(
                    netvm::identity::parse_mac(b"00:16:3e:00:00:01")
                        .valid()
                        .copied()
                        .unwrap(),
                ),
                ip: Key::Absent,
                frontend: None,
            },
        );
        let mut out = Vec::new();
        // Someone behind the uplink claims client 1's MAC: dropped, and
        // frames for it still go to client 1.
        b.handle(0, Link::Uplink, frame([0xff; 6], a), &mut out);
        assert!(out.is_empty());
        assert_eq!(b.stolen, 1);
        b.handle(0, Link::Client(ClientId(2)), frame(a, [2; 6]), &mut out);
        assert_eq!(out.pop().map(|t| t.to), Some(To::Client(ClientId(1))));
        b.handle(0, Link::Uplink, frame(a, up), &mut out);
        assert_eq!(out.pop().map(|t| t.to), Some(To::Client(ClientId(1))));
        let line = b.report(&Stats::default()).unwrap();
        assert!(line.contains("stolen=1"), "{line}");
    }
}
