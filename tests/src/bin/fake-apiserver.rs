//! `fake-apiserver`: the tests' fake Kubernetes API server (`netmend_e2e::fake_apiserver`) as a
//! program, for trying the agent by hand: `ip netns exec NS fake-apiserver --kubeconfig k.yaml
//! --node node-a --namespace netmend`, then `netmend run --kubeconfig k.yaml --node-name node-a`
//! in the same namespace. Prints its URL, serves until killed.
//!
//! usage: fake-apiserver [--port PORT] [--kubeconfig FILE] [--namespace NS]... [--node NAME]...

use anyhow::{bail, Context, Result};
use netmend_e2e::fake_apiserver::{objects, FakeApiServer, NAMESPACES, NODES};
use std::path::PathBuf;

const USAGE: &str =
    "usage: fake-apiserver [--port PORT] [--kubeconfig FILE] [--namespace NS]... [--node NAME]...";

fn main() -> Result<()> {
    let mut port = 0u16;
    let mut kubeconfig: Option<PathBuf> = None;
    let mut namespaces = Vec::new();
    let mut nodes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--port" => {
                let text = value("--port")?;
                port = text
                    .parse()
                    .with_context(|| format!("--port {text:?} is not a port number"))?;
            }
            "--kubeconfig" => kubeconfig = Some(PathBuf::from(value("--kubeconfig")?)),
            "--namespace" => namespaces.push(value("--namespace")?),
            "--node" => nodes.push(value("--node")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let server = FakeApiServer::builder().port(port).start()?;
    for namespace in &namespaces {
        server.put(&NAMESPACES, objects::namespace(namespace));
    }
    for node in &nodes {
        server.put(&NODES, objects::node(node));
    }
    if let Some(path) = &kubeconfig {
        let namespace = namespaces.first().map(String::as_str).unwrap_or("default");
        server.write_kubeconfig(path, namespace)?;
    }
    println!("{}", server.url());
    loop {
        std::thread::park();
    }
}
