#!/usr/bin/env python3
"""Soak of `netmend run`: the release agent on a 10,000-service node under churn, for a long time.

usage (root): bench/soak.py [--quick] [--minutes N] [--services N] [--out DIR]
       30 minutes by default, 5 with --quick; scripts/soak.sh builds the binaries and runs this.

Creates a node network namespace (eth0 at 192.168.77.10/24 on a veth to a LAN namespace at
192.168.77.1, a second veth pair flap0/flap1 inside the node), loads a kube-proxy iptables-mode
ruleset of SERVICES services (the project's generator, tests/src/ruleset_gen.rs) with
iptables-nft-restore, and starts the release agent inside (enforce mode, remove-hijack-rule on,
confirmFor 2s, node-local). Then, all at once until the time is up:
- churn: every 6 s a kube-proxy sync: `iptables-restore --noflush` rewriting KUBE-SERVICES whole
  (10,000+ rules) and the chains of the next 100 services in turn ([`KubeProxySyncs`]);
- hostports come and go: after each sync a CNI-portmap-style hostport on an unprotected port is
  added with separate iptables commands (as the portmap plugin does) and the previous one removed;
  every third sync the hostport hijacks the API server port 6443 instead (a unique chain each
  time): the agent must report it on /status and remove it, once;
- links flap: flap0 goes down and up every 7 s, and a dummy interface is created and deleted;
- ARP flows: arping from the LAN to the node's address (a configured arp-unanswered target)
  and from the node to the LAN, without pause.
Every 5 s the agent's RSS (VmRSS), peak RSS (VmHWM), CPU time and the journal's line count go to
DIR/soak-rss.csv; the agent's log goes to DIR/agent.log.

Pass/fail (exit 0 only when all hold):
- memory flat: after a warm-up (the first 20% of the run, at least 60 s: the first full read of the
  ruleset and the allocator's working set settle), the median RSS of the last fifth of the run is
  at most the median of the first post-warm-up fifth + max(4 MiB, 10%), and no sample exceeds the
  chart's memory limit (128 MiB). A leak of anything kept per sync, per notification, per link or
  per ARP packet grows with the churn (a full copy of this ruleset is several MiB; one sync every
  6 s is 50 syncs in 5 minutes); allocator noise and size-class rounding stay within a few MiB;
- no missed finding: every injected hijack appeared on /status (polled every 200 ms; the 2 s
  confirmation keeps it there at least that long) within 10 s;
- no duplicate action: per finding key the journal holds at most one `applied` entry, and every
  injected hijack was removed (journal `applied` + `verified`, the chain gone from the ruleset);
- the journal is bounded: only actions are journaled (at most two lines, applied and verified, per
  injected hijack, nothing per sync, flap or pass) and it never exceeds the compaction limit
  (10,000 lines);
- the agent never stopped answering /healthz and exits 0 on SIGTERM.
The final line starts with `soak:` and carries the figures.
"""
import argparse, ctypes, csv, json, os, signal, statistics, subprocess, sys, tempfile, threading
import time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("NETMEND_BIN", os.path.join(ROOT, "target", "release", "netmend"))
GEN = os.path.join(ROOT, "target", "release", "gen-ruleset")
PORT = 9897
HZ = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000
CHART_MEMORY_LIMIT_MIB = 128
JOURNAL_LIMIT = 10_000
SYNC_EVERY = 6.0
FLAP_EVERY = 7.0
SAMPLE_EVERY = 5.0

CONFIG = """mode: enforce
checks:
  arp-unanswered:
    targets: ["192.168.77.10@eth0"]
    window: 10s
fixes:
  remove-hijack-rule: { enabled: true, confirmFor: 2s }
budget:
  fixesPerHour: 100000
kubernetes:
  enabled: false
"""


def enter_netns(name):
    """Moves this process (its main thread, and every thread and child started later) into the
    network namespace `name`."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with open(f"/run/netns/{name}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")


def run(cmd, stdin=None, check=True):
    return subprocess.run(cmd, shell=isinstance(cmd, str), input=stdin, check=check,
                          capture_output=True, text=True).stdout


def in_ns(ns, cmd, check=True):
    return run(["nsenter", f"--net=/run/netns/{ns}", "sh", "-c", cmd], check=check)


def get(path, timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except Exception:
        return 0, b""


def proc_figures(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / HZ
    status = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            status[key] = int(value.split()[0]) / 1024
    return status["VmRSS"], status["VmHWM"], cpu


class KubeProxySyncs:
    """kube-proxy's partial syncs (the only kind since it minimises iptables-restore input, GA in
    Kubernetes 1.28): each rewrites KUBE-SERVICES whole (one rule a service, 10,000+ rules) and
    the KUBE-SVC-*/KUBE-SEP-* chains of the services that changed, with
    `iptables-restore --noflush` (every declared chain is flushed and written again). Here each
    sync "changes" the next 100 services in turn, so every service's chains are rewritten over
    the run."""

    def __init__(self, rules, per_sync=100):
        lines = rules.splitlines()
        start = lines.index("*nat")
        end = start + lines[start:].index("COMMIT")
        self.rules = {}
        for line in lines[start + 1:end]:
            if line.startswith("-A "):
                self.rules.setdefault(line.split()[1], []).append(line)
        self.services = sorted(c for c in self.rules if c.startswith("KUBE-SVC-"))
        self.per_sync = per_sync

    def chains(self, n):
        first = (n * self.per_sync) % max(1, len(self.services))
        changed = self.services[first:first + self.per_sync]
        chains = {"KUBE-SERVICES"} | set(changed)
        for svc in changed:
            for line in self.rules[svc]:
                words = line.split()
                if "-j" in words and words[words.index("-j") + 1].startswith("KUBE-SEP-"):
                    chains.add(words[words.index("-j") + 1])
        return sorted(chains)

    def restore_input(self, n):
        chains = self.chains(n)
        out = ["*nat"] + [f":{c} - [0:0]" for c in chains]
        for c in chains:
            out.extend(self.rules.get(c, []))
        out.append("COMMIT")
        return "\n".join(out) + "\n"


class Soak:
    def __init__(self, args):
        self.args = args
        self.stop = threading.Event()       # watch and sampler
        self.stop_load = threading.Event()  # churn and flaps (stop first)
        self.errors = []
        self.lock = threading.Lock()
        self.injected = []  # (chain, injected at)
        self.seen = {}      # chain -> seconds until it showed on /status
        self.syncs = 0
        self.sync_seconds = []
        self.hostports = 0
        self.flaps = 0
        self.samples = []   # (t, rss, hwm, cpu, journal lines)
        self.health_failures = 0

    def error(self, text):
        with self.lock:
            self.errors.append(text)
        print(f"soak: error: {text}", file=sys.stderr, flush=True)

    # --- load generators -------------------------------------------------------------------
    def churn(self, syncs):
        n = 0
        previous = None
        while not self.stop_load.is_set():
            started = time.monotonic()
            try:
                run("iptables-nft-restore -w --noflush", stdin=syncs.restore_input(n))
            except subprocess.CalledProcessError as e:
                self.error(f"kube-proxy sync failed: {e.stderr.strip()}")
            self.sync_seconds.append(time.monotonic() - started)
            self.syncs += 1
            n += 1
            if previous:
                run(previous, check=False)
            hijack = n % 3 == 0
            chain = f"CNI-DN-soak{n:05d}"
            port = 6443 if hijack else 30000 + n % 2000
            pod = f"10.42.{n % 250}.{n % 200 + 2}"
            # The jump the portmap plugin writes, with its comment naming the network and the
            # container (which is what lets remove-hijack-rule act on it).
            jump = (f"-p tcp -m comment --comment 'dnat name: \"cbr0\" id: \"soak{n:05d}\"' "
                    f"-m multiport --dports {port} -j {chain}")
            cmds = [
                "iptables-nft -w -t nat -N CNI-HOSTPORT-DNAT 2>/dev/null || true",
                "iptables-nft -w -t nat -C PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null"
                " || iptables-nft -w -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                f"iptables-nft -w -t nat -N {chain}",
                f"iptables-nft -w -t nat -A {chain} -p tcp -m tcp --dport {port} -j DNAT --to-destination {pod}:{port}",
                f"iptables-nft -w -t nat -A CNI-HOSTPORT-DNAT {jump}",
            ]
            try:
                run(" && ".join(cmds))
            except subprocess.CalledProcessError as e:
                self.error(f"hostport {chain}: {e.stderr.strip()}")
            self.hostports += 1
            if hijack:
                with self.lock:
                    self.injected.append((chain, time.monotonic()))
                previous = None  # the agent removes it
            else:
                previous = (f"iptables-nft -w -t nat -D CNI-HOSTPORT-DNAT {jump}; "
                            f"iptables-nft -w -t nat -F {chain}; iptables-nft -w -t nat -X {chain}")
            self.stop_load.wait(max(0.0, SYNC_EVERY - (time.monotonic() - started)))

    def flap(self):
        n = 0
        while not self.stop_load.is_set():
            n += 1
            run("ip link set flap0 down", check=False)
            run(f"ip link add soak-dummy{n % 4} type dummy && ip link set soak-dummy{n % 4} up", check=False)
            self.stop_load.wait(1.0)
            run("ip link set flap0 up", check=False)
            run(f"ip link del soak-dummy{n % 4}", check=False)
            self.flaps += 1
            self.stop_load.wait(FLAP_EVERY - 1.0)

    def watch(self):
        """Polls /status for the injected hijacks and /healthz for liveness."""
        while not self.stop.is_set():
            code, body = get("/status")
            if code == 200:
                subjects = {f["subject"] for f in json.loads(body)["findings"]
                            if f["check"] == "hostport-hijack"}
                now = time.monotonic()
                with self.lock:
                    for chain, at in self.injected:
                        if chain not in self.seen and any(chain in s for s in subjects):
                            self.seen[chain] = now - at
            if get("/healthz", timeout=10)[0] != 200:
                self.health_failures += 1
            self.stop.wait(0.2)

    def sample(self, pid, journal, t0, writer, csv_file):
        while not self.stop.is_set():
            rss, hwm, cpu = proc_figures(pid)
            try:
                lines = sum(1 for _ in open(journal))
            except FileNotFoundError:
                lines = 0
            row = (round(time.monotonic() - t0, 1), round(rss, 2), round(hwm, 2), round(cpu, 2), lines)
            self.samples.append(row)
            writer.writerow(row)
            csv_file.flush()  # readable while the soak runs
            self.stop.wait(SAMPLE_EVERY)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 minutes instead of 30")
    parser.add_argument("--minutes", type=float, help="duration (default 30, 5 with --quick)")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "soak"))
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None else (5 if args.quick else 30)
    if os.geteuid() != 0:
        sys.exit("soak: needs root (network namespaces, nftables)")
    for path in (BIN, GEN):
        if not os.access(path, os.X_OK):
            sys.exit(f"soak: {path} is missing: run scripts/soak.sh, which builds it")
    os.makedirs(args.out, exist_ok=True)

    tag = os.environ.get("SOAK_TAG", str(os.getpid()))
    node, lan = f"nm-soak-{tag}", f"nm-soak-lan-{tag}"
    state = tempfile.mkdtemp(prefix="netmend-soak-")
    soak = Soak(args)
    agent = None
    background = []
    # Cleanup runs on normal exit, on errors and on SIGINT/SIGTERM (turned into SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    exit_status = None
    try:
        for ns in (node, lan):
            run(["ip", "netns", "add", ns])
        enter_netns(node)
        run("ip link set lo up")
        run(f"ip link add eth0 type veth peer name uplink netns {lan}")
        run("ip addr add 192.168.77.10/24 dev eth0 && ip link set eth0 up")
        in_ns(lan, "ip link set lo up && ip addr add 192.168.77.1/24 dev uplink && ip link set uplink up")
        run("ip link add flap0 type veth peer name flap1 && ip link set flap1 up && ip link set flap0 up")

        rules = run([GEN, "--mode", "iptables", str(args.services), "2"])
        run("iptables-nft-restore -w", stdin=rules)
        syncs = KubeProxySyncs(rules)
        rule_count = run("iptables-nft-save -t nat | grep -c '^-A'").strip()
        config = os.path.join(state, "config.yaml")
        with open(config, "w") as f:
            f.write(CONFIG)
        log = open(os.path.join(args.out, "agent.log"), "w")
        agent = subprocess.Popen([BIN, "run", "--config", config, "--listen", f"127.0.0.1:{PORT}",
                                  "--state-dir", os.path.join(state, "state")],
                                 stdout=log, stderr=log)
        t0 = time.monotonic()
        while get("/readyz")[0] != 200:
            if agent.poll() is not None or time.monotonic() - t0 > 60:
                sys.exit(f"soak: the agent did not become ready; see {args.out}/agent.log")
            time.sleep(0.1)
        ready_s = time.monotonic() - t0
        print(f"soak: {args.services} services ({rule_count} nat rules), agent ready in {ready_s:.1f} s; "
              f"running {minutes:g} min, samples in {args.out}/soak-rss.csv", flush=True)

        background.append(subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{lan}", "arping", "-i", "uplink", "-W", "0.2", "192.168.77.10"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        background.append(subprocess.Popen(["arping", "-i", "eth0", "-W", "0.5", "192.168.77.1"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        csv_file = open(os.path.join(args.out, "soak-rss.csv"), "w", newline="")
        writer = csv.writer(csv_file)
        writer.writerow(("seconds", "rss_mib", "hwm_mib", "cpu_seconds", "journal_lines"))
        journal = os.path.join(state, "state", "journal.jsonl")
        threads = [threading.Thread(target=soak.churn, args=(syncs,), daemon=True),
                   threading.Thread(target=soak.flap, daemon=True),
                   threading.Thread(target=soak.watch, daemon=True),
                   threading.Thread(target=soak.sample, args=(agent.pid, journal, t0, writer, csv_file), daemon=True)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline and agent.poll() is None:
            time.sleep(1)
        soak.stop_load.set()
        for t in threads[:2]:
            t.join(timeout=30)
        # The last hijack gets its confirmation time and the fix, watched as the others.
        time.sleep(8)
        soak.stop.set()
        for t in threads[2:]:
            t.join(timeout=30)
        csv_file.close()
        if agent.poll() is not None:
            soak.error(f"the agent exited during the soak (status {agent.returncode})")
        rest = run("iptables-nft-save -t nat")
        status = json.loads(get("/status")[1] or b"{}")
        agent.send_signal(signal.SIGTERM)
        try:
            exit_status = agent.wait(timeout=25)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
            exit_status = "none (killed after 25 s)"
        if exit_status != 0:
            soak.error(f"SIGTERM: the agent exited with {exit_status}")

        # --- verdict ---------------------------------------------------------------------------
        entries = [json.loads(l) for l in open(journal) if l.strip()] if os.path.exists(journal) else []
        applied = {}
        verified = set()
        for e in entries:
            if e.get("outcome") == "applied":
                applied[e["key"]] = applied.get(e["key"], 0) + 1
            if e.get("outcome") == "verified":
                verified.add(e["key"])
        duplicates = {k: v for k, v in applied.items() if v > 1}
        if duplicates:
            soak.error(f"duplicate actions: {duplicates}")
        injected = [c for c, _ in soak.injected]
        missed = [c for c in injected if c not in soak.seen or soak.seen[c] > 10]
        if missed:
            soak.error(f"missed findings (not on /status within 10 s): {missed}")
        mended = [c for c in injected if any(c in k for k in verified)]
        not_mended = [c for c in injected if c not in mended or f":{c} " in rest]
        if not_mended:
            soak.error(f"hijacks not removed once and verified: {not_mended}")
        expected_syncs = minutes * 60 / SYNC_EVERY
        if soak.syncs < expected_syncs / 2:
            soak.error(f"only {soak.syncs} kube-proxy syncs ran (about {expected_syncs:.0f} expected)")
        if not injected:
            soak.error("no hijack was injected")
        max_journal = max((s[4] for s in soak.samples), default=0)
        if max_journal > JOURNAL_LIMIT:
            soak.error(f"journal grew to {max_journal} lines (limit {JOURNAL_LIMIT})")
        # Only actions are journaled, never passes, syncs or flaps: two lines per mended hijack.
        if len(entries) > 2 * len(injected):
            soak.error(f"journal holds {len(entries)} lines for {len(injected)} actions")
        for p, what in zip(background, ("LAN -> node", "node -> LAN")):
            if p.poll() is not None:
                soak.error(f"arping {what} stopped early (status {p.returncode})")
        if soak.health_failures:
            soak.error(f"/healthz failed {soak.health_failures} times")
        if status.get("journalHealth", {}).get("writeError"):
            soak.error(f"journal write error: {status['journalHealth']['writeError']}")

        total = minutes * 60
        warmup = max(60.0, 0.2 * total)
        steady = [s for s in soak.samples if s[0] >= warmup]
        rss = [s[1] for s in soak.samples]
        if len(steady) < 4:
            soak.error(f"too few samples after the {warmup:.0f} s warm-up: {len(steady)}")
            early = late = slope = 0.0
        else:
            fifth = max(1, len(steady) // 5)
            early = statistics.median(s[1] for s in steady[:fifth])
            late = statistics.median(s[1] for s in steady[-fifth:])
            xs = [s[0] for s in steady]
            ys = [s[1] for s in steady]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs) * 3600
            allowed = max(4.0, 0.1 * early)
            if late > early + allowed:
                soak.error(f"RSS grew: median {early:.1f} MiB after warm-up, {late:.1f} MiB at the end "
                           f"(allowed +{allowed:.1f} MiB)")
        peak = max((s[2] for s in soak.samples), default=0.0)
        if peak > CHART_MEMORY_LIMIT_MIB:
            soak.error(f"peak RSS {peak:.1f} MiB is over the chart's {CHART_MEMORY_LIMIT_MIB} MiB limit")
        cpu = soak.samples[-1][3] / soak.samples[-1][0] * 100 if soak.samples and soak.samples[-1][0] else 0
        seen = sorted(soak.seen.values())
        p50 = seen[len(seen) // 2] if seen else 0
        result = "PASS" if not soak.errors else f"FAIL ({len(soak.errors)} problems)"
        print(f"soak: {result}: {minutes:g} min, {args.services} services, {soak.syncs} kube-proxy syncs "
              f"(median {statistics.median(soak.sync_seconds or [0]):.1f} s each), {soak.hostports} hostports, "
              f"{soak.flaps} link flaps; hijacks {len(injected)} injected, {len(injected) - len(missed)} seen "
              f"(p50 {p50:.1f} s), {len(mended)} removed once, {len(duplicates)} duplicate actions; "
              f"journal max {max_journal} lines; RSS start {rss[0] if rss else 0:.1f} MiB, "
              f"after warm-up {early:.1f}, max {max(rss, default=0):.1f}, end {rss[-1] if rss else 0:.1f} MiB, "
              f"slope {slope:+.1f} MiB/h, peak {peak:.1f} MiB; CPU {cpu:.1f}% of a core; "
              f"SIGTERM exit {exit_status}", flush=True)
        return 0 if not soak.errors else 1
    finally:
        soak.stop_load.set()
        soak.stop.set()
        for p in background:
            p.kill()
            p.wait()
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        for ns in (node, lan):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", state])


if __name__ == "__main__":
    sys.exit(main())
