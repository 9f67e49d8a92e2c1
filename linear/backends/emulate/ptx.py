"""Inline PTX in the emulator: every asm statement of a kernel, translated into C++ when it is built.

The compiler (compiler.py) preprocesses a kernel library's translation unit with g++ -E, so that asm
statements inside macros and templates are expanded and the `# line` markers name each one's file and
line; translate_unit() then replaces each asm statement of the kernel's own files with a C++ block:

    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};" : "+f"(d[0]), ... : "r"(a[0]), ...);
 ->
    { auto& ptx_ref0 = (d[0]); float ptx_op0 = emu::ptx::operand_in<float>(ptx_ref0); ...
      uint32_t ptx_op4 = emu::ptx::operand_in<uint32_t>((a[0])); ...
      { float ptx_d[4] = {...}; ... emu::ptx::mma_m16n8k16<__nv_bfloat16>(ptx_d, ptx_a, ptx_b); ... }
      emu::ptx::operand_out(ptx_ref0, ptx_op0); ... }

Operands are locals of their constraint's register type (r: 32 bits, l: 64, h: 16, f: float, d: double,
n: a constant; `=` written, `+` read and written, a digit ties an input to that output), `.reg`
declarations (`%p<4>` included) are locals of the enclosing `{ }` scope, `@p` / `@!p` guards are ifs,
labels are GNU local labels that `bra` jumps to. The semantics are C++ in kernels/emu/emu_ptx.h and
emu_tensor.h (namespace emu::ptx). An instruction outside the subset is an EmulationError at build time
naming the instruction, the file and the line: never a wrong result.

Adding an instruction is one entry in INSTRUCTIONS: a regular expression that the whole opcode must
match (e.g. r"wgmma\\.fence\\.sync\\.aligned") and an emitter, emit(ins, block) -> C++ statements, which
reads operands with block.read(op, "u32"), writes them with block.write(op, "f32", expression), takes
addresses with block.pointer(op, space, ins), vectors with block.vector(op, n), passes block.site(ins)
("file:line: opcode") to the semantics so that their reports name it, and rejects a variant it does not
model with block.unsupported(ins, why). ins.parts is the opcode split at dots (".shared::cta" stays
one part, "shared::cta"); ins.operands the parsed operands (Operand, Register, Immediate, Vector,
Address, Not, Pair). Special registers are SPECIAL_REGISTERS: name -> C++ expression.

Emitted C++ is compiled after preprocessing: it may call functions and name the runtime's variables
(emu_thread_idx, emu_block_idx, ...), but not the shim's macros (threadIdx, blockIdx, __shared__).

The subset (README, "Inline PTX", has it as a table): mma.sync m16n8k16 f16/bf16 with f32 or f16
accumulators and m16n8k8 tf32 with f32; ldmatrix and stmatrix m8n8 x1/x2/x4 (.trans); cp.async ca/cg
with copy and source sizes or an ignore-src predicate, commit_group, wait_group, wait_all; cvt (integer
widths, float <-> f16/bf16, f16x2/bf16x2 pairs, float <-> integer with rounding, rna.tf32); cvta to and
from .shared, .global, .local; mov (special registers, vector pack and unpack); setp (with
.and/.or/.xor), selp; integer add, sub, mul.lo/hi/wide, mad.lo, div, rem, min, max, neg, abs, and, or,
xor, not, shl, shr, popc, clz, brev, bfe, bfi; f32/f64 add, sub, mul, fma, min, max, neg, abs in
round-to-nearest (.ftz on f32); prmt (default mode), lop3; ld/st with .global/.shared/.local/.const or
generic addresses, .v2/.v4, cache and ordering hints; atom and red (add, min, max, and, or, xor, exch,
inc, dec, cas); bar.sync/barrier.sync/bar.arrive with an id and a thread count, bar.warp.sync;
elect.sync; shfl.sync; vote.sync; redux.sync; activemask; membar/fence.sc/fence.acq_rel; nanosleep;
trap; bra.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Union

from .errors import EmulationError

# ---------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------

CTYPES = {
    "pred": "bool", "b8": "uint8_t", "u8": "uint8_t", "s8": "int8_t",
    "b16": "uint16_t", "u16": "uint16_t", "s16": "int16_t", "f16": "uint16_t", "bf16": "uint16_t",
    "b32": "uint32_t", "u32": "uint32_t", "s32": "int32_t", "f32": "float", "f16x2": "uint32_t",
    "bf16x2": "uint32_t", "tf32": "uint32_t",
    "b64": "uint64_t", "u64": "uint64_t", "s64": "int64_t", "f64": "double",
}
# Operand constraints: the register type of each letter ("n" is an immediate).
CONSTRAINTS = {"r": "b32", "l": "b64", "h": "b16", "f": "f32", "d": "f64", "c": "b8"}
INTEGER_TYPES = {t for t in CTYPES if t[0] in "bus" and t != "pred" and "x" not in t}
FLOAT_TYPES = {"f32", "f64"}


def width(ptx_type: str) -> int:
    return int(re.sub(r"\D", "", ptx_type) or 1)


# Special registers: name (as written in PTX, without the doubled % of extended asm) -> C++.
SPECIAL_REGISTERS: dict[str, str] = {
    "%laneid": "emu_lane_id()",
    "%warpid": "emu::ptx::warp_index()",
    "%nwarpid": "((emu_block_dim.x * emu_block_dim.y * emu_block_dim.z + 31) / 32)",
    "%smid": "0u", "%nsmid": "1u", "%gridid": "uint64_t(emu::launch_serial)",
    "%cluster_ctarank": "0u", "%cluster_nctarank": "1u", "%is_explicit_cluster": "false",
    "%clock": "uint32_t(clock64())", "%clock64": "uint64_t(clock64())",
    "%clock_hi": "uint32_t(uint64_t(clock64()) >> 32)",
    "%globaltimer": "emu::ptx::global_timer()",
    "%globaltimer_lo": "uint32_t(emu::ptx::global_timer())",
    "%globaltimer_hi": "uint32_t(emu::ptx::global_timer() >> 32)",
    "%lanemask_eq": "emu::ptx::lane_mask(0)", "%lanemask_lt": "emu::ptx::lane_mask(1)",
    "%lanemask_le": "emu::ptx::lane_mask(2)", "%lanemask_gt": "emu::ptx::lane_mask(3)",
    "%lanemask_ge": "emu::ptx::lane_mask(4)",
    "%dynamic_smem_size": "emu_dynamic_shared_bytes()", "%total_smem_size": "emu_shared_window_bytes()",
}
# (The translation is C++ after preprocessing: the runtime's variables, not the shim's threadIdx macros.)
for _axis in "xyz":
    SPECIAL_REGISTERS.update({
        f"%tid.{_axis}": f"emu_thread_idx->{_axis}", f"%ntid.{_axis}": f"emu_block_dim.{_axis}",
        f"%ctaid.{_axis}": f"emu_block_idx.{_axis}", f"%nctaid.{_axis}": f"emu_grid_dim.{_axis}",
        # No thread-block clusters: each block is a cluster of one.
        f"%clusterid.{_axis}": f"emu_block_idx.{_axis}", f"%nclusterid.{_axis}": f"emu_grid_dim.{_axis}",
        f"%cluster_ctaid.{_axis}": "0u", f"%cluster_nctaid.{_axis}": "1u",
    })

# ---------------------------------------------------------------------------------------------------
# The PTX template: tokens and a tree of statements
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:      # %0, %[name]: an asm operand
    index: int


@dataclass(frozen=True)
class Register:     # a .reg, a special register, a label (bra), or the sink _
    name: str


@dataclass(frozen=True)
class Immediate:
    text: str       # as written: 16, -1, 0x1F, 0f3F800000, 1.5


@dataclass(frozen=True)
class Vector:
    items: tuple


@dataclass(frozen=True)
class Address:      # [base], [base+offset], [offset]
    base: object
    offset: int


@dataclass(frozen=True)
class TensorAddress:  # [tensor-map, {c0, c1, ...}]: a TMA copy's tensor and coordinates
    base: object
    coordinates: Vector


@dataclass(frozen=True)
class Not:          # !p
    operand: object


@dataclass(frozen=True)
class Pair:         # p|q
    first: object
    second: object


Node = Union[Operand, Register, Immediate, Vector, Address, TensorAddress, Not, Pair]


@dataclass
class Instruction:
    opcode: str
    operands: list
    guard: object = None        # Register or Not(Register)
    where: str = ""

    @property
    def parts(self) -> list[str]:
        return self.opcode.split(".")


@dataclass
class Scope:
    statements: list = field(default_factory=list)


@dataclass
class Declaration:
    ptx_type: str
    names: list                 # expanded: %p<4> -> %p0 .. %p3


@dataclass
class Label:
    name: str


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<operand>%(?:\d+|\[\w+\]))
  | (?P<word>%{0,2}[A-Za-z_.$][\w.$]*(?:::[\w.$]+)*)
  | (?P<number>0[fF][0-9a-fA-F]{8}|0[dD][0-9a-fA-F]{16}|0[xX][0-9a-fA-F]+U?|\d+\.\d*(?:[eE][-+]?\d+)?|\d+U?)
  | (?P<punct>[{}\[\];,@!|+\-<>:])
""", re.X)


def _tokens(text: str, extended: bool, fail: Callable[[str], None]) -> list[tuple[str, str]]:
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    tokens, position = [], 0
    while position < len(text):
        m = _TOKEN.match(text, position)
        if not m:
            fail(f"cannot read the PTX at {text[position:position + 30]!r}")
        position = m.end()
        kind = m.lastgroup
        value = m[kind]
        if kind == "ws":
            continue
        if kind == "operand" and not extended:
            fail("a %n operand in an asm statement without operands")
        if kind == "word" and value.startswith("%"):
            if extended and not value.startswith("%%"):
                fail(f"{value}: in an asm statement with operands a register is written %%{value[1:]}")
            value = value[1:] if extended else value
            if value.startswith("%%"):
                fail(f"cannot read the PTX register {value!r}")
        tokens.append((kind, value))
    return tokens


class _Parser:
    def __init__(self, tokens, names: dict[str, int], fail: Callable[[str], None], where: str):
        self.tokens, self.i, self.names, self.fail, self.where = tokens, 0, names, fail, where

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if value is not None and token[1] != value:
            self.fail(f"expected {value!r} in the PTX, found {token[1] or 'the end'!r}")
        self.i += 1
        return token

    def block(self, closing: bool) -> list:
        statements = []
        while True:
            kind, value = self.peek()
            if kind == "end":
                if closing:
                    self.fail("a '{' without its '}' in the PTX")
                return statements
            if value == "}":
                if not closing:
                    self.fail("a '}' without its '{' in the PTX")
                self.take()
                return statements
            if value == ";":
                self.take()
            elif value == "{":
                self.take()
                statements.append(Scope(self.block(closing=True)))
            elif value == ".reg":
                statements.append(self.declaration())
            elif kind == "word" and value.startswith("."):
                self.fail(f"the PTX directive {value} is not modelled (only .reg declarations are)")
            elif kind == "word" and self.peek(1)[1] == ":":
                self.take()
                self.take(":")
                statements.append(Label(value))
            else:
                statements.append(self.instruction())

    def declaration(self) -> Declaration:
        self.take(".reg")
        kind, ptx_type = self.take()
        if not ptx_type.startswith(".") or ptx_type[1:] not in CTYPES:
            self.fail(f".reg {ptx_type}: not a register type the emulator models")
        names = []
        while True:
            kind, name = self.take()
            if kind != "word":
                self.fail(f"expected a register name after .reg, found {name!r}")
            if self.peek()[1] == "<":
                self.take()
                count = self.take()[1]
                self.take(">")
                names += [f"{name}{k}" for k in range(int(count))]
            else:
                names.append(name)
            if self.peek()[1] != ",":
                break
            self.take()
        self.take(";")
        return Declaration(ptx_type[1:], names)

    def instruction(self) -> Instruction:
        guard = None
        if self.peek()[1] == "@":
            self.take()
            negate = self.peek()[1] == "!"
            if negate:
                self.take()
            guard = self.operand_atom()
            guard = Not(guard) if negate else guard
        kind, opcode = self.take()
        if kind != "word":
            self.fail(f"expected a PTX instruction, found {opcode!r}")
        operands = []
        if self.peek()[1] != ";":
            while True:
                operands.append(self.operand())
                if self.peek()[1] != ",":
                    break
                self.take()
        if self.peek()[1] != ";" and self.peek()[0] != "end":
            self.fail(f"{opcode}: unexpected {self.peek()[1]!r} in its operands")
        if self.peek()[1] == ";":
            self.take()
        return Instruction(opcode, operands, guard, self.where)

    def operand(self) -> Node:
        first = self.operand_atom()
        if self.peek()[1] == "|":
            self.take()
            return Pair(first, self.operand_atom())
        return first

    def operand_atom(self) -> Node:
        kind, value = self.take()
        if value == "{":
            items = []
            while True:
                items.append(self.operand_atom())
                if self.peek()[1] != ",":
                    break
                self.take()
            self.take("}")
            return Vector(tuple(items))
        if value == "[":
            base, offset = None, 0
            if self.peek()[0] in ("operand", "word"):
                base = self.operand_atom()
                if self.peek()[1] in ("+", "-"):
                    sign = -1 if self.take()[1] == "-" else 1
                    if self.peek()[1] == "-":
                        self.take()
                        sign = -sign
                    offset = sign * _integer(self.take()[1], self.fail)
            else:
                sign = 1
                if self.peek()[1] == "-":
                    self.take()
                    sign = -1
                offset = sign * _integer(self.take()[1], self.fail)
            if self.peek()[1] == "," and base is not None and not offset:  # [tensor-map, {coordinates}]
                self.take()
                coordinates = self.operand_atom()
                self.take("]")
                if not isinstance(coordinates, Vector):
                    self.fail("expected [tensor-map, {coordinates}]")
                return TensorAddress(base, coordinates)
            self.take("]")
            return Address(base, offset)
        if value == "!":
            return Not(self.operand_atom())
        if value == "-" and self.peek()[0] == "number":
            return Immediate("-" + self.take()[1])
        if kind == "number":
            return Immediate(value)
        if kind == "operand":
            name = value[1:]
            if name.startswith("["):
                if name[1:-1] not in self.names:
                    self.fail(f"no asm operand named {name}")
                return Operand(self.names[name[1:-1]])
            return Operand(int(name))
        if kind == "word":
            return Register(value)
        self.fail(f"unexpected {value!r} in the PTX operands")


def _integer(text: str, fail) -> int:
    try:
        return int(text.rstrip("U"), 0)
    except ValueError:
        fail(f"expected an integer in the PTX, found {text!r}")


# ---------------------------------------------------------------------------------------------------
# Translation of one asm statement
# ---------------------------------------------------------------------------------------------------

@dataclass
class AsmOperand:
    constraint: str     # without modifiers
    modifier: str       # "=", "+" or "" (input)
    expression: str
    cxx: str = ""       # the local holding it
    ptx_type: str = ""  # its register type ("" for an immediate)


def _cxx_name(ptx_name: str) -> str:
    return "ptx_" + re.sub(r"[^A-Za-z0-9_]", lambda m: f"_{ord(m[0]):x}_", ptx_name)


def _cxx_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Block:
    """One asm statement being translated: its operands, the .reg scopes, and the helpers emitters use."""

    def __init__(self, operands: list[AsmOperand], file: str, line: int, instructions: "Table"):
        self.operands = operands
        self.instructions = instructions
        self.file, self.line = file, line
        self.scopes: list[dict[str, tuple[str, str]]] = [{}]
        self.labels: set[str] = set()
        self.temporaries = 0

    # ---- errors ----
    def fail(self, message: str) -> None:
        raise EmulationError(f"{self.file}:{self.line}: inline PTX: {message}")

    def unsupported(self, ins: Instruction, why: str = "") -> None:
        self.fail(f"the PTX instruction `{ins.opcode}` is not in the emulator's subset"
                  + (f" ({why})" if why else "") + " (linear/backends/emulate/ptx.py lists it)")

    def location(self) -> str:
        """file, line as C++ arguments (for barriers' reports)."""
        return f"{_cxx_string(self.file)}, {self.line}"

    def site(self, ins: Instruction) -> str:
        """A C++ string literal "file:line: opcode" for the reports of the semantics' checks."""
        return _cxx_string(f"{self.file}:{self.line}: {ins.opcode}")

    def temporary(self, stem: str) -> str:
        self.temporaries += 1
        return f"ptx_{stem}{self.temporaries}"

    # ---- registers ----
    def declare(self, ptx_type: str, name: str) -> str:
        cxx = _cxx_name(name)
        self.scopes[-1][name] = (ptx_type, cxx)
        return cxx

    def lookup(self, name: str) -> tuple[str, str] | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def is_predicate(self, op: Node) -> bool:
        if isinstance(op, Not):
            return self.is_predicate(op.operand)
        if isinstance(op, Register):
            found = self.lookup(op.name)
            return found is not None and found[0] == "pred"
        return False

    def read(self, op: Node, ptx_type: str) -> str:
        """C++ expression: the operand's value as ptx_type (its C++ type CTYPES[ptx_type])."""
        ctype = CTYPES[ptx_type]
        if isinstance(op, Operand):
            operand = self._operand(op)
            if not operand.ptx_type:
                return f"{ctype}({operand.cxx})"
            return f"emu::ptx::get<{ctype}>({operand.cxx})"
        if isinstance(op, Register):
            found = self.lookup(op.name)
            if found:
                return f"emu::ptx::get<{ctype}>({found[1]})"
            if op.name in SPECIAL_REGISTERS:
                return f"emu::ptx::get<{ctype}>({SPECIAL_REGISTERS[op.name]})"
            self.fail(f"the register {op.name} is neither declared (.reg) nor a special register the emulator models")
        if isinstance(op, Immediate):
            return self._immediate(op.text, ptx_type)
        if isinstance(op, Not):
            if ptx_type != "pred":
                self.fail("! negates only predicates")
            return f"!({self.read(op.operand, 'pred')})"
        self.fail(f"expected a register or an immediate, found {op}")

    def _immediate(self, text: str, ptx_type: str) -> str:
        ctype = CTYPES[ptx_type]
        negative = text.startswith("-")
        digits = text.lstrip("-")
        if re.fullmatch(r"0[fF][0-9a-fA-F]{8}", digits):
            value = f"emu::from_bits<float>(0x{digits[2:]}u)"
        elif re.fullmatch(r"0[dD][0-9a-fA-F]{16}", digits):
            value = f"emu::from_bits<double>(0x{digits[2:]}ull)"
        elif "." in digits:
            value = f"{digits}" if ptx_type != "f32" else f"{digits}f"
        else:
            value = f"{int(digits.rstrip('U'), 0)}ull"
        if ptx_type in FLOAT_TYPES and "." not in digits and not re.match(r"0[fFdD]", digits):
            value = f"double({value})"
        return f"{ctype}({'-' if negative else ''}{value})" if ptx_type != "pred" else f"bool({value})"

    def _operand(self, op: Operand) -> AsmOperand:
        if not 0 <= op.index < len(self.operands):
            self.fail(f"%{op.index}: the asm statement has {len(self.operands)} operands")
        return self.operands[op.index]

    def write(self, op: Node, ptx_type: str, expression: str) -> str:
        """C++ statement: the operand register gets `expression` (of C++ type CTYPES[ptx_type])."""
        ctype = CTYPES[ptx_type]
        value = f"{ctype}({expression})"
        if isinstance(op, Register) and op.name == "_":
            return f"(void)({value});"
        if isinstance(op, Operand):
            operand = self._operand(op)
            if not operand.ptx_type:
                self.fail(f"%{op.index} is an immediate (\"n\") and cannot be written")
            return f"emu::ptx::put({operand.cxx}, {value});"
        if isinstance(op, Register):
            found = self.lookup(op.name)
            if not found:
                self.fail(f"the register {op.name} is not declared (.reg), or is a special register (read only)")
            return f"emu::ptx::put({found[1]}, {value});"
        self.fail(f"expected a register to write, found {op}")

    def vector(self, op: Node, count: int | tuple[int, ...]) -> list[Node]:
        counts = (count,) if isinstance(count, int) else count
        if not isinstance(op, Vector) or len(op.items) not in counts:
            self.fail(f"expected a vector of {' or '.join(map(str, counts))} registers, found {op}")
        return list(op.items)

    def address(self, op: Node) -> str:
        """C++ uint64_t: the address an [address] operand names."""
        if not isinstance(op, Address):
            self.fail(f"expected an [address], found {op}")
        if op.base is None:
            return f"uint64_t({op.offset}ll)"
        if isinstance(op.base, Register) and not self.lookup(op.base.name):
            self.fail(f"[{op.base.name}]: addresses of named variables are not modelled (use a register)")
        base = self.read(op.base, "u64")
        return f"({base} + uint64_t({op.offset}ll))" if op.offset else base

    def pointer(self, op: Node, space: str, ins: Instruction) -> str:
        """C++ void*: the memory an [address] operand of `ins` names in state space `space`."""
        address = self.address(op)
        if space == "shared":
            return f"emu::ptx::shared_pointer({address}, {self.site(ins)})"
        if space in ("global", "local", "const", "generic"):
            return f"emu::ptx::generic_pointer({address})"
        self.fail(f"the .{space} state space is not modelled")


# ---------------------------------------------------------------------------------------------------
# Emitters
# ---------------------------------------------------------------------------------------------------

def _strip(parts: list[str], known: set[str]) -> list[str]:
    return [p for p in parts if p not in known]


def _space(ins: Instruction, b: Block, default: str = "generic") -> str:
    spaces = [p.split("::")[0] for p in ins.parts if p.split("::")[0] in ("shared", "global", "local", "const", "param")]
    if len(spaces) > 1:
        b.unsupported(ins, "two state spaces")
    if any(p in ("shared::cluster",) for p in ins.parts):
        b.unsupported(ins, "thread-block clusters are not modelled")
    return spaces[0] if spaces else default


def emit_mma(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    if len(parts) != 10 or parts[4:6] != ["row", "col"] or parts[6] != parts[9] or parts[7] != parts[8]:
        b.unsupported(ins, "row.col with equal A and B types and equal C and D types")
    shape, element, accumulator = parts[3], parts[7], parts[6]
    if shape == "m16n8k16" and element in ("f16", "bf16") and accumulator in ("f32", element):
        call = f"emu::ptx::mma_m16n8k16<{'__half' if element == 'f16' else '__nv_bfloat16'}>"
    elif shape == "m16n8k8" and element == "tf32" and accumulator == "f32":
        call = "emu::ptx::mma_m16n8k8_tf32"
    else:
        b.unsupported(ins, "m16n8k16 f16/bf16 with f32 or f16 accumulators, m16n8k8 tf32")
    if len(ins.operands) != 4:
        b.fail(f"{ins.opcode} takes 4 operands")
    if accumulator == "f16":
        # D and C: two f16x2 registers, (row g, columns 2t and 2t+1) and (row g + 8, the same); the sums
        # run in float and are rounded to f16 once.
        d, a, bb, c = (b.vector(op, n) for op, n in zip(ins.operands, (2, 4, 2, 2)))
        return ("{ uint32_t ptx_c[2] = {" + ", ".join(b.read(r, "b32") for r in c) + "}; "
                "float ptx_d[4] = {emu::ptx::from_f16_bits(ptx_c[0]), emu::ptx::from_f16_bits(ptx_c[0] >> 16), "
                "emu::ptx::from_f16_bits(ptx_c[1]), emu::ptx::from_f16_bits(ptx_c[1] >> 16)}; "
                "unsigned ptx_a[4] = {" + ", ".join(b.read(r, "b32") for r in a) + "}; "
                "unsigned ptx_b[2] = {" + ", ".join(b.read(r, "b32") for r in bb) + "}; "
                f"{call}(ptx_d, ptx_a, ptx_b); "
                + " ".join(b.write(r, "b32", f"uint32_t(emu::ptx::f16_bits(ptx_d[{2 * i + 1}])) << 16 | "
                                             f"emu::ptx::f16_bits(ptx_d[{2 * i}])") for i, r in enumerate(d)) + " }")
    d, a, bb, c = (b.vector(op, n) for op, n in zip(ins.operands, (4, 4, 2, 4)))
    return ("{ float ptx_d[4] = {" + ", ".join(b.read(r, "f32") for r in c) + "}; "
            "unsigned ptx_a[4] = {" + ", ".join(b.read(r, "b32") for r in a) + "}; "
            "unsigned ptx_b[2] = {" + ", ".join(b.read(r, "b32") for r in bb) + "}; "
            f"{call}(ptx_d, ptx_a, ptx_b); " + " ".join(b.write(r, "f32", f"ptx_d[{i}]") for i, r in enumerate(d)) + " }")


def _matrix_shape(ins: Instruction, b: Block) -> tuple[int, bool, str]:
    rest = _strip(ins.parts[1:], {"sync", "aligned", "m8n8", "b16", "trans", "shared", "shared::cta"})
    counts = [p for p in ins.parts if p in ("x1", "x2", "x4")]
    if len(counts) != 1 or "m8n8" not in ins.parts or ins.parts[-1] != "b16" or set(rest) != set(counts):
        b.unsupported(ins, "m8n8 .x1/.x2/.x4 (.trans) .b16")
    return int(counts[0][1]), "trans" in ins.parts, _space(ins, b)


def emit_ldmatrix(ins: Instruction, b: Block) -> str:
    count, trans, space = _matrix_shape(ins, b)
    if len(ins.operands) != 2:
        b.fail(f"{ins.opcode} takes 2 operands")
    registers = b.vector(ins.operands[0], count)
    return (f"{{ unsigned ptx_r[{count}]; emu::ptx::ldmatrix<{count}, {str(trans).lower()}>(ptx_r, "
            f"{b.pointer(ins.operands[1], space, ins)}, {b.site(ins)}); "
            + " ".join(b.write(r, "b32", f"ptx_r[{i}]") for i, r in enumerate(registers)) + " }")


def emit_stmatrix(ins: Instruction, b: Block) -> str:
    count, trans, space = _matrix_shape(ins, b)
    if len(ins.operands) != 2:
        b.fail(f"{ins.opcode} takes 2 operands")
    registers = b.vector(ins.operands[1], count)
    return (f"{{ unsigned ptx_r[{count}] = {{" + ", ".join(b.read(r, "b32") for r in registers) + "}; "
            f"emu::ptx::stmatrix<{count}, {str(trans).lower()}>({b.pointer(ins.operands[0], space, ins)}, ptx_r, "
            f"{b.site(ins)}); }}")


def emit_cp_async(ins: Instruction, b: Block) -> str:
    rest = _strip(ins.parts[1:], {"async", "ca", "cg", "shared", "shared::cta", "global"})
    hint = [p for p in rest if p.startswith("L2::")]
    if [p for p in rest if p not in hint] or len([p for p in ins.parts if p in ("ca", "cg")]) != 1 \
            or "global" not in ins.parts or not _space_shared(ins):
        b.unsupported(ins, "cp.async.{ca,cg}.shared.global with L2 hints")
    operands = list(ins.operands)
    if "L2::cache_hint" in hint:
        operands = operands[:-1]  # the cache policy: a hint
    if not 3 <= len(operands) <= 4:
        b.fail(f"{ins.opcode} takes [dst], [src], cp-size and an optional src-size or ignore-src")
    cp_size = b.read(operands[2], "u32")
    src_size = cp_size
    if len(operands) == 4:
        if b.is_predicate(operands[3]):
            src_size = f"({b.read(operands[3], 'pred')} ? 0u : {cp_size})"
        else:
            src_size = b.read(operands[3], "u32")
    return (f"emu::ptx::cp_async({b.pointer(operands[0], 'shared', ins)}, {b.pointer(operands[1], 'global', ins)}, "
            f"{cp_size}, {src_size}, {str('cg' in ins.parts).lower()}, {b.site(ins)});")


def _space_shared(ins: Instruction) -> bool:
    return "shared" in ins.parts or "shared::cta" in ins.parts


def emit_cp_async_group(ins: Instruction, b: Block) -> str:
    if ins.opcode == "cp.async.commit_group" and not ins.operands:
        return "emu::ptx::cp_async_commit();"
    if ins.opcode == "cp.async.wait_all" and not ins.operands:
        return "emu::ptx::cp_async_wait_all();"
    if ins.opcode == "cp.async.wait_group" and len(ins.operands) == 1:
        return f"emu::ptx::cp_async_wait({b.read(ins.operands[0], 'u32')});"
    b.unsupported(ins)


_ROUNDING = {"rni": "nearest", "rzi": "zero", "rmi": "down", "rpi": "up"}


def emit_cvt(ins: Instruction, b: Block) -> str:
    parts = ins.parts[1:]
    if len(parts) < 2 or len(ins.operands) not in (2, 3):
        b.unsupported(ins)
    to, source = parts[-2], parts[-1]
    modifiers = parts[:-2]
    d, a = ins.operands[0], ins.operands[1]
    rounding = [m for m in modifiers if m in ("rn", "rz", "rm", "rp", "rna", "rni", "rzi", "rmi", "rpi")]
    if set(modifiers) - set(rounding) or len(rounding) > 1:
        b.unsupported(ins, "no .ftz, .sat or .relu")
    mode = rounding[0] if rounding else ""
    if to == "tf32" and source == "f32" and mode == "rna":
        return b.write(d, "b32", f"emu::ptx::to_tf32({b.read(a, 'f32')})")
    if to in ("f16x2", "bf16x2") and source == "f32" and mode == "rn" and len(ins.operands) == 3:
        convert = "emu::ptx::f16_bits" if to == "f16x2" else "emu::ptx::bf16_bits"
        # d = {a, b}: a in the upper half
        return b.write(d, "b32", f"uint32_t({convert}({b.read(a, 'f32')})) << 16 | {convert}({b.read(ins.operands[2], 'f32')})")
    if len(ins.operands) != 2:
        b.unsupported(ins)
    if to in INTEGER_TYPES and source in INTEGER_TYPES and not mode:
        return b.write(d, to, b.read(a, source))
    if to in ("f16", "bf16") and source == "f32" and mode == "rn":
        return b.write(d, "b16", f"emu::ptx::{to}_bits({b.read(a, 'f32')})")
    if to == "f32" and source in ("f16", "bf16") and not mode:
        return b.write(d, "f32", f"emu::ptx::from_{source}_bits({b.read(a, 'b16')})")
    if to == "f32" and source == "f64" and mode == "rn":
        return b.write(d, "f32", f"float({b.read(a, 'f64')})")
    if to == "f64" and source == "f32" and not mode:
        return b.write(d, "f64", f"double({b.read(a, 'f32')})")
    if to in FLOAT_TYPES and source in INTEGER_TYPES and mode == "rn":
        return b.write(d, to, f"{CTYPES[to]}({b.read(a, source)})")
    if to in INTEGER_TYPES and source in FLOAT_TYPES and mode in _ROUNDING:
        return b.write(d, to, f"emu::ptx::float_to_int<{CTYPES[to]}>({b.read(a, source)}, "
                              f"emu::ptx::Round::{_ROUNDING[mode]})")
    if to == source and to in FLOAT_TYPES and mode in _ROUNDING:
        return b.write(d, to, f"emu::ptx::round_float({b.read(a, to)}, emu::ptx::Round::{_ROUNDING[mode]})")
    b.unsupported(ins)


def emit_cvta(ins: Instruction, b: Block) -> str:
    parts = ins.parts[1:]
    to = parts[0] == "to"
    parts = parts[1:] if to else parts
    if len(parts) != 2 or parts[1] not in ("u32", "u64") or parts[0] not in ("shared", "shared::cta", "global", "local"):
        b.unsupported(ins, "cvta{.to}.{shared,global,local}.{u32,u64}")
    if len(ins.operands) != 2:
        b.fail(f"{ins.opcode} takes 2 operands")
    d, a = ins.operands
    value = b.read(a, "u64")
    if parts[0].startswith("shared"):
        value = (f"uint64_t(emu_generic_to_shared(emu::ptx::generic_pointer({value})))" if to
                 else f"uint64_t(reinterpret_cast<uintptr_t>(emu::ptx::shared_pointer({value}, {b.site(ins)})))")
    return b.write(d, parts[1], value)


def emit_mov(ins: Instruction, b: Block) -> str:
    t = ins.parts[1] if len(ins.parts) == 2 else ""
    if t not in CTYPES or len(ins.operands) != 2:
        b.unsupported(ins)
    d, a = ins.operands
    if isinstance(d, Vector) or isinstance(a, Vector):  # pack or unpack halves (or quarters)
        items = d.items if isinstance(d, Vector) else a.items
        if t[0] != "b" or width(t) % len(items):
            b.unsupported(ins, "a vector needs a .b type it divides")
        part = f"b{width(t) // len(items)}"
        whole = CTYPES[t]
        if isinstance(a, Vector):
            value = " | ".join(f"{whole}({b.read(r, part)}) << {i * width(part)}" for i, r in enumerate(items))
            return b.write(d, t, value)
        temp = b.temporary("whole")
        return (f"{{ const {whole} {temp} = {b.read(a, t)}; "
                + " ".join(b.write(r, part, f"{temp} >> {i * width(part)}") for i, r in enumerate(items)) + " }")
    return b.write(d, t, b.read(a, t))


_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
            "lo": "<", "ls": "<=", "hi": ">", "hs": ">="}


def emit_setp(ins: Instruction, b: Block) -> str:
    parts = ins.parts[1:]
    flush = "ftz" in parts
    parts = [p for p in parts if p != "ftz"]
    if len(parts) not in (2, 3) or flush and parts[-1] != "f32":
        b.unsupported(ins)
    compare, t = parts[0], parts[-1]
    combine = parts[1] if len(parts) == 3 else None
    if t not in CTYPES or t == "pred" or combine not in (None, "and", "or", "xor"):
        b.unsupported(ins)
    if len(ins.operands) != (4 if combine else 3):
        b.fail(f"{ins.opcode}: wrong number of operands")
    target, x, y = ins.operands[:3]
    xa, ya = b.read(x, t), b.read(y, t)
    if t in FLOAT_TYPES:
        ordered = f"({xa} == {xa} && {ya} == {ya})"
        if compare in ("num", "nan"):
            value = ordered if compare == "num" else f"!{ordered}"
        elif compare.endswith("u") and compare[:-1] in _COMPARE:
            value = f"(!{ordered} || ({xa} {_COMPARE[compare[:-1]]} {ya}))"
        elif compare in ("eq", "ne", "lt", "le", "gt", "ge"):
            value = f"({ordered} && ({xa} {_COMPARE[compare]} {ya}))"
        else:
            b.unsupported(ins)
    else:
        if compare in ("lo", "ls", "hi", "hs") and t[0] == "s":
            b.unsupported(ins)
        if compare not in _COMPARE:
            b.unsupported(ins)
        value = f"({xa} {_COMPARE[compare]} {ya})"
    first, second = (target.first, target.second) if isinstance(target, Pair) else (target, None)
    operator = {"and": "&&", "or": "||", "xor": "!="}.get(combine)
    c = b.read(ins.operands[3], "pred") if combine else None
    temp = b.temporary("compare")
    if t in FLOAT_TYPES:  # compared with subnormals flushed exactly when the instruction says .ftz
        value = f"emu::ptx::with_flush({str(flush).lower()}, [&] {{ return bool({value}); }})"
    code = f"{{ const bool {temp} = {value}; "
    code += b.write(first, "pred", f"({temp} {operator} {c})" if combine else temp)
    if second is not None:
        code += " " + b.write(second, "pred", f"(!{temp} {operator} {c})" if combine else f"!{temp}")
    return code + " }"


def emit_selp(ins: Instruction, b: Block) -> str:
    t = ins.parts[1] if len(ins.parts) == 2 else ""
    if t not in CTYPES or t == "pred" or len(ins.operands) != 4:
        b.unsupported(ins)
    d, x, y, p = ins.operands
    return b.write(d, t, f"({b.read(p, 'pred')} ? {b.read(x, t)} : {b.read(y, t)})")


_BINARY = {"add": "+", "sub": "-", "and": "&", "or": "|", "xor": "^", "div": "/", "rem": "%"}


def emit_arithmetic(ins: Instruction, b: Block) -> str:
    op, parts = ins.parts[0], ins.parts[1:]
    t = parts[-1] if parts else ""
    modifiers = parts[:-1]
    ops = ins.operands
    if t not in CTYPES:
        b.unsupported(ins)
    is_float = t in FLOAT_TYPES
    flush = "ftz" in modifiers
    modifiers = [m for m in modifiers if m != "ftz"]
    if is_float and (set(modifiers) - {"rn"} or flush and t != "f32"):
        b.unsupported(ins, "floats in round-to-nearest (.ftz on f32), without .sat")
    if flush and not is_float:
        b.unsupported(ins)
    if not is_float and op not in ("mul", "mad") and modifiers:
        b.unsupported(ins)
    if t == "pred" and op not in ("and", "or", "xor", "not"):
        b.unsupported(ins)
    if t[0] == "b" and t != "pred" and op not in ("and", "or", "xor", "not", "shl", "shr"):
        b.unsupported(ins, "arithmetic on an untyped .b type")
    ctype = CTYPES[t]

    def r(i: int, ptx_type: str = t) -> str:
        return b.read(ops[i], ptx_type)

    if is_float:  # evaluated with the CPU flushing subnormals exactly when the instruction says .ftz
        write = b.write
        b = _FloatBlock(b, write, t, flush)

    arity = {"not": 2, "neg": 2, "abs": 2, "mad": 4, "fma": 4}.get(op, 3)
    if len(ops) != arity:
        b.fail(f"{ins.opcode} takes {arity} operands")
    if op in _BINARY:
        if t == "pred":
            return b.write(ops[0], t, f"({r(1)} {'!=' if op == 'xor' else _BINARY[op] * 2} {r(2)})")
        if is_float and op not in ("add", "sub"):
            b.unsupported(ins, "floating-point division")
        if is_float and modifiers == ["rn"]:  # never contracted into an fma
            return b.write(ops[0], t, f"__{'f' if t == 'f32' else 'd'}{op}_rn({r(1)}, {r(2)})")
        if not is_float:  # wraps around, as the GPU's integers do
            u = f"emu::ptx::unsigned_of<{ctype}>"
            if op in ("add", "sub"):
                return b.write(ops[0], t, f"{ctype}({u}({r(1)}) {_BINARY[op]} {u}({r(2)}))")
        return b.write(ops[0], t, f"{ctype}({r(1)} {_BINARY[op]} {r(2)})")
    if op == "not":
        return b.write(ops[0], t, f"!{r(1)}" if t == "pred" else f"{ctype}(~{r(1)})")
    if op in ("shl", "shr"):
        value = CTYPES[t]
        function = "shift_left" if op == "shl" else "shift_right"
        return b.write(ops[0], t, f"emu::ptx::{function}<{value}>({r(1)}, {r(2, 'u32')})")
    if op in ("min", "max"):
        if is_float:
            return b.write(ops[0], t, f"std::f{op}({r(1)}, {r(2)})")
        return b.write(ops[0], t, f"std::{op}<{ctype}>({r(1)}, {r(2)})")
    if op in ("neg", "abs"):
        if op == "neg":
            return b.write(ops[0], t, f"{ctype}(-{r(1)})")
        return b.write(ops[0], t, f"std::fabs({r(1)})" if is_float else f"{ctype}({r(1)} < 0 ? -{r(1)} : {r(1)})")
    if op == "mul":
        if is_float:
            if modifiers == ["rn"]:
                return b.write(ops[0], t, f"__{'f' if t == 'f32' else 'd'}mul_rn({r(1)}, {r(2)})")
            return b.write(ops[0], t, f"{ctype}({r(1)} * {r(2)})")
        if modifiers == ["lo"]:
            return b.write(ops[0], t, f"{ctype}(emu::ptx::unsigned_of<{ctype}>({r(1)}) * emu::ptx::unsigned_of<{ctype}>({r(2)}))")
        if modifiers == ["hi"]:
            return b.write(ops[0], t, f"emu::ptx::mul_hi<{ctype}>({r(1)}, {r(2)})")
        if modifiers == ["wide"] and width(t) in (16, 32):
            wide = f"{t[0]}{2 * width(t)}"
            return b.write(ops[0], wide, f"{CTYPES[wide]}({CTYPES[wide]}({r(1)}) * {CTYPES[wide]}({r(2)}))")
        b.unsupported(ins)
    if op == "mad":
        if modifiers != ["lo"] or is_float:
            b.unsupported(ins, "mad.lo on integers")
        u = f"emu::ptx::unsigned_of<{ctype}>"
        return b.write(ops[0], t, f"{ctype}({u}({r(1)}) * {u}({r(2)}) + {u}({r(3)}))")
    if op == "fma":
        if modifiers != ["rn"] or not is_float:
            b.unsupported(ins, "fma.rn on f32/f64")
        return b.write(ops[0], t, f"std::fma({r(1)}, {r(2)}, {r(3)})")
    b.unsupported(ins)


class _FloatBlock:
    """A Block whose write() of a float result evaluates it under the instruction's flush mode."""

    def __init__(self, block: Block, write, ptx_type: str, flush: bool):
        self._block, self._write, self._type, self._flush = block, write, ptx_type, flush

    def __getattr__(self, name):
        return getattr(self._block, name)

    def write(self, op: Node, ptx_type: str, expression: str) -> str:
        flush = "true" if self._flush else "false"
        return self._write(op, ptx_type, f"emu::ptx::with_flush({flush}, [&] {{ return {CTYPES[ptx_type]}({expression}); }})")


def emit_prmt(ins: Instruction, b: Block) -> str:
    if ins.opcode != "prmt.b32" or len(ins.operands) != 4:
        b.unsupported(ins, "prmt.b32 in its default mode")
    d, x, y, c = ins.operands
    return b.write(d, "b32", f"emu::ptx::permute({b.read(x, 'b32')}, {b.read(y, 'b32')}, {b.read(c, 'b32')})")


def emit_bits(ins: Instruction, b: Block) -> str:
    op, t = ins.parts[0], ins.parts[-1] if len(ins.parts) == 2 else ""
    ops = ins.operands
    if op in ("popc", "clz") and t in ("b32", "b64") and len(ops) == 2:
        builtin = {"popc": "__builtin_popcount", "clz": "__builtin_clz"}[op] + ("ll" if t == "b64" else "")
        value = b.read(ops[1], t)
        if op == "clz":
            return b.write(ops[0], "u32", f"({value} ? uint32_t({builtin}({value})) : {width(t)}u)")
        return b.write(ops[0], "u32", f"uint32_t({builtin}({value}))")
    if op == "brev" and t in ("b32", "b64") and len(ops) == 2:
        return b.write(ops[0], t, f"emu::ptx::bit_reverse({b.read(ops[1], t)})")
    if op == "bfe" and t in ("u32", "s32", "u64", "s64") and len(ops) == 4:
        return b.write(ops[0], t, f"emu::ptx::bit_field_extract({b.read(ops[1], t)}, {b.read(ops[2], 'u32')}, "
                                  f"{b.read(ops[3], 'u32')})")
    if op == "bfi" and t in ("b32", "b64") and len(ops) == 5:
        return b.write(ops[0], t, f"emu::ptx::bit_field_insert({b.read(ops[1], t)}, {b.read(ops[2], t)}, "
                                  f"{b.read(ops[3], 'u32')}, {b.read(ops[4], 'u32')})")
    b.unsupported(ins)


_REDUX = {("add", "u32"): "add", ("add", "s32"): "add", ("min", "u32"): "min", ("min", "s32"): "min",
          ("max", "u32"): "max", ("max", "s32"): "max", ("and", "b32"): "and", ("or", "b32"): "or",
          ("xor", "b32"): "xor"}


def emit_redux(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    if len(parts) != 4 or parts[1] != "sync" or (parts[2], parts[3]) not in _REDUX or len(ins.operands) != 3:
        b.unsupported(ins, "redux.sync.{add,min,max}.{u32,s32}, redux.sync.{and,or,xor}.b32")
    t = parts[3]
    ctype = "int" if t == "s32" else "unsigned"
    d, a, mask = ins.operands
    return b.write(d, t, f"__reduce_{_REDUX[(parts[2], t)]}_sync({b.read(mask, 'b32')}, {ctype}({b.read(a, t)}))")


def emit_lop3(ins: Instruction, b: Block) -> str:
    if ins.opcode != "lop3.b32" or len(ins.operands) != 5:
        b.unsupported(ins)
    d, *rest = ins.operands
    return b.write(d, "b32", "emu::ptx::lop3(" + ", ".join(b.read(o, "b32") for o in rest) + ")")


_LD_ST_HINTS = {"weak", "volatile", "relaxed", "acquire", "release", "cta", "gpu", "sys", "ca", "cg", "cs",
                "lu", "cv", "wb", "wt", "nc", "L1::evict_normal", "L1::evict_unchanged", "L1::evict_first",
                "L1::evict_last", "L1::no_allocate", "L2::evict_normal", "L2::evict_first", "L2::evict_last",
                "L2::64B", "L2::128B", "L2::256B"}


def emit_ld_st(ins: Instruction, b: Block) -> str:
    store = ins.parts[0] == "st"
    parts = ins.parts[1:]
    space = _space(ins, b)
    if space == "param":
        b.unsupported(ins, "the .param state space is not modelled in inline PTX")
    t = parts[-1] if parts else ""
    rest = [p for p in parts[:-1] if p.split("::")[0] not in ("shared", "global", "local", "const")]
    vectors = [p for p in rest if p in ("v2", "v4")]
    if t not in CTYPES or t == "pred" or set(rest) - _LD_ST_HINTS - {"v2", "v4"} or len(vectors) > 1:
        b.unsupported(ins)
    count = int(vectors[0][1]) if vectors else 1
    if len(ins.operands) != 2:
        b.fail(f"{ins.opcode} takes 2 operands")
    value, address = (ins.operands[1], ins.operands[0]) if store else ins.operands
    items = b.vector(value, count) if count > 1 else [value]
    ctype, size = CTYPES[t], width(t) // 8
    pointer = b.pointer(address, space, ins)
    what = b.site(ins)
    p = b.temporary("address")
    code = (f"{{ char* {p} = static_cast<char*>(emu::ptx::vector_address({pointer}, {count * size}, {what})); ")
    for i, item in enumerate(items):
        if store:
            code += f"emu::ptx::store<{ctype}>({p} + {i * size}, {b.read(item, t)}, {what}); "
        else:
            code += b.write(item, t, f"emu::ptx::load<{ctype}>({p} + {i * size}, {what})") + " "
    return code + "}"


_ATOMIC_OPS = {"add": "add", "min": "min", "max": "max", "and": "and_", "or": "or_", "xor": "xor_",
               "exch": "exch", "inc": "inc", "dec": "dec"}


def emit_atom(ins: Instruction, b: Block) -> str:
    reduce = ins.parts[0] == "red"
    space = _space(ins, b)
    parts = [p for p in ins.parts[1:] if p.split("::")[0] not in ("shared", "global")]
    parts = [p for p in parts if p not in ("relaxed", "acquire", "release", "acq_rel", "cta", "gpu", "sys")]
    if len(parts) != 2 or parts[1] not in CTYPES or space not in ("shared", "global", "generic"):
        b.unsupported(ins)
    op, t = parts
    ctype = CTYPES[t]
    if t in ("f32", "f64") and op != "add" or t in ("pred", "f16", "bf16", "f16x2", "bf16x2") or width(t) < 32:
        b.unsupported(ins)
    ops = ins.operands
    if op == "cas":
        if reduce or len(ops) != 4:
            b.unsupported(ins)
        return b.write(ops[0], t, f"emu::ptx::atomic_cas<{ctype}>({b.pointer(ops[1], space, ins)}, "
                                  f"{b.read(ops[2], t)}, {b.read(ops[3], t)}, {b.site(ins)})")
    if op not in _ATOMIC_OPS or len(ops) != (2 if reduce else 3):
        b.unsupported(ins)
    target, operands = (None, ops) if reduce else (ops[0], ops[1:])
    call = (f"emu::ptx::atomic<{ctype}>(emu::ptx::Atomic::{_ATOMIC_OPS[op]}, {b.pointer(operands[0], space, ins)}, "
            f"{b.read(operands[1], t)}, {b.site(ins)})")
    return f"(void){call};" if reduce else b.write(target, t, call)


def emit_barrier(ins: Instruction, b: Block) -> str:
    parts = _strip(ins.parts[1:], {"cta", "aligned"})
    if parts not in (["sync"], ["arrive"]) or not 1 <= len(ins.operands) <= 2:
        b.unsupported(ins, "bar.sync, bar.arrive, barrier.sync, barrier.arrive with an id and a thread count")
    wait = parts == ["sync"]
    if not wait and len(ins.operands) != 2:
        b.fail(f"{ins.opcode} needs a thread count")
    count = b.read(ins.operands[1], "u32") if len(ins.operands) == 2 else "0u"
    return f"emu_named_barrier(int({b.read(ins.operands[0], 'u32')}), int({count}), {int(wait)}, {b.location()});"


def emit_bar_warp(ins: Instruction, b: Block) -> str:
    if len(ins.operands) != 1:
        b.fail(f"{ins.opcode} takes a member mask")
    return f"__syncwarp({b.read(ins.operands[0], 'b32')});"


def emit_elect(ins: Instruction, b: Block) -> str:
    if len(ins.operands) != 2 or not isinstance(ins.operands[0], Pair):
        b.fail("elect.sync takes d|p, membermask")
    pair = ins.operands[0]
    elected, leader = b.temporary("elected"), b.temporary("leader")
    return (f"{{ bool {elected}; const uint32_t {leader} = emu::ptx::elect({b.read(ins.operands[1], 'b32')}, "
            f"&{elected}); {b.write(pair.first, 'b32', leader)} {b.write(pair.second, 'pred', elected)} }}")


def emit_shfl(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    if len(parts) != 4 or parts[1] != "sync" or parts[2] not in ("up", "down", "bfly", "idx") or parts[3] != "b32" \
            or len(ins.operands) != 5:
        b.unsupported(ins, "shfl.sync.{up,down,bfly,idx}.b32 d[|p], a, b, c, membermask")
    d, a, lane, c, mask = ins.operands
    first, second = (d.first, d.second) if isinstance(d, Pair) else (d, None)
    ok, value = b.temporary("in_range"), b.temporary("value")
    code = (f"{{ bool {ok}; const uint32_t {value} = emu::ptx::shuffle(emu::ptx::Shuffle::{parts[2]}, "
            f"{b.read(a, 'b32')}, {b.read(lane, 'b32')}, {b.read(c, 'b32')}, {b.read(mask, 'b32')}, &{ok}); "
            f"{b.write(first, 'b32', value)} ")
    if second is not None:
        code += b.write(second, "pred", ok)
    return code + " }"


def emit_vote(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    if len(ins.operands) != 3 or len(parts) != 4 or parts[1] != "sync":
        b.unsupported(ins)
    d, p, mask = ins.operands
    predicate, member = b.read(p, "pred"), b.read(mask, "b32")
    if parts[2:] == ["ballot", "b32"]:
        return b.write(d, "b32", f"__ballot_sync({member}, {predicate})")
    if parts[3] == "pred" and parts[2] in ("all", "any"):
        return b.write(d, "pred", f"__{parts[2]}_sync({member}, {predicate})")
    if parts[2:] == ["uni", "pred"]:
        ballot = b.temporary("ballot")
        return (f"{{ const unsigned {ballot} = __ballot_sync({member}, {predicate}); "
                f"{b.write(d, 'pred', f'{ballot} == 0 || {ballot} == ({member} & __activemask())')} }}")
    b.unsupported(ins)


def emit_activemask(ins: Instruction, b: Block) -> str:
    if ins.opcode != "activemask.b32" or len(ins.operands) != 1:
        b.unsupported(ins)
    return b.write(ins.operands[0], "b32", "__activemask()")


def emit_fence(ins: Instruction, b: Block) -> str:
    # Fibers never run at the same time: a compiler barrier orders what a fence would.
    if ins.operands:
        b.unsupported(ins)
    return "__threadfence();"


def emit_nanosleep(ins: Instruction, b: Block) -> str:
    if len(ins.operands) != 1:
        b.unsupported(ins)
    return f"__nanosleep({b.read(ins.operands[0], 'u32')});"


def emit_trap(ins: Instruction, b: Block) -> str:
    return "__trap();" if ins.opcode == "trap" else "__brkpt();"


def emit_bra(ins: Instruction, b: Block) -> str:
    if len(ins.operands) != 1 or not isinstance(ins.operands[0], Register):
        b.fail("bra takes a label")
    label = ins.operands[0].name
    if label not in b.labels:
        b.fail(f"bra {label}: no such label in this asm statement")
    return f"goto {_cxx_name(label)};"


# opcode pattern (the whole opcode must match) -> emitter. The first match wins.
INSTRUCTIONS: list[tuple[str, Callable[[Instruction, Block], str]]] = [
    (r"mma\.sync\.aligned\.m16n8k(?:16|8)\.\S+", emit_mma),
    (r"ldmatrix\.sync\.aligned\.\S+", emit_ldmatrix),
    (r"stmatrix\.sync\.aligned\.\S+", emit_stmatrix),
    (r"cp\.async\.(?:ca|cg)\.\S+", emit_cp_async),
    (r"cp\.async\.(?:commit_group|wait_group|wait_all)", emit_cp_async_group),
    (r"cvt\.\S+", emit_cvt),
    (r"cvta\.\S+", emit_cvta),
    (r"mov\.\w+", emit_mov),
    (r"setp\.\S+", emit_setp),
    (r"selp\.\w+", emit_selp),
    (r"(?:add|sub|mul|mad|fma|div|rem|min|max|neg|abs|and|or|xor|not|shl|shr)(?:\.\w+)+", emit_arithmetic),
    (r"prmt\.\S+", emit_prmt),
    (r"lop3\.\S+", emit_lop3),
    (r"(?:popc|clz|brev|bfe|bfi)\.\w+", emit_bits),
    (r"redux\.sync\.\w+\.\w+", emit_redux),
    (r"(?:ld|st)\.\S+", emit_ld_st),
    (r"(?:atom|red)\.\S+", emit_atom),
    (r"(?:bar|barrier)(?:\.cta)?\.(?:sync|arrive)(?:\.aligned)?", emit_barrier),
    (r"bar\.warp\.sync", emit_bar_warp),
    (r"elect\.sync", emit_elect),
    (r"shfl\.\S+", emit_shfl),
    (r"vote\.\S+", emit_vote),
    (r"activemask\.\S+", emit_activemask),
    (r"membar\.(?:cta|gl|sys)|fence\.(?:sc|acq_rel)\.(?:cta|gpu|sys)", emit_fence),
    (r"nanosleep\.u32", emit_nanosleep),
    (r"trap|brkpt", emit_trap),
    (r"bra(?:\.uni)?", emit_bra),
]
# The sm_90 set (mbarrier, cp.async.bulk, wgmma, fence.proxy.async, setmaxnreg) is ptx_hopper.py's
# INSTRUCTIONS, which imports this module's types; the compiler passes both tables to translate_unit.
Table = tuple[tuple[str, Callable[[Instruction, "Block"], str]], ...]


@functools.lru_cache(maxsize=8)
def _compiled(instructions: Table) -> list[tuple[re.Pattern, Callable]]:
    return [(re.compile(p), e) for p, e in instructions]


def _emitter(opcode: str, instructions: Table):
    for pattern, emit in _compiled(instructions):
        if pattern.fullmatch(opcode):
            return emit
    return None


def _labels(statements: list) -> list[str]:
    found = []
    for s in statements:
        if isinstance(s, Label):
            found.append(s.name)
        elif isinstance(s, Scope):
            found += _labels(s.statements)
    return found


def _emit_statements(statements: list, b: Block) -> str:
    out = []
    for s in statements:
        if isinstance(s, Scope):
            b.scopes.append({})
            out.append("{ " + _emit_statements(s.statements, b) + " }")
            b.scopes.pop()
        elif isinstance(s, Declaration):
            if s.ptx_type not in CTYPES:
                b.fail(f".reg .{s.ptx_type} is not modelled")
            out.append(" ".join(f"{CTYPES[s.ptx_type]} {b.declare(s.ptx_type, n)};" for n in s.names))
        elif isinstance(s, Label):
            out.append(f"{_cxx_name(s.name)}:;")
        else:
            emit = _emitter(s.opcode, b.instructions)
            if emit is None:
                b.unsupported(s)
            code = emit(s, b)
            if s.guard is not None:
                code = f"if ({b.read(s.guard, 'pred')}) {{ {code} }}"
            out.append(code)
    return " ".join(out)


def translate_asm(template: str, outputs: list[AsmOperand], inputs: list[AsmOperand], names: dict[str, int],
                  extended: bool, file: str, line: int, instructions: Table = tuple(INSTRUCTIONS)) -> str:
    """The C++ block that runs one asm statement, with the instructions of the table given."""
    operands = outputs + inputs
    b = Block(operands, file, line, instructions)
    code = []
    for i, op in enumerate(operands):
        if op.constraint.isdigit():      # an input tied to output n: the same register
            tied = int(op.constraint)
            if tied >= len(outputs):
                b.fail(f"operand {i} is tied to operand {tied}, which is not an output")
            op.cxx, op.ptx_type = outputs[tied].cxx, outputs[tied].ptx_type
            code.append(f"emu::ptx::put({op.cxx}, emu::ptx::operand_in<{CTYPES[op.ptx_type]}>(({op.expression})));")
            continue
        letter = op.constraint
        op.cxx = f"ptx_op{i}"
        if letter == "n":
            if op.modifier:
                b.fail(f"operand {i}: an \"n\" operand is an input")
            op.ptx_type = ""
            code.append(f"constexpr auto {op.cxx} = ({op.expression});")
            continue
        if letter not in CONSTRAINTS:
            b.fail(f"operand {i}: the constraint {letter!r} is not modelled (r, l, h, f, d, n, c)")
        op.ptx_type = CONSTRAINTS[letter]
        ctype = CTYPES[op.ptx_type]
        if op.modifier:
            code.append(f"auto& ptx_ref{i} = ({op.expression});")
            code.append(f"{ctype} {op.cxx}" + (f" = emu::ptx::operand_in<{ctype}>(ptx_ref{i});" if op.modifier == "+" else ";"))
        else:
            code.append(f"{ctype} {op.cxx} = emu::ptx::operand_in<{ctype}>(({op.expression}));")

    def fail(message: str) -> None:
        b.fail(message)

    tokens = _tokens(template, extended, fail)
    statements = _Parser(tokens, names, fail, f"{file}:{line}").block(closing=False)
    b.labels = set(_labels(statements))
    if len(b.labels) != len(_labels(statements)):
        b.fail("a label defined twice")
    body = _emit_statements(statements, b)
    labels = f"__label__ {', '.join(_cxx_name(l) for l in sorted(b.labels))}; " if b.labels else ""
    outs = " ".join(f"emu::ptx::operand_out(ptx_ref{i}, {op.cxx});" for i, op in enumerate(outputs))
    return "{ " + labels + " ".join(code) + " " + body + " " + outs + " }"


# ---------------------------------------------------------------------------------------------------
# Finding asm statements in preprocessed C++
# ---------------------------------------------------------------------------------------------------

_SCAN = re.compile(r'''
    (?P<marker>^\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<char>'(?:[^'\\\n]|\\.)*')
  | (?P<asm>\b(?:asm|__asm__|__asm)\b)
  | (?P<newline>\n)
''', re.X | re.M)
_MARKER = re.compile(r'^#\s*(?:line\s+)?(\d+)\s+"((?:[^"\\]|\\.)*)"((?:\s+\d+)*)')
_QUALIFIERS = {"volatile", "__volatile__", "__volatile", "inline", "__inline", "__inline__"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}


def _unescape(literal: str) -> str:
    body = literal[1:-1]
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x":
            m = re.match(r"[0-9a-fA-F]+", body[i + 2:])
            out.append(chr(int(m[0], 16)))
            i += 2 + len(m[0])
        else:
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(chr(int(m[0], 8)) if m else nxt)
            i += 1 + (len(m[0]) if m else 1)
    return "".join(out)


def _split_top(text: str, separators: str) -> list[str]:
    """text split at the separators that are outside brackets and literals."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            m = re.compile(r'"(?:[^"\\]|\\.)*"' if ch == '"' else r"'(?:[^'\\]|\\.)*'", re.S).match(text, i)
            i = m.end() if m else i + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in separators and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _strip_markers(text: str) -> str:
    return re.sub(r"^#[^\n]*$", " ", text, flags=re.M)


_OPERAND = re.compile(r'\s*(?:\[\s*(?P<name>\w+)\s*\])?\s*(?P<constraint>(?:"(?:[^"\\]|\\.)*"\s*)+)\((?P<expression>.*)\)\s*$', re.S)


def _operands(section: str, output: bool, fail) -> tuple[list[AsmOperand], list[str | None]]:
    operands, names = [], []
    if not section.strip():
        return operands, names
    for text in _split_top(section, ","):
        m = _OPERAND.match(text)
        if not m:
            fail(f"cannot read the asm operand {text.strip()!r}")
        constraint = "".join(_unescape(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', m["constraint"]))
        modifier = constraint[0] if constraint[:1] in "=+" and constraint else ""
        letters = constraint[len(modifier):].replace("&", "").strip()
        if output and not modifier:
            fail(f"the output operand {text.strip()!r} has no = or +")
        if not output and modifier:
            fail(f"the input operand {text.strip()!r} has {modifier}")
        if len(letters) != 1 and not letters.isdigit():
            fail(f"the constraint {constraint!r} is not modelled (one of r, l, h, f, d, n, c)")
        operands.append(AsmOperand(letters, modifier, m["expression"]))
        names.append(m["name"])
    return operands, names


def translate_unit(text: str, translate_file: Callable[[str, bool], bool],
                   instructions: Table = tuple(INSTRUCTIONS)) -> str:
    """Preprocessed C++ (g++ -E, with line markers) with each asm statement of the files for which
    translate_file(path, is_system_header) is true replaced by its C++ translation, using the
    instructions of the table given (this module's INSTRUCTIONS unless told); every replacement keeps
    the line count, so compiler messages keep their lines."""
    out, position = [], 0
    file, line, translating = "<unknown>", 1, False
    scan_from = 0
    while True:
        m = _SCAN.search(text, scan_from)
        if not m:
            break
        kind = m.lastgroup
        scan_from = m.end()
        if kind == "newline":
            line += 1
            continue
        if kind == "marker":
            marker = _MARKER.match(m[0])
            if marker:
                line = int(marker[1]) - 1  # the newline after the marker counts it
                file = _unescape('"' + marker[2] + '"')
                translating = translate_file(file, " 3" in marker[3])
            continue
        if kind != "asm" or not translating:
            continue
        end, statement = _asm_statement(text, m.end())
        if statement is None:
            continue
        start_line = line
        replacement = _translate_statement(statement, file, start_line, text, m.start(), instructions)
        if replacement is None:
            continue
        newlines = text.count("\n", m.start(), end)
        out.append(text[position:m.start()])
        out.append(replacement + "\n" * newlines)
        position = end
        scan_from = end
        line += newlines
    out.append(text[position:])
    return "".join(out)


def _asm_label(text: str, start: int) -> bool:
    """Whether the asm keyword at `start` (with no qualifier and no operands) names a declaration's
    assembler symbol, `int f(int) asm("name");`, rather than starting a statement: it follows a
    declarator (an identifier or a parameter list), not `if (...)`, `while (...)` or `for (...)`."""
    before = text[:start].rstrip()
    if not before or not (before[-1] == ")" or before[-1].isalnum() or before[-1] == "_"):
        return False
    if before[-1] != ")":
        return not re.search(r"\b(?:else|do)$", before)
    depth = 0
    for k in range(len(before) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(before[k], 0)
        if depth == 0:
            return not re.search(r"\b(?:if|while|for|switch)\s*$", before[:k])
    return True


def _asm_statement(text: str, i: int) -> tuple[int, str | None]:
    """From just after the asm keyword: (the end of the statement, the text between its parentheses),
    or (i, None) where this is no asm statement (a qualifier we do not know, or no parenthesis)."""
    m = re.compile(r"\s*").match(text, i)
    j = m.end()
    while True:
        word = re.compile(r"[A-Za-z_]\w*").match(text, j)
        if word and word[0] in _QUALIFIERS:
            j = re.compile(r"\s*").match(text, word.end()).end()
            continue
        if word and word[0] == "goto":
            return i, None
        break
    if j >= len(text) or text[j] != "(":
        return i, None
    depth, k = 0, j
    while k < len(text):
        ch = text[k]
        if ch in "\"'":
            lm = re.compile(r'"(?:[^"\\\n]|\\.)*"' if ch == '"' else r"'(?:[^'\\\n]|\\.)*'").match(text, k)
            k = lm.end() if lm else k + 1
            continue
        if ch == "#" and (k == 0 or text[k - 1] == "\n"):
            k = text.find("\n", k)
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                break
        k += 1
    inner = text[j + 1:k]
    after = re.compile(r"\s*;").match(text, k + 1)
    if not after:
        return i, None  # an asm label on a declaration: `int f() asm("name");` ends differently
    return after.end(), inner


def _translate_statement(inner: str, file: str, line: int, text: str, start: int,
                         instructions: Table) -> str | None:
    def fail(message: str) -> None:
        raise EmulationError(f"{file}:{line}: inline PTX: {message}")

    body = _strip_markers(inner)
    sections = _split_top(body, ":")
    literals = sections[0].strip()
    if not re.fullmatch(r'(?:"(?:[^"\\]|\\.)*"\s*)+', literals, re.S):
        # A declaration's asm label is one string and ends the declarator; anything else is not ours.
        fail("the asm template is not a string literal")
    template = "".join(_unescape(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', literals, re.S))
    qualified = re.match(r"\w+\s+[A-Za-z_]", text[start:start + 40]) is not None  # asm volatile (
    if len(sections) == 1 and not qualified and _asm_label(text, start):
        return None
    if len(sections) > 4:
        fail("asm goto is not modelled")
    outputs, output_names = _operands(sections[1] if len(sections) > 1 else "", True, fail)
    inputs, input_names = _operands(sections[2] if len(sections) > 2 else "", False, fail)
    names = {n: i for i, n in enumerate(output_names + input_names) if n}
    if not template.strip():
        return "__asm__ __volatile__(\"\" ::: \"memory\");"
    return translate_asm(template, outputs, inputs, names, extended=len(sections) > 1, file=file, line=line,
                         instructions=instructions)
