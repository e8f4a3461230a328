"""What the file declares: the nodes its outputs need, and what may follow the network's scores.

hwq compiles the chain that computes the file's declared outputs (nodes no output needs are
neither imported nor folded). The network ends at its *scores*; what follows them is dropped as
classifier post-processing only where it provably keeps the decision (argmax over the class
axis, lowest index on ties). Kinds of tensors after the scores:

* ``scores``: an order-preserving map of the scores along the class axis: Softmax/LogSoftmax
  over the class axis, Identity, Dropout, Cast to float, Sigmoid, Exp, Mul/Div by a positive
  scalar, Add/Sub of a scalar, ZipMap with labels 0..C-1 (or names);
* ``binary``: the single probability of a Sigmoid output (class 1 iff it exceeds 1/2); ``Sub(1, p)``
  gives its ``complement``, ``Concat([1 - p, p])`` over the class axis the two-class ``scores``;
* ``label``: the decision: ArgMax over the class axis (first index on ties), TopK with k=1 and
  largest=1 (its indices), then Cast/Reshape/Squeeze/Unsqueeze/Flatten/Identity, or
  ArrayFeatureExtractor with the classes 0..C-1.

Everything else after the scores (Neg, ArgMin, TopK(largest=0), Softmax over the batch axis, a
Gemm after Softmax, ...) is refused in one line naming the op and the node. Every declared
output must be the scores or one of these tensors.
"""

from __future__ import annotations

import numpy as np
import onnx

from hwq.errors import InvalidModelError

KEEPS_ORDER = {"Identity", "Dropout", "Sigmoid", "Exp"}
RESHAPES_LABEL = {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
DECLARABLE = {"scores", "binary", "label"}


def needed_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes the declared outputs depend on, in file order."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    needed: set[int] = set()
    todo = [o.name for o in graph.output]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in needed:
            continue
        needed.add(i)
        todo.extend(n for n in graph.node[i].input if n)
    return [node for i, node in enumerate(graph.node) if i in needed]


def class_axis(axis: int, rank: int | None, coerced: bool = False) -> bool:
    """``axis`` is the class (last) axis of a tensor of ``rank`` (None: unknown, at least 2).
    ``coerced``: opset < 13 Softmax, which flattens the axes from ``axis`` on into one."""
    if rank is None:
        return axis == -1 or (coerced and axis >= 1)
    if not -rank <= axis < rank:
        return False
    axis %= rank
    return 1 <= axis <= rank - 1 if coerced else axis == rank - 1 and rank >= 2


class PostProcessing:
    """The tensors derived from the scores, by kind; ``node`` judges one node that reads them."""

    def __init__(self, scores: str, kind: str, rank: int | None, opset: int, consts: dict):
        self.kinds = {scores: kind}
        self.rank, self.opset, self.consts = rank, opset, consts
        self.dropped: list[str] = []

    def reads(self, node: onnx.NodeProto) -> bool:
        return any(n in self.kinds for n in node.input)

    def refuse(self, node: onnx.NodeProto, why: str) -> InvalidModelError:
        return InvalidModelError(
            f"node '{node.name}' ({node.op_type}) after the network's scores {why}",
            hint="hwq drops only post-processing that keeps the decision: Softmax/LogSoftmax over the "
                 "classes, ArgMax, TopK(k=1, largest=1), positive scaling")

    def scalar(self, node: onnx.NodeProto, name: str) -> float | None:
        value = self.consts.get(name)
        if value is None or np.asarray(value).size != 1 or not np.issubdtype(np.asarray(value).dtype, np.number):
            return None
        v = float(np.asarray(value).reshape(-1)[0])
        return v if np.isfinite(v) else None

    def node(self, node: onnx.NodeProto, at: dict) -> None:
        ins = [n for n in node.input if n]
        kinds = [self.kinds.get(n) for n in ins]
        read = [k for k in kinds if k is not None]
        others = [n for n, k in zip(ins, kinds) if k is None and n not in self.consts]
        if others:
            raise self.refuse(node, f"combines them with '{others[0]}', which is not a constant")
        kind = self.judge(node, ins, kinds, read, at)
        if isinstance(kind, tuple):
            for out, k in zip(node.output, kind):
                if out:
                    self.kinds[out] = k
        else:
            for out in node.output:
                if out:
                    self.kinds[out] = kind
        self.dropped.append(f"{node.name or '?'} ({node.op_type})")

    def judge(self, node, ins, kinds, read, at) -> str | tuple:
        op, first = node.op_type, kinds[0] if kinds else None
        if node.domain == "ai.onnx.ml":
            return self.ml(node, ins, kinds, at)
        if node.domain not in ("", "ai.onnx"):
            raise self.refuse(node, "is a custom op")
        if read == ["label"] and op in RESHAPES_LABEL and first == "label":
            if op == "Cast" and at.get("to") in (onnx.TensorProto.STRING, onnx.TensorProto.BOOL):
                raise self.refuse(node, "casts the decision to text or bool")
            return "label"
        if read == ["binary"]:
            if op in ("Identity", "Dropout") or (op == "Cast" and at.get("to") in FLOAT_TYPES):
                return "binary"
            if op == "Sub" and kinds == [None, "binary"] and self.scalar(node, ins[0]) == 1.0:
                return "complement"
            if op == "Concat" and kinds == ["complement", "binary"]:
                return self.concat(node, at)
            raise self.refuse(node, "on a single sigmoid score is not a decision-keeping map")
        if sorted(read) == ["binary", "complement"] and op == "Concat":
            if kinds != ["complement", "binary"]:
                raise self.refuse(node, "puts class 1 before class 0")
            return self.concat(node, at)
        if read != ["scores"] or first != "scores":
            raise self.refuse(node, f"reads {', '.join(sorted(set(read)))} where it needs the class scores")
        if op in KEEPS_ORDER or (op == "Cast" and at.get("to") in FLOAT_TYPES):
            return "scores"
        if op in ("Softmax", "LogSoftmax"):
            coerced = self.opset < 13
            axis = at.get("axis", 1 if coerced else -1)
            if not class_axis(axis, self.rank, coerced):
                raise self.refuse(node, f"normalizes over axis {axis}, not the class axis")
            return "scores"
        if op in ("Mul", "Div", "Add", "Sub"):
            if len(ins) != 2 or (op in ("Div", "Sub") and kinds[0] != "scores"):
                raise self.refuse(node, "is not scores op constant")
            c = self.scalar(node, ins[1] if kinds[0] == "scores" else ins[0])
            if c is None or (op in ("Mul", "Div") and not c > 0):
                raise self.refuse(node, "needs one finite constant" + (" above 0" if op in ("Mul", "Div") else ""))
            return "scores"
        if op == "ArgMax":
            axis, last = at.get("axis", 0), at.get("select_last_index", 0)
            if not class_axis(axis, self.rank) or last:
                raise self.refuse(node, f"is not over the class axis with the first index on ties "
                                        f"(axis {axis}, select_last_index {last})")
            return "label"
        if op == "TopK":
            k = (self.scalar(node, ins[1]) if len(ins) > 1 else at.get("k"))
            if k != 1 or at.get("largest", 1) != 1 or not class_axis(at.get("axis", -1), self.rank):
                raise self.refuse(node, f"is not TopK(k=1, largest=1) over the class axis (k {k}, "
                                        f"largest {at.get('largest', 1)}, axis {at.get('axis', -1)})")
            return ("top score", "label")
        raise self.refuse(node, "may change the decision")

    def concat(self, node, at) -> str:
        if not class_axis(at.get("axis", 0), self.rank):
            raise self.refuse(node, "does not concatenate along the class axis")
        return "scores"

    def ml(self, node, ins, kinds, at) -> str:
        op = node.op_type
        if op == "ZipMap" and kinds == ["scores"]:
            labels = at.get("classlabels_int64s")
            if labels is not None and list(labels) != list(range(len(labels))):
                raise self.refuse(node, f"relabels the classes as {list(labels)[:8]}")
            return "scores"
        if op == "ArrayFeatureExtractor" and kinds == [None, "label"]:
            classes = np.asarray(self.consts[ins[0]]).reshape(-1)
            if not np.issubdtype(classes.dtype, np.number) or not np.array_equal(classes, np.arange(classes.size)):
                raise self.refuse(node, f"maps the class indices to labels {classes[:8].tolist()} (hwq "
                                        "reports class indices)")
            return "label"
        raise self.refuse(node, "is not decision-keeping post-processing")


def check_declared(graph: onnx.GraphProto, scores: str, post: PostProcessing | None, logits: str = "") -> None:
    """Every declared output must be the network's scores (``logits``: before its Softmax) or a
    decision-keeping map of them."""
    kinds = {**(post.kinds if post else {scores: "scores"}), **({logits: "scores"} if logits else {})}
    for out in graph.output:
        kind = kinds.get(out.name)
        if out.name != scores and kind not in DECLARABLE:
            what = {"top score": "the top score of a TopK", "complement": "1 - p of a sigmoid output"}.get(
                kind, "not the network's scores nor derived from them")
            raise InvalidModelError(
                f"declared output '{out.name}' is {what}; hwq compiles one network whose output is "
                f"its scores ('{scores}') or the decision", hint="declare only the scores, probabilities or labels")
