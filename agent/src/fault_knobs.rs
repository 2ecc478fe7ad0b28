//! Environment knobs that open the windows fault-injection tests need, read once per process:
//!
//! - `NETMEND_NFT_EVENT_BUFFER` (bytes): the receive buffer of the nftables notification sockets
//!   (default 8 MiB). A tiny one makes a burst of changes overflow the socket, as a very busy node
//!   would; netmend then re-reads the ruleset in full.
//! - `NETMEND_TEST_ACT_DELAY` (a duration, e.g. `3s`): a pause between the last re-check of a fix's
//!   precondition and the write itself, so a test can delete a chain or an interface, or send
//!   SIGTERM, exactly in that window. Test-only: never set it on a node.
//!
//! An unparsable value is ignored with a warning: a knob never stops the agent.

use std::sync::OnceLock;
use std::time::Duration;

/// The default receive buffer of an nftables notification socket.
pub const DEFAULT_NFT_EVENT_BUFFER: i32 = 8 << 20;

fn parsed<T>(name: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let raw = std::env::var(name).ok()?;
    let value = parse(raw.trim());
    if value.is_none() {
        tracing::warn!(knob = name, value = %raw, "ignoring an unparsable environment knob");
    }
    value
}

fn buffer_bytes(raw: &str) -> Option<i32> {
    raw.parse::<i32>().ok().filter(|b| *b > 0)
}

/// The receive buffer of nftables notification sockets: `NETMEND_NFT_EVENT_BUFFER` or 8 MiB.
pub fn nft_event_buffer() -> i32 {
    static VALUE: OnceLock<i32> = OnceLock::new();
    *VALUE.get_or_init(|| {
        parsed("NETMEND_NFT_EVENT_BUFFER", buffer_bytes).unwrap_or(DEFAULT_NFT_EVENT_BUFFER)
    })
}

/// Sleeps for `NETMEND_TEST_ACT_DELAY` when it is set (a test's window before a write).
pub fn pause_before_acting() {
    static VALUE: OnceLock<Option<Duration>> = OnceLock::new();
    let delay = VALUE.get_or_init(|| {
        parsed("NETMEND_TEST_ACT_DELAY", |raw| {
            humantime::parse_duration(raw).ok()
        })
    });
    if let Some(delay) = delay {
        tracing::warn!(
            delay_ms = delay.as_millis() as u64,
            "NETMEND_TEST_ACT_DELAY: pausing before the write"
        );
        std::thread::sleep(*delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_a_positive_byte_count() {
        assert_eq!(buffer_bytes("4096"), Some(4096));
        assert_eq!(buffer_bytes("0"), None);
        assert_eq!(buffer_bytes("-1"), None);
        assert_eq!(buffer_bytes("8M"), None);
    }
}
