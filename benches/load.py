#!/usr/bin/env python3
"""Load comparison: tokengate beside a bare Pingora proxy and nginx, side by side, in one run.

    cargo build --release && cargo build --release --example pingora_floor
    python3 benches/load.py [--rounds 3] [--seconds 5] [--only SUBSTRING ...] [--json FILE]

Needs wrk, nginx (with auth_request), libnginx-mod-http-lua, redis-server and taskset (Debian:
wrk nginx-light libnginx-mod-http-lua redis-server util-linux procps). The proxy under test is
pinned to core 0 with one worker (tokengate `threads = 1`, nginx `worker_processes 1`, the
Pingora floor `threads: 1`); wrk (one thread, 32 connections), the upstream (an nginx answering
200 itself) and Redis share core 1. Targets are interleaved over the rounds, in a different
order each round; each figure is the median over rounds. CPU per request is the user+sys time
of the proxy's own processes (from /proc) over the requests served: on two cores, requests/s
mostly measures the load generator. Every answer must be 2xx, or the run stops.

Targets (`--only` picks those whose name holds one of its substrings, case-insensitively):
- pingora floor: examples/pingora_floor, the smallest Pingora pass-through (no auth, logs or
  metrics): what Pingora itself costs, the floor for tokengate.
- tokengate, auth off: a route with `auth = "none"`: tokengate's own pass-through.
- tokengate, user tokens (cache hits, 10,000 tokens): `Authorization: QB-USER-TOKEN <token>`,
  one of 10,000 tokens (admin API) at random per request, every one cached beforehand.
- tokengate, sessions (cache hits, N sessions): session JWTs (the store's EdDSA key) from
  `POST /_auth/login` (name, password, app), one argon2 sign-in each (`--sessions`, 1,000 by
  default), sent as `Authorization: Bearer <jwt>`, one at random per request; each was
  presented once beforehand, so its signature is verified and its session record cached.
- tokengate, tickets (cache hits, N tickets): tickets from `POST /_auth/authenticate`, one
  argon2 sign-in each (`--tickets`, 500 by default), sent Quickbase-style in the query,
  `/db/bq1?ticket=tgt_…`, one at random per request, all cached beforehand.
  Sessions, tickets, user tokens and `/_auth/check` are served by one tokengate (embedded
  store), which is given both cores while it is set up and pinned to core 0 before measuring.
  After each run of these three, tokengate's metrics must show as many decisions allowed for
  that kind of credential as wrk counted requests, and no cache miss.
- tokengate, user tokens, 5% cache misses to Redis: a second tokengate with `store.backend =
  "redis"`, on a redis-server this script starts on a free port (core 1, like the upstream: its
  CPU is not counted; never the Redis on 6379). 19 requests in 20 carry one of 10,000 cached
  tokens at random; every 20th carries a valid token never presented before, so not in the
  cache: its record is read from Redis (a GET, and an MGET of its last use). Those tokens come
  from a pool made through the admin API, each used once, topped up before each run to 1.3x
  what the fastest run so far would use. After each run the misses are counted in tokengate's
  metrics (`tokengate_cache_lookups_total{kind="user_token",result="miss"}`, store reads) and
  in Redis's `INFO commandstats` (MGET): the run fails unless 5% of the requests (±10% of
  that) were misses and each reached Redis. (Everything valid stays cached for `cache.ttl`,
  so a miss on a valid token needs a token never seen; a short TTL or a small cache would
  make the 95% miss too, or depend on moka's admission policy.)
- nginx auth_request -> tokengate /_auth/check: nginx asks the user-token tokengate above.
- nginx auth_request -> Lua auth service: auth_request to a second server of the same nginx
  worker whose content_by_lua looks the key up in a lua_shared_dict (the same check as "nginx +
  Lua key check"): the oauth2-proxy / ext_authz pattern, with the cheapest auth service there is.
- nginx proxy_pass: nginx as a pass-through, no auth.
- nginx + Lua key check: access_by_lua against a lua_shared_dict of the 10,000 tokens (Kong's way).
- upstream directly: wrk against the upstream itself (no proxy, so no proxy CPU).

`--json FILE` writes the medians (and every round's figures) per target, to compare runs.
"""

import argparse
import concurrent.futures
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tokengate")
FLOOR_BIN = os.path.join(ROOT, "target", "release", "examples", "pingora_floor")
ADMIN_KEY = "load-test-admin-key-0123456789"
PASSWORD = "load-test-password-0123456789"
TOKENS = 10_000
MISS_EVERY = 20  # one request in 20 (5%) carries a token the cache has never seen
FIRST_RPS_GUESS = 45_000  # sizes the first pool of never-seen tokens (above what one core serves:
# too small a pool fails the run); later runs use measured rates
TICK = os.sysconf("SC_CLK_TCK")
NGINX_LUA = "/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so"
UPSTREAM_PORT = None
STARTED = time.time()

T_FLOOR = "pingora floor"
T_OPEN = "tokengate, auth off"
T_TOKENS = "tokengate, user tokens (cache hits, 10,000 tokens)"
T_MISSES = "tokengate, user tokens, 5% cache misses to Redis"
T_CHECK = "nginx auth_request -> tokengate /_auth/check"
T_LUA_AUTH = "nginx auth_request -> Lua auth service"
T_NGINX = "nginx proxy_pass"
T_LUA = "nginx + Lua key check"
T_DIRECT = "upstream directly"


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:  # never anywhere near a Redis someone else runs
            return port


def log_tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited: {proc.returncode}\n{log_tail(proc.log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} never listened on {port}\n{log_tail(proc.log)}")


def cpu_seconds(pids):
    """user+sys seconds of these processes (and nothing else)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICK


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def pin(pid, core):
    """Every thread of `pid` on `core` alone (threads made later inherit it)."""
    for _ in range(5):
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True,
                       capture_output=True)
        allowed = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    allowed |= {l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list")}
            except OSError:
                pass  # a thread that just ended
        if allowed == {str(core)}:
            return
    sys.exit(f"could not pin process {pid} to core {core}: threads allowed on {allowed}")


class Procs:
    def __init__(self, dir):
        self.dir = dir
        self.procs = []
        self.lock = threading.Lock()
        self.stopped = False

    def start(self, args, cores, name, **kw):
        log = os.path.join(self.dir, f"{name}.log")
        with self.lock, open(log, "wb") as out:
            if self.stopped:  # a set-up thread still going after a failure elsewhere
                raise SystemExit(1)
            p = subprocess.Popen(["taskset", "-c", str(cores)] + args, stdout=out, stderr=out, **kw)
            p.log = log
            self.procs.append(p)
        return p

    def stop(self):
        with self.lock:
            self.stopped = True
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


# --- HTTP, with one keep-alive connection per thread and port (set-up only; never measured).

_local = threading.local()


def call(port, method, path, body=None, headers=None):
    conns = _local.__dict__.setdefault("conns", {})
    data = json.dumps(body).encode() if body is not None else None
    hdrs = dict(headers or {})
    if data is not None:
        hdrs["content-type"] = "application/json"
    for attempt in (0, 1):
        conn = conns.get(port)
        if conn is None:
            conn = conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            del conns[port]
            if attempt:
                raise


def parallel(fn, items, threads=8):
    ex = concurrent.futures.ThreadPoolExecutor(threads)
    try:
        return list(ex.map(fn, items))
    finally:
        ex.shutdown(cancel_futures=True)  # on a failure, the rest isn't tried


def retrying(request):
    """`request()` again while it is answered 503 (a store that didn't answer in time on a
    busy machine; nothing was changed), for a few seconds at most. Set-up only."""
    for attempt in range(6):
        status, data = request()
        if status != 503:
            break
        time.sleep(0.2 * 2 ** attempt)
    return status, data


def admin(port, method, path, body=None):
    status, data = retrying(lambda: call(port, method, path, body, {"authorization": f"Bearer {ADMIN_KEY}"}))
    if not 200 <= status < 300:
        sys.exit(f"admin API {method} {path}: {status} {data.decode(errors='replace')}")
    return json.loads(data or b"null")


def metric(admin_port, name, **labels):
    """The sum of a Prometheus counter over the series that have these labels."""
    status, data = call(admin_port, "GET", "/metrics")
    if status != 200:
        sys.exit(f"/metrics: {status}")
    total = 0.0
    for line in data.decode().splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def redis_calls(port):
    """Calls per command since the server started (INFO commandstats), over RESP."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        f = s.makefile("rb")
        head = f.readline()
        if not head.startswith(b"$"):
            sys.exit(f"redis INFO: {head!r}")
        text = f.read(int(head[1:])).decode()
    calls = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            cmd, stats = line[len("cmdstat_"):].split(":", 1)
            calls[cmd] = int(dict(kv.split("=", 1) for kv in stats.split(","))["calls"])
    return calls


# --- nginx, tokengate, Redis, the Pingora floor.

def nginx_conf(dir, port, body, lua=False):
    d = dir
    load = "".join(f"load_module {m};\n" for m in NGINX_LUA) if lua else ""
    return (f"{load}worker_processes 1;\ndaemon off;\npid {d}/nginx-{port}.pid;\n"
            f"error_log {d}/error-{port}.log crit;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n access_log off;\n client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n"
            f" fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n"
            f" upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}\n"
            f"{body}\n}}\n")


def start_nginx(procs, dir, port, body, core, lua=False):
    path = os.path.join(dir, f"nginx-{port}.conf")
    with open(path, "w") as f:
        f.write(nginx_conf(dir, port, body, lua))
    p = procs.start(["nginx", "-p", dir, "-c", path], core, f"nginx-{port}")
    wait_port(port, p, "nginx")
    return p


def start_tokengate(procs, dir, name, routes, cores, store=None, tokens_per_user=TOKENS):
    port, admin_port = free_port(), free_port()
    store = store or f'backend = "embedded"\npath = "{dir}/{name}.db"'
    cfg = os.path.join(dir, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f"[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n"
                f"threads = 1\n[upstream]\nurl = \"http://127.0.0.1:{UPSTREAM_PORT}\"\n"
                f"[admin]\nkey = \"{ADMIN_KEY}\"\n[store]\n{store}\n"
                f"[limits]\nfailures_per_minute = 0\ntokens_per_user = {tokens_per_user}\n"
                f"[cache]\nttl = \"1h\"\n{routes}\n")
    p = procs.start([BIN, "serve", "-c", cfg], cores, f"tokengate-{name}", cwd=dir,
                    env={**os.environ, "RUST_LOG": "warn"})
    wait_port(admin_port, p, "tokengate admin")
    wait_port(port, p, "tokengate")
    deadline = time.time() + 30
    while True:
        try:
            if call(admin_port, "GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        if p.poll() is not None or time.time() > deadline:
            sys.exit(f"tokengate {name} never ready\n{log_tail(p.log)}")
        time.sleep(0.05)
    return p, port, admin_port


def seed_user(admin_port):
    admin(admin_port, "POST", "/v1/apps", {"id": "bq1", "name": "B"})
    admin(admin_port, "POST", "/v1/users", {"id": "load", "email": "load@example.com", "name": "Load",
                                            "apps": ["bq1"], "password": PASSWORD})


_say = threading.Lock()


def say(message):
    """A line of progress on stderr, with the seconds since the start."""
    with _say:
        print(f"[{time.time() - STARTED:5.1f} s] {message}", file=sys.stderr, flush=True)


def make_tokens(admin_port, n, tag):
    return parallel(lambda i: admin(admin_port, "POST", "/v1/users/load/tokens",
                                    {"name": f"{tag}{i}", "apps": ["bq1"]})["token"], range(n), threads=4)


def warm(port, requests, what):
    """Presents every credential once (so it is cached); each answer must be 2xx."""
    def one(req):
        path, headers = req
        status, body = retrying(lambda: call(port, "GET", path, headers=headers))
        if not 200 <= status < 300:
            sys.exit(f"{what}: warming got {status} {body[:300].decode(errors='replace')}")
    parallel(one, requests, threads=4)


def wrk_script(dir, name, values, header=None, query=None, fresh=()):
    """A wrk script sending GET /db/bq1 with one of `values` at random, in the `header` or as
    the `query` parameter. With `fresh`, every MISS_EVERY-th request takes the next of them
    instead (each once; when they run out, `values` again). The values are read from files
    when wrk starts, so their number is not bounded by Lua's constants per function."""
    path = os.path.join(dir, f"{name}.lua")
    files = []
    for what, vs in (("values", values), ("fresh", fresh)):
        files.append(os.path.join(dir, f"{name}-{what}.txt"))
        with open(files[-1], "w") as f:
            f.write("".join(f"{v}\n" for v in vs))
    with open(path, "w") as f:
        f.write("local function load(path)\n  local t = {}\n"
                "  for l in io.lines(path) do t[#t + 1] = l end\n  return t\nend\n"
                f'local t, fresh = load("{files[0]}"), load("{files[1]}")\n'
                "local n, used = 0, 0\nmath.randomseed(7)\nrequest = function()\n"
                "  local v\n  n = n + 1\n"
                f"  if n % {MISS_EVERY} == 0 and used < #fresh then used = used + 1; v = fresh[used]\n"
                "  else v = t[math.random(#t)] end\n")
        if header:
            f.write(f'  wrk.headers["{header}"] = v\n  return wrk.format(nil, "/db/bq1")\nend\n')
        else:
            f.write(f'  return wrk.format(nil, "/db/bq1?{query}=" .. v)\nend\n')
    return path


def run_wrk(port, seconds, script=None):
    args = ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [f"http://127.0.0.1:{port}/db/bq1"], capture_output=True,
                         text=True).stdout
    if "Requests/sec:" not in out:
        sys.exit(f"wrk failed against port {port}:\n{out}")
    rps = float(out.split("Requests/sec:")[1].split()[0])
    total = int(out.split(" requests in ")[0].split()[-1])
    lat = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            v = parts[1]
            unit = 1e-3 if v.endswith("us") else (1.0 if v.endswith("ms") else 1e3)
            lat[parts[0]] = float(v.rstrip("usm")) * unit
    non2xx = "Non-2xx" in out
    errors = next((l.strip() for l in out.splitlines() if "Socket errors" in l), None)
    return rps, total, lat.get("50%"), lat.get("99%"), non2xx, errors


class Target:
    """What wrk is pointed at. `pids` names the proxy's processes (for its CPU); `prepare` runs
    before each measured run and gives the wrk script, `check` after it (a note, or exits)."""

    def __init__(self, port, pids, script=None):
        self.port, self.pids, self.script = port, pids, script

    def prepare(self, seconds):
        return self.script

    def check(self, total, rps):
        return ""


class HitTarget(Target):
    """A credential kind on a tokengate where every credential is cached: after each run, its
    metrics must show that many allowed decisions of that kind and no cache miss."""

    def __init__(self, port, pids, script, admin_port, method):
        super().__init__(port, pids, script)
        self.admin_port, self.method = admin_port, method

    def counts(self):
        return (metric(self.admin_port, "tokengate_auth_decisions_total", method=self.method, outcome="allow"),
                metric(self.admin_port, "tokengate_cache_lookups_total", result="miss"))

    def prepare(self, seconds):
        self.counts0 = self.counts()
        return self.script

    def check(self, total, rps):
        time.sleep(0.2)  # let whatever wrk left in flight finish
        allowed, misses = (int(b - a) for a, b in zip(self.counts0, self.counts()))
        if allowed < total or misses:
            sys.exit(f"port {self.port}: {total} requests, but {allowed} {self.method} decisions "
                     f"allowed and {misses} cache misses")
        return f" ({allowed} {self.method} decisions allowed, no cache miss)"


class MissTarget(Target):
    """User tokens on the Redis-backed tokengate, 1 request in MISS_EVERY with a valid token
    never presented before: a cache miss, so a store read, every time."""

    def __init__(self, env, port, admin_port, redis_port, pids, hot):
        super().__init__(port, pids)
        self.env, self.admin_port, self.redis_port, self.hot = env, admin_port, redis_port, hot
        self.fresh, self.made, self.runs = [], 0, 0
        self.best_rps = FIRST_RPS_GUESS

    def need(self, seconds):
        return math.ceil(self.best_rps * 1.3 * seconds / MISS_EVERY) + 100

    def top_up(self, n):
        if len(self.fresh) < n:
            more = n - len(self.fresh)
            self.fresh += make_tokens(self.admin_port, more, f"m{self.made}-")
            self.made += more
            time.sleep(0.3)  # the creations' invalidations over pub/sub have come and gone

    def prepare(self, seconds):
        self.top_up(self.need(seconds))
        self.slice = self.fresh[:self.need(seconds)]
        self.runs += 1
        script = wrk_script(self.env.dir, f"misses-{self.runs}", self.hot,
                            header="authorization", fresh=[f"QB-USER-TOKEN {t}" for t in self.slice])
        self.counts0 = self.counts()
        return script

    def counts(self):
        """User-token cache misses, store reads of user tokens (tokengate's metrics), and
        Redis's MGETs (each read of a user token is a GET of the record and an MGET of its
        last use; GETs also run inside the script that records last uses, so MGETs count)."""
        return (metric(self.admin_port, "tokengate_cache_lookups_total", kind="user_token", result="miss"),
                metric(self.admin_port, "tokengate_store_requests_total", op="get_user_token"),
                redis_calls(self.redis_port).get("mget", 0))

    def check(self, total, rps):
        time.sleep(0.2)  # let whatever wrk left in flight finish
        misses, reads, mgets = (int(b - a) for a, b in zip(self.counts0, self.counts()))
        # Used fresh tokens are cached now: never hand them out again (a few spare for what
        # was in flight when wrk stopped).
        self.fresh = self.fresh[min(len(self.slice), misses + 16):]
        self.best_rps = max(self.best_rps if self.runs > 1 else 0, rps)
        expected = total / MISS_EVERY
        note = (f" (user-token cache misses {misses} = {100 * misses / total:.2f}% of {total};"
                f" store reads +{reads}; Redis MGET +{mgets})")
        if not 0.9 * expected <= misses <= 1.1 * expected + 5:
            sys.exit(f"{T_MISSES}: {misses} misses for {total} requests, not "
                     f"{100 / MISS_EVERY:.0f}%{' (pool of fresh tokens ran out)' if misses < expected else ''}")
        if min(reads, mgets) < misses:
            sys.exit(f"{T_MISSES}: {misses} misses but {reads} store reads and {mgets} MGETs in Redis")
        return note


class Env:
    """The processes and credentials the targets share, each made on first use."""

    def __init__(self, args, dir, procs, builders):
        self.args, self.dir, self.procs, self.builders = args, dir, procs, builders
        self.to_pin = []  # set up on both cores, pinned to core 0 before measuring
        self.signing_in = {}  # what -> the sign-ins under way
        self.bg = concurrent.futures.ThreadPoolExecutor(2)
        self._main = self._sessions = self._tickets = self._keys = self._token_script = None

    def main(self):
        """The embedded-store tokengate with 10,000 user tokens, all cached; the sign-ins for
        sessions and tickets (argon2: they want the CPU) go on while the tokens are made (they
        wait on the store's writes)."""
        if self._main is None:
            p, port, admin_port = start_tokengate(self.procs, self.dir, "main",
                                                  '[[routes]]\npath = "/db/{app}"\n', "0,1")
            self.to_pin.append(p)
            seed_user(admin_port)
            if build_sessions in self.builders:
                self.signing_in["sessions"] = self.bg.submit(
                    self.sign_in, port, "/_auth/login", {"username": "load", "password": PASSWORD, "app": "bq1"},
                    "token", self.args.sessions, "sessions")
            if build_tickets in self.builders:
                self.signing_in["tickets"] = self.bg.submit(
                    self.sign_in, port, "/_auth/authenticate", {"username": "load", "password": PASSWORD},
                    "ticket", self.args.tickets, "tickets")
            say(f"making {TOKENS:,} user tokens (embedded store) and presenting each once...")
            tokens = make_tokens(admin_port, TOKENS, "t")
            warm(port, [("/db/bq1", {"authorization": f"QB-USER-TOKEN {t}"}) for t in tokens], T_TOKENS)
            self._main = (p, port, admin_port, tokens)
        return self._main

    @staticmethod
    def sign_in(port, path, body, field, n, what):
        say(f"signing in {n:,} times for {what} (argon2 each)...")

        def one(_):
            status, data = retrying(lambda: call(port, "POST", path, body))
            if status != 200:
                sys.exit(f"{path}: {status} {data[:300].decode(errors='replace')}")
            return json.loads(data)[field]
        made = parallel(one, range(n), threads=4)
        say(f"{n:,} {what} made")
        return made

    def sessions(self):
        if self._sessions is None:
            port = self.main()[1]
            self._sessions = [f"Bearer {j}" for j in self.signing_in["sessions"].result()]
            warm(port, [("/db/bq1", {"authorization": s}) for s in self._sessions], "sessions")
        return self._sessions

    def tickets(self):
        if self._tickets is None:
            port = self.main()[1]
            self._tickets = self.signing_in["tickets"].result()
            warm(port, [(f"/db/bq1?ticket={t}", {}) for t in self._tickets], "tickets")
        return self._tickets

    def keys_file(self):
        if self._keys is None:
            self._keys = os.path.join(self.dir, "keys.txt")
            with open(self._keys, "w") as f:
                f.write("\n".join(self.main()[3]))
        return self._keys

    def token_script(self):
        if self._token_script is None:
            self._token_script = wrk_script(self.dir, "tokens", [f"QB-USER-TOKEN {t}" for t in self.main()[3]],
                                            header="authorization")
        return self._token_script


def build_floor(env):
    port = free_port()
    p = env.procs.start([FLOOR_BIN, f"127.0.0.1:{port}", f"127.0.0.1:{UPSTREAM_PORT}"], 0, "floor")
    wait_port(port, p, "pingora_floor")
    return Target(port, lambda: [p.pid])


def build_open(env):
    p, port, _ = start_tokengate(env.procs, env.dir, "open",
                                 '[[routes]]\npath = "/db/{app}"\nauth = "none"\n', 0)
    return Target(port, lambda: [p.pid])


def build_tokens(env):
    p, port, admin_port, _ = env.main()
    return HitTarget(port, lambda: [p.pid], env.token_script(), admin_port, "user_token")


def build_sessions(env):
    p, port, admin_port, _ = env.main()
    script = wrk_script(env.dir, "sessions", env.sessions(), header="authorization")
    return HitTarget(port, lambda: [p.pid], script, admin_port, "session")


def build_tickets(env):
    p, port, admin_port, _ = env.main()
    script = wrk_script(env.dir, "tickets", env.tickets(), query="ticket")
    return HitTarget(port, lambda: [p.pid], script, admin_port, "ticket")


def build_misses(env):
    rport = free_port()
    r = env.procs.start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", env.dir, "--daemonize", "no"], 1, "redis")
    wait_port(rport, r, "redis-server")
    hot_n = TOKENS
    p, port, admin_port = start_tokengate(
        env.procs, env.dir, "redis", '[[routes]]\npath = "/db/{app}"\n', "0,1",
        store=f'backend = "redis"\nurl = "redis://127.0.0.1:{rport}/0"', tokens_per_user=10_000_000)
    env.to_pin.append(p)
    seed_user(admin_port)
    say(f"making {hot_n:,} user tokens (Redis store) and presenting each once...")
    hot = make_tokens(admin_port, hot_n, "h")
    warm(port, [("/db/bq1", {"authorization": f"QB-USER-TOKEN {t}"}) for t in hot], T_MISSES)
    t = MissTarget(env, port, admin_port, rport, lambda: [p.pid], [f"QB-USER-TOKEN {h}" for h in hot])
    say(f"making {t.need(env.args.seconds):,} more, each to be used once...")
    t.top_up(t.need(env.args.seconds))
    return t


def build_check(env):
    p, port, _, _ = env.main()
    nport = free_port()
    n = start_nginx(env.procs, env.dir, nport, (
        f" upstream tg {{ server 127.0.0.1:{port}; keepalive 64; }}\n"
        f" server {{ listen 127.0.0.1:{nport};\n"
        "  location / { auth_request /_check; proxy_http_version 1.1;"
        " proxy_set_header Connection \"\"; proxy_pass http://up; }\n"
        "  location = /_check { internal; proxy_pass http://tg/_auth/check;"
        " proxy_http_version 1.1; proxy_set_header Connection \"\";"
        " proxy_pass_request_body off; proxy_set_header Content-Length \"\";"
        " proxy_set_header X-Original-URI $request_uri; }\n }"), 0)
    return Target(nport, lambda: [n.pid] + children(n.pid) + [p.pid], env.token_script())


LUA_KEYS = (" lua_shared_dict keys 16m;\n"
            " init_by_lua_block {{ for k in io.lines('{keys}') do ngx.shared.keys:set(k, 1) end }}\n")
LUA_CHECK = ("local h = ngx.var.http_authorization or ''\n"
             "   local k = h:match('^QB%-USER%-TOKEN (.+)$')\n")


def build_lua_auth(env):
    nport, aport = free_port(), free_port()
    n = start_nginx(env.procs, env.dir, nport, (
        LUA_KEYS.format(keys=env.keys_file()) +
        f" upstream luaauth {{ server 127.0.0.1:{aport}; keepalive 64; }}\n"
        # The auth service: a server of its own (in the same worker), answering 204 or 401.
        f" server {{ listen 127.0.0.1:{aport}; location / {{\n"
        "  content_by_lua_block { " + LUA_CHECK +
        "   if k and ngx.shared.keys:get(k) then return ngx.exit(204) end\n"
        "   return ngx.exit(401) } } }\n"
        f" server {{ listen 127.0.0.1:{nport};\n"
        "  location / { auth_request /_check; proxy_http_version 1.1;"
        " proxy_set_header Connection \"\"; proxy_pass http://up; }\n"
        "  location = /_check { internal; proxy_pass http://luaauth;"
        " proxy_http_version 1.1; proxy_set_header Connection \"\";"
        " proxy_pass_request_body off; proxy_set_header Content-Length \"\";"
        " proxy_set_header X-Original-URI $request_uri; }\n }"), 0, lua=True)
    return Target(nport, lambda: [n.pid] + children(n.pid), env.token_script())


def build_nginx(env):
    nport = free_port()
    n = start_nginx(env.procs, env.dir, nport, (
        f" server {{ listen 127.0.0.1:{nport}; location / {{ proxy_http_version 1.1;"
        " proxy_set_header Connection \"\"; proxy_pass http://up; } }"), 0)
    return Target(nport, lambda: [n.pid] + children(n.pid))


def build_lua(env):
    nport = free_port()
    n = start_nginx(env.procs, env.dir, nport, (
        LUA_KEYS.format(keys=env.keys_file()) +
        f" server {{ listen 127.0.0.1:{nport}; location / {{\n"
        "  access_by_lua_block { " + LUA_CHECK +
        "   if not k or not ngx.shared.keys:get(k) then return ngx.exit(401) end }\n"
        "  proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://up; } }"),
        0, lua=True)
    return Target(nport, lambda: [n.pid] + children(n.pid), env.token_script())


def build_direct(env):
    return Target(UPSTREAM_PORT, lambda: [])


def targets(args):
    """(name, builder, what it needs) in the order of the table."""
    return [
        (T_FLOOR, build_floor, ("floor",)),
        (T_OPEN, build_open, ("tokengate",)),
        (T_TOKENS, build_tokens, ("tokengate",)),
        (f"tokengate, sessions (cache hits, {args.sessions:,} sessions)", build_sessions, ("tokengate",)),
        (f"tokengate, tickets (cache hits, {args.tickets:,} tickets)", build_tickets, ("tokengate",)),
        (T_MISSES, build_misses, ("tokengate", "redis-server")),
        (T_CHECK, build_check, ("tokengate",)),
        (T_LUA_AUTH, build_lua_auth, ("tokengate", "lua")),  # the tokens come from tokengate
        (T_NGINX, build_nginx, ()),
        (T_LUA, build_lua, ("tokengate", "lua")),
        (T_DIRECT, build_direct, ()),
    ]


def check_tools(chosen):
    apt = "apt-get install wrk nginx-light libnginx-mod-http-lua redis-server util-linux procps"
    needs = {"wrk", "nginx", "taskset", "pgrep"}
    for _, _, extra in chosen:
        needs |= set(extra)
    for tool in sorted(needs - {"lua", "tokengate", "floor"}):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing ({apt})")
    if "lua" in needs:
        for m in NGINX_LUA:
            if not os.path.exists(m):
                sys.exit(f"{m} is missing: nginx's Lua module ({apt})")
    if "tokengate" in needs and not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release")
    if "floor" in needs and not os.path.exists(FLOOR_BIN):
        sys.exit(f"{FLOOR_BIN} is missing: cargo build --release --example pingora_floor")


def main():
    global UPSTREAM_PORT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every target (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="seconds of wrk per target and round (default 5)")
    ap.add_argument("--only", action="append", metavar="SUBSTRING",
                    help="run only the targets whose name holds this (repeatable; case-insensitive)")
    ap.add_argument("--json", metavar="FILE", help="also write the medians per target to FILE")
    ap.add_argument("--sessions", type=int, default=1_000, help="sessions to sign in (argon2 each)")
    ap.add_argument("--tickets", type=int, default=500, help="tickets to sign in (argon2 each)")
    args = ap.parse_args()
    all_targets = targets(args)
    chosen = [t for t in all_targets
              if not args.only or any(o.lower() in t[0].lower() for o in args.only)]
    if not chosen:
        sys.exit("--only matches none of:\n" + "\n".join(f"  {t[0]}" for t in all_targets))
    check_tools(chosen)
    dir = tempfile.mkdtemp(prefix="tg-load-")
    procs = Procs(dir)
    started = time.time()
    try:
        UPSTREAM_PORT = free_port()
        start_nginx(procs, dir, UPSTREAM_PORT,
                    f" server {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 'ok'; }} }}", 1)
        env = Env(args, dir, procs, [build for _, build, _ in chosen])
        # The Redis-backed tokengate shares nothing with the others: it is set up beside them
        # (making tokens waits on the stores more than it uses the CPU; sign-ins are the other
        # way round).
        beside = concurrent.futures.ThreadPoolExecutor(1)
        later = {name: beside.submit(build, env) for name, build, _ in chosen if build is build_misses}
        built = {name: later[name] if name in later else build(env) for name, build, _ in chosen}
        built = {name: t.result() if name in later else t for name, t in built.items()}
        beside.shutdown()
        env.bg.shutdown()
        for p in env.to_pin:
            pin(p.pid, 0)
        setup = time.time() - started
        say(f"set-up done in {setup:.1f} s")

        results = {name: [] for name in built}
        for r in range(args.rounds):
            order = list(built)
            random.Random(r).shuffle(order)
            for name in order:
                t = built[name]
                script = t.prepare(args.seconds)
                before = cpu_seconds(t.pids())
                rps, total, p50, p99, non2xx, errors = run_wrk(t.port, args.seconds, script)
                cpu = cpu_seconds(t.pids()) - before
                if non2xx:
                    sys.exit(f"{name}: non-2xx answers")
                note = t.check(total, rps)
                if errors:
                    note += f" [{errors}]"
                results[name].append((rps, p50, p99, cpu / total * 1e6 if t.pids() else None,
                                      note.strip() or None))
                say(f"round {r + 1}: {name}: {rps:.0f} req/s{note}")

        medians = {}
        print("| target | requests/s | p50 ms | p99 ms | proxy CPU µs/request |")
        print("|---|---:|---:|---:|---:|")
        for name, runs in results.items():
            med = lambda i: statistics.median(x[i] for x in runs if x[i] is not None) \
                if any(x[i] is not None for x in runs) else None
            rps, p50, p99, cpu = med(0), med(1), med(2), med(3)
            medians[name] = {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99,
                             "proxy_cpu_us_per_request": cpu,
                             "rounds": [dict(zip(("requests_per_s", "p50_ms", "p99_ms",
                                                  "proxy_cpu_us_per_request", "note"), x)) for x in runs]}
            print(f"| {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | "
                  f"{'-' if cpu is None else f'{cpu:.1f}'} |")
        if args.json:
            commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() or None
            with open(args.json, "w") as f:
                json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit,
                           "tokengate_binary_mtime": time.strftime(
                               "%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(BIN))),
                           "rounds": args.rounds, "seconds": args.seconds,
                           "setup_seconds": round(setup, 1), "targets": medians}, f, indent=2)
                f.write("\n")
    finally:
        procs.stop()
        shutil.rmtree(dir, ignore_errors=True)


if __name__ == "__main__":
    main()
