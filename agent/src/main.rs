//! Composition root of the `netmend` binary: command line -> configuration -> logging -> one of
//! the commands. No logic of its own beyond wiring and exit codes (0 no findings, 1 findings,
//! 2 error with a one-line message on stderr).

#![deny(unsafe_code)]

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand, ValueEnum};
use netmend::act::kernel::KernelActuator;
use netmend::config::Config;
use netmend::journal::Journal;
use netmend::observe::node::{KernelReader, NftView};
use netmend::runtime::oneshot::{run_check, CheckEnv, CheckOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "netmend",
    version,
    about = "Per-node network self-healing for Kubernetes: detects and mends broken nftables/iptables, ARP and promiscuous state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Observe this node for a window, evaluate every enabled check once and print the findings.
    Check {
        /// Configuration file (YAML); built-in defaults (dry-run) without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Network namespace to inspect: a name under /run/netns or a path such as /proc/PID/ns/net.
        #[arg(long)]
        netns: Option<String>,
        /// How long to observe (e.g. 5s, 500ms, 0s for instantaneous checks only).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        window: Duration,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        /// Run the fixes through the guards (in mode dry-run this still changes nothing).
        #[arg(long)]
        apply: bool,
        /// Where the journal lives (used with --apply, so cooldowns and breakers hold).
        #[arg(long, default_value = "/var/lib/netmend")]
        state_dir: PathBuf,
    },
    /// The agent: watch this node, mend behind the guards, serve /healthz /readyz /metrics /status.
    Run {
        /// Configuration file (YAML), reloaded when it changes; built-in defaults without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address of the HTTP server.
        #[arg(long, default_value = "0.0.0.0:9810")]
        listen: std::net::SocketAddr,
        /// Where the journal lives.
        #[arg(long, default_value = "/var/lib/netmend")]
        state_dir: PathBuf,
        /// Kubeconfig file for the Kubernetes API when not in a cluster (else the files KUBECONFIG
        /// lists).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// This node's name in the cluster (else NODE_NAME, else the host name).
        #[arg(long)]
        node_name: Option<String>,
    },
    /// The catalog: every check and fix with a one-line description (JSON: with what each
    /// reads, the fix it proposes and its configuration defaults).
    Checks {
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Active probes of the node's network.
    Probe {
        #[command(subcommand)]
        what: ProbeCommand,
    },
    /// Validate a configuration file: exit 0 when valid, 2 with the key path and reason when not.
    ValidateConfig {
        /// The YAML file to validate.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ProbeCommand {
    /// Send an ARP who-has for ADDRESS from an interface and wait for the reply: exit 0 when
    /// answered, 1 when not, 2 on error.
    Arp {
        address: std::net::Ipv4Addr,
        #[arg(long)]
        interface: String,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: Duration,
        /// Sender address (default: the interface's first IPv4 address).
        #[arg(long)]
        source: Option<std::net::Ipv4Addr>,
        #[arg(long)]
        netns: Option<String>,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 5s, 500ms or 0s"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Check { .. }));
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            // One line: the chain of causes joined.
            let message = error
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("netmend: {message}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("NETMEND_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Checks { output } => {
            match output {
                OutputFormat::Text => print!("{}", catalog()),
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&catalog_json())?)
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            listen,
            state_dir,
            kubeconfig,
            node_name: node_flag,
        } => {
            let text = match &config {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read config {}", path.display()))?,
                ),
                None => None,
            };
            let parsed = match &text {
                Some(t) => Config::from_yaml(t).with_context(|| {
                    format!("invalid config {}", config.as_ref().unwrap().display())
                })?,
                None => Config::default(),
            };
            let journal = Journal::open(&state_dir)?;
            let node = node_flag
                .filter(|n| !n.is_empty())
                .unwrap_or_else(node_name);
            let runtime = netmend::runtime::serve::io_runtime()?;
            let cluster = cluster_for(
                &parsed.kubernetes,
                kubeconfig.as_deref(),
                &node,
                runtime.handle(),
            )?;
            netmend::runtime::wiring::run_kernel_agent(
                parsed,
                config.clone(),
                text.as_deref(),
                journal,
                listen,
                node,
                cluster,
                runtime,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe {
            what:
                ProbeCommand::Arp {
                    address,
                    interface,
                    timeout,
                    source,
                    netns,
                },
        } => {
            if let Some(netns) = &netns {
                enter_netns(netns)?;
            }
            let result = netmend::arp_probe::probe_arp(&interface, address, timeout, source)?;
            match result.answered_by {
                Some(mac) => {
                    println!(
                        "{address} is-at {mac} on {interface} ({:.1} ms, asked as {})",
                        result.rtt.as_secs_f64() * 1000.0,
                        result.sender_ip
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    println!(
                        "no reply for {address} on {interface} within {}",
                        humantime::format_duration(timeout)
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::ValidateConfig { file } => {
            let config = load_config(Some(&file))?;
            println!(
                "{}: valid (mode {}, fixes enabled: {})",
                file.display(),
                config.mode,
                enabled_fixes(&config)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            netns,
            window,
            output,
            apply,
            state_dir,
        } => {
            let config = load_config(config.as_deref())?;
            if let Some(netns) = &netns {
                enter_netns(netns)?;
            }
            let mut probe = KernelReader::new(NftView::Fresh);
            let mut actuator = KernelActuator::new();
            let mut journal = if apply {
                Some(Journal::open(&state_dir).context("--apply keeps a journal")?)
            } else {
                None
            };
            let report = run_check(
                CheckOptions { window, apply },
                &config,
                &node_name(),
                CheckEnv {
                    probe: &mut probe,
                    actuator: &mut actuator,
                    journal: journal.as_mut(),
                    now: &std::time::SystemTime::now,
                },
            )
            .map_err(|e| anyhow!(e))?;
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialise")
                ),
                OutputFormat::Text => print!("{}", netmend::report::render_text(&report, window)),
            }
            Ok(if report.findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    Config::from_yaml(&text).with_context(|| format!("invalid config {}", path.display()))
}

fn enabled_fixes(config: &Config) -> String {
    let on: Vec<&str> = config
        .fixes
        .iter()
        .filter(|(_, section)| section.guard.enabled)
        .map(|(id, _)| id.as_str())
        .collect();
    if on.is_empty() {
        "none".to_string()
    } else {
        on.join(", ")
    }
}

fn catalog() -> String {
    let mut out = String::from("checks:\n");
    for check in netmend::detect::CHECKS {
        let fix = check.fix().map(|f| f.as_str()).unwrap_or("report only");
        out.push_str(&format!(
            "  {:<27} {} [fix: {fix}]\n",
            check.id().as_str(),
            check.description()
        ));
    }
    out.push_str("fixes:\n");
    for fix in netmend::remediate::fixes::FIXES {
        out.push_str(&format!(
            "  {:<27} {}\n",
            fix.id().as_str(),
            fix.description()
        ));
    }
    out
}

/// The catalog as data, with the defaults of every configuration section: the chart's values and
/// schema are tested against it, so they cannot drift from the registries.
fn catalog_json() -> serde_json::Value {
    let defaults = Config::default();
    let checks: Vec<serde_json::Value> = netmend::detect::CHECKS
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id(),
                "description": c.description(),
                "inputs": format!("{:?}", c.inputs()).to_lowercase(),
                "fix": c.fix(),
            })
        })
        .collect();
    let fixes: Vec<serde_json::Value> = netmend::remediate::fixes::FIXES
        .iter()
        .map(|f| serde_json::json!({"id": f.id(), "description": f.description()}))
        .collect();
    serde_json::json!({"checks": checks, "fixes": fixes, "defaults": defaults})
}

/// The cluster the agent reports into and takes fix slots from: the Kubernetes API (its tasks run
/// on `runtime`), or node-local when it is switched off or cannot be found; an error (exit status
/// 2) when it cannot be found and `kubernetes.required` or `kubernetes.enabled: true` asks for it.
fn cluster_for(
    settings: &netmend::config::KubernetesConfig,
    kubeconfig: Option<&Path>,
    node: &str,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Box<dyn netmend::runtime::cluster::Cluster>> {
    Ok(netmend::cluster::connect(
        settings,
        kubeconfig.map(Path::to_path_buf),
        Some(node.to_string()),
        runtime,
    )?)
}

/// The node name: `NODE_NAME` (the chart sets it from spec.nodeName), else the hostname.
fn node_name() -> String {
    if let Ok(name) = std::env::var("NODE_NAME") {
        if !name.is_empty() {
            return name;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Moves this (still single-threaded) process into a network namespace before anything else
/// runs, so every thread created afterwards inherits it (docs/kernel-facts.md: the namespace
/// belongs to a thread).
fn enter_netns(netns: &str) -> anyhow::Result<()> {
    let path = if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    };
    let file = std::fs::File::open(&path).with_context(|| {
        format!(
            "network namespace {netns:?} not found ({} cannot be opened)",
            path.display()
        )
    })?;
    if let Err(err) = netmend::sys::process::enter_network_namespace(&file) {
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) => anyhow!(
                "missing privilege: entering network namespace {netns:?} needs CAP_SYS_ADMIN"
            ),
            Some(libc::EINVAL) => anyhow!("{} is not a network namespace", path.display()),
            _ => anyhow!("cannot enter network namespace {}: {err}", path.display()),
        });
    }
    Ok(())
}
