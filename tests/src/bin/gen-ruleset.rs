//! `gen-ruleset`: writes a kube-proxy-shaped rule set to stdout for the benchmarks, from the
//! generator of `netmend_e2e::ruleset_gen`.
//!
//! usage: gen-ruleset [--mode iptables|nftables] SERVICES [ENDPOINTS]   (defaults: iptables, 2)
//! The iptables mode is `iptables-restore` input, the nftables mode `nft -f` input.

use anyhow::{bail, Context, Result};
use netmend_e2e::ruleset_gen::{generate, Mode};
use std::io::Write;

const USAGE: &str = "usage: gen-ruleset [--mode iptables|nftables] SERVICES [ENDPOINTS]";

fn main() -> Result<()> {
    let mut mode = Mode::Iptables;
    let mut numbers: Vec<usize> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => {
                let value = args.next().context(USAGE)?;
                mode = value.parse()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => match arg.strip_prefix("--mode=") {
                Some(value) => mode = value.parse()?,
                None => numbers.push(
                    arg.parse()
                        .with_context(|| format!("{arg:?} is not a count\n{USAGE}"))?,
                ),
            },
        }
    }
    let (services, endpoints) = match numbers[..] {
        [services] => (services, 2),
        [services, endpoints] => (services, endpoints),
        _ => bail!("{USAGE}"),
    };
    let text = generate(mode, services, endpoints)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
