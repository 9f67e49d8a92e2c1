"""The static __shared__ variables of a kernel library, read from its ELF symbol table.

Function-local statics are local symbols: they are in .symtab only, so dlsym and dladdr cannot find
them; reading the table here needs neither binutils nor a source rewrite that parses declarators."""
from __future__ import annotations

import struct
from pathlib import Path


def elf_symbols(path: Path) -> tuple[list[tuple[str, int, int]], dict[str, int]]:
    """From a 64-bit little-endian ELF library: its zero-initialized objects (name, address, size) --
    among which sanitizers.split_statics tells the static __shared__ variables (function-local, _ZZ, or
    at namespace scope, _ZL: device code can use no other static) from their neighbours -- and the
    addresses of every other symbol by name."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return [], {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # Section header: name, type, flags, addr, offset, size, link, info, addralign, entsize.
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    sht_symtab, sht_nobits, stt_object = 2, 8, 1
    statics, addresses = [], {}
    for section in sections:
        if section[1] != sht_symtab:
            continue
        strtab = sections[section[6]]
        for offset in range(section[4], section[4] + section[5], 24):
            st_name, st_info, _, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, offset)
            end = data.index(b"\0", strtab[4] + st_name)
            name = data[strtab[4] + st_name:end].decode()
            if (name and st_info & 0xF == stt_object and st_shndx < shnum
                    and sections[st_shndx][1] == sht_nobits):
                statics.append((name, st_value, st_size))
            elif name:
                addresses[name] = st_value
    return statics, addresses
