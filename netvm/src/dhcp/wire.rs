//! The DHCP message (RFC 2131 section 2, options RFC 2132) as a zero-copy
//! view over a buffer: [`Packet`] reads and writes the fixed fields in
//! place, [`Options`] walks the options without copying them, [`Reply`]
//! is what a client takes from a server's OFFER, ACK or NAK (every length
//! checked), and [`Request`] writes a client's DISCOVER or REQUEST.
//!
//! ```text
//!  0      op  htype  hlen  hops
//!  4      xid
//!  8      secs        flags
//! 12      ciaddr    16 yiaddr    20 siaddr    24 giaddr
//! 28      chaddr (16)   44 sname (64)   108 file (128)
//! 236     magic cookie 99.130.83.99
//! 240     options: code, length, data ... end (255)
//! ```

use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// The servers' UDP port.
pub const SERVER_PORT: u16 = 67;
/// The clients' UDP port.
pub const CLIENT_PORT: u16 = 68;
/// The four bytes after `file` that make a BOOTP message a DHCP one
/// (RFC 2131 section 3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The fixed part and the magic cookie: the shortest DHCP message.
pub const MIN_LEN: usize = 240;
/// The smallest BOOTP message relays must accept (RFC 1542 section
/// 2.1): requests are padded to it.
pub const BOOTP_MIN_LEN: usize = 300;
/// `op` of a client's message.
pub const BOOTREQUEST: u8 = 1;
/// `op` of a server's message.
pub const BOOTREPLY: u8 = 2;
/// `htype` of Ethernet (RFC 1700, ARP hardware type 1).
pub const HTYPE_ETHERNET: u8 = 1;
/// The broadcast bit of `flags`.
pub const FLAG_BROADCAST: u16 = 0x8000;
/// Most resolvers a [`Reply`] keeps (glibc's `MAXNS`).
pub const MAX_DNS_SERVERS: usize = 3;

/// Byte ranges of the fixed fields.
mod field {
    use core::ops::Range;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const SNAME: Range<usize> = 44..108;
    pub const FILE: Range<usize> = 108..236;
    pub const COOKIE: Range<usize> = 236..240;
    pub const OPTIONS: usize = 240;
}

/// Option codes (RFC 2132).
pub mod option {
    /// Padding, one byte without a length.
    pub const PAD: u8 = 0;
    /// Subnet mask (3.3), 4 bytes.
    pub const SUBNET_MASK: u8 = 1;
    /// Routers (3.5), a list of addresses.
    pub const ROUTER: u8 = 3;
    /// Domain name servers (3.8), a list of addresses.
    pub const DNS: u8 = 6;
    /// Requested IP address (9.1), 4 bytes.
    pub const REQUESTED_IP: u8 = 50;
    /// Lease time in seconds (9.2), 4 bytes.
    pub const LEASE_TIME: u8 = 51;
    /// Option overload (9.3): 1 `file`, 2 `sname`, 3 both hold options.
    pub const OVERLOAD: u8 = 52;
    /// DHCP message type (9.6), 1 byte.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier (9.7), 4 bytes.
    pub const SERVER_ID: u8 = 54;
    /// Parameter request list (9.8).
    pub const PARAMETER_LIST: u8 = 55;
    /// Maximum DHCP message size (9.10), 2 bytes.
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    /// Renewal time T1 in seconds (9.11), 4 bytes.
    pub const RENEWAL_TIME: u8 = 58;
    /// Rebinding time T2 in seconds (9.12), 4 bytes.
    pub const REBINDING_TIME: u8 = 59;
    /// Client identifier (9.14).
    pub const CLIENT_ID: u8 = 61;
    /// The end of the options, one byte without a length.
    pub const END: u8 = 255;
}

/// The DHCP message types (option 53, RFC 2132 9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// Client looks for servers.
    Discover,
    /// Server offers an address.
    Offer,
    /// Client asks for (or renews) an address.
    Request,
    /// Client says the address is in use.
    Decline,
    /// Server grants the address.
    Ack,
    /// Server refuses the request.
    Nak,
    /// Client gives the address back.
    Release,
    /// Client asks for parameters only.
    Inform,
}

impl MessageType {
    /// The type of option value `value`, if it is one.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }

    /// Its option value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Discover => 1,
            Self::Offer => 2,
            Self::Request => 3,
            Self::Decline => 4,
            Self::Ack => 5,
            Self::Nak => 6,
            Self::Release => 7,
            Self::Inform => 8,
        }
    }
}

/// Why bytes are not a DHCP message a client can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the fixed part and the magic cookie.
    Truncated,
    /// The magic cookie is not 99.130.83.99 (a plain BOOTP message).
    BadCookie,
    /// An option's length runs past the end of its field.
    OptionOverrun,
    /// A known option with a length it cannot have.
    BadOptionLength {
        /// The option.
        code: u8,
        /// Its length.
        len: usize,
    },
    /// An option overload value other than 1, 2 or 3.
    BadOverload(u8),
    /// No message type option.
    NoMessageType,
    /// A message type RFC 2132 does not define.
    UnknownMessageType(u8),
    /// `op` is not BOOTREPLY.
    NotReply,
    /// `htype`/`hlen` are not Ethernet's.
    NotEthernet,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => write!(f, "shorter than {MIN_LEN} bytes"),
            Self::BadCookie => write!(f, "no DHCP magic cookie"),
            Self::OptionOverrun => write!(f, "an option runs past the end"),
            Self::BadOptionLength { code, len } => {
                write!(f, "option {code} has length {len}")
            }
            Self::BadOverload(v) => write!(f, "option overload {v}"),
            Self::NoMessageType => write!(f, "no message type"),
            Self::UnknownMessageType(t) => write!(f, "message type {t}"),
            Self::NotReply => write!(f, "not a BOOTREPLY"),
            Self::NotEthernet => write!(f, "hardware type is not Ethernet"),
        }
    }
}

/// One option as it lies in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpOption<'a> {
    /// Its code.
    pub code: u8,
    /// Its value (without code and length).
    pub data: &'a [u8],
}

/// The options of one field (the options area, or an overloaded `file` or
/// `sname`), in order: pads skipped, ending at the end option or the end
/// of the field; an option whose length runs past the field yields
/// [`Error::OptionOverrun`] and ends the walk.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    data: &'a [u8],
}

impl<'a> Options<'a> {
    /// The options in `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<DhcpOption<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (&code, rest) = self.data.split_first()?;
            match code {
                option::PAD => self.data = rest,
                option::END => {
                    self.data = &[];
                    return None;
                }
                _ => {
                    let Some((&len, rest)) = rest.split_first() else {
                        self.data = &[];
                        return Some(Err(Error::OptionOverrun));
                    };
                    let len = usize::from(len);
                    let Some(data) = rest.get(..len) else {
                        self.data = &[];
                        return Some(Err(Error::OptionOverrun));
                    };
                    self.data = &rest[len..];
                    return Some(Ok(DhcpOption { code, data }));
                }
            }
        }
    }
}

/// A DHCP message in a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn addr(bytes: &[u8]) -> Ipv4Addr {
    let mut octets = [0; 4];
    octets.copy_from_slice(&bytes[..4]);
    Ipv4Addr::from(octets)
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer`, not checked: the getters panic if it is shorter
    /// than [`MIN_LEN`]. Use [`Packet::new_checked`] on received bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// A view of `buffer` after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Whether the buffer holds the fixed part and the magic cookie.
    pub fn check_len(&self) -> Result<(), Error> {
        let data = self.buffer.as_ref();
        if data.len() < MIN_LEN {
            return Err(Error::Truncated);
        }
        if data[field::COOKIE] != MAGIC_COOKIE {
            return Err(Error::BadCookie);
        }
        Ok(())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// `op`: [`BOOTREQUEST`] or [`BOOTREPLY`].
    pub fn op(&self) -> u8 {
        self.data()[field::OP]
    }

    /// `htype`: the hardware address type.
    pub fn htype(&self) -> u8 {
        self.data()[field::HTYPE]
    }

    /// `hlen`: the hardware address length.
    pub fn hlen(&self) -> u8 {
        self.data()[field::HLEN]
    }

    /// `hops`: relay hops.
    pub fn hops(&self) -> u8 {
        self.data()[field::HOPS]
    }

    /// `xid`: the transaction id.
    pub fn xid(&self) -> u32 {
        let b = &self.data()[field::XID];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// `secs`: seconds since the client began.
    pub fn secs(&self) -> u16 {
        let b = &self.data()[field::SECS];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// `flags` (the broadcast bit is [`FLAG_BROADCAST`]).
    pub fn flags(&self) -> u16 {
        let b = &self.data()[field::FLAGS];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// `ciaddr`: the client's address, when it has one.
    pub fn ciaddr(&self) -> Ipv4Addr {
        addr(&self.data()[field::CIADDR])
    }

    /// `yiaddr`: the address offered or granted.
    pub fn yiaddr(&self) -> Ipv4Addr {
        addr(&self.data()[field::YIADDR])
    }

    /// `siaddr`: the next server (boot), not the DHCP server.
    pub fn siaddr(&self) -> Ipv4Addr {
        addr(&self.data()[field::SIADDR])
    }

    /// `giaddr`: the relay agent.
    pub fn giaddr(&self) -> Ipv4Addr {
        addr(&self.data()[field::GIADDR])
    }

    /// The first six bytes of `chaddr`: an Ethernet client's MAC.
    pub fn client_mac(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.data()[field::CHADDR][..6]);
        mac
    }

    /// The options area (after the magic cookie).
    pub fn options(&self) -> Options<'_> {
        Options::new(&self.data()[field::OPTIONS..])
    }

    /// Every option: the options area, then `file` and `sname` when the
    /// overload option says they hold options (RFC 2132 9.3), in that
    /// order. Errors: an option overrunning its field, a bad overload.
    pub fn all_options(&self) -> Result<Vec<DhcpOption<'_>>, Error> {
        let mut all = Vec::new();
        let mut overload = 0;
        for opt in self.options() {
            let opt = opt?;
            if opt.code == option::OVERLOAD {
                overload = match opt.data {
                    [v @ 1..=3] => *v,
                    [v] => return Err(Error::BadOverload(*v)),
                    _ => {
                        return Err(Error::BadOptionLength {
                            code: opt.code,
                            len: opt.data.len(),
                        })
                    }
                };
            }
            all.push(opt);
        }
        let data = self.data();
        for (bit, range) in [(1, field::FILE), (2, field::SNAME)] {
            if overload & bit != 0 {
                for opt in Options::new(&data[range]) {
                    all.push(opt?);
                }
            }
        }
        Ok(all)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn data_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Set `op`.
    pub fn set_op(&mut self, value: u8) {
        self.data_mut()[field::OP] = value;
    }

    /// Set `htype`.
    pub fn set_htype(&mut self, value: u8) {
        self.data_mut()[field::HTYPE] = value;
    }

    /// Set `hlen`.
    pub fn set_hlen(&mut self, value: u8) {
        self.data_mut()[field::HLEN] = value;
    }

    /// Set `hops`.
    pub fn set_hops(&mut self, value: u8) {
        self.data_mut()[field::HOPS] = value;
    }

    /// Set `xid`.
    pub fn set_xid(&mut self, value: u32) {
        self.data_mut()[field::XID].copy_from_slice(&value.to_be_bytes());
    }

    /// Set `secs`.
    pub fn set_secs(&mut self, value: u16) {
        self.data_mut()[field::SECS].copy_from_slice(&value.to_be_bytes());
    }

    /// Set `flags`.
    pub fn set_flags(&mut self, value: u16) {
        self.data_mut()[field::FLAGS].copy_from_slice(&value.to_be_bytes());
    }

    /// Set `ciaddr`.
    pub fn set_ciaddr(&mut self, value: Ipv4Addr) {
        self.data_mut()[field::CIADDR].copy_from_slice(&value.octets());
    }

    /// Set `yiaddr`.
    pub fn set_yiaddr(&mut self, value: Ipv4Addr) {
        self.data_mut()[field::YIADDR].copy_from_slice(&value.octets());
    }

    /// Set `siaddr`.
    pub fn set_siaddr(&mut self, value: Ipv4Addr) {
        self.data_mut()[field::SIADDR].copy_from_slice(&value.octets());
    }

    /// Set `giaddr`.
    pub fn set_giaddr(&mut self, value: Ipv4Addr) {
        self.data_mut()[field::GIADDR].copy_from_slice(&value.octets());
    }

    /// Set `chaddr` to an Ethernet MAC (the other ten bytes zero).
    pub fn set_client_mac(&mut self, mac: [u8; 6]) {
        let chaddr = &mut self.data_mut()[field::CHADDR];
        chaddr.fill(0);
        chaddr[..6].copy_from_slice(&mac);
    }

    /// Zero `sname` and `file`, and write the magic cookie.
    pub fn clear_names_and_set_cookie(&mut self) {
        let data = self.data_mut();
        data[field::SNAME].fill(0);
        data[field::FILE].fill(0);
        data[field::COOKIE].copy_from_slice(&MAGIC_COOKIE);
    }

    /// The options area, to write.
    pub fn options_mut(&mut self) -> &mut [u8] {
        &mut self.data_mut()[field::OPTIONS..]
    }
}

/// What a client takes from a server's message, every option length
/// checked (the first of a repeated option counts; RFC 3396 long options
/// are not joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The message type.
    pub message_type: MessageType,
    /// The transaction id.
    pub xid: u32,
    /// The client MAC it is for.
    pub client_mac: [u8; 6],
    /// The address offered or granted.
    pub your_addr: Ipv4Addr,
    /// The server identifier (option 54).
    pub server_id: Option<Ipv4Addr>,
    /// The subnet mask (option 1).
    pub subnet_mask: Option<Ipv4Addr>,
    /// The first router (option 3).
    pub router: Option<Ipv4Addr>,
    /// The resolvers (option 6), at most [`MAX_DNS_SERVERS`].
    pub dns: Vec<Ipv4Addr>,
    /// The lease time in seconds (option 51; `u32::MAX` is infinite).
    pub lease_time: Option<u32>,
    /// T1 in seconds (option 58).
    pub renewal_time: Option<u32>,
    /// T2 in seconds (option 59).
    pub rebinding_time: Option<u32>,
}

fn exact<const N: usize>(opt: &DhcpOption<'_>) -> Result<[u8; N], Error> {
    opt.data.try_into().map_err(|_| Error::BadOptionLength {
        code: opt.code,
        len: opt.data.len(),
    })
}

fn addresses<'a>(opt: &DhcpOption<'a>) -> Result<impl Iterator<Item = Ipv4Addr> + 'a, Error> {
    let data: &'a [u8] = opt.data;
    if data.is_empty() || !data.len().is_multiple_of(4) {
        return Err(Error::BadOptionLength {
            code: opt.code,
            len: data.len(),
        });
    }
    Ok(data.chunks_exact(4).map(addr))
}

impl Reply {
    /// Read a server's message: a BOOTREPLY for Ethernet with a known
    /// message type, each known option of the right length.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Reply, Error> {
        packet.check_len()?;
        if packet.op() != BOOTREPLY {
            return Err(Error::NotReply);
        }
        if packet.htype() != HTYPE_ETHERNET || packet.hlen() != 6 {
            return Err(Error::NotEthernet);
        }
        let mut message_type = None;
        let mut reply = Reply {
            message_type: MessageType::Nak,
            xid: packet.xid(),
            client_mac: packet.client_mac(),
            your_addr: packet.yiaddr(),
            server_id: None,
            subnet_mask: None,
            router: None,
            dns: Vec::new(),
            lease_time: None,
            renewal_time: None,
            rebinding_time: None,
        };
        let mut seen = [false; 256];
        for opt in packet.all_options()? {
            let first = !core::mem::replace(&mut seen[usize::from(opt.code)], true);
            if !first {
                continue;
            }
            match opt.code {
                option::MESSAGE_TYPE => {
                    let [t] = exact::<1>(&opt)?;
                    message_type =
                        Some(MessageType::from_u8(t).ok_or(Error::UnknownMessageType(t))?);
                }
                option::SERVER_ID => reply.server_id = Some(Ipv4Addr::from(exact::<4>(&opt)?)),
                option::SUBNET_MASK => reply.subnet_mask = Some(Ipv4Addr::from(exact::<4>(&opt)?)),
                option::ROUTER => reply.router = addresses(&opt)?.next(),
                option::DNS => reply.dns = addresses(&opt)?.take(MAX_DNS_SERVERS).collect(),
                option::LEASE_TIME => reply.lease_time = Some(u32::from_be_bytes(exact(&opt)?)),
                option::RENEWAL_TIME => reply.renewal_time = Some(u32::from_be_bytes(exact(&opt)?)),
                option::REBINDING_TIME => {
                    reply.rebinding_time = Some(u32::from_be_bytes(exact(&opt)?))
                }
                _ => {}
            }
        }
        reply.message_type = message_type.ok_or(Error::NoMessageType)?;
        Ok(reply)
    }
}

/// A client's message: DISCOVER or REQUEST (RFC 2131 table 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// DISCOVER or REQUEST (any type is written as given).
    pub message_type: MessageType,
    /// The transaction id.
    pub xid: u32,
    /// Seconds since the client began acquiring or renewing.
    pub secs: u16,
    /// The client's MAC (`chaddr`, and the client identifier).
    pub client_mac: [u8; 6],
    /// `ciaddr`: the leased address when renewing or rebinding, else 0.
    pub client_addr: Ipv4Addr,
    /// Option 50, when selecting an offer.
    pub requested_addr: Option<Ipv4Addr>,
    /// Option 54, when selecting an offer.
    pub server_id: Option<Ipv4Addr>,
}

/// The parameters a client asks for (option 55): mask, router, DNS, lease
/// time, server id, T1, T2.
const PARAMETERS: [u8; 7] = [
    option::SUBNET_MASK,
    option::ROUTER,
    option::DNS,
    option::LEASE_TIME,
    option::SERVER_ID,
    option::RENEWAL_TIME,
    option::REBINDING_TIME,
];

/// The largest message the client accepts (option 57): an Ethernet MTU's
/// IPv4 datagram less the IP and UDP headers.
pub const MAX_MESSAGE_SIZE: u16 = 1500 - 20 - 8;

impl Request {
    /// The message, padded to [`BOOTP_MIN_LEN`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut options: Vec<u8> = Vec::new();
        options.extend_from_slice(&[option::MESSAGE_TYPE, 1, self.message_type.to_u8()]);
        options.extend_from_slice(&[option::CLIENT_ID, 7, HTYPE_ETHERNET]);
        options.extend_from_slice(&self.client_mac);
        if let Some(a) = self.requested_addr {
            options.extend_from_slice(&[option::REQUESTED_IP, 4]);
            options.extend_from_slice(&a.octets());
        }
        if let Some(a) = self.server_id {
            options.extend_from_slice(&[option::SERVER_ID, 4]);
            options.extend_from_slice(&a.octets());
        }
        options.extend_from_slice(&[option::MAX_MESSAGE_SIZE, 2]);
        options.extend_from_slice(&MAX_MESSAGE_SIZE.to_be_bytes());
        options.extend_from_slice(&[option::PARAMETER_LIST, PARAMETERS.len() as u8]);
        options.extend_from_slice(&PARAMETERS);
        options.push(option::END);
        let len = (MIN_LEN + options.len()).max(BOOTP_MIN_LEN);
        let mut packet = Packet::new_unchecked(alloc::vec![0u8; len]);
        packet.set_op(BOOTREQUEST);
        packet.set_htype(HTYPE_ETHERNET);
        packet.set_hlen(6);
        packet.set_hops(0);
        packet.set_xid(self.xid);
        packet.set_secs(self.secs);
        packet.set_flags(0);
        packet.set_ciaddr(self.client_addr);
        packet.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        packet.set_siaddr(Ipv4Addr::UNSPECIFIED);
        packet.set_giaddr(Ipv4Addr::UNSPECIFIED);
        packet.set_client_mac(self.client_mac);
        packet.clear_names_and_set_cookie();
        packet.options_mut()[..options.len()].copy_from_slice(&options);
        packet.into_inner()
    }
}
