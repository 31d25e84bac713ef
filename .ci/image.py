#!/usr/bin/env python3
"""Checks the container image without a Docker engine, by doing what its build really does.

    python3 .ci/image.py [--context DIR] [--work DIR] [--keep]

1. The build context: the files of DIR (default: the checkout) that `.dockerignore`
   lets through, copied to a scratch directory, as `docker build` sends them.
2. Every stage but the last, from the Dockerfile itself: a scratch root per stage,
   `WORKDIR`s honoured, `COPY` (and `COPY --from`) lines copying from that context only,
   `ENV`/`ARG` set, `RUN` lines executed in order in the stage's working directory. A
   file the Dockerfile forgets to copy fails here, as it would fail `docker build`.
3. The runtime stage, as far as possible without its base image: each file it copies
   from a build stage exists; ELF files need no library outside what
   debian:bookworm-slim has (`ldd`) and no newer glibc; `USER` is a numeric non-root id.
4. As root only (a mount and a network namespace): the binary installed where the image
   puts it, run as the image's `USER` in its `WORKDIR` with exactly its `ENV`, a
   read-only root and only the `VOLUME` writable, started by `ENTRYPOINT` + `CMD`; the
   image's `HEALTHCHECK` command (run the same way) must report healthy, a signed push
   must be stored and printed, and `STOPSIGNAL` must stop it with exit status 0.

Exits non-zero, naming the instruction, on the first thing that does not hold.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

# What debian:bookworm-slim ships of the libraries a Rust binary may link: libc6,
# libgcc-s1, libstdc++6 and zlib1g. Anything else would be missing at run time.
BOOKWORM_LIBS = {
    "linux-vdso.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libc.so.6",
    "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2",
    "libutil.so.1", "libanl.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1",
}
BOOKWORM_GLIBC = (2, 36)
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Failure(Exception):
    pass


def say(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ the Dockerfile

def instructions(path):
    """(line number, INSTRUCTION, arguments) per instruction, continuations joined."""
    out, buf, start = [], "", 0
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue  # comment lines inside a continued instruction are dropped
            if not buf:
                start = n
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            out.append((start, word.upper(), rest.strip()))
            buf = ""
    if buf:
        raise Failure("the Dockerfile ends inside a continued line")
    return out


def stages(path):
    result = []
    for n, ins, args in instructions(path):
        if ins == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(result))
            result.append({"name": name, "image": parts[0], "line": n, "steps": []})
        elif ins in ("ARG",) and not result:
            continue
        elif not result:
            raise Failure(f"Dockerfile line {n}: {ins} before FROM")
        else:
            result[-1]["steps"].append((n, ins, args))
    if not result:
        raise Failure("the Dockerfile has no FROM")
    return result


def exec_form(args):
    """A JSON array (exec form) or None."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


def split_flags(args):
    words = exec_form(args) or shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def env_pairs(args):
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [(words[0], args.split(None, 1)[1] if len(words) > 1 else "")]
    pairs = []
    for w in words:
        key, eq, value = w.partition("=")
        if not eq:
            raise Failure(f"cannot read ENV/ARG `{args}`")
        pairs.append((key, value))
    return pairs


# ------------------------------------------------------------------ .dockerignore

def pattern_regex(pattern):
    """Docker's .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    p = os.path.normpath(pattern.strip()).lstrip("/")
    out, i = "", 0
    while i < len(p):
        c = p[i]
        if p.startswith("**", i):
            i += 2
            if p.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = p.find("]", i + 1)
            if j < 0:
                raise Failure(f".dockerignore: unclosed `[` in `{pattern}`")
            body = p[i + 1:j].replace("\\", "\\\\")
            if body.startswith("^") or body.startswith("!"):
                body = "^" + body[1:]
            out += f"[{body}]"
            i = j
        elif c == "\\" and i + 1 < len(p):
            i += 1
            out += re.escape(p[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def ignore_rules(context):
    """(negated, regex, pattern text) per line of `.dockerignore`, in order."""
    path = os.path.join(context, ".dockerignore")
    rules = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                negate = line.startswith("!")
                text = line[1:] if negate else line
                rules.append((negate, pattern_regex(text), os.path.normpath(text).lstrip("/")))
    return rules


def excluded(rel, rules):
    """As moby's pattern matcher: the last rule matching the path or a parent decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    result = False
    for negate, rx, _ in rules:
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result


def prunable(rel, rules):
    """An excluded directory that no `!` rule can bring anything back from."""
    if not excluded(rel, rules):
        return False
    for negate, _, text in rules:
        if negate and (re.search(r"[*?\[]", text) or text.startswith(rel + "/")):
            return False
    return True


def build_context(source, dest):
    rules = ignore_rules(source)
    count = 0
    for root, dirs, files in os.walk(source):
        rel_root = os.path.relpath(root, source)
        dirs[:] = [d for d in dirs
                   if not prunable(d if rel_root == "." else f"{rel_root}/{d}", rules)]
        for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if excluded(rel, rules) and rel not in ("Dockerfile", ".dockerignore"):
                continue
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = os.path.join(root, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), target)
            else:
                shutil.copy2(src, target)
            count += 1
        # Directories whose whole content is excluded still exist in the context when
        # they are not themselves excluded; create them so COPY sees them.
        for d in dirs:
            rel = d if rel_root == "." else f"{rel_root}/{d}"
            if not excluded(rel, rules):
                os.makedirs(os.path.join(dest, rel), exist_ok=True)
    return count


# ------------------------------------------------------------------ the stages

def inside(root, path):
    return os.path.join(root, path.lstrip("/"))


def copy_into(src, dest, dest_is_dir):
    if os.path.isdir(src) and not os.path.islink(src):
        os.makedirs(dest, exist_ok=True)
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        return
    if dest_is_dir or os.path.isdir(dest):
        os.makedirs(dest, exist_ok=True)
        dest = os.path.join(dest, os.path.basename(src))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy2(src, dest, follow_symlinks=False)


def sources(base, pattern, where):
    """Files matching a COPY source under `base` (wildcards as Go filepath.Match)."""
    rel = os.path.normpath(pattern).lstrip("/")
    if rel.startswith(".."):
        raise Failure(f"{where}: `{pattern}` is outside the build context")
    if not re.search(r"[*?\[]", rel):
        path = os.path.join(base, rel)
        return [path] if os.path.lexists(path) else []
    rx = pattern_regex(rel)
    found = []
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            full = os.path.join(root, name)
            if rx.match(os.path.relpath(full, base)):
                found.append(full)
    return sorted(found)


def run_build_stage(stage, context, work, built):
    root = os.path.join(work, "stage-" + stage["name"])
    os.makedirs(root, exist_ok=True)
    # The host's environment, less what would move Cargo's output away from where the
    # image's build puts it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR", "CARGO_BUILD_TARGET")}
    workdir = "/"
    say(f"== image: stage `{stage['name']}` (FROM {stage['image']}) in {root}")
    for n, ins, args in stage["steps"]:
        where = f"Dockerfile line {n} ({ins})"
        if ins == "WORKDIR":
            workdir = os.path.normpath(os.path.join(workdir, args))
            os.makedirs(inside(root, workdir), exist_ok=True)
        elif ins in ("ENV", "ARG"):
            for key, value in env_pairs(args):
                if ins == "ENV" or key not in env:
                    env[key] = value
        elif ins in ("COPY", "ADD"):
            flags, words = split_flags(args)
            if ins == "ADD" or len(words) < 2:
                raise Failure(f"{where}: only `COPY SRC... DEST` is reproduced here")
            base = context
            if "from" in flags:
                if flags["from"] not in built:
                    raise Failure(f"{where}: stage `{flags['from']}` was not built before")
                base = built[flags["from"]]
            *srcs, dest = words
            dest_path = inside(root, os.path.join(workdir, dest))
            dest_is_dir = dest.endswith("/") or len(srcs) > 1
            for src in srcs:
                matched = sources(base, src, where)
                if not matched:
                    raise Failure(
                        f"{where}: `{src}` is not in the build context "
                        "(missing, or excluded by .dockerignore): docker build fails here"
                    )
                for m in matched:
                    copy_into(m, dest_path, dest_is_dir or len(matched) > 1)
            say(f"   {ins} {args}")
        elif ins == "RUN":
            while args.startswith("--"):  # --mount, --network: no effect here
                args = args.split(None, 1)[1] if " " in args else ""
            command = exec_form(args) or ["/bin/sh", "-c", args]
            say(f"   RUN {args}")
            status = subprocess.run(command, cwd=inside(root, workdir), env=env).returncode
            if status != 0:
                raise Failure(f"{where} exited {status}: docker build fails here")
        elif ins in ("SHELL", "USER", "ONBUILD"):
            raise Failure(f"{where}: not reproduced in a build stage")
        elif ins in ("LABEL", "EXPOSE", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "CMD", "ENTRYPOINT"):
            pass  # metadata of the stage's image; nothing to build
        else:
            raise Failure(f"{where}: unknown instruction")
    built[stage["name"]] = root
    return root


def runtime_spec(stage, built):
    spec = {"copies": [], "env": {}, "workdir": "/", "user": None, "volumes": [],
            "expose": [], "healthcheck": None, "entrypoint": [], "cmd": [],
            "stopsignal": "SIGTERM", "image": stage["image"]}
    for n, ins, args in stage["steps"]:
        where = f"Dockerfile line {n} ({ins})"
        if ins == "COPY":
            flags, words = split_flags(args)
            if "from" not in flags:
                raise Failure(f"{where}: the runtime stage copies from the context; "
                              "this check only knows files built in a build stage")
            if flags["from"] not in built:
                raise Failure(f"{where}: stage `{flags['from']}` is not built")
            *srcs, dest = words
            for src in srcs:
                path = inside(built[flags["from"]], src)
                if not os.path.isfile(path):
                    raise Failure(f"{where}: the build stage produced no {src}")
                target = dest if not dest.endswith("/") else dest + os.path.basename(src)
                spec["copies"].append((path, os.path.join(spec["workdir"], target)))
        elif ins == "ENV":
            spec["env"].update(env_pairs(args))
        elif ins == "WORKDIR":
            spec["workdir"] = os.path.normpath(os.path.join(spec["workdir"], args))
        elif ins == "USER":
            spec["user"] = args.strip()
        elif ins == "VOLUME":
            spec["volumes"] += exec_form(args) or args.split()
        elif ins == "EXPOSE":
            spec["expose"] += [int(p.split("/")[0]) for p in args.split()]
        elif ins == "HEALTHCHECK":
            _, _, command = args.partition("CMD")
            spec["healthcheck"] = exec_form(command.strip()) or ["/bin/sh", "-c", command.strip()]
        elif ins == "ENTRYPOINT":
            spec["entrypoint"] = exec_form(args) or ["/bin/sh", "-c", args]
        elif ins == "CMD":
            spec["cmd"] = exec_form(args) or ["/bin/sh", "-c", args]
        elif ins == "STOPSIGNAL":
            spec["stopsignal"] = args.strip()
        elif ins == "RUN":
            say(f"   not run (needs the base image {stage['image']}): RUN {args[:70]}")
    user = spec["user"] or "0"
    if not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user):
        raise Failure(f"USER is `{user}`: the image must run as a numeric, non-root uid[:gid]")
    uid, _, gid = user.partition(":")
    spec["uid"], spec["gid"] = int(uid), int(gid or uid)
    return spec


def check_libraries(path):
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return
        blob = f.read()
    needed = [tuple(map(int, v)) for v in re.findall(rb"GLIBC_(\d+)\.(\d+)", blob)]
    newest = max(needed, default=(0, 0))
    if newest > BOOKWORM_GLIBC:
        raise Failure(f"{path} needs glibc {newest[0]}.{newest[1]}; debian:bookworm-slim has "
                      f"{BOOKWORM_GLIBC[0]}.{BOOKWORM_GLIBC[1]}")
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if "not a dynamic executable" in out.stdout + out.stderr:
        say(f"   {os.path.basename(path)}: static executable")
        return
    libs = []
    for line in out.stdout.splitlines():
        name = line.strip().split()[0] if line.strip() else ""
        if "not found" in line:
            raise Failure(f"{path}: ldd cannot find {name}")
        base = os.path.basename(name)
        if base and base not in BOOKWORM_LIBS:
            raise Failure(f"{path} links {base}, which debian:bookworm-slim does not have")
        libs.append(base)
    say(f"   {os.path.basename(path)} links only {', '.join(libs)} (all in debian:bookworm-slim), "
        f"glibc {newest[0]}.{newest[1]} at most")


# ------------------------------------------------------------------ running it

RUN_SCRIPT = r"""
set -eu
ip link set lo up
# A read-only root, as `docker run --read-only`.
mount --bind / / && mount -o remount,bind,ro /
# Where this check collects the container's output stays writable (it is not in the image).
mount --bind "$OUT" "$OUT" && mount -o remount,bind,rw "$OUT"
# The image's own directories: an empty tmpfs at the nearest existing ancestor of each,
# holding what the image puts there, then made read-only too.
for spec in $MOUNTS; do
  anchor=${spec%%=*}
  mount -t tmpfs -o mode=755 tmpfs "$anchor"
done
for spec in $FILES; do
  src=${spec%%=*}; dst=${spec#*=}
  mkdir -p "$(dirname "$dst")" && cp "$src" "$dst" && chmod 755 "$dst"
done
for dir in $DIRS; do mkdir -p "$dir"; done
for spec in $VOLUMES; do
  src=${spec%%=*}; dst=${spec#*=}
  mount --bind "$src" "$dst"
done
for spec in $MOUNTS; do
  anchor=${spec%%=*}
  mount -o remount,ro "$anchor" 2>/dev/null || mount -o remount,ro,bind "$anchor"
done
for spec in $VOLUMES; do
  dst=${spec#*=}
  mount -o remount,bind,rw "$dst"
done
cd "$WORKDIR"
as_user() { setpriv --reuid="$UID_" --regid="$GID_" --clear-groups env -i "${IMAGE_ENV[@]}" "$@"; }
(exec setpriv --reuid="$UID_" --regid="$GID_" --clear-groups env -i "${IMAGE_ENV[@]}" \
  "${ENTRYPOINT_CMD[@]}") >"$OUT/stdout" 2>"$OUT/stderr" &
server=$!
healthy=no
for _ in $(seq 1 100); do
  if as_user "${HEALTH_CMD[@]}" >"$OUT/health" 2>&1; then healthy=yes; break; fi
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ "$healthy" != yes ]; then
  echo "HEALTHCHECK never passed:"; cat "$OUT/health"; echo "server stderr:"; cat "$OUT/stderr"
  kill -KILL "$server" 2>/dev/null || true; exit 1
fi
echo "   HEALTHCHECK (${HEALTH_CMD[*]}) passed as uid $UID_: $(cat "$OUT/health")"
$REPLAY
stored=no
for _ in $(seq 1 50); do
  if grep -q "$EXPECT" "$OUT/stdout"; then stored=yes; break; fi
  sleep 0.1
done
[ "$stored" = yes ] || { echo "the push never reached stdout:"; cat "$OUT/stderr"; exit 1; }
touch /probe 2>/dev/null && { echo "the root is writable"; exit 1; }
kill -s "${STOPSIGNAL#SIG}" "$server"
status=0; wait "$server" || status=$?
[ "$status" = 0 ] || { echo "exited $status after $STOPSIGNAL:"; cat "$OUT/stderr"; exit 1; }
owner=$(stat -c %u "$VOLUME_HOST/wxhook.db")
[ "$owner" = "$UID_" ] || { echo "the spool was written as uid $owner, not $UID_"; exit 1; }
echo "   stopped by $STOPSIGNAL with status 0; spool written as uid $owner"
"""


def nearest_existing(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def run_image(spec, checkout, work):
    out = os.path.join(work, "run")
    volume_host = os.path.join(work, "volume")
    for d in (out, volume_host):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    os.chown(volume_host, spec["uid"], spec["gid"])
    os.chmod(work, 0o755)
    image_dirs = [spec["workdir"]] + spec["volumes"] + [os.path.dirname(d) for _, d in spec["copies"]]
    anchors = sorted({nearest_existing(d) for d in image_dirs if d != "/"} - {"/"})
    if len(spec["volumes"]) != 1:
        raise Failure("this check expects exactly one VOLUME (the spool)")
    env = dict(spec["env"])
    env.setdefault("PATH", IMAGE_PATH)
    env["HOME"] = spec["workdir"]
    env["WXHOOK_TOKEN"] = "ci-token"  # `docker run -e WXHOOK_TOKEN=...`, as the Dockerfile says
    port = spec["expose"][0] if spec["expose"] else 8080
    fixture = os.path.join(checkout, "fixtures/pushes/publish_success.xml")
    replay = (f"{spec['copies'][0][0]} replay {shlex.quote(fixture)} "
              f"--url http://127.0.0.1:{port}/wechat --token ci-token")
    variables = {
        "MOUNTS": " ".join(f"{a}=" for a in anchors),
        "FILES": " ".join(f"{s}={d}" for s, d in spec["copies"]),
        "DIRS": " ".join([spec["workdir"]] + spec["volumes"]),
        "VOLUMES": f"{volume_host}={spec['volumes'][0]}",
        "WORKDIR": spec["workdir"],
        "UID_": str(spec["uid"]),
        "GID_": str(spec["gid"]),
        "REPLAY": replay,
        "EXPECT": '"id":"publish-2247503051-0"',
        "STOPSIGNAL": spec["stopsignal"],
        "OUT": out,
        "VOLUME_HOST": volume_host,
    }
    say(f"== image: run as uid {spec['uid']} in {spec['workdir']}, read-only root, "
        f"{spec['volumes'][0]} writable, ENV {' '.join(f'{k}={v}' for k, v in spec['env'].items())}")
    arrays = "".join(
        f"{name}=({' '.join(map(shlex.quote, values))})\n"
        for name, values in [
            ("IMAGE_ENV", [f"{k}={v}" for k, v in env.items()]),
            ("ENTRYPOINT_CMD", spec["entrypoint"] + spec["cmd"]),
            ("HEALTH_CMD", spec["healthcheck"] or ["true"]),
        ]
    )
    result = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "bash", "-c",
         arrays + RUN_SCRIPT],
        env={**os.environ, **variables},
    )
    if result.returncode != 0:
        raise Failure("the image's runtime stage did not work as the image would run it")


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", default=here)
    parser.add_argument("--work", default=None, help="scratch directory (default: a new one in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="wxhook-image.")
    os.makedirs(work, exist_ok=True)
    started = time.time()
    try:
        context = os.path.join(work, "context")
        count = build_context(args.context, context)
        say(f"== image: build context of {count} files (after .dockerignore) in {context}")
        all_stages = stages(os.path.join(context, "Dockerfile"))
        built = {}
        for stage in all_stages[:-1]:
            run_build_stage(stage, context, work, built)
        final = all_stages[-1]
        say(f"== image: runtime stage (FROM {final['image']})")
        spec = runtime_spec(final, built)
        for path, dest in spec["copies"]:
            check_libraries(path)
            say(f"   {dest}: {os.path.getsize(path)} bytes")
        if os.geteuid() == 0:
            run_image(spec, args.context, work)
        else:
            say("== image: SKIPPED (needs root): running the runtime stage as its USER with a "
                "read-only root in a mount and network namespace; run `sudo python3 .ci/image.py`")
        say(f"== image: checked in {time.time() - started:.0f} s")
    except Failure as e:
        print(f"image check failed: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
