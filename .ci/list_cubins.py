"""Lists the SASS architectures in a module's fatbins; fails unless every one named on the command line is there.

The CUDA toolkit on the build machine ships no cuobjdump, so the fatbins are read directly. Layout: a
16-byte header (magic 0xBA55ED50, u16 version, u16 header size, u64 payload size), then entries of
u16 kind (2 = ELF), u16, u32 header size, u64 payload size, ..., u32 arch at offset 28.

Usage: python list_cubins.py MODULE.so sm_80 sm_90
"""

import struct, sys
data = open(sys.argv[1], "rb").read()
shoff, = struct.unpack_from("<Q", data, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
names = sections[shstrndx][4]
found = set()
for name, _, _, _, off, size in sections:
    if data[names + name:data.index(b"\0", names + name)] != b".nv_fatbin":
        continue
    pos = off
    while pos + 16 <= off + size:
        magic, _, hsize, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != 0xBA55ED50:
            pos += 8
            continue
        entry, end = pos + hsize, pos + hsize + fat_size
        while entry < end:
            kind, _, ehsize, payload = struct.unpack_from("<HHIQ", data, entry)
            arch, = struct.unpack_from("<I", data, entry + 28)
            found.add(("sm_%d" if kind == 2 else "compute_%d") % arch)
            entry += ehsize + payload
        pos = end
print("cuda-check: device code in", sys.argv[1].split("/")[-1] + ":", " ".join(sorted(found)))
missing = [a for a in sys.argv[2:] if a not in found]
sys.exit("cuda-check: no SASS for " + " ".join(missing) if missing else 0)
