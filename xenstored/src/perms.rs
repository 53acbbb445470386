//! Node permissions (`docs/misc/xenstore.txt`, `XS_GET_PERMS` /
//! `XS_SET_PERMS`): a list whose first entry names the owner and the access
//! of every domain not listed; later entries grant one domain `r`, `w`,
//! `b` (both) or `n` (none). Owners, their targets (`XS_SET_TARGET`) and
//! privileged domains get everything.

use crate::errno::Errno;
use crate::path::parse_domid;
use alloc::vec::Vec;
use core::fmt::Write as _;

/// Access bits (`XS_PERM_*` of C xenstored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access(u8);

impl Access {
    /// No access.
    pub const NONE: Access = Access(0);
    /// May read the value, list children, get permissions, see events.
    pub const READ: Access = Access(1);
    /// May write, create children, remove.
    pub const WRITE: Access = Access(2);
    /// Read and write.
    pub const BOTH: Access = Access(3);
    /// Owner rights: may set permissions.
    pub const OWNER: Access = Access(8);
    /// Everything.
    pub const ALL: Access = Access(11);

    /// Whether every bit of `need` is granted.
    pub const fn contains(self, need: Access) -> bool {
        self.0 & need.0 == need.0
    }

    /// Whether any bit of `need` is granted.
    pub const fn intersects(self, need: Access) -> bool {
        self.0 & need.0 != 0
    }

    /// The union of two sets.
    pub const fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    fn letter(self) -> char {
        match self.0 & 3 {
            1 => 'r',
            2 => 'w',
            3 => 'b',
            _ => 'n',
        }
    }
}

/// One entry of a permission list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: u16,
    /// What it grants (read and write bits only).
    pub access: Access,
}

/// Who asks: the requesting domain as the permission check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    /// The requesting domain.
    pub domid: u16,
    /// The domain it acts for (`XS_SET_TARGET`), if any.
    pub target: Option<u16>,
    /// dom0 or the configured privileged domain: everything allowed, no
    /// quotas.
    pub privileged: bool,
}

impl Who {
    fn is(&self, domid: u16) -> bool {
        self.domid == domid || self.target == Some(domid)
    }
}

/// A node's permission list; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// `n<owner>`: the owner only.
    pub fn owner_only(owner: u16) -> Self {
        Perms(alloc::vec![Perm {
            domid: owner,
            access: Access::NONE,
        }])
    }

    /// Parse the permission strings of `XS_SET_PERMS` (at least one).
    pub fn parse<'a>(strings: impl Iterator<Item = &'a [u8]>) -> Result<Self, Errno> {
        let mut list = Vec::new();
        for s in strings {
            let (&kind, domid) = s.split_first().ok_or(Errno::Einval)?;
            let access = match kind {
                b'r' => Access::READ,
                b'w' => Access::WRITE,
                b'b' => Access::BOTH,
                b'n' => Access::NONE,
                _ => return Err(Errno::Einval),
            };
            list.push(Perm {
                domid: parse_domid(domid)?,
                access,
            });
        }
        if list.is_empty() {
            return Err(Errno::Einval);
        }
        Ok(Perms(list))
    }

    /// The entries.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The owning domain (first entry).
    pub fn owner(&self) -> u16 {
        self.0.first().map_or(0, |p| p.domid)
    }

    /// Make `owner` the owner, keeping the default access and the list
    /// (what a node created by an unprivileged domain inherits).
    pub fn set_owner(&mut self, owner: u16) {
        if let Some(first) = self.0.first_mut() {
            first.domid = owner;
        }
    }

    /// The access `who` has (`perm_for_conn` of C xenstored).
    pub fn access_for(&self, who: &Who) -> Access {
        let Some(first) = self.0.first() else {
            return Access::NONE;
        };
        if who.privileged || who.is(first.domid) {
            return Access::ALL;
        }
        self.0[1..]
            .iter()
            .find(|p| who.is(p.domid))
            .map_or(first.access, |p| p.access)
    }

    /// The wire form: each entry as `<letter><domid>` and a NUL.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = alloc::string::String::new();
        for p in &self.0 {
            let _ = write!(out, "{}{}\0", p.access.letter(), p.domid);
        }
        out.into_bytes()
    }

    /// Forget a domain that is gone, so a new domain reusing its id
    /// inherits nothing: an owner entry passes to `heir`, other entries
    /// for it are dropped. Returns whether anything changed.
    pub fn forget_domain(&mut self, domid: u16, heir: u16) -> bool {
        let before = self.0.len();
        let mut changed = false;
        if let Some(first) = self.0.first_mut() {
            if first.domid == domid {
                first.domid = heir;
                changed = true;
            }
        }
        let mut index = 0;
        self.0.retain(|p| {
            index += 1;
            index == 1 || p.domid != domid
        });
        changed || self.0.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(domid: u16) -> Who {
        Who {
            domid,
            target: None,
            privileged: domid == 0,
        }
    }

    fn perms(s: &str) -> Perms {
        Perms::parse(s.split(' ').map(str::as_bytes)).unwrap()
    }

    #[test]
    fn the_permission_matrix() {
        // owner 1, default read, 2 none, 3 write, 4 both.
        let p = perms("r1 n2 w3 b4");
        let cases = [
            (0, Access::ALL),
            (1, Access::ALL),
            (2, Access::NONE),
            (3, Access::WRITE),
            (4, Access::BOTH),
            (5, Access::READ),
        ];
        for (domid, want) in cases {
            assert_eq!(p.access_for(&who(domid)), want, "dom{domid}");
        }
        let p = perms("n1");
        assert_eq!(p.access_for(&who(5)), Access::NONE);
        // A target acts as the domain it targets, for owner and entries.
        let stub = Who {
            domid: 9,
            target: Some(1),
            privileged: false,
        };
        assert_eq!(p.access_for(&stub), Access::ALL);
        let stub = Who {
            domid: 9,
            target: Some(3),
            privileged: false,
        };
        assert_eq!(perms("n1 w3").access_for(&stub), Access::WRITE);
        // The first matching entry wins.
        assert_eq!(perms("n1 r5 w5").access_for(&who(5)), Access::READ);
        // A configured privileged domain gets everything.
        let priv7 = Who {
            domid: 7,
            target: None,
            privileged: true,
        };
        assert_eq!(p.access_for(&priv7), Access::ALL);
    }

    #[test]
    fn wire_round_trip_and_rejects() {
        let p = perms("b0 r5 n65535 w3");
        assert_eq!(p.to_wire(), b"b0\0r5\0n65535\0w3\0");
        for bad in ["x1", "r", "r-1", "r65536", "r1x", ""] {
            assert_eq!(
                Perms::parse(core::iter::once(bad.as_bytes())),
                Err(Errno::Einval),
                "{bad}"
            );
        }
        assert_eq!(Perms::parse(core::iter::empty()), Err(Errno::Einval));
    }

    #[test]
    fn a_gone_domain_is_forgotten() {
        let mut p = perms("r5 b5 w3 n5");
        assert!(p.forget_domain(5, 0));
        assert_eq!(p, perms("r0 w3"));
        assert!(!p.forget_domain(5, 0));
    }
}
