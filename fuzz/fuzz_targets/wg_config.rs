//! The wg-quick parser must return a value or an error for any text, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = core::str::from_utf8(data) {
        if let Ok(c) = wireguard::config::Config::parse(text) {
            // Whatever parsed must be usable to build a device without panicking.
            let _ = wireguard::Device::from_config(&c, core::time::Duration::ZERO, 10);
        }
    }
    let _ = wireguard::config::decode_base64(&String::from_utf8_lossy(data));
});
