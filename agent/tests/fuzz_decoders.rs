//! Bounded fuzzing of every decoder of outside bytes (`netmend::fuzz`), on the stable toolchain,
//! inside `cargo test`: the captured fixtures of `agent/testdata/` (and the seeds of
//! `agent/testdata/fuzz/seeds/`) are replayed, then mutated (bit flips, interesting values,
//! netlink length fields corrupted, truncations, splices of two fixtures, repeated and deleted
//! ranges, random bytes) for a time budget per decoder. Every input must decode or fail with a
//! clear error, without panicking and within [`HANG_LIMIT`].
//!
//! Knobs (environment): `NETMEND_FUZZ_SECS` (budget per decoder, default 5 s),
//! `NETMEND_FUZZ_SEED` (replay a run: the seed is printed and written next to failures),
//! `NETMEND_FUZZ_REPORT` (a file each decoder appends its figures to, for scripts/hardening.sh).
//!
//! A failing input is written to `<target tmp>/fuzz-failures/<decoder>/`; once fixed it is kept
//! in `agent/testdata/fuzz/regressions/<decoder>/`, replayed first by every run.

use netmend::fuzz::{self, NotificationSteps, Target};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One input taking longer than this is a hang (debug build, a 48 KB dump decodes in milliseconds).
const HANG_LIMIT: Duration = Duration::from_secs(10);
const DEFAULT_SECS: f64 = 5.0;
/// Inputs grow by splices and repeats; past this they are cut back.
const MAX_INPUT: usize = 128 * 1024;

/// Named inputs: a file name and its bytes.
type Inputs = Vec<(String, Vec<u8>)>;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

// ---- inputs -----------------------------------------------------------------------------------

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks_exact(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// The files of `dir` whose names pass `keep`, sorted, read (`.hex` files decoded).
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Inputs {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .filter(|p| p.file_name().unwrap() != "README.md")
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let bytes = if p.extension().is_some_and(|e| e == "hex") {
                unhex(std::str::from_utf8(&bytes).unwrap())
            } else {
                bytes
            };
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// An x_tables match or target fixture (`ipv4-match-tcp-r0.bin`) as the `xt_extension` input:
/// selector byte, `xt_entry_match` header, data.
fn xt_extension_input(file: &str, data: &[u8]) -> Option<Vec<u8>> {
    let stem = file.strip_suffix(".bin")?;
    let mut parts = stem.splitn(3, '-');
    let family = parts.next()?;
    let kind = parts.next()?;
    let (name, revision) = parts.next()?.rsplit_once("-r")?;
    let mut selector = 0u8;
    if kind == "target" {
        selector |= 1;
    }
    if family == "ipv6" {
        selector |= 2;
    }
    let mut input = vec![selector];
    let size = u16::try_from(fuzz::XT_HEADER_LEN + data.len()).ok()?;
    input.extend_from_slice(&size.to_ne_bytes());
    let mut name_field = [0u8; 29];
    name_field[..name.len()].copy_from_slice(name.as_bytes());
    input.extend_from_slice(&name_field);
    input.push(revision.parse().ok()?);
    input.extend_from_slice(data);
    Some(input)
}

fn seeds(target: &str) -> Inputs {
    let data = testdata();
    let own = files(&data.join("fuzz/seeds").join(target), |_| true);
    let fixtures = match target {
        "nft_dump" => {
            let mut all = files(&data.join("nft"), |n| n.ends_with(".bin"));
            all.extend(files(&data.join("nft/events"), |n| {
                n.ends_with(".dump.bin") && (n.starts_with("00") || n.starts_with("21"))
            }));
            all
        }
        "nft_events" => {
            let mut all = files(&data.join("nft/events"), |n| n.ends_with(".events.bin"));
            all.extend(files(&data.join("nft/attribution"), |n| {
                n.ends_with(".bin")
            }));
            all
        }
        "rtnl_link" => files(&data.join("l2"), |n| n.starts_with("link-")),
        "arp_frame" => files(&data.join("l2"), |n| n.starts_with("arp-")),
        "xt_table" => files(&data.join("legacy"), |n| n.ends_with(".bin")),
        "xt_extension" => files(&data.join("xt"), |n| n.ends_with(".bin"))
            .into_iter()
            .filter_map(|(name, bytes)| Some((name.clone(), xt_extension_input(&name, &bytes)?)))
            .collect(),
        _ => Vec::new(),
    };
    let mut all = fixtures;
    all.extend(own);
    assert!(!all.is_empty(), "{target}: no seed input found");
    all
}

fn regressions(target: &str) -> Inputs {
    files(&testdata().join("fuzz/regressions").join(target), |_| true)
}

// ---- mutations --------------------------------------------------------------------------------

/// splitmix64: small, fast, and reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING_16: [u16; 9] = [0, 1, 3, 4, 5, 0x7f, 0x80, 0x7fff, 0xffff];
const INTERESTING_32: [u32; 10] = [
    0,
    1,
    3,
    4,
    16,
    17,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fff0,
    0xffff_ffff,
];

/// Offsets of the netlink length fields of `buf`: each message's u32 `nlmsg_len`, and the u16
/// `nla_len` of every attribute found after the usual fixed headers (4, 8, 16 bytes) of each
/// payload, nested attributes included.
fn netlink_length_fields(buf: &[u8]) -> Vec<(usize, usize)> {
    fn attrs(buf: &[u8], base: usize, depth: usize, out: &mut Vec<(usize, usize)>) {
        let mut at = 0;
        while at + 4 <= buf.len() && depth < 8 {
            let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
            if len < 4 || at + len > buf.len() {
                return;
            }
            out.push((base + at, 2));
            if len > 8 {
                attrs(&buf[at + 4..at + len], base + at + 4, depth + 1, out);
            }
            at += (len + 3) & !3;
        }
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        out.push((at, 4));
        for header in [4, 8, 16] {
            if at + 16 + header < at + len {
                attrs(
                    &buf[at + 16 + header..at + len],
                    at + 16 + header,
                    0,
                    &mut out,
                );
            }
        }
        at += (len + 3) & !3;
    }
    if out.is_empty() {
        // A bare payload (links, addresses, sock_diag): attributes after its fixed header.
        for header in [8, 16, 72] {
            if header < buf.len() {
                attrs(&buf[header..], header, 0, &mut out);
            }
        }
    }
    out
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = input.len();
    match rng.below(12) {
        // Bit flips.
        0 | 1 if len > 0 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
        }
        // An interesting byte.
        2 if len > 0 => {
            let at = rng.below(len);
            input[at] = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)];
        }
        // An interesting u16 / u32 at any offset, either byte order.
        3 if len >= 4 => {
            let at = rng.below(len - 3);
            if rng.chance(2) {
                let v = INTERESTING_16[rng.below(INTERESTING_16.len())];
                let bytes = if rng.chance(2) {
                    v.to_ne_bytes()
                } else {
                    v.to_be_bytes()
                };
                input[at..at + 2].copy_from_slice(&bytes);
            } else {
                let v = INTERESTING_32[rng.below(INTERESTING_32.len())];
                let bytes = if rng.chance(2) {
                    v.to_ne_bytes()
                } else {
                    v.to_be_bytes()
                };
                input[at..at + 4].copy_from_slice(&bytes);
            }
        }
        // A netlink length field off by a little, or set to an edge value.
        4 | 5 => {
            let fields = netlink_length_fields(input);
            if fields.is_empty() {
                return mutate(rng, input, corpus);
            }
            let (at, width) = fields[rng.below(fields.len())];
            let delta = [-8i64, -4, -1, 1, 3, 4, 8][rng.below(7)];
            if width == 2 {
                let old = u16::from_ne_bytes([input[at], input[at + 1]]);
                let new = match rng.below(3) {
                    0 => INTERESTING_16[rng.below(INTERESTING_16.len())],
                    1 => (len - at).min(0xffff) as u16,
                    _ => (i64::from(old) + delta).clamp(0, 0xffff) as u16,
                };
                input[at..at + 2].copy_from_slice(&new.to_ne_bytes());
            } else {
                let old = u32::from_ne_bytes(input[at..at + 4].try_into().unwrap());
                let new = match rng.below(3) {
                    0 => INTERESTING_32[rng.below(INTERESTING_32.len())],
                    1 => (len - at) as u32,
                    _ => (i64::from(old) + delta).clamp(0, i64::from(u32::MAX)) as u32,
                };
                input[at..at + 4].copy_from_slice(&new.to_ne_bytes());
            }
        }
        // Truncation.
        6 if len > 0 => input.truncate(rng.below(len)),
        // Splice: a piece of another input of the corpus, inserted or overwriting.
        7 | 8 => {
            let other = &corpus[rng.below(corpus.len())];
            if other.is_empty() {
                return;
            }
            let from = rng.below(other.len());
            let to = from + 1 + rng.below((other.len() - from).min(4096));
            let at = rng.below(len + 1);
            if rng.chance(2) {
                input.splice(at..at, other[from..to].iter().copied());
            } else {
                let end = (at + (to - from)).min(len);
                input.splice(at..end, other[from..to].iter().copied());
            }
        }
        // A range repeated (a message or attribute twice).
        9 if len > 0 => {
            let from = rng.below(len);
            let to = from + 1 + rng.below((len - from).min(1024));
            let piece = input[from..to].to_vec();
            input.splice(to..to, piece);
        }
        // A range deleted.
        10 if len > 0 => {
            let from = rng.below(len);
            let to = from + 1 + rng.below((len - from).min(1024));
            input.drain(from..to);
        }
        // Random bytes inserted.
        _ => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
    }
    input.truncate(MAX_INPUT);
}

// ---- the bounded run --------------------------------------------------------------------------

fn budget() -> Duration {
    let secs = std::env::var("NETMEND_FUZZ_SECS")
        .ok()
        .map(|s| {
            s.parse::<f64>()
                .expect("NETMEND_FUZZ_SECS: seconds per decoder")
        })
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs_f64(secs)
}

fn seed_for(target: &str) -> u64 {
    if let Ok(s) = std::env::var("NETMEND_FUZZ_SEED") {
        let s = s.trim_start_matches("0x");
        return u64::from_str_radix(s, 16).expect("NETMEND_FUZZ_SEED: hex");
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b))
}

fn failures_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(target)
}

fn keep_failure(target: &str, input: &[u8], what: &str) -> PathBuf {
    let dir = failures_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{what}-{hash:016x}.bin"));
    std::fs::write(&path, input).unwrap();
    path
}

/// The input that failed and the panic's message.
type Failure = (Vec<u8>, String);

/// What one decoder's run tried.
#[derive(Debug, Default)]
struct Figures {
    inputs: u64,
    seeds: usize,
    regressions: usize,
}

/// Feeds `run` the regressions, the seeds, then mutations of the seeds until the budget is spent;
/// panics naming the saved input on the first panic or hang.
fn fuzz_target(target: &'static str, seeds: Inputs, run: impl Fn(&[u8]) + Send + Sync + 'static) {
    let regressions = regressions(target);
    let seed = seed_for(target);
    let budget = budget();
    let dir = failures_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    // Written before the run: a crash that kills the process (a stack overflow) is replayed
    // from it.
    std::fs::write(dir.join("last-seed"), format!("{seed:016x}\n")).unwrap();

    let current = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<Failure>>> = Arc::new(Mutex::new(None));
    let figures = Figures {
        inputs: 0,
        seeds: seeds.len(),
        regressions: regressions.len(),
    };

    let worker = {
        let (current, done, finished, failure) = (
            current.clone(),
            done.clone(),
            finished.clone(),
            failure.clone(),
        );
        std::thread::Builder::new()
            .name(format!("fuzz-{target}"))
            .stack_size(8 << 20)
            .spawn(move || {
                let try_one = |input: &[u8]| -> bool {
                    current.lock().unwrap().clone_from(&input.to_vec());
                    let outcome = catch_unwind(AssertUnwindSafe(|| run(input)));
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Err(panic) = outcome {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic".into());
                        *failure.lock().unwrap() = Some((input.to_vec(), message));
                        return false;
                    }
                    true
                };
                let started = Instant::now();
                let fixed: Vec<&Vec<u8>> = regressions
                    .iter()
                    .chain(seeds.iter())
                    .map(|(_, b)| b)
                    .collect();
                for input in &fixed {
                    if !try_one(input) {
                        finished.store(true, Ordering::Release);
                        return;
                    }
                }
                let corpus: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
                let mut rng = Rng(seed);
                while started.elapsed() < budget {
                    let mut input = corpus[rng.below(corpus.len())].clone();
                    for _ in 0..=rng.below(4) {
                        mutate(&mut rng, &mut input, &corpus);
                    }
                    if !try_one(&input) {
                        break;
                    }
                }
                finished.store(true, Ordering::Release);
            })
            .unwrap()
    };

    // The watchdog: an input that does not finish within HANG_LIMIT is a hang.
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    while !finished.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
        let count = done.load(Ordering::Relaxed);
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > HANG_LIMIT {
            let input = current.lock().unwrap().clone();
            let path = keep_failure(target, &input, "hang");
            panic!(
                "fuzz {target}: an input ran longer than {HANG_LIMIT:?} (seed {seed:016x}); \
                 kept in {}",
                path.display()
            );
        }
    }
    worker.join().unwrap();
    let figures = Figures {
        inputs: done.load(Ordering::Relaxed),
        ..figures
    };
    if let Some((input, message)) = failure.lock().unwrap().take() {
        let path = keep_failure(target, &input, "crash");
        panic!(
            "fuzz {target}: {message} (seed {seed:016x}, after {} inputs); input kept in {} \
             -- once fixed, copy it to agent/testdata/fuzz/regressions/{target}/",
            figures.inputs,
            path.display()
        );
    }
    let line = format!(
        "fuzz {target}: {} inputs in {:.1}s ({} seeds, {} regression cases, seed {seed:016x}), no panic, no hang",
        figures.inputs,
        budget.as_secs_f64(),
        figures.seeds,
        figures.regressions,
    );
    eprintln!("{line}");
    if let Ok(report) = std::env::var("NETMEND_FUZZ_REPORT") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(report)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }
    assert!(
        figures.inputs > figures.seeds as u64,
        "fuzz {target}: no mutated input was tried ({} inputs)",
        figures.inputs
    );
}

fn target(name: &str) -> Target {
    *fuzz::TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let t = target(stringify!($name));
                fuzz_target(t.name, seeds(t.name), t.run);
            }
        )*
        /// Every target of `netmend::fuzz::TARGETS` has a test here.
        #[test]
        fn every_target_is_fuzzed() {
            let tested = [$(stringify!($name)),*];
            for t in fuzz::TARGETS {
                assert!(tested.contains(&t.name), "fuzz target {} has no test", t.name);
            }
        }
    };
}

fuzz_tests!(
    nft_dump,
    nft_events,
    rtnl_link,
    rtnl_address,
    sock_diag,
    xt_table,
    xt_extension,
    arp_frame,
    bpf_responder,
    proc_text,
    config,
);

/// nftables notifications replayed on a cache started from the dump before their step (see
/// `netmend::fuzz::NotificationSteps`).
#[test]
fn nft_notifications() {
    let steps = NotificationSteps::load(&testdata().join("nft/events")).unwrap();
    let seeds = steps.seeds.clone();
    fuzz_target(fuzz::NFT_NOTIFICATIONS, seeds, move |data| steps.run(data));
}

/// With `NETMEND_FUZZ_EXPORT=DIR`, writes every target's inputs (seeds and regression cases, in
/// each target's input layout) to `DIR/<target>/`: the starting corpus of the cargo-fuzz run of
/// `scripts/fuzz.sh`.
#[test]
#[ignore = "run by scripts/fuzz.sh to prepare the cargo-fuzz corpus"]
fn export_seeds() {
    let dir = PathBuf::from(std::env::var("NETMEND_FUZZ_EXPORT").expect("NETMEND_FUZZ_EXPORT"));
    let steps = NotificationSteps::load(&testdata().join("nft/events")).unwrap();
    let mut all: Vec<(&str, Inputs)> = fuzz::TARGETS
        .iter()
        .map(|t| (t.name, seeds(t.name)))
        .collect();
    all.push((fuzz::NFT_NOTIFICATIONS, steps.seeds.clone()));
    for (target, inputs) in all {
        let out = dir.join(target);
        std::fs::create_dir_all(&out).unwrap();
        for (name, bytes) in inputs.into_iter().chain(regressions(target)) {
            std::fs::write(out.join(name), bytes).unwrap();
        }
    }
}

/// The mutator itself: it changes inputs, finds the length fields of a captured dump, and keeps
/// inputs bounded.
#[test]
fn mutations_change_inputs_and_find_length_fields() {
    let dump = std::fs::read(testdata().join("nft/native.bin")).unwrap();
    let fields = netlink_length_fields(&dump);
    assert!(fields.iter().any(|&(at, w)| at == 0 && w == 4));
    assert!(fields.iter().filter(|&&(_, w)| w == 2).count() > 50);
    let mut rng = Rng(7);
    let corpus = vec![dump.clone()];
    let mut changed = 0;
    for _ in 0..200 {
        let mut input = dump.clone();
        mutate(&mut rng, &mut input, &corpus);
        assert!(input.len() <= MAX_INPUT);
        if input != dump {
            changed += 1;
        }
    }
    assert!(
        changed > 150,
        "only {changed} of 200 mutations changed the input"
    );
}
