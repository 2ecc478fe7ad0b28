//! End-to-end test of "re-added by": in a fresh namespace, the real `nft` and `iptables-nft`
//! write different chains; the notifications a socket joined to the nftables group receives
//! must attribute each chain to the process that wrote it, not to whoever committed last.
//!
//! Also holds the `#[ignore]`d `capture_attribution_testdata`, which writes
//! `agent/testdata/nft/attribution/two_writers.events.bin` for the unit tests of
//! `observe::nft_events`.

use netmend::observe::nft_events::{ChainWriters, EventDecoder, NftEvent, NftEventSocket};
use netmend_e2e::{require_tool, NetNs};
use std::process::Command;
use std::time::Duration;

fn sh(script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SETUP: &str = "nft add table ip t && nft add chain ip t a && nft add chain ip t b";
/// Three transactions by two programs; `iptables-nft` commits in the middle.
const WRITES: &str = "nft add rule ip t a counter && iptables-nft -t nat -N KUBE-X && iptables-nft -t nat -A KUBE-X -j RETURN && nft add rule ip t b counter";

/// Every notification received until the socket stays quiet, as raw bytes.
fn drain(socket: &mut NftEventSocket) -> Vec<u8> {
    let mut bytes = Vec::new();
    while socket
        .drain_raw(Duration::from_millis(200), |read| {
            bytes.extend_from_slice(read.expect("no overflow for a few messages"))
        })
        .unwrap()
        > 0
    {}
    bytes
}

#[test]
fn each_chain_is_attributed_to_the_program_that_wrote_it() {
    for tool in ["nft", "iptables-nft"] {
        require_tool(tool);
    }
    let ns = NetNs::new("attrib");
    let (writers, last) = ns.run(|| {
        sh(SETUP);
        let mut socket = NftEventSocket::open().unwrap();
        sh(WRITES);
        let bytes = drain(&mut socket);
        let mut decoder = EventDecoder::default();
        let mut writers = ChainWriters::default();
        let mut last = None;
        for event in decoder.decode(&bytes) {
            if let NftEvent::Committed(generation) = event {
                writers.record(&generation);
                last = generation.process.clone();
            }
        }
        (writers, last)
    });
    assert_eq!(last.as_deref(), Some("nft"), "nft committed last");
    let writer = |chain: &str| writers.writer_of(chain).map(str::to_string);
    assert!(
        writer("ip nat KUBE-X").is_some_and(|w| w.starts_with("iptables-nft (pid ")),
        "{:?}",
        writer("ip nat KUBE-X")
    );
    for chain in ["ip t a", "ip t b"] {
        assert!(
            writer(chain).is_some_and(|w| w.starts_with("nft (pid ")),
            "{chain}: {:?}",
            writer(chain)
        );
    }
    // Two different `nft` processes wrote a and b.
    assert_ne!(writer("ip t a"), writer("ip t b"));
    assert_eq!(writer("ip t c"), None);
}

/// Writes `agent/testdata/nft/attribution/two_writers.events.bin`: the notifications of `WRITES`
/// after `SETUP`, as one socket received them.
/// Run: `cargo test -p netmend-e2e --test attribution capture_attribution_testdata -- --ignored`.
#[test]
#[ignore]
fn capture_attribution_testdata() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/testdata/nft/attribution");
    std::fs::create_dir_all(&dir).unwrap();
    let ns = NetNs::new("attribcap");
    let bytes = ns.run(|| {
        sh(SETUP);
        let mut socket = NftEventSocket::open().unwrap();
        sh(WRITES);
        drain(&mut socket)
    });
    std::fs::write(dir.join("two_writers.events.bin"), bytes).unwrap();
}
