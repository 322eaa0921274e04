#!/usr/bin/env bash
# Checks the deployment files without a Docker engine (nothing is built or
# run):
#
#   (a) Dockerfile: at least two stages, the last one scratch (or alpine),
#       a USER that is not root, STOPSIGNAL, an ENTRYPOINT on /walsync, a
#       builder pinned to a Rust at least Cargo.toml's rust-version that
#       copies every workspace manifest before `cargo fetch` and builds the
#       binary scripts/build-static.sh builds (same --target, --bin and
#       environment, plus --release --locked); hadolint too when installed.
#   (b) .dockerignore: excludes target/ and .git (and the other local-only
#       folders), and none of what cargo needs: Cargo.toml, Cargo.lock,
#       .cargo/config.toml, every workspace member's Cargo.toml and src/,
#       and whatever the Dockerfile COPYs by name.
#   (c) examples/docker-compose.yml parses (`docker compose config -q` when a
#       compose plugin is installed; a YAML parser always: PyYAML, from a
#       venv in target/tools/yamlvenv when python3 lacks it) and has the
#       services app and walsync sharing a named volume, the same user,
#       walsync's stop_grace_period at least 35s and no literal AWS secret.
#   (d) the README's deploy blocks match the files line for line: each
#       fenced block right after a `<!-- file: PATH -->` line must equal PATH,
#       and Dockerfile, examples/docker-compose.yml and
#       examples/walsync.service must each have one.
#
#   scripts/check-deploy.sh [README]       (default: README.md)
#
# Prints one "ok: ..." line per check; on a failure it says what and why
# (with the diff for a README block), goes on with the other checks, and
# exits 1. CHECK_DEPLOY_YAML_VENV=1 uses the venv even when python3 has PyYAML.
set -euo pipefail
readme=README.md
if [ $# -gt 1 ]; then
  echo "usage: $0 [README]" >&2
  exit 2
fi
if [ $# -eq 1 ]; then
  readme=$(realpath -- "$1")
fi
cd "$(dirname "$0")/.."

helper=$(mktemp "${TMPDIR:-/tmp}/check-deploy.XXXXXX.py")
trap 'rm -f "$helper"' EXIT
cat >"$helper" <<'PY'
import difflib
import os
import re
import subprocess
import sys

def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)

def ok(msg):
    print(f"ok: {msg}")

# ---------------------------------------------------------------- helpers

def workspace_members():
    """The root Cargo.toml's [workspace] members, and its rust-version."""
    text = open("Cargo.toml", encoding="utf-8").read()
    try:
        import tomllib
        doc = tomllib.loads(text)
        members = doc.get("workspace", {}).get("members", ["."])
        rust_version = doc.get("package", {}).get("rust-version")
    except ImportError:  # Python < 3.11: the two keys by hand
        m = re.search(r"^\[workspace\][^\[]*?members\s*=\s*\[(.*?)\]", text, re.S | re.M)
        members = re.findall(r'"([^"]+)"', m.group(1)) if m else ["."]
        m = re.search(r'^rust-version\s*=\s*"([^"]+)"', text, re.M)
        rust_version = m.group(1) if m else None
    return [os.path.normpath(p) for p in members], rust_version

def dockerfile_instructions(path="Dockerfile"):
    """(INSTRUCTION, arguments, line) with continuations joined and
    comment lines dropped, as Docker reads them."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip(), start))
        buf = ""
    if buf:
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip(), start))
    return out

def stages(instructions):
    result = []
    for ins in instructions:
        if ins[0] == "FROM":
            words = [w for w in ins[1].split() if not w.startswith("--")]
            image = words[0] if words else ""
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            result.append({"image": image, "name": name, "line": ins[2], "body": []})
        elif result:
            result[-1]["body"].append(ins)
    return result

def copy_sources(args):
    """Sources of a COPY/ADD from the build context (None for --from)."""
    words = args.split()
    if any(w.startswith("--from") for w in words):
        return None
    words = [w for w in words if not w.startswith("--")]
    if args.lstrip().startswith("["):
        import json
        words = json.loads(args[args.index("["):])
    return words[:-1]

# ------------------------------------------------------- (a) Dockerfile

def check_dockerfile():
    if not os.path.isfile("Dockerfile"):
        fail("Dockerfile: missing")
    ins = dockerfile_instructions()
    st = stages(ins)
    if len(st) < 2:
        fail(f"Dockerfile: {len(st)} FROM stage(s); a multi-stage build needs a builder and a final stage")
    final, builders = st[-1], st[:-1]
    image = final["image"].lower()
    if not (image == "scratch" or image.startswith("alpine")):
        fail(f"Dockerfile: the final stage is FROM {final['image']} (line {final['line']}); expected scratch (or alpine)")
    users = [a for (i, a, _) in final["body"] if i == "USER"]
    if not users:
        fail("Dockerfile: the final stage has no USER: the container would run as root")
    user = users[-1]
    uid = user.split(":")[0].strip()
    if uid in ("", "0", "root"):
        fail(f"Dockerfile: USER {user} is root")
    signals = [a for (i, a, _) in final["body"] if i == "STOPSIGNAL"]
    if not signals:
        fail("Dockerfile: the final stage has no STOPSIGNAL")
    if signals[-1].upper().removeprefix("SIG") not in ("TERM", "INT", "15", "2"):
        fail(f"Dockerfile: STOPSIGNAL {signals[-1]}; walsync stops cleanly on SIGTERM or SIGINT")
    entry = [a for (i, a, _) in final["body"] if i == "ENTRYPOINT"]
    if not entry or "/walsync" not in entry[-1]:
        fail("Dockerfile: the final stage's ENTRYPOINT does not run /walsync")

    # The builder: the same build as scripts/build-static.sh.
    script = open("scripts/build-static.sh", encoding="utf-8").read()
    m = re.search(r"^target=(\S+)", script, re.M)
    if not m:
        fail("scripts/build-static.sh: no target=... line to compare with")
    target = m.group(1).strip("'\"")
    joined = re.sub(r"\\\n\s*", " ", script)
    m = re.search(r"^\s*((?:[A-Za-z_][A-Za-z0-9_]*=\S+\s+)*)cargo build([^\n]*)", joined, re.M)
    if not m:
        fail("scripts/build-static.sh: no `cargo build` line to compare with")
    expand = lambda s: s.replace("${target}", target).replace("$target", target).replace('"', "")
    script_env = [expand(w) for w in m.group(1).split()]
    script_flags = expand(m.group(2)).split()
    bin_name = script_flags[script_flags.index("--bin") + 1] if "--bin" in script_flags else "walsync"

    builds = [(st_i, a) for st_i, s in enumerate(builders) for (i, a, _) in s["body"]
              if i == "RUN" and "cargo build" in a]
    if not builds:
        fail("Dockerfile: no builder stage runs `cargo build`")
    st_i, run = builds[-1]
    builder = builders[st_i]
    cmd = run[run.index("cargo build"):]
    cmd = re.split(r"&&|;|\|\|", cmd)[0].split()
    missing = [f for f in ("--release", "--locked") if f not in cmd]
    if "--target" not in cmd or cmd[cmd.index("--target") + 1] != target:
        missing.append(f"--target {target}")
    if "--bin" not in cmd or cmd[cmd.index("--bin") + 1] != bin_name:
        missing.append(f"--bin {bin_name}")
    if missing:
        fail(f"Dockerfile: the builder's cargo build lacks {', '.join(missing)} (scripts/build-static.sh builds --target {target} --bin {bin_name})")
    env_text = run + " " + " ".join(a for (i, a, _) in builder["body"] if i in ("ENV", "ARG"))
    for assignment in script_env:
        name, _, value = assignment.partition("=")
        if not re.search(rf"\b{re.escape(name)}[= ]\s*\"?{re.escape(value)}\b", env_text):
            fail(f"Dockerfile: scripts/build-static.sh builds with {assignment}; the builder does not set it")
    if not any(i == "RUN" and re.search(rf"rustup target add\b.*\b{re.escape(target)}\b", a)
               for (i, a, _) in builder["body"]):
        fail(f"Dockerfile: the builder does not run `rustup target add {target}`")

    members, rust_version = workspace_members()
    tag = re.match(r"(?:docker\.io/)?(?:library/)?rust:(\d+)\.(\d+)", builder["image"])
    if not tag:
        fail(f"Dockerfile: the builder is FROM {builder['image']}; pin an official rust:1.N image")
    if rust_version:
        need = tuple(int(x) for x in rust_version.split(".")[:2])
        have = (int(tag.group(1)), int(tag.group(2)))
        if have < need:
            fail(f"Dockerfile: {builder['image']} is older than Cargo.toml's rust-version {rust_version}")

    # What the builder copies before `cargo fetch` must load the workspace.
    copied, fetch_seen = [], False
    for (i, a, _) in builder["body"]:
        if i == "RUN" and "cargo fetch" in a:
            fetch_seen = True
            break
        if i in ("COPY", "ADD"):
            copied += [os.path.normpath(s) for s in (copy_sources(a) or [])]
    if fetch_seen and "." not in copied:
        wanted = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] + \
                 [os.path.normpath(os.path.join(mb, "Cargo.toml")) for mb in members if mb != "."]
        def covered(path):
            return any(path == c or path.startswith(c + "/") for c in copied)
        lacking = [w for w in wanted if not covered(w)]
        if lacking:
            fail(f"Dockerfile: `cargo fetch` runs before {', '.join(lacking)} is copied (every workspace member's Cargo.toml is needed)")

    flow = " -> ".join(s["image"] for s in st)
    ok(f"Dockerfile: {len(st)} stages ({flow}), USER {user}, STOPSIGNAL {signals[-1]}, "
       f"builds --target {target} --bin {bin_name} like scripts/build-static.sh")

# ---------------------------------------------------- (b) .dockerignore

def dockerignore_patterns(path=".dockerignore"):
    pats = []
    for line in open(path, encoding="utf-8").read().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:].strip()
        line = os.path.normpath(line).lstrip("/")
        if line in ("", "."):
            continue
        pats.append((negate, line, re.compile(pattern_regex(line))))
    return pats

def pattern_regex(p):
    """Docker's (moby/patternmatcher) pattern syntax as a regex."""
    out, i = "^", 0
    while i < len(p):
        c = p[i]
        if c == "*":
            if i + 1 < len(p) and p[i + 1] == "*":
                i += 1
                if i + 1 < len(p) and p[i + 1] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(p) else "(.*/)?"
            else:
                out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = p.find("]", i)
            if j < 0:
                out += re.escape(c)
            else:
                out += p[i:j + 1]
                i = j
        elif c == "\\" and i + 1 < len(p):
            i += 1
            out += re.escape(p[i])
        else:
            out += re.escape(c)
        i += 1
    return out + "$"

def excluded(path, pats):
    """Whether Docker leaves `path` out of the context: the last pattern
    that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    result = False
    for negate, _, rx in pats:
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result

def check_dockerignore():
    if not os.path.isfile(".dockerignore"):
        fail(".dockerignore: missing (the whole folder, target/ and .git included, would be sent)")
    pats = dockerignore_patterns()
    must_go = ["target/release/walsync", ".git/HEAD", "python/target/x", "fuzz/target/x",
               "demo/t0000/app.db", ".venv/bin/python", "python/.venv/bin/python"]
    kept = [p for p in must_go if not excluded(p, pats)]
    if kept:
        fail(f".dockerignore: does not exclude {', '.join(kept)}")

    members, _ = workspace_members()
    needed = {"Cargo.toml", "Cargo.lock", ".cargo/config.toml"}
    for mb in members:
        needed.add(os.path.normpath(os.path.join(mb, "Cargo.toml")))
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], check=True,
                               capture_output=True, text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        files = [os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk(".") for f in fs]
    srcs = [os.path.normpath(os.path.join(mb, "src")) for mb in members]
    for f in files:
        if any(f.startswith(s + "/") for s in srcs):
            needed.add(f)
    for (i, a, _) in dockerfile_instructions():
        if i in ("COPY", "ADD"):
            for s in copy_sources(a) or []:
                s = os.path.normpath(s)
                if s != "." and not any(ch in s for ch in "*?["):
                    needed.add(s)
    missing = sorted(n for n in needed if not os.path.exists(n))
    if missing:
        fail(f"cargo's inputs missing from the repository: {', '.join(missing)}")
    dropped = sorted(n for n in needed if excluded(n, pats))
    if dropped:
        fail(f".dockerignore: excludes what the build needs: {', '.join(dropped[:10])}"
             + (f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""))
    ok(f".dockerignore: excludes target/, .git and local folders; keeps the {len(needed)} files and paths "
       f"cargo and the Dockerfile need (Cargo.toml, Cargo.lock, .cargo/config.toml, "
       f"{', '.join(m for m in members if m != '.')} manifests and sources)")

# ------------------------------------------------ (c) docker-compose.yml

def duration_seconds(v):
    if isinstance(v, (int, float)):
        return float(v)
    total, rest = 0.0, str(v).strip()
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", rest):
        total += float(num) * units[unit]
    if not re.fullmatch(r"(\d+(?:\.\d+)?(ms|us|µs|ns|h|m|s))+", rest):
        raise ValueError(f"not a duration: {v!r}")
    return total

def named_mounts(service, declared):
    out = {}
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and parts[0] in declared:
                out[parts[0]] = parts[1]
        elif isinstance(v, dict) and v.get("type", "volume") == "volume" and v.get("source") in declared:
            out[v["source"]] = v.get("target")
    return out

SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

def literal_secrets(name, service):
    found = []
    env = service.get("environment") or {}
    items = env.items() if isinstance(env, dict) else \
        [(e.split("=", 1)[0], e.split("=", 1)[1] if "=" in e else None) for e in env]
    for key, value in items:
        if key in SECRET_KEYS and value not in (None, "") and "${" not in str(value):
            found.append(f"{name}: {key}")
    return found

def check_compose(path):
    import yaml
    raw = open(path, encoding="utf-8").read()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        fail(f"{path}: not valid YAML: {e}")
    services = (doc or {}).get("services") or {}
    for s in ("app", "walsync"):
        if s not in services:
            fail(f"{path}: no service {s!r} (services: {', '.join(services) or 'none'})")
    app, ws = services["app"], services["walsync"]
    declared = set((doc.get("volumes") or {}).keys())
    app_m, ws_m = named_mounts(app, declared), named_mounts(ws, declared)
    shared = sorted(set(app_m) & set(ws_m))
    if not shared:
        fail(f"{path}: app and walsync share no named volume (app: {sorted(app_m)}, walsync: {sorted(ws_m)})")
    if not app.get("user") or str(app.get("user")) != str(ws.get("user")):
        fail(f"{path}: app and walsync must run as the same user (app: {app.get('user')!r}, walsync: {ws.get('user')!r})")
    grace = ws.get("stop_grace_period")
    if grace is None:
        fail(f"{path}: walsync has no stop_grace_period (compose's default, 10s, is shorter than walsync's 30s shutdown timeout)")
    try:
        secs = duration_seconds(grace)
    except ValueError as e:
        fail(f"{path}: walsync's stop_grace_period: {e}")
    if secs < 35:
        fail(f"{path}: walsync's stop_grace_period {grace} is under 35s (walsync waits up to 30s for its last uploads)")
    cmd = ws.get("command")
    words = cmd if isinstance(cmd, list) else str(cmd or "").split()
    if not words or words[0] != "watch":
        fail(f"{path}: walsync's command does not start with watch: {cmd!r}")
    if "--config" not in words:
        dbs, skip = [], False
        for w in map(str, words[1:]):
            if skip:
                skip = False
            elif w.startswith("-"):
                skip = "=" not in w and w not in ("--takeover", "-h", "--help")
            else:
                dbs.append(w)
        for db in dbs:
            if not any(str(db).startswith(ws_m[v].rstrip("/") + "/") for v in shared):
                fail(f"{path}: walsync watches {db}, which is not on the volume it shares with app")
    build = ws.get("build")
    if build is not None:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        target = os.path.normpath(os.path.join(os.path.dirname(path), ctx, dockerfile))
        if not os.path.isfile(target):
            fail(f"{path}: walsync's build points at {target}, which does not exist")
    secrets = [f for n, s in services.items() for f in literal_secrets(n, s)]
    if re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", raw):
        secrets.append("an AWS access key id in the text")
    if secrets:
        fail(f"{path}: literal credentials ({'; '.join(secrets)}); take them from the environment (${{AWS_SECRET_ACCESS_KEY}})")
    ok(f"{path}: services app and walsync share volume {', '.join(shared)}, run as user {ws.get('user')}, "
       f"walsync stop_grace_period {grace}, no literal AWS secrets")

# ------------------------------------------------------ (d) README blocks

MARKER = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->\s*$")
FENCE = re.compile(r"^(`{3,}|~{3,})")
REQUIRED = ("Dockerfile", "examples/docker-compose.yml", "examples/walsync.service")

def readme_blocks(readme):
    lines = open(readme, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        if not m:
            i += 1
            continue
        path, at = m.group(1), i + 1
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            fail(f"{readme}:{at}: the marker for {path} is not followed by a fenced block on the next line")
        fence = FENCE.match(lines[i + 1]).group(1)
        body, j = [], i + 2
        while j < len(lines) and not re.match(rf"^{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j])
            j += 1
        if j >= len(lines):
            fail(f"{readme}:{at}: the block for {path} is never closed")
        blocks.append((path, at + 2, body))
        i = j + 1
    return blocks

def check_readme(readme):
    if not os.path.isfile(readme):
        fail(f"{readme}: missing")
    blocks = readme_blocks(readme)
    have = {p for p, _, _ in blocks}
    lacking = [p for p in REQUIRED if p not in have]
    bad = []
    if lacking:
        bad.append(f"{readme}: no block marked <!-- file: PATH --> for {', '.join(lacking)}")
    for path, line, body in blocks:
        if not os.path.isfile(path):
            bad.append(f"{readme}:{line}: the block names {path}, which does not exist")
            continue
        want = open(path, encoding="utf-8").read().splitlines()
        if body != want:
            diff = "\n".join(difflib.unified_diff(want, body, fromfile=path,
                                                  tofile=f"{readme} (block at line {line})", lineterm=""))
            bad.append(f"{readme}:{line}: the block differs from {path}:\n{diff}")
    if bad:
        fail("\n".join(bad))
    ok(f"{readme}: {len(blocks)} deploy blocks match their files ({', '.join(sorted(have))})")

if __name__ == "__main__":
    what = sys.argv[1]
    if what == "dockerfile":
        check_dockerfile()
    elif what == "dockerignore":
        check_dockerignore()
    elif what == "compose":
        check_compose(sys.argv[2])
    elif what == "readme":
        check_readme(sys.argv[2])
PY

compose=examples/docker-compose.yml
status=0

# (a)
python3 "$helper" dockerfile || status=1
if command -v hadolint >/dev/null 2>&1; then
  if hadolint Dockerfile; then
    echo "ok: hadolint Dockerfile"
  else
    echo "FAIL: hadolint Dockerfile"
    status=1
  fi
else
  echo "ok: hadolint not installed; skipped"
fi

# (b)
python3 "$helper" dockerignore || status=1

# (c) a compose plugin validates the file against the compose schema, when
# there is one (`config` needs no engine); a YAML parser checks the
# structure either way, on the text as written (before interpolation).
compose_cmd=()
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
fi
if [ ${#compose_cmd[@]} -gt 0 ]; then
  if AWS_ACCESS_KEY_ID=check AWS_SECRET_ACCESS_KEY=check "${compose_cmd[@]}" -f "$compose" config -q; then
    echo "ok: ${compose_cmd[*]} -f $compose config -q"
  else
    echo "FAIL: ${compose_cmd[*]} -f $compose config -q"
    status=1
  fi
else
  echo "ok: no docker compose plugin here; the compose file is checked with PyYAML only"
fi
yaml_python=python3
if [ "${CHECK_DEPLOY_YAML_VENV:-0}" = 1 ] || ! python3 -c 'import yaml' >/dev/null 2>&1; then
  venv=target/tools/yamlvenv
  if ! "$venv/bin/python" -c 'import yaml' >/dev/null 2>&1; then
    echo "==> installing PyYAML into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pyyaml
  fi
  yaml_python=$venv/bin/python
fi
"$yaml_python" "$helper" compose "$compose" || status=1

# (d)
python3 "$helper" readme "$readme" || status=1

if [ "$status" -ne 0 ]; then
  echo "check-deploy: FAILED (see the FAIL lines above)"
  exit 1
fi
echo "check-deploy: all checks passed"
