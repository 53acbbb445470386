//! The VPN gateway's Ethernet links: `vpn::link`, shared with the VM image
//! (it lived here before the VM existed).

pub use vpn::link::*;
