//! The toolstack's requests to this domain: `xl shutdown` and `xl reboot`
//! write `control/shutdown`; a guest that advertises `control/feature-*`
//! is expected to act on them (otherwise xl falls back to waiting, then
//! gives up). Services that run until stopped poll [`requested`] from
//! their main loop (once a second is plenty) and end as asked.

use xen::xenstore::{XenStore, XsError, XsTransport};

/// A request of the toolstack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// `xl shutdown` (`poweroff`, or `halt`).
    Poweroff,
    /// `xl reboot`.
    Reboot,
}

#[cfg(target_os = "none")]
impl From<ShutdownRequest> for crate::boot::Exit {
    fn from(r: ShutdownRequest) -> Self {
        match r {
            ShutdownRequest::Poweroff => crate::boot::Exit::Poweroff,
            ShutdownRequest::Reboot => crate::boot::Exit::Reboot,
        }
    }
}

/// What the toolstack asked for in `control/shutdown`.
pub fn parse_request(value: &[u8]) -> Option<ShutdownRequest> {
    match value {
        b"poweroff" | b"halt" => Some(ShutdownRequest::Poweroff),
        b"reboot" => Some(ShutdownRequest::Reboot),
        // "suspend" (save/migrate) is not supported, and an empty or
        // unknown value is no request.
        _ => None,
    }
}

/// Tell the toolstack this domain acts on poweroff and reboot requests.
pub async fn advertise<T: XsTransport>(xs: &mut XenStore<T>) -> Result<(), XsError> {
    xs.write("control/feature-poweroff", b"1").await?;
    xs.write("control/feature-reboot", b"1").await?;
    Ok(())
}

/// A pending shutdown request, acknowledged (the key is cleared, as the
/// toolstack expects) once seen.
pub async fn requested<T: XsTransport>(xs: &mut XenStore<T>) -> Option<ShutdownRequest> {
    let value = match xs.read("control/shutdown").await {
        Ok(v) => v,
        Err(_) => return None,
    };
    let exit = parse_request(&value)?;
    let _ = xs.write("control/shutdown", b"").await;
    Some(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request(b"poweroff"), Some(ShutdownRequest::Poweroff));
        assert_eq!(parse_request(b"halt"), Some(ShutdownRequest::Poweroff));
        assert_eq!(parse_request(b"reboot"), Some(ShutdownRequest::Reboot));
        assert_eq!(parse_request(b"suspend"), None);
        assert_eq!(parse_request(b""), None);
        assert_eq!(parse_request(b"poweroff\0"), None);
    }
}
