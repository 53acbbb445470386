//! What built this image: the source commit and the toolchain, taken at
//! compile time from the environment `make images` sets
//! (`MOAT_BUILD_COMMIT`: `git rev-parse HEAD`, `-dirty` when the checkout
//! had uncommitted changes; `MOAT_BUILD_RUSTC`, `MOAT_BUILD_CARGO`: the
//! compilers' `-V`). `unknown` where a variable is unset (host builds,
//! plain `cargo build`).
//!
//! The same text is kept in the image's `.moat.build` section, one
//! NUL-terminated `key=value` string after the other, which
//! `readelf -p .moat.build IMAGE` shows (docs/testing.md, "Reproducible
//! images"), and the boot flow prints it after its first line.

/// The source commit (`git rev-parse HEAD`, `-dirty` if the tree had
/// uncommitted changes), or `unknown`.
pub const COMMIT: &str = or_unknown(option_env!("MOAT_BUILD_COMMIT"));
/// `rustc -V` of the compiler that built the image, or `unknown`.
pub const RUSTC: &str = or_unknown(option_env!("MOAT_BUILD_RUSTC"));
/// `cargo -V` of the cargo that built the image, or `unknown`.
pub const CARGO: &str = or_unknown(option_env!("MOAT_BUILD_CARGO"));

const fn or_unknown(v: Option<&'static str>) -> &'static str {
    match v {
        Some(s) => s,
        None => "unknown",
    }
}

/// The parts of the `.moat.build` section, in order (each gets a NUL).
const PARTS: [&str; 7] = [
    "moat-build",
    "commit=",
    COMMIT,
    "rustc=",
    RUSTC,
    "cargo=",
    CARGO,
];
/// Which parts end a string (get a NUL after them).
const ENDS: [bool; 7] = [true, false, true, false, true, false, true];

const fn section_len() -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < PARTS.len() {
        len += PARTS[i].len();
        if ENDS[i] {
            len += 1;
        }
        i += 1;
    }
    len
}

const LEN: usize = section_len();

const fn section() -> [u8; LEN] {
    let mut out = [0u8; LEN];
    let mut at = 0;
    let mut i = 0;
    while i < PARTS.len() {
        let part = PARTS[i].as_bytes();
        let mut j = 0;
        while j < part.len() {
            out[at] = part[j];
            at += 1;
            j += 1;
        }
        if ENDS[i] {
            at += 1; // the NUL, already zero
        }
        i += 1;
    }
    out
}

/// The `.moat.build` section's bytes: `moat-build`, `commit=...`,
/// `rustc=...`, `cargo=...`, each NUL-terminated.
#[used]
#[cfg_attr(target_os = "none", link_section = ".moat.build")]
pub static SECTION: [u8; LEN] = section();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_nul_separated_key_values() {
        let strings: Vec<&[u8]> = SECTION.split(|&b| b == 0).collect();
        // Four strings, then the empty tail after the last NUL.
        assert_eq!(strings.len(), 5);
        assert_eq!(strings[0], b"moat-build");
        assert_eq!(strings[1], format!("commit={COMMIT}").as_bytes());
        assert_eq!(strings[2], format!("rustc={RUSTC}").as_bytes());
        assert_eq!(strings[3], format!("cargo={CARGO}").as_bytes());
        assert!(strings[4].is_empty());
    }
}
