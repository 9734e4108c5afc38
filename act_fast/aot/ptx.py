"""Reading compiled kernels: global memory accesses per kernel argument and float64 work in PTX,
register and spill counts from the ``ptxas -v`` log.

Global accesses are attributed to the kernel's pointer parameters by a backward slice over the
PTX's register definitions from each ``ld.global`` / ``st.global`` / ``atom.global`` /
``red.global`` address to the ``ld.param`` instructions it depends on (PTX params are the
kernel's non-constexpr arguments in order, ``<kernel>_param_<i>``).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

_REG = re.compile(r"%[A-Za-z_][\w$]*")
_PARAM = re.compile(r"\[\s*(\w+)_param_(\d+)\s*(?:\+\s*\d+\s*)?\]")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_GLOBAL_OPS = ("ld", "st", "atom", "red")


@dataclass
class PtxasInfo:
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


def parse_ptxas_log(log: str) -> PtxasInfo:
    """Registers and spills of the (one) entry function in a ``ptxas -v`` log."""
    regs = _PTXAS_REGS.findall(log)
    spills = _PTXAS_SPILLS.findall(log)
    if len(regs) != 1 or len(spills) != 1:
        raise ValueError(f"expected one 'Used N registers' and one spill line in the ptxas log, got:\n{log}")
    stack, st, ld = map(int, spills[0])
    return PtxasInfo(int(regs[0]), stack, st, ld)


@dataclass
class GlobalAccesses:
    """Global memory instructions that address one kernel argument: ``"ld"`` / ``"st"`` map the
    access width in bytes to the instruction count; ``atomics`` counts ``atom`` / ``red``."""

    ld: Counter = field(default_factory=Counter)
    st: Counter = field(default_factory=Counter)
    atomics: int = 0

    def widths(self, op: str) -> list[int]:
        return sorted(getattr(self, op))

    def describe(self) -> str:
        parts = [f"{op} " + " ".join(f"{w}B×{n}" for w, n in sorted(getattr(self, op).items())) for op in ("ld", "st") if getattr(self, op)]
        if self.atomics:
            parts.append(f"atomics×{self.atomics}")
        return ", ".join(parts) or "none"

    def to_json(self) -> dict:
        return {"ld": {str(k): v for k, v in self.ld.items()}, "st": {str(k): v for k, v in self.st.items()}, "atomics": self.atomics}

    @classmethod
    def from_json(cls, d: dict) -> "GlobalAccesses":
        return cls(Counter({int(k): v for k, v in d["ld"].items()}), Counter({int(k): v for k, v in d["st"].items()}), d["atomics"])


@dataclass
class _Instr:
    opcode: str
    dests: list[str]
    srcs: list[str]
    params: list[int]
    address: list[str]


def _split_operands(text: str) -> list[str]:
    """Top-level comma split that keeps ``{…}`` and ``[…]`` groups whole."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _instructions(ptx: str) -> list[_Instr]:
    instrs = []
    for raw in ptx.splitlines():
        line = raw.split("//", 1)[0].strip().rstrip(";").strip()
        if not line or line[0] in ".{}$" or line.endswith(":") or line.startswith(")"):
            continue
        if line.startswith("@"):
            line = line.split(None, 1)[1] if " " in line else ""
        parts = line.split(None, 1)
        if not parts:
            continue
        opcode, rest = parts[0], parts[1] if len(parts) > 1 else ""
        ops = _split_operands(rest)
        base = opcode.split(".")[0]
        address: list[str] = []
        if base in ("st", "red"):  # no destination: address first, then the value(s)
            dests, srcs = [], [r for o in ops for r in _REG.findall(o)]
            address = _REG.findall(ops[0]) if ops else []
        else:
            dests = _REG.findall(ops[0]) if ops else []
            srcs = [r for o in ops[1:] for r in _REG.findall(o)]
            if base in ("ld", "atom") and len(ops) > 1:
                address = _REG.findall(ops[1])
        params = [int(m.group(2)) for o in ops for m in _PARAM.finditer(o)]
        instrs.append(_Instr(opcode, dests, srcs, params, address))
    return instrs


def _access_bytes(opcode: str) -> int:
    """Bytes moved by one ``ld/st.global[.qualifiers][.vN].<type>`` instruction."""
    parts = opcode.split(".")
    vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
    bits = int(re.search(r"(\d+)$", parts[-1]).group(1))
    return vec * bits // 8


def global_accesses(ptx: str, params: list[tuple[str, str]]) -> dict[str, GlobalAccesses]:
    """Global loads / stores / atomics per kernel argument.

    Args:
        ptx: the PTX of one kernel.
        params: ``(name, Triton type)`` of the kernel's runtime (non-constexpr) parameters, in
            order; PTX parameter ``i`` is ``params[i]`` (Triton appends scratch pointers).

    Returns:
        argument name → its accesses. An access whose address depends on several pointer
        parameters is listed under ``"a|b"``; one that depends on none under ``"?"``.
    """
    instrs = _instructions(ptx)
    defs: dict[str, list[_Instr]] = defaultdict(list)
    for ins in instrs:
        for d in ins.dests:
            defs[d].append(ins)
    memo: dict[str, frozenset[int]] = {}

    def roots(reg: str) -> frozenset[int]:
        """Parameters the register's value depends on (through loops too)."""
        if reg in memo:
            return memo[reg]
        seen: set[int] = set()
        stack, visited = [reg], {reg}
        while stack:
            r = stack.pop()
            for ins in defs.get(r, ()):
                seen.update(ins.params)
                for s in ins.srcs:
                    if s not in visited:
                        visited.add(s)
                        stack.append(s)
        memo[reg] = frozenset(seen)
        return memo[reg]

    out: dict[str, GlobalAccesses] = defaultdict(GlobalAccesses)
    for ins in instrs:
        parts = ins.opcode.split(".")
        if parts[0] not in _GLOBAL_OPS or "global" not in parts:
            continue
        found: set[int] = set()
        for r in ins.address:
            found |= roots(r)
        pointers = sorted(params[i][0] for i in found if i < len(params) and params[i][1].startswith("*"))
        who = "|".join(pointers) if pointers else "?"
        acc = out[who]
        if parts[0] in ("atom", "red"):
            acc.atomics += 1
        else:
            getattr(acc, parts[0])[_access_bytes(ins.opcode)] += 1
    return dict(out)


def float64_ops(ptx: str) -> Counter:
    """PTX instructions that operate on float64 values (``add.f64``, ``cvt.f64.f32``,
    ``div.rn.f64``, …), counted per opcode."""
    ops: Counter = Counter()
    for ins in _instructions(ptx):
        if "f64" in ins.opcode.split("."):
            ops[ins.opcode] += 1
    return ops
