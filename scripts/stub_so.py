#!/usr/bin/env python3
"""Writes a stub of a shared library: a .so with the same SONAME and the same exported symbols (with their
default symbol versions) whose functions do nothing and whose data objects are zeroed, so that a program
linked against the real library loads without it. For the device bundle of the server (scripts/server-bundle.sh):
FFmpeg's libraries pull dozens of codec, hardware and image libraries (BIND_NOW: every symbol must resolve at
load) that H.264 encoding and MP4 muxing never call. A stubbed library that IS called misbehaves, so only
libraries the server's code paths never reach may be stubbed.

    scripts/stub_so.py /lib/x86_64-linux-gnu/libx265.so.199 OUT_DIR
"""
import os
import re
import subprocess
import sys
import tempfile


def exported(lib: str):
    """(name, version or None, type, size) of every defined global or weak dynamic symbol."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", lib], capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].endswith(":") or f[6] in ("UND", "ABS") or f[4] not in ("GLOBAL", "WEAK"):
            continue
        typ, size, name = f[3], int(f[2], 0), f[7]
        if typ not in ("FUNC", "OBJECT", "TLS", "IFUNC", "NOTYPE"):
            continue
        ver = None
        if "@@" in name:
            name, ver = name.split("@@", 1)
        elif "@" in name:
            continue  # a non-default (old) version: nothing we link against asks for it
        if ver is not None and ver == name:
            continue  # the version node's own symbol
        syms.append((name, ver, typ, size))
    return syms


def soname(lib: str) -> str:
    out = subprocess.run(["readelf", "-d", "-W", lib], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[(.*)\]", out)
    return m.group(1) if m else os.path.basename(lib)


def stub(lib: str, out_dir: str) -> str:
    name = soname(lib)
    syms = exported(lib)
    with tempfile.TemporaryDirectory() as tmp:
        c, vs = os.path.join(tmp, "stub.c"), os.path.join(tmp, "stub.map")
        with open(c, "w") as f:
            # asm labels: the C names are stub_N, the exported names any the library had
            for i, (s, _, typ, size) in enumerate(syms):
                if typ == "TLS":
                    f.write(f'__thread char stub_{i}[{max(size, 1)}] __asm__("{s}");\n')
                elif typ == "OBJECT":
                    f.write(f'char stub_{i}[{max(size, 1)}] __asm__("{s}") __attribute__((aligned(16)));\n')
                else:
                    f.write(f'void stub_{i}(void) __asm__("{s}");\nvoid stub_{i}(void) {{}}\n')
        nodes = {}
        for s, ver, _, _ in syms:
            nodes.setdefault(ver, []).append(s)
        cmd = ["gcc", "-shared", "-fPIC", "-w", "-fno-builtin", "-o", os.path.join(out_dir, name), c,
               f"-Wl,-soname,{name}"]
        versioned = [v for v in nodes if v is not None]
        if versioned:
            # Unversioned exports of a versioned library go to its first node (a version script
            # cannot mix an anonymous node with named ones).
            nodes[versioned[0]] += nodes.pop(None, [])
            with open(vs, "w") as f:
                for i, v in enumerate(versioned):
                    local = " local: *;" if i == len(versioned) - 1 else ""
                    f.write(f"{v} {{ global: {'; '.join(nodes[v])};{local} }};\n")
            cmd.append(f"-Wl,--version-script={vs}")
        subprocess.run(cmd, check=True)
    return name


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(stub(sys.argv[1], sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
