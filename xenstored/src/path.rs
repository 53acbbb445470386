//! Paths as `docs/misc/xenstore.txt` defines them: `/`-separated, starting
//! with `/` (or relative to the caller's home `/local/domain/<domid>`),
//! characters `[A-Za-z0-9-/_@]`, no `//`, no trailing `/` except the root,
//! and bounded length; special watch paths start with `@`.

use crate::errno::Errno;
use alloc::format;
use alloc::string::String;
use xen::abi::xs_wire::XENSTORE_ABS_PATH_MAX;

/// The prefix of every domain's home.
pub const LOCAL_DOMAIN: &str = "/local/domain/";

/// The special path of the event fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special path of the event fired when a domain is released, shut
/// down or destroyed.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// `/local/domain/<domid>`: a domain's home, against which its relative
/// paths resolve.
pub fn domain_path(domid: u16) -> String {
    format!("{LOCAL_DOMAIN}{domid}")
}

/// Whether every byte is one xenstored accepts in a path.
pub fn valid_chars(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// How far the `/local/domain/<domid>/` prefix of `path` reaches (0 if it
/// has none): the path length limit counts only what follows it, as C
/// xenstored's does.
pub fn local_offset(path: &str) -> usize {
    let Some(rest) = path.strip_prefix(LOCAL_DOMAIN) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=5).contains(&digits) && rest.as_bytes().get(digits) == Some(&b'/') {
        LOCAL_DOMAIN.len() + digits + 1
    } else {
        0
    }
}

/// A path a request named, made absolute and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The absolute path (or the special `@...` name).
    pub path: String,
    /// How many leading bytes to cut from an absolute path to give it back
    /// in the form the client used (the home and its `/` for a relative
    /// path, else 0).
    pub prefix_len: usize,
}

impl Resolved {
    /// Whether this is a special (`@...`) path.
    pub fn is_special(&self) -> bool {
        self.path.starts_with('@')
    }
}

/// Check `raw` and make it absolute for domain `domid`. `allow_special`
/// admits `@...` names (watches, permissions); `path_max` bounds the length
/// after any `/local/domain/<domid>/` prefix.
pub fn canonicalize(
    raw: &[u8],
    domid: u16,
    allow_special: bool,
    path_max: usize,
) -> Result<Resolved, Errno> {
    if raw.is_empty() || !valid_chars(raw) {
        return Err(Errno::Einval);
    }
    // valid_chars admits ASCII only, so this cannot fail.
    let text = core::str::from_utf8(raw).map_err(|_| Errno::Einval)?;
    if text.starts_with('@') {
        if !allow_special || text.len() > path_max {
            return Err(Errno::Einval);
        }
        return Ok(Resolved {
            path: String::from(text),
            prefix_len: 0,
        });
    }
    let (path, prefix_len) = if text.starts_with('/') {
        (String::from(text), 0)
    } else {
        let home = domain_path(domid);
        let prefix = home.len() + 1;
        (format!("{home}/{text}"), prefix)
    };
    let bad_end = path.ends_with('/') && path != "/";
    let too_long =
        path.len() > XENSTORE_ABS_PATH_MAX || path.len() - local_offset(&path) > path_max;
    if bad_end || path.contains("//") || too_long {
        return Err(Errno::Einval);
    }
    Ok(Resolved { path, prefix_len })
}

/// The parent of an absolute path (`None` for the root).
pub fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        _ if path == "/" => None,
        Some(0) => Some("/"),
        Some(at) => Some(&path[..at]),
        None => None,
    }
}

/// The last component of an absolute path.
pub fn basename(path: &str) -> &str {
    path.rfind('/').map_or(path, |at| &path[at + 1..])
}

/// `parent/name`, minding the root.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `child` is `parent` or lies below it (the root contains every
/// absolute path; a special name contains only itself and `name/...`).
pub fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return child.starts_with('/');
    }
    match child.strip_prefix(parent) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A domain id as the wire carries it: decimal, 0..=65535.
pub fn parse_domid(raw: &[u8]) -> Result<u16, Errno> {
    parse_decimal(raw)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(Errno::Einval)
}

/// A non-empty string of ASCII digits as a number (no sign, no spaces).
pub fn parse_decimal(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for b in raw {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::abi::xs_wire::XENSTORE_REL_PATH_MAX;

    const MAX: usize = XENSTORE_REL_PATH_MAX;

    #[test]
    fn relative_paths_resolve_under_the_home() {
        let r = canonicalize(b"device/vif/0", 7, false, MAX).unwrap();
        assert_eq!(r.path, "/local/domain/7/device/vif/0");
        assert_eq!(&r.path[r.prefix_len..], "device/vif/0");
        let r = canonicalize(b"/a/b", 7, false, MAX).unwrap();
        assert_eq!((r.path.as_str(), r.prefix_len), ("/a/b", 0));
        assert_eq!(canonicalize(b"/", 7, false, MAX).unwrap().path, "/");
    }

    #[test]
    fn malformed_paths_are_einval() {
        for bad in [
            &b""[..],
            b"/a/",
            b"/a//b",
            b"a b",
            b"/a\0b",
            b"/caf\xc3\xa9",
            b"/a.b",
            b"@releaseDomain",
        ] {
            assert_eq!(
                canonicalize(bad, 1, false, MAX),
                Err(Errno::Einval),
                "{bad:?}"
            );
        }
        assert!(canonicalize(b"@releaseDomain", 1, true, MAX)
            .unwrap()
            .is_special());
    }

    #[test]
    fn length_counts_after_the_domain_prefix() {
        let long = alloc::vec![b'x'; MAX];
        let mut rel = long.clone();
        assert!(canonicalize(&rel, 65535, false, MAX).is_ok());
        rel.push(b'x');
        assert_eq!(canonicalize(&rel, 1, false, MAX), Err(Errno::Einval));
        let mut abs = alloc::vec::Vec::from(&b"/"[..]);
        abs.extend_from_slice(&long[..MAX - 1]);
        assert!(canonicalize(&abs, 1, false, MAX).is_ok());
        abs.push(b'x');
        assert_eq!(canonicalize(&abs, 1, false, MAX), Err(Errno::Einval));
        assert_eq!(
            canonicalize(b"/local/domain/3/abc", 1, false, 3)
                .unwrap()
                .path
                .len(),
            19
        );
        assert_eq!(
            canonicalize(b"/local/domain/3/abcd", 1, false, 3),
            Err(Errno::Einval)
        );
        assert_eq!(local_offset("/local/domain/123456/x"), 0);
        assert_eq!(local_offset("/local/domain/12"), 0);
    }

    #[test]
    fn parents_children_and_domids() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert!(is_child("/a/b", "/a") && is_child("/a", "/a") && is_child("/a", "/"));
        assert!(!is_child("/ab", "/a") && !is_child("@releaseDomain", "/"));
        assert!(is_child("@releaseDomain", "@releaseDomain"));
        assert_eq!(parse_domid(b"65535"), Ok(65535));
        for bad in [&b"65536"[..], b"", b"-1", b"1x", b" 1"] {
            assert_eq!(parse_domid(bad), Err(Errno::Einval));
        }
    }
}
