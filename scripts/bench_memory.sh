#!/usr/bin/env bash
# `make bench-memory` (part of `make bench`): does memory go back after a
# burst? `wapipe serve` in embedded mode (SQLite, every role), built twice:
# with the default allocator (jemalloc, background purging) and with the
# system one (glibc; `--no-default-features`). For each, MEM_RUNS (3) runs,
# alternating the two builds so both see the same machine:
#   1. idle RSS, 5 s after start;
#   2. MEM_CONNS (100) connections at once, each posting a 4 MB body with a
#      bad signature (refused with 401, or 503 past the body budget);
#   3. a burst of MEM_WEBHOOKS (20,000) valid webhooks from `wapipe-sim load`,
#      waited on until every one is processed.
# After each of 2 and 3 it samples RSS every second for MEM_SETTLE (60) s.
# Reported: idle, peak, RSS at the end of each settle, and the seconds until
# RSS was back within 20% of idle (the target: within 60 s). Medians of
# the runs, and each build's ratio to the system allocator's. MEM_PREBUILT=DIR
# uses release binaries built beforehand (see below) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${MEM_RUNS:-3}
CONNS=${MEM_CONNS:-100}
WEBHOOKS=${MEM_WEBHOOKS:-20000}
SETTLE=${MEM_SETTLE:-60}
SECRET=bench-app-secret
PHONE=106540352242922
WABA=102290129340398
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT

if [ -n "${MEM_PREBUILT:-}" ]; then
  # Release binaries built beforehand: wapipe (default features),
  # wapipe-system (--no-default-features) and wapipe-sim.
  cp "$MEM_PREBUILT/wapipe-sim" "$WORK/wapipe-sim"
  cp "$MEM_PREBUILT/wapipe-system" "$WORK/wapipe-system"
  cp "$MEM_PREBUILT/wapipe" "$WORK/wapipe-jemalloc"
else
  cargo build --release -q -p wapipe-sim --bin wapipe-sim
  cp "$BIN/wapipe-sim" "$WORK/wapipe-sim"
  cargo build --release -q -p wapipe --bin wapipe --no-default-features
  cp "$BIN/wapipe" "$WORK/wapipe-system"
  cargo build --release -q -p wapipe --bin wapipe
  cp "$BIN/wapipe" "$WORK/wapipe-jemalloc"
fi

python3 - "$WORK" "$RUNS" "$CONNS" "$WEBHOOKS" "$SETTLE" "$SECRET" "$PHONE" "$WABA" <<'PY'
import http.client, json, os, sqlite3, statistics, subprocess, sys, threading, time

work, runs, conns, webhooks, settle = sys.argv[1], *map(int, sys.argv[2:6])
secret, phone, waba = sys.argv[6:9]
PORT, METRICS = 18591, 18592

def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

def settle_curve(pid, idle):
    """RSS each second for `settle` s: (last, seconds until within 20% of idle or None)."""
    back = None
    last = rss_mib(pid)
    for s in range(1, settle + 1):
        time.sleep(1)
        last = rss_mib(pid)
        if back is None and last <= idle * 1.2:
            back = s
    return last, back

def one_run(build):
    d = os.path.join(work, f"run-{build}-{time.monotonic_ns()}")
    os.makedirs(d)
    env = dict(os.environ, RUST_LOG="warn", WAPIPE_LISTEN=f"127.0.0.1:{PORT}",
               WAPIPE_METRICS_LISTEN=f"127.0.0.1:{METRICS}")
    exe = os.path.join(work, f"wapipe-{build}")
    subprocess.run([exe, "config", "add", "--company", "Bench", "--phone-number-id", phone,
                    "--waba-id", waba, "--app-secret", secret, "--verify-token", "v",
                    "--access-token", "t"], cwd=d, env=env, check=True, capture_output=True)
    serve = subprocess.Popen([exe, "serve"], cwd=d, env=env,
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "serve.log"), "w"))
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=1)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(5)
        idle = rss_mib(serve.pid)
        peak = [idle]
        stop = threading.Event()
        def sampler():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(serve.pid))
                time.sleep(0.05)
        threading.Thread(target=sampler, daemon=True).start()

        # 2. Large bodies with a bad signature, all at once.
        body = b'{"object":"whatsapp_business_account","entry":[' + b" " * (4_000_000 - 60) + b"]}"
        codes = []
        def big():
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
                c.request("POST", "/api/whatsapp/webhooks", body=body,
                          headers={"content-type": "application/json",
                                   "x-hub-signature-256": "sha256=" + "0" * 64})
                codes.append(c.getresponse().status)
            except OSError as e:
                codes.append(str(e))
        ts = [threading.Thread(target=big) for _ in range(conns)]
        for t in ts: t.start()
        for t in ts: t.join()
        peak_big = peak[0]
        after_big, back_big = settle_curve(serve.pid, idle)

        # 3. A burst of valid webhooks, processed.
        peak[0] = rss_mib(serve.pid)
        subprocess.run([os.path.join(work, "wapipe-sim"), "load", "--webhook",
                        f"http://127.0.0.1:{PORT}/api/whatsapp/webhooks", "--app-secret", secret,
                        "--rate", "0", "--duration", "600s", "--requests", str(webhooks),
                        "--concurrency", "64", "--phone-number-id", phone, "--waba-id", waba,
                        "--customers", "5000", "--json"], check=True, capture_output=True)
        db = sqlite3.connect(f"file:{os.path.join(d, 'data', 'wapipe.sqlite')}?mode=ro", uri=True, timeout=30)
        deadline = time.time() + 600
        while time.time() < deadline:
            left = db.execute("select count(*) from webhook_events where status = 'received'").fetchone()[0]
            if left == 0:
                break
            time.sleep(0.5)
        db.close()
        peak_burst = peak[0]
        stop.set()
        after_burst, back_burst = settle_curve(serve.pid, idle)
        refused = {c: codes.count(c) for c in set(codes)}
        return dict(build=build, idle=idle, peak_big=peak_big, after_big=after_big, back_big=back_big,
                    peak_burst=peak_burst, after_burst=after_burst, back_burst=back_burst,
                    refused=refused, crashed=serve.poll() is not None)
    finally:
        serve.terminate()
        serve.wait(timeout=30)

rows = []
for i in range(runs):
    for build in ("system", "jemalloc"):
        r = one_run(build)
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)

print(f"\nmemory after bursts: wapipe serve (embedded), {runs} runs per allocator, medians (MiB)")
print(f"{'allocator':>10} {'idle':>6} | {conns} x 4 MB bad signature: {'peak':>6} {'+'+str(settle)+'s':>6} {'back in':>8} |"
      f" {webhooks} webhooks: {'peak':>6} {'+'+str(settle)+'s':>6} {'back in':>8}")
med = {}
for build in ("system", "jemalloc"):
    rs = [r for r in rows if r["build"] == build]
    m = lambda k: statistics.median(r[k] for r in rs)
    backs = lambda k: ", ".join("-" if r[k] is None else f"{r[k]}s" for r in rs)
    med[build] = {k: m(k) for k in ("idle", "peak_big", "after_big", "peak_burst", "after_burst")}
    print(f"{build:>10} {m('idle'):>6.0f} | {'':>26}{m('peak_big'):>6.0f} {m('after_big'):>6.0f} {backs('back_big'):>8} |"
          f" {'':>15}{m('peak_burst'):>6.0f} {m('after_burst'):>6.0f} {backs('back_burst'):>8}")
j, s = med["jemalloc"], med["system"]
print(f"jemalloc / system, RSS at +{settle}s: after the big bodies {j['after_big'] / s['after_big']:.2f}, "
      f"after the webhooks {j['after_burst'] / s['after_burst']:.2f}")
print("answers to the big bodies:", rows[-1]["refused"])
bad = [r for r in rows if r["build"] == "jemalloc" and (r["back_big"] is None or r["back_burst"] is None)]
if any(r["crashed"] for r in rows):
    sys.exit("bench-memory: a wapipe serve process died")
if bad:
    sys.exit(f"bench-memory: jemalloc build not back within 20% of idle in {settle} s in {len(bad)} run(s)")
PY
