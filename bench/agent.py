#!/usr/bin/env python3
"""Benchmark of `netmend run`: detection latency, idle cost and kube-proxy-style churn.

usage (root): bench/agent.py [SERVICES] [INJECTIONS] [BACKEND] [WRITER]
       defaults: 10000 30 nft restore; BACKEND nft|legacy, WRITER restore|commands

Creates a network namespace, loads a kube-proxy-shaped ruleset of SERVICES services with
iptables-nft-restore (or iptables-legacy-restore for BACKEND legacy), starts the release agent inside it on 127.0.0.1:9899 and measures:
- latency from a hijacking rule's commit to the finding on /status (WRITER restore: one
  iptables-restore --noflush; WRITER commands: the three commands CNI portmap runs, new chain, its
  DNAT, the jump, timed from the last one's return), and
  from its removal to the finding clearing, over INJECTIONS repetitions (p50/p90/max);
- the agent's CPU (utime+stime from /proc) and RSS at rest over 20 s;
- CPU and peak RSS while the whole table is restored every 5 s for 30 s (churn).
Everything runs inside the namespace; the agent is stopped and the namespace deleted at the end.
"""
import json, os, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "netmend")
# The project's kube-proxy ruleset generator (tests/src/ruleset_gen.rs), built on first use.
GEN = os.path.join(ROOT, "target", "release", "gen-ruleset")
PORT = 9899
HZ = os.sysconf("SC_CLK_TCK")

def sh(ns, cmd, stdin=None):
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "sh", "-c", cmd], input=stdin,
                          check=True, capture_output=True, text=True).stdout

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ

def rss_mib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

HIJACK = ("*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n:CNI-DN-bench - [0:0]\n"
          "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n"
          "-A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 6443 -j CNI-DN-bench\n"
          "-A CNI-DN-bench -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443\nCOMMIT\n")
UNHIJACK = ("IPT -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT && "
            "IPT -t nat -F CNI-HOSTPORT-DNAT && IPT -t nat -X CNI-HOSTPORT-DNAT && "
            "IPT -t nat -F CNI-DN-bench && IPT -t nat -X CNI-DN-bench")
# The way the CNI portmap plugin writes a hostport: separate commands (chain, DNAT, jumps).
HIJACK_COMMANDS = ["IPT -w -t nat -N CNI-HOSTPORT-DNAT",
                   "IPT -w -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                   "IPT -w -t nat -N CNI-DN-bench",
                   "IPT -w -t nat -A CNI-DN-bench -p tcp -m tcp --dport 6443 -j DNAT --to-destination 10.42.0.244:6443",
                   "IPT -w -t nat -A CNI-HOSTPORT-DNAT -p tcp -m multiport --dports 6443 -j CNI-DN-bench"]

def main():
    services = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    injections = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    backend = sys.argv[3] if len(sys.argv) > 3 else "nft"
    writer = sys.argv[4] if len(sys.argv) > 4 else "restore"
    assert backend in ("nft", "legacy") and writer in ("restore", "commands"), __doc__
    ipt = "iptables-nft" if backend == "nft" else "iptables-legacy"
    ns = f"nm-bench-agent-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    state = tempfile.mkdtemp(prefix="netmend-bench-")
    agent = None
    try:
        sh(ns, "ip link set lo up")
        # A node address: a hostport DNAT from prerouting captures traffic to the node's own
        # addresses, which loopback alone is not.
        sh(ns, "(ip link add eth0 type dummy 2>/dev/null || ip link add eth0 type bridge) && ip addr add 192.168.77.10/24 dev eth0 && ip link set eth0 up")
        if not os.access(GEN, os.X_OK):
            subprocess.run(["cargo", "build", "--release", "--locked", "-p", "netmend-e2e", "--bin",
                            "gen-ruleset"], cwd=ROOT, check=True)
        rules = subprocess.run([GEN, "--mode", "iptables", str(services), "2"], check=True,
                               capture_output=True, text=True).stdout
        sh(ns, f"{ipt}-restore", stdin=rules)
        agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", BIN, "run", "--listen",
                                  f"127.0.0.1:{PORT}", "--state-dir", state],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Injections and polling run in one process inside the namespace, so the figures hold
        # only the agent's reaction, not the cost of entering the namespace.
        started = time.time()
        probe = (PROBE.replace("IPT", ipt)
                 .replace("@WRITER@", writer))
        out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", probe,
                              str(injections)], check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        pid = agent.pid  # nsenter execs netmend: same pid
        print(f"backend {backend}, writer {writer}")
        print(f"ruleset: {services} services; agent ready after {result['ready_s']:.2f} s; "
              f"RSS {rss_mib(pid, 'VmRSS'):.1f} MiB")
        for name in ("appear", "clear"):
            values = result[name]
            print(f"latency finding {name}s: p50 {pct(values, 50):.0f} ms, p90 {pct(values, 90):.0f} ms, "
                  f"max {max(values):.0f} ms over {len(values)} injections")

        time.sleep(2)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(20)
        idle = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        print(f"idle: CPU {idle:.2f} % of a core, RSS {rss_mib(pid, 'VmRSS'):.1f} MiB, "
              f"peak RSS so far {rss_mib(pid, 'VmHWM'):.1f} MiB")

        path = os.path.join(state, "rules.txt")
        open(path, "w").write(rules)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        restores = 0
        while time.monotonic() - t0 < 30:
            sh(ns, f"{ipt}-restore < {path}")
            restores += 1
            time.sleep(5)
        churn = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        print(f"churn ({restores} full restores of the table, one every 5 s): CPU {churn:.1f} % of a core, "
              f"peak RSS {rss_mib(pid, 'VmHWM'):.1f} MiB")
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=25)
            except subprocess.TimeoutExpired:
                agent.kill()
        subprocess.run(["ip", "netns", "del", ns])

PROBE = r'''
import json, subprocess, sys, time, urllib.request
URL = "http://127.0.0.1:PORT"
HIJACK = """@HIJACK@"""
UNHIJACK = """@UNHIJACK@"""
COMMANDS = @COMMANDS@
WRITER = "@WRITER@"
def get(path):
    try:
        with urllib.request.urlopen(URL + path, timeout=5) as r:
            return r.status, r.read()
    except Exception:
        return 0, b""
def hijacked():
    code, body = get("/status")
    return code == 200 and any(f["check"] == "hostport-hijack" for f in json.loads(body)["findings"])
def wait(pred):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.001)
    raise SystemExit("timed out")
t0 = time.monotonic()
wait(lambda: get("/readyz")[0] == 200)
result = {"ready_s": time.monotonic() - t0, "appear": [], "clear": []}
for _ in range(int(sys.argv[1])):
    if WRITER == "restore":
        subprocess.run(["IPT-restore", "--noflush"], input=HIJACK, text=True, check=True)
    else:
        for command in COMMANDS:
            subprocess.run(command.split(), check=True)
    t = time.monotonic(); wait(hijacked); result["appear"].append((time.monotonic() - t) * 1000)
    time.sleep(0.3)  # the removal is timed apart from the hijack's passes (and past a minPassInterval if one is set)
    subprocess.run(["sh", "-c", UNHIJACK], check=True)
    t = time.monotonic(); wait(lambda: not hijacked()); result["clear"].append((time.monotonic() - t) * 1000)
    time.sleep(0.3)
print(json.dumps(result))
'''.replace("PORT", str(PORT)).replace("@UNHIJACK@", UNHIJACK).replace("@HIJACK@", HIJACK).replace(
    "@COMMANDS@", repr(HIJACK_COMMANDS))

if __name__ == "__main__":
    main()
