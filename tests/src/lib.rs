//! Harness of the privileged end-to-end tests: fresh network namespaces (created with `ip netns
//! add`, removed on drop), commands run inside them with the real `nft`, `iptables-nft`,
//! `iptables-legacy`, `arping` and `bpftool`, and the `netmend` binary under test.
//!
//! Every test builds and removes its own namespaces and never touches the host's ruleset or links.
//! Without root the tests fail with a message saying so; they never pass silently.

#![deny(unsafe_code)]

pub mod agent_process;
pub mod fake_apiserver;
pub mod ruleset_gen;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test unless it runs as root, saying why.
pub fn require_root() {
    let euid = netmend::sys::process::effective_uid();
    assert_eq!(
        euid, 0,
        "this end-to-end test needs root (network namespaces, nftables, x_tables): run the suite as root"
    );
}

/// Fails the test unless `tool` is on PATH, naming the package that provides it.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).is_file());
    assert!(
        found,
        "this test needs `{tool}`; the README's test command installs it (apt-get install nftables iptables iproute2 arping bpftool ipset)"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists for the life of the value.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `nm-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> NetNs {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("nm-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = NetNs { name };
        ns.sh("ip link set lo up").expect("bring lo up");
        ns
    }

    /// The path of the namespace file (for `--netns` and setns).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a shell command inside the namespace (via nsenter, which keeps /sys/fs/bpf visible);
    /// fails with the command's stderr when it exits non-zero.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.sh_output(script)?;
        if !out.status.success() {
            bail!(
                "in {}: `{script}` failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a shell command inside the namespace and returns its raw output whatever the status.
    pub fn sh_output(&self, script: &str) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter into {}", self.name))
    }

    /// Starts a long-running shell command inside the namespace; it is killed when the guard
    /// drops.
    pub fn spawn(&self, script: &str) -> Background {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["sh", "-c", &format!("exec {script}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in namespace");
        Background(child)
    }

    /// Starts a TCP listener on `addr:port` inside the namespace and waits until it listens.
    pub fn listen_tcp(&self, addr: &str, port: u16) -> Background {
        let guard = self.spawn(&format!(
            "python3 -c \"import socket,time; s=socket.socket(socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('{addr}', {port})); s.listen(); time.sleep(600)\""
        ));
        for _ in 0..100 {
            let out = self.sh("ss -Htln").unwrap_or_default();
            if out.contains(&format!(":{port} ")) {
                return guard;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("listener on {addr}:{port} did not come up in {}", self.name);
    }

    /// Loads an iptables-restore file with the given binary (`iptables-nft-restore`,
    /// `iptables-legacy-restore`, ...), without flushing (`--noflush`).
    pub fn restore(&self, binary: &str, rules: &str) -> Result<()> {
        let path = temp_file("rules", rules)?;
        self.sh(&format!("{binary} -w --noflush < {}", path.display()))?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    /// Loads an `nft -f` file.
    pub fn nft_file(&self, rules: &str) -> Result<()> {
        let path = temp_file("nft", rules)?;
        self.sh(&format!("nft -f {}", path.display()))?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    /// Runs `netmend ARGS` inside the namespace.
    pub fn netmend(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg(netmend_binary())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run netmend")
    }

    /// Runs `f` on a thread that joined this namespace and returns its result: for calling
    /// netmend's library probes directly.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl NetNs {
    /// `GET path` on `127.0.0.1:port` inside the namespace: (status code, body).
    pub fn http_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        let path = path.to_string();
        self.run(move || -> Result<(u16, String)> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let status: u16 = response
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no HTTP status line")?;
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Ok((status, body))
        })
    }

    /// Starts `netmend ARGS` inside the namespace in the background.
    pub fn spawn_netmend(&self, args: &[&str], log: &std::path::Path) -> Background {
        self.spawn_netmend_with_env(args, &[], log)
    }

    /// `netmend run` in this namespace as node `node` against the fake API server whose
    /// kubeconfig is `dir/kubeconfig`: configuration `dir/config.yaml`, state in `dir/state`,
    /// log `dir/agent.log`, serving on 127.0.0.1:`port`, in pod namespace `namespace` (the one
    /// its fix slots live in).
    pub fn spawn_netmend_on_cluster(
        &self,
        dir: &std::path::Path,
        port: u16,
        node: &str,
        namespace: &str,
    ) -> Background {
        let path = |name: &str| dir.join(name).display().to_string();
        let listen = format!("127.0.0.1:{port}");
        self.spawn_netmend_with_env(
            &[
                "run",
                "--config",
                &path("config.yaml"),
                "--listen",
                &listen,
                "--state-dir",
                &path("state"),
                "--kubeconfig",
                &path("kubeconfig"),
                "--node-name",
                node,
            ],
            &[("POD_NAMESPACE", namespace)],
            &dir.join("agent.log"),
        )
    }

    /// Starts `netmend ARGS` inside the namespace in the background, with these environment
    /// variables besides the test's own. Never with the in-cluster API of a machine that runs the
    /// tests in a pod (`KUBERNETES_SERVICE_HOST` is removed): a test's API is the one it starts.
    pub fn spawn_netmend_with_env(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Background {
        let log = std::fs::File::create(log).expect("agent log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg(netmend_binary())
            .args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn netmend");
        Background(child)
    }
}

/// Polls `f` every 50 ms until it returns Some, for at most `timeout`.
pub fn wait_for<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &std::path::Path) {
    let file = std::fs::File::open(path).expect("open netns file");
    if let Err(err) = netmend::sys::process::enter_network_namespace(&file) {
        panic!("setns into {}: {err}", path.display());
    }
}

/// `CAP_NET_ADMIN`, for [`drop_capabilities_in_this_thread`].
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`, for [`drop_capabilities_in_this_thread`].
pub const CAP_NET_RAW: u32 = 13;

/// Clears `caps` (capability numbers below 32) from the calling thread's effective and permitted
/// sets; capabilities are per thread, so only this (scratch) thread loses them.
#[allow(unsafe_code)] // capget/capset have no safe wrapper in std, nix or the agent.
pub fn drop_capabilities_in_this_thread(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mask = caps.iter().fold(0u32, |m, &cap| {
        assert!(cap < 32, "capability {cap} is not in the first data word");
        m | (1 << cap)
    });
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version 3 header and the two data words that version reads and writes; both
    // outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !mask;
    data[0].permitted &= !mask;
    // SAFETY: as above; capset only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

/// A process started in a namespace, killed on drop.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A veth pair `a` (in `left`) <-> `b` (in `right`), both up.
pub fn veth_pair(left: &NetNs, a: &str, right: &NetNs, b: &str) -> Result<()> {
    left.sh(&format!(
        "ip link add {a} type veth peer name {b} netns {} && ip link set {a} up",
        right.name
    ))?;
    right.sh(&format!("ip link set {b} up"))?;
    Ok(())
}

fn temp_file(tag: &str, contents: &str) -> Result<PathBuf> {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("netmend-{tag}-{}-{n}", std::process::id()));
    std::fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The `netmend` binary of this workspace: `NETMEND_BIN` if set, else next to the test executable
/// (`target/<profile>/netmend`).
pub fn netmend_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NETMEND_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("netmend");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p netmend)",
        bin.display()
    );
    bin
}

/// kube-proxy's iptables mode for `services` services with `endpoints` each, from the project's
/// own generator ([`ruleset_gen`]), as `iptables-restore` input.
pub fn kube_proxy_ruleset(services: usize, endpoints: usize) -> String {
    ruleset_gen::iptables(services, endpoints).expect("kube-proxy iptables-mode ruleset")
}

/// kube-proxy's nftables mode for `services` services with `endpoints` each, from the project's
/// own generator, as `nft -f` input.
pub fn kube_proxy_nftables(services: usize, endpoints: usize) -> String {
    ruleset_gen::nftables(services, endpoints).expect("kube-proxy nftables-mode ruleset")
}

/// The committed nftables-mode fixture `tests/fixtures/kube-proxy-nftables-mode.nft` (the
/// generator's six services with one endpoint each: one service of every kind).
pub fn kube_proxy_nft_fixture() -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube-proxy-nftables-mode.nft");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Waits until something listens on TCP `port` in `ns`.
pub fn wait_listening(ns: &NetNs, port: u16) {
    wait_for(std::time::Duration::from_secs(5), || {
        let out = ns.sh("ss -Htln").unwrap_or_default();
        out.contains(&format!(":{port} ")).then_some(())
    })
    .unwrap_or_else(|| panic!("nothing listens on {port} in {}", ns.name));
}

/// A stand-in for docker-proxy: a python script named `docker-proxy` (so its comm is
/// `docker-proxy`) that takes docker-proxy's arguments and listens on `-host-ip:-host-port`.
/// Written once per test process: tests run in parallel, and a script rewritten while another
/// test starts it runs half-written.
fn docker_proxy_program() -> PathBuf {
    static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(write_docker_proxy_program).clone()
}

fn write_docker_proxy_program() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netmend-docker-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("docker-proxy");
    // A direct interpreter line to the real binary: through `env` or a wrapper (pyenv shims)
    // the comm would be the interpreter's.
    let python = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("find python3");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    std::fs::write(
        &path,
        format!("#!{python}\nimport socket, sys, time\na = dict(zip(sys.argv[1::2], sys.argv[2::2]))\ns = socket.socket(socket.AF_INET6 if ':' in a['-host-ip'] else socket.AF_INET)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind((a['-host-ip'], int(a['-host-port'])))\ns.listen()\ntime.sleep(600)\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs a docker-proxy stand-in publishing `host_ip:host_port` for `container_ip:container_port`
/// (docker-proxy's own argument shape), and waits until it listens.
pub fn docker_proxy(
    ns: &NetNs,
    host_ip: &str,
    host_port: u16,
    container_ip: &str,
    container_port: u16,
) -> Background {
    let guard = ns.spawn(&format!(
        "{} -proto tcp -host-ip {host_ip} -host-port {host_port} -container-ip {container_ip} -container-port {container_port}",
        docker_proxy_program().display()
    ));
    wait_listening(ns, host_port);
    guard
}

/// A node namespace with the address 192.168.1.233 on `eth0`, and a LAN namespace at
/// 192.168.1.1 on the other end of the veth (prerouting hooks see traffic to a real node
/// address, which loopback alone is not).
pub fn node_with_lan(tag: &str) -> (NetNs, NetNs) {
    for tool in ["iptables-nft-restore", "iptables-legacy-restore", "ip"] {
        require_tool(tool);
    }
    let node = NetNs::new(tag);
    let lan = NetNs::new(&format!("{tag}-lan"));
    veth_pair(&node, "eth0", &lan, "uplink").unwrap();
    node.sh("ip addr add 192.168.1.233/24 dev eth0").unwrap();
    lan.sh("ip addr add 192.168.1.1/24 dev uplink").unwrap();
    (node, lan)
}

/// The JSON report netmend printed, or a panic showing what it printed instead.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "netmend printed no JSON ({e}); status {}; stdout {}; stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The findings of `check` in a JSON report.
pub fn findings_of<'a>(report: &'a serde_json::Value, check: &str) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

/// Writes a config file for the namespace's netmend runs; its path.
pub fn write_config(ns: &NetNs, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("netmend-config-{}.yaml", ns.name));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// An empty state directory for the namespace's netmend runs; its path.
pub fn fresh_state_dir(ns: &NetNs) -> String {
    let path = std::env::temp_dir().join(format!("netmend-state-{}", ns.name));
    let _ = std::fs::remove_dir_all(&path);
    path.display().to_string()
}
