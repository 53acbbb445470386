//! Wall-clock time for `qubes.SetDateTime` and `qubes.GetDate`: the
//! [`Clock`] the kernel implements, and the ISO 8601 text of `date -u
//! -Iseconds` / `date -u -Ins` (qubes-core-agent-linux
//! `qubes-rpc/qubes.GetDate`, `qubes.SetDateTime`; the vm-interface
//! documentation gives `2015-07-31T16:10:43+0000` as dom0's line, current
//! coreutils print `+00:00`).

use alloc::format;
use alloc::string::String;

/// Seconds and nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

/// The VM's wall clock, implemented by the kernel.
pub trait Clock {
    /// The current time, if the clock was ever set.
    fn now(&self) -> Option<UnixTime>;
    /// dom0 says it is `t` (`qubes.SetDateTime`).
    fn set(&mut self, t: UnixTime);
}

/// Why a date line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateError;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `date -u -Iseconds` (`2015-07-31T16:10:43+00:00`), or with `ns`
/// `date -u -Ins` (`2015-07-31T16:10:43,123456789+00:00`).
pub fn format_iso(t: UnixTime, ns: bool) -> String {
    let days = t.secs.div_euclid(86_400);
    let s = t.secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (s / 3600, s / 60 % 60, s % 60);
    if ns {
        format!(
            "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02},{:09}+00:00",
            t.nanos
        )
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+00:00")
    }
}

/// Take `n` ASCII digits from the front of `s`.
fn digits(s: &mut &[u8], n: usize) -> Result<u32, DateError> {
    let (head, rest) = (s.get(..n).ok_or(DateError)?, &s[n..]);
    let mut v = 0u32;
    for &c in head {
        if !c.is_ascii_digit() {
            return Err(DateError);
        }
        v = v * 10 + (c - b'0') as u32;
    }
    *s = rest;
    Ok(v)
}

fn expect(s: &mut &[u8], c: &[u8]) -> Result<(), DateError> {
    match s.first() {
        Some(x) if c.contains(x) => {
            *s = &s[1..];
            Ok(())
        }
        _ => Err(DateError),
    }
}

/// Parse an ISO 8601 line as dom0's `date -u -Iseconds` prints it:
/// `YYYY-MM-DD[T ]HH:MM:SS[(.|,)fraction][Z|±HH[[:]MM]]`, surrounding
/// white space ignored; no zone means UTC.
pub fn parse_iso(line: &str) -> Result<UnixTime, DateError> {
    let mut s = line.trim().as_bytes();
    let y = digits(&mut s, 4)? as i64;
    expect(&mut s, b"-")?;
    let m = digits(&mut s, 2)?;
    expect(&mut s, b"-")?;
    let d = digits(&mut s, 2)?;
    expect(&mut s, b"T ")?;
    let hh = digits(&mut s, 2)?;
    expect(&mut s, b":")?;
    let mm = digits(&mut s, 2)?;
    expect(&mut s, b":")?;
    let ss = digits(&mut s, 2)?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || hh > 23 || mm > 59 || ss > 60
    {
        return Err(DateError);
    }
    let mut nanos = 0u32;
    if let Some(b'.' | b',') = s.first() {
        s = &s[1..];
        let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(DateError);
        }
        for (i, &c) in s[..n].iter().enumerate() {
            if i < 9 {
                nanos += (c - b'0') as u32 * 10u32.pow(8 - i as u32);
            }
        }
        s = &s[n..];
    }
    let offset: i64 = match s.first() {
        None => 0,
        Some(b'Z') if s.len() == 1 => 0,
        Some(&sign @ (b'+' | b'-')) => {
            s = &s[1..];
            let oh = digits(&mut s, 2)? as i64;
            let mut om = 0;
            if !s.is_empty() {
                if s[0] == b':' {
                    s = &s[1..];
                }
                om = digits(&mut s, 2)? as i64;
            }
            if !s.is_empty() || oh > 23 || om > 59 {
                return Err(DateError);
            }
            let o = oh * 3600 + om * 60;
            if sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err(DateError),
    };
    let secs = days_from_civil(y, m, d) * 86_400 + (hh * 3600 + mm * 60 + ss) as i64 - offset;
    Ok(UnixTime { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_date_does() {
        // `date -u -d @1438359043 -Iseconds` = 2015-07-31T16:10:43+00:00
        let t = UnixTime {
            secs: 1_438_359_043,
            nanos: 5,
        };
        assert_eq!(format_iso(t, false), "2015-07-31T16:10:43+00:00");
        assert_eq!(format_iso(t, true), "2015-07-31T16:10:43,000000005+00:00");
        let epoch = UnixTime { secs: 0, nanos: 0 };
        assert_eq!(format_iso(epoch, false), "1970-01-01T00:00:00+00:00");
        let before = UnixTime { secs: -1, nanos: 0 };
        assert_eq!(format_iso(before, false), "1969-12-31T23:59:59+00:00");
        // 2000-02-29 (a leap day of a century divisible by 400).
        let leap = UnixTime {
            secs: 951_782_400,
            nanos: 0,
        };
        assert_eq!(format_iso(leap, false), "2000-02-29T00:00:00+00:00");
    }

    #[test]
    fn parses_dom0_lines() {
        let t = UnixTime {
            secs: 1_438_359_043,
            nanos: 0,
        };
        assert_eq!(parse_iso("2015-07-31T16:10:43+0000\n"), Ok(t));
        assert_eq!(parse_iso("2015-07-31T16:10:43+00:00"), Ok(t));
        assert_eq!(parse_iso("2015-07-31T16:10:43Z"), Ok(t));
        assert_eq!(parse_iso("2015-07-31 18:10:43+02:00"), Ok(t));
        assert_eq!(parse_iso("2015-07-31T11:10:43-05"), Ok(t));
        assert_eq!(
            parse_iso("2015-07-31T16:10:43,123456789123+00:00"),
            Ok(UnixTime {
                secs: t.secs,
                nanos: 123_456_789
            })
        );
        for bad in [
            "",
            "2015-07-31",
            "2015-13-01T00:00:00Z",
            "2015-02-29T00:00:00Z",
            "2015-07-31T24:00:00Z",
            "2015-07-31T16:10:43+0000x",
            "2015-07-31T16:10:43.+00:00",
            "2015-07-31T16:10:43Zjunk",
            "２015-07-31T16:10:43Z",
        ] {
            assert_eq!(parse_iso(bad), Err(DateError), "{bad}");
        }
        for secs in [
            -86_400 * 400,
            -1,
            0,
            951_782_400,
            4_102_444_800,
            253_402_300_799,
        ] {
            let t = UnixTime { secs, nanos: 0 };
            assert_eq!(parse_iso(&format_iso(t, false)), Ok(t));
        }
    }
}
