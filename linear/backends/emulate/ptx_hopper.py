"""The sm_90 instructions of the inline-PTX translator (ptx.py): one emitter each, onto the C++ of
kernels/emu/emu_hopper.h (namespace emu::hopper, and emu:: for the runtime-count forms).

    mbarrier.{init,inval,arrive,arrive.expect_tx,expect_tx,complete_tx,test_wait,try_wait}{.parity}
    cp.async.bulk.tensor.{1..5}d.shared::cluster.global{.tile}.mbarrier::complete_tx::bytes (loads)
    cp.async.bulk.tensor.{1..5}d.global.shared::cta{.tile}.bulk_group (stores)
    cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes, cp.async.bulk.global.shared::cta.bulk_group
    cp.async.bulk.{commit_group,wait_group{.read}}, cp.async.bulk.prefetch.tensor, prefetch{.param}.tensormap
    wgmma.{fence,commit_group,wait_group}.sync.aligned
    wgmma.mma_async.sync.aligned.m64nNk{16,8}.{f32,f16}.{f16,bf16,tf32}.{...}: A from a descriptor or registers
    fence.proxy.async{.shared::cta,.shared::cluster,.global}, fence.mbarrier_init.release.cluster
    setmaxnreg.{inc,dec}.sync.aligned.u32

Thread-block clusters are not modelled: a block is a cluster of one, so .cluster scopes and shared::cluster
addresses of the block's own shared memory are accepted (that is what they mean then); multicast, other
CTAs' barriers and .cta_group are refused. The .release/.acquire/.relaxed qualifiers and L2 cache hints
are accepted (fibers never run at once; hints change no result).

wgmma's accumulators must be asm output operands ("+f" or "=f"; "+r" for f16 accumulators): the operation
writes them at the wait_group that retires it, through references to the kernel's own variables.
"""
from __future__ import annotations

import re

from .ptx import Address, Block, Instruction, Operand, TensorAddress, Vector

# Qualifiers that change nothing in the emulator: memory-order semantics and scopes (one CTA per
# cluster), state spaces the operands already say, and hints.
_ORDERING = {"release", "acquire", "relaxed", "cta", "cluster", "gpu", "sys", "shared", "shared::cta",
             "shared::cluster", "b64", "sync", "aligned"}


def _barrier(b: Block, op, ins: Instruction) -> str:
    return f"static_cast<uint64_t*>({b.pointer(op, 'shared', ins)})"


def emit_mbarrier(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    rest = [p for p in parts[1:] if p not in _ORDERING]
    ops = ins.operands
    where = b.location()
    if rest == ["init"] and len(ops) == 2:
        return f"emu::hopper::mbarrier_init({_barrier(b, ops[0], ins)}, {b.read(ops[1], 'u32')}, {where});"
    if rest == ["inval"] and len(ops) == 1:
        return f"emu::hopper::mbarrier_inval({_barrier(b, ops[0], ins)}, {where});"
    if rest == ["arrive"] and len(ops) in (2, 3):
        count = b.read(ops[2], "u32") if len(ops) == 3 else "1u"
        return b.write(ops[0], "b64", f"emu::hopper::mbarrier_arrive({_barrier(b, ops[1], ins)}, {count}, {where})")
    if rest == ["arrive", "expect_tx"] and len(ops) == 3:
        return b.write(ops[0], "b64", f"emu::hopper::mbarrier_arrive_expect_tx({_barrier(b, ops[1], ins)}, "
                                      f"{b.read(ops[2], 'u32')}, {where})")
    if rest in (["expect_tx"], ["complete_tx"]) and len(ops) == 2:
        return f"emu::hopper::mbarrier_{rest[0]}({_barrier(b, ops[0], ins)}, {b.read(ops[1], 'u32')}, {where});"
    if rest and rest[0] in ("test_wait", "try_wait") and rest[1:] in ([], ["parity"]) and len(ops) in (3, 4):
        # ops[3], try_wait's suspendTimeHint, bounds how long one try waits: the emulator's try waits until done.
        if rest[1:]:
            value = b.read(ops[2], "u32")
            call = f"emu::hopper::mbarrier_{rest[0]}_parity"
        else:
            value = b.read(ops[2], "b64")
            call = f"emu::hopper::mbarrier_{rest[0]}"
        return b.write(ops[0], "pred", f"{call}({_barrier(b, ops[1], ins)}, {value}, {where})")
    b.unsupported(ins, "mbarrier init, inval, arrive (with a count), arrive.expect_tx, expect_tx, complete_tx, "
                       "test_wait and try_wait (.parity) on the block's own shared memory; no .noComplete")


def _bulk_qualifiers(ins: Instruction, b: Block, allowed: set[str]) -> list[str]:
    parts = ins.parts
    for p in parts:
        if p.startswith("multicast") or p.startswith("cta_group"):
            b.unsupported(ins, "thread-block clusters (multicast, cta_group) are not modelled")
    return [p for p in parts[3:] if p not in allowed and not p.startswith("L2::")]


def _cache_hint(ins: Instruction, operands: list) -> list:
    return operands[:-1] if "L2::cache_hint" in ins.parts else operands


def emit_bulk(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    where = b.location()
    ops = _cache_hint(ins, list(ins.operands))
    if parts[:3] != ["cp", "async", "bulk"]:
        b.unsupported(ins)
    tail = parts[3:]
    if tail == ["commit_group"] and not ops:
        return "emu::hopper::bulk_commit_group();"
    if tail in (["wait_group"], ["wait_group", "read"]) and len(ops) == 1:
        return f"emu::hopper::bulk_wait(int({b.read(ops[0], 'u32')}));"
    if tail and tail[0] == "prefetch":
        return ";"  # a hint
    if tail and tail[0] == "tensor":
        dims = tail[1] if len(tail) > 1 else ""
        if not re.fullmatch(r"[1-5]d", dims):
            b.unsupported(ins, "1d .. 5d tensor copies")
        n = int(dims[0])
        rest = _bulk_qualifiers(ins, b, {"tensor", dims, "tile", "shared::cluster", "shared::cta", "global",
                                         "mbarrier::complete_tx::bytes", "bulk_group"})
        if rest:
            b.unsupported(ins, f"the qualifiers {'.'.join(rest)} (im2col, reductions, gather are not modelled)")
        load = "mbarrier::complete_tx::bytes" in parts
        if load and len(ops) == 3:
            dst, tensor, bar = ops
            coords = _coordinates(b, tensor, n)
            return (f"{{ const int32_t ptx_c[{n}] = {{{coords}}}; emu::hopper::tensor_load<{n}>("
                    f"{b.pointer(dst, 'shared', ins)}, static_cast<const CUtensorMap*>({_map(b, tensor, ins)}), ptx_c, "
                    f"{_barrier(b, bar, ins)}, {where}); }}")
        if not load and "bulk_group" in parts and len(ops) == 2:
            tensor, src = ops
            coords = _coordinates(b, tensor, n)
            return (f"{{ const int32_t ptx_c[{n}] = {{{coords}}}; emu::hopper::tensor_store<{n}>("
                    f"static_cast<const CUtensorMap*>({_map(b, tensor, ins)}), ptx_c, {b.pointer(src, 'shared', ins)}, "
                    f"{where}); }}")
        b.unsupported(ins)
    rest = _bulk_qualifiers(ins, b, {"shared::cluster", "shared::cta", "global", "mbarrier::complete_tx::bytes",
                                     "bulk_group"})
    if rest:
        b.unsupported(ins, f"the qualifiers {'.'.join(rest)}")
    if "mbarrier::complete_tx::bytes" in parts and len(ops) == 4:
        dst, src, size, bar = ops
        return (f"emu::hopper::bulk_load({b.pointer(dst, 'shared', ins)}, {b.pointer(src, 'global', ins)}, "
                f"{b.read(size, 'u32')}, {_barrier(b, bar, ins)}, {where});")
    if "bulk_group" in parts and len(ops) == 3:
        dst, src, size = ops
        return (f"emu::hopper::bulk_store({b.pointer(dst, 'global', ins)}, {b.pointer(src, 'shared', ins)}, "
                f"{b.read(size, 'u32')}, {where});")
    b.unsupported(ins)


def _coordinates(b: Block, tensor, n: int) -> str:
    if not isinstance(tensor, TensorAddress):
        b.fail("expected [tensor-map, {coordinates}]")
    return ", ".join(b.read(c, "s32") for c in b.vector(tensor.coordinates, n))


def _map(b: Block, tensor: TensorAddress, ins: Instruction) -> str:
    return b.pointer(Address(tensor.base, 0), "generic", ins)


def emit_prefetch_tensormap(ins: Instruction, b: Block) -> str:
    return ";"  # a hint


def emit_fence_proxy(ins: Instruction, b: Block) -> str:
    if ins.operands:
        b.unsupported(ins)
    if ins.parts[1] == "mbarrier_init":
        return ";"  # no clusters: a block's own threads see an initialized barrier after bar.sync
    if ins.parts[2] == "async":
        return "emu::hopper::fence_proxy_async();"
    b.unsupported(ins, "fence.proxy.async, fence.mbarrier_init")


def emit_setmaxnreg(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    if parts[2:] != ["sync", "aligned", "u32"] or parts[1] not in ("inc", "dec") or len(ins.operands) != 1:
        b.unsupported(ins, "setmaxnreg.{inc,dec}.sync.aligned.u32 count")
    return (f"emu::hopper::setmaxnreg_check({str(parts[1] == 'inc').lower()}, {b.read(ins.operands[0], 'u32')}, "
            f"{b.location()});")


_WGMMA_TYPES = {"f16": "emu::WgmmaType::f16", "bf16": "emu::WgmmaType::bf16", "tf32": "emu::WgmmaType::tf32"}


def emit_wgmma(ins: Instruction, b: Block) -> str:
    parts = ins.parts
    if parts[1] == "fence" and not ins.operands:
        return "emu::hopper::wgmma_fence();"
    if parts[1] == "commit_group" and not ins.operands:
        return "emu::hopper::wgmma_commit_group();"
    if parts[1] == "wait_group" and len(ins.operands) == 1:
        return f"emu::wgmma_retire(int({b.read(ins.operands[0], 'u32')}));"
    if parts[1] != "mma_async" or len(parts) != 8:
        b.unsupported(ins, "wgmma.mma_async.sync.aligned.m64nNkK.dtype.atype.btype (no .sp, .satfinite)")
    shape, d_type, a_type, b_type = parts[4], parts[5], parts[6], parts[7]
    match = re.fullmatch(r"m64n(\d+)k(\d+)", shape)
    k = 8 if a_type == "tf32" else 16
    if not match or int(match[2]) != k or a_type != b_type or a_type not in _WGMMA_TYPES \
            or d_type not in ("f32", "f16") or (d_type == "f16" and a_type != "f16"):
        b.unsupported(ins, "m64nNk16 f16/bf16 (f32 or, for f16, f16 accumulators) and m64nNk8 tf32 with f32")
    n = int(match[1])
    if n % 8 or not 8 <= n <= 256:
        b.fail(f"{ins.opcode}: N = {n} is not one of 8, 16, .. 256")
    ops = list(ins.operands)
    a_registers = isinstance(ops[1], Vector)
    sixteen_bit = a_type != "tf32"
    expected = 6 + (sixteen_bit and 1) + (sixteen_bit and not a_registers and 1)
    if len(ops) != expected:
        b.fail(f"{ins.opcode} takes {expected} operands (d, a, b-desc, scale-d, imm-scale-a, imm-scale-b"
               + (", imm-trans-a" if sixteen_bit and not a_registers else "") + (", imm-trans-b" if sixteen_bit else "")
               + f"), got {len(ops)}")
    f16_accumulator = d_type == "f16"
    d = b.vector(ops[0], n // 4 if f16_accumulator else n // 2)
    references = []
    for item in d:
        if not isinstance(item, Operand) or not b.operands[item.index].modifier:
            b.fail(f"{ins.opcode}: the accumulators must be asm output operands (\"+f\", \"=f\"; \"+r\" for f16), "
                   f"found {item}")
        references.append(f"&ptx_ref{item.index}")
    scale_d = b.read(ops[3], "pred")
    scale_a, scale_b = (f"int({b.read(op, 's32')})" for op in ops[4:6])
    trans_a = f"int({b.read(ops[6], 's32')})" if sixteen_bit and not a_registers else "0"
    trans_b = f"int({b.read(ops[-1], 's32')})" if sixteen_bit else "0"
    if a_registers:
        a = "{" + ", ".join(b.read(r, "b32") for r in b.vector(ops[1], 4)) + "}"
        a_setup, a_desc, a_regs = f"const uint32_t ptx_a[4] = {a}; ", "0", "ptx_a"
    else:
        a_setup, a_desc, a_regs = "", b.read(ops[1], "b64"), "nullptr"
    poison = "0x7E007E00u" if f16_accumulator else "std::numeric_limits<float>::quiet_NaN()"
    poison_type = "b32" if f16_accumulator else "f32"
    return ("{ void* ptx_d[] = {" + ", ".join(references) + "}; " + a_setup
            + f"emu::wgmma_issue({_WGMMA_TYPES[a_type]}, {n}, ptx_d, {str(f16_accumulator).lower()}, int({scale_d}), "
            f"{a_desc}, {a_regs}, {b.read(ops[2], 'b64')}, {scale_a}, {scale_b}, {trans_a}, {trans_b}, {b.location()}); "
            # The asm statement copies its operand locals back to the variables: they hold the poison too.
            + " ".join(b.write(item, poison_type, poison) for item in d) + " }")


INSTRUCTIONS = [
    (r"mbarrier\.\S+", emit_mbarrier),
    (r"cp\.async\.bulk\.\S+", emit_bulk),
    (r"prefetch(?:\.param|\.const|\.global)?\.tensormap", emit_prefetch_tensormap),
    (r"fence\.proxy\.async(?:\.\S+)?|fence\.mbarrier_init\.release\.cluster", emit_fence_proxy),
    (r"setmaxnreg\.\S+", emit_setmaxnreg),
    (r"wgmma\.\S+", emit_wgmma),
]
