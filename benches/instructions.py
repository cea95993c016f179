#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: a figure that does not move with
whatever else the machine is doing, so a change to the request path can be told apart from
noise (the load comparison, benches/load.py, measures time, and on a shared two-core machine
its figures move by 20% from one run to the next).

    cargo build --release && cargo build --release --example pingora_floor
    python3 benches/instructions.py [--seconds 15] [--keep DIR]

Needs valgrind and wrk (Debian: valgrind wrk nginx-light). Each target runs under
`valgrind --tool=callgrind` with one worker thread behind an nginx upstream that answers 200;
after its set-up (tokens made and each presented once, so every request is a cache hit) the
counters are zeroed, wrk sends requests for --seconds, and the counters are dumped. The figure
is the instructions the process executed over the requests wrk counted: everything the proxy
did, its background tasks included. Under valgrind, SHA-256 runs in its portable form (valgrind
has no SHA extensions), which adds about 3,400 instructions per user token or ticket that
the real CPU does not spend; and `rep movsb` counts one instruction per byte copied.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the load comparison's helpers: ports, nginx, admin API)

ROUTE = '[[routes]]\npath = "/db/{app}"\n'


def tokengate_config(dir, port, admin_port, upstream, routes):
    path = os.path.join(dir, "tokengate.toml")
    with open(path, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin_port}"\n'
                f'threads = 1\n[upstream]\nurl = "http://127.0.0.1:{upstream}"\n'
                f'[admin]\nkey = "{load.ADMIN_KEY}"\n[store]\nbackend = "embedded"\n'
                f'path = "{dir}/store.db"\n[limits]\nfailures_per_minute = 0\n'
                f'tokens_per_user = 100000\n[cache]\nttl = "1h"\n{routes}\n')
    return path


def get(port, path, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def wait_ready(admin_port, timeout=120):
    deadline = time.time() + timeout
    while True:
        try:
            return get(admin_port, "/readyz")
        except OSError:
            if time.time() > deadline:
                sys.exit("tokengate never became ready")
            time.sleep(0.2)


def lua_script(dir, lines):
    path = os.path.join(dir, "requests.lua")
    with open(path, "w") as f:
        f.write("local t = {\n" + ",\n".join("{%s, %s}" % (json.dumps(p), json.dumps(a)) for p, a in lines)
                + "}\n"
                "math.randomseed(7)\nrequest = function()\n  local r = t[math.random(#t)]\n"
                "  if r[2] ~= '' then wrk.headers['authorization'] = r[2] end\n"
                "  return wrk.format(nil, r[1])\nend\n")
    return path


def measure(name, args, dir, port, setup, seconds):
    """Runs `args` under callgrind, sets it up, and counts instructions over a wrk run."""
    out = os.path.join(dir, "callgrind.out")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + args,
                            stdout=open(os.path.join(dir, "log"), "w"), stderr=subprocess.STDOUT,
                            cwd=dir, env={**os.environ, "RUST_LOG": "warn"})
    try:
        load.wait_port(port, proc, name, timeout=120)
        script = setup()
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        wrk = ["wrk", "-t1", "-c8", f"-d{seconds}s"] + (["-s", script] if script else [])
        text = subprocess.run(wrk + [f"http://127.0.0.1:{port}/db/bq1"], capture_output=True,
                              text=True, check=True).stdout
        if "Non-2xx" in text:
            sys.exit(f"{name}: non-2xx answers\n{text}")
        requests = int(text.split(" requests in ")[0].split()[-1])
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
    finally:
        # The counts are dumped already: stop it at once (Pingora under valgrind can sit
        # through SIGTERM's grace period).
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    dumps = [f for f in glob.glob(out + ".*") if re.search(r"\.\d+$", f)]
    with open(max(dumps, key=os.path.getmtime)) as f:
        total = int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M).group(1))
    return total / requests, requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--tickets", type=int, default=30, help="each is an argon2 sign-in under valgrind")
    ap.add_argument("--keep", metavar="DIR",
                    help="work in DIR and keep it: each target's callgrind.out.* is there, numbered in "
                         "order, for callgrind_annotate")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install valgrind wrk nginx-light)")
    for binary, how in ((load.BIN, "cargo build --release"),
                        (load.FLOOR_BIN, "cargo build --release --example pingora_floor")):
        if not os.path.exists(binary):
            sys.exit(f"build first: {how}")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    top = args.keep or tempfile.mkdtemp(prefix="tg-instructions-")
    procs = load.Procs(top)
    results = {}
    try:
        upstream = load.UPSTREAM_PORT = load.free_port()
        load.start_nginx(procs, top, upstream,
                         f" server {{ listen 127.0.0.1:{upstream}; location / {{ return 200 'ok'; }} }}", 1)

        def target(name, routes, setup):
            dir = os.path.join(top, str(len(results)))
            os.makedirs(dir)
            port, admin_port = load.free_port(), load.free_port()
            if routes is None:  # the Pingora floor
                cmd = [load.FLOOR_BIN, f"127.0.0.1:{port}", f"127.0.0.1:{upstream}"]
            else:
                cmd = [load.BIN, "serve", "-c", tokengate_config(dir, port, admin_port, upstream, routes)]
            results[name] = measure(name, cmd, dir, port, lambda: setup(dir, port, admin_port),
                                    args.seconds)
            print(f"{name}: {results[name][0]:,.0f} instructions/request "
                  f"({results[name][1]} requests)", file=sys.stderr)

        def plain(dir, port, admin_port):
            for _ in range(100):
                get(port, "/db/bq1")
            return None

        def user_tokens(dir, port, admin_port):
            wait_ready(admin_port)
            load.admin(admin_port, "POST", "/v1/apps", {"id": "bq1", "name": "B"})
            load.admin(admin_port, "POST", "/v1/users", {"id": "load", "email": "load@example.com",
                                                         "name": "Load", "apps": ["bq1"]})
            tokens = [load.admin(admin_port, "POST", "/v1/users/load/tokens",
                                 {"name": f"t{i}", "apps": ["bq1"]})["token"]
                      for i in range(args.tokens)]
            for t in tokens:
                get(port, "/db/bq1", {"authorization": f"QB-USER-TOKEN {t}"})
            return lua_script(dir, [["/db/bq1", f"QB-USER-TOKEN {t}"] for t in tokens])

        def tickets(dir, port, admin_port):
            wait_ready(admin_port)
            load.admin(admin_port, "POST", "/v1/apps", {"id": "bq1", "name": "B"})
            load.admin(admin_port, "POST", "/v1/users", {"id": "load", "email": "load@example.com",
                                                         "name": "Load", "apps": ["bq1"],
                                                         "password": load.PASSWORD})
            body = json.dumps({"username": "load", "password": load.PASSWORD}).encode()
            found = []
            for _ in range(args.tickets):
                req = urllib.request.Request(f"http://127.0.0.1:{port}/_auth/authenticate", data=body,
                                             headers={"content-type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as r:
                    found.append(json.loads(r.read())["ticket"])
            for t in found:
                get(port, f"/db/bq1?ticket={t}")
            return lua_script(dir, [[f"/db/bq1?ticket={t}", ""] for t in found])

        target("pingora floor", None, plain)
        target("tokengate, auth off", ROUTE + 'auth = "none"\n', plain)
        target(f"tokengate, user tokens (cache hits, {args.tokens} tokens)", ROUTE, user_tokens)
        target(f"tokengate, tickets in the query (cache hits, {args.tickets} tickets)", ROUTE, tickets)
    finally:
        procs.stop()
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)

    base = results["tokengate, auth off"][0]
    print("| target | instructions/request | × auth off |")
    print("|---|---:|---:|")
    for name, (per, _) in results.items():
        print(f"| {name} | {per:,.0f} | {per / base:.2f} |")


if __name__ == "__main__":
    main()
